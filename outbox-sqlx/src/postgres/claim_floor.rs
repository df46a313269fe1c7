//! The claim floor: where a store's next claim starts its walk of the pending keyless rows.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Where this store's next claim starts its walk of the pending keyless rows. Rows this process
/// has leased stay in the pending indexes until they are acknowledged, and a claim that starts at
/// the oldest row steps over every one of them: a relay with two workers, each claiming its next
/// batch while it publishes the current one, has 2,000-3,000 leased rows ahead of each claim, which
/// made a 1,000-row claim ~35% slower. So after a full claim the next one starts above the newest
/// keyless row it got. Rows it passes over (committed late with a lower `seq`, a retry whose delay
/// ended, a lease that lapsed elsewhere) are taken by the next claim from the start: one is made at
/// least every [`FULL_WALK_EVERY`], whenever a claim comes back short of its limit, and after a
/// release or replay ([`ClaimFloor::reset`]). Only keyless rows use
/// it: a keyed row the floor passed over while it waited behind its key's head would become the
/// head below the floor, so keyed rows are always looked for from the oldest.
pub(super) struct ClaimFloor {
    /// The `seq` the next claim starts above (0: from the oldest row).
    seq: AtomicI64,
    /// When the last claim from the oldest row started, in milliseconds since `epoch`.
    last_full_ms: AtomicU64,
    epoch: std::time::Instant,
    /// How often a claim walks from the oldest row regardless ([`FULL_WALK_EVERY`]).
    interval: Duration,
}

/// The longest a row passed over by the claim floor waits for a claim that walks from the start.
const FULL_WALK_EVERY: Duration = Duration::from_millis(100);

impl ClaimFloor {
    pub(super) fn new() -> Self {
        Self::with_interval(FULL_WALK_EVERY)
    }

    fn with_interval(interval: Duration) -> Self {
        Self { seq: AtomicI64::new(0), last_full_ms: AtomicU64::new(0), epoch: std::time::Instant::now(), interval }
    }

    /// The floor for the next claim: 0 when a walk from the start is due.
    pub(super) fn next(&self) -> i64 {
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_full_ms.load(Ordering::Relaxed);
        let seq = self.seq.load(Ordering::Relaxed);
        let due = seq == 0 || u128::from(now_ms.saturating_sub(last)) >= self.interval.as_millis();
        if due && self.last_full_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return 0;
        }
        seq
    }

    /// After a claim of `limit` that returned `claimed` rows, the newest keyless one `newest`.
    pub(super) fn update(&self, limit: usize, claimed: usize, newest: Option<i64>) {
        match newest {
            Some(newest) if claimed >= limit => {
                self.seq.fetch_max(newest, Ordering::Relaxed);
            }
            _ => self.reset(),
        }
    }

    /// Sends the next claim back to the oldest row.
    pub(super) fn reset(&self) {
        self.seq.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_floor_starts_at_the_oldest_row_and_follows_full_claims() {
        let floor = ClaimFloor::with_interval(Duration::from_secs(3600));
        assert_eq!(floor.next(), 0, "the first claim walks from the oldest row");
        floor.update(100, 100, Some(500));
        assert_eq!(floor.next(), 500, "a full claim's successor starts above its newest row");
        floor.update(100, 100, Some(400));
        assert_eq!(floor.next(), 500, "a concurrent, older full claim does not lower the floor");
        floor.update(100, 7, Some(700));
        assert_eq!(floor.next(), 0, "a short claim sends the next one back to the oldest row");
    }

    #[test]
    fn claim_floor_walks_from_the_oldest_row_every_interval() {
        let interval = Duration::from_millis(300);
        let floor = ClaimFloor::with_interval(interval);
        assert_eq!(floor.next(), 0);
        floor.update(10, 10, Some(50));
        std::thread::sleep(interval + Duration::from_millis(50));
        assert_eq!(floor.next(), 0, "a walk from the oldest row is due");
        assert_eq!(floor.next(), 50, "and only one claim makes it");
    }
}
