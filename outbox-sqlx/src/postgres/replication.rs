//! Wake-ups from the write-ahead log ([`WakeUps::Replication`](crate::WakeUps::Replication)): a
//! temporary logical replication slot streams the commits of the messages table (a publication
//! with inserts only, decoded by `pgoutput`), and each commit that inserted messages wakes a worker.
//! The producer's transaction pays nothing; the server decodes its WAL for each relay that streams.
//!
//! The slot is temporary: PostgreSQL drops it when the session ends, a crashed relay included, so
//! no slot is left behind holding WAL. The stream is only a wake-up: the table stays the record,
//! and a lost stream means polling until it is back.

use std::sync::Arc;
use std::time::Duration;

use outbox_engine::LateCommitChase;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, SslMode, TlsConfig};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::PgPool;
use tokio::sync::Notify;

/// What the stream needs besides the pool: the password (sqlx does not hand it back), the
/// publication to create and stream, and the messages table it covers.
pub(super) struct Stream {
    pub(super) pool: PgPool,
    pub(super) password: Option<String>,
    pub(super) publication: String,
    pub(super) messages: String,
    pub(super) wake: Arc<Notify>,
    pub(super) chase: Arc<LateCommitChase>,
}

impl Stream {
    /// Streams until the task is aborted: after a failure (no `wal_level = logical`, no
    /// `REPLICATION` attribute, no free slot, a restart) it logs why and tries again, the relay
    /// polling meanwhile.
    pub(super) async fn run(self) {
        let mut pause = Duration::from_secs(1);
        loop {
            let mut started = false;
            let Err(reason) = self.stream(&mut started).await;
            if started {
                // It ran: the next attempt is the first of a new series.
                pause = Duration::from_secs(1);
            }
            tracing::warn!(
                reason,
                retry_in_s = pause.as_secs(),
                "outbox replication wake-ups are not running; the relay polls until they are back"
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(30));
        }
    }

    /// Streams until the stream fails, and says why. Sets `started` once the server accepted it.
    async fn stream(&self, started: &mut bool) -> Result<std::convert::Infallible, String> {
        self.create_publication().await?;
        let slot = format!("outbox_wake_{}", uuid::Uuid::new_v4().simple());
        let config = config(&self.pool.connect_options(), self.password.as_deref(), &slot, &self.publication);
        let mut client = ReplicationClient::connect_gated(config).await.map_err(|e| e.to_string())?;
        // Temporary: dropped by the server when this session ends, however it ends.
        client
            .simple_query(&format!("CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT"))
            .await
            .map_err(|e| format!("creating the temporary replication slot: {e}"))?;
        client.start().await.map_err(|e| e.to_string())?;
        client.wait_started().await.map_err(|e| format!("starting replication: {e}"))?;
        *started = true;
        tracing::info!(slot, publication = self.publication, "outbox relay wakes from the write-ahead log");
        // Anything committed before the slot existed is claimed now.
        self.wake.notify_waiters();
        self.chase.enqueued();
        self.wake.notify_one();
        let mut inserted = false;
        loop {
            match client.recv().await.map_err(|e| e.to_string())? {
                Some(ReplicationEvent::Begin { .. }) => inserted = false,
                // pgoutput's insert message; relation and type messages precede it.
                Some(ReplicationEvent::XLogData { data, .. }) => inserted |= data.first() == Some(&b'I'),
                Some(ReplicationEvent::Commit { end_lsn, .. }) => {
                    if inserted {
                        // The commit record is decoded as soon as it is flushed, a moment before the
                        // committing session shows it to others: the chase claims again until the
                        // rows are seen.
                        self.chase.enqueued();
                        self.wake.notify_one();
                    }
                    client.update_applied_lsn(end_lsn);
                }
                Some(ReplicationEvent::KeepAlive { wal_end, .. }) => client.update_applied_lsn(wal_end),
                Some(_) => {}
                None => return Err("the replication stream ended".into()),
            }
        }
    }

    /// The publication of the messages table's inserts, made once per database.
    async fn create_publication(&self) -> Result<(), String> {
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
            .bind(&self.publication)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| format!("looking up the publication: {e}"))?;
        if exists {
            return Ok(());
        }
        // Only `seq` travels (a column list, PostgreSQL 15+): a wake-up needs no payload. Older
        // servers refuse the list (a syntax error) and get the whole row.
        let create = |columns: &str| {
            format!(
                "CREATE PUBLICATION \"{}\" FOR TABLE {}{columns} WITH (publish = 'insert')",
                self.publication, self.messages
            )
        };
        let mut created = sqlx::query(&create(" (seq)")).execute(&self.pool).await;
        if matches!(&created, Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42601")) {
            created = sqlx::query(&create("")).execute(&self.pool).await;
        }
        match created {
            Ok(_) => Ok(()),
            // Another relay made it meanwhile (duplicate_object, or unique_violation in a close race).
            Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42710" | "23505")) => Ok(()),
            Err(e) => Err(format!("creating the publication: {e}")),
        }
    }
}

/// The replication session's settings, from the pool's: the same server, user, database and TLS.
fn config(options: &PgConnectOptions, password: Option<&str>, slot: &str, publication: &str) -> ReplicationConfig {
    let database = options.get_database().unwrap_or(options.get_username()).to_owned();
    let password = password.unwrap_or_default().to_owned();
    let user = options.get_username().to_owned();
    let config = match options.get_socket() {
        Some(dir) => ReplicationConfig::unix(
            dir.to_string_lossy(),
            options.get_port(),
            user,
            password,
            database,
            slot,
            publication,
        ),
        None => {
            let mode = match options.get_ssl_mode() {
                PgSslMode::Disable => SslMode::Disable,
                PgSslMode::Allow | PgSslMode::Prefer => SslMode::Prefer,
                PgSslMode::Require => SslMode::Require,
                PgSslMode::VerifyCa => SslMode::VerifyCa,
                PgSslMode::VerifyFull => SslMode::VerifyFull,
            };
            ReplicationConfig::new(options.get_host(), user, password, database, slot, publication)
                .with_port(options.get_port())
                .with_tls(TlsConfig { mode, ..TlsConfig::default() })
        }
    };
    config
        .with_start_lsn(Lsn::ZERO)
        .with_status_interval(Duration::from_secs(1))
        // Shown in `pg_stat_replication`, to tell which outbox a WAL sender serves.
        .with_application_name(format!("outbox wake-ups {publication}"))
}
