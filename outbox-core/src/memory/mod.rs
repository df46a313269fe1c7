//! In-memory [`Store`] and [`Publisher`](crate::Publisher), for unit tests and embedded demos. Nothing survives the process.
//!
//! The store keeps every guarantee of the [`Store`] contract (it passes the same conformance suite as
//! the SQL stores) and uses tokio's clock, so tests can run with paused time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::message::{DeadLetter, Message, MessageId, MessageLimits, NewMessage};
use crate::store::{
    Enqueue, Failure, Inbox, KeySlice, LateCommitChase, OutboxStats, RelayId, RelayInfo, RelayRegistry, Retry, Store,
};

mod publisher;
pub use publisher::MemoryPublisher;

/// Whether `key` is in `slice` (by a fixed hash of the key).
fn in_slice(key: &str, slice: KeySlice) -> bool {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish() % u64::from(slice.count()) == u64::from(slice.index())
}

#[derive(Debug)]
struct Entry {
    message: Message,
    idempotency_key: Option<String>,
    available_at: Instant,
    lease: Option<(RelayId, Instant)>,
    published_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    entries: BTreeMap<u64, Entry>,
    seq_of: HashMap<MessageId, u64>,
    dead: BTreeMap<u64, (DeadLetter, Option<String>)>,
    dead_seq_of: HashMap<MessageId, u64>,
    idempotency: HashMap<String, MessageId>,
    inbox: HashSet<(String, MessageId)>,
    /// The relay registry (claims held are counted when listed).
    relays: HashMap<RelayId, RelayInfo>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Notify,
    limits: MessageLimits,
    retention: Option<Duration>,
    /// How long a claim's answer takes to come back after the claim took effect (for tests).
    claim_delay: Mutex<Duration>,
    /// How many of the next claims fail with a transient error (for tests).
    failing_claims: AtomicUsize,
    /// Waiting relays ignore commits and only poll (for tests).
    no_wake_ups: AtomicBool,
    /// Relays are woken at enqueue, before the commit, as SQLite and MySQL do (for tests).
    wake_at_enqueue: AtomicBool,
    /// With `wake_at_enqueue`: keeps waking the relay until the commit is seen.
    chase: LateCommitChase,
    /// Claims answered, empty ones included (for tests).
    claims: AtomicUsize,
}

/// An in-memory outbox. Clones share the same data.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

/// A transaction on a [`MemoryStore`]: messages enqueued in it become visible on [`commit`](Self::commit);
/// dropping it rolls back.
#[derive(Debug)]
pub struct MemoryTransaction {
    store: MemoryStore,
    messages: Vec<NewMessage>,
    inbox_marks: Vec<(String, MessageId)>,
}

