//! The daemon's answers as the CLI reads them: typed mirrors of
//! `daemon::views` (those hold `&'static str` and types that only
//! serialize). Unknown fields are ignored and missing ones default, so a
//! newer or older daemon still reads.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Deserialize;

use crate::lifecycle::State;

/// `GET /services`.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceList {
    #[serde(default)]
    pub services: Vec<Summary>,
    #[serde(default)]
    pub gpu_service_running: Option<String>,
    #[serde(default)]
    pub invalid: Vec<Invalid>,
}

/// One row of `GET /services`.
#[derive(Debug, Clone, Deserialize)]
pub struct Summary {
    pub name: String,
    pub status: State,
    #[serde(default)]
    pub gpu_required: bool,
    #[serde(default)]
    pub vram_gb: f64,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Invalid {
    pub path: String,
    #[serde(default)]
    pub errors: Vec<Problem>,
}

/// One problem of an invalid manifest; the CLI shows its one-line `text`.
#[derive(Debug, Clone, Deserialize)]
pub struct Problem {
    pub text: String,
}

/// `GET /services/{name}/status`.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub name: String,
    pub status: State,
    #[serde(default)]
    pub stage: Option<String>,
    #[serde(default)]
    pub uptime_seconds: Option<f64>,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub containers: Vec<String>,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub last_exit: Option<Exit>,
    #[serde(default)]
    pub last_health: Option<Probe>,
    #[serde(default)]
    pub consecutive_health_failures: u32,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub next: Option<String>,
    #[serde(default)]
    pub restart_pending: bool,
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Exit {
    #[serde(default)]
    pub code: Option<i32>,
    #[serde(default)]
    pub signal: Option<String>,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Probe {
    pub at: Timestamp,
    pub ok: bool,
    #[serde(default)]
    pub latency_ms: f64,
    #[serde(default)]
    pub message: String,
}

/// `GET /services/{name}`: the manifest as the daemon resolved it, and the status.
#[derive(Debug, Clone, Deserialize)]
pub struct Detail {
    #[serde(flatten)]
    pub config: Config,
    pub state: Status,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    pub name: String,
    pub description: String,
    pub version: String,
    pub runtime: String,
    pub command: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub env: BTreeMap<String, String>,
    pub env_file: Option<String>,
    pub compose_file: Option<String>,
    pub project: Option<String>,
    pub gpu_required: bool,
    pub vram_gb: f64,
    pub ports: Vec<String>,
    pub port: Option<u16>,
    pub health_endpoint: Option<String>,
    pub health_command: Option<Vec<String>>,
    /// Seconds, as every duration of the manifest.
    pub start_timeout: f64,
    pub health_timeout: f64,
    pub health_interval: f64,
    pub health_failures: u32,
    pub tags: Vec<String>,
    pub autostart: bool,
    pub restart: String,
    pub restart_delay: f64,
    pub restart_delay_max: f64,
    pub max_restarts: u32,
    pub restart_window: f64,
    pub stop_signal: String,
    pub stop_timeout: f64,
    pub depends_on: Vec<Dependency>,
    pub priority: i32,
    pub pinned: bool,
    pub manifest_path: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Dependency {
    pub name: String,
    #[serde(default)]
    pub condition: Option<String>,
}

/// The answer to `start`, `stop`, `restart` and `remove`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Outcome {
    pub message: String,
    pub preempted: Vec<String>,
    pub also_started: Vec<String>,
    pub also_stopped: Vec<String>,
}

/// `POST /rediscover`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Rediscovered {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<Changed>,
    pub invalid: Vec<Invalid>,
    pub total: usize,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Changed {
    pub name: String,
    #[serde(default)]
    pub note: String,
}

/// `GET /events`.
#[derive(Debug, Clone, Deserialize)]
pub struct Events {
    #[serde(default)]
    pub events: Vec<crate::events::Event>,
}

/// `GET /services/{name}/logs`.
#[derive(Debug, Clone, Deserialize)]
pub struct Logs {
    #[serde(default)]
    pub lines: Vec<LogLine>,
}

/// One line of output (`logs::LogLine` only serializes).
#[derive(Debug, Clone, Deserialize)]
pub struct LogLine {
    pub ts: Timestamp,
    pub stream: String,
    pub line: String,
}

/// `GET /gpus`.
#[derive(Debug, Clone, Deserialize)]
pub struct Gpus {
    #[serde(default)]
    pub policy: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub headroom_bytes: u64,
    #[serde(default)]
    pub holder: Option<String>,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    #[serde(default)]
    pub queue: Vec<Queued>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Gpu {
    pub index: u32,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub total_bytes: u64,
    #[serde(default)]
    pub used_bytes: Option<u64>,
    #[serde(default)]
    pub free_bytes: u64,
    #[serde(default)]
    pub foreign_bytes: u64,
    #[serde(default)]
    pub holders: Vec<GpuHolder>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GpuHolder {
    pub service: String,
    #[serde(default)]
    pub vram_bytes: u64,
    #[serde(default)]
    pub measured_bytes: Option<u64>,
    #[serde(default)]
    pub over: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Queued {
    pub service: String,
    #[serde(default)]
    pub vram_bytes: u64,
    #[serde(default)]
    pub gpus: usize,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub deadline: Option<Timestamp>,
}
