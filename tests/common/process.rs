//! Processes of services and of the fixture: their pids, whether they are alive, killing them.

use std::fs;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use super::wait_until;

/// The `pid` of a service status (panics if it has none).
pub fn pid_of(st: &Value) -> i32 {
    st["pid"].as_i64().unwrap_or_else(|| panic!("status without pid: {st}")) as i32
}

/// The state letter from /proc/PID/stat (R, S, Z, ...), None if the process does not exist.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ..." — comm may contain spaces/parens, so split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// True if the process exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Ok(()) => !matches!(proc_state(pid), Some('Z') | Some('X') | None),
        Err(_) => false,
    }
}

/// SIGKILLs a service's process (panics if that fails).
pub fn sigkill(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("SIGKILL the service process");
}

/// Reads a pid written by the fixture (`--pidfile`, `--grandchild`), waiting for it to appear.
pub async fn read_pidfile(path: &Path) -> i32 {
    let mut pid = None;
    wait_until(Duration::from_secs(20), &format!("pidfile {} is written", path.display()), || {
        pid = fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<i32>().ok());
        let ok = pid.is_some();
        async move { ok }
    })
    .await;
    pid.unwrap()
}

pub async fn wait_pid_gone(pid: i32, timeout: Duration, what: &str) {
    wait_until(timeout, &format!("pid {pid} ({what}) is gone"), || async move { !pid_alive(pid) }).await;
}

/// SIGKILLs the listed pids when dropped (processes a test may leave behind on failure).
#[derive(Default)]
pub struct KillOnDrop(pub Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if pid > 0 && pid_alive(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// The live (not zombie) processes whose process group is one of `groups`: (pid, pgid, command
/// line), from a walk of /proc.
pub fn group_members(groups: &std::collections::HashSet<i32>) -> Vec<(i32, i32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // "pid (comm) S ppid pgrp ...": split after the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let (Some(state), Some(pgid)) = (fields.first(), fields.get(2).and_then(|s| s.parse::<i32>().ok())) else {
            continue;
        };
        if groups.contains(&pgid) && !matches!(*state, "Z" | "X") {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().to_string();
            out.push((pid, pgid, cmdline));
        }
    }
    out
}
