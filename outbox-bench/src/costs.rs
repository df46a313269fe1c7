//! What the outbox costs around the relay: enqueue overhead, producer throughput, claim cost over
//! old rows, and an idle relay's queries.

use super::*;

/// p50 of a one-row business transaction: alone, plus one outbox message, plus a bare `SELECT 1`
/// (the cost of any second statement: one more round trip), plus a one-row insert into a second
/// plain table (the cost of writing any second row), plus 10 outbox messages in one
/// `enqueue_batch`, and (PostgreSQL) with the business row and one message written by one statement
/// (`execute_with`): [`ENQUEUE_VARIANTS`] in that order. The variants alternate, 2,000 of each; the
/// last is `None` on other stores.
pub(crate) async fn enqueue_overhead(
    store: &AnyStore,
    topic: &str,
    payload: usize,
) -> Result<[Option<Duration>; 6], BoxError> {
    store.create_business_table().await?;
    const N: usize = 2000;
    let variants = if matches!(store, AnyStore::Postgres(_)) { 6 } else { 5 };
    let mut samples: [Vec<Duration>; 6] = Default::default();
    let message = || NewMessage::new(topic, vec![1u8; payload]);
    for i in 0..N * variants {
        let started = Instant::now();
        match (i % variants, store) {
            (0, _) => {
                store.enqueue_tx(Vec::new(), Some(i as i64)).await?;
            }
            (1, _) => {
                store.enqueue_tx(vec![message()], Some(i as i64)).await?;
            }
            (2, _) => store.second_statement_tx(i as i64, false).await?,
            (3, _) => store.second_statement_tx(i as i64, true).await?,
            (5, AnyStore::Postgres(s)) => {
                let mut tx = s.pool().begin().await?;
                let business = sqlx::query("INSERT INTO bench_business (v) VALUES ($1)").bind(i as i64);
                s.execute_with(&mut tx, business, message()).await?;
                tx.commit().await?;
            }
            _ => {
                store.enqueue_tx((0..10).map(|_| message()).collect(), Some(i as i64)).await?;
            }
        }
        samples[i % variants].push(started.elapsed());
    }
    store.drop_business_table().await?;
    Ok(samples.map(|mut s| {
        s.sort();
        (!s.is_empty()).then(|| percentile(&s, 0.5))
    }))
}

/// One variant of [`enqueue_overhead`]: the JSON key and label of its p50 and, where it has one, of its
/// overhead over the first variant.
pub(crate) struct EnqueueVariant {
    pub(crate) key: &'static str,
    pub(crate) label: &'static str,
    pub(crate) overhead: Option<(&'static str, &'static str)>,
}

/// The variants of [`enqueue_overhead`], in its order.
pub(crate) const ENQUEUE_VARIANTS: [EnqueueVariant; 6] = [
    EnqueueVariant { key: "tx_plain_p50_ms", label: "one-row business transaction: p50", overhead: None },
    EnqueueVariant {
        key: "tx_outbox_p50_ms",
        label: "the same plus one outbox message: p50",
        overhead: Some(("enqueue_overhead_pct", "enqueue overhead")),
    },
    EnqueueVariant {
        key: "tx_round_trip_p50_ms",
        label: "the same plus a bare SELECT 1 instead: p50",
        overhead: Some(("round_trip_overhead_pct", "overhead of any second statement (SELECT 1)")),
    },
    EnqueueVariant {
        key: "tx_second_row_p50_ms",
        label: "the same plus a row in a second plain table instead: p50",
        overhead: Some(("second_row_overhead_pct", "overhead of any second row (plain table)")),
    },
    EnqueueVariant {
        key: "tx_outbox_10_p50_ms",
        label: "the same plus 10 outbox messages (enqueue_batch): p50",
        overhead: None,
    },
    EnqueueVariant {
        key: "tx_outbox_one_statement_p50_ms",
        label: "the same, row and message in one statement (execute_with): p50",
        overhead: Some(("enqueue_one_statement_overhead_pct", "enqueue overhead with execute_with")),
    },
];

/// What a producer-throughput variant's transactions write, and whether a relay runs meanwhile.
struct ProducerVariant {
    name: String,
    store: AnyStore,
    writes: Writes,
    /// What drains the messages while the producers commit.
    drain: Drain,
}

