//! Seed scenario "outbox and inbox" (PostgreSQL + Redis Streams):
//!
//! - `outbox_inbox producer --count N`: writes N notes, each with a `NoteCreated` message in the same
//!   transaction, relays them to the Redis stream, and prints the outbox backlog and failure counts;
//! - `outbox_inbox consumer [--expect N] [--crash-after K]`: reads the stream in a consumer group and
//!   records each message id in the inbox table in the same transaction as its effect, so a redelivered
//!   message is processed once. It acknowledges (`XACK`) in batches of 10; `--crash-after K` exits
//!   abruptly after K messages, before acknowledging the last batch, so those are delivered again.
//!
//! ```text
//! export DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379
//! cargo run -p outbox-examples --features seed-outbox-inbox --bin outbox_inbox -- producer --count 100
//! cargo run -p outbox-examples --features seed-outbox-inbox --bin outbox_inbox -- consumer --expect 100
//! ```
//! Options: `--stream NAME` (default `notes`).

use std::time::Duration;

use clap::{Parser, Subcommand};
use outbox::postgres::PostgresStore;
use outbox::redis::{RedisOptions, RedisPublisher};
use outbox::StoreOptions;
use outbox::TopicMap;
use outbox::{CancellationToken, Dispatcher, Enqueue, Inbox, MessageId, NewMessage, Relay, Store};
use redis::streams::StreamReadReply;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const GROUP: &str = "notes-consumers";

/// The outbox-and-inbox scenario: a producer writes notes with their events to PostgreSQL and relays
/// them to a Redis stream; a consumer applies each once. `DATABASE_URL` and `REDIS_URL` name the
/// services.
#[derive(Debug, Parser)]
#[command(name = "outbox_inbox")]
struct Options {
    #[command(subcommand)]
    command: Command,
    /// The Redis stream the events go to.
    #[arg(long, global = true, default_value = "notes")]
    stream: String,
    /// Notes the producer writes.
    #[arg(long, global = true, default_value_t = 10)]
    count: usize,
    /// The consumer stops once it has applied this many.
    #[arg(long, global = true)]
    expect: Option<usize>,
    /// The consumer exits abruptly after applying this many, before acknowledging the last.
    #[arg(long, global = true)]
    crash_after: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write notes with their events, then relay them to the stream.
    Producer,
    /// Apply each event once through the inbox.
    Consumer,
}

fn env(name: &str) -> Result<String, BoxError> {
    std::env::var(name).map_err(|_| format!("set {name}").into())
}

async fn store() -> Result<PostgresStore, BoxError> {
    let store =
        PostgresStore::connect_with(&env("DATABASE_URL")?, StoreOptions::default().table_prefix("notes")?).await?;
    store.migrate().await?;
    for ddl in [
        "CREATE TABLE IF NOT EXISTS notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS note_projections (note_id BIGINT PRIMARY KEY, body TEXT NOT NULL)",
    ] {
        sqlx::query(ddl).execute(store.pool()).await?;
    }
    Ok(store)
}

async fn producer(o: &Options) -> Result<(), BoxError> {
    let store = store().await?;
    for n in 0..o.count {
        let mut tx = store.pool().begin().await?;
        let body = format!("note {n} from {}", std::process::id());
        let id: i64 = sqlx::query_scalar("INSERT INTO notes (body) VALUES ($1) RETURNING id")
            .bind(&body)
            .fetch_one(&mut *tx)
            .await?;
        let event = serde_json::json!({ "note_id": id, "body": body });
        store.enqueue(&mut *tx, NewMessage::json("NoteCreated", &event)?).await?;
        tx.commit().await?;
    }
    let stats = store.stats().await?;
    println!(
        "producer: wrote {} notes; outbox backlog {} pending, {} dead letters",
        o.count, stats.pending, stats.dead_letters
    );

    let publisher = RedisPublisher::new(
        RedisOptions::from_url(&env("REDIS_URL")?)?.streams(TopicMap::new().map("NoteCreated", &o.stream)),
    )?;
    let relay = Relay::builder(store.clone(), publisher).build()?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    while store.stats().await?.pending > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    running.await??;
    let (m, stats) = (relay.metrics(), store.stats().await?);
    println!(
        "producer: relayed {} (retries {}, dead letters {}); backlog now {} pending",
        m.published, m.retried, m.dead_lettered, stats.pending
    );
    Ok(())
}

async fn consumer(o: &Options) -> Result<(), BoxError> {
    let store = store().await?;
    let client = redis::Client::open(env("REDIS_URL")?)?;
    // XREADGROUP blocks up to 500 ms: allow replies well beyond that.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&o.stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await;
    if let Err(e) = created {
        if e.code() != Some("BUSYGROUP") {
            return Err(e.into());
        }
    }
    let (mut processed, mut duplicates, mut handled) = (0usize, 0usize, 0usize);
    let mut unacked: Vec<String> = Vec::new();
    // First our own pending entries (delivered before a crash, never acknowledged), then new ones.
    let mut cursor = "0".to_owned();
    let mut idle_rounds = 0;
    loop {
        let reply: StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg("consumer-1")
            .arg("COUNT")
            .arg(10)
            .arg("BLOCK")
            .arg(500)
            .arg("STREAMS")
            .arg(&o.stream)
            .arg(&cursor)
            .query_async(&mut conn)
            .await?;
        let entries: Vec<_> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
        if entries.is_empty() {
            if cursor == "0" {
                cursor = ">".to_owned();
                continue;
            }
            idle_rounds += 1;
            if o.expect.is_some_and(|n| processed >= n) || idle_rounds > 20 {
                break;
            }
            continue;
        }
        idle_rounds = 0;
        for entry in entries {
            let id: MessageId = entry
                .get::<String>("id")
                .and_then(|s| s.parse().ok())
                .ok_or("a stream entry without an outbox message id")?;
            let payload: Vec<u8> = entry.get("payload").unwrap_or_default();
            let event: serde_json::Value = serde_json::from_slice(&payload)?;
            let mut tx = store.pool().begin().await?;
            if store.process_once(&mut *tx, "notes-consumer", id).await? {
                sqlx::query("INSERT INTO note_projections (note_id, body) VALUES ($1, $2)")
                    .bind(event["note_id"].as_i64().unwrap_or_default())
                    .bind(event["body"].as_str().unwrap_or_default())
                    .execute(&mut *tx)
                    .await?;
                processed += 1;
            } else {
                duplicates += 1;
            }
            tx.commit().await?;
            unacked.push(entry.id);
            handled += 1;
            if o.crash_after.is_some_and(|k| handled >= k) {
                println!("consumer: crashing after {handled} messages, {} not acknowledged", unacked.len());
                std::process::exit(3);
            }
        }
        let _: i64 = redis::cmd("XACK").arg(&o.stream).arg(GROUP).arg(&unacked).query_async(&mut conn).await?;
        unacked.clear();
    }
    let pending: (i64, redis::Value, redis::Value, redis::Value) =
        redis::cmd("XPENDING").arg(&o.stream).arg(GROUP).query_async(&mut conn).await?;
    println!(
        "consumer: processed {processed}, skipped {duplicates} duplicates; {} unacknowledged in the group",
        pending.0
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())).init();
    let o = Options::parse();
    match o.command {
        Command::Producer => producer(&o).await,
        Command::Consumer => consumer(&o).await,
    }
}
