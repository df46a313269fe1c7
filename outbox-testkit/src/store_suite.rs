//! The store conformance suite: one `pub async fn` per guarantee of the [`Store`] contract.
//!
//! Every check panics with a message naming the broken guarantee. Run them all with [`crate::store_suite!`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox_engine::memory::MemoryPublisher;
use outbox_engine::{
    CancellationToken, Dispatcher, Error, Failure, Jitter, KeySlice, Message, MessageId, NewMessage, PublishError,
    Relay, RelayId, Result, Retry, RetryPolicy, Store,
};

/// What the suite needs from a backend: a fresh store on its own tables, and real transactions.
#[async_trait]
pub trait StoreHarness: Send + Sync {
    /// The store under test, acknowledging by deletion.
    fn store(&self) -> Arc<dyn Store>;

    /// A fresh harness on its own tables whose store keeps published messages for `retention`.
    async fn with_retention(&self, retention: Duration) -> Box<dyn StoreHarness>;

    /// Enqueues `messages` in one transaction, then commits it (`commit`) or rolls it back. An enqueue
    /// error rolls the transaction back and is returned.
    async fn enqueue(&self, messages: Vec<NewMessage>, commit: bool) -> Result<Vec<MessageId>>;

    /// Calls the store's `Inbox::process_once` in a transaction that commits or rolls back.
    async fn process_once(&self, consumer: &str, id: MessageId, commit: bool) -> Result<bool>;

    /// Builds (without running any SQL) a store on tables named after `prefix`; `None` for a store
    /// without table names (the memory store).
    fn store_with_prefix(&self, prefix: &str) -> Option<Result<()>>;
}

/// What a harness factory may return: a harness, or `None` for a backend that is not configured.
pub trait IntoHarness {
    /// The harness type.
    type Harness: StoreHarness;
    /// The harness, if there is one.
    fn into_harness(self) -> Option<Self::Harness>;
}

impl<H: StoreHarness> IntoHarness for Option<H> {
    type Harness = H;
    fn into_harness(self) -> Option<H> {
        self
    }
}

