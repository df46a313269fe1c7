//! PostgreSQL -> Kafka: orders written with their events in one transaction, relayed to Kafka.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/test KAFKA_BROKERS=127.0.0.1:9092 \
//!   cargo run -p outbox-examples --features postgres-kafka --example postgres_kafka
//! ```
//!
//! Enqueues `ORDERS` (default 100) orders, relays them to the Kafka topic `orders.placed` with the
//! order id as key, reads them back, and stops. The relay is woken by `pg_notify` at each commit.

use std::time::{Duration, Instant};

use outbox::kafka::{read_back, KafkaOptions, KafkaPublisher};
use outbox::postgres::PostgresStore;
use outbox::{shutdown_on_signal, Dispatcher, Enqueue, NewMessage, Relay, Store};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let database_url = env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    let brokers = env("KAFKA_BROKERS", "127.0.0.1:9092");
    let orders: i64 = env("ORDERS", "100").parse().map_err(|e| format!("ORDERS must be a number: {e}"))?;

    let store = PostgresStore::connect(&database_url).await?;
    store.migrate().await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS example_orders (id BIGSERIAL PRIMARY KEY, total_cents BIGINT NOT NULL)")
        .execute(store.pool())
        .await?;
    let topic = format!("orders.placed.{}", std::process::id());

    let started = Instant::now();
    for n in 0..orders {
        let mut tx = store.pool().begin().await?;
        let id: i64 = sqlx::query_scalar("INSERT INTO example_orders (total_cents) VALUES ($1) RETURNING id")
            .bind(1_000 + n)
            .fetch_one(&mut *tx)
            .await?;
        let event = serde_json::json!({ "order_id": id, "total_cents": 1_000 + n });
        store.enqueue(&mut *tx, NewMessage::json(&topic, &event)?.key(id.to_string())).await?;
        tx.commit().await?;
    }
    println!("{orders} orders committed with their events in {:?}", started.elapsed());

    let publisher = KafkaPublisher::new(KafkaOptions::new(&brokers))?;
    let relay = Relay::builder(store.clone(), publisher).build()?;
    let shutdown = shutdown_on_signal();
    let running = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    while store.stats().await?.pending > 0 && !shutdown.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    running.await??;
    println!("relayed: {:?}", relay.metrics());

    let received =
        tokio::task::spawn_blocking(move || read_back(&brokers, &topic, orders as usize, Duration::from_secs(30)))
            .await??;
    println!("read back {} messages from Kafka; the first: {:?}", received.len(), received.first());
    if received.len() != orders as usize {
        return Err(format!("expected {orders} messages on Kafka, found {}", received.len()).into());
    }
    Ok(())
}
