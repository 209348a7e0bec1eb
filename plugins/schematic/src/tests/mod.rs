#![allow(clippy::unwrap_used)]

//! Native tests through `testing::Harness`: the same adapter code as the
//! WebAssembly build, JSON serialised and parsed back, item errors as values.

mod companies;
mod config;
mod flags;
mod keys;
mod rest;
mod users;

use emcachers_plugin_sdk::testing::Harness;
use emcachers_plugin_sdk::{Change, Map, Row, RowOp, Shaped, Value, json};

use super::*;

/// A plugin with all three entities configured with `{}`.
fn harness() -> Harness<SchematicPlugin> {
    let mut h = Harness::default();
    for entity in [FLAGS, COMPANIES, USERS] {
        h.configure(entity, json!({})).unwrap();
    }
    h
}

/// `value` as a JSON object.
fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// A change from the `schematic` source.
fn from_schematic(change: Change) -> Change {
    change.from_source(SOURCE)
}

/// Shape one change that must succeed.
fn shape_ok(h: &Harness<SchematicPlugin>, entity: &str, change: Change) -> Shaped {
    match h.shape_one(entity, from_schematic(change)) {
        Ok(shaped) => shaped,
        Err(e) => panic!("shape failed: {e}"),
    }
}

/// Shape one change that must fail; the error message.
fn shape_err(h: &Harness<SchematicPlugin>, entity: &str, change: Change) -> String {
    match h.shape_one(entity, from_schematic(change)) {
        Ok(shaped) => panic!("expected an error, got {shaped:?}"),
        Err(e) => e,
    }
}

/// The single upsert row of a shaped change.
fn single_upsert(shaped: &Shaped) -> &Row {
    assert_eq!(shaped.rows.len(), 1, "expected one row: {shaped:?}");
    assert_eq!(shaped.complete_set, None);
    let row = &shaped.rows[0];
    assert_eq!(row.op, RowOp::Upsert);
    row
}

/// The data of the single upsert row, as a JSON value.
fn upserted(shaped: &Shaped) -> Value {
    Value::Object(single_upsert(shaped).data.clone())
}

/// A realistic rulesengine flag.
fn flag_fixture(id: &str, key: &str, default_value: bool) -> Value {
    json!({
        "id": id,
        "account_id": "acc_1",
        "environment_id": "env_prod",
        "key": key,
        "default_value": default_value,
        "rules": [{
            "id": format!("rule_{id}"),
            "flag_id": id,
            "account_id": "acc_1",
            "environment_id": "env_prod",
            "rule_type": "standard",
            "name": "Beta companies",
            "priority": 1,
            "conditions": [{
                "id": "cond_1",
                "account_id": "acc_1",
                "environment_id": "env_prod",
                "condition_type": "company",
                "operator": "eq",
                "resource_ids": ["comp_1", "comp_2"],
                "event_subtype": null,
                "metric_value": null,
                "metric_period": null,
                "metric_period_month_reset": null,
                "credit_id": null,
                "consumption_rate": null,
                "trait_definition": null,
                "trait_value": "",
                "comparison_trait_definition": null
            }],
            "condition_groups": [],
            "value": true
        }]
    })
}

/// A realistic rulesengine company with credit and metered entitlements and
/// a field from a newer server (`future_field`).
fn company_fixture() -> Value {
    json!({
        "id": "comp_1",
        "account_id": "acc_1",
        "environment_id": "env_prod",
        "base_plan_id": "plan_pro",
        "billing_product_ids": ["prod_pro"],
        "credit_balances": {"cred_ai": 120.5, "cred_sms": 10.0},
        "entitlements": [
            {
                "feature_id": "feat_ai",
                "feature_key": "ai-tokens",
                "value_type": "credit",
                "allocation": null,
                "credit_id": "cred_ai",
                "credit_remaining": 120.5,
                "credit_total": 200.0,
                "credit_used": 79.5,
                "event_name": null,
                "metric_period": null,
                "metric_reset_at": null,
                "month_reset": null,
                "soft_limit": null,
                "usage": null
            },
            {
                "feature_id": "feat_api",
                "feature_key": "api-calls",
                "value_type": "numeric",
                "allocation": 1000,
                "credit_id": null,
                "credit_remaining": null,
                "credit_total": null,
                "credit_used": null,
                "event_name": "api_call",
                "metric_period": "current_month",
                "metric_reset_at": "2024-06-01T00:00:00Z",
                "month_reset": "first_of_month",
                "soft_limit": null,
                "usage": 40
            },
            {
                "feature_id": "feat_exports",
                "feature_key": "exports",
                "value_type": "numeric",
                "allocation": 10,
                "credit_id": null,
                "credit_remaining": null,
                "credit_total": null,
                "credit_used": null,
                "event_name": "export",
                "metric_period": null,
                "metric_reset_at": null,
                "month_reset": null,
                "soft_limit": null,
                "usage": 2
            }
        ],
        "keys": {"Domain": "Acme.com", "stripe_id": "cus_123"},
        "metrics": [
            {
                "account_id": "acc_1",
                "environment_id": "env_prod",
                "company_id": "comp_1",
                "event_subtype": "api_call",
                "period": "current_month",
                "month_reset": "first_of_month",
                "value": 40,
                "created_at": "2024-05-01T00:00:00Z",
                "valid_until": "2024-06-01T00:00:00Z"
            },
            {
                "account_id": "acc_1",
                "environment_id": "env_prod",
                "company_id": "comp_1",
                "event_subtype": "export",
                "period": "all_time",
                "month_reset": "first_of_month",
                "value": 2,
                "created_at": "2024-05-01T00:00:00Z",
                "valid_until": null
            }
        ],
        "plan_ids": ["plan_pro"],
        "plan_version_ids": ["plan_pro_v2"],
        "rules": [],
        "subscription": {
            "id": "sub_1",
            "period_start": "2024-05-01T00:00:00Z",
            "period_end": "2024-06-01T00:00:00Z"
        },
        "traits": [{
            "trait_definition": {"id": "td_seats", "comparable_type": "int", "entity_type": "company"},
            "value": "25"
        }],
        "future_field": {"introduced_in": "2025"}
    })
}

/// A realistic rulesengine user with a field from a newer server.
fn user_fixture() -> Value {
    json!({
        "id": "user_1",
        "account_id": "acc_1",
        "environment_id": "env_prod",
        "keys": {"Email": "Ada@Example.com", "user_id": "u-42"},
        "traits": [{
            "trait_definition": {"id": "td_role", "comparable_type": "string", "entity_type": "user"},
            "value": "admin"
        }],
        "rules": [],
        "future_field": "kept"
    })
}