/// The transaction plumbing every sqlx-based harness shares: `store()`, `enqueue` and `process_once` in
/// a transaction of the store's own pool that commits or rolls back (dropping a sqlx transaction rolls
/// it back).
#[allow(unused_macros)]
macro_rules! sqlx_harness {
    ($harness:ty, $field:ident, { $($backend_specific:tt)* }) => {
        #[async_trait::async_trait]
        impl $crate::StoreHarness for $harness {
        fn store(&self) -> std::sync::Arc<dyn outbox_engine::Store> {
            std::sync::Arc::new(self.$field.clone())
        }

        async fn enqueue(
            &self,
            messages: Vec<outbox_engine::NewMessage>,
            commit: bool,
        ) -> outbox_engine::Result<Vec<outbox_engine::MessageId>> {
            use outbox_engine::Enqueue as _;
            let mut tx = self.$field.pool().begin().await.map_err(outbox_sqlx::error_from("begin"))?;
            let ids = self.$field.enqueue_batch(&mut *tx, messages).await?;
            if commit {
                tx.commit().await.map_err(outbox_sqlx::error_from("commit"))?;
            }
            Ok(ids)
        }

        async fn process_once(
            &self,
            consumer: &str,
            id: outbox_engine::MessageId,
            commit: bool,
        ) -> outbox_engine::Result<bool> {
            use outbox_engine::Inbox as _;
            let mut tx = self.$field.pool().begin().await.map_err(outbox_sqlx::error_from("begin"))?;
            let first = self.$field.process_once(&mut *tx, consumer, id).await?;
            if commit {
                tx.commit().await.map_err(outbox_sqlx::error_from("commit"))?;
            }
            Ok(first)
        }

        $($backend_specific)*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use sqlx_harness;

const LEASE: Duration = Duration::from_secs(60);

async fn commit<H: StoreHarness + ?Sized>(h: &H, messages: Vec<NewMessage>) -> Vec<MessageId> {
    h.enqueue(messages, true).await.expect("enqueue and commit")
}

async fn claim(store: &dyn Store, owner: RelayId, limit: usize, lease: Duration) -> Vec<Message> {
    store.claim(owner, limit, lease).await.expect("claim")
}

/// Claims (as a new relay) until a claim finds something, at most 30 s; returns it and when it came
/// back. A check that a message became claimable only after some instant compares that instant with
/// the one returned, so a slow machine can delay the claim but never fail the check.
async fn claim_when_claimable(store: &dyn Store) -> (Vec<Message>, Instant) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let claimed = claim(store, RelayId::new(), 10, LEASE).await;
        if !claimed.is_empty() || Instant::now() > deadline {
            return (claimed, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn ids(messages: &[Message]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

fn msg(topic: &str, n: usize) -> NewMessage {
    NewMessage::new(topic, format!("{n}"))
}

/// Guarantee 1: a rolled-back transaction leaves nothing; a committed one is visible.
pub async fn commit_makes_visible_and_rollback_leaves_nothing<H: StoreHarness + ?Sized>(h: &H) {
    let store = h.store();
    h.enqueue(vec![msg("t", 1), msg("t", 2)], false).await.expect("enqueue then roll back");
    assert!(claim(&*store, RelayId::new(), 10, LEASE).await.is_empty(), "a rolled-back message was claimed");
    assert_eq!(store.stats().await.expect("stats").pending, 0, "a rolled-back message is counted as pending");
    let committed = commit(h, vec![msg("t", 3)]).await;
    let claimed = claim(&*store, RelayId::new(), 10, LEASE).await;
    assert_eq!(ids(&claimed), committed, "the committed message is claimable");
}

/// Guarantee 2: a committed message is claimed by one relay; acknowledged, it is gone.
pub async fn a_committed_message_is_claimed_once<H: StoreHarness + ?Sized>(h: &H) {
    let store = h.store();
    let id = commit(h, vec![msg("t", 1)]).await;
    let first = claim(&*store, RelayId::new(), 10, LEASE).await;
    assert_eq!(ids(&first), id);
    assert_eq!(first[0].attempts, 1, "a claim counts an attempt");
    assert!(claim(&*store, RelayId::new(), 10, LEASE).await.is_empty(), "a leased message was claimed twice");
    store.acknowledge(&id).await.expect("acknowledge");
    assert!(claim(&*store, RelayId::new(), 10, Duration::ZERO).await.is_empty(), "an acknowledged message came back");
    assert_eq!(store.stats().await.expect("stats").pending, 0, "an acknowledged message is still pending");
}

/// Guarantee 2/3: four concurrent claimers over 10,000 messages never share one and miss none.
pub async fn concurrent_claimers_never_share_a_message<H: StoreHarness + ?Sized>(h: &H) {
    const TOTAL: usize = 10_000;
    let mut expected = HashSet::new();
    for chunk in 0..TOTAL / 1_000 {
        let batch = (0..1_000).map(|n| msg("t", chunk * 1_000 + n)).collect();
        expected.extend(commit(h, batch).await);
    }
    let store = h.store();
    let claimers = (0..4).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            let owner = RelayId::new();
            let mut mine = Vec::new();
            loop {
                let batch = store.claim(owner, 100, LEASE).await.expect("claim");
                if batch.is_empty() {
                    return mine;
                }
                let batch_ids = ids(&batch);
                store.acknowledge(&batch_ids).await.expect("acknowledge");
                mine.extend(batch_ids);
            }
        })
    });
    let mut seen = HashSet::new();
    let mut total = 0;
    for claimer in futures::future::join_all(claimers).await {
        for id in claimer.expect("claimer task") {
            total += 1;
            assert!(seen.insert(id), "message {id} was claimed by two claimers");
        }
    }
    assert_eq!(total, TOTAL, "every message claimed exactly once");
    assert_eq!(seen, expected, "the claimed ids are the enqueued ids");
}

/// Guarantee 3: a crashed relay's claim expires and another relay takes it over.
pub async fn an_expired_lease_is_taken_over<H: StoreHarness + ?Sized>(h: &H) {
    let store = h.store();
    let id = commit(h, vec![msg("t", 1)]).await;
    let lease = Duration::from_millis(300);
    let claimed_at = Instant::now();
    let crashed = claim(&*store, RelayId::new(), 10, lease).await;
    assert_eq!(ids(&crashed), id);
    let (taken, taken_at) = claim_when_claimable(&*store).await;
    assert_eq!(ids(&taken), id, "the expired claim was not taken over");
    assert!(taken_at - claimed_at >= lease, "taken over before the lease ended");
    assert_eq!(taken[0].attempts, 2, "the crashed attempt still counts");
}

/// A relay whose lease was taken over cannot reschedule or dead-letter the new owner's message.
pub async fn lease_holder_fencing<H: StoreHarness + ?Sized>(h: &H) {
    let store = h.store();
    let id = commit(h, vec![msg("t", 1)]).await;
    let (old, new) = (RelayId::new(), RelayId::new());
    claim(&*store, old, 10, Duration::from_millis(200)).await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(ids(&claim(&*store, new, 10, LEASE).await), id);
    store.extend_lease(old, &id, LEASE).await.expect("extend");
    store.dead_letter(old, &[Failure { id: id[0], error: "stale".into() }]).await.expect("dead_letter");
    store
        .reschedule(old, &[Retry { id: id[0], error: "stale".into(), delay: Duration::ZERO }])
        .await
        .expect("reschedule");
    assert!(store.dead_letters(10).await.expect("list").is_empty(), "a stale owner dead-lettered the message");
    assert!(claim(&*store, RelayId::new(), 10, LEASE).await.is_empty(), "a stale owner released the new lease");
    store.acknowledge(&id).await.expect("acknowledge");
    assert_eq!(store.stats().await.expect("stats").pending, 0);
}

/// Handing claims back makes them claimable at once and does not count the attempt.
pub async fn released_claims_are_claimable_at_once<H: StoreHarness + ?Sized>(h: &H) {
    let store = h.store();
    let id = commit(h, vec![msg("t", 1)]).await;
    let owner = RelayId::new();
    claim(&*store, owner, 10, LEASE).await;
    store.release(owner, &id).await.expect("release");
    let again = claim(&*store, RelayId::new(), 10, LEASE).await;
    assert_eq!(ids(&again), id, "a released message is claimable");
    assert_eq!(again[0].attempts, 1, "a release gives the attempt back");
}

/// A rescheduled message waits for its delay and keeps its error.
pub async fn retry_schedule_is_honoured<H: StoreHarness + ?Sized>(h: &H) {
    let store = h.store();
    let id = commit(h, vec![msg("t", 1)]).await;
    let owner = RelayId::new();
    claim(&*store, owner, 10, LEASE).await;
    let delay = Duration::from_millis(400);
    let rescheduled_at = Instant::now();
    store.reschedule(owner, &[Retry { id: id[0], error: "broker said no".into(), delay }]).await.expect("reschedule");
    let (again, claimed_at) = claim_when_claimable(&*store).await;
    assert_eq!(ids(&again), id, "not claimable after its retry delay");
    assert!(claimed_at - rescheduled_at >= delay, "claimed before its retry delay");
    assert_eq!(again[0].attempts, 2);
    assert_eq!(again[0].last_error.as_deref(), Some("broker said no"));
}

/// Dead letters keep the message and its error, can be replayed, and purged.
pub async fn dead_letters_are_listed_replayed_and_purged<H: StoreHarness + ?Sized>(h: &H) {
    let store = h.store();
    let id = commit(h, vec![NewMessage::new("t", vec![0u8, 1, 2]).key("k").header("h", "v")]).await;
    let owner = RelayId::new();
    claim(&*store, owner, 10, LEASE).await;
    store.dead_letter(owner, &[Failure { id: id[0], error: "poison".into() }]).await.expect("dead_letter");
    assert!(claim(&*store, RelayId::new(), 10, LEASE).await.is_empty(), "a dead letter was claimed");
    let dead = store.dead_letters(10).await.expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, id[0]);
    assert_eq!(dead[0].error, "poison");
    assert_eq!(dead[0].message.payload, vec![0u8, 1, 2]);
    assert_eq!(dead[0].message.headers.get("h").map(String::as_str), Some("v"));
    assert_eq!(dead[0].message.attempts, 1);
    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.pending, stats.dead_letters), (0, 1));

    assert_eq!(store.replay_dead_letters(&id).await.expect("replay"), 1);
    assert!(store.dead_letters(10).await.expect("list").is_empty());
    let replayed = claim(&*store, owner, 10, LEASE).await;
    assert_eq!(ids(&replayed), id, "a replayed message is claimable");
    assert_eq!(replayed[0].attempts, 1, "replay resets the attempts");
    assert_eq!(replayed[0].key.as_deref(), Some("k"));

    store.dead_letter(owner, &[Failure { id: id[0], error: "again".into() }]).await.expect("dead_letter");
    assert_eq!(store.purge_dead_letters(&id).await.expect("purge"), 1);
    assert!(store.dead_letters(10).await.expect("list").is_empty());
    assert_eq!(store.stats().await.expect("stats").dead_letters, 0);
}

