//! The independent count: what the producers committed against what a plain broker client read back.
//! Pure logic, no I/O, so it is unit-tested on its own.

use std::collections::{HashMap, HashSet};

use outbox_engine::MessageId;
use serde::Serialize;

/// What a producer knows of one message it enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Its transaction committed.
    Committed,
    /// The commit was sent but its answer was lost (connection killed, database restarted): it may
    /// or may not be in the outbox.
    Unknown,
    /// Its transaction failed before the commit: it must never be published.
    RolledBack,
}

/// One message a producer enqueued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Its id, as the store returned it.
    pub id: MessageId,
    /// Its key (`None`: keyless, no order to keep).
    pub key: Option<String>,
    /// Its place among the messages of its key (enqueue order; gaps where transactions rolled back).
    pub seq: u64,
    /// Its payload, to check it arrived intact.
    pub payload: Vec<u8>,
    /// Whether it committed.
    pub outcome: Outcome,
}

/// One message read back from the broker, in the broker's order for its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The outbox message id it carried, if any.
    pub id: Option<MessageId>,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// One message of a key delivered after a later message of the same key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderViolation {
    /// The key.
    pub key: String,
    /// The sequence number that arrived late...
    pub seq: u64,
    /// ...after this later one had arrived.
    pub after: u64,
}

/// The verdict of a chaos run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Messages whose transaction committed.
    pub expected: usize,
    /// Messages whose commit outcome is unknown.
    pub unknown_outcome: usize,
    /// ...of which were delivered (so they had committed).
    pub unknown_outcome_delivered: usize,
    /// Messages rolled back by their producer.
    pub rolled_back: usize,
    /// Deliveries read back from the broker, duplicates included.
    pub received: usize,
    /// Distinct expected (or unknown-outcome) messages delivered.
    pub delivered: usize,
    /// Committed messages neither delivered nor in the dead letters.
    pub lost: usize,
    /// Deliveries whose id no producer committed: rolled-back messages, foreign or missing ids.
    pub unexpected: usize,
    /// Deliveries whose payload differs from what was enqueued.
    pub corrupted: usize,
    /// Deliveries of a message already delivered.
    pub duplicates: usize,
    /// Keyed messages delivered (for the first time) after a later message of their key.
    pub order_violations: usize,
    /// Committed messages in the dead letters.
    pub dead_letters: usize,
    /// Up to ten lost ids, for the report.
    pub lost_examples: Vec<String>,
    /// Up to ten order violations, for the report.
    pub order_examples: Vec<OrderViolation>,
}

impl Tally {
    /// Counts `deliveries` (in broker order for each key) against `sent`. `dead` are the ids in the
    /// dead-letter set.
    pub fn count(sent: &[Sent], deliveries: &[Delivery], dead: &HashSet<MessageId>) -> Self {
        let by_id: HashMap<MessageId, &Sent> = sent.iter().map(|s| (s.id, s)).collect();
        let mut tally = Tally {
            expected: sent.iter().filter(|s| s.outcome == Outcome::Committed).count(),
            unknown_outcome: sent.iter().filter(|s| s.outcome == Outcome::Unknown).count(),
            rolled_back: sent.iter().filter(|s| s.outcome == Outcome::RolledBack).count(),
            received: deliveries.len(),
            ..Tally::default()
        };
        let mut seen: HashSet<MessageId> = HashSet::with_capacity(deliveries.len());
        let mut newest: HashMap<&str, u64> = HashMap::new();
        for delivery in deliveries {
            let Some(message) = delivery.id.and_then(|id| by_id.get(&id)).filter(|m| m.outcome != Outcome::RolledBack)
            else {
                tally.unexpected += 1;
                continue;
            };
            if delivery.payload != message.payload {
                tally.corrupted += 1;
            }
            if !seen.insert(message.id) {
                tally.duplicates += 1;
                continue;
            }
            tally.delivered += 1;
            if message.outcome == Outcome::Unknown {
                tally.unknown_outcome_delivered += 1;
            }
            let Some(key) = message.key.as_deref() else { continue };
            match newest.get_mut(key) {
                Some(after) if *after > message.seq => {
                    tally.order_violations += 1;
                    if tally.order_examples.len() < 10 {
                        tally.order_examples.push(OrderViolation {
                            key: key.to_owned(),
                            seq: message.seq,
                            after: *after,
                        });
                    }
                }
                Some(newest) => *newest = message.seq,
                None => {
                    newest.insert(key, message.seq);
                }
            }
        }
        for message in sent.iter().filter(|s| s.outcome == Outcome::Committed && !seen.contains(&s.id)) {
            if dead.contains(&message.id) {
                tally.dead_letters += 1;
            } else {
                tally.lost += 1;
                if tally.lost_examples.len() < 10 {
                    tally.lost_examples.push(message.id.to_string());
                }
            }
        }
        tally
    }

