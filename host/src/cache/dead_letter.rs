//! Rows a cache writer could not apply: narrowed to the rows that cause a
//! failure ([`bisect`]), kept durably in the oplog store's rejected-records
//! table ([`DeadRow`]), and replayable ([`replay`]).
//!
//! A dead row is a rejected record whose `source` is
//! `cache-writer:{writer}` (see [`WRITER_SOURCE_PREFIX`]); its `change` is
//! the log entry as JSON (`{"oplog_id", "op", "data"}`). It is committed
//! before the writer's offset passes the row, so the offset never passes a
//! row that is neither applied nor dead-lettered. Replaying it appends the
//! row's latest state to the log again: every writer applies it anew
//! (applying is idempotent), and the record is removed.

use serde_json::json;

use crate::oplog::{AppendBatch, NewRejected, NewRow, Op, OplogStore, RejectedRecord, StoreError};

/// The `source` of a dead row starts with this, followed by the writer.
pub const WRITER_SOURCE_PREFIX: &str = "cache-writer:";

/// A row a writer could not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadRow {
    /// The writer (`redis`, `sqlite`).
    pub writer: &'static str,
    /// The entity.
    pub entity: String,
    /// The row id.
    pub doc_id: String,
    /// The log entry (0 when the row came from the latest rows).
    pub oplog_id: i64,
    /// Upsert or delete.
    pub op: Op,
    /// The row (`None` for deletes).
    pub data: Option<String>,
    /// The plugin that failed (`name`), if any.
    pub plugin: String,
    /// Its version.
    pub plugin_version: String,
    /// Why.
    pub error: String,
}

impl DeadRow {
    /// The rejected record that keeps it.
    pub fn into_rejected(self) -> NewRejected {
        let change = json!({
            "oplog_id": self.oplog_id,
            "op": match self.op { Op::Upsert => "upsert", Op::Delete => "delete" },
            "data": self.data,
        });
        NewRejected {
            source: format!("{WRITER_SOURCE_PREFIX}{}", self.writer),
            collection: self.entity.clone(),
            entity: self.entity,
            doc_id: self.doc_id,
            change: change.to_string(),
            plugin: self.plugin,
            plugin_version: self.plugin_version,
            error: self.error,
        }
    }
}

/// Commit `rows` as rejected records (nothing when empty).
pub async fn commit(store: &dyn OplogStore, rows: Vec<DeadRow>) -> Result<usize, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let receipt = store
        .append(AppendBatch {
            rejected: rows.into_iter().map(DeadRow::into_rejected).collect(),
            ..AppendBatch::default()
        })
        .await?;
    Ok(receipt.rejected)
}

/// The writer that dead-lettered `record`, when it is a dead row.
pub fn writer_of(record: &RejectedRecord) -> Option<&str> {
    record.source.strip_prefix(WRITER_SOURCE_PREFIX)
}

/// Replay a dead row: append the row's latest state (live or deleted) to
/// the log again so every writer applies it, then remove the record.
/// Returns whether a row was appended (a row gone from the latest rows
/// entirely has nothing to replay; its record is removed).
pub async fn replay(store: &dyn OplogStore, record: &RejectedRecord) -> Result<bool, StoreError> {
    let latest = store
        .latest(&record.entity, std::slice::from_ref(&record.doc_id))
        .await?;
    let appended = match latest.into_iter().next() {
        Some(row) => {
            store
                .append(AppendBatch {
                    rows: vec![NewRow {
                        entity: record.entity.clone(),
                        doc_id: row.doc_id,
                        op: row.op,
                        data: row.data,
                        plugin: record.plugin.clone(),
                        plugin_version: record.plugin_version.clone(),
                    }],
                    ..AppendBatch::default()
                })
                .await?;
            true
        }
        None => false,
    };
    store.remove_rejected(&[record.id]).await?;
    Ok(appended)
}

/// Run `call` over `items`. When a whole call fails (every result is a
/// batch failure, as when a plugin traps or misses its deadline), split the
/// items in halves and call again, down to single items: only the items
/// that cause the failure keep it, the others get their real results.
/// `calls` counts the calls made.
pub fn bisect<I, T, E>(
    items: &[I],
    call: &mut impl FnMut(&[I]) -> Vec<Result<T, E>>,
    batch_failed: &impl Fn(&E) -> bool,
    calls: &mut usize,
) -> Vec<Result<T, E>> {
    if items.is_empty() {
        return Vec::new();
    }
    *calls += 1;
    let results = call(items);
    bisect_after(items, results, call, batch_failed, calls)
}

/// [`bisect`] when the first call over all of `items` was made already and
/// answered `results` (e.g. a call that took the items by value, without a
/// copy): only a whole failure calls again, on halves.
pub fn bisect_after<I, T, E>(
    items: &[I],
    results: Vec<Result<T, E>>,
    call: &mut impl FnMut(&[I]) -> Vec<Result<T, E>>,
    batch_failed: &impl Fn(&E) -> bool,
    calls: &mut usize,
) -> Vec<Result<T, E>> {
    let whole_failed = results.len() == items.len()
        && results
            .iter()
            .all(|r| matches!(r, Err(error) if batch_failed(error)));
    if !whole_failed || items.len() == 1 {
        return results;
    }
    let (left, right) = items.split_at(items.len() / 2);
    let mut out = bisect(left, call, batch_failed, calls);
    out.extend(bisect(right, call, batch_failed, calls));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "plugin" that fails the whole batch when it holds a poison item.
    fn call(items: &[i32]) -> Vec<Result<i32, &'static str>> {
        if items.contains(&13) {
            items.iter().map(|_| Err("trap")).collect()
        } else {
            items
                .iter()
                .map(|i| if *i < 0 { Err("rejected") } else { Ok(i * 2) })
                .collect()
        }
    }

    #[test]
    fn narrows_a_batch_failure_to_the_poison_items() {
        let items: Vec<i32> = (0..40).map(|i| if i == 7 { 13 } else { 100 + i }).collect();
        let mut calls = 0;
        let results = bisect(&items, &mut call, &|e: &&str| *e == "trap", &mut calls);
        assert_eq!(results.len(), items.len());
        for (item, result) in items.iter().zip(&results) {
            if *item == 13 {
                assert_eq!(*result, Err("trap"));
            } else {
                assert_eq!(*result, Ok(item * 2));
            }
        }
        // ceil(log2(40)) = 6 levels, two calls each, plus the first (not 40).
        assert!(calls <= 1 + 2 * 6 + 2, "{calls} calls");
    }

    #[test]
    fn item_errors_are_not_bisected() {
        let items = [1, -1, 2];
        let mut calls = 0;
        let results = bisect(&items, &mut call, &|e: &&str| *e == "trap", &mut calls);
        assert_eq!(results, vec![Ok(2), Err("rejected"), Ok(4)]);
        assert_eq!(calls, 1);
    }

    #[test]
    fn two_poison_items_both_fail_alone() {
        let items = [13, 1, 2, 3, 13];
        let mut calls = 0;
        let results = bisect(&items, &mut call, &|e: &&str| *e == "trap", &mut calls);
        assert_eq!(results, vec![Err("trap"), Ok(2), Ok(4), Ok(6), Err("trap")]);
    }
}
