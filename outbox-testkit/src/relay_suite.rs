//! The end-to-end relay suite: a store and a publisher together under the real [`Relay`], with faults.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outbox_engine::memory::MemoryPublisher;
use outbox_engine::{
    CancellationToken, Dispatcher, HeldKeys, Jitter, Message, MessageId, NewMessage, PublishError, Publisher, Relay,
    RelayOptions, RetryPolicy,
};

use crate::publisher_suite::PublisherHarness;
use crate::store_suite::StoreHarness;

/// The header that makes [`FaultInjector`] fail a message permanently.
pub const POISON_HEADER: &str = "x-outbox-test-poison";

/// The header that makes [`FaultInjector`] fail a message transiently, the first time only.
pub const FAIL_ONCE_HEADER: &str = "x-outbox-test-fail-once";

/// A [`Publisher`] wrapper that injects faults: a deterministic fraction of messages fail transiently
/// (without reaching the inner publisher), every message with the [`POISON_HEADER`] fails permanently,
/// one with the [`FAIL_ONCE_HEADER`] fails transiently the first time it comes,
/// and some batches are delayed. It counts what it handed to the inner publisher and what that
/// accepted.
#[derive(Debug)]
pub struct FaultInjector {
    inner: Arc<dyn Publisher>,
    fail_one_in: u64,
    delay_one_in: u64,
    delay: Duration,
    calls: AtomicU64,
    failed_once: std::sync::Mutex<HashSet<MessageId>>,
    largest_call: AtomicU64,
    forwarded: AtomicU64,
    delivered: AtomicU64,
    injected: AtomicU64,
}

impl FaultInjector {
    /// Wraps `inner`; fails about one message in `fail_one_in` (0: never) and delays about one batch in
    /// `delay_one_in` by `delay`.
    pub fn new(inner: Arc<dyn Publisher>, fail_one_in: u64, delay_one_in: u64, delay: Duration) -> Self {
        Self {
            inner,
            fail_one_in,
            delay_one_in,
            delay,
            calls: AtomicU64::new(0),
            failed_once: std::sync::Mutex::new(HashSet::new()),
            largest_call: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }
    }

    /// Messages the inner publisher accepted (duplicates included).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::SeqCst)
    }

    /// Messages handed to the inner publisher. Those not [delivered](Self::delivered) failed, or their
    /// publish was dropped midway (a crashed relay): the broker may hold them or not.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::SeqCst)
    }

    /// The most messages one call carried.
    pub fn largest_call(&self) -> u64 {
        self.largest_call.load(Ordering::SeqCst)
    }

    /// Whether a message with the [`FAIL_ONCE_HEADER`] comes for the first time.
    fn first_time(&self, message: &Message) -> bool {
        message.headers.contains_key(FAIL_ONCE_HEADER)
            && self.failed_once.lock().unwrap_or_else(|p| p.into_inner()).insert(message.id)
    }

    /// Transient failures injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    fn roll(&self, one_in: u64) -> bool {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        one_in > 0 && n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) % one_in == 0
    }
}

#[async_trait]
impl Publisher for FaultInjector {
    async fn publish(&self, batch: &[Message]) -> Vec<Result<(), PublishError>> {
        self.largest_call.fetch_max(batch.len() as u64, Ordering::SeqCst);
        if self.roll(self.delay_one_in) {
            tokio::time::sleep(self.delay).await;
        }
        let mut outcomes: Vec<Option<Result<(), PublishError>>> = Vec::with_capacity(batch.len());
        let mut forward = Vec::with_capacity(batch.len());
        // An injected failure holds its key's later messages back, as a publisher that keeps key
        // order must.
        let mut held = HeldKeys::default();
        for message in batch {
            if let Err(e) = held.check(message) {
                outcomes.push(Some(Err(e)));
            } else if message.headers.contains_key(POISON_HEADER) {
                outcomes.push(Some(Err(PublishError::permanent("poisoned message (injected)"))));
            } else if self.first_time(message) || self.roll(self.fail_one_in) {
                self.injected.fetch_add(1, Ordering::SeqCst);
                let outcome = Err(PublishError::transient("injected transient failure"));
                held.record(message, &outcome);
                outcomes.push(Some(outcome));
            } else {
                outcomes.push(None);
                forward.push(message.clone());
            }
        }
        self.forwarded.fetch_add(forward.len() as u64, Ordering::SeqCst);
        let mut forwarded = self.inner.publish(&forward).await.into_iter();
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    let outcome = forwarded.next().unwrap_or_else(|| Err(PublishError::transient("missing outcome")));
                    if outcome.is_ok() {
                        self.delivered.fetch_add(1, Ordering::SeqCst);
                    }
                    outcome
                })
            })
            .collect()
    }

    fn keeps_key_order(&self) -> bool {
        self.inner.keeps_key_order()
    }
}

