//! MySQL 8.0.1+ / MariaDB 10.6+ store: claims with `FOR UPDATE SKIP LOCKED` in a short transaction,
//! polling plus in-process wake-ups.
//!
//! A claim is one short transaction: a consistent (non-locking) read picks candidates with the per-key
//! rule (the oldest keyless rows, and the key heads in a window of the oldest keyed rows; every key's
//! head via a loose index scan only when that window is clogged, as on PostgreSQL), a locking read
//! with `SKIP LOCKED` re-checks and locks them, an `UPDATE` sets the lease, and the transaction
//! commits before anything is published. (MariaDB rejects `IN (SELECT ... LIMIT n)`, and a
//! derived table makes every claim a full scan, so the claim is not a single statement.)

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use outbox_core::{
    DeadLetter, Error, Failure, Headers, Inbox, Message, MessageId, NewMessage, OutboxStats, RelayId, Result, Retry,
    Store,
};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlRow};
use sqlx::{Connection, MySql, MySqlConnection, MySqlPool, Row};
use tokio::sync::Notify;

use crate::{connect_error, sql_error, StoreOptions};

const COMMIT_GRACE: Duration = Duration::from_millis(2);
const CHUNK: usize = 1000;
const NOW: &str = "UTC_TIMESTAMP(6)";

struct Sql {
    schema: String,
    messages: String,
    dead: String,
    insert: String,
    insert_rows: Vec<(usize, String)>,
    existing: String,
    existing_dead: String,
    candidates: String,
    key_heads: String,
    reschedule: String,
    to_dead: String,
    delete_owned: String,
    list_dead: String,
    purge_published: String,
    stats: String,
    count_dead: String,
    inbox: String,
}

