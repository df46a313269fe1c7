//! Where the test backends are: environment variables, checked loudly.
//!
//! | variable | backend | name in `OUTBOX_TEST_SKIP` |
//! |---|---|---|
//! | `OUTBOX_TEST_POSTGRES_URL` | PostgreSQL, e.g. `postgres://postgres@127.0.0.1:5432/test` | `postgres` |
//! | `OUTBOX_TEST_MYSQL_URL` | MySQL / MariaDB, e.g. `mysql://root@127.0.0.1:3306/test` | `mysql` |
//! | `OUTBOX_TEST_KAFKA_BROKERS` | Kafka bootstrap servers, e.g. `127.0.0.1:9092` | `kafka` |
//! | `OUTBOX_TEST_AMQP_URL` | RabbitMQ, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f` | `rabbitmq` |
//! | `OUTBOX_TEST_REDIS_URL` | Redis, e.g. `redis://127.0.0.1:6379` | `redis` |
//! | `OUTBOX_TEST_NATS_URL` | NATS with JetStream, e.g. `nats://127.0.0.1:4222` | `nats` |
//! | `OUTBOX_TEST_CHROMEDRIVER` | the `chromedriver` binary, e.g. `/usr/bin/chromedriver` (browser tests) | `browser` |
//! | (`OUTBOX_TEST_POSTGRES_URL` with `wal_level = logical`) | PostgreSQL's replication wake-ups | `replication` |
//!
//! A test whose backend is not configured **fails**, with a message naming the variable to set. To
//! run the rest without a backend, opt out of it by name: `OUTBOX_TEST_SKIP=kafka,redis` (or `all`)
//! makes those tests return early, each printing a `SKIPPED` line that `cargo test` does not hide.
//! With the `testcontainers` feature, an unset variable starts a container instead (once per test
//! process; Docker required), and a container that cannot start is a failure.

use std::io::Write as _;

/// The variable that names the backends whose tests are skipped.
pub const SKIP_VAR: &str = "OUTBOX_TEST_SKIP";

/// The name `OUTBOX_TEST_SKIP` knows the backend of `var` by.
fn skip_name(var: &str) -> &str {
    match var {
        "OUTBOX_TEST_POSTGRES_URL" => "postgres",
        "OUTBOX_TEST_MYSQL_URL" => "mysql",
        "OUTBOX_TEST_KAFKA_BROKERS" => "kafka",
        "OUTBOX_TEST_AMQP_URL" => "rabbitmq",
        "OUTBOX_TEST_REDIS_URL" => "redis",
        "OUTBOX_TEST_NATS_URL" => "nats",
        "OUTBOX_TEST_CHROMEDRIVER" => "browser",
        other => other,
    }
}

/// Whether `OUTBOX_TEST_SKIP` (comma-separated names, or `all`) opts out of the backend `name`.
pub fn skipped(name: &str) -> bool {
    std::env::var(SKIP_VAR).is_ok_and(|list| {
        list.split(',')
            .map(str::trim)
            .any(|entry| entry.eq_ignore_ascii_case(name) || entry.eq_ignore_ascii_case("all"))
    })
}

/// The value of `var`. When it is unset: `None` if `OUTBOX_TEST_SKIP` opts out of the backend (after
/// a `SKIPPED` line on stderr, which test output capture does not hide); otherwise a panic that
/// names the variable (or, with the `testcontainers` feature, a container's address).
pub fn backend(var: &str, backend: &str) -> Option<String> {
    if let Ok(value) = std::env::var(var) {
        if !value.trim().is_empty() {
            return Some(value);
        }
    }
    let name = skip_name(var);
    if skipped(name) {
        let test = std::thread::current().name().unwrap_or("a test").to_owned();
        // Straight to the stream: libtest captures print!/eprint! of passing tests, not this.
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {backend} ({SKIP_VAR} names {name})");
        return None;
    }
    #[cfg(feature = "testcontainers")]
    {
        Some(crate::containers::url(var).unwrap_or_else(|e| panic!("{backend}: {e}")))
    }
    #[cfg(not(feature = "testcontainers"))]
    {
        panic!(
            "{backend} is not configured: set {var} (scripts/test-services.sh starts the local services and \
             sets it), or skip these tests with {SKIP_VAR}={name}"
        )
    }
}

/// Runs `clean_up` to its end from a `Drop`: on a thread of its own with a runtime of its own, so it
/// neither needs the caller's runtime nor dies with it when a test returns (a task spawned there
/// would be dropped unfinished). Errors are ignored: this is best-effort tidying.
pub fn clean_up_now<F>(clean_up: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let tidy = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            runtime.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(5), clean_up).await.ok() });
        }
    });
    let _ = tidy.join();
}

/// A fresh table / topic / stream name: `prefix` and 12 random hex digits.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_names_follow_the_variables() {
        assert_eq!(skip_name("OUTBOX_TEST_AMQP_URL"), "rabbitmq");
        assert_eq!(skip_name("OUTBOX_TEST_KAFKA_BROKERS"), "kafka");
    }
}
