//! Test helper for the crash test: appends batches to an oplog store
//! forever, each committed with its batch number as the source position,
//! until it is killed.
//!
//! Usage: `oplog-writer <sqlite-path | postgres-url> <rows-per-batch>`

use std::sync::Arc;

use emcachers::oplog::{
    AppendBatch, NewRow, Op, OplogStore, PostgresStore, SourcePosition, SqliteStore,
};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(target), Some(rows)) = (
        args.get(1),
        args.get(2).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: oplog-writer <sqlite-path | postgres-url> <rows-per-batch>");
        std::process::exit(2);
    };
    let store: Arc<dyn OplogStore> = if target.starts_with("postgres") {
        Arc::new(PostgresStore::connect(target).await.expect("connect"))
    } else {
        Arc::new(SqliteStore::open(std::path::Path::new(target)).expect("open"))
    };
    let mut batch_no: u64 = store
        .source_position("crash-writer")
        .await
        .expect("position")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let padding = "x".repeat(200);
    loop {
        batch_no += 1;
        let rows = (0..rows)
            .map(|i| NewRow {
                entity: "crash".into(),
                doc_id: format!("{batch_no}-{i}"),
                op: Op::Upsert,
                data: Some(format!(
                    "{{\"batch\":{batch_no},\"i\":{i},\"pad\":\"{padding}\"}}"
                )),
                plugin: "writer".into(),
                plugin_version: "1".into(),
            })
            .collect();
        let position = Some(SourcePosition {
            source: "crash-writer".into(),
            position: batch_no.to_string(),
        });
        store
            .append(AppendBatch {
                rows,
                rejected: Vec::new(),
                position,
                snapshot: false,
            })
            .await
            .expect("append");
    }
}
