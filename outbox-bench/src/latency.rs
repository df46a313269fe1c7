//! Commit -> broker-ack latency at a steady load, and the broker's own latency floor.

use super::*;

/// Latency samples, each sorted: commit -> broker ack, and the part of it up to the claim.
pub(crate) struct LatencySamples {
    pub(crate) acked: Vec<Duration>,
    pub(crate) claimed: Vec<Duration>,
    /// Claim statements the relay issued per message (idle polls and empty claims included).
    pub(crate) claims_per_message: f64,
}

/// Commit -> broker-ack latency at a steady `--rate`, one message per transaction from 4 producers.
pub(crate) async fn latency(
    store: &AnyStore,
    publisher: Arc<dyn Publisher>,
    args: &Args,
    topic: &str,
    notifications: bool,
) -> Result<LatencySamples, BoxError> {
    let probe = Arc::new(LatencyProbe { inner: publisher, acked: Mutex::new(HashMap::new()) });
    let instrumented = Arc::new(Instrumented::new(store.dyn_store(), notifications));
    let mut options = RelayOptions::default();
    options.batch_size = args.batch;
    options.concurrency = args.concurrency;
    options.batches_in_flight = args.in_flight;
    options.poll_interval = args.poll_interval;
    options.busy_poll_interval = args.busy_poll_interval;
    let relay = Relay::builder_shared(instrumented.clone(), probe.clone()).options(options).build()?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let committed = Arc::new(Mutex::new(HashMap::new()));
    let sent = steady_load(args, |_| {
        let (store, topic, payload, committed) = (store.clone(), topic.to_owned(), args.payload, committed.clone());
        async move {
            let message = NewMessage::new(&topic, vec![7u8; payload]);
            let id = message.id();
            let at = store.enqueue_tx(vec![message], None).await?;
            committed.lock().map_err(|_| "poisoned")?.insert(id, at);
            Ok(())
        }
    })
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while (relay.metrics().published as usize) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    running.await??;
    let store_errors = relay.metrics().store_errors;
    if store_errors > 0 {
        println!("  (the relay hit {store_errors} store errors during the latency run; see the max)");
    }
    let committed = committed.lock().map_err(|_| "poisoned")?;
    let since_commit = |events: &HashMap<MessageId, Instant>| {
        let mut samples: Vec<Duration> = committed
            .iter()
            .filter_map(|(id, at)| events.get(id).map(|event| event.saturating_duration_since(*at)))
            .collect();
        samples.sort();
        samples
    };
    let acked = since_commit(&probe.acked.lock().unwrap_or_else(|p| p.into_inner()));
    if acked.len() < sent {
        return Err(format!("only {} of {sent} messages reached the broker within 60 s", acked.len()).into());
    }
    let claimed = since_commit(&instrumented.claimed_at.lock().unwrap_or_else(|p| p.into_inner()));
    let claims_per_message = instrumented.claims.load(Ordering::Relaxed) as f64 / sent as f64;
    Ok(LatencySamples { acked, claimed, claims_per_message })
}

/// The broker alone at the same steady rate: one message per publish call from 4 producers; publish
/// -> acknowledgement latency. The floor under the relay's commit -> ack latency.
pub(crate) async fn raw_broker_latency(
    publisher: &Arc<dyn Publisher>,
    args: &Args,
    topic: &str,
) -> Result<Vec<Duration>, BoxError> {
    let samples = Arc::new(Mutex::new(Vec::new()));
    steady_load(args, |i| {
        let (publisher, samples) = (publisher.clone(), samples.clone());
        let message = Message {
            id: MessageId::new(),
            topic: topic.to_owned(),
            key: None,
            payload: vec![(i % 251) as u8; args.payload],
            headers: Default::default(),
            created_at: Default::default(),
            attempts: 1,
            last_error: None,
        };
        async move {
            let started = Instant::now();
            if let Some(Err(e)) = publisher.publish(std::slice::from_ref(&message)).await.pop() {
                return Err(format!("raw publish failed: {}", e.report()).into());
            }
            samples.lock().map_err(|_| "poisoned")?.push(started.elapsed());
            Ok(())
        }
    })
    .await?;
    let mut samples = samples.lock().map_err(|_| "poisoned")?.clone();
    samples.sort();
    Ok(samples)
}

/// The raw broker latency again, while 4 other producers commit one-row business transactions at the
/// same rate (the producers' database load of the relay's latency run, without outbox or relay): how
/// much of the relay's latency the shared machine alone explains.
pub(crate) async fn raw_broker_latency_under_load(
    store: &AnyStore,
    publisher: &Arc<dyn Publisher>,
    args: &Args,
    topic: &str,
) -> Result<Vec<Duration>, BoxError> {
    store.create_business_table().await?;
    let load = steady_load(args, |i| {
        let store = store.clone();
        async move { store.enqueue_tx(Vec::new(), Some(i as i64)).await.map(drop) }
    });
    let (samples, load) = tokio::join!(raw_broker_latency(publisher, args, topic), load);
    store.drop_business_table().await?;
    load?;
    samples
}

/// Runs `one(i)` `--rate` times a second for 5 seconds from 4 producers; returns how many ran.
pub(crate) async fn steady_load<F, Fut>(args: &Args, one: F) -> Result<usize, BoxError>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send + 'static,
{
    const PRODUCERS: usize = 4;
    let per_producer = args.rate * 5 / PRODUCERS;
    let interval = Duration::from_secs_f64(PRODUCERS as f64 / args.rate as f64);
    let mut tasks = Vec::new();
    for producer in 0..PRODUCERS {
        let calls: Vec<Fut> = (0..per_producer).map(|n| one(producer * per_producer + n)).collect();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for call in calls {
                tick.tick().await;
                call.await?;
            }
            Ok::<(), BoxError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(per_producer * PRODUCERS)
}
