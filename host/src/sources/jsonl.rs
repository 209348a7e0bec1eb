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

use serde::Deserialize;
use serde_json::Value;

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
pub struct JsonlFileSource {
    name: String,
    path: std::path::PathBuf,
    batch_size: usize,
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
        }
    }
}

#[async_trait::async_trait]
impl super::Source for JsonlFileSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(
        &mut self,
        position: Option<String>,
        out: tokio::sync::mpsc::Sender<super::SourceBatch>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<(), super::SourceError> {
        use tokio::io::AsyncBufReadExt;
        let read_err = |reason: String| super::SourceError::Read {
            source_name: self.name.clone(),
            reason,
        };
        let skip: usize = position
            .as_deref()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let file = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| read_err(format!("{}: {e}", self.path.display())))?;
        let mut lines = tokio::io::BufReader::new(file).lines();
        let mut number = 0usize;
        let mut changes = Vec::with_capacity(self.batch_size);
        loop {
            let line = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                line = lines.next_line() => line.map_err(|e| read_err(e.to_string()))?,
            };
            let Some(text) = line else { break };
            number += 1;
            if number <= skip || text.trim().is_empty() || text.trim_start().starts_with('#') {
                continue;
            }
            match parse_line(&text, number) {
                Ok(mut change) => {
                    if change.source == SOURCE {
                        change.source = self.name.clone();
                    }
                    changes.push(change);
                }
                Err(error) => tracing::warn!(source = %self.name, %error, "skipping bad line"),
            }
            if changes.len() >= self.batch_size {
                let batch = super::SourceBatch {
                    source: self.name.clone(),
                    changes: std::mem::take(&mut changes),
                    position: Some(number.to_string()),
                    ..super::SourceBatch::default()
                };
                out.send(batch)
                    .await
                    .map_err(|_| super::SourceError::Closed(self.name.clone()))?;
            }
        }
        if number > skip {
            let batch = super::SourceBatch {
                source: self.name.clone(),
                changes,
                position: Some(number.to_string()),
                ..super::SourceBatch::default()
            };
            out.send(batch)
                .await
                .map_err(|_| super::SourceError::Closed(self.name.clone()))?;
        }
        Ok(())
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
