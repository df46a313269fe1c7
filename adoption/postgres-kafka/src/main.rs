//! The README's usage, built as a project of its own that depends only on `outbox` (features
//! `postgres` and `kafka`) and tokio: it places an order and relays its event to Kafka.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test KAFKA_BROKERS=127.0.0.1:9092 \
//!     cargo run -p outbox-adopt-postgres-kafka
//! ```

use outbox::kafka::{KafkaOptions, KafkaPublisher};
use outbox::postgres::PostgresStore;
use outbox::prelude::*;

/// The business write and its event, in one transaction: both commit, or neither does.
async fn place_order(store: &PostgresStore, id: i64, total_cents: i64) -> outbox::Result<()> {
    let mut tx = store.pool().begin().await?;
    outbox::sqlx::query("INSERT INTO orders (id, total_cents) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
        .bind(id)
        .bind(total_cents)
        .execute(&mut *tx)
        .await?;
    let event = format!(r#"{{"order_id":{id},"total_cents":{total_cents}}}"#);
    store.enqueue(&mut *tx, NewMessage::new("orders.placed", event).key(format!("order-{id}"))).await?;
    tx.commit().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> outbox::Result<()> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());

    let store = PostgresStore::connect(&url).await?;
    store.migrate().await?; // or apply store.schema_sql() with your own migration tool
    outbox::sqlx::query("CREATE TABLE IF NOT EXISTS orders (id BIGINT PRIMARY KEY, total_cents BIGINT NOT NULL)")
        .execute(store.pool())
        .await?;
    place_order(&store, 42, 1999).await?;

    // The relay: claim -> publish -> acknowledge, with retries and dead letters. A service runs it
    // until SIGTERM with `relay.run(shutdown_on_signal()).await?`; this program relays what is
    // pending and stops.
    let publisher = KafkaPublisher::new(KafkaOptions::new(brokers))?;
    let relay = Relay::builder(store.clone(), publisher).concurrency(2).build()?;
    let mut published = 0;
    loop {
        let claimed = relay.dispatch_once().await?;
        if claimed == 0 {
            break;
        }
        published += claimed;
    }
    println!("published {published} message(s); pending now: {}", store.stats().await?.pending);
    Ok(())
}
