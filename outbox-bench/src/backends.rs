//! The store and publisher of a run, for any backend: open, fill, reset, clean up.

use super::*;

/// A store handle of any backend, with what the harness needs beyond `Store`.
#[derive(Clone)]
pub(crate) enum AnyStore {
    Postgres(PostgresStore),
    MySql(MySqlStore),
    Sqlite(SqliteStore),
}

impl AnyStore {
    pub(crate) async fn open(kind: &str, options: StoreOptions) -> Result<Self, BoxError> {
        let prefix = format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let options = options.table_prefix(&prefix)?;
        let store = match kind {
            "postgres" => {
                Self::Postgres(PostgresStore::connect_with(&env("OUTBOX_TEST_POSTGRES_URL")?, options).await?)
            }
            "mysql" => Self::MySql(MySqlStore::connect_with(&env("OUTBOX_TEST_MYSQL_URL")?, options).await?),
            "sqlite" => {
                let path = std::env::temp_dir().join(format!("{prefix}.db"));
                let base = SqliteStore::connect(&format!("sqlite://{}", path.display())).await?;
                Self::Sqlite(SqliteStore::new(base.pool().clone(), options)?)
            }
            other => return Err(format!("unknown store {other}").into()),
        };
        match &store {
            Self::Postgres(s) => s.migrate().await?,
            Self::MySql(s) => s.migrate().await?,
            Self::Sqlite(s) => s.migrate().await?,
        }
        Ok(store)
    }

    /// The same tables, with relays woken by `wake_ups` (PostgreSQL; the others wake in-process).
    pub(crate) fn with_wake_ups(&self, wake_ups: WakeUps) -> Result<Self, BoxError> {
        Ok(match self {
            Self::Postgres(s) => {
                Self::Postgres(PostgresStore::new(s.pool().clone(), s.options().clone().wake_ups(wake_ups))?)
            }
            other => other.clone(),
        })
    }

    pub(crate) fn dyn_store(&self) -> Arc<dyn Store> {
        match self {
            Self::Postgres(s) => Arc::new(s.clone()),
            Self::MySql(s) => Arc::new(s.clone()),
            Self::Sqlite(s) => Arc::new(s.clone()),
        }
    }