impl MemoryTransaction {
    /// Makes the enqueued messages visible to the relay.
    pub fn commit(self) -> Result<()> {
        let mut state = self.store.state();
        for message in self.messages {
            state.insert(message);
        }
        state.inbox.extend(self.inbox_marks);
        drop(state);
        if !self.store.shared.wake_at_enqueue.load(Ordering::Relaxed) {
            self.store.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Discards the enqueued messages (the same as dropping the transaction).
    pub fn rollback(self) {}
}

impl State {
    fn insert(&mut self, message: NewMessage) -> MessageId {
        let parts = message.into_parts();
        if let Some(existing) = parts.idempotency_key.as_ref().and_then(|k| self.idempotency.get(k)) {
            return *existing;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(key) = &parts.idempotency_key {
            self.idempotency.insert(key.clone(), parts.id);
        }
        self.seq_of.insert(parts.id, seq);
        self.entries.insert(
            seq,
            Entry {
                message: Message {
                    id: parts.id,
                    topic: parts.topic,
                    key: parts.key,
                    payload: parts.payload,
                    headers: parts.headers,
                    created_at: Utc::now(),
                    attempts: 0,
                    last_error: None,
                },
                idempotency_key: parts.idempotency_key,
                available_at: Instant::now() + parts.delay.unwrap_or_default(),
                lease: None,
                published_at: None,
            },
        );
        parts.id
    }

    fn owned_mut(&mut self, owner: RelayId, id: &MessageId) -> Option<&mut Entry> {
        let seq = self.seq_of.get(id)?;
        self.entries.get_mut(seq).filter(|e| e.published_at.is_none() && matches!(e.lease, Some((o, _)) if o == owner))
    }

    fn remove(&mut self, id: &MessageId) -> Option<Entry> {
        let seq = self.seq_of.remove(id)?;
        let entry = self.entries.remove(&seq)?;
        if let Some(key) = &entry.idempotency_key {
            self.idempotency.remove(key);
        }
        Some(entry)
    }
}

impl MemoryStore {
    /// An empty store that deletes messages when they are acknowledged.
    pub fn new() -> Self {
        Self::with_options(MessageLimits::default(), None)
    }

    /// An empty store with message limits and, if `retention` is set, keeping published messages for
    /// that long (until [`Store::purge_published`]).
    pub fn with_options(limits: MessageLimits, retention: Option<Duration>) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::default(),
                wake: Notify::new(),
                limits,
                retention,
                claim_delay: Mutex::new(Duration::ZERO),
                failing_claims: AtomicUsize::new(0),
                no_wake_ups: AtomicBool::new(false),
                wake_at_enqueue: AtomicBool::new(false),
                chase: LateCommitChase::default(),
                claims: AtomicUsize::new(0),
            }),
        }
    }

    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    /// Makes every claim return `delay` after it took effect, like a claim whose answer is still on
    /// the wire (for tests of what a relay does meanwhile, at shutdown for instance). Applies to all
    /// clones.
    pub fn with_claim_delay(self, delay: Duration) -> Self {
        *self.shared.claim_delay.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = delay;
        self
    }

    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    /// Makes the next `n` claims fail with a transient store error and claim nothing (for tests of a
    /// relay's back-off). Applies to all clones.
    pub fn fail_next_claims(self, n: usize) -> Self {
        self.shared.failing_claims.store(n, Ordering::Relaxed);
        self
    }

    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    /// Makes [`Store::wait_for_work`] sleep its whole timeout whatever is committed, like a store whose
    /// messages come from another process and reach the relay only by polling (for tests of polling).
    /// Applies to all clones.
    pub fn without_wake_ups(self) -> Self {
        self.shared.no_wake_ups.store(true, Ordering::Relaxed);
        self
    }

    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    /// Wakes a waiting relay when a message is enqueued in a transaction, before the transaction
    /// commits, and not at the commit: as the SQLite and MySQL stores do, which have no commit-time
    /// notification (for tests of commits that come later than their wake-up). Applies to all clones.
    pub fn waking_at_enqueue(self) -> Self {
        self.shared.wake_at_enqueue.store(true, Ordering::Relaxed);
        self
    }

    /// How many claims this store has answered, empty ones and failed ones included (for tests of
    /// how many statements a relay issues). Counts for all clones.
    pub fn claims(&self) -> usize {
        self.shared.claims.load(Ordering::Relaxed)
    }

    /// Leases up to `limit` claimable messages (the body of [`Store::claim`]).
    fn claim_now(&self, owner: RelayId, limit: usize, lease: Duration, slice: Option<KeySlice>) -> Vec<Message> {
        let now = Instant::now();
        let mut state = self.state();
        // Per key: `true` while every earlier unfinished message of the key is in this claim.
        let mut run_open: HashMap<&str, bool> = HashMap::new();
        let mut claimed_seqs = Vec::new();
        for (seq, entry) in &state.entries {
            if claimed_seqs.len() >= limit {
                break;
            }
            if entry.published_at.is_some() {
                continue;
            }
            let leased = matches!(entry.lease, Some((_, until)) if until > now);
            let claimable = !leased && entry.available_at <= now;
            if let Some(key) = entry.message.key.as_deref() {
                if slice.is_some_and(|slice| !in_slice(key, slice)) {
                    continue;
                }
                let open = run_open.entry(key).or_insert(true);
                *open &= claimable;
                if !*open {
                    continue;
                }
            }
            if claimable {
                claimed_seqs.push(*seq);
            }
        }
        let mut out = Vec::with_capacity(claimed_seqs.len());
        for seq in claimed_seqs {
            if let Some(entry) = state.entries.get_mut(&seq) {
                entry.lease = Some((owner, now + lease));
                entry.message.attempts += 1;
                out.push(entry.message.clone());
            }
        }
        out
    }

    /// The body of [`Store::claim`] and [`Store::claim_slice`].
    async fn claim_in(
        &self,
        owner: RelayId,
        limit: usize,
        lease: Duration,
        slice: Option<KeySlice>,
    ) -> Result<Vec<Message>> {
        self.shared.claims.fetch_add(1, Ordering::Relaxed);
        let failing = &self.shared.failing_claims;
        if failing.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
            return Err(Error::store("claim", true, "injected claim failure (MemoryStore::fail_next_claims)"));
        }
        let claimed = self.claim_now(owner, limit, lease, slice);
        self.shared.chase.claimed(claimed.len());
        let delay = *self.shared.claim_delay.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(claimed)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a transaction.
    pub fn begin(&self) -> MemoryTransaction {
        MemoryTransaction { store: self.clone(), messages: Vec::new(), inbox_marks: Vec::new() }
    }

    /// Enqueues one message in its own committed transaction.
    pub fn enqueue_committed(&self, message: NewMessage) -> Result<MessageId> {
        message.validate(&self.shared.limits)?;
        let id = self.state().insert(message);
        self.shared.wake.notify_one();
        Ok(id)
    }

    /// Messages not yet published (pending, leased or waiting for a retry).
    pub fn pending_len(&self) -> usize {
        self.state().entries.values().filter(|e| e.published_at.is_none()).count()
    }

    /// The pending messages in enqueue order (for assertions in tests).
    pub fn pending(&self) -> Vec<Message> {
        self.state().entries.values().filter(|e| e.published_at.is_none()).map(|e| e.message.clone()).collect()
    }

    /// When a pending message becomes claimable again, relative to now (zero if it already is).
    pub fn available_in(&self, id: MessageId) -> Option<Duration> {
        let state = self.state();
        let entry = state.entries.get(state.seq_of.get(&id)?)?;
        Some(entry.available_at.saturating_duration_since(Instant::now()))
    }
}

