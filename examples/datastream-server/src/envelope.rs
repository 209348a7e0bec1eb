//! Server → client envelopes and the entity families they belong to.

use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// A message to push to clients (`POST /_dev/push`,
/// [`DevServer::push`](crate::DevServer::push)). The server adds the
/// `stream_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// `rulesengine.Company`, `rulesengine.User`, `rulesengine.Flag`,
    /// `rulesengine.Flags`, … (`""` for a message to every connection).
    pub entity_type: String,
    /// `full`, `partial`, `delete`, `error` or `reload` (not checked: a dev
    /// server may send anything).
    pub message_type: String,
    /// The entity id (set it on every company and user message).
    #[serde(default)]
    pub entity_id: Option<String>,
    /// The payload.
    #[serde(default)]
    pub data: Value,
}

impl Envelope {
    /// An envelope of the given types.
    pub fn new(
        entity_type: impl Into<String>,
        message_type: impl Into<String>,
        entity_id: Option<String>,
        data: Value,
    ) -> Envelope {
        Envelope {
            entity_type: entity_type.into(),
            message_type: message_type.into(),
            entity_id,
            data,
        }
    }
}

/// What a client subscribes to with one `start`: companies, users or flags.
/// Every pushed message of a family goes to the connections that started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// `rulesengine.Company` and `rulesengine.Companies`.
    Companies,
    /// `rulesengine.User` and `rulesengine.Users`.
    Users,
    /// `rulesengine.Flag` and `rulesengine.Flags`.
    Flags,
}

impl Family {
    /// The family of an entity type; `None` for anything else.
    pub fn of(entity_type: &str) -> Option<Family> {
        match entity_type {
            COMPANY | COMPANIES => Some(Family::Companies),
            USER | USERS => Some(Family::Users),
            FLAG | FLAGS => Some(Family::Flags),
            _ => None,
        }
    }

    /// The subscription entity type (`rulesengine.Companies`, …).
    pub fn plural(self) -> &'static str {
        match self {
            Family::Companies => COMPANIES,
            Family::Users => USERS,
            Family::Flags => FLAGS,
        }
    }

    /// The single-entity type (`rulesengine.Company`, …).
    pub fn singular(self) -> &'static str {
        match self {
            Family::Companies => COMPANY,
            Family::Users => USER,
            Family::Flags => FLAG,
        }
    }

    /// A bit for sets of families.
    pub(crate) fn bit(self) -> u8 {
        match self {
            Family::Companies => 1,
            Family::Users => 2,
            Family::Flags => 4,
        }
    }
}

/// An envelope as written to the socket.
#[derive(Serialize)]
pub(crate) struct Outgoing<'a, D: Serialize> {
    pub entity_type: &'a str,
    pub message_type: &'a str,
    pub entity_id: Option<&'a str>,
    pub data: D,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<String>,
}

impl<D: Serialize> Outgoing<'_, D> {
    /// The envelope as JSON text.
    pub fn to_text(&self) -> String {
        // Serialising `Value`s, strings and derived structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A `reload` envelope.
pub(crate) fn reload_text() -> String {
    Outgoing {
        entity_type: "",
        message_type: "reload",
        entity_id: None,
        data: Value::Null,
        stream_id: None,
    }
    .to_text()
}

/// An `error` envelope answering a client request.
pub(crate) fn error_text(entity_type: &str, error: &str, keys: &Value) -> String {
    Outgoing {
        entity_type,
        message_type: "error",
        entity_id: None,
        data: serde_json::json!({"error": error, "keys": keys, "entity_type": entity_type}),
        stream_id: None,
    }
    .to_text()
}
