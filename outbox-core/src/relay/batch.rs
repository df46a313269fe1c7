//! One batch's life after its claim: publish it (renewing its lease, and giving up before the lease
//! runs out), then settle it: acknowledge, reschedule, dead-letter.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::future::FutureExt;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use super::{bump, instruments, Inner};
use crate::error::Result;
use crate::message::{Message, MessageId};
use crate::publisher::{panic_text, PublishError};
use crate::retry::RetryDecision;
use crate::store::{Failure, Retry};

/// The keys a settled batch left unfinished.
pub(super) type UnfinishedKeys = HashSet<String>;

/// What became of one claimed message: `None` when it was not attempted (an earlier message of its
/// key will be retried, so it goes back to the outbox without counting the attempt).
type Outcome = Option<std::result::Result<(), PublishError>>;

impl Inner {
    /// Publishes a batch claimed at `claimed_at` and records each message's outcome in the store.
    ///
    /// A batch may hold a run of several messages of a key, in enqueue order. At the first message of a
    /// key that will be retried, the key's later messages of the batch go back to the outbox
    /// unattempted, so they are published after it; a message that is dead-lettered does not hold
    /// its key back.
    ///
    /// Returns the keys the batch left unfinished: those of its retried messages and of the
    /// messages it handed back. A batch claimed behind this one must hand back its messages of those
    /// keys, unattempted.
    pub(super) async fn publish_and_settle(&self, batch: Vec<Message>, claimed_at: Instant) -> Result<UnfinishedKeys> {
        let max_attempts = self.options.retry.max_attempts();
        let (exhausted, batch): (Vec<Message>, Vec<Message>) =
            batch.into_iter().partition(|m| m.attempts > max_attempts);
        let outcomes = if batch.is_empty() {
            Vec::new()
        } else {
            let started = Instant::now();
            #[cfg(feature = "otel")]
            let mut span = crate::otel::publish_span(&batch);
            let outcomes = self.publish_renewing_lease(&batch, claimed_at).await;
            self.instruments.published(started.elapsed());
            #[cfg(feature = "otel")]
            {
                use opentelemetry::trace::{Span as _, Status};
                let failed = outcomes.iter().filter(|o| matches!(o, Some(Err(_)))).count();
                if failed > 0 {
                    span.set_status(Status::error(format!("{failed} of {} messages failed", batch.len())));
                }
                span.end();
            }
            outcomes
        };

        let mut acked: Vec<Message> = Vec::with_capacity(batch.len());
        let mut retried: Vec<Message> = Vec::new();
        let mut retries = Vec::new();
        let mut releases = Vec::new();
        let mut dead: Vec<(Message, String)> = Vec::new();
        for message in exhausted {
            let error = format!(
                "claimed {} times without a recorded outcome (relay crash or lease expiry); max attempts is {max_attempts}",
                message.attempts
            );
            dead.push((message, error));
        }
        let mut held_keys: UnfinishedKeys = HashSet::new();
        let mut released_keys: Vec<String> = Vec::new();
        let mut outcomes = outcomes.into_iter();
        for message in batch {
            let outcome = outcomes.next().unwrap_or_else(|| {
                Some(Err(PublishError::transient("publisher returned fewer outcomes than messages")))
            });
            let held = message.key.as_ref().is_some_and(|key| held_keys.contains(key));
            if outcome.is_none() || (held && matches!(outcome, Some(Err(_)))) {
                released_keys.extend(message.key.clone());
            }
            match outcome {
                None => releases.push(message.id),
                Some(Ok(())) => {
                    if held {
                        warn!(message_id = %message.id, "outbox publisher delivered a message after an earlier message of its key failed; the key's order may break when that one is retried");
                    }
                    acked.push(message)
                }
                Some(Err(_)) if held => releases.push(message.id),
                Some(Err(e)) => match self.decide(&message, &e) {
                    RetryDecision::RetryAfter(delay) => {
                        warn!(message_id = %message.id, attempts = message.attempts, retry_in = ?delay, error = %e.report(), "outbox publish failed; will retry");
                        retries.push(Retry { id: message.id, error: e.report(), delay });
                        if let Some(key) = &message.key {
                            held_keys.insert(key.clone());
                        }
                        retried.push(message);
                    }
                    RetryDecision::DeadLetter if e.is_transient() => {
                        let error = format!("gave up after {} attempts: {}", message.attempts, e.report());
                        dead.push((message, error));
                    }
                    RetryDecision::DeadLetter => dead.push((message, e.report())),
                },
            }
        }

        let acks: Vec<MessageId> = acked.iter().map(|m| m.id).collect();
        let settled = self
            .settle(Settlement {
                acks: &acks,
                acked: &acked,
                retries: &retries,
                retried: &retried,
                dead: &dead,
                releases: &releases,
            })
            .await;
        self.forget_in_flight(
            acks.iter().chain(retries.iter().map(|r| &r.id)).chain(dead.iter().map(|(m, _)| &m.id)).chain(&releases),
        );
        settled?;
        if let Some(hook) = &self.hook {
            for (message, error) in &dead {
                hook.on_dead_letter(message, error).await;
            }
        }
        held_keys.extend(released_keys);
        Ok(held_keys)
    }

