//! RabbitMQ publisher on lapin: publisher confirms, persistent delivery, `mandatory` publishing (an
//! unroutable message is a permanent failure, not a silent drop), the message id as the AMQP
//! `message_id` and a header, and a reconnect after the connection or channel dies.
//!
//! ```no_run
//! use outbox_brokers::rabbitmq::{RabbitMqOptions, RabbitMqPublisher};
//! // Default exchange: the routing key (the mapped topic) is the queue name.
//! let publisher = RabbitMqPublisher::new(RabbitMqOptions::from_url("amqp://guest:guest@127.0.0.1:5672/%2f")?);
//! # Ok::<(), outbox_engine::Error>(())
//! ```

use std::fmt;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use outbox_engine::secret::{redact_url, scrub};
use outbox_engine::{Error, Message, PublishError, Publisher, Result};
use tokio::sync::Mutex;

use crate::{check_limit, invalid_url, TopicMap, KEY_HEADER, MESSAGE_ID_HEADER, TOPIC_HEADER};

/// Reads back a queue, and deletes one (feature `test-util`).
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub use crate::test_util::rabbitmq::{delete_queue, read_back};

/// Settings of a [`RabbitMqPublisher`].
#[derive(Clone)]
pub struct RabbitMqOptions {
    url: String,
    connection_name: String,
    exchange: String,
    routing_keys: TopicMap,
    timeout: Duration,
    max_message_bytes: usize,
}

impl fmt::Debug for RabbitMqOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqOptions")
            .field("url", &redact_url(&self.url))
            .field("connection_name", &self.connection_name)
            .field("exchange", &self.exchange)
            .field("routing_keys", &self.routing_keys)
            .field("timeout", &self.timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

impl RabbitMqOptions {
    /// From an AMQP URL (`amqp://user:password@host:5672/vhost`): the default exchange (routing key =
    /// queue name), a 10 s timeout for connecting and for confirms, 16 MiB largest message.
    pub fn from_url(url: &str) -> Result<Self> {
        url.parse::<lapin::uri::AMQPUri>().map_err(|e| invalid_url("AMQP", url, e))?;
        Ok(Self {
            url: url.to_owned(),
            connection_name: "outbox-relay".to_owned(),
            exchange: String::new(),
            routing_keys: TopicMap::new(),
            timeout: Duration::from_secs(10),
            max_message_bytes: 16 * 1024 * 1024,
        })
    }

    /// The connection name shown by RabbitMQ (management UI, `rabbitmqctl list_connections`);
    /// default `outbox-relay`.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// Publishes to this exchange (which must exist) instead of the default one.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// Maps topics to routing keys.
    pub fn routing_keys(mut self, map: TopicMap) -> Self {
        self.routing_keys = map;
        self
    }

    /// Timeout for connecting and for a batch's confirms; past it the batch fails as transient.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Messages larger than this fail permanently before they are sent.
    pub fn max_message_bytes(mut self, bytes: usize) -> Result<Self> {
        check_limit(bytes)?;
        self.max_message_bytes = bytes;
        Ok(self)
    }
}

/// One message's send within a batch: refused before it was sent, sent at its first poll, or
/// queued and waiting for lapin's I/O loop.
enum Outgoing<F> {
    Refused(PublishError),
    Done(lapin::Result<lapin::PublisherConfirm>),
    Queued(std::pin::Pin<Box<F>>),
}

/// Publishes to RabbitMQ with confirms. Connects lazily and reconnects when the connection is lost.
pub struct RabbitMqPublisher {
    options: RabbitMqOptions,
    session: Mutex<Option<(Connection, Channel)>>,
}

impl fmt::Debug for RabbitMqPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqPublisher").field("options", &self.options).finish_non_exhaustive()
    }
}

pub(crate) fn short(s: &str) -> ShortString {
    ShortString::from(s.to_owned())
}

fn transient(url: &str, what: &str, e: impl fmt::Display) -> PublishError {
    PublishError::transient(format!("RabbitMQ {what} ({}): {}", redact_url(url), scrub(&e.to_string(), url)))
}

