//! The outbox benchmark harness. One run measures, for a store and a publisher, the raw limits of
//! each (the broker publishing alone, the database claiming and acknowledging alone), the relay's
//! throughput and its ratio to the lower raw limit, the machine's CPU time per message in each of
//! those three runs (Linux), commit -> broker-ack latency at a steady load,
//! the enqueue overhead on a one-row business transaction, the transactions a second concurrent
//! producers commit with and without an outbox message, the claim cost with 1,000,000 old rows, and the
//! queries an idle relay issues. Prints a table and writes JSON.
//!
//! ```text
//! cargo run --release -p outbox-bench -- --store postgres --publisher kafka --messages 100000
//! ```
//! Options:
//! - `--store postgres|mysql|sqlite`, `--publisher kafka|rabbitmq|redis|memory`;
//! - `--messages N`, `--payload BYTES`, `--keys N` (ordering keys, round robin; default 0 = keyless),
//!   `--hot-key-share F` (that share of the messages on one hot key, the rest over `--keys`);
//! - `--key-sweep SPEC[,SPEC]` (relay and raw database throughput for each key mix, against keyless in
//!   the same run; a SPEC is `N` keys, or `hot:F:N`);
//! - `--batch N`, `--concurrency N` (workers per relay; default the relay's, 2), `--in-flight N`
//!   (batches in flight per worker; default the relay's, 2), `--relays N` (relay instances, each with its
//!   own pool; default 1), `--rate MSG_PER_S` (latency load), `--poll-interval MS` (the latency run's
//!   relay; default the relay's, 1 s), `--busy-poll-interval MS` (the latency run's relay; default
//!   none), `--producers N` (concurrent producers; default 8),
//!   `--old-rows N` (claim-cost test);
//! - `--repeat N` (throughput and enqueue rounds, median reported; default 3), `--sweep-batch N[,N]` (throughput
//!   at each batch size) with `--plot FILE.svg`;
//! - `--kafka-setting KEY=VALUE` (repeatable; a librdkafka producer setting such as `linger.ms=1`);
//! - `--amqp-queue quorum|classic` (the type of the RabbitMQ queue the harness declares; default quorum);
//! - `--memory-delay MS` (the memory publisher sleeps this long per publish call: a broker's round trip);
//! - `--durable-relay-commits` (PostgreSQL: claims and acknowledgements wait for the WAL flush; see
//!   `StoreOptions::durable_relay_commits`);
//! - `--no-enqueue-notifications` (PostgreSQL: enqueue without `pg_notify`; see
//!   `StoreOptions::enqueue_notifications`);
//! - `--json FILE`, `--skip NAME[,NAME]` (raw, relay, latency, enqueue, producers, claim, idle).
//!
//! URLs come from the `OUTBOX_TEST_*` variables (`scripts/test-services.sh` sets them).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox_brokers::{kafka, rabbitmq, redis as redis_pub};
use outbox_engine::memory::MemoryPublisher;
use outbox_engine::{
    CancellationToken, DeadLetter, Dispatcher, Enqueue, Failure, Message, MessageId, NewMessage, OutboxStats,
    PublishError, Publisher, Relay, RelayId, RelayOptions, Retry, Store,
};
use outbox_sqlx::mysql::MySqlStore;
use outbox_sqlx::postgres::PostgresStore;
use outbox_sqlx::sqlite::SqliteStore;
use outbox_sqlx::StoreOptions;
use tokio_util::task::AbortOnDropHandle;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What `--help` prints: the options, as in the crate docs.
const USAGE: &str = "\
outbox-bench: raw limits, relay throughput, latency, enqueue overhead, producer throughput, claim
cost and idle cost for one store and one publisher. URLs come from the OUTBOX_TEST_* variables
(`source scripts/test-services.sh` sets them).

