//! What the daemon answers: plain serializable values built from service
//! snapshots. The field names are the seed's (SPEC §5).

use serde::Serialize;

use crate::discovery::Invalid;
use crate::health::ProbeResult;
use crate::lifecycle::State;
use crate::manifest::Manifest;
use crate::service::{ExitRecord, Snapshot};
use crate::usage::Usage;

/// One row of `GET /services`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServiceSummary {
    pub name: String,
    pub description: String,
    pub version: String,
    pub gpu_required: bool,
    pub vram_gb: f64,
    pub ports: Vec<String>,
    pub port: Option<u16>,
    pub health_endpoint: Option<String>,
    pub tags: Vec<String>,
    pub status: State,
    pub runtime: &'static str,
    /// HTTP code of the last health check of the current process, if any.
    pub last_http_code: Option<u16>,
    /// CPU over the last few seconds (100 = one core), where measured.
    pub cpu_percent: Option<f64>,
    /// Resident memory (process group, or containers), where measured.
    pub memory_bytes: Option<u64>,
    /// The manifest changed on disk; the fields above are the running
    /// instance's until it is restarted.
    pub pending_change: bool,
}

impl ServiceSummary {
    pub fn of(snap: &Snapshot, usage: Option<Usage>) -> Self {
        let usage = usage.filter(|_| snap.state.has_process());
        let m = snap.shown_manifest();
        ServiceSummary {
            name: m.name.clone(),
            description: m.description.clone(),
            version: m.version.clone(),
            gpu_required: m.gpu_required,
            vram_gb: m.vram_gb,
            ports: m.ports.clone(),
            port: m.port,
            health_endpoint: m.health_endpoint_string(),
            tags: m.tags.clone(),
            status: snap.state,
            last_http_code: snap.last_health.as_ref().filter(|_| snap.state.has_process()).and_then(|h| h.http_code),
            cpu_percent: usage.and_then(|u| u.cpu_percent),
            memory_bytes: usage.map(|u| u.memory_bytes),
            pending_change: snap.pending_change().is_some(),
            runtime: match m.runtime {
                crate::manifest::Runtime::Native { .. } => "native",
                crate::manifest::Runtime::Compose { .. } => "compose",
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServiceList {
    pub total: usize,
    pub services: Vec<ServiceSummary>,
    pub gpu_service_running: Option<String>,
    pub invalid: Vec<Invalid>,
}

/// `GET /services/{name}/status`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatusView {
    pub name: String,
    pub status: State,
    /// While `starting`: what the start is doing (`pulling`, `building`,
    /// `creating`, `starting containers`, `waiting for health`, …).
    pub stage: Option<&'static str>,
    pub is_running: bool,
    pub is_healthy: bool,
    pub uptime: Option<String>,
    pub uptime_seconds: Option<f64>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<jiff::Timestamp>,
    pub pid: Option<u32>,
    pub containers: Vec<String>,
    pub restarts: u32,
    pub last_exit: Option<ExitRecord>,
    pub last_health: Option<ProbeResult>,
    pub consecutive_health_failures: u32,
    pub last_error: Option<String>,
    /// What the service does next while it converges (`restarting in 1.0 s
    /// (restart 1 of 10 within 300 s)`, `waiting for the GPU …`).
    pub next: Option<String>,
    /// The manifest changed on disk; the running process still uses the old one.
    pub restart_pending: bool,
    /// CPU over the last few seconds (100 = one core), where measured.
    pub cpu_percent: Option<f64>,
    /// Resident memory (process group, or containers), where measured.
    pub memory_bytes: Option<u64>,
}

impl StatusView {
    pub fn of(snap: &Snapshot, usage: Option<Usage>) -> Self {
        let usage = usage.filter(|_| snap.state.has_process());
        let uptime = snap.started_at.filter(|_| snap.state.has_process()).map(|(since, _)| since.elapsed());
        StatusView {
            name: snap.manifest.name.clone(),
            status: snap.state,
            stage: snap.stage,
            is_running: matches!(snap.state, State::Running | State::Unhealthy),
            is_healthy: snap.state == State::Running,
            uptime: uptime.map(python_timedelta),
            uptime_seconds: uptime.map(|u| u.as_secs_f64()),
            started_at: snap.started_at.map(|(_, at)| at),
            pid: snap.pid,
            containers: snap.containers.clone(),
            restarts: snap.restarts,
            last_exit: snap.last_exit.clone(),
            last_health: snap.last_health.clone(),
            consecutive_health_failures: snap.consecutive_failures,
            last_error: snap.last_error.clone(),
            next: snap.next.clone(),
            restart_pending: snap.pending_change().is_some(),
            cpu_percent: usage.and_then(|u| u.cpu_percent),
            memory_bytes: usage.map(|u| u.memory_bytes),
        }
    }
}

/// `GET /services/{name}`: the full configuration (the running instance's)
/// and the status.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServiceDetail {
    #[serde(flatten)]
    pub config: Manifest,
    pub status: State,
    pub state: StatusView,
    /// The manifest changed on disk while an instance runs: each field that
    /// differs, `{"old": …, "new": …}`, applied at the next start.
    pub pending: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ServiceDetail {
    pub fn of(snap: &Snapshot, usage: Option<Usage>) -> Self {
        let pending = snap.pending_change().map(|new| {
            let (old, new) = (serde_json::to_value(&*snap.manifest), serde_json::to_value(&**new));
            let (Ok(serde_json::Value::Object(old)), Ok(serde_json::Value::Object(new))) = (old, new) else {
                return serde_json::Map::new();
            };
            new.into_iter()
                .filter(|(field, value)| old.get(field) != Some(value))
                .map(|(field, value)| {
                    let was = old.get(&field).cloned().unwrap_or_default();
                    (field, serde_json::json!({ "old": was, "new": value }))
                })
                .collect()
        });
        ServiceDetail {
            config: (**snap.shown_manifest()).clone(),
            status: snap.state,
            state: StatusView::of(snap, usage),
            pending,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StartOutcome {
    pub message: String,
    pub status: State,
    pub health_endpoint: Option<String>,
    /// False when the service was already running.
    pub started: bool,
    /// The process (a native service), once it runs.
    pub pid: Option<u32>,
    /// Dependencies that were not running and were started first.
    pub also_started: Vec<String>,
    /// GPU services stopped to make room (`force`).
    pub preempted: Vec<String>,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DaemonHealth {
    pub status: &'static str,
    pub version: &'static str,
    pub uptime: String,
    pub services: usize,
    pub invalid: usize,
    pub gpu_service_running: Option<String>,
    /// The GPU policy in force and where the GPUs come from.
    pub gpu: GpuHealth,
    pub services_dir: String,
    pub runtimes: crate::runtime::RuntimeInfo,
}

/// `GET /services/{name}/logs`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LogsAnswer {
    pub service: String,
    pub tail: usize,
    pub lines: Vec<crate::logs::LogLine>,
}

/// `GET /events`: oldest first, and the last id (for `since=` next time).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventsAnswer {
    pub events: Vec<crate::events::Event>,
    pub last_id: Option<u64>,
}

/// The service-manager seed's `GET /api/services/status`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SeedStatus {
    pub services: Vec<SeedService>,
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: jiff::Timestamp,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SeedService {
    pub id: String,
    /// The description, else the name.
    pub name: String,
    /// `online`, `offline` or `starting`, as the seed names them.
    pub status: &'static str,
    /// The last health check's HTTP code.
    #[serde(rename = "statusCode")]
    pub status_code: Option<u16>,
}

/// The answer to a test delivery (`nanny webhook test NAME`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HookTest {
    pub hook: String,
    pub delivered: bool,
    /// Why it was not, after the hook's retries.
    pub error: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RemoveOutcome {
    pub message: String,
    /// What the runtime did (Compose's own output).
    pub output: String,
    pub also_stopped: Vec<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StopOutcome {
    pub message: String,
    pub status: State,
    /// Running services that depend on this one, stopped first.
    pub also_stopped: Vec<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChangedService {
    pub name: String,
    pub running: bool,
    pub note: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RediscoverReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<ChangedService>,
    pub invalid: Vec<Invalid>,
    pub total: usize,
}

/// Python's `str(timedelta)`, which the seed's `uptime` uses:
/// `0:05:23.123456`, `1 day, 2:03:04.000005`.
pub fn python_timedelta(d: std::time::Duration) -> String {
    let micros = d.as_micros();
    let (secs, frac) = (micros / 1_000_000, micros % 1_000_000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let mut out = match days {
        0 => String::new(),
        1 => "1 day, ".to_string(),
        n => format!("{n} days, "),
    };
    out.push_str(&format!("{}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60));
    if frac != 0 {
        out.push_str(&format!(".{frac:06}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timedelta_matches_python() {
        assert_eq!(python_timedelta(Duration::from_micros(323_123_456)), "0:05:23.123456");
        assert_eq!(python_timedelta(Duration::from_secs(0)), "0:00:00");
        assert_eq!(python_timedelta(Duration::from_secs(86_400 + 3 * 3600 + 4)), "1 day, 3:00:04");
        assert_eq!(python_timedelta(Duration::from_micros(2 * 86_400_000_000 + 5)), "2 days, 0:00:00.000005");
    }
}

/// `GET /gpus`, `nanny gpus`: the GPUs, who holds what, and who waits.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GpusView {
    pub policy: crate::gpu::Policy,
    pub source: crate::gpu::inventory::Source,
    /// What was found and what is used, in words.
    pub detail: String,
    /// Kept free on every GPU (`vram` policy).
    pub headroom_bytes: u64,
    /// `exclusive` policy: the one holder.
    pub holder: Option<String>,
    pub gpus: Vec<GpuView>,
    /// Starts waiting for room, first in line first.
    pub queue: Vec<QueuedView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GpuView {
    pub index: u32,
    /// NVML only.
    pub uuid: Option<String>,
    /// `declared` for a GPU given with `--gpu`.
    pub name: String,
    pub total_bytes: u64,
    /// As the driver reports it (NVML only).
    pub used_bytes: Option<u64>,
    /// Free as the daemon counts it: the least of the driver's figure and
    /// what its holders leave, less the headroom.
    pub free_bytes: u64,
    /// Used by processes that are not our services'.
    pub foreign_bytes: u64,
    pub holders: Vec<GpuHolderView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GpuHolderView {
    pub service: String,
    /// Declared (`vram_gb`), per GPU.
    pub vram_bytes: u64,
    /// Measured (NVML).
    pub measured_bytes: Option<u64>,
    #[schema(value_type = String, format = DateTime)]
    pub since: jiff::Timestamp,
    /// It uses more than it declared: packing counts the measured figure.
    pub over: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QueuedView {
    pub service: String,
    pub vram_bytes: u64,
    pub gpus: usize,
    pub priority: i32,
    #[schema(value_type = String, format = DateTime)]
    pub since: jiff::Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub deadline: jiff::Timestamp,
}

/// `GET /health`'s GPU line: the policy in force and where the GPUs come from.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GpuHealth {
    pub policy: crate::gpu::Policy,
    pub source: crate::gpu::inventory::Source,
    pub detail: String,
}
