//! When a relay worker claims, and how long it waits for work when it has none: the worker loop's
//! decisions, kept apart from its I/O so they can be tested one by one.

use std::time::Duration;

use tokio::time::Instant;

use super::RelayOptions;

/// A store without commit wake-ups ([`Store::wakes_on_commit`](crate::Store::wakes_on_commit) false)
/// may wake a relay before the transaction commits: SQLite and MySQL wake it when a message is
/// enqueued. When the claim after such a wake-up finds nothing, the transaction is likely still
/// open, so the worker polls again this soon, doubling the wait after each poll that finds nothing...
pub(super) const LATE_COMMIT_FIRST_WAIT: Duration = Duration::from_millis(5);
/// ...up to this wait (about 1.3 s after the wake-up in all); a later commit waits for the next
/// regular poll.
pub(super) const LATE_COMMIT_LAST_WAIT: Duration = Duration::from_millis(640);

/// What the worker does once a claim has come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AfterClaim {
    /// The claim came back full: a backlog waits, so idle peers should claim too.
    pub(super) wake_peers: bool,
    /// Claim again as soon as this batch settles, without waiting for a wake-up.
    pub(super) claim_again_when_settled: bool,
}

/// One worker's claim schedule. Worker 0 polls every `poll_interval` when idle (sooner with a
/// `busy_poll_interval` while messages flow); the others wait 30 times as long, relying on store
/// wake-ups and on peers that found a backlog, so an idle relay costs one query per interval.
#[derive(Debug)]
pub(super) struct ClaimSchedule {
    batch_size: usize,
    poll_interval: Duration,
    longest_wait: Duration,
    busy_wait: Option<Duration>,
    wakes_on_commit: bool,
    /// The next wait for work, when there is nothing to do.
    idle_wait: Duration,
    /// Claim without waiting for a wake-up: at start, after a full claim, after a batch settled.
    claim_now: bool,
    /// The claim under way follows a wait for work (a poll or a wake-up), not a settled batch...
    after_wait: bool,
    /// ...and that wait was cut short by a store that may wake before the commit.
    after_early_wake_up: bool,
    /// Polling for a commit that came later than its wake-up.
    chasing_late_commit: bool,
    /// A batch that asked for another claim settled while the claim under way was out: that claim
    /// may have been answered before the settle (a key's next message still held back), so claim
    /// again whatever it finds.
    settled_during_claim: bool,
    /// The next claim covers every key, not only the slot's [`KeySlice`](crate::KeySlice): after a
    /// wait for work (a commit may be in any slice), and after a claim in a slice that was not full
    /// (other slices may hold work that no claim of theirs is due to find).
    wide_next: bool,
    /// After a store error, no claim before this instant.
    paused_until: Option<Instant>,
}

impl ClaimSchedule {
    pub(super) fn new(options: &RelayOptions, worker: usize, wakes_on_commit: bool) -> Self {
        let longest_wait = if worker == 0 { options.poll_interval } else { options.poll_interval.saturating_mul(30) };
        Self {
            batch_size: options.batch_size,
            poll_interval: options.poll_interval,
            longest_wait,
            busy_wait: options.busy_poll_interval.filter(|_| worker == 0),
            wakes_on_commit,
            idle_wait: longest_wait,
            claim_now: true,
            after_wait: false,
            after_early_wake_up: false,
            chasing_late_commit: false,
            settled_during_claim: false,
            wide_next: false,
            paused_until: None,
        }
    }

    fn paused(&mut self, now: Instant) -> bool {
        if self.paused_until.is_some_and(|until| now >= until) {
            self.paused_until = None;
        }
        self.paused_until.is_some()
    }

    /// Whether to start a claim now, given room for another batch in flight. A `true` answer means
    /// the worker starts one.
    pub(super) fn claim_due(&mut self, now: Instant) -> bool {
        let due = !self.paused(now) && self.claim_now;
        if due {
            self.settled_during_claim = false;
        }
        due
    }

    /// How long to wait for work, or `None` while the worker has something to do: a claim or a batch
    /// under way (`busy`), a claim due, or a pause after a store error (see [`Self::paused_until`]).
    pub(super) fn wait_for_work(&mut self, now: Instant, busy: bool) -> Option<Duration> {
        (!busy && !self.claim_now && !self.paused(now)).then_some(self.idle_wait)
    }

    /// Whether the worker must time its waits: only a store that may wake it before the commit needs
    /// to know whether a wait was cut short.
    pub(super) fn times_waits(&self) -> bool {
        !self.wakes_on_commit
    }