/// Guarantee 5: the same idempotency key twice stores one message (also across transactions, and
/// while the first one is dead-lettered).
pub async fn idempotency_key_stores_one_message<H: StoreHarness + ?Sized>(h: &H) {
    let store = h.store();
    let first = commit(h, vec![msg("t", 1).idempotency_key("order-7")]).await;
    let second = commit(h, vec![msg("t", 2).idempotency_key("order-7")]).await;
    assert_eq!(first, second, "the duplicate enqueue returns the first message's id");
    let same_tx = commit(h, vec![msg("t", 3).idempotency_key("order-8"), msg("t", 4).idempotency_key("order-8")]).await;
    assert_eq!(same_tx[0], same_tx[1], "duplicates in one transaction");
    let owner = RelayId::new();
    let claimed = claim(&*store, owner, 10, LEASE).await;
    assert_eq!(claimed.len(), 2, "one message per idempotency key");
    assert_eq!(claimed[0].payload, b"1");
    store.dead_letter(owner, &[Failure { id: first[0], error: "x".into() }]).await.expect("dead_letter");
    let third = commit(h, vec![msg("t", 5).idempotency_key("order-7")]).await;
    assert_eq!(third, first, "a dead-lettered message still holds its idempotency key");
}

/// Guarantee 4: a claim takes each key's messages as a run in enqueue order from the key's oldest
/// unfinished message; nothing of a key is claimed while an earlier message of it is leased or waits
/// for a retry, and a failing message holds back only its own key.
pub async fn key_runs_in_enqueue_order<H: StoreHarness + ?Sized>(h: &H) {
    let store = h.store();
    let a = commit(h, vec![msg("t", 0).key("a"), msg("t", 1).key("a"), msg("t", 2).key("a")]).await;
    let b = commit(h, vec![msg("t", 0).key("b"), msg("t", 1)]).await;
    let owner = RelayId::new();
    let first = claim(&*store, owner, 10, LEASE).await;
    assert_eq!(ids(&first), vec![a[0], a[1], a[2], b[0], b[1]], "each key's run and the keyless message, in order");
    assert!(claim(&*store, RelayId::new(), 10, LEASE).await.is_empty(), "a key's messages in two claims at once");

    // The relay's outcome: a0 published, a1 failed (retry), a2 handed back unattempted.
    store.acknowledge(&[a[0], b[0], b[1]]).await.expect("acknowledge");
    // The retry delay leaves seconds for the checks made while it runs, even on a loaded machine.
    let retry = Retry { id: a[1], error: "fail".into(), delay: Duration::from_secs(2) };
    store.reschedule(owner, &[retry]).await.expect("reschedule");
    store.release(owner, &[a[2]]).await.expect("release");
    assert!(claim(&*store, owner, 10, LEASE).await.is_empty(), "key a moved past its retrying message");
    let b2 = commit(h, vec![msg("t", 2).key("b")]).await;
    assert_eq!(ids(&claim(&*store, owner, 10, LEASE).await), b2, "key b is not held back by key a");

    let (again, _) = claim_when_claimable(&*store).await;
    assert_eq!(ids(&again), vec![a[1], a[2]], "key a resumes in enqueue order");
    assert_eq!(
        again.iter().map(|m| m.attempts).collect::<Vec<_>>(),
        vec![2, 1],
        "a handed-back message's attempt is not counted"
    );
    store.acknowledge(&[a[1], a[2], b2[0]]).await.expect("acknowledge");

    // A claim cut short by its limit leaves the rest of the run behind its leased part.
    let c = commit(h, (0..3).map(|n| msg("t", n).key("c")).collect()).await;
    assert_eq!(ids(&claim(&*store, owner, 2, LEASE).await), c[..2].to_vec(), "the run's first two");
    assert!(claim(&*store, RelayId::new(), 10, LEASE).await.is_empty(), "the rest queues behind them");
    store.release(owner, &c[..2]).await.expect("release");
    assert_eq!(ids(&claim(&*store, owner, 10, LEASE).await), c, "the whole run once handed back");
}

