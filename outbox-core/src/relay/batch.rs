//! One batch's life after its claim: publish it (renewing its lease, and giving up before the lease
//! runs out), then settle it: acknowledge, reschedule, dead-letter.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::future::FutureExt;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use super::{bump, Inner};
use crate::error::Result;
use crate::message::{Message, MessageId};
use crate::publisher::{panic_text, PublishError};
use crate::retry::RetryDecision;
use crate::store::{Failure, Retry};

impl Inner {
    /// Publishes a batch claimed at `claimed_at` and records each message's outcome in the store.
    pub(super) async fn publish_and_settle(&self, batch: Vec<Message>, claimed_at: Instant) -> Result<()> {
        let max_attempts = self.options.retry.max_attempts();
        let (exhausted, batch): (Vec<Message>, Vec<Message>) =
            batch.into_iter().partition(|m| m.attempts > max_attempts);
        let outcomes =
            if batch.is_empty() { Vec::new() } else { self.publish_renewing_lease(&batch, claimed_at).await };

        let mut acks = Vec::with_capacity(batch.len());
        let mut retries = Vec::new();
        let mut dead: Vec<(Message, String)> = Vec::new();
        for message in exhausted {
            let error = format!(
                "claimed {} times without a recorded outcome (relay crash or lease expiry); max attempts is {max_attempts}",
                message.attempts
            );
            dead.push((message, error));
        }
        let mut outcomes = outcomes.into_iter();
        for message in batch {
            let outcome = outcomes
                .next()
                .unwrap_or_else(|| Err(PublishError::transient("publisher returned fewer outcomes than messages")));
            match outcome {
                Ok(()) => acks.push(message.id),
                Err(e) if e.is_transient() => match self.options.retry.decide(message.attempts) {
                    RetryDecision::RetryAfter(delay) => {
                        warn!(message_id = %message.id, attempts = message.attempts, retry_in = ?delay, error = %e.report(), "outbox publish failed; will retry");
                        retries.push(Retry { id: message.id, error: e.report(), delay });
                    }
                    RetryDecision::DeadLetter => {
                        let error = format!("gave up after {} attempts: {}", message.attempts, e.report());
                        dead.push((message, error));
                    }
                },
                Err(e) => dead.push((message, e.report())),
            }
        }

        let settled = self.settle(&acks, &retries, &dead).await;
        self.forget_in_flight(acks.iter().chain(retries.iter().map(|r| &r.id)).chain(dead.iter().map(|(m, _)| &m.id)));
        settled?;
        if let Some(hook) = &self.hook {
            for (message, error) in &dead {
                hook.on_dead_letter(message, error).await;
            }
        }
        Ok(())
    }

    async fn settle(&self, acks: &[MessageId], retries: &[Retry], dead: &[(Message, String)]) -> Result<()> {
        if !acks.is_empty() {
            self.settle_step("acknowledge", || self.store.acknowledge(acks)).await?;
            bump(&self.counters.published, acks.len());
            debug!(count = acks.len(), "outbox messages published");
        }
        if !retries.is_empty() {
            self.settle_step("reschedule", || self.store.reschedule(self.id, retries)).await?;
            bump(&self.counters.retried, retries.len());
        }
        if !dead.is_empty() {
            let failures: Vec<Failure> =
                dead.iter().map(|(m, error)| Failure { id: m.id, error: error.clone() }).collect();
            self.settle_step("dead_letter", || self.store.dead_letter(self.id, &failures)).await?;
            bump(&self.counters.dead_lettered, dead.len());
            for (message, error) in dead {
                error!(message_id = %message.id, topic = %message.topic, attempts = message.attempts, %error, "outbox message dead-lettered");
            }
        }
        Ok(())
    }

