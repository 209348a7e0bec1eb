//! Synthetic data: REST companies and users for load tests
//! (`--generate-companies`, `--generate-users`) and the rulesengine
//! documents of `POST /_dev/flood`.
//!
//! Everything is deterministic in the index, so two runs serve the same
//! data.

use serde_json::{Value, json};

/// The environment of generated entities.
pub const ENVIRONMENT: &str = "env_dev";

const PLANS: [(&str, &str); 3] = [
    ("plan_free", "Free"),
    ("plan_starter", "Starter"),
    ("plan_pro", "Pro"),
];
const REGIONS: [&str; 4] = ["eu-west", "us-east", "us-west", "ap-south"];
const ROLES: [&str; 3] = ["admin", "member", "viewer"];

/// The id of generated company `i`: `comp_gen_000017`.
pub fn company_id(i: usize) -> String {
    format!("comp_gen_{i:06}")
}

/// The id of generated user `i`: `user_gen_000017`.
pub fn user_id(i: usize) -> String {
    format!("user_gen_{i:06}")
}

/// The domain of generated company `i` (its `domain` key):
/// `acme-17.example`.
pub fn company_domain(i: usize) -> String {
    format!("acme-{i}.example")
}

/// The e-mail of generated user `i` (its `email` key); user `i` belongs to
/// company `i / 4`.
pub fn user_email(i: usize) -> String {
    format!("user-{i}@{}", company_domain(i / 4))
}

/// `n` REST companies (see [`rest_company`]).
pub fn rest_companies(n: usize, size_bytes: Option<usize>) -> Vec<Value> {
    (0..n).map(|i| rest_company(i, size_bytes)).collect()
}

/// `n` REST users (see [`rest_user`]).
pub fn rest_users(n: usize, size_bytes: Option<usize>) -> Vec<Value> {
    (0..n).map(|i| rest_user(i, size_bytes)).collect()
}

fn entity_key(entity_id: &str, entity_type: &str, key: &str, value: &str) -> Value {
    json!({
        "id": format!("ek_{entity_id}_{key}"),
        "definition_id": format!("ekd_{entity_type}_{key}"),
        "entity_id": entity_id,
        "entity_type": entity_type,
        "environment_id": ENVIRONMENT,
        "key": key,
        "value": value,
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z",
    })
}

fn entity_trait(entity_type: &str, name: &str, trait_type: &str, value: &str) -> Value {
    json!({
        "id": format!("et_{entity_type}_{name}"),
        "definition_id": format!("td_{entity_type}_{name}"),
        "environment_id": ENVIRONMENT,
        "value": value,
        "definition": {
            "id": format!("td_{entity_type}_{name}"),
            "display_name": name,
            "entity_type": entity_type,
            "hierarchy": [name],
            "trait_type": trait_type,
        },
    })
}

/// REST company `i` (`CompanyDetailResponseData`): `domain` and
/// `stripe_id` keys, `seats` and `region` traits, one of three plans, a
/// subscription, a credit balance, an `api_call` metric and two
/// entitlements. With `size_bytes`, a `notes` trait is padded so that the
/// JSON is about that large (it survives conversion to the rulesengine
/// shape, so cached entities grow too).
pub fn rest_company(i: usize, size_bytes: Option<usize>) -> Value {
    let id = company_id(i);
    let (plan_id, plan_name) = PLANS[i % PLANS.len()];
    let seats = 5 + (i * 7) % 200;
    let used = (i * 37) % 1000;
    let period_start = 1_714_521_600 + (i % 28) as u64 * 86_400;
    let mut company = json!({
        "id": id,
        "name": format!("Acme {i}"),
        "environment_id": ENVIRONMENT,
        "user_count": 1 + i % 50,
        "logo_url": null,
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-05-02T00:00:00Z",
        "last_seen_at": "2024-05-10T12:00:00Z",
        "keys": [
            entity_key(&id, "company", "domain", &company_domain(i)),
            entity_key(&id, "company", "stripe_id", &format!("cus_gen_{i:06}")),
        ],
        "entity_traits": [
            entity_trait("company", "seats", "number", &seats.to_string()),
            entity_trait("company", "region", "string", REGIONS[i % REGIONS.len()]),
        ],
        "traits": {"seats": seats, "region": REGIONS[i % REGIONS.len()]},
        "plan": {"id": plan_id, "name": plan_name, "plan_version_id": format!("{plan_id}_v1"),
                 "included_credit_grants": []},
        "add_ons": [],
        "plans": [{"id": plan_id, "name": plan_name}],
        "billing_subscription": {
            "id": format!("sub_gen_{i:06}"),
            "subscription_external_id": format!("sub_stripe_{i:06}"),
            "period_start": period_start,
            "period_end": period_start + 30 * 86_400,
            "status": "active",
            "products": [{"id": format!("prod_{plan_id}"), "name": plan_name, "price": 4900, "quantity": 1.0}],
        },
        "billing_subscriptions": [],
        "billing_credit_balances": {"cred_ai_tokens": 1000.0 - used as f64},
        "metrics": [{
            "account_id": "acc_dev",
            "environment_id": ENVIRONMENT,
            "company_id": id,
            "event_subtype": "api_call",
            "period": "current_month",
            "month_reset": "first_of_month",
            "value": used,
            "created_at": "2024-05-01T00:00:00Z",
            "valid_until": "2024-06-01T00:00:00Z",
        }],
        "rules": [],
        "entitlements": [
            {"feature_id": "feat_ai_tokens", "feature_key": "ai-tokens", "value_type": "credit",
             "credit_id": "cred_ai_tokens", "credit_remaining": 1000.0 - used as f64,
             "credit_total": 1000.0, "credit_used": used as f64},
            {"feature_id": "feat_api_calls", "feature_key": "api-calls", "value_type": "numeric",
             "allocation": 10_000, "usage": used, "event_name": "api_call",
             "metric_period": "current_month", "month_reset": "first_of_month"},
        ],
        "payment_methods": [],
        "custom_plan_billings": [],
    });
    pad_trait(&mut company, "company", size_bytes);
    company
}

