//! Throughput: the raw broker, the raw database and the relay draining a backlog.

use super::*;

/// The raw broker: the publisher alone, `concurrency` batches of `batch` in flight.
pub(crate) async fn raw_broker(
    publisher: &Arc<dyn Publisher>,
    args: &Args,
    topic: &str,
    batch: usize,
) -> Result<Measured, BoxError> {
    let now = outbox_engine::Message {
        id: MessageId::new(),
        topic: topic.to_owned(),
        key: None,
        payload: Vec::new(),
        headers: Default::default(),
        created_at: Default::default(),
        attempts: 1,
        last_error: None,
    };
    let all: Vec<Message> = (0..args.messages)
        .map(|i| Message {
            id: MessageId::new(),
            key: args.keys.key(i),
            payload: vec![(i % 251) as u8; args.payload],
            ..now.clone()
        })
        .collect();
    // Warm up (connections, Kafka producer id).
    let warm = publisher.publish(&all[..1.min(all.len())]).await;
    if let Some(Err(e)) = warm.into_iter().next() {
        return Err(format!("warm-up publish failed: {}", e.report()).into());
    }
    let batches: Vec<&[Message]> = all.chunks(batch).collect();
    let (started, busy) = (Instant::now(), machine_busy());
    let mut failed = 0usize;
    for group in batches.chunks(args.concurrency) {
        for outcomes in futures::future::join_all(group.iter().map(|b| publisher.publish(b))).await {
            failed += outcomes.iter().filter(|o| o.is_err()).count();
        }
    }
    let run = measured(args.messages, started, busy);
    if failed > 0 {
        return Err(format!("{failed} raw publishes failed").into());
    }
    Ok(run)
}

