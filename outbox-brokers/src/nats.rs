//! NATS JetStream publisher on async-nats: each message goes to a subject mapped from its topic, with
//! its outbox id as `Nats-Msg-Id`, so the stream itself drops a copy it has already stored within its
//! duplicate window: a relay that crashed after publishing and before acknowledging leaves no
//! duplicate. A batch is sent in order on one connection and its publish acks are awaited together.
//!
//! Headers: the outbox id (`outbox-message-id`), key (`outbox-key`) and topic (`outbox-topic`) travel as
//! NATS headers with the message's own. A header NATS cannot carry as it is (a name outside printable
//! ASCII or with `:`, a name starting with `Nats-`, a value with a line break or surrounding spaces) is
//! sent percent-encoded as `outbox-enc.{name}` = `{value}`; [`decode_header`] turns it back.
//!
//! ```no_run
//! use std::time::Duration;
//! use outbox_brokers::nats::{create_stream, NatsOptions, NatsPublisher};
//! use outbox_brokers::TopicMap;
//!
//! # async fn demo() -> outbox_engine::Result<()> {
//! create_stream("nats://127.0.0.1:4222", "ORDERS", &["orders.>"], Duration::from_secs(120)).await?;
//! let options = NatsOptions::from_url("nats://127.0.0.1:4222")?.subjects(TopicMap::new().prefix("orders."));
//! let publisher = NatsPublisher::new(options);
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, Context};
use async_nats::HeaderMap;
use async_trait::async_trait;
use outbox_engine::secret::{redact_url, scrub};
use outbox_engine::{Error, Message, PublishError, Publisher, Result};
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use tokio::sync::OnceCell;

use crate::{check_limit, id_text, invalid_url, TopicMap, KEY_HEADER, MESSAGE_ID_HEADER, TOPIC_HEADER};

/// Reads back a stream (feature `test-util`).
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub use crate::test_util::nats::read_back;

/// The header that carries the outbox id to JetStream's de-duplication.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// The prefix of a header sent percent-encoded (see the [module docs](self)).
pub const ENCODED_HEADER_PREFIX: &str = "outbox-enc.";

/// Settings of a [`NatsPublisher`].
#[derive(Clone)]
pub struct NatsOptions {
    url: String,
    subjects: TopicMap,
    timeout: Duration,
    max_message_bytes: Option<usize>,
}

impl fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsOptions")
            .field("url", &redact_url(&self.url))
            .field("subjects", &self.subjects)
            .field("timeout", &self.timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

impl NatsOptions {
    /// From a server URL (`nats://[user:password@]host:4222`, several separated by commas): subjects
    /// named after topics, a 5 s timeout for connecting and for each publish ack, and the server's
    /// `max_payload` as the largest message.
    pub fn from_url(url: &str) -> Result<Self> {
        for server in url.split(',') {
            server.trim().parse::<async_nats::ServerAddr>().map_err(|e| invalid_url("NATS", url, e))?;
        }
        Ok(Self {
            url: url.to_owned(),
            subjects: TopicMap::new(),
            timeout: Duration::from_secs(5),
            max_message_bytes: None,
        })
    }

    /// Maps topics to subjects.
    pub fn subjects(mut self, map: TopicMap) -> Self {
        self.subjects = map;
        self
    }

    /// Timeout for connecting and for each publish ack; past it the message fails as transient.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Messages larger than this fail permanently before they are sent (default and upper bound: the
    /// server's `max_payload`, 1 MiB unless configured).
    pub fn max_message_bytes(mut self, bytes: usize) -> Result<Self> {
        check_limit(bytes)?;
        self.max_message_bytes = Some(bytes);
        Ok(self)
    }
}

/// Publishes to NATS JetStream. Connects on first use; the client reconnects by itself after the
/// server drops the connection (publishes in between fail as transient and are retried by the relay).
pub struct NatsPublisher {
    options: NatsOptions,
    connection: OnceCell<(async_nats::Client, Context)>,
}

impl fmt::Debug for NatsPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsPublisher").field("options", &self.options).finish_non_exhaustive()
    }
}

/// Connects to `url` with `timeout`; errors say which server without its password.
pub(crate) async fn connect(url: &str, timeout: Duration, name: &str) -> Result<(async_nats::Client, Context)> {
    let servers: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|server| server.trim().parse().map_err(|e| invalid_url("NATS", url, e)))
        .collect::<Result<_>>()?;
    let connecting = async_nats::ConnectOptions::new().name(name).connection_timeout(timeout).connect(servers);
    let client = tokio::time::timeout(timeout + Duration::from_secs(1), connecting)
        .await
        .map_err(|_| Error::broker("connect", true, format!("NATS ({}): connect timed out", redact_url(url))))?
        .map_err(|e| {
            Error::broker("connect", true, format!("NATS ({}): {}", redact_url(url), scrub(&e.to_string(), url)))
        })?;
    let mut context = jetstream::new(client.clone());
    context.set_timeout(timeout);
    Ok((client, context))
}

