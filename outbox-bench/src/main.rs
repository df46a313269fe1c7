//! The outbox benchmark harness. One run measures, for a store and a publisher, the raw limits of
//! each (the broker publishing alone, the database claiming and acknowledging alone), the relay's
//! throughput and its ratio to the lower raw limit, the machine's CPU time per message in each of
//! those three runs (Linux), commit -> broker-ack latency at a steady load,
//! the enqueue overhead on a one-row business transaction, the transactions a second concurrent
//! producers commit with and without an outbox message, the claim cost with 1,000,000 old rows, and the
//! queries an idle relay issues. Prints a table and writes JSON.
//!
//! ```text
//! cargo run --release -p outbox-bench -- --store postgres --publisher kafka --messages 100000
//! ```
//! `--help` lists the options. URLs come from the `OUTBOX_TEST_*` variables (`scripts/test-services.sh` sets them).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox_brokers::{kafka, nats, rabbitmq, redis as redis_pub};
use outbox_engine::memory::MemoryPublisher;
use outbox_engine::{
    CancellationToken, DeadLetter, Dispatcher, Enqueue, Failure, KeySlice, Message, MessageId, NewMessage, OutboxStats,
    PublishError, Publisher, Relay, RelayId, RelayOptions, Retry, Store,
};
use outbox_sqlx::mysql::MySqlStore;
use outbox_sqlx::postgres::PostgresStore;
use outbox_sqlx::sqlite::SqliteStore;
use outbox_sqlx::{StoreOptions, WakeUps};
use tokio_util::task::AbortOnDropHandle;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What `--help` prints: the options, as in the crate docs.
mod args;
mod backends;
mod costs;
mod latency;
mod measure;
mod plot;
mod probes;
mod recorder;
mod throughput;

