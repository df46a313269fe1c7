//! Where the test backends are: environment variables, checked loudly.
//!
//! | variable | backend |
//! |---|---|
//! | `OUTBOX_TEST_POSTGRES_URL` | PostgreSQL, e.g. `postgres://postgres@127.0.0.1:5432/test` |
//! | `OUTBOX_TEST_MYSQL_URL` | MySQL / MariaDB, e.g. `mysql://root@127.0.0.1:3306/test` |
//! | `OUTBOX_TEST_KAFKA_BROKERS` | Kafka bootstrap servers, e.g. `127.0.0.1:9092` |
//! | `OUTBOX_TEST_AMQP_URL` | RabbitMQ, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f` |
//! | `OUTBOX_TEST_REDIS_URL` | Redis, e.g. `redis://127.0.0.1:6379` |
//!
//! A backend that is not configured is reported on stderr and its tests return early; with
//! `OUTBOX_TEST_REQUIRE_ALL=1` (set by `scripts/test-services.sh` and CI) it fails the test instead.
//! With the `testcontainers` feature, an unset variable starts a container instead (once per test
//! process; Docker required), and a container that cannot start is a failure.

/// Whether every backend must be present (`OUTBOX_TEST_REQUIRE_ALL=1`).
pub fn require_all() -> bool {
    std::env::var("OUTBOX_TEST_REQUIRE_ALL").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The value of `var`, or `None` after a loud report; panics when [`require_all`] is set.
pub fn backend(var: &str, backend: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Some(value),
        #[cfg(feature = "testcontainers")]
        _ => Some(crate::containers::url(var).unwrap_or_else(|e| panic!("{backend}: {e}"))),
        #[cfg(not(feature = "testcontainers"))]
        _ => {
            let message = format!(
                "{backend} is not configured: set {var} (scripts/test-services.sh starts the local services and sets it)"
            );
            if require_all() {
                panic!("{message}; OUTBOX_TEST_REQUIRE_ALL=1 makes a missing backend a failure");
            }
            eprintln!("NOT RUN: {message}");
            None
        }
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
