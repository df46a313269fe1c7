//! The store suite against PostgreSQL (`OUTBOX_TEST_POSTGRES_URL`).
#![cfg(feature = "postgres")]
use outbox_testkit::postgres::PostgresHarness;

outbox_testkit::store_suite!(postgres, PostgresHarness::new);
