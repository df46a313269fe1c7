//! The broker side of a chaos run: the relay processes' publishers, the destination, broker faults,
//! and reading everything back with the broker's own client library (not the SDK's code).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use outbox_brokers::{kafka, nats, rabbitmq, redis as redis_broker, TopicMap, MESSAGE_ID_HEADER};
use outbox_engine::{BoxError, MessageId, Publisher};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers as _;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde::Serialize;

use super::check::Delivery;
use super::shell;

/// Which broker a chaos run publishes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// Kafka (any Kafka-protocol broker).
    Kafka,
    /// RabbitMQ, a quorum queue.
    Rabbitmq,
    /// Redis Streams.
    Redis,
    /// NATS JetStream: a stream that de-duplicates by message id (a run with it fails on any
    /// duplicate).
    Nats,
}

impl BrokerKind {
    /// Whether the broker itself drops a copy of a message it has stored (within its window).
    pub fn deduplicates(self) -> bool {
        self == Self::Nats
    }
}

/// The duplicate window of the NATS stream a run creates: longer than any run's redelivery.
const NATS_DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// How long the readers wait for one more message once they have all they expect.
const READ_IDLE: Duration = Duration::from_secs(3);
/// How long they wait for one more message when some are still missing.
const READ_IDLE_SHORT_OF_EXPECTED: Duration = Duration::from_secs(15);

/// The publisher of one relay process: the outbox topic `topic` goes to `destination`.
pub(crate) fn publisher(
    kind: BrokerKind,
    url: &str,
    topic: &str,
    destination: &str,
) -> Result<Arc<dyn Publisher>, BoxError> {
    let map = TopicMap::new().map(topic, destination);
    Ok(match kind {
        BrokerKind::Kafka => Arc::new(kafka::KafkaPublisher::new(kafka::KafkaOptions::new(url).topics(map))?),
        BrokerKind::Rabbitmq => Arc::new(rabbitmq::RabbitMqPublisher::new(
            rabbitmq::RabbitMqOptions::from_url(url)?
                .routing_keys(map)
                .timeout(Duration::from_secs(5))
                .connection_name("outbox-chaos-relay"),
        )),
        BrokerKind::Redis => {
            Arc::new(redis_broker::RedisPublisher::new(redis_broker::RedisOptions::from_url(url)?.streams(map))?)
        }
        BrokerKind::Nats => Arc::new(nats::NatsPublisher::new(nats::NatsOptions::from_url(url)?.subjects(map))),
    })
}

/// Creates what the destination needs before the first publish (RabbitMQ: a quorum queue; NATS: a
/// stream capturing the subject; Kafka topics and Redis streams are created by their first message).
pub(crate) async fn prepare(kind: BrokerKind, url: &str, destination: &str) -> Result<(), BoxError> {
    match kind {
        BrokerKind::Rabbitmq => rabbitmq::declare_queue(url, destination, rabbitmq::QueueType::Quorum).await?,
        BrokerKind::Nats => nats::create_stream(url, destination, &[destination], NATS_DUPLICATE_WINDOW).await?,
        _ => {}
    }
    Ok(())
}

/// Deletes the destination (best effort; Kafka topics are left to the broker's retention).
pub(crate) async fn clean_up(kind: BrokerKind, url: &str, destination: &str) {
    match kind {
        BrokerKind::Kafka => {}
        BrokerKind::Rabbitmq => {
            let _ = rabbitmq::delete_queue(url, destination).await;
        }
        BrokerKind::Redis => {
            if let Ok(mut conn) = redis_connection(url).await {
                let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(destination).query_async(&mut conn).await;
            }
        }
        BrokerKind::Nats => {
            let _ = nats::delete_stream(url, destination).await;
        }
    }
}

async fn redis_connection(url: &str) -> Result<redis::aio::MultiplexedConnection, BoxError> {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    Ok(redis::Client::open(url)?.get_multiplexed_async_connection_with_config(&config).await?)
}

