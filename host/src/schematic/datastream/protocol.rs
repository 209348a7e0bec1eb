//! The datastream wire protocol (spec §2): client requests, server
//! envelopes, stream ids, and the changes envelopes become.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::model::{Change, ChangeOp};

/// Bulk flags: an array of flags.
pub const FLAGS: &str = "rulesengine.Flags";
/// One flag.
pub const FLAG: &str = "rulesengine.Flag";
/// One company.
pub const COMPANY: &str = "rulesengine.Company";
/// One user.
pub const USER: &str = "rulesengine.User";
/// Subscription (and confirmation) of companies.
pub const COMPANIES: &str = "rulesengine.Companies";
/// Subscription (and confirmation) of users.
pub const USERS: &str = "rulesengine.Users";
/// Companies of the REST initial load.
pub const REST_COMPANY: &str = "rest.Company";
/// Users of the REST initial load.
pub const REST_USER: &str = "rest.User";

/// What a client sends: `{"data": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientMessage<'a> {
    /// The request.
    pub data: ClientRequest<'a>,
}

/// A subscription request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientRequest<'a> {
    /// `start` or `stop`.
    pub action: &'a str,
    /// `rulesengine.Companies`, `rulesengine.Users` or `rulesengine.Flags`.
    pub entity_type: &'a str,
    /// The last applied stream id; the server replays what came after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_from: Option<&'a str>,
}

impl ClientMessage<'_> {
    /// The start requests a replicator sends on every connect, in order.
    pub fn starts(replay_from: Option<&str>) -> Vec<String> {
        [COMPANIES, USERS, FLAGS]
            .into_iter()
            .map(|entity_type| {
                serde_json::json!({ "data": ClientRequest { action: "start", entity_type, replay_from } })
                    .to_string()
            })
            .collect()
    }
}

/// What the server sends. `data` stays raw JSON text: it is handed to the
/// plugin as it came.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    /// The entity type (`rulesengine.Company`, ...).
    #[serde(default, borrow)]
    pub entity_type: Option<&'a str>,
    /// `full`, `partial`, `delete`, `error` or `reload`.
    #[serde(default, borrow)]
    pub message_type: Option<&'a str>,
    /// The entity id (companies and users).
    #[serde(default)]
    pub entity_id: Option<serde_json::Value>,
    /// The payload.
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
    /// `"<ms>-<seq>"`.
    #[serde(default, borrow)]
    pub stream_id: Option<&'a str>,
}

/// What one server message means to the source.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A change for the pipeline.
    Change {
        /// The change.
        change: Change,
        /// Its stream id, when the server gave one.
        stream_id: Option<String>,
    },
    /// A subscription confirmation (`rulesengine.Companies` / `Users`).
    Confirmation {
        /// The entity type.
        entity_type: String,
    },
    /// The server reports an error about a request.
    Error {
        /// The message data, as JSON text.
        detail: String,
    },
    /// Drop the replay cursor and load everything again.
    Reload,
}

/// Why a server message cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Not JSON, or not an envelope.
    #[error("malformed datastream message: {0}")]
    Malformed(String),
    /// A message type this client does not know.
    #[error("unknown message type {message_type:?} for {entity_type:?}")]
    UnknownType {
        /// The entity type.
        entity_type: String,
        /// The message type.
        message_type: String,
    },
}

