//! Native processes: one process group per service, started by [`spawn`] (with
//! `PR_SET_PDEATHSIG`, so a service dies with a daemon that is killed outright),
//! output piped into the service's [`LogStore`], exits awaited on a pidfd (never
//! polled).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, SysconfVar, sysconf};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use super::notify::NotifySocket;
use super::spawn;
use super::{Ended, ExitInfo, GroupRecord, Instance, LaunchError, Launched, Parts, Placement};
use crate::logs::{Batch, LineSplitter, LogStore, Stream};
use crate::manifest::{Manifest, Ready, Runtime as Kind};
use crate::usage::Reading;

pub struct Native;

impl Native {
    pub fn launch(
        &self,
        manifest: &Manifest,
        gpu: Option<&Placement>,
        logs: Arc<LogStore>,
    ) -> Result<Launched, LaunchError> {
        let Kind::Native { command, working_dir, env, env_file } = &manifest.runtime else {
            return Err(format!("service '{}' is not a native service", manifest.name).into());
        };
        let (program, args) = command.split_first().ok_or("empty command")?;
        for port in crate::ports::of_manifest(manifest) {
            if let Some(held) = crate::ports::listener(port) {
                let pgid = held.pid.and_then(proc_stat).map(|s| s.pgrp);
                return Err(LaunchError::PortInUse { port, pid: held.pid, pgid });
            }
        }
        let mut vars = BTreeMap::new();
        if let Some(gpu) = gpu {
            vars.extend(gpu.devices.native_env().into_iter().map(|(k, v)| (k.to_string(), v)));
        }
        // Read at every start, so edits apply on restart; `env` overrides it.
        if let Some(path) = env_file {
            let iter =
                dotenvy::from_path_iter(path).map_err(|e| format!("cannot read env_file {}: {e}", path.display()))?;
            for item in iter {
                let (k, v) = item.map_err(|e| format!("env_file {}: {e}", path.display()))?;
                vars.insert(k, v);
            }
        }
        vars.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));

        let notify = match manifest.ready {
            Some(Ready::Notify) => Some(
                NotifySocket::bind(&manifest.name)
                    .map_err(|e| format!("cannot create the notification socket: {e}"))?,
            ),
            None => None,
        };
        let mut env = super::service_env(vars);
        if let Some(notify) = &notify {
            env.push(("NOTIFY_SOCKET".into(), notify.env.clone().into()));
        }
        let spec = spawn::Spec { program, args, env, cwd: working_dir };
        let spawned = spawn::spawn(spec).map_err(|e| format!("cannot run `{program}`: {e}"))?;
        let pid = spawned.pid;
        let start_ticks = proc_stat(pid).map(|s| s.start_ticks).unwrap_or(0);
        logs.push(Stream::Nanny, &format!("started `{}` (pid {pid})", command.join(" ")));
        let mut output = Output::new(spawned.stdout, spawned.stderr, logs.clone())
            .map_err(|e| format!("cannot read the output: {e}"))?;
        let (mut ready, mut progress, mut listening) = (None, None, None);
        if let Some(notify) = notify {
            let (ready_tx, ready_rx) = oneshot::channel();
            let (progress_tx, progress_rx) = mpsc::unbounded_channel();
            let _ = progress_tx.send("waiting for READY=1");
            listening = Some(tokio::spawn(notify.serve(pid, ready_tx, logs.clone())).abort_handle());
            (ready, progress) = (Some(ready_rx), Some(progress_rx));
        }
        let (tx, exited) = oneshot::channel();
        let grace = Arc::new(Mutex::new(None));
        let stopping = grace.clone();
        // One task per instance: it drains the output all along, and reports the end.
        tokio::spawn(async move {
            let info = match output.alongside(spawned.exit.wait()).await {
                Ok(info) => info,
                Err(e) => {
                    tracing::error!(pid, "waiting for child failed: {e}");
                    ExitInfo { code: None, signal: None }
                }
            };
            // During a stop, the rest of the group gets what is left of the
            // stop timeout to finish (a wrapper script's child, say); then, or
            // at once after a crash, whatever the leader left goes with it.
            let grace_until = *stopping.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(until) = grace_until {
                output.alongside(wait_group_gone(pid, until)).await;
            }
            // Nothing is reported (and no GPU released) while a member lives.
            if signal_group(pid, Signal::SIGKILL) {
                output.alongside(wait_group_gone(pid, Instant::now() + GROUP_EXIT_WAIT)).await;
            }
            // What the group wrote is in the log before its end is reported (a failed start's
            // answer quotes its last lines); a pipe still held by a process that left the
            // group is not waited for long.
            let _ = tokio::time::timeout(OUTPUT_DRAIN_WAIT, output.until_ended()).await;
            if let Some(listening) = listening {
                listening.abort();
            }
            let _ = tx.send(Ended::exited(info));
        });
        Ok(Launched {
            instance: Box::new(ProcessGroup { pid, start_ticks, grace }),
            exited,
            ready,
            progress,
            started_at: None,
        })
    }

    pub fn kill_leftovers(&self, group: GroupRecord) -> Vec<u32> {
        // Recorded before a reboot: nothing of it survived, and its ids may be anyone's now.
        if !group.boot_id.is_empty() && group.boot_id != boot_id() {
            return Vec::new();
        }
        // The daemon that recorded it still lives: the group is its own, not a leftover.
        if group.daemon_pid != 0
            && group.daemon_pid != std::process::id()
            && proc_stat(group.daemon_pid).is_some_and(|d| d.start_ticks == group.daemon_start_ticks)
        {
            return Vec::new();
        }
        // A live process with the leader's pid but another start time means
        // the group id now belongs to someone else: leave it alone.
        if let Some(leader) = proc_stat(group.pgid)
            && leader.start_ticks != group.start_ticks
        {
            return Vec::new();
        }
        // Members that started no earlier than the leader did: its
        // descendants, not a newcomer with a reused id.
        group_members(group.pgid)
            .into_iter()
            .filter(|(_, stat)| stat.start_ticks >= group.start_ticks)
            .filter(|(pid, _)| nix::sys::signal::kill(Pid::from_raw(*pid as i32), Signal::SIGKILL).is_ok())
            .map(|(pid, _)| pid)
            .collect()
    }
}

