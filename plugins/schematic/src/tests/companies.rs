use super::*;

/// A partial for comp_1 onto the company fixture.
fn partial(fields: Value) -> Change {
    Change::partial(COLLECTION_COMPANY, "comp_1", fields).with_current(obj(company_fixture()))
}

/// Merge `fields` into the fixture; the merged company.
fn merged(fields: Value) -> Value {
    let shaped = shape_ok(&harness(), COMPANIES, partial(fields));
    let row = single_upsert(&shaped);
    assert_eq!(row.id, "comp_1");
    assert_eq!(row.entity, "companies");
    Value::Object(row.data.clone())
}

/// The fixture with `edit` applied.
fn fixture_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut company = company_fixture();
    edit(&mut company);
    company
}

#[test]
fn full_message_upserts_the_whole_company_unchanged() {
    let h = harness();
    let shaped = shape_ok(
        &h,
        COMPANIES,
        Change::upsert(COLLECTION_COMPANY, "comp_1", company_fixture()),
    );
    let row = single_upsert(&shaped);
    assert_eq!(row.id, "comp_1");
    assert_eq!(Value::Object(row.data.clone()), company_fixture());
}

#[test]
fn full_message_normalises_nulls_and_fills_missing_fields() {
    let h = harness();
    let doc = json!({
        "id": "comp_2",
        "environment_id": "env_prod",
        "credit_balances": null,
        "keys": null,
        "entitlements": null,
        "metrics": [null],
        "plan_ids": null,
        "traits": [null, {"trait_definition": {"id": "t"}, "value": "x"}],
        "rules": [{"id": "r", "rule_type": "company_override", "conditions": null, "condition_groups": null}],
        "extra": null
    });
    let shaped = shape_ok(
        &h,
        COMPANIES,
        Change::upsert(COLLECTION_COMPANY, "comp_2", doc),
    );
    assert_eq!(
        upserted(&shaped),
        json!({
            "id": "comp_2",
            "account_id": "",
            "environment_id": "env_prod",
            "base_plan_id": null,
            "billing_product_ids": [],
            "credit_balances": {},
            "entitlements": [],
            "keys": {},
            "metrics": [],
            "plan_ids": [],
            "plan_version_ids": [],
            "rules": [{"id": "r", "rule_type": "company_override", "conditions": [], "condition_groups": []}],
            "subscription": null,
            "traits": [{"trait_definition": {"id": "t"}, "value": "x"}],
            "extra": null
        })
    );
}

#[test]
fn the_row_id_is_the_entity_id() {
    let h = harness();
    // The document's id fills in an empty change id.
    let shaped = shape_ok(
        &h,
        COMPANIES,
        Change::upsert(COLLECTION_COMPANY, "", company_fixture()),
    );
    assert_eq!(single_upsert(&shaped).id, "comp_1");
    // The change id fills in a missing document id (ids are not lower-cased).
    let doc = fixture_with(|c| {
        c.as_object_mut().unwrap().remove("id");
    });
    let shaped = shape_ok(
        &h,
        COMPANIES,
        Change::upsert(COLLECTION_COMPANY, "Comp_ABC", doc),
    );
    assert_eq!(single_upsert(&shaped).id, "Comp_ABC");
    assert_eq!(single_upsert(&shaped).data["id"], "Comp_ABC");
    // Different ids are an error.
    let err = shape_err(
        &h,
        COMPANIES,
        Change::upsert(COLLECTION_COMPANY, "comp_9", company_fixture()),
    );
    assert!(
        err.contains("entity companies, id comp_9, field id"),
        "{err}"
    );
    assert!(err.contains("comp_1"), "{err}");
    // No id at all.
    let err = shape_err(
        &h,
        COMPANIES,
        Change::upsert(COLLECTION_COMPANY, "", json!({"keys": {}})),
    );
    assert!(err.contains("entity id"), "{err}");
    let err = shape_err(
        &h,
        COMPANIES,
        Change::upsert(COLLECTION_COMPANY, "comp_1", json!({"id": 1})),
    );
    assert!(
        err.contains("field id: expected a string, found 1"),
        "{err}"
    );
}

