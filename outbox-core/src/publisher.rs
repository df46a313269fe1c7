//! The broker contract: [`Publisher`], its error [`PublishError`], and helpers for writing one.

use std::any::Any;
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;

use crate::error::BoxError;
use crate::message::Message;

/// Why one message could not be published, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// May succeed later (broker down, timeout, throttled): the message is retried by the policy.
    #[error("transient publish error")]
    Transient(#[source] BoxError),
    /// Can never succeed (too large, unroutable, rejected): the message is dead-lettered at once.
    #[error("permanent publish error")]
    Permanent(#[source] BoxError),
}

impl PublishError {
    /// A transient error from any error or message.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self::Transient(error.into())
    }

    /// A permanent error from any error or message.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self::Permanent(error.into())
    }

    /// The transient error a panicking publish is turned into.
    pub(crate) fn panicked(panic: &(dyn Any + Send)) -> Self {
        Self::transient(format!("the publisher panicked: {}", panic_text(panic)))
    }

    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }

    /// The error and its whole `source` chain as one line, as stored in `last_error`.
    pub fn report(&self) -> String {
        crate::error::report(self)
    }
}

/// The message of a panic payload (a `&str` or a `String`, as `panic!` makes them).
pub(crate) fn panic_text(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// Publishes messages to a broker (or anywhere: an email sender, a webhook). Object safe: used as
/// `Arc<dyn Publisher>`.
///
/// `publish` returns one outcome per message, in the order of `batch`. A message counts as published
/// only when its outcome is `Ok`, which must mean the broker acknowledged it. Unless the publisher
/// says it [keeps key order](Publisher::keeps_key_order), a call never holds two messages with the
/// same key, so they may be sent concurrently: the relay publishes a claim with several messages of a
/// key in rounds, one message of each key per call. If `publish` panics, the relay publishes that
/// batch again one message per call (in rounds where keys repeat), so only the messages that panic
/// fail; the others may then reach the broker twice.
///
/// For a publisher that handles one message at a time, implement [`PublishOne`] instead: every
/// `PublishOne` is a `Publisher` that sends a batch's messages concurrently.
#[async_trait]
pub trait Publisher: Send + Sync + fmt::Debug + 'static {
    /// Publishes `batch` and reports each message's outcome.
    async fn publish(&self, batch: &[Message]) -> Vec<Result<(), PublishError>>;

    /// Whether one call may hold several messages of a key (default `false`). A publisher that says
    /// so delivers the messages of a key in batch order and, once one of them fails, delivers none of
    /// the key's later messages of that call (it reports them failed too). A broker client that keeps
    /// the order of what one connection sends qualifies: Kafka's idempotent producer (per partition),
    /// an AMQP channel with publisher confirms, a Redis pipeline. The relay then publishes a whole
    /// claim in one call, which is what makes keyed traffic as fast as keyless.
    fn keeps_key_order(&self) -> bool {
        false
    }
}

/// For a publisher that [keeps key order](Publisher::keeps_key_order): remembers the keys of a batch
/// whose message failed transiently, so that none of their later messages is sent.
///
/// ```
/// use outbox_engine::{HeldKeys, Message, PublishError};
///
/// fn publish(batch: &[Message], send: impl Fn(&Message) -> Result<(), PublishError>) -> Vec<Result<(), PublishError>> {
///     let mut held = HeldKeys::default();
///     batch.iter().map(|message| {
///         held.check(message)?;
///         let outcome = send(message);
///         held.record(message, &outcome);
///         outcome
///     }).collect()
/// }
/// ```
#[derive(Debug, Default)]
pub struct HeldKeys<'a>(HashSet<&'a str>);

impl<'a> HeldKeys<'a> {
    /// `Err` (transient, not sent) when an earlier message of this message's key failed transiently.
    pub fn check(&self, message: &Message) -> Result<(), PublishError> {
        match message.key.as_deref() {
            Some(key) if self.0.contains(key) => {
                Err(PublishError::transient("not sent: an earlier message of its key failed in this batch"))
            }
            _ => Ok(()),
        }
    }

    /// Records a message's outcome: a transient failure holds its key back for the rest of the batch.
    pub fn record(&mut self, message: &'a Message, outcome: &Result<(), PublishError>) {
        if let (Err(e), Some(key)) = (outcome, message.key.as_deref()) {
            if e.is_transient() {
                self.0.insert(key);
            }
        }
    }
}

/// A publisher written one message at a time. A `publish_one` that panics fails its own message
/// (transient, so the retry policy applies and it ends in the dead letters), not its batch.
///
/// ```
/// use outbox_engine::{async_trait, Message, PublishError, PublishOne};
///
/// #[derive(Debug)]
/// struct Webhook;
///
/// #[async_trait]
/// impl PublishOne for Webhook {
///     async fn publish_one(&self, message: &Message) -> Result<(), PublishError> {
///         if message.payload.is_empty() {
///             return Err(PublishError::permanent("empty payload"));
///         }
///         Ok(()) // POST it somewhere
///     }
/// }
/// ```
#[async_trait]
pub trait PublishOne: Send + Sync + fmt::Debug + 'static {
    /// Publishes one message.
    async fn publish_one(&self, message: &Message) -> Result<(), PublishError>;
}

#[async_trait]
impl<T: PublishOne> Publisher for T {
    async fn publish(&self, batch: &[Message]) -> Vec<Result<(), PublishError>> {
        futures::future::join_all(batch.iter().map(|message| async move {
            AssertUnwindSafe(self.publish_one(message))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(PublishError::panicked(&*panic)))
        }))
        .await
    }
}

/// A [`Publisher`] from an async closure over one message.
///
/// ```
/// use outbox_engine::{publisher_fn, PublishError};
/// let printer = publisher_fn(|msg| async move {
///     println!("{} {}", msg.topic, msg.id);
///     Ok::<(), PublishError>(())
/// });
/// ```
pub fn publisher_fn<F, Fut>(f: F) -> FnPublisher<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), PublishError>> + Send,
{
    FnPublisher(f)
}

/// The publisher made by [`publisher_fn`]. The closure receives an owned copy of each message.
pub struct FnPublisher<F>(F);

impl<F> fmt::Debug for FnPublisher<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnPublisher")
    }
}

#[async_trait]
impl<F, Fut> PublishOne for FnPublisher<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), PublishError>> + Send,
{
    async fn publish_one(&self, message: &Message) -> Result<(), PublishError> {
        (self.0)(message.clone()).await
    }
}

#[async_trait]
impl<P: Publisher + ?Sized> Publisher for Arc<P> {
    async fn publish(&self, batch: &[Message]) -> Vec<Result<(), PublishError>> {
        (**self).publish(batch).await
    }
    fn keeps_key_order(&self) -> bool {
        (**self).keeps_key_order()
    }
}