    /// The end of the pause after a store error, if one is running.
    pub(super) fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    /// The store woke the worker, or its wait ran out; `cut_short` when it ended before its timeout.
    pub(super) fn woken(&mut self, cut_short: bool) {
        self.claim_now = true;
        self.wide_next = true;
        self.after_wait = true;
        self.after_early_wake_up = cut_short && !self.wakes_on_commit;
    }

    /// A peer found a backlog.
    pub(super) fn peer_found_work(&mut self) {
        self.claim_now = true;
        self.after_wait = true;
    }

    /// Whether the next claim keeps to its slot's key slice.
    pub(super) fn claims_in_slice(&self) -> bool {
        !self.wide_next
    }

    /// A claim came back with `claimed` messages, `keyed` when any has a key; `in_slice` when it kept
    /// to a key slice.
    pub(super) fn claimed(&mut self, claimed: usize, keyed: bool, in_slice: bool) -> AfterClaim {
        if in_slice && claimed < self.batch_size && !self.wide_next {
            // Look at every key once before waiting.
            self.wide_next = true;
            self.claim_now = true;
            self.after_wait = false;
            self.after_early_wake_up = false;
            self.settled_during_claim = false;
            return AfterClaim { wake_peers: false, claim_again_when_settled: claimed > 0 };
        }
        if !in_slice {
            self.wide_next = false;
        }
        let polled = std::mem::take(&mut self.after_wait);
        let woken_early = std::mem::take(&mut self.after_early_wake_up);
        if std::mem::take(&mut self.settled_during_claim) {
            self.claim_now = true;
            return AfterClaim { wake_peers: false, claim_again_when_settled: claimed > 0 };
        }
        if claimed == 0 {
            self.claim_now = false;
            if woken_early {
                // Woken, perhaps before the commit: look again soon.
                (self.idle_wait, self.chasing_late_commit) = (LATE_COMMIT_FIRST_WAIT, true);
            } else if polled {
                self.idle_wait = self.idle_wait.saturating_mul(2);
                if self.chasing_late_commit && self.idle_wait > LATE_COMMIT_LAST_WAIT.min(self.poll_interval) {
                    (self.idle_wait, self.chasing_late_commit) = (self.longest_wait, false);
                }
                self.idle_wait = self.idle_wait.min(self.longest_wait);
            }
            return AfterClaim { wake_peers: false, claim_again_when_settled: false };
        }
        if std::mem::take(&mut self.chasing_late_commit) {
            self.idle_wait = self.longest_wait;
        }
        if let Some(busy) = self.busy_wait {
            self.idle_wait = busy;
        }
        self.claim_now = claimed == self.batch_size;
        // A key's next message becomes claimable when this batch settles, which sends no wake-up;
        // neither does a store without commit wake-ups for what was committed meanwhile.
        let claim_again_when_settled = self.claim_now || !self.wakes_on_commit || keyed;
        AfterClaim { wake_peers: self.claim_now, claim_again_when_settled }
    }

    /// A batch settled; `claim_again` is what [`Self::claimed`] said for it.
    pub(super) fn settled(&mut self, claim_again: bool) {
        self.claim_now |= claim_again;
        self.settled_during_claim |= claim_again;
    }