/// Disturbs the broker once: `restart` asks for a restart that loses nothing where the broker
/// allows one (RabbitMQ `stop_app`/`start_app`, Redis `SHUTDOWN SAVE` and a start), otherwise its
/// clients' connections are dropped. Returns what was done.
pub(crate) async fn disturb(
    kind: BrokerKind,
    url: &str,
    restart: bool,
    down_for: Duration,
    redis_start: &str,
) -> Result<&'static str, BoxError> {
    match (kind, restart) {
        (BrokerKind::Nats, _) => {
            // The server runs as a system service: drop its clients' connections on this host.
            let port = url.rsplit(':').next().map_or("4222", |port| port.trim_end_matches('/'));
            shell(&format!("ss -K dst 127.0.0.1 dport = :{port} >/dev/null")).await?;
            Ok("nats connections dropped")
        }
        (BrokerKind::Kafka, _) => {
            // A memory-backed broker loses everything on restart: drop its clients' connections.
            let port = url.rsplit(':').next().unwrap_or("9092");
            shell(&format!("ss -K dst 127.0.0.1 dport = :{port} >/dev/null")).await?;
            Ok("kafka connections dropped")
        }
        (BrokerKind::Rabbitmq, true) => {
            shell("rabbitmqctl -q stop_app").await?;
            tokio::time::sleep(down_for).await;
            shell("rabbitmqctl -q start_app").await?;
            Ok("rabbitmq stop_app/start_app")
        }
        (BrokerKind::Rabbitmq, false) => {
            shell("rabbitmqctl -q close_all_connections 'outbox chaos: connection dropped'").await?;
            Ok("rabbitmq connections closed")
        }
        (BrokerKind::Redis, true) => {
            let mut conn = redis_connection(url).await?;
            let dir: (String, String) = redis::cmd("CONFIG").arg("GET").arg("dir").query_async(&mut conn).await?;
            let file: (String, String) =
                redis::cmd("CONFIG").arg("GET").arg("dbfilename").query_async(&mut conn).await?;
            // The server saves, then closes every connection: the reply is an error.
            let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").arg("SAVE").query_async(&mut conn).await;
            drop(conn);
            wait_until_closed(url).await;
            tokio::time::sleep(down_for).await;
            shell(redis_start).await?;
            wait_until_open(url, Duration::from_secs(30)).await?;
            // Every stream was saved and loaded again; the dump is not needed after that.
            let _ = std::fs::remove_file(std::path::Path::new(&dir.1).join(&file.1));
            Ok("redis SHUTDOWN SAVE and restart")
        }
        (BrokerKind::Redis, false) => {
            crate::brokers::kill_redis_clients(url).await?;
            Ok("redis clients killed")
        }
    }
}

