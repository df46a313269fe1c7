//! Measuring and reporting: percentiles, CPU time from /proc, the printed table and its JSON.

use super::*;

/// The `p` quantile (0-1) of `samples` (nearest rank: the smallest sample with at least `p` of
/// them at or below it); zero when there are none.
pub(crate) fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = (p.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1)).copied().unwrap_or_default()
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) struct Report {
    pub(crate) rows: Vec<(String, String, String)>,
    pub(crate) json: BTreeMap<String, serde_json::Value>,
}

impl Report {
    pub(crate) fn add(&mut self, key: &str, label: &str, value: f64, unit: &str) {
        println!("  {label:<58} {value:>12.2} {unit}");
        self.rows.push((label.to_owned(), format!("{value:.2}"), unit.to_owned()));
        self.json.insert(key.to_owned(), serde_json::json!(value));
    }

    /// One row per percentile of `sorted` (`p50` is 0.5, `max` is 1.0), keyed `{key}_{name}_ms`.
    pub(crate) fn add_percentiles(&mut self, key: &str, label: &str, sorted: &[Duration], which: &[(&str, f64)]) {
        for (name, p) in which {
            self.add(&format!("{key}_{name}_ms"), &format!("{label} {name}"), ms(percentile(sorted, *p)), "ms");
        }
    }
}

pub(crate) const P50_P99: &[(&str, f64)] = &[("p50", 0.5), ("p99", 0.99)];

/// Busy CPU time so far of the whole machine (every process: database, broker and this harness) and
/// of this process alone, from `/proc/stat` and `/proc/self/stat`; `None` where those files do not
/// exist (not Linux).
pub(crate) fn machine_busy() -> Option<[Duration; 2]> {
    // Both count USER_HZ ticks: 100 per second on every Linux architecture, whatever the kernel's HZ.
    let ticks = |t: u64| Duration::from_millis(t * 10);
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).map_while(|f| f.parse().ok()).collect();
    // user, nice, system, (idle, iowait,) irq, softirq.
    let machine: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| fields.get(i)).sum();
    // After the `(comm)` field: state is field 3, utime and stime are fields 14 and 15.
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_comm: Vec<&str> = own.rsplit_once(')')?.1.split_whitespace().collect();
    let own: u64 = after_comm.get(11..13)?.iter().filter_map(|f| f.parse::<u64>().ok()).sum();
    Some([ticks(machine), ticks(own)])
}

/// A throughput run: messages per second, and the busy CPU time per message of the whole machine and
/// of this process (the relay or the raw client, in the harness).
#[derive(Clone, Copy)]
pub(crate) struct Measured {
    pub(crate) rate: f64,
    pub(crate) cpu_per_message: Option<[Duration; 2]>,
}

/// Times `n` messages' worth of work from `started` (and the CPU reading taken with it).
pub(crate) fn measured(n: usize, started: Instant, busy_before: Option<[Duration; 2]>) -> Measured {
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let per_message = |before: Duration, after: Duration| after.saturating_sub(before) / n.max(1) as u32;
    let cpu_per_message = busy_before.zip(machine_busy()).map(|([machine, own], [machine_after, own_after])| {
        [per_message(machine, machine_after), per_message(own, own_after)]
    });
    Measured { rate, cpu_per_message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_ranks_whatever_the_magnitude() {
        let ms = |v: &[u64]| v.iter().map(|&v| Duration::from_millis(v)).collect::<Vec<_>>();
        let samples = ms(&[40, 10, 30, 20, 5_000]);
        assert_eq!(percentile(&samples, 0.5), Duration::from_millis(30));
        assert_eq!(percentile(&samples, 0.99), Duration::from_millis(5_000));
        assert_eq!(percentile(&samples, 1.0), Duration::from_millis(5_000));
        assert_eq!(percentile(&samples, 0.0), Duration::from_millis(10));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
