#![allow(clippy::unwrap_used)]

use emcachers_plugin_sdk::testing::Harness;
use emcachers_plugin_sdk::{ChangeOp, json};

use super::*;

fn users_config() -> Value {
    json!({
        "entity_name": "users",
        "source_name": "users",
        "columns": [
            {"name": "email", "type": "Text", "path": "email"},
            {"name": "id", "type": "Text", "path": "_id"},
            {"name": "org_id", "type": "Text", "path": "orgId"},
            {"name": "created_at", "type": "Text", "path": "createdAt"},
            {"name": "logins", "type": "Integer", "path": "stats.logins"},
            {"name": "score", "type": "Number", "path": "stats.score"},
            {"name": "active", "type": "Bool", "path": "active"},
            {"name": "city", "type": "Text", "path": "address.geo.city"},
            {"name": "first_tag", "type": "Text", "path": "tags.0"},
            {"name": "tags", "type": "JSONB", "path": "tags"},
            {"name": "address", "type": "jsonb", "path": "address"},
            {"name": "extra", "type": "Any", "path": "extra"}
        ],
        "indexes": [
            {"name": "by_email", "columns": ["email"], "unique": true},
            {"columns": ["org_id", "created_at"]}
        ]
    })
}

fn harness() -> Harness<ShapePlugin> {
    let mut h = Harness::default();
    h.configure("users", users_config()).unwrap();
    h
}

fn ada() -> Value {
    json!({
        "_id": {"$oid": "65f0a1b2c3d4e5f6a7b8c9d0"},
        "email": "ada@example.com",
        "orgId": {"$oid": "65f0a1b2c3d4e5f6a7b8c9ff"},
        "createdAt": {"$date": "2024-03-01T12:00:00Z"},
        "stats": {"logins": {"$numberLong": "42"}, "score": 4.5},
        "active": true,
        "address": {"geo": {"city": "London", "zip": "W1"}, "street": "St James's Square"},
        "tags": ["admin", "beta"],
        "extra": {"nested": [1, 2]}
    })
}

/// The single row of a shaped change.
fn one_row(shaped: Result<Shaped, String>) -> Row {
    let shaped = shaped.unwrap();
    assert_eq!(shaped.rows.len(), 1, "{shaped:?}");
    assert_eq!(shaped.complete_set, None);
    shaped.rows.into_iter().next().unwrap()
}

#[test]
fn describe_serves_everything() {
    let info = Harness::<ShapePlugin>::default().describe();
    assert_eq!(info.name, "shape");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.bindings.len(), 1);
    let binding = &info.bindings[0];
    assert_eq!(
        (&*binding.entity, &*binding.source, &*binding.collection),
        ("*", "*", "*")
    );
}

#[test]
fn upsert_maps_every_column_type() {
    let row = one_row(harness().shape_one("users", Change::upsert("users", "u1", ada())));
    assert_eq!(row.entity, "users");
    assert_eq!(row.id, "u1");
    assert_eq!(row.op, RowOp::Upsert);
    assert_eq!(
        Value::Object(row.data),
        json!({
            "id": "u1",
            "email": "ada@example.com",
            "org_id": "65f0a1b2c3d4e5f6a7b8c9ff",
            "created_at": "2024-03-01T12:00:00Z",
            "logins": 42,
            "score": 4.5,
            "active": true,
            "city": "London",
            "first_tag": "admin",
            "tags": ["admin", "beta"],
            "address": {"geo": {"city": "London", "zip": "W1"}, "street": "St James's Square"},
            "extra": {"nested": [1, 2]}
        })
    );
}

#[test]
fn lenient_but_lossless_conversions() {
    let doc = json!({
        "email": 12345,
        "createdAt": {"$date": {"$numberLong": "1700000000000"}},
        "stats": {"logins": "7", "score": {"$numberDouble": "2.5"}},
        "active": "FALSE",
        "extra": "plain"
    });
    let row = one_row(harness().shape_one("users", Change::upsert("users", "u2", doc)));
    assert_eq!(row.data["email"], json!("12345"));
    assert_eq!(row.data["created_at"], json!("1700000000000"));
    assert_eq!(row.data["logins"], json!(7));
    assert_eq!(row.data["score"], json!(2.5));
    assert_eq!(row.data["active"], json!(false));
    assert_eq!(row.data["extra"], json!("plain"));
}

