//! Change stream events → host [`Change`]s.
//!
//! | event | change |
//! |---|---|
//! | `insert`, `replace` | `Upsert` of `fullDocument` |
//! | `delete` | `Delete` |
//! | `update`, `full_document = "default"` | `Partial`: `updatedFields` (dotted paths as keys, e.g. `{"address.city": "Oslo"}`), each of `removedFields` set to `null` |
//! | `update`, `"updateLookup"` | `Upsert` of the looked-up `fullDocument`; when the lookup is `null` (the document was deleted, or changed again and deleted, before the event was read) the `Partial` above: the delete event that follows removes the row anyway |
//! | `drop`, `rename` of a routed collection | a re-snapshot of the collection (both names of a rename): a dropped collection scans as empty, so its entities' rows are evicted |
//! | `dropDatabase`, `invalidate` | a re-snapshot of every routed collection (after `invalidate` the stream is reopened with `startAfter`) |
//! | `drop`, `rename` of a collection no entity routes | skipped (logged) |
//! | other (future event types, DDL events) | skipped (logged) |
//!
//! `truncatedArrays` (an array shortened by an update, e.g. `$pop` or
//! `$push` with `$slice`) cannot be expressed as changed fields without the
//! array itself: such an update is logged as a warning; with
//! `updateLookup` the whole document is upserted and nothing is lost.

use mongodb::bson::Document;
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType};
use serde_json::{Map, Value};

use super::bson::{document_text, id_string, to_json};
use super::config::FullDocument;
use crate::model::{Change, ChangeOp};

/// What one event means for the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Converted {
    /// A change for the pipeline.
    Change(Change),
    /// Nothing to apply (the token still moves past it).
    Skip(String),
    /// The source cannot go on: the entities fed by it would go stale.
    Stop(String),
    /// The collections must be snapshotted again.
    Resnapshot {
        /// The affected collections; empty: every routed collection.
        collections: Vec<String>,
        /// What happened, for the logs.
        reason: String,
        /// The stream was invalidated (it must be reopened after the
        /// event with `startAfter`).
        invalidate: bool,
    },
}

/// Convert one event of source `source`. `routed(collection)` says whether
/// an entity is fed by that collection (drops and renames of other
/// collections are skipped).
pub fn convert(
    source: &str,
    event: ChangeStreamEvent<Document>,
    mode: FullDocument,
    routed: &dyn Fn(&str) -> bool,
) -> Converted {
    let collection = event
        .ns
        .as_ref()
        .and_then(|ns| ns.coll.clone())
        .unwrap_or_default();
    let database = event
        .ns
        .as_ref()
        .map(|ns| ns.db.clone())
        .unwrap_or_default();
    let op = event.operation_type.clone();
    let change = |op: ChangeOp, id: String, document: Option<String>| {
        Converted::Change(Change {
            source: source.to_owned(),
            collection: collection.clone(),
            op,
            id,
            document,
            current: None,
        })
    };
    // The stop message when the event has no `documentKey._id`.
    let id = || -> Result<String, String> {
        match event.document_key.as_ref().and_then(|key| key.get("_id")) {
            Some(id) => Ok(id_string(id)),
            None => Err(format!(
                "{} event on {database}.{collection} has no documentKey._id",
                name(&op)
            )),
        }
    };
    match &event.operation_type {
        OperationType::Insert | OperationType::Replace => {
            let id = match id() {
                Ok(id) => id,
                Err(why) => return Converted::Stop(why),
            };
            match &event.full_document {
                Some(doc) => change(ChangeOp::Upsert, id, Some(document_text(doc))),
                None => Converted::Stop(format!(
                    "{} event on {database}.{collection} for id {id} has no fullDocument",
                    name(&op)
                )),
            }
        }
        OperationType::Delete => match id() {
            Ok(id) => change(ChangeOp::Delete, id, None),
            Err(why) => Converted::Stop(why),
        },
        OperationType::Update => {
            let id = match id() {
                Ok(id) => id,
                Err(why) => return Converted::Stop(why),
            };
            if mode == FullDocument::UpdateLookup
                && let Some(doc) = &event.full_document
            {
                return change(ChangeOp::Upsert, id, Some(document_text(doc)));
            }
            let Some(update) = &event.update_description else {
                return Converted::Stop(format!(
                    "update event on {database}.{collection} for id {id} has no updateDescription"
                ));
            };
            if let Some(truncated) = update.truncated_arrays.as_ref().filter(|t| !t.is_empty()) {
                let fields: Vec<&str> = truncated.iter().map(|t| t.field.as_str()).collect();
                tracing::warn!(source, collection = %collection, id = %id, ?fields,
                    "update truncated arrays, which a partial change cannot express; use full_document = \"updateLookup\"");
            }
            let document = partial_document(&update.updated_fields, &update.removed_fields);
            change(ChangeOp::Partial, id, Some(document.to_string()))
        }
        OperationType::Drop => {
            if routed(&collection) {
                Converted::Resnapshot {
                    collections: vec![collection.clone()],
                    reason: format!("collection {database}.{collection} was dropped (drop event)"),
                    invalidate: false,
                }
            } else {
                Converted::Skip(format!(
                    "drop of {database}.{collection}, which no entity routes"
                ))
            }
        }
        OperationType::Rename => {
            let to = event
                .to
                .as_ref()
                .and_then(|to| to.coll.clone())
                .unwrap_or_default();
            if routed(&collection) || routed(&to) {
                Converted::Resnapshot {
                    collections: [collection.clone(), to.clone()]
                        .into_iter()
                        .filter(|c| !c.is_empty() && routed(c))
                        .collect(),
                    reason: format!(
                        "collection {database}.{collection} was renamed to {to} (rename event)"
                    ),
                    invalidate: false,
                }
            } else {
                Converted::Skip(format!(
                    "rename of {database}.{collection} to {to}, which no entity routes"
                ))
            }
        }
        OperationType::DropDatabase => Converted::Resnapshot {
            collections: Vec::new(),
            reason: format!("database {database} was dropped (dropDatabase event)"),
            invalidate: false,
        },
        OperationType::Invalidate => Converted::Resnapshot {
            collections: Vec::new(),
            reason: format!(
                "the change stream was invalidated (invalidate event{})",
                if collection.is_empty() {
                    String::new()
                } else {
                    format!(" on {database}.{collection}")
                }
            ),
            invalidate: true,
        },
        other => Converted::Skip(format!("{} event on {database}.{collection}", name(other))),
    }
}

