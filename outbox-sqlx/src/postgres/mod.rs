//! PostgreSQL store: one-statement claims with `FOR UPDATE SKIP LOCKED`, commit-time wake-ups with
//! `pg_notify` (sent by the enqueue statement itself, so it costs no extra round trip; see
//! `StoreOptions::enqueue_notifications` for many concurrent producers) and a `LISTEN` connection,
//! partial indexes so claims stay cheap however many published or dead rows the table holds.
//!
//! Parts: `sql` (the statements), `claim_floor` (where a claim starts), `statement` (the caller's
//! statement in `execute_with`).

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_engine::{
    Admin, DeadLetter, Error, Failure, Headers, Inbox, KeySlice, LateCommitChase, Message, MessageId, NewMessage,
    OutboxStats, RelayId, RelayInfo, RelayRegistry, Result, Retry, Store,
};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgListener, PgPoolOptions, PgQueryResult, PgRow};
use sqlx::query::Query;
use sqlx::types::Json;
use sqlx::{Arguments, Execute, PgConnection, PgPool, Postgres, Row};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::admin::Dialect;
use crate::claim_clocks::SliceClaims;
use crate::key_runs::{keep_key_runs, LeasedRow};
use crate::{connect_error, sql_error, StoreOptions, WakeUps};

mod claim_floor;
#[cfg(feature = "postgres-replication")]
mod replication;
mod sql;
mod statement;

use claim_floor::ClaimFloor;
use sql::{message_insert, Sql};
use statement::{highest_placeholder, with_query_in_front};

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
    /// The replication stream of [`WakeUps::Replication`], started by the first wait.
    #[cfg(feature = "postgres-replication")]
    stream: Mutex<Option<JoinHandle<()>>>,
    /// The password for the replication session (the pool does not give it back). Never printed.
    #[cfg(feature = "postgres-replication")]
    password: Option<String>,
    floor: ClaimFloor,
    /// When this store last claimed in a key slice.
    slice_claims: SliceClaims,
    /// This store's row in `{prefix}_waiters`, and until when (on this machine's clock) it counts.
    waiter: Uuid,
    waiting_until: Mutex<Option<std::time::Instant>>,
    /// Claims again soon after the registration was renewed from lapsed: a producer that saw no
    /// waiter committed without notifying.
    chase: Arc<LateCommitChase>,
}

