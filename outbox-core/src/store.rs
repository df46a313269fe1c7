//! The storage contract: [`Store`] (the relay's side), [`Enqueue`] (the caller's side, typed per backend)
//! and [`Inbox`] (the receiver's side).
//!
//! # Guarantees every implementation must keep
//! (each has a check in `outbox-testkit`'s `store_suite`)
//!
//! 1. A message enqueued in a transaction is visible to [`Store::claim`] only after that transaction
//!    commits; a rolled-back transaction leaves nothing.
//! 2. A claimed message is leased to one relay ([`RelayId`]) until its lease ends; no other claim returns
//!    it meanwhile. When the lease ends without an acknowledgement, it is claimable again.
//! 3. Every claim counts an attempt (`Message::attempts`), so a message that crashes its relay still
//!    reaches the dead letters.
//! 4. A claim takes the messages of a key as a run in enqueue order that starts at the key's oldest
//!    message still in the outbox: a message with a key is claimed only when every earlier message of
//!    its key is published, dead-lettered or in the same claim. While a message of a key is leased or
//!    waits for a retry, no later message of that key is claimed. Keys are therefore published in
//!    enqueue order, and a key's messages are never in two claims at once. Messages without a key have
//!    no order.
//! 5. Enqueueing twice with the same idempotency key while the first message is in the outbox (pending,
//!    retained or dead) stores one message and returns the first one's id.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Result;
use crate::message::{DeadLetter, Message, MessageId, NewMessage};

/// Identifies one relay instance; leases are held in its name.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayId(Uuid);

impl RelayId {
    /// A new random id.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
    /// The UUID.
    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }
    /// The id a store read back (for store implementations).
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

impl std::str::FromStr for RelayId {
    type Err = uuid::Error;
    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        Uuid::parse_str(text).map(Self)
    }
}

impl fmt::Debug for RelayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelayId({})", self.0)
    }
}

impl fmt::Display for RelayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// One of `count` disjoint slices of the ordering keys, by a hash of the key the store picks: a
/// claim in a slice takes keyed messages only of keys in that slice (and keyless messages as usual).
/// A relay gives each of its batch slots its own slice, so that the slots' claims take different
/// keys and their batches overlap instead of finding each other's keys held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeySlice {
    index: u32,
    count: u32,
}

impl KeySlice {
    /// Slice `index` of `count` (`index < count`, `count` at least 1); `None` otherwise.
    pub fn new(index: u32, count: u32) -> Option<Self> {
        (index < count).then_some(Self { index, count })
    }
    /// Which slice.
    pub const fn index(&self) -> u32 {
        self.index
    }
    /// Of how many.
    pub const fn count(&self) -> u32 {
        self.count
    }
}

/// A failed message to try again after `delay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// The message.
    pub id: MessageId,
    /// The error of this attempt, kept as `last_error`.
    pub error: String,
    /// How long to wait before the message is claimable again (measured on the store's clock).
    pub delay: Duration,
}

/// A message to park in the dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The message.
    pub id: MessageId,
    /// Why it is parked.
    pub error: String,
}

/// A snapshot of the outbox, for monitoring and alerting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxStats {
    /// Messages not yet published (including leased and retrying ones).
    pub pending: u64,
    /// Pending messages that failed at least once and wait for a retry.
    pub retrying: u64,
    /// Age of the oldest pending message.
    pub oldest_pending_age: Option<Duration>,
    /// Messages in the dead-letter set.
    pub dead_letters: u64,
    /// Pending messages never attempted that wait for their enqueue delay to pass.
    pub scheduled: u64,
}

impl OutboxStats {
    /// A snapshot from its figures (for store implementations).
    pub fn new(pending: u64, retrying: u64, oldest_pending_age: Option<Duration>, dead_letters: u64) -> Self {
        Self { pending, retrying, oldest_pending_age, dead_letters, scheduled: 0 }
    }

    /// With the count of scheduled (delayed) messages.
    pub fn with_scheduled(mut self, scheduled: u64) -> Self {
        self.scheduled = scheduled;
        self
    }
}

