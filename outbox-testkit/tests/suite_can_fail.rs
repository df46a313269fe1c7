//! The suites must be able to fail: deliberately broken stores are rejected by the checks that
//! guard what they break.
#![allow(clippy::unwrap_used)]

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use outbox_engine::memory::MemoryStore;
use outbox_engine::{
    DeadLetter, Enqueue, Failure, Message, MessageId, NewMessage, OutboxStats, RelayId, Result, Retry, Store,
};
use outbox_testkit::memory::MemoryHarness;
use outbox_testkit::{store_suite, StoreHarness};

/// Forwards everything to a memory store, except what `Broken` changes.
#[derive(Debug, Clone)]
struct BrokenStore {
    inner: MemoryStore,
    broken: Broken,
}

#[derive(Debug, Clone, Copy)]
enum Broken {
    /// Claims ignore leases: a leased message is handed to a second relay.
    ClaimsTwice,
    /// Acknowledge forgets to delete.
    NeverAcknowledges,
    /// Claims ignore keys: a key's second message is claimed while its first is in flight.
    IgnoresKeys,
}

#[async_trait]
impl Store for BrokenStore {
    async fn claim(&self, owner: RelayId, limit: usize, lease: Duration) -> Result<Vec<Message>> {
        match self.broken {
            Broken::ClaimsTwice => {
                let claimed = self.inner.claim(owner, limit, lease).await?;
                if claimed.is_empty() {
                    // Hand out what another relay holds.
                    return Ok(self.inner.pending().into_iter().take(limit).collect());
                }
                Ok(claimed)
            }
            Broken::IgnoresKeys => {
                let mut claimed = self.inner.claim(owner, limit, lease).await?;
                let held: Vec<MessageId> = claimed.iter().map(|m| m.id).collect();
                claimed.extend(self.inner.pending().into_iter().filter(|m| !held.contains(&m.id)).take(limit));
                claimed.truncate(limit);
                Ok(claimed)
            }
            Broken::NeverAcknowledges => self.inner.claim(owner, limit, lease).await,
        }
    }
    async fn extend_lease(&self, owner: RelayId, ids: &[MessageId], lease: Duration) -> Result<()> {
        self.inner.extend_lease(owner, ids, lease).await
    }
    async fn release(&self, owner: RelayId, ids: &[MessageId]) -> Result<()> {
        self.inner.release(owner, ids).await
    }
    async fn acknowledge(&self, ids: &[MessageId]) -> Result<()> {
        match self.broken {
            Broken::NeverAcknowledges => Ok(()),
            _ => self.inner.acknowledge(ids).await,
        }
    }
    async fn reschedule(&self, owner: RelayId, retries: &[Retry]) -> Result<()> {
        self.inner.reschedule(owner, retries).await
    }
    async fn dead_letter(&self, owner: RelayId, failures: &[Failure]) -> Result<()> {
        self.inner.dead_letter(owner, failures).await
    }
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letters(limit).await
    }
    async fn replay_dead_letters(&self, ids: &[MessageId]) -> Result<u64> {
        self.inner.replay_dead_letters(ids).await
    }
    async fn purge_dead_letters(&self, ids: &[MessageId]) -> Result<u64> {
        self.inner.purge_dead_letters(ids).await
    }
    async fn purge_published(&self, older_than: Duration, limit: usize) -> Result<u64> {
        self.inner.purge_published(older_than, limit).await
    }
    async fn stats(&self) -> Result<OutboxStats> {
        self.inner.stats().await
    }
}

/// A harness over a broken store; `leaky_rollback` makes "rolled back" transactions commit.
struct BrokenHarness {
    store: BrokenStore,
    reference: MemoryHarness,
    leaky_rollback: bool,
}

impl BrokenHarness {
    fn new(broken: Broken, leaky_rollback: bool) -> Self {
        let inner = MemoryStore::new();
        Self { store: BrokenStore { inner, broken }, reference: MemoryHarness::new(), leaky_rollback }
    }
}

#[async_trait]
impl StoreHarness for BrokenHarness {
    fn store(&self) -> Arc<dyn Store> {
        Arc::new(self.store.clone())
    }
    async fn with_retention(&self, retention: Duration) -> Box<dyn StoreHarness> {
        self.reference.with_retention(retention).await
    }
    async fn enqueue(&self, messages: Vec<NewMessage>, commit: bool) -> Result<Vec<MessageId>> {
        let mut tx = self.store.inner.begin();
        let ids = self.store.inner.enqueue_batch(&mut tx, messages).await?;
        if commit || self.leaky_rollback {
            tx.commit()?;
        }
        Ok(ids)
    }
    async fn process_once(&self, consumer: &str, id: MessageId, commit: bool) -> Result<bool> {
        self.reference.process_once(consumer, id, commit).await
    }
    fn store_with_prefix(&self, prefix: &str) -> Option<Result<()>> {
        self.reference.store_with_prefix(prefix)
    }
}

async fn fails<F: std::future::Future<Output = ()>>(check: F) -> String {
    match AssertUnwindSafe(check).catch_unwind().await {
        Ok(()) => panic!("the suite accepted a broken store"),
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default(),
    }
}

#[tokio::test]
async fn a_store_that_claims_a_message_twice_fails() {
    let h = BrokenHarness::new(Broken::ClaimsTwice, false);
    let why = fails(store_suite::a_committed_message_is_claimed_once(&h)).await;
    assert!(why.contains("claimed twice"), "{why}");
    let h = BrokenHarness::new(Broken::ClaimsTwice, false);
    let why = fails(store_suite::an_expired_lease_is_taken_over(&h)).await;
    assert!(why.contains("before the lease ended"), "{why}");
}

#[tokio::test]
async fn a_store_that_keeps_rolled_back_messages_fails() {
    let h = BrokenHarness::new(Broken::NeverAcknowledges, true);
    let why = fails(store_suite::commit_makes_visible_and_rollback_leaves_nothing(&h)).await;
    assert!(why.contains("rolled-back"), "{why}");
}

#[tokio::test]
async fn a_store_that_never_deletes_acknowledged_messages_fails() {
    let h = BrokenHarness::new(Broken::NeverAcknowledges, false);
    let why = fails(store_suite::a_committed_message_is_claimed_once(&h)).await;
    assert!(why.contains("acknowledged message"), "{why}");
}

#[tokio::test]
async fn a_store_that_ignores_key_order_fails() {
    let h = BrokenHarness::new(Broken::IgnoresKeys, false);
    let why = fails(store_suite::key_runs_in_enqueue_order(&h)).await;
    assert!(why.contains("two claims at once"), "{why}");
}

#[tokio::test]
async fn the_unbroken_reference_passes_the_same_checks() {
    let h = MemoryHarness::new();
    store_suite::a_committed_message_is_claimed_once(&h).await;
    store_suite::commit_makes_visible_and_rollback_leaves_nothing(&h).await;
    store_suite::key_runs_in_enqueue_order(&h).await;
}
