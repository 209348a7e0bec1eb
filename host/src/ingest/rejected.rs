//! Rejected records: how a change the pipeline could not shape is kept
//! ([`rejection`]), and how kept records are replayed ([`replay`]).

use std::collections::HashMap;

use super::pipeline::{Pipeline, PipelineError};
use crate::model::Change;
use crate::oplog::{EntityDef, NewRejected};
use crate::sources::jsonl;

/// The rejected record of `change`, shaped for `def` by `plugin` at
/// `version`, which failed with `error`. The change is kept in the
/// JSON-lines form, so it can be replayed.
pub(crate) fn rejection(
    def: &EntityDef,
    change: &Change,
    plugin: &str,
    version: &str,
    error: &str,
) -> NewRejected {
    NewRejected {
        source: change.source.clone(),
        collection: change.collection.clone(),
        entity: def.name.clone(),
        doc_id: change.id.clone(),
        change: jsonl::to_line(change),
        plugin: plugin.to_owned(),
        plugin_version: version.to_owned(),
        error: error.to_owned(),
    }
}

/// Re-run up to `limit` rejected records through their entities' current
/// plugins (see [`Pipeline::replay_rejected`]). Returns (replayed, failed
/// again).
pub(crate) async fn replay(
    pipeline: &Pipeline,
    limit: usize,
) -> Result<(usize, usize), PipelineError> {
    let store = pipeline.store();
    let (dead, records): (Vec<_>, Vec<_>) = store
        .rejected(0, limit)
        .await?
        .into_iter()
        .partition(|r| crate::cache::dead_letter::writer_of(r).is_some());
    for record in &dead {
        crate::cache::dead_letter::replay(store.as_ref(), record).await?;
    }
    if records.is_empty() {
        return Ok((dead.len(), 0));
    }
    let mut order: Vec<EntityDef> = Vec::new();
    let mut grouped: HashMap<String, Vec<Change>> = HashMap::new();
    let mut ids = Vec::with_capacity(records.len());
    let mut unparseable = 0;
    for record in &records {
        ids.push(record.id);
        let Some(def) = store.entity(&record.entity).await? else {
            continue;
        };
        match jsonl::parse_line(&record.change, 0) {
            Ok(change) => {
                grouped
                    .entry(def.name.clone())
                    .or_insert_with(|| {
                        order.push(def.clone());
                        Vec::new()
                    })
                    .push(change);
            }
            Err(error) => {
                unparseable += 1;
                tracing::warn!(id = record.id, %error, "rejected record cannot be replayed");
            }
        }
    }
    let groups = order
        .into_iter()
        .map(|def| {
            let changes = grouped.remove(&def.name).unwrap_or_default();
            (def, changes)
        })
        .collect();
    let report = pipeline.commit(groups, None, false).await?;
    store.remove_rejected(&ids).await?;
    let failed = report.rejected + unparseable;
    Ok((dead.len() + records.len() - failed, failed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ChangeOp;
    use crate::oplog::EntityStatus;

    #[test]
    fn a_rejection_keeps_the_change_replayable() {
        let def = EntityDef {
            name: "users".into(),
            source: "s".into(),
            collection: "c".into(),
            plugin: "p".into(),
            config: serde_json::json!({}),
            status: EntityStatus::Ready,
            created_at: 0,
            updated_at: 0,
        };
        let change = Change {
            source: "s".into(),
            collection: "c".into(),
            op: ChangeOp::Upsert,
            id: "1".into(),
            document: Some("{\"a\":1}".into()),
            current: None,
        };
        let record = rejection(&def, &change, "p", "1.0", "bad");
        assert_eq!(
            (record.entity.as_str(), record.doc_id.as_str()),
            ("users", "1")
        );
        assert_eq!(jsonl::parse_line(&record.change, 0).ok(), Some(change));
    }
}