pub(crate) async fn connect(url: &str, name: &str) -> lapin::Result<(Connection, Channel)> {
    let properties = ConnectionProperties::default().with_connection_name(LongString::from(name.as_bytes()));
    let connection = Connection::connect(url, properties).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok((connection, channel))
}

impl RabbitMqPublisher {
    /// A publisher; nothing connects until the first publish.
    pub fn new(options: RabbitMqOptions) -> Self {
        Self { options, session: Mutex::new(None) }
    }

    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut session = self.session.lock().await;
        if let Some((connection, channel)) = session.as_ref() {
            if connection.status().connected() && channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        *session = None;
        let url = &self.options.url;
        let (connection, channel) =
            tokio::time::timeout(self.options.timeout, connect(url, &self.options.connection_name))
                .await
                .map_err(|_| transient(url, "connect timed out", format!("after {:?}", self.options.timeout)))?
                .map_err(|e| transient(url, "connect failed", e))?;
        *session = Some((connection, channel.clone()));
        Ok(channel)
    }

    async fn forget_session(&self) {
        if let Some((connection, _)) = self.session.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), connection.close(0, "reconnecting".into())).await;
        }
    }

    fn properties(message: &Message) -> BasicProperties {
        let mut headers = FieldTable::default();
        for (name, value) in &message.headers {
            headers.insert(short(name), AMQPValue::LongString(LongString::from(value.as_bytes())));
        }
        headers.insert(short(MESSAGE_ID_HEADER), AMQPValue::LongString(LongString::from(message.id.to_string())));
        headers.insert(short(TOPIC_HEADER), AMQPValue::LongString(LongString::from(message.topic.as_bytes())));
        if let Some(key) = &message.key {
            headers.insert(short(KEY_HEADER), AMQPValue::LongString(LongString::from(key.as_bytes())));
        }
        let mut properties = BasicProperties::default()
            .with_message_id(short(&message.id.to_string()))
            .with_delivery_mode(2)
            .with_headers(headers);
        if let Some(content_type) = message.headers.get("content-type") {
            properties = properties.with_content_type(short(content_type));
        }
        properties
    }
}

