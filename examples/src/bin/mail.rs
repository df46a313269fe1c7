//! Seed scenario "mail delivery" (PostgreSQL + a custom SMTP publisher), one process with the HTTP API
//! and the relay:
//!
//! - `POST /api/mail/send` with `{"from", "to": [..], "subject", "content"}` writes a `mail_deliveries`
//!   row (status `Pending`) and an outbox message in ONE transaction, and answers `202 {"id"}`;
//! - the relay's publisher (written here with lettre) sends the mail over SMTP and marks the row `Sent`;
//! - while the mail server is down, attempts are retried by the policy; after the last one the
//!   `on_dead_letter` hook marks the row `Failed` with the error text;
//! - `GET /api/mail/{id}` shows the status; SIGTERM / Ctrl-C stop the API and the relay gracefully.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test SMTP_HOST=127.0.0.1 SMTP_PORT=1025 \
//!   cargo run -p outbox-examples --features seed-mail --bin mail -- --listen 127.0.0.1:3080
//! curl -X POST localhost:3080/api/mail/send -H 'content-type: application/json' \
//!   -d '{"from":"from@example.com","to":["to@example.com"],"subject":"Hi","content":"some content"}'
//! ```
//! Options: `--listen ADDR`, `--max-attempts N` (default 25), `--retry-ms N` (first retry delay,
//! default 1000; doubles up to 8x).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use outbox::postgres::PostgresStore;
use outbox::StoreOptions;
use outbox::{
    async_trait, shutdown_on_signal, DeadLetterHook, Dispatcher, Enqueue, Message, NewMessage, PublishError,
    PublishOne, Relay, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SendMail {
    from: String,
    to: Vec<String>,
    subject: String,
    content: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct MailJob {
    delivery_id: Uuid,
    mail: SendMail,
}

/// The custom publisher: sends the mail over SMTP, then marks the delivery `Sent`.
#[derive(Debug)]
struct SmtpPublisher {
    smtp: AsyncSmtpTransport<Tokio1Executor>,
    pool: PgPool,
}

fn mailbox(address: &str) -> Result<Mailbox, PublishError> {
    address.parse().map_err(|e| PublishError::permanent(format!("invalid address {address:?}: {e}")))
}

#[async_trait]
impl PublishOne for SmtpPublisher {
    async fn publish_one(&self, message: &Message) -> Result<(), PublishError> {
        let job: MailJob = message.json().map_err(PublishError::permanent)?;
        let mut builder = lettre::Message::builder().from(mailbox(&job.mail.from)?).subject(job.mail.subject.clone());
        for to in &job.mail.to {
            builder = builder.to(mailbox(to)?);
        }
        let email = builder.body(job.mail.content.clone()).map_err(PublishError::permanent)?;
        match self.smtp.send(email).await {
            Ok(_) => {}
            Err(e) if e.is_permanent() => return Err(PublishError::permanent(e)),
            Err(e) => return Err(PublishError::transient(e)),
        }
        sqlx::query("UPDATE mail_deliveries SET status = 'Sent', error = NULL, sent_at = now() WHERE id = $1")
            .bind(job.delivery_id)
            .execute(&self.pool)
            .await
            .map_err(PublishError::transient)?;
        Ok(())
    }
}

/// Marks a delivery `Failed` with the error once its message is parked.
struct MarkFailed {
    pool: PgPool,
}

#[async_trait]
impl DeadLetterHook for MarkFailed {
    async fn on_dead_letter(&self, message: &Message, error: &str) {
        let Ok(job) = message.json::<MailJob>() else { return };
        let updated = sqlx::query("UPDATE mail_deliveries SET status = 'Failed', error = $2 WHERE id = $1")
            .bind(job.delivery_id)
            .bind(error)
            .execute(&self.pool)
            .await;
        if let Err(e) = updated {
            tracing::error!(delivery = %job.delivery_id, "could not mark the delivery failed: {e}");
        }
    }
}

struct AppState {
    store: PostgresStore,
}

async fn send(State(state): State<Arc<AppState>>, Json(mail): Json<SendMail>) -> (StatusCode, Json<serde_json::Value>) {
    let bad = |why: String| (StatusCode::UNPROCESSABLE_ENTITY, Json(serde_json::json!({ "error": why })));
    if mail.to.is_empty() {
        return bad("at least one recipient is required".into());
    }
    for address in std::iter::once(&mail.from).chain(&mail.to) {
        if let Err(e) = address.parse::<Mailbox>() {
            return bad(format!("invalid address {address:?}: {e}"));
        }
    }
    match enqueue(&state.store, mail).await {
        Ok(id) => (StatusCode::ACCEPTED, Json(serde_json::json!({ "id": id }))),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "error": e.to_string() }))),
    }
}