    /// What breaks a guarantee: loss, unexpected or corrupted deliveries, order violations.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let mut fail = |n: usize, what: &str| {
            if n > 0 {
                failures.push(format!("{n} {what}"));
            }
        };
        fail(self.lost, "committed messages lost");
        fail(self.unexpected, "deliveries of messages that were never committed (or carry no known id)");
        fail(self.corrupted, "deliveries whose payload differs from what was enqueued");
        fail(self.order_violations, "per-key order violations");
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(key: Option<&str>, seq: u64, outcome: Outcome) -> Sent {
        Sent { id: MessageId::new(), key: key.map(str::to_owned), seq, payload: seq.to_be_bytes().to_vec(), outcome }
    }

    fn delivered(message: &Sent) -> Delivery {
        Delivery { id: Some(message.id), payload: message.payload.clone() }
    }

    #[test]
    fn a_clean_run_passes() {
        let sent: Vec<Sent> = (0..5).map(|s| sent(Some("a"), s, Outcome::Committed)).collect();
        let deliveries: Vec<Delivery> = sent.iter().map(delivered).collect();
        let tally = Tally::count(&sent, &deliveries, &HashSet::new());
        assert_eq!((tally.expected, tally.delivered, tally.received), (5, 5, 5));
        assert!(tally.failures().is_empty(), "{:?}", tally.failures());
    }

    #[test]
    fn a_redelivery_is_a_duplicate_not_an_order_violation() {
        let sent: Vec<Sent> = (0..3).map(|s| sent(Some("a"), s, Outcome::Committed)).collect();
        let deliveries = vec![
            delivered(&sent[0]),
            delivered(&sent[1]),
            delivered(&sent[1]),
            delivered(&sent[0]),
            delivered(&sent[2]),
        ];
        let tally = Tally::count(&sent, &deliveries, &HashSet::new());
        assert_eq!((tally.duplicates, tally.order_violations), (2, 0));
        assert!(tally.failures().is_empty());
    }

    #[test]
    fn a_first_delivery_after_a_later_message_of_its_key_is_a_violation() {
        let sent: Vec<Sent> = vec![
            sent(Some("a"), 0, Outcome::Committed),
            sent(Some("a"), 1, Outcome::Committed),
            sent(Some("b"), 0, Outcome::Committed),
        ];
        let deliveries = vec![delivered(&sent[1]), delivered(&sent[2]), delivered(&sent[0])];
        let tally = Tally::count(&sent, &deliveries, &HashSet::new());
        assert_eq!(tally.order_violations, 1);
        assert_eq!(tally.order_examples, vec![OrderViolation { key: "a".into(), seq: 0, after: 1 }]);
        assert_eq!(tally.failures().len(), 1);
    }

    #[test]
    fn keyless_messages_have_no_order() {
        let sent: Vec<Sent> = (0..3).map(|s| sent(None, s, Outcome::Committed)).collect();
        let deliveries: Vec<Delivery> = sent.iter().rev().map(delivered).collect();
        assert_eq!(Tally::count(&sent, &deliveries, &HashSet::new()).order_violations, 0);
    }

    #[test]
    fn missing_messages_are_lost_unless_dead_lettered() {
        let sent: Vec<Sent> = (0..3).map(|s| sent(Some("a"), s, Outcome::Committed)).collect();
        let dead = HashSet::from([sent[2].id]);
        let tally = Tally::count(&sent, &[delivered(&sent[0])], &dead);
        assert_eq!((tally.lost, tally.dead_letters), (1, 1));
        assert_eq!(tally.lost_examples, vec![sent[1].id.to_string()]);
        assert_eq!(tally.failures(), vec!["1 committed messages lost".to_owned()]);
    }

    #[test]
    fn unknown_outcomes_may_go_either_way_but_rollbacks_must_not_arrive() {
        let sent = vec![
            sent(Some("a"), 0, Outcome::Unknown),
            sent(Some("a"), 1, Outcome::Unknown),
            sent(Some("a"), 2, Outcome::RolledBack),
        ];
        let tally = Tally::count(&sent, &[delivered(&sent[1])], &HashSet::new());
        assert_eq!((tally.unknown_outcome, tally.unknown_outcome_delivered, tally.lost), (2, 1, 0));
        assert!(tally.failures().is_empty());
        let tally = Tally::count(&sent, &[delivered(&sent[2])], &HashSet::new());
        assert_eq!(tally.unexpected, 1);
    }

    #[test]
    fn foreign_and_altered_deliveries_fail() {
        let sent = vec![sent(Some("a"), 0, Outcome::Committed)];
        let foreign = Delivery { id: Some(MessageId::new()), payload: Vec::new() };
        let no_id = Delivery { id: None, payload: Vec::new() };
        let altered = Delivery { id: Some(sent[0].id), payload: b"other".to_vec() };
        let tally = Tally::count(&sent, &[foreign, no_id, altered], &HashSet::new());
        assert_eq!((tally.unexpected, tally.corrupted, tally.lost), (2, 1, 0));
    }
}
