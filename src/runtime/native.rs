//! Native processes: one process group per service, output piped into the
//! service's [`LogStore`], exits observed by tokio's child reaper (SIGCHLD
//! driven, never polled), and `PR_SET_PDEATHSIG` so a service dies with a
//! daemon that is killed outright.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::oneshot;

use super::{ExitInfo, Runtime, SpawnSpec, Spawned};
use crate::logs::{self, LogStore, Stream};

pub struct Native;

impl Runtime for Native {
    fn spawn(&self, spec: &SpawnSpec, logs: Arc<LogStore>) -> io::Result<Spawned> {
        let (program, args) =
            spec.argv.split_first().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(&spec.working_dir)
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let daemon_pid = std::process::id();
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) run
        // between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // The daemon may have died before prctl took effect.
                if nix::unistd::getppid().as_raw() as u32 != daemon_pid {
                    nix::libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| io::Error::new(e.kind(), format!("cannot run `{program}`: {e}")))?;
        let pid = child.id().expect("a just-spawned child has a pid");
        let start_ticks = proc_stat(pid).map(|s| s.start_ticks).unwrap_or(0);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump(out, Stream::Stdout, logs.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump(err, Stream::Stderr, logs));
        }
        let (tx, exited) = oneshot::channel();
        tokio::spawn(async move {
            let info = match child.wait().await {
                Ok(status) => {
                    ExitInfo { code: status.code(), signal: status.signal().and_then(|s| Signal::try_from(s).ok()) }
                }
                Err(e) => {
                    tracing::error!(pid, "waiting for child failed: {e}");
                    ExitInfo { code: None, signal: None }
                }
            };
            let _ = tx.send(info);
        });
        Ok(Spawned { pid, start_ticks, exited })
    }

    fn signal_group(&self, pgid: u32, signal: Signal) -> io::Result<()> {
        match killpg(Pid::from_raw(pgid as i32), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    fn kill_leftovers(&self, pgid: u32, start_ticks: u64) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        let mut killed = Vec::new();
        for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
            // Members of the group that started no earlier than its leader
            // did: the leader's descendants, not a newcomer with a reused id.
            let Some(stat) = proc_stat(pid) else { continue };
            if stat.pgrp == pgid
                && stat.start_ticks >= start_ticks
                && stat.state != 'Z'
                && nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok()
            {
                killed.push(pid);
            }
        }
        killed
    }
}

/// The fields of `/proc/PID/stat` the runtime needs.
struct ProcStat {
    state: char,
    pgrp: u32,
    start_ticks: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it are plain.
    let after_name = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// Drain one pipe into the log store as fast as it fills.
async fn pump(mut pipe: impl AsyncRead + Unpin, stream: Stream, logs: Arc<LogStore>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut partial = Vec::new();
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let lines = logs::split_lines(&mut partial, &buf[..n]);
                logs.push_many(stream, lines.iter().map(String::as_str));
            }
        }
    }
    if !partial.is_empty() {
        logs.push(stream, &logs::take_line(&mut partial));
    }
}
