//! The source position of a MongoDB source: the stream's resume token and
//! the state of a snapshot scan, as one JSON document.
//!
//! ```json
//! {"token": {"_data": "8265…"},
//!  "watched": ["users", "orders"],
//!  "scan": {"collections": ["users", "orders"], "current": "orders",
//!           "after": {"$oid": "65f0…"}}}
//! ```
//!
//! - `token`: the resume token ([`super::bson::token_to_text`], as JSON).
//! - `watched`: the collections the stream was filtered to (the configured
//!   `collections`), absent when it read every collection. A collection
//!   configured later was never streamed: it is snapshotted on start.
//! - `scan`: present while a snapshot scan is under way: the collections
//!   it loads, the one being read and the last `_id` committed in it
//!   (canonical Extended JSON, exact), absent before its first chunk.
//!   Collections before `current` are done, those after it not begun. A
//!   backfill's scan names its `entities` (absent: every entity the
//!   collections feed).
//!
//! Slice 1 saved the bare token (`{"_data": "…"}`, no `token` key). Such a
//! position still resumes the stream; that slice never snapshotted, so the
//! routed collections are snapshotted once.

use mongodb::bson::Bson;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The progress of a snapshot scan (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanState {
    /// The collections the load reads, in order.
    pub collections: Vec<String>,
    /// The collection being read (a member of `collections`).
    pub current: String,
    /// The last `_id` committed in `current` (canonical Extended JSON);
    /// `None` before its first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    /// The entities the load is for, when it is for some alone (a
    /// backfill); absent: every entity the collections feed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entities: Option<Vec<String>>,
}

impl ScanState {
    /// A scan of `collections` from their start; `None` when there is
    /// nothing to scan.
    pub fn start(collections: Vec<String>) -> Option<ScanState> {
        let current = collections.first()?.clone();
        Some(ScanState {
            collections,
            current,
            after: None,
            entities: None,
        })
    }

    /// `after` as BSON (`None` when absent or unreadable, i.e. from the
    /// start of `current`).
    pub fn after_bson(&self) -> Option<Bson> {
        self.after.clone().and_then(|v| Bson::try_from(v).ok())
    }

    /// The collections still to read, `current` first.
    pub fn remaining(&self) -> &[String] {
        let at = self
            .collections
            .iter()
            .position(|c| *c == self.current)
            .unwrap_or(0);
        &self.collections[at..]
    }
}

/// A source position (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// The resume token as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Value>,
    /// The collections the stream was filtered to; `None`: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watched: Option<Vec<String>>,
    /// The scan under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<ScanState>,
    /// Read from a slice-1 position (a bare token): nothing was ever
    /// snapshotted. Never written.
    #[serde(skip)]
    pub legacy: bool,
}

/// A saved position that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("the saved position is not a MongoDB source position: {0}")]
pub struct PositionError(String);

impl Position {
    /// Read a saved position (either form).
    pub fn parse(text: &str) -> Result<Position, PositionError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| PositionError(format!("{text:?} is not JSON: {e}")))?;
        if value.get("token").is_some() || value.get("scan").is_some() {
            serde_json::from_value(value).map_err(|e| PositionError(e.to_string()))
        } else if value.is_object() {
            Ok(Position {
                token: Some(value),
                legacy: true,
                ..Position::default()
            })
        } else {
            Err(PositionError(format!("{text:?} is not an object")))
        }
    }

    /// The position as text.
    pub fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The token as the text [`super::bson::token_from_text`] reads.
    pub fn token_text(&self) -> Option<String> {
        self.token.as_ref().map(Value::to_string)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn a_bare_token_is_a_legacy_position() {
        let p = Position::parse(r#"{"_data":"8265"}"#).unwrap();
        assert!(p.legacy && p.scan.is_none() && p.watched.is_none());
        assert_eq!(p.token_text().as_deref(), Some(r#"{"_data":"8265"}"#));
        assert!(Position::parse("7").is_err() && Position::parse("x").is_err());
    }

    #[test]
    fn positions_round_trip() {
        let p = Position {
            token: Some(json!({"_data": "82"})),
            watched: Some(vec!["a".into()]),
            scan: Some(ScanState {
                collections: vec!["a".into(), "b".into()],
                current: "b".into(),
                after: Some(json!({"$oid": "65f0a1b2c3d4e5f601234567"})),
                entities: Some(vec!["e".into()]),
            }),
            legacy: false,
        };
        let back = Position::parse(&p.text()).unwrap();
        assert_eq!(back, p);
        let scan = back.scan.unwrap();
        assert_eq!(scan.remaining(), ["b".to_string()]);
        assert!(matches!(scan.after_bson(), Some(Bson::ObjectId(_))));
        let fresh = ScanState::start(vec!["x".into()]).unwrap();
        assert_eq!((fresh.current.as_str(), fresh.after), ("x", None));
        assert!(ScanState::start(Vec::new()).is_none());
    }
}
