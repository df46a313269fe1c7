//! End to end: 1,000 customers created while the relay process is killed with `kill -9` and restarted
//! twice; the worker applies exactly 1,000 events (duplicate deliveries are skipped by the inbox).
#![cfg(feature = "seed-customers")]
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outbox_testkit::env::backend;
use sqlx::Connection;

fn urls() -> Option<(String, String)> {
    let db = backend("OUTBOX_TEST_MYSQL_URL", "MySQL / MariaDB");
    let amqp = backend("OUTBOX_TEST_AMQP_URL", "RabbitMQ");
    db.zip(amqp)
}

fn spawn(db: &str, amqp: &str, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_customers"))
        .args(args)
        .env("DATABASE_URL", db)
        .env("AMQP_URL", amqp)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn customers")
}

/// Kills every process it tracks when it is dropped, also when the test fails: a relay left running
/// would go on claiming the next run's messages and publish them to a queue nobody reads.
#[derive(Default)]
struct Reaper(Vec<u32>);

impl Reaper {
    fn track(&mut self, child: Child) -> Child {
        self.0.push(child.id());
        child
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

fn output(child: Child) -> String {
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "process failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_twice_loses_nothing_and_the_worker_applies_each_event_once() {
    let Some((db, amqp)) = urls() else { return };
    let mut conn = sqlx::MySqlConnection::connect(&db).await.unwrap();
    for table in ["customers", "customer_welcomes", "outbox_messages", "outbox_dead_letters", "outbox_inbox"] {
        sqlx::query(&format!("DROP TABLE IF EXISTS {table}")).execute(&mut conn).await.unwrap();
    }
    let queue = format!("customers_e2e_{}", std::process::id());
    let relay_args = ["relay", "--queue", &queue, "--lease-secs", "2"];

    let mut reaper = Reaper::default();
    let worker = reaper.track(spawn(&db, &amqp, &["worker", "--queue", &queue, "--expect", "1000"]));
    let mut relay = reaper.track(spawn(&db, &amqp, &relay_args));
    let mut app = reaper.track(spawn(&db, &amqp, &["app", "--queue", &queue, "--count", "1000"]));
    // Claims the relay holds: rows leased and not yet expired (the relay is the only one running).
    let leased = "SELECT COUNT(*) FROM outbox_messages WHERE locked_until > UTC_TIMESTAMP(6)";
    let mut kills_with_claims_held = Vec::new();
    for _ in 0..2 {
        // Kill the relay while it holds claims: wait until it has some.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let held: i64 = sqlx::query_scalar(leased).fetch_one(&mut conn).await.unwrap_or(0);
            let app_done = app.try_wait().unwrap().is_some();
            if held > 0 || app_done || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        relay.kill().unwrap(); // SIGKILL: no shutdown, claims left leased
        relay.wait().unwrap();
        let held: i64 = sqlx::query_scalar(leased).fetch_one(&mut conn).await.unwrap();
        kills_with_claims_held.push(held);
        relay = reaper.track(spawn(&db, &amqp, &relay_args));
        // Let the killed relay's leases (2 s) run out, so the next count is the new relay's.
        tokio::time::sleep(Duration::from_millis(2200)).await;
    }
    println!("rows leased by the relay at each kill: {kills_with_claims_held:?}");
    assert!(
        kills_with_claims_held.iter().any(|held| *held > 0),
        "no kill landed while the relay held claims (leased rows after each kill: {kills_with_claims_held:?})"
    );
    assert!(output(app).contains("created 1000 customers"));

    let started = Instant::now();
    let mut applied: i64 = 0;
    while applied < 1000 && started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        applied = sqlx::query_scalar("SELECT COUNT(*) FROM customer_welcomes").fetch_one(&mut conn).await.unwrap();
    }
    // Wait for the worker on every path (it exits by itself once all 1,000 are applied).
    let worker_out = if applied < 1000 {
        let mut worker = worker;
        worker.kill().unwrap();
        worker.wait().unwrap();
        String::new()
    } else {
        output(worker)
    };
    assert_eq!(applied, 1000, "events applied after {:?}", started.elapsed());
    println!("{worker_out}");
    assert!(worker_out.contains("applied 1000 events"), "{worker_out}");

    let welcomed: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM customer_welcomes").fetch_one(&mut conn).await.unwrap();
    let customers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM customers").fetch_one(&mut conn).await.unwrap();
    let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox_messages").fetch_one(&mut conn).await.unwrap();
    assert_eq!((customers, welcomed, pending), (1000, 1000, 0));

    // The last relay stops gracefully on SIGTERM.
    let status = Command::new("kill").args(["-TERM", &relay.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = output(relay);
    assert!(out.contains("relay: stopped"), "{out}");
    outbox::rabbitmq::delete_queue(&amqp, &queue).await.unwrap();
}
