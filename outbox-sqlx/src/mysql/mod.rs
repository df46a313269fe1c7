//! MySQL 8.0.1+ / MariaDB 10.6+ store: claims with `FOR UPDATE SKIP LOCKED` in a short transaction,
//! polling plus in-process wake-ups.
//!
//! A claim is one short transaction: a consistent (non-locking) read picks candidates with the per-key
//! rule (the oldest keyless rows, and the key heads in a window of the oldest keyed rows; every key's
//! head via a loose index scan only when that window is clogged, as on PostgreSQL), a locking read
//! with `SKIP LOCKED` re-checks and locks them, an `UPDATE` sets the lease, and the transaction
//! commits before anything is published. (MariaDB rejects `IN (SELECT ... LIMIT n)`, and a
//! derived table makes every claim a full scan, so the claim is not a single statement.)

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use outbox_engine::{
    Admin, DeadLetter, Error, Failure, Headers, Inbox, KeySlice, LateCommitChase, Message, MessageId, NewMessage,
    OutboxStats, RelayId, RelayInfo, RelayRegistry, Result, Retry, Store,
};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlRow};
use sqlx::{Connection, MySql, MySqlConnection, MySqlPool, Row};
use tokio::sync::Notify;

use crate::admin::Dialect;
use crate::key_runs::RunCheck;
use crate::{connect_error, sql_error, StoreOptions};

const COMMIT_GRACE: Duration = Duration::from_millis(2);
const CHUNK: usize = 1000;
/// The database clock, in microseconds.
const NOW: &str = "UTC_TIMESTAMP(6)";

mod sql;

use sql::Sql;

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
    /// Wakes at enqueue come before the commit: keep waking until a claim sees it.
    chase: LateCommitChase,
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

/// A row of `select_pending`: its `seq` and the message with its next attempt.
fn decode_pending(row: &MySqlRow) -> Result<(i64, outbox_engine::PendingMessage)> {
    let get = |e| sql_error("search_messages", e);
    let pending = outbox_engine::PendingMessage::new(decode_message(row)?, utc(row.try_get(9).map_err(get)?));
    Ok((row.try_get(0).map_err(get)?, pending))
}

