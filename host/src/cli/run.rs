//! `emcachers run` and `emcachers ingest`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use emcachers::config::Config;
use emcachers::node::Node;
use emcachers::sources::jsonl::JsonlFileSource;
use emcachers::telemetry;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the async runtime")
}

fn load(config_path: Option<&Path>) -> anyhow::Result<Config> {
    let config = Config::load(config_path)?;
    telemetry::init(&config.log.level, config.log.format);
    Ok(config)
}

pub fn run(config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load(config_path)?;
    runtime()?.block_on(async {
        let mut node = Node::open(config).await?;
        node.start().await?;
        tracing::info!("emcachers running");
        shutdown_signal().await;
        tracing::info!("shutting down");
        node.shutdown(Duration::from_secs(10)).await;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn ingest(
    config_path: Option<&Path>,
    file: &Path,
    source: &str,
    replicate: bool,
) -> anyhow::Result<ExitCode> {
    let config = load(config_path)?;
    runtime()?.block_on(async {
        let node = Node::open(config).await?;
        let batch = node.config.oplog.batch_size.unwrap_or(1000);
        let report = node.ingest(Box::new(JsonlFileSource::new(source, file, batch))).await?;
        println!(
            "{}",
            serde_json::json!({
                "batches": report.batches, "changes": report.changes, "appended": report.appended,
                "staged": report.staged, "rejected": report.rejected, "unrouted": report.unrouted,
            })
        );
        let mut failing = Vec::new();
        if replicate && node.config.cache.enabled {
            let step = node.replicate_once().await?;
            // Entities whose cache could not be written (the others were).
            failing = node.dbs.replicator_status().failing();
            println!(
                "{}",
                serde_json::json!({"replicated": step.read, "upserted": step.upserted, "deleted": step.deleted,
                    "rebuilt": step.rebuilt, "offset": step.offset, "caches": node.dbs.root().display().to_string(),
                    "failing": failing})
            );
        }
        node.shutdown(Duration::from_secs(5)).await;
        Ok(if report.rejected > 0 || !failing.is_empty() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
