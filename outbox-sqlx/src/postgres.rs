//! PostgreSQL store: one-statement claims with `FOR UPDATE SKIP LOCKED`, commit-time wake-ups with
//! `pg_notify` (sent by the enqueue statement itself, so it costs no extra round trip; see
//! `StoreOptions::enqueue_notifications` for many concurrent producers) and a `LISTEN` connection,
//! partial indexes so claims stay cheap however many published or dead rows the table holds.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_core::{
    DeadLetter, Error, Failure, Headers, Inbox, Message, MessageId, NewMessage, OutboxStats, RelayId, Result, Retry,
    Store,
};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgListener, PgPoolOptions, PgQueryResult, PgRow};
use sqlx::query::Query;
use sqlx::types::Json;
use sqlx::{Arguments, Execute, PgConnection, PgPool, Postgres, Row};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::{connect_error, sql_error, StoreOptions};

struct Sql {
    messages: String,
    channel: String,
    schema: String,
    insert: String,
    insert_keyless: String,
    insert_rows: String,
    existing: String,
    existing_dead: String,
    claim: String,
    explain_claim: String,
    extend: String,
    release: String,
    ack_delete: String,
    ack_retain: String,
    reschedule: String,
    dead_letter: String,
    list_dead: String,
    replay: String,
    delete_dead: String,
    purge_published: String,
    stats: String,
    count_dead: String,
    inbox: String,
}

const MS: &str = "interval '1 millisecond'";

