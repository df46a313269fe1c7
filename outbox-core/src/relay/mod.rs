//! The relay: the [`Dispatcher`] trait and [`Relay`], its implementation over any [`Store`] and
//! [`Publisher`].
//!
//! A relay worker loops over: claim a batch (one statement that sets a lease; no transaction stays
//! open) -> publish it (renewing the lease if the publish runs long) -> settle it (acknowledge the
//! published, reschedule the transient failures, dead-letter the permanent ones and the exhausted).
//! When a batch comes back full, the worker claims the next one while the broker confirms the current
//! one, and publishes it at once (up to `batches_in_flight` batches per worker).
//! `concurrency` workers run at once; each waits for [`Store::wait_for_work`] when there is nothing to do.
//!
//! The module's parts: `worker` (the loop), `schedule` (when a worker claims and how long it
//! waits), `batch` (publish with the lease renewed, then settle), [`instruments`] (the metrics it
//! records through the `metrics` facade).

mod batch;
pub mod instruments;
mod schedule;
mod worker;

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, warn, Instrument};

use crate::error::{Error, Result};
use crate::message::{Message, MessageId};
use crate::publisher::Publisher;
use crate::retry::RetryPolicy;
use crate::store::{RelayId, Store};

/// Runs the outbox relay. [`Relay`] is the implementation; the trait lets applications wrap it or swap
/// it in their tests.
#[async_trait]
pub trait Dispatcher: Send + Sync + fmt::Debug + 'static {
    /// Relays messages until `shutdown` is cancelled, then stops claiming, finishes the batches in
    /// flight (handing back their claims if they outlast the shutdown timeout) and returns.
    async fn run(&self, shutdown: CancellationToken) -> Result<()>;

    /// Claims, publishes and settles one batch; returns how many messages it claimed.
    async fn dispatch_once(&self) -> Result<usize>;
}

/// Called when a message is parked in the dead letters, after the store recorded it.
#[async_trait]
pub trait DeadLetterHook: Send + Sync + 'static {
    /// `message` is the message as last claimed; `error` the reason it was parked.
    async fn on_dead_letter(&self, message: &Message, error: &str);
}

/// Counters of one relay since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayMetrics {
    /// Non-empty batches claimed.
    pub batches: u64,
    /// Messages claimed.
    pub claimed: u64,
    /// Messages published and acknowledged.
    pub published: u64,
    /// Failed attempts rescheduled for a retry.
    pub retried: u64,
    /// Messages parked in the dead letters.
    pub dead_lettered: u64,
    /// Store errors (claim or settle failed).
    pub store_errors: u64,
    /// Worker loops that panicked and were started again.
    pub worker_panics: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    claimed: AtomicU64,
    published: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    store_errors: AtomicU64,
    worker_panics: AtomicU64,
}

fn bump(counter: &AtomicU64, by: usize) {
    counter.fetch_add(by as u64, Ordering::Relaxed);
}

/// Settings of a [`Relay`]. Start from [`RelayOptions::default`] and change what you need.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayOptions {
    /// Messages claimed per batch (default 256).
    pub batch_size: usize,
    /// Workers (default 2). Each keeps up to `batches_in_flight` batches in flight.
    pub concurrency: usize,
    /// Batches one worker keeps in flight while a backlog lasts, a claim under way included (default
    /// 2). With 2, a worker claims the next batch while the broker confirms the current one and
    /// publishes it at once; 1 makes claim, publish and settle strictly one after another.
    pub batches_in_flight: usize,
    /// How long a claim is held before another relay may take it over (default 30 s). Renewed while a
    /// publish runs long.
    pub lease: Duration,
    /// Longest wait for new work when the store sends no wake-up (default 1 s).
    pub poll_interval: Duration,
    /// After a claim that found messages, the relay's polling worker polls again this soon, and each
    /// poll that finds nothing doubles the wait, up to `poll_interval` (default none: it always waits
    /// `poll_interval`). For relays that learn of new messages by polling: a PostgreSQL store with
    /// `WakeUps::Polling`, MySQL or SQLite fed by another process. While messages flow they
    /// are found within about this interval; an idle relay still polls once per `poll_interval`.
    pub busy_poll_interval: Option<Duration>,
    /// Pause after a store error before trying again (default 1 s).
    pub error_backoff: Duration,
    /// How long a shutdown waits for batches in flight before handing their claims back (default 30 s).
    pub shutdown_timeout: Duration,
    /// Retry and dead-letter policy.
    pub retry: RetryPolicy,
    /// The relay's name in its metrics (label `relay`) and logs (default `outbox`): name the relays
    /// of several databases in one process apart.
    pub name: String,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_size: 256,
            concurrency: 2,
            batches_in_flight: 2,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            busy_poll_interval: None,
            error_backoff: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            name: "outbox".to_owned(),
        }
    }
}

