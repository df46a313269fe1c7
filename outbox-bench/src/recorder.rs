//! The cost of the relay's metrics: a Prometheus recorder (the one `outbox relay` would serve) that a
//! switch turns on and off, so the relay's throughput is measured with and without it in one run.

use std::sync::atomic::AtomicBool;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use super::*;

/// A Prometheus recorder behind a switch: off, every metric is a no-op handle.
pub(crate) struct Switched {
    on: Arc<AtomicBool>,
    inner: PrometheusRecorder,
}

impl Recorder for Switched {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        if self.on.load(Ordering::Relaxed) {
            self.inner.register_counter(key, metadata)
        } else {
            Counter::noop()
        }
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        if self.on.load(Ordering::Relaxed) {
            self.inner.register_gauge(key, metadata)
        } else {
            Gauge::noop()
        }
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        if self.on.load(Ordering::Relaxed) {
            self.inner.register_histogram(key, metadata)
        } else {
            Histogram::noop()
        }
    }
}

/// Installs the switched recorder as the process's recorder; returns its switch (off) and the handle
/// that renders what it recorded.
pub(crate) fn install() -> Result<(Arc<AtomicBool>, PrometheusHandle), BoxError> {
    let inner = PrometheusBuilder::new().build_recorder();
    let handle = inner.handle();
    let on = Arc::new(AtomicBool::new(false));
    metrics::set_global_recorder(Switched { on: on.clone(), inner }).map_err(|e| format!("metrics recorder: {e}"))?;
    Ok((on, handle))
}

/// Relay throughput without and with the recorder, rounds interleaved: the medians and the
/// `outbox_` series the recorder holds at the end.
pub(crate) async fn overhead(
    store: &AnyStore,
    publisher: &Arc<dyn Publisher>,
    args: &Args,
    topic: &str,
    switch: &AtomicBool,
    handle: &PrometheusHandle,
) -> Result<(f64, f64, usize), BoxError> {
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..args.repeat {
        for (recording, runs) in [(false, &mut off), (true, &mut on)] {
            switch.store(recording, Ordering::Relaxed);
            let run = relay_throughput(store, publisher.clone(), args, topic, args.batch).await?;
            runs.push(run.measured.rate);
            reset_broker(args, topic).await?;
        }
    }
    switch.store(false, Ordering::Relaxed);
    let series = handle.render().lines().filter(|line| line.starts_with("outbox_")).count();
    Ok((median(off), median(on), series))
}
