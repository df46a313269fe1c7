//! The chaos test: real relay **processes** killed with SIGKILL, database connections terminated,
//! the database and the broker restarted, while producers enqueue keyed messages; then an
//! independent count of what reached the broker.
//!
//! The `outbox-chaos` binary (feature `chaos`) drives it:
//!
//! ```text
//! outbox-chaos run --store postgres --publisher kafka --messages 10000 --duration 45
//! ```
//!
//! One run:
//! 1. creates fresh tables and a fresh destination (Kafka topic, RabbitMQ quorum queue, Redis stream,
//!    NATS JetStream stream);
//! 2. starts `--relays` relay processes (this same binary, `outbox-chaos relay`), restarting any that
//!    exits;
//! 3. runs `--producers` producer tasks: each owns its keys, enqueues `--messages` in all in small
//!    transactions spread over `--duration`, and records every message as committed, rolled back,
//!    or of unknown outcome (a commit whose answer was lost);
//! 4. meanwhile injects the `--faults` on their schedules: SIGKILL a random relay (and start it
//!    again), terminate the run's database connections, restart the database, disturb the broker;
//! 5. stops the faults, waits until the outbox is drained, reads the destination back with the
//!    broker's own client library, lists the dead letters, and counts.
//!
//! It fails (exit code 1) on any committed message neither delivered nor dead-lettered, any
//! delivery of a message that was never committed, any altered payload, any per-key order
//! violation, more duplicates than the design allows (the messages the killed or cut-off relays
//! held claimed), or an outbox that does not drain.

mod brokers;
pub mod check;
mod faults;
mod relay;
mod report;
mod stores;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_engine::{BoxError, NewMessage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use brokers::BrokerKind;
pub use check::{Outcome, Tally};
pub use faults::Fault;
pub use relay::{relay_process, Defect, RelayProcessOptions};
pub use report::{FaultCounts, Report};
pub use stores::StoreKind;

use faults::{inject_faults, supervise};
use relay::{BROKER_URL_VAR, STORE_URL_VAR};
use report::Counters;
use stores::{ChaosStore, TxOutcome};

/// The outbox topic every message of a run is enqueued on.
const TOPIC: &str = "chaos.events";

/// The settings of a chaos run.
#[derive(Debug, Clone, clap::Args)]
pub struct RunOptions {
    /// The store.
    #[arg(long, value_enum)]
    pub store: StoreKind,
    /// The broker.
    #[arg(long, value_enum)]
    pub publisher: BrokerKind,
    /// The store's URL (default: `OUTBOX_TEST_POSTGRES_URL` / `OUTBOX_TEST_MYSQL_URL`, or a fresh
    /// SQLite file in the log directory).
    #[arg(long, env = "OUTBOX_CHAOS_STORE_URL", hide_env_values = true)]
    pub store_url: Option<String>,
    /// The broker's URL (default: `OUTBOX_TEST_KAFKA_BROKERS` / `OUTBOX_TEST_AMQP_URL` /
    /// `OUTBOX_TEST_REDIS_URL`).
    #[arg(long, env = "OUTBOX_CHAOS_BROKER_URL", hide_env_values = true)]
    pub broker_url: Option<String>,
    /// Messages to enqueue in all.
    #[arg(long, default_value_t = 10_000)]
    pub messages: usize,
    /// Seconds of producing and faults.
    #[arg(long, default_value_t = 45)]
    pub duration: u64,
    /// Producer tasks; each owns its keys.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Keys per producer.
    #[arg(long, default_value_t = 50)]
    pub keys: usize,
    /// Share of messages enqueued without a key (0 to 1).
    #[arg(long, default_value_t = 0.1)]
    pub keyless_share: f64,
    /// Relay processes.
    #[arg(long, default_value_t = 3)]
    pub relays: usize,
    /// Messages per claim in the relays.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Claim lease of the relays, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub lease_ms: u64,
    /// The faults to inject (comma-separated; default all that apply to the store).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub faults: Vec<Fault>,
    /// Seconds between relay kills.
    #[arg(long, default_value_t = 2.0)]
    pub kill_every: f64,
    /// Seconds between terminations of the database connections.
    #[arg(long, default_value_t = 7.0)]
    pub db_terminate_every: f64,
    /// Seconds between database restarts.
    #[arg(long, default_value_t = 30.0)]
    pub db_restart_every: f64,
    /// Seconds between broker disturbances.
    #[arg(long, default_value_t = 15.0)]
    pub broker_every: f64,
    /// Seconds a restarted broker stays down.
    #[arg(long, default_value_t = 2.0)]
    pub broker_down: f64,
    /// Shell command that restarts the database server and returns (default: PostgreSQL's
    /// `pg_ctlcluster ... restart -m fast`; MariaDB's `mariadb-admin shutdown` and a start).
    #[arg(long)]
    pub db_restart_cmd: Option<String>,
    /// Shell command that starts Redis after a restart fault has shut it down.
    #[arg(
        long,
        default_value = "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
    )]
    pub redis_start_cmd: String,
    /// Longest wait, in seconds, for the relays to drain the outbox once the faults stop.
    #[arg(long, default_value_t = 180)]
    pub drain_timeout: u64,
    /// Seed of the fault schedule and of the producers' choices (default: random, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where the relays' logs go (default: a fresh directory in the temp directory).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// PostgreSQL: how relays are woken (`notify`, `replication`, `polling`).
    #[arg(long, default_value = "notify", value_parser = ["notify", "replication", "polling"])]
    pub wake_ups: String,
    /// Plant a defect in the relays (to prove the test catches it).
    #[arg(long, value_enum)]
    pub defect: Option<Defect>,
    /// Print the report as JSON on stdout (the readable one goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// The URLs, names and schedule of one run, resolved from its options.
