//! Kafka publisher on rdkafka: idempotent producer (`acks=all`), the outbox key as record key, the
//! message id and user headers as record headers, per-message delivery reports awaited as a batch
//! (one shared completion per batch, not a future per message).
//!
//! ```no_run
//! use outbox_brokers::kafka::{KafkaOptions, KafkaPublisher};
//! let publisher = KafkaPublisher::new(KafkaOptions::new("127.0.0.1:9092").setting("compression.type", "lz4"))?;
//! # Ok::<(), outbox_engine::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::channel::oneshot;
use outbox_engine::{Error, HeldKeys, Message, MessageId, PublishError, Publisher, Result};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::Message as _;

use crate::{id_text, invalid_url, TopicMap, MESSAGE_ID_HEADER};

/// Reads back what was sent to a topic (feature `test-util`).
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub use crate::test_util::kafka::read_back;

/// Settings of a [`KafkaPublisher`].
#[derive(Clone)]
pub struct KafkaOptions {
    brokers: String,
    topics: TopicMap,
    delivery_timeout: Duration,
    settings: BTreeMap<String, String>,
}

impl fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings: BTreeMap<&str, &str> = self
            .settings
            .iter()
            .map(|(k, v)| {
                let secret = ["password", "secret", "sasl.oauthbearer.config", "key.pem"].iter().any(|s| k.contains(s));
                (k.as_str(), if secret { "***" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("KafkaOptions")
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("settings", &settings)
            .finish()
    }
}

impl KafkaOptions {
    /// Bootstrap servers (`host:port[,host:port...]`), idempotence on, `acks=all`, `linger.ms=1`,
    /// a 30 s delivery timeout. With `linger.ms=0` librdkafka wakes its broker thread for every
    /// message and sends the relay's batch as many small requests: `linger.ms=1` halves the CPU
    /// per message of producer and broker together (4.8 -> 2.1-2.7 us measured by `outbox-bench`)
    /// for at most 1 ms more latency. Set it to 0 where that millisecond matters more.
    pub fn new(brokers: impl Into<String>) -> Self {
        let mut settings = BTreeMap::new();
        settings.insert("enable.idempotence".to_owned(), "true".to_owned());
        settings.insert("acks".to_owned(), "all".to_owned());
        settings.insert("linger.ms".to_owned(), "1".to_owned());
        Self { brokers: brokers.into(), topics: TopicMap::new(), delivery_timeout: Duration::from_secs(30), settings }
    }

    /// From `kafka://host:port[,host:port]?setting=value&...`; query pairs become producer settings.
    pub fn from_url(url: &str) -> Result<Self> {
        let rest =
            url.strip_prefix("kafka://").ok_or_else(|| invalid_url("Kafka", url, "the scheme must be kafka://"))?;
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let hosts = hosts.trim_end_matches('/');
        if hosts.is_empty()
            || hosts.split(',').any(|h| h.rsplit_once(':').is_none_or(|(_, p)| p.parse::<u16>().is_err()))
        {
            return Err(invalid_url("Kafka", url, "expected kafka://host:port[,host:port]"));
        }
        let mut options = Self::new(hosts);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| invalid_url("Kafka", url, "query pairs are key=value"))?;
            options = options.setting(k, v);
        }
        Ok(options)
    }

    /// Sets any librdkafka producer property (passed through).
    pub fn setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.insert(key.into(), value.into());
        self
    }

    /// Topic mapping.
    pub fn topics(mut self, topics: TopicMap) -> Self {
        self.topics = topics;
        self
    }

    /// How long a message may wait for its delivery report (`message.timeout.ms`) before it fails as
    /// transient.
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.delivery_timeout = timeout;
        self
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        config.set("message.timeout.ms", self.delivery_timeout.as_millis().max(1).to_string());
        for (k, v) in &self.settings {
            config.set(k, v);
        }
        config
    }
}

/// Publishes to Kafka. Keep one per process: the producer is warm after its first batch (the idempotent
/// producer needs ~0.5 s for its producer id).
pub struct KafkaPublisher {
    producer: ThreadedProducer<BatchDelivery>,
    options: KafkaOptions,
}

impl fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaPublisher").field("options", &self.options).finish_non_exhaustive()
    }
}

/// The producer context of a [`KafkaPublisher`]: it collects the delivery reports of a batch into
/// the batch's shared state, so a batch costs one completion instead of a future per message.
#[derive(Debug, Default)]
pub struct BatchDelivery;

impl ClientContext for BatchDelivery {}

impl ProducerContext for BatchDelivery {
    type DeliveryOpaque = Arc<InFlightBatch>;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: Arc<InFlightBatch>) {
        match result {
            Ok(_) => batch.settled(None),
            Err((e, message)) => batch.settled(Some((delivery_id(message), classify(e.clone())))),
        }
    }
}