impl Enqueue for MemoryStore {
    type Connection = MemoryTransaction;

    async fn enqueue(&self, tx: &mut MemoryTransaction, message: NewMessage) -> Result<MessageId> {
        message.validate(&self.shared.limits)?;
        let existing = message.idempotency().and_then(|key| {
            self.state()
                .idempotency
                .get(key)
                .copied()
                .or_else(|| tx.messages.iter().find(|m| m.idempotency() == Some(key)).map(NewMessage::id))
        });
        if let Some(id) = existing {
            return Ok(id);
        }
        let id = message.id();
        tx.messages.push(message);
        if self.shared.wake_at_enqueue.load(Ordering::Relaxed) {
            self.shared.chase.enqueued();
            self.shared.wake.notify_one();
        }
        Ok(id)
    }

    async fn enqueue_batch(&self, tx: &mut MemoryTransaction, messages: Vec<NewMessage>) -> Result<Vec<MessageId>> {
        for message in &messages {
            message.validate(&self.shared.limits)?;
        }
        let mut ids = Vec::with_capacity(messages.len());
        for message in messages {
            ids.push(self.enqueue(tx, message).await?);
        }
        Ok(ids)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim_slice(
        &self,
        owner: RelayId,
        limit: usize,
        lease: Duration,
        slice: KeySlice,
    ) -> Result<Vec<Message>> {
        self.claim_in(owner, limit, lease, Some(slice)).await
    }

    fn claims_in_slices(&self) -> bool {
        true
    }

    async fn claim(&self, owner: RelayId, limit: usize, lease: Duration) -> Result<Vec<Message>> {
        self.claim_in(owner, limit, lease, None).await
    }

    async fn extend_lease(&self, owner: RelayId, ids: &[MessageId], lease: Duration) -> Result<()> {
        let until = Instant::now() + lease;
        let mut state = self.state();
        for id in ids {
            if let Some(entry) = state.owned_mut(owner, id) {
                entry.lease = Some((owner, until));
            }
        }
        Ok(())
    }

    async fn release(&self, owner: RelayId, ids: &[MessageId]) -> Result<()> {
        let mut state = self.state();
        for id in ids {
            if let Some(entry) = state.owned_mut(owner, id) {
                entry.lease = None;
                entry.message.attempts = entry.message.attempts.saturating_sub(1);
            }
        }
        drop(state);
        self.shared.wake.notify_one();
        Ok(())
    }

    async fn acknowledge(&self, ids: &[MessageId]) -> Result<()> {
        let mut state = self.state();
        for id in ids {
            match self.shared.retention {
                None => {
                    state.remove(id);
                }
                Some(_) => {
                    if let Some(entry) = state.seq_of.get(id).copied().and_then(|s| state.entries.get_mut(&s)) {
                        entry.published_at.get_or_insert_with(Instant::now);
                        entry.lease = None;
                    }
                }
            }
        }
        Ok(())
    }

    async fn reschedule(&self, owner: RelayId, retries: &[Retry]) -> Result<()> {
        let now = Instant::now();
        let mut state = self.state();
        for retry in retries {
            if let Some(entry) = state.owned_mut(owner, &retry.id) {
                entry.lease = None;
                entry.available_at = now + retry.delay;
                entry.message.last_error = Some(retry.error.clone());
            }
        }
        Ok(())
    }

    async fn dead_letter(&self, owner: RelayId, failures: &[Failure]) -> Result<()> {
        let mut state = self.state();
        for failure in failures {
            if state.owned_mut(owner, &failure.id).is_none() {
                continue;
            }
            if let Some(mut entry) = state.remove(&failure.id) {
                entry.message.last_error = Some(failure.error.clone());
                let seq = state.next_seq;
                state.next_seq += 1;
                state.dead_seq_of.insert(failure.id, seq);
                if let Some(key) = &entry.idempotency_key {
                    state.idempotency.insert(key.clone(), failure.id);
                }
                let letter = DeadLetter { message: entry.message, error: failure.error.clone(), dead_at: Utc::now() };
                state.dead.insert(seq, (letter, entry.idempotency_key));
            }
        }
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        Ok(self.state().dead.values().take(limit).map(|(d, _)| d.clone()).collect())
    }

    async fn replay_dead_letters(&self, ids: &[MessageId]) -> Result<u64> {
        let mut state = self.state();
        let mut moved = 0;
        for id in ids {
            let Some(seq) = state.dead_seq_of.remove(id) else { continue };
            let Some((letter, idempotency_key)) = state.dead.remove(&seq) else { continue };
            let new_seq = state.next_seq;
            state.next_seq += 1;
            let mut message = letter.message;
            message.attempts = 0;
            state.seq_of.insert(message.id, new_seq);
            state.entries.insert(
                new_seq,
                Entry { message, idempotency_key, available_at: Instant::now(), lease: None, published_at: None },
            );
            moved += 1;
        }
        drop(state);
        self.shared.wake.notify_one();
        Ok(moved)
    }

    async fn purge_dead_letters(&self, ids: &[MessageId]) -> Result<u64> {
        let mut state = self.state();
        let mut purged = 0;
        for id in ids {
            let Some(seq) = state.dead_seq_of.remove(id) else { continue };
            if let Some((_, Some(key))) = state.dead.remove(&seq) {
                state.idempotency.remove(&key);
            }
            purged += 1;
        }
        Ok(purged)
    }

    async fn purge_published(&self, older_than: Duration, limit: usize) -> Result<u64> {
        let Some(cutoff) = Instant::now().checked_sub(older_than) else { return Ok(0) };
        let mut state = self.state();
        let old: Vec<MessageId> = state
            .entries
            .values()
            .filter(|e| matches!(e.published_at, Some(at) if at <= cutoff))
            .take(limit)
            .map(|e| e.message.id)
            .collect();
        for id in &old {
            state.remove(id);
        }
        Ok(old.len() as u64)
    }

    async fn stats(&self) -> Result<OutboxStats> {
        let state = self.state();
        let pending: Vec<&Entry> = state.entries.values().filter(|e| e.published_at.is_none()).collect();
        let oldest = pending.iter().map(|e| e.message.created_at).min();
        Ok(OutboxStats::new(
            pending.len() as u64,
            pending.iter().filter(|e| e.message.last_error.is_some()).count() as u64,
            oldest.map(|t| (Utc::now() - t).to_std().unwrap_or_default()),
            state.dead.len() as u64,
        )
        .with_scheduled(
            pending
                .iter()
                .filter(|e| {
                    e.message.last_error.is_none() && e.message.attempts == 0 && e.available_at > Instant::now()
                })
                .count() as u64,
        ))
    }

    fn registry(&self) -> Option<&dyn RelayRegistry> {
        Some(self)
    }

    fn admin(&self) -> Option<&dyn crate::Admin> {
        Some(self)
    }

    fn wakes_on_commit(&self) -> bool {
        !self.shared.no_wake_ups.load(Ordering::Relaxed) && !self.shared.wake_at_enqueue.load(Ordering::Relaxed)
    }

    async fn wait_for_work(&self, timeout: Duration) {
        if self.shared.no_wake_ups.load(Ordering::Relaxed) {
            tokio::time::sleep(timeout).await;
        } else {
            self.shared.chase.wait(&self.shared.wake, timeout).await;
        }
    }
}

#[async_trait]
impl crate::Admin for MemoryStore {
    async fn search_dead_letters(
        &self,
        filter: &crate::DeadLetterFilter,
        after: Option<crate::Cursor>,
        limit: usize,
    ) -> Result<crate::DeadLetterPage> {
        let limit = crate::admin::page_limit(limit)?;
        let state = self.state();
        let start = after.map_or(0, |cursor| cursor.position().saturating_add(1));
        let rows = state
            .dead
            .range(start..)
            .filter(|(_, (dead, _))| filter.matches(dead))
            .take(limit.saturating_add(1))
            .map(|(seq, (dead, _))| (*seq, dead.clone()))
            .collect();
        Ok(crate::admin::page_from(rows, limit))
    }

