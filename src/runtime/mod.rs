//! The seam between decisions and the things that run: everything that
//! starts, stops or signals a service's processes or containers goes through
//! [`Runtime`] and the [`Instance`] it returns. The service task only ever
//! talks to these traits, so it can be driven by a fake.
//!
//! `native` runs a process group; `compose` runs a Docker Compose project.
//! [`Runtimes`] picks one by the manifest.

pub mod compose;
mod native;
mod notify;
mod spawn;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::logs::LogStore;
use crate::manifest::{Manifest, Runtime as Kind};
use crate::usage::Reading;

pub use native::{Native, group_of};
pub use spawn::reserve as reserve_spawn_slots;

/// How an instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ExitInfo {
    pub code: Option<i32>,
    #[serde(serialize_with = "ser_signal")]
    #[schema(value_type = Option<String>)]
    pub signal: Option<Signal>,
}

impl ExitInfo {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exited with code {code}"),
            (None, Some(sig)) => write!(f, "killed by {sig}"),
            (None, None) => f.write_str("exited"),
        }
    }
}

fn ser_signal<S: serde::Serializer>(signal: &Option<Signal>, s: S) -> Result<S::Ok, S::Error> {
    signal.map(Signal::as_str).serialize(s)
}

/// How an instance ended, and why when the runtime knows more than the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub exit: ExitInfo,
    pub reason: Option<String>,
    /// It never ran because its runtime could not be reached (the engine).
    pub unavailable: bool,
}

impl Ended {
    pub fn exited(exit: ExitInfo) -> Ended {
        Ended { exit, reason: None, unavailable: false }
    }
}

/// What a running instance is made of, for status answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Parts {
    /// The process (and process group) id of a native service.
    pub pid: Option<u32>,
    /// The containers of a Compose service.
    pub containers: Vec<String>,
}

/// A process group recorded so a later daemon can clean up after a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub pgid: u32,
    /// The leader's start time in clock ticks since boot (`/proc/PID/stat`).
    pub start_ticks: u64,
    /// The machine's boot it was started in: after a reboot, none of it is left.
    pub boot_id: String,
    /// The daemon that started it (pid and start ticks): while that daemon
    /// lives, the group is its to supervise, never a leftover.
    pub daemon_pid: u32,
    pub daemon_start_ticks: u64,
}

/// One start of a service: something that runs until it ends or is stopped.
pub trait Instance: Send + Sync {
    fn parts(&self) -> Parts;
    /// Ask it to stop: `signal` to a process group, `compose stop` for a project.
    fn stop(&self, signal: Signal, timeout: Duration);
    /// Stop it now (SIGKILL to the group, `compose kill`).
    fn kill(&self);
    /// The process group to record for crash recovery, if it is one.
    fn group(&self) -> Option<GroupRecord>;

    /// A health check the runtime itself can make, used when the manifest
    /// names none (Compose: every container running, and healthy if it has a
    /// HEALTHCHECK).
    fn check(&self) -> Option<BoxFuture<'static, crate::health::Outcome>> {
        None
    }
}

/// A launched (or adopted) instance and how the task hears about it.
pub struct Launched {
    pub instance: Box<dyn Instance>,
    /// Resolves once the instance has ended and nothing of it is left running.
    pub exited: oneshot::Receiver<Ended>,
    /// Resolves when the runtime itself knows the service is up (Compose:
    /// `up -d` done and its containers running), with what it is made of.
    /// `None`: the task decides (a process that stays up).
    pub ready: Option<oneshot::Receiver<Parts>>,
    /// While the runtime brings it up (before `ready`): what it is doing
    /// (`pulling`, `building`, `creating`, `starting containers`).
    pub progress: Option<mpsc::UnboundedReceiver<&'static str>>,
    /// When it really started, if earlier than now (adopted instances).
    pub started_at: Option<jiff::Timestamp>,
}

/// Why an instance could not be launched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// It cannot run as configured (a missing program, an unreadable
    /// `env_file`, a broken compose file): a sentence naming the cause.
    #[error("{0}")]
    Spawn(String),
    /// Its runtime cannot be reached now (no Docker engine, no Compose
    /// tool): worth waiting for.
    #[error("{0}")]
    Unavailable(String),
    /// Something already listens on one of its ports: the process (and its
    /// group) when this user can see it.
    #[error("port {port} is already in use")]
    PortInUse { port: u16, pid: Option<u32>, pgid: Option<u32> },
}

