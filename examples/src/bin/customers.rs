//! Seed scenario "customers" (MariaDB / MySQL + RabbitMQ, three processes):
//!
//! - `customers app --count N`: creates N customers, each with a `CustomerCreated` event in the same
//!   transaction;
//! - `customers relay`: a long-running relay publishing the events to RabbitMQ (SIGTERM stops it
//!   gracefully; `kill -9` loses nothing);
//! - `customers worker`: consumes the queue and applies each event ONCE through the inbox, in its own
//!   transaction, although delivery is at-least-once; it counts the duplicates it skipped.
//!
//! ```text
//! export DATABASE_URL=mysql://root@127.0.0.1:3306/test AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f
//! cargo run -p outbox-examples --features seed-customers --bin customers -- relay &
//! cargo run -p outbox-examples --features seed-customers --bin customers -- worker &
//! cargo run -p outbox-examples --features seed-customers --bin customers -- app --count 10
//! ```
//! Options: `--queue NAME` (default `customers`, a durable quorum queue), `--lease-secs N` (relay), `--expect N` (worker: exit
//! after N events applied and the queue is idle for 2 s).

use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use outbox::mysql::MySqlStore;
use outbox::rabbitmq::{declare_queue, QueueType, RabbitMqOptions, RabbitMqPublisher};
use outbox::redact_url;
use outbox::{shutdown_on_signal, Dispatcher, Enqueue, Error, Inbox, MessageId, NewMessage, Relay};
use outbox::{TopicMap, MESSAGE_ID_HEADER};
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Serialize, Deserialize)]
struct CustomerCreated {
    id: u64,
    email: String,
}

struct Config {
    database_url: String,
    amqp_url: String,
    queue: String,
    count: usize,
    lease: Duration,
    expect: Option<usize>,
}

/// The customers scenario: an app that creates customers, a relay, and a worker that applies each
/// event once. Databases and broker come from `DATABASE_URL` and `AMQP_URL`.
#[derive(Debug, Parser)]
#[command(name = "customers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The RabbitMQ queue the relay publishes to and the worker consumes.
    #[arg(long, global = true, default_value = "customers")]
    queue: String,
    /// Customers the app creates.
    #[arg(long, global = true, default_value_t = 10)]
    count: usize,
    /// The relay's claim lease, in seconds.
    #[arg(long, global = true, default_value_t = 30)]
    lease_secs: u64,
    /// The worker stops once it has applied this many events.
    #[arg(long, global = true)]
    expect: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create customers, each with its event in one transaction.
    App,
    /// Relay the events to RabbitMQ until SIGTERM.
    Relay,
    /// Apply each event once through the inbox.
    Worker,
}

fn config(cli: &Cli) -> Result<Config, BoxError> {
    let database_url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL (mysql://user:pass@host/db)")?;
    if !database_url.starts_with("mysql://") && !database_url.starts_with("mariadb://") {
        return Err(format!("DATABASE_URL {} is not a mysql:// URL", redact_url(&database_url)).into());
    }
    let amqp_url = std::env::var("AMQP_URL").map_err(|_| "set AMQP_URL (amqp://user:pass@host:5672/%2f)")?;
    Ok(Config {
        database_url,
        amqp_url,
        queue: cli.queue.clone(),
        count: cli.count,
        lease: Duration::from_secs(cli.lease_secs),
        expect: cli.expect,
    })
}

async fn store(c: &Config) -> Result<MySqlStore, BoxError> {
    let store = MySqlStore::connect(&c.database_url).await?;
    store.migrate().await?;
    for ddl in [
        "CREATE TABLE IF NOT EXISTS customers (id BIGINT AUTO_INCREMENT PRIMARY KEY, email VARCHAR(255) NOT NULL)",
        "CREATE TABLE IF NOT EXISTS customer_welcomes (customer_id BIGINT PRIMARY KEY, email VARCHAR(255) NOT NULL)",
    ] {
        sqlx::query(ddl).execute(store.pool()).await?;
    }
    Ok(store)
}

async fn app(c: &Config) -> Result<(), BoxError> {
    let store = store(c).await?;
    for n in 0..c.count {
        let email = format!("customer-{}-{n}@example.com", std::process::id());
        let mut tx = store.pool().begin().await?;
        let done = sqlx::query("INSERT INTO customers (email) VALUES (?)").bind(&email).execute(&mut *tx).await?;
        let event = CustomerCreated { id: done.last_insert_id(), email };
        store.enqueue(&mut *tx, NewMessage::json("CustomerCreated", &event)?.key(event.id.to_string())).await?;
        tx.commit().await?;
    }
    println!("app: created {} customers", c.count);
    Ok(())
}

async fn relay(c: &Config) -> Result<(), BoxError> {
    let store = store(c).await?;
    declare_queue(&c.amqp_url, &c.queue, QueueType::Quorum).await?;
    let options = RabbitMqOptions::from_url(&c.amqp_url)?
        .routing_keys(TopicMap::new().map("CustomerCreated", &c.queue))
        .connection_name("customers-relay");
    let relay = Relay::builder(store, RabbitMqPublisher::new(options))
        .lease(c.lease)
        .poll_interval(Duration::from_millis(200))
        .build()?;
    println!("relay: running (SIGTERM or Ctrl-C stops it)");
    relay.run(shutdown_on_signal()).await?;
    println!("relay: stopped; {:?}", relay.metrics());
    Ok(())
}

async fn worker(c: &Config) -> Result<(), BoxError> {
    let store = store(c).await?;
    declare_queue(&c.amqp_url, &c.queue, QueueType::Quorum).await?;
    let connection = Connection::connect(&c.amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(100, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            c.queue.as_str().into(),
            "customers-worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let shutdown = shutdown_on_signal();
    let (mut applied, mut duplicates) = (0usize, 0usize);
    println!("worker: consuming {}", c.queue);
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = tokio::time::timeout(Duration::from_secs(2), deliveries.next()) => next,
        };
        let delivery = match next {
            Ok(Some(delivery)) => delivery?,
            Ok(None) => break,
            Err(_idle) => {
                if c.expect.is_some_and(|n| applied >= n) {
                    break;
                }
                continue;
            }
        };
        let id: MessageId = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(MESSAGE_ID_HEADER).cloned())
            .and_then(|v| match v {
                AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().and_then(|s| s.parse().ok()),
                _ => None,
            })
            .ok_or_else(|| Error::invalid_message("a delivery without an outbox message id"))?;
        let event: CustomerCreated = serde_json::from_slice(&delivery.data)?;
        // Apply once: the inbox mark and the effect commit (or roll back) together.
        let mut tx = store.pool().begin().await?;
        if store.process_once(&mut *tx, "customers-worker", id).await? {
            sqlx::query("INSERT INTO customer_welcomes (customer_id, email) VALUES (?, ?)")
                .bind(event.id)
                .bind(&event.email)
                .execute(&mut *tx)
                .await?;
            applied += 1;
        } else {
            duplicates += 1;
        }
        tx.commit().await?;
        delivery.ack(BasicAckOptions::default()).await?;
    }
    println!("worker: applied {applied} events, skipped {duplicates} duplicates");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())).init();
    let cli = Cli::parse();
    let c = config(&cli)?;
    match cli.command {
        Command::App => app(&c).await,
        Command::Relay => relay(&c).await,
        Command::Worker => worker(&c).await,
    }
}