impl Sql {
    fn new(options: &StoreOptions) -> Self {
        let t = &options.tables;
        let (m, d, i) =
            (t.qualified(&t.messages(), '`'), t.qualified(&t.dead_letters(), '`'), t.qualified(&t.inbox(), '`'));
        let table_options = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";
        let ready = |alias: &str| {
            format!(
                "{alias}.published_at IS NULL AND {alias}.available_at <= {NOW} \
                 AND ({alias}.locked_until IS NULL OR {alias}.locked_until <= {NOW})"
            )
        };
        Self {
            schema: format!(
                r#"CREATE TABLE IF NOT EXISTS {m} (
    seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id CHAR(36) NOT NULL,
    topic VARCHAR(255) NOT NULL,
    msg_key VARCHAR(255) NULL,
    payload LONGBLOB NOT NULL,
    headers LONGTEXT NOT NULL,
    idempotency_key VARCHAR(255) NULL,
    created_at DATETIME(6) NOT NULL,
    available_at DATETIME(6) NOT NULL,
    attempts INT NOT NULL DEFAULT 0,
    last_error TEXT NULL,
    locked_by CHAR(36) NULL,
    locked_until DATETIME(6) NULL,
    published_at DATETIME(6) NULL,
    UNIQUE KEY uq_id (id),
    UNIQUE KEY uq_idempotency (idempotency_key),
    KEY ix_pending (published_at, seq),
    KEY ix_key (msg_key, published_at, seq)
) {table_options};
CREATE TABLE IF NOT EXISTS {d} (
    seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id CHAR(36) NOT NULL,
    topic VARCHAR(255) NOT NULL,
    msg_key VARCHAR(255) NULL,
    payload LONGBLOB NOT NULL,
    headers LONGTEXT NOT NULL,
    idempotency_key VARCHAR(255) NULL,
    created_at DATETIME(6) NOT NULL,
    attempts INT NOT NULL,
    error TEXT NOT NULL,
    dead_at DATETIME(6) NOT NULL,
    UNIQUE KEY uq_id (id),
    UNIQUE KEY uq_idempotency (idempotency_key)
) {table_options};
CREATE TABLE IF NOT EXISTS {i} (
    consumer VARCHAR(255) NOT NULL,
    message_id CHAR(36) NOT NULL,
    processed_at DATETIME(6) NOT NULL,
    PRIMARY KEY (consumer, message_id)
) {table_options}"#
            ),
            insert: format!(
                "INSERT INTO {m} (id, topic, msg_key, payload, headers, idempotency_key, created_at, available_at) \
                 VALUES (?, ?, ?, ?, ?, ?, {NOW}, DATE_ADD({NOW}, INTERVAL ? MICROSECOND))"
            ),
            // Multi-row inserts for batches without idempotency keys, largest first: a batch is cut
            // into powers of two (10 = 8 + 2), so it takes few statements and at most nine distinct
            // ones reach the prepared-statement cache.
            insert_rows: [256, 128, 64, 32, 16, 8, 4, 2, 1]
                .into_iter()
                .map(|n| {
                    let row = format!("(?, ?, ?, ?, ?, {NOW}, DATE_ADD({NOW}, INTERVAL ? MICROSECOND))");
                    let rows = vec![row; n].join(", ");
                    (n, format!("INSERT INTO {m} (id, topic, msg_key, payload, headers, created_at, available_at) VALUES {rows}"))
                })
                .collect(),
            existing: format!("SELECT id FROM {m} WHERE idempotency_key = ?"),
            existing_dead: format!("SELECT id FROM {d} WHERE idempotency_key = ?"),
            // Candidates (a consistent read, no locks): the oldest claimable keyless rows, and a window
            // of the oldest claimable keyed rows, each flagged whether it is its key's head (no older
            // unfinished row of the same key). `kind` tells the two apart.
            candidates: format!(
                "(SELECT k.seq, CAST(0 AS SIGNED) AS kind, CAST(1 AS SIGNED) AS head FROM {m} k WHERE k.msg_key IS NULL AND {ready_k} ORDER BY k.seq LIMIT ?) \
                 UNION ALL \
                 (SELECT w.seq, CAST(1 AS SIGNED) AS kind, CAST(NOT EXISTS (SELECT 1 FROM {m} e WHERE e.msg_key = w.msg_key \
                    AND e.published_at IS NULL AND e.seq < w.seq) AS SIGNED) AS head \
                  FROM {m} w WHERE w.msg_key IS NOT NULL AND {ready_w} ORDER BY w.seq LIMIT ?)",
                ready_k = ready("k"),
                ready_w = ready("w"),
            ),
            // Every key's head, with a loose index scan over (msg_key, published_at, seq) (`GROUP BY`
            // with `MIN`): O(keys), used only when the window is clogged with rows queued behind heads.
            key_heads: format!(
                "SELECT h.seq FROM (SELECT MIN(seq) AS seq FROM {m} WHERE published_at IS NULL AND msg_key IS NOT NULL \
                 GROUP BY msg_key) heads JOIN {m} h ON h.seq = heads.seq WHERE {ready_h} ORDER BY h.seq LIMIT ?",
                ready_h = ready("h"),
            ),
            reschedule: format!(
                "UPDATE {m} SET locked_by = NULL, locked_until = NULL, \
                 available_at = DATE_ADD({NOW}, INTERVAL ? MICROSECOND), last_error = ? \
                 WHERE id = ? AND locked_by = ? AND published_at IS NULL"
            ),
            to_dead: format!(
                "INSERT INTO {d} (id, topic, msg_key, payload, headers, idempotency_key, created_at, attempts, error, dead_at) \
                 SELECT id, topic, msg_key, payload, headers, idempotency_key, created_at, attempts, ?, {NOW} FROM {m} \
                 WHERE id = ? AND locked_by = ? AND published_at IS NULL"
            ),
            delete_owned: format!("DELETE FROM {m} WHERE id = ? AND locked_by = ?"),
            list_dead: format!(
                "SELECT seq, id, topic, msg_key, payload, headers, created_at, attempts, error, error, dead_at \
                 FROM {d} ORDER BY seq LIMIT ?"
            ),
            purge_published: format!(
                "DELETE FROM {m} WHERE published_at IS NOT NULL \
                 AND published_at <= DATE_SUB({NOW}, INTERVAL ? MICROSECOND) ORDER BY published_at LIMIT ?"
            ),
            stats: format!(
                "SELECT COUNT(*), CAST(COALESCE(SUM(last_error IS NOT NULL), 0) AS SIGNED), \
                 TIMESTAMPDIFF(MICROSECOND, MIN(created_at), {NOW}) FROM {m} WHERE published_at IS NULL"
            ),
            count_dead: format!("SELECT COUNT(*) FROM {d}"),
            inbox: format!(
                // IGNORE only has the duplicate key to ignore: both values are validated before binding.
                "INSERT IGNORE INTO {i} (consumer, message_id, processed_at) VALUES (?, ?, {NOW})"
            ),
            messages: m,
            dead: d,
        }
    }

    fn placeholders(n: usize) -> String {
        let mut s = String::with_capacity(n * 2);
        for i in 0..n {
            s.push_str(if i == 0 { "?" } else { ",?" });
        }
        s
    }

    fn lock_rows(&self, n: usize) -> String {
        format!(
            "SELECT seq, id, topic, msg_key, payload, headers, created_at, attempts, last_error FROM {} \
             WHERE seq IN ({}) AND published_at IS NULL AND (locked_until IS NULL OR locked_until <= {NOW}) \
             ORDER BY seq FOR UPDATE SKIP LOCKED",
            self.messages,
            Self::placeholders(n)
        )
    }

    fn set_lease(&self, n: usize) -> String {
        format!(
            "UPDATE {} SET locked_by = ?, locked_until = DATE_ADD({NOW}, INTERVAL ? MICROSECOND), attempts = attempts + 1 \
             WHERE seq IN ({})",
            self.messages,
            Self::placeholders(n)
        )
    }

    fn by_ids(&self, prefix: &str, n: usize) -> String {
        format!("{prefix} id IN ({})", Self::placeholders(n))
    }
}