#[async_trait]
impl Publisher for RabbitMqPublisher {
    /// One channel sends the batch in order, and its confirms report each message.
    fn keeps_key_order(&self) -> bool {
        true
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Result<(), PublishError>> {
        let channel = match self.channel().await {
            Ok(channel) => channel,
            Err(e) => {
                let text = e.report();
                return batch.iter().map(|_| Err(PublishError::transient(text.clone()))).collect();
            }
        };
        let exchange = short(&self.options.exchange);
        // Every message's send is polled once as it is made: that first poll queues its frames and
        // numbers it for its confirm, so the batch goes out in order and lapin's I/O loop writes many
        // frames per wake-up. Awaiting each send before making the next cost a round trip to that
        // loop, two thread switches, per message.
        let mut sends = Vec::with_capacity(batch.len());
        for message in batch {
            let routing_key = self.options.routing_keys.destination(&message.topic);
            if message.payload.len() > self.options.max_message_bytes {
                sends.push(Outgoing::Refused(PublishError::permanent(format!(
                    "message of {} bytes exceeds max_message_bytes {}",
                    message.payload.len(),
                    self.options.max_message_bytes
                ))));
                continue;
            }
            if routing_key.len() > 255 {
                sends.push(Outgoing::Refused(PublishError::permanent("AMQP routing keys are at most 255 bytes")));
                continue;
            }
            let mut send = Box::pin(channel.basic_publish(
                exchange.clone(),
                short(&routing_key),
                BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                &message.payload,
                Self::properties(message),
            ));
            sends.push(match futures::poll!(send.as_mut()) {
                Poll::Ready(sent) => Outgoing::Done(sent),
                Poll::Pending => Outgoing::Queued(send),
            });
        }
        let url = &self.options.url;
        let waits = sends.into_iter().map(|send| async move {
            let sent = match send {
                Outgoing::Refused(e) => return (Err(e), false),
                Outgoing::Done(sent) => sent,
                Outgoing::Queued(send) => send.await,
            };
            let confirm = match sent {
                Ok(confirm) => confirm,
                Err(e) => return (Err(transient(url, "publish failed", e)), true),
            };
            let outcome = match confirm.await {
                Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
                Ok(Confirmation::Ack(Some(returned))) => Err(PublishError::permanent(format!(
                    "unroutable: {} {} (no queue is bound for this exchange and routing key)",
                    returned.reply_code, returned.reply_text
                ))),
                Ok(Confirmation::Nack(_)) => Err(PublishError::transient("RabbitMQ refused the message (nack)")),
                Err(e) => Err(PublishError::transient(format!("RabbitMQ confirm failed: {e}"))),
            };
            (outcome, false)
        });
        let (outcomes, mut lost) = match tokio::time::timeout(self.options.timeout, futures::future::join_all(waits))
            .await
        {
            Ok(settled) => {
                let lost = settled.iter().any(|(_, lost)| *lost);
                (settled.into_iter().map(|(outcome, _)| outcome).collect(), lost)
            }
            Err(_) => {
                let e = || PublishError::transient(format!("no RabbitMQ confirm within {:?}", self.options.timeout));
                (batch.iter().map(|_| Err(e())).collect::<Vec<_>>(), true)
            }
        };
        lost |= !channel.status().connected();
        if lost {
            self.forget_session().await;
        }
        outcomes
    }
}

/// The kind of a durable queue [`declare_queue`] makes (RabbitMQ's `x-queue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QueueType {
    /// A classic queue, RabbitMQ's default. Its confirms for persistent messages wait for the queue
    /// to sync its index, which it does when idle or on a timer: on the benchmark machine a confirm
    /// took 5-12 ms at p99 at 1,000 msg/s (docs/benchmarks.md).
    Classic,
    /// A quorum queue (Raft, replicated; RabbitMQ's recommended durable queue type). A confirm comes
    /// once the message is in the Raft log: 1-2 ms at p99 on the same machine, and 3-4 times the
    /// throughput of a classic queue with confirms.
    Quorum,
}

impl QueueType {
    fn arguments(self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if self == Self::Quorum {
            arguments.insert(short("x-queue-type"), AMQPValue::LongString(LongString::from("quorum")));
        }
        arguments
    }
}

/// Declares a durable queue named `queue` of the given type (for tests and demos: the default
/// exchange routes to it). Declaring an existing queue with another type fails (RabbitMQ's
/// `PRECONDITION_FAILED`, inequivalent argument).
pub async fn declare_queue(url: &str, queue: &str, queue_type: QueueType) -> Result<()> {
    let (connection, channel) = connect(url, "outbox-admin")
        .await
        .map_err(|e| Error::store("declare_queue", true, scrub(&e.to_string(), url)))?;
    channel
        .queue_declare(
            short(queue),
            QueueDeclareOptions { durable: true, ..Default::default() },
            queue_type.arguments(),
        )
        .await
        .map_err(|e| Error::store("declare_queue", true, e))?;
    let _ = connection.close(0, "done".into()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password_of_the_url() {
        let options = RabbitMqOptions::from_url("amqp://app:hunter2@127.0.0.1:5672/%2f").expect("url");
        let debug = format!("{options:?}");
        assert!(!debug.contains("hunter2") && debug.contains("127.0.0.1"), "{debug}");
        let publisher = RabbitMqPublisher::new(options);
        let debug = format!("{publisher:?}");
        assert!(!debug.contains("hunter2"), "RabbitMqPublisher Debug shows the password: {debug}");
    }

    #[test]
    fn a_bad_url_is_a_typed_error_without_the_password() {
        let error = RabbitMqOptions::from_url("amqp://app:hunter2@127.0.0.1:notaport/%2f").expect_err("bad url");
        assert!(!error.report().contains("hunter2") && !format!("{error:?}").contains("hunter2"), "{error:?}");
    }
}
