//! `outbox` as an operator runs it: a child process per command, real databases and brokers.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use outbox::mysql::MySqlStore;
use outbox::postgres::PostgresStore;
use outbox::prelude::*;
use outbox::rabbitmq::{declare_queue, QueueType};
use outbox::StoreOptions;
use outbox_testkit::env::{backend, unique_name};

use common::{free_port, http_get, outbox, text, BIN};

/// Runs `outbox relay` (with `extra` arguments) until `done` says the brokers have everything, then
/// stops it with SIGTERM; returns its output after checking it exited 0.
async fn relay_until<F, Fut>(config: &Path, extra: &[&str], done: F) -> String
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("relay")
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    done().await;
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "relay exit: {:?}\n{}", output.status, text(&output));
    text(&output)
}

#[allow(clippy::too_many_lines)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipelines_relay_report_status_and_replay_dead_letters() {
    let (Some(pg), Some(my), Some(kafka), Some(amqp)) = (
        backend("OUTBOX_TEST_POSTGRES_URL", "PostgreSQL"),
        backend("OUTBOX_TEST_MYSQL_URL", "MySQL"),
        backend("OUTBOX_TEST_KAFKA_BROKERS", "Kafka"),
        backend("OUTBOX_TEST_AMQP_URL", "RabbitMQ"),
    ) else {
        return;
    };
    let (pg_prefix, my_prefix) = (unique_name("cli"), unique_name("cli"));
    let kafka_topic = unique_name("cli-orders");
    let (queue, audit_queue, missing_queue) =
        (unique_name("cli_customers"), unique_name("cli_audit"), unique_name("cli_missing"));
    declare_queue(&amqp, &queue, QueueType::Quorum).await.unwrap();
    declare_queue(&amqp, &audit_queue, QueueType::Quorum).await.unwrap();
    let dir = std::env::temp_dir().join(unique_name("outbox-cli"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("outbox.toml");
    let write_config = |audit_destination: &str| {
        std::fs::write(
            &config,
            format!(
                r#"
[pipelines.orders.store]
kind = "postgres"
url = "{pg}"
table_prefix = "{pg_prefix}"

[pipelines.orders.relay]
poll_interval_ms = 100

[pipelines.orders.publishers.kafka]
kind = "kafka"
brokers = "{kafka}"
destinations = {{ "orders.placed" = "{kafka_topic}" }}

[[pipelines.orders.routes]]
topic = "orders.*"
publisher = "kafka"

[pipelines.customers.store]
kind = "mysql"
url = "{my}"
table_prefix = "{my_prefix}"

[pipelines.customers.relay]
poll_interval_ms = 100

[pipelines.customers.publishers.rabbit]
kind = "rabbitmq"
url = "{amqp}"
destinations = {{ "customers.created" = "{queue}", "audit.event" = "{audit_destination}" }}

[[pipelines.customers.routes]]
topic = "*"
publisher = "rabbit"
"#
            ),
        )
        .unwrap();
    };
    write_config(&missing_queue);

    let migrated = outbox(&config, &["schema", "migrate"]);
    assert!(migrated.status.success(), "{}", text(&migrated));

    // Both databases get their messages, each with a row of their own in one transaction.
    let orders =
        PostgresStore::connect_with(&pg, StoreOptions::default().table_prefix(&pg_prefix).unwrap()).await.unwrap();
    let mut tx = orders.pool().begin().await.unwrap();
    for i in 0..20 {
        orders
            .enqueue(&mut *tx, NewMessage::new("orders.placed", format!("order {i}")).key(format!("o{}", i % 3)))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let customers =
        MySqlStore::connect_with(&my, StoreOptions::default().table_prefix(&my_prefix).unwrap()).await.unwrap();
    let mut tx = customers.pool().begin().await.unwrap();
    for i in 0..10 {
        customers.enqueue(&mut *tx, NewMessage::new("customers.created", format!("customer {i}"))).await.unwrap();
    }
    for i in 0..3 {
        customers.enqueue(&mut *tx, NewMessage::new("audit.event", format!("audit {i}"))).await.unwrap();
    }
    tx.commit().await.unwrap();

    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let out = relay_until(&config, &["--metrics-addr", &metrics_addr], || async {
        // Relayed: nothing pending in either database (the Kafka topic exists from then on).
        for _ in 0..600 {
            let (o, c) = (orders.stats().await.unwrap(), customers.stats().await.unwrap());
            if o.pending == 0 && c.pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (kafka, topic) = (kafka.clone(), kafka_topic.clone());
        let read =
            tokio::task::spawn_blocking(move || outbox::kafka::read_back(&kafka, &topic, 20, Duration::from_secs(60)));
        assert_eq!(read.await.unwrap().unwrap().len(), 20, "PostgreSQL -> Kafka");
        let read = outbox::rabbitmq::read_back(&amqp, &queue, 10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(read.len(), 10, "MariaDB -> RabbitMQ");
        // The audit events are unroutable (no such queue): dead letters.
        for _ in 0..600 {
            if customers.stats().await.unwrap().dead_letters == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Each pipeline's relay is registered and alive.
        let status = outbox(&config, &["status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        for pipeline in status["pipelines"].as_array().unwrap() {
            let relays = pipeline["relays"].as_array().unwrap();
            assert_eq!(relays.len(), 1, "one live relay: {pipeline}");
            assert_eq!(relays[0]["name"], pipeline["pipeline"], "{pipeline}");
        }
        assert_eq!(http_get(port, "/healthz").await.0, "HTTP/1.1 200 OK");
        let (status, body) = http_get(port, "/readyz").await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        let (_, metrics) = http_get(port, "/metrics").await;
        for line in [
            r#"outbox_messages_published_total{relay="orders",topic="orders.placed"} 20"#,
            r#"outbox_messages_published_total{relay="customers",topic="customers.created"} 10"#,
            r#"outbox_messages_dead_lettered_total{relay="customers",topic="audit.event"} 3"#,
        ] {
            assert!(metrics.lines().any(|l| l == line), "/metrics lacks {line}:\n{metrics}");
        }
    })
    .await;
    assert!(out.contains("orders: stopped; published 20"), "{out}");
    assert!(out.contains("customers: stopped; published 10"), "{out}");

    let status = outbox(&config, &["status", "--json"]);
    assert!(status.status.success(), "{}", text(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let by_name =
        |name: &str| status["pipelines"].as_array().unwrap().iter().find(|p| p["pipeline"] == name).cloned().unwrap();
    assert_eq!((by_name("orders")["pending"].as_u64(), by_name("orders")["dead_letters"].as_u64()), (Some(0), Some(0)));
    assert_eq!(
        (by_name("customers")["pending"].as_u64(), by_name("customers")["dead_letters"].as_u64()),
        (Some(0), Some(3))
    );
    assert!(
        status["pipelines"].as_array().unwrap().iter().all(|p| p["relays"].as_array().unwrap().is_empty()),
        "a relay that stopped leaves the registry: {status}"
    );

    let listed = outbox(&config, &["dead", "list", "--topic", "audit.event", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    let error = listed[0]["error"].as_str().unwrap().to_ascii_uppercase();
    for (filter, expected) in [
        (vec!["--error", error.as_str()], 3),
        (vec!["--error", "no such text"], 0),
        (vec!["--older-than", "1h"], 0),
        (vec!["--older-than", "0s"], 3),
    ] {
        let args = [&["dead", "list", "--topic", "audit.event", "--json"][..], &filter[..]].concat();
        let listed: serde_json::Value = serde_json::from_slice(&outbox(&config, &args).stdout).unwrap();
        assert_eq!(listed.as_array().unwrap().len(), expected, "dead list {filter:?}: {listed}");
    }
    let limited: serde_json::Value =
        serde_json::from_slice(&outbox(&config, &["dead", "list", "--limit", "2", "--json"]).stdout).unwrap();
    assert_eq!(limited.as_array().unwrap().len(), 2, "dead list --limit 2: {limited}");
    let shown = outbox(&config, &["dead", "show", &id]);
    assert!(text(&shown).contains("audit 0"), "{}", text(&shown));
    let unknown = outbox(&config, &["dead", "replay", "01a24a3d-3b1c-7528-ad89-525fedf59a47", "--yes"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
    assert!(text(&unknown).contains("no dead letter with id"), "{}", text(&unknown));

    // The route is fixed; the dead letters are replayed and arrive.
    write_config(&audit_queue);
    let replayed = outbox(&config, &["dead", "replay", "--all-matching", "--topic", "audit.event", "--yes"]);
    assert!(replayed.status.success(), "{}", text(&replayed));
    assert!(text(&replayed).contains("replay: 3 of 3"), "{}", text(&replayed));
    relay_until(&config, &[], || async {
        let read = outbox::rabbitmq::read_back(&amqp, &audit_queue, 3, Duration::from_secs(60)).await.unwrap();
        assert_eq!(read.len(), 3, "the replayed dead letters arrive");
    })
    .await;
    let stats = customers.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead_letters), (0, 0), "nothing pending, nothing lost");

    for q in [&queue, &audit_queue] {
        outbox::rabbitmq::delete_queue(&amqp, q).await.unwrap();
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_configurations_are_one_line_errors_with_exit_code_2() {
    let dir = std::env::temp_dir().join(unique_name("outbox-cli-bad"));
    std::fs::create_dir_all(&dir).unwrap();
    let good = r#"
[pipelines.local.store]
kind = "sqlite"
url = "sqlite::memory:"

[pipelines.local.publishers.streams]
kind = "redis"
url = "redis://:s3cret@127.0.0.1:6379"

[[pipelines.local.routes]]
topic = "*"
publisher = "streams"
"#;
    let cases = [
        ("syntax", good.replace("[pipelines.local.store]", "[pipelines.local.store"), "TOML parse error at line 2"),
        (
            "unknown key",
            good.replace("kind = \"sqlite\"", "kind = \"sqlite\"\npool = 4"),
            "unknown field: found `pool`",
        ),
        (
            "bad URL",
            good.replace("url = \"sqlite::memory:\"", "url = \"postgres://app:s3cret@db:port/x\"")
                .replace("kind = \"sqlite\"", "kind = \"postgres\""),
            "pipelines.local.store.url: not a Postgres URL",
        ),
        (
            "unknown publisher",
            good.replace("publisher = \"streams\"", "publisher = \"kafka\""),
            "unknown publisher \"kafka\"",
        ),
        (
            "wake-ups on SQLite",
            good.replace("kind = \"sqlite\"", "kind = \"sqlite\"\nwake_ups = \"replication\""),
            "store.wake_ups is for PostgreSQL only",
        ),
        (
            "unknown wake-ups",
            good.replace(
                "url = \"sqlite::memory:\"",
                "url = \"postgres://app:s3cret@127.0.0.1:1/x\"\nwake_ups = \"sometimes\"",
            )
            .replace("kind = \"sqlite\"", "kind = \"postgres\""),
            "wake_ups must be notify, replication or polling, not \"sometimes\"",
        ),
        (
            "SQL in a prefix",
            good.replace("kind = \"sqlite\"", "kind = \"sqlite\"\ntable_prefix = \"x; DROP TABLE y\""),
            "not a valid SQL identifier",
        ),
    ];
    for (name, body, expected) in cases {
        let path = dir.join(format!("{}.toml", name.replace(' ', "-")));
        std::fs::write(&path, body).unwrap();
        let output = outbox(&path, &["status"]);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{name}: one line: {stderr}");
        assert!(!stderr.contains("s3cret"), "{name}: a password in the error: {stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
