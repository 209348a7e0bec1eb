//! Partial merges (spec §4): apply the changed fields of a `partial` message
//! to the entity's current row.
//!
//! The rules follow `PartialCompany` / `PartialUser` of Schematic's Go SDK
//! (`schematic-go/datastream/merge.go`): maps shallow-merge, metrics upsert
//! by their natural key, everything else is replaced. Fields this plugin
//! does not know (sent by newer servers) are replaced too, so they survive.

use std::collections::HashMap;

use emcachers_plugin_sdk::{Error, Map, Value};

use crate::json::{Ctx, expected, incoming_map};
use crate::model;

/// The metric period an entitlement means when it names none.
const DEFAULT_PERIOD: &str = "all_time";
/// The month reset an entitlement means when it names none.
const DEFAULT_MONTH_RESET: &str = "first_of_month";

/// Merge a company partial into the current company row.
///
/// * `credit_balances`, `keys`: shallow merge (`null` merges nothing).
/// * `metrics`: upsert by (`event_subtype`, `period`, `month_reset`):
///   a match is replaced, a new metric is appended.
/// * every other field (the listed `id, account_id, environment_id,
///   base_plan_id, subscription, billing_product_ids, plan_ids,
///   plan_version_ids, rules, traits, entitlements` and unknown ones):
///   replaced.
/// * when `credit_balances` or `metrics` came without `entitlements`, the
///   matching entitlements get `credit_remaining` (by `credit_id`, from the
///   incoming balances only) and `usage` (by `event_name`, `metric_period`
///   default `all_time`, `month_reset` default `first_of_month`, from the
///   merged metrics) refreshed; `credit_total` and `credit_used` are left
///   alone, as the server aggregates them over a ledger the cache lacks.
pub(crate) fn company(
    current: Map<String, Value>,
    partial: Map<String, Value>,
    ctx: Ctx<'_>,
) -> Result<Map<String, Value>, Error> {
    let mut merged = model::company(current, ctx)
        .map_err(|e| Error::msg(format!("{e} (in the current row)")))?;

    let mut balance_updates: Option<Map<String, Value>> = None;
    let mut metrics_updated = false;
    let mut entitlements_in_partial = false;

    for (field, value) in partial {
        match field.as_str() {
            "credit_balances" => {
                if let Some(incoming) =
                    incoming_map(value, "credit_balances", ctx, "a number", Value::is_number)?
                {
                    shallow_merge(&mut merged, "credit_balances", &incoming);
                    balance_updates = Some(incoming);
                }
            }
            "keys" => {
                if let Some(incoming) =
                    incoming_map(value, "keys", ctx, "a string", Value::is_string)?
                {
                    shallow_merge(&mut merged, "keys", &incoming);
                }
            }
            "metrics" => {
                let incoming = match value {
                    Value::Null => Vec::new(),
                    Value::Array(items) => items,
                    other => return Err(ctx.field_err("metrics", expected("an array", &other))),
                };
                upsert_metrics(&mut merged, incoming, ctx)?;
                metrics_updated = true;
            }
            "entitlements" => {
                entitlements_in_partial = true;
                merged.insert(field, value);
            }
            _ => {
                merged.insert(field, value);
            }
        }
    }

    // Check the replaced fields and bring `null`s back to `[]`/`{}`.
    let mut merged = model::company(merged, ctx)?;

    if !entitlements_in_partial && (balance_updates.is_some() || metrics_updated) {
        refresh_entitlements(&mut merged, balance_updates.as_ref(), metrics_updated);
    }
    Ok(merged)
}

