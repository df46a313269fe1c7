//! The in-memory [`Publisher`].

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::message::Message;
use crate::publisher::{HeldKeys, PublishError, Publisher};

type FailureRule = dyn Fn(&Message) -> Option<PublishError> + Send + Sync;

/// A [`Publisher`] that records what it publishes, and can be told to fail or be slow.
///
/// ```
/// use outbox_engine::{memory::MemoryPublisher, PublishError};
/// let publisher = MemoryPublisher::new()
///     .failing_when(|m| (m.attempts < 3).then(|| PublishError::transient("broker busy")));
/// ```
#[derive(Clone, Default)]
pub struct MemoryPublisher {
    published: Arc<Mutex<Vec<Message>>>,
    fail: Option<Arc<FailureRule>>,
    delay: Duration,
}

impl fmt::Debug for MemoryPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryPublisher")
            .field("published", &self.published_len())
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

impl MemoryPublisher {
    /// A publisher that accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fails a message with the returned error whenever `rule` returns one.
    pub fn failing_when(mut self, rule: impl Fn(&Message) -> Option<PublishError> + Send + Sync + 'static) -> Self {
        self.fail = Some(Arc::new(rule));
        self
    }

    /// Sleeps this long in every `publish` call.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Message>> {
        self.published.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Everything published so far, in publish order (duplicates included).
    pub fn published(&self) -> Vec<Message> {
        self.lock().clone()
    }

    /// How many publishes succeeded so far.
    pub fn published_len(&self) -> usize {
        self.lock().len()
    }
}

#[async_trait]
impl Publisher for MemoryPublisher {
    async fn publish(&self, batch: &[Message]) -> Vec<Result<(), PublishError>> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let mut held = HeldKeys::default();
        let outcomes: Vec<Result<(), PublishError>> = batch
            .iter()
            .map(|m| {
                held.check(m)?;
                let outcome = match self.fail.as_ref().and_then(|rule| rule(m)) {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
                held.record(m, &outcome);
                outcome
            })
            .collect();
        let mut published = self.lock();
        for (message, outcome) in batch.iter().zip(&outcomes) {
            if outcome.is_ok() {
                published.push(message.clone());
            }
        }
        outcomes
    }

    /// Delivers in batch order, and after a transient failure none of that key's later messages.
    fn keeps_key_order(&self) -> bool {
        true
    }
}
