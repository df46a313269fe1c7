//! # outbox-brokers
//!
//! [`Publisher`](outbox_engine::Publisher)s for the common brokers, each behind its cargo feature:
//!
//! | feature | publisher | delivery guarantee used |
//! |---|---|---|
//! | `kafka` | [`kafka::KafkaPublisher`] (rdkafka) | idempotent producer, `acks=all`, per-message delivery reports |
//! | `rabbitmq` | [`rabbitmq::RabbitMqPublisher`] (lapin) | publisher confirms, persistent messages, `mandatory` |
//! | `redis` | [`redis::RedisPublisher`] (redis-rs) | Streams `XADD`, pipelined, reconnecting connection manager |
//! | `nats` | [`nats::NatsPublisher`] (async-nats) | JetStream publish acks, `Nats-Msg-Id` de-duplication by the stream |
//!
//! Every publisher sends the outbox `MessageId` with the message (Kafka header
//! and AMQP header `outbox-message-id` plus the AMQP `message_id` property, stream field `id`, NATS
//! headers `outbox-message-id` and `Nats-Msg-Id`), so that
//! receivers can deduplicate, and maps the outbox topic to its destination through a [`TopicMap`].
//! Errors are classified: a message the broker can never take (too large, unroutable, invalid name) is
//! [`PublishError::Permanent`](outbox_engine::PublishError) and goes to the dead letters; a broker that is
//! down or slow is transient and retried by the relay's policy.
//!
//! Each module also has a `read_back` helper that reads what was published, for tests (ours and yours).
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

use std::borrow::Cow;
use std::collections::BTreeMap;

use outbox_engine::{Error, Result};

#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub mod kafka;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;
#[cfg(feature = "rabbitmq")]
#[cfg_attr(docsrs, doc(cfg(feature = "rabbitmq")))]
pub mod rabbitmq;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
#[cfg(feature = "test-util")]
mod test_util;

/// A message read back from a broker (feature `test-util`).
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub use test_util::Received;

/// The header (Kafka, AMQP) or field (Redis) that carries the outbox message id.
pub const MESSAGE_ID_HEADER: &str = "outbox-message-id";
/// The AMQP header / Redis field that carries the outbox key (Kafka uses the record key).
pub const KEY_HEADER: &str = "outbox-key";
/// The AMQP header / Redis field that carries the outbox topic.
pub const TOPIC_HEADER: &str = "outbox-topic";

/// Maps outbox topics to broker destinations (Kafka topic, AMQP routing key, Redis stream): an explicit
/// mapping wins, otherwise the topic with an optional prefix.
///
/// ```
/// use outbox_brokers::TopicMap;
/// let map = TopicMap::new().prefix("prod.").map("mail", "mail-queue");
/// assert_eq!(map.destination("orders.placed"), "prod.orders.placed");
/// assert_eq!(map.destination("mail"), "mail-queue");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicMap {
    prefix: String,
    explicit: BTreeMap<String, String>,
}

impl TopicMap {
    /// The identity mapping.
    pub fn new() -> Self {
        Self::default()
    }

    /// Prepends `prefix` to topics without an explicit mapping.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sends `topic` to `destination`.
    pub fn map(mut self, topic: impl Into<String>, destination: impl Into<String>) -> Self {
        self.explicit.insert(topic.into(), destination.into());
        self
    }

    /// The destination of `topic` (borrowed unless a prefix is prepended: publishers call this for
    /// every message).
    pub fn destination<'a>(&'a self, topic: &'a str) -> Cow<'a, str> {
        match self.explicit.get(topic) {
            Some(destination) => Cow::Borrowed(destination),
            None if self.prefix.is_empty() => Cow::Borrowed(topic),
            None => Cow::Owned(format!("{}{topic}", self.prefix)),
        }
    }
}

/// `id` as hyphenated lowercase text in `buf`, without allocating (publishers write one per message).
#[cfg(any(feature = "kafka", feature = "redis", feature = "nats"))]
pub(crate) fn id_text(id: outbox_engine::MessageId, buf: &mut [u8; uuid::fmt::Hyphenated::LENGTH]) -> &str {
    id.as_uuid().hyphenated().encode_lower(buf)
}

#[allow(dead_code)]
fn invalid_url(what: &str, url: &str, reason: impl std::fmt::Display) -> Error {
    Error::invalid_config(format!(
        "invalid {what} URL {}: {}",
        outbox_engine::secret::redact_url(url),
        outbox_engine::secret::scrub(&reason.to_string(), url)
    ))
}

#[allow(dead_code)]
fn check_limit(max: usize) -> Result<()> {
    if max == 0 {
        return Err(Error::invalid_config("max_message_bytes must be positive"));
    }
    Ok(())
}
