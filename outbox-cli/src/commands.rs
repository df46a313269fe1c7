//! The commands, each over the selected pipelines.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use clap::Subcommand;
use outbox::{CancellationToken, DeadLetter, Dispatcher, MessageId};

use crate::config::Config;
use crate::pipeline::{self, AnyStore};
use crate::{Command, Failure};

/// At most this many dead letters are read per pipeline by `dead list|show|replay|purge`.
const DEAD_LETTER_SCAN: usize = 100_000;
/// Dead letters replayed or purged per statement.
const BATCH: usize = 500;

/// The dead-letter verbs.
#[derive(Debug, Subcommand)]
pub(crate) enum DeadCommand {
    /// List dead letters, oldest first.
    List {
        #[command(flatten)]
        filter: Filter,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter in full: headers, attempts, error, payload.
    Show {
        /// Its message id.
        id: MessageId,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move dead letters back to the outbox (attempts reset).
    Replay {
        #[command(flatten)]
        selection: Selection,
    },
    /// Delete dead letters for good.
    Purge {
        #[command(flatten)]
        selection: Selection,
    },
}

/// Which dead letters a listing or a bulk verb takes.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Filter {
    /// Only this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Only those whose error contains this text.
    #[arg(long)]
    error: Option<String>,
    /// Only those parked longer ago than this (`90s`, `15m`, `2h`, `3d`).
    #[arg(long, value_parser = parse_age)]
    older_than: Option<Duration>,
}

/// The dead letters a replay or purge changes: named ones, or every one that matches.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Selection {
    /// Message ids.
    ids: Vec<MessageId>,
    /// Every dead letter that matches the filter instead of named ones.
    #[arg(long, conflicts_with = "ids")]
    all_matching: bool,
    #[command(flatten)]
    filter: Filter,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
}

/// The schema verbs.
#[derive(Debug, Subcommand)]
pub(crate) enum SchemaCommand {
    /// Print each pipeline's schema SQL (for your own migration tool).
    Print,
    /// Create each pipeline's outbox tables if they do not exist.
    Migrate,
}

fn parse_age(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| format!("expected an age such as 90s, 15m, 2h or 3d, got {text:?}"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("expected an age such as 90s, 15m, 2h or 3d, got {text:?}")),
    };
    Ok(Duration::from_secs(n.saturating_mul(seconds)))
}

impl Filter {
    fn matches(&self, dead: &DeadLetter, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.topic.as_ref().is_none_or(|topic| &dead.message.topic == topic)
            && self.error.as_ref().is_none_or(|text| dead.error.contains(text.as_str()))
            && self.older_than.is_none_or(|age| (now - dead.dead_at).to_std().is_ok_and(|parked| parked >= age))
    }
}

/// Runs `command` over the pipelines named in `only` (all when empty).
pub(crate) async fn run(command: Command, config: &Config, only: &[String]) -> Result<(), Failure> {
    for name in only {
        if !config.pipelines.contains_key(name) {
            return Err(Failure::Config(format!("no pipeline named {name:?} in the configuration")));
        }
    }
    let selected: Vec<_> = config.pipelines.iter().filter(|(name, _)| only.is_empty() || only.contains(name)).collect();
    let mut stores = Vec::with_capacity(selected.len());
    for (name, pipeline) in &selected {
        let store = AnyStore::connect(&pipeline.store).await.map_err(|e| with_pipeline(name, Failure::from(e)))?;
        stores.push((name.as_str(), *pipeline, store));
    }
    match command {
        Command::Relay { metrics_addr } => relay(&stores, metrics_addr).await,
        Command::Status { json } => status(&stores, json).await,
        Command::Schema(SchemaCommand::Print) => {
            for (name, _, store) in &stores {
                println!("-- pipeline {name}\n{}", store.schema_sql());
            }
            Ok(())
        }
        Command::Schema(SchemaCommand::Migrate) => {
            for (name, _, store) in &stores {
                store.migrate().await.map_err(|e| with_pipeline(name, e.into()))?;
                println!("{name}: schema up to date");
            }
            Ok(())
        }
        Command::Dead(verb) => dead(verb, &stores).await,
    }
}

fn with_pipeline(name: &str, failure: Failure) -> Failure {
    match failure {
        Failure::Config(e) => Failure::Config(format!("pipeline {name}: {e}")),
        Failure::Runtime(e) => Failure::Runtime(format!("pipeline {name}: {e}")),
    }
}

type Pipelines<'a> = [(&'a str, &'a crate::config::PipelineConfig, AnyStore)];