#[test]
fn malformed_full_messages_are_item_errors() {
    let h = harness();
    let cases = [
        (
            json!({"keys": {"domain": 5}}),
            "field keys.domain: expected a string, found 5",
        ),
        (json!({"keys": ["a"]}), "field keys: expected an object"),
        (
            json!({"credit_balances": {"cred_ai": "ten"}}),
            "field credit_balances.cred_ai: expected a number",
        ),
        (
            json!({"plan_ids": "plan_pro"}),
            "field plan_ids: expected an array",
        ),
        (
            json!({"plan_ids": ["a", 2]}),
            "field plan_ids[1]: expected a string",
        ),
        (
            json!({"metrics": [{"event_subtype": 3}]}),
            "field metrics[0].event_subtype",
        ),
        (
            json!({"entitlements": [1]}),
            "field entitlements[0]: expected an object",
        ),
        (json!({"subscription": "sub_1"}), "field subscription"),
        (json!({"base_plan_id": 1}), "field base_plan_id"),
        (
            json!({"rules": [{"conditions": [{"resource_ids": "c"}]}]}),
            "field rules[0].conditions[0].resource_ids",
        ),
    ];
    for (doc, message) in cases {
        let err = shape_err(
            &h,
            COMPANIES,
            Change::upsert(COLLECTION_COMPANY, "comp_1", doc.clone()),
        );
        assert!(err.contains("entity companies, id comp_1"), "{doc}: {err}");
        assert!(err.contains(message), "{doc}: {err}");
    }
    let err = shape_err(
        &h,
        COMPANIES,
        Change::upsert(COLLECTION_COMPANY, "comp_1", json!("comp_1")),
    );
    assert!(err.contains("expected an object"), "{err}");
    let err = shape_err(
        &h,
        COMPANIES,
        Change::upsert(COLLECTION_COMPANY, "comp_1", Value::Null),
    );
    assert!(err.contains("no data"), "{err}");
}

#[test]
fn partial_without_a_current_row_is_an_item_error() {
    let h = harness();
    let change = Change::partial(COLLECTION_COMPANY, "comp_1", json!({"plan_ids": []}));
    let err = shape_err(&h, COMPANIES, change);
    assert!(err.contains("entity companies, id comp_1"), "{err}");
    assert!(err.contains("without a cached base"), "{err}");
}

#[test]
fn partial_replaces_the_listed_fields() {
    let replaced = json!({
        "id": "comp_1",
        "account_id": "acc_2",
        "environment_id": "env_staging",
        "base_plan_id": "plan_enterprise",
        "subscription": {"id": "sub_2", "period_start": "2024-06-01T00:00:00Z", "period_end": "2024-07-01T00:00:00Z"},
        "billing_product_ids": ["prod_ent", "prod_addon"],
        "plan_ids": ["plan_enterprise"],
        "plan_version_ids": ["plan_ent_v1"],
        "rules": [{"id": "r_override", "rule_type": "company_override", "conditions": [], "condition_groups": [], "value": true}],
        "traits": [{"trait_definition": {"id": "td_seats", "comparable_type": "int", "entity_type": "company"}, "value": "50"}]
    });
    let expected = fixture_with(|c| {
        for (field, value) in replaced.as_object().unwrap() {
            c[field] = value.clone();
        }
    });
    assert_eq!(merged(replaced), expected);
}

#[test]
fn partial_replaces_one_field_and_keeps_everything_else() {
    let got = merged(json!({"base_plan_id": null}));
    assert_eq!(got, fixture_with(|c| c["base_plan_id"] = Value::Null));
    let got = merged(json!({"plan_ids": []}));
    assert_eq!(got, fixture_with(|c| c["plan_ids"] = json!([])));
}

#[test]
fn partial_null_lists_become_empty_lists() {
    let got = merged(
        json!({"traits": null, "rules": null, "billing_product_ids": null, "subscription": null}),
    );
    let expected = fixture_with(|c| {
        c["traits"] = json!([]);
        c["rules"] = json!([]);
        c["billing_product_ids"] = json!([]);
        c["subscription"] = Value::Null;
    });
    assert_eq!(got, expected);
}