#[test]
fn missing_fields_are_null() {
    let doc = json!({"email": "x@example.com", "address": {"street": "no geo"}, "tags": []});
    let row = one_row(harness().shape_one("users", Change::upsert("users", "u3", doc)));
    assert_eq!(row.data.len(), 12, "every column is present");
    assert_eq!(row.data["id"], json!("u3"));
    assert_eq!(row.data["email"], json!("x@example.com"));
    for column in [
        "org_id",
        "created_at",
        "logins",
        "score",
        "active",
        "city",
        "first_tag",
        "extra",
    ] {
        assert_eq!(row.data[column], Value::Null, "{column}");
    }
    assert_eq!(row.data["tags"], json!([]));
}

#[test]
fn present_null_is_null_for_every_type() {
    let doc = json!({"email": null, "stats": {"logins": null, "score": null}, "active": null});
    let row = one_row(harness().shape_one("users", Change::upsert("users", "u4", doc)));
    for column in ["email", "logins", "score", "active"] {
        assert_eq!(row.data[column], Value::Null, "{column}");
    }
}

#[test]
fn id_is_the_change_id_not_the_document_field() {
    let doc = json!({"_id": "something-else", "email": "a@b.c"});
    let row = one_row(harness().shape_one("users", Change::upsert("users", "u5", doc)));
    assert_eq!(row.id, "u5");
    assert_eq!(row.data["id"], json!("u5"));
}

#[test]
fn type_errors_name_entity_id_column_and_value() {
    let h = harness();
    let cases = [
        (
            json!({"stats": {"logins": "abc"}}),
            r#"column logins: expected Integer, found "abc""#,
        ),
        (
            json!({"stats": {"logins": 1.5}}),
            "column logins: expected Integer, found 1.5",
        ),
        (
            json!({"stats": {"score": "fast"}}),
            r#"column score: expected Number, found "fast""#,
        ),
        (
            json!({"active": 1}),
            "column active: expected Bool, found 1",
        ),
        (
            json!({"email": ["a", "b"]}),
            r#"column email: expected Text, found ["a","b"]"#,
        ),
        (
            json!({"orgId": {"$oid": 5, "x": 1}}),
            "column org_id: expected Text",
        ),
    ];
    for (doc, expected) in cases {
        let err = h
            .shape_one("users", Change::upsert("users", "u9", doc))
            .unwrap_err();
        assert!(err.starts_with("entity users, id u9, "), "{err}");
        assert!(err.contains(expected), "{err} should contain {expected}");
    }
    let err = h
        .shape_one(
            "users",
            Change::upsert("users", "u9", json!({"stats": {"logins": "abc"}})),
        )
        .unwrap_err();
    assert_eq!(
        err,
        r#"entity users, id u9, column logins: expected Integer, found "abc""#
    );
}

#[test]
fn a_bad_item_does_not_affect_its_batch() {
    let batch = [
        Change::upsert("users", "a", json!({"email": "a@example.com"})),
        Change::upsert("users", "b", json!({"stats": {"logins": "lots"}})),
        Change::upsert("users", "c", json!([1, 2, 3])),
        Change::delete("users", "d"),
        Change::upsert("users", "e", json!({"stats": {"logins": 5}})),
    ];
    let results = harness().shape("users", &batch);
    assert_eq!(results.len(), 5);
    assert_eq!(
        one_row(results[0].clone()).data["email"],
        json!("a@example.com")
    );
    assert!(
        results[1]
            .as_ref()
            .unwrap_err()
            .contains("id b, column logins")
    );
    assert_eq!(
        results[2].as_ref().unwrap_err(),
        "entity users, id c: the document is not a JSON object (found an array)"
    );
    assert_eq!(one_row(results[3].clone()), Row::delete("users", "d"));
    assert_eq!(one_row(results[4].clone()).data["logins"], json!(5));
}

#[test]
fn upsert_without_document_is_an_item_error() {
    let mut change = Change::upsert("users", "u1", json!({}));
    change.document = None;
    let err = harness().shape_one("users", change).unwrap_err();
    assert_eq!(err, "entity users, id u1: an upsert change has no document");
}