async fn wait_until_closed(url: &str) {
    for _ in 0..100 {
        if redis_connection(url).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_until_open(url: &str, patience: Duration) -> Result<(), BoxError> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match redis_connection(url).await {
            Ok(mut conn) => {
                // A restarting server answers LOADING until its dump is read.
                let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return Ok(());
                }
            }
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads every message of `destination`, in the broker's order for each key, until no more come.
/// `expected` is how many distinct messages should be there; reading waits longer while fewer came.
pub(crate) async fn read_all(
    kind: BrokerKind,
    url: &str,
    destination: &str,
    expected: usize,
) -> Result<Vec<Delivery>, BoxError> {
    match kind {
        BrokerKind::Kafka => {
            let (url, destination) = (url.to_owned(), destination.to_owned());
            tokio::task::spawn_blocking(move || read_kafka(&url, &destination, expected)).await?
        }
        BrokerKind::Rabbitmq => read_rabbitmq(url, destination, expected).await,
        BrokerKind::Redis => read_redis(url, destination).await,
        BrokerKind::Nats => read_nats(url, destination).await,
    }
}

/// Every message of the stream, by sequence, with async-nats itself.
async fn read_nats(url: &str, stream: &str) -> Result<Vec<Delivery>, BoxError> {
    let client = async_nats::connect(url).await?;
    let context = async_nats::jetstream::new(client);
    let mut handle = context.get_stream(stream).await?;
    let state = handle.info().await?.state.clone();
    let mut received = Vec::with_capacity(usize::try_from(state.messages).unwrap_or(0));
    if state.messages == 0 {
        return Ok(received);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        let message = handle.get_raw_message(sequence).await?;
        let id = message.headers.get(MESSAGE_ID_HEADER).and_then(|v| v.as_str().parse().ok());
        received.push(Delivery { id, payload: message.payload.to_vec() });
    }
    Ok(received)
}

/// How long a reader waits for the next message: longer while fewer than `expected` distinct
/// messages came (`distinct`: duplicates do not count towards it).
fn idle_limit(distinct: usize, expected: usize) -> Duration {
    if distinct >= expected {
        READ_IDLE
    } else {
        READ_IDLE_SHORT_OF_EXPECTED
    }
}

fn read_kafka(brokers: &str, topic: &str, expected: usize) -> Result<Vec<Delivery>, BoxError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("outbox-chaos-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut partitions = TopicPartitionList::new();
    // Each partition's end when reading starts: the relays have stopped, so reading is complete once
    // every partition is read up to it, whatever pauses the fetches make.
    let mut unread = std::collections::HashMap::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            partitions.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            if high > low {
                unread.insert(p.id(), high);
            }
        }
    }
    consumer.assign(&partitions)?;
    let mut received = Vec::with_capacity(expected);
    let mut last = std::time::Instant::now();
    let mut distinct = HashSet::new();
    while !unread.is_empty() || last.elapsed() < idle_limit(distinct.len(), expected) {
        if last.elapsed() > READ_IDLE_SHORT_OF_EXPECTED {
            return Err(format!(
                "kafka: no message for {READ_IDLE_SHORT_OF_EXPECTED:?} with partitions unread: {unread:?}"
            )
            .into());
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if unread.get(&m.partition()).is_some_and(|end| m.offset() + 1 >= *end) {
                    unread.remove(&m.partition());
                }
                let id = m.headers().and_then(|headers| {
                    headers
                        .iter()
                        .find(|h| h.key == MESSAGE_ID_HEADER)
                        .and_then(|h| h.value)
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .and_then(|v| v.parse::<MessageId>().ok())
                });
                distinct.insert(id);
                received.push(Delivery { id, payload: m.payload().unwrap_or_default().to_vec() });
                last = std::time::Instant::now();
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok(received)
}

async fn read_rabbitmq(url: &str, queue: &str, expected: usize) -> Result<Vec<Delivery>, BoxError> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "outbox-chaos-reader".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    let mut received = Vec::with_capacity(expected);
    let mut distinct = HashSet::new();
    loop {
        let next = tokio::time::timeout(idle_limit(distinct.len(), expected), consumer.next()).await;
        let Ok(Some(delivery)) = next else { break };
        let delivery = delivery?;
        let from_property = delivery.properties.message_id().as_ref().and_then(|id| id.as_str().parse().ok());
        let from_header = || {
            let headers = delivery.properties.headers().as_ref()?;
            match headers.inner().get(MESSAGE_ID_HEADER)? {
                AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
                _ => None,
            }
        };
        let id = from_property.or_else(from_header);
        distinct.insert(id);
        received.push(Delivery { id, payload: delivery.data });
    }
    let _ = connection.close(0, "done".into()).await;
    Ok(received)
}

/// One `XRANGE` entry: its id and its field / value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

async fn read_redis(url: &str, stream: &str) -> Result<Vec<Delivery>, BoxError> {
    let mut conn = redis_connection(url).await?;
    let mut received = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let entries: Vec<StreamEntry> =
            redis::cmd("XRANGE").arg(stream).arg(&start).arg("+").arg("COUNT").arg(5000).query_async(&mut conn).await?;
        let Some((last, _)) = entries.last() else { break };
        start = format!("({last}");
        for (_, fields) in entries {
            let mut delivery = Delivery { id: None, payload: Vec::new() };
            for (name, value) in fields {
                match name.as_str() {
                    "id" => delivery.id = std::str::from_utf8(&value).ok().and_then(|v| v.parse().ok()),
                    "payload" => delivery.payload = value,
                    _ => {}
                }
            }
            received.push(delivery);
        }
    }
    Ok(received)
}