usage: cargo run --release -p outbox-bench -- [OPTIONS]

  --store postgres|mysql|sqlite            the store (default postgres)
  --publisher kafka|rabbitmq|redis|memory  the publisher (default kafka)
  --messages N           backlog size for the throughput runs (default 100000)
  --payload BYTES        payload size (default 256)
  --keys N               ordering keys, round robin (default 0 = keyless)
  --hot-key-share F      that share of the messages (0-1) on one hot key, the rest over --keys
  --key-sweep SPEC[,SPEC]  throughput for each key mix against keyless in the same run; SPEC is N
                         (N keys, round robin) or hot:F:N (share F on one key, the rest over N keys)
  --batch N              claim batch size (default 1000)
  --concurrency N        workers per relay (default: the relay's)
  --in-flight N          batches in flight per worker (default: the relay's)
  --relays N             relay instances, each with its own pool (default 1)
  --rate MSG_PER_S       offered load of the latency test (default 1000)
  --poll-interval MS     the latency test's relay polls this often (default: the relay's, 1000)
  --busy-poll-interval MS  the latency test's relay polls this soon after finding messages (default none)
  --producers N          concurrent producers of the producer-throughput test (default 8)
  --idle-listeners N     PostgreSQL: connections LISTENing on other channels during the enqueue
                         test, as other relays or applications in the same database (default 0)
  --old-rows N           old rows for the claim-cost test (default 1000000)
  --repeat N             throughput and enqueue rounds, the median is reported (default 3)
  --sweep-batch N[,N]    throughput at each batch size; --plot FILE.svg draws it
  --kafka-setting K=V    a librdkafka producer setting (repeatable)
  --amqp-queue TYPE      RabbitMQ queue type: quorum (default) or classic
  --memory-delay MS      memory publisher: sleep this long in every publish call, standing in for a
                         broker's confirm round trip (default 0)
  --durable-relay-commits  PostgreSQL: relay commits wait for the WAL flush
  --no-enqueue-notifications  PostgreSQL: enqueue without pg_notify (relays then poll)
  --json FILE            also write the results as JSON
  --skip NAME[,NAME]     skip parts: raw, relay, latency, enqueue, producers, claim, idle
  -h, --help             print this
";

#[derive(Debug, Clone)]
struct Args {
    store: String,
    publisher: String,
    messages: usize,
    payload: usize,
    batch: usize,
    concurrency: usize,
    in_flight: usize,
    memory_delay: Duration,
    rate: usize,
    poll_interval: Duration,
    busy_poll_interval: Option<Duration>,
    producers: usize,
    idle_listeners: usize,
    old_rows: usize,
    keys: KeyMix,
    key_sweep: Vec<KeyMix>,
    relays: usize,
    kafka_settings: Vec<(String, String)>,
    amqp_queue: rabbitmq::QueueType,
    repeat: usize,
    sweep: Vec<usize>,
    plot: Option<String>,
    json: Option<String>,
    skip: Vec<String>,
    durable_relay_commits: bool,
    enqueue_notifications: bool,
}

/// Store options from the command line.
fn store_options(args: &Args) -> StoreOptions {
    StoreOptions::default()
        .durable_relay_commits(args.durable_relay_commits)
        .enqueue_notifications(args.enqueue_notifications)
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args {
        store: "postgres".into(),
        publisher: "kafka".into(),
        messages: 100_000,
        payload: 256,
        batch: 1000,
        concurrency: RelayOptions::default().concurrency,
        in_flight: RelayOptions::default().batches_in_flight,
        memory_delay: Duration::ZERO,
        rate: 1000,
        poll_interval: RelayOptions::default().poll_interval,
        busy_poll_interval: None,
        producers: 8,
        idle_listeners: 0,
        old_rows: 1_000_000,
        keys: KeyMix::KEYLESS,
        key_sweep: Vec::new(),
        relays: 1,
        kafka_settings: Vec::new(),
        amqp_queue: rabbitmq::QueueType::Quorum,
        repeat: 3,
        sweep: Vec::new(),
        plot: None,
        json: None,
        skip: Vec::new(),
        durable_relay_commits: false,
        enqueue_notifications: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--store" => args.store = value()?,
            "--publisher" => args.publisher = value()?,
            "--messages" => args.messages = number(value()?)?,
            "--payload" => args.payload = number(value()?)?,
            "--batch" => args.batch = number(value()?)?,
            "--concurrency" => args.concurrency = number(value()?)?,
            "--in-flight" => args.in_flight = number(value()?)?,
            "--memory-delay" => {
                let ms: f64 = value()?.parse().map_err(|_| "--memory-delay takes milliseconds, e.g. 5 or 0.5")?;
                if !(0.0..=60_000.0).contains(&ms) {
                    return Err("--memory-delay must be between 0 and 60000 ms".into());
                }
                args.memory_delay = Duration::from_secs_f64(ms / 1000.0);
            }
            "--rate" => args.rate = number(value()?)?,
            "--poll-interval" => args.poll_interval = Duration::from_millis(number(value()?)? as u64),
            "--busy-poll-interval" => args.busy_poll_interval = Some(Duration::from_millis(number(value()?)? as u64)),
            "--producers" => args.producers = number(value()?)?,
            "--idle-listeners" => args.idle_listeners = number(value()?)?,
            "--old-rows" => args.old_rows = number(value()?)?,
            "--keys" => args.keys.keys = number(value()?)?,
            "--hot-key-share" => args.keys.hot_share = KeyMix::share(&value()?)?,
            "--key-sweep" => {
                args.key_sweep = value()?.split(',').map(|spec| KeyMix::parse(spec.trim())).collect::<Result<_, _>>()?
            }
            "--relays" => args.relays = number(value()?)?,
            "--kafka-setting" => {
                let setting = value()?;
                let (key, val) =
                    setting.split_once('=').ok_or_else(|| format!("{flag} takes key=value, got {setting}"))?;
                args.kafka_settings.push((key.to_owned(), val.to_owned()));
            }
            "--amqp-queue" => {
                args.amqp_queue = match value()?.as_str() {
                    "quorum" => rabbitmq::QueueType::Quorum,
                    "classic" => rabbitmq::QueueType::Classic,
                    other => return Err(format!("--amqp-queue takes quorum or classic, got {other}").into()),
                }
            }
            "--repeat" => args.repeat = number(value()?)?.max(1),
            "--sweep-batch" => {
                args.sweep = value()?.split(',').map(|v| number(v.trim().to_owned())).collect::<Result<_, _>>()?
            }
            "--plot" => args.plot = Some(value()?),
            "--json" => args.json = Some(value()?),
            "--skip" => args.skip = value()?.split(',').map(str::to_owned).collect(),
            "--durable-relay-commits" => args.durable_relay_commits = true,
            "--no-enqueue-notifications" => args.enqueue_notifications = false,
            "--help" | "-h" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    if args.batch == 0
        || args.concurrency == 0
        || args.in_flight == 0
        || args.rate == 0
        || args.poll_interval.is_zero()
        || args.producers == 0
        || args.relays == 0
        || args.sweep.contains(&0)
    {
        return Err(
            "--batch, --concurrency, --in-flight, --relays, --rate, --poll-interval, --producers and --sweep-batch values must be positive".into()
        );
    }
    Ok(args)
}

fn env(var: &str) -> Result<String, BoxError> {
    std::env::var(var).map_err(|_| format!("{var} is not set; run `source scripts/test-services.sh` first").into())
}

/// A store handle of any backend, with what the harness needs beyond `Store`.
#[derive(Clone)]
enum AnyStore {
    Postgres(PostgresStore),
    MySql(MySqlStore),
    Sqlite(SqliteStore),
}

impl AnyStore {
    async fn open(kind: &str, options: StoreOptions) -> Result<Self, BoxError> {
        let prefix = format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let options = options.table_prefix(&prefix)?;
        let store = match kind {
            "postgres" => {
                Self::Postgres(PostgresStore::connect_with(&env("OUTBOX_TEST_POSTGRES_URL")?, options).await?)
            }
            "mysql" => Self::MySql(MySqlStore::connect_with(&env("OUTBOX_TEST_MYSQL_URL")?, options).await?),
            "sqlite" => {
                let path = std::env::temp_dir().join(format!("{prefix}.db"));
                let base = SqliteStore::connect(&format!("sqlite://{}", path.display())).await?;
                Self::Sqlite(SqliteStore::new(base.pool().clone(), options)?)
            }
            other => return Err(format!("unknown store {other}").into()),
        };
        match &store {
            Self::Postgres(s) => s.migrate().await?,
            Self::MySql(s) => s.migrate().await?,
            Self::Sqlite(s) => s.migrate().await?,
        }
        Ok(store)
    }

    fn dyn_store(&self) -> Arc<dyn Store> {
        match self {
            Self::Postgres(s) => Arc::new(s.clone()),
            Self::MySql(s) => Arc::new(s.clone()),
            Self::Sqlite(s) => Arc::new(s.clone()),
        }
    }

    /// Enqueues `messages` in transactions of `per_tx`, from `producers` concurrent producers.
    async fn fill(&self, messages: Vec<NewMessage>, per_tx: usize, producers: usize) -> Result<(), BoxError> {
        let chunks: Vec<Vec<NewMessage>> = messages.chunks(per_tx).map(<[NewMessage]>::to_vec).collect();
        let queue = Arc::new(Mutex::new(chunks));
        let mut tasks = Vec::new();
        for _ in 0..producers {
            let (queue, store) = (queue.clone(), self.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let Some(chunk) = queue.lock().map_err(|_| "poisoned")?.pop() else {
                        return Ok::<(), BoxError>(());
                    };
                    store.enqueue_tx(chunk, None).await?;
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok(())
    }

    /// One transaction: an optional business row, then the messages.
    async fn enqueue_tx(&self, messages: Vec<NewMessage>, business_row: Option<i64>) -> Result<(), BoxError> {
        match self {
            Self::Postgres(s) => {
                let mut tx = s.pool().begin().await?;
                if let Some(v) = business_row {
                    sqlx::query("INSERT INTO bench_business (v) VALUES ($1)").bind(v).execute(&mut *tx).await?;
                }
                if !messages.is_empty() {
                    s.enqueue_batch(&mut *tx, messages).await?;
                }
                tx.commit().await?;
            }
            Self::MySql(s) => {
                let mut tx = s.pool().begin().await?;
                if let Some(v) = business_row {
                    sqlx::query("INSERT INTO bench_business (v) VALUES (?)").bind(v).execute(&mut *tx).await?;
                }
                if !messages.is_empty() {
                    s.enqueue_batch(&mut *tx, messages).await?;
                }
                tx.commit().await?;
            }
            Self::Sqlite(s) => {
                let mut tx = s.pool().begin().await?;
                if let Some(v) = business_row {
                    sqlx::query("INSERT INTO bench_business (v) VALUES (?)").bind(v).execute(&mut *tx).await?;
                }
                if !messages.is_empty() {
                    s.enqueue_batch(&mut *tx, messages).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// One transaction: a business row, then instead of an outbox message either a bare `SELECT 1`
    /// (one more round trip) or a one-row insert into a second plain table (one more row written).
    async fn second_statement_tx(&self, business_row: i64, second_row: bool) -> Result<(), BoxError> {
        let placeholder = if matches!(self, Self::Postgres(_)) { "$1" } else { "?" };
        let business = format!("INSERT INTO bench_business (v) VALUES ({placeholder})");
        let second = if second_row {
            format!("INSERT INTO bench_business_2 (v) VALUES ({placeholder})")
        } else {
            "SELECT 1".to_owned()
        };
        match self {
            Self::Postgres(s) => {
                let mut tx = s.pool().begin().await?;
                sqlx::query(&business).bind(business_row).execute(&mut *tx).await?;
                let second = sqlx::query(&second);
                if second_row { second.bind(business_row) } else { second }.execute(&mut *tx).await?;
                tx.commit().await?;
            }
            Self::MySql(s) => {
                let mut tx = s.pool().begin().await?;
                sqlx::query(&business).bind(business_row).execute(&mut *tx).await?;
                let second = sqlx::query(&second);
                if second_row { second.bind(business_row) } else { second }.execute(&mut *tx).await?;
                tx.commit().await?;
            }
            Self::Sqlite(s) => {
                let mut tx = s.pool().begin().await?;
                sqlx::query(&business).bind(business_row).execute(&mut *tx).await?;
                let second = sqlx::query(&second);
                if second_row { second.bind(business_row) } else { second }.execute(&mut *tx).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Refreshes the planner statistics after a bulk fill, as autovacuum does for a table in steady use
    /// (a never-analyzed table of 100,000 fresh rows gets a sort-based claim plan: see docs/benchmarks.md).
    async fn analyze(&self) -> Result<(), BoxError> {
        match self {
            Self::Postgres(s) => {
                sqlx::query(&format!("ANALYZE {}", s.messages_table())).execute(s.pool()).await?;
            }
            Self::MySql(s) => {
                let table = sqlite_or_mysql_table(self);
                sqlx::query(&format!("ANALYZE TABLE {table}")).execute(s.pool()).await?;
            }
            Self::Sqlite(s) => {
                sqlx::query("ANALYZE").execute(s.pool()).await?;
            }
        }
        Ok(())
    }

    /// The business table of the enqueue test, and a second one like it.
    async fn create_business_table(&self) -> Result<(), BoxError> {
        for table in ["bench_business", "bench_business_2"] {
            match self {
                Self::Postgres(s) => {
                    sqlx::query(&format!("CREATE TABLE IF NOT EXISTS {table} (id BIGSERIAL PRIMARY KEY, v BIGINT)"))
                        .execute(s.pool())
                        .await?;
                }
                Self::MySql(s) => {
                    sqlx::query(&format!(
                        "CREATE TABLE IF NOT EXISTS {table} (id BIGINT AUTO_INCREMENT PRIMARY KEY, v BIGINT)"
                    ))
                    .execute(s.pool())
                    .await?;
                }
                Self::Sqlite(s) => {
                    sqlx::query(&format!("CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY, v INTEGER)"))
                        .execute(s.pool())
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Another handle on the same tables with its own connection pool (SQLite: the same pool, as
    /// SQLite has one writer anyway).
    async fn reopen(&self) -> Result<Self, BoxError> {
        Ok(match self {
            Self::Postgres(s) => Self::Postgres(
                PostgresStore::connect_with(&env("OUTBOX_TEST_POSTGRES_URL")?, s.options().clone()).await?,
            ),
            Self::MySql(s) => {
                Self::MySql(MySqlStore::connect_with(&env("OUTBOX_TEST_MYSQL_URL")?, s.options().clone()).await?)
            }
            Self::Sqlite(s) => Self::Sqlite(SqliteStore::new(s.pool().clone(), s.options().clone())?),
        })
    }

    /// PostgreSQL: how many connections to this database are listening for notifications (other stores:
    /// `None`).
    async fn listening_connections(&self) -> Result<Option<i64>, BoxError> {
        let Self::Postgres(s) = self else { return Ok(None) };
        let sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN %'";
        Ok(Some(sqlx::query_scalar(sql).fetch_one(s.pool()).await?))
    }

    /// PostgreSQL: `n` connections of their own (not from the store's pool) listening on channels
    /// nobody notifies, until the returned tasks are dropped (other stores: none).
    async fn idle_listeners(&self, n: usize) -> Result<Vec<AbortOnDropHandle<()>>, BoxError> {
        let Self::Postgres(s) = self else { return Ok(Vec::new()) };
        let mut tasks = Vec::new();
        for i in 0..n {
            let mut listener = sqlx::postgres::PgListener::connect(&env("OUTBOX_TEST_POSTGRES_URL")?).await?;
            listener.listen(&format!("{}_idle_{i}", s.channel())).await?;
            tasks.push(AbortOnDropHandle::new(tokio::spawn(async move { while listener.recv().await.is_ok() {} })));
        }
        Ok(tasks)
    }

    /// Drops this store's tables and lets the handle go, which stops its PostgreSQL listener: every
    /// `LISTEN`ing connection in the database is woken by every notifying commit, whatever its
    /// channel, so a finished part's listener would slow down the parts after it.
    /// A SQLite store's database file is deleted too.
    async fn close(self) -> Result<(), BoxError> {
        self.drop_tables().await?;
        if let Self::Sqlite(s) = &self {
            let file: String = sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_one(s.pool())
                .await?;
            s.pool().close().await;
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{file}{suffix}"));
            }
        }
        Ok(())
    }

    /// Drops the tables this store created (the benchmark's tables are throwaway, named per run).
    async fn drop_tables(&self) -> Result<(), BoxError> {
        let schema = match self {
            Self::MySql(s) => s.schema_sql().to_owned(),
            Self::Sqlite(s) => s.schema_sql().to_owned(),
            Self::Postgres(s) => s.schema_sql().to_owned(),
        };
        let words: Vec<&str> = schema.split_whitespace().collect();
        let tables: Vec<&str> =
            words.windows(6).filter(|w| w[..5] == ["CREATE", "TABLE", "IF", "NOT", "EXISTS"]).map(|w| w[5]).collect();
        for table in tables {
            let drop = format!("DROP TABLE IF EXISTS {table}");
            match self {
                Self::Postgres(s) => sqlx::query(&drop).execute(s.pool()).await.map(|_| ())?,
                Self::MySql(s) => sqlx::query(&drop).execute(s.pool()).await.map(|_| ())?,
                Self::Sqlite(s) => sqlx::query(&drop).execute(s.pool()).await.map(|_| ())?,
            }
        }
        if let Self::Sqlite(s) = self {
            sqlx::query("VACUUM").execute(s.pool()).await?;
        }
        Ok(())
    }

    async fn drop_business_table(&self) -> Result<(), BoxError> {
        for table in ["bench_business", "bench_business_2"] {
            let drop = format!("DROP TABLE IF EXISTS {table}");
            match self {
                Self::Postgres(s) => sqlx::query(&drop).execute(s.pool()).await.map(|_| ())?,
                Self::MySql(s) => sqlx::query(&drop).execute(s.pool()).await.map(|_| ())?,
                Self::Sqlite(s) => sqlx::query(&drop).execute(s.pool()).await.map(|_| ())?,
            }
        }
        Ok(())
    }

    /// Inserts `n` already-published rows straight into the messages table (retention mode layout).
    async fn add_old_rows(&self, n: usize, table: &str) -> Result<(), BoxError> {
        match self {
            Self::Postgres(s) => {
                sqlx::query(&format!(
                    "INSERT INTO {table} (id, topic, payload, published_at) \
                     SELECT gen_random_uuid(), 'old', '\\x00', now() - interval '1 hour' FROM generate_series(1, $1)"
                ))
                .bind(n as i64)
                .execute(s.pool())
                .await?;
                sqlx::query(&format!("ANALYZE {table}")).execute(s.pool()).await?;
            }
            Self::MySql(s) => {
                sqlx::query(&format!(
                    "INSERT INTO {table} (id, topic, payload, headers, created_at, available_at, published_at) \
                     SELECT UUID(), 'old', x'00', '{{}}', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) \
                     FROM seq_1_to_{n}"
                ))
                .execute(s.pool())
                .await?;
                sqlx::query(&format!("ANALYZE TABLE {table}")).execute(s.pool()).await?;
            }
            Self::Sqlite(s) => {
                sqlx::query(&format!(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) \
                     INSERT INTO {table} (id, topic, payload, headers, created_at, available_at, published_at) \
                     SELECT 'old-' || i, 'old', x'00', '{{}}', 0, 0, 1 FROM n"
                ))
                .bind(n as i64)
                .execute(s.pool())
                .await?;
                sqlx::query("ANALYZE").execute(s.pool()).await?;
            }
        }
        Ok(())
    }

    fn messages_table(&self, prefix_hint: &str) -> String {
        match self {
            Self::Postgres(s) => s.messages_table().to_owned(),
            Self::MySql(_) | Self::Sqlite(_) => prefix_hint.to_owned(),
        }
    }
}

/// Counts the claims (the relay's queries when idle), records when each message was claimed, and can
/// turn notification wake-ups off.
#[derive(Debug)]
struct Instrumented {
    inner: Arc<dyn Store>,
    claims: AtomicU64,
    claimed_at: Mutex<HashMap<MessageId, Instant>>,
    notifications: bool,
}

impl Instrumented {
    fn new(inner: Arc<dyn Store>, notifications: bool) -> Self {
        Self { inner, claims: AtomicU64::new(0), claimed_at: Mutex::new(HashMap::new()), notifications }
    }
}

#[async_trait]
impl Store for Instrumented {
    async fn claim(&self, owner: RelayId, limit: usize, lease: Duration) -> outbox_engine::Result<Vec<Message>> {
        self.claims.fetch_add(1, Ordering::Relaxed);
        let batch = self.inner.claim(owner, limit, lease).await?;
        if !batch.is_empty() {
            let now = Instant::now();
            let mut claimed_at = self.claimed_at.lock().unwrap_or_else(|p| p.into_inner());
            claimed_at.extend(batch.iter().map(|m| (m.id, now)));
        }
        Ok(batch)
    }
    async fn extend_lease(&self, owner: RelayId, ids: &[MessageId], lease: Duration) -> outbox_engine::Result<()> {
        self.inner.extend_lease(owner, ids, lease).await
    }
    async fn release(&self, owner: RelayId, ids: &[MessageId]) -> outbox_engine::Result<()> {
        self.inner.release(owner, ids).await
    }
    async fn acknowledge(&self, ids: &[MessageId]) -> outbox_engine::Result<()> {
        self.inner.acknowledge(ids).await
    }
    async fn reschedule(&self, owner: RelayId, retries: &[Retry]) -> outbox_engine::Result<()> {
        self.inner.reschedule(owner, retries).await
    }
    async fn dead_letter(&self, owner: RelayId, failures: &[Failure]) -> outbox_engine::Result<()> {
        self.inner.dead_letter(owner, failures).await
    }
    async fn dead_letters(&self, limit: usize) -> outbox_engine::Result<Vec<DeadLetter>> {
        self.inner.dead_letters(limit).await
    }
    async fn replay_dead_letters(&self, ids: &[MessageId]) -> outbox_engine::Result<u64> {
        self.inner.replay_dead_letters(ids).await
    }
    async fn purge_dead_letters(&self, ids: &[MessageId]) -> outbox_engine::Result<u64> {
        self.inner.purge_dead_letters(ids).await
    }
    async fn purge_published(&self, older_than: Duration, limit: usize) -> outbox_engine::Result<u64> {
        self.inner.purge_published(older_than, limit).await
    }
    async fn stats(&self) -> outbox_engine::Result<OutboxStats> {
        self.inner.stats().await
    }
    fn wakes_on_commit(&self) -> bool {
        self.notifications && self.inner.wakes_on_commit()
    }
    async fn wait_for_work(&self, timeout: Duration) {
        if self.notifications {
            self.inner.wait_for_work(timeout).await;
        } else {
            tokio::time::sleep(timeout).await;
        }
    }
}

/// Records when the broker acknowledged each message; the producers record when each committed.
#[derive(Debug)]
struct LatencyProbe {
    inner: Arc<dyn Publisher>,
    acked: Mutex<HashMap<MessageId, Instant>>,
}

#[async_trait]
impl Publisher for LatencyProbe {
    async fn publish(&self, batch: &[Message]) -> Vec<Result<(), PublishError>> {
        let outcomes = self.inner.publish(batch).await;
        let now = Instant::now();
        let mut acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        for (message, outcome) in batch.iter().zip(&outcomes) {
            if outcome.is_ok() {
                acked.insert(message.id, now);
            }
        }
        outcomes
    }
}

async fn make_publisher(kind: &str, topic: &str, args: &Args) -> Result<Arc<dyn Publisher>, BoxError> {
    Ok(match kind {
        "kafka" => {
            let mut options = kafka::KafkaOptions::new(env("OUTBOX_TEST_KAFKA_BROKERS")?);
            for (key, value) in &args.kafka_settings {
                options = options.setting(key, value);
            }
            Arc::new(kafka::KafkaPublisher::new(options)?)
        }
        "rabbitmq" => {
            let url = env("OUTBOX_TEST_AMQP_URL")?;
            rabbitmq::declare_queue(&url, topic, args.amqp_queue).await?;
            Arc::new(rabbitmq::RabbitMqPublisher::new(rabbitmq::RabbitMqOptions::from_url(&url)?))
        }
        "redis" => Arc::new(redis_pub::RedisPublisher::new(
            redis_pub::RedisOptions::from_url(&env("OUTBOX_TEST_REDIS_URL")?)?.max_len(200_000),
        )?),
        "memory" => Arc::new(MemoryPublisher::new().with_delay(args.memory_delay)),
        other => return Err(format!("unknown publisher {other}").into()),
    })
}

/// Empties the RabbitMQ queue between rounds: a queue that keeps growing by 100,000 messages a round
/// slows RabbitMQ down and would skew later rounds. (Redis streams are capped; Kafka keeps its log.)
async fn reset_broker(args: &Args, topic: &str) -> Result<(), BoxError> {
    if args.publisher == "rabbitmq" {
        let url = env("OUTBOX_TEST_AMQP_URL")?;
        rabbitmq::delete_queue(&url, topic).await?;
        rabbitmq::declare_queue(&url, topic, args.amqp_queue).await?;
    }
    Ok(())
}

async fn cleanup_broker(kind: &str, topic: &str) {
    if kind == "rabbitmq" {
        if let Ok(url) = env("OUTBOX_TEST_AMQP_URL") {
            let _ = rabbitmq::delete_queue(&url, topic).await;
        }
    }
}

/// How the messages of a run are keyed: a `hot_share` of them on one hot key, the rest round robin
/// over `keys` keys (keyless when `keys` is 0).
#[derive(Debug, Clone, Copy, PartialEq)]
struct KeyMix {
    keys: usize,
    hot_share: f64,
}

impl KeyMix {
    const KEYLESS: Self = Self { keys: 0, hot_share: 0.0 };

    /// `N` or `hot:F:N`.
    fn parse(spec: &str) -> Result<Self, BoxError> {
        let number = |v: &str| v.parse::<usize>().map_err(|e| format!("key mix {spec:?}: {e}"));
        match spec.split(':').collect::<Vec<_>>()[..] {
            [keys] => Ok(Self { keys: number(keys)?, hot_share: 0.0 }),
            ["hot", share, keys] => Ok(Self { keys: number(keys)?, hot_share: Self::share(share)? }),
            _ => Err(format!("key mix {spec:?}: expected N or hot:SHARE:N").into()),
        }
    }

    fn share(value: &str) -> Result<f64, BoxError> {
        match value.parse::<f64>() {
            Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
            _ => Err(format!("a hot-key share is a number from 0 to 1, got {value:?}").into()),
        }
    }

    /// The key of message `i`. Hot messages are spread evenly through the run.
    fn key(&self, i: usize) -> Option<String> {
        let hot = (((i + 1) as f64 * self.hot_share).floor() - (i as f64 * self.hot_share).floor()) >= 1.0;
        if hot {
            Some("hot".to_owned())
        } else if self.keys > 0 {
            Some(format!("k{}", i % self.keys))
        } else {
            None
        }
    }
}

impl std::fmt::Display for KeyMix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.hot_share > 0.0 {
            write!(f, "{:.0}% on one key, the rest on {} keys", self.hot_share * 100.0, self.keys)
        } else if self.keys > 0 {
            write!(f, "{} keys", self.keys)
        } else {
            f.write_str("keyless")
        }
    }
}

/// `n` messages keyed by `keys`.
fn messages(topic: &str, n: usize, payload: usize, keys: KeyMix) -> Vec<NewMessage> {
    (0..n)
        .map(|i| {
            let message = NewMessage::new(topic, vec![(i % 251) as u8; payload]);
            match keys.key(i) {
                Some(key) => message.key(key),
                None => message,
            }
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Report {
    rows: Vec<(String, String, String)>,
    json: BTreeMap<String, serde_json::Value>,
}

impl Report {
    fn add(&mut self, key: &str, label: &str, value: f64, unit: &str) {
        println!("  {label:<58} {value:>12.2} {unit}");
        self.rows.push((label.to_owned(), format!("{value:.2}"), unit.to_owned()));
        self.json.insert(key.to_owned(), serde_json::json!(value));
    }

    /// One row per percentile of `sorted` (`p50` is 0.5, `max` is 1.0), keyed `{key}_{name}_ms`.
    fn add_percentiles(&mut self, key: &str, label: &str, sorted: &[Duration], which: &[(&str, f64)]) {
        for (name, p) in which {
            self.add(&format!("{key}_{name}_ms"), &format!("{label} {name}"), ms(percentile(sorted, *p)), "ms");
        }
    }
}

const P50_P99: &[(&str, f64)] = &[("p50", 0.5), ("p99", 0.99)];

/// Busy CPU time so far of the whole machine (every process: database, broker and this harness) and
/// of this process alone, from `/proc/stat` and `/proc/self/stat`; `None` where those files do not
/// exist (not Linux).
fn machine_busy() -> Option<[Duration; 2]> {
    // Both count USER_HZ ticks: 100 per second on every Linux architecture, whatever the kernel's HZ.
    let ticks = |t: u64| Duration::from_millis(t * 10);
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).map_while(|f| f.parse().ok()).collect();
    // user, nice, system, (idle, iowait,) irq, softirq.
    let machine: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| fields.get(i)).sum();
    // After the `(comm)` field: state is field 3, utime and stime are fields 14 and 15.
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_comm: Vec<&str> = own.rsplit_once(')')?.1.split_whitespace().collect();
    let own: u64 = after_comm.get(11..13)?.iter().filter_map(|f| f.parse::<u64>().ok()).sum();
    Some([ticks(machine), ticks(own)])
}

/// A throughput run: messages per second, and the busy CPU time per message of the whole machine and
/// of this process (the relay or the raw client, in the harness).
#[derive(Clone, Copy)]
struct Measured {
    rate: f64,
    cpu_per_message: Option<[Duration; 2]>,
}

/// Times `n` messages' worth of work from `started` (and the CPU reading taken with it).
fn measured(n: usize, started: Instant, busy_before: Option<[Duration; 2]>) -> Measured {
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let per_message = |before: Duration, after: Duration| after.saturating_sub(before) / n.max(1) as u32;
    let cpu_per_message = busy_before.zip(machine_busy()).map(|([machine, own], [machine_after, own_after])| {
        [per_message(machine, machine_after), per_message(own, own_after)]
    });
    Measured { rate, cpu_per_message }
}

/// The raw broker: the publisher alone, `concurrency` batches of `batch` in flight.
async fn raw_broker(
    publisher: &Arc<dyn Publisher>,
    args: &Args,
    topic: &str,
    batch: usize,
) -> Result<Measured, BoxError> {
    let now = outbox_engine::Message {
        id: MessageId::new(),
        topic: topic.to_owned(),
        key: None,
        payload: Vec::new(),
        headers: Default::default(),
        created_at: Default::default(),
        attempts: 1,
        last_error: None,
    };
    let all: Vec<Message> = (0..args.messages)
        .map(|i| Message {
            id: MessageId::new(),
            key: args.keys.key(i),
            payload: vec![(i % 251) as u8; args.payload],
            ..now.clone()
        })
        .collect();
    // Warm up (connections, Kafka producer id).
    let warm = publisher.publish(&all[..1.min(all.len())]).await;
    if let Some(Err(e)) = warm.into_iter().next() {
        return Err(format!("warm-up publish failed: {}", e.report()).into());
    }
    let batches: Vec<&[Message]> = all.chunks(batch).collect();
    let (started, busy) = (Instant::now(), machine_busy());
    let mut failed = 0usize;
    for group in batches.chunks(args.concurrency) {
        for outcomes in futures::future::join_all(group.iter().map(|b| publisher.publish(b))).await {
            failed += outcomes.iter().filter(|o| o.is_err()).count();
        }
    }
    let run = measured(args.messages, started, busy);
    if failed > 0 {
        return Err(format!("{failed} raw publishes failed").into());
    }
    Ok(run)
}

/// The raw database: claim + acknowledge a backlog with `concurrency` claimers.
async fn raw_database(store: &AnyStore, args: &Args, topic: &str, batch: usize) -> Result<Measured, BoxError> {
    store.fill(messages(topic, args.messages, args.payload, args.keys), 1000, 4).await?;
    store.analyze().await?;
    let dyn_store = store.dyn_store();
    let (started, busy) = (Instant::now(), machine_busy());
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let s = dyn_store.clone();
        tasks.push(tokio::spawn(async move {
            let owner = RelayId::new();
            let mut idle = 0;
            loop {
                let claimed = s.claim(owner, batch, Duration::from_secs(60)).await?;
                if claimed.is_empty() {
                    idle += 1;
                    if idle > 3 {
                        return Ok::<(), BoxError>(());
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                let ids: Vec<MessageId> = claimed.iter().map(|m| m.id).collect();
                s.acknowledge(&ids).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(measured(args.messages, started, busy))
}

/// A relay drain: its throughput, and the time from the relays' start to their first publish when
/// their connection pools were fresh (the cold start the timed drain no longer includes).
struct RelayRun {
    measured: Measured,
    cold_start: Duration,
}

/// Runs `relays` until they have published `target` messages in all (their counters count from
/// when they were built). Returns the time to their first publish of this run, and the run measured
/// over its `target - already published` messages.
async fn drain(relays: &[Relay], target: usize) -> Result<(Duration, Measured), BoxError> {
    let published = || relays.iter().map(|r| r.metrics().published as usize).sum::<usize>();
    let before = published();
    let shutdown = CancellationToken::new();
    let (started, busy) = (Instant::now(), machine_busy());
    let running: Vec<_> = relays
        .iter()
        .map(|relay| {
            let (relay, shutdown) = (relay.clone(), shutdown.clone());
            tokio::spawn(async move { relay.run(shutdown).await })
        })
        .collect();
    let deadline = started + Duration::from_secs(600);
    let mut first_publish = None;
    loop {
        let now = published();
        if now > before && first_publish.is_none() {
            first_publish = Some(started.elapsed());
        }
        if now >= target {
            break;
        }
        if Instant::now() > deadline {
            return Err("the relays did not drain the backlog within 10 minutes".into());
        }
        // Fine-grained until the first publish (it is a few tens of ms), then cheap.
        let tick = if first_publish.is_none() { Duration::from_micros(500) } else { Duration::from_millis(5) };
        tokio::time::sleep(tick).await;
    }
    let run = measured(target - before, started, busy);
    shutdown.cancel();
    for relay in running {
        relay.await??;
    }
    Ok((first_publish.unwrap_or_default(), run))
}

async fn relay_throughput(
    store: &AnyStore,
    publisher: Arc<dyn Publisher>,
    args: &Args,
    topic: &str,
    batch: usize,
) -> Result<RelayRun, BoxError> {
    // Each relay gets its own connection pool, as separate relay processes would.
    let mut relays = Vec::new();
    for _ in 0..args.relays {
        let own = store.reopen().await?;
        relays.push(
            Relay::builder_shared(own.dyn_store(), publisher.clone())
                .batch_size(batch)
                .concurrency(args.concurrency)
                .batches_in_flight(args.in_flight)
                .build()?,
        );
    }
    // An untimed first drain opens the fresh pools' connections and prepares their statements: the
    // raw runs use a warm store and a warmed-up publisher, and a relay is a long-running process.
    // Its start-to-first-publish time is reported as the cold start. Two batches per slot in flight
    // fill every slot.
    let slots = relays.first().map_or(1, |r| r.options().concurrency * r.options().batches_in_flight);
    let warm_up = 2 * batch * slots * args.relays;
    store.fill(messages(topic, warm_up, args.payload, args.keys), 1000, 4).await?;
    let (cold_start, _) = drain(&relays, warm_up).await?;
    store.fill(messages(topic, args.messages, args.payload, args.keys), 1000, 4).await?;
    store.analyze().await?;
    let (_, measured) = drain(&relays, warm_up + args.messages).await?;
    Ok(RelayRun { measured, cold_start })
}

/// Throughput medians over `--repeat` rounds (raw broker, raw database, relay), interleaved so that
/// each round sees the same machine state.
struct Throughput {
    broker: f64,
    database: f64,
    relay: Option<f64>,
    /// Median time from a relay's start to its first publish with fresh connection pools.
    cold_start: Option<Duration>,
    /// Median busy CPU time per message (the whole machine, this process): raw broker, raw
    /// database, relay.
    cpu: [Option<[Duration; 2]>; 3],
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

async fn throughput(
    store: &AnyStore,
    publisher: &Arc<dyn Publisher>,
    args: &Args,
    topic: &str,
    batch: usize,
    with_relay: bool,
) -> Result<Throughput, BoxError> {
    let (mut broker, mut database, mut relay, mut cold) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.repeat {
        broker.push(raw_broker(publisher, args, topic, batch).await?);
        reset_broker(args, topic).await?;
        database.push(raw_database(store, args, topic, batch).await?);
        if with_relay {
            let run = relay_throughput(store, publisher.clone(), args, topic, batch).await?;
            relay.push(run.measured);
            cold.push(run.cold_start);
            reset_broker(args, topic).await?;
        }
    }
    let cpu = [&broker, &database, &relay].map(|runs| median_cpu(runs));
    let rates = |runs: &[Measured]| median(runs.iter().map(|m| m.rate).collect());
    cold.sort();
    Ok(Throughput {
        broker: rates(&broker),
        database: rates(&database),
        relay: with_relay.then(|| rates(&relay)),
        cold_start: cold.get(cold.len() / 2).copied(),
        cpu,
    })
}

/// The median CPU times per message of some runs (of the run with the median machine time), if
/// every run has them.
fn median_cpu(runs: &[Measured]) -> Option<[Duration; 2]> {
    let mut cpu: Vec<[Duration; 2]> = runs.iter().map(|m| m.cpu_per_message).collect::<Option<_>>()?;
    cpu.sort();
    cpu.get(cpu.len() / 2).copied()
}

/// Picks one series' value out of a throughput point.
type Pick = fn(&Throughput) -> Option<f64>;

/// The smallest 1, 2 or 5 times a power of ten that is at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|c| *c >= v).unwrap_or(v)
}

/// Writes a line chart of throughput against batch size (log scale) as SVG. Hand-written: plotting
/// crates need a font stack (fontconfig) to lay out text, which the harness should not require.
fn write_plot(path: &str, title: &str, points: &[(usize, Throughput)]) -> Result<(), BoxError> {
    use std::fmt::Write as _;
    let (w, h, left, right, top, bottom) = (760.0, 420.0, 80.0, 230.0, 40.0, 50.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let ymax = points
        .iter()
        .flat_map(|(_, t)| [t.database, t.relay.unwrap_or(0.0), t.broker.min(t.database * 2.0)])
        .fold(1.0f64, f64::max);
    let ymax = nice_ceiling(ymax * 1.05);
    let (xmin, xmax) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (b, _)| {
        let x = (*b as f64).ln();
        (lo.min(x), hi.max(x))
    });
    let span = if xmax > xmin { xmax - xmin } else { 1.0 };
    let x = |b: usize| left + ((b as f64).ln() - xmin) / span * pw;
    let y = |v: f64| top + ph - v / ymax * ph;
    let mut svg = String::new();
    write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="24" font-size="14">{title}</text>
<line x1="{left}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{y0}" stroke="black"/>
<text x="{xl}" y="{yl}" text-anchor="middle">batch size (messages per claim)</text>
"#,
        y0 = top + ph,
        x1 = left + pw,
        xl = left + pw / 2.0,
        yl = h - 10.0,
    )?;
    for tick in 0..=5 {
        let v = ymax / 5.0 * f64::from(tick);
        writeln!(
            svg,
            r##"<line x1="{left}" y1="{py}" x2="{x2}" y2="{py}" stroke="#ddd"/><text x="{tx}" y="{ty}" text-anchor="end">{label}k/s</text>"##,
            py = y(v),
            x2 = left + pw,
            tx = left - 6.0,
            ty = y(v) + 4.0,
            label = (v / 1000.0).round()
        )?;
    }
    for (batch, _) in points {
        writeln!(svg, r#"<text x="{}" y="{}" text-anchor="middle">{batch}</text>"#, x(*batch), top + ph + 18.0)?;
    }
    let series: [(&str, &str, Pick); 3] = [
        ("relay", "#d62728", |t| t.relay),
        ("raw database", "#1f77b4", |t| Some(t.database)),
        ("raw broker", "#2ca02c", |t| Some(t.broker)),
    ];
    for (n, (name, color, value)) in series.iter().enumerate() {
        let values: Vec<(usize, f64)> = points.iter().filter_map(|(b, t)| value(t).map(|v| (*b, v))).collect();
        let visible: Vec<(f64, f64)> = values.iter().map(|(b, v)| (x(*b), y(*v))).collect();
        let ly = top + 20.0 * n as f64;
        if values.iter().any(|(_, v)| *v > ymax) {
            let lowest = points.iter().filter_map(|(_, t)| value(t)).fold(f64::MAX, f64::min);
            if lowest < f64::MAX {
                writeln!(
                    svg,
                    r#"<text x="{}" y="{}">{name}: off scale (&gt;= {:.0}k/s)</text>"#,
                    left + pw + 15.0,
                    ly + 4.0,
                    lowest / 1000.0
                )?;
            }
            continue;
        }
        let path: Vec<String> = visible.iter().map(|(px, py)| format!("{px:.1},{py:.1}")).collect();
        writeln!(svg, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, path.join(" "))?;
        for (px, py) in &visible {
            writeln!(svg, r#"<circle cx="{px:.1}" cy="{py:.1}" r="3" fill="{color}"/>"#)?;
        }
        writeln!(
            svg,
            r#"<line x1="{a}" y1="{ly}" x2="{b}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{c}" y="{t}">{name}</text>"#,
            a = left + pw + 15.0,
            b = left + pw + 35.0,
            c = left + pw + 40.0,
            t = ly + 4.0
        )?;
    }
    svg.push_str("</svg>\n");
    std::fs::write(path, svg)?;
    Ok(())
}

/// Latency samples, each sorted: commit -> broker ack, and the part of it up to the claim.
struct LatencySamples {
    acked: Vec<Duration>,
    claimed: Vec<Duration>,
    /// Claim statements the relay issued per message (idle polls and empty claims included).
    claims_per_message: f64,
}

/// Commit -> broker-ack latency at a steady `--rate`, one message per transaction from 4 producers.
async fn latency(
    store: &AnyStore,
    publisher: Arc<dyn Publisher>,
    args: &Args,
    topic: &str,
    notifications: bool,
) -> Result<LatencySamples, BoxError> {
    let probe = Arc::new(LatencyProbe { inner: publisher, acked: Mutex::new(HashMap::new()) });
    let instrumented = Arc::new(Instrumented::new(store.dyn_store(), notifications));
    let mut options = RelayOptions::default();
    options.batch_size = args.batch;
    options.concurrency = args.concurrency;
    options.batches_in_flight = args.in_flight;
    options.poll_interval = args.poll_interval;
    options.busy_poll_interval = args.busy_poll_interval;
    let relay = Relay::builder_shared(instrumented.clone(), probe.clone()).options(options).build()?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let committed = Arc::new(Mutex::new(HashMap::new()));
    let sent = steady_load(args, |_| {
        let (store, topic, payload, committed) = (store.clone(), topic.to_owned(), args.payload, committed.clone());
        async move {
            let message = NewMessage::new(&topic, vec![7u8; payload]);
            let id = message.id();
            store.enqueue_tx(vec![message], None).await?;
            committed.lock().map_err(|_| "poisoned")?.insert(id, Instant::now());
            Ok(())
        }
    })
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while (relay.metrics().published as usize) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    running.await??;
    let store_errors = relay.metrics().store_errors;
    if store_errors > 0 {
        println!("  (the relay hit {store_errors} store errors during the latency run; see the max)");
    }
    let committed = committed.lock().map_err(|_| "poisoned")?;
    let since_commit = |events: &HashMap<MessageId, Instant>| {
        let mut samples: Vec<Duration> = committed
            .iter()
            .filter_map(|(id, at)| events.get(id).map(|event| event.saturating_duration_since(*at)))
            .collect();
        samples.sort();
        samples
    };
    let acked = since_commit(&probe.acked.lock().unwrap_or_else(|p| p.into_inner()));
    if acked.len() < sent {
        return Err(format!("only {} of {sent} messages reached the broker within 60 s", acked.len()).into());
    }
    let claimed = since_commit(&instrumented.claimed_at.lock().unwrap_or_else(|p| p.into_inner()));
    let claims_per_message = instrumented.claims.load(Ordering::Relaxed) as f64 / sent as f64;
    Ok(LatencySamples { acked, claimed, claims_per_message })
}

/// The broker alone at the same steady rate: one message per publish call from 4 producers; publish
/// -> acknowledgement latency. The floor under the relay's commit -> ack latency.
async fn raw_broker_latency(
    publisher: &Arc<dyn Publisher>,
    args: &Args,
    topic: &str,
) -> Result<Vec<Duration>, BoxError> {
    let samples = Arc::new(Mutex::new(Vec::new()));
    steady_load(args, |i| {
        let (publisher, samples) = (publisher.clone(), samples.clone());
        let message = Message {
            id: MessageId::new(),
            topic: topic.to_owned(),
            key: None,
            payload: vec![(i % 251) as u8; args.payload],
            headers: Default::default(),
            created_at: Default::default(),
            attempts: 1,
            last_error: None,
        };
        async move {
            let started = Instant::now();
            if let Some(Err(e)) = publisher.publish(std::slice::from_ref(&message)).await.pop() {
                return Err(format!("raw publish failed: {}", e.report()).into());
            }
            samples.lock().map_err(|_| "poisoned")?.push(started.elapsed());
            Ok(())
        }
    })
    .await?;
    let mut samples = samples.lock().map_err(|_| "poisoned")?.clone();
    samples.sort();
    Ok(samples)
}

/// The raw broker latency again, while 4 other producers commit one-row business transactions at the
/// same rate (the producers' database load of the relay's latency run, without outbox or relay): how
/// much of the relay's latency the shared machine alone explains.
async fn raw_broker_latency_under_load(
    store: &AnyStore,
    publisher: &Arc<dyn Publisher>,
    args: &Args,
    topic: &str,
) -> Result<Vec<Duration>, BoxError> {
    store.create_business_table().await?;
    let load = steady_load(args, |i| {
        let store = store.clone();
        async move { store.enqueue_tx(Vec::new(), Some(i as i64)).await }
    });
    let (samples, load) = tokio::join!(raw_broker_latency(publisher, args, topic), load);
    store.drop_business_table().await?;
    load?;
    samples
}

/// Runs `one(i)` `--rate` times a second for 5 seconds from 4 producers; returns how many ran.
async fn steady_load<F, Fut>(args: &Args, one: F) -> Result<usize, BoxError>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send + 'static,
{
    const PRODUCERS: usize = 4;
    let per_producer = args.rate * 5 / PRODUCERS;
    let interval = Duration::from_secs_f64(PRODUCERS as f64 / args.rate as f64);
    let mut tasks = Vec::new();
    for producer in 0..PRODUCERS {
        let calls: Vec<Fut> = (0..per_producer).map(|n| one(producer * per_producer + n)).collect();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for call in calls {
                tick.tick().await;
                call.await?;
            }
            Ok::<(), BoxError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(per_producer * PRODUCERS)
}

/// p50 of a one-row business transaction: alone, plus one outbox message, plus a bare `SELECT 1`
/// (the cost of any second statement: one more round trip), plus a one-row insert into a second
/// plain table (the cost of writing any second row), plus 10 outbox messages in one
/// `enqueue_batch`, and (PostgreSQL) with the business row and one message written by one statement
/// (`execute_with`): [`ENQUEUE_VARIANTS`] in that order. The variants alternate, 2,000 of each; the
/// last is `None` on other stores.
async fn enqueue_overhead(store: &AnyStore, topic: &str, payload: usize) -> Result<[Option<Duration>; 6], BoxError> {
    store.create_business_table().await?;
    const N: usize = 2000;
    let variants = if matches!(store, AnyStore::Postgres(_)) { 6 } else { 5 };
    let mut samples: [Vec<Duration>; 6] = Default::default();
    let message = || NewMessage::new(topic, vec![1u8; payload]);
    for i in 0..N * variants {
        let started = Instant::now();
        match (i % variants, store) {
            (0, _) => store.enqueue_tx(Vec::new(), Some(i as i64)).await?,
            (1, _) => store.enqueue_tx(vec![message()], Some(i as i64)).await?,
            (2, _) => store.second_statement_tx(i as i64, false).await?,
            (3, _) => store.second_statement_tx(i as i64, true).await?,
            (5, AnyStore::Postgres(s)) => {
                let mut tx = s.pool().begin().await?;
                let business = sqlx::query("INSERT INTO bench_business (v) VALUES ($1)").bind(i as i64);
                s.execute_with(&mut tx, business, message()).await?;
                tx.commit().await?;
            }
            _ => store.enqueue_tx((0..10).map(|_| message()).collect(), Some(i as i64)).await?,
        }
        samples[i % variants].push(started.elapsed());
    }
    store.drop_business_table().await?;
    Ok(samples.map(|mut s| {
        s.sort();
        (!s.is_empty()).then(|| percentile(&s, 0.5))
    }))
}

/// One variant of [`enqueue_overhead`]: the JSON key and label of its p50 and, where it has one, of its
/// overhead over the first variant.
struct EnqueueVariant {
    key: &'static str,
    label: &'static str,
    overhead: Option<(&'static str, &'static str)>,
}

/// The variants of [`enqueue_overhead`], in its order.
const ENQUEUE_VARIANTS: [EnqueueVariant; 6] = [
    EnqueueVariant { key: "tx_plain_p50_ms", label: "one-row business transaction: p50", overhead: None },
    EnqueueVariant {
        key: "tx_outbox_p50_ms",
        label: "the same plus one outbox message: p50",
        overhead: Some(("enqueue_overhead_pct", "enqueue overhead")),
    },
    EnqueueVariant {
        key: "tx_round_trip_p50_ms",
        label: "the same plus a bare SELECT 1 instead: p50",
        overhead: Some(("round_trip_overhead_pct", "overhead of any second statement (SELECT 1)")),
    },
    EnqueueVariant {
        key: "tx_second_row_p50_ms",
        label: "the same plus a row in a second plain table instead: p50",
        overhead: Some(("second_row_overhead_pct", "overhead of any second row (plain table)")),
    },
    EnqueueVariant {
        key: "tx_outbox_10_p50_ms",
        label: "the same plus 10 outbox messages (enqueue_batch): p50",
        overhead: None,
    },
    EnqueueVariant {
        key: "tx_outbox_one_statement_p50_ms",
        label: "the same, row and message in one statement (execute_with): p50",
        overhead: Some(("enqueue_one_statement_overhead_pct", "enqueue overhead with execute_with")),
    },
];

/// Transactions a second that `producers` concurrent producers commit for 3 s: one-row business
/// transactions alone, with one outbox message each, and (PostgreSQL) with one message enqueued
/// without a notification. Two rounds of each, alternating; the better round of each is reported.
async fn producer_throughput(store: &AnyStore, topic: &str, args: &Args) -> Result<Vec<(String, f64)>, BoxError> {
    store.create_business_table().await?;
    let mut variants: Vec<(String, AnyStore, bool)> =
        vec![("business".into(), store.clone(), false), ("outbox".into(), store.clone(), true)];
    if let AnyStore::Postgres(s) = store {
        let quiet = PostgresStore::new(s.pool().clone(), s.options().clone().enqueue_notifications(false))?;
        variants.push(("outbox_without_notifications".into(), AnyStore::Postgres(quiet), true));
    }
    let mut best = vec![0.0f64; variants.len()];
    for _round in 0..2 {
        for ((_, variant, with_message), best) in variants.iter().zip(best.iter_mut()) {
            let committed = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + Duration::from_secs(3);
            let started = Instant::now();
            let mut tasks = Vec::new();
            for producer in 0..args.producers {
                let (variant, committed, topic, payload) =
                    (variant.clone(), committed.clone(), topic.to_owned(), args.payload);
                let with_message = *with_message;
                tasks.push(tokio::spawn(async move {
                    let mut n = 0i64;
                    while Instant::now() < deadline {
                        let messages =
                            if with_message { vec![NewMessage::new(&topic, vec![3u8; payload])] } else { Vec::new() };
                        variant.enqueue_tx(messages, Some(producer as i64 * 1_000_000_000 + n)).await?;
                        committed.fetch_add(1, Ordering::Relaxed);
                        n += 1;
                    }
                    Ok::<(), BoxError>(())
                }));
            }
            for task in tasks {
                task.await??;
            }
            let rate = committed.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
            *best = best.max(rate);
        }
    }
    store.drop_business_table().await?;
    Ok(variants.into_iter().map(|(name, ..)| name).zip(best).collect())
}

async fn claim_cost(kind: &str, args: &Args, topic: &str) -> Result<(Duration, Duration), BoxError> {
    let store = AnyStore::open(kind, store_options(args).retention(Duration::from_secs(3600))).await?;
    let dyn_store = store.dyn_store();
    store.fill(messages(topic, 5_000, args.payload, args.keys), 1000, 2).await?;
    let sample = || async {
        let mut times = Vec::new();
        for _ in 0..50 {
            let owner = RelayId::new();
            let started = Instant::now();
            let claimed = dyn_store.claim(owner, 256, Duration::from_secs(60)).await?;
            times.push(started.elapsed());
            let ids: Vec<MessageId> = claimed.iter().map(|m| m.id).collect();
            dyn_store.release(owner, &ids).await?;
        }
        times.sort();
        Ok::<Duration, BoxError>(percentile(&times, 0.5))
    };
    let empty = sample().await?;
    let table = match &store {
        AnyStore::Postgres(s) => s.messages_table().to_owned(),
        AnyStore::MySql(_) | AnyStore::Sqlite(_) => store.messages_table(&sqlite_or_mysql_table(&store)),
    };
    store.add_old_rows(args.old_rows, &table).await?;
    let full = sample().await?;
    store.close().await?;
    Ok((empty, full))
}

fn sqlite_or_mysql_table(store: &AnyStore) -> String {
    // The table name is in the schema SQL's first CREATE TABLE statement.
    let schema = match store {
        AnyStore::MySql(s) => s.schema_sql().to_owned(),
        AnyStore::Sqlite(s) => s.schema_sql().to_owned(),
        AnyStore::Postgres(s) => s.schema_sql().to_owned(),
    };
    schema.split_whitespace().skip_while(|w| *w != "EXISTS").nth(1).unwrap_or_default().to_owned()
}

async fn idle_queries(store: &AnyStore, notifications: bool) -> Result<f64, BoxError> {
    let instrumented = Arc::new(Instrumented::new(store.dyn_store(), notifications));
    // 4 workers whatever --concurrency says: idle, only one of them may poll.
    let relay = Relay::builder_shared(instrumented.clone(), Arc::new(MemoryPublisher::new())).concurrency(4).build()?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = instrumented.claims.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let queries = instrumented.claims.load(Ordering::Relaxed) - before;
    shutdown.cancel();
    running.await??;
    Ok(queries as f64 / 10.0)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("outbox-bench: {e} (see --help)");
            std::process::exit(2);
        }
    };
    let run = |name: &str| !args.skip.iter().any(|s| s == name);
    let topic = format!("outbox_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    println!(
        "outbox-bench: store={} publisher={} messages={} keys: {} payload={}B batch={} concurrency={} in-flight={} relays={} ({} cores)",
        args.store,
        args.publisher,
        args.messages,
        args.keys,
        args.payload,
        args.batch,
        args.concurrency,
        args.in_flight,
        args.relays,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if args.publisher == "rabbitmq" {
        println!("RabbitMQ queue type: {:?}", args.amqp_queue);
    }
    let mut report = Report { rows: Vec::new(), json: BTreeMap::new() };
    let publisher = make_publisher(&args.publisher, &topic, &args).await?;

    if run("raw") || run("relay") {
        let store = AnyStore::open(&args.store, store_options(&args)).await?;
        let t = throughput(&store, &publisher, &args, &topic, args.batch, run("relay")).await?;
        let rounds = if args.repeat > 1 { format!(", median of {}", args.repeat) } else { String::new() };
        report.add("raw_broker_msgs_per_s", &format!("raw broker: publisher alone (msg/s{rounds})"), t.broker, "msg/s");
        report.add(
            "raw_database_rows_per_s",
            &format!("raw database: claim + acknowledge alone (rows/s{rounds})"),
            t.database,
            "rows/s",
        );
        if let Some(relay) = t.relay {
            report.add("relay_msgs_per_s", &format!("relay: drain the backlog (msg/s{rounds})"), relay, "msg/s");
            report.add("relay_ratio", "relay / min(raw broker, raw database)", relay / t.broker.min(t.database), "x");
        }
        if let Some(cold) = t.cold_start {
            let label = format!("relay: start -> first batch published, fresh pools (ms{rounds})");
            report.add("relay_cold_start_ms", &label, cold.as_secs_f64() * 1e3, "ms");
        }
        // Where the relay is bound by the machine's CPU rather than by either side's own limit: it
        // does the broker's and the database's work at once, so on a saturated machine its ceiling
        // is the cores over the two sides' CPU costs added.
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let names = [("broker", "raw broker"), ("database", "raw database"), ("relay", "relay")];
        for ((key, label), cpu) in names.iter().zip(t.cpu) {
            if let Some([machine, own]) = cpu {
                let machine_label = format!("{label}: machine CPU per message (all processes)");
                report.add(&format!("cpu_per_message_{key}_us"), &machine_label, us(machine), "us");
                let own_label = format!("{label}: of which the harness process (client or relay)");
                report.add(&format!("cpu_per_message_{key}_harness_us"), &own_label, us(own), "us");
            }
        }
        if let ([Some([broker, _]), Some([database, _]), _], Some(relay)) = (t.cpu, t.relay) {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            let ceiling = cores / (broker + database).as_secs_f64().max(1e-9);
            report.add(
                "cpu_ceiling_msgs_per_s",
                "CPU ceiling: cores / (raw broker + raw database CPU)",
                ceiling,
                "msg/s",
            );
            report.add("relay_cpu_ceiling_ratio", "relay / CPU ceiling", relay / ceiling, "x");
        }
        store.close().await?;
    }
    if !args.key_sweep.is_empty() {
        let store = AnyStore::open(&args.store, store_options(&args)).await?;
        let mut sweep = Vec::new();
        let mut keyless: Option<f64> = None;
        let mixes =
            std::iter::once(KeyMix::KEYLESS).chain(args.key_sweep.iter().copied().filter(|m| *m != KeyMix::KEYLESS));
        for keys in mixes {
            let mixed = Args { keys, ..args.clone() };
            let t = throughput(&store, &publisher, &mixed, &topic, args.batch, true).await?;
            let relay = t.relay.unwrap_or(0.0);
            let ratio = relay / *keyless.get_or_insert(relay);
            println!(
                "  {:<40} relay {relay:>10.0} msg/s ({ratio:.2}x keyless)   raw database {:>10.0} rows/s",
                keys.to_string(),
                t.database
            );
            sweep.push(serde_json::json!({
                "keys": keys.keys, "hot_key_share": keys.hot_share, "label": keys.to_string(),
                "relay": relay, "relay_vs_keyless": ratio, "raw_database": t.database, "raw_broker": t.broker,
            }));
        }
        report.json.insert("key_sweep".into(), serde_json::Value::Array(sweep));
        store.close().await?;
    }
    if !args.sweep.is_empty() {
        let store = AnyStore::open(&args.store, store_options(&args)).await?;
        let mut points = Vec::new();
        let mut sweep = Vec::new();
        for &batch in &args.sweep {
            let t = throughput(&store, &publisher, &args, &topic, batch, true).await?;
            let relay = t.relay.unwrap_or(0.0);
            println!(
                "  batch {batch:>5}: relay {relay:>10.0} msg/s   raw database {:>10.0} rows/s   raw broker {:>10.0} msg/s",
                t.database, t.broker
            );
            sweep.push(
                serde_json::json!({"batch": batch, "relay": relay, "raw_database": t.database, "raw_broker": t.broker}),
            );
            points.push((batch, t));
        }
        report.json.insert("batch_sweep".into(), serde_json::Value::Array(sweep));
        if let Some(path) = &args.plot {
            let title =
                format!("{} -> {}: throughput vs batch size ({} messages)", args.store, args.publisher, args.messages);
            write_plot(path, &title, &points)?;
            println!("plot written to {path}");
        }
        store.close().await?;
    }
    if run("latency") {
        let raw = raw_broker_latency(&publisher, &args, &topic).await?;
        let label = format!("raw broker at {} msg/s, one message per publish", args.rate);
        report.add_percentiles("raw_broker_latency", &format!("{label}:"), &raw, P50_P99);
        let store = AnyStore::open(&args.store, store_options(&args)).await?;
        let loaded = raw_broker_latency_under_load(&store, &publisher, &args, &topic).await?;
        let label = format!("{label}, while the database commits {} one-row transactions/s:", args.rate);
        report.add_percentiles("raw_broker_latency_loaded", &label, &loaded, P50_P99);
        for (notifications, name) in [(true, "notify"), (false, "poll")] {
            if !notifications && args.store != "postgres" {
                continue;
            }
            let LatencySamples { acked, claimed, claims_per_message } =
                latency(&store, publisher.clone(), &args, &topic, notifications).await?;
            let label =
                format!("latency at {} msg/s, {} wake-ups:", args.rate, if notifications { "with" } else { "without" });
            report.add_percentiles(
                &format!("claim_latency_{name}"),
                &format!("{label} commit -> claimed"),
                &claimed,
                P50_P99,
            );
            report.add_percentiles(
                &format!("latency_{name}"),
                &label,
                &acked,
                &[("p50", 0.5), ("p99", 0.99), ("max", 1.0)],
            );
            report.add(
                &format!("claims_per_message_{name}"),
                &format!("{label} claims per message"),
                claims_per_message,
                "",
            );
        }
        store.close().await?;
    }
    if run("enqueue") {
        let store = AnyStore::open(&args.store, store_options(&args)).await?;
        // A round's figures move by a few points with the machine's background work: each figure is
        // the median over `--repeat` rounds, an overhead the median of the rounds' own overheads (the
        // variants of one round are interleaved, so they saw the same machine).
        let _listeners = store.idle_listeners(args.idle_listeners).await?;
        let mut rounds = Vec::new();
        for _ in 0..args.repeat {
            rounds.push(enqueue_overhead(&store, &topic, args.payload).await?);
        }
        let rounds_label = if args.repeat > 1 { format!(" (median of {})", args.repeat) } else { String::new() };
        for (i, EnqueueVariant { key, label, overhead }) in ENQUEUE_VARIANTS.iter().enumerate() {
            let p50s: Vec<f64> = rounds.iter().filter_map(|round| round[i].map(ms)).collect();
            if p50s.is_empty() {
                continue;
            }
            report.add(key, &format!("{label}{rounds_label}"), median(p50s), "ms");
            if let Some((key, label)) = overhead {
                let overheads =
                    rounds.iter().filter_map(|round| Some((ms(round[i]?) / ms(round[0]?) - 1.0) * 100.0)).collect();
                report.add(key, label, median(overheads), "%");
            }
        }
        if let Some(listeners) = store.listening_connections().await? {
            let label = "connections LISTENing in the database during the test (each notifying commit wakes all)";
            report.add("enqueue_listening_connections", label, listeners as f64, "");
        }
        store.close().await?;
    }
    if run("producers") {
        let store = AnyStore::open(&args.store, store_options(&args)).await?;
        let rates = producer_throughput(&store, &topic, &args).await?;
        let business = rates.first().map_or(0.0, |(_, rate)| *rate);
        for (name, rate) in &rates {
            let label = match name.as_str() {
                "business" => format!("{} producers: one-row business transactions (tx/s)", args.producers),
                "outbox" => format!("{} producers: the same plus one outbox message (tx/s)", args.producers),
                _ => format!("{} producers: the same, enqueued without notifications (tx/s)", args.producers),
            };
            report.add(&format!("producers_{name}_tx_per_s"), &label, *rate, "tx/s");
            if name != "business" {
                let drop = (1.0 - rate / business.max(1e-9)) * 100.0;
                report.add(
                    &format!("producers_{name}_drop_pct"),
                    "  fewer transactions than business alone",
                    drop,
                    "%",
                );
            }
        }
        store.close().await?;
    }
    if run("claim") {
        let (empty, full) = claim_cost(&args.store, &args, &topic).await?;
        report.add("claim_p50_ms_fresh", "claim 256 of 5,000 pending: p50", ms(empty), "ms");
        let label = format!("claim 256 with {} old published rows: p50", args.old_rows);
        report.add("claim_p50_ms_old_rows", &label, ms(full), "ms");
        report.add("claim_cost_ratio", "claim cost ratio (old rows / fresh)", ms(full) / ms(empty), "x");
    }
    if run("idle") {
        let store = AnyStore::open(&args.store, store_options(&args)).await?;
        let qps = idle_queries(&store, true).await?;
        report.add("idle_queries_per_s", "idle relay (4 workers): claims per second", qps, "q/s");
        store.close().await?;
    }
    cleanup_broker(&args.publisher, &topic).await;
    if let Some(path) = &args.json {
        let mut json = serde_json::json!({
            "store": args.store, "publisher": args.publisher, "messages": args.messages, "keys": args.keys.keys, "hot_key_share": args.keys.hot_share,
            "payload": args.payload, "batch": args.batch, "concurrency": args.concurrency, "in_flight": args.in_flight, "relays": args.relays,
            "poll_interval_ms": args.poll_interval.as_millis() as u64, "producers": args.producers,
            "idle_listeners": args.idle_listeners,
            "busy_poll_interval_ms": args.busy_poll_interval.map(|d| d.as_millis() as u64),
            "enqueue_notifications": args.enqueue_notifications,
            "results": report.json,
        });
        if args.publisher == "rabbitmq" {
            json["amqp_queue"] = serde_json::json!(format!("{:?}", args.amqp_queue).to_lowercase());
        }
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
        println!("JSON written to {path}");
    }
    let _ = report.rows.len();
    Ok(())
}