/// A [`PublisherHarness`] over [`MemoryPublisher`] (the in-memory "broker" of the matrix).
#[derive(Debug, Default)]
pub struct MemoryPublisherHarness {
    publisher: MemoryPublisher,
}

impl MemoryPublisherHarness {
    /// A harness over an empty publisher.
    pub async fn new() -> Option<Self> {
        Some(Self::default())
    }
}

#[async_trait]
impl PublisherHarness for MemoryPublisherHarness {
    fn publisher(&self) -> Arc<dyn Publisher> {
        Arc::new(self.publisher.clone())
    }
    fn topic(&self) -> &str {
        "memory"
    }
    async fn read_back(
        &self,
        expected: usize,
        _timeout: Duration,
    ) -> outbox_engine::Result<Vec<outbox_brokers::Received>> {
        Ok(self
            .publisher
            .published()
            .into_iter()
            .take(expected)
            .map(|m| outbox_brokers::Received { id: Some(m.id), key: m.key, payload: m.payload, headers: m.headers })
            .collect())
    }
    fn unreachable(&self) -> Arc<dyn Publisher> {
        Arc::new(MemoryPublisher::new().failing_when(|_| Some(PublishError::transient("unreachable"))))
    }
    fn unroutable_topic(&self) -> String {
        "memory-unroutable".to_owned()
    }
    async fn kill_connections(&self) {}
}

/// Sizes of a [`relay_suite`] run.
#[derive(Debug, Clone, Copy)]
pub struct RelayScenario {
    /// Concurrent producers.
    pub producers: usize,
    /// Messages per producer (each tenth is keyless).
    pub per_producer: usize,
    /// Keys shared by the producers.
    pub keys: usize,
    /// Poisoned (permanently failing) messages among them.
    pub poisoned: usize,
    /// Relays running at once (one more is started and crashed mid-batch).
    pub relays: usize,
}

impl Default for RelayScenario {
    fn default() -> Self {
        Self { producers: 4, per_producer: 400, keys: 16, poisoned: 8, relays: 3 }
    }
}

