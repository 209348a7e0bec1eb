//! Schematic datastream entities: flags, companies and users, shaped and
//! keyed exactly as the Schematic SDKs read them in replicator mode.
//!
//! The contract is `specs/schematic-datastream.md` (§2 messages, §3 data
//! model, §4 partial merge, §5 Redis layout). This plugin holds all of its
//! entity logic; the host does the WebSocket, the REST paging, the ordering
//! and the Redis writes.
//!
//! # Entities and bindings
//!
//! | entity | source / collection | what arrives |
//! |---|---|---|
//! | `flags` | `schematic` / `rulesengine.Flags` | the bulk message: an array of Flag |
//! | `flags` | `schematic` / `rulesengine.Flag` | one Flag (full, partial, delete) |
//! | `companies` | `schematic` / `rulesengine.Company` | a rulesengine Company (full, partial, delete) |
//! | `companies` | `schematic` / `rest.Company` | a REST `CompanyDetailResponseData` (initial load) |
//! | `users` | `schematic` / `rulesengine.User` | a rulesengine User (full, partial, delete) |
//! | `users` | `schematic` / `rest.User` | a REST `UserDetailResponseData` (initial load) |
//!
//! The host turns message type `full` into [`ChangeOp::Upsert`], `partial`
//! into [`ChangeOp::Partial`] and `delete` into [`ChangeOp::Delete`], the
//! message's `data` into the change's document, and `entity_id` into its id.
//! The confirmations `rulesengine.Companies` and `rulesengine.Users` shape to
//! nothing, should they reach the plugin. Any other collection, or a
//! collection of another entity, is an item error.
//!
//! # Rows
//!
//! Every row's data is the whole entity as the SDKs expect it (spec §3):
//! unknown fields are kept; missing fields the Go models always write are
//! filled in (`""` for `id`/`account_id`/`environment_id`, `false` for
//! `default_value`, `null` for `base_plan_id`/`subscription`); `null` or
//! missing lists become `[]` and maps `{}` (`rules`, `traits`, `metrics`,
//! `entitlements`, `billing_product_ids`, `plan_ids`, `plan_version_ids`,
//! `keys`, `credit_balances`, and inside rules `conditions`,
//! `condition_groups`, `resource_ids`); `null` elements are dropped from
//! lists. A field of the wrong type (`keys` values that are not strings,
//! `credit_balances` values that are not numbers, a list that is a string,
//! a flag without a `key`, …) is an item error that names the entity, the
//! id and the field path, e.g. `entity companies, id comp_1, field
//! credit_balances.cred_1: expected a number, found "ten"`.
//!
//! ## Flags
//!
//! * Row id: the **lower-cased flag key**, which is exactly what names the
//!   flag in Redis (`schematic:flags:{ver}:{lower(key)}`), so one row owns
//!   one Redis key even when two messages spell the key differently.
//! * `rulesengine.Flags` full (or partial: Schematic's SDK treats both
//!   alike): one upsert per flag and [`Shaped::complete_set`]`("flags")`, so
//!   the host deletes every flag the message lacks. Duplicate keys keep the
//!   last flag. One malformed flag fails the whole message, so a broken
//!   snapshot never evicts anything.
//! * `rulesengine.Flag` full or partial: upsert (a partial flag is a full
//!   replacement).
//! * Delete (either collection): the data is an object with `key` or `id`
//!   (or, for the bulk collection, an array of them). The row deleted is
//!   `lower(key)`; when only `id` is given it is `lower(id)`, as Schematic's
//!   Go replicator does; without either, the change id. Schematic's servers
//!   send the flag itself, which carries its key. A delete that names a flag
//!   only by an id that differs from its key cannot be resolved by a
//!   stateless plugin: it deletes nothing, and the next bulk message evicts
//!   the flag.
//!
//! ## Companies and users
//!
//! * Row id: the entity id: the change id (`entity_id`) or, when that is
//!   empty, the document's `id`. Both present and different is an item error.
//! * Upsert: the whole entity, normalised.
//! * Partial: merged into the current row (`change.current`), spec §4:
//!   * company: `credit_balances` and `keys` shallow-merge; `metrics`
//!     upsert by (`event_subtype`, `period`, `month_reset`); every other
//!     field (`id, account_id, environment_id, base_plan_id, subscription,
//!     billing_product_ids, plan_ids, plan_version_ids, rules, traits,
//!     entitlements`, and fields this plugin does not know) is replaced. When
//!     the partial carried `credit_balances` or `metrics` but no
//!     `entitlements`, the entitlements are refreshed: `credit_remaining`
//!     from the incoming balance of their `credit_id`, `usage` from the
//!     merged metric matching (`event_name`, `metric_period` or `all_time`,
//!     `month_reset` or `first_of_month`).
//!   * user: `keys` shallow-merges; every other field is replaced.
//!   * no current row: an item error (`... partial update without a cached
//!     base ...`), which the host counts and skips.
//! * Delete: a delete row; the host drops the entity key and every lookup
//!   key the row had produced.
//! * REST documents (`rest.Company`, `rest.User`; upserts and deletes only)
//!   are converted to the rulesengine shape first, spec §2: `keys` list →
//!   map; `entity_traits` → `traits` with `trait_definition{id,
//!   comparable_type, entity_type}`; `plan.id` → `base_plan_id`;
//!   `plan.plan_version_id` and `add_ons[].plan_version_id` →
//!   `plan_version_ids`; the product ids of `billing_subscriptions[]` and
//!   `billing_subscription` (deduplicated) → `billing_product_ids`;
//!   `plans[].id` → `plan_ids`; `billing_subscription{id, period_start,
//!   period_end}` (unix seconds, written as RFC 3339 UTC, `0` as Go's zero
//!   time) → `subscription`; `billing_credit_balances` → `credit_balances`;
//!   `metrics` (unknown period → `all_time`, unknown month reset →
//!   `first_of_month`); only the `company_override` and
//!   `company_override_usage_exceeded` rules; `entitlements` as they are;
//!   `account_id` `""`; users get `rules` `[]`.
//!
//! # Keys (spec §5)
//!
//! For an upsert row (delete rows imply no writes):
//!
//! | entity | key | value |
//! |---|---|---|
//! | flags | `schematic:flags:{ver}:{lower(key)}` | the flag JSON |
//! | companies | `schematic:company:{ver}:{id}` (id as it is) | the company JSON |
//! | companies | `schematic:company:{ver}:{lower(name)}:{lower(value)}` per `keys` entry | the id as a JSON string, quotes included: `"comp_1"` |
//! | users | `schematic:user:{ver}:{id}` and `schematic:user:{ver}:{lower(name)}:{lower(value)}` | same |
//!
//! Lower-casing is Unicode lower-casing ([`str::to_lowercase`]), as the
//! Python and Node SDKs do when they build lookup keys. The host remembers
//! the keys each row produced and deletes those a newer version of the row
//! no longer has.
//!
//! # Configuration and version
//!
//! Each entity takes `{}` or `{"cache_version": "<ver>"}`; any other field
//! is an error. `version(entity)` is the entity's `cache_version`, default
//! [`DEFAULT_CACHE_VERSION`] (`v1`). It is the `{ver}` segment of every key
//! and what the host reports as `cache_version` on `/ready`; configure all
//! three entities with the same value. Schematic derives its own version
//! from its Go model types, which cannot be reproduced here, so it is
//! opaque configuration: an operator who wants the keys of an existing Go
//! replicator deployment copies its value. A version is 1–64 characters of
//! `A-Z a-z 0-9 . _ -`: no `:` (it is one key segment) and no glob
//! characters (stale-version cleanup scans `schematic:flags:*`).
//!
//! `table(entity)` is `None`: the target is Redis, and a SQLite cache stores
//! the row JSON whole.

