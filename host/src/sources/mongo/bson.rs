//! BSON → JSON, as documented behaviour.
//!
//! Documents reach plugins as JSON text. MongoDB's types that JSON lacks are
//! written as **relaxed Extended JSON v2**
//! (<https://www.mongodb.com/docs/manual/reference/mongodb-extended-json/>),
//! which the SDK's `coerce` (and so the `shape` plugin) understands:
//!
//! | BSON | JSON |
//! |---|---|
//! | double | a number; `NaN`, `Infinity`, `-Infinity` as `{"$numberDouble": "NaN"}` etc. (JSON has no such numbers) |
//! | string, boolean, null | themselves |
//! | document, array | an object, an array (keys in document order) |
//! | 32-bit int | a number |
//! | 64-bit int | a number when `|n| ≤ 2^53 − 1` (JavaScript's `Number.MAX_SAFE_INTEGER`: every JSON reader, doubles included, reads it exactly), else `{"$numberLong": "<decimal>"}` |
//! | ObjectId | `{"$oid": "<24 hex digits>"}` |
//! | date | `{"$date": "YYYY-MM-DDTHH:MM:SS.mmmZ"}` (always three digits of milliseconds, UTC) for years 1970–9999, else `{"$date": {"$numberLong": "<ms since the epoch>"}}` |
//! | Decimal128 | `{"$numberDecimal": "<decimal text>"}` |
//! | binary | `{"$binary": {"base64": "..", "subType": "<2 hex digits>"}}` |
//! | regex, timestamp, JavaScript code, symbol, DBPointer, min/max key, undefined | their relaxed Extended JSON form (`{"$regularExpression": ..}`, `{"$timestamp": {"t", "i"}}`, ...) |
//!
//! The rule for 64-bit ints is about the reader, not the writer: a plain
//! JSON number above 2^53 is silently rounded by JavaScript and by any
//! reader that parses numbers as doubles, so such values keep their digits
//! in a string. The SDK's `coerce` reads both forms as an Integer.
//!
//! **Document ids** become the row id, a string ([`id_string`]): an ObjectId
//! its 24 hex digits, a string itself, a number its decimal text (an
//! integral double within the 64-bit range as an integer, so `1`, `1.0` and
//! `NumberLong(1)` — the same `_id` to MongoDB — give the same `"1"`), a
//! Decimal128 its decimal text, any other type its canonical Extended JSON
//! text (e.g. `{"a":{"$numberInt":"1"}}` for a document id). Known overlap:
//! the string `"65f0…"` and the ObjectId with those hex digits give the
//! same id; a collection mixing such ids would merge their rows.
//!
//! **Resume tokens** are kept as text too (the source position,
//! [`token_to_text`] / [`token_from_text`]): relaxed Extended JSON
//! (`{"_data":"8265…"}`), or canonical Extended JSON when the relaxed form
//! would not read back as the very same BSON (a token holding a small
//! 64-bit int, say), so the round trip is exact.

use mongodb::bson::{self, Bson, Document};
use mongodb::change_stream::event::ResumeToken;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// The largest integer every JSON reader reads exactly: 2^53 − 1.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// The last millisecond written as an ISO date: 9999-12-31T23:59:59.999Z.
const LAST_ISO_MILLIS: i64 = 253_402_300_799_999;

/// A resume token that cannot be written or read as text.
#[derive(Debug, thiserror::Error)]
#[error("resume token: {0}")]
pub struct TokenError(String);

/// `value` as JSON (see the module documentation).
pub fn to_json(value: &Bson) -> Value {
    match value {
        Bson::Double(f) => double(*f),
        Bson::String(s) => Value::String(s.clone()),
        Bson::Boolean(b) => Value::Bool(*b),
        Bson::Null => Value::Null,
        Bson::Document(doc) => document_to_json(doc),
        Bson::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Bson::Int32(i) => Value::from(*i),
        Bson::Int64(i) => int64(*i),
        Bson::ObjectId(oid) => wrap("$oid", Value::String(oid.to_hex())),
        Bson::DateTime(date) => date_json(date.timestamp_millis()),
        Bson::Decimal128(d) => wrap("$numberDecimal", Value::String(d.to_string())),
        // Binary, regex, timestamp, code, symbol, DBPointer, min/max key,
        // undefined: the bson crate's relaxed Extended JSON, which is the
        // specification's form for these.
        other => other.clone().into_relaxed_extjson(),
    }
}