impl Sql {
    fn new(options: &StoreOptions) -> Self {
        let t = &options.tables;
        let (m, d, i) =
            (t.qualified(&t.messages(), '"'), t.qualified(&t.dead_letters(), '"'), t.qualified(&t.inbox(), '"'));
        let p = t.prefix().as_str();
        // Claims and acknowledgements commit without waiting for the WAL flush unless asked to (see
        // `StoreOptions::durable_relay_commits`). `set_config(.., true)` lasts until the end of the
        // statement's own transaction, so the connection keeps its setting.
        let relay_commit = if options.durable_relay_commits {
            "true"
        } else {
            "(SELECT set_config('synchronous_commit', 'off', true)) = 'off'"
        };
        let channel = match t.schema() {
            Some(schema) => format!("{schema}_{p}_outbox"),
            None => format!("{p}_outbox"),
        };
        let create_schema =
            t.schema().map(|s| format!("CREATE SCHEMA IF NOT EXISTS {};\n", s.quoted('"'))).unwrap_or_default();
        let cols = "id, topic, msg_key, payload, headers, created_at, attempts, last_error";
        // The enqueue statements wake relays at commit unless asked not to (see
        // `StoreOptions::enqueue_notifications`); without it they still take the channel as $7.
        let notify = if options.enqueue_notifications { ", pg_notify($7, '')" } else { "" };
        // A claim must never scan the whole backlog. Keyless rows come oldest first from their own
        // partial index. Keyed rows come from a window of the oldest claimable keyed rows (limit + 25%,
        // locked with SKIP LOCKED so concurrent claimers take disjoint windows): those that are key
        // heads (no older unfinished row of the same key) are taken. Only when the window is full yet
        // holds fewer than `limit` heads (it is clogged with rows queued behind in-flight or retrying
        // heads) is the head of every key looked up, with a loose index scan over (msg_key, seq):
        // O(keys) instead of O(backlog). The window's other rows are unlocked when the statement ends.
        // Keyless and keyed rows are disjoint, so only the two keyed branches (a head can be in both)
        // need de-duplicating: `UNION ALL` spares hashing the keyless rows (a 1,000-row claim: 3.0 ms
        // instead of 3.35 ms).
        let ready = |alias: &str| {
            format!(
                "{alias}.published_at IS NULL AND {alias}.available_at <= now() \
                 AND ({alias}.locked_until IS NULL OR {alias}.locked_until <= now())"
            )
        };
        let claimable = format!(
            "WITH RECURSIVE \
             keyless AS (SELECT k.seq, k.ctid FROM {m} k WHERE k.msg_key IS NULL AND k.seq > $4 AND {ready_k} ORDER BY k.seq LIMIT $3 FOR UPDATE SKIP LOCKED), \
             win AS MATERIALIZED (SELECT w.seq, w.ctid, w.msg_key FROM {m} w WHERE w.msg_key IS NOT NULL AND {ready_w} \
               ORDER BY w.seq LIMIT $3 + $3 / 4 FOR UPDATE SKIP LOCKED), \
             win_heads AS MATERIALIZED (SELECT w.seq, w.ctid FROM win w WHERE w.msg_key IS NULL OR NOT EXISTS \
               (SELECT 1 FROM {m} e WHERE e.msg_key = w.msg_key AND e.seq < w.seq AND e.published_at IS NULL)), \
             clogged AS MATERIALIZED (SELECT (SELECT count(*) FROM win) = $3 + $3 / 4 AND (SELECT count(*) FROM win_heads) < $3 AS yes), \
             keys(k) AS (SELECT min(msg_key) FROM {m} WHERE msg_key IS NOT NULL AND published_at IS NULL AND (SELECT yes FROM clogged) \
               UNION ALL SELECT (SELECT min(n.msg_key) FROM {m} n WHERE n.msg_key > keys.k AND n.published_at IS NULL) \
               FROM keys WHERE keys.k IS NOT NULL), \
             heads AS (SELECT (SELECT h.ctid FROM {m} h WHERE h.msg_key = keys.k AND h.published_at IS NULL ORDER BY h.seq LIMIT 1) AS ctid \
               FROM keys WHERE keys.k IS NOT NULL), \
             more_heads AS (SELECT o.seq, o.ctid FROM {m} o WHERE o.ctid = ANY (ARRAY(SELECT ctid FROM heads)) \
               AND o.msg_key IS NOT NULL AND {ready_o} ORDER BY o.seq LIMIT $3 FOR UPDATE OF o SKIP LOCKED) \
             SELECT seq, ctid FROM keyless UNION ALL (SELECT seq, ctid FROM win_heads UNION SELECT seq, ctid FROM more_heads) ORDER BY seq LIMIT $3",
            ready_k = ready("k"),
            ready_w = ready("w"),
            ready_o = ready("o"),
        );
        // The update reaches the picked rows by the tuple ids that locked them (a TID scan), not by a
        // second walk of the primary key: a row this statement holds locked keeps its tuple id until
        // the statement ends. A row whose lockable version committed after the statement's snapshot
        // is invisible to the TID scan, so it is unlocked untouched and left to the next claim.
        let claim = format!(
            "WITH picked AS ({claimable}) UPDATE {m} SET locked_by = $1, locked_until = now() + $2 * {MS}, attempts = attempts + 1 \
             WHERE ctid = ANY (ARRAY(SELECT ctid FROM picked)) AND {relay_commit} RETURNING seq, {cols}"
        );
        // `fillfactor = 50`: a claim rewrites every row it leases, and with half of each page free the
        // new versions fit beside the old ones as HOT updates that touch no index (a claim of 1,000
        // rows: 7 ms instead of 19 ms). Rows are deleted on acknowledgement, so the space is reused.
        Self {
            schema: format!(
                r#"{create_schema}CREATE TABLE IF NOT EXISTS {m} (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    msg_key TEXT,
    payload BYTEA NOT NULL,
    headers JSONB NOT NULL DEFAULT '{{}}',
    idempotency_key TEXT UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    available_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    locked_by UUID,
    locked_until TIMESTAMPTZ,
    published_at TIMESTAMPTZ
);
ALTER TABLE {m} SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
CREATE INDEX IF NOT EXISTS "{p}_messages_pending_keyless" ON {m} (seq) WHERE published_at IS NULL AND msg_key IS NULL;
CREATE INDEX IF NOT EXISTS "{p}_messages_pending_keyed" ON {m} (seq) WHERE published_at IS NULL AND msg_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS "{p}_messages_key" ON {m} (msg_key, seq) WHERE published_at IS NULL AND msg_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS "{p}_messages_published" ON {m} (published_at) WHERE published_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {d} (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    msg_key TEXT,
    payload BYTEA NOT NULL,
    headers JSONB NOT NULL DEFAULT '{{}}',
    idempotency_key TEXT UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    dead_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {i} (
    consumer TEXT NOT NULL,
    message_id UUID NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
"#
            ),
            insert: format!(
                "WITH ins AS (INSERT INTO {m} (id, topic, msg_key, payload, headers, available_at, idempotency_key) \
                 VALUES ($1, $2, $3, $4, $5, now() + $6 * {MS}, $8) \
                 ON CONFLICT (idempotency_key) DO NOTHING RETURNING id) \
                 SELECT id{notify} FROM ins"
            ),
            // A message without an idempotency key cannot conflict, and the speculative insertion of
            // `ON CONFLICT` costs ~8% of a one-row business transaction: a plain insert. Its
            // parameters are the first seven of `insert`'s, so both share one bind chain.
            insert_keyless: format!("WITH ins AS ({} RETURNING 1) SELECT 1{notify} FROM ins", message_insert(&m, 1)),
            // A batch without idempotency keys: one statement, rows in the given order (so `seq`, and
            // with it per-key order, follows the batch), one notification.
            insert_rows: format!(
                "WITH ins AS (INSERT INTO {m} (id, topic, msg_key, payload, headers, available_at) \
                 SELECT b.id, b.topic, b.msg_key, b.payload, b.headers, now() + b.delay_ms * {MS} \
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::jsonb[], $6::bigint[]) \
                 WITH ORDINALITY AS b(id, topic, msg_key, payload, headers, delay_ms, n) ORDER BY b.n RETURNING 1) \
                 SELECT count(*){notify} FROM ins"
            ),
            existing: format!("SELECT id FROM {m} WHERE idempotency_key = $1"),
            existing_dead: format!("SELECT id FROM {d} WHERE idempotency_key = $1"),
            explain_claim: format!("EXPLAIN {}", claimable.replace("$3", "$1::bigint").replace("$4", "0")),
            claim,
            extend: format!(
                "UPDATE {m} SET locked_until = now() + $3 * {MS} \
                 WHERE locked_by = $1 AND published_at IS NULL AND id = ANY($2)"
            ),
            release: format!(
                "UPDATE {m} SET locked_by = NULL, locked_until = NULL, attempts = GREATEST(attempts - 1, 0) \
                 WHERE locked_by = $1 AND published_at IS NULL AND id = ANY($2)"
            ),
            ack_delete: format!("DELETE FROM {m} WHERE id = ANY($1) AND {relay_commit}"),
            ack_retain: format!(
                "UPDATE {m} SET published_at = now(), locked_by = NULL, locked_until = NULL \
                 WHERE published_at IS NULL AND id = ANY($1) AND {relay_commit}"
            ),
            reschedule: format!(
                "UPDATE {m} AS m SET locked_by = NULL, locked_until = NULL, \
                 available_at = now() + r.delay_ms * {MS}, last_error = r.error \
                 FROM unnest($2::uuid[], $3::bigint[], $4::text[]) AS r(id, delay_ms, error) \
                 WHERE m.id = r.id AND m.locked_by = $1 AND m.published_at IS NULL"
            ),
            dead_letter: format!(
                "WITH failed AS (SELECT * FROM unnest($2::uuid[], $3::text[]) AS f(id, error)), \
                 moved AS (DELETE FROM {m} AS m USING failed f \
                   WHERE m.id = f.id AND m.locked_by = $1 AND m.published_at IS NULL \
                   RETURNING m.seq, m.id, m.topic, m.msg_key, m.payload, m.headers, m.idempotency_key, m.created_at, m.attempts, f.error) \
                 INSERT INTO {d} (id, topic, msg_key, payload, headers, idempotency_key, created_at, attempts, error) \
                 SELECT id, topic, msg_key, payload, headers, idempotency_key, created_at, attempts, error FROM moved ORDER BY seq"
            ),
            list_dead: format!(
                "SELECT seq, {cols_dead}, error, dead_at FROM {d} ORDER BY seq LIMIT $1",
                cols_dead = "id, topic, msg_key, payload, headers, created_at, attempts, error"
            ),
            replay: format!(
                "WITH moved AS (DELETE FROM {d} WHERE id = ANY($1) \
                   RETURNING seq, id, topic, msg_key, payload, headers, idempotency_key, created_at, error) \
                 INSERT INTO {m} (id, topic, msg_key, payload, headers, idempotency_key, created_at, available_at, attempts, last_error) \
                 SELECT id, topic, msg_key, payload, headers, idempotency_key, created_at, now(), 0, error FROM moved ORDER BY seq"
            ),
            delete_dead: format!("DELETE FROM {d} WHERE id = ANY($1)"),
            purge_published: format!(
                "DELETE FROM {m} WHERE seq IN (SELECT seq FROM {m} WHERE published_at IS NOT NULL \
                 AND published_at <= now() - $1 * {MS} ORDER BY published_at LIMIT $2)"
            ),
            stats: format!(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE last_error IS NOT NULL), \
                 EXTRACT(EPOCH FROM (now() - MIN(created_at)))::float8 FROM {m} WHERE published_at IS NULL"
            ),
            count_dead: format!("SELECT COUNT(*) FROM {d}"),
            inbox: format!("INSERT INTO {i} (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"),
            channel,
            messages: m,
        }
    }
}

