//! The relay: the [`Dispatcher`] trait and [`Relay`], its implementation over any [`Store`] and
//! [`Publisher`].
//!
//! A relay worker loops over: claim a batch (one statement that sets a lease; no transaction stays
//! open) -> publish it (renewing the lease if the publish runs long) -> settle it (acknowledge the
//! published, reschedule the transient failures, dead-letter the permanent ones and the exhausted).
//! When a batch comes back full, the worker claims the next one while the broker confirms the current
//! one, and publishes it at once (up to `batches_in_flight` batches per worker).
//! `concurrency` workers run at once; each waits for [`Store::wait_for_work`] when there is nothing to do.

use std::collections::HashSet;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::{BoxFuture, FutureExt, OptionFuture};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::error::{Error, Result};
use crate::message::{Message, MessageId};
use crate::publisher::{panic_text, PublishError, Publisher};
use crate::retry::{RetryDecision, RetryPolicy};
use crate::store::{Failure, RelayId, Retry, Store};

/// A store without commit wake-ups ([`Store::wakes_on_commit`] false) may wake a relay before the
/// transaction commits: SQLite and MySQL wake it when a message is enqueued. When the claim after
/// such a wake-up finds nothing, the transaction is likely still open, so the worker polls again this
/// soon, doubling the wait after each poll that finds nothing...
const LATE_COMMIT_FIRST_WAIT: Duration = Duration::from_millis(5);
/// ...up to this wait (about 1.3 s after the wake-up in all); a later commit waits for the next
/// regular poll.
const LATE_COMMIT_LAST_WAIT: Duration = Duration::from_millis(640);

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
    /// `enqueue_notifications` off, MySQL or SQLite fed by another process. While messages flow they
    /// are found within about this interval; an idle relay still polls once per `poll_interval`.
    pub busy_poll_interval: Option<Duration>,
    /// Pause after a store error before trying again (default 1 s).
    pub error_backoff: Duration,
    /// How long a shutdown waits for batches in flight before handing their claims back (default 30 s).
    pub shutdown_timeout: Duration,
    /// Retry and dead-letter policy.
    pub retry: RetryPolicy,
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
        Ok(Relay {
            inner: Arc::new(Inner {
                id: RelayId::new(),
                store: self.store,
                publisher: self.publisher,
                options: self.options,
                hook: self.hook,
                counters: Counters::default(),
                in_flight: Mutex::new(HashSet::new()),
                found_work: tokio::sync::Notify::new(),
            }),
        })
    }
}

/// The relay: moves committed messages from a [`Store`] to a [`Publisher`]. Cheap to clone; clones
/// share one identity, counters and leases.
///
/// ```
/// use std::time::Duration;
/// use outbox_core::{memory::MemoryStore, publisher_fn, Dispatcher, NewMessage, PublishError, Relay};
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> outbox_core::Result<()> {
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
        info!(relay = %self.inner.id, batch_size = options.batch_size, concurrency = options.concurrency, "outbox relay started");
        let mut workers = JoinSet::new();
        for worker in 0..options.concurrency {
            let inner = self.inner.clone();
            let shutdown = shutdown.clone();
            workers.spawn(
                async move { inner.work_until_shutdown(worker, shutdown).await }
                    .instrument(info_span!("outbox.relay.worker", relay = %self.inner.id, worker)),
            );
        }
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
            warn!(relay = %self.inner.id, messages = ids.len(), "shutdown timeout: handing back unfinished claims");
            if !ids.is_empty() {
                self.inner.store.release(self.inner.id, &ids).await?;
            }
        }
        info!(relay = %self.inner.id, "outbox relay stopped");
        Ok(())
    }

    async fn dispatch_once(&self) -> Result<usize> {
        self.inner.dispatch_once().await
    }
}

impl Inner {
    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<MessageId>> {
        self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs [`Inner::work`] until shutdown, starting it again (after `error_backoff`) if it panics: a
    /// panic in a store or a hook must not leave the relay with fewer workers and no sign of it. The
    /// batches the panicked loop had in flight stay leased until their lease ends, then are claimed
    /// again.
    async fn work_until_shutdown(&self, worker: usize, shutdown: CancellationToken) {
        loop {
            match AssertUnwindSafe(self.work(worker, shutdown.clone())).catch_unwind().await {
                Ok(()) => return,
                Err(panic) => {
                    bump(&self.counters.worker_panics, 1);
                    error!(worker, panic = %panic_text(&*panic), "outbox relay worker panicked; restarting it");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(self.options.error_backoff) => {}
                    }
                }
            }
        }
    }