    /// Runs one settle statement, retrying transient store errors (a deadlock, a dropped connection)
    /// a few times: an acknowledgement lost to one would leave the batch leased until the lease runs
    /// out and then publish it a second time. Each statement is idempotent, so a retry is safe.
    async fn settle_step<'a, F, Fut>(&self, operation: &'static str, step: F) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<()>> + 'a,
    {
        const BACKOFF_MS: [u64; 3] = [10, 50, 250];
        let mut backoff = BACKOFF_MS.iter();
        loop {
            match step().await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => {
                    let Some(ms) = backoff.next() else { return Err(e) };
                    bump(&self.counters.store_errors, 1);
                    warn!(error = %e, operation, retry_in_ms = ms, "outbox relay: settling a batch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(*ms)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Publishes `batch`, turning a panic of the publisher into a transient failure. A batch whose
    /// publish panicked is published again one message per call, so only the messages that panic fail
    /// (and, retried, end in the dead letters) while their batch-mates go out, some maybe twice.
    async fn publish_catching_panics(&self, batch: &[Message]) -> Vec<std::result::Result<(), PublishError>> {
        let panic = match AssertUnwindSafe(self.publisher.publish(batch)).catch_unwind().await {
            Ok(outcomes) => return outcomes,
            Err(panic) => panic,
        };
        if let [_] = batch {
            return vec![Err(PublishError::panicked(&*panic))];
        }
        warn!(messages = batch.len(), panic = %panic_text(&*panic), "outbox publisher panicked; publishing the batch one message at a time");
        let one_by_one = batch.iter().map(|message| async move {
            match AssertUnwindSafe(self.publisher.publish(std::slice::from_ref(message))).catch_unwind().await {
                Ok(mut outcomes) => outcomes
                    .pop()
                    .unwrap_or_else(|| Err(PublishError::transient("publisher returned fewer outcomes than messages"))),
                Err(panic) => Err(PublishError::panicked(&*panic)),
            }
        });
        futures::future::join_all(one_by_one).await
    }

    /// Publishes `batch`, extending its lease every third of the lease while the publish runs. The
    /// lease is held until `claimed_at + lease`, or a successful extension's send time + lease: both
    /// were read before the statement went out, so on the store's clock the lease ends later, never
    /// sooner. When extensions fail and the lease is about to run out, the publish is abandoned and
    /// its messages fail as transient (some may have reached the broker: at-least-once), so this
    /// relay does not go on publishing what another relay may claim once the lease is over.
    /// Publishes `batch`, extending its lease every third of the lease while the publish runs. The
    /// lease is held until `claimed_at + lease`, or a successful extension's send time + lease: both
    /// were read before the statement went out, so on the store's clock the lease ends later, never
    /// sooner. When extensions fail and the lease is about to run out, the publish is abandoned and
    /// its messages fail as transient (some may have reached the broker: at-least-once), so this
    /// relay does not go on publishing what another relay may claim once the lease is over.
    async fn publish_renewing_lease(
        &self,
        batch: &[Message],
        claimed_at: Instant,
    ) -> Vec<std::result::Result<(), PublishError>> {
        let lease = self.options.lease;
        let publish = self.publish_catching_panics(batch);
        tokio::pin!(publish);
        let every = lease / 3;
        let mut renew = tokio::time::interval_at(Instant::now() + every, every);
        // Give up a tenth of the lease before it ends, so nothing is still being sent when it does.
        let margin = lease / 10;
        let mut held_until = claimed_at + lease;
        let mut ids: Vec<MessageId> = Vec::new();
        loop {
            tokio::select! {
                outcomes = &mut publish => return outcomes,
                _ = renew.tick() => {
                    if ids.is_empty() {
                        ids = batch.iter().map(|m| m.id).collect();
                    }
                    let sent_at = Instant::now();
                    match self.store.extend_lease(self.id, &ids, lease).await {
                        Ok(()) => held_until = sent_at + lease,
                        Err(e) => warn!(error = %e, "outbox relay could not extend its lease; it gives the batch up if the lease runs out"),
                    }
                }
                _ = tokio::time::sleep_until(held_until - margin) => {
                    warn!(messages = batch.len(), "outbox relay: the lease is running out before the publish finished; abandoning it");
                    return batch
                        .iter()
                        .map(|_| Err(PublishError::transient("the claim's lease ran out before the publish finished")))
                        .collect();
                }
            }
        }
    }
}