/// How long a relay's registration as a waiter lasts; a relay that claims without waiting for that
/// long is busy and needs no notifications.
const WAITER_TTL: Duration = Duration::from_secs(30);

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.listener.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
        #[cfg(feature = "postgres-replication")]
        if let Some(task) = self.stream.get_mut().ok().and_then(Option::take) {
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

/// The percent-decoded password of a `postgres://` URL, if it has one.
#[cfg(feature = "postgres-replication")]
fn url_password(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    percent_encoding::percent_decode_str(url.password()?).decode_utf8().ok().map(|p| p.into_owned())
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn uuids(ids: &[MessageId]) -> Vec<Uuid> {
    ids.iter().map(MessageId::as_uuid).collect()
}

/// A row of `select_pending`: its `seq` and the message with its next attempt.
fn decode_pending(row: &PgRow) -> Result<(i64, outbox_engine::PendingMessage)> {
    let get = |e| sql_error("search_messages", e);
    let pending = outbox_engine::PendingMessage::new(decode_message(row)?, row.try_get(9).map_err(get)?);
    Ok((row.try_get(0).map_err(get)?, pending))
}

/// A row of `select_dead`: its `seq` and the dead letter.
fn decode_dead(row: &PgRow) -> Result<(i64, DeadLetter)> {
    let get = |e| sql_error("dead_letters", e);
    let dead = DeadLetter {
        message: decode_message(row)?,
        error: row.try_get(9).map_err(get)?,
        dead_at: row.try_get(10).map_err(get)?,
    };
    Ok((row.try_get(0).map_err(get)?, dead))
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
    /// The body of [`Store::claim`], [`Store::claim_slice`] and [`Store::claim_slice_behind`].
    async fn claim_in(
        &self,
        owner: RelayId,
        limit: usize,
        lease: Duration,
        slice: Option<KeySlice>,
        behind: &[MessageId],
    ) -> Result<Vec<Message>> {
        let rows = sqlx::query(&self.inner.sql.claim)
            .bind(owner.as_uuid())
            .bind(ms(lease))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(self.inner.floor.next())
            .bind(i64::from(slice.map_or(0, |s| s.count())))
            .bind(i64::from(slice.map_or(0, |s| s.index())))
            .bind(self.inner.slice_claims.heads_allowed(slice.is_some()))
            .bind(uuids(behind))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| sql_error("claim", e))?;
        let get = |e| sql_error("claim", e);
        let mut leased = Vec::with_capacity(rows.len());
        for row in &rows {
            let previous = row.try_get(9).map_err(get)?;
            leased.push(LeasedRow { seq: row.try_get(0).map_err(get)?, previous, message: decode_message(row)? });
        }
        self.inner.chase.claimed(leased.len());
        let newest_keyless = leased.iter().filter(|row| row.message.key.is_none()).map(|row| row.seq).max();
        self.inner.floor.update(limit, leased.len(), newest_keyless);
        let (claimed, back) = keep_key_runs(leased);
        if !back.is_empty() {
            self.release(owner, &back).await?;
        }
        Ok(claimed)
    }

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
        #[cfg(feature = "postgres-replication")]
        return Self::build(pool, options, url_password(url));
        #[cfg(not(feature = "postgres-replication"))]
        Self::build(pool, options, None)
    }

    /// A store over your own pool. With [`WakeUps::Replication`], the replication session takes
    /// the pool's server, user, database and TLS mode, and the password of `PGPASSWORD` (a pool does
    /// not give its password back; [`connect_with`](Self::connect_with) uses its URL's). Fails on
    /// `WakeUps::Replication` without the `postgres-replication` feature.
    pub fn new(pool: PgPool, options: StoreOptions) -> Result<Self> {
        Self::build(pool, options, std::env::var("PGPASSWORD").ok())
    }

    fn build(pool: PgPool, options: StoreOptions, password: Option<String>) -> Result<Self> {
        if options.wake_ups == WakeUps::Replication && !cfg!(feature = "postgres-replication") {
            return Err(Error::invalid_config(
                "wake_ups = replication needs the postgres-replication feature of outbox-sqlx (or outbox)",
            ));
        }
        #[cfg(not(feature = "postgres-replication"))]
        let _ = password;
        let sql = Sql::new(&options);
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                options,
                sql,
                wake: Arc::new(Notify::new()),
                listener: Mutex::new(None),
                #[cfg(feature = "postgres-replication")]
                stream: Mutex::new(None),
                #[cfg(feature = "postgres-replication")]
                password,
                floor: ClaimFloor::new(),
                slice_claims: SliceClaims::default(),
                waiter: Uuid::new_v4(),
                waiting_until: Mutex::new(None),
                chase: Arc::new(LateCommitChase::default()),
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

    /// The query plan of the claim statement (`EXPLAIN`) in `slice` (or over every key), to check
    /// that it walks the partial indexes instead of the table.
    pub async fn explain_claim(&self, limit: usize, slice: Option<KeySlice>) -> Result<String> {
        let rows: Vec<String> = sqlx::query_scalar(&self.inner.sql.explain_claim)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(i64::from(slice.map_or(0, |s| s.count())))
            .bind(i64::from(slice.map_or(0, |s| s.index())))
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

    /// Registers this store as waiting for notifications (a row of `{prefix}_waiters`) unless its
    /// registration still counts for longer than `timeout`; returns whether it had lapsed (or never
    /// was). A failed registration only means producers may not notify: the relay still polls.
    async fn register_waiter(&self, timeout: Duration) -> bool {
        let now = std::time::Instant::now();
        let until = *self.inner.waiting_until.lock().unwrap_or_else(|p| p.into_inner());
        let margin = timeout + Duration::from_secs(2);
        if until.is_some_and(|until| until > now + margin) {
            return false;
        }
        let registered = sqlx::query(&self.inner.sql.register_waiter)
            .bind(self.inner.waiter)
            .bind(ms(WAITER_TTL))
            .execute(&self.inner.pool)
            .await;
        if let Err(e) = registered {
            let e = sql_error("register_waiter", e);
            tracing::warn!(error = %e.report(), "outbox relay could not register as waiting for notifications");
            return false;
        }
        // Counted from before the statement, so the local view never outlives the row.
        *self.inner.waiting_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(now + WAITER_TTL);
        until.is_none_or(|until| until <= now)
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

    /// Starts the replication stream of [`WakeUps::Replication`] unless it runs.
    #[cfg(feature = "postgres-replication")]
    fn ensure_stream(&self) {
        let mut slot = self.inner.stream.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let stream = replication::Stream {
                pool: self.inner.pool.clone(),
                password: self.inner.password.clone(),
                publication: self.inner.sql.channel.clone(),
                messages: self.inner.sql.messages.clone(),
                wake: self.inner.wake.clone(),
                chase: self.inner.chase.clone(),
            };
            *slot = Some(tokio::spawn(stream.run()));
        }
    }

    /// Runs your `statement` (an `INSERT`, `UPDATE`, `DELETE` or `SELECT`, with or without a `WITH`
    /// clause of its own) in your transaction with `message` enqueued by the same statement: the
    /// business write and the outbox row take one round trip instead of two. The message goes in as a
    /// data-modifying `WITH` query placed in front of your statement (its parameters are numbered
    /// after yours), so both are written or neither is, and the wake-up is sent as with
    /// [`Enqueue::enqueue`](outbox_engine::Enqueue::enqueue). A message with an idempotency key may be
    /// stored already, so it is enqueued by its own statement first. Returns your statement's result
    /// and the message's id.
    ///
    /// ```no_run
    /// # async fn demo(store: outbox_sqlx::postgres::PostgresStore) -> outbox_engine::Result<()> {
    /// use outbox_engine::NewMessage;
    /// let mut tx = store.pool().begin().await?;
    /// let insert = sqlx::query("INSERT INTO orders (id, total) VALUES ($1, $2)").bind(42_i64).bind(1999_i64);
    /// store.execute_with(&mut tx, insert, NewMessage::new("orders.placed", r#"{"id":42}"#)).await?;
    /// tx.commit().await?;
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
        let returning = if self.inner.options.wake_ups == WakeUps::Notify {
            arguments.add(self.inner.sql.channel.as_str()).map_err(bind_error)?;
            sql::notify_if_waited(&self.inner.sql.waiters, &format!("${}", first + 6))
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
        self.claim_in(owner, limit, lease, None, &[]).await
    }

    async fn claim_slice(
        &self,
        owner: RelayId,
        limit: usize,
        lease: Duration,
        slice: KeySlice,
    ) -> Result<Vec<Message>> {
        self.claim_in(owner, limit, lease, Some(slice), &[]).await
    }

    async fn claim_slice_behind(
        &self,
        owner: RelayId,
        limit: usize,
        lease: Duration,
        slice: KeySlice,
        behind: &[MessageId],
    ) -> Result<Vec<Message>> {
        self.claim_in(owner, limit, lease, Some(slice), behind).await
    }

    fn claims_behind(&self) -> bool {
        true
    }

    fn claims_in_slices(&self) -> bool {
        true
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
        rows.iter().map(|row| decode_dead(row).map(|(_, dead)| dead)).collect()
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
        let scheduled: i64 =
            sqlx::query_scalar(&self.inner.sql.count_scheduled).fetch_one(&self.inner.pool).await.map_err(err)?;
        Ok(OutboxStats::new(
            pending as u64,
            retrying as u64,
            oldest.map(|secs| Duration::from_secs_f64(secs.max(0.0))),
            dead as u64,
        )
        .with_scheduled(scheduled as u64))
    }

    fn wakes_on_commit(&self) -> bool {
        match self.inner.options.wake_ups {
            WakeUps::Notify => true,
            WakeUps::Replication => true,
            WakeUps::Polling => false,
        }
    }

    fn registry(&self) -> Option<&dyn RelayRegistry> {
        Some(self)
    }

    fn admin(&self) -> Option<&dyn Admin> {
        Some(self)
    }

    async fn wait_for_work(&self, timeout: Duration) {
        self.ensure_listener();
        #[cfg(feature = "postgres-replication")]
        if self.inner.options.wake_ups == WakeUps::Replication {
            self.ensure_stream();
        }
        if self.inner.options.wake_ups == WakeUps::Notify && self.register_waiter(timeout).await {
            // Producers may have committed without notifying while no registration counted:
            // claim again at once, then a few times while late commits land.
            self.inner.chase.enqueued();
            return;
        }
        self.inner.chase.wait(&self.inner.wake, timeout).await;
    }
}

/// How PostgreSQL writes a dead-letter search.
const DIALECT: Dialect<DateTime<Utc>> = Dialect { find: "strpos", instant: |at| at, now: "now()" };

crate::admin::impl_admin!(PostgresStore, Postgres, DIALECT, |id: MessageId| id.as_uuid());

#[async_trait]
impl RelayRegistry for PostgresStore {
    async fn heartbeat(&self, relay: RelayId, name: &str, host: &str, pid: u32, published: u64) -> Result<()> {
        sqlx::query(&self.inner.sql.relay_heartbeat)
            .bind(relay.as_uuid())
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
            .bind(ms(alive_within))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| sql_error("relays", e))?;
        let get = |e| sql_error("relays", e);
        rows.iter()
            .map(|row| {
                let id = RelayId::from_uuid(row.try_get::<uuid::Uuid, _>(0).map_err(get)?);
                let names = (row.try_get(1).map_err(get)?, row.try_get(2).map_err(get)?);
                crate::relay_info(row, id, names, (row.try_get(4).map_err(get)?, row.try_get(5).map_err(get)?))
            })
            .collect()
    }

    async fn deregister(&self, relay: RelayId) -> Result<()> {
        sqlx::query(&self.inner.sql.relay_deregister)
            .bind(relay.as_uuid())
            .execute(&self.inner.pool)
            .await
            .map_err(|e| sql_error("deregister", e))?;
        Ok(())
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
