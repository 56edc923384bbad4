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
        let (program, args) = spec
            .argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
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
        let mut child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run `{program}`: {e}")))?;
        let pid = child.id().expect("a just-spawned child has a pid");
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump(out, Stream::Stdout, logs.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump(err, Stream::Stderr, logs));
        }
        let (tx, exited) = oneshot::channel();
        tokio::spawn(async move {
            let info = match child.wait().await {
                Ok(status) => ExitInfo {
                    code: status.code(),
                    signal: status.signal().and_then(|s| Signal::try_from(s).ok()),
                },
                Err(e) => {
                    tracing::error!(pid, "waiting for child failed: {e}");
                    ExitInfo {
                        code: None,
                        signal: None,
                    }
                }
            };
            let _ = tx.send(info);
        });
        Ok(Spawned { pid, exited })
    }

    fn signal_group(&self, pgid: u32, signal: Signal) -> io::Result<()> {
        match killpg(Pid::from_raw(pgid as i32), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(io::Error::from(e)),
        }
    }
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