/// A document as a JSON object.
pub fn document_to_json(doc: &Document) -> Value {
    let mut map = Map::with_capacity(doc.len());
    for (key, value) in doc {
        map.insert(key.clone(), to_json(value));
    }
    Value::Object(map)
}

/// A document as JSON text: the text of [`document_to_json`], written
/// directly (no intermediate JSON value: this is the change path's
/// per-document cost).
pub fn document_text(doc: &Document) -> String {
    let mut out = Vec::with_capacity(256);
    write_document(&mut out, doc);
    // Only JSON text was written, from UTF-8 strings.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn write_document(out: &mut Vec<u8>, doc: &Document) {
    out.push(b'{');
    for (index, (key, value)) in doc.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_str(out, key);
        out.push(b':');
        write_json(out, value);
    }
    out.push(b'}');
}

fn write_str(out: &mut Vec<u8>, text: &str) {
    // serde_json's escaping, as `Value::to_string` writes it.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// `{"<key>":"<text>"}`.
fn write_wrapped_str(out: &mut Vec<u8>, key: &str, text: &str) {
    out.push(b'{');
    write_str(out, key);
    out.push(b':');
    write_str(out, text);
    out.push(b'}');
}

/// `value` as JSON text, exactly as `to_json(value).to_string()`.
fn write_json(out: &mut Vec<u8>, value: &Bson) {
    use std::io::Write;
    match value {
        Bson::Double(f) if f.is_finite() => {
            let _ = serde_json::to_writer(&mut *out, f);
        }
        Bson::String(s) => write_str(out, s),
        Bson::Boolean(true) => out.extend_from_slice(b"true"),
        Bson::Boolean(false) => out.extend_from_slice(b"false"),
        Bson::Null => out.extend_from_slice(b"null"),
        Bson::Document(doc) => write_document(out, doc),
        Bson::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_json(out, item);
            }
            out.push(b']');
        }
        Bson::Int32(i) => {
            let _ = write!(out, "{i}");
        }
        Bson::Int64(i) if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(i) => {
            let _ = write!(out, "{i}");
        }
        Bson::ObjectId(oid) => write_wrapped_str(out, "$oid", &oid.to_hex()),
        Bson::DateTime(date) if (0..=LAST_ISO_MILLIS).contains(&date.timestamp_millis()) => {
            write_wrapped_str(out, "$date", &iso_millis(date.timestamp_millis()))
        }
        other => {
            let _ = serde_json::to_writer(&mut *out, &to_json(other));
        }
    }
}

/// The row id of a document whose `_id` is `id` (see the module
/// documentation).
pub fn id_string(id: &Bson) -> String {
    match id {
        Bson::ObjectId(oid) => oid.to_hex(),
        Bson::String(s) => s.clone(),
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        Bson::Double(f) => {
            // An integral double in the i64 range reads as that integer
            // (MongoDB's `_id` equality: 1 == 1.0 == NumberLong(1)).
            if f.is_finite() && f.fract() == 0.0 && *f >= -(2f64.powi(63)) && *f < 2f64.powi(63) {
                (*f as i64).to_string()
            } else {
                f.to_string()
            }
        }
        Bson::Decimal128(d) => d.to_string(),
        other => other.clone().into_canonical_extjson().to_string(),
    }
}

/// `{"<key>": inner}`.
fn wrap(key: &str, inner: Value) -> Value {
    let mut map = Map::with_capacity(1);
    map.insert(key.to_owned(), inner);
    Value::Object(map)
}

fn double(f: f64) -> Value {
    match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None => {
            let text = if f.is_nan() {
                "NaN"
            } else if f > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            };
            wrap("$numberDouble", Value::String(text.to_owned()))
        }
    }
}

fn int64(i: i64) -> Value {
    if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&i) {
        Value::from(i)
    } else {
        wrap("$numberLong", Value::String(i.to_string()))
    }
}