/// Decode one server message into a change (for `source`) or a control
/// message.
pub fn decode(text: &str, source: &str) -> Result<Message, ProtocolError> {
    let envelope: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let entity_type = envelope.entity_type.unwrap_or_default();
    let message_type = envelope.message_type.unwrap_or_default();
    match message_type {
        "reload" => return Ok(Message::Reload),
        "error" => {
            return Ok(Message::Error {
                detail: envelope
                    .data
                    .map(|d| d.get().to_owned())
                    .unwrap_or_default(),
            });
        }
        _ => {}
    }
    if entity_type == COMPANIES || entity_type == USERS {
        return Ok(Message::Confirmation {
            entity_type: entity_type.to_owned(),
        });
    }
    let op = match message_type {
        "full" => ChangeOp::Upsert,
        "partial" => ChangeOp::Partial,
        "delete" => ChangeOp::Delete,
        _ => {
            return Err(ProtocolError::UnknownType {
                entity_type: entity_type.to_owned(),
                message_type: message_type.to_owned(),
            });
        }
    };
    if entity_type.is_empty() {
        return Err(ProtocolError::Malformed(
            "a change without entity_type".into(),
        ));
    }
    let id = match envelope.entity_id {
        Some(serde_json::Value::String(id)) => id,
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let document = envelope
        .data
        .map(|d| d.get())
        .filter(|d| *d != "null")
        .map(str::to_owned);
    Ok(Message::Change {
        change: Change {
            source: source.to_owned(),
            collection: entity_type.to_owned(),
            op,
            id,
            document,
            current: None,
        },
        stream_id: envelope.stream_id.map(str::to_owned),
    })
}

/// A parsed stream id `"<ms>-<seq>"`, ordered numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId {
    /// Milliseconds.
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl StreamId {
    /// Parse `"<ms>-<seq>"` (or a bare `"<ms>"`).
    pub fn parse(text: &str) -> Option<StreamId> {
        let (ms, seq) = match text.split_once('-') {
            Some((ms, seq)) => (ms, seq),
            None => (text, "0"),
        };
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// Whether stream id `candidate` comes after `current` (numerically; an
/// unparseable id never replaces a parseable one).
pub fn is_newer(candidate: &str, current: Option<&str>) -> bool {
    let Some(current) = current else {
        return true;
    };
    match (StreamId::parse(candidate), StreamId::parse(current)) {
        (Some(a), Some(b)) => a.cmp(&b) == Ordering::Greater,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_companies_users_flags_with_replay() {
        let starts = ClientMessage::starts(Some("17-2"));
        let parsed: Vec<serde_json::Value> = starts
            .iter()
            .map(|s| serde_json::from_str(s).unwrap())
            .collect();
        assert_eq!(
            parsed[0],
            serde_json::json!({"data": {"action": "start", "entity_type": COMPANIES, "replay_from": "17-2"}})
        );
        assert_eq!(parsed[1]["data"]["entity_type"], USERS);
        assert_eq!(parsed[2]["data"]["entity_type"], FLAGS);
        let fresh: serde_json::Value =
            serde_json::from_str(&ClientMessage::starts(None)[0]).unwrap();
        assert!(fresh["data"].get("replay_from").is_none());
    }

    #[test]
    fn decodes_changes_keeping_data_raw() {
        let text = r#"{"entity_type":"rulesengine.Company","message_type":"partial","entity_id":"comp_1","data":{"id":"comp_1", "x" : 1},"stream_id":"5-1"}"#;
        let Message::Change { change, stream_id } = decode(text, "schematic").unwrap() else {
            panic!("not a change")
        };
        assert_eq!(change.collection, COMPANY);
        assert_eq!(change.op, ChangeOp::Partial);
        assert_eq!(change.id, "comp_1");
        assert_eq!(
            change.document.as_deref(),
            Some(r#"{"id":"comp_1", "x" : 1}"#)
        );
        assert_eq!(change.source, "schematic");
        assert_eq!(stream_id.as_deref(), Some("5-1"));

        let flags = r#"{"entity_type":"rulesengine.Flags","message_type":"full","entity_id":null,"data":[]}"#;
        let Message::Change { change, stream_id } = decode(flags, "s").unwrap() else {
            panic!("not a change")
        };
        assert_eq!((change.id.as_str(), change.op), ("", ChangeOp::Upsert));
        assert_eq!(change.document.as_deref(), Some("[]"));
        assert_eq!(stream_id, None);

        let delete = r#"{"entity_type":"rulesengine.User","message_type":"delete","entity_id":"u","data":null}"#;
        let Message::Change { change, .. } = decode(delete, "s").unwrap() else {
            panic!("not a change")
        };
        assert_eq!((change.op, change.document), (ChangeOp::Delete, None));
    }

    #[test]
    fn decodes_control_messages() {
        assert_eq!(
            decode(r#"{"message_type":"reload"}"#, "s").unwrap(),
            Message::Reload
        );
        assert_eq!(
            decode(
                r#"{"entity_type":"rulesengine.Companies","message_type":"full","data":{"ok":true}}"#,
                "s"
            )
            .unwrap(),
            Message::Confirmation {
                entity_type: COMPANIES.into()
            }
        );
        assert_eq!(
            decode(
                r#"{"entity_type":"rulesengine.Company","message_type":"error","data":{"error":"nope"}}"#,
                "s"
            )
            .unwrap(),
            Message::Error {
                detail: r#"{"error":"nope"}"#.into()
            }
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(matches!(
            decode("not json", "s"),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            decode(
                r#"{"entity_type":"rulesengine.Flag","message_type":"bogus"}"#,
                "s"
            ),
            Err(ProtocolError::UnknownType { .. })
        ));
        assert!(matches!(
            decode(r#"{"message_type":"full","data":{}}"#, "s"),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(decode(r#"[1,2]"#, "s").is_err());
    }

    #[test]
    fn stream_ids_compare_numerically() {
        assert!(is_newer("10-0", Some("9-5")));
        assert!(is_newer("10-10", Some("10-9")));
        assert!(!is_newer("10-9", Some("10-10")));
        assert!(!is_newer("10-9", Some("10-9")));
        assert!(is_newer("1-0", None));
        assert!(!is_newer("garbage", Some("1-0")));
        assert_eq!(StreamId::parse("7"), Some(StreamId { ms: 7, seq: 0 }));
        assert_eq!(StreamId::parse("x-1"), None);
    }
}
