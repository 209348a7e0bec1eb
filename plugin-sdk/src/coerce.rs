//! Convert JSON values to column types, strictly: a value that does not fit
//! is an error naming what was expected and what was found, never a silent
//! `null`.
//!
//! MongoDB extended JSON wrappers are understood: `{"$oid": ..}` and
//! `{"$date": ..}` as text, `{"$numberLong"|"$numberInt"|"$numberDouble"|"$numberDecimal": ..}`
//! as numbers.

use std::borrow::Cow;
use std::fmt;

use serde_json::{Number, Value};

use crate::model::ColumnType;

/// A value that does not fit the requested type.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// The type that was asked for.
    pub expected: ColumnType,
    /// The value that was found.
    pub found: Value,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.found.to_string();
        if shown.len() > 120 {
            let cut = (0..=117)
                .rev()
                .find(|&i| shown.is_char_boundary(i))
                .unwrap_or(0);
            shown.truncate(cut);
            shown.push_str("...");
        }
        write!(f, "expected {}, found {shown}", self.expected.name())
    }
}

impl std::error::Error for Mismatch {}

fn mismatch(expected: ColumnType, found: &Value) -> Mismatch {
    Mismatch {
        expected,
        found: found.clone(),
    }
}

/// The single field of an extended-JSON wrapper such as `{"$oid": "..."}`.
fn wrapper<'a>(value: &'a Value, names: &[&str]) -> Option<&'a Value> {
    let map = value.as_object()?;
    if map.len() != 1 {
        return None;
    }
    let (key, inner) = map.iter().next()?;
    names.contains(&key.as_str()).then_some(inner)
}

const NUMBER_WRAPPERS: &[&str] = &[
    "$numberLong",
    "$numberInt",
    "$numberDouble",
    "$numberDecimal",
];

/// The wrappers whose content [`to_text`] takes.
const TEXT_WRAPPERS: &[&str] = &["$oid", "$date", "$numberLong", "$numberDecimal"];

/// A string: strings as they are, numbers and booleans in their JSON form,
/// `$oid` and `$date` wrappers by their content.
pub fn to_text(value: &Value) -> Result<String, Mismatch> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => match wrapper(other, TEXT_WRAPPERS) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(inner @ Value::Object(_)) => to_text(inner),
            _ => Err(mismatch(ColumnType::Text, other)),
        },
    }
}

/// A 64-bit integer: integral numbers (also `3.0`), decimal strings, and
/// `$numberLong`/`$numberInt` wrappers.
pub fn to_integer(value: &Value) -> Result<i64, Mismatch> {
    let fail = || mismatch(ColumnType::Integer, value);
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i)
            } else if let Some(f) = n.as_f64() {
                whole(f).ok_or_else(fail)
            } else {
                Err(fail())
            }
        }
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().and_then(whole))
                .ok_or_else(fail)
        }
        other => match wrapper(other, NUMBER_WRAPPERS) {
            Some(inner) => to_integer(inner).map_err(|_| fail()),
            None => Err(fail()),
        },
    }
}

fn whole(f: f64) -> Option<i64> {
    (f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64).then_some(f as i64)
}

/// A finite floating-point number: numbers, numeric strings and number wrappers.
pub fn to_number(value: &Value) -> Result<f64, Mismatch> {
    let fail = || mismatch(ColumnType::Number, value);
    match value {
        Value::Number(n) => n.as_f64().ok_or_else(fail),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .ok_or_else(fail),
        other => match wrapper(other, NUMBER_WRAPPERS) {
            Some(inner) => to_number(inner).map_err(|_| fail()),
            None => Err(fail()),
        },
    }
}

/// A boolean: `true`/`false`, and the strings `"true"`/`"false"`.
pub fn to_bool(value: &Value) -> Result<bool, Mismatch> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(mismatch(ColumnType::Bool, other)),
    }
}

/// Convert `value` to the JSON form of a column of type `ty`. `null` stays
/// `null` for every type (a missing field is not a type error).
pub fn column(ty: ColumnType, value: &Value) -> Result<Value, Mismatch> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    Ok(match ty {
        ColumnType::Jsonb | ColumnType::Any => value.clone(),
        ColumnType::Bool => Value::Bool(to_bool(value)?),
        ColumnType::Integer => Value::Number(to_integer(value)?.into()),
        ColumnType::Number => {
            let f = to_number(value)?;
            Value::Number(Number::from_f64(f).ok_or_else(|| mismatch(ty, value))?)
        }
        ColumnType::Text => Value::String(to_text(value)?),
    })
}