// The large JSON fixtures of the tests need more than the default 128.
#![cfg_attr(test, recursion_limit = "256")]

mod json;
mod merge;
mod model;
mod rest;

use std::collections::HashMap;

use emcachers_plugin_sdk::{
    CacheWrite, Change, ChangeOp, Error, Map, Plugin, PluginInfo, RawRow, Result, Row, RowOp,
    Shaped, Value, serde_json,
};
use serde::Deserialize;

use crate::json::{Ctx, expected, non_empty_str};

/// The plugin's name, as entities refer to it.
pub const NAME: &str = "schematic";

/// The plugin's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The source whose changes the plugin serves.
pub const SOURCE: &str = "schematic";

/// The cache version (`{ver}` of every key) when none is configured.
pub const DEFAULT_CACHE_VERSION: &str = "v1";

/// The entity of feature flags.
pub const FLAGS: &str = "flags";
/// The entity of companies.
pub const COMPANIES: &str = "companies";
/// The entity of users.
pub const USERS: &str = "users";

/// Collection of the bulk flags message (an array of flags).
pub const COLLECTION_FLAGS: &str = "rulesengine.Flags";
/// Collection of single-flag messages.
pub const COLLECTION_FLAG: &str = "rulesengine.Flag";
/// Collection of company messages (rulesengine shape).
pub const COLLECTION_COMPANY: &str = "rulesengine.Company";
/// Collection of user messages (rulesengine shape).
pub const COLLECTION_USER: &str = "rulesengine.User";
/// Collection of subscription confirmations for companies (ignored).
pub const COLLECTION_COMPANIES: &str = "rulesengine.Companies";
/// Collection of subscription confirmations for users (ignored).
pub const COLLECTION_USERS: &str = "rulesengine.Users";
/// Collection of companies from the REST API (converted by the plugin).
pub const COLLECTION_REST_COMPANY: &str = "rest.Company";
/// Collection of users from the REST API (converted by the plugin).
pub const COLLECTION_REST_USER: &str = "rest.User";

