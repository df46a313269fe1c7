//! How fast the dashboard answers on a big outbox: 1,000,000 pending messages and 100,000 dead
//! letters in PostgreSQL (`OUTBOX_TEST_POSTGRES_URL`), each page requested 20 times by HTTP from an
//! `outbox dashboard` child process; prints p50 / p99 per page, the sampler's own query time, and the
//! plans of the page queries.
//!
//! ```sh
//! cargo bench -p outbox-cli --bench dashboard
//! ```
#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outbox::postgres::PostgresStore;
use outbox::sqlx;
use outbox::{Store, StoreOptions};

const PENDING: i64 = 1_000_000;
const DEAD: i64 = 100_000;
const ROUNDS: usize = 20;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let Ok(pg) = std::env::var("OUTBOX_TEST_POSTGRES_URL") else {
        eprintln!("dashboard bench: set OUTBOX_TEST_POSTGRES_URL (scripts/test-services.sh prints it)");
        std::process::exit(2);
    };
    let prefix = format!("dashbench_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("outbox.toml");
    std::fs::write(
        &config,
        format!(
            "[pipelines.big.store]\nkind = \"postgres\"\nurl = \"{pg}\"\ntable_prefix = \"{prefix}\"\n\n\
             [pipelines.big.publishers.none]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n\n\
             [[pipelines.big.routes]]\ntopic = \"*\"\npublisher = \"none\"\n"
        ),
    )
    .unwrap();
    let migrated = common::outbox(&config, &["schema", "migrate"]);
    assert!(migrated.status.success(), "{}", common::text(&migrated));
    let store = PostgresStore::connect_with(&pg, StoreOptions::default().table_prefix(&prefix).unwrap()).await.unwrap();
    let (m, d) = (format!("{prefix}_messages"), format!("{prefix}_dead_letters"));
    let filled = Instant::now();
    // Pending: keyless and keyed across 10,000 keys; every 100th failed once and waits an hour.
    sqlx::query(&format!(
        "INSERT INTO {m} (id, topic, msg_key, payload, attempts, last_error, available_at) \
         SELECT gen_random_uuid(), 'orders.placed', CASE WHEN i % 2 = 0 THEN 'k' || (i % 10000) END, \
                convert_to('{{\"n\":' || i || '}}', 'UTF8'), (i % 100 = 0)::int, \
                CASE WHEN i % 100 = 0 THEN 'timeout' END, now() + CASE WHEN i % 100 = 0 THEN interval '1 hour' ELSE interval '0' END \
         FROM generate_series(1, {PENDING}) AS i"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(&format!(
        "INSERT INTO {d} (id, topic, msg_key, payload, created_at, attempts, error, dead_at) \
         SELECT gen_random_uuid(), CASE WHEN i % 10 = 0 THEN 'audit.event' ELSE 'orders.placed' END, NULL, \
                convert_to('{{\"n\":' || i || '}}', 'UTF8'), now(), 25, \
                CASE WHEN i % 1000 = 0 THEN 'unknown topic' ELSE 'timeout after 25 attempts' END, \
                now() - (i || ' seconds')::interval \
         FROM generate_series(1, {DEAD}) AS i"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(&format!("ANALYZE {m}")).execute(store.pool()).await.unwrap();
    sqlx::query(&format!("ANALYZE {d}")).execute(store.pool()).await.unwrap();
    println!(
        "dashboard bench: {PENDING} pending and {DEAD} dead rows written in {:.1} s",
        filled.elapsed().as_secs_f64()
    );

    let mut stats_times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        store.stats().await.unwrap();
        stats_times.push(started.elapsed());
    }
    stats_times.sort();
    println!(
        "  sampler: store.stats() (read every --sample-every, 5 s by default): p50 {:.1} ms",
        percentile(&stats_times, 0.5)
    );

    let port = common::free_port();
    let mut server = Command::new(common::BIN)
        .arg("--config")
        .arg(&config)
        .args(["dashboard", "--addr", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_for_port(port).await;
    let dead_id: uuid::Uuid = sqlx::query_scalar(&format!("SELECT id FROM {d} ORDER BY seq DESC LIMIT 1"))
        .fetch_one(store.pool())
        .await
        .unwrap();
    let pages = [
        ("overview", "/".to_owned()),
        ("dead letters, first page and count", "/pipelines/big/dead".to_owned()),
        ("dead letters, topic search", "/pipelines/big/dead?topic=audit.event".to_owned()),
        ("dead letters, error search", "/pipelines/big/dead?error=unknown".to_owned()),
        ("dead letters, older than 1d", "/pipelines/big/dead?older_than=1d".to_owned()),
        ("dead letter detail", format!("/pipelines/big/dead/{dead_id}")),
        ("messages, pending, first page", "/pipelines/big/messages".to_owned()),
        ("messages, retrying", "/pipelines/big/messages?state=retrying".to_owned()),
        ("messages, one key", "/pipelines/big/messages?key=k42".to_owned()),
        ("blocked keys", "/pipelines/big/blocked".to_owned()),
    ];
    println!("  {:<40} {:>9} {:>9}", "page (20 requests)", "p50 ms", "p99 ms");
    for (name, path) in &pages {
        let mut times = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let (status, _) = common::http_get(port, path).await;
            times.push(started.elapsed());
            assert!(status.contains(" 200 "), "{path}: {status}");
        }
        times.sort();
        println!("  {name:<40} {:>9.1} {:>9.1}", percentile(&times, 0.5), percentile(&times, 0.99));
    }
    let _ = server.kill();
    let _ = server.wait();

    println!("  plans:");
    for (name, sql) in [
        ("dead letters, first page", format!("SELECT * FROM {d} WHERE 1 = 1 ORDER BY seq LIMIT 51")),
        (
            "dead letters, topic search",
            format!("SELECT * FROM {d} WHERE 1 = 1 AND topic = 'audit.event' ORDER BY seq LIMIT 51"),
        ),
        ("dead letter by id", format!("SELECT * FROM {d} WHERE id = '{dead_id}'")),
        ("messages, first page", format!("SELECT * FROM {m} WHERE published_at IS NULL ORDER BY seq LIMIT 51")),
    ] {
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}")).fetch_all(store.pool()).await.unwrap();
        println!("    {name}: {}", plan.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" | "));
    }
    for table in [&m, &d] {
        sqlx::query(&format!("DROP TABLE {table}")).execute(store.pool()).await.unwrap();
    }
    sqlx::query(&format!("DROP TABLE {prefix}_inbox, {prefix}_relays, {prefix}_waiters"))
        .execute(store.pool())
        .await
        .unwrap();
}
