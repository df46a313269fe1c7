//! `outbox relay --metrics-addr`: the relays' metrics in Prometheus format on `/metrics`, `/healthz`
//! (the process is alive) and `/readyz` (every store answers and every broker accepts a connection).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use outbox::CancellationToken;

use crate::config::{PipelineConfig, PublisherKind};
use crate::pipeline::AnyStore;
use crate::Failure;

/// What `/readyz` checks of one pipeline: its store, and each publisher's broker addresses.
struct PipelineCheck {
    pipeline: String,
    store: AnyStore,
    /// (publisher, `host:port`)
    brokers: Vec<(String, String)>,
}

/// What `/readyz` checks: every pipeline.
pub(crate) struct Readiness {
    checks: Vec<PipelineCheck>,
}

impl Readiness {
    pub(crate) fn new(pipelines: &[(&str, &PipelineConfig, AnyStore)]) -> Self {
        let checks = pipelines
            .iter()
            .map(|(name, config, store)| {
                let brokers = config
                    .publishers
                    .iter()
                    .flat_map(|(publisher, p)| {
                        broker_addresses(p.kind, p.brokers.as_deref(), p.url.as_deref())
                            .into_iter()
                            .map(move |address| (publisher.clone(), address))
                    })
                    .collect();
                PipelineCheck { pipeline: (*name).to_owned(), store: store.clone(), brokers }
            })
            .collect();
        Self { checks }
    }

    /// `None` when everything answers, else one line per problem.
    async fn problems(&self) -> Option<String> {
        let mut problems = Vec::new();
        for PipelineCheck { pipeline, store, brokers } in &self.checks {
            match tokio::time::timeout(Duration::from_secs(2), store.shared().stats()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => problems.push(format!("pipeline {pipeline}: store: {}", e.report())),
                Err(_) => problems.push(format!("pipeline {pipeline}: store: no answer within 2 s")),
            }
            for (publisher, address) in brokers {
                let connect =
                    tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(address)).await;
                if !matches!(connect, Ok(Ok(_))) {
                    problems.push(format!("pipeline {pipeline}: publisher {publisher}: {address} unreachable"));
                }
            }
        }
        (!problems.is_empty()).then(|| problems.join("\n"))
    }
}

/// `host:port` of each broker a publisher connects to (its credentials left out).
fn broker_addresses(kind: PublisherKind, brokers: Option<&str>, url: Option<&str>) -> Vec<String> {
    let default_port = match kind {
        PublisherKind::Kafka => {
            return brokers
                .unwrap_or_default()
                .split(',')
                .map(|b| b.trim().to_owned())
                .filter(|b| !b.is_empty())
                .collect();
        }
        PublisherKind::Rabbitmq => 5672,
        PublisherKind::Redis => 6379,
        PublisherKind::Nats => 4222,
    };
    url.unwrap_or_default()
        .split(',')
        .filter_map(|server| url::Url::parse(server.trim()).ok())
        .filter_map(|server| Some(format!("{}:{}", server.host_str()?, server.port().unwrap_or(default_port))))
        .collect()
}

/// Installs the Prometheus recorder (the relays record into it) and serves the endpoints on `addr`
/// until `shutdown`.
pub(crate) async fn start(addr: SocketAddr, readiness: Readiness, shutdown: CancellationToken) -> Result<(), Failure> {
    let handle =
        PrometheusBuilder::new().install_recorder().map_err(|e| Failure::Runtime(format!("metrics recorder: {e}")))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::Config(format!("--metrics-addr {addr}: {e}")))?;
    let state = Arc::new((handle, readiness));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state);
    println!("metrics on http://{addr}/metrics");
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
        if let Err(e) = served {
            eprintln!("outbox: metrics endpoint stopped: {e}");
        }
    });
    Ok(())
}

type Shared = Arc<(PrometheusHandle, Readiness)>;

async fn metrics(State(state): State<Shared>) -> String {
    state.0.render()
}

async fn ready(State(state): State<Shared>) -> (StatusCode, String) {
    match state.1.problems().await {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(problems) => (StatusCode::SERVICE_UNAVAILABLE, format!("{problems}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses_leave_credentials_out() {
        assert_eq!(broker_addresses(PublisherKind::Kafka, Some("a:9092, b:9093"), None), ["a:9092", "b:9093"]);
        assert_eq!(
            broker_addresses(PublisherKind::Rabbitmq, None, Some("amqp://guest:s3cret@mq:5673/%2f")),
            ["mq:5673"]
        );
        assert_eq!(broker_addresses(PublisherKind::Redis, None, Some("redis://:pw@cache")), ["cache:6379"]);
        assert_eq!(
            broker_addresses(PublisherKind::Nats, None, Some("nats://u:pw@n1:4223, nats://n2")),
            ["n1:4223", "n2:4222"]
        );
    }
}