use args::*;
use backends::*;
use costs::*;
use latency::*;
use measure::*;
use plot::*;
use probes::*;
use throughput::*;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = parse_args();
    let run = |name: &str| !args.skip.iter().any(|s| s == name);
    let topic = format!("outbox_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    println!(
        "outbox-bench: store={} publisher={} messages={} keys: {} payload={}B batch={} concurrency={} in-flight={} relays={} ({} cores)",
        args.store,
        args.publisher,
        args.messages,
        args.keys,
        args.payload,
        args.batch,
        args.concurrency,
        args.in_flight,
        args.relays,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if args.publisher == "rabbitmq" {
        println!("RabbitMQ queue type: {:?}", args.amqp_queue);
    }
    let mut report = Report { rows: Vec::new(), json: BTreeMap::new() };
    let publisher = make_publisher(&args.publisher, &topic, &args).await?;

    if run("raw") || run("relay") {
        let store = AnyStore::open(&args.store, store_options(&args)).await?;
        let t = throughput(&store, &publisher, &args, &topic, args.batch, run("relay")).await?;
        let rounds = if args.repeat > 1 { format!(", median of {}", args.repeat) } else { String::new() };
        report.add("raw_broker_msgs_per_s", &format!("raw broker: publisher alone (msg/s{rounds})"), t.broker, "msg/s");
        report.add(
            "raw_database_rows_per_s",
            &format!("raw database: claim + acknowledge alone (rows/s{rounds})"),
            t.database,
            "rows/s",
        );
        if let Some(relay) = t.relay {
            report.add("relay_msgs_per_s", &format!("relay: drain the backlog (msg/s{rounds})"), relay, "msg/s");
            report.add("relay_ratio", "relay / min(raw broker, raw database)", relay / t.broker.min(t.database), "x");
        }
        if let Some(cold) = t.cold_start {
            let label = format!("relay: start -> first batch published, fresh pools (ms{rounds})");
            report.add("relay_cold_start_ms", &label, cold.as_secs_f64() * 1e3, "ms");
        }
        // Where the relay is bound by the machine's CPU rather than by either side's own limit: it
        // does the broker's and the database's work at once, so on a saturated machine its ceiling
        // is the cores over the two sides' CPU costs added.
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let names = [("broker", "raw broker"), ("database", "raw database"), ("relay", "relay")];
        for ((key, label), cpu) in names.iter().zip(t.cpu) {
            if let Some([machine, own]) = cpu {
                let machine_label = format!("{label}: machine CPU per message (all processes)");
                report.add(&format!("cpu_per_message_{key}_us"), &machine_label, us(machine), "us");
                let own_label = format!("{label}: of which the harness process (client or relay)");
                report.add(&format!("cpu_per_message_{key}_harness_us"), &own_label, us(own), "us");
            }
        }
        if let ([Some([broker, _]), Some([database, _]), _], Some(relay)) = (t.cpu, t.relay) {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            let ceiling = cores / (broker + database).as_secs_f64().max(1e-9);
            report.add(
                "cpu_ceiling_msgs_per_s",
                "CPU ceiling: cores / (raw broker + raw database CPU)",
                ceiling,
                "msg/s",
            );
            report.add("relay_cpu_ceiling_ratio", "relay / CPU ceiling", relay / ceiling, "x");
        }
        store.close().await?;
    }
    if !args.key_sweep.is_empty() {
        // Every mix drains a fresh set of tables, and the rounds go through the mixes in turn: each
        // mix meets the same table state and, round by round, the same machine state.
        let mixes: Vec<KeyMix> = std::iter::once(KeyMix::KEYLESS)
            .chain(args.key_sweep.iter().copied().filter(|m| *m != KeyMix::KEYLESS))
            .collect();
        let mut rounds: Vec<Vec<Throughput>> = mixes.iter().map(|_| Vec::new()).collect();
        for _ in 0..args.repeat {
            for (keys, rounds) in mixes.iter().zip(rounds.iter_mut()) {
                let mixed = Args { keys: *keys, repeat: 1, ..args.clone() };
                let store = AnyStore::open(&args.store, store_options(&args)).await?;
                rounds.push(throughput(&store, &publisher, &mixed, &topic, args.batch, true).await?);
                store.close().await?;
            }
        }
        let mut sweep = Vec::new();
        let mut keyless: Option<f64> = None;
        for (keys, rounds) in mixes.iter().zip(rounds) {
            let relays: Vec<f64> = rounds.iter().map(|t| t.relay.unwrap_or(0.0)).collect();
            let relay = median(relays.clone());
            let (database, broker) = (
                median(rounds.iter().map(|t| t.database).collect()),
                median(rounds.iter().map(|t| t.broker).collect()),
            );
            let ratio = relay / *keyless.get_or_insert(relay);
            println!(
                "  {:<40} relay {relay:>10.0} msg/s ({ratio:.2}x keyless)   raw database {database:>10.0} rows/s",
                keys.to_string(),
            );
            sweep.push(serde_json::json!({
                "keys": keys.keys, "hot_key_share": keys.hot_share, "label": keys.to_string(),
                "relay": relay, "relay_vs_keyless": ratio, "raw_database": database, "raw_broker": broker,
                "relay_rounds": relays,
            }));
        }
        report.json.insert("key_sweep".into(), serde_json::Value::Array(sweep));
    }
    if args.metrics_overhead {
        let (switch, handle) = recorder::install()?;
        let store = AnyStore::open(&args.store, store_options(&args)).await?;
        let (off, on, series) = recorder::overhead(&store, &publisher, &args, &topic, &switch, &handle).await?;
        report.add("relay_without_recorder_msgs_per_s", "relay without a metrics recorder (msg/s)", off, "msg/s");
        report.add("relay_with_recorder_msgs_per_s", "relay with a Prometheus recorder (msg/s)", on, "msg/s");
        report.add("relay_recorder_ratio", "with recorder / without", on / off, "x");
        report.add("recorder_outbox_series", "outbox_ series the recorder holds", series as f64, "");
        store.close().await?;
    }
    if !args.sweep.is_empty() {
        let store = AnyStore::open(&args.store, store_options(&args)).await?;
        let mut points = Vec::new();
        let mut sweep = Vec::new();
        for &batch in &args.sweep {
            let t = throughput(&store, &publisher, &args, &topic, batch, true).await?;
            let relay = t.relay.unwrap_or(0.0);
            println!(
                "  batch {batch:>5}: relay {relay:>10.0} msg/s   raw database {:>10.0} rows/s   raw broker {:>10.0} msg/s",
                t.database, t.broker
            );
            sweep.push(
                serde_json::json!({"batch": batch, "relay": relay, "raw_database": t.database, "raw_broker": t.broker}),
            );
            points.push((batch, t));
        }
        report.json.insert("batch_sweep".into(), serde_json::Value::Array(sweep));
        if let Some(path) = &args.plot {
            let title =
                format!("{} -> {}: throughput vs batch size ({} messages)", args.store, args.publisher, args.messages);
            write_plot(path, &title, &points)?;
            println!("plot written to {path}");
        }
        store.close().await?;
    }
    if run("latency") {
        let raw = raw_broker_latency(&publisher, &args, &topic).await?;
        let label = format!("raw broker at {} msg/s, one message per publish", args.rate);
        report.add_percentiles("raw_broker_latency", &format!("{label}:"), &raw, P50_P99);
        let store = AnyStore::open(&args.store, store_options(&args)).await?;
        let loaded = raw_broker_latency_under_load(&store, &publisher, &args, &topic).await?;
        let label = format!("{label}, while the database commits {} one-row transactions/s:", args.rate);
        report.add_percentiles("raw_broker_latency_loaded", &label, &loaded, P50_P99);
        for (mode, name) in wake_up_modes(&args) {
            let moded = store.with_wake_ups(mode)?;
            let LatencySamples { acked, claimed, claims_per_message } =
                latency(&moded, publisher.clone(), &args, &topic, true).await?;
            drop(moded);
            let label = format!("latency at {} msg/s, {} wake-ups:", args.rate, name.replace('_', "-"));
            report.add_percentiles(
                &format!("claim_latency_{name}"),
                &format!("{label} commit -> claimed"),
                &claimed,
                P50_P99,
            );
            report.add_percentiles(
                &format!("latency_{name}"),
                &label,
                &acked,
                &[("p50", 0.5), ("p99", 0.99), ("max", 1.0)],
            );
            report.add(
                &format!("claims_per_message_{name}"),
                &format!("{label} claims per message"),
                claims_per_message,
                "",
            );
        }
        store.close().await?;
    }
    if run("enqueue") {
        let store = AnyStore::open(&args.store, store_options(&args)).await?;
        // A round's figures move by a few points with the machine's background work: each figure is
        // the median over `--repeat` rounds, an overhead the median of the rounds' own overheads (the
        // variants of one round are interleaved, so they saw the same machine).
        let _listeners = store.idle_listeners(args.idle_listeners).await?;
        let mut rounds = Vec::new();
        for _ in 0..args.repeat {
            rounds.push(enqueue_overhead(&store, &topic, args.payload).await?);
        }
        let rounds_label = if args.repeat > 1 { format!(" (median of {})", args.repeat) } else { String::new() };
        for (i, EnqueueVariant { key, label, overhead }) in ENQUEUE_VARIANTS.iter().enumerate() {
            let p50s: Vec<f64> = rounds.iter().filter_map(|round| round[i].map(ms)).collect();
            if p50s.is_empty() {
                continue;
            }
            report.add(key, &format!("{label}{rounds_label}"), median(p50s), "ms");
            if let Some((key, label)) = overhead {
                let overheads =
                    rounds.iter().filter_map(|round| Some((ms(round[i]?) / ms(round[0]?) - 1.0) * 100.0)).collect();
                report.add(key, label, median(overheads), "%");
            }
        }
        if let Some(listeners) = store.listening_connections().await? {
            let label = "connections LISTENing in the database during the test (each notifying commit wakes all)";
            report.add("enqueue_listening_connections", label, listeners as f64, "");
        }
        store.close().await?;
    }
    if run("producers") {
        let store = AnyStore::open(&args.store, store_options(&args)).await?;
        for &producers in &args.producers {
            let rates = producer_throughput(&store, &topic, &args, producers).await?;
            let business = rates.first().map_or(0.0, |(_, rate)| *rate);
            for (name, rate) in &rates {
                let label = match name.as_str() {
                    "business" => format!("{producers} producers: one-row business transactions (tx/s)"),
                    "second_row" => "  the same plus a row in a second plain table (tx/s)".to_owned(),
                    "outbox" => "  the same plus one outbox message, no relay running (tx/s)".to_owned(),
                    "outbox_delete_only" => {
                        "  the same plus one message, deleted as it commits (no claim, no lease) (tx/s)".to_owned()
                    }
                    _ => format!(
                        "  the same plus one message, a relay running ({} wake-ups) (tx/s)",
                        name.trim_start_matches("outbox_relay_").replace('_', "-")
                    ),
                };
                report.add(&format!("producers_{producers}_{name}_tx_per_s"), &label, *rate, "tx/s");
                if name != "business" {
                    report.add(
                        &format!("producers_{producers}_{name}_ratio"),
                        "    / business alone",
                        rate / business.max(1e-9),
                        "x",
                    );
                }
            }
        }
        store.close().await?;
    }
    if run("claim") {
        let (empty, full) = claim_cost(&args.store, &args, &topic).await?;
        report.add("claim_p50_ms_fresh", "claim 256 of 5,000 pending: p50", ms(empty), "ms");
        let label = format!("claim 256 with {} old published rows: p50", args.old_rows);
        report.add("claim_p50_ms_old_rows", &label, ms(full), "ms");
        report.add("claim_cost_ratio", "claim cost ratio (old rows / fresh)", ms(full) / ms(empty), "x");
    }
    if run("idle") {
        let store = AnyStore::open(&args.store, store_options(&args)).await?;
        for (mode, name) in wake_up_modes(&args) {
            let qps = idle_queries(&store.with_wake_ups(mode)?, true).await?;
            let label = format!("idle relay (4 workers), {} wake-ups: claims per second", name.replace('_', "-"));
            report.add(&format!("idle_queries_per_s_{name}"), &label, qps, "q/s");
        }
        store.close().await?;
    }
    cleanup_broker(&args.publisher, &topic).await;
    if let Some(path) = &args.json {
        let mut json = serde_json::json!({
            "store": args.store, "publisher": args.publisher, "messages": args.messages, "keys": args.keys.keys, "hot_key_share": args.keys.hot_share,
            "payload": args.payload, "batch": args.batch, "concurrency": args.concurrency, "in_flight": args.in_flight, "relays": args.relays,
            "poll_interval_ms": args.poll_interval.as_millis() as u64, "producers": args.producers,
            "idle_listeners": args.idle_listeners,
            "busy_poll_interval_ms": args.busy_poll_interval.map(|d| d.as_millis() as u64),
            "wake_ups": format!("{:?}", args.wake_ups).to_lowercase(),
            "results": report.json,
        });
        if args.publisher == "rabbitmq" {
            json["amqp_queue"] = serde_json::json!(format!("{:?}", args.amqp_queue).to_lowercase());
        }
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
        println!("JSON written to {path}");
    }
    let _ = report.rows.len();
    Ok(())
}
