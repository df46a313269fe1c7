//! The publisher suite against the real local brokers.
#[cfg(feature = "kafka")]
use outbox_testkit::brokers::KafkaHarness;
#[cfg(feature = "rabbitmq")]
use outbox_testkit::brokers::RabbitMqHarness;
#[cfg(feature = "redis")]
use outbox_testkit::brokers::RedisHarness;

#[cfg(feature = "kafka")]
outbox_testkit::publisher_suite!(kafka, KafkaHarness::new, not_applicable: [
    recovers_after_the_connection_is_killed => "the local Kafka (tansu, memory storage) cannot drop client connections without losing its topics; librdkafka reconnects by itself"
]);
#[cfg(feature = "rabbitmq")]
outbox_testkit::publisher_suite!(rabbitmq, RabbitMqHarness::new);
#[cfg(feature = "rabbitmq")]
outbox_testkit::publisher_suite!(rabbitmq_classic_queue, || RabbitMqHarness::with_queue_type(
    outbox_brokers::rabbitmq::QueueType::Classic
));
#[cfg(feature = "redis")]
outbox_testkit::publisher_suite!(redis, RedisHarness::new);
