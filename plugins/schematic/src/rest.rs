//! Conversion of Schematic REST API documents (`GET /companies`,
//! `GET /users`, collections `rest.Company` and `rest.User`) into the
//! rulesengine shape, per spec §2.
//!
//! It follows `convertToRulesEngineCompany` / `convertToRulesEngineUser` of
//! Schematic's Go replicator, with two deliberate differences: billing
//! product ids are deduplicated across all subscriptions (the spec's rule),
//! and the `current_week` metric period is kept (the Go replicator turns it
//! into `all_time`, where it would collide with a real all-time metric).
//! Only rulesengine fields come out: the REST-only fields (`name`,
//! `user_count`, payment methods, …) are not part of the cached entity.

use std::collections::HashSet;

use emcachers_plugin_sdk::{Error, Map, Value, json};

use crate::json::{Ctx, expected, non_empty_str};
use crate::model;

/// Go's zero `time.Time` as JSON: what the Go replicator writes for a
/// missing timestamp.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Rule types a company carries in the rulesengine shape.
const COMPANY_RULE_TYPES: [&str; 2] = ["company_override", "company_override_usage_exceeded"];

/// A REST company (`CompanyDetailResponseData`) as a rulesengine Company.
pub(crate) fn company(
    doc: &Map<String, Value>,
    id: &str,
    ctx: Ctx<'_>,
) -> Result<Map<String, Value>, Error> {
    let mut out = Map::new();
    out.insert("id".into(), id.into());
    out.insert("account_id".into(), "".into());
    out.insert(
        "environment_id".into(),
        string_field(doc, "environment_id", ctx)?.into(),
    );
    out.insert("keys".into(), keys(doc.get("keys"), ctx)?);
    out.insert(
        "traits".into(),
        traits(doc.get("entity_traits"), "company", ctx)?,
    );

    let plan = object_field(doc, "plan", ctx)?;
    let base_plan_id = plan
        .and_then(|p| non_empty_str(p.get("id")))
        .map_or(Value::Null, Value::from);
    out.insert("base_plan_id".into(), base_plan_id);

    let mut plan_version_ids = Vec::new();
    if let Some(id) = plan.and_then(|p| non_empty_str(p.get("plan_version_id"))) {
        plan_version_ids.push(Value::from(id));
    }
    for add_on in objects(doc, "add_ons", ctx)? {
        if let Some(id) = non_empty_str(add_on.get("plan_version_id")) {
            plan_version_ids.push(Value::from(id));
        }
    }
    out.insert("plan_version_ids".into(), Value::Array(plan_version_ids));

    let subscription = object_field(doc, "billing_subscription", ctx)?;
    let mut seen = HashSet::new();
    let mut billing_product_ids = Vec::new();
    let subscriptions = objects(doc, "billing_subscriptions", ctx)?;
    for (sub, at) in subscriptions
        .iter()
        .map(|s| (*s, "billing_subscriptions[].products"))
        .chain(subscription.map(|s| (s, "billing_subscription.products")))
    {
        for product in objects_at(sub.get("products"), at, ctx)? {
            if let Some(id) = non_empty_str(product.get("id"))
                && seen.insert(id)
            {
                billing_product_ids.push(Value::from(id));
            }
        }
    }
    out.insert(
        "billing_product_ids".into(),
        Value::Array(billing_product_ids),
    );

    let plan_ids = objects(doc, "plans", ctx)?
        .into_iter()
        .filter_map(|p| non_empty_str(p.get("id")))
        .map(Value::from)
        .collect();
    out.insert("plan_ids".into(), Value::Array(plan_ids));

    let subscription = match subscription {
        Some(sub) => json!({
            "id": string_field(sub, "id", ctx)?,
            "period_start": timestamp(sub.get("period_start"), "billing_subscription.period_start", ctx)?,
            "period_end": timestamp(sub.get("period_end"), "billing_subscription.period_end", ctx)?,
        }),
        None => Value::Null,
    };
    out.insert("subscription".into(), subscription);

    let balances = doc
        .get("billing_credit_balances")
        .cloned()
        .unwrap_or(Value::Null);
    out.insert("credit_balances".into(), balances);

    let metrics = objects(doc, "metrics", ctx)?
        .into_iter()
        .enumerate()
        .map(|(i, m)| metric(m, i, ctx))
        .collect::<Result<Vec<_>, _>>()?;
    out.insert("metrics".into(), Value::Array(metrics));

    let rules = objects(doc, "rules", ctx)?
        .into_iter()
        .filter(|r| {
            r.get("rule_type")
                .and_then(Value::as_str)
                .is_some_and(|t| COMPANY_RULE_TYPES.contains(&t))
        })
        .map(|r| Value::Object(rule(r.clone())))
        .collect();
    out.insert("rules".into(), Value::Array(rules));

    let entitlements = doc.get("entitlements").cloned().unwrap_or(Value::Null);
    out.insert("entitlements".into(), entitlements);

    model::company(out, ctx)
}