async fn enqueue(store: &PostgresStore, mail: SendMail) -> Result<Uuid, BoxError> {
    let id = Uuid::now_v7();
    let mut tx = store.pool().begin().await?;
    sqlx::query("INSERT INTO mail_deliveries (id, status, recipients, subject) VALUES ($1, 'Pending', $2, $3)")
        .bind(id)
        .bind(mail.to.join(", "))
        .bind(&mail.subject)
        .execute(&mut *tx)
        .await?;
    let job = MailJob { delivery_id: id, mail };
    store.enqueue(&mut *tx, NewMessage::json("mail.send", &job)?.key(id.to_string())).await?;
    tx.commit().await?;
    Ok(id)
}

async fn status(State(state): State<Arc<AppState>>, Path(id): Path<Uuid>) -> (StatusCode, Json<serde_json::Value>) {
    let row: Result<Option<(String, Option<String>)>, _> =
        sqlx::query_as("SELECT status, error FROM mail_deliveries WHERE id = $1")
            .bind(id)
            .fetch_optional(state.store.pool())
            .await;
    match row {
        Ok(Some((status, error))) => {
            (StatusCode::OK, Json(serde_json::json!({ "id": id, "status": status, "error": error })))
        }
        Ok(None) => (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": "no such delivery" }))),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "error": e.to_string() }))),
    }
}

/// The mail-delivery scenario: an HTTP API accepts mails, each written with its message in one
/// transaction, and a relay sends them over SMTP. `DATABASE_URL`, `SMTP_HOST` and `SMTP_PORT` name
/// the services.
#[derive(Debug, Parser)]
#[command(name = "mail")]
struct Cli {
    /// The HTTP API's address.
    #[arg(long, default_value = "127.0.0.1:3080")]
    listen: String,
    /// Attempts before a mail is marked failed.
    #[arg(long, default_value_t = 25)]
    max_attempts: u32,
    /// The first retry's delay in ms (it doubles, up to 8 times this).
    #[arg(long, default_value_t = 1000)]
    retry_ms: u64,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())).init();
    let cli = Cli::parse();
    let listen = cli.listen;
    let max_attempts = cli.max_attempts;
    let retry = Duration::from_millis(cli.retry_ms);
    let database_url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL (postgres://...)")?;
    let smtp_host = std::env::var("SMTP_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let smtp_port: u16 =
        std::env::var("SMTP_PORT").unwrap_or_else(|_| "1025".into()).parse().map_err(|e| format!("SMTP_PORT: {e}"))?;

    let store = PostgresStore::connect_with(&database_url, StoreOptions::default().table_prefix("mail")?).await?;
    store.migrate().await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS mail_deliveries (id UUID PRIMARY KEY, status TEXT NOT NULL, recipients TEXT NOT NULL, \
         subject TEXT NOT NULL, error TEXT, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), sent_at TIMESTAMPTZ)",
    )
    .execute(store.pool())
    .await?;

    let smtp = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp_host)
        .port(smtp_port)
        .timeout(Some(Duration::from_secs(5)))
        .build();
    let policy = RetryPolicy::builder().initial_delay(retry).max_delay(retry * 8).max_attempts(max_attempts).build()?;
    let relay = Relay::builder(store.clone(), SmtpPublisher { smtp, pool: store.pool().clone() })
        .retry_policy(policy)
        .poll_interval(Duration::from_millis(200))
        .on_dead_letter(MarkFailed { pool: store.pool().clone() })
        .build()?;

    let shutdown = shutdown_on_signal();
    let app = Router::new()
        .route("/api/mail/send", post(send))
        .route("/api/mail/{id}", get(status))
        .with_state(Arc::new(AppState { store }));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("mail: listening on {listen}");
    let api = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let (served, relayed) = tokio::join!(async { api.await }, relay.run(shutdown.clone()));
    served?;
    relayed?;
    println!("mail: stopped gracefully; {:?}", relay.metrics());
    Ok(())
}
