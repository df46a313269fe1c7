//! Helpers for tests and examples (feature `test-util`): read back what a publisher sent, and delete
//! a RabbitMQ queue.

use outbox_engine::{Headers, MessageId};

use crate::{KEY_HEADER, MESSAGE_ID_HEADER, TOPIC_HEADER};

/// A message read back from a broker by a `read_back` helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The outbox message id, if the message carried one.
    pub id: Option<MessageId>,
    /// The outbox key.
    pub key: Option<String>,
    /// The payload.
    pub payload: Vec<u8>,
    /// The user headers (the outbox's own headers removed).
    pub headers: Headers,
}

impl Received {
    #[cfg_attr(
        not(any(feature = "kafka", feature = "rabbitmq", feature = "redis", feature = "nats")),
        allow(dead_code)
    )]
    fn from_parts(mut headers: Headers, key: Option<String>, payload: Vec<u8>) -> Self {
        let id = headers.remove(MESSAGE_ID_HEADER).and_then(|id| id.parse().ok());
        let key = key.or_else(|| headers.remove(KEY_HEADER));
        headers.remove(KEY_HEADER);
        headers.remove(TOPIC_HEADER);
        Self { id, key, payload, headers }
    }
}

/// Kafka's read-back.
#[cfg(feature = "kafka")]
pub(crate) mod kafka {
    use std::time::Duration;

    use outbox_engine::{Error, Headers, Result};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers as _;
    use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

    use super::Received;
    use crate::kafka::kafka_config_error;

    /// Reads up to `expected` messages of `topic` from the beginning of every partition (no consumer group,
    /// so it starts at once), waiting at most `timeout`. Within a partition messages come in order.
    pub fn read_back(brokers: &str, topic: &str, expected: usize, timeout: Duration) -> Result<Vec<Received>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("outbox-read-back-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(kafka_config_error)?;
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| Error::store("read_back", true, e))?;
        let mut partitions = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                partitions
                    .add_partition_offset(topic, p.id(), Offset::Beginning)
                    .map_err(|e| Error::store("read_back", false, e))?;
            }
        }
        consumer.assign(&partitions).map_err(|e| Error::store("read_back", true, e))?;
        let deadline = std::time::Instant::now() + timeout;
        let mut received = Vec::with_capacity(expected);
        while received.len() < expected && std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let mut headers = Headers::new();
                    if let Some(h) = m.headers() {
                        for header in h.iter() {
                            let value =
                                header.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
                            headers.insert(header.key.to_owned(), value);
                        }
                    }
                    let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                    received.push(Received::from_parts(headers, key, m.payload().unwrap_or_default().to_vec()));
                }
                Some(Err(e)) => return Err(Error::store("read_back", true, e)),
                None => {}
            }
        }
        Ok(received)
    }
}

/// RabbitMQ's read-back and queue deletion.
#[cfg(feature = "rabbitmq")]
pub(crate) mod rabbitmq {
    use std::time::Duration;

    use lapin::options::{BasicGetOptions, QueueDeleteOptions};
    use lapin::types::AMQPValue;
    use outbox_engine::secret::scrub;
    use outbox_engine::{Error, Headers, Result};

    use super::Received;
    use crate::rabbitmq::{connect, short};

    /// Deletes a queue (for test clean-up).
    pub async fn delete_queue(url: &str, queue: &str) -> Result<()> {
        let (connection, channel) = connect(url, "outbox-admin")
            .await
            .map_err(|e| Error::store("delete_queue", true, scrub(&e.to_string(), url)))?;
        channel
            .queue_delete(short(queue), QueueDeleteOptions::default())
            .await
            .map_err(|e| Error::store("delete_queue", true, e))?;
        let _ = connection.close(0, "done".into()).await;
        Ok(())
    }

    /// Reads (and acknowledges) up to `expected` messages from `queue`, waiting at most `timeout`.
    pub async fn read_back(url: &str, queue: &str, expected: usize, timeout: Duration) -> Result<Vec<Received>> {
        let (connection, channel) = connect(url, "outbox-read-back")
            .await
            .map_err(|e| Error::store("read_back", true, scrub(&e.to_string(), url)))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut received = Vec::with_capacity(expected);
        while received.len() < expected && tokio::time::Instant::now() < deadline {
            let got = channel
                .basic_get(short(queue), BasicGetOptions { no_ack: true })
                .await
                .map_err(|e| Error::store("read_back", true, e))?;
            let Some(message) = got else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let delivery = message.delivery;
            let mut headers = Headers::new();
            if let Some(table) = delivery.properties.headers() {
                for (name, value) in table.inner() {
                    if let AMQPValue::LongString(s) = value {
                        headers.insert(name.to_string(), String::from_utf8_lossy(s.as_bytes()).into_owned());
                    }
                }
            }
            received.push(Received::from_parts(headers, None, delivery.data));
        }
        let _ = connection.close(0, "done".into()).await;
        Ok(received)
    }
}

