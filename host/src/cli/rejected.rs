//! `emcachers rejected list|replay`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use emcachers::config::Config;
use emcachers::node::{Node, open_store};
use emcachers::telemetry;

#[derive(Debug, Subcommand)]
pub enum RejectedCommand {
    /// Print rejected records as JSON lines, oldest first.
    List {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Records after this id.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Run rejected records through the current plugins again; those that
    /// now shape are committed and removed, the others stay with their new error.
    Replay {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// At most this many records.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

pub fn run(command: RejectedCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    match command {
        RejectedCommand::List {
            config,
            after,
            limit,
        } => {
            let config = Config::load(config.as_deref())?;
            telemetry::init(&config.log.level, config.log.format);
            runtime.block_on(async {
                let store = open_store(&config).await?;
                for record in store.rejected(after, limit).await? {
                    println!("{}", serde_json::to_string(&record)?);
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        RejectedCommand::Replay { config, limit } => {
            let config = Config::load(config.as_deref())?;
            telemetry::init(&config.log.level, config.log.format);
            runtime.block_on(async {
                let node = Node::open(config).await?;
                let (replayed, failed) = node.pipeline.replay_rejected(limit).await?;
                println!(
                    "{}",
                    serde_json::json!({"replayed": replayed, "failed_again": failed})
                );
                node.shutdown(Duration::from_secs(5)).await;
                Ok(if failed > 0 {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                })
            })
        }
    }
}