impl RelayOptions {
    fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return Err(Error::invalid_config("relay batch_size must be between 1 and 10000"));
        }
        if self.concurrency == 0 || self.concurrency > 256 {
            return Err(Error::invalid_config("relay concurrency must be between 1 and 256"));
        }
        if self.batches_in_flight == 0 || self.batches_in_flight > 64 {
            return Err(Error::invalid_config("relay batches_in_flight must be between 1 and 64"));
        }
        if self.lease < Duration::from_millis(100) {
            return Err(Error::invalid_config("relay lease must be at least 100 ms"));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::invalid_config("relay poll_interval must be positive"));
        }
        if self.name.is_empty() || self.name.len() > 64 {
            return Err(Error::invalid_config("relay name must be 1 to 64 characters"));
        }
        if self.busy_poll_interval.is_some_and(|busy| busy.is_zero() || busy > self.poll_interval) {
            return Err(Error::invalid_config("relay busy_poll_interval must be positive and at most poll_interval"));
        }
        Ok(())
    }
}

/// Builds a [`Relay`].
pub struct RelayBuilder {
    store: Arc<dyn Store>,
    publisher: Arc<dyn Publisher>,
    options: RelayOptions,
    hook: Option<Arc<dyn DeadLetterHook>>,
}

impl fmt::Debug for RelayBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayBuilder")
            .field("store", &self.store)
            .field("publisher", &self.publisher)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RelayBuilder {
    /// Replaces all options.
    pub fn options(mut self, options: RelayOptions) -> Self {
        self.options = options;
        self
    }
    /// Messages per batch.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.options.batch_size = n;
        self
    }
    /// Workers (see [`RelayOptions::concurrency`]).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.options.concurrency = n;
        self
    }
    /// Batches in flight per worker (see [`RelayOptions::batches_in_flight`]).
    pub fn batches_in_flight(mut self, n: usize) -> Self {
        self.options.batches_in_flight = n;
        self
    }
    /// Claim lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.options.lease = lease;
        self
    }
    /// Poll interval.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.options.poll_interval = interval;
        self
    }
    /// Poll interval while messages flow (see [`RelayOptions::busy_poll_interval`]).
    pub fn busy_poll_interval(mut self, interval: Duration) -> Self {
        self.options.busy_poll_interval = Some(interval);
        self
    }
    /// Pause after a store error.
    pub fn error_backoff(mut self, backoff: Duration) -> Self {
        self.options.error_backoff = backoff;
        self
    }
    /// Shutdown timeout.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.options.shutdown_timeout = timeout;
        self
    }
    /// The relay's name in its metrics and logs (see [`RelayOptions::name`]).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.options.name = name.into();
        self
    }
    /// Retry policy.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.options.retry = policy;
        self
    }
    /// Called for every message parked in the dead letters.
    pub fn on_dead_letter(mut self, hook: impl DeadLetterHook) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }
    /// Validates the options and builds the relay.
    pub fn build(self) -> Result<Relay> {
        self.options.validate()?;
        let instruments = instruments::Instruments::new(&self.options.name);
        Ok(Relay {
            inner: Arc::new(Inner {
                instruments,
                id: RelayId::new(),
                store: self.store,
                publisher: self.publisher,
                options: self.options,
                hook: self.hook,
                counters: Counters::default(),
                in_flight: Mutex::new(HashSet::new()),
                found_work: tokio::sync::Notify::new(),
                backlog_found: AtomicU64::new(0),
                slices_freed: AtomicU64::new(0),
            }),
        })
    }
}

/// How often a relay heartbeats in its store's [`RelayRegistry`](crate::RelayRegistry).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

