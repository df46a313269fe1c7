//! # outbox-sqlx
//!
//! Transactional-outbox stores on [sqlx](https://docs.rs/sqlx), one module per database behind its cargo
//! feature: `postgres`, `mysql` (MySQL 8 / MariaDB 10.6+), `sqlite`. Each store implements
//! [`outbox_engine::Store`] (the relay's side), [`outbox_engine::Enqueue`] (write a message in the caller's
//! own transaction) and [`outbox_engine::Inbox`] (apply each received message once).
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")]
//! # async fn demo() -> outbox_engine::Result<()> {
//! use outbox_engine::{Enqueue, NewMessage};
//! use outbox_sqlx::sqlite::SqliteStore;
//!
//! let store = SqliteStore::connect("sqlite://app.db").await?;
//! store.migrate().await?;
//!
//! let mut tx = store.pool().begin().await?;
//! sqlx::query("INSERT INTO orders (id) VALUES (1)").execute(&mut *tx).await?;
//! store.enqueue(&mut *tx, NewMessage::new("orders.placed", r#"{"id":1}"#).key("order-1")).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! `?` on a `sqlx::Error` gives an [`outbox_engine::Error`], transient or permanent by the database's
//! error codes; [`error_from`] does the same and names the operation.
//!
//! Table names are configurable through [`StoreOptions`]; every name is validated as an
//! [`Identifier`] and quoted, never spliced raw into SQL. The schema is applied by `migrate()` (idempotent)
//! or handed out by `schema_sql()` for your own migration tool.
#![cfg_attr(docsrs, feature(doc_cfg))]
// Without a database feature the crate holds only its options and names.
#![cfg_attr(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")), allow(dead_code))]
#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

use std::fmt;
use std::time::Duration;

use outbox_engine::{Error, MessageLimits, Result};

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod admin;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod claim_clocks;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod key_runs;
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub mod mysql;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;

/// A validated SQL identifier (table or schema name): an ASCII letter or `_`, then up to 47 ASCII
/// letters, digits or `_`. Anything else is rejected before any SQL runs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identifier(String);

