//! Publishers for Kafka, RabbitMQ and Redis Streams (in progress).
