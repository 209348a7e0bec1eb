//! A template emcachers plugin: user profiles with e-mail lookup keys.
//!
//! Start a plugin of your own with `emcachers plugin new <name>` (which copies
//! this file and renames it) and edit from there. The plugin author guide
//! (`examples/README.md` in the emcachers repository) walks through building,
//! checking, testing and loading it.
//!
//! What this plugin does, as an example:
//!
//! * entity `profiles`, fed by the `users` collection of any source;
//! * an upsert keeps `name`, the lower-cased `email`, `plan` (default
//!   `"free"`) and the `tags` array;
//! * a delete deletes the profile; a partial change merges the changed
//!   fields onto the current row;
//! * cache keys: `profile:{version}:{id}` → the row, and
//!   `profile:{version}:email:{email}` → the id (a JSON string).

use emcachers_plugin_sdk::{
    CacheWrite, Change, ChangeOp, Error, Map, Plugin, PluginInfo, Result, Row, Shaped, Value, json,
    log,
};

/// The plugin's name; entities refer to the plugin by it.
pub const NAME: &str = "plugin-template";

/// The plugin. The host creates one value per instance with `Default`, so
/// keep per-entity state (from `configure`) in its fields.
#[derive(Debug, Default)]
pub struct Profiles;

impl Plugin for Profiles {
    /// Who we are and what we serve. `*` matches any source here.
    fn describe(&self) -> PluginInfo {
        PluginInfo::new(NAME, env!("CARGO_PKG_VERSION"))
            .description("User profiles with e-mail lookup keys")
            .serving("profiles", "*", "users")
    }

    // `configure` is not overridden: this plugin takes no configuration.
    // Override it to read per-entity settings; return `Err` to reject them.

    /// One change in, rows out. Return `Err` for a bad document: it becomes
    /// that item's error and the rest of the batch goes on. Never panic on
    /// input: a panic traps and costs the whole batch.
    fn shape(&self, entity: &str, change: Change) -> Result<Shaped> {
        let Change {
            op,
            id,
            document,
            current,
            ..
        } = change;
        let mut row = match op {
            ChangeOp::Delete => {
                log::debug("profile deleted", &[("id", &id)]);
                return Ok(Shaped::row(Row::delete(entity, id)));
            }
            // A whole document: start from the defaults.
            ChangeOp::Upsert => defaults(),
            // Only the changed fields: start from the current row, which the
            // host sends when it has one.
            ChangeOp::Partial => current.ok_or_else(|| {
                Error::msg(format!(
                    "profile {id}: a partial change needs the current row"
                ))
            })?,
        };
        let Some(Value::Object(doc)) = &document else {
            return Err(Error::msg(format!(
                "profile {id}: the document is not a JSON object"
            )));
        };
        row.extend(columns(&id, doc)?);
        Ok(Shaped::row(Row::upsert_map(entity, id, row)))
    }

    /// The cache writes of one upsert row: the row under its id, and the id
    /// under the e-mail. Every key carries the entity version, so a layout
    /// change (a new `version`) writes to fresh keys.
    fn keys(&self, entity: &str, row: &Row) -> Result<Vec<CacheWrite>> {
        let version = self.version(entity);
        let mut writes = vec![CacheWrite::new(
            format!("profile:{version}:{}", row.id),
            emcachers_plugin_sdk::serde_json::to_string(&row.data)?,
        )];
        if let Some(email) = row.data.get("email").and_then(Value::as_str) {
            writes.push(CacheWrite::new(
                format!("profile:{version}:email:{}", email.to_lowercase()),
                Value::String(row.id.clone()).to_string(),
            ));
        }
        Ok(writes)
    }

    // `version` defaults to the plugin version: bump the crate version when
    // the rows or keys change shape. `table` defaults to none (rows are
    // stored as one JSON column); override it to get typed SQLite columns.
}

/// A profile with every column at its default.
fn defaults() -> Map<String, Value> {
    let mut row = Map::new();
    row.insert("name".into(), Value::Null);
    row.insert("email".into(), Value::Null);
    row.insert("plan".into(), json!("free"));
    row.insert("tags".into(), json!([]));
    row
}