/// The MySQL / MariaDB outbox store. Cheap to clone.
#[derive(Clone)]
pub struct MySqlStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: MySqlPool,
    options: StoreOptions,
    sql: Sql,
    wake: Notify,
}

impl fmt::Debug for MySqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The pool's connect options hold the password: never print them.
        f.debug_struct("MySqlStore").field("options", &self.inner.options).finish_non_exhaustive()
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn utc(naive: NaiveDateTime) -> DateTime<Utc> {
    naive.and_utc()
}

// Columns with a binary collation (`utf8mb4_bin`, chosen so keys and topics compare byte for byte) are
// reported as BINARY by MariaDB, which sqlx's type check refuses for `String`; the bytes are UTF-8.
fn text(row: &MySqlRow, index: usize) -> std::result::Result<String, sqlx::Error> {
    row.try_get_unchecked(index)
}

fn opt_text(row: &MySqlRow, index: usize) -> std::result::Result<Option<String>, sqlx::Error> {
    row.try_get_unchecked(index)
}

fn decode_message(row: &MySqlRow) -> Result<Message> {
    let get = |e: sqlx::Error| sql_error("decode", e);
    let id = text(row, 1).map_err(get)?;
    let headers = text(row, 5).map_err(get)?;
    let headers: Headers = serde_json::from_str(&headers)
        .map_err(|e| Error::store("decode", false, format!("headers of message {id} are not JSON: {e}")))?;
    Ok(Message {
        id: MessageId::from_str(&id)?,
        topic: text(row, 2).map_err(get)?,
        key: opt_text(row, 3).map_err(get)?,
        payload: row.try_get(4).map_err(get)?,
        headers,
        created_at: utc(row.try_get(6).map_err(get)?),
        attempts: u32::try_from(row.try_get::<i32, _>(7).map_err(get)?).unwrap_or(0),
        last_error: opt_text(row, 8).map_err(get)?,
    })
}