#[test]
fn partial_keys_shallow_merge() {
    let got = merged(json!({"keys": {"stripe_id": "cus_999", "hubspot_id": "hs_1"}}));
    assert_eq!(
        got["keys"],
        json!({"Domain": "Acme.com", "stripe_id": "cus_999", "hubspot_id": "hs_1"})
    );
    // null merges nothing.
    let got = merged(json!({"keys": null}));
    assert_eq!(got, company_fixture());
    // Everything else untouched.
    let got = merged(json!({"keys": {"x": "y"}}));
    let mut expected = company_fixture();
    expected["keys"]["x"] = json!("y");
    assert_eq!(got, expected);
}

#[test]
fn partial_credit_balances_shallow_merge_and_refresh_credit_remaining() {
    let got = merged(json!({"credit_balances": {"cred_ai": 99.5, "cred_new": 5}}));
    assert_eq!(
        got["credit_balances"],
        json!({"cred_ai": 99.5, "cred_sms": 10.0, "cred_new": 5})
    );
    let expected = fixture_with(|c| {
        c["credit_balances"] = json!({"cred_ai": 99.5, "cred_sms": 10.0, "cred_new": 5});
        // credit_remaining follows the incoming balance; total and used do not move.
        c["entitlements"][0]["credit_remaining"] = json!(99.5);
    });
    assert_eq!(got, expected);
}

#[test]
fn credit_remaining_is_refreshed_only_from_incoming_balances() {
    // The company's cred_ai balance (120.5) is not in the partial: the
    // entitlement keeps its (deliberately stale) credit_remaining.
    let mut current = obj(company_fixture());
    current["entitlements"][0]["credit_remaining"] = json!(1.0);
    let change = Change::partial(
        COLLECTION_COMPANY,
        "comp_1",
        json!({"credit_balances": {"cred_sms": 3}}),
    )
    .with_current(current);
    let got = upserted(&shape_ok(&harness(), COMPANIES, change));
    assert_eq!(got["entitlements"][0]["credit_remaining"], json!(1.0));
    assert_eq!(
        got["credit_balances"],
        json!({"cred_ai": 120.5, "cred_sms": 3})
    );
}

#[test]
fn partial_metrics_upsert_by_subtype_period_and_month_reset() {
    let metric = |subtype: &str, period: &str, reset: &str, value: i64| {
        json!({
            "account_id": "acc_1",
            "environment_id": "env_prod",
            "company_id": "comp_1",
            "event_subtype": subtype,
            "period": period,
            "month_reset": reset,
            "value": value,
            "created_at": "2024-05-20T00:00:00Z",
            "valid_until": null
        })
    };
    let got = merged(json!({"metrics": [
        // Same triple as the first metric: replaces it in place.
        metric("api_call", "current_month", "first_of_month", 41),
        // Same subtype and period, other month reset: a new metric.
        metric("api_call", "current_month", "billing_cycle", 7),
        // A new subtype.
        metric("login", "current_day", "first_of_month", 3),
    ]}));
    let fixture = company_fixture();
    assert_eq!(
        got["metrics"],
        json!([
            metric("api_call", "current_month", "first_of_month", 41),
            fixture["metrics"][1],
            metric("api_call", "current_month", "billing_cycle", 7),
            metric("login", "current_day", "first_of_month", 3),
        ])
    );
}

#[test]
fn partial_metrics_refresh_usage_on_matching_entitlements() {
    let got = merged(json!({"metrics": [
        {"event_subtype": "api_call", "period": "current_month", "month_reset": "first_of_month", "value": 41},
        // The exports entitlement names no period or reset: all_time / first_of_month.
        {"event_subtype": "export", "period": "all_time", "month_reset": "first_of_month", "value": 9},
    ]}));
    assert_eq!(got["entitlements"][1]["usage"], json!(41));
    assert_eq!(got["entitlements"][2]["usage"], json!(9));
    // The credit entitlement has no event: untouched.
    assert_eq!(got["entitlements"][0], company_fixture()["entitlements"][0]);
    // Only usage moved on the metered ones.
    let mut expected = company_fixture()["entitlements"].clone();
    expected[1]["usage"] = json!(41);
    expected[2]["usage"] = json!(9);
    assert_eq!(got["entitlements"], expected);
}

