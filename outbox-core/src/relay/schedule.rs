//! When a relay worker claims, and how long it waits for work when it has none: the worker loop's
//! decisions, kept apart from its I/O so they can be tested one by one.

use std::time::Duration;

use tokio::time::Instant;

use super::RelayOptions;

/// What the worker does once a claim has come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AfterClaim {
    /// The claim came back full: a backlog waits, so idle peers should claim too.
    pub(super) wake_peers: bool,
    /// Claim again (in the same slot) as soon as this batch settles, without waiting for a wake-up.
    pub(super) claim_again_when_settled: bool,
    /// The slot's slice, which had messages at its last claim, came back empty: claims in other
    /// slices reach their rows without walking past its, so dry slices (of every worker) should claim again.
    pub(super) slice_drained: bool,
}

/// A claim the schedule asks for: in batch slot `slot`, kept to the slot's key slice when `in_slice`
/// (otherwise over every key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PlannedClaim {
    pub(super) slot: usize,
    pub(super) in_slice: bool,
}

/// One batch slot of a worker: a claim or a batch under way in it, or neither.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    busy: bool,
    /// Claim in this slot's key slice as soon as it is free.
    due: bool,
    /// The batch in this slot was claimed over every key and came back full: when it settles, every
    /// slice (of every worker) may have work again.
    wide_backlog: bool,
    /// The batch in this slot was claimed over every key and holds keyed messages: when it settles,
    /// their keys' next messages may wait in any slice, dry ones included.
    wide_keyed: bool,
    /// The claim or batch in this slot keeps to its key slice.
    in_slice: bool,
    /// The slot's last claim in its slice found nothing: a peer's full claim does not make it due
    /// (its slice may be empty, and a claim there walks past every other slice's rows to learn so).
    /// It claims again after a wait for work, after a full claim over every key settles, and once
    /// per `poll_interval` while the worker is busy.
    dry: bool,
    /// The slot's last claim in its slice found messages.
    found: bool,
}

/// One worker's claim schedule. Worker 0 polls every `poll_interval` when idle (sooner with a
/// `busy_poll_interval` while messages flow); the others wait 30 times as long, relying on store
/// wake-ups and on peers that found a backlog, so an idle relay costs one query per interval.
///
/// With a store that claims in key slices, each of a worker's `batches_in_flight` slots claims in a
/// slice of its own while a backlog lasts, so that keyed batches of different slots hold different
/// keys and overlap. A claim after a wait covers every key (a commit may be in any slice), and so
/// does one claim per `poll_interval` while the worker is busy, so no slice waits longer than that.
#[derive(Debug)]
pub(super) struct ClaimSchedule {
    batch_size: usize,
    poll_interval: Duration,
    longest_wait: Duration,
    busy_wait: Option<Duration>,
    wakes_on_commit: bool,
    /// Slots claim in key slices while a backlog lasts.
    sliced: bool,
    slots: Vec<Slot>,
    /// A claim over every key is due (in any free slot): after a wait, after a store error, and
    /// after a claim over every key that was not full settled.
    wide_due: bool,
    /// When the last claim over every key was sent.
    last_wide: Instant,
    /// The next wait for work, when there is nothing to do.
    idle_wait: Duration,
    /// The next claim follows a wait for work (a poll or a wake-up), not a settled batch.
    after_wait: bool,
    /// After a store error, no claim before this instant.
    paused_until: Option<Instant>,
}

impl ClaimSchedule {
    /// The schedule of worker `worker`; `sliced` when its slots claim in key slices.
    pub(super) fn new(options: &RelayOptions, worker: usize, wakes_on_commit: bool, sliced: bool) -> Self {
        let longest_wait = if worker == 0 { options.poll_interval } else { options.poll_interval.saturating_mul(30) };
        // At start every slot claims: a backlog may wait in any slice.
        let slots = vec![Slot { due: true, ..Slot::default() }; options.batches_in_flight.max(1)];
        Self {
            batch_size: options.batch_size,
            poll_interval: options.poll_interval,
            longest_wait,
            busy_wait: options.busy_poll_interval.filter(|_| worker == 0),
            wakes_on_commit,
            sliced,
            slots,
            wide_due: false,
            last_wide: Instant::now(),
            idle_wait: longest_wait,
            after_wait: false,
            paused_until: None,
        }
    }