#[test]
fn delete_is_one_delete_row() {
    let h = harness();
    let row = one_row(h.shape_one("users", Change::delete("users", "u1")));
    assert_eq!(row, Row::delete("users", "u1"));
    // A delete carrying the last known document is still just a delete.
    let mut change = Change::delete("users", "u2");
    change.document = Some(ada());
    assert_eq!(
        one_row(h.shape_one("users", change)),
        Row::delete("users", "u2")
    );
}

/// The row of `ada()`, as the host would hand it back as `current`.
fn ada_row(h: &Harness<ShapePlugin>) -> Map<String, Value> {
    one_row(h.shape_one("users", Change::upsert("users", "u1", ada()))).data
}

#[test]
fn partial_replaces_only_touched_columns() {
    let h = harness();
    let current = ada_row(&h);
    // MongoDB updatedFields: dotted keys.
    let fields = json!({
        "address.geo.city": "Bergen",
        "stats.logins": {"$numberLong": "43"},
        "unrelated": true
    });
    let change = Change::partial("users", "u1", fields).with_current(current.clone());
    let row = one_row(h.shape_one("users", change));
    assert_eq!(row.op, RowOp::Upsert);
    assert_eq!(row.id, "u1");
    let mut expected = current;
    expected.insert("city".into(), json!("Bergen"));
    expected.insert("logins".into(), json!(43));
    // The JSONB `address` column is patched below, keeping its other fields.
    expected.insert(
        "address".into(),
        json!({"geo": {"city": "Bergen", "zip": "W1"}, "street": "St James's Square"}),
    );
    assert_eq!(row.data, expected);
}

#[test]
fn partial_with_nested_objects_and_replaced_parents() {
    let h = harness();
    let current = ada_row(&h);
    // `address` replaced wholesale without `geo`: city becomes null.
    let fields = json!({"address": {"street": "Nowhere 1"}, "tags": ["ops"], "email": null});
    let change = Change::partial("users", "u1", fields).with_current(current.clone());
    let row = one_row(h.shape_one("users", change));
    assert_eq!(row.data["address"], json!({"street": "Nowhere 1"}));
    assert_eq!(row.data["city"], Value::Null);
    assert_eq!(row.data["tags"], json!(["ops"]));
    assert_eq!(row.data["first_tag"], json!("ops"));
    assert_eq!(row.data["email"], Value::Null);
    assert_eq!(row.data["logins"], current["logins"]);
    assert_eq!(row.data["created_at"], current["created_at"]);
}

#[test]
fn partial_patches_array_elements_of_jsonb_columns() {
    let h = harness();
    let current = ada_row(&h);
    let fields = json!({"tags.1": "gamma", "tags.2": "delta"});
    let change = Change::partial("users", "u1", fields).with_current(current);
    let row = one_row(h.shape_one("users", change));
    assert_eq!(row.data["tags"], json!(["admin", "gamma", "delta"]));
    assert_eq!(row.data["first_tag"], json!("admin"));
}

#[test]
fn partial_converts_and_reports_type_errors() {
    let h = harness();
    let change =
        Change::partial("users", "u1", json!({"stats.score": "high"})).with_current(ada_row(&h));
    let err = h.shape_one("users", change).unwrap_err();
    assert_eq!(
        err,
        r#"entity users, id u1, column score: expected Number, found "high""#
    );
}

#[test]
fn partial_fills_columns_missing_from_current_with_null() {
    let h = harness();
    let mut current = Map::new();
    current.insert("id".into(), json!("u1"));
    current.insert("email".into(), json!("old@example.com"));
    current.insert("dropped_column".into(), json!("stale"));
    let change = Change::partial("users", "u1", json!({"active": "true"})).with_current(current);
    let row = one_row(h.shape_one("users", change));
    assert_eq!(row.data["email"], json!("old@example.com"));
    assert_eq!(row.data["active"], json!(true));
    assert_eq!(row.data["logins"], Value::Null);
    assert!(!row.data.contains_key("dropped_column"));
    assert_eq!(row.data.len(), 12);
}

