//! `GET /metrics`: what Prometheus scrapes. Counters and histograms of what
//! happened (events by kind, exits, restarts, health checks, API requests)
//! live for the daemon's life in [`Metrics`]; what is true now (each
//! service's state, uptime, CPU and memory, the GPU holder) is read from the
//! services' snapshots at scrape time, so a scrape costs one pass over them.
//! Names follow the Prometheus guide: `nanny_` prefix, base units, `_total`.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::daemon::Daemon;
use crate::events::{Event, EventKind};
use crate::lifecycle::State;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GpuLabel {
    gpu: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    service: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExitLabels {
    service: String,
    /// The exit code, or empty when a signal ended it.
    code: String,
    /// The signal's name (`SIGKILL`), or empty.
    signal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    hook: String,
    outcome: &'static str,
}

type Latencies<L> = Family<L, Histogram, fn() -> Histogram>;

/// 1 ms to about 33 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// What happened since the daemon started. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    events: Family<KindLabel, Counter>,
    exits: Family<ExitLabels, Counter>,
    restarts: Family<ServiceLabel, Counter>,
    health_checks: Latencies<ServiceLabel>,
    health_failures: Family<ServiceLabel, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_latency: Latencies<RouteLabels>,
    deliveries: Family<DeliveryLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            events: Family::default(),
            exits: Family::default(),
            restarts: Family::default(),
            health_checks: Family::new_with_constructor(latency_histogram),
            health_failures: Family::default(),
            requests: Family::default(),
            request_latency: Family::new_with_constructor(latency_histogram),
            deliveries: Family::default(),
        }
    }
}

impl Metrics {
    /// Count an event (its kind; exits and automatic restarts by service).
    pub fn event(&self, event: &Event) {
        self.events.get_or_create(&KindLabel { kind: event.kind.name() }).inc();
        let Some(service) = event.service.clone() else { return };
        match &event.kind {
            EventKind::Exited { code, signal, .. } => {
                let code = code.map(|c| c.to_string()).unwrap_or_default();
                let signal = signal.clone().unwrap_or_default();
                self.exits.get_or_create(&ExitLabels { service, code, signal }).inc();
            }
            EventKind::Starting { automatic: true, .. } => {
                self.restarts.get_or_create(&ServiceLabel { service }).inc();
            }
            _ => {}
        }
    }

    /// One health check of `service`: how long it took, and whether it failed
    /// (checks made while the service starts up count only as checks).
    pub fn health_check(&self, service: &str, took: Duration, ok: bool) {
        let label = ServiceLabel { service: service.to_string() };
        self.health_checks.get_or_create(&label).observe(took.as_secs_f64());
        if !ok {
            self.health_failures.get_or_create(&label).inc();
        }
    }

    /// One event handed to a hook: `delivered`, `failed` (after retries) or
    /// `dropped` (its queue was full).
    pub fn delivery(&self, hook: &str, outcome: &'static str) {
        self.deliveries.get_or_create(&DeliveryLabels { hook: hook.to_string(), outcome }).inc();
    }

    /// One API request, by its route pattern (`/services/{name}/start`).
    pub fn request(&self, method: &str, route: &str, status: u16, took: Duration) {
        let (method, route) = (method.to_string(), route.to_string());
        self.requests.get_or_create(&RequestLabels { method: method.clone(), route: route.clone(), status }).inc();
        self.request_latency.get_or_create(&RouteLabels { method, route }).observe(took.as_secs_f64());
    }
}

/// The exposition, in the Prometheus text format or OpenMetrics.
pub fn render(d: &Daemon, openmetrics: bool) -> String {
    let mut registry = Registry::with_prefix("nanny");
    let m = &d.metrics;
    registry.register("events", "Events recorded, by kind", m.events.clone());
    registry.register("service_exits", "Service instances that ended, by exit code or signal", m.exits.clone());
    registry.register("service_restarts", "Starts made by the restart policy", m.restarts.clone());
    registry.register_with_unit(
        "health_check_duration",
        "How long health checks took",
        Unit::Seconds,
        m.health_checks.clone(),
    );
    registry.register("health_check_failures", "Health checks that did not pass", m.health_failures.clone());
    registry.register("api_requests", "API requests answered, by route and status", m.requests.clone());
    registry.register_with_unit(
        "api_request_duration",
        "How long API requests took to answer",
        Unit::Seconds,
        m.request_latency.clone(),
    );
    registry.register(
        "hook_deliveries",
        "Events handed to webhooks and command hooks, by outcome",
        m.deliveries.clone(),
    );
    now(d, &mut registry);
    let mut out = String::new();
    let encoded = match openmetrics {
        true => text::encode(&mut out, &registry),
        false => prometheus_text::encode(&mut out, &registry),
    };
    encoded.expect("writing to a String does not fail");
    out
}

