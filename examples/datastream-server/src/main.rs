//! `datastream-dev-server`: a Schematic datastream server for development,
//! tests and benchmarks (see the crate's README).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use emcachers_datastream_server::{Config, DevServer, Fixtures, generate};

/// A Schematic datastream server (REST pages + WebSocket) with a `/_dev/`
/// control API.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Accepted API key (repeatable); without any, every non-empty key is
    /// accepted.
    #[arg(long = "api-key", value_name = "KEY")]
    api_keys: Vec<String>,
    /// Directory with flags.json, companies.json and users.json (each
    /// optional).
    #[arg(long, value_name = "DIR")]
    fixtures: Option<PathBuf>,
    /// Add N generated REST companies.
    #[arg(long, value_name = "N", default_value_t = 0)]
    generate_companies: usize,
    /// Add N generated REST users.
    #[arg(long, value_name = "N", default_value_t = 0)]
    generate_users: usize,
    /// Pad each generated company to about BYTES of JSON.
    #[arg(long, value_name = "BYTES")]
    company_size: Option<usize>,
    /// Pad each generated user to about BYTES of JSON.
    #[arg(long, value_name = "BYTES")]
    user_size: Option<usize>,
    /// Keep at most N messages in the replay log (default: all).
    #[arg(long, value_name = "N")]
    log_retention: Option<usize>,
    /// While flooding, keep at most N messages in the replay log.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    flood_log_cap: usize,
    /// Live messages queued per connection before it is closed as too slow.
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    queue_capacity: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let mut fixtures = match &args.fixtures {
        Some(dir) => Fixtures::load(dir)?,
        None => Fixtures::default(),
    };
    fixtures.companies.extend(generate::rest_companies(
        args.generate_companies,
        args.company_size,
    ));
    fixtures
        .users
        .extend(generate::rest_users(args.generate_users, args.user_size));
    tracing::info!(
        flags = fixtures.flags.len(),
        companies = fixtures.companies.len(),
        users = fixtures.users.len(),
        "data loaded"
    );

    let server = DevServer::start(Config {
        listen: args.listen,
        api_keys: args.api_keys,
        fixtures,
        log_retention: args.log_retention,
        flood_log_cap: args.flood_log_cap,
        queue_capacity: args.queue_capacity,
        ..Config::default()
    })
    .await?;

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{}", server.addr()).context("writing to stdout")?;
    stdout.flush().context("writing to stdout")?;
    drop(stdout);

    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}