/// The PostgreSQL outbox store. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    options: StoreOptions,
    sql: Sql,
    wake: Arc<Notify>,
    listener: Mutex<Option<JoinHandle<()>>>,
    floor: ClaimFloor,
}

/// Where this store's next claim starts its walk of the pending keyless rows. Rows this process
/// has leased stay in the pending indexes until they are acknowledged, and a claim that starts at
/// the oldest row steps over every one of them: a relay with two workers, each claiming its next
/// batch while it publishes the current one, has 2,000-3,000 leased rows ahead of each claim, which
/// made a 1,000-row claim ~35% slower. So after a full claim the next one starts above the newest
/// keyless row it got. Rows it passes over (committed late with a lower `seq`, a retry whose delay
/// ended, a lease that lapsed elsewhere) are taken by the next claim from the start: one is made at
/// least every [`FULL_WALK_EVERY`], whenever a claim comes back short of its limit, and after a
/// release or replay ([`ClaimFloor::reset`]). Only keyless rows use
/// it: a keyed row the floor passed over while it waited behind its key's head would become the
/// head below the floor, so keyed rows are always looked for from the oldest.
struct ClaimFloor {
    /// The `seq` the next claim starts above (0: from the oldest row).
    seq: AtomicI64,
    /// When the last claim from the oldest row started, in milliseconds since `epoch`.
    last_full_ms: AtomicU64,
    epoch: std::time::Instant,
    /// How often a claim walks from the oldest row regardless ([`FULL_WALK_EVERY`]).
    interval: Duration,
}

