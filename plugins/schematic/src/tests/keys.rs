use emcachers_plugin_sdk::CacheWrite;

use super::*;

fn keys_of(h: &Harness<SchematicPlugin>, entity: &str, row: Row) -> Vec<CacheWrite> {
    h.keys(entity, &[row]).remove(0).unwrap()
}

fn shaped_row(h: &Harness<SchematicPlugin>, entity: &str, change: Change) -> Row {
    single_upsert(&shape_ok(h, entity, change)).clone()
}

#[test]
fn flag_key_is_the_lower_cased_flag_key() {
    let h = harness();
    let row = shaped_row(
        &h,
        FLAGS,
        Change::upsert(
            COLLECTION_FLAG,
            "flag_1",
            flag_fixture("flag_1", "New-Dashboard", true),
        ),
    );
    let writes = keys_of(&h, FLAGS, row);
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].key, "schematic:flags:v1:new-dashboard");
    let value: Value = serde_json::from_str(&writes[0].value).unwrap();
    assert_eq!(value, flag_fixture("flag_1", "New-Dashboard", true));
}

#[test]
fn company_keys_are_the_entity_and_one_lookup_per_key() {
    let h = harness();
    let mut doc = company_fixture();
    doc["id"] = json!("Comp_ABC");
    let row = shaped_row(
        &h,
        COMPANIES,
        Change::upsert(COLLECTION_COMPANY, "Comp_ABC", doc.clone()),
    );
    let writes = keys_of(&h, COMPANIES, row);
    let pairs: Vec<(&str, &str)> = writes
        .iter()
        .map(|w| (w.key.as_str(), w.value.as_str()))
        .collect();
    assert_eq!(pairs.len(), 3);
    // The id is not lower-cased.
    assert_eq!(pairs[0].0, "schematic:company:v1:Comp_ABC");
    assert_eq!(serde_json::from_str::<Value>(pairs[0].1).unwrap(), doc);
    // Lookups: lower(name):lower(value) → the id as a JSON string, quotes included.
    assert_eq!(
        pairs[1..],
        [
            ("schematic:company:v1:domain:acme.com", "\"Comp_ABC\""),
            ("schematic:company:v1:stripe_id:cus_123", "\"Comp_ABC\""),
        ]
    );
}

#[test]
fn user_keys_use_the_user_segment() {
    let h = harness();
    let row = shaped_row(
        &h,
        USERS,
        Change::upsert(COLLECTION_USER, "user_1", user_fixture()),
    );
    let writes = keys_of(&h, USERS, row);
    let pairs: Vec<(&str, &str)> = writes
        .iter()
        .map(|w| (w.key.as_str(), w.value.as_str()))
        .collect();
    assert_eq!(pairs[0].0, "schematic:user:v1:user_1");
    assert_eq!(
        pairs[1..],
        [
            ("schematic:user:v1:email:ada@example.com", "\"user_1\""),
            ("schematic:user:v1:user_id:u-42", "\"user_1\""),
        ]
    );
}

#[test]
fn keys_use_the_configured_version() {
    let mut h = harness();
    for entity in [FLAGS, COMPANIES, USERS] {
        h.configure(entity, json!({"cache_version": "5e1f0c2a"}))
            .unwrap();
    }
    let flag = Row::upsert_map(FLAGS, "beta", obj(flag_fixture("f", "Beta", false)));
    assert_eq!(
        keys_of(&h, FLAGS, flag)[0].key,
        "schematic:flags:5e1f0c2a:beta"
    );
    let company = Row::upsert_map(COMPANIES, "comp_1", obj(company_fixture()));
    let keys: Vec<String> = keys_of(&h, COMPANIES, company)
        .into_iter()
        .map(|w| w.key)
        .collect();
    assert_eq!(
        keys,
        [
            "schematic:company:5e1f0c2a:comp_1",
            "schematic:company:5e1f0c2a:domain:acme.com",
            "schematic:company:5e1f0c2a:stripe_id:cus_123",
        ]
    );
    let user = Row::upsert_map(USERS, "user_1", obj(user_fixture()));
    assert_eq!(
        keys_of(&h, USERS, user)[0].key,
        "schematic:user:5e1f0c2a:user_1"
    );
}

#[test]
fn delete_rows_imply_no_writes() {
    let h = harness();
    for entity in [FLAGS, COMPANIES, USERS] {
        assert_eq!(keys_of(&h, entity, Row::delete(entity, "x")), []);
    }
}

