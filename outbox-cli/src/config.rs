//! The configuration file: pipelines, each a store, its publishers, routes and relay options. TOML,
//! with environment overrides of any key under `pipelines` (`OUTBOX_PIPELINES__ORDERS__STORE__URL=...`:
//! `__` separates keys). Unknown keys are errors.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use outbox::redact_url;
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Pipelines by name.
    pub(crate) pipelines: BTreeMap<String, PipelineConfig>,
}

/// One pipeline: a store and where its messages go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PipelineConfig {
    pub(crate) store: StoreConfig,
    #[serde(default)]
    pub(crate) relay: RelayConfig,
    /// Publishers by name.
    #[serde(default)]
    pub(crate) publishers: BTreeMap<String, PublisherConfig>,
    /// Topic pattern -> publisher, first match wins.
    #[serde(default)]
    pub(crate) routes: Vec<RouteConfig>,
}

/// The database kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum StoreKind {
    Postgres,
    Mysql,
    Sqlite,
}

/// A pipeline's store.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreConfig {
    pub(crate) kind: StoreKind,
    /// `postgres://...`, `mysql://...` or `sqlite://...`; its password never reaches output.
    pub(crate) url: String,
    /// Prefix of the outbox tables (default `outbox`).
    pub(crate) table_prefix: Option<String>,
    /// PostgreSQL schema of the outbox tables.
    pub(crate) schema: Option<String>,
    /// Pool size.
    pub(crate) max_connections: Option<u32>,
    /// PostgreSQL: how relays are woken, `notify` (default), `replication` or `polling`.
    pub(crate) wake_ups: Option<String>,
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("kind", &self.kind)
            .field("url", &redact_url(&self.url))
            .field("table_prefix", &self.table_prefix)
            .field("schema", &self.schema)
            .field("wake_ups", &self.wake_ups)
            .finish_non_exhaustive()
    }
}

/// Relay options; every one defaults to the library's default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RelayConfig {
    pub(crate) batch_size: Option<usize>,
    pub(crate) concurrency: Option<usize>,
    pub(crate) batches_in_flight: Option<usize>,
    pub(crate) lease_ms: Option<u64>,
    pub(crate) poll_interval_ms: Option<u64>,
    pub(crate) busy_poll_interval_ms: Option<u64>,
    /// Attempts before a message is dead-lettered.
    pub(crate) max_attempts: Option<u32>,
    /// The first retry's delay; it doubles up to 5 minutes.
    pub(crate) retry_initial_delay_ms: Option<u64>,
}

/// The broker kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PublisherKind {
    Kafka,
    Rabbitmq,
    Redis,
    Nats,
}

/// A publisher.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublisherConfig {
    pub(crate) kind: PublisherKind,
    /// Kafka: `host:port[,host:port]`.
    pub(crate) brokers: Option<String>,
    /// RabbitMQ (`amqp://`), Redis (`redis://`) or NATS (`nats://`, several comma-separated) URL; its
    /// password never reaches output.
    pub(crate) url: Option<String>,
    /// RabbitMQ: the exchange (default: the default exchange, routing to the queue named by the key).
    pub(crate) exchange: Option<String>,
    /// Kafka: librdkafka producer settings.
    #[serde(default)]
    pub(crate) settings: BTreeMap<String, String>,
    /// Topic -> Kafka topic, RabbitMQ routing key, Redis stream or NATS subject (default: the topic itself).
    #[serde(default)]
    pub(crate) destinations: BTreeMap<String, String>,
}

impl fmt::Debug for PublisherConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublisherConfig")
            .field("kind", &self.kind)
            .field("brokers", &self.brokers)
            .field("url", &self.url.as_deref().map(redact_url))
            .field("destinations", &self.destinations)
            .finish_non_exhaustive()
    }
}

/// A route: messages whose topic matches `topic` (exact, `prefix.*` or `*`) go to `publisher`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteConfig {
    pub(crate) topic: String,
    pub(crate) publisher: String,
}

/// Reads `path` with its environment overrides, and checks what the types cannot: at least one
/// pipeline, routes naming publishers that exist, the settings each publisher kind needs.
pub(crate) fn load(path: &Path) -> Result<Config, String> {
    if !path.exists() {
        return Err(format!("{}: no such file", path.display()));
    }
    let config: Config = Figment::new()
        .merge(Toml::file_exact(path))
        .merge(
            Env::prefixed("OUTBOX_")
                .filter(|key| key.as_str().to_ascii_lowercase().starts_with("pipelines__"))
                .split("__"),
        )
        .extract()
        .map_err(|e| format!("{}: {}", path.display(), one_line(&e.to_string())))?;
    if config.pipelines.is_empty() {
        return Err(format!("{}: no [pipelines.NAME] table", path.display()));
    }
    for (name, pipeline) in &config.pipelines {
        let at = |key: &str| format!("{}: pipelines.{name}.{key}", path.display());
        check_url(pipeline.store.kind, &pipeline.store.url).map_err(|e| format!("{}: {e}", at("store.url")))?;
        if pipeline.routes.is_empty() {
            return Err(format!("{}: the pipeline has no routes", at("routes")));
        }
        for (n, route) in pipeline.routes.iter().enumerate() {
            if !pipeline.publishers.contains_key(&route.publisher) {
                return Err(format!(
                    "{}: unknown publisher {:?} (the pipeline's publishers: {})",
                    at(&format!("routes[{n}].publisher")),
                    route.publisher,
                    pipeline.publishers.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        for (publisher, p) in &pipeline.publishers {
            let missing = match p.kind {
                PublisherKind::Kafka => p.brokers.is_none().then_some("brokers"),
                PublisherKind::Rabbitmq | PublisherKind::Redis | PublisherKind::Nats => {
                    p.url.is_none().then_some("url")
                }
            };
            if let Some(key) = missing {
                return Err(format!("{}: missing", at(&format!("publishers.{publisher}.{key}"))));
            }
        }
    }
    Ok(config)
}

/// Whether `url` is a URL of a `kind` database (its password never in the error).
fn check_url(kind: StoreKind, url: &str) -> Result<(), String> {
    use std::str::FromStr;
    let parsed = match kind {
        StoreKind::Postgres => outbox::sqlx::postgres::PgConnectOptions::from_str(url).map(|_| ()),
        StoreKind::Mysql => outbox::sqlx::mysql::MySqlConnectOptions::from_str(url).map(|_| ()),
        StoreKind::Sqlite => outbox::sqlx::sqlite::SqliteConnectOptions::from_str(url).map(|_| ()),
    };
    parsed.map_err(|e| {
        let reason = outbox::secret::scrub(&e.to_string(), url);
        format!("not a {kind:?} URL ({}): {reason}", redact_url(url))
    })
}

/// An error on one line: the parser's multi-line reports joined.
fn one_line(text: &str) -> String {
    text.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../outbox.example.toml");
        let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.pipelines.keys().collect::<Vec<_>>(), ["customers", "orders"]);
        assert_eq!(config.pipelines["customers"].routes.len(), 3);
        assert!(!format!("{config:?}").contains("secret"), "a password in Debug output");
    }
}
