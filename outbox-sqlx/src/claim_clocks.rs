//! Clocks that decide whether a claim may look up every key's head past a clogged window: the
//! lookup costs O(keys), so a store runs it only when it can find something.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The last time something happened, in milliseconds since the clock was made (`u64::MAX` before
/// the first time).
struct Stamp {
    last_ms: AtomicU64,
    epoch: Instant,
}

impl Default for Stamp {
    fn default() -> Self {
        Self { last_ms: AtomicU64::new(u64::MAX), epoch: Instant::now() }
    }
}

impl Stamp {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// Whether at least `period` has passed since the last stamp (or there was none).
    fn older_than(&self, now_ms: u64, period: Duration) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        last == u64::MAX || now_ms.saturating_sub(last) >= period.as_millis() as u64
    }

    fn set(&self, now_ms: u64) {
        self.last_ms.store(now_ms, Ordering::Relaxed);
    }
}

/// When this store last claimed in a key slice. While a relay claims in slices, each slice's
/// claims look past its own clogged window; a claim over every key then finds the other slices'
/// batches in flight, and looking up every key's head would cost O(keys) to find them all leased.
/// So a claim over every key looks past a clogged window only when no slice claim was made in the
/// last [`SLICES_ACTIVE_FOR`].
#[cfg(feature = "postgres")]
#[derive(Default)]
pub(crate) struct SliceClaims(Stamp);

/// How long after a slice claim the slices are taken to be served.
#[cfg(feature = "postgres")]
const SLICES_ACTIVE_FOR: Duration = Duration::from_secs(2);

#[cfg(feature = "postgres")]
impl SliceClaims {
    /// Records a claim (`in_slice` when in a key slice) and says whether it may look up every key's
    /// head past a clogged window.
    pub(crate) fn heads_allowed(&self, in_slice: bool) -> bool {
        let now = self.0.now_ms();
        if in_slice {
            self.0.set(now);
            return true;
        }
        self.0.older_than(now, SLICES_ACTIVE_FOR)
    }
}

/// When this store last let a claim look past a window whose blocked rows are spread over many keys
/// (about one a key: their heads are in flight, and the lookup would mostly find them leased). It
/// may once every [`SPREAD_LOOKUP_EVERY`], so keys beyond such a window wait at most that long
/// behind heads that stay leased (a relay that died holding them).
#[cfg(feature = "sqlite")]
#[derive(Default)]
pub(crate) struct SpreadLookups(Stamp);

/// How often a claim may look past a window whose blocked rows are spread over many keys.
#[cfg(feature = "sqlite")]
const SPREAD_LOOKUP_EVERY: Duration = Duration::from_secs(1);

#[cfg(feature = "sqlite")]
impl SpreadLookups {
    /// Whether this claim may look past such a window; a yes starts the next period.
    pub(crate) fn allowed(&self) -> bool {
        let now = self.0.now_ms();
        let allowed = self.0.older_than(now, SPREAD_LOOKUP_EVERY);
        if allowed {
            self.0.set(now);
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stamp set `ago` before now.
    fn stamped(ago: Duration) -> Stamp {
        let stamp = Stamp::default();
        stamp.set(0);
        Stamp { epoch: Instant::now().checked_sub(ago).expect("a clock past boot"), ..stamp }
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn a_claim_over_every_key_looks_past_a_clogged_window_only_while_no_slice_is_claimed() {
        let claims = SliceClaims::default();
        assert!(claims.heads_allowed(false), "no slice claims yet");
        assert!(claims.heads_allowed(true));
        assert!(!claims.heads_allowed(false), "slices are being claimed");
        let claims = SliceClaims(stamped(SLICES_ACTIVE_FOR));
        assert!(claims.heads_allowed(false), "the last slice claim was long ago");
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn a_spread_out_window_is_looked_past_once_a_period() {
        let lookups = SpreadLookups::default();
        assert!(lookups.allowed(), "the first claim may");
        assert!(!lookups.allowed(), "not again within the period");
        let lookups = SpreadLookups(stamped(SPREAD_LOOKUP_EVERY));
        assert!(lookups.allowed(), "a period has passed");
        assert!(!lookups.allowed());
    }
}
