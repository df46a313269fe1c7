//! One relay process of a chaos run, and the defects that can be planted in it to prove the count
//! catches them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outbox_engine::{BoxError, Dispatcher, Message, PublishError, Publisher, Relay, RetryPolicy, Store};
use serde::Serialize;

use super::brokers::{self, BrokerKind};
use super::stores::{ChaosStore, StoreKind};

/// The environment variables a relay process reads its URLs from (kept off its command line).
pub(crate) const STORE_URL_VAR: &str = "OUTBOX_CHAOS_STORE_URL";
pub(crate) const BROKER_URL_VAR: &str = "OUTBOX_CHAOS_BROKER_URL";

/// A fault planted in the relay processes, to prove that the chaos test fails when a relay breaks a
/// guarantee. Never use these outside that proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Defect {
    /// Acknowledges each batch in the store before publishing it: a relay killed, or a broker that
    /// fails, in between loses the batch.
    AckBeforePublish,
    /// Reports a transiently failed message as published and retries it in the background, so the
    /// relay goes on with the next message of its key.
    UnorderedRetry,
}

/// The settings of one relay process.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayProcessOptions {
    /// The store.
    #[arg(long, value_enum)]
    pub store: StoreKind,
    /// The table prefix of the run.
    #[arg(long)]
    pub table_prefix: String,
    /// The broker.
    #[arg(long, value_enum)]
    pub publisher: BrokerKind,
    /// The outbox topic of the run's messages.
    #[arg(long)]
    pub topic: String,
    /// The broker destination (Kafka topic, queue, stream) the topic maps to.
    #[arg(long)]
    pub destination: String,
    /// Messages per claim.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Claim lease in milliseconds (a killed relay's claims come back after it).
    #[arg(long, default_value_t = 5000)]
    pub lease_ms: u64,
    /// PostgreSQL: how relays are woken (`notify`, `replication`, `polling`).
    #[arg(long, default_value = "notify", value_parser = ["notify", "replication", "polling"])]
    pub wake_ups: String,
    /// A planted defect (for proving the test catches it).
    #[arg(long, value_enum)]
    pub defect: Option<Defect>,
}

/// Runs one relay process until SIGTERM (or SIGKILL). URLs come from `OUTBOX_CHAOS_STORE_URL` and
/// `OUTBOX_CHAOS_BROKER_URL`.
pub async fn relay_process(options: RelayProcessOptions) -> Result<(), BoxError> {
    let store_url = std::env::var(STORE_URL_VAR).map_err(|_| format!("{STORE_URL_VAR} is not set"))?;
    let broker_url = std::env::var(BROKER_URL_VAR).map_err(|_| format!("{BROKER_URL_VAR} is not set"))?;
    let store = ChaosStore::open_patiently(
        options.store,
        &store_url,
        &options.table_prefix,
        &options.wake_ups,
        Duration::from_secs(60),
    )
    .await?
    .dyn_store();
    let publisher = brokers::publisher(options.publisher, &broker_url, &options.topic, &options.destination)?;
    let publisher: Arc<dyn Publisher> = match options.defect {
        None => publisher,
        Some(Defect::AckBeforePublish) => Arc::new(AckBeforePublish { store: store.clone(), inner: publisher }),
        Some(Defect::UnorderedRetry) => Arc::new(UnorderedRetry { inner: publisher }),
    };
    let retry =
        RetryPolicy::builder().initial_delay(Duration::from_millis(100)).max_delay(Duration::from_secs(2)).build()?;
    let relay = Relay::builder_shared(store, publisher)
        .batch_size(options.batch_size)
        .lease(Duration::from_millis(options.lease_ms))
        .poll_interval(Duration::from_millis(250))
        .busy_poll_interval(Duration::from_millis(20))
        .error_backoff(Duration::from_millis(250))
        .shutdown_timeout(Duration::from_secs(5))
        .retry_policy(retry)
        .build()?;
    relay.run(outbox_engine::shutdown_on_signal()).await?;
    Ok(())
}

/// The most messages one relay process holds claimed at once (what a kill may publish twice).
pub(crate) fn most_claimed(batch_size: usize) -> usize {
    let defaults = outbox_engine::RelayOptions::default();
    defaults.concurrency * defaults.batches_in_flight * batch_size
}

/// See [`Defect::AckBeforePublish`].
#[derive(Debug)]
struct AckBeforePublish {
    store: Arc<dyn Store>,
    inner: Arc<dyn Publisher>,
}

#[async_trait]
impl Publisher for AckBeforePublish {
    async fn publish(&self, batch: &[Message]) -> Vec<Result<(), PublishError>> {
        let ids: Vec<_> = batch.iter().map(|m| m.id).collect();
        if let Err(e) = self.store.acknowledge(&ids).await {
            return batch.iter().map(|_| Err(PublishError::transient(e.report()))).collect();
        }
        self.inner.publish(batch).await
    }

    fn keeps_key_order(&self) -> bool {
        self.inner.keeps_key_order()
    }
}

/// See [`Defect::UnorderedRetry`].
#[derive(Debug)]
struct UnorderedRetry {
    inner: Arc<dyn Publisher>,
}

#[async_trait]
impl Publisher for UnorderedRetry {
    async fn publish(&self, batch: &[Message]) -> Vec<Result<(), PublishError>> {
        let outcomes = self.inner.publish(batch).await;
        for (message, outcome) in batch.iter().zip(&outcomes) {
            if outcome.as_ref().is_err_and(PublishError::is_transient) {
                let (inner, message) = (self.inner.clone(), message.clone());
                tokio::spawn(async move {
                    for _ in 0..100 {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        if inner.publish(std::slice::from_ref(&message)).await.iter().all(Result::is_ok) {
                            return;
                        }
                    }
                });
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.or_else(|e| if e.is_transient() { Ok(()) } else { Err(e) }))
            .collect()
    }

    fn keeps_key_order(&self) -> bool {
        self.inner.keeps_key_order()
    }
}
