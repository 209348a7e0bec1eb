//! Read values out of JSON documents by dotted path.
//!
//! A path is a list of segments separated by `.`: object keys, or decimal
//! indexes into arrays (`items.0.sku`). A key that itself contains dots, as
//! MongoDB's `updatedFields` have (`{"address.city": "Oslo"}`), is found too:
//! at each level the shortest key that leads to a value wins (`a` before
//! `a.b` before `a.b.c`).
//!
//! A [`Selector`] parses a document sparsely: only what a fixed set of paths
//! can reach is built, the rest is checked and dropped, and
//! [`Selected::get`] answers each of those paths exactly as [`get`] does on
//! the whole document.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

/// The value at `path` in `doc`, or `None` when any segment is missing.
/// The empty path is the document itself.
pub fn get<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(doc);
    }
    match doc {
        Value::Object(map) => {
            // Nested keys first (the common case), then keys that are dotted
            // prefixes of the path, shortest first, then the whole path as
            // one literal key.
            for (dot, _) in path.match_indices('.') {
                if let Some(v) = map.get(&path[..dot])
                    && let Some(found) = get(v, &path[dot + 1..])
                {
                    return Some(found);
                }
            }
            map.get(path)
        }
        Value::Array(items) => {
            let (head, rest) = path.split_once('.').unwrap_or((path, ""));
            let index: usize = head.parse().ok()?;
            get(items.get(index)?, rest)
        }
        _ => None,
    }
}

/// Whether `path` is present in `doc` (a present `null` counts as present).
pub fn contains(doc: &Value, path: &str) -> bool {
    get(doc, path).is_some()
}

/// A fixed set of paths, compiled to parse documents sparsely.
///
/// [`Selector::parse`] validates the whole text exactly as
/// `serde_json::from_str::<Value>` does (same errors, same limits), but
/// builds only the members that [`get`] visits for one of the paths, and
/// borrows their keys from the text. [`Selected::get`] then answers every
/// selected path as `get` does on the whole document. This saves most of the
/// allocation when a plugin reads a few fields of a larger document.
///
/// ```
/// use emcachers_plugin_sdk::json;
/// use emcachers_plugin_sdk::json_path::Selector;
///
/// let selector = Selector::new(["a.b", "c"]);
/// let doc = selector.parse(r#"{"a": {"b": 1, "x": [2]}, "c": "y", "d": {"e": 3}}"#).unwrap();
/// assert_eq!(doc.get("a.b"), Some(&json!(1)));
/// assert_eq!(doc.get("c"), Some(&json!("y")));
/// assert!(doc.is_object());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    root: Select,
}

/// What a value needs: all of it, or only some members.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Select {
    All,
    Members(Vec<(String, Select)>),
}

impl Select {
    /// The selection for the remaining paths `rests` at one level (none empty
    /// unless the value itself is wanted).
    fn compile(rests: &[&str]) -> Select {
        if rests.iter().any(|r| r.is_empty()) {
            return Select::All;
        }
        // Every key that `get` may look up here: the dotted prefixes of each
        // path and the path itself.
        let mut keys: Vec<&str> = Vec::new();
        for rest in rests {
            let ends = rest.match_indices('.').map(|(dot, _)| dot);
            for end in ends.chain([rest.len()]) {
                if !keys.contains(&&rest[..end]) {
                    keys.push(&rest[..end]);
                }
            }
        }
        let members = keys
            .into_iter()
            .map(|key| {
                let below: Vec<&str> = rests
                    .iter()
                    .filter_map(|rest| {
                        if *rest == key {
                            Some("")
                        } else {
                            rest.strip_prefix(key)?.strip_prefix('.')
                        }
                    })
                    .collect();
                (key.to_owned(), Select::compile(&below))
            })
            .collect();
        Select::Members(members)
    }
}

impl Selector {
    /// A selector for `paths`. The empty path selects the whole document.
    pub fn new<I>(paths: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let paths: Vec<I::Item> = paths.into_iter().collect();
        let rests: Vec<&str> = paths.iter().map(AsRef::as_ref).collect();
        Selector {
            root: Select::compile(&rests),
        }
    }

