//! The JSON-lines change format: one change per line.
//!
//! ```json
//! {"collection": "users", "op": "upsert", "id": "u1", "document": {"name": "Ada"}}
//! {"collection": "users", "op": "partial", "id": "u1", "document": {"name": "Ada L."}, "current": {"id": "u1", "name": "Ada"}}
//! {"collection": "users", "op": "delete", "id": "u1"}
//! ```
//!
//! `op` is `upsert`, `delete` or `partial`; `source` (default `jsonl`) and
//! `current` (the entity's current row) are optional. `id` may be a string or
//! a number. Blank lines and lines starting with `#` are skipped.

use std::io::BufRead;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    CommitSignal, LoadEnd, SnapshotLoad, Source, SourceBatch, SourceEntities, SourceError,
};
use crate::model::{Change, ChangeOp};

/// The default source name of JSON-lines changes.
pub const SOURCE: &str = "jsonl";

/// A line that is not a valid change.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// Reading failed.
    #[error("cannot read line {line}: {source}")]
    Io {
        /// 1-based line number.
        line: usize,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The line is not a change.
    #[error("line {line}: {reason}")]
    Invalid {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default)]
    source: Option<String>,
    collection: String,
    op: Op,
    id: Id,
    #[serde(default)]
    document: Option<Value>,
    #[serde(default)]
    current: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Upsert,
    Delete,
    Partial,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Id {
    Text(String),
    Number(serde_json::Number),
}

/// Parse one line (1-based `line` for errors).
pub fn parse_line(text: &str, line: usize) -> Result<Change, LineError> {
    let invalid = |reason: String| LineError::Invalid { line, reason };
    let parsed: Line = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let op = match parsed.op {
        Op::Upsert => ChangeOp::Upsert,
        Op::Delete => ChangeOp::Delete,
        Op::Partial => ChangeOp::Partial,
    };
    if matches!(op, ChangeOp::Upsert | ChangeOp::Partial) && parsed.document.is_none() {
        return Err(invalid(
            "an upsert or partial change needs a document".into(),
        ));
    }
    let id = match parsed.id {
        Id::Text(s) => s,
        Id::Number(n) => n.to_string(),
    };
    Ok(Change {
        source: parsed.source.unwrap_or_else(|| SOURCE.to_owned()),
        collection: parsed.collection,
        op,
        id,
        document: parsed.document.map(|d| d.to_string()),
        current: parsed.current.map(|c| Value::Object(c).to_string()),
    })
}

/// The JSON-lines form of `change` (the inverse of [`parse_line`]); used to
/// keep rejected changes in a replayable form.
pub fn to_line(change: &Change) -> String {
    let parse = |text: &Option<String>| {
        text.as_deref().map(|t| {
            serde_json::from_str::<Value>(t).unwrap_or_else(|_| Value::String(t.to_owned()))
        })
    };
    let op = match change.op {
        ChangeOp::Upsert => "upsert",
        ChangeOp::Delete => "delete",
        ChangeOp::Partial => "partial",
    };
    let mut line = serde_json::json!({
        "source": change.source,
        "collection": change.collection,
        "op": op,
        "id": change.id,
    });
    if let Some(document) = parse(&change.document) {
        line["document"] = document;
    }
    if let Some(current) = parse(&change.current) {
        line["current"] = current;
    }
    line.to_string()
}

/// Read every change of `reader`; the first error (I/O or a bad line) is
/// returned per line, so a caller can report all bad lines and go on.
pub fn read(reader: impl BufRead) -> impl Iterator<Item = Result<Change, LineError>> {
    reader.lines().enumerate().filter_map(|(index, text)| {
        let line = index + 1;
        match text {
            Err(source) => Some(Err(LineError::Io { line, source })),
            Ok(text) if text.trim().is_empty() || text.trim_start().starts_with('#') => None,
            Ok(text) => Some(parse_line(&text, line)),
        }
    })
}