/// A REST user (`UserDetailResponseData`) as a rulesengine User.
pub(crate) fn user(
    doc: &Map<String, Value>,
    id: &str,
    ctx: Ctx<'_>,
) -> Result<Map<String, Value>, Error> {
    let mut out = Map::new();
    out.insert("id".into(), id.into());
    out.insert("account_id".into(), "".into());
    out.insert(
        "environment_id".into(),
        string_field(doc, "environment_id", ctx)?.into(),
    );
    out.insert("keys".into(), keys(doc.get("keys"), ctx)?);
    out.insert(
        "traits".into(),
        traits(doc.get("entity_traits"), "user", ctx)?,
    );
    out.insert("rules".into(), Value::Array(Vec::new()));
    model::user(out, ctx)
}

/// A string field; missing or `null` is `""`.
fn string_field<'d>(
    doc: &'d Map<String, Value>,
    field: &str,
    ctx: Ctx<'_>,
) -> Result<&'d str, Error> {
    match doc.get(field) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ctx.field_err(field, expected("a string", other))),
    }
}

/// An object field; missing or `null` is `None`.
fn object_field<'d>(
    doc: &'d Map<String, Value>,
    field: &str,
    ctx: Ctx<'_>,
) -> Result<Option<&'d Map<String, Value>>, Error> {
    match doc.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(ctx.field_err(field, expected("an object or null", other))),
    }
}

/// The objects of the list at `doc[field]`; missing, `null` and `null`
/// elements are skipped.
fn objects<'d>(
    doc: &'d Map<String, Value>,
    field: &str,
    ctx: Ctx<'_>,
) -> Result<Vec<&'d Map<String, Value>>, Error> {
    objects_at(doc.get(field), field, ctx)
}

/// The objects of a list value (see [`objects`]); `at` names it in errors.
fn objects_at<'d>(
    value: Option<&'d Value>,
    at: &str,
    ctx: Ctx<'_>,
) -> Result<Vec<&'d Map<String, Value>>, Error> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter(|(_, item)| !item.is_null())
            .map(|(i, item)| {
                item.as_object().ok_or_else(|| {
                    ctx.field_err(&format!("{at}[{i}]"), expected("an object", item))
                })
            })
            .collect(),
        Some(other) => Err(ctx.field_err(at, expected("an array", other))),
    }
}

/// REST `keys` (a list of `{key, value}`) as a name → value map. A map is
/// accepted as it is.
fn keys(value: Option<&Value>, ctx: Ctx<'_>) -> Result<Value, Error> {
    if let Some(Value::Object(map)) = value {
        return Ok(Value::Object(map.clone()));
    }
    let mut out = Map::new();
    for (i, entry) in objects_at(value, "keys", ctx)?.into_iter().enumerate() {
        let field = |name: &str| match entry.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => {
                Err(ctx.field_err(&format!("keys[{i}].{name}"), expected("a string", other)))
            }
            None => Err(ctx.field_err(&format!("keys[{i}].{name}"), "missing")),
        };
        out.insert(field("key")?, Value::String(field("value")?));
    }
    Ok(Value::Object(out))
}

/// REST `entity_traits` (`{value, definition{id, trait_type}}`) as
/// rulesengine traits (`{value, trait_definition{id, comparable_type,
/// entity_type}}`). Traits without a definition are skipped.
fn traits(value: Option<&Value>, entity_type: &str, ctx: Ctx<'_>) -> Result<Value, Error> {
    let mut out = Vec::new();
    for (i, trait_) in objects_at(value, "entity_traits", ctx)?
        .into_iter()
        .enumerate()
    {
        let Some(Value::Object(definition)) = trait_.get("definition") else {
            continue;
        };
        let value = match trait_.get("value") {
            None | Some(Value::Null) => Value::String(String::new()),
            Some(Value::String(s)) => Value::String(s.clone()),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Value::String(v.to_string()),
            Some(other) => {
                return Err(ctx.field_err(
                    &format!("entity_traits[{i}].value"),
                    expected("a string", other),
                ));
            }
        };
        out.push(json!({
            "trait_definition": {
                "id": definition.get("id").and_then(Value::as_str).unwrap_or_default(),
                "comparable_type": comparable_type(definition.get("trait_type").and_then(Value::as_str)),
                "entity_type": entity_type,
            },
            "value": value,
        }));
    }
    Ok(Value::Array(out))
}

/// A trait type (or comparable type) as a rulesengine comparable type:
/// boolean/bool → bool, number/int/integer → int, date → date, else string.
pub(crate) fn comparable_type(trait_type: Option<&str>) -> &'static str {
    match trait_type {
        Some("boolean" | "bool") => "bool",
        Some("number" | "int" | "integer") => "int",
        Some("date") => "date",
        _ => "string",
    }
}

/// A metric period; unknown → `all_time`.
fn metric_period(period: Option<&str>) -> &'static str {
    match period {
        Some("current_day") => "current_day",
        Some("current_week") => "current_week",
        Some("current_month") => "current_month",
        _ => "all_time",
    }
}