#[test]
fn partial_without_current_is_an_item_error() {
    let h = harness();
    let results = h.shape(
        "users",
        &[
            Change::partial("users", "u1", json!({"email": "new@example.com"})),
            Change::upsert("users", "u2", json!({"email": "ok@example.com"})),
        ],
    );
    let err = results[0].as_ref().unwrap_err();
    assert!(err.starts_with("entity users, id u1: "), "{err}");
    assert!(
        err.contains("partial change needs the entity's current row"),
        "{err}"
    );
    assert!(results[1].is_ok());
}

#[test]
fn partial_document_must_be_an_object() {
    let h = harness();
    let change = Change::partial("users", "u1", json!("email=x")).with_current(ada_row(&h));
    let err = h.shape_one("users", change).unwrap_err();
    assert_eq!(
        err,
        "entity users, id u1: the partial document is not a JSON object (found a string)"
    );
}

#[test]
fn unconfigured_entity() {
    let h = harness();
    let err = h
        .shape_one("orders", Change::upsert("orders", "o1", json!({})))
        .unwrap_err();
    assert_eq!(err, "entity orders is not configured");
    let keys = h.keys(
        "orders",
        &[Row::upsert("orders", "o1", [("id", json!("o1"))])],
    );
    assert_eq!(
        keys[0].as_ref().unwrap_err(),
        "entity orders is not configured"
    );
    assert_eq!(h.version("orders"), env!("CARGO_PKG_VERSION"));
    assert_eq!(h.table("orders"), None);
    assert!(h.version("users").starts_with("shape-v"));
}

#[test]
fn keys_write_the_row_under_entity_version_id() {
    let h = harness();
    let row = one_row(h.shape_one("users", Change::upsert("users", "u1", ada())));
    let writes = h
        .keys("users", std::slice::from_ref(&row))
        .remove(0)
        .unwrap();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].key, format!("users:{}:u1", h.version("users")));
    let value: Value = serde_json::from_str(&writes[0].value).unwrap();
    assert_eq!(value, Value::Object(row.data));
    // Delete rows imply no writes.
    let none = h
        .keys("users", &[Row::delete("users", "u1")])
        .remove(0)
        .unwrap();
    assert!(none.is_empty());
}

#[test]
fn table_layout_puts_id_first_and_resolves_indexes() {
    let layout = harness().table("users").unwrap();
    let columns: Vec<(&str, ColumnType)> = layout
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.ty))
        .collect();
    assert_eq!(
        columns,
        [
            ("id", ColumnType::Text),
            ("email", ColumnType::Text),
            ("org_id", ColumnType::Text),
            ("created_at", ColumnType::Text),
            ("logins", ColumnType::Integer),
            ("score", ColumnType::Number),
            ("active", ColumnType::Bool),
            ("city", ColumnType::Text),
            ("first_tag", ColumnType::Text),
            ("tags", ColumnType::Jsonb),
            ("address", ColumnType::Jsonb),
            ("extra", ColumnType::Any),
        ]
    );
    assert_eq!(
        layout.indexes,
        [
            Index {
                name: "by_email".into(),
                columns: vec!["email".into()],
                unique: true
            },
            Index {
                name: "users_org_id_created_at".into(),
                columns: vec!["org_id".into(), "created_at".into()],
                unique: false,
            },
        ]
    );
}

#[test]
fn version_is_stable_for_the_same_shape() {
    let a = harness().version("users");
    let b = harness().version("users");
    assert_eq!(a, b);
    assert!(
        a.starts_with(&format!("shape-v{}-", env!("CARGO_PKG_VERSION_MAJOR"))),
        "{a}"
    );
    assert_eq!(a.rsplit('-').next().unwrap().len(), 12);
    assert!(
        a.rsplit('-')
            .next()
            .unwrap()
            .chars()
            .all(|c| c.is_ascii_hexdigit())
    );

    // Re-spellings of the same shape keep the version.
    let mut respelled = users_config();
    respelled.as_object_mut().unwrap().remove("entity_name");
    respelled["source_name"] = json!("other");
    respelled["columns"][2]["type"] = json!("TEXT");
    respelled["columns"][1]["path"] = json!("id");
    respelled["indexes"][1]["name"] = json!("users_org_id_created_at");
    respelled["indexes"][1]["unique"] = json!(false);
    let mut h = Harness::<ShapePlugin>::default();
    h.configure("users", respelled).unwrap();
    assert_eq!(h.version("users"), a);
}