/// What runs beside the producers of a variant.
#[derive(Clone, Copy, PartialEq)]
enum Drain {
    /// Nothing: the messages stay in the table.
    None,
    /// A relay (publishing to memory) on the variant's store, waiting for work in the store's
    /// wake-up mode whenever it catches up: the producers then pay what that mode costs.
    Relay,
    /// PostgreSQL: a loop that only deletes the committed messages, oldest first, up to 1,000 a
    /// statement, with no claim and no lease. It is the least database work of any relay that
    /// deletes what it published (a relay fed from the write-ahead log included, which adds the
    /// decoding), so it bounds what such a relay leaves the producers.
    DeleteOnly,
}

#[derive(Clone, Copy)]
enum Writes {
    Business,
    SecondRow,
    Message,
}

/// Transactions a second that `producers` concurrent producers commit for 3 s: one-row business
/// transactions alone, with a row in a second plain table (the floor: any second row), with one
/// outbox message and no relay running (the row's own cost), and with one message while a relay
/// of each wake-up mode runs. Two rounds of each, alternating; the better round of each is reported.
pub(crate) async fn producer_throughput(
    store: &AnyStore,
    topic: &str,
    args: &Args,
    producers: usize,
) -> Result<Vec<(String, f64)>, BoxError> {
    store.create_business_table().await?;
    let mut variants = vec![
        ProducerVariant { name: "business".into(), store: store.clone(), writes: Writes::Business, drain: Drain::None },
        ProducerVariant {
            name: "second_row".into(),
            store: store.clone(),
            writes: Writes::SecondRow,
            drain: Drain::None,
        },
        // Without notifications: a notify-mode store would notify for 30 s after a relay stopped.
        ProducerVariant {
            name: "outbox".into(),
            store: store.with_wake_ups(WakeUps::Polling)?,
            writes: Writes::Message,
            drain: Drain::None,
        },
    ];
    for (mode, name) in wake_up_modes(args) {
        let store = store.with_wake_ups(mode)?;
        variants.push(ProducerVariant {
            name: format!("outbox_relay_{name}"),
            store,
            writes: Writes::Message,
            drain: Drain::Relay,
        });
    }
    if matches!(store, AnyStore::Postgres(_)) {
        variants.push(ProducerVariant {
            name: "outbox_delete_only".into(),
            store: store.with_wake_ups(WakeUps::Polling)?,
            writes: Writes::Message,
            drain: Drain::DeleteOnly,
        });
    }
    let mut best = vec![0.0f64; variants.len()];
    for _round in 0..2 {
        for (variant, best) in variants.iter().zip(best.iter_mut()) {
            let relay = match variant.drain {
                Drain::Relay => Some(BackgroundRelay::start(&variant.store, args).await?),
                Drain::None | Drain::DeleteOnly => None,
            };
            let deleting = match (&variant.store, variant.drain) {
                (AnyStore::Postgres(s), Drain::DeleteOnly) => Some(DeleteOnly::start(s)),
                _ => None,
            };
            let committed = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + Duration::from_secs(3);
            let started = Instant::now();
            let mut tasks = Vec::new();
            for producer in 0..producers {
                let (store, committed, topic, payload, writes) =
                    (variant.store.clone(), committed.clone(), topic.to_owned(), args.payload, variant.writes);
                tasks.push(tokio::spawn(async move {
                    let mut n = 0i64;
                    while Instant::now() < deadline {
                        let row = producer as i64 * 1_000_000_000 + n;
                        match writes {
                            Writes::Business => {
                                store.enqueue_tx(Vec::new(), Some(row)).await?;
                            }
                            Writes::SecondRow => store.second_statement_tx(row, true).await?,
                            Writes::Message => {
                                store.enqueue_tx(vec![NewMessage::new(&topic, vec![3u8; payload])], Some(row)).await?;
                            }
                        }
                        committed.fetch_add(1, Ordering::Relaxed);
                        n += 1;
                    }
                    Ok::<(), BoxError>(())
                }));
            }
            for task in tasks {
                task.await??;
            }
            let rate = committed.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
            *best = best.max(rate);
            if let Some(relay) = relay {
                relay.stop().await?;
            }
            if let Some(deleting) = deleting {
                deleting.stop().await?;
            }
        }
    }
    store.drop_business_table().await?;
    Ok(variants.into_iter().map(|v| v.name).zip(best).collect())
}

/// A relay on a store, publishing to memory, until [`stop`](Self::stop): the relay of a quiet
/// outbox, which waits for work in its store's wake-up mode whenever it has caught up.
pub(crate) struct BackgroundRelay {
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<outbox_engine::Result<()>>,
}

