//! SQLite store: lease claims with one `UPDATE ... RETURNING`, WAL journal, in-process wake-ups.
//!
//! SQLite allows one writer at a time, so every claim is atomic without row locks. Use a database
//! file: `sqlite::memory:` gives each pooled connection its own empty database.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_engine::{
    Admin, DeadLetter, Error, Failure, Headers, Inbox, LateCommitChase, Message, MessageId, NewMessage, OutboxStats,
    RelayId, RelayInfo, RelayRegistry, Result, Retry, Store,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{Row, SqliteConnection, SqlitePool};
use tokio::sync::Notify;

use crate::admin::Dialect;
use crate::claim_clocks::SpreadLookups;
use crate::{connect_error, sql_error, StoreOptions};

/// How long a woken relay waits for the enqueueing transaction to commit before claiming.
const COMMIT_GRACE: Duration = Duration::from_millis(2);

struct Sql {
    schema: String,
    insert: String,
    existing: String,
    existing_dead: String,
    claim: String,
    extend: String,
    release: String,
    ack_delete: String,
    ack_retain: String,
    reschedule: String,
    to_dead: String,
    delete_owned: String,
    list_dead: String,
    select_dead: String,
    select_pending: String,
    blocked_keys: String,
    count_scheduled: String,
    replay_insert: String,
    delete_dead: String,
    purge_published: String,
    stats: String,
    count_dead: String,
    inbox: String,
    relay_heartbeat: String,
    relays: String,
    relay_deregister: String,
}