#[test]
fn ids_are_json_escaped_in_lookup_values() {
    let h = harness();
    let row = Row::upsert_map(
        USERS,
        "u\"1",
        obj(json!({"id": "u\"1", "keys": {"Email": "Ä@Example.com"}})),
    );
    let writes = keys_of(&h, USERS, row);
    assert_eq!(writes[1].key, "schematic:user:v1:email:ä@example.com");
    assert_eq!(writes[1].value, r#""u\"1""#);
    assert_eq!(
        serde_json::from_str::<String>(&writes[1].value).unwrap(),
        "u\"1"
    );
}

#[test]
fn lookups_that_collide_after_lower_casing_are_written_once() {
    let h = harness();
    let row = Row::upsert_map(
        COMPANIES,
        "comp_1",
        obj(json!({"id": "comp_1", "keys": {"Domain": "ACME.com", "domain": "acme.COM"}})),
    );
    let keys: Vec<String> = keys_of(&h, COMPANIES, row)
        .into_iter()
        .map(|w| w.key)
        .collect();
    assert_eq!(
        keys,
        [
            "schematic:company:v1:comp_1",
            "schematic:company:v1:domain:acme.com"
        ]
    );
}

#[test]
fn entities_without_keys_write_only_the_entity() {
    let h = harness();
    let row = Row::upsert_map(
        COMPANIES,
        "comp_1",
        obj(json!({"id": "comp_1", "keys": {}})),
    );
    assert_eq!(keys_of(&h, COMPANIES, row).len(), 1);
    // A row without an id field falls back to the row id.
    let row = Row::upsert_map(COMPANIES, "comp_2", obj(json!({"keys": {"a": "b"}})));
    let writes = keys_of(&h, COMPANIES, row);
    assert_eq!(writes[0].key, "schematic:company:v1:comp_2");
    assert_eq!(writes[1].value, "\"comp_2\"");
}

#[test]
fn malformed_rows_are_item_errors() {
    let h = harness();
    let results = h.keys(
        COMPANIES,
        &[
            Row::upsert_map(
                COMPANIES,
                "comp_1",
                obj(json!({"id": "comp_1", "keys": {"domain": 1}})),
            ),
            Row::upsert_map(
                COMPANIES,
                "comp_2",
                obj(json!({"id": "comp_2", "keys": "x"})),
            ),
            Row::upsert_map(COMPANIES, "comp_3", obj(company_fixture())),
        ],
    );
    assert!(
        results[0]
            .as_ref()
            .unwrap_err()
            .contains("entity companies, id comp_1, field keys.domain")
    );
    assert!(
        results[1]
            .as_ref()
            .unwrap_err()
            .contains("id comp_2, field keys")
    );
    assert_eq!(
        results[2].as_ref().unwrap()[0].key,
        "schematic:company:v1:comp_1"
    );
    let err = h
        .keys(
            FLAGS,
            &[Row::upsert_map(FLAGS, "x", obj(json!({"id": "x"})))],
        )
        .remove(0)
        .unwrap_err();
    assert!(err.contains("entity flags, id x, field key"), "{err}");
}

#[test]
fn bulk_flags_shape_and_key_end_to_end() {
    let h = harness();
    let change = Change::upsert(
        COLLECTION_FLAGS,
        "*",
        json!([
            flag_fixture("f1", "Alpha", true),
            flag_fixture("f2", "BETA-2", false)
        ]),
    );
    let shaped = shape_ok(&h, FLAGS, change);
    let keys: Vec<String> = h
        .keys(FLAGS, &shaped.rows)
        .into_iter()
        .flat_map(|r| r.unwrap())
        .map(|w| w.key)
        .collect();
    assert_eq!(
        keys,
        ["schematic:flags:v1:alpha", "schematic:flags:v1:beta-2"]
    );
}

/// The raw path (row text as the value, only `id`/`key`/`keys` parsed) gives
/// exactly what the parsed path gives, errors included.
#[test]
fn raw_keys_equal_parsed_keys() {
    use emcachers_plugin_sdk::RawRow;

    let h = harness();
    let plugin = {
        let mut p = SchematicPlugin::default();
        for entity in [FLAGS, COMPANIES, USERS] {
            p.configure(entity, json!({})).unwrap();
        }
        p
    };
    let mut rows = vec![
        shaped_row(
            &h,
            FLAGS,
            Change::upsert(COLLECTION_FLAG, "f", flag_fixture("f", "Mixed-Case", false)),
        ),
        shaped_row(
            &h,
            COMPANIES,
            Change::upsert(COLLECTION_COMPANY, "comp_1", company_fixture()),
        ),
    ];
    let mut bad_keys = rows[1].clone();
    bad_keys.data.insert("keys".into(), json!({"domain": 7}));
    rows.push(bad_keys);
    let mut no_id = rows[1].clone();
    no_id.data.remove("id");
    no_id.id = String::new();
    rows.push(no_id);
    for row in rows {
        let entity = row.entity.clone();
        let parsed = plugin.keys(&entity, &row).map_err(|e| e.to_string());
        let raw = plugin
            .keys_raw(&entity, RawRow::from(row))
            .map_err(|e| e.to_string());
        assert_eq!(raw, parsed);
    }
    // Not an object: the full parse names the problem.
    let raw = plugin.keys_raw(COMPANIES, RawRow::upsert(COMPANIES, "c", "[1]".into()));
    assert!(raw.is_err());
}