/// Merge a user partial into the current user row: `keys` shallow-merges,
/// every other field (`id, account_id, environment_id, traits, rules` and
/// unknown ones) is replaced.
pub(crate) fn user(
    current: Map<String, Value>,
    partial: Map<String, Value>,
    ctx: Ctx<'_>,
) -> Result<Map<String, Value>, Error> {
    let mut merged =
        model::user(current, ctx).map_err(|e| Error::msg(format!("{e} (in the current row)")))?;
    for (field, value) in partial {
        if field == "keys" {
            if let Some(incoming) = incoming_map(value, "keys", ctx, "a string", Value::is_string)?
            {
                shallow_merge(&mut merged, "keys", &incoming);
            }
        } else {
            merged.insert(field, value);
        }
    }
    model::user(merged, ctx)
}

/// Copy `incoming`'s entries into the object at `merged[field]` (which the
/// normaliser made an object).
fn shallow_merge(merged: &mut Map<String, Value>, field: &str, incoming: &Map<String, Value>) {
    let slot = merged
        .entry(field.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    if let Value::Object(entries) = slot {
        for (name, value) in incoming {
            entries.insert(name.clone(), value.clone());
        }
    }
}

/// The identity of a metric: (`event_subtype`, `period`, `month_reset`),
/// each `""` when absent, as in the Go model's zero values.
fn metric_key(metric: &Value) -> (String, String, String) {
    let part = |field: &str| {
        metric
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    (part("event_subtype"), part("period"), part("month_reset"))
}

/// Upsert `incoming` metrics into `merged.metrics`.
fn upsert_metrics(
    merged: &mut Map<String, Value>,
    incoming: Vec<Value>,
    ctx: Ctx<'_>,
) -> Result<(), Error> {
    for (i, metric) in incoming.iter().enumerate() {
        if !metric.is_null() && !metric.is_object() {
            return Err(ctx.field_err(&format!("metrics[{i}]"), expected("an object", metric)));
        }
        model::check_metric(metric, &format!("metrics[{i}]"), ctx)?;
    }
    let slot = merged
        .entry("metrics".to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    let Value::Array(existing) = slot else {
        return Ok(());
    };
    let mut index: HashMap<(String, String, String), usize> = existing
        .iter()
        .enumerate()
        .map(|(i, m)| (metric_key(m), i))
        .collect();
    for metric in incoming {
        if metric.is_null() {
            continue;
        }
        let key = metric_key(&metric);
        match index.get(&key) {
            Some(&i) => existing[i] = metric,
            None => {
                index.insert(key, existing.len());
                existing.push(metric);
            }
        }
    }
    Ok(())
}

/// Re-derive `credit_remaining` and `usage` on the company's entitlements.
fn refresh_entitlements(
    merged: &mut Map<String, Value>,
    balance_updates: Option<&Map<String, Value>>,
    metrics_updated: bool,
) {
    let usage: Option<HashMap<(String, String, String), Value>> = if metrics_updated {
        let metrics = merged.get("metrics").and_then(Value::as_array);
        Some(
            metrics
                .into_iter()
                .flatten()
                .map(|m| {
                    (
                        metric_key(m),
                        m.get("value").cloned().unwrap_or(Value::Null),
                    )
                })
                .collect(),
        )
    } else {
        None
    };
    let Some(Value::Array(entitlements)) = merged.get_mut("entitlements") else {
        return;
    };
    for entitlement in entitlements.iter_mut() {
        let Value::Object(entitlement) = entitlement else {
            continue;
        };
        if let Some(balances) = balance_updates
            && let Some(credit_id) = entitlement.get("credit_id").and_then(Value::as_str)
            && let Some(balance) = balances.get(credit_id)
        {
            let balance = balance.clone();
            entitlement.insert("credit_remaining".to_owned(), balance);
        }
        if let Some(usage) = &usage
            && let Some(event) = entitlement.get("event_name").and_then(Value::as_str)
        {
            let period = entitlement
                .get("metric_period")
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_PERIOD);
            let reset = entitlement
                .get("month_reset")
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_MONTH_RESET);
            let key = (event.to_owned(), period.to_owned(), reset.to_owned());
            if let Some(value) = usage.get(&key) {
                let value = value.clone();
                entitlement.insert("usage".to_owned(), value);
            }
        }
    }
}
