//! A [`StoreHarness`] over [`MySqlStore`]: unique tables in the database named by `OUTBOX_TEST_MYSQL_URL`
//! (`scripts/test-services.sh` recreates `outbox_test` before a run).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{Enqueue, Inbox, MessageId, NewMessage, Result, Store};
use outbox_sqlx::mysql::MySqlStore;
use outbox_sqlx::{error_from, StoreOptions};
use sqlx::mysql::MySqlPoolOptions;

use crate::env::{backend, unique_name};
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
        let store = MySqlStore::new(pool, options);
        store.migrate().await.expect("migrate");
        Some(Self { store })
    }

    /// The store.
    pub fn mysql_store(&self) -> &MySqlStore {
        &self.store
    }
}

#[async_trait]
impl StoreHarness for MySqlHarness {
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
        let _ = MySqlStore::new(self.store.pool().clone(), options);
        Ok(())
    }
}
