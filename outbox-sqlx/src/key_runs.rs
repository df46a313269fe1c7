//! The per-key order check a claim makes on the rows it leased: each key's rows must form one run
//! from the key's oldest unfinished row, every row following its predecessor.

use std::collections::HashMap;

#[cfg(feature = "postgres")]
use outbox_engine::{Message, MessageId};

/// One row a claim leased.
#[cfg(feature = "postgres")]
#[derive(Debug)]
pub(crate) struct LeasedRow {
    /// Its sequence number (enqueue order).
    pub(crate) seq: i64,
    /// The sequence number of the previous unfinished row of its key, as the claim saw it (`None`
    /// for the key's oldest, and for rows without a key).
    pub(crate) previous: Option<i64>,
    /// The message.
    pub(crate) message: Message,
}

/// Follows each key's run over rows given in enqueue order.
#[derive(Debug, Default)]
pub(crate) struct RunCheck {
    /// Per key: the last row of its run, or `None` once the run is broken.
    last: HashMap<String, Option<i64>>,
}

impl RunCheck {
    /// Whether the row `seq` of `key`, whose predecessor among its key's unfinished rows is
    /// `previous`, continues its key's run: it is the key's oldest unfinished row, or follows the
    /// run's last row. Rows without a key always do. Call in enqueue order.
    pub(crate) fn follows(&mut self, seq: i64, key: Option<&str>, previous: Option<i64>) -> bool {
        let Some(key) = key else { return true };
        let follows = match self.last.get_mut(key) {
            None => {
                let follows = previous.is_none();
                self.last.insert(key.to_owned(), follows.then_some(seq));
                return follows;
            }
            Some(last) => {
                let follows = last.is_some() && *last == previous;
                *last = follows.then_some(seq);
                follows
            }
        };
        follows
    }
}

/// Splits leased rows (in any order) into the messages that keep per-key order, in enqueue order,
/// and the ids of keyed messages whose predecessor is not among them: a row the claim picked
/// before them was not leased with them (it changed under the claim), so they must go back.
#[cfg(feature = "postgres")]
pub(crate) fn keep_key_runs(mut rows: Vec<LeasedRow>) -> (Vec<Message>, Vec<MessageId>) {
    rows.sort_unstable_by_key(|row| row.seq);
    let mut runs = RunCheck::default();
    let mut kept = Vec::with_capacity(rows.len());
    let mut back = Vec::new();
    for row in rows {
        if runs.follows(row.seq, row.message.key.as_deref(), row.previous) {
            kept.push(row.message);
        } else {
            back.push(row.message.id);
        }
    }
    (kept, back)
}

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use super::*;
    use chrono::Utc;

    fn row(seq: i64, previous: Option<i64>, key: Option<&str>) -> LeasedRow {
        LeasedRow {
            seq,
            previous,
            message: Message {
                id: MessageId::new(),
                topic: "t".into(),
                key: key.map(str::to_owned),
                payload: Vec::new(),
                headers: Default::default(),
                created_at: Utc::now(),
                attempts: 1,
                last_error: None,
            },
        }
    }

    #[test]
    fn unbroken_runs_and_keyless_rows_are_kept_in_order() {
        let rows =
            vec![row(3, Some(1), Some("a")), row(1, None, Some("a")), row(2, None, None), row(4, None, Some("b"))];
        let ids: Vec<MessageId> = rows.iter().map(|r| r.message.id).collect();
        let (kept, back) = keep_key_runs(rows);
        assert!(back.is_empty());
        assert_eq!(kept.iter().map(|m| m.id).collect::<Vec<_>>(), vec![ids[1], ids[2], ids[0], ids[3]]);
    }

    #[test]
    fn a_missing_predecessor_sends_the_rest_of_its_key_back() {
        // Row 2 of key a was picked but not leased: 3 and 5 must go back; key b is untouched.
        let rows = vec![
            row(1, None, Some("a")),
            row(3, Some(2), Some("a")),
            row(4, None, Some("b")),
            row(5, Some(3), Some("a")),
            row(6, Some(4), Some("b")),
        ];
        let ids: Vec<MessageId> = rows.iter().map(|r| r.message.id).collect();
        let (kept, back) = keep_key_runs(rows);
        assert_eq!(kept.iter().map(|m| m.id).collect::<Vec<_>>(), vec![ids[0], ids[2], ids[4]]);
        assert_eq!(back, vec![ids[1], ids[3]]);
    }

    #[test]
    fn a_first_row_that_is_not_its_keys_oldest_goes_back() {
        let rows = vec![row(7, Some(6), Some("a")), row(8, Some(7), Some("a"))];
        let ids: Vec<MessageId> = rows.iter().map(|r| r.message.id).collect();
        let (kept, back) = keep_key_runs(rows);
        assert!(kept.is_empty());
        assert_eq!(back, ids);
    }
}
