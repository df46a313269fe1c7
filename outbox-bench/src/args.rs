//! The command line: options, their defaults and checks, and key mixes.

use clap::Parser;

use super::*;

#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) store: String,
    pub(crate) publisher: String,
    pub(crate) messages: usize,
    pub(crate) payload: usize,
    pub(crate) batch: usize,
    pub(crate) concurrency: usize,
    pub(crate) in_flight: usize,
    pub(crate) memory_delay: Duration,
    pub(crate) rate: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) busy_poll_interval: Option<Duration>,
    pub(crate) producers: Vec<usize>,
    pub(crate) idle_listeners: usize,
    pub(crate) old_rows: usize,
    pub(crate) keys: KeyMix,
    pub(crate) key_sweep: Vec<KeyMix>,
    pub(crate) relays: usize,
    pub(crate) kafka_settings: Vec<(String, String)>,
    pub(crate) amqp_queue: rabbitmq::QueueType,
    pub(crate) repeat: usize,
    pub(crate) sweep: Vec<usize>,
    pub(crate) plot: Option<String>,
    pub(crate) json: Option<String>,
    pub(crate) skip: Vec<String>,
    pub(crate) durable_relay_commits: bool,
    pub(crate) wake_ups: WakeUps,
    pub(crate) metrics_overhead: bool,
}

/// Store options from the command line.
pub(crate) fn store_options(args: &Args) -> StoreOptions {
    StoreOptions::default().durable_relay_commits(args.durable_relay_commits).wake_ups(args.wake_ups)
}

/// The wake-up modes the latency, producer, enqueue and idle parts compare, with their names: all
/// three on PostgreSQL, the store's own (in-process) on the others.
pub(crate) fn wake_up_modes(args: &Args) -> Vec<(WakeUps, &'static str)> {
    if args.store == "postgres" {
        vec![(WakeUps::Notify, "notify"), (WakeUps::Replication, "replication"), (WakeUps::Polling, "polling")]
    } else {
        vec![(WakeUps::Notify, "in_process")]
    }
}

/// The command line (`--help` prints it).
#[derive(Debug, Parser)]
#[command(
    name = "outbox-bench",
    about = "Raw limits, relay throughput, latency, enqueue overhead, producer throughput, claim cost and idle cost for one store and one publisher.",
    after_help = "URLs come from the OUTBOX_TEST_* variables (`source scripts/test-services.sh` sets them)."
)]
struct Cli {
    /// The store.
    #[arg(long, default_value = "postgres", value_parser = ["postgres", "mysql", "sqlite"])]
    store: String,
    /// The publisher.
    #[arg(long, default_value = "kafka", value_parser = ["kafka", "rabbitmq", "redis", "nats", "memory"])]
    publisher: String,
    /// Backlog size for the throughput runs.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Payload size in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 256)]
    payload: usize,
    /// Ordering keys, round robin (0: keyless).
    #[arg(long, default_value_t = 0)]
    keys: usize,
    /// That share of the messages (0-1) on one hot key, the rest over --keys.
    #[arg(long, value_name = "F", value_parser = KeyMix::share)]
    hot_key_share: Option<f64>,
    /// Throughput for each key mix against keyless in the same run, each drain on fresh tables and
    /// the --repeat rounds going through the mixes in turn: N (N keys, round robin) or hot:F:N
    /// (share F on one key, the rest over N keys).
    #[arg(long, value_name = "SPEC", value_delimiter = ',', value_parser = KeyMix::parse)]
    key_sweep: Vec<KeyMix>,
    /// Claim batch size.
    #[arg(long, default_value_t = 1000, value_parser = positive)]
    batch: usize,
    /// Workers per relay (default: the relay's).
    #[arg(long, value_parser = positive)]
    concurrency: Option<usize>,
    /// Batches in flight per worker (default: the relay's).
    #[arg(long, value_parser = positive)]
    in_flight: Option<usize>,
    /// Relay instances, each with its own pool.
    #[arg(long, default_value_t = 1, value_parser = positive)]
    relays: usize,
    /// Offered load of the latency test, messages per second.
    #[arg(long, value_name = "MSG_PER_S", default_value_t = 1000, value_parser = positive)]
    rate: usize,
    /// The latency test's relay polls this often, in ms (default: the relay's, 1000).
    #[arg(long, value_name = "MS", value_parser = positive)]
    poll_interval: Option<usize>,
    /// The latency test's relay polls this soon after finding messages, in ms.
    #[arg(long, value_name = "MS", value_parser = positive)]
    busy_poll_interval: Option<usize>,
    /// Concurrent producers of the producer-throughput test, one run per count.
    #[arg(long, value_name = "N", default_value = "1,8,32", value_delimiter = ',', value_parser = positive)]
    producers: Vec<usize>,
    /// PostgreSQL: connections LISTENing on other channels during the enqueue test.
    #[arg(long, default_value_t = 0)]
    idle_listeners: usize,
    /// Old rows for the claim-cost test.
    #[arg(long, default_value_t = 1_000_000)]
    old_rows: usize,
    /// Throughput and enqueue rounds; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = positive)]
    repeat: usize,
    /// Throughput at each batch size (with --plot FILE.svg to draw it).
    #[arg(long, value_name = "N", value_delimiter = ',', value_parser = positive)]
    sweep_batch: Vec<usize>,
    /// Draw the --sweep-batch figures as SVG.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<String>,
    /// A librdkafka producer setting KEY=VALUE (repeatable).
    #[arg(long, value_name = "K=V", value_parser = kafka_setting)]
    kafka_setting: Vec<(String, String)>,
    /// RabbitMQ queue type.
    #[arg(long, default_value = "quorum", value_parser = ["quorum", "classic"])]
    amqp_queue: String,
    /// Memory publisher: sleep this long in every publish call, in ms (a broker's confirm round trip).
    #[arg(long, value_name = "MS", default_value_t = 0.0, value_parser = memory_delay)]
    memory_delay: f64,
    /// PostgreSQL: relay commits wait for the WAL flush.
    #[arg(long)]
    durable_relay_commits: bool,
    /// PostgreSQL: how relays are woken in the throughput runs (the latency, producer, enqueue and
    /// idle parts compare all three).
    #[arg(long, default_value = "notify", value_parser = ["notify", "replication", "polling"])]
    wake_ups: String,
    /// Relay throughput without and with a Prometheus metrics recorder, rounds interleaved.
    #[arg(long)]
    metrics_overhead: bool,
    /// Also write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<String>,
    /// Skip parts: raw, relay, latency, enqueue, producers, claim, idle.
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    skip: Vec<String>,
}

