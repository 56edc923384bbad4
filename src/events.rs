//! Lifecycle events: what happened, to which service, in the order it
//! happened. Every event gets its id from the store when it is persisted,
//! and only then is it published to live listeners (API SSE, CLI follow).

use serde::{Deserialize, Serialize};

/// One thing that happened. `id`s are strictly increasing.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub id: u64,
    #[schema(value_type = String, format = DateTime)]
    pub ts: jiff::Timestamp,
    pub service: Option<String>,
    #[serde(flatten)]
    pub kind: EventKind,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    DaemonStarted {
        version: String,
        pid: u32,
    },
    DaemonStopping {
        reason: String,
    },
    Discovered,
    Removed,
    ManifestChanged {
        running: bool,
    },
    Invalid {
        path: String,
        errors: Vec<String>,
    },
    Starting {
        pid: Option<u32>,
        automatic: bool,
    },
    /// An instance already running (started before this daemon, or by hand) was taken over.
    Adopted {
        pid: Option<u32>,
        containers: Vec<String>,
    },
    Healthy {
        startup_ms: Option<f64>,
        /// Whether a health check said so (else: it stayed up for the settle time).
        #[serde(default = "yes")]
        checked: bool,
    },
    Unhealthy {
        consecutive_failures: u32,
        last_check: String,
    },
    /// `expected`: the daemon caused it (a stop, a health verdict), and
    /// `reason` says why it was stopped.
    Exited {
        code: Option<i32>,
        signal: Option<String>,
        expected: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Backoff {
        attempt: u32,
        delay_ms: u64,
    },
    Failed {
        reason: String,
    },
    Stopping {
        signal: String,
    },
    Stopped,
    GpuPreempted {
        by: String,
    },
    /// It uses more GPU memory than its `vram_gb` says (NVML); packing
    /// counts the measured figure from now on.
    GpuOverUse {
        declared_bytes: u64,
        measured_bytes: u64,
    },
    /// Meant to be running but waiting: for the GPU, or for its runtime.
    Waiting {
        reason: String,
    },
    /// Its processes were still there `grace_s` seconds after SIGKILL.
    StopTimedOut {
        grace_s: u64,
    },
    OrphanKilled {
        pid: u32,
    },
}

impl EventKind {
    /// The kind as stored and filtered on (`starting`, `exited`, …).
    pub fn name(&self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v["kind"].as_str().map(str::to_string)).unwrap_or_default()
    }

    /// A sentence for people (logs, CLI).
    pub fn describe(&self) -> String {
        match self {
            EventKind::DaemonStarted { version, pid } => format!("daemon {version} started (pid {pid})"),
            EventKind::DaemonStopping { reason } => format!("daemon stopping: {reason}"),
            EventKind::Discovered => "discovered".into(),
            EventKind::Removed => "removed (its manifest is gone)".into(),
            EventKind::ManifestChanged { running: true } => {
                "manifest changed; running with the previous one until restarted".into()
            }
            EventKind::ManifestChanged { running: false } => "manifest changed".into(),
            EventKind::Invalid { path, errors } => format!("invalid manifest {path}: {}", errors.join("; ")),
            EventKind::Starting { pid, automatic } => {
                let pid = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
                format!("starting{pid}{}", if *automatic { ", automatic restart" } else { "" })
            }
            EventKind::Adopted { pid, containers } => match pid {
                Some(pid) => format!("adopted running process {pid}"),
                None => format!("adopted running containers {}", containers.join(", ")),
            },
            EventKind::Healthy { startup_ms: Some(ms), checked: true } => format!("running (healthy after {ms:.0} ms)"),
            EventKind::Healthy { startup_ms: None, checked: true } => "running (healthy)".into(),
            EventKind::Healthy { startup_ms, checked: false } => {
                let up = startup_ms.map(|ms| format!("; up for {} s", (ms / 1000.0).round())).unwrap_or_default();
                format!("running (no health check{up})")
            }
            EventKind::Unhealthy { consecutive_failures, last_check } => {
                format!("unhealthy after {consecutive_failures} failed checks (last: {last_check})")
            }
            EventKind::Exited { code, signal, expected, reason } => {
                let how = match (code, signal) {
                    (Some(c), _) => format!("exited with code {c}"),
                    (None, Some(s)) => format!("killed by {s}"),
                    (None, None) => "exited".into(),
                };
                match (expected, reason) {
                    (_, Some(reason)) => format!("{how} ({reason})"),
                    (true, None) => how,
                    (false, None) => format!("{how} unexpectedly"),
                }
            }
            EventKind::Backoff { attempt, delay_ms } => {
                format!("restart {attempt} in {:.3}s", *delay_ms as f64 / 1000.0)
            }
            EventKind::Failed { reason } => format!("failed: {reason}"),
            EventKind::Stopping { signal } => format!("stopping ({signal})"),
            EventKind::Stopped => "stopped".into(),
            EventKind::GpuPreempted { by } => format!("stopped to free the GPU for '{by}'"),
            EventKind::GpuOverUse { declared_bytes, measured_bytes } => format!(
                "uses {} of GPU memory, more than the {} it declares (vram_gb); counted as used",
                crate::gpu::plan::gib(*measured_bytes),
                crate::gpu::plan::gib(*declared_bytes)
            ),
            EventKind::Waiting { reason } => reason.clone(),
            EventKind::StopTimedOut { grace_s } => format!("still running {grace_s}s after SIGKILL"),
            EventKind::OrphanKilled { pid } => format!("killed process {pid} left over from a previous daemon"),
        }
    }
}

fn yes() -> bool {
    true
}

/// Which events a reader wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only events with a greater id.
    pub since: u64,
    pub service: Option<String>,
    /// At most this many (0: no limit).
    pub limit: usize,
}

impl Filter {
    pub fn matches(&self, event: &Event) -> bool {
        event.id > self.since && self.service.as_ref().is_none_or(|s| event.service.as_ref() == Some(s))
    }
}