/// This boot of the machine (empty where the kernel does not say).
fn boot_id() -> &'static str {
    static BOOT_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT_ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
    })
}

/// How long an ended group's output pipes may take to reach their end before the exit is
/// reported anyway (once every member is gone they end at once, unless a process that left the
/// group still holds one).
const OUTPUT_DRAIN_WAIT: Duration = Duration::from_secs(1);
/// How long to wait for a SIGKILLed group to be gone before reporting the exit anyway.
const GROUP_EXIT_WAIT: Duration = Duration::from_secs(5);
/// How often to look while waiting for a group to be gone: at first soon
/// (a killed group is usually gone within milliseconds), then less often.
const GROUP_EXIT_POLL_FIRST: Duration = Duration::from_millis(1);
const GROUP_EXIT_POLL_MAX: Duration = Duration::from_millis(100);

/// Every process the kernel lists now, with its `/proc/PID/stat` fields.
fn processes() -> impl Iterator<Item = (u32, ProcStat)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, proc_stat(pid)?)))
}

/// The live (not zombie) processes of group `pgid`.
fn group_members(pgid: u32) -> Vec<(u32, ProcStat)> {
    processes().filter(|(_, stat)| stat.pgrp == pgid && stat.state != 'Z').collect()
}

/// Wait until no process of group `pgid` is left, or `until`. Processes
/// other than the leader are not our children, so no exit notification
/// exists for them; this bounded wait runs only while a service ends.
async fn wait_group_gone(pgid: u32, until: Instant) {
    let mut poll = GROUP_EXIT_POLL_FIRST;
    while group_alive(pgid).await && Instant::now() < until {
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(GROUP_EXIT_POLL_MAX);
    }
}

/// Whether a live (not zombie) member of group `pgid` is left. One signal-0
/// syscall answers "none at all"; only when something (maybe just a zombie
/// not yet reaped) is left is `/proc` scanned, on a blocking thread.
async fn group_alive(pgid: u32) -> bool {
    if killpg(Pid::from_raw(pgid as i32), None) == Err(nix::errno::Errno::ESRCH) {
        return false;
    }
    tokio::task::spawn_blocking(move || !group_members(pgid).is_empty()).await.unwrap_or(false)
}