    async fn count_dead_letters(&self, filter: &crate::DeadLetterFilter) -> Result<u64> {
        Ok(self.state().dead.values().filter(|(dead, _)| filter.matches(dead)).count() as u64)
    }

    async fn dead_letter_by_id(&self, id: MessageId) -> Result<Option<DeadLetter>> {
        let state = self.state();
        Ok(state.dead_seq_of.get(&id).and_then(|seq| state.dead.get(seq)).map(|(dead, _)| dead.clone()))
    }

    async fn search_messages(
        &self,
        filter: &crate::MessageFilter,
        after: Option<crate::Cursor>,
        limit: usize,
    ) -> Result<crate::MessagePage> {
        let limit = crate::admin::page_limit(limit)?;
        let now = Instant::now();
        let in_state = |e: &Entry| match filter.state {
            crate::MessageState::Retrying => e.message.last_error.is_some(),
            crate::MessageState::Scheduled => {
                e.message.last_error.is_none() && e.message.attempts == 0 && e.available_at > now
            }
            _ => true,
        };
        let state = self.state();
        let start = after.map_or(0, |cursor| cursor.position().saturating_add(1));
        let rows = state
            .entries
            .range(start..)
            .filter(|(_, e)| e.published_at.is_none() && in_state(e))
            .filter(|(_, e)| filter.topic.as_ref().is_none_or(|topic| &e.message.topic == topic))
            .filter(|(_, e)| filter.key.as_ref().is_none_or(|key| e.message.key.as_ref() == Some(key)))
            .take(limit.saturating_add(1))
            .map(|(seq, e)| (*seq, pending_view(e)))
            .collect();
        Ok(crate::admin::page_from(rows, limit))
    }

