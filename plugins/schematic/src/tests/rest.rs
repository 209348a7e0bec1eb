use super::*;
use crate::rest::{comparable_type, format_unix};

/// A REST `CompanyDetailResponseData`, abridged but with every field the
/// conversion reads and several it ignores.
fn rest_company() -> Value {
    json!({
        "id": "comp_1",
        "name": "Acme",
        "environment_id": "env_prod",
        "user_count": 12,
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-05-02T00:00:00Z",
        "logo_url": null,
        "keys": [
            {"id": "ek_1", "definition_id": "ekd_1", "entity_id": "comp_1", "entity_type": "company",
             "environment_id": "env_prod", "key": "Domain", "value": "Acme.com",
             "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"},
            {"id": "ek_2", "definition_id": "ekd_2", "entity_id": "comp_1", "entity_type": "company",
             "environment_id": "env_prod", "key": "stripe_id", "value": "cus_123",
             "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"}
        ],
        "entity_traits": [
            {"id": "et_1", "definition_id": "td_seats", "environment_id": "env_prod", "value": "25",
             "definition": {"id": "td_seats", "display_name": "Seats", "entity_type": "company",
                            "hierarchy": ["seats"], "trait_type": "number"}},
            {"id": "et_2", "definition_id": "td_vip", "environment_id": "env_prod", "value": "true",
             "definition": {"id": "td_vip", "display_name": "VIP", "entity_type": "company",
                            "hierarchy": ["vip"], "trait_type": "boolean"}},
            {"id": "et_3", "definition_id": "td_gone", "environment_id": "env_prod", "value": "x"}
        ],
        "traits": {"seats": 25, "vip": true},
        "plan": {"id": "plan_pro", "name": "Pro", "plan_version_id": "plan_pro_v2", "included_credit_grants": []},
        "add_ons": [
            {"id": "addon_ai", "name": "AI", "plan_version_id": "addon_ai_v1", "included_credit_grants": []},
            {"id": "addon_old", "name": "Legacy", "plan_version_id": null, "included_credit_grants": []}
        ],
        "plans": [
            {"id": "plan_pro", "name": "Pro"},
            {"id": "addon_ai", "name": "AI"}
        ],
        "billing_subscription": {
            "id": "sub_1",
            "subscription_external_id": "sub_stripe_1",
            "period_start": 1714521600,
            "period_end": 1717200000,
            "status": "active",
            "products": [
                {"id": "prod_pro", "name": "Pro", "price": 4900, "quantity": 1.0},
                {"id": "prod_ai", "name": "AI", "price": 900, "quantity": 1.0}
            ]
        },
        "billing_subscriptions": [
            {"id": "sub_1", "period_start": 1714521600, "period_end": 1717200000,
             "products": [{"id": "prod_pro"}, {"id": "prod_seats"}]},
            {"id": "sub_0", "period_start": 1711929600, "period_end": 1714521600,
             "products": [{"id": "prod_pro"}, {"id": ""}]}
        ],
        "billing_credit_balances": {"cred_ai": 120.5},
        "metrics": [
            {"account_id": "acc_1", "environment_id": "env_prod", "company_id": "comp_1",
             "event_subtype": "api_call", "period": "current_month", "month_reset": "first_of_month",
             "value": 40, "created_at": "2024-05-01T00:00:00Z", "valid_until": "2024-06-01T00:00:00Z",
             "captured_at_max": "2024-05-10T00:00:00Z", "captured_at_min": "2024-05-01T00:00:00Z"},
            {"account_id": "acc_1", "environment_id": "env_prod", "company_id": "comp_1",
             "event_subtype": "export", "period": "lifetime", "month_reset": "whenever",
             "value": 2.9, "created_at": "2024-05-01T00:00:00Z"}
        ],
        "rules": [
            {"id": "r_override", "account_id": "acc_1", "environment_id": "env_prod", "flag_id": "flag_1",
             "name": "Override", "priority": 0, "rule_type": "company_override", "value": true,
             "conditions": [
                 {"id": "c1", "account_id": "acc_1", "environment_id": "env_prod", "condition_type": "company",
                  "operator": "equals", "resource_ids": ["comp_1"], "trait_value": ""},
                 {"id": "c2", "account_id": "acc_1", "environment_id": "env_prod", "condition_type": "trait",
                  "operator": "gte", "resource_ids": null, "trait_value": "10",
                  "trait_definition": {"id": "td_seats", "comparable_type": "number", "entity_type": "company"}}
             ],
             "condition_groups": null},
            {"id": "r_exceeded", "account_id": "acc_1", "environment_id": "env_prod", "flag_id": "flag_2",
             "name": "Exceeded", "priority": 1, "rule_type": "company_override_usage_exceeded", "value": false,
             "conditions": [
                 {"id": "c3", "condition_type": "metric", "operator": "greater_than", "resource_ids": [],
                  "event_subtype": "api_call", "metric_value": 1000, "metric_period": "weird",
                  "metric_period_month_reset": "billing_cycle", "trait_value": ""}
             ],
             "condition_groups": []},
            {"id": "r_standard", "rule_type": "standard", "conditions": [], "condition_groups": []},
            {"id": "r_plan", "rule_type": "plan_entitlement", "conditions": [], "condition_groups": []}
        ],
        "entitlements": [
            {"feature_id": "feat_ai", "feature_key": "ai-tokens", "value_type": "credit",
             "credit_id": "cred_ai", "credit_remaining": 120.5, "credit_total": 200.0, "credit_used": 79.5}
        ],
        "payment_methods": [],
        "custom_plan_billings": []
    })
}