/// Redis Streams' read-back.
#[cfg(feature = "redis")]
pub(crate) mod redis {
    use std::time::Duration;

    use outbox_engine::secret::scrub;
    use outbox_engine::{Error, Headers, Result};

    use super::Received;
    use crate::invalid_url;

    /// Reads up to `expected` entries of `stream` from its start, waiting at most `timeout`.
    pub async fn read_back(url: &str, stream: &str, expected: usize, timeout: Duration) -> Result<Vec<Received>> {
        let client = redis::Client::open(url).map_err(|e| invalid_url("Redis", url, e))?;
        // One XRANGE returns every expected entry; allow it the whole `timeout`, not redis-rs's default
        // 500 ms per response (10,000 entries take longer than that to decode on a busy machine).
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(timeout));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| Error::store("read_back", true, scrub(&e.to_string(), url)))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
                .arg(stream)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(expected)
                .query_async(&mut conn)
                .await
                .map_err(|e| Error::store("read_back", true, e))?;
            if entries.len() >= expected || tokio::time::Instant::now() >= deadline {
                return entries.into_iter().map(|(_, fields)| decode_entry(fields)).collect();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One `XRANGE` entry: its id and its field / value pairs.
    type StreamEntry = (String, Vec<(String, Vec<u8>)>);

    fn decode_entry(fields: Vec<(String, Vec<u8>)>) -> Result<Received> {
        let mut headers = Headers::new();
        let (mut key, mut payload, mut id) = (None, Vec::new(), None);
        for (name, value) in fields {
            match name.as_str() {
                "id" => id = Some(String::from_utf8_lossy(&value).into_owned()),
                "key" => key = Some(String::from_utf8_lossy(&value).into_owned()),
                "payload" => payload = value,
                "headers" => {
                    headers = serde_json::from_slice(&value).map_err(|e| {
                        Error::store("read_back", false, format!("stream entry headers are not JSON: {e}"))
                    })?
                }
                _ => {}
            }
        }
        if let Some(id) = id {
            headers.insert(crate::MESSAGE_ID_HEADER.to_owned(), id);
        }
        Ok(Received::from_parts(headers, key, payload))
    }
}

/// NATS JetStream's read-back.
#[cfg(feature = "nats")]
pub(crate) mod nats {
    use std::time::Duration;

    use outbox_engine::{Error, Headers, Result};

    use super::Received;
    use crate::nats::{connect, decode_header, decode_value, NATS_MSG_ID};

    /// Reads up to `expected` messages of `stream` from its first one, waiting at most `timeout`
    /// for them to be stored (by sequence: no consumer is created).
    pub async fn read_back(url: &str, stream: &str, expected: usize, timeout: Duration) -> Result<Vec<Received>> {
        let (_, context) = connect(url, Duration::from_secs(10), "outbox-read-back").await?;
        let err = |e: &dyn std::fmt::Display| Error::broker("read_back", true, format!("NATS stream {stream}: {e}"));
        let mut handle = context.get_stream(stream).await.map_err(|e| err(&e))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let (first, last) = loop {
            let state = handle.info().await.map_err(|e| err(&e))?.state.clone();
            if state.messages >= expected as u64 || tokio::time::Instant::now() >= deadline {
                break (state.first_sequence, state.last_sequence);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut received = Vec::with_capacity(expected);
        for sequence in first..=last {
            if received.len() >= expected || sequence == 0 {
                break;
            }
            let message = handle.get_raw_message(sequence).await.map_err(|e| err(&e))?;
            let mut headers = Headers::new();
            let mut key = None;
            for (name, values) in message.headers.iter() {
                let (name, value) = decode_header(name.as_ref(), values.first().map_or("", |v| v.as_str()));
                match name.as_str() {
                    NATS_MSG_ID => {}
                    crate::KEY_HEADER => key = Some(decode_value(&value)),
                    _ => {
                        headers.insert(name, value);
                    }
                }
            }
            received.push(Received::from_parts(headers, key, message.payload.to_vec()));
        }
        Ok(received)
    }
}
