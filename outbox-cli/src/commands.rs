//! The commands, each over the selected pipelines.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use clap::Subcommand;
use outbox::{Admin, CancellationToken, DeadLetter, DeadLetterFilter, Dispatcher, MessageId, Store};

use crate::config::Config;
use crate::pipeline::{self, AnyStore};
use crate::{Command, Failure};

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

pub(crate) fn parse_age(text: &str) -> Result<Duration, String> {
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
    /// The store-side filter, ages counted back from `now`.
    fn to_store(&self, now: chrono::DateTime<chrono::Utc>) -> DeadLetterFilter {
        let mut filter = DeadLetterFilter::new();
        if let Some(topic) = &self.topic {
            filter = filter.topic(topic);
        }
        if let Some(text) = &self.error {
            filter = filter.error_contains(text);
        }
        if let Some(age) = self.older_than {
            let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
            filter =
                filter.dead_before(now.checked_sub_signed(age).unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC));
        }
        filter
    }
}

/// The operator queries of a pipeline's store.
fn admin<'s>(name: &str, store: &'s dyn Store) -> Result<&'s dyn Admin, Failure> {
    store.admin().ok_or_else(|| Failure::Runtime(format!("pipeline {name}: the store offers no operator queries")))
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
        Command::Relay { metrics_addr, dashboard_addr, dashboard } => {
            let dashboard = dashboard_addr.map(|addr| (addr, dashboard.access()));
            relay(&stores, metrics_addr, dashboard).await
        }
        Command::Dashboard { addr, access } => {
            let shutdown: CancellationToken = outbox::shutdown_on_signal();
            crate::dashboard::start(addr, dashboard_pipelines(&stores), access.access(), shutdown.clone()).await?;
            shutdown.cancelled().await;
            Ok(())
        }
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

/// The pipelines as the dashboard sees them.
fn dashboard_pipelines(stores: &Pipelines<'_>) -> Vec<crate::dashboard::Pipeline> {
    stores
        .iter()
        .map(|(name, _, store)| crate::dashboard::Pipeline { name: (*name).to_owned(), store: store.shared() })
        .collect()
}