/// A running native service: a process group led by `pid`.
struct ProcessGroup {
    pid: u32,
    start_ticks: u64,
    /// Set by `stop`: until when the group may take to stop gracefully.
    grace: Arc<Mutex<Option<Instant>>>,
}

impl Instance for ProcessGroup {
    fn parts(&self) -> Parts {
        Parts { pid: Some(self.pid), containers: Vec::new() }
    }

    fn stop(&self, signal: Signal, timeout: Duration) {
        *self.grace.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + timeout);
        signal_group(self.pid, signal);
    }

    fn kill(&self) {
        signal_group(self.pid, Signal::SIGKILL);
    }

    fn group(&self) -> Option<GroupRecord> {
        let daemon_pid = std::process::id();
        Some(GroupRecord {
            pgid: self.pid,
            start_ticks: self.start_ticks,
            boot_id: boot_id().to_string(),
            daemon_pid,
            daemon_start_ticks: proc_stat(daemon_pid).map(|s| s.start_ticks).unwrap_or(0),
        })
    }
}

/// Signal every process of a group; returns whether the group still had
/// members (a group that is gone is not an error).
fn signal_group(pgid: u32, signal: Signal) -> bool {
    match killpg(Pid::from_raw(pgid as i32), signal) {
        Ok(()) => true,
        Err(nix::errno::Errno::ESRCH) => false,
        Err(e) => {
            tracing::warn!("cannot send {signal} to process group {pgid}: {e}");
            true
        }
    }
}

/// The read buffer of a pipe starts this small (most services say little)...
const PUMP_FIRST: usize = 1024;
/// ...and grows, while reads fill it, up to a pipe's default size...
const PIPE_BYTES: usize = 64 * 1024;
/// ...and beyond, the pipe with it, for a service that keeps it full (the most an
/// unprivileged process may ask of a pipe by default).
const PUMP_BUSY: usize = 1024 * 1024;

/// A service's stdout and stderr, drained into its log by the instance's task, alongside
/// whatever else it waits for.
struct Output {
    pipes: [Option<Pump>; 2],
    logs: Arc<LogStore>,
}

/// One pipe, read as fast as it fills. Its read buffer is held only while there is something
/// to read: a quiet service costs no buffer.
struct Pump {
    pipe: pipe::Receiver,
    stream: Stream,
    lines: LineSplitter,
    size: usize,
}

impl Output {
    fn new(stdout: OwnedFd, stderr: OwnedFd, logs: Arc<LogStore>) -> std::io::Result<Output> {
        let pump = |fd, stream| -> std::io::Result<Option<Pump>> {
            let pipe = pipe::Receiver::from_owned_fd(fd)?;
            Ok(Some(Pump { pipe, stream, lines: LineSplitter::default(), size: PUMP_FIRST }))
        };
        Ok(Output { pipes: [pump(stdout, Stream::Stdout)?, pump(stderr, Stream::Stderr)?], logs })
    }

    /// Wait for `work`, draining the pipes meanwhile.
    async fn alongside<T>(&mut self, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        while self.pipes.iter().any(Option::is_some) {
            tokio::select! {
                biased;
                done = &mut work => return done,
                () = self.step() => {}
            }
        }
        work.await
    }

    /// Drain the pipes until both have ended.
    async fn until_ended(&mut self) {
        while self.pipes.iter().any(Option::is_some) {
            self.step().await;
        }
    }

    /// Take what one pipe has once it has some (or has ended).
    async fn step(&mut self) {
        let logs = &self.logs;
        let [out, err] = &mut self.pipes;
        let (which, open) = tokio::select! {
            open = async { out.as_mut().expect("an open pipe").drain(logs).await }, if out.is_some() => (0, open),
            open = async { err.as_mut().expect("an open pipe").drain(logs).await }, if err.is_some() => (1, open),
            else => return,
        };
        if !open {
            self.pipes[which] = None;
        }
    }
}

