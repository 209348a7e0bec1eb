use emcachers_plugin_sdk::ChangeOp;

use super::*;

fn bulk(op: ChangeOp, data: Value) -> Change {
    let change = Change::upsert(COLLECTION_FLAGS, "*", data);
    Change { op, ..change }
}

#[test]
fn bulk_full_is_one_upsert_per_flag_and_a_complete_set() {
    let h = harness();
    let flags = json!([
        flag_fixture("flag_1", "New-Dashboard", false),
        flag_fixture("flag_2", "ai-assistant", true),
    ]);
    let shaped = shape_ok(&h, FLAGS, bulk(ChangeOp::Upsert, flags.clone()));
    assert_eq!(shaped.complete_set.as_deref(), Some("flags"));
    let ids: Vec<&str> = shaped.rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["new-dashboard", "ai-assistant"]);
    for (row, flag) in shaped.rows.iter().zip(flags.as_array().unwrap()) {
        assert_eq!(row.op, RowOp::Upsert);
        assert_eq!(row.entity, "flags");
        // Complete flags come through unchanged (key keeps its case).
        assert_eq!(&Value::Object(row.data.clone()), flag);
    }
}

#[test]
fn bulk_partial_is_treated_as_the_complete_set_too() {
    let h = harness();
    let shaped = shape_ok(
        &h,
        FLAGS,
        bulk(
            ChangeOp::Partial,
            json!([flag_fixture("flag_1", "beta", true)]),
        ),
    );
    assert_eq!(shaped.complete_set.as_deref(), Some("flags"));
    assert_eq!(shaped.rows.len(), 1);
    assert_eq!(shaped.rows[0].id, "beta");
}

#[test]
fn bulk_empty_array_is_an_empty_complete_set() {
    let h = harness();
    let shaped = shape_ok(&h, FLAGS, bulk(ChangeOp::Upsert, json!([])));
    assert_eq!(shaped, Shaped::complete_set("flags", Vec::new()));
}

#[test]
fn bulk_keeps_the_last_of_duplicate_keys_and_skips_nulls() {
    let h = harness();
    let shaped = shape_ok(
        &h,
        FLAGS,
        bulk(
            ChangeOp::Upsert,
            json!([
                flag_fixture("flag_1", "Beta", false),
                null,
                flag_fixture("flag_2", "other", false),
                flag_fixture("flag_1", "beta", true),
            ]),
        ),
    );
    let ids: Vec<&str> = shaped.rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["beta", "other"]);
    assert_eq!(shaped.rows[0].data["key"], "beta");
    assert_eq!(shaped.rows[0].data["default_value"], true);
}

#[test]
fn bulk_normalises_nulls_and_keeps_unknown_fields() {
    let h = harness();
    let shaped = shape_ok(
        &h,
        FLAGS,
        bulk(
            ChangeOp::Upsert,
            json!([
                {"key": "bare"},
                {
                    "id": "flag_9",
                    "key": "Nested",
                    "default_value": true,
                    "rules": [{
                        "id": "r1",
                        "rule_type": "global_override",
                        "conditions": null,
                        "condition_groups": [{"conditions": [{"id": "c1", "resource_ids": null}]}, null],
                        "value": true,
                        "new_rule_field": 1
                    }, null],
                    "flag_level_extra": "kept"
                }
            ]),
        ),
    );
    assert_eq!(
        Value::Object(shaped.rows[0].data.clone()),
        json!({
            "id": "",
            "account_id": "",
            "environment_id": "",
            "key": "bare",
            "default_value": false,
            "rules": []
        })
    );
    assert_eq!(
        Value::Object(shaped.rows[1].data.clone()),
        json!({
            "id": "flag_9",
            "account_id": "",
            "environment_id": "",
            "key": "Nested",
            "default_value": true,
            "rules": [{
                "id": "r1",
                "rule_type": "global_override",
                "conditions": [],
                "condition_groups": [{"conditions": [{"id": "c1", "resource_ids": []}]}],
                "value": true,
                "new_rule_field": 1
            }],
            "flag_level_extra": "kept"
        })
    );
}

