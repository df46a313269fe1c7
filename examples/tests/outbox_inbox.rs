//! End to end: every message is processed once although some are delivered twice (the consumer crashes
//! before acknowledging, and its unacknowledged entries are delivered again).
#![cfg(feature = "seed-outbox-inbox")]
#![allow(clippy::unwrap_used)]

use std::process::Command;

use outbox_testkit::env::backend;
use sqlx::Connection;

fn run(db: &str, redis: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_outbox_inbox"))
        .args(args)
        .env("DATABASE_URL", db)
        .env("REDIS_URL", redis)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_messages_are_processed_once() {
    let (Some(db), Some(redis)) =
        (backend("OUTBOX_TEST_POSTGRES_URL", "PostgreSQL"), backend("OUTBOX_TEST_REDIS_URL", "Redis"))
    else {
        return;
    };
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    for table in ["notes", "note_projections", "notes_messages", "notes_dead_letters", "notes_inbox"] {
        sqlx::query(&format!("DROP TABLE IF EXISTS {table}")).execute(&mut conn).await.unwrap();
    }
    let stream = format!("notes_e2e_{}", std::process::id());

    let (ok, out) = run(&db, &redis, &["producer", "--stream", &stream, "--count", "200"]);
    assert!(ok, "{out}");
    assert!(out.contains("wrote 200 notes; outbox backlog 200 pending"), "{out}");
    assert!(out.contains("relayed 200") && out.contains("backlog now 0 pending"), "{out}");

    let (ok, out) = run(&db, &redis, &["consumer", "--stream", &stream, "--crash-after", "55"]);
    assert!(!ok && out.contains("crashing after 55 messages, 5 not acknowledged"), "{out}");

    let (ok, out) = run(&db, &redis, &["consumer", "--stream", &stream, "--expect", "145"]);
    assert!(ok, "{out}");
    assert!(out.contains("processed 145, skipped 5 duplicates; 0 unacknowledged"), "{out}");

    let projected: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM note_projections").fetch_one(&mut conn).await.unwrap();
    let inbox: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notes_inbox").fetch_one(&mut conn).await.unwrap();
    assert_eq!((projected, inbox), (200, 200), "each of the 200 messages applied exactly once");
    let client = redis::Client::open(redis.as_str()).unwrap();
    let mut r = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("DEL").arg(&stream).query_async(&mut r).await.unwrap();
}
