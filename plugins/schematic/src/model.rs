//! The rulesengine data model (spec §3): checks and normalises flags,
//! companies and users into exactly what the Schematic SDKs read.
//!
//! Normalising fills in the fields the Go models always write (`""`, `false`,
//! `null`, `[]`, `{}`), turns `null` lists and maps into `[]` and `{}`, drops
//! `null` elements from lists, and keeps every field it does not know.

use emcachers_plugin_sdk::{Error, Map, Value};

use crate::json::{
    Ctx, bool_or_false, expected, number_map, object_list, object_or_null, path, string_list,
    string_map, string_or_empty, string_or_null,
};

/// A rulesengine Flag: `id, account_id, environment_id, key, default_value,
/// rules[]`. `key` must be a non-empty string.
pub(crate) fn flag(
    mut map: Map<String, Value>,
    ctx: Ctx<'_>,
    prefix: &str,
) -> Result<Map<String, Value>, Error> {
    match map.get("key") {
        Some(Value::String(key)) if !key.is_empty() => {}
        Some(Value::String(_)) => {
            return Err(ctx.field_err(&path(prefix, "key"), "the flag key is empty"));
        }
        None | Some(Value::Null) => {
            return Err(ctx.field_err(&path(prefix, "key"), "the flag has no key"));
        }
        Some(other) => {
            return Err(ctx.field_err(&path(prefix, "key"), expected("a string", other)));
        }
    }
    string_or_empty(&mut map, "id", ctx, prefix)?;
    string_or_empty(&mut map, "account_id", ctx, prefix)?;
    string_or_empty(&mut map, "environment_id", ctx, prefix)?;
    bool_or_false(&mut map, "default_value", ctx, prefix)?;
    rules(&mut map, "rules", ctx, prefix)?;
    Ok(map)
}

/// A rulesengine Company: `id, account_id, environment_id, base_plan_id?,
/// billing_product_ids[], credit_balances{}, entitlements[], keys{},
/// metrics[], plan_ids[], plan_version_ids[], rules[], subscription?,
/// traits[]`.
pub(crate) fn company(
    mut map: Map<String, Value>,
    ctx: Ctx<'_>,
) -> Result<Map<String, Value>, Error> {
    string_or_empty(&mut map, "id", ctx, "")?;
    string_or_empty(&mut map, "account_id", ctx, "")?;
    string_or_empty(&mut map, "environment_id", ctx, "")?;
    string_or_null(&mut map, "base_plan_id", ctx, "")?;
    string_list(&mut map, "billing_product_ids", ctx, "")?;
    number_map(&mut map, "credit_balances", ctx, "")?;
    object_list(&mut map, "entitlements", ctx, "")?;
    string_map(&mut map, "keys", ctx, "")?;
    metrics(&mut map, ctx)?;
    string_list(&mut map, "plan_ids", ctx, "")?;
    string_list(&mut map, "plan_version_ids", ctx, "")?;
    rules(&mut map, "rules", ctx, "")?;
    object_or_null(&mut map, "subscription", ctx, "")?;
    object_list(&mut map, "traits", ctx, "")?;
    Ok(map)
}

/// A rulesengine User: `id, account_id, environment_id, keys{}, traits[],
/// rules[]`.
pub(crate) fn user(mut map: Map<String, Value>, ctx: Ctx<'_>) -> Result<Map<String, Value>, Error> {
    string_or_empty(&mut map, "id", ctx, "")?;
    string_or_empty(&mut map, "account_id", ctx, "")?;
    string_or_empty(&mut map, "environment_id", ctx, "")?;
    string_map(&mut map, "keys", ctx, "")?;
    object_list(&mut map, "traits", ctx, "")?;
    rules(&mut map, "rules", ctx, "")?;
    Ok(map)
}

/// The fields of a company metric that form its identity in a partial
/// merge: `event_subtype`, `period`, `month_reset`.
pub(crate) const METRIC_KEY_FIELDS: [&str; 3] = ["event_subtype", "period", "month_reset"];

/// `metrics[]`: objects whose identity fields are strings (or absent).
pub(crate) fn metrics(map: &mut Map<String, Value>, ctx: Ctx<'_>) -> Result<(), Error> {
    let items = object_list(map, "metrics", ctx, "")?;
    for (i, metric) in items.iter().enumerate() {
        check_metric(metric, &format!("metrics[{i}]"), ctx)?;
    }
    Ok(())
}

/// A metric's identity fields must be strings or `null`.
pub(crate) fn check_metric(metric: &Value, at: &str, ctx: Ctx<'_>) -> Result<(), Error> {
    for field in METRIC_KEY_FIELDS {
        match metric.get(field) {
            None | Some(Value::Null | Value::String(_)) => {}
            Some(other) => {
                return Err(ctx.field_err(&format!("{at}.{field}"), expected("a string", other)));
            }
        }
    }
    Ok(())
}

/// `rules[]` with their nested lists normalised: every rule's `conditions`
/// and `condition_groups`, every group's `conditions`, every condition's
/// `resource_ids` are arrays.
pub(crate) fn rules(
    map: &mut Map<String, Value>,
    key: &str,
    ctx: Ctx<'_>,
    prefix: &str,
) -> Result<(), Error> {
    let at = path(prefix, key);
    let items = object_list(map, key, ctx, prefix)?;
    for (i, rule) in items.iter_mut().enumerate() {
        let Value::Object(rule) = rule else { continue };
        let rule_at = format!("{at}[{i}]");
        conditions(rule, ctx, &rule_at)?;
        let groups = object_list(rule, "condition_groups", ctx, &rule_at)?;
        for (j, group) in groups.iter_mut().enumerate() {
            let Value::Object(group) = group else {
                continue;
            };
            conditions(group, ctx, &format!("{rule_at}.condition_groups[{j}]"))?;
        }
    }
    Ok(())
}

/// `conditions[]` of a rule or group, each with `resource_ids[]`.
fn conditions(map: &mut Map<String, Value>, ctx: Ctx<'_>, prefix: &str) -> Result<(), Error> {
    let at = path(prefix, "conditions");
    let items = object_list(map, "conditions", ctx, prefix)?;
    for (i, condition) in items.iter_mut().enumerate() {
        let Value::Object(condition) = condition else {
            continue;
        };
        string_list(condition, "resource_ids", ctx, &format!("{at}[{i}]"))?;
    }
    Ok(())
}
