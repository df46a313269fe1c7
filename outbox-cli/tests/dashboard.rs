//! The dashboard in a real browser: headless Chromium driven through chromedriver (fantoccini),
//! served by `outbox relay --dashboard-addr` and `outbox dashboard --read-only` child processes over a
//! real PostgreSQL pipeline that publishes to Kafka.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use outbox::postgres::PostgresStore;
use outbox::prelude::*;
use outbox::{Failure, MessageId, RelayId, Retry, StoreOptions};
use outbox_testkit::env::{backend, unique_name};

use common::{free_port, http, http_get, outbox, text, wait_for_port, BIN};

const TOKEN: &str = "dashboard-test-token";

/// Kills the child process when dropped (a failed assertion must not leave servers behind).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// chromedriver on a free port and a headless Chromium session through it.
async fn browser(chromedriver: &str) -> (Running, Client) {
    // The WebDriver client speaks HTTP through rustls; more than one crypto backend is linked in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let driver = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {chromedriver}: {e}"));
    let driver = Running(driver);
    wait_for_port(port).await;
    let mut chrome = serde_json::json!({
        "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1280,900",
        ],
    });
    if let Some(binary) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].iter().find(|b| PathBuf::from(b).exists())
    {
        chrome["binary"] = serde_json::json!(binary);
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), chrome);
    let client = ClientBuilder::rustls()
        .unwrap()
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap_or_else(|e| panic!("no Chromium session through chromedriver: {e}"));
    (driver, client)
}

/// The text of the element `css` selects, waiting up to 10 s for it (a form post loads a new page).
async fn text_of(client: &Client, css: &str) -> String {
    let element = client.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css(css)).await;
    match element {
        Ok(element) => element.text().await.unwrap(),
        Err(e) => panic!("no {css}: {e}\n{}", client.source().await.unwrap_or_default()),
    }
}

async fn count(client: &Client, css: &str) -> usize {
    client.find_all(Locator::Css(css)).await.unwrap().len()
}

/// Saves a screenshot under `target/screenshots`, or over the ones the docs show when
/// `OUTBOX_UPDATE_SCREENSHOTS=1`.
async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    let into_docs = std::env::var("OUTBOX_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(if into_docs {
        "../docs/screenshots"
    } else {
        "../target/screenshots"
    });
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