/// The event type's name as MongoDB spells it.
fn name(op: &OperationType) -> String {
    match op {
        OperationType::Insert => "insert".into(),
        OperationType::Update => "update".into(),
        OperationType::Replace => "replace".into(),
        OperationType::Delete => "delete".into(),
        OperationType::Drop => "drop".into(),
        OperationType::Rename => "rename".into(),
        OperationType::DropDatabase => "dropDatabase".into(),
        OperationType::Invalidate => "invalidate".into(),
        OperationType::Other(other) => other.clone(),
        _ => format!("{op:?}"),
    }
}

/// The partial document of an update: `updated` with its dotted keys as
/// they are, and each of `removed` set to `null`.
pub fn partial_document(updated: &Document, removed: &[String]) -> Value {
    let mut map = Map::with_capacity(updated.len() + removed.len());
    for (key, value) in updated {
        map.insert(key.clone(), to_json(value));
    }
    for key in removed {
        map.insert(key.clone(), Value::Null);
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use mongodb::bson::oid::ObjectId;
    use mongodb::bson::{self, Bson, doc};
    use serde_json::json;

    /// An event read from BSON bytes, as the driver reads them (the
    /// operation type of an unknown event is borrowed from the bytes).
    fn event(doc: Document) -> ChangeStreamEvent<Document> {
        bson::from_slice(&bson::to_vec(&doc).unwrap()).unwrap()
    }

    fn routed(collection: &str) -> bool {
        collection == "users"
    }

    fn base(op: &str, coll: &str) -> Document {
        doc! {
            "_id": {"_data": "82"},
            "operationType": op,
            "ns": {"db": "app", "coll": coll},
            "documentKey": {"_id": ObjectId::parse_str("65f0a1b2c3d4e5f601234567").unwrap()},
        }
    }

    fn expect_change(converted: Converted) -> Change {
        match converted {
            Converted::Change(change) => change,
            other => panic!("expected a change, got {other:?}"),
        }
    }

    #[test]
    fn inserts_and_replaces_are_upserts_of_the_full_document() {
        for op in ["insert", "replace"] {
            let mut doc = base(op, "users");
            doc.insert("fullDocument", doc! {"_id": 5_i32, "name": "Ada"});
            let change = expect_change(convert("m", event(doc), FullDocument::Default, &routed));
            assert_eq!(change.op, ChangeOp::Upsert);
            assert_eq!(change.source, "m");
            assert_eq!(change.collection, "users");
            assert_eq!(change.id, "65f0a1b2c3d4e5f601234567");
            assert_eq!(
                serde_json::from_str::<Value>(change.document.as_deref().unwrap()).unwrap(),
                json!({"_id": 5, "name": "Ada"})
            );
        }
    }

    #[test]
    fn deletes_are_deletes() {
        let change = expect_change(convert(
            "m",
            event(base("delete", "users")),
            FullDocument::Default,
            &routed,
        ));
        assert_eq!(change.op, ChangeOp::Delete);
        assert_eq!(change.document, None);
    }

    #[test]
    fn updates_are_partials_with_removed_fields_null() {
        let mut doc = base("update", "users");
        doc.insert(
            "updateDescription",
            doc! {
                "updatedFields": {"address.city": "Oslo", "n": 3_i64},
                "removedFields": ["nick", "tags.2"],
                "truncatedArrays": [],
            },
        );
        for mode in [FullDocument::Default, FullDocument::UpdateLookup] {
            // With updateLookup and no document (deleted since): a partial too.
            let change = expect_change(convert("m", event(doc.clone()), mode, &routed));
            assert_eq!(change.op, ChangeOp::Partial);
            assert_eq!(
                serde_json::from_str::<Value>(change.document.as_deref().unwrap()).unwrap(),
                json!({"address.city": "Oslo", "n": 3, "nick": null, "tags.2": null})
            );
        }
        let mut looked_up = doc.clone();
        looked_up.insert("fullDocument", doc! {"_id": 1_i32, "n": 3_i32});
        let change = expect_change(convert(
            "m",
            event(looked_up.clone()),
            FullDocument::UpdateLookup,
            &routed,
        ));
        assert_eq!(change.op, ChangeOp::Upsert);
        assert_eq!(change.document.as_deref(), Some(r#"{"_id":1,"n":3}"#));
        // The driver reads `fullDocument: null` as absent.
        let mut null_lookup = doc;
        null_lookup.insert("fullDocument", Bson::Null);
        let change = expect_change(convert(
            "m",
            event(null_lookup),
            FullDocument::UpdateLookup,
            &routed,
        ));
        assert_eq!(change.op, ChangeOp::Partial);
        // In default mode a stray fullDocument is ignored: updates stay partial.
        let change = expect_change(convert(
            "m",
            event(looked_up),
            FullDocument::Default,
            &routed,
        ));
        assert_eq!(change.op, ChangeOp::Partial);
    }

    #[test]
    fn drops_and_renames_of_routed_collections_resnapshot() {
        let resnapshot = convert(
            "m",
            event(base("drop", "users")),
            FullDocument::Default,
            &routed,
        );
        assert!(
            matches!(&resnapshot, Converted::Resnapshot { collections, reason, invalidate: false }
                if collections == &["users".to_string()] && reason.contains("app.users") && reason.contains("drop event")),
            "{resnapshot:?}"
        );
        let skip = convert(
            "m",
            event(base("drop", "logs")),
            FullDocument::Default,
            &routed,
        );
        assert!(matches!(skip, Converted::Skip(_)), "{skip:?}");

        let mut rename = base("rename", "tmp");
        rename.insert("to", doc! {"db": "app", "coll": "users"});
        let resnapshot = convert("m", event(rename), FullDocument::Default, &routed);
        assert!(
            matches!(&resnapshot, Converted::Resnapshot { collections, reason, .. }
                if collections == &["users".to_string()] && reason.contains("app.tmp") && reason.contains("rename event")),
            "{resnapshot:?}"
        );

        let drop_db =
            doc! {"_id": {"_data": "82"}, "operationType": "dropDatabase", "ns": {"db": "app"}};
        let resnapshot = convert("m", event(drop_db), FullDocument::Default, &routed);
        assert!(
            matches!(&resnapshot, Converted::Resnapshot { collections, reason, invalidate: false }
                if collections.is_empty() && reason.contains("database app")),
            "{resnapshot:?}"
        );
        let invalidate = doc! {"_id": {"_data": "82"}, "operationType": "invalidate"};
        let resnapshot = convert("m", event(invalidate), FullDocument::Default, &routed);
        assert!(
            matches!(&resnapshot, Converted::Resnapshot { collections, invalidate: true, .. } if collections.is_empty()),
            "{resnapshot:?}"
        );
    }

    #[test]
    fn unknown_events_are_skipped() {
        let skip = convert(
            "m",
            event(base("createIndexes", "users")),
            FullDocument::Default,
            &routed,
        );
        assert!(
            matches!(&skip, Converted::Skip(m) if m.contains("createIndexes")),
            "{skip:?}"
        );
    }

    #[test]
    fn an_event_without_a_document_key_stops() {
        let mut doc = base("delete", "users");
        doc.remove("documentKey");
        let stop = convert("m", event(doc), FullDocument::Default, &routed);
        assert!(
            matches!(&stop, Converted::Stop(m) if m.contains("documentKey")),
            "{stop:?}"
        );
    }
}
