//! # outbox
//!
//! The transactional outbox for Rust. Your service writes its rows and an outbox message in **one
//! database transaction**; a relay publishes every committed message to a broker, retries failures
//! with backoff, dead-letters what can never succeed, keeps the order of each key's messages, and
//! loses nothing. Receivers use the [`Inbox`] to apply each message once, because delivery is
//! at-least-once.
//!
//! One dependency, with the pieces you use as features:
//!
//! ```toml
//! [dependencies]
//! outbox = { version = "0.1", features = ["postgres", "kafka"] }
//! ```
//!
//! | feature | what it adds |
//! |---|---|
//! | `postgres`, `mysql`, `sqlite` | the store of that database (`outbox::postgres::PostgresStore`, ...), [`StoreOptions`], and a re-export of [`sqlx`] with that driver |
//! | `postgres-replication` | PostgreSQL relays woken from the write-ahead log ([`WakeUps::Replication`]): producers pay nothing for wake-ups (Rust 1.88) |
//! | `kafka`, `rabbitmq`, `redis`, `nats` | the publisher of that broker (`outbox::kafka::KafkaPublisher`, ...) |
//! | `signal` (default) | [`shutdown_on_signal`]: stop a relay on SIGTERM / Ctrl-C |
//! | `test-util` | for tests and examples: each broker's `read_back`, the memory store's fault switches |
//! | `otel` | trace context: `traceparent` at enqueue, a producer span per batch linked to it ([`otel`]) |
//!
//! With a database feature, `?` on a [`sqlx::Error`] works in any function that returns
//! [`outbox::Result`](Result): the error becomes an [`Error::Store`], transient or permanent by the
//! database's error codes.
//!
//! ```no_run
//! # #[cfg(all(feature = "postgres", feature = "kafka"))]
//! # mod example {
//! use outbox::prelude::*;
//! use outbox::kafka::{KafkaOptions, KafkaPublisher};
//! use outbox::postgres::PostgresStore;
//!
//! async fn place_order(store: &PostgresStore) -> outbox::Result<()> {
//!     // The business write and the message commit (or roll back) together.
//!     let mut tx = store.pool().begin().await?;
//!     outbox::sqlx::query("INSERT INTO orders (id, total) VALUES ($1, $2)").bind(42).bind(1999).execute(&mut *tx).await?;
//!     store.enqueue(&mut *tx, NewMessage::new("orders.placed", r#"{"id":42}"#).key("order-42")).await?;
//!     tx.commit().await?;
//!     Ok(())
//! }
//!
//! async fn run_relay(store: PostgresStore) -> outbox::Result<()> {
//!     let publisher = KafkaPublisher::new(KafkaOptions::new("localhost:9092"))?;
//!     let relay = Relay::builder(store, publisher).build()?;
//!     relay.run(shutdown_on_signal()).await
//! }
//! # }
//! ```
//!
//! Without services, the in-memory store and publisher in [`memory`] run the same relay:
//!
//! ```
//! use outbox::memory::{MemoryPublisher, MemoryStore};
//! use outbox::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> outbox::Result<()> {
//! let (store, publisher) = (MemoryStore::new(), MemoryPublisher::new());
//! let mut tx = store.begin();
//! store.enqueue(&mut tx, NewMessage::new("orders.placed", "order 1").key("order-1")).await?;
//! tx.commit()?;
//! let relay = Relay::builder(store.clone(), publisher.clone()).build()?;
//! assert_eq!(relay.dispatch_once().await?, 1);
//! assert_eq!(publisher.published()[0].topic, "orders.placed");
//! # Ok(()) }
//! ```
//!
//! The parts are crates of their own for those who want them: `outbox-engine` (messages, the
//! [`Store`] / [`Publisher`] / [`Dispatcher`] traits, the relay, retry policy, router, memory
//! backend), `outbox-sqlx` (stores), `outbox-brokers` (publishers) and `outbox-testkit`
//! (conformance suites to run against your own store or publisher).
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

pub use outbox_engine::*;

/// The traits and types almost every user of the SDK names: `use outbox::prelude::*;`.
pub mod prelude {
    #[cfg(feature = "signal")]
    pub use outbox_engine::shutdown_on_signal;
    pub use outbox_engine::{
        async_trait, CancellationToken, Dispatcher, Enqueue, Inbox, Message, NewMessage, PublishError, PublishOne,
        Publisher, Relay, RetryPolicy, Router, Store,
    };
}

/// `sqlx`, with the drivers of the enabled database features: the same version the stores use, so
/// its pools, transactions and errors work with them.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))))]
pub use sqlx;

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))))]
pub use outbox_sqlx::{error_from, redact_url, Identifier, StoreOptions, TableNames, WakeUps};

/// The PostgreSQL store (feature `postgres`).
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres {
    pub use outbox_sqlx::postgres::*;
}

/// The MySQL / MariaDB store (feature `mysql`).
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub mod mysql {
    pub use outbox_sqlx::mysql::*;
}

/// The SQLite store (feature `sqlite`).
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite {
    pub use outbox_sqlx::sqlite::*;
}

#[cfg(any(feature = "kafka", feature = "rabbitmq", feature = "redis", feature = "nats"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "kafka", feature = "rabbitmq", feature = "redis", feature = "nats"))))]
pub use outbox_brokers::{TopicMap, KEY_HEADER, MESSAGE_ID_HEADER, TOPIC_HEADER};

/// The Kafka publisher (feature `kafka`).
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub mod kafka {
    pub use outbox_brokers::kafka::*;
}

/// The RabbitMQ publisher (feature `rabbitmq`).
#[cfg(feature = "rabbitmq")]
#[cfg_attr(docsrs, doc(cfg(feature = "rabbitmq")))]
pub mod rabbitmq {
    pub use outbox_brokers::rabbitmq::*;
}

/// The Redis Streams publisher (feature `redis`).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis {
    pub use outbox_brokers::redis::*;
}

/// The NATS JetStream publisher (feature `nats`).
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats {
    pub use outbox_brokers::nats::*;
}