/// A JSON-lines file as a source. Its position is the number of the last
/// line whose change was committed, so a restart resumes after it. Bad lines
/// are logged and skipped (the position moves past them).
///
/// **Backfill.** A source made [`following`](Self::following) its entities
/// loads those that are `pending` (created while it runs, or a recreate
/// asked for): one load for them alone ([`SnapshotLoad::only`]) whose pages
/// replay the lines already committed, then the new lines as usual (their
/// rows of the loading entities staged), then the load's end (evicting what
/// the replay did not write). After the end of the file it waits for more
/// pending entities instead of finishing. Without it (the CLI's `ingest`,
/// one-off runs) the source reads to the end and finishes.
pub struct JsonlFileSource {
    name: String,
    path: std::path::PathBuf,
    batch_size: usize,
    entities: Option<Arc<dyn SourceEntities>>,
}

impl JsonlFileSource {
    /// Read `path` as source `name`, `batch_size` changes per batch.
    pub fn new(
        name: impl Into<String>,
        path: impl Into<std::path::PathBuf>,
        batch_size: usize,
    ) -> Self {
        JsonlFileSource {
            name: name.into(),
            path: path.into(),
            batch_size: batch_size.max(1),
            entities: None,
        }
    }

    /// Backfill the pending entities of `entities` and keep running after
    /// the end of the file (see the type's documentation).
    pub fn following(mut self, entities: Arc<dyn SourceEntities>) -> Self {
        self.entities = Some(entities);
        self
    }

    fn error(&self, reason: String) -> SourceError {
        SourceError::Read {
            source_name: self.name.clone(),
            reason,
        }
    }

    /// Send `batch`; `false` when cancelled.
    async fn send(
        &self,
        out: &mpsc::Sender<SourceBatch>,
        batch: SourceBatch,
        cancel: &CancellationToken,
    ) -> Result<bool, SourceError> {
        tokio::select! {
            _ = cancel.cancelled() => Ok(false),
            sent = out.send(batch) => sent
                .map(|()| true)
                .map_err(|_| SourceError::Closed(self.name.clone())),
        }
    }

