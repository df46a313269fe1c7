//! The store suite against MySQL / MariaDB (`OUTBOX_TEST_MYSQL_URL`).
#![cfg(feature = "mysql")]
use outbox_testkit::mysql::MySqlHarness;

outbox_testkit::store_suite!(mysql, MySqlHarness::new);
