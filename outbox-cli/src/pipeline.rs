//! A configured pipeline made real: its store connected, its publishers and router built, its relay.

use std::sync::Arc;
use std::time::Duration;

use outbox::kafka::{KafkaOptions, KafkaPublisher};
use outbox::mysql::MySqlStore;
use outbox::nats::{NatsOptions, NatsPublisher};
use outbox::postgres::PostgresStore;
use outbox::rabbitmq::{RabbitMqOptions, RabbitMqPublisher};
use outbox::redis::{RedisOptions, RedisPublisher};
use outbox::sqlite::SqliteStore;
use outbox::{Relay, RetryPolicy, Router, Store, StoreOptions, TopicMap};

use crate::config::{PipelineConfig, PublisherConfig, PublisherKind, StoreConfig, StoreKind};

/// A connected store of any kind, with what the command needs beyond [`Store`].
#[derive(Debug, Clone)]
pub(crate) enum AnyStore {
    Postgres(PostgresStore),
    MySql(MySqlStore),
    Sqlite(SqliteStore),
}

impl AnyStore {
    /// Connects to the configured database.
    pub(crate) async fn connect(config: &StoreConfig) -> outbox::Result<Self> {
        let mut options = StoreOptions::default();
        if let Some(prefix) = &config.table_prefix {
            options = options.table_prefix(prefix)?;
        }
        if let Some(schema) = &config.schema {
            if config.kind != StoreKind::Postgres {
                return Err(outbox::Error::invalid_config("store.schema is for PostgreSQL only"));
            }
            options = options.schema(schema)?;
        }
        if let Some(wake_ups) = &config.wake_ups {
            if config.kind != StoreKind::Postgres {
                return Err(outbox::Error::invalid_config("store.wake_ups is for PostgreSQL only"));
            }
            options = options.wake_ups(wake_ups.parse()?);
        }
        if let Some(connections) = config.max_connections {
            options = options.max_connections(connections)?;
        }
        Ok(match config.kind {
            StoreKind::Postgres => Self::Postgres(PostgresStore::connect_with(&config.url, options).await?),
            StoreKind::Mysql => Self::MySql(MySqlStore::connect_with(&config.url, options).await?),
            StoreKind::Sqlite => Self::Sqlite(SqliteStore::connect_with(&config.url, options).await?),
        })
    }

    /// The store as the relay sees it.
    pub(crate) fn shared(&self) -> Arc<dyn Store> {
        match self {
            Self::Postgres(s) => Arc::new(s.clone()),
            Self::MySql(s) => Arc::new(s.clone()),
            Self::Sqlite(s) => Arc::new(s.clone()),
        }
    }

    /// The schema the store needs.
    pub(crate) fn schema_sql(&self) -> &str {
        match self {
            Self::Postgres(s) => s.schema_sql(),
            Self::MySql(s) => s.schema_sql(),
            Self::Sqlite(s) => s.schema_sql(),
        }
    }

    /// Creates the outbox tables if they do not exist.
    pub(crate) async fn migrate(&self) -> outbox::Result<()> {
        match self {
            Self::Postgres(s) => s.migrate().await,
            Self::MySql(s) => s.migrate().await,
            Self::Sqlite(s) => s.migrate().await,
        }
    }
}

fn topic_map(config: &PublisherConfig) -> TopicMap {
    config.destinations.iter().fold(TopicMap::new(), |map, (topic, destination)| map.map(topic, destination))
}

/// Builds one configured publisher (connections are made on first use).
fn publisher(config: &PublisherConfig) -> outbox::Result<Arc<dyn outbox::Publisher>> {
    let missing = |key: &str| outbox::Error::invalid_config(format!("a {:?} publisher needs {key}", config.kind));
    Ok(match config.kind {
        PublisherKind::Kafka => {
            let brokers = config.brokers.as_deref().ok_or_else(|| missing("brokers"))?;
            let options = config
                .settings
                .iter()
                .fold(KafkaOptions::new(brokers), |options, (key, value)| options.setting(key, value))
                .topics(topic_map(config));
            Arc::new(KafkaPublisher::new(options)?)
        }
        PublisherKind::Rabbitmq => {
            let url = config.url.as_deref().ok_or_else(|| missing("url"))?;
            let mut options =
                RabbitMqOptions::from_url(url)?.routing_keys(topic_map(config)).connection_name("outbox-relay");
            if let Some(exchange) = &config.exchange {
                options = options.exchange(exchange);
            }
            Arc::new(RabbitMqPublisher::new(options))
        }
        PublisherKind::Redis => {
            let url = config.url.as_deref().ok_or_else(|| missing("url"))?;
            Arc::new(RedisPublisher::new(RedisOptions::from_url(url)?.streams(topic_map(config)))?)
        }
        PublisherKind::Nats => {
            let url = config.url.as_deref().ok_or_else(|| missing("url"))?;
            Arc::new(NatsPublisher::new(NatsOptions::from_url(url)?.subjects(topic_map(config))))
        }
    })
}

/// The pipeline's relay over `store`: its routes to its publishers, its options.
pub(crate) fn relay(name: &str, config: &PipelineConfig, store: &AnyStore) -> outbox::Result<Relay> {
    let mut built = std::collections::BTreeMap::new();
    for (name, publisher_config) in &config.publishers {
        built.insert(name.as_str(), publisher(publisher_config)?);
    }
    let mut router = Router::new();
    for route in &config.routes {
        let publisher = built
            .get(route.publisher.as_str())
            .ok_or_else(|| outbox::Error::invalid_config(format!("unknown publisher {:?}", route.publisher)))?;
        router = router.route_shared(&route.topic, publisher.clone())?;
    }
    let r = &config.relay;
    let mut builder = Relay::builder_shared(store.shared(), Arc::new(router)).name(name);
    if let Some(n) = r.batch_size {
        builder = builder.batch_size(n);
    }
    if let Some(n) = r.concurrency {
        builder = builder.concurrency(n);
    }
    if let Some(n) = r.batches_in_flight {
        builder = builder.batches_in_flight(n);
    }
    if let Some(ms) = r.lease_ms {
        builder = builder.lease(Duration::from_millis(ms));
    }
    if let Some(ms) = r.poll_interval_ms {
        builder = builder.poll_interval(Duration::from_millis(ms));
    }
    if let Some(ms) = r.busy_poll_interval_ms {
        builder = builder.busy_poll_interval(Duration::from_millis(ms));
    }
    if r.max_attempts.is_some() || r.retry_initial_delay_ms.is_some() {
        let mut policy = RetryPolicy::builder();
        if let Some(n) = r.max_attempts {
            policy = policy.max_attempts(n);
        }
        if let Some(ms) = r.retry_initial_delay_ms {
            policy = policy.initial_delay(Duration::from_millis(ms));
        }
        builder = builder.retry_policy(policy.build()?);
    }
    builder.build()
}
