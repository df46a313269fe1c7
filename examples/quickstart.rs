//! Quick start: place orders on SQLite, relay their `OrderPlaced` events, watch a retry.
//!
//! ```text
//! cargo run -p outbox-examples --example quickstart
//! ```
//!
//! Needs no server: it creates a SQLite file in the temp directory. Each order is written with its
//! event in ONE transaction; a relay publishes the events to a printing publisher that fails the first
//! attempt of every third order, so you see the retry policy at work. Ctrl-C stops it gracefully.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use outbox::prelude::*;
use outbox::sqlite::SqliteStore;
use outbox::Jitter;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: i64,
    customer: String,
    total_cents: i64,
}

/// A publisher that prints each event, and fails the first attempt of every third order.
#[derive(Debug, Default)]
struct PrintingPublisher {
    failures: AtomicU32,
}

#[async_trait]
impl PublishOne for PrintingPublisher {
    async fn publish_one(&self, message: &Message) -> Result<(), PublishError> {
        let event: OrderPlaced = message.json().map_err(PublishError::permanent)?;
        if event.order_id % 3 == 0 && message.attempts == 1 {
            self.failures.fetch_add(1, Ordering::Relaxed);
            println!("  ✗ attempt {} for order {} failed: broker busy (will retry)", message.attempts, event.order_id);
            return Err(PublishError::transient("broker busy"));
        }
        let retried =
            if message.attempts > 1 { format!(" (retried, attempt {})", message.attempts) } else { String::new() };
        println!(
            "  ✓ published {} {} key={} order={} total={}{}",
            message.topic,
            message.id,
            message.key.as_deref().unwrap_or("-"),
            event.order_id,
            event.total_cents,
            retried
        );
        Ok(())
    }
}

async fn place_order(store: &SqliteStore, customer: &str, total_cents: i64, commit: bool) -> outbox::Result<i64> {
    let mut tx = store.pool().begin().await?;
    let order_id: i64 = sqlx::query_scalar("INSERT INTO orders (customer, total_cents) VALUES (?, ?) RETURNING id")
        .bind(customer)
        .bind(total_cents)
        .fetch_one(&mut *tx)
        .await?;
    let event = OrderPlaced { order_id, customer: customer.to_owned(), total_cents };
    store.enqueue(&mut *tx, NewMessage::json("orders.placed", &event)?.key(customer)).await?;
    if commit {
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(order_id)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .init();

    let path = std::env::temp_dir().join("outbox-quickstart.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    println!("outbox quick start: SQLite database at {}", path.display());
    let store = SqliteStore::connect(&format!("sqlite://{}", path.display())).await?;
    store.migrate().await?;
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, total_cents INTEGER NOT NULL)")
        .execute(store.pool())
        .await?;

    println!("placing 6 orders, each with its OrderPlaced event in the same transaction:");
    for (n, customer) in ["ada", "grace", "linus", "ada", "grace", "barbara"].into_iter().enumerate() {
        let id = place_order(&store, customer, 1_000 + n as i64 * 250, true).await?;
        println!("  order {id} for {customer} committed");
    }
    place_order(&store, "mallory", 99, false).await?;
    println!("  an order for mallory was rolled back: its event is gone with it");
    println!("outbox backlog: {} pending", store.stats().await?.pending);

    let policy = RetryPolicy::builder().initial_delay(Duration::from_millis(300)).jitter(Jitter::None).build()?;
    let relay = Relay::builder(store.clone(), PrintingPublisher::default())
        .retry_policy(policy)
        .poll_interval(Duration::from_millis(100))
        .build()?;

    println!("relay running (Ctrl-C stops it gracefully):");
    let shutdown = shutdown_on_signal();
    let running = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !shutdown.is_cancelled() && store.stats().await?.pending > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    running.await??;

    let metrics = relay.metrics();
    let stats = store.stats().await?;
    println!(
        "done: {} published, {} retried, {} dead-lettered; {} left pending",
        metrics.published, metrics.retried, metrics.dead_lettered, stats.pending
    );
    if stats.pending > 0 {
        return Err("the relay did not drain the outbox within 30 s".into());
    }
    Ok(())
}