/// Guarantee 4, at depth: the heads of other keys and keyless messages are claimed even when the
/// oldest pending rows are a long queue of one key whose head is in flight (a claim must look past
/// that queue, not give up on it or scan it all).
pub async fn heads_behind_a_long_queue_of_one_key_are_claimed<H: StoreHarness + ?Sized>(h: &H) {
    let store = h.store();
    let hot = commit(h, (0..40).map(|n| msg("t", n).key("hot")).collect()).await;
    let cold = commit(h, vec![msg("t", 0).key("cold")]).await;
    let keyless = commit(h, vec![msg("t", 0)]).await;
    let first = claim(&*store, RelayId::new(), 1, LEASE).await;
    assert_eq!(ids(&first), vec![hot[0]], "the oldest head first");
    let second = claim(&*store, RelayId::new(), 2, LEASE).await;
    assert_eq!(ids(&second), vec![cold[0], keyless[0]], "the rows queued behind the in-flight head are skipped");
    assert!(claim(&*store, RelayId::new(), 5, LEASE).await.is_empty(), "nothing else is claimable");
    store.acknowledge(&[hot[0], cold[0], keyless[0]]).await.expect("acknowledge");
    let third = claim(&*store, RelayId::new(), 5, LEASE).await;
    assert_eq!(ids(&third), hot[1..6].to_vec(), "the queue's next run once its head is done");
}

/// Claims in key slices ([`Store::claim_slice`]): together the slices take every message, no key is
/// in two slices, each key's run stays whole and in order, and keyless messages are in every slice.
/// (A store without slices claims everything in the first slice, which also passes.)
pub async fn key_slices_partition_the_keys<H: StoreHarness + ?Sized>(h: &H) {
    let store = h.store();
    let mut sent = Vec::new();
    for round in 0..3 {
        sent.extend(commit(h, (0..20).map(|k| msg("t", round).key(format!("key-{k}"))).collect()).await);
    }
    sent.extend(commit(h, vec![msg("t", 9), msg("t", 9)]).await);
    let mut claimed_ids = HashSet::new();
    let mut slice_of_key: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    for index in 0..4 {
        let slice = KeySlice::new(index, 4).expect("slice");
        let claimed = store.claim_slice(RelayId::new(), 100, LEASE, slice).await.expect("claim_slice");
        let mut last_of_key: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for message in &claimed {
            assert!(claimed_ids.insert(message.id), "a message claimed in two slices");
            let Some(key) = &message.key else { continue };
            let previous = slice_of_key.insert(key.clone(), index);
            assert!(previous.is_none_or(|p| p == index), "key {key} in slices {previous:?} and {index}");
            let position = sent.iter().position(|id| *id == message.id).expect("a sent message");
            if let Some(last) = last_of_key.insert(key.clone(), position) {
                assert!(last < position, "key {key} out of order within its slice's claim");
            }
        }
    }
    assert_eq!(claimed_ids.len(), sent.len(), "the slices together take every message");
    assert!(KeySlice::new(4, 4).is_none() && KeySlice::new(0, 0).is_none(), "invalid slices are refused");
}

/// Claims behind a batch ([`Store::claim_slice_behind`]): behind a batch still leased to the same
/// relay, a claim takes the next messages of that batch's keys, in order, and never the batch's own;
/// behind another relay's batch it takes nothing of those keys. (A store that does not claim behind
/// batches takes nothing of those keys either, which also passes.)
pub async fn a_claim_behind_a_batch_takes_its_keys_next_messages<H: StoreHarness + ?Sized>(h: &H) {
    let store = h.store();
    let every_key = KeySlice::new(0, 1).expect("slice");
    let a = commit(h, (0..6).map(|n| msg("t", n).key("a")).collect()).await;
    let b = commit(h, (0..2).map(|n| msg("t", n).key("b")).collect()).await;
    let (owner, stranger) = (RelayId::new(), RelayId::new());
    let behind = |relay, limit| store.claim_slice_behind(relay, limit, LEASE, every_key, &a[..3]);

    let first = store.claim_slice(owner, 3, LEASE, every_key).await.expect("claim_slice");
    assert_eq!(ids(&first), a[..3].to_vec(), "the oldest run first");
    let other = behind(stranger, 10).await.expect("claim_slice_behind");
    assert_eq!(ids(&other), b.to_vec(), "behind another relay's batch, its key stays held");
    store.release(stranger, &b).await.expect("release");

    let next = behind(owner, 4).await.expect("claim_slice_behind");
    let rest = store.claim_slice_behind(owner, 10, LEASE, every_key, &ids(&next)).await.expect("claim_slice_behind");
    if store.claims_behind() {
        let expected = [&a[3..], &b[..1]].concat();
        assert_eq!(ids(&next), expected, "the key's next messages, in order, and never the first batch's own");
        assert_eq!(ids(&rest), b[1..].to_vec(), "behind a batch of its own, key b's second message follows its first");
    } else {
        let taken: Vec<MessageId> = [ids(&next), ids(&rest)].concat();
        assert!(taken.iter().all(|id| !a.contains(id)), "without claims behind, key a stays held");
        assert_eq!(taken, b[..taken.len()].to_vec(), "key b in order");
    }
    let settled: Vec<MessageId> = [ids(&first), ids(&next), ids(&rest)].concat();
    store.acknowledge(&settled).await.expect("acknowledge");
}