struct Plan {
    options: RunOptions,
    store_url: String,
    broker_url: String,
    table_prefix: String,
    destination: String,
    faults: Vec<Fault>,
    seed: u64,
    log_dir: PathBuf,
    db_restart_cmd: String,
}

impl Plan {
    fn new(options: RunOptions) -> Result<Self, BoxError> {
        if options.messages == 0 || options.producers == 0 || options.keys == 0 || options.relays == 0 {
            return Err("--messages, --producers, --keys and --relays must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&options.keyless_share) {
            return Err("--keyless-share must be between 0 and 1".into());
        }
        let periods = [options.kill_every, options.db_terminate_every, options.db_restart_every, options.broker_every];
        if periods.iter().any(|p| !p.is_finite() || *p <= 0.0) || !options.broker_down.is_finite() {
            return Err("fault intervals must be positive numbers of seconds".into());
        }
        let run = crate::env::unique_name("chaos");
        let log_dir = match &options.log_dir {
            Some(dir) => dir.clone(),
            None => std::env::temp_dir().join(format!("outbox-{run}")),
        };
        std::fs::create_dir_all(&log_dir)?;
        let from_env = |var: &str| {
            std::env::var(var).ok().filter(|v| !v.trim().is_empty()).ok_or_else(|| -> BoxError {
                format!("no URL given: pass it or set {var} (scripts/test-services.sh sets it)").into()
            })
        };
        let store_url = match (&options.store_url, options.store) {
            (Some(url), _) => url.clone(),
            (None, StoreKind::Postgres) => from_env("OUTBOX_TEST_POSTGRES_URL")?,
            (None, StoreKind::Mysql) => from_env("OUTBOX_TEST_MYSQL_URL")?,
            (None, StoreKind::Sqlite) => format!("sqlite://{}", log_dir.join("outbox.db").display()),
        };
        let broker_url = match (&options.broker_url, options.publisher) {
            (Some(url), _) => url.clone(),
            (None, BrokerKind::Kafka) => from_env("OUTBOX_TEST_KAFKA_BROKERS")?,
            (None, BrokerKind::Rabbitmq) => from_env("OUTBOX_TEST_AMQP_URL")?,
            (None, BrokerKind::Redis) => from_env("OUTBOX_TEST_REDIS_URL")?,
            (None, BrokerKind::Nats) => from_env("OUTBOX_TEST_NATS_URL")?,
        };
        let mut faults = if options.faults.is_empty() {
            vec![Fault::RelayKill, Fault::DbTerminate, Fault::DbRestart, Fault::Broker]
        } else {
            options.faults.clone()
        };
        faults.dedup();
        if !options.store.has_server() {
            faults.retain(|f| !matches!(f, Fault::DbTerminate | Fault::DbRestart));
        }
        let db_restart_cmd = options.db_restart_cmd.clone().unwrap_or_else(|| match options.store {
            StoreKind::Postgres => {
                "pg_ctlcluster --skip-systemctl-redirect \"$(ls /etc/postgresql | head -n1)\" main restart -m fast"
                    .into()
            }
            StoreKind::Mysql => "mariadb-admin -h 127.0.0.1 -u root shutdown; \
                 while pgrep -x mariadbd >/dev/null; do sleep 0.2; done; \
                 start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd"
                .into(),
            StoreKind::Sqlite => String::new(),
        });
        let seed = options.seed.unwrap_or_else(rand::random);
        Ok(Self {
            table_prefix: run.clone(),
            destination: format!("outbox_{run}"),
            options,
            store_url,
            broker_url,
            faults,
            seed,
            log_dir,
            db_restart_cmd,
        })
    }

    fn relay_command(&self, slot: usize) -> Result<Command, BoxError> {
        let o = &self.options;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("relay-{slot}.log")))?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("relay")
            .args(["--store", &value_name(o.store)])
            .args(["--table-prefix", &self.table_prefix])
            .args(["--publisher", &value_name(o.publisher)])
            .args(["--topic", TOPIC])
            .args(["--destination", &self.destination])
            .args(["--batch-size", &o.batch_size.to_string()])
            .args(["--lease-ms", &o.lease_ms.to_string()])
            .args(["--wake-ups", &o.wake_ups])
            .env(STORE_URL_VAR, &self.store_url)
            .env(BROKER_URL_VAR, &self.broker_url)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if let Some(defect) = o.defect {
            command.args(["--defect", &value_name(defect)]);
        }
        Ok(command)
    }

    /// What a cut-off relay may publish twice, times the faults that cut relays off.
    fn duplicate_bound(&self, faults: &FaultCounts) -> u64 {
        let per_relay = relay::most_claimed(self.options.batch_size) as u64;
        let relays = self.options.relays as u64;
        let cut_off = faults.relay_kills
            + faults.relay_exits
            + (faults.db_restarts + faults.db_terminate_rounds + faults.broker_faults) * relays;
        cut_off * per_relay
    }
}

