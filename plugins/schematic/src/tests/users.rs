use super::*;

fn partial(fields: Value) -> Change {
    Change::partial(COLLECTION_USER, "user_1", fields).with_current(obj(user_fixture()))
}

fn merged(fields: Value) -> Value {
    let shaped = shape_ok(&harness(), USERS, partial(fields));
    let row = single_upsert(&shaped);
    assert_eq!(row.id, "user_1");
    assert_eq!(row.entity, "users");
    Value::Object(row.data.clone())
}

#[test]
fn full_message_upserts_the_whole_user() {
    let h = harness();
    let shaped = shape_ok(
        &h,
        USERS,
        Change::upsert(COLLECTION_USER, "user_1", user_fixture()),
    );
    assert_eq!(single_upsert(&shaped).id, "user_1");
    assert_eq!(upserted(&shaped), user_fixture());
}

#[test]
fn full_message_normalises_nulls() {
    let h = harness();
    let doc = json!({"id": "user_2", "account_id": null, "keys": null, "traits": null});
    let shaped = shape_ok(&h, USERS, Change::upsert(COLLECTION_USER, "user_2", doc));
    assert_eq!(
        upserted(&shaped),
        json!({"id": "user_2", "account_id": "", "environment_id": "", "keys": {}, "traits": [], "rules": []})
    );
}

#[test]
fn partial_keys_shallow_merge() {
    let got = merged(json!({"keys": {"Email": "ada@new.example", "slack_id": "U1"}}));
    let mut expected = user_fixture();
    expected["keys"] = json!({"Email": "ada@new.example", "user_id": "u-42", "slack_id": "U1"});
    assert_eq!(got, expected);
    assert_eq!(merged(json!({"keys": null})), user_fixture());
}

#[test]
fn partial_replaces_id_account_environment_traits_and_rules() {
    let fields = json!({
        "id": "user_1",
        "account_id": "acc_2",
        "environment_id": "env_staging",
        "traits": [{"trait_definition": {"id": "td_plan", "comparable_type": "string", "entity_type": "user"}, "value": "free"}],
        "rules": [{"id": "r1", "rule_type": "standard", "conditions": [], "condition_groups": []}]
    });
    let got = merged(fields.clone());
    let mut expected = user_fixture();
    for (field, value) in fields.as_object().unwrap() {
        expected[field] = value.clone();
    }
    assert_eq!(got, expected);
    // null lists become [].
    let got = merged(json!({"traits": null}));
    let mut expected = user_fixture();
    expected["traits"] = json!([]);
    assert_eq!(got, expected);
}

#[test]
fn partial_keeps_unknown_fields() {
    let got = merged(json!({"newer": true}));
    let mut expected = user_fixture();
    expected["newer"] = json!(true);
    assert_eq!(got, expected);
    assert_eq!(got["future_field"], "kept");
}

#[test]
fn partial_without_a_current_row_is_an_item_error() {
    let h = harness();
    let err = shape_err(
        &h,
        USERS,
        Change::partial(COLLECTION_USER, "user_1", json!({"keys": {}})),
    );
    assert!(err.contains("entity users, id user_1"), "{err}");
    assert!(err.contains("without a cached base"), "{err}");
}

#[test]
fn malformed_user_data_is_an_item_error() {
    let h = harness();
    let err = shape_err(&h, USERS, partial(json!({"keys": {"email": 1}})));
    assert!(
        err.contains("entity users, id user_1, field keys.email"),
        "{err}"
    );
    let err = shape_err(
        &h,
        USERS,
        Change::upsert(COLLECTION_USER, "user_1", json!({"rules": 3})),
    );
    assert!(err.contains("field rules"), "{err}");
}

#[test]
fn delete_is_a_delete_row() {
    let h = harness();
    let mut change = Change::delete(COLLECTION_USER, "user_1");
    change.document = Some(user_fixture());
    assert_eq!(
        shape_ok(&h, USERS, change),
        Shaped::row(Row::delete("users", "user_1"))
    );
}