/// Binary, empty, large and unicode payloads, keys and headers come back byte for byte.
pub async fn payloads_and_headers_round_trip<H: StoreHarness + ?Sized>(h: &H) {
    let store = h.store();
    let binary: Vec<u8> = (0..=255u8).collect();
    let large: Vec<u8> = (0..512 * 1024).map(|i| (i % 251) as u8).collect();
    let sent = vec![
        NewMessage::new("bytes", binary),
        NewMessage::new("empty", Vec::new()),
        NewMessage::new("large", large),
        NewMessage::new("événements.créés", "ключ 🔑 \u{0}nul".as_bytes().to_vec())
            .key("clé-🔑")
            .header("trace-id", "abc")
            .header("ünïcode", "värde ✓"),
    ];
    let ids_sent = commit(h, sent.clone()).await;
    let claimed = claim(&*store, RelayId::new(), 10, LEASE).await;
    assert_eq!(ids(&claimed), ids_sent);
    for (got, want) in claimed.iter().zip(&sent) {
        assert_eq!(got.id, want.id());
        assert_eq!(got.topic, want.topic());
        assert_eq!(got.key.as_deref(), want.message_key());
        assert_eq!(got.payload, want.payload(), "payload of {}", want.topic());
        assert_eq!(&got.headers, want.headers());
        assert!(got.last_error.is_none());
    }
}

/// A batch is stored whole and in its order, whatever its size (a store may write it in several
/// statements: 301 = 256 + 32 + 8 + 4 + 1 rows, in MySQL's multi-row inserts).
pub async fn a_large_batch_is_stored_in_order<H: StoreHarness + ?Sized>(h: &H) {
    let store = h.store();
    let ids_sent = commit(h, (0..301).map(|n| msg("batch", n)).collect()).await;
    let claimed = claim(&*store, RelayId::new(), 1000, LEASE).await;
    assert_eq!(ids(&claimed), ids_sent, "a batch came back incomplete or out of order");
    for (n, message) in claimed.iter().enumerate() {
        assert_eq!(message.payload, format!("{n}").into_bytes(), "payload of message {n} of the batch");
    }
}

/// A batch of messages of the largest default size (20 x 1 MiB: more than MariaDB's default 16 MiB
/// `max_allowed_packet`, had a store put it in one statement) is stored whole and in order.
pub async fn a_batch_of_large_messages_is_stored_whole<H: StoreHarness + ?Sized>(h: &H) {
    let store = h.store();
    let payload = |n: usize| vec![n as u8; outbox_engine::MessageLimits::default().max_payload_bytes];
    let ids_sent = commit(h, (0..20).map(|n| NewMessage::new("large", payload(n))).collect()).await;
    let claimed = claim(&*store, RelayId::new(), 100, LEASE).await;
    assert_eq!(ids(&claimed), ids_sent, "a batch of large messages came back incomplete or out of order");
    for (n, message) in claimed.iter().enumerate() {
        assert!(message.payload == payload(n), "payload of large message {n} of the batch");
    }
}

/// A message enqueued with a delay is not claimed before its time; the rest of its batch is.
pub async fn a_delayed_message_waits_for_its_time<H: StoreHarness + ?Sized>(h: &H) {
    let store = h.store();
    let delay = Duration::from_millis(800);
    let id = commit(h, vec![msg("t", 0).delay(delay), msg("t", 1), msg("t", 2).delay(delay)]).await;
    let now = claim(&*store, RelayId::new(), 10, LEASE).await;
    assert_eq!(ids(&now), vec![id[1]], "a delayed message was claimed before its time, or the undelayed one was not");
    tokio::time::sleep(delay + Duration::from_millis(400)).await;
    let later = claim(&*store, RelayId::new(), 10, LEASE).await;
    assert_eq!(ids(&later), vec![id[0], id[2]], "delayed messages were not claimable after their delay");
}

/// Guarantee 7: a bad message is a typed error and the transaction writes nothing.
pub async fn invalid_messages_are_rejected_and_change_nothing<H: StoreHarness + ?Sized>(h: &H) {
    let store = h.store();
    let too_big = NewMessage::new("t", vec![0u8; 2 * 1024 * 1024]);
    let err = h.enqueue(vec![msg("t", 1), too_big], true).await.expect_err("an oversized payload is rejected");
    assert!(matches!(err, Error::InvalidMessage { .. }), "{err}");
    let err = h.enqueue(vec![NewMessage::new("", "x")], true).await.expect_err("an empty topic is rejected");
    assert!(matches!(err, Error::InvalidMessage { .. }), "{err}");
    assert!(claim(&*store, RelayId::new(), 10, LEASE).await.is_empty(), "a failed enqueue left a message");
}

