//! One relay worker: claim -> publish -> settle, with its [`ClaimSchedule`] deciding when to claim
//! and how long to wait for work.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;

use futures::future::{BoxFuture, FutureExt, OptionFuture};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info_span, warn, Instrument};

use super::schedule::{ClaimSchedule, PlannedClaim};
use super::{bump, Inner};
use crate::error::{Error, Result};
use crate::message::{Message, MessageId};
use crate::publisher::panic_text;
use crate::store::KeySlice;

/// A full batch in which some key has at least this many messages (or the whole batch, if smaller)
/// is followed by a claim behind it: that key's next messages most likely wait behind it. With
/// shorter runs (many keys), the slice's next claim after the settle finds as much, and a claim
/// behind a batch reads that batch's rows again.
const RUN_WORTH_FOLLOWING: usize = 8;

/// The most messages of one key in `batch`.
fn longest_key_run(batch: &[Message]) -> usize {
    let mut runs: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for key in batch.iter().filter_map(|m| m.key.as_deref()) {
        *runs.entry(key).or_default() += 1;
    }
    runs.into_values().max().unwrap_or(0)
}

/// A claimed batch and when its claim was sent: its lease runs from no earlier than that.
pub(super) struct Claim {
    pub(super) batch: Vec<Message>,
    pub(super) sent_at: Instant,
}

impl Inner {
    pub(super) fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<MessageId>> {
        self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs [`Inner::work`] until shutdown, starting it again (after `error_backoff`) if it panics: a
    /// panic in a store or a hook must not leave the relay with fewer workers and no sign of it. The
    /// batches the panicked loop had in flight stay leased until their lease ends, then are claimed
    /// again.
    pub(super) async fn work_until_shutdown(&self, worker: usize, shutdown: CancellationToken) {
        loop {
            match AssertUnwindSafe(self.work(worker, shutdown.clone())).catch_unwind().await {
                Ok(()) => return,
                Err(panic) => {
                    bump(&self.counters.worker_panics, 1);
                    error!(worker, panic = %panic_text(&*panic), "outbox relay worker panicked; restarting it");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(self.options.error_backoff) => {}
                    }
                }
            }
        }
    }

