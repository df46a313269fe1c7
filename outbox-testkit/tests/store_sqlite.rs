//! The store suite against SQLite (an embedded database file; no service needed).
#![cfg(feature = "sqlite")]
use outbox_testkit::sqlite::SqliteHarness;

outbox_testkit::store_suite!(sqlite, SqliteHarness::new);
