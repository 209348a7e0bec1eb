//! The compiled shape plugin on real documents: every column type, nested
//! paths, missing fields, and type errors as item values.

use std::time::Duration;

use emcachers::plugin::{Change, ChangeOp, ColumnType, ItemError, LoadedPlugin, RowOp};
use emcachers_tests::plugins;
use serde_json::{Value, json};

use crate::{registry, upsert};

fn users_config() -> Value {
    json!({
        "entity_name": "users",
        "source_name": "users",
        "columns": [
            {"name": "id", "type": "Text", "path": "_id"},
            {"name": "email", "type": "Text", "path": "contact.email"},
            {"name": "age", "type": "Integer", "path": "age"},
            {"name": "score", "type": "Number", "path": "stats.score"},
            {"name": "active", "type": "Bool", "path": "active"},
            {"name": "address", "type": "JSONB", "path": "address"},
            {"name": "extra", "type": "Any", "path": "extra"},
            {"name": "city", "type": "Text", "path": "address.city"}
        ],
        "indexes": [{"name": "users_email", "columns": ["email"], "unique": true}]
    })
}

fn shape_plugin() -> (
    std::sync::Arc<emcachers::plugin::PluginRegistry>,
    std::sync::Arc<LoadedPlugin>,
) {
    let registry = registry(Duration::from_secs(5), 64);
    registry
        .load_file(&plugins().shape)
        .expect("shape plugin loads");
    registry
        .assign("users", "shape", &users_config().to_string())
        .expect("config accepted");
    let plugin = registry.for_entity("users").expect("users served");
    (registry, plugin)
}

fn data(row: &emcachers::plugin::Row) -> Value {
    serde_json::from_str(&row.data).expect("row data is JSON")
}

#[test]
fn every_column_type_and_nested_paths() {
    let (_registry, plugin) = shape_plugin();
    let doc = json!({
        "_id": {"$oid": "65f0c0ffee"},
        "contact": {"email": "ada@example.com"},
        "age": {"$numberLong": "36"},
        "stats": {"score": 9.5},
        "active": true,
        "address": {"city": "London", "zip": "N1"},
        "extra": [1, 2],
        "ignored": "not a column"
    });
    let results = plugin.shape("users", &[upsert("users", "65f0c0ffee", doc)]);
    let shaped = results[0].as_ref().expect("valid document shapes");
    assert_eq!(shaped.rows.len(), 1);
    let row = &shaped.rows[0];
    assert_eq!(
        (row.entity.as_str(), row.id.as_str(), row.op),
        ("users", "65f0c0ffee", RowOp::Upsert)
    );
    assert_eq!(
        data(row),
        json!({
            "id": "65f0c0ffee", "email": "ada@example.com", "age": 36, "score": 9.5, "active": true,
            "address": {"city": "London", "zip": "N1"}, "extra": [1, 2], "city": "London"
        })
    );
}

#[test]
fn missing_fields_are_null() {
    let (_registry, plugin) = shape_plugin();
    let results = plugin.shape("users", &[upsert("users", "u2", json!({"_id": "u2"}))]);
    let row = &results[0].as_ref().expect("shapes").rows[0];
    let data = data(row);
    assert_eq!(data["id"], "u2");
    for column in [
        "email", "age", "score", "active", "address", "extra", "city",
    ] {
        assert_eq!(data[column], Value::Null, "{column} is null when missing");
    }
}

#[test]
fn type_errors_are_item_values_naming_entity_id_column_and_value() {
    let (_registry, plugin) = shape_plugin();
    let results = plugin.shape(
        "users",
        &[
            upsert("users", "ok1", json!({"_id": "ok1", "age": 3})),
            upsert("users", "bad", json!({"_id": "bad", "age": "three"})),
            upsert("users", "ok2", json!({"_id": "ok2", "active": "false"})),
        ],
    );
    assert!(results[0].is_ok());
    match &results[1] {
        Err(ItemError::Rejected { plugin, message }) => {
            assert!(plugin.starts_with("shape@"), "{plugin}");
            for needle in ["users", "bad", "age", "three"] {
                assert!(message.contains(needle), "{message:?} names {needle}");
            }
        }
        other => panic!("expected an item error, got {other:?}"),
    }
    assert_eq!(
        data(&results[2].as_ref().expect("third").rows[0])["active"],
        false
    );
}

#[test]
fn delete_and_partial() {
    let (_registry, plugin) = shape_plugin();
    let delete = Change {
        op: ChangeOp::Delete,
        document: None,
        ..upsert("users", "u1", json!({}))
    };
    let current = json!({"id": "u1", "email": "old@example.com", "age": 30, "score": null,
        "active": true, "address": null, "extra": null, "city": "Oslo"});
    let partial = Change {
        op: ChangeOp::Partial,
        current: Some(current.to_string()),
        ..upsert(
            "users",
            "u1",
            json!({"contact.email": "new@example.com", "age": 31}),
        )
    };
    let orphan = Change {
        op: ChangeOp::Partial,
        ..upsert("users", "u9", json!({"age": 1}))
    };
    let results = plugin.shape("users", &[delete, partial, orphan]);
    let deleted = &results[0].as_ref().expect("delete shapes").rows[0];
    assert_eq!((deleted.id.as_str(), deleted.op), ("u1", RowOp::Delete));
    let merged = data(&results[1].as_ref().expect("partial shapes").rows[0]);
    assert_eq!(merged["email"], "new@example.com");
    assert_eq!(merged["age"], 31);
    assert_eq!(
        merged["city"], "Oslo",
        "untouched columns keep their current value"
    );
    assert!(
        results[2].is_err(),
        "a partial change without a current row is an item error"
    );
}

#[test]
fn keys_version_and_table_layout() {
    let (registry, plugin) = shape_plugin();
    let rows = plugin.shape("users", &[upsert("users", "u1", json!({"_id": "u1"}))]);
    let row = rows[0].as_ref().expect("shapes").rows[0].clone();
    let writes = plugin.keys("users", std::slice::from_ref(&row));
    let writes = writes[0].as_ref().expect("keys");
    let version = plugin.entity_version("users").expect("version");
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].key, format!("users:{version}:u1"));
    assert_eq!(
        serde_json::from_str::<Value>(&writes[0].value).expect("json"),
        data(&row)
    );

    let layout = plugin
        .table("users")
        .expect("table call")
        .expect("a layout");
    assert_eq!(layout.columns[0].name, "id");
    assert_eq!(
        layout
            .columns
            .iter()
            .find(|c| c.name == "age")
            .map(|c| c.type_),
        Some(ColumnType::Integer)
    );
    assert_eq!(layout.indexes[0].columns, vec!["email".to_owned()]);
    assert!(layout.indexes[0].unique);

    // A different shape is a different layout version.
    let mut changed = users_config();
    changed["columns"].as_array_mut().expect("columns").pop();
    registry
        .assign("users", "shape", &changed.to_string())
        .expect("accepted");
    let new_version = plugin.entity_version("users").expect("version");
    assert_ne!(version, new_version);
}

#[test]
fn unconfigured_entity_is_an_item_error() {
    let (_registry, plugin) = shape_plugin();
    let results = plugin.shape("orders", &[upsert("orders", "o1", json!({"_id": "o1"}))]);
    assert!(
        matches!(&results[0], Err(ItemError::Rejected { message, .. }) if message.contains("orders"))
    );
}