/// Guarantee 6: in retention mode published messages are kept, not claimable, and purged.
pub async fn retention_keeps_then_purges_published_messages<H: StoreHarness + ?Sized>(h: &H) {
    let h = h.with_retention(Duration::from_secs(3600)).await;
    let store = h.store();
    let id = h.enqueue(vec![msg("t", 1), msg("t", 2)], true).await.expect("enqueue");
    claim(&*store, RelayId::new(), 10, LEASE).await;
    store.acknowledge(&id).await.expect("acknowledge");
    assert!(claim(&*store, RelayId::new(), 10, Duration::ZERO).await.is_empty(), "a published message came back");
    assert_eq!(store.stats().await.expect("stats").pending, 0);
    let again = h.enqueue(vec![msg("t", 3).idempotency_key("kept")], true).await.expect("enqueue");
    assert_eq!(store.purge_published(Duration::from_secs(3600), 100).await.expect("purge"), 0, "purged too early");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.purge_published(Duration::ZERO, 1).await.expect("purge"), 1, "purge honours its limit");
    assert_eq!(store.purge_published(Duration::ZERO, 100).await.expect("purge"), 1);
    let claimed = claim(&*store, RelayId::new(), 10, LEASE).await;
    assert_eq!(ids(&claimed), again, "purge leaves pending messages alone");
}

/// Backlog figures: pending, retrying, oldest age, dead letters.
pub async fn stats_report_the_backlog<H: StoreHarness + ?Sized>(h: &H) {
    let store = h.store();
    let id = commit(h, vec![msg("t", 1), msg("t", 2), msg("t", 3)]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let owner = RelayId::new();
    claim(&*store, owner, 2, LEASE).await;
    store
        .reschedule(owner, &[Retry { id: id[0], error: "e".into(), delay: Duration::from_secs(60) }])
        .await
        .expect("r");
    store.dead_letter(owner, &[Failure { id: id[1], error: "e".into() }]).await.expect("d");
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.pending, 2);
    assert_eq!(stats.retrying, 1);
    assert_eq!(stats.dead_letters, 1);
    assert_eq!(stats.scheduled, 0);
    assert!(stats.oldest_pending_age.expect("an oldest pending message") >= Duration::from_millis(10));
    commit(h, vec![msg("t", 4).delay(Duration::from_secs(3600))]).await;
    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.pending, stats.retrying, stats.scheduled), (3, 1, 1), "a delayed message is scheduled");
}

/// The inbox applies each message once per consumer; a rolled-back mark is forgotten.
pub async fn inbox_applies_each_message_once<H: StoreHarness + ?Sized>(h: &H) {
    let (first, second) = (MessageId::new(), MessageId::new());
    assert!(h.process_once("billing", first, true).await.expect("inbox"), "first delivery");
    assert!(!h.process_once("billing", first, true).await.expect("inbox"), "a duplicate was applied twice");
    assert!(h.process_once("shipping", first, true).await.expect("inbox"), "consumers are independent");
    assert!(h.process_once("billing", second, false).await.expect("inbox"));
    assert!(h.process_once("billing", second, true).await.expect("inbox"), "a rolled-back mark was kept");
}

/// Guarantee 7: table names are validated before any SQL runs.
pub async fn bad_table_names_are_rejected<H: StoreHarness + ?Sized>(h: &H) {
    let Some(valid) = h.store_with_prefix("valid_prefix") else {
        return; // a store without table names
    };
    valid.expect("a valid prefix");
    for bad in ["outbox; DROP TABLE x", "", "a-b", "1outbox", "o\"x"] {
        let result = h.store_with_prefix(bad).expect("the store has table names");
        let err = result.expect_err("a bad table prefix is rejected");
        assert!(matches!(err, Error::InvalidConfig { .. }), "{bad:?}: {err}");
    }
}

