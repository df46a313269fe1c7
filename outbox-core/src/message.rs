//! Messages: what a caller enqueues ([`NewMessage`]) and what the relay publishes ([`Message`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Message headers, sorted by name.
pub type Headers = BTreeMap<String, String>;

/// The unique id of a message: a UUID v7, so ids sort by creation time.
///
/// It travels with the message to the broker (Kafka header, AMQP `message_id`, stream field) so that
/// receivers can deduplicate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(Uuid);

impl MessageId {
    /// A new, time-ordered id.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps an existing UUID (for example one read back from a broker).
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID.
    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for MessageId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Uuid::parse_str(s).map(Self).map_err(|e| Error::invalid_message(format!("message id {s:?} is not a UUID: {e}")))
    }
}

impl From<Uuid> for MessageId {
    fn from(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

/// Size limits checked before a message is written. Stores apply [`MessageLimits::default`] unless
/// configured otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageLimits {
    /// Longest topic, in bytes (default 255).
    pub max_topic_len: usize,
    /// Longest key or idempotency key, in bytes (default 255).
    pub max_key_len: usize,
    /// Largest payload, in bytes (default 1 MiB).
    pub max_payload_bytes: usize,
    /// Most headers on one message (default 64).
    pub max_headers: usize,
}

impl Default for MessageLimits {
    fn default() -> Self {
        Self { max_topic_len: 255, max_key_len: 255, max_payload_bytes: 1024 * 1024, max_headers: 64 }
    }
}

impl MessageLimits {
    /// The default limits with another payload ceiling.
    pub fn with_max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }
}

/// A message to enqueue in the caller's transaction.
///
/// ```
/// use outbox_engine::NewMessage;
/// use std::time::Duration;
///
/// let msg = NewMessage::json("orders.placed", &serde_json::json!({"order": 42}))?
///     .key("order-42")
///     .header("content-type", "application/json")
///     .idempotency_key("place-order-42")
///     .delay(Duration::from_secs(5));
/// assert_eq!(msg.topic(), "orders.placed");
/// # Ok::<(), outbox_engine::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct NewMessage {
    id: MessageId,
    topic: String,
    key: Option<String>,
    payload: Vec<u8>,
    headers: Headers,
    idempotency_key: Option<String>,
    delay: Option<Duration>,
}

impl NewMessage {
    /// A message with a topic and raw payload bytes. Its [`MessageId`] is assigned now.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            id: MessageId::new(),
            topic: topic.into(),
            key: None,
            payload: payload.into(),
            headers: Headers::new(),
            idempotency_key: None,
            delay: None,
        }
    }

    /// A message whose payload is `value` serialized as JSON.
    pub fn json<T: Serialize + ?Sized>(topic: impl Into<String>, value: &T) -> Result<Self> {
        let payload = serde_json::to_vec(value)
            .map_err(|e| Error::invalid_message(format!("payload is not serializable as JSON: {e}")))?;
        Ok(Self::new(topic, payload))
    }

    /// The ordering / partitioning key: messages with the same key are published in enqueue order.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header (replacing one of the same name).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// A key under which the store keeps at most one message while it is in the outbox.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Do not publish before `delay` has passed since the enqueue.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// The id the message will be stored with.
    pub fn id(&self) -> MessageId {
        self.id
    }
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
    /// The ordering key.
    pub fn message_key(&self) -> Option<&str> {
        self.key.as_deref()
    }
    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }
    /// The idempotency key.
    pub fn idempotency(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }
    /// The publish delay.
    pub fn publish_delay(&self) -> Option<Duration> {
        self.delay
    }

    /// Checks the message against `limits`; stores call this before writing anything.
    pub fn validate(&self, limits: &MessageLimits) -> Result<()> {
        validate_text("topic", &self.topic, limits.max_topic_len)?;
        if let Some(key) = &self.key {
            validate_text("key", key, limits.max_key_len)?;
        }
        if let Some(key) = &self.idempotency_key {
            validate_text("idempotency key", key, limits.max_key_len)?;
        }
        if self.payload.len() > limits.max_payload_bytes {
            return Err(Error::invalid_message(format!(
                "payload of {} bytes exceeds the limit of {} bytes",
                self.payload.len(),
                limits.max_payload_bytes
            )));
        }
        if self.headers.len() > limits.max_headers {
            return Err(Error::invalid_message(format!(
                "{} headers exceed the limit of {}",
                self.headers.len(),
                limits.max_headers
            )));
        }
        for name in self.headers.keys() {
            validate_text("header name", name, limits.max_key_len)?;
        }
        if let Some(delay) = self.delay {
            if delay > Duration::from_secs(10 * 365 * 24 * 3600) {
                return Err(Error::invalid_message("delay is longer than ten years"));
            }
        }
        Ok(())
    }

    /// Splits the message into its parts, for store implementations.
    pub fn into_parts(self) -> NewMessageParts {
        #[cfg_attr(not(feature = "otel"), allow(unused_mut))]
        let mut headers = self.headers;
        #[cfg(feature = "otel")]
        crate::otel::inject_current(&mut headers);
        NewMessageParts {
            id: self.id,
            topic: self.topic,
            key: self.key,
            payload: self.payload,
            headers,
            idempotency_key: self.idempotency_key,
            delay: self.delay,
        }
    }
}