impl Inner {
    /// Heartbeats in the store's registry every [`HEARTBEAT_INTERVAL`] until `shutdown`.
    async fn heartbeat_until(&self, shutdown: CancellationToken) {
        let (host, pid) = (host_name(), std::process::id());
        loop {
            if let Some(registry) = self.store.registry() {
                let published = self.counters.published.load(std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = registry.heartbeat(self.id, &self.options.name, &host, pid, published).await {
                    warn!(error = %e.report(), "outbox relay heartbeat failed");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
            }
        }
    }
}

/// This machine's name, for the relay registry.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The relay: moves committed messages from a [`Store`] to a [`Publisher`]. Cheap to clone; clones
/// share one identity, counters and leases.
///
/// ```
/// use std::time::Duration;
/// use outbox_engine::{memory::MemoryStore, publisher_fn, Dispatcher, NewMessage, PublishError, Relay};
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> outbox_engine::Result<()> {
/// let store = MemoryStore::new();
/// store.enqueue_committed(NewMessage::new("greetings", "hello"))?;
///
/// let relay = Relay::builder(store.clone(), publisher_fn(|msg| async move {
///     println!("published {} on {}", msg.id, msg.topic);
///     Ok::<(), PublishError>(())
/// }))
/// .poll_interval(Duration::from_millis(10))
/// .build()?;
///
/// let shutdown = CancellationToken::new();
/// let running = tokio::spawn({ let relay = relay.clone(); let s = shutdown.clone(); async move { relay.run(s).await } });
/// while store.pending_len() > 0 { tokio::time::sleep(Duration::from_millis(5)).await; }
/// shutdown.cancel();
/// running.await.expect("relay task")?;
/// assert_eq!(relay.metrics().published, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    id: RelayId,
    store: Arc<dyn Store>,
    publisher: Arc<dyn Publisher>,
    options: RelayOptions,
    hook: Option<Arc<dyn DeadLetterHook>>,
    counters: Counters,
    in_flight: Mutex<HashSet<MessageId>>,
    found_work: tokio::sync::Notify,
    instruments: instruments::Instruments,
    /// Bumped when a worker finds a backlog: each worker that sees it change claims in its slots
    /// whose slices are not dry (see `ClaimSchedule`).
    backlog_found: AtomicU64,
    /// Bumped when a worker settles a batch claimed over every key, or finds its slice drained: each
    /// worker that sees it change claims in all its slots.
    slices_freed: AtomicU64,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("id", &self.inner.id)
            .field("store", &self.inner.store)
            .field("publisher", &self.inner.publisher)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Starts building a relay from a store and a publisher (owned, or shared as `Arc<dyn ...>`).
    pub fn builder(store: impl Store, publisher: impl Publisher) -> RelayBuilder {
        Self::builder_shared(Arc::new(store), Arc::new(publisher))
    }

    /// Starts building a relay from shared handles.
    pub fn builder_shared(store: Arc<dyn Store>, publisher: Arc<dyn Publisher>) -> RelayBuilder {
        RelayBuilder { store, publisher, options: RelayOptions::default(), hook: None }
    }

    /// This relay's lease-owner id.
    pub fn id(&self) -> RelayId {
        self.inner.id
    }

    /// The options in force.
    pub fn options(&self) -> &RelayOptions {
        &self.inner.options
    }

    /// Counters since the relay was built.
    pub fn metrics(&self) -> RelayMetrics {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RelayMetrics {
            batches: get(&c.batches),
            claimed: get(&c.claimed),
            published: get(&c.published),
            retried: get(&c.retried),
            dead_lettered: get(&c.dead_lettered),
            store_errors: get(&c.store_errors),
            worker_panics: get(&c.worker_panics),
        }
    }
}

#[async_trait]
impl Dispatcher for Relay {
    async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let options = &self.inner.options;
        info!(relay = %self.inner.id, name = %options.name, batch_size = options.batch_size, concurrency = options.concurrency, "outbox relay started");
        let mut workers = JoinSet::new();
        for worker in 0..options.concurrency {
            let inner = self.inner.clone();
            let shutdown = shutdown.clone();
            workers.spawn(
                async move { inner.work_until_shutdown(worker, shutdown).await }.instrument(
                    info_span!("outbox.relay.worker", relay = %self.inner.id, name = %options.name, worker),
                ),
            );
        }
        let heartbeat = self.inner.store.registry().is_some().then(|| {
            let (inner, shutdown) = (self.inner.clone(), shutdown.clone());
            tokio::spawn(async move { inner.heartbeat_until(shutdown).await })
        });
        shutdown.cancelled().await;
        info!(relay = %self.inner.id, "outbox relay stopping: no new claims, finishing batches in flight");
        let drained = tokio::time::timeout(options.shutdown_timeout, async {
            while let Some(joined) = workers.join_next().await {
                if let Err(e) = joined {
                    if e.is_panic() {
                        error!(relay = %self.inner.id, "outbox relay worker panicked: {e}");
                    }
                }
            }
        })
        .await;
        if drained.is_err() {
            workers.abort_all();
            while workers.join_next().await.is_some() {}
            let ids: Vec<MessageId> = self.inner.lock_in_flight().drain().collect();
            self.inner.instruments.settled(ids.len());
            warn!(relay = %self.inner.id, messages = ids.len(), "shutdown timeout: handing back unfinished claims");
            if !ids.is_empty() {
                self.inner.store.release(self.inner.id, &ids).await?;
            }
        }
        if let Some(heartbeat) = heartbeat {
            let _ = heartbeat.await;
            if let Some(registry) = self.inner.store.registry() {
                if let Err(e) = registry.deregister(self.inner.id).await {
                    warn!(error = %e.report(), "outbox relay could not leave the relay registry; its entry expires");
                }
            }
        }
        info!(relay = %self.inner.id, "outbox relay stopped");
        Ok(())
    }

    async fn dispatch_once(&self) -> Result<usize> {
        self.inner.dispatch_once().await
    }
}