impl BackgroundRelay {
    /// Starts it and gives it 500 ms to settle into waiting (and a replication stream to start).
    pub(crate) async fn start(store: &AnyStore, args: &Args) -> Result<Self, BoxError> {
        let mut options = RelayOptions::default();
        options.poll_interval = args.poll_interval;
        options.busy_poll_interval = args.busy_poll_interval;
        let relay =
            Relay::builder_shared(store.dyn_store(), Arc::new(MemoryPublisher::new())).options(options).build()?;
        let shutdown = CancellationToken::new();
        let running = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { relay.run(shutdown).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Self { shutdown, running })
    }

    /// Stops it and waits until it has.
    pub(crate) async fn stop(self) -> Result<(), BoxError> {
        self.shutdown.cancel();
        self.running.await??;
        Ok(())
    }
}

/// [`Drain::DeleteOnly`]: deletes the committed messages of a PostgreSQL store until stopped.
struct DeleteOnly {
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<Result<(), sqlx::Error>>,
}

impl DeleteOnly {
    fn start(store: &PostgresStore) -> Self {
        let m = store.messages_table();
        // Committed without waiting for the WAL flush, like a relay's acknowledgements.
        let delete = format!(
            "DELETE FROM {m} WHERE seq = ANY (ARRAY(SELECT seq FROM {m} ORDER BY seq LIMIT 1000)) \
             AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'"
        );
        let (pool, shutdown) = (store.pool().clone(), CancellationToken::new());
        let running = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                while !shutdown.is_cancelled() {
                    // A pause between deletes, as between a relay's batches: a few milliseconds' commits
                    // go together.
                    if sqlx::query(&delete).execute(&pool).await?.rows_affected() < 1000 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                Ok(())
            }
        });
        Self { shutdown, running }
    }

    async fn stop(self) -> Result<(), BoxError> {
        self.shutdown.cancel();
        self.running.await??;
        Ok(())
    }
}

pub(crate) async fn claim_cost(kind: &str, args: &Args, topic: &str) -> Result<(Duration, Duration), BoxError> {
    let store = AnyStore::open(kind, store_options(args).retention(Duration::from_secs(3600))).await?;
    let dyn_store = store.dyn_store();
    store.fill(messages(topic, 5_000, args.payload, args.keys), 1000, 2).await?;
    let sample = || async {
        let mut times = Vec::new();
        for _ in 0..50 {
            let owner = RelayId::new();
            let started = Instant::now();
            let claimed = dyn_store.claim(owner, 256, Duration::from_secs(60)).await?;
            times.push(started.elapsed());
            let ids: Vec<MessageId> = claimed.iter().map(|m| m.id).collect();
            dyn_store.release(owner, &ids).await?;
        }
        times.sort();
        Ok::<Duration, BoxError>(percentile(&times, 0.5))
    };
    let empty = sample().await?;
    let table = match &store {
        AnyStore::Postgres(s) => s.messages_table().to_owned(),
        AnyStore::MySql(_) | AnyStore::Sqlite(_) => store.messages_table(&sqlite_or_mysql_table(&store)),
    };
    store.add_old_rows(args.old_rows, &table).await?;
    let full = sample().await?;
    store.close().await?;
    Ok((empty, full))
}

pub(crate) fn sqlite_or_mysql_table(store: &AnyStore) -> String {
    // The table name is in the schema SQL's first CREATE TABLE statement.
    let schema = match store {
        AnyStore::MySql(s) => s.schema_sql().to_owned(),
        AnyStore::Sqlite(s) => s.schema_sql().to_owned(),
        AnyStore::Postgres(s) => s.schema_sql().to_owned(),
    };
    schema.split_whitespace().skip_while(|w| *w != "EXISTS").nth(1).unwrap_or_default().to_owned()
}

pub(crate) async fn idle_queries(store: &AnyStore, notifications: bool) -> Result<f64, BoxError> {
    let instrumented = Arc::new(Instrumented::new(store.dyn_store(), notifications));
    // 4 workers whatever --concurrency says: idle, only one of them may poll.
    let relay = Relay::builder_shared(instrumented.clone(), Arc::new(MemoryPublisher::new())).concurrency(4).build()?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = instrumented.claims.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let queries = instrumented.claims.load(Ordering::Relaxed) - before;
    shutdown.cancel();
    running.await??;
    Ok(queries as f64 / 10.0)
}