    /// A reader of the changes of lines `after + 1 ..= until` (to the end
    /// when `until` is `None`).
    async fn lines(&self, after: usize, until: Option<usize>) -> Result<LineBatches, SourceError> {
        let file = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| self.error(format!("{}: {e}", self.path.display())))?;
        Ok(LineBatches {
            lines: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(file)),
            number: 0,
            after,
            until,
            ended: false,
        })
    }

    /// The next batch of `reader` (at most `batch_size` changes) and the
    /// number of its last line; `None` at its end. The last batch may be
    /// empty: it carries the number of the last (bad or blank) lines.
    async fn next_batch(
        &self,
        reader: &mut LineBatches,
    ) -> Result<Option<(Vec<Change>, usize)>, SourceError> {
        if reader.ended {
            return Ok(None);
        }
        let mut changes = Vec::new();
        while reader.until.is_none_or(|until| reader.number < until) {
            let line = reader
                .lines
                .next_line()
                .await
                .map_err(|e| self.error(e.to_string()))?;
            let Some(text) = line else { break };
            reader.number += 1;
            let number = reader.number;
            if number <= reader.after
                || text.trim().is_empty()
                || text.trim_start().starts_with('#')
            {
                continue;
            }
            match parse_line(&text, number) {
                Ok(mut change) => {
                    if change.source == SOURCE {
                        change.source = self.name.clone();
                    }
                    changes.push(change);
                }
                Err(error) => tracing::warn!(%error, "skipping bad line"),
            }
            if changes.len() >= self.batch_size {
                return Ok(Some((changes, number)));
            }
        }
        reader.ended = true;
        Ok((reader.number > reader.after).then_some((changes, reader.number)))
    }

    async fn follow(
        &self,
        position: Option<String>,
        out: mpsc::Sender<SourceBatch>,
        cancel: CancellationToken,
    ) -> Result<(), SourceError> {
        let mut committed: usize = position
            .as_deref()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let mut changed = self.entities.as_ref().map(|e| e.changed());
        loop {
            if let Some(changed) = changed.as_mut() {
                changed.borrow_and_update();
            }
            let pending = self
                .entities
                .as_ref()
                .map(|e| e.pending())
                .unwrap_or_default();
            let load = (!pending.is_empty())
                .then(|| SnapshotLoad::new(self.name.clone(), Vec::new()).only(pending));
            if let Some(load) = &load {
                tracing::info!(entities = ?load.entities(), replayed_lines = committed, "backfill begins: the committed lines are replayed for these entities");
                if !self.send(&out, load.begin_anew(), &cancel).await? {
                    return Ok(());
                }
                let mut replay = self.lines(0, Some(committed)).await?;
                loop {
                    let next = tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        next = self.next_batch(&mut replay) => next?,
                    };
                    let Some((changes, _)) = next else { break };
                    if !self.send(&out, load.page(changes), &cancel).await? {
                        return Ok(());
                    }
                }
            }
            let mut reader = self.lines(committed, None).await?;
            loop {
                let next = tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    next = self.next_batch(&mut reader) => next?,
                };
                let Some((changes, number)) = next else { break };
                let batch = SourceBatch {
                    source: self.name.clone(),
                    changes,
                    position: Some(number.to_string()),
                    ..SourceBatch::default()
                };
                if !self.send(&out, batch, &cancel).await? {
                    return Ok(());
                }
            }
            committed = reader.number.max(committed);
            if let Some(load) = &load {
                // Waits for the end's commit: until then the entities still
                // read as pending and would be loaded again.
                let (signal, mut done) = CommitSignal::new();
                let end = load.end(LoadEnd {
                    complete: true,
                    position: None,
                    committed: Some(signal),
                });
                if !self.send(&out, end, &cancel).await? {
                    return Ok(());
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    fired = done.wait_for(Option::is_some) => {
                        if fired.is_err() {
                            return Err(SourceError::Closed(self.name.clone()));
                        }
                    }
                }
                tracing::info!(entities = ?load.entities(), lines = committed, "backfill ends");
            }
            let Some(changed) = changed.as_mut() else {
                return Ok(());
            };
            if load.is_some() {
                // Pending entities that arrived during the load.
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                woke = changed.changed() => {
                    if woke.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Batches of changes read from a JSON-lines file
/// ([`JsonlFileSource::next_batch`]).
struct LineBatches {
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::fs::File>>,
    /// The number of the last line read.
    number: usize,
    after: usize,
    until: Option<usize>,
    ended: bool,
}

#[async_trait::async_trait]
impl Source for JsonlFileSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(
        &mut self,
        position: Option<String>,
        out: mpsc::Sender<SourceBatch>,
        cancel: CancellationToken,
    ) -> Result<(), SourceError> {
        let span =
            tracing::info_span!("jsonl_source", source = %self.name, path = %self.path.display());
        self.follow(position, out, cancel).instrument(span).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_op() {
        let input = "{\"collection\":\"users\",\"op\":\"upsert\",\"id\":\"u1\",\"document\":{\"a\":1}}\n\n# note\n{\"collection\":\"users\",\"op\":\"delete\",\"id\":7}\n";
        let changes: Vec<_> = read(input.as_bytes())
            .collect::<Result<_, _>>()
            .expect("valid");
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].op, ChangeOp::Upsert);
        assert_eq!(changes[0].document.as_deref(), Some("{\"a\":1}"));
        assert_eq!(changes[1].id, "7");
        assert_eq!(changes[1].source, SOURCE);
    }

    #[test]
    fn bad_lines_name_their_number() {
        let input = "{\"collection\":\"users\",\"op\":\"upsert\",\"id\":\"u1\"}\nnot json\n{\"collection\":\"u\",\"op\":\"merge\",\"id\":\"1\"}";
        let results: Vec<_> = read(input.as_bytes()).collect();
        let errors: Vec<String> = results
            .into_iter()
            .map(|r| r.unwrap_err().to_string())
            .collect();
        assert!(
            errors[0].starts_with("line 1:") && errors[0].contains("document"),
            "{}",
            errors[0]
        );
        assert!(errors[1].starts_with("line 2:"), "{}", errors[1]);
        assert!(
            errors[2].starts_with("line 3:") && errors[2].contains("merge"),
            "{}",
            errors[2]
        );
    }
}