/// REST user `i` (`UserDetailResponseData`): `email` and `user_id` keys,
/// `role` and `logins` traits, a membership of company `i / 4`. With
/// `size_bytes`, padded like [`rest_company`].
pub fn rest_user(i: usize, size_bytes: Option<usize>) -> Value {
    let id = user_id(i);
    let mut user = json!({
        "id": id,
        "name": format!("User {i}"),
        "environment_id": ENVIRONMENT,
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-05-02T00:00:00Z",
        "last_seen_at": "2024-05-10T12:00:00Z",
        "keys": [
            entity_key(&id, "user", "email", &user_email(i)),
            entity_key(&id, "user", "user_id", &format!("u-{i}")),
        ],
        "entity_traits": [
            entity_trait("user", "role", "string", ROLES[i % ROLES.len()]),
            entity_trait("user", "logins", "number", &((i * 13) % 500).to_string()),
        ],
        "traits": {"role": ROLES[i % ROLES.len()], "logins": (i * 13) % 500},
        "company_memberships": [{"id": format!("cm_{i:06}"), "company_id": company_id(i / 4), "user_id": id}],
    });
    pad_trait(&mut user, "user", size_bytes);
    user
}

/// Add a `notes` trait padded so that the entity's JSON is about
/// `size_bytes` long (nothing when it already is).
fn pad_trait(entity: &mut Value, entity_type: &str, size_bytes: Option<usize>) {
    let Some(size) = size_bytes else { return };
    let notes = entity_trait(entity_type, "notes", "string", "");
    let Some(traits) = entity
        .get_mut("entity_traits")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    traits.push(notes);
    let len = entity.to_string().len();
    let pad = size.saturating_sub(len);
    if let Some(value) = entity
        .get_mut("entity_traits")
        .and_then(Value::as_array_mut)
        .and_then(|t| t.last_mut())
        .and_then(|t| t.get_mut("value"))
    {
        *value = Value::String(padding(pad));
    }
}

/// `len` bytes of readable filler.
pub(crate) fn padding(len: usize) -> String {
    const TEXT: &str = "lorem ipsum dolor sit amet consectetur adipiscing elit ";
    TEXT.chars().cycle().take(len).collect()
}

/// The rulesengine document of one flood message: entity `id`, keys
/// `{"bench_id": id}`, `bench_sent_unix_ns`, `bench_seq` and a `padding`
/// string of `pad` bytes.
pub(crate) fn flood_document(user: bool, id: &str, seq: u64, sent_ns: u64, pad: &str) -> Value {
    if user {
        json!({
            "id": id,
            "account_id": "acc_bench",
            "environment_id": "env_bench",
            "keys": {"bench_id": id},
            "traits": [],
            "rules": [],
            "bench_sent_unix_ns": sent_ns,
            "bench_seq": seq,
            "padding": pad,
        })
    } else {
        json!({
            "id": id,
            "account_id": "acc_bench",
            "environment_id": "env_bench",
            "base_plan_id": null,
            "billing_product_ids": [],
            "credit_balances": {},
            "entitlements": [],
            "keys": {"bench_id": id},
            "metrics": [],
            "plan_ids": [],
            "plan_version_ids": [],
            "rules": [],
            "subscription": null,
            "traits": [],
            "bench_sent_unix_ns": sent_ns,
            "bench_seq": seq,
            "padding": pad,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_reaches_about_the_requested_size() {
        for size in [4_000, 10_000, 100_000] {
            let len = rest_company(17, Some(size)).to_string().len();
            assert!(len.abs_diff(size) < 64, "{len} vs {size}");
            let len = rest_user(3, Some(size)).to_string().len();
            assert!(len.abs_diff(size) < 64, "{len} vs {size}");
        }
        // Smaller than the entity: no padding beyond an empty trait.
        assert!(rest_company(1, Some(10)).to_string().len() > 10);
    }

    #[test]
    fn generated_entities_have_realistic_keys() {
        let company = rest_company(17, None);
        assert_eq!(company["keys"][0]["key"], "domain");
        assert_eq!(company["keys"][0]["value"], "acme-17.example");
        let user = rest_user(17, None);
        assert_eq!(user["keys"][0]["value"], "user-17@acme-4.example");
    }
}