    fn paused(&mut self, now: Instant) -> bool {
        if self.paused_until.is_some_and(|until| now >= until) {
            self.paused_until = None;
        }
        self.paused_until.is_some()
    }

    /// Every slot whose slice is not dry claims as soon as it is free.
    fn all_slots_due(&mut self) {
        for slot in &mut self.slots {
            slot.due |= !slot.dry;
        }
    }

    /// Every slot claims as soon as it is free, dry ones included.
    fn every_slot_due(&mut self) {
        for slot in &mut self.slots {
            slot.dry = false;
            slot.due = true;
        }
    }

    fn claim_due(&self) -> bool {
        self.wide_due || self.slots.iter().any(|slot| slot.due && !slot.busy)
    }

    /// The claim to start now, if one is due and a slot is free (the worker also checks it has room
    /// for another batch in flight). The slot counts as busy until [`Self::claimed`] hears back.
    pub(super) fn next_claim(&mut self, now: Instant) -> Option<PlannedClaim> {
        if self.paused(now) {
            return None;
        }
        if self.sliced && now >= self.last_wide + self.poll_interval && self.slots.iter().any(|slot| slot.busy) {
            // Busy in slices: look at every key now and then, and try the dry slices again.
            self.wide_due = true;
            for slot in &mut self.slots {
                slot.due |= std::mem::take(&mut slot.dry);
            }
        }
        let wide = self.wide_due || !self.sliced;
        let slot = if self.wide_due {
            self.slots.iter().position(|slot| !slot.busy)?
        } else {
            self.slots.iter().position(|slot| slot.due && !slot.busy)?
        };
        if wide {
            self.wide_due = false;
            self.last_wide = now;
        }
        let in_slice = !wide;
        let Slot { dry, found, .. } = self.slots[slot];
        self.slots[slot] = Slot { busy: true, in_slice, dry, found, ..Slot::default() };
        Some(PlannedClaim { slot, in_slice })
    }

    /// How long to wait for work, or `None` while the worker has something to do: a claim or a batch
    /// under way (`busy`), a claim due, or a pause after a store error (see [`Self::paused_until`]).
    pub(super) fn wait_for_work(&mut self, now: Instant, busy: bool) -> Option<Duration> {
        (!busy && !self.claim_due() && !self.paused(now)).then_some(self.idle_wait)
    }

    /// The end of the pause after a store error, if one is running.
    pub(super) fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    /// The store woke the worker, or its wait ran out. The next claim covers every key, and a commit
    /// may have filled any slice.
    pub(super) fn woken(&mut self) {
        for slot in &mut self.slots {
            slot.dry = false;
        }
        self.wide_due = true;
        self.after_wait = true;
    }

    /// A peer found a backlog: every slot whose slice is not dry claims.
    pub(super) fn peer_found_work(&mut self) {
        self.all_slots_due();
        self.after_wait = true;
    }

    /// A peer settled a batch claimed over every key, which may have held keys of any slice: every
    /// slot claims, dry ones included.
    pub(super) fn peer_freed_slices(&mut self) {
        self.every_slot_due();
        self.after_wait = true;
    }

    /// The claim in `slot` came back with `claimed` messages, `keyed` when any has a key.
    pub(super) fn claimed(&mut self, slot: usize, claimed: usize, keyed: bool) -> AfterClaim {
        let polled = std::mem::take(&mut self.after_wait);
        let Some(state) = self.slots.get_mut(slot) else {
            return AfterClaim { wake_peers: false, claim_again_when_settled: false, slice_drained: false };
        };
        let in_slice = state.in_slice;
        let mut slice_drained = false;
        if in_slice {
            slice_drained = claimed == 0 && state.found;
            state.dry = claimed == 0;
            state.found = claimed > 0;
        }
        if claimed == 0 {
            state.busy = false;
            if polled {
                self.idle_wait = self.idle_wait.saturating_mul(2).min(self.longest_wait);
            }
            return AfterClaim { wake_peers: false, claim_again_when_settled: false, slice_drained };
        }
        let full = claimed == self.batch_size;
        state.wide_backlog = full && !in_slice && self.sliced;
        state.wide_keyed = keyed && !in_slice && self.sliced;
        if let Some(busy) = self.busy_wait {
            self.idle_wait = busy;
        }
        if full {
            self.all_slots_due();
        }
        // A key's next message becomes claimable when this batch settles, which sends no wake-up;
        // neither does a store without commit wake-ups for what was committed meanwhile.
        let claim_again_when_settled = full || !self.wakes_on_commit || keyed;
        AfterClaim { wake_peers: full, claim_again_when_settled, slice_drained }
    }