/// What `rest_company` becomes.
fn converted_company() -> Value {
    json!({
        "id": "comp_1",
        "account_id": "",
        "environment_id": "env_prod",
        "base_plan_id": "plan_pro",
        "billing_product_ids": ["prod_pro", "prod_seats", "prod_ai"],
        "credit_balances": {"cred_ai": 120.5},
        "entitlements": [
            {"feature_id": "feat_ai", "feature_key": "ai-tokens", "value_type": "credit",
             "credit_id": "cred_ai", "credit_remaining": 120.5, "credit_total": 200.0, "credit_used": 79.5}
        ],
        "keys": {"Domain": "Acme.com", "stripe_id": "cus_123"},
        "metrics": [
            {"account_id": "acc_1", "environment_id": "env_prod", "company_id": "comp_1",
             "event_subtype": "api_call", "period": "current_month", "month_reset": "first_of_month",
             "value": 40, "created_at": "2024-05-01T00:00:00Z", "valid_until": "2024-06-01T00:00:00Z"},
            {"account_id": "acc_1", "environment_id": "env_prod", "company_id": "comp_1",
             "event_subtype": "export", "period": "all_time", "month_reset": "first_of_month",
             "value": 2, "created_at": "2024-05-01T00:00:00Z", "valid_until": null}
        ],
        "plan_ids": ["plan_pro", "addon_ai"],
        "plan_version_ids": ["plan_pro_v2", "addon_ai_v1"],
        "rules": [
            {"id": "r_override", "account_id": "acc_1", "environment_id": "env_prod", "flag_id": "flag_1",
             "name": "Override", "priority": 0, "rule_type": "company_override", "value": true,
             "conditions": [
                 {"id": "c1", "account_id": "acc_1", "environment_id": "env_prod", "condition_type": "company",
                  "operator": "eq", "resource_ids": ["comp_1"], "trait_value": ""},
                 {"id": "c2", "account_id": "acc_1", "environment_id": "env_prod", "condition_type": "trait",
                  "operator": "gte", "resource_ids": [], "trait_value": "10",
                  "trait_definition": {"id": "td_seats", "comparable_type": "int", "entity_type": "company"}}
             ],
             "condition_groups": []},
            {"id": "r_exceeded", "account_id": "acc_1", "environment_id": "env_prod", "flag_id": "flag_2",
             "name": "Exceeded", "priority": 1, "rule_type": "company_override_usage_exceeded", "value": false,
             "conditions": [
                 {"id": "c3", "condition_type": "metric", "operator": "gt", "resource_ids": [],
                  "event_subtype": "api_call", "metric_value": 1000, "metric_period": "all_time",
                  "metric_period_month_reset": "billing_cycle", "trait_value": ""}
             ],
             "condition_groups": []}
        ],
        "subscription": {"id": "sub_1", "period_start": "2024-05-01T00:00:00Z", "period_end": "2024-06-01T00:00:00Z"},
        "traits": [
            {"trait_definition": {"id": "td_seats", "comparable_type": "int", "entity_type": "company"}, "value": "25"},
            {"trait_definition": {"id": "td_vip", "comparable_type": "bool", "entity_type": "company"}, "value": "true"}
        ]
    })
}

