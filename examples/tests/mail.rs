//! End to end: the mail-delivery scenario with an SMTP sink started (and stopped) by the test itself.
#![cfg(feature = "seed-mail")]
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_testkit::env::backend;
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The mails a sink received: recipients and data of each.
type Mailbag = Arc<Mutex<Vec<(Vec<String>, String)>>>;

/// A minimal SMTP server that accepts every mail and records its recipients and data.
struct Sink {
    mails: Mailbag,
    task: JoinHandle<()>,
}

impl Sink {
    async fn start(port: u16, mails: Mailbag) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let recorded = mails.clone();
        let task = tokio::spawn(async move {
            let mut sessions = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                sessions.spawn(session(stream, recorded.clone()));
            }
        });
        Self { mails, task }
    }

    fn stop(self) {
        self.task.abort();
    }
}

async fn session(stream: TcpStream, mails: Mailbag) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let _ = write.write_all(b"220 sink ESMTP\r\n").await;
    let mut rcpt = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            b"250 sink\r\n"
        } else if upper.starts_with("RCPT TO:") {
            rcpt.push(line[8..].trim().to_owned());
            b"250 OK\r\n"
        } else if upper.starts_with("DATA") {
            let _ = write.write_all(b"354 go ahead\r\n").await;
            let mut data = String::new();
            while let Ok(Some(l)) = lines.next_line().await {
                if l == "." {
                    break;
                }
                data.push_str(&l);
                data.push('\n');
            }
            mails.lock().unwrap().push((std::mem::take(&mut rcpt), data));
            b"250 queued\r\n"
        } else if upper.starts_with("QUIT") {
            let _ = write.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"250 OK\r\n"
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}

async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.1 request; returns the status code and the body (0 when the server is unreachable).
async fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else { return (0, String::new()) };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    if stream.read_to_string(&mut response).await.is_err() {
        return (0, String::new());
    }
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

async fn send(port: u16, subject: &str) -> Option<String> {
    let body = format!(
        r#"{{"from":"from@example.com","to":["to@example.com"],"subject":"{subject}","content":"some content"}}"#
    );
    let (status, body) = http(port, "POST", "/api/mail/send", &body).await;
    (status == 202)
        .then(|| serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_str().unwrap().to_owned())
}

async fn wait_status(port: u16, id: &str, want: &str, within: Duration) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let (_, body) = http(port, "GET", &format!("/api/mail/{id}"), "").await;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
            if v["status"] == want {
                return v;
            }
        }
        assert!(started.elapsed() < within, "delivery {id} is not {want} after {within:?}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn server(db: &str, http_port: u16, smtp_port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mail"))
        .args(["--listen", &format!("127.0.0.1:{http_port}"), "--max-attempts", "25", "--retry-ms", "20"])
        .env("DATABASE_URL", db)
        .env("SMTP_PORT", smtp_port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn wait_listening(port: u16) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "the mail server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn terminate(child: Child) -> String {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the server did not exit cleanly: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_is_sent_retried_parked_and_survives_sigterm() {
    let Some(db) = backend("OUTBOX_TEST_POSTGRES_URL", "PostgreSQL") else { return };
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    for table in ["mail_deliveries", "mail_messages", "mail_dead_letters", "mail_inbox"] {
        sqlx::query(&format!("DROP TABLE IF EXISTS {table}")).execute(&mut conn).await.unwrap();
    }
    let (smtp_port, http_port) = (free_port().await, free_port().await);
    let mails = Arc::new(Mutex::new(Vec::new()));
    let sink = Sink::start(smtp_port, mails.clone()).await;
    let mut app = server(&db, http_port, smtp_port);
    wait_listening(http_port).await;

    // Delivered: the catcher has it with its subject and recipient; the row is Sent.
    let id = send(http_port, "Test Subject").await.expect("accepted");
    wait_status(http_port, &id, "Sent", Duration::from_secs(20)).await;
    {
        let mails = sink.mails.lock().unwrap();
        assert_eq!(mails.len(), 1);
        assert!(mails[0].0.iter().any(|r| r.contains("to@example.com")), "{:?}", mails[0].0);
        assert!(mails[0].1.contains("Subject: Test Subject"), "{}", mails[0].1);
    }

    // Mail server down: 25 attempts, then Failed with the error, nothing left pending.
    sink.stop();
    let id = send(http_port, "Mail Server Is DOWN").await.expect("accepted");
    let failed = wait_status(http_port, &id, "Failed", Duration::from_secs(60)).await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("gave up after 25 attempts"), "{error}");
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM mail_dead_letters").fetch_one(&mut conn).await.unwrap();
    assert_eq!(attempts, 25);
    let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mail_messages").fetch_one(&mut conn).await.unwrap();
    assert_eq!(pending, 0);

    // The mail server is back: new mail flows again.
    let sink = Sink::start(smtp_port, mails.clone()).await;
    let id = send(http_port, "Back").await.expect("accepted");
    wait_status(http_port, &id, "Sent", Duration::from_secs(20)).await;

    // SIGTERM during a burst of 200 sends: every accepted mail ends Sent after a restart.
    let sent = Arc::new(AtomicUsize::new(0));
    let burst = tokio::spawn({
        let sent = sent.clone();
        async move {
            let mut accepted = Vec::new();
            for n in 0..200 {
                if let Some(id) = send(http_port, &format!("burst {n}")).await {
                    accepted.push(id);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            accepted
        }
    });
    // SIGTERM once the burst is under way: 20 mails accepted.
    let started = Instant::now();
    while sent.load(Ordering::Relaxed) < 20 {
        assert!(started.elapsed() < Duration::from_secs(60), "the burst did not start");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let out = terminate(app);
    assert!(out.contains("stopped gracefully"), "{out}");
    let accepted = burst.await.unwrap();
    assert!(!accepted.is_empty() && accepted.len() < 200, "SIGTERM landed mid-burst: {} accepted", accepted.len());
    app = server(&db, http_port, smtp_port);
    wait_listening(http_port).await;
    for id in &accepted {
        wait_status(http_port, id, "Sent", Duration::from_secs(60)).await;
    }
    println!("{} of 200 burst mails were accepted before SIGTERM; all of them were sent", accepted.len());
    terminate(app);
    sink.stop();
}