    /// One worker's loop. While a backlog lasts (its claims come back full) a worker keeps up to
    /// `batches_in_flight` batches in flight, a claim under way included: it claims the next batch
    /// while the broker confirms the current one and publishes it as soon as it is claimed. Without a
    /// backlog it waits for a wake-up; [`ClaimSchedule`] says when it claims and how long it waits.
    async fn work(&self, worker: usize, shutdown: CancellationToken) {
        let options = &self.options;
        let sliced = self.store.claims_in_slices() && options.concurrency * options.batches_in_flight > 1;
        let mut schedule = ClaimSchedule::new(options, worker, self.store.wakes_on_commit(), sliced);
        let mut in_flight = FuturesUnordered::new();
        let mut claiming: Option<(PlannedClaim, BoxFuture<'_, Result<Claim>>)> = None;
        let mut seen_backlog = self.backlog_found.load(Ordering::Relaxed);
        let mut seen_freed = self.slices_freed.load(Ordering::Relaxed);
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let backlog = self.backlog_found.load(Ordering::Relaxed);
            if backlog != seen_backlog {
                seen_backlog = backlog;
                schedule.peer_found_work();
            }
            let freed = self.slices_freed.load(Ordering::Relaxed);
            if freed != seen_freed {
                seen_freed = freed;
                schedule.peer_freed_slices();
            }
            let now = Instant::now();
            let room = in_flight.len() + usize::from(claiming.is_some()) < options.batches_in_flight;
            if claiming.is_none() && room {
                if let Some(planned) = schedule.next_claim(now) {
                    let slice = if planned.in_slice { self.key_slice(worker, planned.slot) } else { None };
                    claiming = Some((planned, Box::pin(self.claim(slice, &[]))));
                }
            }
            // No backlog: wait for a wake-up only once this worker's batches have settled.
            let wait = schedule.wait_for_work(now, claiming.is_some() || !in_flight.is_empty());
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some((settled, claim_again, slot)) = in_flight.next(), if !in_flight.is_empty() => {
                    if schedule.settled(slot, claim_again) {
                        self.free_slices();
                    }
                    if let Err(e) = settled {
                        schedule.store_error(None, self.store_error(&e));
                    }
                }
                Some(claimed) = OptionFuture::from(claiming.as_mut().map(|(_, claim)| claim)) => {
                    let Some((planned, _)) = claiming.take() else { continue };
                    let slot = planned.slot;
                    match claimed {
                        Ok(Claim { batch, sent_at }) => {
                            let keyed = batch.iter().any(|m| m.key.is_some());
                            let after = schedule.claimed(slot, batch.len(), keyed);
                            if after.wake_peers {
                                self.wake_peers();
                            }
                            if after.slice_drained {
                                self.free_slices();
                            }
                            if !batch.is_empty() {
                                let slice = if planned.in_slice { self.key_slice(worker, slot) } else { None };
                                let settle = self.publish_in_turn(batch, sent_at, slice, shutdown.clone());
                                in_flight.push(settle.map(move |settled| (settled, after.claim_again_when_settled, slot)));
                            }
                        }
                        Err(e) => schedule.store_error(Some(slot), self.store_error(&e)),
                    }
                }
                Some(()) = OptionFuture::from(schedule.paused_until().map(tokio::time::sleep_until)) => {}
                _ = self.store.wait_for_work(wait.unwrap_or_default()), if wait.is_some() => schedule.woken(),
                _ = self.found_work.notified(), if wait.is_some() => {}
            }
        }
        // Shutdown: no new claims. A claim under way is handed back while the batches in flight finish.
        let hand_back = async {
            if let Some(Ok(claim)) = OptionFuture::from(claiming.map(|(_, claim)| claim)).await {
                if !claim.batch.is_empty() {
                    self.hand_back(&claim.batch).await;
                }
            }
        };
        let finish = async {
            while let Some((settled, _, _)) = in_flight.next().await {
                if let Err(e) = settled {
                    self.store_error(&e);
                }
            }
        };
        tokio::join!(hand_back, finish);
    }

    /// Counts and logs a store error; returns the instant before which the worker claims nothing.
    fn store_error(&self, e: &Error) -> Instant {
        bump(&self.counters.store_errors, 1);
        error!(error = %e.report(), "outbox relay: store error; backing off");
        Instant::now() + self.options.error_backoff
    }

    /// Tells every worker (this one too) that a backlog may wait, waking those that wait.
    fn wake_peers(&self) {
        self.backlog_found.fetch_add(1, Ordering::Relaxed);
        self.found_work.notify_waiters();
    }

    /// Tells every worker (this one too) that dry slices should claim again: a batch claimed over
    /// every key settled (its keys' next messages may wait in any slice), or a slice drained (claims
    /// in the others reach their rows without walking past its).
    fn free_slices(&self) {
        self.slices_freed.fetch_add(1, Ordering::Relaxed);
        self.found_work.notify_waiters();
    }

    /// Drops finished (or handed-back) messages from the in-flight set.
    pub(super) fn forget_in_flight<'a>(&self, ids: impl IntoIterator<Item = &'a MessageId>) {
        let mut in_flight = self.lock_in_flight();
        let forgotten = ids.into_iter().filter(|id| in_flight.remove(id)).count();
        self.instruments.settled(forgotten);
    }

    /// The key slice of a worker's batch slot: one per slot of every worker.
    fn key_slice(&self, worker: usize, slot: usize) -> Option<KeySlice> {
        let slots = self.options.batches_in_flight;
        let count = u32::try_from(self.options.concurrency * slots).ok()?;
        let index = u32::try_from(worker * slots + slot).ok()?;
        (count > 1).then(|| KeySlice::new(index, count)).flatten()
    }

    /// Claims a batch (in `slice`, if given, and behind the unsettled batch `behind` of that slice,
    /// if not empty) and records it as in flight.
    async fn claim(&self, slice: Option<KeySlice>, behind: &[MessageId]) -> Result<Claim> {
        let options = &self.options;
        let sent_at = Instant::now();
        let (size, lease) = (options.batch_size, options.lease);
        let batch = match slice {
            Some(slice) if !behind.is_empty() => {
                self.store.claim_slice_behind(self.id, size, lease, slice, behind).await?
            }
            Some(slice) => self.store.claim_slice(self.id, size, lease, slice).await?,
            None => self.store.claim(self.id, size, lease).await?,
        };
        let took = sent_at.elapsed();
        self.instruments.claimed(took, batch.len());
        debug!(claimed = batch.len(), slice = ?slice, ?took, "outbox claim");
        if !batch.is_empty() {
            bump(&self.counters.batches, 1);
            bump(&self.counters.claimed, batch.len());
            self.lock_in_flight().extend(batch.iter().map(|m| m.id));
        }
        Ok(Claim { batch, sent_at })
    }

    /// Publishes and settles a claimed batch. A full batch claimed in a key slice that holds a run
    /// of [`RUN_WORTH_FOLLOWING`] messages of a key, on a store that
    /// [claims behind](crate::Store::claims_behind) a batch, is followed in turn by the next batch of
    /// its slice: claimed while this one publishes (its keys' next messages included), published
    /// once this one has settled, less the messages of keys this one left unfinished (handed back
    /// unattempted); and so on while the batches come back so. A key whose queue fills batch after
    /// batch moves at the pace of its claims, publishing overlapped, not of claim, publish and
    /// settle one after another.
    async fn publish_in_turn(
        &self,
        mut batch: Vec<Message>,
        mut sent_at: Instant,
        slice: Option<KeySlice>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        loop {
            let follows = self.store.claims_behind()
                && batch.len() >= self.options.batch_size
                && longest_key_run(&batch) >= RUN_WORTH_FOLLOWING.min(self.options.batch_size)
                && !shutdown.is_cancelled();
            let behind: Vec<MessageId> =
                if follows { batch.iter().filter(|m| m.key.is_some()).map(|m| m.id).collect() } else { Vec::new() };
            let span = info_span!("outbox.batch", relay = %self.id, size = batch.len());
            let settle = self.publish_and_settle(batch, sent_at).instrument(span);
            let Some(slice) = slice.filter(|_| follows) else { return settle.await.map(drop) };
            let (held, next) = match tokio::join!(settle, self.claim(Some(slice), &behind)) {
                (Ok(held), Ok(next)) => (held, next),
                (Err(e), Ok(next)) => {
                    // The batch's outcome is not recorded: publishing the next one could overtake it.
                    self.hand_back(&next.batch).await;
                    return Err(e);
                }
                (Err(e), Err(_)) | (Ok(_), Err(e)) => return Err(e),
            };
            let (kept, back): (Vec<Message>, Vec<Message>) =
                next.batch.into_iter().partition(|m| m.key.as_ref().is_none_or(|key| !held.contains(key)));
            if !back.is_empty() {
                self.hand_back(&back).await;
            }
            if kept.is_empty() {
                return Ok(());
            }
            if shutdown.is_cancelled() {
                self.hand_back(&kept).await;
                return Ok(());
            }
            (batch, sent_at) = (kept, next.sent_at);
        }
    }

    /// Releases claimed messages that will not be published (a claim that returned after shutdown,
    /// or messages of keys that the batch before them left unfinished), so they can be claimed again
    /// at once instead of after their lease.
    async fn hand_back(&self, batch: &[Message]) {
        let ids: Vec<MessageId> = batch.iter().map(|m| m.id).collect();
        match self.store.release(self.id, &ids).await {
            Ok(()) => self.forget_in_flight(&ids),
            Err(e) => {
                warn!(error = %e.report(), messages = ids.len(), "outbox relay could not hand back claimed messages it will not publish; their lease will expire")
            }
        }
    }

    pub(super) async fn dispatch_once(&self) -> Result<usize> {
        let Claim { batch, sent_at } = self.claim(None, &[]).await?;
        let claimed = batch.len();
        if claimed == 0 {
            return Ok(0);
        }
        let span = info_span!("outbox.batch", relay = %self.id, size = claimed);
        self.publish_and_settle(batch, sent_at).instrument(span).await.map(|_| claimed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(key: Option<&str>) -> Message {
        Message {
            id: MessageId::new(),
            topic: "t".into(),
            key: key.map(str::to_owned),
            payload: Vec::new(),
            headers: Default::default(),
            created_at: chrono::Utc::now(),
            attempts: 1,
            last_error: None,
        }
    }

    #[test]
    fn the_longest_key_run_counts_the_most_messages_of_one_key() {
        assert_eq!(longest_key_run(&[]), 0);
        assert_eq!(longest_key_run(&[message(None), message(None)]), 0, "keyless messages make no run");
        let batch = [message(Some("a")), message(Some("b")), message(None), message(Some("a")), message(Some("a"))];
        assert_eq!(longest_key_run(&batch), 3);
    }
}
