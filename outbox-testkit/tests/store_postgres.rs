//! The store suite against PostgreSQL (`OUTBOX_TEST_POSTGRES_URL`).
#![cfg(feature = "postgres")]
use outbox_testkit::postgres::PostgresHarness;

outbox_testkit::store_suite!(postgres, PostgresHarness::new);

/// The same suite with wake-ups from the write-ahead log.
#[cfg(feature = "postgres-replication")]
mod replication {
    use outbox_testkit::postgres::PostgresHarness;
    outbox_testkit::store_suite!(postgres_replication, PostgresHarness::replication);
}