/// A month reset; unknown → `first_of_month`.
fn month_reset(reset: Option<&str>) -> &'static str {
    match reset {
        Some("billing_cycle") => "billing_cycle",
        _ => "first_of_month",
    }
}

/// A REST metric (`CompanyEventPeriodMetricsResponseData`) as a rulesengine
/// CompanyMetric.
fn metric(m: &Map<String, Value>, i: usize, ctx: Ctx<'_>) -> Result<Value, Error> {
    let text = |field: &str| m.get(field).and_then(Value::as_str).unwrap_or_default();
    let value = match m.get("value") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(v), _) => v,
            // Go's int64(float) truncates; out-of-range values are errors.
            (None, Some(f)) if f.is_finite() && f.abs() < 9.2e18 => f.trunc() as i64,
            _ => {
                return Err(ctx.field_err(
                    &format!("metrics[{i}].value"),
                    expected("a 64-bit integer", &Value::Number(n.clone())),
                ));
            }
        },
        Some(other) => {
            return Err(ctx.field_err(&format!("metrics[{i}].value"), expected("a number", other)));
        }
    };
    Ok(json!({
        "account_id": text("account_id"),
        "environment_id": text("environment_id"),
        "company_id": text("company_id"),
        "event_subtype": text("event_subtype"),
        "period": metric_period(m.get("period").and_then(Value::as_str)),
        "month_reset": month_reset(m.get("month_reset").and_then(Value::as_str)),
        "value": value,
        "created_at": m.get("created_at").filter(|v| !v.is_null()).cloned().unwrap_or_else(|| ZERO_TIME.into()),
        "valid_until": m.get("valid_until").cloned().unwrap_or(Value::Null),
    }))
}

/// A REST rule in the rulesengine spelling: condition operators such as
/// `equals` become `eq`, trait definitions get rulesengine comparable types,
/// unknown metric periods and month resets get their defaults. Other fields
/// are kept.
fn rule(mut rule: Map<String, Value>) -> Map<String, Value> {
    if let Some(Value::Array(conditions)) = rule.get_mut("conditions") {
        conditions.iter_mut().for_each(condition);
    }
    if let Some(Value::Array(groups)) = rule.get_mut("condition_groups") {
        for group in groups {
            if let Some(Value::Array(conditions)) = group.get_mut("conditions") {
                conditions.iter_mut().for_each(condition);
            }
        }
    }
    rule
}

/// One REST condition in the rulesengine spelling (see [`rule`]).
fn condition(condition: &mut Value) {
    let Value::Object(c) = condition else { return };
    if let Some(Value::String(op)) = c.get_mut("operator") {
        let canonical = match op.as_str() {
            "equals" => Some("eq"),
            "not_equals" => Some("ne"),
            "greater_than" => Some("gt"),
            "less_than" => Some("lt"),
            "greater_than_or_equal" => Some("gte"),
            "less_than_or_equal" => Some("lte"),
            _ => None,
        };
        if let Some(canonical) = canonical {
            *op = canonical.to_owned();
        }
    }
    if let Some(period) = c.get_mut("metric_period")
        && !period.is_null()
    {
        *period = metric_period(period.as_str()).into();
    }
    if let Some(reset) = c.get_mut("metric_period_month_reset")
        && !reset.is_null()
    {
        *reset = month_reset(reset.as_str()).into();
    }
    for field in ["trait_definition", "comparison_trait_definition"] {
        if let Some(Value::Object(definition)) = c.get_mut(field) {
            let ty = comparable_type(definition.get("comparable_type").and_then(Value::as_str));
            definition.insert("comparable_type".into(), ty.into());
        }
    }
}

/// A REST timestamp (unix seconds) as Go writes a `time.Time` in UTC:
/// RFC 3339, e.g. `2024-05-01T00:00:00Z`. `0`, missing and `null` are Go's
/// zero time; a string is taken as already formatted.
fn timestamp(value: Option<&Value>, field: &str, ctx: Ctx<'_>) -> Result<Value, Error> {
    let seconds = match value {
        None | Some(Value::Null) => return Ok(ZERO_TIME.into()),
        Some(Value::String(s)) => return Ok(Value::String(s.clone())),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(s), _) => s,
            (None, Some(f)) if f.is_finite() && f.abs() < 9.2e18 => f.trunc() as i64,
            _ => {
                return Err(
                    ctx.field_err(field, expected("unix seconds", &Value::Number(n.clone())))
                );
            }
        },
        Some(other) => return Err(ctx.field_err(field, expected("unix seconds", other))),
    };
    if seconds == 0 {
        return Ok(ZERO_TIME.into());
    }
    format_unix(seconds)
        .map(Value::String)
        .ok_or_else(|| ctx.field_err(field, format!("{seconds} is outside the years 0000-9999")))
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`; `None` outside years 0–9999.
pub(crate) fn format_unix(seconds: i64) -> Option<String> {
    // 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
    const MIN: i64 = -62_167_219_200;
    const MAX: i64 = 253_402_300_799;
    if !(MIN..=MAX).contains(&seconds) {
        return None;
    }
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    ))
}
