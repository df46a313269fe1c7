//! The relay suite for every store x publisher pair, each pair its own named test.
#![cfg(all(
    feature = "sqlite",
    feature = "postgres",
    feature = "postgres-replication",
    feature = "mysql",
    feature = "kafka",
    feature = "rabbitmq",
    feature = "redis",
    feature = "nats"
))]

use outbox_testkit::brokers::{KafkaHarness, NatsHarness, RabbitMqHarness, RedisHarness};
use outbox_testkit::memory::MemoryHarness;
use outbox_testkit::mysql::MySqlHarness;
use outbox_testkit::postgres::PostgresHarness;
use outbox_testkit::relay_suite::{
    a_relay_killed_before_acknowledging, key_queue_across_batches_with_failures, key_run_with_failures, relay_suite,
    MemoryPublisherHarness, RelayScenario,
};
use outbox_testkit::sqlite::SqliteHarness;

async fn memory_store() -> Option<MemoryHarness> {
    Some(MemoryHarness::new())
}

async fn sqlite_store() -> Option<SqliteHarness> {
    Some(SqliteHarness::new().await)
}

macro_rules! matrix {
    ($($name:ident: $store:expr, $publisher:expr;)+) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (Some(store), Some(publisher)) = ($store.await, $publisher.await) else { return };
            key_run_with_failures(&store, &publisher).await;
            let (Some(store), Some(publisher)) = ($store.await, $publisher.await) else { return };
            key_queue_across_batches_with_failures(&store, &publisher).await;
            let (Some(store), Some(publisher)) = ($store.await, $publisher.await) else { return };
            a_relay_killed_before_acknowledging(&store, &publisher).await;
            let (Some(store), Some(publisher)) = ($store.await, $publisher.await) else { return };
            relay_suite(&store, &publisher, RelayScenario::default()).await;
        }
    )+};
}

matrix! {
    postgres_to_kafka: PostgresHarness::new(), KafkaHarness::new();
    postgres_to_rabbitmq: PostgresHarness::new(), RabbitMqHarness::new();
    postgres_to_redis: PostgresHarness::new(), RedisHarness::new();
    postgres_to_nats: PostgresHarness::new(), NatsHarness::new();
    postgres_to_memory: PostgresHarness::new(), MemoryPublisherHarness::new();
    postgres_replication_to_kafka: PostgresHarness::replication(), KafkaHarness::new();
    postgres_replication_to_rabbitmq: PostgresHarness::replication(), RabbitMqHarness::new();
    postgres_replication_to_redis: PostgresHarness::replication(), RedisHarness::new();
    postgres_replication_to_nats: PostgresHarness::replication(), NatsHarness::new();
    postgres_replication_to_memory: PostgresHarness::replication(), MemoryPublisherHarness::new();
    mysql_to_kafka: MySqlHarness::new(), KafkaHarness::new();
    mysql_to_rabbitmq: MySqlHarness::new(), RabbitMqHarness::new();
    mysql_to_redis: MySqlHarness::new(), RedisHarness::new();
    mysql_to_nats: MySqlHarness::new(), NatsHarness::new();
    mysql_to_memory: MySqlHarness::new(), MemoryPublisherHarness::new();
    sqlite_to_kafka: sqlite_store(), KafkaHarness::new();
    sqlite_to_rabbitmq: sqlite_store(), RabbitMqHarness::new();
    sqlite_to_redis: sqlite_store(), RedisHarness::new();
    sqlite_to_nats: sqlite_store(), NatsHarness::new();
    sqlite_to_memory: sqlite_store(), MemoryPublisherHarness::new();
    memory_to_kafka: memory_store(), KafkaHarness::new();
    memory_to_rabbitmq: memory_store(), RabbitMqHarness::new();
    memory_to_redis: memory_store(), RedisHarness::new();
    memory_to_nats: memory_store(), NatsHarness::new();
    memory_to_memory: memory_store(), MemoryPublisherHarness::new();
}