/// The relay's side of an outbox table. Object safe: used as `Arc<dyn Store>`.
///
/// See the [module docs](self) for the guarantees an implementation must keep. Methods that take an
/// `owner` only act on messages still leased to that relay, so a relay whose lease was taken over cannot
/// overwrite the new owner's work.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Leases up to `limit` claimable messages to `owner` for `lease`, counting an attempt on each, and
    /// returns them in enqueue order.
    async fn claim(&self, owner: RelayId, limit: usize, lease: Duration) -> Result<Vec<Message>>;

    /// [`Store::claim`] restricted to the keys of `slice` (keyless messages are in every slice). The
    /// guarantees are those of `claim`. The default claims from all keys; a store that implements
    /// slices says so with [`Store::claims_in_slices`], and only then does a relay use them.
    async fn claim_slice(
        &self,
        owner: RelayId,
        limit: usize,
        lease: Duration,
        slice: KeySlice,
    ) -> Result<Vec<Message>> {
        let _ = slice;
        self.claim(owner, limit, lease).await
    }

    /// Whether [`Store::claim_slice`] keeps to its slice (default `false`). Worth it where concurrent
    /// claims run in parallel (PostgreSQL, MySQL); SQLite's single writer runs them one at a time.
    fn claims_in_slices(&self) -> bool {
        false
    }

    /// [`Store::claim_slice`] for the batch that follows `behind`: messages this relay claimed in the
    /// same slice and has not settled yet. A key whose oldest unfinished messages are among `behind`
    /// (still leased to `owner`) counts as free after them, so the claim takes the key's next
    /// messages, each of them after its predecessor. The caller publishes the returned batch only
    /// after `behind` has settled, and hands back, unattempted, the messages of every key that
    /// `behind` left unfinished (a retry, or a message handed back). The default ignores `behind`
    /// and claims as `claim_slice` does; a store that implements it says so with
    /// [`Store::claims_behind`], and only then does a relay claim behind its batches.
    async fn claim_slice_behind(
        &self,
        owner: RelayId,
        limit: usize,
        lease: Duration,
        slice: KeySlice,
        behind: &[MessageId],
    ) -> Result<Vec<Message>> {
        let _ = behind;
        self.claim_slice(owner, limit, lease, slice).await
    }

    /// Whether [`Store::claim_slice_behind`] takes keys' messages behind `behind` (default `false`).
    fn claims_behind(&self) -> bool {
        false
    }

    /// Extends the lease of `ids` still held by `owner` to `lease` from now.
    async fn extend_lease(&self, owner: RelayId, ids: &[MessageId], lease: Duration) -> Result<()>;

    /// Hands claims back without counting the attempt as a failure: the messages become claimable now.
    async fn release(&self, owner: RelayId, ids: &[MessageId]) -> Result<()>;

    /// Marks messages as published: deletes them, or keeps them for the retention period.
    async fn acknowledge(&self, ids: &[MessageId]) -> Result<()>;

    /// Records failed attempts and makes each message claimable again after its delay.
    async fn reschedule(&self, owner: RelayId, retries: &[Retry]) -> Result<()>;

    /// Moves messages to the dead-letter set with their error.
    async fn dead_letter(&self, owner: RelayId, failures: &[Failure]) -> Result<()>;

    /// Lists up to `limit` dead letters, oldest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>>;

    /// Moves dead letters back to the outbox with their attempts reset; returns how many moved.
    /// A replayed message is ordered after the messages already pending for its key.
    async fn replay_dead_letters(&self, ids: &[MessageId]) -> Result<u64>;

    /// Deletes dead letters for good; returns how many were deleted.
    async fn purge_dead_letters(&self, ids: &[MessageId]) -> Result<u64>;

    /// In retention mode, deletes up to `limit` published messages older than `older_than`; returns how
    /// many were deleted. In the default delete-on-acknowledge mode there is nothing to purge.
    async fn purge_published(&self, older_than: Duration, limit: usize) -> Result<u64>;

    /// Backlog figures.
    async fn stats(&self) -> Result<OutboxStats>;

    /// Waits until new messages may have been committed, or `timeout` passes. Stores with commit
    /// notifications return early; the default just sleeps. A commit needs to wake only one waiter
    /// (the relay wakes its other workers when a claim comes back full), and a wake-up with nobody
    /// waiting should make the next call return at once (as `tokio::sync::Notify::notify_one` does).
    async fn wait_for_work(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
    }

    /// Whether every committed message, from any process, wakes one waiter of
    /// [`Store::wait_for_work`] (or leaves it a permit) once it is claimable (default `false`). A
    /// relay then waits for that wake-up after a batch without keys that was not full, instead of
    /// claiming again at once to find messages committed while it published. A store that can wake
    /// a relay only at enqueue, before the commit (SQLite, MySQL), says `false` and keeps waking it
    /// until the commit is seen with a [`LateCommitChase`].
    fn wakes_on_commit(&self) -> bool {
        false
    }

    /// The store's relay registry, if it keeps one (default `None`).
    fn registry(&self) -> Option<&dyn RelayRegistry> {
        None
    }

    /// The store's operator queries ([`Admin`](crate::Admin)), if it has them (all stores of this SDK do).
    fn admin(&self) -> Option<&dyn crate::Admin> {
        None
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for Arc<S> {
    async fn claim(&self, owner: RelayId, limit: usize, lease: Duration) -> Result<Vec<Message>> {
        (**self).claim(owner, limit, lease).await
    }
    async fn claim_slice(
        &self,
        owner: RelayId,
        limit: usize,
        lease: Duration,
        slice: KeySlice,
    ) -> Result<Vec<Message>> {
        (**self).claim_slice(owner, limit, lease, slice).await
    }
    fn claims_in_slices(&self) -> bool {
        (**self).claims_in_slices()
    }
    async fn claim_slice_behind(
        &self,
        owner: RelayId,
        limit: usize,
        lease: Duration,
        slice: KeySlice,
        behind: &[MessageId],
    ) -> Result<Vec<Message>> {
        (**self).claim_slice_behind(owner, limit, lease, slice, behind).await
    }
    fn claims_behind(&self) -> bool {
        (**self).claims_behind()
    }
    async fn extend_lease(&self, owner: RelayId, ids: &[MessageId], lease: Duration) -> Result<()> {
        (**self).extend_lease(owner, ids, lease).await
    }
    async fn release(&self, owner: RelayId, ids: &[MessageId]) -> Result<()> {
        (**self).release(owner, ids).await
    }
    async fn acknowledge(&self, ids: &[MessageId]) -> Result<()> {
        (**self).acknowledge(ids).await
    }
    async fn reschedule(&self, owner: RelayId, retries: &[Retry]) -> Result<()> {
        (**self).reschedule(owner, retries).await
    }
    async fn dead_letter(&self, owner: RelayId, failures: &[Failure]) -> Result<()> {
        (**self).dead_letter(owner, failures).await
    }
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        (**self).dead_letters(limit).await
    }
    async fn replay_dead_letters(&self, ids: &[MessageId]) -> Result<u64> {
        (**self).replay_dead_letters(ids).await
    }
    async fn purge_dead_letters(&self, ids: &[MessageId]) -> Result<u64> {
        (**self).purge_dead_letters(ids).await
    }
    async fn purge_published(&self, older_than: Duration, limit: usize) -> Result<u64> {
        (**self).purge_published(older_than, limit).await
    }
    async fn stats(&self) -> Result<OutboxStats> {
        (**self).stats().await
    }
    async fn wait_for_work(&self, timeout: Duration) {
        (**self).wait_for_work(timeout).await
    }
    fn wakes_on_commit(&self) -> bool {
        (**self).wakes_on_commit()
    }
    fn registry(&self) -> Option<&dyn RelayRegistry> {
        (**self).registry()
    }
    fn admin(&self) -> Option<&dyn crate::Admin> {
        (**self).admin()
    }
}

