//! Small JSON helpers: item-error formatting and the field checks every
//! entity normaliser shares.
//!
//! Every check either fixes a field up to what the Schematic SDKs expect
//! (`null` or missing lists become `[]`, maps `{}`, strings `""`) or fails
//! with an error that names the entity, the id and the field path.

use std::fmt::Display;

use emcachers_plugin_sdk::{Error, Map, Value};

/// Where an item error happened: the entity and the id being shaped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    /// The entity (`flags`, `companies`, `users`).
    pub entity: &'a str,
    /// The change's or row's id.
    pub id: &'a str,
}

impl<'a> Ctx<'a> {
    /// A context for `entity` and `id`.
    pub fn new(entity: &'a str, id: &'a str) -> Self {
        Ctx { entity, id }
    }

    /// The same entity, another id.
    pub fn with_id(self, id: &'a str) -> Self {
        Ctx { id, ..self }
    }

    /// An error about the item as a whole.
    pub fn err(&self, message: impl Display) -> Error {
        Error::msg(format!("entity {}, id {}: {message}", self.entity, self.id))
    }

    /// An error about one field (a dotted path such as `rules[0].conditions`).
    pub fn field_err(&self, field: &str, message: impl Display) -> Error {
        Error::msg(format!(
            "entity {}, id {}, field {field}: {message}",
            self.entity, self.id
        ))
    }
}

/// `prefix.key`, or `key` at the top level.
pub(crate) fn path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// `expected {what}, found {value}`, with long values cut short.
pub(crate) fn expected(what: &str, found: &Value) -> String {
    const MAX: usize = 60;
    let text = found.to_string();
    if text.chars().count() > MAX {
        let cut: String = text.chars().take(MAX).collect();
        format!("expected {what}, found {cut}…")
    } else {
        format!("expected {what}, found {text}")
    }
}

/// A non-empty string value, if `value` is one.
pub(crate) fn non_empty_str(value: Option<&Value>) -> Option<&str> {
    match value {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// `map[key]` must satisfy `fits`; when missing, or `null` and `null` does
/// not fit, it becomes `default`. Otherwise it is an error expecting `what`.
fn scalar(
    map: &mut Map<String, Value>,
    key: &str,
    ctx: Ctx<'_>,
    prefix: &str,
    fits: fn(&Value) -> bool,
    default: fn() -> Value,
    what: &str,
) -> Result<(), Error> {
    match map.get(key) {
        Some(value) if fits(value) => Ok(()),
        None | Some(Value::Null) => {
            map.insert(key.to_owned(), default());
            Ok(())
        }
        Some(other) => Err(ctx.field_err(&path(prefix, key), expected(what, other))),
    }
}

/// `map[key]` must be a string; missing or `null` becomes `""`.
pub(crate) fn string_or_empty(
    map: &mut Map<String, Value>,
    key: &str,
    ctx: Ctx<'_>,
    prefix: &str,
) -> Result<(), Error> {
    scalar(
        map,
        key,
        ctx,
        prefix,
        Value::is_string,
        || Value::String(String::new()),
        "a string",
    )
}

/// `map[key]` must be a string or `null`; missing becomes `null`.
pub(crate) fn string_or_null(
    map: &mut Map<String, Value>,
    key: &str,
    ctx: Ctx<'_>,
    prefix: &str,
) -> Result<(), Error> {
    scalar(
        map,
        key,
        ctx,
        prefix,
        |v| v.is_string() || v.is_null(),
        || Value::Null,
        "a string or null",
    )
}

/// `map[key]` must be an object or `null`; missing becomes `null`.
pub(crate) fn object_or_null(
    map: &mut Map<String, Value>,
    key: &str,
    ctx: Ctx<'_>,
    prefix: &str,
) -> Result<(), Error> {
    scalar(
        map,
        key,
        ctx,
        prefix,
        |v| v.is_object() || v.is_null(),
        || Value::Null,
        "an object or null",
    )
}

/// `map[key]` must be a boolean; missing or `null` becomes `false`.
pub(crate) fn bool_or_false(
    map: &mut Map<String, Value>,
    key: &str,
    ctx: Ctx<'_>,
    prefix: &str,
) -> Result<(), Error> {
    scalar(
        map,
        key,
        ctx,
        prefix,
        Value::is_boolean,
        || Value::Bool(false),
        "true or false",
    )
}

/// The list at `map[key]`: missing or `null` becomes `[]`, `null` elements
/// are dropped, anything else that is not an array is an error.
fn list<'m>(
    map: &'m mut Map<String, Value>,
    key: &str,
    ctx: Ctx<'_>,
    prefix: &str,
) -> Result<&'m mut Vec<Value>, Error> {
    let slot = map
        .entry(key.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    match slot {
        Value::Array(items) => {
            items.retain(|item| !item.is_null());
            Ok(items)
        }
        other => Err(ctx.field_err(&path(prefix, key), expected("an array", other))),
    }
}

/// A list of strings at `map[key]` (`[]` when missing or `null`).
pub(crate) fn string_list(
    map: &mut Map<String, Value>,
    key: &str,
    ctx: Ctx<'_>,
    prefix: &str,
) -> Result<(), Error> {
    let items = list(map, key, ctx, prefix)?;
    for (i, item) in items.iter().enumerate() {
        if !item.is_string() {
            return Err(ctx.field_err(
                &format!("{}[{i}]", path(prefix, key)),
                expected("a string", item),
            ));
        }
    }
    Ok(())
}

/// A list of objects at `map[key]` (`[]` when missing or `null`).
pub(crate) fn object_list<'m>(
    map: &'m mut Map<String, Value>,
    key: &str,
    ctx: Ctx<'_>,
    prefix: &str,
) -> Result<&'m mut Vec<Value>, Error> {
    let items = list(map, key, ctx, prefix)?;
    for (i, item) in items.iter().enumerate() {
        if !item.is_object() {
            return Err(ctx.field_err(
                &format!("{}[{i}]", path(prefix, key)),
                expected("an object", item),
            ));
        }
    }
    Ok(items)
}

