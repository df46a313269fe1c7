//! Seed scenario "library integration" (PostgreSQL + Kafka + a custom handler):
//!
//! - the service applies the SDK's schema with its OWN migration tool: `examples/migrations/` holds the
//!   SQL that `PostgresStore::schema_sql()` hands out (tables prefixed `library`), applied by
//!   `sqlx::migrate!`;
//! - it enqueues inside its own transactions, and starts the relay with a map from destination to
//!   handler (a [`Router`]): `events.*` go to Kafka, `commands.*` to an invoice handler written here;
//! - while the invoice service is down, the handler fails, so its messages end in the dead-letter table,
//!   which `dead-letters` lists and `replay` sends again.
//!
//! ```text
//! export DATABASE_URL=postgres://postgres@127.0.0.1:5432/test KAFKA_BROKERS=127.0.0.1:9092
//! cargo run -p outbox-examples --features seed-library --bin library -- schema   # the SQL the SDK hands out
//! cargo run -p outbox-examples --features seed-library --bin library -- migrate
//! cargo run -p outbox-examples --features seed-library --bin library -- run --invoice-service down
//! cargo run -p outbox-examples --features seed-library --bin library -- dead-letters
//! cargo run -p outbox-examples --features seed-library --bin library -- replay --invoice-service up
//! ```

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use outbox::kafka::{KafkaOptions, KafkaPublisher};
use outbox::postgres::PostgresStore;
use outbox::StoreOptions;
use outbox::TopicMap;
use outbox::{
    async_trait, CancellationToken, Dispatcher, Enqueue, Jitter, Message, NewMessage, PublishError, PublishOne, Relay,
    RetryPolicy, Router, Store,
};
use sqlx::PgPool;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The table prefix the checked-in migration was generated with.
pub const PREFIX: &str = "library";

/// The custom destination: an invoice service that is up or down.
#[derive(Debug)]
struct InvoiceHandler {
    up: bool,
}

#[async_trait]
impl PublishOne for InvoiceHandler {
    async fn publish_one(&self, message: &Message) -> Result<(), PublishError> {
        if !self.up {
            return Err(PublishError::transient("invoice service unavailable (connection refused)"));
        }
        println!("invoice sent for {} ({})", message.id, String::from_utf8_lossy(&message.payload));
        Ok(())
    }
}

fn env(name: &str) -> Result<String, BoxError> {
    std::env::var(name).map_err(|_| format!("set {name}").into())
}

/// The library-integration scenario: the SDK's SQL applied by the service's own migrations, a
/// `Router` to Kafka and to an invoice service that can be down, dead letters and their replay.
/// `DATABASE_URL`, `KAFKA_BROKERS` (and `KAFKA_TOPIC`) name the services.
#[derive(Debug, Parser)]
#[command(name = "library")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the SDK's schema.
    Schema,
    /// Apply the migrations (the SDK's SQL among them) with sqlx::migrate!.
    Migrate,
    /// Place five orders with their events and commands, then relay them.
    Run {
        /// Whether the invoice service accepts commands.
        #[arg(long, value_enum, default_value_t = Service::Up)]
        invoice_service: Service,
    },
    /// List the dead letters.
    DeadLetters,
    /// Replay every dead letter, then relay them.
    Replay {
        /// Whether the invoice service accepts commands.
        #[arg(long, value_enum, default_value_t = Service::Up)]
        invoice_service: Service,
    },
}

/// The invoice service's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Service {
    Up,
    Down,
}

async fn relay_until_drained(store: &PostgresStore, invoice_up: bool, kafka_topic: &str) -> Result<(), BoxError> {
    let kafka = KafkaPublisher::new(
        KafkaOptions::new(env("KAFKA_BROKERS")?).topics(TopicMap::new().map("events.order_placed", kafka_topic)),
    )?;
    let router = Router::new().route("events.*", kafka)?.route("commands.*", InvoiceHandler { up: invoice_up })?;
    let policy = RetryPolicy::builder()
        .initial_delay(Duration::from_millis(50))
        .max_delay(Duration::from_millis(200))
        .max_attempts(3)
        .jitter(Jitter::None)
        .build()?;
    let relay =
        Relay::builder(store.clone(), router).retry_policy(policy).poll_interval(Duration::from_millis(50)).build()?;
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
    let m = relay.metrics();
    println!("relay: published {}, retried {}, dead-lettered {}", m.published, m.retried, m.dead_lettered);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into())).init();
    let cli = Cli::parse();
    let pool = PgPool::connect(&env("DATABASE_URL")?).await?;
    let store = PostgresStore::new(pool.clone(), StoreOptions::default().table_prefix(PREFIX)?)?;
    let kafka_topic = std::env::var("KAFKA_TOPIC").unwrap_or_else(|_| "library.orders".into());
    match cli.command {
        Command::Schema => print!("{}", store.schema_sql()),
        Command::Migrate => {
            // The service's own migration tool; the SDK only handed out the SQL.
            let migrator = sqlx::migrate!("./migrations");
            migrator.run(&pool).await?;
            println!("migrations applied: {}", migrator.iter().count());
        }
        Command::Run { invoice_service } => {
            sqlx::query("CREATE TABLE IF NOT EXISTS library_orders (id BIGSERIAL PRIMARY KEY, total BIGINT NOT NULL)")
                .execute(&pool)
                .await?;
            for n in 0..5i64 {
                let mut tx = pool.begin().await?;
                let id: i64 = sqlx::query_scalar("INSERT INTO library_orders (total) VALUES ($1) RETURNING id")
                    .bind(100 * n)
                    .fetch_one(&mut *tx)
                    .await?;
                let event = serde_json::json!({ "order": id, "total": 100 * n });
                store.enqueue(&mut *tx, NewMessage::json("events.order_placed", &event)?.key(id.to_string())).await?;
                if n % 2 == 0 {
                    let command = serde_json::json!({ "invoice_for_order": id });
                    store.enqueue(&mut *tx, NewMessage::json("commands.send_invoice", &command)?).await?;
                }
                tx.commit().await?;
            }
            println!("enqueued 5 events and 3 commands");
            relay_until_drained(&store, invoice_service == Service::Up, &kafka_topic).await?;
        }
        Command::DeadLetters => {
            let dead = store.dead_letters(1000).await?;
            println!("{} dead letters", dead.len());
            for d in dead {
                println!("{} {} attempts={} error={}", d.message.id, d.message.topic, d.message.attempts, d.error);
            }
        }
        Command::Replay { invoice_service } => {
            let ids: Vec<_> = store.dead_letters(1000).await?.into_iter().map(|d| d.message.id).collect();
            let replayed = store.replay_dead_letters(&ids).await?;
            println!("replayed {replayed} dead letters");
            relay_until_drained(&store, invoice_service == Service::Up, &kafka_topic).await?;
        }
    }
    Ok(())
}