/// The raw database: claim + acknowledge a backlog with `concurrency` claimers, each in a key slice
/// of its own where the store claims in slices (as a relay's workers do).
pub(crate) async fn raw_database(
    store: &AnyStore,
    args: &Args,
    topic: &str,
    batch: usize,
) -> Result<Measured, BoxError> {
    store.fill(messages(topic, args.messages, args.payload, args.keys), 1000, 4).await?;
    store.analyze().await?;
    let dyn_store = store.dyn_store();
    let (started, busy) = (Instant::now(), machine_busy());
    let mut tasks = Vec::new();
    let claimers = u32::try_from(args.concurrency).unwrap_or(u32::MAX);
    for claimer in 0..claimers {
        let s = dyn_store.clone();
        let slice = KeySlice::new(claimer, claimers).filter(|_| claimers > 1 && s.claims_in_slices());
        tasks.push(tokio::spawn(async move {
            let owner = RelayId::new();
            let lease = Duration::from_secs(60);
            let mut idle = 0;
            loop {
                let claimed = match slice {
                    Some(slice) => s.claim_slice(owner, batch, lease, slice).await?,
                    None => s.claim(owner, batch, lease).await?,
                };
                if claimed.is_empty() {
                    idle += 1;
                    if idle > 3 {
                        return Ok::<(), BoxError>(());
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                let ids: Vec<MessageId> = claimed.iter().map(|m| m.id).collect();
                s.acknowledge(&ids).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(measured(args.messages, started, busy))
}

/// A relay drain: its throughput, and the time from the relays' start to their first publish when
/// their connection pools were fresh (the cold start the timed drain no longer includes).
pub(crate) struct RelayRun {
    pub(crate) measured: Measured,
    pub(crate) cold_start: Duration,
}

/// Runs `relays` until they have published `target` messages in all (their counters count from
/// when they were built). Returns the time to their first publish of this run, and the run measured
/// over its `target - already published` messages.
pub(crate) async fn drain(relays: &[Relay], target: usize) -> Result<(Duration, Measured), BoxError> {
    let published = || relays.iter().map(|r| r.metrics().published as usize).sum::<usize>();
    let before = published();
    let shutdown = CancellationToken::new();
    let (started, busy) = (Instant::now(), machine_busy());
    let running: Vec<_> = relays
        .iter()
        .map(|relay| {
            let (relay, shutdown) = (relay.clone(), shutdown.clone());
            tokio::spawn(async move { relay.run(shutdown).await })
        })
        .collect();
    let deadline = started + Duration::from_secs(600);
    let mut first_publish = None;
    loop {
        let now = published();
        if now > before && first_publish.is_none() {
            first_publish = Some(started.elapsed());
        }
        if now >= target {
            break;
        }
        if Instant::now() > deadline {
            return Err("the relays did not drain the backlog within 10 minutes".into());
        }
        // Fine-grained until the first publish (it is a few tens of ms), then cheap.
        let tick = if first_publish.is_none() { Duration::from_micros(500) } else { Duration::from_millis(5) };
        tokio::time::sleep(tick).await;
    }
    let run = measured(target - before, started, busy);
    shutdown.cancel();
    for relay in running {
        relay.await??;
    }
    Ok((first_publish.unwrap_or_default(), run))
}

pub(crate) async fn relay_throughput(
    store: &AnyStore,
    publisher: Arc<dyn Publisher>,
    args: &Args,
    topic: &str,
    batch: usize,
) -> Result<RelayRun, BoxError> {
    // Each relay gets its own connection pool, as separate relay processes would.
    let mut relays = Vec::new();
    for _ in 0..args.relays {
        let own = store.reopen().await?;
        relays.push(
            Relay::builder_shared(own.dyn_store(), publisher.clone())
                .batch_size(batch)
                .concurrency(args.concurrency)
                .batches_in_flight(args.in_flight)
                .build()?,
        );
    }
    // An untimed first drain opens the fresh pools' connections and prepares their statements: the
    // raw runs use a warm store and a warmed-up publisher, and a relay is a long-running process.
    // Its start-to-first-publish time is reported as the cold start. Two batches per slot in flight
    // fill every slot.
    let slots = relays.first().map_or(1, |r| r.options().concurrency * r.options().batches_in_flight);
    let warm_up = 2 * batch * slots * args.relays;
    store.fill(messages(topic, warm_up, args.payload, args.keys), 1000, 4).await?;
    let (cold_start, _) = drain(&relays, warm_up).await?;
    store.fill(messages(topic, args.messages, args.payload, args.keys), 1000, 4).await?;
    store.analyze().await?;
    let (_, measured) = drain(&relays, warm_up + args.messages).await?;
    Ok(RelayRun { measured, cold_start })
}

/// Throughput medians over `--repeat` rounds (raw broker, raw database, relay), interleaved so that
/// each round sees the same machine state.
pub(crate) struct Throughput {
    pub(crate) broker: f64,
    pub(crate) database: f64,
    pub(crate) relay: Option<f64>,
    /// Median time from a relay's start to its first publish with fresh connection pools.
    pub(crate) cold_start: Option<Duration>,
    /// Median busy CPU time per message (the whole machine, this process): raw broker, raw
    /// database, relay.
    pub(crate) cpu: [Option<[Duration; 2]>; 3],
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

pub(crate) async fn throughput(
    store: &AnyStore,
    publisher: &Arc<dyn Publisher>,
    args: &Args,
    topic: &str,
    batch: usize,
    with_relay: bool,
) -> Result<Throughput, BoxError> {
    let (mut broker, mut database, mut relay, mut cold) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.repeat {
        broker.push(raw_broker(publisher, args, topic, batch).await?);
        reset_broker(args, topic).await?;
        database.push(raw_database(store, args, topic, batch).await?);
        if with_relay {
            let run = relay_throughput(store, publisher.clone(), args, topic, batch).await?;
            relay.push(run.measured);
            cold.push(run.cold_start);
            reset_broker(args, topic).await?;
        }
    }
    let cpu = [&broker, &database, &relay].map(|runs| median_cpu(runs));
    let rates = |runs: &[Measured]| median(runs.iter().map(|m| m.rate).collect());
    cold.sort();
    Ok(Throughput {
        broker: rates(&broker),
        database: rates(&database),
        relay: with_relay.then(|| rates(&relay)),
        cold_start: cold.get(cold.len() / 2).copied(),
        cpu,
    })
}

/// The median CPU times per message of some runs (of the run with the median machine time), if
/// every run has them.
pub(crate) fn median_cpu(runs: &[Measured]) -> Option<[Duration; 2]> {
    let mut cpu: Vec<[Duration; 2]> = runs.iter().map(|m| m.cpu_per_message).collect::<Option<_>>()?;
    cpu.sort();
    cpu.get(cpu.len() / 2).copied()
}