impl Sql {
    fn new(options: &StoreOptions) -> Result<Self> {
        let t = &options.tables;
        if t.schema().is_some() {
            return Err(Error::invalid_config("SQLite stores do not support a schema; use a table prefix"));
        }
        let (m, d, i) =
            (t.qualified(&t.messages(), '"'), t.qualified(&t.dead_letters(), '"'), t.qualified(&t.inbox(), '"'));
        let p = t.prefix().as_str();
        let r = t.qualified(&t.relays(), '"');
        let ids = "(SELECT value FROM json_each(?))";
        let cols = "id, topic, msg_key, payload, headers, created_at, attempts, last_error";
        let ready = |alias: &str| {
            format!(
                "{alias}.published_at IS NULL AND {alias}.available_at <= ?3 \
                 AND ({alias}.locked_until IS NULL OR {alias}.locked_until <= ?3)"
            )
        };
        Ok(Self {
            schema: format!(
                r#"CREATE TABLE IF NOT EXISTS {m} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    msg_key TEXT,
    payload BLOB NOT NULL,
    headers TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    created_at INTEGER NOT NULL,
    available_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    locked_by TEXT,
    locked_until INTEGER,
    published_at INTEGER
);
CREATE INDEX IF NOT EXISTS "{p}_messages_pending_keyless" ON {m} (seq) WHERE published_at IS NULL AND msg_key IS NULL;
CREATE INDEX IF NOT EXISTS "{p}_messages_pending_keyed" ON {m} (seq) WHERE published_at IS NULL AND msg_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS "{p}_messages_key" ON {m} (msg_key, seq) WHERE published_at IS NULL AND msg_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS "{p}_messages_published" ON {m} (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS "{p}_messages_failed" ON {m} (seq) WHERE published_at IS NULL AND last_error IS NOT NULL;
CREATE TABLE IF NOT EXISTS {d} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    msg_key TEXT,
    payload BLOB NOT NULL,
    headers TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    created_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    dead_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS {i} (
    consumer TEXT NOT NULL,
    message_id TEXT NOT NULL,
    processed_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
CREATE TABLE IF NOT EXISTS {r} (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
);
"#
            ),
            relay_heartbeat: format!(
                "INSERT INTO {r} (id, name, host, pid, started_at, heartbeat_at, published) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6) \
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, published = excluded.published"
            ),
            relays: format!(
                "SELECT r.id, r.name, r.host, r.pid, r.started_at, r.heartbeat_at, \
                 (SELECT count(*) FROM {m} o WHERE o.locked_by = r.id AND o.published_at IS NULL AND o.locked_until > ?1), \
                 r.published FROM {r} r WHERE r.heartbeat_at > ?2 ORDER BY r.started_at"
            ),
            relay_deregister: format!("DELETE FROM {r} WHERE id = ?"),
            insert: format!(
                "INSERT INTO {m} (id, topic, msg_key, payload, headers, idempotency_key, created_at, available_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING"
            ),
            existing: format!("SELECT id FROM {m} WHERE idempotency_key = ?"),
            existing_dead: format!("SELECT id FROM {d} WHERE idempotency_key = ?"),
            // Same candidate sources as the PostgreSQL claim (see there): keyless rows from their own
            // index, each key's run through a window of the oldest unfinished keyed rows (claimable or
            // not, so a key's first row in it is its oldest, and each key's run is its rows from there
            // while they are claimable), and the head of every key (loose index scan) only when that
            // window is clogged with queued rows. The window's blocked rows tell whether looking past
            // it can pay: queues of a few keys (at least two rows a key on average) hide other keys'
            // heads behind them, while about one blocked row a key means the window already holds
            // most keys, their heads in flight, and the O(keys) lookup would find them all leased; then
            // it runs only when the store allows it (?5, at most once a second). One writer at a time:
            // the statement is atomic, so the runs need no check after it.
            claim: format!(
                "UPDATE {m} SET locked_by = ?1, locked_until = ?2, attempts = attempts + 1 WHERE seq IN (\
                   WITH RECURSIVE \
                   keyless AS (SELECT k.seq FROM {m} k WHERE k.msg_key IS NULL AND {ready_k} ORDER BY k.seq LIMIT ?4), \
                   win AS MATERIALIZED (SELECT w.seq, w.msg_key, ({ready_w}) AS ready FROM {m} w \
                     WHERE w.msg_key IS NOT NULL AND w.published_at IS NULL ORDER BY w.seq LIMIT ?4 + ?4 / 4), \
                   linked AS MATERIALIZED (SELECT w.seq, w.msg_key, min(w.ready) OVER \
                     (PARTITION BY w.msg_key ORDER BY w.seq) AS unbroken FROM win w), \
                   runs AS (SELECT seq FROM linked WHERE unbroken), \
                   keys(k) AS (SELECT (SELECT min(msg_key) FROM {m} WHERE msg_key IS NOT NULL AND published_at IS NULL) \
                       WHERE (SELECT count(*) FROM win) = ?4 + ?4 / 4 AND (SELECT count(*) FROM runs) < ?4 \
                       AND (?5 OR (SELECT count(*) >= 2 * count(DISTINCT msg_key) FROM linked WHERE NOT unbroken)) \
                     UNION ALL SELECT (SELECT min(n.msg_key) FROM {m} n WHERE n.msg_key IS NOT NULL AND n.msg_key > keys.k \
                       AND n.published_at IS NULL) FROM keys WHERE keys.k IS NOT NULL), \
                   heads AS (SELECT h.seq FROM keys JOIN {m} h ON h.seq = (SELECT min(x.seq) FROM {m} x \
                       WHERE x.msg_key IS NOT NULL AND x.msg_key = keys.k AND x.published_at IS NULL) \
                     WHERE keys.k IS NOT NULL AND {ready_h}) \
                   SELECT seq FROM keyless UNION SELECT seq FROM runs UNION SELECT seq FROM heads ORDER BY seq LIMIT ?4) \
                 RETURNING seq, {cols}",
                ready_k = ready("k"),
                ready_w = ready("w"),
                ready_h = ready("h"),
            ),
            extend: format!(
                "UPDATE {m} SET locked_until = ? WHERE locked_by = ? AND published_at IS NULL AND id IN {ids}"
            ),
            release: format!(
                "UPDATE {m} SET locked_by = NULL, locked_until = NULL, attempts = MAX(attempts - 1, 0) \
                 WHERE locked_by = ? AND published_at IS NULL AND id IN {ids}"
            ),
            ack_delete: format!("DELETE FROM {m} WHERE id IN {ids}"),
            ack_retain: format!(
                "UPDATE {m} SET published_at = ?, locked_by = NULL, locked_until = NULL \
                 WHERE published_at IS NULL AND id IN {ids}"
            ),
            reschedule: format!(
                "UPDATE {m} SET locked_by = NULL, locked_until = NULL, available_at = ?, last_error = ? \
                 WHERE id = ? AND locked_by = ? AND published_at IS NULL"
            ),
            to_dead: format!(
                "INSERT INTO {d} (id, topic, msg_key, payload, headers, idempotency_key, created_at, attempts, error, dead_at) \
                 SELECT id, topic, msg_key, payload, headers, idempotency_key, created_at, attempts, ?, ? FROM {m} \
                 WHERE id = ? AND locked_by = ? AND published_at IS NULL"
            ),
            delete_owned: format!("DELETE FROM {m} WHERE id = ? AND locked_by = ?"),
            list_dead: format!(
                "SELECT seq, id, topic, msg_key, payload, headers, created_at, attempts, error, error, dead_at \
                 FROM {d} ORDER BY seq LIMIT ?"
            ),
            select_pending: crate::admin::select_pending_sql(&m),
            blocked_keys: crate::admin::blocked_keys_sql(&m),
            select_dead: format!(
                "SELECT seq, id, topic, msg_key, payload, headers, created_at, attempts, error, error, dead_at FROM {d}"
            ),
            count_scheduled: format!(
                "SELECT COUNT(*) FROM {m} WHERE published_at IS NULL AND last_error IS NULL AND attempts = 0 \
                 AND available_at > ?"
            ),
            replay_insert: format!(
                "INSERT INTO {m} (id, topic, msg_key, payload, headers, idempotency_key, created_at, available_at, attempts, last_error) \
                 SELECT id, topic, msg_key, payload, headers, idempotency_key, created_at, ?, 0, error FROM {d} \
                 WHERE id IN {ids} ORDER BY seq"
            ),
            delete_dead: format!("DELETE FROM {d} WHERE id IN {ids}"),
            purge_published: format!(
                "DELETE FROM {m} WHERE seq IN (SELECT seq FROM {m} WHERE published_at IS NOT NULL \
                 AND published_at <= ? ORDER BY published_at LIMIT ?)"
            ),
            stats: format!(
                "SELECT COUNT(*), COALESCE(SUM(last_error IS NOT NULL), 0), MIN(created_at) FROM {m} WHERE published_at IS NULL"
            ),
            count_dead: format!("SELECT COUNT(*) FROM {d}"),
            inbox: format!(
                "INSERT INTO {i} (consumer, message_id, processed_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
            ),
        })
    }
}

/// The SQLite outbox store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    options: StoreOptions,
    sql: Sql,
    wake: Notify,
    /// Wakes at enqueue come before the commit: keep waking until a claim sees it.
    chase: LateCommitChase,
    /// When a claim last looked past a window of blocked rows spread over many keys.
    spread_lookups: SpreadLookups,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").field("options", &self.inner.options).finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn id_list(ids: &[MessageId]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_owned())
}