#[test]
fn a_malformed_flag_fails_the_whole_bulk_message() {
    let h = harness();
    let err = shape_err(
        &h,
        FLAGS,
        bulk(
            ChangeOp::Upsert,
            json!([flag_fixture("f1", "ok", true), {"id": "f2"}]),
        ),
    );
    assert!(err.contains("entity flags"), "{err}");
    assert!(err.contains("[1].key"), "{err}");

    let err = shape_err(
        &h,
        FLAGS,
        bulk(
            ChangeOp::Upsert,
            json!([flag_fixture("f1", "ok", true), "nope"]),
        ),
    );
    assert!(err.contains("[1]"), "{err}");
    assert!(err.contains("\"nope\""), "{err}");

    let err = shape_err(
        &h,
        FLAGS,
        bulk(
            ChangeOp::Upsert,
            json!([{"key": "k", "default_value": "yes"}]),
        ),
    );
    assert!(err.contains("[0].default_value"), "{err}");

    let err = shape_err(
        &h,
        FLAGS,
        bulk(ChangeOp::Upsert, json!([{"key": "k", "rules": {"a": 1}}])),
    );
    assert!(err.contains("[0].rules"), "{err}");

    let err = shape_err(&h, FLAGS, bulk(ChangeOp::Upsert, json!({"key": "k"})));
    assert!(err.contains("array"), "{err}");

    let err = shape_err(&h, FLAGS, bulk(ChangeOp::Upsert, Value::Null));
    assert!(err.contains("no data"), "{err}");
}

#[test]
fn single_flag_full_is_an_upsert() {
    let h = harness();
    let flag = flag_fixture("flag_1", "New-Dashboard", true);
    let shaped = shape_ok(
        &h,
        FLAGS,
        Change::upsert(COLLECTION_FLAG, "flag_1", flag.clone()),
    );
    let row = single_upsert(&shaped);
    assert_eq!(row.id, "new-dashboard");
    assert_eq!(Value::Object(row.data.clone()), flag);
}

#[test]
fn single_flag_partial_replaces_the_whole_flag() {
    let h = harness();
    let mut current = obj(flag_fixture("flag_1", "beta", false));
    current.insert("stale_field".into(), json!("from the old version"));
    let partial = json!({"id": "flag_1", "key": "beta", "default_value": true});
    let change = Change::partial(COLLECTION_FLAG, "flag_1", partial).with_current(current);
    let shaped = shape_ok(&h, FLAGS, change);
    assert_eq!(
        upserted(&shaped),
        json!({
            "id": "flag_1",
            "account_id": "",
            "environment_id": "",
            "key": "beta",
            "default_value": true,
            "rules": []
        })
    );
}

#[test]
fn single_flag_errors() {
    let h = harness();
    let err = shape_err(
        &h,
        FLAGS,
        Change::upsert(
            COLLECTION_FLAG,
            "flag_1",
            json!({"id": "flag_1", "key": ""}),
        ),
    );
    assert!(err.contains("id flag_1"), "{err}");
    assert!(err.contains("field key"), "{err}");
    let err = shape_err(
        &h,
        FLAGS,
        Change::upsert(COLLECTION_FLAG, "flag_1", json!({"key": 5})),
    );
    assert!(err.contains("expected a string, found 5"), "{err}");
    let err = shape_err(
        &h,
        FLAGS,
        Change::upsert(COLLECTION_FLAG, "flag_1", json!([1])),
    );
    assert!(err.contains("flag object"), "{err}");
    let err = shape_err(
        &h,
        FLAGS,
        Change::upsert(COLLECTION_FLAG, "flag_1", Value::Null),
    );
    assert!(err.contains("no data"), "{err}");
}

fn flag_delete(collection: &str, id: &str, data: Option<Value>) -> Change {
    let mut change = Change::delete(collection, id);
    change.document = data;
    change
}

#[test]
fn flag_delete_by_key() {
    let h = harness();
    for collection in [COLLECTION_FLAG, COLLECTION_FLAGS] {
        let shaped = shape_ok(
            &h,
            FLAGS,
            flag_delete(collection, "flag_1", Some(json!({"key": "New-Dashboard"}))),
        );
        assert_eq!(shaped, Shaped::row(Row::delete("flags", "new-dashboard")));
    }
}