impl MySqlStore {
    /// Connects to `url` (`mysql://user:password@host/db`) with a pool of 8 connections and the default
    /// [`StoreOptions`]. The password never appears in errors or `Debug` output.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, StoreOptions::default()).await
    }

    /// Connects to `url` with `options`.
    pub async fn connect_with(url: &str, options: StoreOptions) -> Result<Self> {
        let connect = MySqlConnectOptions::from_str(url).map_err(|e| connect_error(url, e))?;
        let pool = MySqlPoolOptions::new()
            .max_connections(options.max_connections.unwrap_or(8))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(connect)
            .await
            .map_err(|e| connect_error(url, e))?;
        Self::new(pool, options)
    }

    /// A store over your own pool. Fails on options MySQL cannot honour (none today; the same shape
    /// as the other stores).
    pub fn new(pool: MySqlPool, options: StoreOptions) -> Result<Self> {
        let sql = Sql::new(&options);
        Ok(Self { inner: Arc::new(Inner { pool, options, sql, wake: Notify::new() }) })
    }

    /// The options in force (table names, limits, retention).
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// The pool, for your own transactions.
    pub fn pool(&self) -> &MySqlPool {
        &self.inner.pool
    }

    /// The schema this store needs (idempotent `CREATE TABLE IF NOT EXISTS`), for your own migration tool.
    pub fn schema_sql(&self) -> &str {
        &self.inner.sql.schema
    }

    /// Creates the tables if they do not exist.
    pub async fn migrate(&self) -> Result<()> {
        for statement in self.inner.sql.schema.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
            sqlx::query(statement).execute(&self.inner.pool).await.map_err(|e| sql_error("migrate", e))?;
        }
        Ok(())
    }

    /// Wakes one waiting relay worker of this process (enqueue does it for you). With no worker
    /// waiting, the next one to wait returns at once, so a wake-up is never lost.
    pub fn notify(&self) {
        self.inner.wake.notify_one();
    }

    async fn insert(&self, conn: &mut MySqlConnection, message: NewMessage) -> Result<MessageId> {
        let sql = &self.inner.sql;
        message.validate(&self.inner.options.limits)?;
        let parts = message.into_parts();
        if let Some(key) = &parts.idempotency_key {
            for query in [&sql.existing, &sql.existing_dead] {
                let found = sqlx::query(query)
                    .bind(key.clone())
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(|e| sql_error("enqueue", e))?;
                if let Some(row) = found {
                    return MessageId::from_str(&text(&row, 0).map_err(|e| sql_error("enqueue", e))?);
                }
            }
        }
        let headers = serde_json::to_string(&parts.headers).map_err(|e| Error::invalid_message(e.to_string()))?;
        let inserted = sqlx::query(&sql.insert)
            .bind(parts.id.to_string())
            .bind(parts.topic)
            .bind(parts.key)
            .bind(parts.payload)
            .bind(headers)
            .bind(parts.idempotency_key)
            .bind(micros(parts.delay.unwrap_or_default()))
            .execute(&mut *conn)
            .await;
        match inserted {
            Ok(_) => {
                self.notify();
                Ok(parts.id)
            }
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Err(Error::store(
                "enqueue",
                true,
                "a concurrent transaction enqueued the same idempotency key; retry the transaction",
            )),
            Err(e) => Err(sql_error("enqueue", e)),
        }
    }

    /// A validated batch without idempotency keys in multi-row inserts (see `Sql::insert_rows`), each
    /// at most [`crate::BATCH_STATEMENT_BYTES`] unless it is a single row.
    async fn insert_rows(&self, conn: &mut MySqlConnection, messages: Vec<NewMessage>) -> Result<Vec<MessageId>> {
        let ids: Vec<MessageId> = messages.iter().map(NewMessage::id).collect();
        let rows = messages
            .into_iter()
            .map(|message| {
                let parts = message.into_parts();
                let headers =
                    serde_json::to_string(&parts.headers).map_err(|e| Error::invalid_message(e.to_string()))?;
                Ok((crate::batch_bytes(&parts), parts, headers))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut rest = rows.as_slice();
        while !rest.is_empty() {
            let fits = |n: usize| {
                n <= rest.len()
                    && (n == 1
                        || rest[..n].iter().map(|(bytes, ..)| bytes).sum::<usize>() <= crate::BATCH_STATEMENT_BYTES)
            };
            let Some((n, sql)) = self.inner.sql.insert_rows.iter().find(|(n, _)| fits(*n)) else { break };
            let (chunk, tail) = rest.split_at(*n);
            let mut query = sqlx::query::<MySql>(sql);
            for (_, parts, headers) in chunk {
                query = query
                    .bind(parts.id.to_string())
                    .bind(&parts.topic)
                    .bind(&parts.key)
                    .bind(&parts.payload)
                    .bind(headers)
                    .bind(micros(parts.delay.unwrap_or_default()));
            }
            query.execute(&mut *conn).await.map_err(|e| sql_error("enqueue", e))?;
            rest = tail;
        }
        self.notify();
        Ok(ids)
    }

    async fn execute_by_ids(
        &self,
        operation: &'static str,
        prefix: &str,
        first: Option<String>,
        ids: &[MessageId],
    ) -> Result<u64> {
        let mut affected = 0;
        for chunk in ids.chunks(CHUNK) {
            let sql = self.inner.sql.by_ids(prefix, chunk.len());
            let mut query = sqlx::query::<MySql>(&sql);
            if let Some(first) = &first {
                query = query.bind(first.clone());
            }
            for id in chunk {
                query = query.bind(id.to_string());
            }
            affected += query.execute(&self.inner.pool).await.map_err(|e| sql_error(operation, e))?.rows_affected();
        }
        Ok(affected)
    }
}

impl MySqlStore {
    /// A connection whose next transaction runs at READ COMMITTED, for the relay's own statements:
    /// InnoDB then takes no gap or next-key locks for them, so they do not deadlock with the
    /// application's enqueueing inserts. The claim stays correct: it relies only on a predecessor's
    /// absence, which is final.
    async fn relay_conn(&self, operation: &'static str) -> Result<sqlx::pool::PoolConnection<MySql>> {
        let mut conn = self.inner.pool.acquire().await.map_err(|e| sql_error(operation, e))?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .execute(&mut *conn)
            .await
            .map_err(|e| sql_error(operation, e))?;
        Ok(conn)
    }
}

crate::impl_enqueue!(MySqlStore, MySqlConnection, insert_rows);

#[async_trait]
impl Store for MySqlStore {
    async fn claim(&self, owner: RelayId, limit: usize, lease: Duration) -> Result<Vec<Message>> {
        let err = |e| sql_error("claim", e);
        let sql = &self.inner.sql;
        let mut conn = self.relay_conn("claim").await?;
        let mut tx = conn.begin().await.map_err(err)?;
        let limit_i64 = i64::try_from(limit).unwrap_or(i64::MAX);
        let window = limit.saturating_add(limit / 4);
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(&sql.candidates)
            .bind(limit_i64)
            .bind(i64::try_from(window).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
        let in_window = rows.iter().filter(|(_, kind, _)| *kind == 1).count();
        let window_heads = rows.iter().filter(|(_, kind, head)| *kind == 1 && *head != 0).count();
        let mut candidates: Vec<i64> = rows.iter().filter(|(_, _, head)| *head != 0).map(|(seq, _, _)| *seq).collect();
        if in_window == window && window_heads < limit {
            let heads: Vec<i64> =
                sqlx::query_scalar(&sql.key_heads).bind(limit_i64).fetch_all(&mut *tx).await.map_err(err)?;
            candidates.extend(heads);
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates.truncate(limit);
        if candidates.is_empty() {
            tx.commit().await.map_err(err)?;
            return Ok(Vec::new());
        }
        let lock_sql = sql.lock_rows(candidates.len());
        let mut lock = sqlx::query::<MySql>(&lock_sql);
        for seq in &candidates {
            lock = lock.bind(*seq);
        }
        let rows = lock.fetch_all(&mut *tx).await.map_err(err)?;
        let mut seqs = Vec::with_capacity(rows.len());
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            seqs.push(row.try_get::<i64, _>(0).map_err(err)?);
            let mut message = decode_message(row)?;
            message.attempts += 1;
            claimed.push(message);
        }
        if !seqs.is_empty() {
            let lease_sql = sql.set_lease(seqs.len());
            let mut update = sqlx::query::<MySql>(&lease_sql).bind(owner.to_string()).bind(micros(lease));
            for seq in &seqs {
                update = update.bind(*seq);
            }
            update.execute(&mut *tx).await.map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        Ok(claimed)
    }

    async fn extend_lease(&self, owner: RelayId, ids: &[MessageId], lease: Duration) -> Result<()> {
        let prefix = format!(
            "UPDATE {} SET locked_until = DATE_ADD({NOW}, INTERVAL {} MICROSECOND) \
             WHERE published_at IS NULL AND locked_by = ? AND",
            self.inner.sql.messages,
            micros(lease)
        );
        self.execute_by_ids("extend_lease", &prefix, Some(owner.to_string()), ids).await.map(|_| ())
    }

    async fn release(&self, owner: RelayId, ids: &[MessageId]) -> Result<()> {
        let prefix = format!(
            "UPDATE {} SET locked_by = NULL, locked_until = NULL, attempts = GREATEST(attempts - 1, 0) \
             WHERE published_at IS NULL AND locked_by = ? AND",
            self.inner.sql.messages
        );
        self.execute_by_ids("release", &prefix, Some(owner.to_string()), ids).await?;
        self.notify();
        Ok(())
    }

    async fn acknowledge(&self, ids: &[MessageId]) -> Result<()> {
        let m = &self.inner.sql.messages;
        let prefix = match self.inner.options.retention {
            None => format!("DELETE FROM {m} WHERE"),
            Some(_) => format!(
                "UPDATE {m} SET published_at = {NOW}, locked_by = NULL, locked_until = NULL WHERE published_at IS NULL AND"
            ),
        };
        self.execute_by_ids("acknowledge", &prefix, None, ids).await.map(|_| ())
    }

    async fn reschedule(&self, owner: RelayId, retries: &[Retry]) -> Result<()> {
        let err = |e| sql_error("reschedule", e);
        let owner = owner.to_string();
        let mut conn = self.relay_conn("reschedule").await?;
        let mut tx = conn.begin().await.map_err(err)?;
        for retry in retries {
            sqlx::query(&self.inner.sql.reschedule)
                .bind(micros(retry.delay))
                .bind(retry.error.clone())
                .bind(retry.id.to_string())
                .bind(owner.clone())
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    async fn dead_letter(&self, owner: RelayId, failures: &[Failure]) -> Result<()> {
        let err = |e| sql_error("dead_letter", e);
        let owner = owner.to_string();
        let mut conn = self.relay_conn("dead_letter").await?;
        let mut tx = conn.begin().await.map_err(err)?;
        for failure in failures {
            let id = failure.id.to_string();
            let moved = sqlx::query(&self.inner.sql.to_dead)
                .bind(failure.error.clone())
                .bind(id.clone())
                .bind(owner.clone())
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            if moved.rows_affected() == 1 {
                sqlx::query(&self.inner.sql.delete_owned)
                    .bind(id)
                    .bind(owner.clone())
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
            }
        }
        tx.commit().await.map_err(err)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let err = |e| sql_error("dead_letters", e);
        let rows = sqlx::query(&self.inner.sql.list_dead)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(err)?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    message: decode_message(row)?,
                    error: text(row, 9).map_err(err)?,
                    dead_at: utc(row.try_get(10).map_err(err)?),
                })
            })
            .collect()
    }

    async fn replay_dead_letters(&self, ids: &[MessageId]) -> Result<u64> {
        let err = |e| sql_error("replay", e);
        let (m, d) = (&self.inner.sql.messages, &self.inner.sql.dead);
        let mut moved = 0;
        let mut conn = self.relay_conn("replay").await?;
        let mut tx = conn.begin().await.map_err(err)?;
        for chunk in ids.chunks(CHUNK) {
            let list = Sql::placeholders(chunk.len());
            let insert = format!(
                "INSERT INTO {m} (id, topic, msg_key, payload, headers, idempotency_key, created_at, available_at, attempts, last_error) \
                 SELECT id, topic, msg_key, payload, headers, idempotency_key, created_at, {NOW}, 0, error FROM {d} \
                 WHERE id IN ({list}) ORDER BY seq"
            );
            let delete = format!("DELETE FROM {d} WHERE id IN ({list})");
            let mut q = sqlx::query::<MySql>(&insert);
            for id in chunk {
                q = q.bind(id.to_string());
            }
            moved += q.execute(&mut *tx).await.map_err(err)?.rows_affected();
            let mut q = sqlx::query::<MySql>(&delete);
            for id in chunk {
                q = q.bind(id.to_string());
            }
            q.execute(&mut *tx).await.map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        self.notify();
        Ok(moved)
    }

    async fn purge_dead_letters(&self, ids: &[MessageId]) -> Result<u64> {
        let prefix = format!("DELETE FROM {} WHERE", self.inner.sql.dead);
        self.execute_by_ids("purge_dead_letters", &prefix, None, ids).await
    }

    async fn purge_published(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let done = sqlx::query(&self.inner.sql.purge_published)
            .bind(micros(older_than))
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
        Ok(OutboxStats::new(
            pending as u64,
            retrying as u64,
            oldest.map(|us| Duration::from_micros(us.max(0) as u64)),
            dead as u64,
        ))
    }

    async fn wait_for_work(&self, timeout: Duration) {
        if tokio::time::timeout(timeout, self.inner.wake.notified()).await.is_ok() {
            tokio::time::sleep(COMMIT_GRACE).await;
        }
    }
}

#[async_trait]
impl Inbox for MySqlStore {
    type Connection = MySqlConnection;

    async fn process_once(&self, conn: &mut MySqlConnection, consumer: &str, id: MessageId) -> Result<bool> {
        crate::check_consumer(consumer)?;
        let done = sqlx::query(&self.inner.sql.inbox)
            .bind(consumer.to_owned())
            .bind(id.to_string())
            .execute(conn)
            .await
            .map_err(|e| sql_error("process_once", e))?;
        Ok(done.rows_affected() == 1)
    }
}