/// The longest a row passed over by the claim floor waits for a claim that walks from the start.
const FULL_WALK_EVERY: Duration = Duration::from_millis(100);

impl ClaimFloor {
    fn new() -> Self {
        Self::with_interval(FULL_WALK_EVERY)
    }

    fn with_interval(interval: Duration) -> Self {
        Self { seq: AtomicI64::new(0), last_full_ms: AtomicU64::new(0), epoch: std::time::Instant::now(), interval }
    }

    /// The floor for the next claim: 0 when a walk from the start is due.
    fn next(&self) -> i64 {
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_full_ms.load(Ordering::Relaxed);
        let seq = self.seq.load(Ordering::Relaxed);
        let due = seq == 0 || u128::from(now_ms.saturating_sub(last)) >= self.interval.as_millis();
        if due && self.last_full_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return 0;
        }
        seq
    }

    /// After a claim of `limit` that returned `claimed` rows, the newest keyless one `newest`.
    fn update(&self, limit: usize, claimed: usize, newest: Option<i64>) {
        match newest {
            Some(newest) if claimed >= limit => {
                self.seq.fetch_max(newest, Ordering::Relaxed);
            }
            _ => self.reset(),
        }
    }

    /// Sends the next claim back to the oldest row.
    fn reset(&self) {
        self.seq.store(0, Ordering::Relaxed);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.listener.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The pool's connect options hold the password: never print them.
        f.debug_struct("PostgresStore")
            .field("options", &self.inner.options)
            .field("channel", &self.inner.sql.channel)
            .finish_non_exhaustive()
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn uuids(ids: &[MessageId]) -> Vec<Uuid> {
    ids.iter().map(MessageId::as_uuid).collect()
}

fn decode_message(row: &PgRow) -> Result<Message> {
    let get = |e: sqlx::Error| sql_error("decode", e);
    let headers: Json<Headers> = row.try_get(5).map_err(get)?;
    Ok(Message {
        id: MessageId::from_uuid(row.try_get(1).map_err(get)?),
        topic: row.try_get(2).map_err(get)?,
        key: row.try_get(3).map_err(get)?,
        payload: row.try_get(4).map_err(get)?,
        headers: headers.0,
        created_at: row.try_get::<DateTime<Utc>, _>(6).map_err(get)?,
        attempts: u32::try_from(row.try_get::<i32, _>(7).map_err(get)?).unwrap_or(0),
        last_error: row.try_get(8).map_err(get)?,
    })
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host/db`) with a pool of 8 connections and the
    /// default [`StoreOptions`]. The password never appears in errors or `Debug` output.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, StoreOptions::default()).await
    }

    /// Connects to `url` with `options`.
    pub async fn connect_with(url: &str, options: StoreOptions) -> Result<Self> {
        let connect = PgConnectOptions::from_str(url).map_err(|e| connect_error(url, e))?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.unwrap_or(8))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(connect)
            .await
            .map_err(|e| connect_error(url, e))?;
        Self::new(pool, options)
    }

    /// A store over your own pool. Fails on options PostgreSQL cannot honour (none today; the same
    /// shape as the other stores).
    pub fn new(pool: PgPool, options: StoreOptions) -> Result<Self> {
        let sql = Sql::new(&options);
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                options,
                sql,
                wake: Arc::new(Notify::new()),
                listener: Mutex::new(None),
                floor: ClaimFloor::new(),
            }),
        })
    }

    /// The options in force (table names, limits, retention).
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// The pool, for your own transactions.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema this store needs (idempotent `CREATE ... IF NOT EXISTS`), for your own migration tool.
    pub fn schema_sql(&self) -> &str {
        &self.inner.sql.schema
    }

    /// The messages table, schema-qualified and quoted, for your own queries and monitoring.
    pub fn messages_table(&self) -> &str {
        &self.inner.sql.messages
    }

    /// The `LISTEN` channel the enqueue statement notifies on commit.
    pub fn channel(&self) -> &str {
        &self.inner.sql.channel
    }

    /// Creates the schema, tables and indexes if they do not exist. Safe to run from several processes
    /// at once (it takes an advisory lock).
    pub async fn migrate(&self) -> Result<()> {
        let mut tx = self.inner.pool.begin().await.map_err(|e| sql_error("migrate", e))?;
        sqlx::query("SELECT pg_advisory_xact_lock(7207283470213)")
            .execute(&mut *tx)
            .await
            .map_err(|e| sql_error("migrate", e))?;
        for statement in self.inner.sql.schema.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
            sqlx::query(statement).execute(&mut *tx).await.map_err(|e| sql_error("migrate", e))?;
        }
        tx.commit().await.map_err(|e| sql_error("migrate", e))
    }

    /// The query plan of the claim statement (`EXPLAIN`), to check that it uses the partial index.
    pub async fn explain_claim(&self, limit: usize) -> Result<String> {
        let rows: Vec<String> = sqlx::query_scalar(&self.inner.sql.explain_claim)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| sql_error("explain", e))?;
        Ok(rows.join("\n"))
    }

    /// After a release or a replay (which may make many rows claimable at once, below the claim
    /// floor), wakes every idle worker and lets the next claim start from the oldest row.
    fn wake_local(&self) {
        self.inner.floor.reset();
        self.inner.wake.notify_waiters();
        self.inner.wake.notify_one();
    }

    fn ensure_listener(&self) {
        let mut slot = self.inner.listener.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let (pool, channel, wake) = (self.inner.pool.clone(), self.inner.sql.channel.clone(), self.inner.wake.clone());
        *slot = Some(tokio::spawn(async move {
            loop {
                match listen(&pool, &channel, &wake).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, channel, "outbox LISTEN connection failed; polling until it is back");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }));
    }

    /// Runs your `statement` (an `INSERT`, `UPDATE`, `DELETE` or `SELECT`, with or without a `WITH`
    /// clause of its own) in your transaction with `message` enqueued by the same statement: the
    /// business write and the outbox row take one round trip instead of two. The message goes in as a
    /// data-modifying `WITH` query placed in front of your statement (its parameters are numbered
    /// after yours), so both are written or neither is, and the wake-up is sent as with
    /// [`Enqueue::enqueue`](outbox_core::Enqueue::enqueue). A message with an idempotency key may be
    /// stored already, so it is enqueued by its own statement first. Returns your statement's result
    /// and the message's id.
    ///
    /// ```no_run
    /// # async fn demo(store: outbox_sqlx::postgres::PostgresStore) -> outbox_core::Result<()> {
    /// use outbox_core::NewMessage;
    /// let mut tx = store.pool().begin().await.map_err(outbox_sqlx::error_from("begin"))?;
    /// let insert = sqlx::query("INSERT INTO orders (id, total) VALUES ($1, $2)").bind(42_i64).bind(1999_i64);
    /// store.execute_with(&mut tx, insert, NewMessage::new("orders.placed", r#"{"id":42}"#)).await?;
    /// tx.commit().await.map_err(outbox_sqlx::error_from("commit"))?;
    /// # Ok(()) }
    /// ```
    pub async fn execute_with<'q>(
        &self,
        conn: &mut PgConnection,
        mut statement: Query<'q, Postgres, PgArguments>,
        message: NewMessage,
    ) -> Result<(PgQueryResult, MessageId)> {
        message.validate(&self.inner.options.limits)?;
        if message.idempotency().is_some() {
            let id = self.insert(conn, message).await?;
            let done = statement.execute(&mut *conn).await.map_err(|e| sql_error("execute_with", e))?;
            return Ok((done, id));
        }
        let business = statement.sql();
        let bind_error = |e| Error::store("execute_with", false, e);
        let mut arguments = statement.take_arguments().map_err(bind_error)?.unwrap_or_default();
        // The message's parameters follow the statement's; a placeholder the statement does not bind
        // would silently take one of them instead of failing.
        let highest = highest_placeholder(business);
        if highest > arguments.len() {
            return Err(Error::invalid_statement(format!(
                "the statement refers to ${highest} but binds {} values",
                arguments.len()
            )));
        }
        let first = arguments.len() + 1;
        let parts = message.into_parts();
        arguments.add(parts.id.as_uuid()).map_err(bind_error)?;
        arguments.add(parts.topic).map_err(bind_error)?;
        arguments.add(parts.key).map_err(bind_error)?;
        arguments.add(parts.payload).map_err(bind_error)?;
        arguments.add(Json(parts.headers)).map_err(bind_error)?;
        arguments.add(ms(parts.delay.unwrap_or_default())).map_err(bind_error)?;
        let returning = if self.inner.options.enqueue_notifications {
            arguments.add(self.inner.sql.channel.as_str()).map_err(bind_error)?;
            format!("pg_notify(${}, '')", first + 6)
        } else {
            "1".to_owned()
        };
        let enqueue =
            format!("__outbox_enqueue AS ({} RETURNING {returning})", message_insert(&self.inner.sql.messages, first));
        let sql = with_query_in_front(&enqueue, business);
        let done =
            sqlx::query_with(&sql, arguments).execute(&mut *conn).await.map_err(|e| sql_error("execute_with", e))?;
        Ok((done, parts.id))
    }

    async fn insert(&self, conn: &mut PgConnection, message: NewMessage) -> Result<MessageId> {
        let sql = &self.inner.sql;
        message.validate(&self.inner.options.limits)?;
        let parts = message.into_parts();
        if let Some(key) = &parts.idempotency_key {
            let dead: Option<Uuid> = sqlx::query_scalar(&sql.existing_dead)
                .bind(key)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| sql_error("enqueue", e))?;
            if let Some(id) = dead {
                return Ok(MessageId::from_uuid(id));
            }
        }
        let idempotency_key = parts.idempotency_key;
        let statement = if idempotency_key.is_some() { &sql.insert } else { &sql.insert_keyless };
        let mut query = sqlx::query(statement)
            .bind(parts.id.as_uuid())
            .bind(parts.topic)
            .bind(parts.key)
            .bind(parts.payload)
            .bind(Json(parts.headers))
            .bind(ms(parts.delay.unwrap_or_default()))
            .bind(&sql.channel);
        if let Some(key) = &idempotency_key {
            query = query.bind(key);
        }
        let inserted = query.fetch_optional(&mut *conn).await.map_err(|e| sql_error("enqueue", e))?;
        // Without an idempotency key the row is always inserted; with one, no row back means an
        // earlier message holds the key.
        let Some(idempotency_key) = idempotency_key.filter(|_| inserted.is_none()) else {
            return Ok(parts.id);
        };
        let id: Uuid = sqlx::query_scalar(&sql.existing)
            .bind(&idempotency_key)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| sql_error("enqueue", e))?;
        Ok(MessageId::from_uuid(id))
    }

    /// A validated batch without idempotency keys in one statement (more if it is larger than
    /// [`crate::BATCH_STATEMENT_BYTES`]).
    async fn insert_rows(&self, conn: &mut PgConnection, messages: Vec<NewMessage>) -> Result<Vec<MessageId>> {
        let ids: Vec<MessageId> = messages.iter().map(NewMessage::id).collect();
        let mut parts = messages
            .into_iter()
            .map(|m| {
                let parts = m.into_parts();
                (crate::batch_bytes(&parts), parts)
            })
            .peekable();
        while parts.peek().is_some() {
            let (mut chunk_ids, mut topics, mut keys, mut payloads, mut headers, mut delays) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let mut bytes = 0;
            while let Some((size, next)) =
                parts.next_if(|(size, _)| chunk_ids.is_empty() || bytes + size <= crate::BATCH_STATEMENT_BYTES)
            {
                bytes += size;
                chunk_ids.push(next.id.as_uuid());
                topics.push(next.topic);
                keys.push(next.key);
                payloads.push(next.payload);
                headers.push(Json(next.headers));
                delays.push(ms(next.delay.unwrap_or_default()));
            }
            let n = chunk_ids.len();
            let inserted: i64 = sqlx::query_scalar(&self.inner.sql.insert_rows)
                .bind(chunk_ids)
                .bind(topics)
                .bind(keys)
                .bind(payloads)
                .bind(headers)
                .bind(delays)
                .bind(&self.inner.sql.channel)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| sql_error("enqueue", e))?;
            if inserted != n as i64 {
                return Err(Error::store(
                    "enqueue",
                    false,
                    format!("a batch of {n} messages inserted {inserted} rows"),
                ));
            }
        }
        Ok(ids)
    }
}