async fn relay(
    stores: &Pipelines<'_>,
    metrics_addr: Option<std::net::SocketAddr>,
    dashboard: Option<(std::net::SocketAddr, crate::dashboard::Access)>,
) -> Result<(), Failure> {
    let mut relays = Vec::with_capacity(stores.len());
    for (name, config, store) in stores {
        relays.push((*name, pipeline::relay(name, config, store).map_err(|e| with_pipeline(name, e.into()))?));
    }
    let shutdown: CancellationToken = outbox::shutdown_on_signal();
    if let Some(addr) = metrics_addr {
        crate::serve::start(addr, crate::serve::Readiness::new(stores), shutdown.clone()).await?;
    }
    if let Some((addr, access)) = dashboard {
        crate::dashboard::start(addr, dashboard_pipelines(stores), access, shutdown.clone()).await?;
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
                            "claims_held": r.claims_held, "published": r.published,
                            "started_at": r.started_at.to_rfc3339(),
                            "heartbeat_age_seconds": age(r.heartbeat_at),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "pipeline": name, "pending": s.pending, "retrying": s.retrying, "scheduled": s.scheduled,
                    "oldest_pending_age_seconds": s.oldest_pending_age.map(|a| a.as_secs_f64()),
                    "dead_letters": s.dead_letters, "relays": relays,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "pipelines": pipelines }));
    } else {
        println!(
            "{:<20} {:>10} {:>10} {:>10} {:>14} {:>13} {:>7}",
            "pipeline", "pending", "retrying", "scheduled", "oldest", "dead letters", "relays"
        );
        for (name, s, relays) in &rows {
            let oldest = s.oldest_pending_age.map_or("-".to_owned(), |a| format!("{:.1}s", a.as_secs_f64()));
            println!(
                "{name:<20} {:>10} {:>10} {:>10} {oldest:>14} {:>13} {:>7}",
                s.pending,
                s.retrying,
                s.scheduled,
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
            let filter = filter.to_store(now);
            let mut listed = Vec::new();
            for (name, _, store) in stores {
                if listed.len() >= limit {
                    break;
                }
                let shared = store.shared();
                let page = admin(name, &*shared)?
                    .search_dead_letters(&filter, None, limit - listed.len())
                    .await
                    .map_err(|e| with_pipeline(name, e.into()))?;
                listed.extend(page.items.into_iter().map(|d| (*name, d)));
            }
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
                let shared = store.shared();
                let found =
                    admin(name, &*shared)?.dead_letter_by_id(id).await.map_err(|e| with_pipeline(name, e.into()))?;
                if let Some(d) = found {
                    let shown = dead_json(name, &d, true);
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

/// What a replay or purge changes in one pipeline: named ids, or every dead letter that passes a filter.
enum Chosen {
    Ids(Vec<MessageId>),
    Matching(DeadLetterFilter, u64),
}

impl Chosen {
    fn count(&self) -> u64 {
        match self {
            Self::Ids(ids) => ids.len() as u64,
            Self::Matching(_, count) => *count,
        }
    }
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
    let mut chosen: Vec<(&str, std::sync::Arc<dyn Store>, Chosen)> = Vec::new();
    let mut unknown: Vec<MessageId> = selection.ids.clone();
    for (name, _, store) in stores {
        let shared = store.shared();
        let queries = admin(name, &*shared)?;
        let picked = if selection.all_matching {
            let filter = selection.filter.to_store(now);
            let count = queries.count_dead_letters(&filter).await.map_err(|e| with_pipeline(name, e.into()))?;
            Chosen::Matching(filter, count)
        } else {
            let mut ids = Vec::new();
            for id in &selection.ids {
                if queries.dead_letter_by_id(*id).await.map_err(|e| with_pipeline(name, e.into()))?.is_some() {
                    ids.push(*id);
                    unknown.retain(|other| other != id);
                }
            }
            Chosen::Ids(ids)
        };
        chosen.push((name, shared, picked));
    }
    if let (false, Some(id)) = (selection.all_matching, unknown.first()) {
        return Err(Failure::Config(format!("no dead letter with id {id}; nothing changed")));
    }
    let total: u64 = chosen.iter().map(|(_, _, picked)| picked.count()).sum();
    if total == 0 {
        println!("{verb}: no dead letter matches");
        return Ok(());
    }
    if !selection.yes && !confirm(&format!("{verb} {total} dead letter(s)?"))? {
        println!("{verb}: nothing changed");
        return Ok(());
    }
    let mut progress = Progress::new(verb, total);
    for (name, shared, picked) in chosen {
        let apply = |ids: Vec<MessageId>| {
            let shared = shared.clone();
            async move {
                let done = if verb == "replay" {
                    shared.replay_dead_letters(&ids).await
                } else {
                    shared.purge_dead_letters(&ids).await
                };
                done.map_err(|e| with_pipeline(name, e.into()))
            }
        };
        match picked {
            Chosen::Ids(ids) => {
                for chunk in ids.chunks(BATCH) {
                    progress.add(apply(chunk.to_vec()).await?);
                }
            }
            Chosen::Matching(filter, _) => {
                // Page by key through what matches; the rows changed leave the table, the cursor stays valid.
                let mut after = None;
                loop {
                    let page = admin(name, &*shared)?
                        .search_dead_letters(&filter, after, BATCH)
                        .await
                        .map_err(|e| with_pipeline(name, e.into()))?;
                    let ids: Vec<MessageId> = page.items.iter().map(|d| d.message.id).collect();
                    if !ids.is_empty() {
                        progress.add(apply(ids).await?);
                    }
                    match page.next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
            }
        }
    }
    println!("{verb}: {} dead letter(s) changed", progress.finish());
    Ok(())
}

/// Progress of a bulk change: a bar on a terminal, plain lines (`replay: 500 of 1200`) otherwise.
struct Progress {
    verb: String,
    total: u64,
    changed: u64,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(verb: &str, total: u64) -> Self {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len}") {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(verb.to_owned());
            bar
        });
        Self { verb: verb.to_owned(), total, changed: 0, bar }
    }

    fn add(&mut self, changed: u64) {
        self.changed += changed;
        match &self.bar {
            Some(bar) => bar.set_position(self.changed),
            None => println!("{}: {} of {}", self.verb, self.changed, self.total),
        }
    }

    fn finish(self) -> u64 {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
        self.changed
    }
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
