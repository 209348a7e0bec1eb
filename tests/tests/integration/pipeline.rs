//! The pipeline under backlog: while one batch commits, the next queued one
//! is shaped, and a shaping step that reads the store (a partial change's
//! current row) waits for that commit.

use emcachers::config::Config;
use emcachers::model::{Change, ChangeOp};
use emcachers::node::Node;
use emcachers::sources::SourceBatch;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::end_to_end::project;

fn change(op: ChangeOp, id: &str, document: Value) -> Change {
    Change {
        source: "jsonl".into(),
        collection: "users".into(),
        op,
        id: id.into(),
        document: Some(document.to_string()),
        current: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_in_the_next_queued_batch_merges_onto_the_committed_row() {
    let (_dir, config) = project("");
    let node = Node::open(Config::load(Some(&config)).expect("config"))
        .await
        .expect("node");
    // Every batch is queued before the pipeline runs: each one is shaped
    // while the previous one commits.
    let (tx, rx) = tokio::sync::mpsc::channel(400);
    for k in 0..100 {
        let id = format!("u{k:03}");
        let upsert = change(
            ChangeOp::Upsert,
            &id,
            json!({"_id": id, "email": format!("{id}@example.com"), "stats": {"logins": k}}),
        );
        let partial = change(
            ChangeOp::Partial,
            &id,
            json!({"profile.address.city": format!("c{k}")}),
        );
        for (n, changes) in [(0, vec![upsert]), (1, vec![partial])] {
            tx.send(SourceBatch {
                source: "jsonl".into(),
                changes,
                position: Some((2 * k + n + 1).to_string()),
                ..SourceBatch::default()
            })
            .await
            .unwrap();
        }
    }
    drop(tx);
    let report = node
        .pipeline
        .run(rx, CancellationToken::new())
        .await
        .expect("run");
    assert_eq!(
        (report.batches, report.appended, report.rejected),
        (200, 200, 0)
    );
    let ids: Vec<String> = (0..100).map(|k| format!("u{k:03}")).collect();
    let rows = node.store.latest("users", &ids).await.unwrap();
    assert_eq!(rows.len(), 100);
    for row in rows {
        let data: Value = serde_json::from_str(row.data.as_deref().unwrap()).unwrap();
        let k: usize = row.doc_id[1..].parse().unwrap();
        assert_eq!(
            (data["email"].clone(), data["city"].clone()),
            (
                json!(format!("{}@example.com", row.doc_id)),
                json!(format!("c{k}"))
            ),
            "the partial of {} merged onto its upsert: {data}",
            row.doc_id
        );
    }
    assert_eq!(
        node.store
            .source_position("jsonl")
            .await
            .unwrap()
            .as_deref(),
        Some("200")
    );
}