/// The insert of one message without an idempotency key into `messages`, its six parameters (id,
/// topic, key, payload, headers, delay in ms) numbered from `$first`.
fn message_insert(messages: &str, first: usize) -> String {
    let [id, topic, key, payload, headers, delay] = [0, 1, 2, 3, 4, 5].map(|i| first + i);
    format!(
        "INSERT INTO {messages} (id, topic, msg_key, payload, headers, available_at) \
         VALUES (${id}, ${topic}, ${key}, ${payload}, ${headers}, now() + ${delay} * {MS})"
    )
}

/// The highest `$n` placeholder in `sql` (0 if none). Text that only looks like one (`'$5'` in a
/// string literal) counts too, which errs on the side of refusing the statement.
fn highest_placeholder(sql: &str) -> usize {
    sql.split('$')
        .skip(1)
        .filter_map(|rest| {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            rest[..digits].parse::<usize>().ok()
        })
        .max()
        .unwrap_or(0)
}

/// `statement` with the `WITH` query `query` (`name AS (...)`) in front: in the statement's own
/// `WITH` clause when it starts with one (`WITH` or `WITH RECURSIVE`), else in a new one.
fn with_query_in_front(query: &str, statement: &str) -> String {
    let body = statement.trim_start();
    let keyword = |text: &str, word: &str| {
        text.get(..word.len()).is_some_and(|head| head.eq_ignore_ascii_case(word))
            && text[word.len()..].starts_with(|c: char| c.is_whitespace())
    };
    if !keyword(body, "WITH") {
        return format!("WITH {query} {body}");
    }
    let after_with = body[4..].trim_start();
    let clause_len =
        if keyword(after_with, "RECURSIVE") { body.len() - after_with.len() + "RECURSIVE".len() } else { "WITH".len() };
    format!("{} {query}, {}", &body[..clause_len], body[clause_len..].trim_start())
}