/// The longest accepted cache version.
const MAX_VERSION_LEN: usize = 64;

/// The kind of an entity this plugin serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `flags`.
    Flags,
    /// `companies`.
    Companies,
    /// `users`.
    Users,
}

impl Kind {
    /// The kind of the entity named `entity`, if the plugin serves it.
    pub fn of(entity: &str) -> Option<Kind> {
        match entity {
            FLAGS => Some(Kind::Flags),
            COMPANIES => Some(Kind::Companies),
            USERS => Some(Kind::Users),
            _ => None,
        }
    }

    /// The second segment of the entity's Redis keys: `flags`, `company`,
    /// `user`.
    pub fn key_segment(self) -> &'static str {
        match self {
            Kind::Flags => "flags",
            Kind::Companies => "company",
            Kind::Users => "user",
        }
    }
}

/// The configuration of one entity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchematicConfig {
    /// The cache version, `{ver}` of every key; default
    /// [`DEFAULT_CACHE_VERSION`].
    #[serde(default)]
    pub cache_version: Option<String>,
}

/// The `schematic` plugin. Use it through [`Plugin`] (or natively through
/// `emcachers_plugin_sdk::testing::Harness<SchematicPlugin>`).
#[derive(Debug, Default)]
pub struct SchematicPlugin {
    /// The configured cache version of each entity.
    versions: HashMap<String, String>,
}

/// Check a configured cache version.
fn check_version(entity: &str, version: &str) -> Result<()> {
    if version.is_empty() || version.len() > MAX_VERSION_LEN {
        return Err(Error::msg(format!(
            "entity {entity}: cache_version must be 1 to {MAX_VERSION_LEN} characters long, \
             got {version:?}"
        )));
    }
    if let Some(bad) = version
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::msg(format!(
            "entity {entity}: cache_version {version:?} contains {bad:?}; use only A-Z, a-z, \
             0-9, '.', '_' and '-' (it is one segment of the Redis keys)"
        )));
    }
    Ok(())
}

/// The fields of a row its keys depend on.
#[derive(Debug, Default, Deserialize)]
struct KeyFields {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    key: Option<Value>,
    #[serde(default)]
    keys: Option<Value>,
}

impl SchematicPlugin {
    /// The writes of one row whose entity JSON is `value`.
    fn writes(
        &self,
        entity: &str,
        row_id: &str,
        op: RowOp,
        value: String,
        fields: KeyFields,
    ) -> Result<Vec<CacheWrite>> {
        let ctx = Ctx::new(entity, row_id);
        let Some(kind) = Kind::of(entity) else {
            return Err(ctx.err("the schematic plugin serves only flags, companies and users"));
        };
        if op == RowOp::Delete {
            return Ok(Vec::new());
        }
        let prefix = format!("schematic:{}:{}:", kind.key_segment(), self.version(entity));
        match kind {
            Kind::Flags => {
                let Some(key) = non_empty_str(fields.key.as_ref()) else {
                    return Err(ctx.field_err("key", "the flag row has no key"));
                };
                Ok(vec![CacheWrite::new(
                    format!("{prefix}{}", key.to_lowercase()),
                    value,
                )])
            }
            Kind::Companies | Kind::Users => {
                let id = non_empty_str(fields.id.as_ref()).unwrap_or(row_id);
                if id.is_empty() {
                    return Err(ctx.field_err("id", "the row has no id"));
                }
                let quoted_id = serde_json::to_string(id)?;
                let mut writes = vec![CacheWrite::new(format!("{prefix}{id}"), value)];
                match &fields.keys {
                    None | Some(Value::Null) => {}
                    Some(Value::Object(keys)) => {
                        for (name, key_value) in keys {
                            let Some(key_value) = key_value.as_str() else {
                                return Err(ctx.field_err(
                                    &format!("keys.{name}"),
                                    expected("a string", key_value),
                                ));
                            };
                            let key = format!(
                                "{prefix}{}:{}",
                                name.to_lowercase(),
                                key_value.to_lowercase()
                            );
                            if !writes.iter().any(|w| w.key == key) {
                                writes.push(CacheWrite::new(key, quoted_id.clone()));
                            }
                        }
                    }
                    Some(other) => return Err(ctx.field_err("keys", expected("an object", other))),
                }
                Ok(writes)
            }
        }
    }
}