#[test]
fn version_changes_when_the_shape_changes() {
    let base = harness().version("users");
    let edits: [fn(&mut Value); 6] = [
        |c| c["columns"][4]["type"] = json!("Number"),
        |c| c["columns"][4]["path"] = json!("stats.loginCount"),
        |c| c["columns"][4]["name"] = json!("login_count"),
        |c| {
            c["columns"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "x", "type": "Any"}))
        },
        |c| c["indexes"][0]["unique"] = json!(false),
        |c| {
            c["indexes"].as_array_mut().unwrap().pop();
        },
    ];
    let mut seen = vec![base.clone()];
    for edit in edits {
        let mut config = users_config();
        edit(&mut config);
        let mut h = harness();
        h.configure("users", config).unwrap();
        let version = h.version("users");
        assert!(!seen.contains(&version), "{version} repeated");
        seen.push(version);
    }
}

fn config_error(config: Value) -> String {
    let mut h = Harness::<ShapePlugin>::default();
    let err = h.configure("users", config).unwrap_err();
    assert!(err.starts_with("entity users: "), "{err}");
    assert!(h.table("users").is_none());
    err
}

#[test]
fn config_validation() {
    let id = json!({"name": "id", "type": "Text", "path": "_id"});
    let cases = [
        (json!({"columns": []}), "the shape has no columns"),
        (json!({"indexes": []}), "missing field `columns`"),
        (
            json!({"columns": [{"name": "email", "type": "Text"}]}),
            "no column named `id`",
        ),
        (
            json!({"columns": [{"name": "ID", "type": "Text"}]}),
            "name it exactly `id`",
        ),
        (
            json!({"columns": [id, {"name": "age", "type": "Int64", "path": "age"}]}),
            r#"column age: unknown type "Int64""#,
        ),
        (
            json!({"columns": [id, {"name": "email", "type": "Text"}, {"name": "Email", "type": "Text"}]}),
            r#"column "Email" is defined twice"#,
        ),
        (
            json!({"columns": [{"name": "id", "type": "Bool"}]}),
            "column id: type Bool cannot hold a row id",
        ),
        (
            json!({"columns": [id, {"name": "", "type": "Text"}]}),
            "a column has an empty name",
        ),
        (
            json!({"columns": [id], "indexes": [{"name": "by_x", "columns": ["x"]}]}),
            r#"index by_x: unknown column "x""#,
        ),
        (
            json!({"columns": [id], "indexes": [{"columns": []}]}),
            "lists no columns",
        ),
        (
            json!({"columns": [id], "indexes": [{"columns": ["id"]}, {"name": "users_id", "columns": ["id"]}]}),
            "index users_id is defined twice",
        ),
        (json!({"colums": [id]}), "unknown field `colums`"),
        (
            json!({"columns": [{"name": "id", "type": "Text", "pth": "_id"}]}),
            "unknown field `pth`",
        ),
        (
            json!({"columns": [id], "indexes": [{"columns": ["id"], "uniq": true}]}),
            "unknown field `uniq`",
        ),
        (
            json!({"entity_name": "User", "columns": [id]}),
            r#"entity_name "User" does not match the entity being configured"#,
        ),
        (json!([1]), "invalid shape configuration"),
    ];
    for (config, expected) in cases {
        let err = config_error(config);
        assert!(err.contains(expected), "{err} should contain {expected}");
    }
}

#[test]
fn a_rejected_configuration_unserves_the_entity() {
    let mut h = harness();
    assert!(h.configure("users", json!({"columns": []})).is_err());
    assert_eq!(h.table("users"), None);
    let err = h
        .shape_one("users", Change::delete("users", "u1"))
        .unwrap_err();
    assert_eq!(err, "entity users is not configured");
}