/// End to end with the real [`Relay`]: producers enqueue while `relays` relays (plus one that is
/// crashed mid-batch) publish through a [`FaultInjector`]. Every message arrives at least once with its
/// id, duplicates stay within the crashed relay's claims, each key arrives in order, nothing is left
/// pending, and the dead letters are exactly the poisoned messages.
pub async fn relay_suite<S, P>(store: &S, publisher: &P, scenario: RelayScenario)
where
    S: StoreHarness + ?Sized,
    P: PublisherHarness + ?Sized,
{
    const BATCH: usize = 32;
    const CONCURRENCY: usize = 2;
    let faulty = Arc::new(FaultInjector::new(publisher.publisher(), 10, 7, Duration::from_millis(50)));
    // The crashed relay publishes through its own injector: what it handed to the broker without an
    // outcome (its publishes dropped by the crash) may or may not be there, and is read back too.
    let doomed_faulty = Arc::new(FaultInjector::new(publisher.publisher(), 10, 7, Duration::from_millis(50)));
    let policy = RetryPolicy::builder()
        .initial_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(100))
        .max_attempts(60)
        .jitter(Jitter::Full)
        .build()
        .expect("policy");
    let relay = |lease: Duration, faulty: Arc<FaultInjector>| {
        Relay::builder_shared(store.store(), faulty)
            .batch_size(BATCH)
            .concurrency(CONCURRENCY)
            .lease(lease)
            .poll_interval(Duration::from_millis(20))
            .retry_policy(policy)
            .build()
            .expect("relay")
    };
    let shutdown = CancellationToken::new();

    // The relay that crashes: it starts first, and is dropped while its first batches are in flight.
    let doomed = relay(Duration::from_secs(1), doomed_faulty.clone());
    let doomed_task = tokio::spawn({
        let (doomed, shutdown) = (doomed.clone(), shutdown.clone());
        async move { doomed.run(shutdown).await }
    });

    let poison_every = (scenario.producers * scenario.per_producer / scenario.poisoned.max(1)).max(1);
    let producers = (0..scenario.producers).map(|p| {
        let mut messages = Vec::with_capacity(scenario.per_producer);
        for n in 0..scenario.per_producer {
            let global = p * scenario.per_producer + n;
            let mut message = NewMessage::new(publisher.topic(), format!("{p}:{n}"));
            if n % 10 != 9 {
                message = message.key(format!("k{}-{}", p, n % scenario.keys));
            }
            if scenario.poisoned > 0 && global % poison_every == poison_every / 2 {
                message = message.header(POISON_HEADER, "1");
            }
            messages.push(message);
        }
        messages
    });
    let mut expected: HashMap<MessageId, (Option<String>, bool)> = HashMap::new();
    let mut enqueue = Vec::new();
    for messages in producers {
        for m in &messages {
            expected.insert(m.id(), (m.message_key().map(str::to_owned), m.headers().contains_key(POISON_HEADER)));
        }
        // One producer commits its transactions one after another (that is what "enqueue order" means
        // for a key); the producers run concurrently.
        enqueue.push(async move {
            for chunk in messages.chunks(20) {
                store.enqueue(chunk.to_vec(), true).await.expect("enqueue");
            }
        });
    }
    let mut relays = Vec::new();
    let enqueued = futures::future::join_all(enqueue);
    let crash = async {
        while doomed.metrics().batches == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        doomed_task.abort();
    };
    futures::join!(enqueued, crash);
    for _ in 0..scenario.relays {
        let relay = relay(Duration::from_secs(5), faulty.clone());
        let shutdown = shutdown.clone();
        relays.push(tokio::spawn(async move { relay.run(shutdown).await }));
    }

    let handle = store.store();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while handle.stats().await.expect("stats").pending > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the relays did not drain the outbox within 180 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    for relay in relays {
        relay.await.expect("relay task").expect("relay");
    }

    let poisoned: HashSet<MessageId> = expected.iter().filter(|(_, (_, p))| *p).map(|(id, _)| *id).collect();
    let dead: HashSet<MessageId> =
        handle.dead_letters(10_000).await.expect("dead letters").into_iter().map(|d| d.message.id).collect();
    assert_eq!(dead, poisoned, "the dead letters are exactly the poisoned messages");

    let delivered = (faulty.delivered() + doomed_faulty.delivered()) as usize;
    let uncertain = (doomed_faulty.forwarded() - doomed_faulty.delivered()) as usize;
    // A broker that de-duplicates stores a message acknowledged twice (before and after the crash,
    // or after a retry) once: it holds each message that was not poisoned, once. Everything it
    // acknowledged is stored already, so asking for one more only waits a moment.
    let least = if publisher.deduplicates() { expected.len() - poisoned.len() } else { delivered };
    let (ask, wait) = if publisher.deduplicates() {
        (least + 1, Duration::from_secs(5))
    } else {
        (delivered + uncertain, Duration::from_secs(60))
    };
    let received = publisher.read_back(ask, wait).await.expect("read back");
    assert!(
        (least..=delivered + uncertain).contains(&received.len()),
        "the broker holds every message it acknowledged: {} read back, {delivered} acknowledged ({least} at least), {uncertain} dropped midway by the crash",
        received.len()
    );
    let mut seen: HashMap<MessageId, usize> = HashMap::new();
    let mut last_per_key: HashMap<String, usize> = HashMap::new();
    for r in &received {
        let id = r.id.expect("message id");
        let count = seen.entry(id).or_default();
        *count += 1;
        if *count > 1 {
            // A redelivery (at-least-once) is a duplicate, not an order violation: order is that of
            // each message's first delivery.
            continue;
        }
        let (key, _) = expected.get(&id).expect("a message that was enqueued");
        assert_eq!(&r.key, key);
        if let Some(key) = key {
            let text = String::from_utf8_lossy(&r.payload).into_owned();
            let n: usize = text.split(':').nth(1).and_then(|s| s.parse().ok()).expect("payload p:n");
            if let Some(previous) = last_per_key.insert(key.clone(), n) {
                assert!(previous <= n, "{key}: {n} arrived after {previous}");
            }
        }
    }
    for (id, (_, poison)) in &expected {
        if !poison {
            assert!(seen.contains_key(id), "message {id} was never published");
        }
    }
    let duplicates = received.len() - seen.len();
    let doomed_claims = BATCH * CONCURRENCY * RelayOptions::default().batches_in_flight;
    assert!(
        duplicates <= doomed_claims,
        "{duplicates} duplicates; only the crashed relay's claims ({doomed_claims}) may be published twice"
    );
    if publisher.deduplicates() {
        assert_eq!(duplicates, 0, "the broker de-duplicates by message id, yet {duplicates} copies were stored twice");
    }
    assert!(faulty.injected() > 0, "faults were injected");
    eprintln!(
        "relay_suite: {} messages, {} poisoned, {} transient faults injected, {} duplicates after a relay crash",
        expected.len(),
        poisoned.len(),
        faulty.injected(),
        duplicates
    );
}