impl Identifier {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self> {
        let mut chars = name.chars();
        let valid_start = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let valid_rest = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_start || !valid_rest || name.len() > 48 {
            return Err(Error::invalid_config(format!(
                "{name:?} is not a valid SQL identifier: use 1 to 48 ASCII letters, digits or '_', not starting with a digit"
            )));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name quoted with `quote` (`"` for PostgreSQL and SQLite, `` ` `` for MySQL).
    pub(crate) fn quoted(&self, quote: char) -> String {
        format!("{quote}{}{quote}", self.0)
    }

    fn suffixed(&self, suffix: &str) -> Self {
        Self(format!("{}{suffix}", self.0))
    }
}

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The names of the tables a store uses: `{prefix}_messages`, `{prefix}_dead_letters`,
/// `{prefix}_inbox`, `{prefix}_relays` (the relay registry) and, in PostgreSQL, `{prefix}_waiters`
/// (relays waiting for a notification), optionally in a schema (PostgreSQL) or database (MySQL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableNames {
    schema: Option<Identifier>,
    prefix: Identifier,
}

impl Default for TableNames {
    fn default() -> Self {
        Self { schema: None, prefix: Identifier("outbox".to_owned()) }
    }
}

impl TableNames {
    /// Tables named after `prefix` (validated; at most 32 characters so the derived names fit).
    pub fn new(prefix: &str) -> Result<Self> {
        if prefix.len() > 32 {
            return Err(Error::invalid_config(format!("table prefix {prefix:?} is longer than 32 characters")));
        }
        Ok(Self { schema: None, prefix: Identifier::new(prefix)? })
    }

    /// Puts the tables in `schema` (validated). Not supported by SQLite.
    pub fn with_schema(mut self, schema: &str) -> Result<Self> {
        self.schema = Some(Identifier::new(schema)?);
        Ok(self)
    }

    /// The prefix.
    pub fn prefix(&self) -> &Identifier {
        &self.prefix
    }

    /// The schema, if any.
    pub fn schema(&self) -> Option<&Identifier> {
        self.schema.as_ref()
    }

    pub(crate) fn messages(&self) -> Identifier {
        self.prefix.suffixed("_messages")
    }
    pub(crate) fn dead_letters(&self) -> Identifier {
        self.prefix.suffixed("_dead_letters")
    }
    pub(crate) fn inbox(&self) -> Identifier {
        self.prefix.suffixed("_inbox")
    }
    pub(crate) fn relays(&self) -> Identifier {
        self.prefix.suffixed("_relays")
    }
    /// PostgreSQL's registrations of relays waiting for notifications.
    #[cfg(feature = "postgres")]
    pub(crate) fn waiters(&self) -> Identifier {
        self.prefix.suffixed("_waiters")
    }

    /// `table` qualified with the schema and quoted.
    pub(crate) fn qualified(&self, table: &Identifier, quote: char) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", schema.quoted(quote), table.quoted(quote)),
            None => table.quoted(quote),
        }
    }
}

/// How a PostgreSQL relay that ran out of work learns of newly committed messages.
///
/// Producers and relays of one outbox should use the same mode. Whatever the mode, a relay also
/// polls at its `poll_interval`, so a missed wake-up delays a message and never loses it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WakeUps {
    /// The enqueue statement calls `pg_notify` while a relay waits for work (the default). A relay
    /// registers as waiting (a row of `{prefix}_waiters`, good for 30 s) when it runs out of work;
    /// one that keeps finding work lets its registration lapse, and producers then skip the
    /// notification: under load they do not pay for it. A notifying commit takes PostgreSQL's
    /// database-wide notification lock through its WAL flush and wakes every connection listening
    /// in the database, which is what a quiet outbox pays per message.
    #[default]
    Notify,
    /// Producers pay nothing: each relay reads the commits of the messages table from PostgreSQL's
    /// write-ahead log through a temporary logical replication slot (a publication on the messages
    /// table, `pgoutput`), and wakes when one lands. Needs the `postgres-replication` feature
    /// (without it, building the store fails with `InvalidConfig`), `wal_level = logical`, a role with the `REPLICATION` attribute and one free replication slot
    /// and WAL sender per relay process. Where the stream cannot run, the relay logs why and polls.
    Replication,
    /// No wake-ups: relays find messages by polling (give them a `busy_poll_interval`,
    /// docs/configuration.md). Relays still listen, so producers that notify still wake them.
    Polling,
}

impl std::str::FromStr for WakeUps {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "notify" => Ok(Self::Notify),
            "replication" => Ok(Self::Replication),
            "polling" => Ok(Self::Polling),
            other => {
                Err(Error::invalid_config(format!("wake_ups must be notify, replication or polling, not {other:?}")))
            }
        }
    }
}

/// Settings shared by every SQL store.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreOptions {
    /// Table names (default prefix `outbox`).
    pub tables: TableNames,
    /// Message limits checked before enqueueing.
    pub limits: MessageLimits,
    /// Keep published messages this long (purged by `purge_published`) instead of deleting them on
    /// acknowledgement (the default).
    pub retention: Option<Duration>,
    /// PostgreSQL: make the relay's claims and acknowledgements wait for the WAL flush like any
    /// other commit. Off by default: they commit with `synchronous_commit = off` (for that statement
    /// only), which takes a disk flush off every batch's path. A database crash can then forget the
    /// last moments of acknowledgements, and those messages are published again, which at-least-once
    /// delivery allows; messages themselves are written in the caller's transaction and keep its
    /// durability. Turn this on to pay one flush per claim and per acknowledgement instead of those
    /// repeats. MySQL and SQLite ignore it (their flush setting is server- or connection-wide).
    pub durable_relay_commits: bool,
    /// PostgreSQL: how a waiting relay learns that messages were committed (default
    /// [`WakeUps::Notify`]). MySQL and SQLite ignore it (their wake-ups are in-process).
    pub wake_ups: WakeUps,
    /// The pool size of a store opened with `connect_with` (default: 8 for PostgreSQL and MySQL, 4
    /// for SQLite). A store built with `new` uses the pool it is given.
    pub max_connections: Option<u32>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            tables: TableNames::default(),
            limits: MessageLimits::default(),
            retention: None,
            durable_relay_commits: false,
            wake_ups: WakeUps::Notify,
            max_connections: None,
        }
    }
}

impl StoreOptions {
    /// Uses tables named after `prefix`.
    pub fn table_prefix(mut self, prefix: &str) -> Result<Self> {
        let schema = self.tables.schema.clone();
        self.tables = TableNames::new(prefix)?;
        self.tables.schema = schema;
        Ok(self)
    }
    /// Puts the tables in `schema`.
    pub fn schema(mut self, schema: &str) -> Result<Self> {
        self.tables = self.tables.with_schema(schema)?;
        Ok(self)
    }
    /// Sets the message limits.
    pub fn limits(mut self, limits: MessageLimits) -> Self {
        self.limits = limits;
        self
    }
    /// Keeps published messages for `retention`.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = Some(retention);
        self
    }
    /// See [`StoreOptions::durable_relay_commits`] (PostgreSQL).
    pub fn durable_relay_commits(mut self, durable: bool) -> Self {
        self.durable_relay_commits = durable;
        self
    }
    /// Sets how relays are woken (PostgreSQL; see [`WakeUps`]).
    pub fn wake_ups(mut self, wake_ups: WakeUps) -> Self {
        self.wake_ups = wake_ups;
        self
    }
    /// `true`: [`WakeUps::Notify`]; `false`: [`WakeUps::Polling`].
    pub fn enqueue_notifications(self, notify: bool) -> Self {
        self.wake_ups(if notify { WakeUps::Notify } else { WakeUps::Polling })
    }
    /// The pool size of a store opened with `connect_with`: 1 to 1,000 connections.
    pub fn max_connections(mut self, connections: u32) -> Result<Self> {
        if !(1..=1000).contains(&connections) {
            return Err(Error::invalid_config(format!("max_connections must be 1 to 1000, not {connections}")));
        }
        self.max_connections = Some(connections);
        Ok(self)
    }
}

/// Checks an inbox consumer name (1 to 255 bytes) before it is bound.
#[allow(dead_code)]
pub(crate) fn check_consumer(consumer: &str) -> Result<()> {
    if consumer.is_empty() || consumer.len() > 255 {
        return Err(Error::invalid_message("inbox consumer name must be 1 to 255 bytes"));
    }
    Ok(())
}

/// A row of a store's relay registry query: the relay's id, name, host and start and heartbeat
/// times as the store decoded them, and the pid (column 3), messages in flight (6) and messages
/// published (7) read here.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) fn relay_info<'r, R>(
    row: &'r R,
    id: outbox_engine::RelayId,
    (name, host): (String, String),
    (started_at, heartbeat_at): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
) -> Result<outbox_engine::RelayInfo>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let count = |column: usize| row.try_get::<i64, _>(column).map_err(|e| sql_error("relays", e));
    let pid = u32::try_from(count(3)?).unwrap_or(0);
    let in_flight = u64::try_from(count(6)?).unwrap_or(0);
    let published = u64::try_from(count(7)?).unwrap_or(0);
    Ok(outbox_engine::RelayInfo::new(id, name, host, pid, started_at, heartbeat_at, in_flight)
        .with_published(published))
}

/// A relay id stored as text (MySQL, SQLite).
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn parse_relay_id(id: &str) -> Result<outbox_engine::RelayId> {
    id.parse().map_err(|e| Error::store("relays", false, format!("relay id {id:?}: {e}")))
}

/// The most message bytes one batch statement carries: far below MariaDB's default 16 MiB
/// `max_allowed_packet` and PostgreSQL's 1 GB per value, so a batch of large messages takes more
/// statements instead of failing where one message at a time would not.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) const BATCH_STATEMENT_BYTES: usize = 4 * 1024 * 1024;

/// What a message adds to a batch statement, roughly (its data plus a little for framing).
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn batch_bytes(parts: &outbox_engine::NewMessageParts) -> usize {
    let headers: usize = parts.headers.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
    parts.payload.len() + parts.topic.len() + parts.key.as_ref().map_or(0, String::len) + headers + 64
}

/// `impl Enqueue` for a store with an inherent `insert(&self, conn, message)`: a batch is validated
/// whole before anything is written, then inserted in order in the caller's transaction. A store
/// that names a `$rows` method (`async fn(&self, conn, Vec<NewMessage>) -> Result<Vec<MessageId>>`)
/// gets batches of two or more messages without idempotency keys written by it in as few statements
/// as it can; a message with an idempotency key may already be stored or dead-lettered, so such
/// batches go message by message.
#[allow(unused_macros)]
macro_rules! impl_enqueue {
    ($store:ty, $conn:ty $(, $rows:ident)?) => {
        impl outbox_engine::Enqueue for $store {
            type Connection = $conn;

            async fn enqueue(
                &self,
                conn: &mut $conn,
                message: outbox_engine::NewMessage,
            ) -> outbox_engine::Result<outbox_engine::MessageId> {
                self.insert(conn, message).await
            }

            async fn enqueue_batch(
                &self,
                conn: &mut $conn,
                messages: Vec<outbox_engine::NewMessage>,
            ) -> outbox_engine::Result<Vec<outbox_engine::MessageId>> {
                for message in &messages {
                    message.validate(&self.inner.options.limits)?;
                }
                $(
                    if messages.len() > 1 && messages.iter().all(|m| m.idempotency().is_none()) {
                        return self.$rows(conn, messages).await;
                    }
                )?
                let mut ids = Vec::with_capacity(messages.len());
                for message in messages {
                    ids.push(self.insert(conn, message).await?);
                }
                Ok(ids)
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use impl_enqueue;

/// Turns a sqlx error into an [`outbox_engine::Error`], classifying it as transient (connection lost,
/// pool timeout, deadlock, serialization failure) or not, with `operation` naming what failed. For
/// `map_err` in application code; a plain `?` does the same with the operation `statement`.
pub fn error_from(operation: &'static str) -> impl Fn(sqlx::Error) -> Error {
    move |e| Error::from_sqlx(operation, e)
}

pub(crate) fn sql_error(operation: &'static str, e: sqlx::Error) -> Error {
    Error::from_sqlx(operation, e)
}

/// Connects to `url`, never letting its password reach an error message.
#[allow(dead_code)]
pub(crate) fn connect_error(url: &str, e: sqlx::Error) -> Error {
    let transient = sqlx_error_is_transient(&e);
    let text = scrub(&e.to_string(), url);
    Error::store("connect", transient, format!("cannot connect to {}: {text}", redact_url(url)))
}

pub use outbox_engine::secret::redact_url;
use outbox_engine::secret::scrub;
use outbox_engine::sqlx_error::sqlx_error_is_transient;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_validated() {
        for good in ["outbox", "_x", "Orders_2024", &"a".repeat(48)] {
            assert!(Identifier::new(good).is_ok(), "{good}");
        }
        for bad in ["", "1abc", "outbox; DROP TABLE x", "a-b", "a.b", "\"q\"", "é", &"a".repeat(49)] {
            let err = Identifier::new(bad).unwrap_err().to_string();
            assert!(err.contains("not a valid SQL identifier"), "{bad}: {err}");
        }
        assert!(TableNames::new("outbox; DROP TABLE x").is_err());
        assert!(TableNames::default().with_schema("x y").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("postgres://u:s3cret@h:5432/db"), "postgres://u:***@h:5432/db");
    }
}
