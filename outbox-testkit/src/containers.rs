//! Test backends in containers (feature `testcontainers`, Docker required), for machines without the
//! local services. Each backend is started once per test process, on first use, and stays up until the
//! process exits (testcontainers' reaper removes it then).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use testcontainers_modules::testcontainers::runners::SyncRunner;
use testcontainers_modules::testcontainers::{Container, Image, ImageExt};
use testcontainers_modules::{kafka, mariadb, nats, postgres, rabbitmq, redis};

/// Keeps the started containers alive for the whole test process.
struct Started {
    urls: HashMap<&'static str, String>,
    _keep: Vec<Box<dyn std::any::Any + Send>>,
}

fn started() -> &'static Mutex<Started> {
    static STARTED: OnceLock<Mutex<Started>> = OnceLock::new();
    STARTED.get_or_init(|| Mutex::new(Started { urls: HashMap::new(), _keep: Vec::new() }))
}

fn start<I: Image + Send + 'static, R: SyncRunner<I> + Send + 'static>(image: R) -> Result<Container<I>, String>
where
    Container<I>: Send,
{
    // The blocking runner makes its own runtime: run it off the test's runtime thread.
    std::thread::spawn(move || image.start().map_err(|e| format!("cannot start the container: {e}")))
        .join()
        .map_err(|_| "the container start panicked".to_owned())?
}

fn port<I: Image>(container: &Container<I>, inner: u16) -> Result<u16, String> {
    container.get_host_port_ipv4(inner).map_err(|e| format!("no mapped port {inner}: {e}"))
}

/// The URL for the backend named by the environment variable `var`, starting its container if needed.
pub fn url(var: &str) -> Result<String, String> {
    let mut started = started().lock().unwrap_or_else(|p| p.into_inner());
    let key: &'static str = match var {
        "OUTBOX_TEST_POSTGRES_URL" => "postgres",
        "OUTBOX_TEST_MYSQL_URL" => "mysql",
        "OUTBOX_TEST_KAFKA_BROKERS" => "kafka",
        "OUTBOX_TEST_AMQP_URL" => "amqp",
        "OUTBOX_TEST_REDIS_URL" => "redis",
        "OUTBOX_TEST_NATS_URL" => "nats",
        other => return Err(format!("no container for {other}")),
    };
    if let Some(url) = started.urls.get(key) {
        return Ok(url.clone());
    }
    let (url, keep): (String, Box<dyn std::any::Any + Send>) = match key {
        "postgres" => {
            // Replication wake-ups stream the WAL.
            let c = start(postgres::Postgres::default().with_cmd([
                "postgres",
                "-c",
                "wal_level=logical",
                "-c",
                "max_replication_slots=64",
                "-c",
                "max_wal_senders=64",
            ]))?;
            (format!("postgres://postgres:postgres@127.0.0.1:{}/postgres", port(&c, 5432)?), Box::new(c))
        }
        "mysql" => {
            let c = start(mariadb::Mariadb::default())?;
            (format!("mysql://root@127.0.0.1:{}/test", port(&c, 3306)?), Box::new(c))
        }
        "kafka" => {
            let c = start(kafka::apache::Kafka::default())?;
            (format!("127.0.0.1:{}", port(&c, kafka::apache::KAFKA_PORT.as_u16())?), Box::new(c))
        }
        "amqp" => {
            let c = start(rabbitmq::RabbitMq::default())?;
            (format!("amqp://guest:guest@127.0.0.1:{}/%2f", port(&c, 5672)?), Box::new(c))
        }
        "nats" => {
            let c = start(nats::Nats::default().with_cmd(&nats::NatsServerCmd::default().with_jetstream()))?;
            (format!("nats://127.0.0.1:{}", port(&c, 4222)?), Box::new(c))
        }
        _ => {
            let c = start(redis::Redis::default())?;
            (format!("redis://127.0.0.1:{}", port(&c, 6379)?), Box::new(c))
        }
    };
    eprintln!("testcontainers: {var}={}", outbox_engine::secret::redact_url(&url));
    started.urls.insert(key, url.clone());
    started._keep.push(keep);
    Ok(url)
}
