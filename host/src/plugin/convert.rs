//! The plugin boundary: conversions between the host model
//! ([`crate::model`]) and the records generated from `wit/plugin.wit`.
//!
//! This is the only place that maps one onto the other. Owned values move
//! (no copy of documents or rows); borrowed ones are cloned. The records are
//! field-for-field equal, so a conversion never loses or changes anything.

use super::bindings as wit;
use crate::model::{Change, ChangeOp, Row, RowOp, Shaped};

impl From<ChangeOp> for wit::ChangeOp {
    fn from(op: ChangeOp) -> Self {
        match op {
            ChangeOp::Upsert => wit::ChangeOp::Upsert,
            ChangeOp::Delete => wit::ChangeOp::Delete,
            ChangeOp::Partial => wit::ChangeOp::Partial,
        }
    }
}

impl From<wit::ChangeOp> for ChangeOp {
    fn from(op: wit::ChangeOp) -> Self {
        match op {
            wit::ChangeOp::Upsert => ChangeOp::Upsert,
            wit::ChangeOp::Delete => ChangeOp::Delete,
            wit::ChangeOp::Partial => ChangeOp::Partial,
        }
    }
}

impl From<Change> for wit::Change {
    fn from(change: Change) -> Self {
        wit::Change {
            source: change.source,
            collection: change.collection,
            op: change.op.into(),
            id: change.id,
            document: change.document,
            current: change.current,
        }
    }
}

impl From<wit::Change> for Change {
    fn from(change: wit::Change) -> Self {
        Change {
            source: change.source,
            collection: change.collection,
            op: change.op.into(),
            id: change.id,
            document: change.document,
            current: change.current,
        }
    }
}

impl From<RowOp> for wit::RowOp {
    fn from(op: RowOp) -> Self {
        match op {
            RowOp::Upsert => wit::RowOp::Upsert,
            RowOp::Delete => wit::RowOp::Delete,
        }
    }
}

impl From<wit::RowOp> for RowOp {
    fn from(op: wit::RowOp) -> Self {
        match op {
            wit::RowOp::Upsert => RowOp::Upsert,
            wit::RowOp::Delete => RowOp::Delete,
        }
    }
}

impl From<Row> for wit::Row {
    fn from(row: Row) -> Self {
        wit::Row {
            entity: row.entity,
            id: row.id,
            op: row.op.into(),
            data: row.data,
        }
    }
}

impl From<wit::Row> for Row {
    fn from(row: wit::Row) -> Self {
        Row {
            entity: row.entity,
            id: row.id,
            op: row.op.into(),
            data: row.data,
        }
    }
}

impl From<wit::Shaped> for Shaped {
    fn from(shaped: wit::Shaped) -> Self {
        Shaped {
            rows: shaped.rows.into_iter().map(Row::from).collect(),
            complete_set: shaped.complete_set,
        }
    }
}

/// Borrowed changes as generated records (cloned).
pub(super) fn changes_to_wit(changes: &[Change]) -> Vec<wit::Change> {
    changes.iter().cloned().map(wit::Change::from).collect()
}

/// Borrowed rows as generated records (cloned).
pub(super) fn rows_to_wit(rows: &[Row]) -> Vec<wit::Row> {
    rows.iter().cloned().map(wit::Row::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_round_trips() {
        for op in [ChangeOp::Upsert, ChangeOp::Delete, ChangeOp::Partial] {
            let change = Change {
                source: "s".into(),
                collection: "c".into(),
                op,
                id: "1".into(),
                document: Some("{\"a\":1}".into()),
                current: None,
            };
            assert_eq!(Change::from(wit::Change::from(change.clone())), change);
        }
    }

    #[test]
    fn a_row_round_trips() {
        for op in [RowOp::Upsert, RowOp::Delete] {
            let row = Row {
                entity: "e".into(),
                id: "1".into(),
                op,
                data: "{}".into(),
            };
            assert_eq!(Row::from(wit::Row::from(row.clone())), row);
        }
    }

    #[test]
    fn shaped_keeps_rows_and_complete_set() {
        let shaped = wit::Shaped {
            rows: vec![wit::Row {
                entity: "e".into(),
                id: "1".into(),
                op: wit::RowOp::Upsert,
                data: "{}".into(),
            }],
            complete_set: Some("e".into()),
        };
        let host = Shaped::from(shaped);
        assert_eq!(host.rows.len(), 1);
        assert_eq!(host.rows[0].op, RowOp::Upsert);
        assert_eq!(host.complete_set.as_deref(), Some("e"));
    }
}