/// The operator queries ([`Admin`](outbox_engine::Admin)): dead letters searched by topic, key, error
/// text (case and SQL wildcards taken literally) and age, counted, found by id, and paged by key with
/// no row twice or missed. A store without them prints that it skipped the check.
pub async fn dead_letters_are_searched_filtered_and_paged<H: StoreHarness + ?Sized>(h: &H) {
    use outbox_engine::DeadLetterFilter;
    let store = h.store();
    let Some(admin) = store.admin() else {
        eprintln!("SKIPPED dead_letters_are_searched_filtered_and_paged: the store offers no Admin");
        return;
    };
    let ids = commit(
        h,
        vec![
            msg("orders", 0).key("o-1"),
            msg("orders", 1).key("o-2"),
            msg("orders", 2),
            msg("billing", 3).key("o-1"),
            msg("billing", 4),
            msg("orders", 5),
            msg("audit", 6),
        ],
    )
    .await;
    let errors = [
        "Timeout talking to the broker",
        "unknown topic",
        "timeout again",
        "unknown topic",
        "50% of 'quota' used",
        "unknown topic",
        "TIMEOUT",
    ];
    let owner = RelayId::new();
    assert_eq!(claim(&*store, owner, 10, LEASE).await.len(), 7);
    let failures: Vec<Failure> =
        ids.iter().zip(errors).map(|(id, error)| Failure { id: *id, error: error.to_owned() }).collect();
    store.dead_letter(owner, &failures).await.expect("dead_letter");

    let found = |filter: DeadLetterFilter| async move {
        let page = admin.search_dead_letters(&filter, None, 100).await.expect("search_dead_letters");
        assert!(page.next.is_none(), "one page holds them all");
        let count = admin.count_dead_letters(&filter).await.expect("count_dead_letters");
        assert_eq!(count, page.items.len() as u64, "count and search agree for {filter:?}");
        page.items.iter().map(|d| d.message.id).collect::<Vec<_>>()
    };
    let pick = |n: &[usize]| n.iter().map(|&i| ids[i]).collect::<Vec<_>>();
    assert_eq!(found(DeadLetterFilter::new()).await, ids, "no filter: all, in the order they were parked");
    assert_eq!(found(DeadLetterFilter::new().topic("orders")).await, pick(&[0, 1, 2, 5]));
    assert_eq!(found(DeadLetterFilter::new().key("o-1")).await, pick(&[0, 3]));
    assert_eq!(found(DeadLetterFilter::new().error_contains("timeout")).await, pick(&[0, 2, 6]), "case ignored");
    assert_eq!(found(DeadLetterFilter::new().error_contains("% of 'q")).await, pick(&[4]), "wildcards are text");
    assert_eq!(found(DeadLetterFilter::new().error_contains("_")).await, pick(&[]), "wildcards are text");
    assert_eq!(found(DeadLetterFilter::new().topic("orders").error_contains("unknown")).await, pick(&[1, 5]));
    assert_eq!(found(DeadLetterFilter::new().topic("orders' OR '1'='1")).await, pick(&[]));
    let now = chrono::Utc::now();
    assert_eq!(found(DeadLetterFilter::new().dead_before(now + chrono::Duration::hours(1))).await, ids);
    assert_eq!(found(DeadLetterFilter::new().dead_before(now - chrono::Duration::hours(1))).await, pick(&[]));

    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = admin.search_dead_letters(&DeadLetterFilter::new(), after, 2).await.expect("page");
        assert!(page.items.len() <= 2, "a page holds at most its limit");
        paged.extend(page.items.iter().map(|d| d.message.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, ids, "pages of 2 give every dead letter once, in order");
    let err = admin.search_dead_letters(&DeadLetterFilter::new(), None, 0).await.expect_err("a limit of 0");
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");

    let shown = admin.dead_letter_by_id(ids[4]).await.expect("dead_letter_by_id").expect("found by id");
    assert_eq!((shown.message.topic.as_str(), shown.error.as_str()), ("billing", "50% of 'quota' used"));
    assert_eq!(shown.message.payload, b"4".to_vec());
    assert!(admin.dead_letter_by_id(MessageId::new()).await.expect("dead_letter_by_id").is_none());
    store.replay_dead_letters(&ids[..1]).await.expect("replay");
    assert!(admin.dead_letter_by_id(ids[0]).await.expect("dead_letter_by_id").is_none(), "a replayed one is gone");
    store.purge_dead_letters(&ids).await.expect("purge");
}

/// The operator queries' view of unpublished messages: listed by state (pending, retrying,
/// scheduled), topic and key, paged by key; and the keys held back by a failed oldest message, with
/// its error and the count waiting behind it. A store without them prints that it skipped the check.
pub async fn pending_messages_are_listed_by_state_and_blocked_keys_are_found<H: StoreHarness + ?Sized>(h: &H) {
    use outbox_engine::{MessageFilter, MessageState};
    let store = h.store();
    let Some(admin) = store.admin() else {
        eprintln!("SKIPPED pending_messages_are_listed_by_state_and_blocked_keys_are_found: the store offers no Admin");
        return;
    };
    let hour = Duration::from_secs(3600);
    let ids = commit(
        h,
        vec![
            msg("orders", 0).key("a"),
            msg("orders", 1).key("a"),
            msg("orders", 2).key("a"),
            msg("billing", 3).key("b"),
            msg("orders", 4),
            msg("orders", 5).key("c").delay(hour),
        ],
    )
    .await;
    let owner = RelayId::new();
    let claimed = claim(&*store, owner, 10, LEASE).await;
    assert_eq!(claimed.len(), 5, "every message but the delayed one is claimable");
    store
        .reschedule(
            owner,
            &[
                Retry { id: ids[0], error: "boom <script>alert(1)</script>".into(), delay: hour },
                Retry { id: ids[3], error: "later".into(), delay: hour },
            ],
        )
        .await
        .expect("reschedule");
    store.release(owner, &[ids[1], ids[2], ids[4]]).await.expect("release");

    let listed = |filter: MessageFilter| async move {
        let page = admin.search_messages(&filter, None, 100).await.expect("search_messages");
        assert!(page.next.is_none(), "one page holds them all");
        page.items.iter().map(|p| p.message.id).collect::<Vec<_>>()
    };
    let pick = |n: &[usize]| n.iter().map(|&i| ids[i]).collect::<Vec<_>>();
    assert_eq!(listed(MessageFilter::new(MessageState::Pending)).await, ids, "pending: all, in enqueue order");
    assert_eq!(listed(MessageFilter::new(MessageState::Retrying)).await, pick(&[0, 3]));
    assert_eq!(listed(MessageFilter::new(MessageState::Scheduled)).await, pick(&[5]));
    assert_eq!(listed(MessageFilter::new(MessageState::Pending).topic("billing")).await, pick(&[3]));
    assert_eq!(listed(MessageFilter::new(MessageState::Pending).key("a")).await, pick(&[0, 1, 2]));
    assert_eq!(listed(MessageFilter::new(MessageState::Retrying).key("a")).await, pick(&[0]));
    assert_eq!(listed(MessageFilter::new(MessageState::Pending).topic("x' OR '1'='1")).await, pick(&[]));

    let retrying = admin.search_messages(&MessageFilter::new(MessageState::Retrying), None, 1).await.expect("page");
    let head = &retrying.items[0];
    assert_eq!(head.message.last_error.as_deref(), Some("boom <script>alert(1)</script>"));
    let soonest = chrono::Utc::now() + chrono::Duration::minutes(50);
    assert!(head.available_at > soonest, "its next attempt is an hour away: {}", head.available_at);

    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = admin.search_messages(&MessageFilter::default(), after, 2).await.expect("page");
        paged.extend(page.items.iter().map(|p| p.message.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, ids, "pages of 2 give every message once, in order");

    let blocked = admin.blocked_keys(10).await.expect("blocked_keys");
    let found: Vec<(&str, MessageId, u64)> =
        blocked.iter().map(|b| (b.key.as_str(), b.head.message.id, b.waiting)).collect();
    assert_eq!(found, [("a", ids[0], 2), ("b", ids[3], 0)], "the keys whose oldest message failed");
    assert_eq!(blocked[0].head.message.last_error.as_deref(), Some("boom <script>alert(1)</script>"));
    assert_eq!(admin.blocked_keys(1).await.expect("blocked_keys").len(), 1, "the limit holds");
}

/// The relay registry, for stores that keep one: a heartbeat registers a relay, the listing shows it
/// with the messages it holds leased, an old heartbeat is not alive, and a relay that leaves is gone.
pub async fn the_relay_registry_lists_live_relays_and_their_claims<H: StoreHarness + ?Sized>(h: &H) {
    let store = h.store();
    let Some(registry) = store.registry() else { return };
    let (relay, other) = (RelayId::new(), RelayId::new());
    registry.heartbeat(relay, "orders", "host-a", 42, 0).await.expect("heartbeat");
    registry.heartbeat(other, "billing", "host-b", 7, 0).await.expect("heartbeat");
    let ids = commit(h, vec![msg("t", 1), msg("t", 2), msg("t", 3)]).await;
    assert_eq!(claim(&*store, relay, 2, LEASE).await.len(), 2);
    registry.heartbeat(relay, "orders", "host-a", 42, 1234).await.expect("a second heartbeat");

    let listed = registry.relays(Duration::from_secs(60)).await.expect("relays");
    let entry = listed.iter().find(|r| r.id == relay).expect("the relay is listed");
    assert_eq!((entry.name.as_str(), entry.host.as_str(), entry.pid), ("orders", "host-a", 42));
    assert_eq!(entry.claims_held, 2, "the messages it holds leased");
    assert_eq!(entry.published, 1234, "the published count of its last heartbeat");
    assert!(entry.heartbeat_at >= entry.started_at);
    assert_eq!(listed.iter().find(|r| r.id == other).map(|r| r.claims_held), Some(0));
    assert!(
        registry.relays(Duration::ZERO).await.expect("relays").iter().all(|r| r.id != relay),
        "no heartbeat is newer than now"
    );

    registry.deregister(relay).await.expect("deregister");
    let listed = registry.relays(Duration::from_secs(60)).await.expect("relays");
    assert!(listed.iter().all(|r| r.id != relay), "a relay that left is gone");
    assert!(listed.iter().any(|r| r.id == other));
    registry.deregister(other).await.expect("deregister");
    store.acknowledge(&ids).await.expect("acknowledge");
}

/// Guarantee 4 with real relays: four relays on one table, a publisher that fails about one publish in
/// six, 16 keys x 20 messages plus keyless ones. Every message is published, each key in enqueue order,
/// and nothing is left pending.
pub async fn four_relays_keep_per_key_order_under_failures<H: StoreHarness + ?Sized>(h: &H) {
    const KEYS: usize = 16;
    const PER_KEY: usize = 20;
    let mut batch = Vec::new();
    for n in 0..PER_KEY {
        for k in 0..KEYS {
            batch.push(NewMessage::new("t", format!("{n}")).key(format!("key-{k}")));
        }
        batch.push(msg("t", n));
    }
    commit(h, batch).await;
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let publisher = MemoryPublisher::new().failing_when(move |_| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 6 == 0).then(|| PublishError::transient("injected failure"))
    });
    let policy = RetryPolicy::builder()
        .initial_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(20))
        .max_attempts(1_000)
        .jitter(Jitter::None)
        .build()
        .expect("policy");
    let shutdown = CancellationToken::new();
    let mut relays = Vec::new();
    for _ in 0..4 {
        let relay = Relay::builder_shared(h.store(), std::sync::Arc::new(publisher.clone()))
            .batch_size(8)
            .concurrency(2)
            .poll_interval(Duration::from_millis(10))
            .retry_policy(policy)
            .build()
            .expect("relay");
        let shutdown = shutdown.clone();
        relays.push(tokio::spawn(async move { relay.run(shutdown).await }));
    }
    let store = h.store();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while store.stats().await.expect("stats").pending > 0 {
        assert!(tokio::time::Instant::now() < deadline, "four relays did not drain the outbox in 120 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    for relay in relays {
        relay.await.expect("relay task").expect("relay run");
    }
    let mut per_key: std::collections::HashMap<String, Vec<usize>> = std::collections::HashMap::new();
    let mut keyless = 0;
    for m in publisher.published() {
        let n: usize = String::from_utf8(m.payload).expect("utf8").parse().expect("number");
        match m.key {
            Some(key) => per_key.entry(key).or_default().push(n),
            None => keyless += 1,
        }
    }
    assert_eq!(per_key.len(), KEYS, "every key published");
    for (key, seq) in &per_key {
        assert_eq!(seq, &(0..PER_KEY).collect::<Vec<_>>(), "{key} published out of order or with a gap");
    }
    assert_eq!(keyless, PER_KEY, "every keyless message published once");
    assert_eq!(store.dead_letters(10).await.expect("list").len(), 0);
}
