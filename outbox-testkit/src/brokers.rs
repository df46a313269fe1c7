//! [`PublisherHarness`]es for the brokers of `outbox-brokers`, configured by `OUTBOX_TEST_KAFKA_BROKERS`,
//! `OUTBOX_TEST_AMQP_URL` and `OUTBOX_TEST_REDIS_URL`. Each harness uses a fresh topic, queue or stream.

#[allow(unused_imports)]
use std::sync::Arc;
#[allow(unused_imports)]
use std::time::Duration;

#[allow(unused_imports)]
use crate::env::{backend, unique_name};
#[allow(unused_imports)]
use crate::publisher_suite::PublisherHarness;
#[allow(unused_imports)]
use async_trait::async_trait;
#[allow(unused_imports)]
use outbox_brokers::{Received, TopicMap};
#[allow(unused_imports)]
use outbox_engine::{Publisher, Result};

/// How long the unreachable-broker publishers wait before giving up.
pub const UNREACHABLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Kafka harness.
#[cfg(feature = "kafka")]
#[derive(Debug)]
pub struct KafkaHarness {
    brokers: String,
    topic: String,
    publisher: Arc<outbox_brokers::kafka::KafkaPublisher>,
}

#[cfg(feature = "kafka")]
impl KafkaHarness {
    /// A harness, or `None` (reported loudly) when `OUTBOX_TEST_KAFKA_BROKERS` is not set.
    pub async fn new() -> Option<Self> {
        let brokers = backend("OUTBOX_TEST_KAFKA_BROKERS", "Kafka")?;
        let options = outbox_brokers::kafka::KafkaOptions::new(brokers.clone());
        let publisher = Arc::new(outbox_brokers::kafka::KafkaPublisher::new(options).expect("Kafka producer"));
        Some(Self { brokers, topic: unique_name("outbox_test"), publisher })
    }

    /// The bootstrap servers.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }
}

#[cfg(feature = "kafka")]
#[async_trait]
impl PublisherHarness for KafkaHarness {
    fn publisher(&self) -> Arc<dyn Publisher> {
        self.publisher.clone()
    }
    fn topic(&self) -> &str {
        &self.topic
    }
    async fn read_back(&self, expected: usize, timeout: Duration) -> Result<Vec<Received>> {
        let (brokers, topic) = (self.brokers.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || outbox_brokers::kafka::read_back(&brokers, &topic, expected, timeout))
            .await
            .expect("read_back task")
    }
    fn unreachable(&self) -> Arc<dyn Publisher> {
        let options = outbox_brokers::kafka::KafkaOptions::new("127.0.0.1:1").delivery_timeout(UNREACHABLE_TIMEOUT);
        Arc::new(outbox_brokers::kafka::KafkaPublisher::new(options).expect("producer"))
    }
    fn unroutable_topic(&self) -> String {
        "not a valid/topic name".to_owned()
    }
    async fn kill_connections(&self) {
        // A memory-backed broker cannot restart without losing its topics, so every client
        // connection to its ports is dropped on this host instead (`ss -K`, from iproute2; needs
        // root). The suite runs this check alone in its process.
        let ports: Vec<&str> = self.brokers.split(',').filter_map(|b| b.rsplit_once(':')).map(|(_, p)| p).collect();
        drop_connections_to(&ports).await;
    }
}

