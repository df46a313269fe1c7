//! The relay's metrics through the `metrics` facade, read back from a recorder installed for this
//! test binary alone (a recorder is global to the process).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use outbox_engine::memory::{MemoryPublisher, MemoryStore};
use outbox_engine::relay::instruments;
use outbox_engine::{Dispatcher, NewMessage, PublishError, Relay, RetryPolicy};

#[tokio::test]
async fn the_relay_counts_per_topic_and_times_claims_publishes_and_deliveries() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let store = MemoryStore::new();
    for i in 0..10 {
        store.enqueue_committed(NewMessage::new("orders", format!("{i}"))).unwrap();
    }
    for i in 0..4 {
        store.enqueue_committed(NewMessage::new("mail", format!("{i}"))).unwrap();
    }
    for i in 0..3 {
        store.enqueue_committed(NewMessage::new("poison", format!("{i}"))).unwrap();
    }
    let publisher = MemoryPublisher::new().failing_when(|m| match m.topic.as_str() {
        "poison" => Some(PublishError::permanent("unroutable")),
        "mail" if m.attempts == 1 => Some(PublishError::transient("busy")),
        _ => None,
    });
    let policy = RetryPolicy::builder().initial_delay(std::time::Duration::ZERO).build().unwrap();
    let relay =
        Relay::builder(store.clone(), publisher).retry_policy(policy).batch_size(100).name("billing").build().unwrap();
    while relay.dispatch_once().await.unwrap() > 0 {}
    assert_eq!(store.pending_len(), 0);

    let mut counters: HashMap<(String, Option<String>), u64> = HashMap::new();
    let mut gauges: HashMap<String, f64> = HashMap::new();
    let mut histograms: HashMap<String, usize> = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let name = key.key().name().to_owned();
        let topic = key.key().labels().find(|l| l.key() == "topic").map(|l| l.value().to_owned());
        let relay = key.key().labels().find(|l| l.key() == "relay").map(|l| l.value().to_owned());
        assert_eq!(relay.as_deref(), Some("billing"), "every metric names its relay: {key:?}");
        match (key.kind(), value) {
            (MetricKind::Counter, DebugValue::Counter(n)) => *counters.entry((name, topic)).or_default() += n,
            (MetricKind::Gauge, DebugValue::Gauge(v)) => {
                gauges.insert(name, v.into_inner());
            }
            (MetricKind::Histogram, DebugValue::Histogram(values)) => {
                *histograms.entry(name).or_default() += values.len()
            }
            _ => {}
        }
    }
    let counter = |name: &str, topic: Option<&str>| counters.get(&(name.to_owned(), topic.map(str::to_owned))).copied();
    assert_eq!(counter(instruments::PUBLISHED, Some("orders")), Some(10));
    assert_eq!(counter(instruments::PUBLISHED, Some("mail")), Some(4), "published on their second attempt");
    assert_eq!(counter(instruments::RETRIED, Some("mail")), Some(4));
    assert_eq!(counter(instruments::DEAD_LETTERED, Some("poison")), Some(3));
    assert_eq!(counter(instruments::PUBLISHED, Some("poison")), None);
    assert_eq!(counter(instruments::CLAIMED, None), Some(10 + 4 + 4 + 3), "the retried mail is claimed twice");
    assert_eq!(gauges.get(instruments::IN_FLIGHT).copied(), Some(0.0), "nothing left in flight");
    assert_eq!(histograms.get(instruments::DELIVERY_LATENCY).copied(), Some(14), "one per published message");
    assert!(histograms.get(instruments::CLAIM_DURATION).is_some_and(|n| *n >= 2));
    assert!(histograms.get(instruments::PUBLISH_DURATION).is_some_and(|n| *n >= 2));
}
