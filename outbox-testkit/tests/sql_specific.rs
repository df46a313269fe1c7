//! Behaviour specific to the server databases: query plans, schemas, notifications, secrets.
#![cfg(all(feature = "postgres", feature = "mysql"))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_engine::{Dispatcher, Enqueue, KeySlice, NewMessage, Relay, RelayId, Store};
use outbox_sqlx::mysql::MySqlStore;
use outbox_sqlx::postgres::PostgresStore;
use outbox_sqlx::{error_from, StoreOptions};
use outbox_testkit::env::{backend, unique_name};
use outbox_testkit::postgres::{PostgresHarness, TEST_SCHEMA};

#[tokio::test]
async fn postgres_claim_uses_the_partial_index_with_many_published_rows() {
    let Some(h) = PostgresHarness::with_options(StoreOptions::default().retention(Duration::from_secs(3600))).await
    else {
        return;
    };
    let store = h.postgres_store();
    let table = store.messages_table();
    assert!(table.starts_with(&format!("\"{TEST_SCHEMA}\".")), "{table}");
    sqlx::query(&format!(
        "INSERT INTO {table} (id, topic, payload, published_at) \
         SELECT gen_random_uuid(), 't', '\\x00', now() FROM generate_series(1, 50000)"
    ))
    .execute(store.pool())
    .await
    .expect("insert published rows");
    sqlx::query(&format!("ANALYZE {table}")).execute(store.pool()).await.expect("analyze");
    let plan = store.explain_claim(256, None).await.expect("explain");
    assert!(plan.contains("_messages_pending"), "the claim does not use the partial pending index:\n{plan}");
    assert!(!plan.contains("Seq Scan on"), "the claim scans the table:\n{plan}");
}

/// A claim in a key slice filters on a hash the planner has no statistics for; with a keyed backlog
/// it must still walk the keyed index from the oldest row, not read and sort the whole backlog.
#[tokio::test]
async fn postgres_slice_claim_walks_the_keyed_index_over_a_keyed_backlog() {
    let Some(h) = PostgresHarness::new().await else { return };
    let store = h.postgres_store();
    let table = store.messages_table();
    sqlx::query(&format!(
        "INSERT INTO {table} (id, topic, msg_key, payload) \
         SELECT gen_random_uuid(), 't', 'key-' || (g % 10), '\\x00' FROM generate_series(1, 50000) g"
    ))
    .execute(store.pool())
    .await
    .expect("insert a keyed backlog");
    sqlx::query(&format!("ANALYZE {table}")).execute(store.pool()).await.expect("analyze");
    for slice in [None, KeySlice::new(1, 4)] {
        let plan = store.explain_claim(1000, slice).await.expect("explain");
        assert!(plan.contains("_messages_pending_keyed"), "slice {slice:?}: not the keyed index:\n{plan}");
        assert!(!plan.contains("Seq Scan on"), "slice {slice:?}: the claim scans the table:\n{plan}");
    }
}

/// Claims and acknowledgements commit with `synchronous_commit = off` by default (or durably when
/// asked); either way the setting is the statement's own and the connection keeps its default.
#[tokio::test]
async fn postgres_relay_commits_leave_the_connection_setting_alone() {
    let Some(url) = backend("OUTBOX_TEST_POSTGRES_URL", "PostgreSQL") else { return };
    for durable in [false, true] {
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url).await.expect("connect");
        let options = StoreOptions::default()
            .durable_relay_commits(durable)
            .schema(TEST_SCHEMA)
            .and_then(|o| o.table_prefix(&unique_name("sc")))
            .expect("names");
        let store = PostgresStore::new(pool.clone(), options).expect("store");
        store.migrate().await.expect("migrate");
        let mut tx = pool.begin().await.expect("begin");
        for i in 0..3 {
            store.enqueue(&mut *tx, NewMessage::new("t", vec![i])).await.expect("enqueue");
        }
        tx.commit().await.expect("commit");
        let owner = RelayId::new();
        let claimed = store.claim(owner, 10, Duration::from_secs(30)).await.expect("claim");
        assert_eq!(claimed.len(), 3, "durable: {durable}");
        let ids: Vec<_> = claimed.iter().map(|m| m.id).collect();
        store.acknowledge(&ids).await.expect("acknowledge");
        assert_eq!(store.stats().await.expect("stats").pending, 0, "durable: {durable}");
        let setting: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&pool).await.expect("show");
        assert_eq!(setting, "on", "the relay's statement changed the connection's setting (durable: {durable})");
    }
}