/// The profile columns of the source fields present in `doc`.
fn columns(id: &str, doc: &Map<String, Value>) -> Result<Map<String, Value>> {
    let bad = |field: &str, value: &Value| {
        Error::msg(format!("profile {id}: {field} has the wrong type: {value}"))
    };
    let mut row = Map::new();
    if let Some(name) = doc.get("name") {
        row.insert("name".into(), name.clone());
    }
    if let Some(email) = doc.get("email") {
        let email = match email {
            Value::String(email) => Value::String(email.to_lowercase()),
            Value::Null => Value::Null,
            other => return Err(bad("email", other)),
        };
        row.insert("email".into(), email);
    }
    if let Some(plan) = doc.get("plan") {
        let plan = if plan.is_null() {
            json!("free")
        } else {
            plan.clone()
        };
        row.insert("plan".into(), plan);
    }
    if let Some(tags) = doc.get("tags") {
        let tags = match tags {
            Value::Array(_) => tags.clone(),
            Value::Null => json!([]),
            other => return Err(bad("tags", other)),
        };
        row.insert("tags".into(), tags);
    }
    Ok(row)
}

// Export the plugin as the component's implementation. This does nothing in
// a native build, so `cargo test` runs the tests below without WebAssembly.
emcachers_plugin_sdk::export_plugin!(Profiles);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use emcachers_plugin_sdk::testing::Harness;

    use super::*;

    fn data(shaped: Result<Shaped, String>) -> Value {
        Value::Object(shaped.unwrap().rows.remove(0).data)
    }

    #[test]
    fn describes_itself() {
        let info = Harness::<Profiles>::default().describe();
        assert_eq!(info.name, NAME);
        assert_eq!(info.bindings[0].collection, "users");
    }

    #[test]
    fn upsert_keeps_profile_fields() {
        let h = Harness::<Profiles>::default();
        let doc =
            json!({"name": "Ada", "email": "Ada@Example.COM", "tags": ["x"], "password": "no"});
        let shaped = h.shape_one("profiles", Change::upsert("users", "u1", doc));
        assert_eq!(
            data(shaped),
            json!({"name": "Ada", "email": "ada@example.com", "plan": "free", "tags": ["x"]})
        );
    }

    #[test]
    fn partial_merges_onto_current() {
        let h = Harness::<Profiles>::default();
        let current =
            json!({"name": "Ada", "email": "ada@example.com", "plan": "free", "tags": []});
        let Value::Object(current) = current else {
            unreachable!()
        };
        let change = Change::partial("users", "u1", json!({"plan": "pro"})).with_current(current);
        let shaped = h.shape_one("profiles", change);
        assert_eq!(
            data(shaped),
            json!({"name": "Ada", "email": "ada@example.com", "plan": "pro", "tags": []})
        );
        // Without a current row, a partial change is that item's error.
        let err = h
            .shape_one("profiles", Change::partial("users", "u2", json!({})))
            .unwrap_err();
        assert_eq!(err, "profile u2: a partial change needs the current row");
    }

    #[test]
    fn bad_items_fail_alone() {
        let h = Harness::<Profiles>::default();
        let results = h.shape(
            "profiles",
            &[
                Change::upsert("users", "u1", json!({"email": 42})),
                Change::delete("users", "u2"),
            ],
        );
        assert_eq!(
            results[0],
            Err("profile u1: email has the wrong type: 42".into())
        );
        assert_eq!(results[1], Ok(Shaped::row(Row::delete("profiles", "u2"))));
    }

    #[test]
    fn keys_by_id_and_email() {
        let h = Harness::<Profiles>::default();
        let row = Row::upsert("profiles", "u1", [("email", json!("ada@example.com"))]);
        let writes = h.keys("profiles", &[row]).remove(0).unwrap();
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(writes[0].key, format!("profile:{version}:u1"));
        assert_eq!(writes[0].value, r#"{"email":"ada@example.com"}"#);
        assert_eq!(
            writes[1].key,
            format!("profile:{version}:email:ada@example.com")
        );
        assert_eq!(writes[1].value, r#""u1""#);
    }
}