async fn listen(pool: &PgPool, channel: &str, wake: &Notify) -> std::result::Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    // Wake everyone once: anything committed while no listener was connected is claimed now.
    wake.notify_waiters();
    loop {
        listener.recv().await?;
        // One commit wakes one worker (or leaves a permit for the next to wait); a worker whose claim
        // comes back full wakes the others. Waking every idle worker would send them all to claim
        // what one claim takes.
        wake.notify_one();
    }
}

crate::impl_enqueue!(PostgresStore, PgConnection, insert_rows);

#[async_trait]
impl Store for PostgresStore {
    async fn claim(&self, owner: RelayId, limit: usize, lease: Duration) -> Result<Vec<Message>> {
        let rows = sqlx::query(&self.inner.sql.claim)
            .bind(owner.as_uuid())
            .bind(ms(lease))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(self.inner.floor.next())
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| sql_error("claim", e))?;
        let mut claimed: Vec<(i64, Message)> = Vec::with_capacity(rows.len());
        for row in &rows {
            claimed.push((row.try_get(0).map_err(|e| sql_error("claim", e))?, decode_message(row)?));
        }
        claimed.sort_unstable_by_key(|(seq, _)| *seq);
        let newest_keyless = claimed.iter().rev().find(|(_, m)| m.key.is_none()).map(|(seq, _)| *seq);
        self.inner.floor.update(limit, claimed.len(), newest_keyless);
        Ok(claimed.into_iter().map(|(_, m)| m).collect())
    }

    async fn extend_lease(&self, owner: RelayId, ids: &[MessageId], lease: Duration) -> Result<()> {
        sqlx::query(&self.inner.sql.extend)
            .bind(owner.as_uuid())
            .bind(uuids(ids))
            .bind(ms(lease))
            .execute(&self.inner.pool)
            .await
            .map_err(|e| sql_error("extend_lease", e))?;
        Ok(())
    }

    async fn release(&self, owner: RelayId, ids: &[MessageId]) -> Result<()> {
        sqlx::query(&self.inner.sql.release)
            .bind(owner.as_uuid())
            .bind(uuids(ids))
            .execute(&self.inner.pool)
            .await
            .map_err(|e| sql_error("release", e))?;
        self.wake_local();
        Ok(())
    }

    async fn acknowledge(&self, ids: &[MessageId]) -> Result<()> {
        let sql = match self.inner.options.retention {
            None => &self.inner.sql.ack_delete,
            Some(_) => &self.inner.sql.ack_retain,
        };
        sqlx::query(sql).bind(uuids(ids)).execute(&self.inner.pool).await.map_err(|e| sql_error("acknowledge", e))?;
        Ok(())
    }

    async fn reschedule(&self, owner: RelayId, retries: &[Retry]) -> Result<()> {
        let ids: Vec<Uuid> = retries.iter().map(|r| r.id.as_uuid()).collect();
        let delays: Vec<i64> = retries.iter().map(|r| ms(r.delay)).collect();
        let errors: Vec<&str> = retries.iter().map(|r| r.error.as_str()).collect();
        sqlx::query(&self.inner.sql.reschedule)
            .bind(owner.as_uuid())
            .bind(ids)
            .bind(delays)
            .bind(errors)
            .execute(&self.inner.pool)
            .await
            .map_err(|e| sql_error("reschedule", e))?;
        Ok(())
    }

    async fn dead_letter(&self, owner: RelayId, failures: &[Failure]) -> Result<()> {
        let ids: Vec<Uuid> = failures.iter().map(|f| f.id.as_uuid()).collect();
        let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
        sqlx::query(&self.inner.sql.dead_letter)
            .bind(owner.as_uuid())
            .bind(ids)
            .bind(errors)
            .execute(&self.inner.pool)
            .await
            .map_err(|e| sql_error("dead_letter", e))?;
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(&self.inner.sql.list_dead)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| sql_error("dead_letters", e))?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    message: decode_message(row)?,
                    error: row.try_get(9).map_err(|e| sql_error("dead_letters", e))?,
                    dead_at: row.try_get(10).map_err(|e| sql_error("dead_letters", e))?,
                })
            })
            .collect()
    }

    async fn replay_dead_letters(&self, ids: &[MessageId]) -> Result<u64> {
        let done = sqlx::query(&self.inner.sql.replay)
            .bind(uuids(ids))
            .execute(&self.inner.pool)
            .await
            .map_err(|e| sql_error("replay", e))?;
        self.wake_local();
        Ok(done.rows_affected())
    }

    async fn purge_dead_letters(&self, ids: &[MessageId]) -> Result<u64> {
        let done = sqlx::query(&self.inner.sql.delete_dead)
            .bind(uuids(ids))
            .execute(&self.inner.pool)
            .await
            .map_err(|e| sql_error("purge_dead_letters", e))?;
        Ok(done.rows_affected())
    }

    async fn purge_published(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let done = sqlx::query(&self.inner.sql.purge_published)
            .bind(ms(older_than))
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
        let oldest: Option<f64> = row.try_get(2).map_err(err)?;
        let dead: i64 =
            sqlx::query_scalar(&self.inner.sql.count_dead).fetch_one(&self.inner.pool).await.map_err(err)?;
        Ok(OutboxStats::new(
            pending as u64,
            retrying as u64,
            oldest.map(|secs| Duration::from_secs_f64(secs.max(0.0))),
            dead as u64,
        ))
    }

    fn wakes_on_commit(&self) -> bool {
        self.inner.options.enqueue_notifications
    }

    async fn wait_for_work(&self, timeout: Duration) {
        self.ensure_listener();
        let _ = tokio::time::timeout(timeout, self.inner.wake.notified()).await;
    }
}