    /// The batch in `slot` settled; `claim_again` is what [`Self::claimed`] said for it. Returns
    /// whether peers should claim in every slice, dry ones included: a full or keyed batch claimed over
    /// every key may have held keys of any slice.
    pub(super) fn settled(&mut self, slot: usize, claim_again: bool) -> bool {
        let Some(state) = self.slots.get_mut(slot) else { return false };
        let (in_slice, wide_backlog, wide_keyed) = (state.in_slice, state.wide_backlog, state.wide_keyed);
        *state =
            Slot { due: state.due || (claim_again && in_slice), dry: state.dry, found: state.found, ..Slot::default() };
        if wide_backlog {
            self.every_slot_due();
        } else if claim_again && !in_slice {
            if self.sliced && self.slots.iter().any(|slot| slot.busy) {
                // Busy in slices: each slot's next claim in its slice finds these keys' next
                // messages, while a claim over every key would find the other slots' keys in flight
                // and could only look up every key's head. The batch may have held a dry slice's keys.
                self.every_slot_due();
            } else {
                self.wide_due = true;
            }
        }
        wide_backlog || wide_keyed
    }

    /// A claim failed (`slot`: the slot it was in) or a settle failed (`slot`: `None`): claim again
    /// over every key once the pause after a store error, until `until`, is over.
    pub(super) fn store_error(&mut self, slot: Option<usize>, until: Instant) {
        if let Some(state) = slot.and_then(|slot| self.slots.get_mut(slot)) {
            state.busy = false;
        }
        self.wide_due = true;
        self.paused_until = Some(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLL: Duration = Duration::from_secs(1);

    fn options(busy: Option<Duration>) -> RelayOptions {
        RelayOptions { batch_size: 10, poll_interval: POLL, busy_poll_interval: busy, ..RelayOptions::default() }
    }

    fn schedule(worker: usize, wakes_on_commit: bool, busy: Option<Duration>) -> ClaimSchedule {
        ClaimSchedule::new(&options(busy), worker, wakes_on_commit, false)
    }

    fn sliced() -> ClaimSchedule {
        ClaimSchedule::new(&options(None), 0, true, true)
    }

    /// Starts the claim the schedule asks for, or panics.
    fn start(s: &mut ClaimSchedule, now: Instant) -> PlannedClaim {
        s.next_claim(now).expect("a claim is due")
    }

    #[test]
    fn a_worker_claims_at_start_and_waits_once_its_claims_find_nothing() {
        let now = Instant::now();
        let mut s = schedule(0, true, None);
        let first = start(&mut s, now);
        assert_eq!(s.wait_for_work(now, true), None, "busy: no wait");
        let second = start(&mut s, now);
        assert_ne!(first.slot, second.slot, "every slot claims at start");
        assert_eq!(
            s.claimed(first.slot, 0, false),
            AfterClaim { wake_peers: false, claim_again_when_settled: false, slice_drained: false }
        );
        assert!(!s.claimed(second.slot, 0, false).claim_again_when_settled);
        assert_eq!(s.next_claim(now), None);
        assert_eq!(s.wait_for_work(now, false), Some(POLL));
    }

    #[test]
    fn a_claim_that_finds_nothing_does_not_cancel_the_claim_a_settled_batch_asked_for() {
        let now = Instant::now();
        let mut s = schedule(0, true, None);
        let a = start(&mut s, now);
        assert!(s.claimed(a.slot, 10, true).claim_again_when_settled, "a full keyed batch");
        let b = start(&mut s, now);
        s.settled(a.slot, true);
        assert!(!s.claimed(b.slot, 0, false).claim_again_when_settled);
        let c = start(&mut s, now);
        assert_eq!(c.slot, a.slot, "the key's next messages were still held back when that claim was answered");
        s.claimed(c.slot, 0, false);
        assert_eq!(s.next_claim(now), None, "a claim after the settle that finds nothing: wait");
    }

    #[test]
    fn sliced_slots_keep_to_their_slices_and_a_wait_ends_in_a_claim_over_every_key() {
        let now = Instant::now();
        let mut s = sliced();
        let a = start(&mut s, now);
        let b = start(&mut s, now);
        assert!(a.in_slice && b.in_slice, "a backlog at start: slices");
        assert!(
            s.claimed(a.slot, 4, true).claim_again_when_settled,
            "keyed, not full: that slice again after the settle"
        );
        s.claimed(b.slot, 0, false);
        assert_eq!(s.next_claim(now), None, "slot b's slice is empty; slot a's batch is in flight");
        s.settled(a.slot, true);
        assert_eq!(start(&mut s, now), PlannedClaim { slot: a.slot, in_slice: true });
        s.claimed(a.slot, 0, false);
        assert_eq!(s.next_claim(now), None);
        assert!(s.wait_for_work(now, false).is_some());
        s.woken();
        let wide = start(&mut s, now);
        assert!(!wide.in_slice, "a commit may be in any slice");
        assert!(s.claimed(wide.slot, 10, true).wake_peers, "full: a backlog");
        let next = start(&mut s, now);
        assert!(next.in_slice, "a backlog: back to slices");
        s.claimed(next.slot, 0, false);
        assert!(s.settled(wide.slot, true), "a full batch over every key held keys of every slice: peers claim again");
        assert!(start(&mut s, now).in_slice);
        assert!(start(&mut s, now).in_slice, "every slot claims in its slice again");
    }

    #[test]
    fn a_worker_busy_in_slices_claims_over_every_key_once_per_poll_interval() {
        let now = Instant::now();
        let mut s = sliced();
        let a = start(&mut s, now);
        s.claimed(a.slot, 10, true);
        let b = start(&mut s, now);
        s.claimed(b.slot, 4, true);
        assert_eq!(s.next_claim(now + POLL / 2), None, "both slots busy");
        s.settled(a.slot, true);
        assert!(start(&mut s, now + POLL / 2).in_slice);
        s.claimed(a.slot, 4, true);
        s.settled(a.slot, true);
        let later = start(&mut s, now + POLL + Duration::from_millis(1));
        assert!(!later.in_slice, "a poll interval since the last look at every key");
    }

    #[test]
    fn a_short_keyed_batch_over_every_key_is_followed_by_claims_in_slices_while_other_slots_are_busy() {
        let now = Instant::now();
        let mut s = sliced();
        let a = start(&mut s, now);
        s.claimed(a.slot, 10, true);
        s.woken();
        let wide = start(&mut s, now);
        assert!(!wide.in_slice);
        assert!(s.claimed(wide.slot, 4, true).claim_again_when_settled);
        s.settled(wide.slot, true);
        assert!(start(&mut s, now).in_slice, "slot a is busy in its slice: claim in slices");
        let mut idle = sliced();
        let c = start(&mut idle, now);
        idle.claimed(c.slot, 0, false);
        let d = start(&mut idle, now);
        idle.claimed(d.slot, 0, false);
        idle.woken();
        let wide = start(&mut idle, now);
        idle.claimed(wide.slot, 4, true);
        idle.settled(wide.slot, true);
        assert!(!start(&mut idle, now).in_slice, "nothing else in flight: over every key again");
    }

    #[test]
    fn a_slice_that_came_back_empty_waits_out_peers_full_claims_until_the_next_look_at_every_key() {
        let now = Instant::now();
        let mut s = sliced();
        let a = start(&mut s, now);
        let dry = start(&mut s, now);
        s.claimed(dry.slot, 0, false);
        s.claimed(a.slot, 10, true);
        s.settled(a.slot, true);
        assert_eq!(start(&mut s, now).slot, a.slot, "the full slice claims again");
        s.peer_found_work();
        assert_eq!(s.next_claim(now), None, "an empty slice is not tried again for each full batch");
        s.claimed(a.slot, 10, true);
        assert_eq!(s.next_claim(now), None, "nor for this worker's own full claims");
        let later = now + POLL + Duration::from_millis(1);
        let wide = start(&mut s, later);
        assert!(!wide.in_slice, "a poll interval on: a look at every key");
        s.claimed(wide.slot, 3, true);
        s.settled(a.slot, true);
        assert_eq!(start(&mut s, later), PlannedClaim { slot: a.slot, in_slice: true });
        assert!(s.settled(wide.slot, true), "a keyed batch over every key settled: peers try their dry slices too");
        assert!(start(&mut s, later).in_slice, "the dry slice is tried again at the look at every key");
        s.claimed(dry.slot, 0, false);
        s.peer_freed_slices();
        assert!(start(&mut s, later).in_slice, "a peer's batch over every key may have held the slice's keys");

        let mut woken = sliced();
        let (c, d) = (start(&mut woken, now), start(&mut woken, now));
        woken.claimed(c.slot, 0, false);
        woken.claimed(d.slot, 10, true);
        woken.woken();
        let wide = start(&mut woken, now);
        assert!(woken.claimed(wide.slot, 10, true).wake_peers);
        woken.settled(d.slot, true);
        assert!(start(&mut woken, now).in_slice, "after a wake-up every slice is tried again");
    }

    #[test]
    fn a_slice_that_drains_sends_the_dry_slices_claiming_again_once() {
        let now = Instant::now();
        let mut s = sliced();
        let (busy, empty) = (start(&mut s, now), start(&mut s, now));
        assert!(!s.claimed(empty.slot, 0, false).slice_drained, "a slice empty from the start drained nothing");
        assert!(!s.claimed(busy.slot, 10, true).slice_drained);
        s.settled(busy.slot, true);
        let last = start(&mut s, now);
        assert_eq!(last.slot, busy.slot);
        assert!(s.claimed(last.slot, 0, false).slice_drained, "the slice had messages and now has none");
        s.peer_freed_slices();
        let (a, b) = (start(&mut s, now), start(&mut s, now));
        assert!(a.in_slice && b.in_slice, "every slice claims again, dry ones included");
        assert!(!s.claimed(a.slot, 0, false).slice_drained && !s.claimed(b.slot, 0, false).slice_drained, "only once");
        assert_eq!(s.next_claim(now), None);
    }

    #[test]
    fn other_workers_wait_thirty_poll_intervals() {
        let mut s = schedule(1, true, None);
        for _ in 0..2 {
            let c = start(&mut s, Instant::now());
            s.claimed(c.slot, 0, false);
        }
        assert_eq!(s.wait_for_work(Instant::now(), false), Some(POLL * 30));
    }

    #[test]
    fn a_full_claim_wakes_peers_and_claims_again_at_once() {
        let now = Instant::now();
        let mut s = schedule(0, true, None);
        let a = start(&mut s, now);
        let after = s.claimed(a.slot, 10, false);
        assert_eq!(after, AfterClaim { wake_peers: true, claim_again_when_settled: true, slice_drained: false });
        assert!(s.next_claim(now).is_some());
    }

    #[test]
    fn a_short_keyless_batch_waits_for_the_commit_wake_up_but_keys_or_polling_claim_again() {
        let now = Instant::now();
        let mut s = schedule(0, true, None);
        let a = start(&mut s, now);
        assert!(!s.claimed(a.slot, 3, false).claim_again_when_settled);
        let b = start(&mut s, now);
        assert!(s.claimed(b.slot, 3, true).claim_again_when_settled, "a key's next message sends no wake-up");
        let mut polling = schedule(0, false, None);
        let c = start(&mut polling, now);
        assert!(polling.claimed(c.slot, 3, false).claim_again_when_settled, "no commit wake-ups: look again");
        s.settled(b.slot, true);
        assert!(s.next_claim(now).is_some());
    }

    /// Runs the schedule to its next wait: every due claim comes back empty.
    fn idle(s: &mut ClaimSchedule) -> Duration {
        while let Some(c) = s.next_claim(Instant::now()) {
            s.claimed(c.slot, 0, false);
        }
        s.wait_for_work(Instant::now(), false).expect("idle")
    }

    #[test]
    fn busy_polls_double_up_to_the_poll_interval() {
        let busy = Duration::from_millis(100);
        let mut s = schedule(0, false, Some(busy));
        let a = start(&mut s, Instant::now());
        s.claimed(a.slot, 5, false);
        s.settled(a.slot, false);
        let mut waits = Vec::new();
        for _ in 0..6 {
            waits.push(idle(&mut s));
            s.woken();
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn a_store_error_pauses_claims_until_the_backoff_ends() {
        let now = Instant::now();
        let mut s = schedule(0, true, None);
        let a = start(&mut s, now);
        s.store_error(Some(a.slot), now + Duration::from_secs(1));
        assert_eq!(s.next_claim(now), None);
        assert_eq!(s.wait_for_work(now, false), None, "paused: the worker sleeps until the pause ends");
        assert_eq!(s.paused_until(), Some(now + Duration::from_secs(1)));
        assert!(s.next_claim(now + Duration::from_secs(1)).is_some());
        assert_eq!(s.paused_until(), None);
    }
}