#[test]
fn usage_is_refreshed_from_the_merged_metrics_even_when_the_partial_lacks_them() {
    // The partial updates another metric; the api_call entitlement's usage
    // is re-derived from the (unchanged) merged api_call metric.
    let mut current = obj(company_fixture());
    current["entitlements"][1]["usage"] = json!(0);
    let change = Change::partial(
        COLLECTION_COMPANY,
        "comp_1",
        json!({"metrics": [{"event_subtype": "login", "period": "all_time", "month_reset": "first_of_month", "value": 1}]}),
    )
    .with_current(current);
    let got = upserted(&shape_ok(&harness(), COMPANIES, change));
    assert_eq!(got["entitlements"][1]["usage"], json!(40));
}

#[test]
fn usage_needs_the_whole_triple_to_match() {
    // A metric with the right subtype but another month reset does not feed
    // the api_call entitlement (current_month / first_of_month).
    let mut current = obj(company_fixture());
    current["metrics"] = json!([]);
    let change = Change::partial(
        COLLECTION_COMPANY,
        "comp_1",
        json!({"metrics": [{"event_subtype": "api_call", "period": "current_month", "month_reset": "billing_cycle", "value": 77}]}),
    )
    .with_current(current);
    let got = upserted(&shape_ok(&harness(), COMPANIES, change));
    assert_eq!(got["entitlements"][1]["usage"], json!(40));
}

#[test]
fn entitlements_in_the_partial_win_over_the_refresh() {
    let entitlements = json!([{
        "feature_id": "feat_ai",
        "feature_key": "ai-tokens",
        "value_type": "credit",
        "credit_id": "cred_ai",
        "credit_remaining": 50.0,
        "event_name": null,
        "usage": null
    }]);
    let got = merged(json!({
        "credit_balances": {"cred_ai": 99.5},
        "metrics": [{"event_subtype": "api_call", "period": "current_month", "month_reset": "first_of_month", "value": 41}],
        "entitlements": entitlements
    }));
    assert_eq!(got["entitlements"], entitlements);
    assert_eq!(got["credit_balances"]["cred_ai"], json!(99.5));
}

#[test]
fn entitlements_are_not_refreshed_without_balances_or_metrics() {
    let mut current = obj(company_fixture());
    current["entitlements"][0]["credit_remaining"] = json!(1.0);
    current["entitlements"][1]["usage"] = json!(0);
    let expected = Value::Object(current.clone());
    let change =
        Change::partial(COLLECTION_COMPANY, "comp_1", json!({"keys": {}})).with_current(current);
    assert_eq!(upserted(&shape_ok(&harness(), COMPANIES, change)), expected);
}

#[test]
fn partial_keeps_unknown_fields_and_replaces_new_ones() {
    let got = merged(json!({"brand_new": [1, 2], "future_field": {"introduced_in": "2026"}}));
    let expected = fixture_with(|c| {
        c["brand_new"] = json!([1, 2]);
        c["future_field"] = json!({"introduced_in": "2026"});
    });
    assert_eq!(got, expected);
    // Unknown fields of the current row survive a merge that does not name them.
    let got = merged(json!({"plan_ids": ["p"]}));
    assert_eq!(got["future_field"], json!({"introduced_in": "2025"}));
}