/// Drops every client connection to these local ports on this host (`ss -K`, from iproute2; needs
/// root), for brokers that cannot restart without losing what the test wrote.
#[cfg(any(feature = "kafka", feature = "nats"))]
async fn drop_connections_to(ports: &[&str]) {
    for port in ports {
        let status = tokio::process::Command::new("ss")
            .args(["-K", "dport", "=", &format!(":{port}")])
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .expect("run ss (iproute2)");
        assert!(status.success(), "ss -K could not drop the connections to port {port}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// RabbitMQ harness: a fresh durable queue (a quorum queue unless asked otherwise), published to
/// through the default exchange.
#[cfg(feature = "rabbitmq")]
#[derive(Debug)]
pub struct RabbitMqHarness {
    url: String,
    queue: String,
    connection_name: String,
    publisher: Arc<outbox_brokers::rabbitmq::RabbitMqPublisher>,
}

#[cfg(feature = "rabbitmq")]
impl RabbitMqHarness {
    /// A harness on a quorum queue, or `None` (reported loudly) when `OUTBOX_TEST_AMQP_URL` is not set.
    pub async fn new() -> Option<Self> {
        Self::with_queue_type(outbox_brokers::rabbitmq::QueueType::Quorum).await
    }

    /// A harness on a queue of `queue_type`, or `None` as for [`RabbitMqHarness::new`].
    pub async fn with_queue_type(queue_type: outbox_brokers::rabbitmq::QueueType) -> Option<Self> {
        let url = backend("OUTBOX_TEST_AMQP_URL", "RabbitMQ")?;
        let queue = unique_name("outbox_test");
        outbox_brokers::rabbitmq::declare_queue(&url, &queue, queue_type).await.expect("declare queue");
        let connection_name = format!("{queue}_publisher");
        let options = outbox_brokers::rabbitmq::RabbitMqOptions::from_url(&url)
            .expect("AMQP URL")
            .connection_name(&connection_name);
        let publisher = Arc::new(outbox_brokers::rabbitmq::RabbitMqPublisher::new(options));
        Some(Self { url, queue, connection_name, publisher })
    }
}

#[cfg(feature = "rabbitmq")]
#[async_trait]
impl PublisherHarness for RabbitMqHarness {
    fn publisher(&self) -> Arc<dyn Publisher> {
        self.publisher.clone()
    }
    fn topic(&self) -> &str {
        &self.queue
    }
    async fn read_back(&self, expected: usize, timeout: Duration) -> Result<Vec<Received>> {
        outbox_brokers::rabbitmq::read_back(&self.url, &self.queue, expected, timeout).await
    }
    fn unreachable(&self) -> Arc<dyn Publisher> {
        let options = outbox_brokers::rabbitmq::RabbitMqOptions::from_url("amqp://guest:guest@127.0.0.1:1/%2f")
            .expect("URL")
            .timeout(UNREACHABLE_TIMEOUT);
        Arc::new(outbox_brokers::rabbitmq::RabbitMqPublisher::new(options))
    }
    fn unroutable_topic(&self) -> String {
        unique_name("no_such_queue")
    }
    async fn kill_connections(&self) {
        // Only this harness's publisher connection: other tests run against the same broker.
        let listed = tokio::process::Command::new("rabbitmqctl")
            .args(["-q", "list_connections", "pid", "client_properties"])
            .output()
            .await
            .expect("run rabbitmqctl");
        assert!(listed.status.success(), "rabbitmqctl list_connections failed");
        let listing = String::from_utf8_lossy(&listed.stdout);
        let pids: Vec<&str> = listing
            .lines()
            .filter(|line| line.contains(self.connection_name.as_str()))
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        assert!(!pids.is_empty(), "the publisher's connection {} is not listed", self.connection_name);
        for pid in pids {
            let status = tokio::process::Command::new("rabbitmqctl")
                .args(["-q", "close_connection", pid, "outbox testkit: simulated connection loss"])
                .status()
                .await
                .expect("run rabbitmqctl");
            assert!(status.success(), "rabbitmqctl close_connection failed");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[cfg(feature = "rabbitmq")]
impl Drop for RabbitMqHarness {
    fn drop(&mut self) {
        let (url, queue) = (self.url.clone(), self.queue.clone());
        crate::env::clean_up_now(async move {
            let _ = outbox_brokers::rabbitmq::delete_queue(&url, &queue).await;
        });
    }
}

/// Redis harness: a fresh stream.
#[cfg(feature = "redis")]
#[derive(Debug)]
pub struct RedisHarness {
    url: String,
    stream: String,
    wrong_type_key: String,
    publisher: Arc<outbox_brokers::redis::RedisPublisher>,
}

#[cfg(feature = "redis")]
impl RedisHarness {
    /// A harness, or `None` (reported loudly) when `OUTBOX_TEST_REDIS_URL` is not set.
    pub async fn new() -> Option<Self> {
        let url = backend("OUTBOX_TEST_REDIS_URL", "Redis")?;
        let stream = unique_name("outbox_test");
        let wrong_type_key = format!("{stream}_string");
        let mut conn = Self::admin(&url).await;
        let () = redis::cmd("SET").arg(&wrong_type_key).arg("not a stream").query_async(&mut conn).await.expect("SET");
        let options = outbox_brokers::redis::RedisOptions::from_url(&url).expect("Redis URL");
        let publisher = Arc::new(outbox_brokers::redis::RedisPublisher::new(options).expect("publisher"));
        Some(Self { url, stream, wrong_type_key, publisher })
    }

    async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
        redis::Client::open(url).expect("URL").get_multiplexed_async_connection().await.expect("connect to Redis")
    }
}

#[cfg(feature = "redis")]
#[async_trait]
impl PublisherHarness for RedisHarness {
    fn publisher(&self) -> Arc<dyn Publisher> {
        self.publisher.clone()
    }
    fn topic(&self) -> &str {
        &self.stream
    }
    async fn read_back(&self, expected: usize, timeout: Duration) -> Result<Vec<Received>> {
        outbox_brokers::redis::read_back(&self.url, &self.stream, expected, timeout).await
    }
    fn unreachable(&self) -> Arc<dyn Publisher> {
        let options = outbox_brokers::redis::RedisOptions::from_url("redis://127.0.0.1:1")
            .expect("URL")
            .timeout(UNREACHABLE_TIMEOUT);
        Arc::new(outbox_brokers::redis::RedisPublisher::new(options).expect("publisher"))
    }
    fn unroutable_topic(&self) -> String {
        self.wrong_type_key.clone()
    }
    async fn kill_connections(&self) {
        kill_redis_clients(&self.url).await.expect("CLIENT KILL");
    }
}

/// Closes every client connection of the Redis server at `url` but the caller's own (`CLIENT KILL
/// TYPE normal SKIPME yes`); returns how many were closed.
#[cfg(feature = "redis")]
pub async fn kill_redis_clients(url: &str) -> redis::RedisResult<i64> {
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").arg("SKIPME").arg("yes").query_async(&mut conn).await
}

#[cfg(feature = "redis")]
impl Drop for RedisHarness {
    fn drop(&mut self) {
        let (url, keys) = (self.url.clone(), [self.stream.clone(), self.wrong_type_key.clone()]);
        crate::env::clean_up_now(async move {
            let Ok(client) = redis::Client::open(url.as_str()) else { return };
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return };
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
        });
    }
}

/// NATS JetStream harness: a fresh stream capturing one fresh subject, de-duplicating by
/// `Nats-Msg-Id` within two minutes.
#[cfg(feature = "nats")]
#[derive(Debug)]
pub struct NatsHarness {
    url: String,
    stream: String,
    subject: String,
    publisher: Arc<outbox_brokers::nats::NatsPublisher>,
}

/// The duplicate window of the streams the NATS harness creates.
#[cfg(feature = "nats")]
pub const NATS_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

#[cfg(feature = "nats")]
impl NatsHarness {
    /// A harness, or `None` (reported loudly) when `OUTBOX_TEST_NATS_URL` is not set.
    pub async fn new() -> Option<Self> {
        let url = backend("OUTBOX_TEST_NATS_URL", "NATS")?;
        let stream = unique_name("outbox_test");
        let subject = format!("{stream}.events");
        outbox_brokers::nats::create_stream(&url, &stream, &[&subject], NATS_DUPLICATE_WINDOW)
            .await
            .expect("create the NATS stream");
        let options = outbox_brokers::nats::NatsOptions::from_url(&url).expect("NATS URL");
        let publisher = Arc::new(outbox_brokers::nats::NatsPublisher::new(options));
        Some(Self { url, stream, subject, publisher })
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The stream the harness reads back.
    pub fn stream(&self) -> &str {
        &self.stream
    }
}

#[cfg(feature = "nats")]
#[async_trait]
impl PublisherHarness for NatsHarness {
    fn publisher(&self) -> Arc<dyn Publisher> {
        self.publisher.clone()
    }
    fn topic(&self) -> &str {
        &self.subject
    }
    async fn read_back(&self, expected: usize, timeout: Duration) -> Result<Vec<Received>> {
        outbox_brokers::nats::read_back(&self.url, &self.stream, expected, timeout).await
    }
    fn unreachable(&self) -> Arc<dyn Publisher> {
        let options = outbox_brokers::nats::NatsOptions::from_url("nats://127.0.0.1:1")
            .expect("URL")
            .timeout(UNREACHABLE_TIMEOUT);
        Arc::new(outbox_brokers::nats::NatsPublisher::new(options))
    }
    fn unroutable_topic(&self) -> String {
        unique_name("no_stream_captures")
    }
    fn deduplicates(&self) -> bool {
        true
    }
    async fn kill_connections(&self) {
        // Every client connection to the server's port is dropped on this host; the suite runs
        // this check alone in its process.
        let port = self.url.rsplit_once(':').map_or("4222", |(_, port)| port.trim_end_matches('/'));
        drop_connections_to(&[port]).await;
    }
}

#[cfg(feature = "nats")]
impl Drop for NatsHarness {
    fn drop(&mut self) {
        let (url, stream) = (self.url.clone(), self.stream.clone());
        crate::env::clean_up_now(async move {
            let _ = outbox_brokers::nats::delete_stream(&url, &stream).await;
        });
    }
}