/// A relay as the registry shows it: who it is, where it runs, and the claims it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayInfo {
    /// Its lease-owner id.
    pub id: RelayId,
    /// Its name ([`RelayOptions::name`](crate::RelayOptions::name)).
    pub name: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// When it registered.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
    /// Messages it holds leased now.
    pub claims_held: u64,
    /// Messages it had published at its last heartbeat (since it started).
    pub published: u64,
}

impl RelayInfo {
    /// An entry from its parts (for store implementations).
    pub fn new(
        id: RelayId,
        name: String,
        host: String,
        pid: u32,
        started_at: DateTime<Utc>,
        heartbeat_at: DateTime<Utc>,
        claims_held: u64,
    ) -> Self {
        Self { id, name, host, pid, started_at, heartbeat_at, claims_held, published: 0 }
    }

    /// With the count of messages it had published at its last heartbeat.
    pub fn with_published(mut self, published: u64) -> Self {
        self.published = published;
        self
    }
}

/// Where running relays register and heartbeat, so operators can see them (`outbox status`). A relay
/// whose store has one ([`Store::registry`]) heartbeats every 10 seconds while it runs and leaves
/// when it stops; a relay killed stays listed until its heartbeat is older than the caller's
/// `alive_within`.
#[async_trait]
pub trait RelayRegistry: Send + Sync {
    /// Registers `relay` (first call) or records its heartbeat, with the messages it has published
    /// since it started.
    async fn heartbeat(&self, relay: RelayId, name: &str, host: &str, pid: u32, published: u64) -> Result<()>;
    /// The relays whose last heartbeat is more recent than `alive_within` ago, oldest first.
    async fn relays(&self, alive_within: Duration) -> Result<Vec<RelayInfo>>;
    /// Removes `relay`'s entry (a relay that stops).
    async fn deregister(&self, relay: RelayId) -> Result<()>;
}