fn datetime(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A row of `select_pending`: its `seq` and the message with its next attempt.
fn decode_pending(row: &SqliteRow) -> Result<(i64, outbox_engine::PendingMessage)> {
    let get = |e| sql_error("search_messages", e);
    let pending = outbox_engine::PendingMessage::new(decode_message(row)?, datetime(row.try_get(9).map_err(get)?));
    Ok((row.try_get(0).map_err(get)?, pending))
}

/// A row of `select_dead`: its `seq` and the dead letter.
fn decode_dead(row: &SqliteRow) -> Result<(i64, DeadLetter)> {
    let get = |e| sql_error("dead_letters", e);
    let dead = DeadLetter {
        message: decode_message(row)?,
        error: row.try_get(9).map_err(get)?,
        dead_at: datetime(row.try_get(10).map_err(get)?),
    };
    Ok((row.try_get(0).map_err(get)?, dead))
}

fn decode_message(row: &SqliteRow) -> Result<Message> {
    let get = |e: sqlx::Error| crate::sql_error("decode", e);
    let id: String = row.try_get(1).map_err(get)?;
    let headers: String = row.try_get(5).map_err(get)?;
    let headers: Headers = serde_json::from_str(&headers)
        .map_err(|e| Error::store("decode", false, format!("headers of message {id} are not JSON: {e}")))?;
    Ok(Message {
        id: MessageId::from_str(&id)?,
        topic: row.try_get(2).map_err(get)?,
        key: row.try_get(3).map_err(get)?,
        payload: row.try_get(4).map_err(get)?,
        headers,
        created_at: datetime(row.try_get(6).map_err(get)?),
        attempts: u32::try_from(row.try_get::<i64, _>(7).map_err(get)?).unwrap_or(u32::MAX),
        last_error: row.try_get(8).map_err(get)?,
    })
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path.db`) in WAL mode, with the
    /// default [`StoreOptions`].
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, StoreOptions::default()).await
    }

    /// Opens the database at `url` with `options` (a pool of `options.max_connections`, default 4).
    pub async fn connect_with(url: &str, options: StoreOptions) -> Result<Self> {
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|e| connect_error(url, e))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.unwrap_or(4))
            .connect_with(connect)
            .await
            .map_err(|e| connect_error(url, e))?;
        Self::new(pool, options)
    }

    /// A store over your own pool.
    pub fn new(pool: SqlitePool, options: StoreOptions) -> Result<Self> {
        let sql = Sql::new(&options)?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                options,
                sql,
                wake: Notify::new(),
                chase: LateCommitChase::default(),
                spread_lookups: SpreadLookups::default(),
            }),
        })
    }

    /// The options in force (table names, limits, retention).
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// The pool, for your own transactions.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// The schema this store needs, for your own migration tool. Idempotent.
    pub fn schema_sql(&self) -> &str {
        &self.inner.sql.schema
    }

    /// Creates the tables and indexes if they do not exist.
    pub async fn migrate(&self) -> Result<()> {
        sqlx::raw_sql(&self.inner.sql.schema).execute(&self.inner.pool).await.map_err(|e| sql_error("migrate", e))?;
        Ok(())
    }

    /// Wakes one waiting relay worker of this process (enqueue does it for you). With no worker
    /// waiting, the next one to wait returns at once, so a wake-up is never lost.
    pub fn notify(&self) {
        self.inner.wake.notify_one();
    }

    async fn insert(&self, conn: &mut SqliteConnection, message: NewMessage) -> Result<MessageId> {
        let sql = &self.inner.sql;
        message.validate(&self.inner.options.limits)?;
        let parts = message.into_parts();
        if let Some(key) = &parts.idempotency_key {
            let dead: Option<String> = sqlx::query_scalar(&sql.existing_dead)
                .bind(key)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| sql_error("enqueue", e))?;
            if let Some(id) = dead {
                return MessageId::from_str(&id);
            }
        }
        let now = now_ms();
        let headers = serde_json::to_string(&parts.headers).map_err(|e| Error::invalid_message(e.to_string()))?;
        let done = sqlx::query(&sql.insert)
            .bind(parts.id.to_string())
            .bind(&parts.topic)
            .bind(&parts.key)
            .bind(&parts.payload)
            .bind(headers)
            .bind(&parts.idempotency_key)
            .bind(now)
            .bind(now.saturating_add(ms(parts.delay.unwrap_or_default())))
            .execute(&mut *conn)
            .await
            .map_err(|e| sql_error("enqueue", e))?;
        if done.rows_affected() == 0 {
            let id: String = sqlx::query_scalar(&sql.existing)
                .bind(&parts.idempotency_key)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| sql_error("enqueue", e))?;
            return MessageId::from_str(&id);
        }
        self.inner.chase.enqueued();
        self.notify();
        Ok(parts.id)
    }
}

crate::impl_enqueue!(SqliteStore, SqliteConnection);

#[async_trait]
impl Store for SqliteStore {
    async fn claim(&self, owner: RelayId, limit: usize, lease: Duration) -> Result<Vec<Message>> {
        let now = now_ms();
        let rows = sqlx::query(&self.inner.sql.claim)
            .bind(owner.to_string())
            .bind(now.saturating_add(ms(lease)))
            .bind(now)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(self.inner.spread_lookups.allowed())
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| sql_error("claim", e))?;
        let mut claimed: Vec<(i64, Message)> = Vec::with_capacity(rows.len());
        for row in &rows {
            claimed.push((row.try_get(0).map_err(|e| sql_error("claim", e))?, decode_message(row)?));
        }
        claimed.sort_unstable_by_key(|(seq, _)| *seq);
        self.inner.chase.claimed(claimed.len());
        Ok(claimed.into_iter().map(|(_, m)| m).collect())
    }

    async fn extend_lease(&self, owner: RelayId, ids: &[MessageId], lease: Duration) -> Result<()> {
        sqlx::query(&self.inner.sql.extend)
            .bind(now_ms().saturating_add(ms(lease)))
            .bind(owner.to_string())
            .bind(id_list(ids))
            .execute(&self.inner.pool)
            .await
            .map_err(|e| sql_error("extend_lease", e))?;
        Ok(())
    }

    async fn release(&self, owner: RelayId, ids: &[MessageId]) -> Result<()> {
        sqlx::query(&self.inner.sql.release)
            .bind(owner.to_string())
            .bind(id_list(ids))
            .execute(&self.inner.pool)
            .await
            .map_err(|e| sql_error("release", e))?;
        self.notify();
        Ok(())
    }

    async fn acknowledge(&self, ids: &[MessageId]) -> Result<()> {
        let sql = &self.inner.sql;
        let query = match self.inner.options.retention {
            None => sqlx::query(&sql.ack_delete),
            Some(_) => sqlx::query(&sql.ack_retain).bind(now_ms()),
        };
        query.bind(id_list(ids)).execute(&self.inner.pool).await.map_err(|e| sql_error("acknowledge", e))?;
        Ok(())
    }

    async fn reschedule(&self, owner: RelayId, retries: &[Retry]) -> Result<()> {
        let now = now_ms();
        let owner = owner.to_string();
        let mut tx = self.inner.pool.begin().await.map_err(|e| sql_error("reschedule", e))?;
        for retry in retries {
            sqlx::query(&self.inner.sql.reschedule)
                .bind(now.saturating_add(ms(retry.delay)))
                .bind(&retry.error)
                .bind(retry.id.to_string())
                .bind(&owner)
                .execute(&mut *tx)
                .await
                .map_err(|e| sql_error("reschedule", e))?;
        }
        tx.commit().await.map_err(|e| sql_error("reschedule", e))
    }

    async fn dead_letter(&self, owner: RelayId, failures: &[Failure]) -> Result<()> {
        let now = now_ms();
        let owner = owner.to_string();
        let mut tx = self.inner.pool.begin().await.map_err(|e| sql_error("dead_letter", e))?;
        for failure in failures {
            let id = failure.id.to_string();
            let moved = sqlx::query(&self.inner.sql.to_dead)
                .bind(&failure.error)
                .bind(now)
                .bind(&id)
                .bind(&owner)
                .execute(&mut *tx)
                .await
                .map_err(|e| sql_error("dead_letter", e))?;
            if moved.rows_affected() == 1 {
                sqlx::query(&self.inner.sql.delete_owned)
                    .bind(&id)
                    .bind(&owner)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| sql_error("dead_letter", e))?;
            }
        }
        tx.commit().await.map_err(|e| sql_error("dead_letter", e))
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(&self.inner.sql.list_dead)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| sql_error("dead_letters", e))?;
        rows.iter().map(|row| decode_dead(row).map(|(_, dead)| dead)).collect()
    }

    async fn replay_dead_letters(&self, ids: &[MessageId]) -> Result<u64> {
        let list = id_list(ids);
        let mut tx = self.inner.pool.begin().await.map_err(|e| sql_error("replay", e))?;
        let moved = sqlx::query(&self.inner.sql.replay_insert)
            .bind(now_ms())
            .bind(&list)
            .execute(&mut *tx)
            .await
            .map_err(|e| sql_error("replay", e))?;
        sqlx::query(&self.inner.sql.delete_dead)
            .bind(&list)
            .execute(&mut *tx)
            .await
            .map_err(|e| sql_error("replay", e))?;
        tx.commit().await.map_err(|e| sql_error("replay", e))?;
        self.notify();
        Ok(moved.rows_affected())
    }

    async fn purge_dead_letters(&self, ids: &[MessageId]) -> Result<u64> {
        let done = sqlx::query(&self.inner.sql.delete_dead)
            .bind(id_list(ids))
            .execute(&self.inner.pool)
            .await
            .map_err(|e| sql_error("purge_dead_letters", e))?;
        Ok(done.rows_affected())
    }

    async fn purge_published(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let done = sqlx::query(&self.inner.sql.purge_published)
            .bind(now_ms().saturating_sub(ms(older_than)))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&self.inner.pool)
            .await
            .map_err(|e| sql_error("purge_published", e))?;
        Ok(done.rows_affected())
    }

    async fn stats(&self) -> Result<OutboxStats> {
        let err = |e| sql_error("stats", e);
        let row = sqlx::query(&self.inner.sql.stats).fetch_one(&self.inner.pool).await.map_err(err)?;
        let pending: i64 = row.try_get(0).map_err(err)?;
        let retrying: i64 = row.try_get(1).map_err(err)?;
        let oldest: Option<i64> = row.try_get(2).map_err(err)?;
        let dead: i64 =
            sqlx::query_scalar(&self.inner.sql.count_dead).fetch_one(&self.inner.pool).await.map_err(err)?;
        let scheduled: i64 = sqlx::query_scalar(&self.inner.sql.count_scheduled)
            .bind(now_ms())
            .fetch_one(&self.inner.pool)
            .await
            .map_err(err)?;
        Ok(OutboxStats::new(
            pending as u64,
            retrying as u64,
            oldest.map(|t| Duration::from_millis(now_ms().saturating_sub(t).max(0) as u64)),
            dead as u64,
        )
        .with_scheduled(scheduled as u64))
    }

    async fn wait_for_work(&self, timeout: Duration) {
        if self.inner.chase.wait(&self.inner.wake, timeout).await {
            tokio::time::sleep(COMMIT_GRACE).await;
        }
    }

    fn registry(&self) -> Option<&dyn RelayRegistry> {
        Some(self)
    }

    fn admin(&self) -> Option<&dyn Admin> {
        Some(self)
    }
}

/// How SQLite writes a dead-letter search.
const DIALECT: Dialect<i64> = Dialect {
    find: "instr",
    instant: |at| at.timestamp_millis(),
    now: "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
};

crate::admin::impl_admin!(SqliteStore, sqlx::Sqlite, DIALECT, |id: MessageId| id.to_string());

#[async_trait]
impl RelayRegistry for SqliteStore {
    async fn heartbeat(&self, relay: RelayId, name: &str, host: &str, pid: u32, published: u64) -> Result<()> {
        sqlx::query(&self.inner.sql.relay_heartbeat)
            .bind(relay.to_string())
            .bind(name)
            .bind(host)
            .bind(i64::from(pid))
            .bind(now_ms())
            .bind(i64::try_from(published).unwrap_or(i64::MAX))
            .execute(&self.inner.pool)
            .await
            .map_err(|e| sql_error("heartbeat", e))?;
        Ok(())
    }

    async fn relays(&self, alive_within: Duration) -> Result<Vec<RelayInfo>> {
        let now = now_ms();
        let rows = sqlx::query(&self.inner.sql.relays)
            .bind(now)
            .bind(now.saturating_sub(ms(alive_within)))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| sql_error("relays", e))?;
        let get = |e| sql_error("relays", e);
        rows.iter()
            .map(|row| {
                let id = crate::parse_relay_id(row.try_get(0).map_err(get)?)?;
                let names = (row.try_get(1).map_err(get)?, row.try_get(2).map_err(get)?);
                let times = (datetime(row.try_get(4).map_err(get)?), datetime(row.try_get(5).map_err(get)?));
                crate::relay_info(row, id, names, times)
            })
            .collect()
    }

    async fn deregister(&self, relay: RelayId) -> Result<()> {
        sqlx::query(&self.inner.sql.relay_deregister)
            .bind(relay.to_string())
            .execute(&self.inner.pool)
            .await
            .map_err(|e| sql_error("deregister", e))?;
        Ok(())
    }
}

#[async_trait]
impl Inbox for SqliteStore {
    type Connection = SqliteConnection;

    async fn process_once(&self, conn: &mut SqliteConnection, consumer: &str, id: MessageId) -> Result<bool> {
        crate::check_consumer(consumer)?;
        let done = sqlx::query(&self.inner.sql.inbox)
            .bind(consumer)
            .bind(id.to_string())
            .bind(now_ms())
            .execute(conn)
            .await
            .map_err(|e| sql_error("process_once", e))?;
        Ok(done.rows_affected() == 1)
    }
}