async fn relay(stores: &Pipelines<'_>, metrics_addr: Option<std::net::SocketAddr>) -> Result<(), Failure> {
    let mut relays = Vec::with_capacity(stores.len());
    for (name, config, store) in stores {
        relays.push((*name, pipeline::relay(name, config, store).map_err(|e| with_pipeline(name, e.into()))?));
    }
    let shutdown: CancellationToken = outbox::shutdown_on_signal();
    if let Some(addr) = metrics_addr {
        crate::serve::start(addr, crate::serve::Readiness::new(stores), shutdown.clone()).await?;
    }
    let mut running = tokio::task::JoinSet::new();
    for (name, relay) in relays {
        let (name, shutdown) = (name.to_owned(), shutdown.clone());
        println!("{name}: relaying");
        running.spawn(async move {
            let outcome = relay.run(shutdown).await;
            (name, outcome, relay.metrics())
        });
    }
    let mut failed = None;
    while let Some(joined) = running.join_next().await {
        match joined {
            Ok((name, Ok(()), metrics)) => println!(
                "{name}: stopped; published {}, retried {}, dead-lettered {}",
                metrics.published, metrics.retried, metrics.dead_lettered
            ),
            Ok((name, Err(e), _)) => {
                shutdown.cancel();
                failed = Some(with_pipeline(&name, e.into()));
            }
            Err(e) => {
                shutdown.cancel();
                failed = Some(Failure::Runtime(format!("a relay task failed: {e}")));
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

/// Relays whose heartbeat is older than this are not listed (three missed heartbeats).
const RELAY_ALIVE_WITHIN: Duration = Duration::from_secs(3 * 10);

async fn status(stores: &Pipelines<'_>, json: bool) -> Result<(), Failure> {
    let mut rows = Vec::new();
    for (name, _, store) in stores {
        let shared = store.shared();
        let stats = shared.stats().await.map_err(|e| with_pipeline(name, e.into()))?;
        let relays = match shared.registry() {
            Some(registry) => registry.relays(RELAY_ALIVE_WITHIN).await.map_err(|e| with_pipeline(name, e.into()))?,
            None => Vec::new(),
        };
        rows.push((*name, stats, relays));
    }
    let now = chrono::Utc::now();
    let age = |at: chrono::DateTime<chrono::Utc>| (now - at).to_std().unwrap_or_default().as_secs_f64();
    if json {
        let pipelines: Vec<_> = rows
            .iter()
            .map(|(name, s, relays)| {
                let relays: Vec<_> = relays
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "id": r.id.to_string(), "name": r.name, "host": r.host, "pid": r.pid,
                            "claims_held": r.claims_held, "started_at": r.started_at.to_rfc3339(),
                            "heartbeat_age_seconds": age(r.heartbeat_at),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "pipeline": name, "pending": s.pending, "retrying": s.retrying,
                    "oldest_pending_age_seconds": s.oldest_pending_age.map(|a| a.as_secs_f64()),
                    "dead_letters": s.dead_letters, "relays": relays,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "pipelines": pipelines }));
    } else {
        println!(
            "{:<20} {:>10} {:>10} {:>14} {:>13} {:>7}",
            "pipeline", "pending", "retrying", "oldest", "dead letters", "relays"
        );
        for (name, s, relays) in &rows {
            let oldest = s.oldest_pending_age.map_or("-".to_owned(), |a| format!("{:.1}s", a.as_secs_f64()));
            println!(
                "{name:<20} {:>10} {:>10} {oldest:>14} {:>13} {:>7}",
                s.pending,
                s.retrying,
                s.dead_letters,
                relays.len()
            );
            for r in relays {
                println!(
                    "  relay {} {} on {} (pid {}): {} claims held, heartbeat {:.0}s ago",
                    r.name,
                    r.id,
                    r.host,
                    r.pid,
                    r.claims_held,
                    age(r.heartbeat_at)
                );
            }
        }
    }
    Ok(())
}

async fn dead(verb: DeadCommand, stores: &Pipelines<'_>) -> Result<(), Failure> {
    let now = chrono::Utc::now();
    match verb {
        DeadCommand::List { filter, limit, json } => {
            let mut listed = Vec::new();
            for (name, _, store) in stores {
                let all =
                    store.shared().dead_letters(DEAD_LETTER_SCAN).await.map_err(|e| with_pipeline(name, e.into()))?;
                listed.extend(all.into_iter().filter(|d| filter.matches(d, now)).map(|d| (*name, d)));
            }
            listed.truncate(limit);
            if json {
                let items: Vec<_> = listed.iter().map(|(name, d)| dead_json(name, d, false)).collect();
                println!("{}", serde_json::Value::Array(items));
            } else {
                println!("{:<12} {:<36} {:<24} {:>8}  error", "pipeline", "id", "topic", "attempts");
                for (name, d) in &listed {
                    println!(
                        "{name:<12} {:<36} {:<24} {:>8}  {}",
                        d.message.id, d.message.topic, d.message.attempts, d.error
                    );
                }
                println!("{} dead letter(s)", listed.len());
            }
            Ok(())
        }
        DeadCommand::Show { id, json } => {
            for (name, _, store) in stores {
                let all =
                    store.shared().dead_letters(DEAD_LETTER_SCAN).await.map_err(|e| with_pipeline(name, e.into()))?;
                if let Some(d) = all.iter().find(|d| d.message.id == id) {
                    let shown = dead_json(name, d, true);
                    let text =
                        if json { shown.to_string() } else { serde_json::to_string_pretty(&shown).unwrap_or_default() };
                    println!("{text}");
                    return Ok(());
                }
            }
            Err(Failure::Config(format!("no dead letter with id {id}")))
        }
        DeadCommand::Replay { selection } => change(stores, &selection, now, "replay").await,
        DeadCommand::Purge { selection } => change(stores, &selection, now, "purge").await,
    }
}

/// A dead letter as JSON; with its headers and payload when `full` (the payload as JSON when it is
/// JSON, else as text when it is UTF-8, else hex).
fn dead_json(pipeline: &str, d: &DeadLetter, full: bool) -> serde_json::Value {
    let mut value = serde_json::json!({
        "pipeline": pipeline, "id": d.message.id.to_string(), "topic": d.message.topic, "key": d.message.key,
        "attempts": d.message.attempts, "error": d.error, "dead_at": d.dead_at.to_rfc3339(),
        "created_at": d.message.created_at.to_rfc3339(),
    });
    if full {
        let payload = &d.message.payload;
        let shown =
            serde_json::from_slice::<serde_json::Value>(payload).unwrap_or_else(|_| {
                match std::str::from_utf8(payload) {
                    Ok(text) => serde_json::Value::String(text.to_owned()),
                    Err(_) => serde_json::Value::String(payload.iter().map(|b| format!("{b:02x}")).collect()),
                }
            });
        value["headers"] = serde_json::json!(d.message.headers);
        value["payload"] = shown;
    }
    value
}

/// Replays or purges the selected dead letters of every selected pipeline, in bounded batches.
async fn change(
    stores: &Pipelines<'_>,
    selection: &Selection,
    now: chrono::DateTime<chrono::Utc>,
    verb: &str,
) -> Result<(), Failure> {
    if selection.ids.is_empty() && !selection.all_matching {
        return Err(Failure::Config(format!("{verb}: name message ids, or --all-matching with filters")));
    }
    let mut chosen: Vec<(&str, &AnyStore, Vec<MessageId>)> = Vec::new();
    for (name, _, store) in stores {
        let all = store.shared().dead_letters(DEAD_LETTER_SCAN).await.map_err(|e| with_pipeline(name, e.into()))?;
        let ids: Vec<MessageId> = all
            .iter()
            .filter(|d| {
                if selection.all_matching {
                    selection.filter.matches(d, now)
                } else {
                    selection.ids.contains(&d.message.id)
                }
            })
            .map(|d| d.message.id)
            .collect();
        chosen.push((name, store, ids));
    }
    let total: usize = chosen.iter().map(|(_, _, ids)| ids.len()).sum();
    if !selection.all_matching {
        let found: Vec<MessageId> = chosen.iter().flat_map(|(_, _, ids)| ids.iter().copied()).collect();
        if let Some(unknown) = selection.ids.iter().find(|id| !found.contains(id)) {
            return Err(Failure::Config(format!("no dead letter with id {unknown}; nothing changed")));
        }
    }
    if total == 0 {
        println!("{verb}: no dead letter matches");
        return Ok(());
    }
    if !selection.yes && !confirm(&format!("{verb} {total} dead letter(s)?"))? {
        println!("{verb}: nothing changed");
        return Ok(());
    }
    let mut changed = 0u64;
    // A progress bar on a terminal; plain progress lines for scripts and logs.
    let bar = std::io::stdout().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(total as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(verb.to_owned());
        bar
    });
    for (name, store, ids) in chosen {
        let shared = store.shared();
        for chunk in ids.chunks(BATCH) {
            let done = if verb == "replay" {
                shared.replay_dead_letters(chunk).await
            } else {
                shared.purge_dead_letters(chunk).await
            };
            changed += done.map_err(|e| with_pipeline(name, e.into()))?;
            match &bar {
                Some(bar) => bar.set_position(changed),
                None => println!("{verb}: {changed} of {total}"),
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    println!("{verb}: {changed} dead letter(s) changed");
    Ok(())
}

fn confirm(question: &str) -> Result<bool, Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(Failure::Config(format!("{question} Not asked: stdin is not a terminal; pass --yes")));
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush().map_err(|e| Failure::Runtime(e.to_string()))?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).map_err(|e| Failure::Runtime(e.to_string()))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