fn positive(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a positive whole number, got {value:?}")),
    }
}

fn kafka_setting(value: &str) -> Result<(String, String), String> {
    let (key, val) = value.split_once('=').ok_or_else(|| format!("expected key=value, got {value:?}"))?;
    Ok((key.to_owned(), val.to_owned()))
}

fn memory_delay(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(ms) if (0.0..=60_000.0).contains(&ms) => Ok(ms),
        _ => Err(format!("expected milliseconds from 0 to 60000, e.g. 5 or 0.5, got {value:?}")),
    }
}

/// Parses the command line; on bad input clap prints the problem and exits with code 2.
pub(crate) fn parse_args() -> Args {
    let cli = Cli::parse();
    let relay = RelayOptions::default();
    Args {
        store: cli.store,
        publisher: cli.publisher,
        messages: cli.messages,
        payload: cli.payload,
        batch: cli.batch,
        concurrency: cli.concurrency.unwrap_or(relay.concurrency),
        in_flight: cli.in_flight.unwrap_or(relay.batches_in_flight),
        memory_delay: Duration::from_secs_f64(cli.memory_delay / 1000.0),
        rate: cli.rate,
        poll_interval: cli.poll_interval.map_or(relay.poll_interval, |ms| Duration::from_millis(ms as u64)),
        busy_poll_interval: cli.busy_poll_interval.map(|ms| Duration::from_millis(ms as u64)),
        producers: cli.producers,
        idle_listeners: cli.idle_listeners,
        old_rows: cli.old_rows,
        keys: KeyMix { keys: cli.keys, hot_share: cli.hot_key_share.unwrap_or(0.0) },
        key_sweep: cli.key_sweep,
        relays: cli.relays,
        kafka_settings: cli.kafka_setting,
        amqp_queue: if cli.amqp_queue == "classic" {
            rabbitmq::QueueType::Classic
        } else {
            rabbitmq::QueueType::Quorum
        },
        repeat: cli.repeat,
        sweep: cli.sweep_batch,
        plot: cli.plot,
        json: cli.json,
        skip: cli.skip,
        durable_relay_commits: cli.durable_relay_commits,
        wake_ups: cli.wake_ups.parse().expect("one of the listed values"),
        metrics_overhead: cli.metrics_overhead,
    }
}

pub(crate) fn env(var: &str) -> Result<String, BoxError> {
    std::env::var(var).map_err(|_| format!("{var} is not set; run `source scripts/test-services.sh` first").into())
}

/// How the messages of a run are keyed: a `hot_share` of them on one hot key, the rest round robin
/// over `keys` keys (keyless when `keys` is 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct KeyMix {
    pub(crate) keys: usize,
    pub(crate) hot_share: f64,
}

impl KeyMix {
    pub(crate) const KEYLESS: Self = Self { keys: 0, hot_share: 0.0 };

    /// `N` or `hot:F:N`.
    pub(crate) fn parse(spec: &str) -> Result<Self, String> {
        let number = |v: &str| v.parse::<usize>().map_err(|e| format!("key mix {spec:?}: {e}"));
        match spec.split(':').collect::<Vec<_>>()[..] {
            [keys] => Ok(Self { keys: number(keys)?, hot_share: 0.0 }),
            ["hot", share, keys] => Ok(Self { keys: number(keys)?, hot_share: Self::share(share)? }),
            _ => Err(format!("key mix {spec:?}: expected N or hot:SHARE:N")),
        }
    }

    pub(crate) fn share(value: &str) -> Result<f64, String> {
        match value.parse::<f64>() {
            Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
            _ => Err(format!("a hot-key share is a number from 0 to 1, got {value:?}")),
        }
    }

    /// The key of message `i`. Hot messages are spread evenly through the run.
    pub(crate) fn key(&self, i: usize) -> Option<String> {
        let hot = (((i + 1) as f64 * self.hot_share).floor() - (i as f64 * self.hot_share).floor()) >= 1.0;
        if hot {
            Some("hot".to_owned())
        } else if self.keys > 0 {
            Some(format!("k{}", i % self.keys))
        } else {
            None
        }
    }
}

impl std::fmt::Display for KeyMix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.hot_share > 0.0 {
            write!(f, "{:.0}% on one key, the rest on {} keys", self.hot_share * 100.0, self.keys)
        } else if self.keys > 0 {
            write!(f, "{} keys", self.keys)
        } else {
            f.write_str("keyless")
        }
    }
}

/// `n` messages keyed by `keys`.
pub(crate) fn messages(topic: &str, n: usize, payload: usize, keys: KeyMix) -> Vec<NewMessage> {
    (0..n)
        .map(|i| {
            let message = NewMessage::new(topic, vec![(i % 251) as u8; payload]);
            match keys.key(i) {
                Some(key) => message.key(key),
                None => message,
            }
        })
        .collect()
}