/// Claims rewrite every row they lease; the messages table leaves half of each page free so those
/// rewrites are HOT updates that touch no index (docs/benchmarks.md: a claim of 1,000 in ~7 ms
/// instead of ~19 ms).
#[tokio::test]
async fn postgres_messages_table_leaves_room_for_hot_lease_updates() {
    let Some(h) = PostgresHarness::new().await else { return };
    let store = h.postgres_store();
    let options: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT unnest(reloptions) FROM pg_class WHERE oid = '{}'::regclass",
        store.messages_table()
    ))
    .fetch_all(store.pool())
    .await
    .expect("reloptions");
    assert!(options.iter().any(|o| o == "fillfactor=50"), "messages table options: {options:?}");
}

/// After a full claim the next one starts above the newest row it took (it would otherwise step over
/// every leased row); a row that commits late with a lower `seq` must still be claimed soon after,
/// while claims keep coming back full.
#[tokio::test]
async fn postgres_claim_floor_never_strands_a_row_committed_late() {
    let Some(h) = PostgresHarness::new().await else { return };
    let store = h.postgres_store().clone();
    let mut late = store.pool().begin().await.expect("begin");
    let late_id = store.enqueue(&mut *late, NewMessage::new("t", "late")).await.expect("enqueue late");
    let mut tx = store.pool().begin().await.expect("begin");
    for i in 0..200u8 {
        store.enqueue(&mut *tx, NewMessage::new("t", vec![i])).await.expect("enqueue");
    }
    tx.commit().await.expect("commit");
    let owner = RelayId::new();
    let first = store.claim(owner, 10, Duration::from_secs(60)).await.expect("claim");
    assert_eq!(first.len(), 10);
    late.commit().await.expect("commit late"); // older seq than everything claimed: below the floor
    let started = Instant::now();
    let mut claims = 0;
    loop {
        let batch = store.claim(owner, 10, Duration::from_secs(60)).await.expect("claim");
        claims += 1;
        assert!(!batch.is_empty(), "the backlog ran dry before the late row was claimed");
        if batch.iter().any(|m| m.id == late_id) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the late row was not claimed in {claims} claims");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Claims came back full all along, so only the periodic walk from the oldest row found it.
    assert!(claims <= 19, "the late row took {claims} claims");
}

#[tokio::test]
async fn postgres_schema_and_table_names_are_validated_before_sql() {
    for bad in ["outbox; DROP TABLE x", "public.x", "x\"y"] {
        assert!(StoreOptions::default().schema(bad).is_err(), "{bad}");
        assert!(StoreOptions::default().table_prefix(bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn postgres_notification_wakes_an_idle_relay_at_commit() {
    let Some(h) = PostgresHarness::new().await else { return };
    let store = h.postgres_store().clone();
    let publisher = outbox_engine::memory::MemoryPublisher::new();
    let relay = Relay::builder(store.clone(), publisher.clone())
        .poll_interval(Duration::from_secs(30))
        .concurrency(1)
        .build()
        .expect("relay");
    let shutdown = outbox_engine::CancellationToken::new();
    let running = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await; // idle, LISTENing
    let started = Instant::now();
    let mut tx = store.pool().begin().await.expect("begin");
    store.enqueue(&mut *tx, NewMessage::new("t", "wake")).await.expect("enqueue");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(publisher.published_len(), 0, "published before the commit");
    tx.commit().await.expect("commit");
    while publisher.published_len() == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the relay was not woken by the commit");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let latency = started.elapsed() - Duration::from_millis(300);
    shutdown.cancel();
    running.await.expect("task").expect("run");
    assert!(latency < Duration::from_secs(5), "woken after {latency:?}, i.e. by polling, not by the notification");
}

/// Registers `store` as a relay waiting for notifications (its first wait does, and returns at once)
/// and lets the quick re-claims that follow a fresh registration run out, as a relay's would.
async fn wait_as_a_relay(store: &PostgresStore) {
    store.wait_for_work(Duration::from_secs(5)).await;
    for _ in 0..9 {
        store.wait_for_work(Duration::from_millis(700)).await;
    }
}

/// With `enqueue_notifications(false)` no enqueue path (one message, one with an idempotency key, a
/// duplicate key, a batch) notifies, and every message is stored and claimable; the default notifies.
#[tokio::test]
async fn postgres_enqueue_without_notifications_sends_none() {
    let Some(h) = PostgresHarness::new().await else { return };
    let store = h.postgres_store().clone();
    let quiet =
        PostgresStore::new(store.pool().clone(), store.options().clone().enqueue_notifications(false)).expect("store");
    let mut listener = sqlx::postgres::PgListener::connect_with(store.pool()).await.expect("listener");
    listener.listen(store.channel()).await.expect("listen");

    let mut tx = store.pool().begin().await.expect("begin");
    let one = quiet.enqueue(&mut *tx, NewMessage::new("t", "one")).await.expect("enqueue");
    let keyed = quiet.enqueue(&mut *tx, NewMessage::new("t", "keyed").idempotency_key("k-1")).await.expect("keyed");
    let again = quiet.enqueue(&mut *tx, NewMessage::new("t", "again").idempotency_key("k-1")).await.expect("again");
    assert_eq!(keyed, again, "the duplicate idempotency key returned another id");
    let batch = (0..3).map(|i| NewMessage::new("t", vec![i])).collect();
    let batch = quiet.enqueue_batch(&mut *tx, batch).await.expect("batch");
    tx.commit().await.expect("commit");
    let heard = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(heard.is_err(), "a commit without notifications notified: {heard:?}");

    let claimed = store.claim(RelayId::new(), 10, Duration::from_secs(30)).await.expect("claim");
    let mut expected = vec![one, keyed];
    expected.extend(batch);
    assert_eq!(claimed.iter().map(|m| m.id).collect::<Vec<_>>(), expected);

    // The default notifies only while a relay waits for it.
    let mut tx = store.pool().begin().await.expect("begin");
    store.enqueue(&mut *tx, NewMessage::new("t", "unheard")).await.expect("enqueue");
    tx.commit().await.expect("commit");
    let heard = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(heard.is_err(), "a commit notified while no relay waited: {heard:?}");
    wait_as_a_relay(&store).await;
    let mut tx = store.pool().begin().await.expect("begin");
    store.enqueue(&mut *tx, NewMessage::new("t", "loud")).await.expect("enqueue");
    tx.commit().await.expect("commit");
    let heard = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(matches!(heard, Ok(Ok(_))), "the default enqueue did not notify a waiting relay: {heard:?}");
}

/// `execute_with` writes the caller's row and the message in one statement: both commit or neither
/// does, the caller's parameters and `WITH` clause survive, the result is the caller's, the commit
/// notifies (unless notifications are off), a bad message stops the statement before it runs, and a
/// message with an idempotency key keeps its idempotency.
#[tokio::test]
async fn postgres_execute_with_writes_the_business_row_and_the_message_together() {
    let Some(h) = PostgresHarness::new().await else { return };
    let store = h.postgres_store().clone();
    let orders = format!("\"{TEST_SCHEMA}\".{}", unique_name("orders"));
    sqlx::query(&format!("CREATE TABLE {orders} (id BIGINT PRIMARY KEY, total BIGINT NOT NULL)"))
        .execute(store.pool())
        .await
        .expect("orders table");
    let insert = format!("INSERT INTO {orders} (id, total) VALUES ($1, $2)");
    let mut listener = sqlx::postgres::PgListener::connect_with(store.pool()).await.expect("listener");
    listener.listen(store.channel()).await.expect("listen");
    let count = |sql: String| {
        let pool = store.pool().clone();
        async move { sqlx::query_scalar::<_, i64>(&sql).fetch_one(&pool).await.expect("count") }
    };

    wait_as_a_relay(&store).await;
    let message = NewMessage::new("orders.placed", "order 1").key("order-1").header("kind", "placed");
    let id = message.id();
    let mut tx = store.pool().begin().await.expect("begin");
    let query = sqlx::query(&insert).bind(1_i64).bind(100_i64);
    let (done, stored) = store.execute_with(&mut tx, query, message).await.expect("execute_with");
    assert_eq!((done.rows_affected(), stored), (1, id));
    tx.commit().await.expect("commit");
    let heard = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(matches!(heard, Ok(Ok(_))), "the commit did not notify: {heard:?}");
    assert_eq!(count(format!("SELECT total FROM {orders} WHERE id = 1")).await, 100);
    let claimed = store.claim(RelayId::new(), 10, Duration::from_secs(30)).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    let m = &claimed[0];
    assert_eq!(
        (m.id, m.topic.as_str(), m.key.as_deref(), m.payload.as_slice()),
        (id, "orders.placed", Some("order-1"), &b"order 1"[..])
    );
    assert_eq!(m.headers.get("kind").map(String::as_str), Some("placed"));
    store.acknowledge(&[m.id]).await.expect("acknowledge");

    // The caller's own WITH clause and an UPDATE's row count; a rollback keeps neither write.
    let mut tx = store.pool().begin().await.expect("begin");
    let with_clause = format!(
        "WITH v AS (SELECT $1::bigint AS id, $2::bigint AS total) INSERT INTO {orders} SELECT id, total FROM v"
    );
    let query = sqlx::query(&with_clause).bind(2_i64).bind(200_i64);
    store.execute_with(&mut tx, query, NewMessage::new("t", "two")).await.expect("with clause");
    let update = format!("UPDATE {orders} SET total = total + $1");
    let (done, _) = store
        .execute_with(&mut tx, sqlx::query(&update).bind(1_i64), NewMessage::new("t", "three"))
        .await
        .expect("update");
    assert_eq!(done.rows_affected(), 2);
    tx.rollback().await.expect("rollback");
    assert_eq!(count(format!("SELECT count(*) FROM {orders}")).await, 1, "the rollback kept a business row");
    assert_eq!(store.stats().await.expect("stats").pending, 0, "the rollback kept a message");

    // A message the limits refuse: an error before the statement runs.
    let mut tx = store.pool().begin().await.expect("begin");
    let refused =
        store.execute_with(&mut tx, sqlx::query(&insert).bind(4_i64).bind(1_i64), NewMessage::new("", "x")).await;
    assert!(matches!(refused, Err(outbox_engine::Error::InvalidMessage { .. })), "{refused:?}");
    // A placeholder the statement does not bind would take one of the message's values: refused.
    let unbound = format!("INSERT INTO {orders} (id, total) VALUES ($1, $3)");
    let refused = store.execute_with(&mut tx, sqlx::query(&unbound).bind(4_i64), NewMessage::new("t", "x")).await;
    let error = refused.expect_err("a statement with an unbound placeholder ran");
    assert!(
        matches!(error, outbox_engine::Error::InvalidStatement { .. }),
        "the caller's mistake, not a store failure: {error:?}"
    );
    assert!(error.to_string().contains("refers to $3 but binds 1 values"), "{error}");
    tx.commit().await.expect("commit");
    assert_eq!(count(format!("SELECT count(*) FROM {orders} WHERE id = 4")).await, 0, "the statement ran");

    // An idempotency key stores one message across two statements; the business rows both land.
    let mut first_id = None;
    for order in [5_i64, 6] {
        let mut tx = store.pool().begin().await.expect("begin");
        let message = NewMessage::new("t", format!("{order}")).idempotency_key("once");
        let query = sqlx::query(&insert).bind(order).bind(1_i64);
        let (_, id) = store.execute_with(&mut tx, query, message).await.expect("keyed");
        tx.commit().await.expect("commit");
        assert_eq!(*first_id.get_or_insert(id), id, "the second message with the key got a new id");
    }
    assert_eq!(count(format!("SELECT count(*) FROM {orders} WHERE id IN (5, 6)")).await, 2);
    assert_eq!(store.stats().await.expect("stats").pending, 1);

    // Notifications off: the same statement, no notification.
    while tokio::time::timeout(Duration::from_millis(200), listener.recv()).await.is_ok() {}
    let quiet =
        PostgresStore::new(store.pool().clone(), store.options().clone().enqueue_notifications(false)).expect("store");
    let mut tx = store.pool().begin().await.expect("begin");
    quiet
        .execute_with(&mut tx, sqlx::query(&insert).bind(7_i64).bind(1_i64), NewMessage::new("t", "q"))
        .await
        .expect("quiet");
    tx.commit().await.expect("commit");
    let heard = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(heard.is_err(), "a store without notifications notified: {heard:?}");
    assert_eq!(store.stats().await.expect("stats").pending, 2);
}

/// The `Store::wait_for_work` contract: a commit wakes one waiting worker, not all of them (they would
/// all claim what one claim takes), and a commit with nobody waiting leaves a permit so the next wait
/// returns at once.
#[tokio::test]
async fn postgres_commit_wakes_one_waiter_or_leaves_a_permit() {
    let Some(h) = PostgresHarness::new().await else { return };
    let store = h.postgres_store().clone();
    let commit_one = |body: &'static str| {
        let store = store.clone();
        async move {
            let mut tx = store.pool().begin().await.expect("begin");
            store.enqueue(&mut *tx, NewMessage::new("t", body)).await.expect("enqueue");
            tx.commit().await.expect("commit");
        }
    };
    // The first waits start the LISTEN connection (which wakes every waiter once when it is up) and
    // register the store as waiting for notifications.
    wait_as_a_relay(&store).await;

    let woken = Arc::new(AtomicUsize::new(0));
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let (store, woken) = (store.clone(), woken.clone());
            tokio::spawn(async move {
                store.wait_for_work(Duration::from_secs(60)).await;
                woken.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(woken.load(Ordering::SeqCst), 0, "a waiter returned before any commit");
    commit_one("first").await;
    let started = Instant::now();
    while woken.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "no waiter was woken by the commit");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(woken.load(Ordering::SeqCst), 1, "one commit woke more than one waiter");
    for waiter in &waiters {
        waiter.abort();
    }

    commit_one("second").await;
    tokio::time::sleep(Duration::from_millis(500)).await; // the notification arrives while nobody waits
    let started = Instant::now();
    store.wait_for_work(Duration::from_secs(60)).await;
    assert!(started.elapsed() < Duration::from_secs(5), "a commit with nobody waiting left no permit");
}

#[tokio::test]
async fn passwords_never_reach_debug_output_or_errors() {
    let (Some(pg), Some(my)) =
        (backend("OUTBOX_TEST_POSTGRES_URL", "PostgreSQL"), backend("OUTBOX_TEST_MYSQL_URL", "MySQL / MariaDB"))
    else {
        return;
    };
    let secret = "s3cr3t-P4ss";
    // PostgreSQL here trusts loopback, so a URL with a password connects: its Debug must hide it.
    let with_password = pg.replacen("postgres@", &format!("postgres:{secret}@"), 1);
    let store = PostgresStore::connect(&with_password).await.expect("connect with a password");
    let debug = format!("{store:?}");
    assert!(!debug.contains(secret), "PostgresStore Debug shows the password: {debug}");

    for url in [
        format!("postgres://postgres:{secret}@127.0.0.1:1/test"),
        format!("mysql://root:{secret}@127.0.0.1:1/test"),
        my.replacen("root@", &format!("root:{secret}@"), 1),
        format!("postgres://postgres:{secret}@127.0.0.1:5432/test?sslmode=bogus"),
    ] {
        let err = if url.starts_with("postgres") {
            PostgresStore::connect(&url).await.map(|_| ()).expect_err("must fail")
        } else {
            MySqlStore::connect(&url).await.map(|_| ()).expect_err("must fail")
        };
        for text in [err.report(), format!("{err:?}"), format!("{:?}", std::error::Error::source(&err))] {
            assert!(!text.contains(secret), "an error shows the password: {text}");
        }
        assert!(err.report().contains("***"), "the error names the redacted URL: {}", err.report());
    }
}

#[tokio::test]
async fn mysql_claims_are_fenced_by_lease_owner_across_connections() {
    let Some(url) = backend("OUTBOX_TEST_MYSQL_URL", "MySQL / MariaDB") else { return };
    let options = StoreOptions::default().table_prefix(&unique_name("t")).expect("prefix");
    let store = MySqlStore::connect_with(&url, options).await.expect("connect");
    store.migrate().await.expect("migrate");
    store.migrate().await.expect("migrate is idempotent");
    let mut tx = store.pool().begin().await.map_err(error_from("begin")).expect("begin");
    store.enqueue(&mut *tx, NewMessage::new("t", "x")).await.expect("enqueue");
    tx.commit().await.expect("commit");
    let claimed = store.claim(RelayId::new(), 10, Duration::from_secs(30)).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert!(store.claim(RelayId::new(), 10, Duration::from_secs(30)).await.expect("claim").is_empty());
}

/// `WakeUps::Replication`: a commit wakes a waiting relay through its temporary replication slot,
/// without any notification (producers pay nothing), the stream carries no payload, a broken stream
/// comes back by itself, and the slot goes when the store does.
#[cfg(feature = "postgres-replication")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replication_wakes_a_waiting_relay_without_notifications() {
    let Some(h) = PostgresHarness::replication().await else { return };
    let store = h.postgres_store().clone();
    let mut listener = sqlx::postgres::PgListener::connect_with(store.pool()).await.expect("listener");
    listener.listen(store.channel()).await.expect("listen");
    let application = format!("outbox wake-ups {}", store.channel());
    let slot_query =
        "SELECT s.temporary FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid \
                      WHERE r.application_name = $1";
    let slot = |pool: sqlx::PgPool, application: String| async move {
        sqlx::query_scalar::<_, bool>(slot_query).bind(application).fetch_all(&pool).await.expect("slots")
    };

    // The first wait starts the stream; it wakes once when it starts, then its chase runs out.
    let started = Instant::now();
    while slot(store.pool().clone(), application.clone()).await.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "no replication slot streamed for the store");
        store.wait_for_work(Duration::from_millis(200)).await;
    }
    assert_eq!(slot(store.pool().clone(), application.clone()).await, vec![true], "one temporary slot");
    // Only `seq` travels in the stream: a wake-up needs no payload.
    let columns: Vec<String> =
        sqlx::query_scalar("SELECT unnest(attnames)::text FROM pg_publication_tables WHERE pubname = $1")
            .bind(store.channel())
            .fetch_all(store.pool())
            .await
            .expect("publication columns");
    assert_eq!(columns, ["seq"]);
    for _ in 0..12 {
        store.wait_for_work(Duration::from_millis(700)).await;
    }

    commit_wakes_a_waiting_relay(&store, &mut listener).await;

    // A stream that breaks (its WAL sender terminated, as by a restart) comes back by itself.
    let senders = "SELECT pid FROM pg_stat_replication WHERE application_name = $1";
    let old: i32 = sqlx::query_scalar(senders).bind(&application).fetch_one(store.pool()).await.expect("sender");
    sqlx::query("SELECT pg_terminate_backend($1)").bind(old).execute(store.pool()).await.expect("terminate");
    let broken = Instant::now();
    loop {
        let pids: Vec<i32> =
            sqlx::query_scalar(senders).bind(&application).fetch_all(store.pool()).await.expect("senders");
        if pids.len() == 1 && pids[0] != old {
            break;
        }
        assert!(broken.elapsed() < Duration::from_secs(20), "the stream did not come back: {pids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..12 {
        store.wait_for_work(Duration::from_millis(700)).await;
    }
    commit_wakes_a_waiting_relay(&store, &mut listener).await;

    // The slot is the session's: it goes with the store.
    let pool = store.pool().clone();
    drop((store, h));
    let dropped = Instant::now();
    while !slot(pool.clone(), application.clone()).await.is_empty() {
        assert!(dropped.elapsed() < Duration::from_secs(20), "the temporary slot outlived the store");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A relay waiting with a 60 s timeout is woken by a commit, no notification is sent, and the
/// message is claimable.
#[cfg(feature = "postgres-replication")]
async fn commit_wakes_a_waiting_relay(store: &PostgresStore, listener: &mut sqlx::postgres::PgListener) {
    let waiting = tokio::spawn({
        let store = store.clone();
        async move {
            let started = Instant::now();
            store.wait_for_work(Duration::from_secs(60)).await;
            started.elapsed()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let committed = Instant::now();
    let mut tx = store.pool().begin().await.expect("begin");
    let id = store.enqueue(&mut *tx, NewMessage::new("t", "woken")).await.expect("enqueue");
    tx.commit().await.expect("commit");
    let waited = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("not woken").expect("task");
    assert!(waited < Duration::from_secs(30), "the relay waited {waited:?}: woken by its timeout, not the commit");
    let woken_after = committed.elapsed();
    let heard = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(heard.is_err(), "a commit in replication mode notified: {heard:?}");
    let claimed = store.claim(RelayId::new(), 10, Duration::from_secs(30)).await.expect("claim");
    assert_eq!(claimed.iter().map(|m| m.id).collect::<Vec<_>>(), vec![id]);
    store.acknowledge(&[id]).await.expect("acknowledge");
    eprintln!("woken {woken_after:?} after the commit");
}