/// Per-key order inside one batch, with the real [`Relay`]: one key's eight messages, enqueued in one
/// transaction, are claimed as one run; the 3rd fails permanently and the 6th transiently once.
/// Messages 1-2 are published once, 3 is dead-lettered, 4-5 follow it; 6 is retried and 7-8, handed
/// back unattempted, are published after it: each message exactly once, in enqueue order.
pub async fn key_run_with_failures<S, P>(store: &S, publisher: &P)
where
    S: StoreHarness + ?Sized,
    P: PublisherHarness + ?Sized,
{
    const RUN: usize = 8;
    let faulty = Arc::new(FaultInjector::new(publisher.publisher(), 0, 0, Duration::ZERO));
    let key = format!("run-{}", MessageId::new());
    let messages: Vec<NewMessage> = (1..=RUN)
        .map(|n| {
            let message = NewMessage::new(publisher.topic(), format!("{n}")).key(key.clone());
            match n {
                3 => message.header(POISON_HEADER, "1"),
                6 => message.header(FAIL_ONCE_HEADER, "1"),
                _ => message,
            }
        })
        .collect();
    let ids = store.enqueue(messages, true).await.expect("enqueue");
    let policy = RetryPolicy::builder()
        .initial_delay(Duration::from_millis(100))
        .jitter(Jitter::None)
        .max_attempts(5)
        .build()
        .expect("policy");
    let relay = Relay::builder_shared(store.store(), faulty.clone())
        .batch_size(32)
        .concurrency(1)
        .poll_interval(Duration::from_millis(20))
        .retry_policy(policy)
        .build()
        .expect("relay");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    let handle = store.store();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stats = handle.stats().await.expect("stats");
        if stats.pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay did not drain the run within 60 s: {stats:?}, {:?}",
            relay.metrics()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.expect("relay task").expect("relay");

    if faulty.keeps_key_order() {
        assert_eq!(faulty.largest_call(), RUN as u64, "the key's run went to the publisher in one call");
    } else {
        assert_eq!(faulty.largest_call(), 1, "one message of the key per call");
    }
    let dead: Vec<MessageId> =
        handle.dead_letters(100).await.expect("dead letters").into_iter().map(|d| d.message.id).collect();
    assert_eq!(dead, vec![ids[2]], "the 3rd message is dead-lettered");
    let received = publisher.read_back(RUN - 1, Duration::from_secs(30)).await.expect("read back");
    let got: Vec<MessageId> = received.iter().filter_map(|r| r.id).filter(|id| ids.contains(id)).collect();
    let want: Vec<MessageId> = ids.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, id)| *id).collect();
    assert_eq!(got, want, "messages 1-2 and 4-8 once each, in enqueue order");
    let metrics = relay.metrics();
    assert_eq!((metrics.retried, metrics.dead_lettered), (1, 1), "one retry (the 6th), one dead letter (the 3rd)");
}