#[allow(clippy::too_many_lines)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_browser() {
    let (Some(pg), Some(kafka), Some(chromedriver)) = (
        backend("OUTBOX_TEST_POSTGRES_URL", "PostgreSQL"),
        backend("OUTBOX_TEST_KAFKA_BROKERS", "Kafka"),
        backend("OUTBOX_TEST_CHROMEDRIVER", "chromedriver (Debian's chromium-driver)"),
    ) else {
        return;
    };
    let prefix = unique_name("dash");
    let topic = unique_name("dash-audit");
    let dir = std::env::temp_dir().join(unique_name("outbox-dashboard"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("outbox.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[pipelines.orders.store]
kind = "postgres"
url = "{pg}"
table_prefix = "{prefix}"

[pipelines.orders.relay]
poll_interval_ms = 100

[pipelines.orders.publishers.kafka]
kind = "kafka"
brokers = "{kafka}"
destinations = {{ "audit.event" = "{topic}" }}

[[pipelines.orders.routes]]
topic = "*"
publisher = "kafka"
"#
        ),
    )
    .unwrap();
    let migrated = outbox(&config, &["schema", "migrate"]);
    assert!(migrated.status.success(), "{}", text(&migrated));

    // What the pages must show: 5 scheduled messages, a key held back by its failed head with 2
    // behind it, 4 dead letters (one error and one payload carrying markup).
    let store = PostgresStore::connect_with(&pg, StoreOptions::default().table_prefix(&prefix).unwrap()).await.unwrap();
    let hour = Duration::from_secs(3600);
    let mut tx = store.pool().begin().await.unwrap();
    for i in 0..5 {
        store.enqueue(&mut *tx, NewMessage::new("orders.placed", format!("later {i}")).delay(hour)).await.unwrap();
    }
    let mut blocked = Vec::new();
    for i in 0..3 {
        blocked.push(
            store.enqueue(&mut *tx, NewMessage::new("orders.placed", format!("o {i}")).key("order-42")).await.unwrap(),
        );
    }
    tx.commit().await.unwrap();
    let owner = RelayId::new();
    assert_eq!(store.claim(owner, 10, hour).await.unwrap().len(), 3);
    let failed = Retry { id: blocked[0], error: "timeout <b>broker</b>".into(), delay: hour };
    store.reschedule(owner, &[failed]).await.unwrap();
    store.release(owner, &blocked[1..]).await.unwrap();
    let mut tx = store.pool().begin().await.unwrap();
    let mut dead = Vec::new();
    for i in 0..4 {
        let payload = serde_json::json!({ "n": i, "note": "<img src=x onerror=window.__xss=2>" });
        dead.push(store.enqueue(&mut *tx, NewMessage::json("audit.event", &payload).unwrap()).await.unwrap());
    }
    tx.commit().await.unwrap();
    assert_eq!(store.claim(owner, 10, hour).await.unwrap().len(), 4, "the dead letters to be");
    let failures: Vec<Failure> = dead
        .iter()
        .enumerate()
        .map(|(i, id)| Failure {
            id: *id,
            error: if i == 0 {
                "broker said <script>window.__xss=1</script>".into()
            } else {
                "unknown topic or partition".into()
            },
        })
        .collect();
    store.dead_letter(owner, &failures).await.unwrap();
    let admin = store.admin().unwrap();

    // The relay process serves the dashboard, behind a token.
    let port = free_port();
    let relay = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["relay", "--dashboard-addr", &format!("127.0.0.1:{port}"), "--sample-every", "1s"])
        .env("OUTBOX_DASHBOARD_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut relay = Running(relay);
    wait_for_port(port).await;
    let (status, body) = http_get(port, "/").await;
    assert!(status.contains(" 401 "), "no token: {status}");
    assert!(body.contains("token"), "{body}");
    let (status, _) = http(port, "GET", "/", &["Authorization: Bearer wrong"], "").await;
    assert!(status.contains(" 401 "), "a wrong token: {status}");
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let (status, _) = http(port, "GET", "/", &[&bearer], "").await;
    assert!(status.contains(" 200 "), "the token: {status}");
    let forged = format!("action=purge&ids={}&confirmed=1&csrf=guessed", dead[3]);
    let (status, body) = http(port, "POST", "/pipelines/orders/dead-actions", &[&bearer], &forged).await;
    assert!(status.contains(" 403 ") && body.contains("CSRF"), "a POST without the form's token: {status} {body}");
    for (path, reason) in [
        ("/pipelines/orders/dead/not-a-uuid", "not a message id"),
        ("/pipelines/orders/dead?older_than=5x", "older_than"),
        ("/pipelines/orders/messages?state=bogus", "expected pending, retrying or scheduled"),
        ("/pipelines/orders/messages?after=abc", "not a page cursor"),
    ] {
        let (status, body) = http(port, "GET", path, &[&bearer], "").await;
        assert!(status.contains(" 400 "), "{path}: {status}");
        assert!(body.contains(reason), "{path}: {body}");
    }

    // A few samples for the overview's charts, and the relay's first heartbeat.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_driver, client) = browser(&chromedriver).await;
    let base = format!("http://127.0.0.1:{port}");
    client.goto(&format!("{base}/login?token={TOKEN}")).await.unwrap();
    assert_eq!(client.current_url().await.unwrap().path(), "/", "the login goes to the overview");
    for (figure, expected) in [("pending", "8"), ("retrying", "1"), ("scheduled", "5"), ("dead", "4"), ("relays", "1")]
    {
        assert_eq!(text_of(&client, &format!("#pipeline-orders .{figure}")).await, expected, "overview: {figure}");
    }
    screenshot(&client, "dashboard-overview.png").await;

    // A search finds the dead letters whose error matches.
    client.goto(&format!("{base}/pipelines/orders/dead?error=unknown")).await.unwrap();
    assert_eq!(text_of(&client, "#matching").await, "3");
    assert_eq!(count(&client, "table.dead input[name=ids]").await, 3);
    client.goto(&format!("{base}/pipelines/orders/dead")).await.unwrap();
    assert_eq!(count(&client, "table.dead input[name=ids]").await, 4);
    screenshot(&client, "dashboard-dead-letters.png").await;

    // Markup in an error or a payload is shown as text, never run.
    client.goto(&format!("{base}/pipelines/orders/dead/{}", dead[0])).await.unwrap();
    assert_eq!(text_of(&client, "#error").await, "broker said <script>window.__xss=1</script>");
    assert!(text_of(&client, "#payload").await.contains("<img src=x onerror=window.__xss=2>"));
    let ran = client.execute("return window.__xss === undefined", vec![]).await.unwrap();
    assert_eq!(ran, serde_json::json!(true), "markup from the outbox ran in the page");
    screenshot(&client, "dashboard-dead-letter.png").await;

    // Replay from the detail page: asked first, then done; the relay publishes it to Kafka.
    client.find(Locator::Css("button.action[value=replay]")).await.unwrap().click().await.unwrap();
    assert!(text_of(&client, "#question").await.starts_with("replay 1 dead letter(s)"));
    client.find(Locator::Css("button.confirm")).await.unwrap().click().await.unwrap();
    assert_eq!(text_of(&client, "#done").await, "replay: 1 dead letter(s) changed");
    assert!(admin.dead_letter_by_id(dead[0]).await.unwrap().is_none(), "a replayed dead letter leaves the list");
    let (brokers, read_topic) = (kafka.clone(), topic.clone());
    let read = tokio::task::spawn_blocking(move || {
        outbox::kafka::read_back(&brokers, &read_topic, 1, Duration::from_secs(60))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(read.iter().map(|r| r.id).collect::<Vec<_>>(), [Some(dead[0])], "the replayed message reached Kafka");

    // Purge two selected ones: asked first, then exactly those two are gone.
    client.goto(&format!("{base}/pipelines/orders/dead?error=unknown")).await.unwrap();
    let boxes = client.find_all(Locator::Css("table.dead input[name=ids]")).await.unwrap();
    let mut chosen = Vec::new();
    for checkbox in &boxes[..2] {
        chosen.push(checkbox.attr("value").await.unwrap().unwrap().parse::<MessageId>().unwrap());
        checkbox.click().await.unwrap();
    }
    client.find(Locator::Css("#selected button.action[value=purge]")).await.unwrap().click().await.unwrap();
    assert!(text_of(&client, "#question").await.starts_with("purge 2 dead letter(s)"));
    client.find(Locator::Css("button.confirm")).await.unwrap().click().await.unwrap();
    assert_eq!(text_of(&client, "#done").await, "purge: 2 dead letter(s) changed");
    for id in &dead[1..] {
        let left = admin.dead_letter_by_id(*id).await.unwrap().is_some();
        assert_eq!(left, !chosen.contains(id), "dead letter {id}: purged only if selected");
    }

    // The blocked key, its head's error and the count behind it.
    client.goto(&format!("{base}/pipelines/orders/blocked")).await.unwrap();
    assert_eq!(text_of(&client, "table.blocked td.key").await, "order-42");
    assert_eq!(text_of(&client, "table.blocked td.waiting").await, "2");
    assert_eq!(text_of(&client, "table.blocked td.error").await, "timeout <b>broker</b>");

    // The relay process is listed with its heartbeat.
    client.goto(&format!("{base}/relays")).await.unwrap();
    assert_eq!(count(&client, "table.relays tr").await, 2, "a header and the one relay");
    assert_eq!(text_of(&client, "table.relays td").await, "orders", "the relay is named after its pipeline");

    // A read-only dashboard offers no action and refuses a forged one.
    let read_only_port = free_port();
    let read_only = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["dashboard", "--addr", &format!("127.0.0.1:{read_only_port}"), "--read-only"])
        .env_remove("OUTBOX_DASHBOARD_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _read_only = Running(read_only);
    wait_for_port(read_only_port).await;
    client.goto(&format!("http://127.0.0.1:{read_only_port}/pipelines/orders/dead")).await.unwrap();
    assert_eq!(count(&client, "table.dead tr").await, 2, "the header and the one dead letter left");
    assert_eq!(count(&client, "button.action").await + count(&client, "input[name=ids]").await, 0, "no action offered");
    client.goto(&format!("http://127.0.0.1:{read_only_port}/pipelines/orders/dead/{}", dead[3])).await.unwrap();
    assert_eq!(count(&client, "button.action").await, 0, "no action on the detail page");
    let left = if chosen.contains(&dead[1]) { dead[3] } else { dead[1] };
    let forged = format!("action=purge&ids={left}&confirmed=1");
    let (status, body) = http(read_only_port, "POST", "/pipelines/orders/dead-actions", &[], &forged).await;
    assert!(status.contains(" 403 ") && body.contains("read-only"), "{status} {body}");
    assert!(admin.dead_letter_by_id(left).await.unwrap().is_some(), "a refused action changed nothing");
    let _ = client.close().await;

    // SIGTERM: the relay (and its dashboard) stop cleanly.
    let status = Command::new("kill").args(["-TERM", &relay.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = std::mem::replace(&mut relay.0, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
    assert!(output.status.success(), "relay exit: {:?}\n{}", output.status, text(&output));
    assert!(
        text(&output).contains("dashboard: replay in pipeline orders: 1 dead letter(s) changed"),
        "{}",
        text(&output)
    );
}