    /// Enqueues `messages` in transactions of `per_tx`, from `producers` concurrent producers.
    pub(crate) async fn fill(
        &self,
        messages: Vec<NewMessage>,
        per_tx: usize,
        producers: usize,
    ) -> Result<(), BoxError> {
        let chunks: Vec<Vec<NewMessage>> = messages.chunks(per_tx).map(<[NewMessage]>::to_vec).collect();
        let queue = Arc::new(Mutex::new(chunks));
        let mut tasks = Vec::new();
        for _ in 0..producers {
            let (queue, store) = (queue.clone(), self.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let Some(chunk) = queue.lock().map_err(|_| "poisoned")?.pop() else {
                        return Ok::<(), BoxError>(());
                    };
                    store.enqueue_tx(chunk, None).await?;
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok(())
    }

    /// One transaction: an optional business row, then the messages. Returns when its `COMMIT` was
    /// sent: the commit instant as the producer knows it, before the reply reaches its task.
    pub(crate) async fn enqueue_tx(
        &self,
        messages: Vec<NewMessage>,
        business_row: Option<i64>,
    ) -> Result<Instant, BoxError> {
        let committed = match self {
            Self::Postgres(s) => {
                let mut tx = s.pool().begin().await?;
                if let Some(v) = business_row {
                    sqlx::query("INSERT INTO bench_business (v) VALUES ($1)").bind(v).execute(&mut *tx).await?;
                }
                if !messages.is_empty() {
                    s.enqueue_batch(&mut *tx, messages).await?;
                }
                let committing = Instant::now();
                tx.commit().await?;
                committing
            }
            Self::MySql(s) => {
                let mut tx = s.pool().begin().await?;
                if let Some(v) = business_row {
                    sqlx::query("INSERT INTO bench_business (v) VALUES (?)").bind(v).execute(&mut *tx).await?;
                }
                if !messages.is_empty() {
                    s.enqueue_batch(&mut *tx, messages).await?;
                }
                let committing = Instant::now();
                tx.commit().await?;
                committing
            }
            Self::Sqlite(s) => {
                let mut tx = s.pool().begin().await?;
                if let Some(v) = business_row {
                    sqlx::query("INSERT INTO bench_business (v) VALUES (?)").bind(v).execute(&mut *tx).await?;
                }
                if !messages.is_empty() {
                    s.enqueue_batch(&mut *tx, messages).await?;
                }
                let committing = Instant::now();
                tx.commit().await?;
                committing
            }
        };
        Ok(committed)
    }

    /// One transaction: a business row, then instead of an outbox message either a bare `SELECT 1`
    /// (one more round trip) or a one-row insert into a second plain table (one more row written).
    pub(crate) async fn second_statement_tx(&self, business_row: i64, second_row: bool) -> Result<(), BoxError> {
        let placeholder = if matches!(self, Self::Postgres(_)) { "$1" } else { "?" };
        let business = format!("INSERT INTO bench_business (v) VALUES ({placeholder})");
        let second = if second_row {
            format!("INSERT INTO bench_business_2 (v) VALUES ({placeholder})")
        } else {
            "SELECT 1".to_owned()
        };
        match self {
            Self::Postgres(s) => {
                let mut tx = s.pool().begin().await?;
                sqlx::query(&business).bind(business_row).execute(&mut *tx).await?;
                let second = sqlx::query(&second);
                if second_row { second.bind(business_row) } else { second }.execute(&mut *tx).await?;
                tx.commit().await?;
            }
            Self::MySql(s) => {
                let mut tx = s.pool().begin().await?;
                sqlx::query(&business).bind(business_row).execute(&mut *tx).await?;
                let second = sqlx::query(&second);
                if second_row { second.bind(business_row) } else { second }.execute(&mut *tx).await?;
                tx.commit().await?;
            }
            Self::Sqlite(s) => {
                let mut tx = s.pool().begin().await?;
                sqlx::query(&business).bind(business_row).execute(&mut *tx).await?;
                let second = sqlx::query(&second);
                if second_row { second.bind(business_row) } else { second }.execute(&mut *tx).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Refreshes the planner statistics after a bulk fill, as autovacuum does for a table in steady use
    /// (a never-analyzed table of 100,000 fresh rows gets a sort-based claim plan: see docs/benchmarks.md).
    pub(crate) async fn analyze(&self) -> Result<(), BoxError> {
        match self {
            Self::Postgres(s) => {
                sqlx::query(&format!("ANALYZE {}", s.messages_table())).execute(s.pool()).await?;
            }
            Self::MySql(s) => {
                let table = sqlite_or_mysql_table(self);
                sqlx::query(&format!("ANALYZE TABLE {table}")).execute(s.pool()).await?;
            }
            Self::Sqlite(s) => {
                sqlx::query("ANALYZE").execute(s.pool()).await?;
            }
        }
        Ok(())
    }

    /// The business table of the enqueue test, and a second one like it.
    pub(crate) async fn create_business_table(&self) -> Result<(), BoxError> {
        for table in ["bench_business", "bench_business_2"] {
            match self {
                Self::Postgres(s) => {
                    sqlx::query(&format!("CREATE TABLE IF NOT EXISTS {table} (id BIGSERIAL PRIMARY KEY, v BIGINT)"))
                        .execute(s.pool())
                        .await?;
                }
                Self::MySql(s) => {
                    sqlx::query(&format!(
                        "CREATE TABLE IF NOT EXISTS {table} (id BIGINT AUTO_INCREMENT PRIMARY KEY, v BIGINT)"
                    ))
                    .execute(s.pool())
                    .await?;
                }
                Self::Sqlite(s) => {
                    sqlx::query(&format!("CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY, v INTEGER)"))
                        .execute(s.pool())
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Another handle on the same tables with its own connection pool (SQLite: the same pool, as
    /// SQLite has one writer anyway).
    pub(crate) async fn reopen(&self) -> Result<Self, BoxError> {
        Ok(match self {
            Self::Postgres(s) => Self::Postgres(
                PostgresStore::connect_with(&env("OUTBOX_TEST_POSTGRES_URL")?, s.options().clone()).await?,
            ),
            Self::MySql(s) => {
                Self::MySql(MySqlStore::connect_with(&env("OUTBOX_TEST_MYSQL_URL")?, s.options().clone()).await?)
            }
            Self::Sqlite(s) => Self::Sqlite(SqliteStore::new(s.pool().clone(), s.options().clone())?),
        })
    }

    /// PostgreSQL: how many connections to this database are listening for notifications (other stores:
    /// `None`).
    pub(crate) async fn listening_connections(&self) -> Result<Option<i64>, BoxError> {
        let Self::Postgres(s) = self else { return Ok(None) };
        let sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN %'";
        Ok(Some(sqlx::query_scalar(sql).fetch_one(s.pool()).await?))
    }

    /// PostgreSQL: `n` connections of their own (not from the store's pool) listening on channels
    /// nobody notifies, until the returned tasks are dropped (other stores: none).
    pub(crate) async fn idle_listeners(&self, n: usize) -> Result<Vec<AbortOnDropHandle<()>>, BoxError> {
        let Self::Postgres(s) = self else { return Ok(Vec::new()) };
        let mut tasks = Vec::new();
        for i in 0..n {
            let mut listener = sqlx::postgres::PgListener::connect(&env("OUTBOX_TEST_POSTGRES_URL")?).await?;
            listener.listen(&format!("{}_idle_{i}", s.channel())).await?;
            tasks.push(AbortOnDropHandle::new(tokio::spawn(async move { while listener.recv().await.is_ok() {} })));
        }
        Ok(tasks)
    }

    /// Drops this store's tables and lets the handle go, which stops its PostgreSQL listener: every
    /// `LISTEN`ing connection in the database is woken by every notifying commit, whatever its
    /// channel, so a finished part's listener would slow down the parts after it.
    /// A SQLite store's database file is deleted too.
    pub(crate) async fn close(self) -> Result<(), BoxError> {
        self.drop_tables().await?;
        if let Self::Sqlite(s) = &self {
            let file: String = sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_one(s.pool())
                .await?;
            s.pool().close().await;
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{file}{suffix}"));
            }
        }
        Ok(())
    }

    /// Drops the tables this store created (the benchmark's tables are throwaway, named per run).
    pub(crate) async fn drop_tables(&self) -> Result<(), BoxError> {
        let schema = match self {
            Self::MySql(s) => s.schema_sql().to_owned(),
            Self::Sqlite(s) => s.schema_sql().to_owned(),
            Self::Postgres(s) => s.schema_sql().to_owned(),
        };
        let words: Vec<&str> = schema.split_whitespace().collect();
        let tables: Vec<&str> =
            words.windows(6).filter(|w| w[..5] == ["CREATE", "TABLE", "IF", "NOT", "EXISTS"]).map(|w| w[5]).collect();
        for table in tables {
            let drop = format!("DROP TABLE IF EXISTS {table}");
            match self {
                Self::Postgres(s) => sqlx::query(&drop).execute(s.pool()).await.map(|_| ())?,
                Self::MySql(s) => sqlx::query(&drop).execute(s.pool()).await.map(|_| ())?,
                Self::Sqlite(s) => sqlx::query(&drop).execute(s.pool()).await.map(|_| ())?,
            }
        }
        if let Self::Sqlite(s) = self {
            sqlx::query("VACUUM").execute(s.pool()).await?;
        }
        Ok(())
    }

    pub(crate) async fn drop_business_table(&self) -> Result<(), BoxError> {
        for table in ["bench_business", "bench_business_2"] {
            let drop = format!("DROP TABLE IF EXISTS {table}");
            match self {
                Self::Postgres(s) => sqlx::query(&drop).execute(s.pool()).await.map(|_| ())?,
                Self::MySql(s) => sqlx::query(&drop).execute(s.pool()).await.map(|_| ())?,
                Self::Sqlite(s) => sqlx::query(&drop).execute(s.pool()).await.map(|_| ())?,
            }
        }
        Ok(())
    }

    /// Inserts `n` already-published rows straight into the messages table (retention mode layout).
    pub(crate) async fn add_old_rows(&self, n: usize, table: &str) -> Result<(), BoxError> {
        match self {
            Self::Postgres(s) => {
                sqlx::query(&format!(
                    "INSERT INTO {table} (id, topic, payload, published_at) \
                     SELECT gen_random_uuid(), 'old', '\\x00', now() - interval '1 hour' FROM generate_series(1, $1)"
                ))
                .bind(n as i64)
                .execute(s.pool())
                .await?;
                sqlx::query(&format!("ANALYZE {table}")).execute(s.pool()).await?;
            }
            Self::MySql(s) => {
                sqlx::query(&format!(
                    "INSERT INTO {table} (id, topic, payload, headers, created_at, available_at, published_at) \
                     SELECT UUID(), 'old', x'00', '{{}}', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) \
                     FROM seq_1_to_{n}"
                ))
                .execute(s.pool())
                .await?;
                sqlx::query(&format!("ANALYZE TABLE {table}")).execute(s.pool()).await?;
            }
            Self::Sqlite(s) => {
                sqlx::query(&format!(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) \
                     INSERT INTO {table} (id, topic, payload, headers, created_at, available_at, published_at) \
                     SELECT 'old-' || i, 'old', x'00', '{{}}', 0, 0, 1 FROM n"
                ))
                .bind(n as i64)
                .execute(s.pool())
                .await?;
                sqlx::query("ANALYZE").execute(s.pool()).await?;
            }
        }
        Ok(())
    }

    pub(crate) fn messages_table(&self, prefix_hint: &str) -> String {
        match self {
            Self::Postgres(s) => s.messages_table().to_owned(),
            Self::MySql(_) | Self::Sqlite(_) => prefix_hint.to_owned(),
        }
    }
}

pub(crate) async fn make_publisher(kind: &str, topic: &str, args: &Args) -> Result<Arc<dyn Publisher>, BoxError> {
    Ok(match kind {
        "kafka" => {
            let mut options = kafka::KafkaOptions::new(env("OUTBOX_TEST_KAFKA_BROKERS")?);
            for (key, value) in &args.kafka_settings {
                options = options.setting(key, value);
            }
            Arc::new(kafka::KafkaPublisher::new(options)?)
        }
        "rabbitmq" => {
            let url = env("OUTBOX_TEST_AMQP_URL")?;
            rabbitmq::declare_queue(&url, topic, args.amqp_queue).await?;
            Arc::new(rabbitmq::RabbitMqPublisher::new(rabbitmq::RabbitMqOptions::from_url(&url)?))
        }
        "redis" => Arc::new(redis_pub::RedisPublisher::new(
            redis_pub::RedisOptions::from_url(&env("OUTBOX_TEST_REDIS_URL")?)?.max_len(200_000),
        )?),
        "nats" => {
            let url = env("OUTBOX_TEST_NATS_URL")?;
            nats::create_stream(&url, topic, &[topic], NATS_DUPLICATE_WINDOW).await?;
            Arc::new(nats::NatsPublisher::new(nats::NatsOptions::from_url(&url)?))
        }
        "memory" => Arc::new(MemoryPublisher::new().with_delay(args.memory_delay)),
        other => return Err(format!("unknown publisher {other}").into()),
    })
}

/// The duplicate window of the stream the NATS benchmark publishes to (the server's default).
const NATS_DUPLICATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);

/// Empties the RabbitMQ queue or NATS stream between rounds: a destination that keeps growing by
/// 100,000 messages a round slows the broker down and would skew later rounds. (Redis streams are
/// capped; Kafka keeps its log.)
pub(crate) async fn reset_broker(args: &Args, topic: &str) -> Result<(), BoxError> {
    match args.publisher.as_str() {
        "rabbitmq" => {
            let url = env("OUTBOX_TEST_AMQP_URL")?;
            rabbitmq::delete_queue(&url, topic).await?;
            rabbitmq::declare_queue(&url, topic, args.amqp_queue).await?;
        }
        "nats" => {
            let url = env("OUTBOX_TEST_NATS_URL")?;
            nats::delete_stream(&url, topic).await?;
            nats::create_stream(&url, topic, &[topic], NATS_DUPLICATE_WINDOW).await?;
        }
        _ => {}
    }
    Ok(())
}

pub(crate) async fn cleanup_broker(kind: &str, topic: &str) {
    if kind == "rabbitmq" {
        if let Ok(url) = env("OUTBOX_TEST_AMQP_URL") {
            let _ = rabbitmq::delete_queue(&url, topic).await;
        }
    }
    if kind == "nats" {
        if let Ok(url) = env("OUTBOX_TEST_NATS_URL") {
            let _ = nats::delete_stream(&url, topic).await;
        }
    }
}