impl Plugin for SchematicPlugin {
    fn describe(&self) -> PluginInfo {
        PluginInfo::new(NAME, VERSION)
            .description(
                "Schematic datastream entities (flags, companies, users) in the rulesengine \
                 shape and the Redis layout the Schematic SDKs read",
            )
            .serving(FLAGS, SOURCE, COLLECTION_FLAGS)
            .serving(FLAGS, SOURCE, COLLECTION_FLAG)
            .serving(COMPANIES, SOURCE, COLLECTION_COMPANY)
            .serving(COMPANIES, SOURCE, COLLECTION_REST_COMPANY)
            .serving(USERS, SOURCE, COLLECTION_USER)
            .serving(USERS, SOURCE, COLLECTION_REST_USER)
    }

    fn configure(&mut self, entity: &str, config: Value) -> Result<()> {
        self.versions.remove(entity);
        if Kind::of(entity).is_none() {
            return Err(Error::msg(format!(
                "entity {entity}: the schematic plugin serves only the entities {FLAGS}, \
                 {COMPANIES} and {USERS}"
            )));
        }
        let config: SchematicConfig = match config {
            Value::Null => SchematicConfig::default(),
            config @ Value::Object(_) => serde_json::from_value(config)
                .map_err(|e| Error::msg(format!("entity {entity}: invalid configuration: {e}")))?,
            other => {
                return Err(Error::msg(format!(
                    "entity {entity}: invalid configuration: {}",
                    expected("a JSON object such as {\"cache_version\": \"v1\"}", &other)
                )));
            }
        };
        if let Some(version) = config.cache_version {
            check_version(entity, &version)?;
            self.versions.insert(entity.to_owned(), version);
        }
        Ok(())
    }

    fn shape(&self, entity: &str, change: Change) -> Result<Shaped> {
        let ctx = Ctx::new(entity, &change.id);
        let Some(kind) = Kind::of(entity) else {
            return Err(ctx.err("the schematic plugin serves only flags, companies and users"));
        };
        let collection = change.collection.as_str();
        match (kind, collection) {
            (_, COLLECTION_COMPANIES | COLLECTION_USERS) => Ok(Shaped::none()),
            (Kind::Flags, COLLECTION_FLAGS) => flags::bulk(entity, change),
            (Kind::Flags, COLLECTION_FLAG) => flags::single(entity, change),
            (Kind::Companies, COLLECTION_COMPANY) => entity_change(kind, entity, change, false),
            (Kind::Companies, COLLECTION_REST_COMPANY) => entity_change(kind, entity, change, true),
            (Kind::Users, COLLECTION_USER) => entity_change(kind, entity, change, false),
            (Kind::Users, COLLECTION_REST_USER) => entity_change(kind, entity, change, true),
            _ => Err(ctx.err(format!(
                "collection {collection:?} does not feed entity {entity}"
            ))),
        }
    }

    /// The Redis writes of an upsert row (spec §5); delete rows imply none.
    fn keys(&self, entity: &str, row: &Row) -> Result<Vec<CacheWrite>> {
        let fields = KeyFields {
            id: row.data.get("id").cloned(),
            key: row.data.get("key").cloned(),
            keys: row.data.get("keys").cloned(),
        };
        self.writes(
            entity,
            &row.id,
            row.op,
            serde_json::to_string(&row.data)?,
            fields,
        )
    }

    /// [`keys`](Plugin::keys) without building the row: the row text (this
    /// plugin's own compact JSON) is the entity value as it is, and only
    /// `id`, `key` and `keys` are parsed.
    fn keys_raw(&self, entity: &str, row: RawRow) -> Result<Vec<CacheWrite>> {
        if row.op == RowOp::Delete || !row.data.trim_start().starts_with('{') {
            return self.keys(entity, &row.parse()?);
        }
        match serde_json::from_str::<KeyFields>(&row.data) {
            Ok(fields) => self.writes(entity, &row.id, row.op, row.data, fields),
            // Let the full parse name the problem.
            Err(_) => self.keys(entity, &row.parse()?),
        }
    }

