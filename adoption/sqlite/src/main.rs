//! A project that depends only on `outbox` with its `sqlite` feature (and tokio): an order and its
//! event in one SQLite transaction, relayed to a publisher of its own. `.ci/run` checks with
//! `cargo tree` that it pulls no other database driver and no broker client.
//!
//! ```text
//! cargo run -p outbox-adopt-sqlite
//! ```

use outbox::prelude::*;
use outbox::sqlite::SqliteStore;

/// A publisher of your own: print each message.
#[derive(Debug)]
struct Print;

#[async_trait]
impl PublishOne for Print {
    async fn publish_one(&self, message: &Message) -> Result<(), PublishError> {
        println!("published {} on {} (key {:?})", message.id, message.topic, message.key);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> outbox::Result<()> {
    let store = SqliteStore::connect("sqlite::memory:").await?;
    store.migrate().await?;
    outbox::sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, total_cents INTEGER NOT NULL)")
        .execute(store.pool())
        .await?;

    let mut tx = store.pool().begin().await?;
    outbox::sqlx::query("INSERT INTO orders (id, total_cents) VALUES (?, ?)")
        .bind(42)
        .bind(1999)
        .execute(&mut *tx)
        .await?;
    store.enqueue(&mut *tx, NewMessage::new("orders.placed", r#"{"order_id":42}"#).key("order-42")).await?;
    tx.commit().await?;

    let relay = Relay::builder(store.clone(), Print).build()?;
    let published = relay.dispatch_once().await?;
    assert_eq!(published, 1, "the committed order's event is relayed");
    Ok(())
}