/// [`column()`], borrowing instead of copying where the converted value is
/// `value` itself or a part of it (`JSONB` and `Any` values, strings and the
/// strings inside `$oid`/`$date` wrappers for `Text`).
pub fn column_ref(ty: ColumnType, value: &Value) -> Result<Cow<'_, Value>, Mismatch> {
    let borrowed = match ty {
        _ if value.is_null() => Some(value),
        ColumnType::Jsonb | ColumnType::Any => Some(value),
        ColumnType::Text => text_ref(value),
        _ => None,
    };
    match borrowed {
        Some(v) => Ok(Cow::Borrowed(v)),
        None => column(ty, value).map(Cow::Owned),
    }
}

/// The string value that [`to_text`] would copy out of `value`, if any.
fn text_ref(value: &Value) -> Option<&Value> {
    match value {
        Value::String(_) => Some(value),
        Value::Object(_) => match wrapper(value, TEXT_WRAPPERS)? {
            inner @ Value::String(_) => Some(inner),
            inner @ Value::Object(_) => text_ref(inner),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text() {
        assert_eq!(to_text(&json!("a")).unwrap(), "a");
        assert_eq!(to_text(&json!(12)).unwrap(), "12");
        assert_eq!(to_text(&json!({"$oid": "65f0"})).unwrap(), "65f0");
        assert_eq!(
            to_text(&json!({"$date": {"$numberLong": "1700000000000"}})).unwrap(),
            "1700000000000"
        );
        assert!(to_text(&json!({"a": 1})).is_err());
        assert!(to_text(&json!([1])).is_err());
    }

    #[test]
    fn integer() {
        assert_eq!(to_integer(&json!(5)).unwrap(), 5);
        assert_eq!(to_integer(&json!(5.0)).unwrap(), 5);
        assert_eq!(to_integer(&json!(" 42 ")).unwrap(), 42);
        assert_eq!(
            to_integer(&json!({"$numberLong": "9007199254740993"})).unwrap(),
            9007199254740993
        );
        assert!(to_integer(&json!(5.5)).is_err());
        assert!(to_integer(&json!("abc")).is_err());
        assert!(to_integer(&json!(true)).is_err());
    }

    #[test]
    fn number_and_bool() {
        assert_eq!(to_number(&json!("2.5")).unwrap(), 2.5);
        assert_eq!(to_number(&json!({"$numberDouble": "1.5"})).unwrap(), 1.5);
        assert!(to_number(&json!("NaN")).is_err());
        assert!(to_bool(&json!("TRUE")).unwrap());
        assert!(to_bool(&json!(1)).is_err());
    }

    #[test]
    fn null_passes_every_type() {
        for ty in [
            ColumnType::Text,
            ColumnType::Integer,
            ColumnType::Bool,
            ColumnType::Number,
        ] {
            assert_eq!(column(ty, &Value::Null).unwrap(), Value::Null);
        }
    }

    #[test]
    fn mismatch_names_type_and_value() {
        let err = column(ColumnType::Integer, &json!("x1")).unwrap_err();
        assert_eq!(err.to_string(), r#"expected Integer, found "x1""#);
    }

    #[test]
    fn column_ref_equals_column() {
        let values = [
            json!(null),
            json!("a"),
            json!(" 7 "),
            json!("true"),
            json!(3),
            json!(2.5),
            json!(true),
            json!([1, "x"]),
            json!({"$oid": "65f0"}),
            json!({"$date": {"$numberLong": "17"}}),
            json!({"$date": {"$numberLong": 17}}),
            json!({"$numberLong": "9"}),
            json!({"$numberDouble": "1.5"}),
            json!({"a": 1}),
        ];
        for ty in [
            ColumnType::Jsonb,
            ColumnType::Any,
            ColumnType::Bool,
            ColumnType::Number,
            ColumnType::Integer,
            ColumnType::Text,
        ] {
            for value in &values {
                assert_eq!(
                    column_ref(ty, value).map(Cow::into_owned),
                    column(ty, value),
                    "{ty:?} of {value}"
                );
            }
        }
    }
}
