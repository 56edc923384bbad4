//! The seam between decisions and processes: everything that spawns or
//! signals a service's processes goes through [`Runtime`]. The service task
//! only ever talks to this trait, so it can be driven by a fake.

mod native;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::logs::LogStore;

pub use native::Native;

/// What to run: already resolved (env file read, paths absolute).
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub argv: Vec<String>,
    pub working_dir: PathBuf,
    pub env: BTreeMap<String, String>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExitInfo {
    pub code: Option<i32>,
    #[serde(serialize_with = "ser_signal")]
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

/// A process that was started. Its group id equals its pid.
pub struct Spawned {
    pub pid: u32,
    /// When it started, in clock ticks since boot; with the pid, this
    /// identifies the process even after its pid is reused.
    pub start_ticks: u64,
    /// Resolves when the process has exited and been reaped.
    pub exited: oneshot::Receiver<ExitInfo>,
}

pub trait Runtime: Send + Sync + 'static {
    /// Start `spec` in a new process group, its output going to `logs`.
    fn spawn(&self, spec: &SpawnSpec, logs: Arc<LogStore>) -> io::Result<Spawned>;

    /// Send `signal` to every process of the group `pgid`. A group that no
    /// longer exists is not an error.
    fn signal_group(&self, pgid: u32, signal: Signal) -> io::Result<()>;

    /// SIGKILL what is left of a process group a previous daemon started
    /// (`start_ticks` of its leader), returning the pids killed. Processes
    /// that merely reuse the group id now are left alone.
    fn kill_leftovers(&self, pgid: u32, start_ticks: u64) -> Vec<u32>;
}