/// Per-key order across batches, with the real [`Relay`]: one key's 24 messages go out in batches
/// of 4, each batch claimed while the one before it publishes where the store
/// [claims behind](outbox_engine::Store::claims_behind) a batch. The 7th fails permanently and the
/// 10th transiently once: the 7th is dead-lettered and the 8th follows it; the 10th is retried, and
/// the 11th onwards (in its batch and in the batch claimed behind it) are handed back and published
/// after it. Every other message arrives exactly once, in enqueue order.
pub async fn key_queue_across_batches_with_failures<S, P>(store: &S, publisher: &P)
where
    S: StoreHarness + ?Sized,
    P: PublisherHarness + ?Sized,
{
    const QUEUE: usize = 24;
    let faulty = Arc::new(FaultInjector::new(publisher.publisher(), 0, 0, Duration::ZERO));
    let key = format!("queue-{}", MessageId::new());
    let messages: Vec<NewMessage> = (1..=QUEUE)
        .map(|n| {
            let message = NewMessage::new(publisher.topic(), format!("{n}")).key(key.clone());
            match n {
                7 => message.header(POISON_HEADER, "1"),
                10 => message.header(FAIL_ONCE_HEADER, "1"),
                _ => message,
            }
        })
        .collect();
    let ids = store.enqueue(messages, true).await.expect("enqueue");
    let policy = RetryPolicy::builder()
        .initial_delay(Duration::from_millis(100))
        .jitter(Jitter::None)
        .max_attempts(5)
        .build()
        .expect("policy");
    let relay = Relay::builder_shared(store.store(), faulty.clone())
        .batch_size(4)
        .concurrency(1)
        .poll_interval(Duration::from_millis(20))
        .retry_policy(policy)
        .build()
        .expect("relay");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    let handle = store.store();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while handle.stats().await.expect("stats").pending > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay did not drain the queue within 60 s: {:?}",
            relay.metrics()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.expect("relay task").expect("relay");

    let dead: Vec<MessageId> =
        handle.dead_letters(100).await.expect("dead letters").into_iter().map(|d| d.message.id).collect();
    assert_eq!(dead, vec![ids[6]], "the 7th message is dead-lettered");
    let received = publisher.read_back(QUEUE - 1, Duration::from_secs(30)).await.expect("read back");
    let got: Vec<MessageId> = received.iter().filter_map(|r| r.id).filter(|id| ids.contains(id)).collect();
    let want: Vec<MessageId> = ids.iter().enumerate().filter(|(i, _)| *i != 6).map(|(_, id)| *id).collect();
    assert_eq!(got, want, "every message but the 7th once, in enqueue order");
    let metrics = relay.metrics();
    assert_eq!((metrics.retried, metrics.dead_lettered), (1, 1), "one retry (the 10th), one dead letter (the 7th)");
}

/// A relay that published a claim and died before acknowledging it: after its lease expires another
/// relay publishes the same messages again. A broker that de-duplicates by message id stores each
/// once; any other stores both copies (at-least-once), and nothing is lost either way.
pub async fn a_relay_killed_before_acknowledging<S, P>(store: &S, publisher: &P)
where
    S: StoreHarness + ?Sized,
    P: PublisherHarness + ?Sized,
{
    const MESSAGES: usize = 50;
    let messages: Vec<NewMessage> = (0..MESSAGES)
        .map(|n| {
            let message = NewMessage::new(publisher.topic(), format!("{n}"));
            if n % 2 == 0 {
                message.key(format!("k{}", n % 5))
            } else {
                message
            }
        })
        .collect();
    let ids = store.enqueue(messages, true).await.expect("enqueue");
    let handle = store.store();
    // The relay that dies: it claims, the broker acknowledges its publish, and it never gets to
    // acknowledge in the store.
    let dying = outbox_engine::RelayId::new();
    let lease = Duration::from_millis(500);
    let mut claimed = Vec::new();
    while claimed.len() < MESSAGES {
        let more = handle.claim(dying, MESSAGES, lease).await.expect("claim");
        assert!(!more.is_empty(), "claimed {} of {MESSAGES}", claimed.len());
        claimed.extend(more);
    }
    let outcomes = publisher.publisher().publish(&claimed).await;
    assert!(outcomes.iter().all(Result::is_ok), "the dying relay's publish: {outcomes:?}");

    tokio::time::sleep(lease).await;
    let relay = Relay::builder_shared(handle.clone(), publisher.publisher())
        .poll_interval(Duration::from_millis(20))
        .build()
        .expect("relay");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while handle.stats().await.expect("stats").pending > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the second relay did not publish the claim again within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.expect("relay task").expect("relay");
    assert_eq!(relay.metrics().published, MESSAGES as u64, "the second relay published the claim again");

    let received = publisher.read_back(2 * MESSAGES, Duration::from_secs(5)).await.expect("read back");
    let mut copies: HashMap<MessageId, usize> = HashMap::new();
    for r in &received {
        *copies.entry(r.id.expect("message id")).or_default() += 1;
    }
    let expected = if publisher.deduplicates() { 1 } else { 2 };
    for id in &ids {
        assert_eq!(
            copies.get(id).copied().unwrap_or(0),
            expected,
            "copies of {id} stored (broker de-duplicates: {})",
            publisher.deduplicates()
        );
    }
    assert_eq!(received.len(), expected * MESSAGES);
}