/// For a store that can wake its relay only when a message is enqueued, before the transaction
/// commits (SQLite and MySQL do, in the process that enqueues): after such a wake-up its
/// [`Store::wait_for_work`] returns again after 5 ms, then 10, 20, ... up to 640 ms (about 1.3 s in
/// all), until a claim finds something, so a commit that comes later than its wake-up is published
/// soon instead of at the next `poll_interval`.
///
/// ```
/// use std::time::Duration;
/// use outbox_engine::LateCommitChase;
/// use tokio::sync::Notify;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let (chase, wake) = (LateCommitChase::default(), Notify::new());
/// chase.enqueued(); // in the store's enqueue, with `wake.notify_one()`
/// let started = tokio::time::Instant::now();
/// chase.wait(&wake, Duration::from_secs(1)).await; // in `wait_for_work`: the commit is awaited
/// assert_eq!(started.elapsed(), Duration::from_millis(5));
/// chase.claimed(1); // in `claim`: the claim found it, the chase ends
/// # }
/// ```
#[derive(Debug, Default)]
pub struct LateCommitChase {
    /// The next wait while a chase runs.
    next_wait: Mutex<Option<Duration>>,
}

impl LateCommitChase {
    /// The first wait after an enqueue's wake-up.
    pub const FIRST_WAIT: Duration = Duration::from_millis(5);
    /// The last; past it the chase ends and waits are the caller's timeout again.
    pub const LAST_WAIT: Duration = Duration::from_millis(640);

    fn next_wait(&self) -> std::sync::MutexGuard<'_, Option<Duration>> {
        self.next_wait.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A message was enqueued in a transaction that may commit later: start (or restart) the chase.
    pub fn enqueued(&self) {
        *self.next_wait() = Some(Self::FIRST_WAIT);
    }

    /// A claim came back with `claimed` messages: one that found something ends the chase.
    pub fn claimed(&self, claimed: usize) {
        if claimed > 0 {
            *self.next_wait() = None;
        }
    }