#[test]
fn rest_company_is_converted_to_the_rulesengine_shape() {
    let h = harness();
    let shaped = shape_ok(
        &h,
        COMPANIES,
        Change::upsert(COLLECTION_REST_COMPANY, "comp_1", rest_company()),
    );
    let row = single_upsert(&shaped);
    assert_eq!(row.id, "comp_1");
    assert_eq!(Value::Object(row.data.clone()), converted_company());
}

#[test]
fn converted_rest_company_keys_like_a_datastream_one() {
    let h = harness();
    let shaped = shape_ok(
        &h,
        COMPANIES,
        Change::upsert(COLLECTION_REST_COMPANY, "comp_1", rest_company()),
    );
    let keys: Vec<(String, String)> = h
        .keys(COMPANIES, &shaped.rows)
        .remove(0)
        .unwrap()
        .into_iter()
        .skip(1)
        .map(|w| (w.key, w.value))
        .collect();
    assert_eq!(
        keys,
        [
            (
                "schematic:company:v1:domain:acme.com".to_owned(),
                "\"comp_1\"".to_owned()
            ),
            (
                "schematic:company:v1:stripe_id:cus_123".to_owned(),
                "\"comp_1\"".to_owned()
            ),
        ]
    );
}

#[test]
fn minimal_rest_company_gets_empty_lists_and_maps() {
    let h = harness();
    let shaped = shape_ok(
        &h,
        COMPANIES,
        Change::upsert(COLLECTION_REST_COMPANY, "comp_2", json!({"id": "comp_2"})),
    );
    assert_eq!(
        upserted(&shaped),
        json!({
            "id": "comp_2",
            "account_id": "",
            "environment_id": "",
            "base_plan_id": null,
            "billing_product_ids": [],
            "credit_balances": {},
            "entitlements": [],
            "keys": {},
            "metrics": [],
            "plan_ids": [],
            "plan_version_ids": [],
            "rules": [],
            "subscription": null,
            "traits": []
        })
    );
}

#[test]
fn rest_user_is_converted_to_the_rulesengine_shape() {
    let h = harness();
    let doc = json!({
        "id": "user_1",
        "name": "Ada",
        "environment_id": "env_prod",
        "keys": [{"key": "Email", "value": "Ada@Example.com", "entity_type": "user"}],
        "entity_traits": [
            {"value": "2024-01-31", "definition": {"id": "td_signup", "trait_type": "date"}},
            {"value": "admin", "definition": {"id": "td_role", "trait_type": "string"}}
        ],
        "company_memberships": [{"company_id": "comp_1"}],
        "traits": {"role": "admin"}
    });
    let shaped = shape_ok(
        &h,
        USERS,
        Change::upsert(COLLECTION_REST_USER, "user_1", doc),
    );
    assert_eq!(
        upserted(&shaped),
        json!({
            "id": "user_1",
            "account_id": "",
            "environment_id": "env_prod",
            "keys": {"Email": "Ada@Example.com"},
            "traits": [
                {"trait_definition": {"id": "td_signup", "comparable_type": "date", "entity_type": "user"}, "value": "2024-01-31"},
                {"trait_definition": {"id": "td_role", "comparable_type": "string", "entity_type": "user"}, "value": "admin"}
            ],
            "rules": []
        })
    );
}

#[test]
fn trait_types_map_to_comparable_types() {
    for (trait_type, comparable) in [
        (Some("boolean"), "bool"),
        (Some("bool"), "bool"),
        (Some("number"), "int"),
        (Some("int"), "int"),
        (Some("integer"), "int"),
        (Some("date"), "date"),
        (Some("string"), "string"),
        (Some("currency"), "string"),
        (Some("url"), "string"),
        (None, "string"),
    ] {
        assert_eq!(comparable_type(trait_type), comparable, "{trait_type:?}");
    }
}

