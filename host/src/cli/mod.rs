//! Command-line interface. Commands return `anyhow` errors: this is the
//! binary's edge, where library errors become messages for a person.

mod plugin;
mod rejected;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// emcachers: change-data replication with WebAssembly entity plugins.
#[derive(Debug, Parser)]
#[command(name = "emcachers", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the host: load and watch plugins, serve entities.
    Run {
        /// The TOML configuration file (optional; `EMCACHERS_*` variables override it).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Push JSON-lines changes through the pipeline into the oplog, then
    /// bring the SQLite caches up to date.
    Ingest {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// JSON-lines changes, one per line.
        file: PathBuf,
        /// The source name the changes come from.
        #[arg(long, default_value = "jsonl")]
        source: String,
        /// Do not apply the oplog to the SQLite caches afterwards.
        #[arg(long)]
        no_replicate: bool,
    },
    /// Inspect and replay changes the plugins rejected.
    #[command(subcommand)]
    Rejected(rejected::RejectedCommand),
    /// Create, build, check and test plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
}

/// Run the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => run::run(config.as_deref()),
        Command::Ingest {
            config,
            file,
            source,
            no_replicate,
        } => run::ingest(config.as_deref(), &file, &source, !no_replicate),
        Command::Rejected(command) => rejected::run(command),
        Command::Plugin(command) => plugin::run(command),
    }
}
