//! The relay's logic against the in-memory store and scripted publishers.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_engine::memory::{MemoryPublisher, MemoryStore};
use outbox_engine::{
    async_trait, CancellationToken, DeadLetterHook, Dispatcher, Enqueue, Jitter, Message, NewMessage, PublishError,
    Relay, RelayId, RetryPolicy, Router, Store,
};

fn policy(max_attempts: u32, initial_ms: u64) -> RetryPolicy {
    RetryPolicy::builder()
        .initial_delay(Duration::from_millis(initial_ms))
        .max_delay(Duration::from_secs(60))
        .max_attempts(max_attempts)
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

/// A memory store holding `n` committed messages on topic `t`.
fn store_with(n: usize) -> MemoryStore {
    let store = MemoryStore::new();
    for i in 0..n {
        store.enqueue_committed(NewMessage::new("t", format!("{i}"))).unwrap();
    }
    store
}

/// Runs `relay` in the background; cancel the token to stop it.
fn start(relay: &Relay) -> (CancellationToken, tokio::task::JoinHandle<outbox_engine::Result<()>>) {
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    (shutdown, running)
}

#[tokio::test(start_paused = true)]
async fn retry_scheduling_follows_the_policy() {
    let store = MemoryStore::new();
    let id = store.enqueue_committed(NewMessage::new("t", "x")).unwrap();
    let publisher = MemoryPublisher::new().failing_when(|_| Some(PublishError::transient("broker down")));
    let relay = Relay::builder(store.clone(), publisher).retry_policy(policy(10, 100)).build().unwrap();

    for (attempt, expected_ms) in [(1u32, 100u64), (2, 200), (3, 400), (4, 800)] {
        assert_eq!(relay.dispatch_once().await.unwrap(), 1, "attempt {attempt} claims the message");
        let pending = store.pending();
        assert_eq!(pending[0].attempts, attempt);
        assert!(pending[0].last_error.as_deref().unwrap().contains("broker down"));
        assert_eq!(store.available_in(id), Some(Duration::from_millis(expected_ms)));
        assert_eq!(relay.dispatch_once().await.unwrap(), 0, "not claimable before its delay");
        tokio::time::advance(Duration::from_millis(expected_ms)).await;
    }
    assert_eq!(relay.metrics().retried, 4);
}

#[tokio::test(start_paused = true)]
async fn permanent_error_dead_letters_at_once() {
    let store = MemoryStore::new();
    let id = store.enqueue_committed(NewMessage::new("t", "x")).unwrap();
    let publisher = MemoryPublisher::new().failing_when(|_| Some(PublishError::permanent("message too large")));
    let relay = Relay::builder(store.clone(), publisher).build().unwrap();

    relay.dispatch_once().await.unwrap();
    assert_eq!(store.pending_len(), 0);
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, id);
    assert_eq!(dead[0].message.attempts, 1);
    assert!(dead[0].error.contains("message too large"), "{}", dead[0].error);
}

