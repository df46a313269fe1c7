//! A [`StoreHarness`] over [`PostgresStore`]: unique tables in the `outbox_test` schema of the database
//! named by `OUTBOX_TEST_POSTGRES_URL`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{Enqueue, Inbox, MessageId, NewMessage, Result, Store};
use outbox_sqlx::postgres::PostgresStore;
use outbox_sqlx::{error_from, StoreOptions};
use sqlx::postgres::PgPoolOptions;

use crate::env::{backend, unique_name};
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

    /// The same with `options` (schema and prefix are replaced by unique test ones).
    pub async fn with_options(options: StoreOptions) -> Option<Self> {
        let url = backend("OUTBOX_TEST_POSTGRES_URL", "PostgreSQL")?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {}: {e}", outbox_sqlx::redact_url(&url)));
        let options = options.schema(TEST_SCHEMA).and_then(|o| o.table_prefix(&unique_name("t"))).expect("names");
        let store = PostgresStore::new(pool, options);
        store.migrate().await.expect("migrate");
        Some(Self { store })
    }

    /// The store.
    pub fn postgres_store(&self) -> &PostgresStore {
        &self.store
    }
}

#[async_trait]
impl StoreHarness for PostgresHarness {
    fn store(&self) -> Arc<dyn Store> {
        Arc::new(self.store.clone())
    }

    async fn with_retention(&self, retention: Duration) -> Box<dyn StoreHarness> {
        Box::new(Self::with_options(StoreOptions::default().retention(retention)).await.expect("configured"))
    }

    async fn enqueue(&self, messages: Vec<NewMessage>, commit: bool) -> Result<Vec<MessageId>> {
        let mut tx = self.store.pool().begin().await.map_err(error_from("begin"))?;
        let ids = self.store.enqueue_batch(&mut *tx, messages).await?;
        if commit {
            tx.commit().await.map_err(error_from("commit"))?;
        }
        Ok(ids)
    }

    async fn process_once(&self, consumer: &str, id: MessageId, commit: bool) -> Result<bool> {
        let mut tx = self.store.pool().begin().await.map_err(error_from("begin"))?;
        let first = self.store.process_once(&mut *tx, consumer, id).await?;
        if commit {
            tx.commit().await.map_err(error_from("commit"))?;
        }
        Ok(first)
    }

    fn store_with_prefix(&self, prefix: &str) -> Result<()> {
        let options = StoreOptions::default().table_prefix(prefix)?;
        let _ = PostgresStore::new(self.store.pool().clone(), options);
        Ok(())
    }
}