#[test]
fn path_defaults_to_the_name_and_empty_path_is_the_document() {
    let mut h = Harness::<ShapePlugin>::default();
    let config = json!({"columns": [
        {"name": "id", "type": "Text"},
        {"name": "email", "type": "Text"},
        {"name": "doc", "type": "JSONB", "path": ""}
    ]});
    h.configure("users", config).unwrap();
    let doc = json!({"email": "a@example.com", "n": 1});
    let row = one_row(h.shape_one("users", Change::upsert("users", "u1", doc.clone())));
    assert_eq!(row.data["email"], json!("a@example.com"));
    assert_eq!(row.data["doc"], doc);
    // A partial patches the whole-document column.
    let change =
        Change::partial("users", "u1", json!({"n": 2, "a.b": true})).with_current(row.data);
    let row = one_row(h.shape_one("users", change));
    assert_eq!(
        row.data["doc"],
        json!({"email": "a@example.com", "n": 2, "a": {"b": true}})
    );
    assert_eq!(row.data["email"], json!("a@example.com"));
}

#[test]
fn integer_ids() {
    let mut h = Harness::<ShapePlugin>::default();
    let config = json!({"columns": [{"name": "id", "type": "Integer", "path": "_id"}, {"name": "n", "type": "Text"}]});
    h.configure("orders", config).unwrap();
    let row = one_row(h.shape_one("orders", Change::upsert("orders", "17", json!({"n": "x"}))));
    assert_eq!(row.id, "17");
    assert_eq!(row.data["id"], json!(17));
    let err = h
        .shape_one("orders", Change::upsert("orders", "o-1", json!({})))
        .unwrap_err();
    assert_eq!(
        err,
        r#"entity orders, id o-1, column id: expected Integer, found "o-1""#
    );
    assert_eq!(
        h.table("orders").unwrap().columns[0].ty,
        ColumnType::Integer
    );
}

#[test]
fn hostile_array_index_does_not_allocate_without_bound() {
    let h = harness();
    let change =
        Change::partial("users", "u1", json!({"tags.99999999999": "x"})).with_current(ada_row(&h));
    let row = one_row(h.shape_one("users", change));
    // Beyond the padding limit the array is treated as an object.
    assert_eq!(row.data["tags"], json!({"99999999999": "x"}));
}

#[test]
fn hostile_nesting_is_an_item_error() {
    let h = harness();
    let key = format!("address.{}", vec!["x"; 5000].join("."));
    let mut fields = Map::new();
    fields.insert(key, json!(1));
    let change = Change::partial("users", "u1", Value::Object(fields)).with_current(ada_row(&h));
    let err = h.shape_one("users", change).unwrap_err();
    assert_eq!(
        err,
        "entity users, id u1, column address: an update is nested more than 100 levels deep"
    );
}

/// `examples/shape/users.json` and `changes.jsonl` stay valid: every line
/// shapes, except the one with the deliberate type error.
#[test]
fn example_files() {
    let config: Value =
        serde_json::from_str(include_str!("../../../examples/shape/users.json")).unwrap();
    let mut h = Harness::<ShapePlugin>::default();
    h.configure("users", config).unwrap();
    let mut errors = Vec::new();
    // The current row of each id, as the host keeps it for partial changes.
    let mut current: std::collections::HashMap<String, Map<String, Value>> = Default::default();
    let lines = include_str!("../../../examples/shape/changes.jsonl").lines();
    for (n, line) in lines.enumerate() {
        let line: Value = serde_json::from_str(line).unwrap();
        let op = match line["op"].as_str().unwrap() {
            "upsert" => ChangeOp::Upsert,
            "delete" => ChangeOp::Delete,
            "partial" => ChangeOp::Partial,
            other => panic!("op {other}"),
        };
        let change = Change {
            source: "mongo".into(),
            collection: line["collection"].as_str().unwrap().into(),
            op,
            id: line["id"].as_str().unwrap().into(),
            document: line.get("document").cloned(),
            current: current.get(line["id"].as_str().unwrap()).cloned(),
        };
        match h.shape_one("users", change) {
            Ok(shaped) => {
                for row in &shaped.rows {
                    assert_eq!(row.data.len(), if row.op == RowOp::Delete { 0 } else { 10 });
                    if row.op == RowOp::Delete {
                        current.remove(&row.id);
                    } else {
                        current.insert(row.id.clone(), row.data.clone());
                    }
                }
            }
            Err(e) => errors.push((n + 1, e)),
        }
    }
    assert_eq!(
        errors,
        [(
            4,
            r#"entity users, id u4, column logins: expected Integer, found "many""#.to_owned()
        )]
    );
}