#[async_trait]
impl Inbox for PostgresStore {
    type Connection = PgConnection;

    async fn process_once(&self, conn: &mut PgConnection, consumer: &str, id: MessageId) -> Result<bool> {
        crate::check_consumer(consumer)?;
        let done = sqlx::query(&self.inner.sql.inbox)
            .bind(consumer)
            .bind(id.as_uuid())
            .execute(conn)
            .await
            .map_err(|e| sql_error("process_once", e))?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_counted() {
        assert_eq!(highest_placeholder("INSERT INTO t VALUES ($1, $12, $3)"), 12);
        assert_eq!(highest_placeholder("SELECT 1"), 0);
        assert_eq!(highest_placeholder("SELECT $$text$$, $tag$x$tag$, $"), 0);
        assert_eq!(highest_placeholder("SELECT 'costs $5'"), 5);
        assert_eq!(highest_placeholder("SELECT $99999999999999999999999"), 0, "no overflow panic");
    }

    #[test]
    fn the_message_query_goes_in_front_of_the_statement_or_into_its_with_clause() {
        let q = "m AS (INSERT ...)";
        assert_eq!(
            with_query_in_front(q, "  INSERT INTO t VALUES ($1)"),
            "WITH m AS (INSERT ...) INSERT INTO t VALUES ($1)"
        );
        assert_eq!(
            with_query_in_front(q, "with a AS (SELECT 1) SELECT * FROM a"),
            "with m AS (INSERT ...), a AS (SELECT 1) SELECT * FROM a"
        );
        assert_eq!(
            with_query_in_front(q, "WITH\n RECURSIVE r(n) AS (SELECT 1) SELECT n FROM r"),
            "WITH\n RECURSIVE m AS (INSERT ...), r(n) AS (SELECT 1) SELECT n FROM r"
        );
        assert_eq!(with_query_in_front(q, "WITHOUT_A_CLAUSE"), "WITH m AS (INSERT ...) WITHOUT_A_CLAUSE");
        assert_eq!(with_query_in_front(q, "Wé"), "WITH m AS (INSERT ...) Wé", "no panic on a multi-byte char");
        assert_eq!(
            with_query_in_front(q, "WITH"),
            "WITH m AS (INSERT ...) WITH",
            "a bare WITH is left to the server to refuse"
        );
    }

    #[test]
    fn claim_floor_starts_at_the_oldest_row_and_follows_full_claims() {
        let floor = ClaimFloor::with_interval(Duration::from_secs(3600));
        assert_eq!(floor.next(), 0, "the first claim walks from the oldest row");
        floor.update(100, 100, Some(500));
        assert_eq!(floor.next(), 500, "a full claim's successor starts above its newest row");
        floor.update(100, 100, Some(400));
        assert_eq!(floor.next(), 500, "a concurrent, older full claim does not lower the floor");
        floor.update(100, 7, Some(700));
        assert_eq!(floor.next(), 0, "a short claim sends the next one back to the oldest row");
    }

    #[test]
    fn claim_floor_walks_from_the_oldest_row_every_interval() {
        let interval = Duration::from_millis(300);
        let floor = ClaimFloor::with_interval(interval);
        assert_eq!(floor.next(), 0);
        floor.update(10, 10, Some(50));
        std::thread::sleep(interval + Duration::from_millis(50));
        assert_eq!(floor.next(), 0, "a walk from the oldest row is due");
        assert_eq!(floor.next(), 50, "and only one claim makes it");
    }
}
