//! The relay's metrics, recorded through the [`metrics`](https://docs.rs/metrics) facade: an
//! application that installs a recorder (a Prometheus exporter, for instance) sees them, with any
//! number of relays in the process; without a recorder they cost next to nothing.
//!
//! Every metric has the label `relay`: the relay's name ([`RelayOptions::name`](super::RelayOptions::name),
//! default `outbox`), so the relays of several databases in one process stay apart.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `outbox_messages_published_total` | counter | `relay`, `topic` | published and acknowledged |
//! | `outbox_messages_retried_total` | counter | `relay`, `topic` | failed attempts rescheduled for a retry |
//! | `outbox_messages_dead_lettered_total` | counter | `relay`, `topic` | parked in the dead letters |
//! | `outbox_messages_claimed_total` | counter | `relay` | claimed (attempts started) |
//! | `outbox_messages_in_flight` | gauge | `relay` | claimed and not yet settled |
//! | `outbox_claim_duration_seconds` | histogram | `relay` | one claim statement |
//! | `outbox_publish_duration_seconds` | histogram | `relay` | one batch handed to the publisher, until its outcomes |
//! | `outbox_delivery_latency_seconds` | histogram | `relay` | a message's enqueue to its broker acknowledgement |

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use metrics::SharedString;

use crate::message::Message;

/// Counter, by `topic`: messages published and acknowledged.
pub const PUBLISHED: &str = "outbox_messages_published_total";
/// Counter, by `topic`: failed attempts rescheduled for a retry.
pub const RETRIED: &str = "outbox_messages_retried_total";
/// Counter, by `topic`: messages parked in the dead letters.
pub const DEAD_LETTERED: &str = "outbox_messages_dead_lettered_total";
/// Counter: messages claimed (attempts started).
pub const CLAIMED: &str = "outbox_messages_claimed_total";
/// Gauge: messages claimed and not yet settled.
pub const IN_FLIGHT: &str = "outbox_messages_in_flight";
/// Histogram, seconds: one claim statement.
pub const CLAIM_DURATION: &str = "outbox_claim_duration_seconds";
/// Histogram, seconds: one batch handed to the publisher, until it reported every outcome.
pub const PUBLISH_DURATION: &str = "outbox_publish_duration_seconds";
/// Histogram, seconds: from a message's enqueue (its `created_at`) to the broker's acknowledgement.
pub const DELIVERY_LATENCY: &str = "outbox_delivery_latency_seconds";

/// The metrics of one relay, labelled with its name (`relay`).
#[derive(Debug, Clone)]
pub(super) struct Instruments {
    relay: SharedString,
}

impl Instruments {
    pub(super) fn new(relay: &str) -> Self {
        Self { relay: SharedString::from(relay.to_owned()) }
    }

    /// Adds one to `counter` per message of `messages`, by topic (one call per topic, not per message).
    pub(super) fn count_by_topic<'a>(&self, counter: &'static str, messages: impl IntoIterator<Item = &'a Message>) {
        let mut by_topic: HashMap<&str, u64> = HashMap::new();
        for message in messages {
            *by_topic.entry(message.topic.as_str()).or_default() += 1;
        }
        for (topic, count) in by_topic {
            metrics::counter!(counter, "relay" => self.relay.clone(), "topic" => topic.to_owned()).increment(count);
        }
    }

    /// Records the enqueue -> acknowledgement latency of messages acknowledged now.
    pub(super) fn delivered<'a>(&self, messages: impl IntoIterator<Item = &'a Message>) {
        let histogram = metrics::histogram!(DELIVERY_LATENCY, "relay" => self.relay.clone());
        let now = Utc::now();
        for message in messages {
            let latency = (now - message.created_at).to_std().unwrap_or(Duration::ZERO);
            histogram.record(latency.as_secs_f64());
        }
    }

    /// Records a claim: its duration and the messages it took, now in flight.
    pub(super) fn claimed(&self, took: Duration, messages: usize) {
        metrics::histogram!(CLAIM_DURATION, "relay" => self.relay.clone()).record(took.as_secs_f64());
        if messages > 0 {
            metrics::counter!(CLAIMED, "relay" => self.relay.clone()).increment(messages as u64);
            metrics::gauge!(IN_FLIGHT, "relay" => self.relay.clone()).increment(messages as f64);
        }
    }

    /// Messages no longer in flight (settled or handed back).
    pub(super) fn settled(&self, messages: usize) {
        if messages > 0 {
            metrics::gauge!(IN_FLIGHT, "relay" => self.relay.clone()).decrement(messages as f64);
        }
    }

    /// Records one publish call's duration.
    pub(super) fn published(&self, took: Duration) {
        metrics::histogram!(PUBLISH_DURATION, "relay" => self.relay.clone()).record(took.as_secs_f64());
    }
}