impl NatsPublisher {
    /// A publisher; nothing connects until the first publish.
    pub fn new(options: NatsOptions) -> Self {
        Self { options, connection: OnceCell::new() }
    }

    async fn connection(&self) -> Result<&(async_nats::Client, Context), PublishError> {
        self.connection
            .get_or_try_init(|| connect(&self.options.url, self.options.timeout, "outbox-relay"))
            .await
            .map_err(|e| PublishError::transient(e.report()))
    }

    /// The largest payload this publisher sends: the option, capped by the server's `max_payload`.
    fn max_bytes(&self, client: &async_nats::Client) -> usize {
        let server = client.server_info().max_payload;
        match (self.options.max_message_bytes, server) {
            (Some(mine), 0) => mine,
            (Some(mine), server) => mine.min(server),
            (None, 0) => 1024 * 1024,
            (None, server) => server,
        }
    }

    fn headers(message: &Message) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = id_text(message.id, &mut id);
        headers.insert(NATS_MSG_ID, id);
        headers.insert(MESSAGE_ID_HEADER, id);
        headers.insert(TOPIC_HEADER, encode_if_needed(&message.topic).as_str());
        if let Some(key) = &message.key {
            headers.insert(KEY_HEADER, encode_if_needed(key).as_str());
        }
        for (name, value) in &message.headers {
            if carries_as_is(name, value) {
                headers.insert(name.as_str(), value.as_str());
            } else {
                let name = format!("{ENCODED_HEADER_PREFIX}{}", utf8_percent_encode(name, NON_ALPHANUMERIC));
                headers.insert(name, utf8_percent_encode(value, NON_ALPHANUMERIC).to_string());
            }
        }
        headers
    }
}

/// Whether a header goes as it is: a NATS header name (printable ASCII, no `:`), not one of the
/// server's own (`Nats-...`) nor an encoded one, with a value NATS keeps unchanged.
fn carries_as_is(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
        && !name.get(..5).is_some_and(|start| start.eq_ignore_ascii_case("nats-"))
        && !name.starts_with(ENCODED_HEADER_PREFIX)
        && value == value.trim()
        && !value.contains(['\r', '\n'])
}

/// A key or topic as a header value: as it is when NATS keeps it unchanged, else percent-encoded with
/// an `enc:` prefix.
fn encode_if_needed(text: &str) -> String {
    if text == text.trim() && !text.contains(['\r', '\n']) && !text.starts_with("enc:") {
        text.to_owned()
    } else {
        format!("enc:{}", utf8_percent_encode(text, NON_ALPHANUMERIC))
    }
}

/// A header as it was enqueued, from one as NATS carried it (undoes the encoding in the
/// [module docs](self)); for receivers.
pub fn decode_header(name: &str, value: &str) -> (String, String) {
    match name.strip_prefix(ENCODED_HEADER_PREFIX) {
        Some(encoded) => (
            percent_decode_str(encoded).decode_utf8_lossy().into_owned(),
            percent_decode_str(value).decode_utf8_lossy().into_owned(),
        ),
        None => (name.to_owned(), value.to_owned()),
    }
}

/// A key or topic header's value as it was enqueued.
pub fn decode_value(value: &str) -> String {
    match value.strip_prefix("enc:") {
        Some(encoded) => percent_decode_str(encoded).decode_utf8_lossy().into_owned(),
        None => value.to_owned(),
    }
}

/// Why a subject cannot be published to, if it cannot: NATS subjects are dot-separated tokens
/// without spaces, and a publish may not use the wildcards `*` and `>`.
fn invalid_subject(subject: &str) -> Option<&'static str> {
    if subject.is_empty() {
        return Some("it is empty");
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("it contains white space");
    }
    if subject.split('.').any(str::is_empty) {
        return Some("it has an empty token");
    }
    if subject.split('.').any(|token| token == "*" || token == ">") {
        return Some("it has a wildcard");
    }
    None
}