/// The name clap knows a value by (`--store postgres`).
fn value_name(value: impl clap::ValueEnum) -> String {
    value.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
}

/// Runs a shell command to its end; an error carries its output.
pub(crate) async fn shell(command: &str) -> Result<(), BoxError> {
    let output = Command::new("sh").arg("-c").arg(command).stdin(std::process::Stdio::null()).output().await?;
    if !output.status.success() {
        return Err(format!(
            "`{command}` failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// Runs a chaos run to its end and returns its report.
pub async fn run(options: RunOptions) -> Result<Report, BoxError> {
    let plan = Arc::new(Plan::new(options)?);
    let o = &plan.options;
    eprintln!(
        "chaos: {:?} -> {:?}, {} messages over {} s, {} relays, faults {:?}, seed {}, logs in {}",
        o.store,
        o.publisher,
        o.messages,
        o.duration,
        o.relays,
        plan.faults,
        plan.seed,
        plan.log_dir.display()
    );
    let store = ChaosStore::open(o.store, &plan.store_url, &plan.table_prefix, &o.wake_ups).await?;
    store.migrate().await?;
    brokers::prepare(o.publisher, &plan.broker_url, &plan.destination).await?;

    let counters = Arc::new(Counters::default());
    let stop_relays = CancellationToken::new();
    let mut kill_switches = Vec::new();
    let mut supervisors = Vec::new();
    for slot in 0..o.relays {
        let (kill, killed) = mpsc::channel(1);
        kill_switches.push(kill);
        supervisors.push(tokio::spawn(supervise(plan.clone(), slot, killed, stop_relays.clone(), counters.clone())));
    }

    let ledger = Arc::new(Mutex::new(Vec::with_capacity(o.messages)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(o.duration);
    let producers: Vec<_> = (0..o.producers)
        .map(|p| tokio::spawn(produce(plan.clone(), store.clone(), p, deadline, ledger.clone())))
        .collect();
    let stop_faults = CancellationToken::new();
    let faults =
        tokio::spawn(inject_faults(plan.clone(), store.clone(), kill_switches, stop_faults.clone(), counters.clone()));

    tokio::time::sleep_until(deadline).await;
    for producer in producers {
        producer.await?;
    }
    stop_faults.cancel();
    faults.await?;

    let drain_started = tokio::time::Instant::now();
    let pending_left = drain(&store, Duration::from_secs(o.drain_timeout)).await;
    let drain_s = drain_started.elapsed().as_secs_f64();
    stop_relays.cancel();
    for supervisor in supervisors {
        supervisor.await?;
    }

    let sent = std::mem::take(&mut *ledger.lock().map_err(|_| "ledger poisoned")?);
    let expected = sent.iter().filter(|s| s.outcome == Outcome::Committed).count();
    let deliveries = brokers::read_all(o.publisher, &plan.broker_url, &plan.destination, expected).await?;
    let dead: HashSet<_> =
        store.dyn_store().dead_letters(usize::MAX >> 1).await?.into_iter().map(|d| d.message.id).collect();
    let tally = Tally::count(&sent, &deliveries, &dead);

    let faults = counters.snapshot();
    let duplicate_bound = plan.duplicate_bound(&faults);
    let mut failures = tally.failures();
    if pending_left > 0 {
        failures.push(format!(
            "{pending_left} messages still in the outbox {} s after the faults stopped",
            o.drain_timeout
        ));
    }
    if o.publisher.deduplicates() && tally.duplicates > 0 {
        failures.push(format!(
            "{} duplicates, yet the broker drops a message id it has stored within its duplicate window",
            tally.duplicates
        ));
    }
    if tally.duplicates as u64 > duplicate_bound {
        failures.push(format!("{} duplicates, more than the {duplicate_bound} the faults allow", tally.duplicates));
    }
    if faults.relay_kills == 0 && plan.faults.contains(&Fault::RelayKill) {
        failures.push("no relay was killed: the run proved nothing about crashes".into());
    }
    if faults.fault_errors > 0 {
        failures.push(format!("{} faults could not be injected (see the messages above)", faults.fault_errors));
    }
    if tally.expected == 0 {
        failures.push("no message was committed".into());
    }
    store.drop_tables(&plan.table_prefix).await;
    brokers::clean_up(o.publisher, &plan.broker_url, &plan.destination).await;
    if o.store == StoreKind::Sqlite && o.store_url.is_none() {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(plan.log_dir.join(format!("outbox.db{suffix}")));
        }
    }
    Ok(Report {
        store: o.store,
        publisher: o.publisher,
        defect: o.defect,
        seed: plan.seed,
        faults_enabled: plan.faults.clone(),
        duration_s: o.duration,
        drain_s,
        pending_left,
        faults,
        tally,
        duplicate_bound,
        failures,
        log_dir: plan.log_dir.clone(),
    })
}

/// One producer: owns keys `p{producer}-k{n}`, enqueues its share of the messages in transactions of
/// one to four, spread over the run, and records each message's outcome.
async fn produce(
    plan: Arc<Plan>,
    store: ChaosStore,
    producer: usize,
    deadline: tokio::time::Instant,
    ledger: Arc<Mutex<Vec<check::Sent>>>,
) {
    let o = &plan.options;
    let share = o.messages / o.producers + usize::from(producer < o.messages % o.producers);
    let mut rng = StdRng::seed_from_u64(plan.seed.wrapping_add(producer as u64 + 1));
    let mut next_seq = vec![0u64; o.keys];
    let mut keyless_seq = 0u64;
    let started = tokio::time::Instant::now();
    let span = deadline.saturating_duration_since(started).mul_f64(0.9);
    let mut done = 0;
    while done < share {
        // Keep pace: the producer's n-th message is due n/share of the way through the run.
        let due = started + span.mul_f64(done as f64 / share as f64);
        tokio::time::sleep_until(due).await;
        let size = rng.random_range(1..=4).min(share - done);
        let mut messages = Vec::with_capacity(size);
        let mut entries = Vec::with_capacity(size);
        for _ in 0..size {
            let (key, seq) = if rng.random_bool(o.keyless_share) {
                keyless_seq += 1;
                (None, keyless_seq)
            } else {
                let k = rng.random_range(0..o.keys);
                next_seq[k] += 1;
                (Some(format!("p{producer}-k{k}")), next_seq[k])
            };
            let payload = format!("{{\"producer\":{producer},\"key\":{key:?},\"seq\":{seq}}}").into_bytes();
            let mut message = NewMessage::new(TOPIC, payload.clone());
            if let Some(key) = &key {
                message = message.key(key.clone());
            }
            entries.push(check::Sent { id: message.id(), key, seq, payload, outcome: Outcome::Committed });
            messages.push(message);
        }
        let outcome = match store.enqueue_tx(messages).await {
            TxOutcome::Committed => Outcome::Committed,
            TxOutcome::Unknown => Outcome::Unknown,
            TxOutcome::RolledBack => Outcome::RolledBack,
        };
        if outcome != Outcome::RolledBack {
            done += size;
        } else {
            // The database is away: do not burn through the share while it is.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Ok(mut ledger) = ledger.lock() {
            ledger.extend(entries.into_iter().map(|e| check::Sent { outcome, ..e }));
        }
        if tokio::time::Instant::now() > deadline + Duration::from_secs(60) {
            eprintln!("chaos: producer {producer} gave up 60 s after the run's end with {done} of {share} messages");
            return;
        }
    }
}

/// Waits until the outbox holds no pending message (seen twice in a row); returns how many were
/// still pending when `timeout` ran out (0: drained).
async fn drain(store: &ChaosStore, timeout: Duration) -> u64 {
    let store = store.dyn_store();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut empty_in_a_row = 0;
    let mut pending = u64::MAX;
    while tokio::time::Instant::now() < deadline {
        match store.stats().await {
            Ok(stats) if stats.pending == 0 => {
                empty_in_a_row += 1;
                if empty_in_a_row == 2 {
                    return 0;
                }
            }
            Ok(stats) => {
                empty_in_a_row = 0;
                pending = stats.pending;
            }
            Err(e) => eprintln!("chaos: stats failed while draining: {}", e.report()),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pending
}
