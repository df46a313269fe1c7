//! The publisher conformance suite: one `pub async fn` per promise of a broker [`Publisher`].
//! Run them all with [`crate::publisher_suite!`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use outbox_brokers::Received;
use outbox_engine::{Headers, Message, MessageId, PublishError, Publisher, Result};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `kill_connections` may drop every client of the broker (Redis cannot single out one publisher's
/// connection), which would fail whatever another check of the same test binary was doing with the
/// broker at that moment. [`crate::publisher_suite!`] runs the check that kills connections alone:
/// it holds this lock for writing from before its harness is made, every other check for reading.
static CONNECTION_KILLS: RwLock<()> = RwLock::const_new(());

/// What a check of [`crate::publisher_suite!`] holds while it runs (see `CONNECTION_KILLS`).
#[doc(hidden)]
#[derive(Debug)]
pub enum CheckGuard {
    /// Other checks may run alongside.
    Shared(RwLockReadGuard<'static, ()>),
    /// This check kills connections and runs alone.
    Alone(RwLockWriteGuard<'static, ()>),
}

/// Waits until the check named `check` may run; used by [`crate::publisher_suite!`].
#[doc(hidden)]
pub async fn check_guard(check: &str) -> CheckGuard {
    if check == "recovers_after_the_connection_is_killed" {
        CheckGuard::Alone(CONNECTION_KILLS.write().await)
    } else {
        CheckGuard::Shared(CONNECTION_KILLS.read().await)
    }
}

/// What the suite needs from a broker: a publisher, a fresh destination, and a way to read it back.
#[async_trait]
pub trait PublisherHarness: Send + Sync {
    /// The publisher under test.
    fn publisher(&self) -> Arc<dyn Publisher>;
    /// A topic whose destination is fresh (created if the broker needs that) and read by `read_back`.
    fn topic(&self) -> &str;
    /// Reads up to `expected` messages published to [`topic`](Self::topic).
    async fn read_back(&self, expected: usize, timeout: Duration) -> Result<Vec<Received>>;
    /// A publisher for an address where no broker listens, with a short timeout (about 2 s).
    fn unreachable(&self) -> Arc<dyn Publisher>;
    /// A topic the broker can never deliver (no route, invalid name, wrong key type).
    fn unroutable_topic(&self) -> String;
    /// Cuts every client connection from the server side (a broker restart, as far as clients can tell).
    async fn kill_connections(&self);
    /// Whether the broker itself drops a message whose id it has already stored (NATS JetStream
    /// within its duplicate window); default `false`: it stores every copy.
    fn deduplicates(&self) -> bool {
        false
    }
}

/// Builds a message as a store would hand it to the relay.
pub fn message(topic: &str, key: Option<&str>, payload: Vec<u8>, headers: Headers) -> Message {
    Message {
        id: MessageId::new(),
        topic: topic.to_owned(),
        key: key.map(str::to_owned),
        payload,
        headers,
        created_at: Utc::now(),
        attempts: 1,
        last_error: None,
    }
}

fn describe(outcomes: &[std::result::Result<(), PublishError>]) -> String {
    let failed: Vec<String> = outcomes.iter().filter_map(|o| o.as_ref().err().map(|e| e.to_string())).take(3).collect();
    format!("{} of {} failed, e.g. {failed:?}", failed.len(), outcomes.len())
}

/// 10,000 messages over 50 keys, in batches of 500: every one is read back with its key, headers,
/// payload and MessageId intact, each key in publish order.
pub async fn delivers_messages_intact_in_per_key_order<H: PublisherHarness + ?Sized>(h: &H) {
    const TOTAL: usize = 10_000;
    let publisher = h.publisher();
    let mut sent: HashMap<MessageId, Message> = HashMap::with_capacity(TOTAL);
    let mut counter = 0usize;
    for _ in 0..TOTAL / 500 {
        let batch: Vec<Message> = (0..500)
            .map(|_| {
                counter += 1;
                let mut headers = Headers::new();
                headers.insert("trace-id".into(), format!("t-{counter}"));
                headers.insert("ünïcode".into(), "värde ✓".into());
                let key = format!("key-{}", counter % 50);
                let mut payload = format!("{counter:08}|").into_bytes();
                payload.extend([0u8, 255, 10, 13]);
                message(h.topic(), Some(&key), payload, headers)
            })
            .collect();
        let outcomes = publisher.publish(&batch).await;
        assert!(outcomes.iter().all(Result::is_ok), "publish: {}", describe(&outcomes));
        sent.extend(batch.into_iter().map(|m| (m.id, m)));
    }
    let received = h.read_back(TOTAL, Duration::from_secs(60)).await.expect("read back");
    assert_eq!(received.len(), TOTAL, "every published message is read back");
    let mut last_per_key: HashMap<String, usize> = HashMap::new();
    for r in &received {
        let id = r.id.expect("the message id travels with the message");
        let original = sent.get(&id).expect("a message that was sent");
        assert_eq!(r.key, original.key, "key of {id}");
        assert_eq!(r.payload, original.payload, "payload of {id}");
        assert_eq!(r.headers, original.headers, "headers of {id}");
        let n: usize = std::str::from_utf8(&r.payload[..8]).expect("digits").parse().expect("number");
        let key = r.key.clone().expect("key");
        if let Some(previous) = last_per_key.insert(key.clone(), n) {
            assert!(previous < n, "{key}: message {n} read after {previous}");
        }
    }
}

/// A batch with bad messages reports those as permanent and delivers each of the others once.
pub async fn partial_failure_is_reported_per_message<H: PublisherHarness + ?Sized>(h: &H) {
    let publisher = h.publisher();
    let batch = vec![
        message(h.topic(), Some("a"), b"first".to_vec(), Headers::new()),
        message(h.topic(), Some("b"), vec![7u8; 20 * 1024 * 1024], Headers::new()),
        message(&h.unroutable_topic(), Some("c"), b"nowhere".to_vec(), Headers::new()),
        message(h.topic(), Some("d"), b"last".to_vec(), Headers::new()),
    ];
    let outcomes = publisher.publish(&batch).await;
    assert_eq!(outcomes.len(), 4, "one outcome per message");
    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    assert!(matches!(outcomes[1], Err(PublishError::Permanent(_))), "oversized: {:?}", outcomes[1]);
    assert!(matches!(outcomes[2], Err(PublishError::Permanent(_))), "unroutable: {:?}", outcomes[2]);
    assert!(outcomes[3].is_ok(), "{:?}", outcomes[3]);
    // Ask for one more than was delivered: the wait runs out and shows that the bad messages did
    // not make the good ones be sent twice.
    let received = h.read_back(3, Duration::from_secs(5)).await.expect("read back");
    let mut payloads: Vec<&[u8]> = received.iter().map(|r| r.payload.as_slice()).collect();
    payloads.sort();
    assert_eq!(payloads, [&b"first"[..], &b"last"[..]], "each good message once");
}

/// With no broker at the address, publish returns transient errors promptly, without hanging or panicking.
pub async fn unreachable_broker_is_a_prompt_transient_error<H: PublisherHarness + ?Sized>(h: &H) {
    let publisher = h.unreachable();
    let batch = vec![message("outbox-unreachable", Some("k"), b"x".to_vec(), Headers::new()); 3];
    let started = Instant::now();
    let outcomes = tokio::time::timeout(Duration::from_secs(30), publisher.publish(&batch))
        .await
        .expect("publish to an unreachable broker hangs");
    assert_eq!(outcomes.len(), 3);
    for outcome in &outcomes {
        assert!(matches!(outcome, Err(PublishError::Transient(_))), "{outcome:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
}

/// After the server drops every connection, the same publisher instance publishes again (a failed
/// attempt in between is fine: the relay would retry it).
pub async fn recovers_after_the_connection_is_killed<H: PublisherHarness + ?Sized>(h: &H) {
    let publisher = h.publisher();
    let first = publisher.publish(&[message(h.topic(), None, b"before".to_vec(), Headers::new())]).await;
    assert!(first[0].is_ok(), "{:?}", first[0]);
    h.kill_connections().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let outcome = publisher.publish(&[message(h.topic(), None, b"after".to_vec(), Headers::new())]).await;
        match &outcome[0] {
            Ok(()) => break,
            Err(e) => {
                assert!(e.is_transient(), "a lost connection is transient: {e}");
                assert!(Instant::now() < deadline, "no recovery after {attempts} attempts: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let received = h.read_back(2, Duration::from_secs(30)).await.expect("read back");
    assert_eq!(received.len(), 2, "the messages before and after the cut arrived");
}

/// The same message (same id) published twice: a broker that de-duplicates stores it once, any
/// other stores both copies (delivery is at-least-once; receivers use the inbox).
pub async fn a_message_published_twice_is_stored_as_the_broker_promises<H: PublisherHarness + ?Sized>(h: &H) {
    let publisher = h.publisher();
    let twice = message(h.topic(), Some("k"), b"twice".to_vec(), Headers::new());
    for attempt in 1..=2 {
        let outcome = publisher.publish(std::slice::from_ref(&twice)).await;
        assert!(outcome[0].is_ok(), "publish {attempt}: {:?}", outcome[0]);
    }
    let after = message(h.topic(), Some("k"), b"after".to_vec(), Headers::new());
    assert!(publisher.publish(std::slice::from_ref(&after)).await[0].is_ok());
    // Ask for one more than can be there: the wait runs out and shows every copy stored.
    let received = h.read_back(4, Duration::from_secs(3)).await.expect("read back");
    let copies = received.iter().filter(|r| r.id == Some(twice.id)).count();
    let expected = if h.deduplicates() { 1 } else { 2 };
    assert_eq!(copies, expected, "copies of a message published twice (de-duplicating: {})", h.deduplicates());
    assert_eq!(received.last().map(|r| r.payload.as_slice()), Some(&b"after"[..]));
}