fn publish_error(subject: &str, e: &async_nats::jetstream::context::PublishError) -> PublishError {
    let text = format!("NATS subject {subject}: {e}");
    match e.kind() {
        // No stream listens on the subject: nothing will take the message until one is created.
        PublishErrorKind::StreamNotFound => PublishError::permanent(format!("{text} (no stream captures it)")),
        _ => PublishError::transient(text),
    }
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&self, batch: &[Message]) -> Vec<Result<(), PublishError>> {
        let (client, context) = match self.connection().await {
            Ok(connection) => connection,
            Err(e) => {
                let text = e.report();
                return batch.iter().map(|_| Err(PublishError::transient(text.clone()))).collect();
            }
        };
        let max_bytes = self.max_bytes(client);
        let mut outcomes: Vec<Option<Result<(), PublishError>>> = Vec::with_capacity(batch.len());
        let mut acks: Vec<(usize, String, PublishAckFuture)> = Vec::with_capacity(batch.len());
        for (index, message) in batch.iter().enumerate() {
            let subject = self.options.subjects.destination(&message.topic).into_owned();
            if let Some(why) = invalid_subject(&subject) {
                outcomes.push(Some(Err(PublishError::permanent(format!("invalid NATS subject {subject:?}: {why}")))));
                continue;
            }
            if message.payload.len() > max_bytes {
                outcomes.push(Some(Err(PublishError::permanent(format!(
                    "message of {} bytes exceeds the {max_bytes} bytes NATS takes",
                    message.payload.len()
                )))));
                continue;
            }
            let publish = jetstream::message::PublishMessage::build()
                .payload(message.payload.clone().into())
                .headers(Self::headers(message));
            match context.send_publish(subject.clone(), publish).await {
                Ok(ack) => {
                    outcomes.push(None);
                    acks.push((index, subject, ack));
                }
                Err(e) => outcomes.push(Some(Err(publish_error(&subject, &e)))),
            }
        }
        let awaited = futures::future::join_all(acks.into_iter().map(|(index, subject, ack)| async move {
            (index, ack.await.map(drop).map_err(|e| publish_error(&subject, &e)))
        }))
        .await;
        for (index, outcome) in awaited {
            outcomes[index] = Some(outcome);
        }
        outcomes.into_iter().map(|o| o.unwrap_or_else(|| Err(PublishError::transient("not sent")))).collect()
    }
}

/// Creates (or keeps, if it exists) a stream `name` capturing `subjects`, which drops a message
/// whose `Nats-Msg-Id` it stored within `duplicate_window`. For tests and demos; production streams
/// are usually managed with the `nats` CLI or by configuration.
pub async fn create_stream(url: &str, name: &str, subjects: &[&str], duplicate_window: Duration) -> Result<()> {
    let (_, context) = connect(url, Duration::from_secs(10), "outbox-admin").await?;
    let config = jetstream::stream::Config {
        name: name.to_owned(),
        subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
        duplicate_window,
        ..Default::default()
    };
    context
        .get_or_create_stream(config)
        .await
        .map_err(|e| Error::broker("create_stream", true, format!("NATS stream {name}: {e}")))?;
    Ok(())
}

/// Deletes a stream (for test clean-up).
pub async fn delete_stream(url: &str, name: &str) -> Result<()> {
    let (_, context) = connect(url, Duration::from_secs(10), "outbox-admin").await?;
    context
        .delete_stream(name)
        .await
        .map_err(|e| Error::broker("delete_stream", true, format!("NATS stream {name}: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password_of_the_url() {
        let options = NatsOptions::from_url("nats://app:hunter2@127.0.0.1:4222").expect("url");
        let debug = format!("{:?}", NatsPublisher::new(options));
        assert!(!debug.contains("hunter2") && debug.contains("127.0.0.1"), "{debug}");
    }

    #[test]
    fn subjects_with_spaces_empty_tokens_or_wildcards_are_refused() {
        assert_eq!(invalid_subject("orders.placed"), None);
        for bad in ["", "a b", "a..b", ".a", "a.", "orders.*", "orders.>"] {
            assert!(invalid_subject(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn headers_nats_cannot_carry_are_encoded_and_decode_back() {
        for (name, value) in [("ünïcode", "värde ✓"), ("a:b", "x"), ("Nats-Expected-Stream", "s"), ("ok", " padded ")]
        {
            assert!(!carries_as_is(name, value), "{name}");
            let encoded_name = format!("{ENCODED_HEADER_PREFIX}{}", utf8_percent_encode(name, NON_ALPHANUMERIC));
            let encoded_value = utf8_percent_encode(value, NON_ALPHANUMERIC).to_string();
            assert!(carries_as_is(&encoded_name[ENCODED_HEADER_PREFIX.len()..], &encoded_value));
            assert_eq!(decode_header(&encoded_name, &encoded_value), (name.to_owned(), value.to_owned()));
        }
        assert!(carries_as_is("traceparent", "00-abc-def-01"));
        assert_eq!(decode_value(&encode_if_needed("key\nwith break")), "key\nwith break");
        assert_eq!(encode_if_needed("order-7"), "order-7");
    }
}
