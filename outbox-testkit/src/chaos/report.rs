//! What a chaos run injected and what it found.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::brokers::BrokerKind;
use super::check::Tally;
use super::faults::Fault;
use super::relay::Defect;
use super::stores::StoreKind;

/// How many faults of each kind a run injected.
#[derive(Debug, Default, Serialize)]
pub struct FaultCounts {
    /// Relay processes killed with SIGKILL.
    pub relay_kills: u64,
    /// Relay processes that exited on their own (and were started again).
    pub relay_exits: u64,
    /// Rounds of terminating the run's database connections.
    pub db_terminate_rounds: u64,
    /// Database connections terminated.
    pub backends_terminated: u64,
    /// Database restarts.
    pub db_restarts: u64,
    /// Broker disturbances.
    pub broker_faults: u64,
    /// Faults that could not be injected (their errors are logged).
    pub fault_errors: u64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) relay_kills: AtomicU64,
    pub(super) relay_exits: AtomicU64,
    pub(super) db_terminate_rounds: AtomicU64,
    pub(super) backends_terminated: AtomicU64,
    pub(super) db_restarts: AtomicU64,
    pub(super) broker_faults: AtomicU64,
    pub(super) fault_errors: AtomicU64,
}

impl Counters {
    pub(super) fn snapshot(&self) -> FaultCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FaultCounts {
            relay_kills: get(&self.relay_kills),
            relay_exits: get(&self.relay_exits),
            db_terminate_rounds: get(&self.db_terminate_rounds),
            backends_terminated: get(&self.backends_terminated),
            db_restarts: get(&self.db_restarts),
            broker_faults: get(&self.broker_faults),
            fault_errors: get(&self.fault_errors),
        }
    }
}

pub(super) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// The result of a chaos run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The store.
    pub store: StoreKind,
    /// The broker.
    pub publisher: BrokerKind,
    /// The planted defect, if any.
    pub defect: Option<Defect>,
    /// The seed (pass it back with `--seed` to repeat the schedule).
    pub seed: u64,
    /// The faults that were enabled.
    pub faults_enabled: Vec<Fault>,
    /// Seconds of producing and faults.
    pub duration_s: u64,
    /// Seconds the relays took to drain the outbox after the faults stopped.
    pub drain_s: f64,
    /// Messages still in the outbox when the drain timed out (0 when drained).
    pub pending_left: u64,
    /// The faults injected.
    pub faults: FaultCounts,
    /// The count.
    pub tally: Tally,
    /// The most duplicates the design allows here: every fault that cut a relay off could have
    /// published once more what that relay held claimed.
    pub duplicate_bound: u64,
    /// What broke a guarantee (empty: passed).
    pub failures: Vec<String>,
    /// Where the relays' logs are.
    pub log_dir: PathBuf,
}

impl Report {
    /// Whether every guarantee held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// A readable summary.
    pub fn summary(&self) -> String {
        let t = &self.tally;
        let f = &self.faults;
        let defect = self.defect.map(|d| format!(" with the planted defect {d:?}")).unwrap_or_default();
        let verdict = if self.passed() { "PASSED".to_owned() } else { format!("FAILED: {}", self.failures.join("; ")) };
        format!(
            "chaos {store:?} -> {publisher:?}{defect}, seed {seed}, {duration} s of faults, drained in {drain:.1} s\n\
             faults: {kills} relay kills, {exits} relay exits, {terminated} database connections terminated \
             in {rounds} rounds, \
             {restarts} database restarts, {broker} broker disturbances, {errors} faults not injected\n\
             messages: {expected} committed, {unknown} of unknown outcome ({unknown_delivered} delivered), \
             {rolled_back} rolled back\n\
             broker: {received} received, {delivered} distinct, {duplicates} duplicates (bound {bound}), \
             {lost} lost, {unexpected} unexpected, {corrupted} altered, {order} order violations, \
             {dead} dead letters\n\
             {verdict}",
            store = self.store,
            publisher = self.publisher,
            seed = self.seed,
            duration = self.duration_s,
            drain = self.drain_s,
            kills = f.relay_kills,
            exits = f.relay_exits,
            terminated = f.backends_terminated,
            rounds = f.db_terminate_rounds,
            restarts = f.db_restarts,
            broker = f.broker_faults,
            errors = f.fault_errors,
            expected = t.expected,
            unknown = t.unknown_outcome,
            unknown_delivered = t.unknown_outcome_delivered,
            rolled_back = t.rolled_back,
            received = t.received,
            delivered = t.delivered,
            duplicates = t.duplicates,
            bound = self.duplicate_bound,
            lost = t.lost,
            unexpected = t.unexpected,
            corrupted = t.corrupted,
            order = t.order_violations,
            dead = t.dead_letters,
        )
    }
}