    /// Parse the JSON `text`, keeping only what the paths reach.
    pub fn parse<'t>(&self, text: &'t str) -> serde_json::Result<Selected<'t>> {
        let mut de = serde_json::Deserializer::from_str(text);
        let root = match &self.root {
            Select::All => Node::Value(Value::deserialize(&mut de)?),
            Select::Members(members) => Sparse(members).deserialize(&mut de)?,
        };
        de.end()?;
        Ok(Selected { root })
    }
}

/// A document parsed by a [`Selector`]: what its paths reach, with keys
/// borrowed from the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Selected<'t> {
    root: Node<'t>,
}

/// A sparsely parsed value: whole, or the selected members of an object
/// (in document order; with a repeated key the last one counts, as in
/// `serde_json::Map`).
#[derive(Debug, Clone, PartialEq)]
enum Node<'t> {
    Value(Value),
    Object(Vec<(Cow<'t, str>, Node<'t>)>),
}

impl Selected<'_> {
    /// The value at `path`, exactly as [`get`] finds it in the whole document
    /// when `path` is one of the selector's paths. (Other paths may find
    /// nothing although the document has them.)
    pub fn get(&self, path: &str) -> Option<&Value> {
        node_get(&self.root, path)
    }

    /// Whether the document is a JSON object.
    pub fn is_object(&self) -> bool {
        matches!(self.root, Node::Object(_) | Node::Value(Value::Object(_)))
    }

    /// The whole document, when it was kept whole: when it is not an object,
    /// or when the selector has the empty path.
    pub fn as_value(&self) -> Option<&Value> {
        match &self.root {
            Node::Value(value) => Some(value),
            Node::Object(_) => None,
        }
    }
}

/// [`get`] on a sparse node.
fn node_get<'n>(node: &'n Node<'_>, path: &str) -> Option<&'n Value> {
    let members = match node {
        Node::Value(value) => return get(value, path),
        Node::Object(members) => members,
    };
    let member = |key: &str| {
        members
            .iter()
            .rev()
            .find(|(name, _)| same_key(name, key))
            .map(|(_, node)| node)
    };
    // As in `get`: nested keys first, shortest dotted key first, then the
    // whole path as one key.
    for (dot, _) in path.bytes().enumerate().filter(|&(_, b)| b == b'.') {
        if let Some(found) = member(&path[..dot]).and_then(|n| node_get(n, &path[dot + 1..])) {
            return Some(found);
        }
    }
    match member(path)? {
        Node::Value(value) => Some(value),
        Node::Object(_) => None,
    }
}

/// Builds a node of which only `members` are kept when it is an object.
/// Scalars and arrays are kept whole, as `Value` would build them.
struct Sparse<'s>(&'s [(String, Select)]);

