//! `outbox`: run the relays of several databases from one configuration file, and look after them.
//!
//! ```text
//! outbox --config outbox.toml schema migrate     # create the outbox tables of every pipeline
//! outbox --config outbox.toml relay              # relay every pipeline until SIGTERM / Ctrl-C
//! outbox --config outbox.toml status --json      # backlog of each pipeline
//! outbox --config outbox.toml dead list --topic orders.placed
//! outbox --config outbox.toml dead replay --all-matching --topic orders.placed --yes
//! outbox --config outbox.toml dashboard --addr 127.0.0.1:8080
//! ```
//!
//! Exit codes: 0 done; 1 a database or broker failed; 2 bad configuration or arguments.

mod commands;
mod config;
mod dashboard;
mod pipeline;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Run and operate outbox relays.
#[derive(Debug, Parser)]
#[command(
    name = "outbox",
    version,
    after_help = "Exit codes: 0 done, 1 a database or broker failed, 2 bad configuration or arguments."
)]
struct Cli {
    /// The configuration file (TOML; `OUTBOX_...` environment variables override its keys).
    #[arg(long, short, global = true, default_value = "outbox.toml", env = "OUTBOX_CONFIG")]
    config: PathBuf,
    /// Only these pipelines (default: every pipeline of the file).
    #[arg(long, short, global = true)]
    pipeline: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Relay every pipeline until SIGTERM or Ctrl-C, then finish the batches in flight.
    Relay {
        /// Serve `/metrics` (Prometheus), `/healthz` and `/readyz` on this address.
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Serve the dashboard in the relay process on this address.
        #[arg(long, value_name = "HOST:PORT")]
        dashboard_addr: Option<std::net::SocketAddr>,
        #[command(flatten)]
        dashboard: DashboardAccess,
    },
    /// The web dashboard: backlog, messages, blocked keys, dead letters (search, replay, purge), relays.
    Dashboard {
        /// The address to listen on.
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        #[command(flatten)]
        access: DashboardAccess,
    },
    /// Each pipeline's backlog: pending, retrying, oldest pending age, dead letters.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Dead letters: list, show, replay, purge.
    #[command(subcommand)]
    Dead(commands::DeadCommand),
    /// The outbox tables.
    #[command(subcommand)]
    Schema(commands::SchemaCommand),
}

/// Who may use the dashboard, and how.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DashboardAccess {
    /// Every page and action needs this token (`Authorization: Bearer ...`, or `/login?token=...` once
    /// in a browser). Without one the dashboard listens on loopback only.
    #[arg(long = "dashboard-token", env = "OUTBOX_DASHBOARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Show, never change: no replay or purge.
    #[arg(long = "read-only")]
    read_only: bool,
    /// How often the dashboard reads each pipeline's figures (its charts keep the last hour).
    #[arg(long = "sample-every", default_value = "5s", value_parser = commands::parse_age)]
    sample_every: std::time::Duration,
}

impl DashboardAccess {
    pub(crate) fn access(&self) -> dashboard::Access {
        dashboard::Access {
            token: self.token.clone().filter(|t| !t.is_empty()),
            read_only: self.read_only,
            sample_every: self.sample_every,
        }
    }
}

/// What went wrong, and the exit code it gives.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad configuration or arguments: exit 2.
    Config(String),
    /// A database or broker failed: exit 1.
    Runtime(String),
}

impl From<outbox::Error> for Failure {
    fn from(e: outbox::Error) -> Self {
        match e {
            outbox::Error::InvalidConfig { .. } => Self::Config(e.report()),
            other => Self::Runtime(other.report()),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match config::load(&cli.config) {
        Err(e) => Err(Failure::Config(e)),
        Ok(config) => commands::run(cli.command, &config, &cli.pipeline).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("outbox: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("outbox: {e}");
            ExitCode::from(1)
        }
    }
}
