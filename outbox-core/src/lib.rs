//! # outbox-engine
//!
//! The backend-agnostic heart of the [`outbox`](https://docs.rs/outbox) SDK for the transactional outbox pattern: a service writes
//! its rows and an outbox message in ONE database transaction; a relay publishes every committed message
//! to a broker, retries failures with backoff, dead-letters what can never succeed, and loses nothing.
//!
//! - [`NewMessage`] / [`Message`] / [`MessageId`] (UUID v7): what is enqueued and what is relayed.
//! - [`Store`] (relay side, `Arc<dyn Store>`), [`Enqueue`] (caller side, typed per backend) and
//!   [`Inbox`] (receiver side): the storage contract. Implementations live in `outbox-sqlx`.
//! - [`Publisher`] / [`PublishOne`] / [`publisher_fn`]: the broker contract, with [`PublishError`]
//!   saying transient (retry) or permanent (dead-letter now). Implementations live in `outbox-brokers`.
//! - [`Router`]: topic pattern -> publisher, so one relay feeds several destinations.
//! - [`RetryPolicy`]: exponential backoff with jitter, a cap, 25 attempts by default.
//! - [`Dispatcher`] and its implementation [`Relay`]: claim -> publish -> acknowledge, concurrent
//!   batches, per-key order, graceful shutdown, `tracing` spans and [`RelayMetrics`].
//! - [`memory`]: an in-memory store and publisher for tests.
//! - Feature `sqlx`: `?` on a `sqlx::Error` gives an [`Error::Store`], transient or permanent by
//!   the database's error codes.
//!
//! Applications usually depend on the `outbox` crate, which re-exports this one with the stores and
//! publishers its features select.
//!
//! ```
//! use std::time::Duration;
//! use outbox_engine::memory::{MemoryPublisher, MemoryStore};
//! use outbox_engine::{Dispatcher, Enqueue, NewMessage, Relay};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> outbox_engine::Result<()> {
//! let store = MemoryStore::new();
//! let publisher = MemoryPublisher::new();
//!
//! // In the caller's transaction: the business write and the message commit together.
//! let mut tx = store.begin();
//! store.enqueue(&mut tx, NewMessage::json("orders.placed", &serde_json::json!({"id": 1}))?.key("order-1")).await?;
//! tx.commit()?;
//!
//! // The relay publishes what was committed.
//! let relay = Relay::builder(store.clone(), publisher.clone()).build()?;
//! assert_eq!(relay.dispatch_once().await?, 1);
//! assert_eq!(publisher.published()[0].topic, "orders.placed");
//! assert_eq!(store.pending_len(), 0);
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

pub mod admin;
pub mod error;
pub mod memory;
pub mod message;
#[cfg(feature = "otel")]
#[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
pub mod otel;
pub mod publisher;
pub mod relay;
pub mod retry;
pub mod router;
pub mod secret;
#[cfg(feature = "signal")]
#[cfg_attr(docsrs, doc(cfg(feature = "signal")))]
pub mod signal;
#[cfg(feature = "sqlx")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
pub mod sqlx_error;
pub mod store;

pub use admin::{
    Admin, BlockedKey, Cursor, DeadLetterFilter, DeadLetterPage, MessageFilter, MessagePage, MessageState, Page,
    PendingMessage,
};
pub use async_trait::async_trait;
pub use error::{BoxError, Error, Result};
pub use message::{DeadLetter, Headers, Message, MessageId, MessageLimits, NewMessage, NewMessageParts};
pub use publisher::{publisher_fn, FnPublisher, HeldKeys, PublishError, PublishOne, Publisher};
pub use relay::{DeadLetterHook, Dispatcher, Relay, RelayBuilder, RelayMetrics, RelayOptions};
pub use retry::{Jitter, RetryDecision, RetryPolicy, RetryPolicyBuilder};
pub use router::Router;
#[cfg(feature = "signal")]
pub use signal::shutdown_on_signal;
pub use store::{
    Enqueue, Failure, Inbox, KeySlice, LateCommitChase, OutboxStats, RelayId, RelayInfo, RelayRegistry, Retry, Store,
};
pub use tokio_util::sync::CancellationToken;

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn public_handles_and_errors_are_send_sync() {
        assert_send_sync::<crate::Error>();
        assert_send_sync::<crate::PublishError>();
        assert_send_sync::<crate::Relay>();
        assert_send_sync::<crate::Router>();
        assert_send_sync::<crate::memory::MemoryStore>();
        assert_send_sync::<crate::memory::MemoryPublisher>();
        assert_send_sync::<std::sync::Arc<dyn crate::Store>>();
        assert_send_sync::<std::sync::Arc<dyn crate::Publisher>>();
    }
}
