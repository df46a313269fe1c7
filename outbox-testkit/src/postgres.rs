//! A [`StoreHarness`] over [`PostgresStore`]: unique tables in the `outbox_test` schema of the database
//! named by `OUTBOX_TEST_POSTGRES_URL`.

use std::time::Duration;

use outbox_engine::Result;
use outbox_sqlx::postgres::PostgresStore;
use outbox_sqlx::StoreOptions;
use sqlx::postgres::PgPoolOptions;

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
    #[cfg(feature = "postgres-replication")]
    pub async fn replication() -> Option<Self> {
        Self::with_options(StoreOptions::default().wake_ups(outbox_sqlx::WakeUps::Replication)).await
    }

    /// The same with `options` (schema and prefix are replaced by unique test ones).
    pub async fn with_options(options: StoreOptions) -> Option<Self> {
        let url = backend("OUTBOX_TEST_POSTGRES_URL", "PostgreSQL")?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {}: {e}", outbox_sqlx::redact_url(&url)));
        let options = options.schema(TEST_SCHEMA).and_then(|o| o.table_prefix(&unique_name("t"))).expect("names");
        let store = PostgresStore::new(pool, options).expect("store");
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