#[test]
fn rest_metric_periods_and_resets() {
    let h = harness();
    let metric = |period: &str, reset: &str| json!({"event_subtype": "e", "period": period, "month_reset": reset, "value": 1});
    let doc = json!({"id": "comp_1", "metrics": [
        metric("all_time", "first_of_month"),
        metric("current_day", "first"),
        metric("current_week", "billing_cycle"),
        metric("current_month", "billing_cycle"),
        metric("fortnight", "sometimes"),
    ]});
    let got = upserted(&shape_ok(
        &h,
        COMPANIES,
        Change::upsert(COLLECTION_REST_COMPANY, "comp_1", doc),
    ));
    let pairs: Vec<(&str, &str)> = got["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["period"].as_str().unwrap(),
                m["month_reset"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("all_time", "first_of_month"),
            ("current_day", "first_of_month"),
            ("current_week", "billing_cycle"),
            ("current_month", "billing_cycle"),
            ("all_time", "first_of_month"),
        ]
    );
    // Missing timestamps are Go's zero time.
    assert_eq!(got["metrics"][0]["created_at"], "0001-01-01T00:00:00Z");
    assert_eq!(got["metrics"][0]["valid_until"], Value::Null);
}

#[test]
fn rest_subscription_times_are_rfc3339() {
    let h = harness();
    let doc = json!({"id": "comp_1", "billing_subscription": {"id": "sub_1", "period_start": 0, "period_end": 951782400}});
    let got = upserted(&shape_ok(
        &h,
        COMPANIES,
        Change::upsert(COLLECTION_REST_COMPANY, "comp_1", doc),
    ));
    assert_eq!(
        got["subscription"],
        json!({"id": "sub_1", "period_start": "0001-01-01T00:00:00Z", "period_end": "2000-02-29T00:00:00Z"})
    );
}

#[test]
fn unix_seconds_format() {
    assert_eq!(format_unix(1).unwrap(), "1970-01-01T00:00:01Z");
    assert_eq!(format_unix(1_714_521_600).unwrap(), "2024-05-01T00:00:00Z");
    assert_eq!(format_unix(1_700_000_000).unwrap(), "2023-11-14T22:13:20Z");
    assert_eq!(format_unix(951_782_400).unwrap(), "2000-02-29T00:00:00Z");
    assert_eq!(format_unix(-1).unwrap(), "1969-12-31T23:59:59Z");
    assert_eq!(
        format_unix(253_402_300_799).unwrap(),
        "9999-12-31T23:59:59Z"
    );
    assert_eq!(
        format_unix(-62_167_219_200).unwrap(),
        "0000-01-01T00:00:00Z"
    );
    assert_eq!(format_unix(253_402_300_800), None);
    assert_eq!(format_unix(i64::MIN), None);
}

#[test]
fn malformed_rest_documents_are_item_errors() {
    let h = harness();
    let cases = [
        (json!({"keys": [{"key": "domain"}]}), "field keys[0].value"),
        (
            json!({"keys": [{"key": "domain", "value": 1}]}),
            "field keys[0].value: expected a string",
        ),
        (json!({"keys": "domain"}), "field keys: expected an array"),
        (json!({"plan": "plan_pro"}), "field plan"),
        (json!({"add_ons": [1]}), "field add_ons[0]"),
        (
            json!({"billing_subscription": {"period_start": "soon", "products": 3}}),
            "field billing_subscription.products",
        ),
        (
            json!({"billing_subscription": {"period_start": 1e300}}),
            "field billing_subscription.period_start",
        ),
        (
            json!({"billing_credit_balances": {"c": "x"}}),
            "field credit_balances.c",
        ),
        (
            json!({"metrics": [{"value": "many"}]}),
            "field metrics[0].value",
        ),
        (
            json!({"entity_traits": [{"value": [1], "definition": {"id": "t"}}]}),
            "field entity_traits[0].value",
        ),
        (json!({"environment_id": 5}), "field environment_id"),
    ];
    for (mut doc, message) in cases {
        doc["id"] = json!("comp_1");
        let err = shape_err(
            &h,
            COMPANIES,
            Change::upsert(COLLECTION_REST_COMPANY, "comp_1", doc.clone()),
        );
        assert!(err.contains("entity companies, id comp_1"), "{doc}: {err}");
        assert!(err.contains(message), "{doc}: {err}");
    }
}

#[test]
fn rest_partials_are_rejected_and_deletes_accepted() {
    let h = harness();
    let change = Change::partial(COLLECTION_REST_COMPANY, "comp_1", json!({"name": "x"}))
        .with_current(obj(company_fixture()));
    let err = shape_err(&h, COMPANIES, change);
    assert!(err.contains("partial"), "{err}");
    let shaped = shape_ok(&h, USERS, Change::delete(COLLECTION_REST_USER, "user_1"));
    assert_eq!(shaped, Shaped::row(Row::delete("users", "user_1")));
}
