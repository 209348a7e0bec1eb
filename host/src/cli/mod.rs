//! Command-line interface. Commands return `anyhow` errors: this is the
//! binary's edge, where library errors become messages for a person.

mod plugin;
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
    /// Create, build, check and test plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
}

/// Run the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => run::run(config.as_deref()),
        Command::Plugin(command) => plugin::run(command),
    }
}