impl Pump {
    /// Wait for output, then take all there is; false once the pipe has ended (its unfinished
    /// last line logged).
    async fn drain(&mut self, logs: &LogStore) -> bool {
        // Not more than the log files can take: a flood waits for the disk.
        crate::logs::room().await;
        if self.pipe.readable().await.is_ok() {
            let mut buf = Vec::new();
            loop {
                buf.clear();
                buf.reserve(self.size);
                match self.pipe.try_read_buf(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let mut batch = Batch::new(self.stream, 0);
                        batch.lines_of(&buf, &mut self.lines);
                        logs.push_batch(batch);
                        if crate::logs::backlogged() {
                            return true;
                        }
                        if n == self.size && self.size < PUMP_BUSY {
                            // A full read: the service writes faster than it is read. A bigger
                            // buffer, and at its limit a bigger pipe, halve the wake-ups each time.
                            self.size *= 4;
                            if self.size > PIPE_BYTES {
                                let size = nix::fcntl::FcntlArg::F_SETPIPE_SZ(PUMP_BUSY as i32);
                                let _ = nix::fcntl::fcntl(&self.pipe, size);
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                    Err(_) => break,
                }
            }
        }
        if let Some(last) = self.lines.finish() {
            logs.push(self.stream, &last);
        }
        false
    }
}

/// The fields of `/proc/PID/stat` the runtime needs.
struct ProcStat {
    state: char,
    pgrp: u32,
    start_ticks: u64,
    /// User plus system time, in clock ticks.
    cpu_ticks: u64,
    rss_pages: u64,
}

/// CPU time and resident memory of each service's process group (leader
/// pid = group id), summed over its members: one pass over `/proc`.
pub fn measure(groups: &[(String, u32)]) -> HashMap<String, Reading> {
    let ticks_per_second = sysconf(SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1) as u64;
    let page_bytes = sysconf(SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    let by_group: HashMap<u32, &str> = groups.iter().map(|(name, pgid)| (*pgid, name.as_str())).collect();
    let mut totals: HashMap<u32, (u64, u64)> = HashMap::new();
    for (_, stat) in processes().filter(|(_, s)| by_group.contains_key(&s.pgrp)) {
        let total = totals.entry(stat.pgrp).or_default();
        total.0 += stat.cpu_ticks;
        total.1 += stat.rss_pages;
    }
    totals
        .into_iter()
        .map(|(pgid, (ticks, pages))| {
            let cpu = Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / ticks_per_second);
            (by_group[&pgid].to_string(), Reading { cpu, memory_bytes: pages * page_bytes })
        })
        .collect()
}

/// The process group of `pid`, if it is still there.
pub fn group_of(pid: u32) -> Option<u32> {
    let pid = i32::try_from(pid).ok()?;
    nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).ok().map(|group| group.as_raw() as u32)
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
        cpu_ticks: fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?,
        rss_pages: fields.get(21)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn leftovers_are_killed_only_from_this_boot_and_only_their_own_group() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep").arg("100").process_group(0).spawn().unwrap();
        let pid = child.id();
        let ticks = super::proc_stat(pid).unwrap().start_ticks;
        // A daemon that is alive (this test's parent) and one that is gone.
        let parent = nix::unistd::getppid().as_raw() as u32;
        let parent_ticks = super::proc_stat(parent).unwrap().start_ticks;
        let record = |start_ticks, boot_id: &str, daemon_start_ticks| super::GroupRecord {
            pgid: pid,
            start_ticks,
            boot_id: boot_id.into(),
            daemon_pid: parent,
            daemon_start_ticks,
        };
        let boot = super::boot_id();
        assert!(super::Native.kill_leftovers(record(ticks, "an-earlier-boot", 0)).is_empty(), "another boot's record");
        assert!(super::Native.kill_leftovers(record(ticks + 1, boot, 0)).is_empty(), "the id was reused");
        assert!(super::Native.kill_leftovers(record(ticks, boot, parent_ticks)).is_empty(), "its daemon is alive");
        assert_eq!(super::Native.kill_leftovers(record(ticks, boot, parent_ticks + 1)), vec![pid]);
        child.wait().unwrap();
    }

    #[test]
    fn reads_own_stat() {
        let me = super::proc_stat(std::process::id()).expect("own /proc stat");
        assert!(me.start_ticks > 0);
        assert_eq!(me.pgrp, nix::unistd::getpgrp().as_raw() as u32);
    }
}