impl fmt::Debug for NewMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewMessage")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .field("key", &self.key)
            .field("payload_len", &self.payload.len())
            .field("headers", &self.headers)
            .field("idempotency_key", &self.idempotency_key)
            .field("delay", &self.delay)
            .finish()
    }
}

fn validate_text(what: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid_message(format!("{what} is empty")));
    }
    if value.len() > max {
        return Err(Error::invalid_message(format!("{what} is {} bytes long; the limit is {max}", value.len())));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid_message(format!("{what} {value:?} contains a control character")));
    }
    Ok(())
}

/// The parts of a [`NewMessage`], handed to store implementations by [`NewMessage::into_parts`].
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct NewMessageParts {
    pub id: MessageId,
    pub topic: String,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Headers,
    pub idempotency_key: Option<String>,
    pub delay: Option<Duration>,
}

/// A committed message as the relay sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// The id (also sent to the broker).
    pub id: MessageId,
    /// The topic, mapped to a broker destination by the publisher.
    pub topic: String,
    /// The ordering key.
    pub key: Option<String>,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// The headers.
    pub headers: Headers,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// How many times it has been claimed for publishing, this claim included.
    pub attempts: u32,
    /// The error of the previous failed attempt.
    pub last_error: Option<String>,
}

impl Message {
    /// Deserializes a JSON payload.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| Error::invalid_message(format!("payload of {} is not the expected JSON: {e}", self.id)))
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .field("key", &self.key)
            .field("payload_len", &self.payload.len())
            .field("headers", &self.headers)
            .field("created_at", &self.created_at)
            .field("attempts", &self.attempts)
            .field("last_error", &self.last_error)
            .finish()
    }
}

/// A message parked in the dead-letter set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message as it was last claimed (`attempts` is the number of attempts made).
    pub message: Message,
    /// The error that parked it.
    pub error: String,
    /// When it was parked.
    pub dead_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_time_ordered_and_parse_back() {
        let a = MessageId::new();
        let b = MessageId::new();
        assert!(a < b);
        assert_eq!(a.to_string().parse::<MessageId>().unwrap(), a);
        assert!("not-a-uuid".parse::<MessageId>().is_err());
    }

    #[test]
    fn validation_rejects_bad_input() {
        let limits = MessageLimits::default().with_max_payload_bytes(4);
        assert!(NewMessage::new("t", vec![0; 4]).validate(&limits).is_ok());
        assert!(NewMessage::new("t", vec![0; 5]).validate(&limits).is_err());
        assert!(NewMessage::new("", vec![]).validate(&limits).is_err());
        assert!(NewMessage::new("a\nb", vec![]).validate(&limits).is_err());
        assert!(NewMessage::new("t", vec![]).key("").validate(&limits).is_err());
        assert!(NewMessage::new("t".repeat(256), vec![]).validate(&limits).is_err());
    }
}
