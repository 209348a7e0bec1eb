//! An approximate REST → rulesengine conversion, used only to answer
//! single-entity requests (`start` with `keys`) for entities that were
//! never pushed. The real conversion (spec §2) lives in the Schematic
//! plugin; this one covers ids, keys, traits, plans, subscription products,
//! credit balances, metrics and entitlements, enough for an SDK talking to
//! the dev server.

use serde_json::{Map, Value, json};

/// REST `keys` (a list of `{key, value}`) as a map; a map stays a map.
pub(crate) fn keys(value: Option<&Value>) -> Map<String, Value> {
    match value {
        Some(Value::Object(map)) => map.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| {
                let key = item.get("key")?.as_str()?;
                let value = item.get("value")?.as_str()?;
                Some((key.to_owned(), Value::from(value)))
            })
            .collect(),
        _ => Map::new(),
    }
}

fn traits(value: Option<&Value>, entity_type: &str) -> Vec<Value> {
    let Some(Value::Array(items)) = value else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let definition = item.get("definition")?.as_object()?;
            let comparable = match definition.get("trait_type").and_then(Value::as_str) {
                Some("boolean" | "bool") => "bool",
                Some("number" | "int" | "integer") => "int",
                Some("date") => "date",
                _ => "string",
            };
            let value = match item.get("value") {
                Some(Value::String(s)) => s.clone(),
                None | Some(Value::Null) => String::new(),
                Some(other) => other.to_string(),
            };
            Some(json!({
                "trait_definition": {
                    "id": definition.get("id").cloned().unwrap_or_else(|| "".into()),
                    "comparable_type": comparable,
                    "entity_type": entity_type,
                },
                "value": value,
            }))
        })
        .collect()
}

fn ids(value: Option<&Value>, field: &str) -> Vec<Value> {
    let Some(Value::Array(items)) = value else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| item.get(field).filter(|v| v.is_string()).cloned())
        .collect()
}

fn text(doc: &Value, field: &str) -> Value {
    doc.get(field)
        .filter(|v| v.is_string())
        .cloned()
        .unwrap_or_else(|| "".into())
}

/// A REST company in (approximately) the rulesengine shape.
pub(crate) fn company(doc: &Value) -> Value {
    let plan = doc.get("plan");
    let mut plan_version_ids: Vec<Value> = plan
        .and_then(|p| p.get("plan_version_id"))
        .filter(|v| v.is_string())
        .cloned()
        .into_iter()
        .collect();
    plan_version_ids.extend(ids(doc.get("add_ons"), "plan_version_id"));
    let mut products = Vec::new();
    if let Some(Value::Array(subs)) = doc.get("billing_subscriptions") {
        for sub in subs {
            products.extend(ids(sub.get("products"), "id"));
        }
    }
    if let Some(sub) = doc.get("billing_subscription") {
        products.extend(ids(sub.get("products"), "id"));
    }
    let mut seen = std::collections::HashSet::new();
    products.retain(|p| seen.insert(p.to_string()));
    let rules: Vec<Value> = match doc.get("rules") {
        Some(Value::Array(rules)) => rules
            .iter()
            .filter(|r| {
                matches!(
                    r.get("rule_type").and_then(Value::as_str),
                    Some("company_override" | "company_override_usage_exceeded")
                )
            })
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    json!({
        "id": text(doc, "id"),
        "account_id": "",
        "environment_id": text(doc, "environment_id"),
        "base_plan_id": plan.and_then(|p| p.get("id")).filter(|v| v.is_string()).cloned(),
        "billing_product_ids": products,
        "credit_balances": doc.get("billing_credit_balances").filter(|v| v.is_object()).cloned().unwrap_or_else(|| json!({})),
        "entitlements": doc.get("entitlements").filter(|v| v.is_array()).cloned().unwrap_or_else(|| json!([])),
        "keys": keys(doc.get("keys")),
        "metrics": doc.get("metrics").filter(|v| v.is_array()).cloned().unwrap_or_else(|| json!([])),
        "plan_ids": ids(doc.get("plans"), "id"),
        "plan_version_ids": plan_version_ids,
        "rules": rules,
        "subscription": null,
        "traits": traits(doc.get("entity_traits"), "company"),
    })
}

/// A REST user in the rulesengine shape.
pub(crate) fn user(doc: &Value) -> Value {
    json!({
        "id": text(doc, "id"),
        "account_id": "",
        "environment_id": text(doc, "environment_id"),
        "keys": keys(doc.get("keys")),
        "traits": traits(doc.get("entity_traits"), "user"),
        "rules": [],
    })
}

/// Whether a rulesengine entity (`keys` a map) has any of the requested
/// key/value pairs.
pub(crate) fn matches(keys: &Map<String, Value>, wanted: &Map<String, Value>) -> bool {
    wanted
        .iter()
        .any(|(name, value)| keys.get(name).is_some_and(|v| v == value))
}