/// One batch's delivery reports on their way: what every message of it carries as its opaque.
#[derive(Debug)]
pub struct InFlightBatch {
    /// Reports still due, plus one the publishing call holds until it has sent every record.
    due: AtomicUsize,
    /// Failed reports: the message id from the record's header (`None` if it could not be read) and
    /// the error.
    failures: Mutex<Vec<(Option<MessageId>, PublishError)>>,
    done: Mutex<Option<oneshot::Sender<()>>>,
}

impl InFlightBatch {
    fn settled(&self, failure: Option<(Option<MessageId>, PublishError)>) {
        if let Some(failure) = failure {
            self.failures.lock().unwrap_or_else(|p| p.into_inner()).push(failure);
        }
        if self.due.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(done) = self.done.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = done.send(());
            }
        }
    }
}

/// The outbox id a failed delivery report's record carries in its message-id header.
fn delivery_id(message: &BorrowedMessage<'_>) -> Option<MessageId> {
    let header = message.headers()?.iter().find(|h| h.key == MESSAGE_ID_HEADER)?;
    parse_id(header.value?)
}

fn parse_id(text: &[u8]) -> Option<MessageId> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Applies a batch's failed delivery reports to the outcomes of its sends (the failure path only).
/// Each report fails the first message with its id that was sent and is not failed yet, so a batch
/// that repeats a message gets one outcome per report. A report that cannot be placed fails every
/// message still `Ok`, as transient: a failure is never reported as a success.
fn apply_failures(
    batch: &[Message],
    outcomes: &mut [Result<(), PublishError>],
    failures: Vec<(Option<MessageId>, PublishError)>,
) {
    for (id, error) in failures {
        let position = id.and_then(|id| (0..batch.len()).find(|&i| batch[i].id == id && outcomes[i].is_ok()));
        match position {
            Some(i) => outcomes[i] = Err(error),
            None => {
                for outcome in outcomes.iter_mut().filter(|o| o.is_ok()) {
                    *outcome = Err(PublishError::transient(format!("a delivery report of this batch failed: {error}")));
                }
            }
        }
    }
}

pub(crate) fn kafka_config_error(e: KafkaError) -> Error {
    Error::invalid_config(format!("Kafka producer configuration: {e}"))
}

/// Whether a Kafka error can never succeed for this message.
fn is_permanent(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as Code;
    matches!(
        e.rdkafka_error_code(),
        Some(
            Code::MessageSizeTooLarge
                | Code::InvalidMessageSize
                | Code::MessageBatchTooLarge
                | Code::InvalidTopic
                | Code::TopicAuthorizationFailed
                | Code::InvalidRecord
                | Code::PolicyViolation
                | Code::InvalidArgument
        )
    )
}

fn classify(e: KafkaError) -> PublishError {
    if is_permanent(&e) {
        PublishError::permanent(e)
    } else {
        PublishError::transient(e)
    }
}

fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl KafkaPublisher {
    /// Creates the producer (it connects lazily).
    pub fn new(options: KafkaOptions) -> Result<Self> {
        let producer = options.client_config().create_with_context(BatchDelivery).map_err(kafka_config_error)?;
        Ok(Self { producer, options })
    }

    /// The underlying producer.
    pub fn producer(&self) -> &ThreadedProducer<BatchDelivery> {
        &self.producer
    }

    /// Waits up to `timeout` for queued messages to be delivered.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.producer.flush(timeout).map_err(|e| Error::broker("flush", true, e))
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, batch: &[Message]) -> Vec<Result<(), PublishError>> {
        let (done, completed) = oneshot::channel();
        let in_flight = Arc::new(InFlightBatch {
            due: AtomicUsize::new(batch.len() + 1),
            failures: Mutex::new(Vec::new()),
            done: Mutex::new(Some(done)),
        });
        let mut outcomes: Vec<Result<(), PublishError>> = Vec::with_capacity(batch.len());
        let mut held = HeldKeys::default();
        for message in batch {
            if let Err(e) = held.check(message) {
                outcomes.push(Err(e));
                in_flight.settled(None);
                continue;
            }
            let topic = self.options.topics.destination(&message.topic);
            if !valid_topic(&topic) {
                outcomes.push(Err(PublishError::permanent(format!(
                    "{topic:?} is not a valid Kafka topic name (1-249 of [a-zA-Z0-9._-])"
                ))));
                in_flight.settled(None);
                continue;
            }
            let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
            let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 1)
                .insert(Header { key: MESSAGE_ID_HEADER, value: Some(id_text(message.id, &mut id)) });
            for (name, value) in &message.headers {
                headers = headers.insert(Header { key: name, value: Some(value.as_str()) });
            }
            let mut record =
                BaseRecord::with_opaque_to(&topic, in_flight.clone()).payload(&message.payload).headers(headers);
            if let Some(key) = &message.key {
                record = record.key(key.as_str());
            }
            let outcome = match self.producer.send(record) {
                Ok(()) => Ok(()),
                Err((e, _)) => {
                    in_flight.settled(None);
                    Err(classify(e))
                }
            };
            held.record(message, &outcome);
            outcomes.push(outcome);
        }
        // The publishing call's own share: the batch completes once every report is in.
        in_flight.settled(None);
        if completed.await.is_err() {
            // Unreachable while the producer lives (every sent record gets a report); fail safe.
            let e = || PublishError::transient("the Kafka producer dropped the delivery reports");
            return batch.iter().map(|_| Err(e())).collect();
        }
        let failures = std::mem::take(&mut *in_flight.failures.lock().unwrap_or_else(|p| p.into_inner()));
        apply_failures(batch, &mut outcomes, failures);
        outcomes
    }

    /// The idempotent producer keeps the order of each partition, and a key maps to one partition; a
    /// message that cannot be queued holds its key's later messages back.
    fn keeps_key_order(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(n: usize) -> Vec<Message> {
        let template = Message {
            id: MessageId::new(),
            topic: "t".into(),
            key: None,
            payload: Vec::new(),
            headers: outbox_engine::Headers::new(),
            created_at: chrono::Utc::now(),
            attempts: 1,
            last_error: None,
        };
        (0..n).map(|_| Message { id: MessageId::new(), ..template.clone() }).collect()
    }

    fn oks(n: usize) -> Vec<Result<(), PublishError>> {
        (0..n).map(|_| Ok(())).collect()
    }

    #[test]
    fn debug_hides_secret_settings() {
        let options = KafkaOptions::from_url("kafka://127.0.0.1:9092?sasl.username=app&sasl.password=hunter2")
            .expect("url")
            .setting("ssl.key.password", "hunter3")
            .setting("sasl.oauthbearer.config", "hunter4");
        let debug = format!("{options:?}");
        for secret in ["hunter2", "hunter3", "hunter4"] {
            assert!(!debug.contains(secret), "KafkaOptions Debug shows a secret: {debug}");
        }
        assert!(debug.contains("sasl.username") && debug.contains("app"), "{debug}");
    }

    #[test]
    fn the_message_id_header_parses_back_to_the_id() {
        let id = MessageId::new();
        assert_eq!(parse_id(id.to_string().as_bytes()), Some(id));
        assert_eq!(parse_id(b"not an id"), None);
        assert_eq!(parse_id(&[0xff, 0xfe]), None, "not UTF-8");
    }

    #[test]
    fn a_failed_report_fails_its_own_message_only() {
        let batch = messages(3);
        let mut outcomes = oks(3);
        apply_failures(&batch, &mut outcomes, vec![(Some(batch[1].id), PublishError::permanent("too large"))]);
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
        assert!(matches!(outcomes[1], Err(PublishError::Permanent(_))), "{outcomes:?}");
    }

    #[test]
    fn a_repeated_message_gets_one_failure_per_report() {
        let mut batch = messages(1);
        batch.extend([batch[0].clone(), batch[0].clone()]);
        let mut outcomes = oks(3);
        let failures = (0..3).map(|_| (Some(batch[0].id), PublishError::transient("timed out"))).collect();
        apply_failures(&batch, &mut outcomes, failures);
        assert!(outcomes.iter().all(|o| matches!(o, Err(PublishError::Transient(_)))), "{outcomes:?}");
    }

    #[test]
    fn a_report_that_cannot_be_placed_fails_every_message_still_ok() {
        let batch = messages(3);
        let mut outcomes = oks(3);
        outcomes[0] = Err(PublishError::permanent("invalid topic"));
        let stranger = (Some(MessageId::new()), PublishError::transient("timed out"));
        apply_failures(&batch, &mut outcomes, vec![stranger, (None, PublishError::transient("no header"))]);
        assert!(matches!(outcomes[0], Err(PublishError::Permanent(_))), "a local error stays: {outcomes:?}");
        assert!(outcomes[1..].iter().all(|o| matches!(o, Err(PublishError::Transient(_)))), "{outcomes:?}");
    }

    #[test]
    fn a_batch_completes_only_once_every_report_and_the_caller_are_in() {
        let (done, mut completed) = oneshot::channel();
        let in_flight =
            InFlightBatch { due: AtomicUsize::new(3), failures: Mutex::new(Vec::new()), done: Mutex::new(Some(done)) };
        in_flight.settled(None);
        in_flight.settled(Some((None, PublishError::transient("x"))));
        assert!(completed.try_recv().expect("not cancelled").is_none(), "the caller's share is still due");
        in_flight.settled(None);
        assert_eq!(completed.try_recv().expect("not cancelled"), Some(()));
        assert_eq!(in_flight.failures.lock().expect("not poisoned").len(), 1);
    }
}