    /// Waits for `wake` or `timeout`; while a chase runs, no longer than its next wait, which then
    /// doubles. Returns whether `wake` woke it.
    pub async fn wait(&self, wake: &tokio::sync::Notify, timeout: Duration) -> bool {
        let limit = {
            let mut next = self.next_wait();
            let chase = *next;
            *next = chase.map(|wait| wait.saturating_mul(2)).filter(|wait| *wait <= Self::LAST_WAIT);
            chase.map_or(timeout, |wait| wait.min(timeout))
        };
        tokio::time::timeout(limit, wake.notified()).await.is_ok()
    }
}

/// The caller's side: writes messages inside the caller's own transaction.
///
/// Every backend has the same shape: `store.enqueue(&mut *tx, message).await?`, where `tx` is the
/// caller's transaction of that backend (for sqlx, `&mut *tx` turns a `Transaction` into a connection).
pub trait Enqueue {
    /// The connection type the caller's transaction derefs to.
    type Connection: ?Sized + Send;

    /// Writes one message in the caller's transaction and returns its id (or, for a duplicate
    /// idempotency key, the id of the message already stored).
    fn enqueue<'a>(
        &'a self,
        conn: &'a mut Self::Connection,
        message: NewMessage,
    ) -> impl Future<Output = Result<MessageId>> + Send + 'a;

    /// Writes several messages in the caller's transaction, in order (their enqueue order, which is
    /// the per-key publish order). Validates the whole batch before writing any of it; stores write it
    /// in as few statements as they can, so one call beats a loop of [`Enqueue::enqueue`].
    fn enqueue_batch<'a>(
        &'a self,
        conn: &'a mut Self::Connection,
        messages: Vec<NewMessage>,
    ) -> impl Future<Output = Result<Vec<MessageId>>> + Send + 'a;
}

/// The receiver's side: remembers which messages a consumer has applied, inside the receiver's own
/// transaction, so that a redelivered message is applied once.
///
/// ```ignore
/// let mut tx = pool.begin().await?;
/// if inbox.process_once(&mut *tx, "billing", message_id).await? {
///     apply(&mut tx, event).await?;  // first delivery: do the work in the same transaction
/// }
/// tx.commit().await?;               // a rollback forgets the mark too
/// ```
#[async_trait]
pub trait Inbox: Send + Sync + fmt::Debug + 'static {
    /// The connection type the receiver's transaction derefs to.
    type Connection: ?Sized + Send;

    /// Records `(consumer, id)`; returns `true` the first time and `false` for a duplicate.
    async fn process_once(&self, conn: &mut Self::Connection, consumer: &str, id: MessageId) -> Result<bool>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Notify;
    use tokio::time::Instant;

    /// The waits after an enqueue's wake-up until the chase gives up, each ending without a wake-up.
    async fn chase_waits(chase: &LateCommitChase, timeout: Duration) -> Vec<u128> {
        let wake = Notify::new();
        let mut waits = Vec::new();
        for _ in 0..9 {
            let started = Instant::now();
            assert!(!chase.wait(&wake, timeout).await);
            waits.push(started.elapsed().as_millis());
        }
        waits
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_commit_is_chased_from_5_ms_doubling_to_640_ms_then_waits_are_the_timeout_again() {
        let chase = LateCommitChase::default();
        chase.enqueued();
        assert_eq!(chase_waits(&chase, Duration::from_secs(1)).await, [5, 10, 20, 40, 80, 160, 320, 640, 1000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_that_finds_something_ends_the_chase_and_a_short_timeout_caps_its_waits() {
        let chase = LateCommitChase::default();
        chase.enqueued();
        chase.claimed(0);
        assert_eq!(chase_waits(&chase, Duration::from_millis(30)).await, [5, 10, 20, 30, 30, 30, 30, 30, 30]);
        chase.enqueued();
        chase.claimed(3);
        assert_eq!(chase_waits(&chase, Duration::from_millis(30)).await[0], 30, "no chase after a claim found it");
    }
}