/// The content type of [`render`]'s output.
pub fn content_type(openmetrics: bool) -> &'static str {
    match openmetrics {
        true => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        false => prometheus_text::CONTENT_TYPE,
    }
}

const STATES: [State; 7] =
    [State::Stopped, State::Starting, State::Running, State::Unhealthy, State::Stopping, State::Backoff, State::Failed];

/// What is true now, one pass over the services.
fn now(d: &Daemon, registry: &mut Registry) {
    let state: Family<StateLabels, Gauge> = Family::default();
    let up: Family<ServiceLabel, Gauge> = Family::default();
    let healthy: Family<ServiceLabel, Gauge> = Family::default();
    let uptime: Family<ServiceLabel, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
    let cpu: Family<ServiceLabel, Counter<f64, std::sync::atomic::AtomicU64>> = Family::default();
    let memory: Family<ServiceLabel, Gauge> = Family::default();
    let gpu_holder: Family<ServiceLabel, Gauge> = Family::default();
    let gpu_reserved: Gauge = Gauge::default();
    let holder = d.arbiter.holder();
    for (name, handle) in &d.registry.snapshot().services {
        let snap = handle.snapshot();
        let service = ServiceLabel { service: name.clone() };
        for s in STATES {
            let labels = StateLabels { service: name.clone(), state: s.as_str() };
            state.get_or_create(&labels).set((snap.state == s) as i64);
        }
        up.get_or_create(&service).set(snap.state.has_process() as i64);
        healthy.get_or_create(&service).set((snap.state == State::Running) as i64);
        if let Some((since, _)) = snap.started_at.filter(|_| snap.state.has_process()) {
            uptime.get_or_create(&service).set(since.elapsed().as_secs_f64());
        }
        if let Some(usage) = d.usage.get(name).filter(|_| snap.state.has_process()) {
            cpu.get_or_create(&service).inc_by(usage.cpu_seconds);
            memory.get_or_create(&service).set(usage.memory_bytes as i64);
        }
        if d.arbiter.holds(name) {
            gpu_holder.get_or_create(&service).set(1);
        }
        if holder.as_deref() == Some(name) {
            gpu_reserved.set((snap.manifest.vram_gb * (1u64 << 30) as f64) as i64);
        }
    }
    registry.register("service_state", "1 for the state each service is in, 0 for the others", state);
    registry.register("service_up", "1 while processes or containers of the service may run", up);
    registry.register("service_healthy", "1 while the service is running and passing its checks", healthy);
    registry.register_with_unit("service_uptime", "Time since the running instance started", Unit::Seconds, uptime);
    registry.register_with_unit("service_cpu", "CPU time used by the running instance", Unit::Seconds, cpu);
    registry.register_with_unit("service_resident_memory", "Resident memory of the instance", Unit::Bytes, memory);
    registry.register("gpu_holder", "1 for each service holding a GPU", gpu_holder);
    gpu_memory(d, registry);
    registry.register_with_unit("gpu_reserved", "GPU memory the holder declared (vram_gb)", Unit::Bytes, gpu_reserved);
}

/// Per GPU of the inventory: total memory, used (NVML only) and free as the daemon counts it.
fn gpu_memory(d: &Daemon, registry: &mut Registry) {
    let total: Family<GpuLabel, Gauge> = Family::default();
    let used: Family<GpuLabel, Gauge> = Family::default();
    let free: Family<GpuLabel, Gauge> = Family::default();
    for (reading, counted_free, _) in d.arbiter.board().gpus {
        let label = GpuLabel { gpu: reading.index.to_string() };
        total.get_or_create(&label).set(reading.total as i64);
        if let Some(bytes) = reading.used {
            used.get_or_create(&label).set(bytes as i64);
        }
        free.get_or_create(&label).set(counted_free as i64);
    }
    registry.register_with_unit("gpu_memory_total", "Memory of each GPU", Unit::Bytes, total);
    registry.register_with_unit("gpu_memory_used", "Memory in use on each GPU (NVML)", Unit::Bytes, used);
    registry.register_with_unit(
        "gpu_memory_free",
        "Memory free on each GPU as the daemon counts it (less its holders and the headroom)",
        Unit::Bytes,
        free,
    );
}
