//! `outbox-chaos`: the chaos test of the outbox relay (see `outbox_testkit::chaos`).
//!
//! ```text
//! outbox-chaos run --store postgres --publisher kafka [--messages 10000 --duration 45 ...]
//! ```
//!
//! Exit codes: 0 every guarantee held; 1 a guarantee broke (the report says which); 2 the run could
//! not be carried out (bad options, a backend not reachable).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outbox_testkit::chaos::{self, RelayProcessOptions, RunOptions};

/// The chaos test of the outbox relay: relay processes killed, connections terminated, the database
/// and broker restarted, then an independent count of what reached the broker.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a chaos test and reports; exits 1 when a guarantee broke.
    Run(RunOptions),
    /// One relay process (started by `run`; not for direct use).
    #[command(hide = true)]
    Relay(RelayProcessOptions),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("outbox-chaos: cannot start a runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Relay(options) => {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .init();
            match runtime.block_on(chaos::relay_process(options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("outbox-chaos relay: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Run(options) => {
            let json = options.json;
            let report = match runtime.block_on(chaos::run(options)) {
                Ok(report) => report,
                Err(e) => {
                    eprintln!("outbox-chaos: the run could not be carried out: {e}");
                    return ExitCode::from(2);
                }
            };
            eprintln!("{}", report.summary());
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => eprintln!("outbox-chaos: cannot write the JSON report: {e}"),
                }
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}