#[tokio::test(start_paused = true)]
async fn max_attempts_dead_letters_and_replay_publishes_again() {
    let store = MemoryStore::new();
    let id = store.enqueue_committed(NewMessage::new("t", "x")).unwrap();
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let calls = Arc::new(AtomicU32::new(0));
    let publisher = MemoryPublisher::new().failing_when({
        let (fail, calls) = (fail.clone(), calls.clone());
        move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            fail.load(Ordering::SeqCst).then(|| PublishError::transient("smtp refused"))
        }
    });
    let relay = Relay::builder(store.clone(), publisher.clone()).retry_policy(policy(3, 10)).build().unwrap();

    for _ in 0..10 {
        relay.dispatch_once().await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3, "exactly max_attempts publishes");
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].error.contains("gave up after 3 attempts"), "{}", dead[0].error);
    assert!(dead[0].error.contains("smtp refused"));

    fail.store(false, Ordering::SeqCst);
    assert_eq!(store.replay_dead_letters(&[id]).await.unwrap(), 1);
    assert_eq!(relay.dispatch_once().await.unwrap(), 1);
    assert_eq!(publisher.published()[0].id, id);
    assert!(store.dead_letters(10).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_message_that_keeps_crashing_relays_reaches_the_dead_letters() {
    let store = MemoryStore::new();
    store.enqueue_committed(NewMessage::new("t", "poison")).unwrap();
    // Three relays claim it and die without an outcome; each claim counts an attempt.
    for _ in 0..3 {
        assert_eq!(store.claim(RelayId::new(), 10, Duration::from_secs(1)).await.unwrap().len(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
    }
    let publisher = MemoryPublisher::new();
    let relay = Relay::builder(store.clone(), publisher.clone()).retry_policy(policy(3, 10)).build().unwrap();
    relay.dispatch_once().await.unwrap();
    assert_eq!(publisher.published_len(), 0, "not published a 4th time");
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].error.contains("claimed 4 times"), "{}", dead[0].error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_with_four_concurrent_batches_and_failures() {
    const KEYS: usize = 20;
    const PER_KEY: usize = 25;
    let store = MemoryStore::new();
    for n in 0..PER_KEY {
        for k in 0..KEYS {
            store.enqueue_committed(NewMessage::new("t", format!("{n}")).key(format!("k{k}"))).unwrap();
        }
    }
    for n in 0..50 {
        store.enqueue_committed(NewMessage::new("t", format!("{n}"))).unwrap();
    }
    // Fail about a fifth of the publishes transiently, pseudo-randomly.
    let counter = Arc::new(AtomicU64::new(0));
    let publisher = MemoryPublisher::new().with_delay(Duration::from_millis(1)).failing_when({
        let counter = counter.clone();
        move |_| {
            let n = counter.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (n >> 61 == 0).then(|| PublishError::transient("injected"))
        }
    });
    let relay = Relay::builder(store.clone(), publisher.clone())
        .concurrency(4)
        .batch_size(8)
        .poll_interval(Duration::from_millis(5))
        .retry_policy(policy(1000, 1))
        .build()
        .unwrap();
    let (shutdown, running) = start(&relay);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while store.pending_len() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "relay did not drain");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();

    assert!(relay.metrics().retried > 0, "failures were injected");
    let mut per_key: HashMap<String, Vec<usize>> = HashMap::new();
    for m in publisher.published() {
        if let Some(key) = m.key {
            per_key.entry(key).or_default().push(String::from_utf8(m.payload).unwrap().parse().unwrap());
        }
    }
    assert_eq!(per_key.len(), KEYS);
    for (key, seq) in per_key {
        assert_eq!(seq, (0..PER_KEY).collect::<Vec<_>>(), "key {key} out of order");
    }
    assert_eq!(publisher.published_len(), KEYS * PER_KEY + 50, "each message once: no crash, no duplicate");
}

/// Paused time: the checkpoints below are instants of the test clock, not of a loaded machine.
#[tokio::test(start_paused = true)]
async fn shutdown_finishes_in_flight_batches_and_loses_nothing() {
    let store = store_with(100);
    let publisher = MemoryPublisher::new().with_delay(Duration::from_millis(300));
    let relay = Relay::builder(store.clone(), publisher.clone()).batch_size(10).concurrency(2).build().unwrap();
    let (shutdown, running) = start(&relay);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(relay.metrics().claimed, 40, "two workers, two batches in flight each");
    shutdown.cancel();
    running.await.unwrap().unwrap();

    let published = publisher.published_len();
    assert_eq!(published, 40, "the four batches in flight at shutdown were finished, no new ones claimed");
    assert_eq!(store.pending_len(), 60);
    // Nothing is left leased: another relay can take all the rest right away.
    let next = store.claim(RelayId::new(), 1000, Duration::from_secs(30)).await.unwrap();
    assert_eq!(next.len(), 60);
    assert!(next.iter().all(|m| m.attempts == 1), "no other claim took them first");
}

/// Paused time: the checkpoints below are instants of the test clock, not of a loaded machine.
#[tokio::test(start_paused = true)]
async fn a_worker_publishes_the_next_batch_while_the_broker_confirms_the_first() {
    let store = store_with(50);
    let publisher = MemoryPublisher::new().with_delay(Duration::from_millis(300));
    let relay = Relay::builder(store.clone(), publisher.clone()).batch_size(10).concurrency(1).build().unwrap();
    let (shutdown, running) = start(&relay);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let metrics = relay.metrics();
    assert_eq!((metrics.batches, metrics.claimed), (2, 20), "the next batch is claimed during the first publish");
    assert_eq!(publisher.published_len(), 0);
    shutdown.cancel();
    running.await.unwrap().unwrap();

    assert_eq!(publisher.published_len(), 20, "both batches in flight are finished");
    let rest = store.claim(RelayId::new(), 1000, Duration::from_secs(30)).await.unwrap();
    assert_eq!(rest.len(), 30, "nothing else was claimed");
}

/// Paused time: the checkpoints below are instants of the test clock, not of a loaded machine.
#[tokio::test(start_paused = true)]
async fn one_batch_in_flight_makes_claim_publish_and_settle_sequential() {
    let store = store_with(50);
    let publisher = MemoryPublisher::new().with_delay(Duration::from_millis(300));
    let relay = Relay::builder(store.clone(), publisher.clone())
        .batch_size(10)
        .concurrency(1)
        .batches_in_flight(1)
        .build()
        .unwrap();
    let (shutdown, running) = start(&relay);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(relay.metrics().claimed, 10, "no claim while the only batch is being published");
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(publisher.published_len(), 10);
    assert_eq!(store.pending_len(), 40);
}

/// Paused time: the checkpoints below are instants of the test clock, not of a loaded machine.
#[tokio::test(start_paused = true)]
async fn a_claim_that_returns_after_shutdown_is_handed_back() {
    let store = store_with(50).with_claim_delay(Duration::from_millis(200));
    let publisher = MemoryPublisher::new().with_delay(Duration::from_millis(300));
    let relay = Relay::builder(store.clone(), publisher.clone()).batch_size(10).concurrency(1).build().unwrap();
    let (shutdown, running) = start(&relay);
    // 0-200 ms: the first claim; from 200 ms: its publish (until 500 ms) and the next claim (until 400 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();

    assert_eq!(relay.metrics().claimed, 20, "the second claim took effect");
    assert_eq!(publisher.published_len(), 10, "only the batch being published is finished");
    let rest = store.claim(RelayId::new(), 1000, Duration::from_secs(30)).await.unwrap();
    assert_eq!(rest.len(), 40, "the late claim was handed back, not left leased");
    assert!(rest.iter().all(|m| m.attempts == 1), "a handed-back claim does not count as an attempt");
}

/// Paused time: the checkpoints below are instants of the test clock, not of a loaded machine.
#[tokio::test(start_paused = true)]
async fn a_failed_claim_pauses_claims_for_the_error_backoff_then_the_relay_goes_on() {
    let store = store_with(5).fail_next_claims(1);
    let publisher = MemoryPublisher::new();
    let relay = Relay::builder(store.clone(), publisher.clone())
        .concurrency(1)
        .error_backoff(Duration::from_millis(300))
        .poll_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let (shutdown, running) = start(&relay);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(relay.metrics().store_errors, 1);
    assert_eq!(publisher.published_len(), 0, "no claim during the back-off");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(publisher.published_len(), 5, "claimed once the back-off ended, without waiting for a poll");
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(relay.metrics().store_errors, 1);
}

/// Paused time: the checkpoints below are instants of the test clock, not of a loaded machine.
#[tokio::test(start_paused = true)]
async fn shutdown_timeout_hands_back_claims() {
    let store = store_with(5);
    let publisher = MemoryPublisher::new().with_delay(Duration::from_secs(3600));
    let relay = Relay::builder(store.clone(), publisher)
        .shutdown_timeout(Duration::from_millis(100))
        .lease(Duration::from_secs(600))
        .build()
        .unwrap();
    let (shutdown, running) = start(&relay);
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let next = store.claim(RelayId::new(), 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(next.len(), 5, "claims were released, not left to expire");
    assert!(next.iter().all(|m| m.attempts == 1), "a handed-back claim does not count as an attempt");
}

#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<(String, String)>>>);

#[async_trait]
impl DeadLetterHook for Recorder {
    async fn on_dead_letter(&self, message: &Message, error: &str) {
        self.0.lock().unwrap().push((message.topic.clone(), error.to_owned()));
    }
}

#[tokio::test(start_paused = true)]
async fn router_sends_by_topic_and_unrouted_messages_are_parked_with_the_hook_called() {
    let store = MemoryStore::new();
    store.enqueue_committed(NewMessage::new("orders.placed", "1")).unwrap();
    store.enqueue_committed(NewMessage::new("mail", "2")).unwrap();
    store.enqueue_committed(NewMessage::new("unknown", "3")).unwrap();
    let (orders, mail) = (MemoryPublisher::new(), MemoryPublisher::new());
    let router = Router::new().route("orders.*", orders.clone()).unwrap().route("mail", mail.clone()).unwrap();
    let recorder = Recorder::default();
    let relay = Relay::builder(store.clone(), router).on_dead_letter(recorder.clone()).build().unwrap();

    assert_eq!(relay.dispatch_once().await.unwrap(), 3);
    assert_eq!(orders.published()[0].topic, "orders.placed");
    assert_eq!(mail.published()[0].topic, "mail");
    let parked = recorder.0.lock().unwrap().clone();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].0, "unknown");
    assert!(parked[0].1.contains("no route"), "{}", parked[0].1);
}

#[test]
fn invalid_relay_options_are_rejected() {
    let store = MemoryStore::new();
    assert!(Relay::builder(store.clone(), MemoryPublisher::new()).batch_size(0).build().is_err());
    assert!(Relay::builder(store.clone(), MemoryPublisher::new()).concurrency(0).build().is_err());
    assert!(Relay::builder(store.clone(), MemoryPublisher::new()).batches_in_flight(0).build().is_err());
    assert!(Relay::builder(store.clone(), MemoryPublisher::new()).batches_in_flight(65).build().is_err());
    assert!(Relay::builder(store, MemoryPublisher::new()).lease(Duration::ZERO).build().is_err());
}

/// Virtual time until `publisher` holds `n` messages (paused clock).
async fn time_until_published(publisher: &MemoryPublisher, n: usize) -> Duration {
    let started = tokio::time::Instant::now();
    while publisher.published_len() < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    started.elapsed()
}

/// A store that only polling can read: with a `busy_poll_interval` a message that follows others is
/// found within about that interval, and after a quiet spell polls back off to `poll_interval`;
/// without one every message waits for the next `poll_interval` poll.
#[tokio::test(start_paused = true)]
async fn busy_poll_interval_finds_flowing_messages_soon_and_backs_off_when_idle() {
    for busy in [Some(Duration::from_millis(10)), None] {
        let store = MemoryStore::new().without_wake_ups();
        let publisher = MemoryPublisher::new();
        let mut builder =
            Relay::builder(store.clone(), publisher.clone()).concurrency(1).poll_interval(Duration::from_secs(1));
        if let Some(busy) = busy {
            builder = builder.busy_poll_interval(busy);
        }
        let relay = builder.build().unwrap();
        let (shutdown, running) = start(&relay);
        tokio::time::sleep(Duration::from_millis(1500)).await; // idle: polling once a second

        store.enqueue_committed(NewMessage::new("t", "first")).unwrap();
        let first = time_until_published(&publisher, 1).await;
        assert!(first <= Duration::from_millis(1010), "{busy:?}: the first message waited {first:?}");

        store.enqueue_committed(NewMessage::new("t", "second")).unwrap();
        let second = time_until_published(&publisher, 2).await;
        if busy.is_some() {
            assert!(second <= Duration::from_millis(15), "a message right after another waited {second:?}");
        } else {
            assert!(second >= Duration::from_millis(900), "without busy polling it waited only {second:?}");
        }

        tokio::time::sleep(Duration::from_secs(5)).await; // quiet: the polls back off to once a second
        store.enqueue_committed(NewMessage::new("t", "third")).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let third = time_until_published(&publisher, 3).await + Duration::from_millis(100);
        assert!(third > Duration::from_millis(100), "{busy:?}: polls did not back off (found after {third:?})");
        assert!(third <= Duration::from_millis(1010), "{busy:?}: the third message waited {third:?}");
        shutdown.cancel();
        running.await.unwrap().unwrap();
    }
}

#[test]
fn busy_poll_interval_must_be_positive_and_at_most_the_poll_interval() {
    for busy in [Duration::ZERO, Duration::from_secs(2)] {
        let built = Relay::builder(MemoryStore::new(), MemoryPublisher::new()).busy_poll_interval(busy).build();
        assert!(built.is_err(), "busy_poll_interval {busy:?} was accepted");
    }
}

/// A `PublishOne` publisher that panics on one message fails that message only: it is retried by the
/// policy until it is parked, each other message of its batch goes out once, and the relay goes on.
#[tokio::test(start_paused = true)]
async fn a_panicking_publisher_fails_only_its_message_and_the_relay_lives_on() {
    let store = store_with(20);
    let poison = store.enqueue_committed(NewMessage::new("t", "poison")).unwrap();
    let published = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let publisher = outbox_engine::publisher_fn({
        let published = published.clone();
        move |message: Message| {
            let published = published.clone();
            async move {
                assert_ne!(message.payload, b"poison", "the publisher cannot handle this message");
                *published.lock().unwrap().entry(String::from_utf8(message.payload).unwrap()).or_default() += 1;
                Ok(())
            }
        }
    });
    let relay = Relay::builder(store.clone(), publisher).retry_policy(policy(3, 10)).build().unwrap();
    let (shutdown, running) = start(&relay);
    let started = tokio::time::Instant::now();
    while store.dead_letters(10).await.unwrap().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(60), "the message that panics was never parked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, poison);
    assert!(dead[0].error.contains("the publisher panicked"), "{}", dead[0].error);
    {
        let published = published.lock().unwrap();
        assert_eq!(published.len(), 20, "every good message of the panicking batch went out");
        assert!(published.values().all(|n| *n == 1), "a good message went out twice: {published:?}");
    }

    store.enqueue_committed(NewMessage::new("t", "after")).unwrap();
    let started = tokio::time::Instant::now();
    while !published.lock().unwrap().contains_key("after") {
        assert!(started.elapsed() < Duration::from_secs(60), "the relay stopped publishing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(relay.metrics().worker_panics, 0);
}

/// A batch publisher that panics when its batch holds the poison message, before sending anything.
#[derive(Debug, Default, Clone)]
struct PanicsOnPoison(Arc<Mutex<Vec<Vec<u8>>>>);

#[async_trait]
impl outbox_engine::Publisher for PanicsOnPoison {
    async fn publish(&self, batch: &[Message]) -> Vec<Result<(), PublishError>> {
        assert!(batch.iter().all(|m| m.payload != b"poison"), "this batch holds a message the broker cannot take");
        self.0.lock().unwrap().extend(batch.iter().map(|m| m.payload.clone()));
        batch.iter().map(|_| Ok(())).collect()
    }
}

/// A batch `Publisher` that panics: the relay publishes that batch again one message per call, so the
/// other messages go out and only the panicking one is retried and parked.
#[tokio::test(start_paused = true)]
async fn a_batch_publisher_that_panics_is_retried_one_message_at_a_time() {
    let store = store_with(10);
    let poison = store.enqueue_committed(NewMessage::new("t", "poison")).unwrap();
    let publisher = PanicsOnPoison::default();
    let relay = Relay::builder(store.clone(), publisher.clone()).retry_policy(policy(2, 10)).build().unwrap();
    let (shutdown, running) = start(&relay);
    let started = tokio::time::Instant::now();
    while store.dead_letters(10).await.unwrap().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(60), "the message that panics was never parked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!((dead.len(), dead[0].message.id), (1, poison));
    assert!(dead[0].error.contains("the publisher panicked"), "{}", dead[0].error);
    let mut sent = publisher.0.lock().unwrap().clone();
    sent.sort();
    let mut expected: Vec<Vec<u8>> = (0..10).map(|i| format!("{i}").into_bytes()).collect();
    expected.sort();
    assert_eq!(sent, expected, "each good message once");
    assert_eq!(store.pending_len(), 0);
}

/// A hook that panics once.
#[derive(Default, Clone)]
struct PanicsOnce(Arc<AtomicU32>);

#[async_trait]
impl DeadLetterHook for PanicsOnce {
    async fn on_dead_letter(&self, _message: &Message, _error: &str) {
        if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("the hook failed");
        }
    }
}

/// A worker whose loop panics (here in the dead-letter hook) is started again after `error_backoff`,
/// so the relay keeps its workers.
#[tokio::test(start_paused = true)]
async fn a_worker_that_panics_is_started_again() {
    let store = MemoryStore::new();
    store.enqueue_committed(NewMessage::new("t", "rejected")).unwrap();
    let publisher = MemoryPublisher::new()
        .failing_when(|m| (m.payload == b"rejected").then(|| PublishError::permanent("the broker refuses it")));
    let relay = Relay::builder(store.clone(), publisher.clone())
        .concurrency(1)
        .error_backoff(Duration::from_millis(50))
        .on_dead_letter(PanicsOnce::default())
        .build()
        .unwrap();
    let (shutdown, running) = start(&relay);
    let started = tokio::time::Instant::now();
    while relay.metrics().worker_panics == 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "no worker panic was counted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.enqueue_committed(NewMessage::new("t", "accepted")).unwrap();
    let waited = time_until_published(&publisher, 1).await;
    assert!(waited < Duration::from_secs(1), "the only worker was not started again ({waited:?})");
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(relay.metrics().worker_panics, 1);
    assert_eq!(store.dead_letters(10).await.unwrap().len(), 1);
}

/// A relay of one worker that does not poll within these tests: it claims when woken or at once.
fn one_worker_that_never_polls(store: &MemoryStore, publisher: &MemoryPublisher) -> Relay {
    Relay::builder(store.clone(), publisher.clone())
        .concurrency(1)
        .poll_interval(Duration::from_secs(3600))
        .build()
        .unwrap()
}

/// Starts [`one_worker_that_never_polls`] on `store` with a fresh publisher and lets its first claim
/// find nothing, so the worker is waiting for work.
async fn start_idle_worker(
    store: &MemoryStore,
) -> (MemoryPublisher, CancellationToken, tokio::task::JoinHandle<outbox_engine::Result<()>>) {
    let publisher = MemoryPublisher::new();
    let (shutdown, running) = start(&one_worker_that_never_polls(store, &publisher));
    tokio::time::sleep(Duration::from_millis(10)).await;
    (publisher, shutdown, running)
}

/// With a store that wakes a relay on every commit, a worker whose batch of keyless messages was not
/// full waits for that wake-up once it settled: one claim per message at a trickle, not a second,
/// empty claim after each.
#[tokio::test(start_paused = true)]
async fn after_a_short_keyless_batch_a_worker_waits_for_the_next_commit() {
    let store = MemoryStore::new();
    let (publisher, shutdown, running) = start_idle_worker(&store).await;
    let before = store.claims();
    for n in 1..=10 {
        store.enqueue_committed(NewMessage::new("t", format!("{n}"))).unwrap();
        let waited = time_until_published(&publisher, n).await;
        assert!(waited < Duration::from_millis(50), "message {n} waited {waited:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.claims() - before, 10, "one claim per message");
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// A key's next message becomes claimable when its head is settled, which sends no wake-up: after a
/// batch with keys the worker claims again at once.
#[tokio::test(start_paused = true)]
async fn after_a_batch_with_keys_a_worker_claims_again_at_once() {
    let store = MemoryStore::new();
    for n in 0..3 {
        store.enqueue_committed(NewMessage::new("t", format!("{n}")).key("order-1")).unwrap();
    }
    let publisher = MemoryPublisher::new();
    let relay = one_worker_that_never_polls(&store, &publisher);
    let (shutdown, running) = start(&relay);
    let waited = time_until_published(&publisher, 3).await;
    assert!(waited < Duration::from_secs(1), "a key's successors waited {waited:?} for a poll");
    let order: Vec<Vec<u8>> = publisher.published().into_iter().map(|m| m.payload).collect();
    assert_eq!(order, [b"0".to_vec(), b"1".to_vec(), b"2".to_vec()]);
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// A store that sends no wake-ups: after a batch settles the worker claims again at once, so a
/// message committed while it published is not left for the next poll.
#[tokio::test(start_paused = true)]
async fn without_wake_ups_a_worker_claims_again_after_each_batch() {
    let store = store_with(1).without_wake_ups();
    let publisher = MemoryPublisher::new().with_delay(Duration::from_millis(100));
    let relay = one_worker_that_never_polls(&store, &publisher);
    let (shutdown, running) = start(&relay);
    tokio::time::sleep(Duration::from_millis(50)).await; // the first message is being published
    store.enqueue_committed(NewMessage::new("t", "during")).unwrap();
    let waited = time_until_published(&publisher, 2).await;
    assert!(waited < Duration::from_secs(1), "the message committed during a publish waited {waited:?}");
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// SQLite and MySQL wake a relay when a message is enqueued, before its transaction commits. A
/// transaction that commits later than that wake-up is polled for again soon (5 ms, then doubling),
/// not left for the next regular poll; a rolled-back one costs a bounded number of extra claims.
#[tokio::test(start_paused = true)]
async fn a_commit_later_than_its_wake_up_is_found_long_before_the_next_poll() {
    let store = MemoryStore::new().waking_at_enqueue();
    let (publisher, shutdown, running) = start_idle_worker(&store).await;

    let mut tx = store.begin();
    store.enqueue(&mut tx, NewMessage::new("t", "late")).await.unwrap(); // wakes the worker now
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(publisher.published_len(), 0, "published before the commit");
    tx.commit().unwrap();
    let waited = time_until_published(&publisher, 1).await;
    assert!(waited <= Duration::from_millis(100), "committed 100 ms after its wake-up, it waited {waited:?} more");

    // A rolled-back transaction: a few polls, then back to the regular poll interval (an hour here).
    let before = store.claims();
    let mut tx = store.begin();
    store.enqueue(&mut tx, NewMessage::new("t", "rolled back")).await.unwrap();
    tx.rollback();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let claims = store.claims() - before;
    assert!((2..=9).contains(&claims), "{claims} claims after a rolled-back enqueue");
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// A store with commit wake-ups is not polled again after a wake-up whose claim found nothing.
#[tokio::test(start_paused = true)]
async fn a_store_that_wakes_on_commit_gets_no_late_commit_polls() {
    let store = MemoryStore::new();
    let (_publisher, shutdown, running) = start_idle_worker(&store).await;
    let before = store.claims();
    // A commit whose message another relay took first: the wake-up's claim finds nothing.
    let id = store.enqueue_committed(NewMessage::new("t", "taken")).unwrap();
    store.claim(RelayId::new(), 10, Duration::from_secs(3600)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(store.claims() - before, 2, "the other relay's claim and the woken worker's, nothing more");
    assert!(store.pending().iter().any(|m| m.id == id));
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// A memory store whose lease extensions fail, as they do while the database is away.
#[derive(Debug)]
struct NoLeaseExtensions(MemoryStore);

#[async_trait]
impl Store for NoLeaseExtensions {
    async fn claim(&self, owner: RelayId, limit: usize, lease: Duration) -> outbox_engine::Result<Vec<Message>> {
        self.0.claim(owner, limit, lease).await
    }
    async fn extend_lease(&self, _: RelayId, _: &[outbox_engine::MessageId], _: Duration) -> outbox_engine::Result<()> {
        Err(outbox_engine::Error::store("extend_lease", true, "the database is away"))
    }
    async fn release(&self, owner: RelayId, ids: &[outbox_engine::MessageId]) -> outbox_engine::Result<()> {
        self.0.release(owner, ids).await
    }
    async fn acknowledge(&self, ids: &[outbox_engine::MessageId]) -> outbox_engine::Result<()> {
        self.0.acknowledge(ids).await
    }
    async fn reschedule(&self, owner: RelayId, retries: &[outbox_engine::Retry]) -> outbox_engine::Result<()> {
        self.0.reschedule(owner, retries).await
    }
    async fn dead_letter(&self, owner: RelayId, failures: &[outbox_engine::Failure]) -> outbox_engine::Result<()> {
        self.0.dead_letter(owner, failures).await
    }
    async fn dead_letters(&self, limit: usize) -> outbox_engine::Result<Vec<outbox_engine::DeadLetter>> {
        self.0.dead_letters(limit).await
    }
    async fn replay_dead_letters(&self, ids: &[outbox_engine::MessageId]) -> outbox_engine::Result<u64> {
        self.0.replay_dead_letters(ids).await
    }
    async fn purge_dead_letters(&self, ids: &[outbox_engine::MessageId]) -> outbox_engine::Result<u64> {
        self.0.purge_dead_letters(ids).await
    }
    async fn purge_published(&self, older_than: Duration, limit: usize) -> outbox_engine::Result<u64> {
        self.0.purge_published(older_than, limit).await
    }
    async fn stats(&self) -> outbox_engine::Result<outbox_engine::OutboxStats> {
        self.0.stats().await
    }
}

/// Counts its drops: a publish future dropped before it finished.
struct CountOnDrop(Arc<AtomicU32>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Guarantee 3 (two live relays never publish the same message at once): a relay whose lease cannot
/// be extended gives its publish up before the lease ends, when another relay may claim the batch,
/// and reschedules the batch as a transient failure.
#[tokio::test(start_paused = true)]
async fn a_relay_that_cannot_extend_its_lease_gives_the_publish_up_before_the_lease_ends() {
    let memory = store_with(1);
    let lease = Duration::from_secs(3);
    let (finished, dropped) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let publisher = outbox_engine::publisher_fn({
        let (finished, dropped) = (finished.clone(), dropped.clone());
        move |_message| {
            let (finished, guard) = (finished.clone(), CountOnDrop(dropped.clone()));
            async move {
                let _guard = guard;
                tokio::time::sleep(Duration::from_secs(60)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok::<(), PublishError>(())
            }
        }
    });
    let relay = Relay::builder(NoLeaseExtensions(memory.clone()), publisher)
        .lease(lease)
        .retry_policy(policy(25, 10_000))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(relay.dispatch_once().await.unwrap(), 1);
    let gave_up_after = started.elapsed();
    assert!(gave_up_after < lease, "the publish ran {gave_up_after:?}, past the {lease:?} lease");
    assert!(gave_up_after >= lease * 8 / 10, "given up too early: {gave_up_after:?}");
    assert_eq!((finished.load(Ordering::SeqCst), dropped.load(Ordering::SeqCst)), (0, 1), "publish abandoned");
    assert_eq!(relay.metrics().retried, 1);
    let stats = memory.stats().await.unwrap();
    assert_eq!((stats.pending, stats.retrying), (1, 1), "the message waits for its retry: {stats:?}");
}

/// A publisher that does not keep key order (the default): it records each call,
/// fails the messages whose payload is `poison` permanently and those whose payload is `flaky` once.
#[derive(Debug, Default)]
struct RecordingPublisher {
    calls: Mutex<Vec<Vec<Message>>>,
    failed_once: Mutex<Vec<outbox_engine::MessageId>>,
}

#[async_trait]
impl outbox_engine::Publisher for RecordingPublisher {
    async fn publish(&self, batch: &[Message]) -> Vec<Result<(), PublishError>> {
        self.calls.lock().unwrap().push(batch.to_vec());
        batch
            .iter()
            .map(|m| match &m.payload[..] {
                b"poison" => Err(PublishError::permanent("poison")),
                b"flaky" if !self.failed_once.lock().unwrap().contains(&m.id) => {
                    self.failed_once.lock().unwrap().push(m.id);
                    Err(PublishError::transient("flaky"))
                }
                _ => Ok(()),
            })
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn a_key_run_goes_out_in_rounds_through_a_publisher_that_does_not_keep_key_order() {
    let store = MemoryStore::new();
    let payloads = ["1", "2", "poison", "4", "5", "flaky", "7", "8"];
    let mut tx = store.begin();
    let run = store
        .enqueue_batch(&mut tx, payloads.iter().map(|p| NewMessage::new("t", *p).key("a")).collect())
        .await
        .unwrap();
    let other = store.enqueue(&mut tx, NewMessage::new("t", "b").key("b")).await.unwrap();
    tx.commit().unwrap();
    let publisher = Arc::new(RecordingPublisher::default());
    let relay =
        Relay::builder_shared(Arc::new(store.clone()), publisher.clone()).retry_policy(policy(5, 100)).build().unwrap();

    assert_eq!(relay.dispatch_once().await.unwrap(), 9, "one claim takes the whole run and the other key");
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(relay.dispatch_once().await.unwrap(), 3, "the retried 6th and the 7th and 8th handed back after it");
    assert_eq!(store.pending_len(), 0);

    let calls = publisher.calls.lock().unwrap().clone();
    for call in &calls {
        let keys: Vec<_> = call.iter().map(|m| m.key.clone()).collect();
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "a call held two messages of one key: {keys:?}");
    }
    let sent: Vec<_> = calls.iter().flatten().map(|m| m.id).collect();
    let mut want = run[..6].to_vec();
    want.insert(1, other);
    want.extend([run[5], run[6], run[7]]);
    assert_eq!(sent, want, "rounds in enqueue order; nothing of key a after its failed 6th until it is retried");
    let dead: Vec<_> = store.dead_letters(10).await.unwrap().into_iter().map(|d| d.message.id).collect();
    assert_eq!(dead, vec![run[2]]);
    let metrics = relay.metrics();
    assert_eq!((metrics.published, metrics.retried, metrics.dead_lettered), (8, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_publisher_that_keeps_key_order_gets_the_whole_run_in_one_call() {
    let store = MemoryStore::new();
    let mut tx = store.begin();
    let run = store
        .enqueue_batch(&mut tx, (0..5).map(|n| NewMessage::new("t", format!("{n}")).key("a")).collect())
        .await
        .unwrap();
    tx.commit().unwrap();
    let publisher = MemoryPublisher::new();
    let relay = Relay::builder(store.clone(), publisher.clone()).build().unwrap();
    assert_eq!(relay.dispatch_once().await.unwrap(), 5);
    assert_eq!(publisher.published().iter().map(|m| m.id).collect::<Vec<_>>(), run);
    assert_eq!(relay.metrics().batches, 1);
}
