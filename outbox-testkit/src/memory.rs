//! The reference harness over [`MemoryStore`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outbox_engine::memory::MemoryStore;
use outbox_engine::{Enqueue, Inbox, MessageId, MessageLimits, NewMessage, Result, Store};

use crate::StoreHarness;

/// A [`StoreHarness`] over a fresh [`MemoryStore`].
#[derive(Debug, Clone, Default)]
pub struct MemoryHarness {
    store: MemoryStore,
}

impl MemoryHarness {
    /// A harness over an empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl StoreHarness for MemoryHarness {
    fn store(&self) -> Arc<dyn Store> {
        Arc::new(self.store.clone())
    }

    async fn with_retention(&self, retention: Duration) -> Box<dyn StoreHarness> {
        Box::new(Self { store: MemoryStore::with_options(MessageLimits::default(), Some(retention)) })
    }

    async fn enqueue(&self, messages: Vec<NewMessage>, commit: bool) -> Result<Vec<MessageId>> {
        let mut tx = self.store.begin();
        let ids = self.store.enqueue_batch(&mut tx, messages).await?;
        if commit {
            tx.commit()?;
        }
        Ok(ids)
    }

    async fn process_once(&self, consumer: &str, id: MessageId, commit: bool) -> Result<bool> {
        let mut tx = self.store.begin();
        let first = self.store.process_once(&mut tx, consumer, id).await?;
        if commit {
            tx.commit()?;
        }
        Ok(first)
    }

    fn store_with_prefix(&self, _prefix: &str) -> Option<Result<()>> {
        None // no tables
    }
}

impl crate::store_suite::IntoHarness for MemoryHarness {
    type Harness = Self;
    fn into_harness(self) -> Option<Self> {
        Some(self)
    }
}