    /// One worker's loop. While a backlog lasts (its claims come back full) a worker keeps up to
    /// `batches_in_flight` batches in flight, a claim under way included: it claims the next batch
    /// while the broker confirms the current one and publishes it as soon as it is claimed. Without a
    /// backlog, once its batch has settled it claims again at once if the batch held keys (their next
    /// messages are claimable now) or the store sends no commit wake-ups ([`Store::wakes_on_commit`]);
    /// otherwise, and whenever it has nothing in flight, it waits for a wake-up. Idle, only worker 0
    /// polls the store every `poll_interval`; the others wait for a store notification or for a peer
    /// that found work, so an idle relay costs one query per interval however many workers it has.
    /// With a `busy_poll_interval`, worker 0 polls that soon after finding messages and doubles the
    /// wait after each poll that finds none. On a store without commit wake-ups, a wake-up whose claim
    /// finds nothing (SQLite and MySQL wake relays at enqueue, before the commit) is followed by polls
    /// after [`LATE_COMMIT_FIRST_WAIT`], doubling up to [`LATE_COMMIT_LAST_WAIT`].
    async fn work(&self, worker: usize, shutdown: CancellationToken) {
        let options = &self.options;
        let longest_wait = if worker == 0 { options.poll_interval } else { options.poll_interval.saturating_mul(30) };
        let busy_wait = options.busy_poll_interval.filter(|_| worker == 0);
        let mut idle_wait = longest_wait;
        let wakes_on_commit = self.store.wakes_on_commit();
        // The claim under way follows a wait for work (a poll or a wake-up), not a settled batch.
        let mut after_wait = false;
        // ...and that wait was cut short by the wake-up of a store that may wake before the commit.
        let mut after_early_wake_up = false;
        // Polling for a commit that came later than its wake-up (see `LATE_COMMIT_FIRST_WAIT`).
        let mut chasing_late_commit = false;
        let mut in_flight = FuturesUnordered::new();
        let mut claiming: Option<BoxFuture<'_, Result<Vec<Message>>>> = None;
        // Claim without waiting for a wake-up: at start, after a full claim, after a batch settled.
        let mut claim_now = true;
        // After a store error, no claim before this instant.
        let mut paused_until: Option<tokio::time::Instant> = None;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if paused_until.is_some_and(|until| tokio::time::Instant::now() >= until) {
                paused_until = None;
            }
            let paused = paused_until.is_some();
            let room = in_flight.len() + usize::from(claiming.is_some()) < options.batches_in_flight;
            if claiming.is_none() && room && claim_now && !paused {
                claiming = Some(Box::pin(self.claim()));
            }
            // No backlog: wait for a wake-up only once this worker's batches have settled. Claiming on
            // every commit while the broker confirms cost more statements per message and, on a
            // shared 2-core machine, did not lower RabbitMQ's p99 (docs/benchmarks.md, sixth and
            // seventh sessions).
            let waiting_for_work = claiming.is_none() && in_flight.is_empty() && !claim_now && !paused;
            // Only a store without commit wake-ups needs to know whether a wait was cut short.
            let wait_started = (waiting_for_work && !wakes_on_commit).then(tokio::time::Instant::now);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some((settled, claim_again)) = in_flight.next(), if !in_flight.is_empty() => {
                    claim_now |= claim_again;
                    if let Err(e) = settled {
                        claim_now = true;
                        paused_until = Some(self.store_error(&e));
                    }
                }
                Some(claimed) = OptionFuture::from(claiming.as_mut()) => {
                    claiming = None;
                    let polled = std::mem::take(&mut after_wait);
                    let woken_early = std::mem::take(&mut after_early_wake_up);
                    match claimed {
                        Ok(batch) if batch.is_empty() => {
                            claim_now = false;
                            if woken_early {
                                // Woken, perhaps before the commit: look again soon.
                                (idle_wait, chasing_late_commit) = (LATE_COMMIT_FIRST_WAIT, true);
                            } else if polled {
                                idle_wait = idle_wait.saturating_mul(2);
                                if chasing_late_commit && idle_wait > LATE_COMMIT_LAST_WAIT.min(options.poll_interval) {
                                    (idle_wait, chasing_late_commit) = (longest_wait, false);
                                }
                                idle_wait = idle_wait.min(longest_wait);
                            }
                        }
                        Ok(batch) => {
                            if std::mem::take(&mut chasing_late_commit) {
                                idle_wait = longest_wait;
                            }
                            if let Some(busy) = busy_wait {
                                idle_wait = busy;
                            }
                            claim_now = batch.len() == options.batch_size;
                            if claim_now {
                                self.found_work.notify_waiters();
                            }
                            // Once this batch settles, claim again at once unless a commit's wake-up
                            // will say when: a key's next message becomes claimable when this batch's
                            // is settled, and that sends no wake-up.
                            let claim_again = claim_now || !wakes_on_commit || batch.iter().any(|m| m.key.is_some());
                            let span = info_span!("outbox.batch", relay = %self.id, size = batch.len());
                            let settle = self.publish_and_settle(batch).instrument(span);
                            in_flight.push(settle.map(move |settled| (settled, claim_again)));
                        }
                        Err(e) => {
                            claim_now = true;
                            paused_until = Some(self.store_error(&e));
                        }
                    }
                }
                Some(()) = OptionFuture::from(paused_until.map(tokio::time::sleep_until)) => {}
                _ = self.store.wait_for_work(idle_wait), if waiting_for_work => {
                    (claim_now, after_wait) = (true, true);
                    after_early_wake_up = wait_started.is_some_and(|started| started.elapsed() < idle_wait);
                }
                _ = self.found_work.notified(), if waiting_for_work => (claim_now, after_wait) = (true, true),
            }
        }
        // Shutdown: no new claims. A claim under way is handed back while the batches in flight finish.
        let hand_back = async {
            if let Some(Ok(batch)) = OptionFuture::from(claiming).await {
                if !batch.is_empty() {
                    self.hand_back(&batch).await;
                }
            }
        };
        let finish = async {
            while let Some((settled, _)) = in_flight.next().await {
                if let Err(e) = settled {
                    self.store_error(&e);
                }
            }
        };
        tokio::join!(hand_back, finish);
    }

    /// Counts and logs a store error; returns the instant before which the worker claims nothing.
    fn store_error(&self, e: &Error) -> tokio::time::Instant {
        bump(&self.counters.store_errors, 1);
        error!(error = %e, "outbox relay: store error; backing off");
        tokio::time::Instant::now() + self.options.error_backoff
    }

    /// Drops finished (or handed-back) messages from the in-flight set.
    fn forget_in_flight<'a>(&self, ids: impl IntoIterator<Item = &'a MessageId>) {
        let mut in_flight = self.lock_in_flight();
        for id in ids {
            in_flight.remove(id);
        }
    }

    /// Claims a batch and records it as in flight.
    async fn claim(&self) -> Result<Vec<Message>> {
        let options = &self.options;
        let batch = self.store.claim(self.id, options.batch_size, options.lease).await?;
        if !batch.is_empty() {
            bump(&self.counters.batches, 1);
            bump(&self.counters.claimed, batch.len());
            self.lock_in_flight().extend(batch.iter().map(|m| m.id));
        }
        Ok(batch)
    }

    /// Releases a claimed batch that will not be published (a claim that returned after shutdown), so another
    /// relay can take it at once instead of waiting for the lease to expire.
    async fn hand_back(&self, batch: &[Message]) {
        let ids: Vec<MessageId> = batch.iter().map(|m| m.id).collect();
        match self.store.release(self.id, &ids).await {
            Ok(()) => self.forget_in_flight(&ids),
            Err(e) => {
                warn!(error = %e, messages = ids.len(), "outbox relay could not hand back a batch claimed at shutdown; its lease will expire")
            }
        }
    }

    async fn dispatch_once(&self) -> Result<usize> {
        let batch = self.claim().await?;
        let claimed = batch.len();
        if claimed == 0 {
            return Ok(0);
        }
        let span = info_span!("outbox.batch", relay = %self.id, size = claimed);
        self.publish_and_settle(batch).instrument(span).await.map(|()| claimed)
    }

    async fn publish_and_settle(&self, batch: Vec<Message>) -> Result<()> {
        let max_attempts = self.options.retry.max_attempts();
        let (exhausted, batch): (Vec<Message>, Vec<Message>) =
            batch.into_iter().partition(|m| m.attempts > max_attempts);
        let outcomes = if batch.is_empty() { Vec::new() } else { self.publish_renewing_lease(&batch).await };

        let mut acks = Vec::with_capacity(batch.len());
        let mut retries = Vec::new();
        let mut dead: Vec<(Message, String)> = Vec::new();
        for message in exhausted {
            let error = format!(
                "claimed {} times without a recorded outcome (relay crash or lease expiry); max attempts is {max_attempts}",
                message.attempts
            );
            dead.push((message, error));
        }
        let mut outcomes = outcomes.into_iter();
        for message in batch {
            let outcome = outcomes
                .next()
                .unwrap_or_else(|| Err(PublishError::transient("publisher returned fewer outcomes than messages")));
            match outcome {
                Ok(()) => acks.push(message.id),
                Err(e) if e.is_transient() => match self.options.retry.decide(message.attempts) {
                    RetryDecision::RetryAfter(delay) => {
                        warn!(message_id = %message.id, attempts = message.attempts, retry_in = ?delay, error = %e.report(), "outbox publish failed; will retry");
                        retries.push(Retry { id: message.id, error: e.report(), delay });
                    }
                    RetryDecision::DeadLetter => {
                        let error = format!("gave up after {} attempts: {}", message.attempts, e.report());
                        dead.push((message, error));
                    }
                },
                Err(e) => dead.push((message, e.report())),
            }
        }

        let settled = self.settle(&acks, &retries, &dead).await;
        self.forget_in_flight(acks.iter().chain(retries.iter().map(|r| &r.id)).chain(dead.iter().map(|(m, _)| &m.id)));
        settled?;
        if let Some(hook) = &self.hook {
            for (message, error) in &dead {
                hook.on_dead_letter(message, error).await;
            }
        }
        Ok(())
    }

    async fn settle(&self, acks: &[MessageId], retries: &[Retry], dead: &[(Message, String)]) -> Result<()> {
        if !acks.is_empty() {
            self.settle_step("acknowledge", || self.store.acknowledge(acks)).await?;
            bump(&self.counters.published, acks.len());
            debug!(count = acks.len(), "outbox messages published");
        }
        if !retries.is_empty() {
            self.settle_step("reschedule", || self.store.reschedule(self.id, retries)).await?;
            bump(&self.counters.retried, retries.len());
        }
        if !dead.is_empty() {
            let failures: Vec<Failure> =
                dead.iter().map(|(m, error)| Failure { id: m.id, error: error.clone() }).collect();
            self.settle_step("dead_letter", || self.store.dead_letter(self.id, &failures)).await?;
            bump(&self.counters.dead_lettered, dead.len());
            for (message, error) in dead {
                error!(message_id = %message.id, topic = %message.topic, attempts = message.attempts, %error, "outbox message dead-lettered");
            }
        }
        Ok(())
    }

    /// Runs one settle statement, retrying transient store errors (a deadlock, a dropped connection)
    /// a few times: an acknowledgement lost to one would leave the batch leased until the lease runs
    /// out and then publish it a second time. Each statement is idempotent, so a retry is safe.
    async fn settle_step<'a, F, Fut>(&self, operation: &'static str, step: F) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<()>> + 'a,
    {
        const BACKOFF_MS: [u64; 3] = [10, 50, 250];
        let mut backoff = BACKOFF_MS.iter();
        loop {
            match step().await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => {
                    let Some(ms) = backoff.next() else { return Err(e) };
                    bump(&self.counters.store_errors, 1);
                    warn!(error = %e, operation, retry_in_ms = ms, "outbox relay: settling a batch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(*ms)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Publishes `batch`, turning a panic of the publisher into a transient failure. A batch whose
    /// publish panicked is published again one message per call, so only the messages that panic fail
    /// (and, retried, end in the dead letters) while their batch-mates go out, some maybe twice.
    async fn publish_catching_panics(&self, batch: &[Message]) -> Vec<std::result::Result<(), PublishError>> {
        let panic = match AssertUnwindSafe(self.publisher.publish(batch)).catch_unwind().await {
            Ok(outcomes) => return outcomes,
            Err(panic) => panic,
        };
        if let [_] = batch {
            return vec![Err(PublishError::panicked(&*panic))];
        }
        warn!(messages = batch.len(), panic = %panic_text(&*panic), "outbox publisher panicked; publishing the batch one message at a time");
        let one_by_one = batch.iter().map(|message| async move {
            match AssertUnwindSafe(self.publisher.publish(std::slice::from_ref(message))).catch_unwind().await {
                Ok(mut outcomes) => outcomes
                    .pop()
                    .unwrap_or_else(|| Err(PublishError::transient("publisher returned fewer outcomes than messages"))),
                Err(panic) => Err(PublishError::panicked(&*panic)),
            }
        });
        futures::future::join_all(one_by_one).await
    }

    async fn publish_renewing_lease(&self, batch: &[Message]) -> Vec<std::result::Result<(), PublishError>> {
        let lease = self.options.lease;
        let publish = self.publish_catching_panics(batch);
        tokio::pin!(publish);
        let every = lease / 3;
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut ids: Vec<MessageId> = Vec::new();
        loop {
            tokio::select! {
                outcomes = &mut publish => return outcomes,
                _ = renew.tick() => {
                    if ids.is_empty() {
                        ids = batch.iter().map(|m| m.id).collect();
                    }
                    if let Err(e) = self.store.extend_lease(self.id, &ids, lease).await {
                        warn!(error = %e, "outbox relay could not extend its lease; another relay may take over");
                    }
                }
            }
        }
    }
}