    fn version(&self, entity: &str) -> String {
        self.versions
            .get(entity)
            .map_or(DEFAULT_CACHE_VERSION, String::as_str)
            .to_owned()
    }
}

/// The row id of a company or user change: the change id, else the
/// document's `id`.
fn entity_id(change_id: &str, doc: Option<&Map<String, Value>>, ctx: Ctx<'_>) -> Result<String> {
    let doc_id = match doc.and_then(|d| d.get("id")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(other) => return Err(ctx.field_err("id", expected("a string", other))),
    };
    match doc_id {
        Some(doc_id) if !change_id.is_empty() && doc_id != change_id => Err(ctx.field_err(
            "id",
            format!("the document's id {doc_id:?} differs from the change's entity id"),
        )),
        Some(doc_id) if change_id.is_empty() => Ok(doc_id.to_owned()),
        _ if !change_id.is_empty() => Ok(change_id.to_owned()),
        _ => Err(ctx.err("neither the change nor the document carries an entity id")),
    }
}

/// The document of a change as an object; `what` names the message kind in
/// the error.
fn document_object(
    document: Option<Value>,
    ctx: Ctx<'_>,
    what: &str,
) -> Result<Map<String, Value>> {
    match document {
        Some(Value::Object(map)) => Ok(map),
        None | Some(Value::Null) => Err(ctx.err(format!("{what} carries no data"))),
        Some(other) => Err(ctx.err(format!("{what}: data {}", expected("an object", &other)))),
    }
}

/// A company or user change: `rest` says the document is a REST API
/// document to convert.
fn entity_change(kind: Kind, entity: &str, change: Change, rest: bool) -> Result<Shaped> {
    let ctx = Ctx::new(entity, &change.id);
    let source = if rest { "REST document" } else { "message" };
    match change.op {
        ChangeOp::Delete => {
            let doc = change.document.as_ref().and_then(Value::as_object);
            let id = entity_id(&change.id, doc, ctx)?;
            Ok(Shaped::row(Row::delete(entity, id)))
        }
        ChangeOp::Upsert => {
            let doc = document_object(change.document, ctx, &format!("full {source}"))?;
            let id = entity_id(&change.id, Some(&doc), ctx)?;
            let ctx = ctx.with_id(&id);
            let data = match (kind, rest) {
                (Kind::Users, true) => rest::user(&doc, &id, ctx)?,
                (_, true) => rest::company(&doc, &id, ctx)?,
                (kind, false) => {
                    let mut doc = doc;
                    doc.insert("id".into(), Value::String(id.clone()));
                    if kind == Kind::Users {
                        model::user(doc, ctx)?
                    } else {
                        model::company(doc, ctx)?
                    }
                }
            };
            Ok(Shaped::row(Row::upsert_map(entity, id, data)))
        }
        ChangeOp::Partial => {
            if rest {
                return Err(
                    ctx.err("REST documents are whole entities: a partial one is not supported")
                );
            }
            let partial = document_object(change.document, ctx, "partial message")?;
            let id = entity_id(&change.id, Some(&partial), ctx)?;
            let ctx = ctx.with_id(&id);
            let Some(mut current) = change.current else {
                return Err(ctx.err(
                    "partial update without a cached base (no current row): skipped; a full \
                     message or a reload brings the entity back",
                ));
            };
            current.insert("id".into(), Value::String(id.clone()));
            let data = if kind == Kind::Users {
                merge::user(current, partial, ctx)?
            } else {
                merge::company(current, partial, ctx)?
            };
            Ok(Shaped::row(Row::upsert_map(entity, id, data)))
        }
    }
}

/// Flag messages.
mod flags {
    use std::collections::{HashMap, HashSet};

    use emcachers_plugin_sdk::{Change, ChangeOp, Map, Result, Row, Shaped, Value};

    use crate::json::{Ctx, expected, non_empty_str};
    use crate::model;

    /// The row id of a flag: its lower-cased key.
    fn row_id(flag: &Map<String, Value>) -> Option<String> {
        non_empty_str(flag.get("key")).map(str::to_lowercase)
    }

