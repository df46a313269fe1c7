//! Wrappers that observe the relay: claims counted and timed, broker acknowledgements timed.

use super::*;

/// Counts the claims (the relay's queries when idle), records when each message was claimed, and can
/// turn notification wake-ups off.
#[derive(Debug)]
pub(crate) struct Instrumented {
    pub(crate) inner: Arc<dyn Store>,
    pub(crate) claims: AtomicU64,
    pub(crate) claimed_at: Mutex<HashMap<MessageId, Instant>>,
    pub(crate) notifications: bool,
}

impl Instrumented {
    pub(crate) fn new(inner: Arc<dyn Store>, notifications: bool) -> Self {
        Self { inner, claims: AtomicU64::new(0), claimed_at: Mutex::new(HashMap::new()), notifications }
    }
}

#[async_trait]
impl Store for Instrumented {
    async fn claim(&self, owner: RelayId, limit: usize, lease: Duration) -> outbox_engine::Result<Vec<Message>> {
        self.claims.fetch_add(1, Ordering::Relaxed);
        let batch = self.inner.claim(owner, limit, lease).await?;
        if !batch.is_empty() {
            let now = Instant::now();
            let mut claimed_at = self.claimed_at.lock().unwrap_or_else(|p| p.into_inner());
            claimed_at.extend(batch.iter().map(|m| (m.id, now)));
        }
        Ok(batch)
    }
    async fn extend_lease(&self, owner: RelayId, ids: &[MessageId], lease: Duration) -> outbox_engine::Result<()> {
        self.inner.extend_lease(owner, ids, lease).await
    }
    async fn release(&self, owner: RelayId, ids: &[MessageId]) -> outbox_engine::Result<()> {
        self.inner.release(owner, ids).await
    }
    async fn acknowledge(&self, ids: &[MessageId]) -> outbox_engine::Result<()> {
        self.inner.acknowledge(ids).await
    }
    async fn reschedule(&self, owner: RelayId, retries: &[Retry]) -> outbox_engine::Result<()> {
        self.inner.reschedule(owner, retries).await
    }
    async fn dead_letter(&self, owner: RelayId, failures: &[Failure]) -> outbox_engine::Result<()> {
        self.inner.dead_letter(owner, failures).await
    }
    async fn dead_letters(&self, limit: usize) -> outbox_engine::Result<Vec<DeadLetter>> {
        self.inner.dead_letters(limit).await
    }
    async fn replay_dead_letters(&self, ids: &[MessageId]) -> outbox_engine::Result<u64> {
        self.inner.replay_dead_letters(ids).await
    }
    async fn purge_dead_letters(&self, ids: &[MessageId]) -> outbox_engine::Result<u64> {
        self.inner.purge_dead_letters(ids).await
    }
    async fn purge_published(&self, older_than: Duration, limit: usize) -> outbox_engine::Result<u64> {
        self.inner.purge_published(older_than, limit).await
    }
    async fn stats(&self) -> outbox_engine::Result<OutboxStats> {
        self.inner.stats().await
    }
    fn wakes_on_commit(&self) -> bool {
        self.notifications && self.inner.wakes_on_commit()
    }
    async fn wait_for_work(&self, timeout: Duration) {
        if self.notifications {
            self.inner.wait_for_work(timeout).await;
        } else {
            tokio::time::sleep(timeout).await;
        }
    }
}

/// Records when the broker acknowledged each message; the producers record when each committed.
#[derive(Debug)]
pub(crate) struct LatencyProbe {
    pub(crate) inner: Arc<dyn Publisher>,
    pub(crate) acked: Mutex<HashMap<MessageId, Instant>>,
}

#[async_trait]
impl Publisher for LatencyProbe {
    async fn publish(&self, batch: &[Message]) -> Vec<Result<(), PublishError>> {
        let outcomes = self.inner.publish(batch).await;
        let now = Instant::now();
        let mut acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        for (message, outcome) in batch.iter().zip(&outcomes) {
            if outcome.is_ok() {
                acked.insert(message.id, now);
            }
        }
        outcomes
    }
}