impl From<String> for LaunchError {
    fn from(message: String) -> Self {
        LaunchError::Spawn(message)
    }
}

impl From<&str> for LaunchError {
    fn from(message: &str) -> Self {
        LaunchError::Spawn(message.to_string())
    }
}

/// The daemon's own environment that no service or tool it runs may see:
/// its API token, and systemd's notification, watchdog and socket variables.
pub const DAEMON_ONLY_ENV: [&str; 7] =
    ["NANNY_TOKEN", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];

/// Leave [`DAEMON_ONLY_ENV`] out of what `command` inherits.
pub fn scrub_env(command: &mut tokio::process::Command) -> &mut tokio::process::Command {
    for name in DAEMON_ONLY_ENV {
        command.env_remove(name);
    }
    command
}

/// The environment a native service gets: the daemon's, less [`DAEMON_ONLY_ENV`], plus `vars`.
pub fn service_env(vars: BTreeMap<String, String>) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let mut env: BTreeMap<std::ffi::OsString, std::ffi::OsString> =
        std::env::vars_os().filter(|(k, _)| !DAEMON_ONLY_ENV.iter().any(|d| k == d)).collect();
    env.extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
    env.into_iter().collect()
}

/// GPU placement chosen by the arbiter, handed to the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub devices: Devices,
}

/// Which GPUs a service may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Devices {
    /// Every GPU of the machine.
    #[default]
    All,
    /// These GPUs, by index (`0`) or UUID (`GPU-…`, `MIG-…`), as CUDA and
    /// the NVIDIA container toolkit both read them.
    Listed(Vec<String>),
}

impl Devices {
    /// `all`, or a comma-separated list of indices or UUIDs (`0,1`, `GPU-8f…`).
    pub fn parse(text: &str) -> Result<Devices, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("all") {
            return Ok(Devices::All);
        }
        let ids: Vec<String> = text.split(',').map(|id| id.trim().to_string()).collect();
        for id in &ids {
            let uuid = ["GPU-", "MIG-"].iter().any(|p| id.starts_with(p)) && id.len() > 4;
            if !uuid && id.parse::<u32>().is_err() {
                return Err(format!(
                    "GPU devices: `{id}` is neither a GPU index (0, 1, …) nor a UUID (GPU-…, MIG-…); \
                     give `all` or a comma-separated list such as `0,1`"
                ));
            }
        }
        Ok(Devices::Listed(ids))
    }

    /// The environment of a native process. CUDA reads `CUDA_VISIBLE_DEVICES`
    /// as a list of indices or UUIDs (`all` would hide every GPU), so it is
    /// set only for a real list; a service that may use every GPU sees them
    /// all without it.
    pub fn native_env(&self) -> Vec<(&'static str, String)> {
        match self {
            Devices::All => Vec::new(),
            Devices::Listed(ids) => vec![("CUDA_VISIBLE_DEVICES", ids.join(","))],
        }
    }

    /// The environment of a container: the NVIDIA container toolkit maps
    /// the host's GPUs named by `NVIDIA_VISIBLE_DEVICES` into it (numbered
    /// from 0 inside, so `CUDA_VISIBLE_DEVICES` is left to the image).
    pub fn container_env(&self) -> Vec<(&'static str, String)> {
        let value = match self {
            Devices::All => "all".to_string(),
            Devices::Listed(ids) => ids.join(","),
        };
        vec![("NVIDIA_VISIBLE_DEVICES", value)]
    }
}