    /// The row id a flag delete names: `lower(key)`, else `lower(id)`.
    fn delete_id(flag: &Map<String, Value>) -> Option<String> {
        non_empty_str(flag.get("key"))
            .or_else(|| non_empty_str(flag.get("id")))
            .map(str::to_lowercase)
    }

    /// The change id, when it can name a flag (not empty, not `*`).
    fn change_flag_id(change_id: &str) -> Option<String> {
        (!change_id.is_empty() && change_id != "*").then(|| change_id.to_lowercase())
    }

    /// `rulesengine.Flags`: the complete set of flags (or a delete).
    pub(crate) fn bulk(entity: &str, change: Change) -> Result<Shaped> {
        if change.op == ChangeOp::Delete {
            return delete(entity, change);
        }
        let ctx = Ctx::new(entity, &change.id);
        let items = match change.document {
            Some(Value::Array(items)) => items,
            None | Some(Value::Null) => {
                return Err(
                    ctx.err("the bulk flags message carries no data (expected an array of flags)")
                );
            }
            Some(other) => {
                return Err(ctx.err(format!(
                    "bulk flags message: data {}",
                    expected("an array of flags", &other)
                )));
            }
        };
        let mut rows: Vec<Row> = Vec::with_capacity(items.len());
        let mut index: HashMap<String, usize> = HashMap::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let at = format!("[{i}]");
            let flag = match item {
                Value::Null => continue,
                Value::Object(flag) => flag,
                other => return Err(ctx.field_err(&at, expected("a flag object", &other))),
            };
            let flag = model::flag(flag, ctx, &at)?;
            let Some(id) = row_id(&flag) else {
                return Err(ctx.field_err(&format!("{at}.key"), "the flag has no key"));
            };
            let row = Row::upsert_map(entity, id.clone(), flag);
            match index.get(&id) {
                Some(&pos) => rows[pos] = row,
                None => {
                    index.insert(id, rows.len());
                    rows.push(row);
                }
            }
        }
        Ok(Shaped::complete_set(entity, rows))
    }

    /// `rulesengine.Flag`: one flag, set (full or partial) or deleted.
    pub(crate) fn single(entity: &str, change: Change) -> Result<Shaped> {
        if change.op == ChangeOp::Delete {
            return delete(entity, change);
        }
        let ctx = Ctx::new(entity, &change.id);
        let flag = match change.document {
            Some(Value::Object(flag)) => flag,
            None | Some(Value::Null) => return Err(ctx.err("the flag message carries no data")),
            Some(other) => {
                return Err(ctx.err(format!(
                    "flag message: data {}",
                    expected("a flag object", &other)
                )));
            }
        };
        let flag = model::flag(flag, ctx, "")?;
        let Some(id) = row_id(&flag) else {
            return Err(ctx.field_err("key", "the flag has no key"));
        };
        Ok(Shaped::row(Row::upsert_map(entity, id, flag)))
    }

    /// A flag delete: data `{key}` / `{id}` (or the whole flag), or an
    /// array of those; without data, the change id.
    fn delete(entity: &str, change: Change) -> Result<Shaped> {
        let ctx = Ctx::new(entity, &change.id);
        let fallback = change_flag_id(&change.id);
        let missing = || ctx.err("the flag delete names no flag: it carries neither key nor id");
        match change.document {
            None | Some(Value::Null) => {
                let id = fallback.ok_or_else(missing)?;
                Ok(Shaped::row(Row::delete(entity, id)))
            }
            Some(Value::Object(flag)) => {
                let id = delete_id(&flag).or(fallback).ok_or_else(missing)?;
                Ok(Shaped::row(Row::delete(entity, id)))
            }
            Some(Value::Array(items)) => {
                let mut rows = Vec::with_capacity(items.len());
                let mut seen = HashSet::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let at = format!("[{i}]");
                    match item {
                        Value::Null => {}
                        Value::Object(flag) => {
                            let id = delete_id(flag).ok_or_else(|| {
                                ctx.field_err(&at, "the flag delete carries neither key nor id")
                            })?;
                            if seen.insert(id.clone()) {
                                rows.push(Row::delete(entity, id));
                            }
                        }
                        other => return Err(ctx.field_err(&at, expected("a flag object", other))),
                    }
                }
                Ok(Shaped::rows(rows))
            }
            Some(other) => Err(ctx.err(format!(
                "flag delete: data {}",
                expected("an object with key or id", &other)
            ))),
        }
    }
}

emcachers_plugin_sdk::export_plugin!(SchematicPlugin);

#[cfg(test)]
mod tests;