/// A row of `select_dead`: its `seq` and the dead letter.
fn decode_dead(row: &MySqlRow) -> Result<(i64, DeadLetter)> {
    let get = |e| sql_error("dead_letters", e);
    let dead = DeadLetter {
        message: decode_message(row)?,
        error: text(row, 9).map_err(get)?,
        dead_at: utc(row.try_get(10).map_err(get)?),
    };
    Ok((row.try_get(0).map_err(get)?, dead))
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
    /// The body of [`Store::claim`] and [`Store::claim_slice`].
    async fn claim_in(
        &self,
        owner: RelayId,
        limit: usize,
        lease: Duration,
        slice: Option<KeySlice>,
    ) -> Result<Vec<Message>> {
        let err = |e| sql_error("claim", e);
        let (slices, this_slice) = slice.map_or((0, 0), |s| (i64::from(s.count()), i64::from(s.index())));
        let sql = &self.inner.sql;
        let mut conn = self.relay_conn("claim").await?;
        let mut tx = conn.begin().await.map_err(err)?;
        let limit_i64 = i64::try_from(limit).unwrap_or(i64::MAX);
        let window = limit.saturating_add(limit / 4);
        // Keys come as bytes: the column's binary collation makes MySQL send it as VARBINARY.
        let rows: Vec<(i64, i64, Option<Vec<u8>>, i64)> = sqlx::query_as(&sql.candidates)
            .bind(limit_i64)
            .bind(slices)
            .bind(slices)
            .bind(this_slice)
            .bind(i64::try_from(window).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
        // Each key's run through the window: from the key's first row (its oldest) while its rows
        // are ready. Per key: the run's last row so far, or `None` once it stopped.
        let mut runs: HashMap<Vec<u8>, Option<i64>> = HashMap::new();
        let mut previous: HashMap<i64, Option<i64>> = HashMap::with_capacity(rows.len());
        let mut candidates = Vec::with_capacity(rows.len());
        let (mut in_window, mut in_runs) = (0, 0);
        for (seq, kind, key, ready) in rows {
            let Some(key) = key.filter(|_| kind == 1) else {
                previous.insert(seq, None);
                candidates.push(seq);
                continue;
            };
            in_window += 1;
            let (last, continues) = match runs.get(&key) {
                None => (None, ready != 0),
                Some(Some(last)) => (Some(*last), ready != 0),
                Some(None) => (None, false),
            };
            runs.insert(key, continues.then_some(seq));
            if continues {
                previous.insert(seq, last);
                in_runs += 1;
                candidates.push(seq);
            }
        }
        if in_window == window && in_runs < limit {
            let heads: Vec<i64> = sqlx::query_scalar(&sql.key_heads)
                .bind(slices)
                .bind(slices)
                .bind(this_slice)
                .bind(limit_i64)
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?;
            for head in heads {
                previous.entry(head).or_insert(None);
                candidates.push(head);
            }
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
        // A candidate another claim took meanwhile is skipped, and with it the rest of its key's run.
        let mut runs = RunCheck::default();
        let mut seqs = Vec::with_capacity(rows.len());
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq = row.try_get::<i64, _>(0).map_err(err)?;
            let mut message = decode_message(row)?;
            if !runs.follows(seq, message.key.as_deref(), previous.get(&seq).copied().flatten()) {
                continue;
            }
            seqs.push(seq);
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
        Ok(Self {
            inner: Arc::new(Inner { pool, options, sql, wake: Notify::new(), chase: LateCommitChase::default() }),
        })
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
                self.inner.chase.enqueued();
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
        self.inner.chase.enqueued();
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
        let claimed = self.claim_in(owner, limit, lease, None).await?;
        self.inner.chase.claimed(claimed.len());
        Ok(claimed)
    }

    async fn claim_slice(
        &self,
        owner: RelayId,
        limit: usize,
        lease: Duration,
        slice: KeySlice,
    ) -> Result<Vec<Message>> {
        let claimed = self.claim_in(owner, limit, lease, Some(slice)).await?;
        self.inner.chase.claimed(claimed.len());
        Ok(claimed)
    }

    fn claims_in_slices(&self) -> bool {
        true
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
        rows.iter().map(|row| decode_dead(row).map(|(_, dead)| dead)).collect()
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
        let scheduled: i64 =
            sqlx::query_scalar(&self.inner.sql.count_scheduled).fetch_one(&self.inner.pool).await.map_err(err)?;
        Ok(OutboxStats::new(
            pending as u64,
            retrying as u64,
            oldest.map(|us| Duration::from_micros(us.max(0) as u64)),
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

/// How MySQL writes a dead-letter search.
const DIALECT: Dialect<NaiveDateTime> = Dialect { find: "instr", instant: |at| at.naive_utc(), now: NOW };

crate::admin::impl_admin!(MySqlStore, MySql, DIALECT, |id: MessageId| id.to_string());

#[async_trait]
impl RelayRegistry for MySqlStore {
    async fn heartbeat(&self, relay: RelayId, name: &str, host: &str, pid: u32, published: u64) -> Result<()> {
        sqlx::query(&self.inner.sql.relay_heartbeat)
            .bind(relay.to_string())
            .bind(name)
            .bind(host)
            .bind(i64::from(pid))
            .bind(i64::try_from(published).unwrap_or(i64::MAX))
            .execute(&self.inner.pool)
            .await
            .map_err(|e| sql_error("heartbeat", e))?;
        Ok(())
    }

    async fn relays(&self, alive_within: Duration) -> Result<Vec<RelayInfo>> {
        let rows = sqlx::query(&self.inner.sql.relays)
            .bind(micros(alive_within))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| sql_error("relays", e))?;
        let get = |e| sql_error("relays", e);
        rows.iter()
            .map(|row| {
                let id = crate::parse_relay_id(&text(row, 0).map_err(get)?)?;
                let names = (text(row, 1).map_err(get)?, text(row, 2).map_err(get)?);
                let times = (utc(row.try_get(4).map_err(get)?), utc(row.try_get(5).map_err(get)?));
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