    async fn blocked_keys(&self, limit: usize) -> Result<Vec<crate::BlockedKey>> {
        let state = self.state();
        let mut heads: Vec<(String, &Entry)> = Vec::new();
        let mut behind: HashMap<&str, u64> = HashMap::new();
        for entry in state.entries.values().filter(|e| e.published_at.is_none()) {
            let Some(key) = entry.message.key.as_deref() else { continue };
            match behind.get_mut(key) {
                Some(waiting) => *waiting += 1,
                None => {
                    behind.insert(key, 0);
                    if entry.message.last_error.is_some() {
                        heads.push((key.to_owned(), entry));
                    }
                }
            }
        }
        Ok(heads
            .into_iter()
            .take(limit)
            .map(|(key, head)| {
                let waiting = behind.get(key.as_str()).copied().unwrap_or(0);
                crate::BlockedKey::new(key, pending_view(head), waiting)
            })
            .collect())
    }
}

/// An entry as the operator queries show it: its next attempt on the wall clock.
fn pending_view(entry: &Entry) -> crate::PendingMessage {
    let (now, wall) = (Instant::now(), Utc::now());
    let due = if entry.available_at > now {
        wall + chrono::Duration::from_std(entry.available_at - now).unwrap_or_default()
    } else {
        wall - chrono::Duration::from_std(now - entry.available_at).unwrap_or_default()
    };
    crate::PendingMessage::new(entry.message.clone(), due)
}

#[async_trait]
impl RelayRegistry for MemoryStore {
    async fn heartbeat(&self, relay: RelayId, name: &str, host: &str, pid: u32, published: u64) -> Result<()> {
        let now = Utc::now();
        let mut state = self.state();
        let entry = state
            .relays
            .entry(relay)
            .or_insert_with(|| RelayInfo::new(relay, name.to_owned(), host.to_owned(), pid, now, now, 0));
        entry.heartbeat_at = now;
        entry.published = published;
        Ok(())
    }