/// A map at `map[key]` (`{}` when missing or `null`) whose values pass
/// `check`, described as `what` in errors.
fn checked_map(
    map: &mut Map<String, Value>,
    key: &str,
    ctx: Ctx<'_>,
    prefix: &str,
    what: &str,
    check: fn(&Value) -> bool,
) -> Result<(), Error> {
    let slot = map
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(entries) => {
            for (name, value) in entries.iter() {
                if !check(value) {
                    return Err(ctx.field_err(
                        &format!("{}.{name}", path(prefix, key)),
                        expected(what, value),
                    ));
                }
            }
            Ok(())
        }
        other => Err(ctx.field_err(&path(prefix, key), expected("an object", other))),
    }
}

/// A name → string map at `map[key]` (`{}` when missing or `null`).
pub(crate) fn string_map(
    map: &mut Map<String, Value>,
    key: &str,
    ctx: Ctx<'_>,
    prefix: &str,
) -> Result<(), Error> {
    checked_map(map, key, ctx, prefix, "a string", Value::is_string)
}

/// A name → number map at `map[key]` (`{}` when missing or `null`).
pub(crate) fn number_map(
    map: &mut Map<String, Value>,
    key: &str,
    ctx: Ctx<'_>,
    prefix: &str,
) -> Result<(), Error> {
    checked_map(map, key, ctx, prefix, "a number", Value::is_number)
}

/// The incoming value of a shallow-merged map field of a partial: `None` for
/// `null` (nothing to merge), the entries otherwise; values must pass `check`.
pub(crate) fn incoming_map(
    value: Value,
    field: &str,
    ctx: Ctx<'_>,
    what: &str,
    check: fn(&Value) -> bool,
) -> Result<Option<Map<String, Value>>, Error> {
    match value {
        Value::Null => Ok(None),
        Value::Object(entries) => {
            if let Some((name, value)) = entries.iter().find(|(_, v)| !check(v)) {
                return Err(ctx.field_err(&format!("{field}.{name}"), expected(what, value)));
            }
            Ok(Some(entries))
        }
        other => Err(ctx.field_err(field, expected("an object", &other))),
    }
}
