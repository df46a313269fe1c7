//! A [`StoreHarness`] over [`SqliteStore`]: a fresh database file and tables per harness.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{Enqueue, Inbox, MessageId, NewMessage, Result, Store};
use outbox_sqlx::sqlite::SqliteStore;
use outbox_sqlx::{error_from, StoreOptions};

use crate::env::unique_name;
use crate::StoreHarness;

/// A harness on its own database file in the temp directory.
#[derive(Debug, Clone)]
pub struct SqliteHarness {
    store: SqliteStore,
}

impl SqliteHarness {
    /// A store on a new database file with unique, migrated tables.
    pub async fn new() -> Self {
        Self::with_options(StoreOptions::default()).await
    }

    /// The same with `options` (the table prefix is replaced by a unique one).
    pub async fn with_options(options: StoreOptions) -> Self {
        let path = std::env::temp_dir().join(format!("{}.db", unique_name("outbox_test")));
        let base = SqliteStore::connect(&format!("sqlite://{}", path.display())).await.expect("open SQLite");
        let options = options.table_prefix(&unique_name("t")).expect("valid prefix");
        let store = SqliteStore::new(base.pool().clone(), options).expect("store");
        store.migrate().await.expect("migrate");
        Self { store }
    }

    /// The store.
    pub fn sqlite_store(&self) -> &SqliteStore {
        &self.store
    }
}

#[async_trait]
impl StoreHarness for SqliteHarness {
    fn store(&self) -> Arc<dyn Store> {
        Arc::new(self.store.clone())
    }

    async fn with_retention(&self, retention: Duration) -> Box<dyn StoreHarness> {
        Box::new(Self::with_options(StoreOptions::default().retention(retention)).await)
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
        SqliteStore::new(self.store.pool().clone(), options).map(|_| ())
    }
}
