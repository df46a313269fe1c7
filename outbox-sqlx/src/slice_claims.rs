//! When a store last claimed in a key slice, which decides whether a claim over every key may look
//! up every key's head past a clogged window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// When this store last claimed in a key slice. While a relay claims in slices, each slice's
/// claims look past its own clogged window; a claim over every key then finds the other slices'
/// batches in flight, and looking up every key's head would cost O(keys) to find them all leased.
/// So a claim over every key looks past a clogged window only when no slice claim was made in the
/// last [`SLICES_ACTIVE_FOR`].
pub(crate) struct SliceClaims {
    last_ms: AtomicU64,
    epoch: std::time::Instant,
}

/// How long after a slice claim the slices are taken to be served.
const SLICES_ACTIVE_FOR: Duration = Duration::from_secs(2);

impl Default for SliceClaims {
    fn default() -> Self {
        Self { last_ms: AtomicU64::new(u64::MAX), epoch: std::time::Instant::now() }
    }
}

impl SliceClaims {
    /// Records a claim (`in_slice` when in a key slice) and says whether it may look up every key's
    /// head past a clogged window.
    pub(crate) fn heads_allowed(&self, in_slice: bool) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        if in_slice {
            self.last_ms.store(now, Ordering::Relaxed);
            return true;
        }
        let last = self.last_ms.load(Ordering::Relaxed);
        last == u64::MAX || now.saturating_sub(last) >= SLICES_ACTIVE_FOR.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_over_every_key_looks_past_a_clogged_window_only_while_no_slice_is_claimed() {
        let claims = SliceClaims::default();
        assert!(claims.heads_allowed(false), "no slice claims yet");
        assert!(claims.heads_allowed(true));
        assert!(!claims.heads_allowed(false), "slices are being claimed");
        claims.last_ms.store(0, Ordering::Relaxed);
        let epoch = std::time::Instant::now().checked_sub(SLICES_ACTIVE_FOR).expect("a clock past boot");
        let claims = SliceClaims { epoch, ..claims };
        assert!(claims.heads_allowed(false), "the last slice claim was long ago");
    }
}