fn date_json(millis: i64) -> Value {
    if (0..=LAST_ISO_MILLIS).contains(&millis) {
        wrap("$date", Value::String(iso_millis(millis)))
    } else {
        wrap(
            "$date",
            wrap("$numberLong", Value::String(millis.to_string())),
        )
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of a non-negative time in milliseconds.
fn iso_millis(millis: i64) -> String {
    let days = millis.div_euclid(86_400_000);
    let in_day = millis.rem_euclid(86_400_000);
    let (year, month, day) = crate::calendar::civil_from_days(days);
    let (h, rest) = (in_day / 3_600_000, in_day % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, ms) = (rest / 1000, rest % 1000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

#[derive(Serialize)]
struct TokenOut<'a> {
    t: &'a ResumeToken,
}

#[derive(Deserialize)]
struct TokenIn {
    t: ResumeToken,
}

/// The BSON value of a resume token.
fn token_bson(token: &ResumeToken) -> Result<Bson, TokenError> {
    let bytes = bson::to_vec(&TokenOut { t: token }).map_err(|e| TokenError(e.to_string()))?;
    let doc = Document::from_reader(bytes.as_slice()).map_err(|e| TokenError(e.to_string()))?;
    doc.get("t")
        .cloned()
        .ok_or_else(|| TokenError("the token did not serialise".into()))
}

/// A resume token as text: relaxed Extended JSON, or canonical Extended
/// JSON when the relaxed form would not read back as the same BSON.
pub fn token_to_text(token: &ResumeToken) -> Result<String, TokenError> {
    let value = token_bson(token)?;
    let relaxed = value.clone().into_relaxed_extjson();
    let exact = Bson::try_from(relaxed.clone()).is_ok_and(|back| back == value);
    Ok(if exact {
        relaxed.to_string()
    } else {
        value.into_canonical_extjson().to_string()
    })
}

/// The resume token [`token_to_text`] wrote.
pub fn token_from_text(text: &str) -> Result<ResumeToken, TokenError> {
    let json: Value =
        serde_json::from_str(text).map_err(|e| TokenError(format!("{text:?} is not JSON: {e}")))?;
    let value = Bson::try_from(json)
        .map_err(|e| TokenError(format!("{text:?} is not Extended JSON: {e}")))?;
    token_of(value)
}

/// The resume token holding `value`.
fn token_of(value: Bson) -> Result<ResumeToken, TokenError> {
    let mut doc = Document::new();
    doc.insert("t", value);
    let bytes = bson::to_vec(&doc).map_err(|e| TokenError(e.to_string()))?;
    let read: TokenIn = bson::from_slice(&bytes).map_err(|e| TokenError(e.to_string()))?;
    Ok(read.t)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use mongodb::bson::oid::ObjectId;
    use mongodb::bson::spec::BinarySubtype;
    use mongodb::bson::{Binary, DateTime, Decimal128, doc};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    #[test]
    fn object_ids_dates_and_decimals_are_relaxed_extended_json() {
        let oid = ObjectId::parse_str("65f0a1b2c3d4e5f601234567").unwrap();
        let decimal: Decimal128 = "12.50".parse().unwrap();
        let doc = doc! {
            "_id": oid,
            "at": DateTime::from_millis(1_700_000_000_123),
            "epoch": DateTime::from_millis(0),
            "before": DateTime::from_millis(-1),
            "far": DateTime::from_millis(LAST_ISO_MILLIS + 1),
            "price": decimal,
            "blob": Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2, 3] },
            "nested": { "list": [1_i32, "two", null, true] },
        };
        assert_eq!(
            document_to_json(&doc),
            json!({
                "_id": {"$oid": "65f0a1b2c3d4e5f601234567"},
                "at": {"$date": "2023-11-14T22:13:20.123Z"},
                "epoch": {"$date": "1970-01-01T00:00:00.000Z"},
                "before": {"$date": {"$numberLong": "-1"}},
                "far": {"$date": {"$numberLong": "253402300800000"}},
                "price": {"$numberDecimal": "12.50"},
                "blob": {"$binary": {"base64": "AQID", "subType": "00"}},
                "nested": {"list": [1, "two", null, true]},
            })
        );
    }

    #[test]
    fn the_last_iso_date_is_the_end_of_year_9999() {
        assert_eq!(
            to_json(&Bson::DateTime(DateTime::from_millis(LAST_ISO_MILLIS))),
            json!({"$date": "9999-12-31T23:59:59.999Z"})
        );
        assert_eq!(
            to_json(&Bson::DateTime(DateTime::from_millis(951_782_400_000))),
            json!({"$date": "2000-02-29T00:00:00.000Z"})
        );
    }

    #[test]
    fn int64_is_a_number_up_to_2_pow_53_minus_1() {
        assert_eq!(
            to_json(&Bson::Int64(MAX_SAFE_INTEGER)),
            json!(9_007_199_254_740_991_i64)
        );
        assert_eq!(
            to_json(&Bson::Int64(-MAX_SAFE_INTEGER)),
            json!(-9_007_199_254_740_991_i64)
        );
        assert_eq!(
            to_json(&Bson::Int64(MAX_SAFE_INTEGER + 1)),
            json!({"$numberLong": "9007199254740992"})
        );
        assert_eq!(
            to_json(&Bson::Int64(i64::MIN)),
            json!({"$numberLong": "-9223372036854775808"})
        );
        assert_eq!(to_json(&Bson::Int32(i32::MIN)), json!(i32::MIN));
    }

    #[test]
    fn non_finite_doubles_are_wrapped() {
        assert_eq!(to_json(&Bson::Double(1.5)), json!(1.5));
        assert_eq!(
            to_json(&Bson::Double(f64::NAN)),
            json!({"$numberDouble": "NaN"})
        );
        assert_eq!(
            to_json(&Bson::Double(f64::INFINITY)),
            json!({"$numberDouble": "Infinity"})
        );
        assert_eq!(
            to_json(&Bson::Double(f64::NEG_INFINITY)),
            json!({"$numberDouble": "-Infinity"})
        );
    }

    #[test]
    fn ids_of_every_type_are_stable_strings() {
        let oid = ObjectId::parse_str("65f0a1b2c3d4e5f601234567").unwrap();
        assert_eq!(id_string(&Bson::ObjectId(oid)), "65f0a1b2c3d4e5f601234567");
        assert_eq!(id_string(&Bson::String("u1".into())), "u1");
        assert_eq!(id_string(&Bson::Int32(7)), "7");
        assert_eq!(id_string(&Bson::Int64(-7)), "-7");
        assert_eq!(id_string(&Bson::Double(7.0)), "7");
        assert_eq!(id_string(&Bson::Double(7.25)), "7.25");
        assert_eq!(
            id_string(&Bson::Decimal128("7.50".parse().unwrap())),
            "7.50"
        );
        assert_eq!(
            id_string(&Bson::Document(doc! {"a": 1_i32, "b": "x"})),
            r#"{"a":{"$numberInt":"1"},"b":"x"}"#
        );
        assert_eq!(
            id_string(&Bson::DateTime(DateTime::from_millis(5))),
            r#"{"$date":{"$numberLong":"5"}}"#
        );
        // The same value always gives the same text.
        let id = Bson::Document(doc! {"k": [1_i64, 2.5]});
        assert_eq!(id_string(&id), id_string(&id.clone()));
    }

    #[test]
    fn resume_tokens_round_trip_exactly() {
        let tokens = [
            doc! {"_data": "8265F0A1B2000000012B0429296E1404"},
            // Relaxed JSON would read 5_i64 back as an Int32: canonical form.
            doc! {"_data": "82", "n": 5_i64, "d": 1.0},
            doc! {"_data": Binary { subtype: BinarySubtype::Generic, bytes: vec![0xff, 0] }},
        ];
        for token in tokens {
            let token = token_of(Bson::Document(token)).unwrap();
            let text = token_to_text(&token).unwrap();
            let back = token_from_text(&text).unwrap();
            assert_eq!(back, token, "{text}");
            assert_eq!(token_to_text(&back).unwrap(), text);
        }
        let simple = token_of(Bson::Document(doc! {"_data": "82AB"})).unwrap();
        assert_eq!(token_to_text(&simple).unwrap(), r#"{"_data":"82AB"}"#);
        assert!(token_from_text("not json").is_err());
    }

    /// A random BSON value of the types documents usually hold.
    fn random_bson(rng: &mut StdRng, depth: u32) -> Bson {
        let kinds = if depth >= 3 { 9 } else { 11 };
        match rng.random_range(0..kinds) {
            // Doubles with short decimal forms: serde_json's default float
            // parser (no `float_roundtrip`) may miss the last bit of a
            // 17-digit one when reading the text back, which is about the
            // reader, not this conversion.
            0 => Bson::Double(match rng.random_range(0..4) {
                0 => f64::from(rng.random::<i32>()) / 1000.0,
                1 => f64::from(rng.random::<i32>()),
                2 => -0.0,
                _ => f64::from(rng.random_range(0..1_000_000_u32)) / 1024.0,
            }),
            1 => Bson::String(
                (0..rng.random_range(0..6))
                    .map(|_| rng.random::<char>())
                    .collect(),
            ),
            2 => Bson::Int32(rng.random()),
            3 => Bson::Int64(match rng.random_range(0..3) {
                0 => rng.random(),
                1 => rng.random_range(-MAX_SAFE_INTEGER - 3..=-MAX_SAFE_INTEGER + 3),
                _ => rng.random_range(MAX_SAFE_INTEGER - 3..=MAX_SAFE_INTEGER + 3),
            }),
            4 => Bson::ObjectId(ObjectId::from_bytes(rng.random())),
            5 => Bson::DateTime(DateTime::from_millis(match rng.random_range(0..3) {
                0 => rng.random_range(0..=LAST_ISO_MILLIS),
                1 => rng.random_range(LAST_ISO_MILLIS - 5..=LAST_ISO_MILLIS + 5),
                _ => rng.random(),
            })),
            6 => Bson::Boolean(rng.random()),
            7 => Bson::Null,
            8 => Bson::Binary(Binary {
                subtype: BinarySubtype::Generic,
                bytes: (0..rng.random_range(0..8)).map(|_| rng.random()).collect(),
            }),
            9 => Bson::Array(
                (0..rng.random_range(0..4))
                    .map(|_| random_bson(rng, depth + 1))
                    .collect(),
            ),
            _ => {
                let mut doc = Document::new();
                for i in 0..rng.random_range(0..4) {
                    doc.insert(format!("k{i}"), random_bson(rng, depth + 1));
                }
                Bson::Document(doc)
            }
        }
    }

    /// `value` with every integer as an Int64, for comparing a value with
    /// its JSON read back (JSON does not say which integer type it was).
    fn widen(value: Bson) -> Bson {
        match value {
            Bson::Int32(i) => Bson::Int64(i.into()),
            Bson::Array(items) => Bson::Array(items.into_iter().map(widen).collect()),
            Bson::Document(doc) => {
                Bson::Document(doc.into_iter().map(|(k, v)| (k, widen(v))).collect())
            }
            other => other,
        }
    }

    /// Every integer number in `json` is within ±(2^53 − 1).
    fn integers_are_safe(json: &Value) -> bool {
        match json {
            Value::Number(n) => n.as_i64().is_none_or(|i| i.abs() <= MAX_SAFE_INTEGER),
            Value::Array(items) => items.iter().all(integers_are_safe),
            Value::Object(map) => map.values().all(integers_are_safe),
            _ => true,
        }
    }

    /// A property test over seeded random values: the JSON is valid, reads
    /// back (as Extended JSON) as the same value up to integer width, and
    /// holds no plain integer a double would round.
    #[test]
    fn document_text_is_the_text_of_the_json_value() {
        let mut rng = StdRng::seed_from_u64(0x7e57_7e47);
        for case in 0..3000 {
            let mut doc = Document::new();
            for field in 0..4 {
                doc.insert(format!("f{field}\u{e9}\"\n"), random_bson(&mut rng, 0));
            }
            assert_eq!(
                document_text(&doc),
                document_to_json(&doc).to_string(),
                "case {case}: {doc:?}"
            );
        }
        let doc = doc! {
            "nan": f64::NAN, "inf": f64::NEG_INFINITY, "big": i64::MAX, "small": -3_i64,
            "d": DateTime::from_millis(-5), "d2": DateTime::from_millis(1_700_000_000_123),
            "oid": ObjectId::parse_str("65f0a1b2c3d4e5f601234567").unwrap(),
            "dec": "1.5".parse::<Decimal128>().unwrap(),
            "bin": Binary { subtype: BinarySubtype::Generic, bytes: vec![9] },
            "ctl": "a\u{1}b\\", "arr": [[], {}],
        };
        assert_eq!(document_text(&doc), document_to_json(&doc).to_string());
    }

    #[test]
    fn random_values_read_back_as_themselves() {
        let mut rng = StdRng::seed_from_u64(0x5eed_b50e);
        for case in 0..3000 {
            let mut doc = Document::new();
            doc.insert("v", random_bson(&mut rng, 0));
            let json = document_to_json(&doc);
            let text = json.to_string();
            let reparsed: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(reparsed, json, "case {case}: {text}");
            assert!(integers_are_safe(&json), "case {case}: {text}");
            let back =
                Bson::try_from(reparsed).unwrap_or_else(|e| panic!("case {case}: {text}: {e}"));
            assert_eq!(
                widen(back),
                widen(Bson::Document(doc)),
                "case {case}: {text}"
            );
        }
    }
}