    /// Whether a failed message is retried (after a delay) or dead-lettered.
    fn decide(&self, message: &Message, error: &PublishError) -> RetryDecision {
        if error.is_transient() {
            self.options.retry.decide(message.attempts)
        } else {
            RetryDecision::DeadLetter
        }
    }

    async fn settle(&self, settlement: Settlement<'_>) -> Result<()> {
        let Settlement { acks, acked, retries, retried, dead, releases } = settlement;
        if !acks.is_empty() {
            self.settle_step("acknowledge", || self.store.acknowledge(acks)).await?;
            bump(&self.counters.published, acks.len());
            self.instruments.count_by_topic(instruments::PUBLISHED, acked);
            self.instruments.delivered(acked);
            debug!(count = acks.len(), "outbox messages published");
        }
        if !retries.is_empty() {
            self.settle_step("reschedule", || self.store.reschedule(self.id, retries)).await?;
            bump(&self.counters.retried, retries.len());
            self.instruments.count_by_topic(instruments::RETRIED, retried);
        }
        if !dead.is_empty() {
            let failures: Vec<Failure> =
                dead.iter().map(|(m, error)| Failure { id: m.id, error: error.clone() }).collect();
            self.settle_step("dead_letter", || self.store.dead_letter(self.id, &failures)).await?;
            bump(&self.counters.dead_lettered, dead.len());
            self.instruments.count_by_topic(instruments::DEAD_LETTERED, dead.iter().map(|(m, _)| m));
            for (message, error) in dead {
                error!(message_id = %message.id, topic = %message.topic, attempts = message.attempts, %error, "outbox message dead-lettered");
            }
        }
        // Last: until they are released, a key's later messages stay leased behind its retried one.
        if !releases.is_empty() {
            self.settle_step("release", || self.store.release(self.id, releases)).await?;
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
                    warn!(error = %e.report(), operation, retry_in_ms = ms, "outbox relay: settling a batch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(*ms)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Publishes `batch` so that a key's messages reach the broker in order. A publisher that
    /// [keeps key order](crate::Publisher::keeps_key_order) takes the whole batch in one call;
    /// otherwise a batch in which keys repeat goes out in rounds, one message of each key per call.
    async fn publish_in_key_order(&self, batch: &[Message]) -> Vec<Outcome> {
        let keeps_key_order = self.publisher.keeps_key_order();
        if !keeps_key_order && repeats_a_key(batch) {
            return self.publish_in_rounds(batch).await;
        }
        match AssertUnwindSafe(self.publisher.publish(batch)).catch_unwind().await {
            Ok(outcomes) => outcomes.into_iter().map(Some).collect(),
            Err(panic) if batch.len() == 1 => vec![Some(Err(PublishError::panicked(&*panic)))],
            Err(panic) => {
                warn!(messages = batch.len(), panic = %panic_text(&*panic), "outbox publisher panicked; publishing the batch one message at a time");
                // Only a publisher that keeps key order can have been handed a key twice.
                if keeps_key_order && repeats_a_key(batch) {
                    self.publish_in_rounds(batch).await
                } else {
                    self.publish_one_by_one(batch).await.into_iter().map(Some).collect()
                }
            }
        }
    }

    /// Publishes `batch` in rounds with at most one message of each key. Once a message of a key fails
    /// and will be retried, the key's later messages are not attempted.
    async fn publish_in_rounds(&self, batch: &[Message]) -> Vec<Outcome> {
        let mut outcomes: Vec<Outcome> = batch.iter().map(|_| None).collect();
        let mut held_keys: HashSet<&str> = HashSet::new();
        for round in rounds(batch) {
            let round: Vec<usize> = round
                .into_iter()
                .filter(|&i| !batch[i].key.as_deref().is_some_and(|key| held_keys.contains(key)))
                .collect();
            if round.is_empty() {
                break;
            }
            let messages: Vec<Message> = round.iter().map(|&i| batch[i].clone()).collect();
            let results = match AssertUnwindSafe(self.publisher.publish(&messages)).catch_unwind().await {
                Ok(results) => results,
                Err(panic) if messages.len() == 1 => vec![Err(PublishError::panicked(&*panic))],
                Err(panic) => {
                    warn!(messages = messages.len(), panic = %panic_text(&*panic), "outbox publisher panicked; publishing the round one message at a time");
                    self.publish_one_by_one(&messages).await
                }
            };
            let mut results = results.into_iter();
            for i in round {
                let result = results
                    .next()
                    .unwrap_or_else(|| Err(PublishError::transient("publisher returned fewer outcomes than messages")));
                if let (Err(e), Some(key)) = (&result, batch[i].key.as_deref()) {
                    if matches!(self.decide(&batch[i], e), RetryDecision::RetryAfter(_)) {
                        held_keys.insert(key);
                    }
                }
                outcomes[i] = Some(result);
            }
        }
        outcomes
    }

    /// Publishes each message of `batch` (no key twice) in a call of its own, concurrently, so only
    /// the messages that panic fail.
    async fn publish_one_by_one(&self, batch: &[Message]) -> Vec<std::result::Result<(), PublishError>> {
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
    async fn publish_renewing_lease(&self, batch: &[Message], claimed_at: Instant) -> Vec<Outcome> {
        let lease = self.options.lease;
        let publish = self.publish_in_key_order(batch);
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
                        Err(e) => warn!(error = %e.report(), "outbox relay could not extend its lease; it gives the batch up if the lease runs out"),
                    }
                }
                _ = tokio::time::sleep_until(held_until - margin) => {
                    warn!(messages = batch.len(), "outbox relay: the lease is running out before the publish finished; abandoning it");
                    return batch
                        .iter()
                        .map(|_| Some(Err(PublishError::transient("the claim's lease ran out before the publish finished"))))
                        .collect();
                }
            }
        }
    }
}

/// What a batch's settle records: the ids acknowledged (and their messages), the retries (and their
/// messages), the dead letters, and the messages handed back unattempted.
struct Settlement<'a> {
    acks: &'a [MessageId],
    acked: &'a [Message],
    retries: &'a [Retry],
    retried: &'a [Message],
    dead: &'a [(Message, String)],
    releases: &'a [MessageId],
}

/// Whether two messages of `batch` share a key.
fn repeats_a_key(batch: &[Message]) -> bool {
    let mut seen = HashSet::with_capacity(batch.len());
    batch.iter().filter_map(|m| m.key.as_deref()).any(|key| !seen.insert(key))
}

/// Splits `batch` into rounds with at most one message of each key: round `n` holds the `n`-th
/// message of every key, and the first also every message without a key. Indices into `batch`, each
/// round in batch order.
fn rounds(batch: &[Message]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, message) in batch.iter().enumerate() {
        let round = match message.key.as_deref() {
            None => 0,
            Some(key) => {
                let count = seen.entry(key).or_insert(0);
                *count += 1;
                *count - 1
            }
        };
        if rounds.len() <= round {
            rounds.resize_with(round + 1, Vec::new);
        }
        rounds[round].push(i);
    }
    rounds
}