#[test]
fn flag_delete_of_a_whole_flag_uses_its_key() {
    let h = harness();
    let shaped = shape_ok(
        &h,
        FLAGS,
        flag_delete(
            COLLECTION_FLAG,
            "flag_1",
            Some(flag_fixture("flag_1", "Beta", false)),
        ),
    );
    assert_eq!(shaped, Shaped::row(Row::delete("flags", "beta")));
}

#[test]
fn flag_delete_by_id() {
    let h = harness();
    // As Schematic's Go replicator: an id without a key names the flag.
    let shaped = shape_ok(
        &h,
        FLAGS,
        flag_delete(COLLECTION_FLAG, "*", Some(json!({"id": "Beta"}))),
    );
    assert_eq!(shaped, Shaped::row(Row::delete("flags", "beta")));
    let shaped = shape_ok(
        &h,
        FLAGS,
        flag_delete(
            COLLECTION_FLAG,
            "",
            Some(json!({"key": "", "id": "flag_7"})),
        ),
    );
    assert_eq!(shaped, Shaped::row(Row::delete("flags", "flag_7")));
}

#[test]
fn flag_delete_without_data_uses_the_change_id() {
    let h = harness();
    let shaped = shape_ok(&h, FLAGS, flag_delete(COLLECTION_FLAG, "Beta", None));
    assert_eq!(shaped, Shaped::row(Row::delete("flags", "beta")));
    let shaped = shape_ok(
        &h,
        FLAGS,
        flag_delete(COLLECTION_FLAG, "beta", Some(json!({}))),
    );
    assert_eq!(shaped, Shaped::row(Row::delete("flags", "beta")));
}

#[test]
fn bulk_delete_of_an_array_deletes_each_flag() {
    let h = harness();
    let shaped = shape_ok(
        &h,
        FLAGS,
        flag_delete(
            COLLECTION_FLAGS,
            "*",
            Some(json!([{"key": "A"}, null, {"id": "b"}, {"key": "a"}])),
        ),
    );
    assert_eq!(
        shaped,
        Shaped::rows(vec![Row::delete("flags", "a"), Row::delete("flags", "b")])
    );
}

#[test]
fn flag_delete_naming_no_flag_is_an_item_error() {
    let h = harness();
    let err = shape_err(
        &h,
        FLAGS,
        flag_delete(COLLECTION_FLAG, "*", Some(json!({"name": "x"}))),
    );
    assert!(err.contains("neither key nor id"), "{err}");
    let err = shape_err(&h, FLAGS, flag_delete(COLLECTION_FLAG, "", None));
    assert!(err.contains("neither key nor id"), "{err}");
    let err = shape_err(
        &h,
        FLAGS,
        flag_delete(COLLECTION_FLAGS, "*", Some(json!([{"key": "a"}, {}]))),
    );
    assert!(err.contains("[1]"), "{err}");
    let err = shape_err(
        &h,
        FLAGS,
        flag_delete(COLLECTION_FLAG, "*", Some(json!("beta"))),
    );
    assert!(err.contains("key or id"), "{err}");
}

#[test]
fn a_bad_flag_fails_only_its_item_in_a_batch() {
    let h = harness();
    let results = h.shape(
        FLAGS,
        &[
            Change::upsert(COLLECTION_FLAG, "f1", flag_fixture("f1", "one", true)),
            Change::upsert(COLLECTION_FLAG, "f2", json!({"id": "f2", "key": ["two"]})),
            flag_delete(COLLECTION_FLAG, "f3", Some(json!({"key": "three"}))),
        ],
    );
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].as_ref().unwrap().rows[0].id, "one");
    let err = results[1].as_ref().unwrap_err();
    assert!(err.contains("entity flags, id f2, field key"), "{err}");
    assert_eq!(
        results[2].as_ref().unwrap().rows,
        [Row::delete("flags", "three")]
    );
}