impl<'de> DeserializeSeed<'de> for Sparse<'_> {
    type Value = Node<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Sparse<'_> {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node<'de>, E> {
        Ok(Node::Value(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node<'de>, E> {
        Ok(Node::Value(Value::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node<'de>, E> {
        Ok(Node::Value(Value::Number(v.into())))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node<'de>, E> {
        Ok(Node::Value(
            Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node<'de>, E> {
        Ok(Node::Value(Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Node<'de>, E> {
        Ok(Node::Value(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Value(Value::Null))
    }

    fn visit_none<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Value(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node<'de>, D::Error> {
        Value::deserialize(deserializer).map(Node::Value)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element::<Value>()? {
            items.push(item);
        }
        Ok(Node::Value(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut kept = Vec::new();
        while let Some(key) = map.next_key_seed(Key)? {
            match self
                .0
                .iter()
                .find(|(name, _)| name.as_str() == key.as_ref())
            {
                Some((_, Select::All)) => {
                    kept.push((key, Node::Value(map.next_value::<Value>()?)));
                }
                Some((_, Select::Members(members))) => {
                    kept.push((key, map.next_value_seed(Sparse(members))?));
                }
                None => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Node::Object(kept))
    }
}

/// `a == b`, with the first byte compared inline: most keys differ there,
/// and a `memcmp` call is dear in WebAssembly.
#[inline]
fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.as_bytes().first() == b.as_bytes().first() && a == b
}

/// An object key, borrowed from the text when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// A value that is parsed (and so checked) like any other, then dropped
/// without allocating. Unlike `serde::de::IgnoredAny` with `serde_json`, which skips
/// over the text, it rejects exactly what parsing into a `Value` rejects
/// (e.g. a number out of range).
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Skip, D::Error> {
        deserializer.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_none<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Skip, D::Error> {
        Skip::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_key::<Skip>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(Skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_keys_and_indexes() {
        let doc = json!({"a": {"b": {"c": 7}}, "items": [{"sku": "x"}, {"sku": "y"}]});
        assert_eq!(get(&doc, "a.b.c"), Some(&json!(7)));
        assert_eq!(get(&doc, "items.1.sku"), Some(&json!("y")));
        assert_eq!(get(&doc, "items.2.sku"), None);
        assert_eq!(get(&doc, "a.x"), None);
        assert_eq!(get(&doc, ""), Some(&doc));
    }

    #[test]
    fn dotted_literal_keys() {
        let doc = json!({"address.city": "Oslo", "a": {"b.c": 1}});
        assert_eq!(get(&doc, "address.city"), Some(&json!("Oslo")));
        assert_eq!(get(&doc, "a.b.c"), Some(&json!(1)));
    }

    #[test]
    fn present_null_is_contained() {
        let doc = json!({"a": null});
        assert!(contains(&doc, "a"));
        assert!(!contains(&doc, "b"));
    }

    #[test]
    fn selector_answers_like_the_whole_document() {
        let texts = [
            r#"{"a": {"b": {"c": 7, "d": [1, 2]}, "b.c": 8}, "a.b": {"c": 9}, "x": 1e300, "items": [{"sku": "x"}, {"sku": "y"}]}"#,
            r#"{"a": 1, "a": {"b": {"c": "dup"}}, "items": {"0": {"sku": "obj"}}, "z": {"$oid": "65"}}"#,
            r#"{"a.b.c": true, "a": {"b": null}, "items": "no", "\u0061": {"b": {"c": "escaped"}}}"#,
            r#"[1, 2, {"a": 3}]"#,
            r#""text""#,
            r#"{}"#,
        ];
        let paths = [
            "a.b.c",
            "a.b",
            "a",
            "items.1.sku",
            "items.0",
            "z",
            "missing.path",
            "x",
        ];
        for text in texts {
            let whole: Value = serde_json::from_str(text).unwrap();
            for n in 1..=paths.len() {
                let selector = Selector::new(&paths[..n]);
                let sparse = selector.parse(text).unwrap();
                assert_eq!(sparse.is_object(), whole.is_object());
                for path in &paths[..n] {
                    assert_eq!(sparse.get(path), get(&whole, path), "{text} at {path}");
                }
            }
            let all = Selector::new([""]).parse(text).unwrap();
            assert_eq!(all.as_value(), Some(&whole));
            assert_eq!(all.get(""), Some(&whole));
        }
    }

    #[test]
    fn selector_keeps_only_what_paths_reach() {
        let selector = Selector::new(["p.q", "r"]);
        let text = r#"{"p": {"q": [1], "s": 2}, "r": {"t": 3}, "u": {"p": 4}, "p.q": 5}"#;
        let doc = selector.parse(text).unwrap();
        let node = |value: Value| Node::Value(value);
        let expected = Node::Object(vec![
            (
                "p".into(),
                Node::Object(vec![("q".into(), node(json!([1])))]),
            ),
            ("r".into(), node(json!({"t": 3}))),
            ("p.q".into(), node(json!(5))),
        ]);
        assert_eq!(doc.root, expected);
        assert_eq!(doc.as_value(), None);
    }

    #[test]
    fn selector_rejects_what_value_rejects() {
        let selector = Selector::new(["a"]);
        for text in [
            r#"{"a": 1, "b": 1e400}"#,
            r#"{"a": 1, "b": "\ud800"}"#,
            r#"{"a": 1, "b": [1,]}"#,
            r#"{"a": 1, "b": tru}"#,
            r#"{"a": 1} x"#,
            r#"{"a": 1, "b": "bad \x01"}"#,
            &format!("{}{}", "[".repeat(200), "]".repeat(200)),
            &format!(r#"{{"a": 1, "b": {}{}}}"#, "[".repeat(200), "]".repeat(200)),
            r#"{"a": 1"#,
            r#"{"a" 1}"#,
            r#"{1: 1}"#,
        ] {
            let whole = serde_json::from_str::<Value>(text).unwrap_err().to_string();
            let sparse = selector.parse(text).unwrap_err().to_string();
            assert_eq!(sparse, whole, "{text}");
        }
    }
}