    /// A claim or a settle failed: claim again once the pause after a store error, until `until`, is over.
    pub(super) fn store_error(&mut self, until: Instant) {
        self.claim_now = true;
        self.paused_until = Some(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLL: Duration = Duration::from_secs(1);

    fn schedule(worker: usize, wakes_on_commit: bool, busy: Option<Duration>) -> ClaimSchedule {
        let options =
            RelayOptions { batch_size: 10, poll_interval: POLL, busy_poll_interval: busy, ..RelayOptions::default() };
        ClaimSchedule::new(&options, worker, wakes_on_commit)
    }

    #[test]
    fn a_worker_claims_at_start_and_waits_once_a_claim_finds_nothing() {
        let now = Instant::now();
        let mut s = schedule(0, true, None);
        assert!(s.claim_due(now));
        assert_eq!(s.wait_for_work(now, true), None, "busy: no wait");
        assert_eq!(s.claimed(0, false, false), AfterClaim { wake_peers: false, claim_again_when_settled: false });
        assert!(!s.claim_due(now));
        assert_eq!(s.wait_for_work(now, false), Some(POLL));
    }

    #[test]
    fn a_claim_answered_before_a_batch_settled_does_not_cancel_the_claim_that_settle_asked_for() {
        let now = Instant::now();
        let mut s = schedule(0, true, None);
        assert!(s.claim_due(now));
        assert!(s.claimed(10, true, false).claim_again_when_settled, "a full keyed batch");
        assert!(s.claim_due(now), "the next claim goes out while the batch is in flight");
        s.settled(true);
        assert_eq!(s.claimed(0, false, false), AfterClaim { wake_peers: false, claim_again_when_settled: false });
        assert!(s.claim_due(now), "the key's next messages were still held back when that claim was answered");
        assert_eq!(s.claimed(0, false, false), AfterClaim { wake_peers: false, claim_again_when_settled: false });
        assert!(!s.claim_due(now), "a claim after the settle that finds nothing: wait");
    }

    #[test]
    fn claims_keep_to_their_key_slice_until_one_is_not_full_or_the_worker_waited() {
        let now = Instant::now();
        let mut s = schedule(0, true, None);
        assert!(s.claims_in_slice(), "a backlog at start: slices");
        assert!(s.claim_due(now));
        assert!(s.claimed(10, true, true).claim_again_when_settled);
        assert!(s.claim_due(now) && s.claims_in_slice(), "full: the next slot's slice");
        assert!(s.claimed(4, true, true).claim_again_when_settled);
        assert!(s.claim_due(now) && !s.claims_in_slice(), "a slice not full: every key once, at once");
        assert!(!s.claimed(0, false, false).claim_again_when_settled);
        assert!(!s.claim_due(now), "nothing anywhere: wait");
        s.woken(false);
        assert!(!s.claims_in_slice(), "a commit may be in any slice");
        s.claimed(10, true, false);
        assert!(s.claims_in_slice(), "a full wide claim: a backlog, back to slices");
    }

    #[test]
    fn other_workers_wait_thirty_poll_intervals() {
        let mut s = schedule(1, true, None);
        s.claimed(0, false, false);
        assert_eq!(s.wait_for_work(Instant::now(), false), Some(POLL * 30));
    }

    #[test]
    fn a_full_claim_wakes_peers_and_claims_again_at_once() {
        let mut s = schedule(0, true, None);
        let after = s.claimed(10, false, false);
        assert_eq!(after, AfterClaim { wake_peers: true, claim_again_when_settled: true });
        assert!(s.claim_due(Instant::now()));
    }

    #[test]
    fn a_short_keyless_batch_waits_for_the_commit_wake_up_but_keys_or_polling_claim_again() {
        let mut s = schedule(0, true, None);
        assert!(!s.claimed(3, false, false).claim_again_when_settled);
        assert!(s.claimed(3, true, false).claim_again_when_settled, "a key's next message sends no wake-up");
        let mut polling = schedule(0, false, None);
        assert!(polling.claimed(3, false, false).claim_again_when_settled, "no commit wake-ups: look again");
        s.settled(true);
        assert!(s.claim_due(Instant::now()));
    }

    #[test]
    fn busy_polls_double_up_to_the_poll_interval() {
        let busy = Duration::from_millis(100);
        let mut s = schedule(0, false, Some(busy));
        s.claimed(5, false, false);
        s.settled(false);
        let mut waits = Vec::new();
        for _ in 0..6 {
            s.claimed(0, false, false);
            waits.push(s.wait_for_work(Instant::now(), false).unwrap());
            s.woken(false);
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn an_early_wake_up_that_finds_nothing_chases_the_late_commit_then_gives_up() {
        let mut s = schedule(0, false, None);
        s.claimed(0, false, false);
        s.woken(true);
        let mut waits = Vec::new();
        for _ in 0..9 {
            s.claimed(0, false, false);
            waits.push(s.wait_for_work(Instant::now(), false).unwrap().as_millis());
            s.woken(false);
        }
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000]);
    }

    #[test]
    fn a_store_that_wakes_on_commit_never_chases() {
        let mut s = schedule(0, true, None);
        s.claimed(0, false, false);
        s.woken(true);
        s.claimed(0, false, false);
        assert_eq!(s.wait_for_work(Instant::now(), false), Some(POLL));
    }

    #[test]
    fn a_store_error_pauses_claims_until_the_backoff_ends() {
        let now = Instant::now();
        let mut s = schedule(0, true, None);
        s.store_error(now + Duration::from_secs(1));
        assert!(!s.claim_due(now));
        assert_eq!(s.wait_for_work(now, false), None, "paused: the worker sleeps until the pause ends");
        assert_eq!(s.paused_until(), Some(now + Duration::from_secs(1)));
        assert!(s.claim_due(now + Duration::from_secs(1)));
        assert_eq!(s.paused_until(), None);
    }
}
