//! End to end: the library-integration scenario on a fresh PostgreSQL database.
#![cfg(feature = "seed-library")]
#![allow(clippy::unwrap_used)]

use std::process::Command;

use outbox::postgres::PostgresStore;
use outbox::StoreOptions;
use outbox_testkit::env::backend;
use sqlx::{Connection, PgPool};

fn run(db: &str, kafka: &str, topic: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_library"))
        .args(args)
        .env("DATABASE_URL", db)
        .env("KAFKA_BROKERS", kafka)
        .env("KAFKA_TOPIC", topic)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "library {args:?} failed: {}{}", stdout, String::from_utf8_lossy(&out.stderr));
    stdout
}

#[tokio::test]
async fn the_checked_in_migration_is_the_sql_the_sdk_hands_out() {
    let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://localhost/unused").unwrap();
    let store = PostgresStore::new(pool, StoreOptions::default().table_prefix("library").unwrap()).unwrap();
    // The service's migrations, in order: the SDK's first schema, then the relay registry, the
    // notification waiters and the index of failed messages it added.
    let files = [
        include_str!("../migrations/20261124000000_outbox.sql"),
        include_str!("../migrations/20261206000000_outbox_relays.sql"),
        include_str!("../migrations/20261206100000_outbox_waiters.sql"),
        include_str!("../migrations/20261206200000_outbox_failed_index.sql"),
    ];
    let applied: Vec<&str> = files.iter().map(|f| f.trim()).collect();
    assert_eq!(applied.join("\n"), store.schema_sql().trim(), "add a migration with what schema_sql() gained");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_enqueue_route_dead_letter_and_replay() {
    let (Some(base), Some(kafka)) =
        (backend("OUTBOX_TEST_POSTGRES_URL", "PostgreSQL"), backend("OUTBOX_TEST_KAFKA_BROKERS", "Kafka"))
    else {
        return;
    };
    // A fresh, empty database.
    let name = format!("outbox_library_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    let db = format!("{prefix}/{name}");
    let topic = format!("library_orders_{}", std::process::id());

    assert!(run(&db, &kafka, &topic, &["migrate"]).contains("migrations applied: 4"));
    assert!(run(&db, &kafka, &topic, &["migrate"]).contains("migrations applied: 4"), "a second run is a no-op");

    let out = run(&db, &kafka, &topic, &["run", "--invoice-service", "down"]);
    assert!(out.contains("published 5") && out.contains("dead-lettered 3"), "{out}");

    let pool = PgPool::connect(&db).await.unwrap();
    let dead: Vec<(String, String)> =
        sqlx::query_as("SELECT topic, error FROM library_dead_letters ORDER BY seq").fetch_all(&pool).await.unwrap();
    assert_eq!(dead.len(), 3, "the failing handler's messages are in the dead-letter table");
    assert!(
        dead.iter().all(|(t, e)| t == "commands.send_invoice" && e.contains("invoice service unavailable")),
        "{dead:?}"
    );
    assert!(run(&db, &kafka, &topic, &["dead-letters"]).contains("3 dead letters"));

    let out = run(&db, &kafka, &topic, &["replay", "--invoice-service", "up"]);
    assert!(out.contains("replayed 3") && out.matches("invoice sent for").count() == 3, "{out}");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM library_dead_letters").fetch_one(&pool).await.unwrap();
    assert_eq!(left, 0);

    let received = tokio::task::spawn_blocking(move || {
        outbox::kafka::read_back(&kafka, &topic, 5, std::time::Duration::from_secs(30))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(received.len(), 5, "the events went to Kafka");
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await.unwrap();
}