/// Whether `serde_json` keeps object keys in insertion order in this build:
/// its `preserve_order` feature, which another crate of the workspace (the
/// host's `bson`) turns on for native test builds. Plugins built for wasm
/// sort keys, and then both paths give the same text.
fn maps_keep_insertion_order() -> bool {
    let mut map = serde_json::Map::new();
    map.insert("b".into(), serde_json::Value::Null);
    map.insert("a".into(), serde_json::Value::Null);
    map.keys().next().map(String::as_str) == Some("b")
}

/// Rows with their data as JSON values (key order aside).
type RowValues = Vec<(String, String, RowOp, serde_json::Value)>;

fn as_values<E>(shaped: Result<RawShaped, E>) -> Result<(RowValues, Option<String>), E> {
    shaped.map(|shaped| {
        let rows = shaped
            .rows
            .into_iter()
            .map(|row| {
                let data = serde_json::from_str(&row.data).unwrap_or(serde_json::Value::Null);
                (row.entity, row.id, row.op, data)
            })
            .collect();
        (rows, shaped.complete_set)
    })
}

/// Upserts take the sparse path of `shape_raw`; it gives the same text and
/// the same errors as parsing the whole change and calling `shape` (the
/// same fields and values when this build keeps key order, see
/// [`maps_keep_insertion_order`]).
#[test]
fn raw_upserts_match_the_parsed_path() {
    let mut plugin = ShapePlugin::default();
    plugin.configure("users", users_config()).unwrap();
    let mut integer_ids = users_config();
    integer_ids["columns"][1]["type"] = json!("Integer");
    integer_ids["entity_name"] = json!("numbered");
    plugin.configure("numbered", integer_ids).unwrap();
    let mut whole = users_config();
    whole["columns"][11]["path"] = json!("");
    whole["entity_name"] = json!("whole");
    plugin.configure("whole", whole).unwrap();

    let documents = [
        ada().to_string(),
        r#"{"email": "a", "email": "b", "stats": {"logins": 3}, "stats.score": "2.5"}"#.into(),
        r#"{"address.geo.city": "Oslo", "address": {"geo.city": "Bergen"}, "tags": "t"}"#.into(),
        r#"{"tags": [{"$oid": "x"}], "extra": [1, {"a": null}], "active": "TRUE"}"#.into(),
        r#"{"e\u006dail": "escaped", "unused": {"deep": [1, 2, {"x": "\n"}]}}"#.into(),
        r#"{"stats": {"logins": "many"}}"#.into(),
        r#"{"active": 1}"#.into(),
        r#"{"unused": 1e400}"#.into(),
        r#"{"email": "x""#.into(),
        "[1, 2]".into(),
        "\"text\"".into(),
        "{}".into(),
    ];
    let mut outcomes = (0, 0);
    for entity in ["users", "numbered", "whole", "missing"] {
        for (n, document) in documents.iter().enumerate() {
            for id in ["17", "u1"] {
                let raw = RawChange {
                    source: "mongo".into(),
                    collection: "users".into(),
                    op: ChangeOp::Upsert,
                    id: id.into(),
                    document: Some(document.clone()),
                    current: None,
                };
                let expected = raw
                    .clone()
                    .parse()
                    .and_then(|change| plugin.shape(entity, change))
                    .map(RawShaped::from);
                if expected.is_ok() {
                    outcomes.0 += 1;
                } else {
                    outcomes.1 += 1;
                }
                let got = plugin.shape_raw(entity, raw);
                if maps_keep_insertion_order() {
                    assert_eq!(as_values(got), as_values(expected), "{entity} {n} {id}");
                } else {
                    assert_eq!(got, expected, "{entity} {n} {id}");
                }
            }
        }
    }
    assert!(outcomes.0 >= 10 && outcomes.1 >= 10, "{outcomes:?}");
}
