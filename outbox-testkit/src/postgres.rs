//! A [`StoreHarness`] over [`PostgresStore`]: unique tables in the `outbox_test` schema of the database
//! named by `OUTBOX_TEST_POSTGRES_URL`.

#[cfg(feature = "postgres-replication")]
use std::io::Write as _;
use std::time::Duration;

use outbox_engine::Result;
use outbox_sqlx::postgres::PostgresStore;
use outbox_sqlx::StoreOptions;

use crate::env::{backend, unique_name};
#[allow(unused_imports)]
use crate::StoreHarness;

/// The schema test tables are created in; `scripts/test-services.sh` drops it before a run.
pub const TEST_SCHEMA: &str = "outbox_test";

/// A harness on unique tables.
#[derive(Debug, Clone)]
pub struct PostgresHarness {
    store: PostgresStore,
}

impl PostgresHarness {
    /// A harness, or `None` (reported loudly) when `OUTBOX_TEST_POSTGRES_URL` is not set.
    pub async fn new() -> Option<Self> {
        Self::with_options(StoreOptions::default()).await
    }

    /// A harness whose relays wake from the write-ahead log ([`outbox_sqlx::WakeUps::Replication`]); the server
    /// needs `wal_level = logical` (`scripts/test-services.sh` sets it on the local one).
    /// `OUTBOX_TEST_SKIP=replication` opts out; a server without `wal_level = logical` fails loudly.
    #[cfg(feature = "postgres-replication")]
    pub async fn replication() -> Option<Self> {
        if crate::env::skipped("replication") {
            let test = std::thread::current().name().unwrap_or("a test").to_owned();
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: PostgreSQL replication (OUTBOX_TEST_SKIP names replication)"
            );
            return None;
        }
        let harness = Self::with_options(StoreOptions::default().wake_ups(outbox_sqlx::WakeUps::Replication)).await?;
        let level: String =
            sqlx::query_scalar("SHOW wal_level").fetch_one(harness.store.pool()).await.expect("wal_level");
        assert_eq!(
            level, "logical",
            "replication wake-ups need the test server's wal_level = logical (scripts/test-services.sh sets it \
             on a local server), or skip these tests with OUTBOX_TEST_SKIP=replication"
        );
        Some(harness)
    }

    /// The same with `options` (schema and prefix are replaced by unique test ones).
    pub async fn with_options(options: StoreOptions) -> Option<Self> {
        let url = backend("OUTBOX_TEST_POSTGRES_URL", "PostgreSQL")?;
        let options = options
            .schema(TEST_SCHEMA)
            .and_then(|o| o.table_prefix(&unique_name("t")))
            .and_then(|o| o.max_connections(4))
            .expect("names");
        // `connect_with`, so that a replication session has the URL's password too.
        let store = PostgresStore::connect_with(&url, options)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {}: {e}", outbox_sqlx::redact_url(&url)));
        store.migrate().await.expect("migrate");
        Some(Self { store })
    }

    /// The store.
    pub fn postgres_store(&self) -> &PostgresStore {
        &self.store
    }
}

crate::store_suite::sqlx_harness!(PostgresHarness, store, {
    async fn with_retention(&self, retention: Duration) -> Box<dyn StoreHarness> {
        Box::new(Self::with_options(StoreOptions::default().retention(retention)).await.expect("configured"))
    }

    fn store_with_prefix(&self, prefix: &str) -> Option<Result<()>> {
        let build = || -> Result<()> {
            let options = StoreOptions::default().table_prefix(prefix)?;
            PostgresStore::new(self.store.pool().clone(), options)?;
            Ok(())
        };
        Some(build())
    }
});
