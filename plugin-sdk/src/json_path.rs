//! Read values out of JSON documents by dotted path.
//!
//! A path is a list of segments separated by `.`: object keys, or decimal
//! indexes into arrays (`items.0.sku`). A key that itself contains dots, as
//! MongoDB's `updatedFields` have (`{"address.city": "Oslo"}`), is found too:
//! at each level the shortest key that leads to a value wins (`a` before
//! `a.b` before `a.b.c`).

use serde_json::Value;

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
}