pub trait Runtime: Send + Sync + 'static {
    /// Start `manifest`'s service, its output going to `logs`.
    fn launch(
        &self,
        manifest: &Manifest,
        gpu: Option<&Placement>,
        logs: Arc<LogStore>,
    ) -> Result<Launched, LaunchError>;

    /// Take over an instance of `manifest` that is already running (started
    /// by a previous daemon or by hand), if the runtime can see one.
    fn adopt(&self, manifest: &Manifest, logs: Arc<LogStore>) -> BoxFuture<'static, Option<Launched>>;

    /// SIGKILL what is left of a process group a previous daemon started,
    /// returning the pids killed. Processes that merely reuse the group id
    /// now are left alone.
    fn kill_leftovers(&self, group: GroupRecord) -> Vec<u32>;

    /// Resolves when the service is started outside the daemon (a Compose
    /// project brought up by hand), so it can be adopted; `None` when that
    /// cannot happen (a native process is only ever started by the daemon).
    fn started_outside(&self, manifest: &Manifest) -> Option<BoxFuture<'static, ()>>;

    /// Remove what a stopped service leaves behind (Compose: `down`, which
    /// keeps volumes and images). Returns what was done.
    fn remove(&self, manifest: &Manifest) -> BoxFuture<'static, Result<String, String>>;

    /// What the runtimes found on this machine, for `GET /health`.
    fn describe(&self) -> BoxFuture<'static, RuntimeInfo>;

    /// What running instances use now (CPU time so far, resident memory),
    /// by service; one the runtime cannot measure is left out.
    fn measure(&self, instances: Vec<(String, Parts)>) -> BoxFuture<'static, HashMap<String, Reading>>;

    /// The service whose container runs host process `pid`, if any (a
    /// native service's is found by its process group instead).
    fn container_owner(&self, _pid: u32) -> Option<String> {
        None
    }
}

/// What the daemon reports about its runtimes.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RuntimeInfo {
    pub docker: compose::EngineInfo,
    pub compose: compose::ToolInfo,
}

/// The runtime of every service: native processes or Compose projects,
/// chosen by the manifest.
pub struct Runtimes {
    pub native: Native,
    pub compose: compose::Compose,
}

impl Runtime for Runtimes {
    fn launch(
        &self,
        manifest: &Manifest,
        gpu: Option<&Placement>,
        logs: Arc<LogStore>,
    ) -> Result<Launched, LaunchError> {
        match manifest.runtime {
            Kind::Native { .. } => self.native.launch(manifest, gpu, logs),
            Kind::Compose { .. } => self.compose.launch(manifest, gpu, logs),
        }
    }

    fn adopt(&self, manifest: &Manifest, logs: Arc<LogStore>) -> BoxFuture<'static, Option<Launched>> {
        match manifest.runtime {
            // A native process never outlives its daemon (PDEATHSIG).
            Kind::Native { .. } => Box::pin(async { None }),
            Kind::Compose { .. } => self.compose.adopt(manifest, logs),
        }
    }

    fn kill_leftovers(&self, group: GroupRecord) -> Vec<u32> {
        self.native.kill_leftovers(group)
    }

    fn started_outside(&self, manifest: &Manifest) -> Option<BoxFuture<'static, ()>> {
        match manifest.runtime {
            Kind::Native { .. } => None,
            Kind::Compose { .. } => Some(self.compose.started_outside(manifest)),
        }
    }

    fn remove(&self, manifest: &Manifest) -> BoxFuture<'static, Result<String, String>> {
        match manifest.runtime {
            Kind::Native { .. } => Box::pin(async { Ok("a native service leaves nothing to remove".to_string()) }),
            Kind::Compose { .. } => {
                let (compose, manifest) = (self.compose.clone(), manifest.clone());
                Box::pin(async move { compose.down(&manifest).await })
            }
        }
    }

    fn measure(&self, instances: Vec<(String, Parts)>) -> BoxFuture<'static, HashMap<String, Reading>> {
        let (groups, projects): (Vec<_>, Vec<_>) = instances.into_iter().partition(|(_, parts)| parts.pid.is_some());
        let groups: Vec<(String, u32)> = groups.into_iter().filter_map(|(name, p)| Some((name, p.pid?))).collect();
        let projects: Vec<(String, Vec<String>)> = projects.into_iter().map(|(name, p)| (name, p.containers)).collect();
        let compose = self.compose.clone();
        Box::pin(async move {
            let native = tokio::task::spawn_blocking(move || native::measure(&groups));
            let mut readings = compose.measure(projects).await;
            readings.extend(native.await.unwrap_or_default());
            readings
        })
    }

    fn container_owner(&self, pid: u32) -> Option<String> {
        self.compose.owner_of(pid)
    }

    fn describe(&self) -> BoxFuture<'static, RuntimeInfo> {
        let compose = self.compose.clone();
        Box::pin(async move {
            let (docker, compose) = tokio::join!(compose.engine_info(), compose.tool_info());
            RuntimeInfo { docker, compose }
        })
    }
}
