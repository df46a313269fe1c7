//! MariaDB / MySQL -> RabbitMQ: customers written with a `CustomerCreated` event in one transaction,
//! relayed to a RabbitMQ quorum queue with publisher confirms.
//!
//! ```text
//! DATABASE_URL=mysql://root@127.0.0.1/test AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
//!   cargo run -p outbox-examples --features mysql-rabbitmq --example mysql_rabbitmq
//! ```

use std::time::Duration;

use outbox::mysql::MySqlStore;
use outbox::rabbitmq::{declare_queue, read_back, QueueType, RabbitMqOptions, RabbitMqPublisher};
use outbox::TopicMap;
use outbox::{shutdown_on_signal, Dispatcher, Enqueue, NewMessage, Relay, Store};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let database_url = env("DATABASE_URL", "mysql://root@127.0.0.1:3306/test");
    let amqp_url = env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let customers: usize = env("CUSTOMERS", "50").parse().map_err(|e| format!("CUSTOMERS must be a number: {e}"))?;

    let store = MySqlStore::connect(&database_url).await?;
    store.migrate().await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS example_customers (id BIGINT AUTO_INCREMENT PRIMARY KEY, email VARCHAR(255) NOT NULL)")
        .execute(store.pool())
        .await?;
    let queue = format!("customers_{}", std::process::id());
    declare_queue(&amqp_url, &queue, QueueType::Quorum).await?;

    for n in 0..customers {
        let email = format!("customer{n}@example.com");
        let mut tx = store.pool().begin().await?;
        let created =
            sqlx::query("INSERT INTO example_customers (email) VALUES (?)").bind(&email).execute(&mut *tx).await?;
        let event = serde_json::json!({ "id": created.last_insert_id(), "email": email });
        store.enqueue(&mut *tx, NewMessage::json("CustomerCreated", &event)?).await?;
        tx.commit().await?;
    }
    println!("{customers} customers committed with their CustomerCreated events");

    // Topic "CustomerCreated" goes to our queue through the default exchange.
    let options = RabbitMqOptions::from_url(&amqp_url)?.routing_keys(TopicMap::new().map("CustomerCreated", &queue));
    let relay = Relay::builder(store.clone(), RabbitMqPublisher::new(options)).build()?;
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

    let received = read_back(&amqp_url, &queue, customers, Duration::from_secs(30)).await?;
    println!("read back {} messages from RabbitMQ queue {queue}", received.len());
    outbox::rabbitmq::delete_queue(&amqp_url, &queue).await?;
    if received.len() != customers {
        return Err(format!("expected {customers} messages on RabbitMQ, found {}", received.len()).into());
    }
    Ok(())
}
