//! A [`StoreHarness`] over [`MySqlStore`]: unique tables in the database named by `OUTBOX_TEST_MYSQL_URL`
//! (`scripts/test-services.sh` recreates `outbox_test` before a run).

use std::time::Duration;

use outbox_engine::Result;
use outbox_sqlx::mysql::MySqlStore;
use outbox_sqlx::StoreOptions;
use sqlx::mysql::MySqlPoolOptions;

use crate::env::{backend, unique_name};
#[allow(unused_imports)]
use crate::StoreHarness;

/// A harness on unique tables.
#[derive(Debug, Clone)]
pub struct MySqlHarness {
    store: MySqlStore,
}

impl MySqlHarness {
    /// A harness, or `None` (reported loudly) when `OUTBOX_TEST_MYSQL_URL` is not set.
    pub async fn new() -> Option<Self> {
        Self::with_options(StoreOptions::default()).await
    }

    /// The same with `options` (schema and prefix are replaced by unique test ones).
    pub async fn with_options(options: StoreOptions) -> Option<Self> {
        let url = backend("OUTBOX_TEST_MYSQL_URL", "MySQL / MariaDB")?;
        let pool = MySqlPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to MySQL at {}: {e}", outbox_sqlx::redact_url(&url)));
        let options = options.table_prefix(&unique_name("t")).expect("names");
        let store = MySqlStore::new(pool, options).expect("store");
        store.migrate().await.expect("migrate");
        Some(Self { store })
    }

    /// The store.
    pub fn mysql_store(&self) -> &MySqlStore {
        &self.store
    }
}

crate::store_suite::sqlx_harness!(MySqlHarness, store, {
    async fn with_retention(&self, retention: Duration) -> Box<dyn StoreHarness> {
        Box::new(Self::with_options(StoreOptions::default().retention(retention)).await.expect("configured"))
    }

    fn store_with_prefix(&self, prefix: &str) -> Option<Result<()>> {
        let build = || -> Result<()> {
            let options = StoreOptions::default().table_prefix(prefix)?;
            MySqlStore::new(self.store.pool().clone(), options)?;
            Ok(())
        };
        Some(build())
    }
});
