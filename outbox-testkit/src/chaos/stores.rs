//! The store side of a chaos run: opening the store in the driver and in every relay process,
//! producers' transactions, and the database faults.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use outbox_engine::{BoxError, Enqueue, NewMessage, Store};
use outbox_sqlx::mysql::MySqlStore;
use outbox_sqlx::postgres::PostgresStore;
use outbox_sqlx::sqlite::SqliteStore;
use outbox_sqlx::StoreOptions;
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

/// The `application_name` of every PostgreSQL connection of a chaos run, so that only they are
/// terminated.
const APPLICATION_NAME: &str = "outbox-chaos";

/// Which store a chaos run exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// PostgreSQL.
    Postgres,
    /// MySQL / MariaDB.
    Mysql,
    /// SQLite (a file shared by every process; it has no server to disturb).
    Sqlite,
}

impl StoreKind {
    /// Whether the database has a server whose connections can be terminated and which can restart.
    pub fn has_server(self) -> bool {
        self != Self::Sqlite
    }
}

/// What a producer's transaction ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxOutcome {
    Committed,
    /// The commit was sent but not answered.
    Unknown,
    RolledBack,
}

/// A store of a chaos run.
#[derive(Debug, Clone)]
pub(crate) enum ChaosStore {
    Postgres(PostgresStore),
    MySql(MySqlStore),
    Sqlite(SqliteStore),
}

impl ChaosStore {
    /// Opens the store on tables named after `prefix`, PostgreSQL relays woken by `wake_ups`.
    pub(crate) async fn open(kind: StoreKind, url: &str, prefix: &str, wake_ups: &str) -> Result<Self, BoxError> {
        let options = StoreOptions::default().table_prefix(prefix)?.wake_ups(wake_ups.parse()?);
        Ok(match kind {
            StoreKind::Postgres => {
                Self::Postgres(PostgresStore::connect_with(&tagged_postgres_url(url), options).await?)
            }
            StoreKind::Mysql => Self::MySql(MySqlStore::connect_with(url, options).await?),
            StoreKind::Sqlite => {
                let connect = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(30));
                let pool = SqlitePoolOptions::new().max_connections(4).connect_with(connect).await?;
                Self::Sqlite(SqliteStore::new(pool, options)?)
            }
        })
    }

    /// Opens the store, retrying for up to `patience` while the database is unreachable (a relay
    /// restarted during a database restart).
    pub(crate) async fn open_patiently(
        kind: StoreKind,
        url: &str,
        prefix: &str,
        wake_ups: &str,
        patience: Duration,
    ) -> Result<Self, BoxError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match Self::open(kind, url, prefix, wake_ups).await {
                Ok(store) => return Ok(store),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!("cannot open the store yet: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) async fn migrate(&self) -> Result<(), BoxError> {
        match self {
            Self::Postgres(s) => s.migrate().await?,
            Self::MySql(s) => s.migrate().await?,
            Self::Sqlite(s) => s.migrate().await?,
        }
        Ok(())
    }

    pub(crate) fn dyn_store(&self) -> Arc<dyn Store> {
        match self {
            Self::Postgres(s) => Arc::new(s.clone()),
            Self::MySql(s) => Arc::new(s.clone()),
            Self::Sqlite(s) => Arc::new(s.clone()),
        }
    }

    /// Enqueues `messages` in one transaction of their own.
    pub(crate) async fn enqueue_tx(&self, messages: Vec<NewMessage>) -> TxOutcome {
        macro_rules! transaction {
            ($store:expr) => {{
                let Ok(mut tx) = $store.pool().begin().await else { return TxOutcome::RolledBack };
                if $store.enqueue_batch(&mut *tx, messages).await.is_err() {
                    return TxOutcome::RolledBack;
                }
                match tx.commit().await {
                    Ok(()) => TxOutcome::Committed,
                    Err(_) => TxOutcome::Unknown,
                }
            }};
        }
        match self {
            Self::Postgres(s) => transaction!(s),
            Self::MySql(s) => transaction!(s),
            Self::Sqlite(s) => transaction!(s),
        }
    }

    /// Drops the run's tables (best effort).
    pub(crate) async fn drop_tables(&self, prefix: &str) {
        let tables = ["messages", "dead_letters", "inbox", "relays", "waiters"].map(|t| format!("{prefix}_{t}"));
        for table in &tables {
            let statement = format!("DROP TABLE IF EXISTS {table}");
            let dropped = match self {
                Self::Postgres(s) => sqlx::query(&statement).execute(s.pool()).await.map(drop),
                Self::MySql(s) => sqlx::query(&statement).execute(s.pool()).await.map(drop),
                Self::Sqlite(s) => sqlx::query(&statement).execute(s.pool()).await.map(drop),
            };
            if let Err(e) = dropped {
                tracing::warn!("cannot drop {table}: {e}");
            }
        }
    }

    /// Terminates every other connection of the run (producers' and relays'); returns how many.
    pub(crate) async fn terminate_backends(&self) -> Result<u64, BoxError> {
        match self {
            Self::Postgres(s) => {
                let killed: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = $1 AND pid <> pg_backend_pid()) AS t",
                )
                .bind(APPLICATION_NAME)
                .fetch_one(s.pool())
                .await?;
                Ok(u64::try_from(killed).unwrap_or(0))
            }
            Self::MySql(s) => {
                let mut conn = s.pool().acquire().await?;
                let ids: Vec<i64> = sqlx::query_scalar(
                    "SELECT ID FROM information_schema.PROCESSLIST \
                     WHERE DB = DATABASE() AND ID <> CONNECTION_ID() AND COMMAND <> 'Daemon'",
                )
                .fetch_all(&mut *conn)
                .await?;
                let mut killed = 0;
                for id in ids {
                    // A connection may have gone away since it was listed.
                    if sqlx::query(&format!("KILL {id}")).execute(&mut *conn).await.is_ok() {
                        killed += 1;
                    }
                }
                Ok(killed)
            }
            Self::Sqlite(_) => Ok(0),
        }
    }
}

/// `url` with this run's `application_name`, so its connections can be told from others.
fn tagged_postgres_url(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={APPLICATION_NAME}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_urls_get_the_application_name() {
        assert_eq!(tagged_postgres_url("postgres://h/db"), "postgres://h/db?application_name=outbox-chaos");
        assert_eq!(
            tagged_postgres_url("postgres://h/db?sslmode=disable"),
            "postgres://h/db?sslmode=disable&application_name=outbox-chaos"
        );
    }
}