#[test]
fn partial_normalises_a_current_row_with_nulls() {
    let current =
        obj(json!({"id": "comp_1", "keys": null, "credit_balances": null, "metrics": null}));
    let change = Change::partial(
        COLLECTION_COMPANY,
        "comp_1",
        json!({"keys": {"domain": "acme.com"}, "credit_balances": {"c": 1}, "metrics": null}),
    )
    .with_current(current);
    let got = upserted(&shape_ok(&harness(), COMPANIES, change));
    assert_eq!(got["keys"], json!({"domain": "acme.com"}));
    assert_eq!(got["credit_balances"], json!({"c": 1}));
    assert_eq!(got["metrics"], json!([]));
    assert_eq!(got["entitlements"], json!([]));
    assert_eq!(got["billing_product_ids"], json!([]));
}

#[test]
fn malformed_partials_are_item_errors() {
    let h = harness();
    let cases = [
        (
            json!({"credit_balances": {"cred_ai": "lots"}}),
            "field credit_balances.cred_ai: expected a number",
        ),
        (
            json!({"credit_balances": [1]}),
            "field credit_balances: expected an object",
        ),
        (
            json!({"keys": {"domain": null}}),
            "field keys.domain: expected a string, found null",
        ),
        (
            json!({"metrics": {"value": 1}}),
            "field metrics: expected an array",
        ),
        (
            json!({"metrics": [7]}),
            "field metrics[0]: expected an object",
        ),
        (
            json!({"traits": "admin"}),
            "field traits: expected an array",
        ),
        (json!({"id": "comp_2"}), "field id"),
    ];
    for (fields, message) in cases {
        let err = shape_err(&h, COMPANIES, partial(fields.clone()));
        assert!(
            err.contains("entity companies, id comp_1"),
            "{fields}: {err}"
        );
        assert!(err.contains(message), "{fields}: {err}");
    }
    let err = shape_err(&h, COMPANIES, partial(json!([])));
    assert!(err.contains("expected an object"), "{err}");
}

#[test]
fn delete_is_a_delete_row() {
    let h = harness();
    let mut change = Change::delete(COLLECTION_COMPANY, "comp_1");
    change.document = Some(json!({"id": "comp_1", "keys": {"domain": "acme.com"}}));
    assert_eq!(
        shape_ok(&h, COMPANIES, change),
        Shaped::row(Row::delete("companies", "comp_1"))
    );
    let change = Change::delete(COLLECTION_COMPANY, "Comp_ABC");
    assert_eq!(
        shape_ok(&h, COMPANIES, change),
        Shaped::row(Row::delete("companies", "Comp_ABC"))
    );
    let mut change = Change::delete(COLLECTION_COMPANY, "");
    change.document = Some(json!({"id": "comp_3"}));
    assert_eq!(
        shape_ok(&h, COMPANIES, change),
        Shaped::row(Row::delete("companies", "comp_3"))
    );
}

#[test]
fn a_batch_reports_each_item() {
    let h = harness();
    let results = h.shape(
        COMPANIES,
        &[
            Change::upsert(COLLECTION_COMPANY, "comp_1", company_fixture()),
            Change::partial(COLLECTION_COMPANY, "comp_2", json!({"plan_ids": []})),
            Change::upsert(
                COLLECTION_COMPANY,
                "comp_3",
                json!({"id": "comp_3", "keys": {"a": 1}}),
            ),
            Change::delete(COLLECTION_COMPANY, "comp_4"),
        ],
    );
    assert_eq!(results[0].as_ref().unwrap().rows[0].id, "comp_1");
    assert!(results[1].as_ref().unwrap_err().contains("id comp_2"));
    assert!(
        results[2]
            .as_ref()
            .unwrap_err()
            .contains("id comp_3, field keys.a")
    );
    assert_eq!(
        results[3].as_ref().unwrap().rows,
        [Row::delete("companies", "comp_4")]
    );
}

#[test]
fn a_malformed_current_row_is_an_item_error() {
    let current = obj(json!({"id": "comp_1", "keys": "acme.com"}));
    let change = Change::partial(COLLECTION_COMPANY, "comp_1", json!({"plan_ids": []}))
        .with_current(current);
    let err = shape_err(&harness(), COMPANIES, change);
    assert!(
        err.contains("entity companies, id comp_1, field keys"),
        "{err}"
    );
    assert!(err.contains("(in the current row)"), "{err}");
}