    async fn relays(&self, alive_within: Duration) -> Result<Vec<RelayInfo>> {
        let (now, instant) = (Utc::now(), Instant::now());
        let state = self.state();
        let held = |id: RelayId| {
            let leased = |e: &&Entry| e.lease.is_some_and(|(owner, until)| owner == id && until > instant);
            state.entries.values().filter(|e| e.published_at.is_none()).filter(leased).count() as u64
        };
        let mut relays: Vec<RelayInfo> = state
            .relays
            .values()
            .filter(|r| (now - r.heartbeat_at).to_std().is_ok_and(|age| age < alive_within))
            .map(|r| RelayInfo { claims_held: held(r.id), ..r.clone() })
            .collect();
        relays.sort_by_key(|r| r.started_at);
        Ok(relays)
    }

    async fn deregister(&self, relay: RelayId) -> Result<()> {
        self.state().relays.remove(&relay);
        Ok(())
    }
}

#[async_trait]
impl Inbox for MemoryStore {
    type Connection = MemoryTransaction;

    async fn process_once(&self, tx: &mut MemoryTransaction, consumer: &str, id: MessageId) -> Result<bool> {
        let mark = (consumer.to_owned(), id);
        if self.state().inbox.contains(&mark) || tx.inbox_marks.contains(&mark) {
            return Ok(false);
        }
        tx.inbox_marks.push(mark);
        Ok(true)
    }
}
