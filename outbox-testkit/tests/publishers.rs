//! The publisher suite against the real local brokers.
#[cfg(feature = "kafka")]
use outbox_testkit::brokers::KafkaHarness;
#[cfg(feature = "nats")]
use outbox_testkit::brokers::NatsHarness;
#[cfg(feature = "rabbitmq")]
use outbox_testkit::brokers::RabbitMqHarness;
#[cfg(feature = "redis")]
use outbox_testkit::brokers::RedisHarness;

#[cfg(feature = "kafka")]
outbox_testkit::publisher_suite!(kafka, KafkaHarness::new);
#[cfg(feature = "rabbitmq")]
outbox_testkit::publisher_suite!(rabbitmq, RabbitMqHarness::new);
#[cfg(feature = "rabbitmq")]
outbox_testkit::publisher_suite!(rabbitmq_classic_queue, || RabbitMqHarness::with_queue_type(
    outbox_brokers::rabbitmq::QueueType::Classic
));
#[cfg(feature = "redis")]
outbox_testkit::publisher_suite!(redis, RedisHarness::new);
#[cfg(feature = "nats")]
outbox_testkit::publisher_suite!(nats, NatsHarness::new);
