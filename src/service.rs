//! One task per service: the only code that changes a service's state.
//!
//! The task owns the service's lifecycle (state, process, timers, probes) and
//! reacts to inputs, commands from the daemon, process exits and probe
//! results, one at a time. Everyone else reads [`Snapshot`]s from a `watch`
//! channel. Exits arrive from the runtime as they happen; probes run on
//! their own tasks so a hung endpoint never blocks a stop.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};

use crate::events::EventKind;
use crate::gpu::Arbiter;
use futures_util::future::BoxFuture;

use crate::health::{self, Probe, ProbeResult};
use crate::lifecycle::{self, Policy, RestartHistory, State, Verdict};
use crate::logs::{LogStore, Stream};
use crate::manifest::Manifest;
use crate::runtime::{Ended, ExitInfo, Instance, Launched, Parts, Runtime};
use crate::store::{RecordedProcess, Store};

/// How often a starting service is probed until its first healthy answer.
pub const STARTUP_PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// A service without a health check counts as started once it has stayed up
/// this long (capped by its `health_timeout`), like supervisord's `startsecs`.
pub const SETTLE_TIME: Duration = Duration::from_secs(1);
/// How long a task looks for an instance to adopt before it gives up.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(10);
/// After a start outside the daemon: how many looks for all of it running,
/// and how far apart.
const ADOPT_TRIES: usize = 10;
const ADOPT_RETRY: Duration = Duration::from_millis(300);
/// How many log lines a failed start carries back to the caller.
const FAILURE_LOG_LINES: usize = 20;

/// Why a start did not end with the service running.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    #[error("GPU service '{holder}' is already running")]
    GpuBusy { holder: String },
    #[error("cannot start service '{name}': {message}")]
    Spawn { name: String, message: String, logs: Vec<String> },
    #[error("service '{name}' {}", describe_failed_start(exit, reason.as_deref()))]
    Exited { name: String, exit: ExitInfo, reason: Option<String>, logs: Vec<String> },
    #[error("service '{name}' did not become healthy within {timeout:.1}s (last check: {last_check})")]
    HealthTimeout { name: String, timeout: f64, last_check: String, logs: Vec<String> },
    #[error("service '{name}' was stopped before it became healthy")]
    Interrupted { name: String },
    #[error("service '{name}' was removed")]
    Removed { name: String },
}

/// `exited with code 1 while starting`, or the runtime's reason when the
/// instance never ran (`could not start: docker-compose up -d failed …`).
fn describe_failed_start(exit: &ExitInfo, reason: Option<&str>) -> String {
    match reason {
        Some(reason) if exit.code.is_none() && exit.signal.is_none() => format!("could not start: {reason}"),
        Some(reason) => format!("{exit} while starting: {reason}"),
        None => format!("{exit} while starting"),
    }
}

impl StartError {
    pub fn logs(&self) -> &[String] {
        match self {
            StartError::Spawn { logs, .. }
            | StartError::Exited { logs, .. }
            | StartError::HealthTimeout { logs, .. } => logs,
            _ => &[],
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ExitRecord {
    #[serde(flatten)]
    pub exit: ExitInfo,
    pub at: jiff::Timestamp,
}

/// What everyone but the task sees of a service.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The manifest the current (or next) process runs with.
    pub manifest: Arc<Manifest>,
    /// A newer manifest found by rediscover, applied at the next start.
    pub pending: Option<Arc<Manifest>>,
    pub state: State,
    pub pid: Option<u32>,
    /// Containers of a Compose service.
    pub containers: Vec<String>,
    /// When the current process was spawned.
    pub started_at: Option<(Instant, jiff::Timestamp)>,
    pub restarts: u32,
    pub last_exit: Option<ExitRecord>,
    pub last_health: Option<ProbeResult>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

impl Snapshot {
    /// The configuration as it is on disk now.
    pub fn latest_manifest(&self) -> &Arc<Manifest> {
        self.pending.as_ref().unwrap_or(&self.manifest)
    }
}

enum Input {
    Start(oneshot::Sender<Result<(), StartError>>),
    Stop(oneshot::Sender<()>),
    /// Stop, then end the task (service removed, or daemon shutting down).
    Shutdown(oneshot::Sender<()>),
    Update(Arc<Manifest>),
    Exited {
        generation: u64,
        ended: Ended,
    },
    /// The service was started outside the daemon (watch number `watch`).
    StartedOutside {
        watch: u64,
    },
    /// An instance found running outside the daemon, to take over.
    Adopt(Launched),
    /// Looking for it found nothing to take over: watch again.
    NothingToAdopt,
    /// The runtime reports the instance up (Compose: `up -d` finished).
    Ready {
        generation: u64,
        parts: Parts,
    },
    Probed {
        generation: u64,
        result: ProbeResult,
    },
}

/// The daemon's handle on a service task. Cheap to clone.
#[derive(Clone)]
pub struct ServiceHandle {
    tx: mpsc::UnboundedSender<Input>,
    status: watch::Receiver<Snapshot>,
    pub logs: Arc<LogStore>,
}

impl ServiceHandle {
    pub fn spawn(manifest: Arc<Manifest>, shared: Shared, logs: Arc<LogStore>) -> ServiceHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let snapshot = Snapshot {
            manifest,
            pending: None,
            state: State::Stopped,
            pid: None,
            containers: Vec::new(),
            started_at: None,
            restarts: 0,
            last_exit: None,
            last_health: None,
            consecutive_failures: 0,
            last_error: None,
        };
        let (status_tx, status) = watch::channel(snapshot.clone());
        let task = Task {
            snap: snapshot,
            shared,
            logs: logs.clone(),
            rx,
            tx: tx.clone(),
            status: status_tx,
            generation: 0,
            start_waiters: Vec::new(),
            stop_waiters: Vec::new(),
            deadline: None,
            next_probe: None,
            probe_in_flight: false,
            after_stop: AfterStop::Rest,
            failure: None,
            history: RestartHistory::default(),
            automatic: false,
            instance: None,
            adopted: false,
            outside: None,
            watch: 0,
            awaits_ready: false,
            running_since: None,
            finished: false,
        };
        tokio::spawn(task.run());
        ServiceHandle { tx, status, logs }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.status.borrow().clone()
    }

    /// A receiver of every new snapshot, to wait for a state.
    pub fn watch(&self) -> watch::Receiver<Snapshot> {
        self.status.clone()
    }

    /// Start the service; resolves once it is running or the start failed.
    pub async fn start(&self) -> Result<(), StartError> {
        let (reply, rx) = oneshot::channel();
        let name = self.status.borrow().manifest.name.clone();
        if self.tx.send(Input::Start(reply)).is_err() {
            return Err(StartError::Removed { name });
        }
        rx.await.unwrap_or(Err(StartError::Removed { name }))
    }

    /// Stop the service; resolves once none of its processes is left.
    pub async fn stop(&self) {
        self.ask(Input::Stop).await
    }

    /// Stop the service and end its task.
    pub async fn shutdown(&self) {
        self.ask(Input::Shutdown).await
    }

    pub fn update(&self, manifest: Arc<Manifest>) {
        let _ = self.tx.send(Input::Update(manifest));
    }

    async fn ask(&self, input: impl FnOnce(oneshot::Sender<()>) -> Input) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(input(reply)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// What every service task shares with the daemon.
#[derive(Clone)]
pub struct Shared {
    pub runtime: Arc<dyn Runtime>,
    pub arbiter: Arc<Arbiter>,
    pub http: reqwest::Client,
    pub store: Store,
}

/// What happens once a stop completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    Rest,
    Start,
    EndTask,
    /// The task stopped an unhealthy process: the restart policy decides.
    Recover,
}

struct Task {
    snap: Snapshot,
    shared: Shared,
    logs: Arc<LogStore>,
    rx: mpsc::UnboundedReceiver<Input>,
    tx: mpsc::UnboundedSender<Input>,
    status: watch::Sender<Snapshot>,
    /// Incremented per spawned process; stale exits and probes are ignored.
    generation: u64,
    start_waiters: Vec<oneshot::Sender<Result<(), StartError>>>,
    stop_waiters: Vec<oneshot::Sender<()>>,
    /// Starting: health timeout (or settle time). Stopping: when to SIGKILL.
    /// Backoff: when to start again.
    deadline: Option<Instant>,
    next_probe: Option<Instant>,
    probe_in_flight: bool,
    after_stop: AfterStop,
    /// Set when the task stops a process because its start failed.
    failure: Option<StartError>,
    history: RestartHistory,
    /// Whether the current process was started by the restart policy.
    automatic: bool,
    /// The running instance (process group or Compose project).
    instance: Option<Box<dyn Instance>>,
    /// Whether the instance was adopted rather than started by this task.
    adopted: bool,
    /// While at rest: the watch for a start outside the daemon, and its number.
    outside: Option<tokio::task::AbortHandle>,
    watch: u64,
    /// Whether the runtime is yet to say the instance is up (`Input::Ready`);
    /// until it has, a passing check does not make the service running.
    awaits_ready: bool,
    /// When the current process was first seen healthy.
    running_since: Option<Instant>,
    finished: bool,
}

impl Task {
    async fn run(mut self) {
        // An engine that does not answer must not keep the task from its inputs.
        let adopted =
            tokio::time::timeout(ADOPT_TIMEOUT, self.shared.runtime.adopt(&self.snap.manifest, self.logs.clone()));
        if let Ok(Some(launched)) = adopted.await {
            self.adopt(launched);
            self.status.send_replace(self.snap.clone());
        } else {
            self.watch_outside();
        }
        while !self.finished {
            let deadline = self.deadline;
            let next_probe = self.next_probe.filter(|_| !self.probe_in_flight);
            tokio::select! {
                Some(input) = self.rx.recv() => self.handle(input),
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => self.on_deadline(),
                _ = sleep_until(next_probe.unwrap_or_else(Instant::now)), if next_probe.is_some() => self.launch_probe(),
            }
            self.status.send_replace(self.snap.clone());
        }
        if let Some(watch) = self.outside.take() {
            watch.abort();
        }
    }

    fn name(&self) -> &str {
        &self.snap.manifest.name
    }

    fn emit(&self, kind: EventKind) {
        self.shared.store.emit(Some(&self.snap.manifest.name), kind);
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Start(reply) => self.on_start(reply),
            Input::Stop(reply) => self.on_stop(reply, AfterStop::Rest),
            Input::Shutdown(reply) => self.on_stop(reply, AfterStop::EndTask),
            Input::Update(manifest) => {
                if self.snap.state.has_process() {
                    self.snap.pending = Some(manifest);
                } else {
                    self.snap.manifest = manifest;
                    self.snap.pending = None;
                }
            }
            Input::Exited { generation, ended } if generation == self.generation => self.on_exit(ended),
            Input::Probed { generation, result } if generation == self.generation => self.on_probe(result),
            Input::Ready { generation, parts } if generation == self.generation => self.on_ready(parts),
            Input::StartedOutside { watch } if watch == self.watch && self.at_rest() => self.look_for_outside_start(),
            Input::Adopt(launched) if self.at_rest() => self.adopt(launched),
            Input::NothingToAdopt if self.at_rest() => self.watch_outside(),
            // Not at rest any more: a dropped `Launched` is abandoned, not stopped.
            Input::StartedOutside { .. } | Input::Adopt(_) | Input::NothingToAdopt => {}
            Input::Exited { .. } | Input::Probed { .. } | Input::Ready { .. } => {}
        }
    }

    fn set_state(&mut self, to: State) {
        let from = self.snap.state;
        if from == to {
            return;
        }
        if !lifecycle::allowed(from, to) {
            tracing::error!(service = self.name(), ?from, ?to, "transition outside the lifecycle table");
        }
        tracing::debug!(service = self.name(), "{} -> {}", from.as_str(), to.as_str());
        self.snap.state = to;
        if !to.has_process() {
            self.next_probe = None;
            self.running_since = None;
        }
        if matches!(to, State::Stopped | State::Failed) {
            self.deadline = None;
        }
        if self.at_rest() {
            self.watch_outside();
        } else if let Some(watch) = self.outside.take() {
            watch.abort();
        }
        // Whatever the manifest says now (it may have changed since the claim).
        if !to.holds_gpu() {
            self.shared.arbiter.release(&self.snap.manifest.name);
        }
        // Published before any waiter is answered, so an answer is never
        // contradicted by an older snapshot.
        self.status.send_replace(self.snap.clone());
    }

    /// Stopped or failed: nothing runs and nothing is about to.
    fn at_rest(&self) -> bool {
        matches!(self.snap.state, State::Stopped | State::Failed)
    }

    /// At rest, watch for the service being started outside the daemon (a
    /// Compose project brought up by hand), to adopt it.
    fn watch_outside(&mut self) {
        if self.outside.is_some() {
            return;
        }
        let Some(started) = self.shared.runtime.started_outside(&self.snap.manifest) else { return };
        self.watch += 1;
        let (watch, tx) = (self.watch, self.tx.clone());
        let task = tokio::spawn(async move {
            started.await;
            let _ = tx.send(Input::StartedOutside { watch });
        });
        self.outside = Some(task.abort_handle());
    }

    /// Something was started outside: adopt it once all of it runs (a
    /// project's containers start one by one), or go back to watching.
    fn look_for_outside_start(&mut self) {
        self.outside = None;
        let (runtime, manifest, logs, tx) =
            (self.shared.runtime.clone(), self.snap.manifest.clone(), self.logs.clone(), self.tx.clone());
        tokio::spawn(async move {
            for _ in 0..ADOPT_TRIES {
                if let Ok(Some(launched)) =
                    tokio::time::timeout(ADOPT_TIMEOUT, runtime.adopt(&manifest, logs.clone())).await
                {
                    let _ = tx.send(Input::Adopt(launched));
                    return;
                }
                tokio::time::sleep(ADOPT_RETRY).await;
            }
            let _ = tx.send(Input::NothingToAdopt);
        });
    }

    fn set_failed(&mut self, reason: String) {
        self.logs.push(Stream::Nanny, &format!("failed: {reason}"));
        self.snap.last_error = Some(reason.clone());
        self.set_state(State::Failed);
        self.emit(EventKind::Failed { reason });
    }

    fn set_stopped(&mut self) {
        self.set_state(State::Stopped);
        self.emit(EventKind::Stopped);
    }

    fn on_start(&mut self, reply: oneshot::Sender<Result<(), StartError>>) {
        match self.snap.state {
            State::Running | State::Unhealthy => {
                let _ = reply.send(Ok(()));
            }
            State::Starting => self.start_waiters.push(reply),
            State::Stopping => {
                self.start_waiters.push(reply);
                if matches!(self.after_stop, AfterStop::Rest | AfterStop::Recover) {
                    self.after_stop = AfterStop::Start;
                }
            }
            State::Stopped | State::Failed | State::Backoff => {
                // A start by hand overrides a pending automatic restart and
                // gives the service a fresh restart budget.
                self.history.reset();
                self.start_waiters.push(reply);
                self.spawn_process(false);
            }
        }
    }

    /// Claim the GPU if needed and spawn the process (state → starting), or
    /// fail every start waiter with the reason.
    fn spawn_process(&mut self, automatic: bool) {
        if let Some(pending) = self.snap.pending.take() {
            self.snap.manifest = pending;
        }
        let manifest = self.snap.manifest.clone();
        if !manifest.gpu_required {
            // It may have held the GPU under a previous manifest (a restart from backoff).
            self.shared.arbiter.release(&manifest.name);
        } else if let Err(held) = self.shared.arbiter.claim(&manifest.name) {
            return self.fail_start(StartError::GpuBusy { holder: held.holder }, false);
        }
        let placement = manifest.gpu_required.then(|| self.shared.arbiter.placement());
        let launched = match self.shared.runtime.launch(&manifest, placement.as_ref(), self.logs.clone()) {
            Ok(launched) => launched,
            Err(message) => {
                self.logs.push(Stream::Nanny, &message);
                let logs = self.recent_logs();
                return self.fail_start(StartError::Spawn { name: manifest.name.clone(), message, logs }, true);
            }
        };
        self.automatic = automatic;
        self.adopted = false;
        let pid = self.begin_instance(launched);
        // The event goes out before the state is published: whoever waits on
        // the state (a dependent) then emits its own events after this one.
        self.emit(EventKind::Starting { pid, automatic });
        self.set_state(State::Starting);
        let now = Instant::now();
        self.deadline = Some(if self.checks_health() || self.awaits_ready {
            now + manifest.health_timeout
        } else {
            now + SETTLE_TIME.min(manifest.health_timeout)
        });
        self.next_probe = self.checks_health().then_some(now);
    }

    /// Take over an instance that was already running when the task began.
    fn adopt(&mut self, launched: Launched) {
        let manifest = self.snap.manifest.clone();
        if manifest.gpu_required
            && let Err(held) = self.shared.arbiter.claim(&manifest.name)
        {
            tracing::warn!(service = manifest.name, "adopted while '{}' holds the GPU", held.holder);
        }
        self.automatic = false;
        self.adopted = true;
        self.begin_instance(launched);
        self.set_state(State::Starting);
        let parts = self.instance.as_ref().map(|i| i.parts()).unwrap_or_default();
        self.emit(EventKind::Adopted { pid: parts.pid, containers: parts.containers });
        self.deadline = Some(Instant::now() + manifest.health_timeout);
        self.next_probe = self.checks_health().then(Instant::now);
    }

    /// Wire a new instance's exit and readiness to this task; returns its pid.
    fn begin_instance(&mut self, launched: Launched) -> Option<u32> {
        self.generation += 1;
        let generation = self.generation;
        let tx = self.tx.clone();
        let exited = launched.exited;
        tokio::spawn(async move {
            if let Ok(ended) = exited.await {
                let _ = tx.send(Input::Exited { generation, ended });
            }
        });
        self.awaits_ready = launched.ready.is_some();
        // A probe of the previous instance may still be out; its answer is
        // ignored (older generation) and must not hold back this one's probes.
        self.probe_in_flight = false;
        if let Some(ready) = launched.ready {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                if let Ok(parts) = ready.await {
                    let _ = tx.send(Input::Ready { generation, parts });
                }
            });
        }
        let instance = launched.instance;
        if let Some(group) = instance.group() {
            self.shared.store.record_process(RecordedProcess { service: self.snap.manifest.name.clone(), group });
        }
        let parts = instance.parts();
        self.instance = Some(instance);
        let now = Instant::now();
        let started = launched.started_at.unwrap_or_else(jiff::Timestamp::now);
        let age = jiff::Timestamp::now().duration_since(started).unsigned_abs();
        self.snap.pid = parts.pid;
        self.snap.containers = parts.containers;
        self.snap.started_at = Some((now.checked_sub(age).unwrap_or(now), started));
        self.snap.last_error = None;
        self.snap.consecutive_failures = 0;
        parts.pid
    }

    fn on_ready(&mut self, parts: Parts) {
        self.snap.containers = parts.containers;
        self.awaits_ready = false;
        if self.snap.state == State::Starting && !self.checks_health() {
            self.became_running();
        }
    }

    /// A start failed; every waiter gets `error`. `to_failed` records it as
    /// the service's state (a GPU refusal leaves the state as it was).
    fn fail_start(&mut self, error: StartError, to_failed: bool) {
        if to_failed {
            self.set_failed(error.to_string());
        }
        for waiter in self.start_waiters.drain(..) {
            let _ = waiter.send(Err(error.clone()));
        }
    }

    fn on_stop(&mut self, reply: oneshot::Sender<()>, then: AfterStop) {
        self.stop_waiters.push(reply);
        // A stop by hand overrides whatever the task meant to do next.
        if then == AfterStop::EndTask || self.after_stop != AfterStop::EndTask {
            self.after_stop = then;
        }
        self.history.reset();
        match self.snap.state {
            State::Starting | State::Running | State::Unhealthy => self.begin_stop(),
            State::Stopping => {}
            State::Stopped | State::Failed | State::Backoff => {
                if self.snap.state != State::Stopped {
                    self.set_stopped();
                }
                self.stop_finished();
            }
        }
    }

    /// Send the stop signal to the whole group; SIGKILL follows at the deadline.
    fn begin_stop(&mut self) {
        let manifest = self.snap.manifest.clone();
        if let Some(instance) = &self.instance {
            self.logs.push(Stream::Nanny, &format!("stopping ({})", manifest.stop_signal));
            instance.stop(manifest.stop_signal, manifest.stop_timeout);
        }
        self.set_state(State::Stopping);
        self.emit(EventKind::Stopping { signal: manifest.stop_signal.to_string() });
        self.deadline = Some(Instant::now() + manifest.stop_timeout);
        self.next_probe = None;
    }

    fn on_deadline(&mut self) {
        self.deadline = None;
        match self.snap.state {
            State::Starting if self.checks_health() => {
                let m = &self.snap.manifest;
                let last_check = self
                    .snap
                    .last_health
                    .as_ref()
                    .map(|h| h.message.clone())
                    .unwrap_or_else(|| "none completed".into());
                self.logs.push(
                    Stream::Nanny,
                    &format!("health check did not pass within {:.1}s: {last_check}", m.health_timeout.as_secs_f64()),
                );
                self.failure = Some(StartError::HealthTimeout {
                    name: m.name.clone(),
                    timeout: m.health_timeout.as_secs_f64(),
                    last_check,
                    logs: self.recent_logs(),
                });
                self.after_stop = AfterStop::Recover;
                self.begin_stop();
            }
            State::Starting if self.awaits_ready => {
                let m = &self.snap.manifest;
                self.failure = Some(StartError::HealthTimeout {
                    name: m.name.clone(),
                    timeout: m.health_timeout.as_secs_f64(),
                    last_check: "the runtime did not report it up".into(),
                    logs: self.recent_logs(),
                });
                self.after_stop = AfterStop::Recover;
                self.begin_stop();
            }
            State::Starting => self.became_running(),
            State::Stopping => {
                if let Some(instance) = &self.instance {
                    self.logs.push(Stream::Nanny, "stop_timeout passed: killing it");
                    instance.kill();
                }
            }
            State::Backoff => self.spawn_process(true),
            _ => {}
        }
    }

    fn became_running(&mut self) {
        self.deadline = None;
        let now = Instant::now();
        self.running_since = Some(now);
        self.set_state(State::Running);
        let startup_ms = match self.adopted {
            true => None,
            false => self.snap.started_at.map(|(at, _)| now.duration_since(at).as_secs_f64() * 1000.0),
        };
        self.logs.push(Stream::Nanny, "running");
        self.emit(EventKind::Healthy { startup_ms });
        self.next_probe = self.checks_health().then(|| now + self.snap.manifest.health_interval);
        for waiter in self.start_waiters.drain(..) {
            let _ = waiter.send(Ok(()));
        }
    }

    /// Whether the service has a health check: its manifest's, or one its
    /// runtime offers.
    fn checks_health(&self) -> bool {
        self.snap.manifest.has_health_check() || self.instance.as_ref().is_some_and(|i| i.check().is_some())
    }

    fn launch_probe(&mut self) {
        let timeout = match self.snap.state {
            State::Starting => {
                self.deadline.map(|d| d.saturating_duration_since(Instant::now())).unwrap_or(Duration::from_secs(5))
            }
            _ => self.snap.manifest.health_interval,
        }
        .clamp(Duration::from_millis(100), Duration::from_secs(5));
        let check: BoxFuture<'static, health::Outcome> = match Probe::of(&self.snap.manifest) {
            Some(probe) => {
                let client = self.shared.http.clone();
                Box::pin(async move { probe.check(&client, timeout).await })
            }
            None => match self.instance.as_ref().and_then(|i| i.check()) {
                Some(check) => check,
                None => {
                    self.next_probe = None;
                    return;
                }
            },
        };
        self.probe_in_flight = true;
        let (generation, tx) = (self.generation, self.tx.clone());
        tokio::spawn(async move {
            let result = health::timed(timeout, check).await;
            let _ = tx.send(Input::Probed { generation, result });
        });
    }

    fn on_probe(&mut self, result: ProbeResult) {
        self.probe_in_flight = false;
        let ok = result.ok;
        let message = result.message.clone();
        match self.snap.state {
            State::Starting => {
                self.snap.last_health = Some(result);
                if ok && !self.awaits_ready {
                    self.became_running();
                } else {
                    self.next_probe = Some(Instant::now() + STARTUP_PROBE_INTERVAL);
                }
                return;
            }
            State::Running | State::Unhealthy => self.snap.last_health = Some(result),
            _ => return,
        }
        self.next_probe = Some(Instant::now() + self.snap.manifest.health_interval);
        if ok {
            self.snap.consecutive_failures = 0;
            if self.snap.state == State::Unhealthy {
                self.logs.push(Stream::Nanny, "healthy again");
                self.running_since = Some(Instant::now());
                self.set_state(State::Running);
                self.emit(EventKind::Healthy { startup_ms: None });
            }
            return;
        }
        self.snap.consecutive_failures += 1;
        let failures = self.snap.consecutive_failures;
        self.logs.push(Stream::Nanny, &format!("health check failed ({failures} in a row): {message}"));
        if failures < self.snap.manifest.health_failures || self.snap.state != State::Running {
            return;
        }
        self.set_state(State::Unhealthy);
        self.emit(EventKind::Unhealthy { consecutive_failures: failures, last_check: message });
        if self.snap.manifest.restart != crate::manifest::RestartPolicy::Never {
            self.after_stop = AfterStop::Recover;
            self.begin_stop();
        }
    }

    fn on_exit(&mut self, ended: Ended) {
        let Ended { exit, reason } = ended;
        self.instance = None;
        self.shared.store.forget_process(self.name());
        let state = self.snap.state;
        let expected = state == State::Stopping && self.after_stop != AfterStop::Recover && self.failure.is_none();
        let what = match self.snap.manifest.runtime {
            crate::manifest::Runtime::Native { .. } => "process",
            crate::manifest::Runtime::Compose { .. } => "project",
        };
        self.logs.push(Stream::Nanny, &format!("{what} {exit}"));
        self.emit(EventKind::Exited { code: exit.code, signal: exit.signal.map(|s| s.to_string()), expected });
        self.snap.last_exit = Some(ExitRecord { exit, at: jiff::Timestamp::now() });
        self.snap.started_at = None;
        self.snap.pid = None;
        self.snap.containers.clear();
        self.deadline = None;
        let healthy_for = self.running_since.map(|since| since.elapsed());
        // Waiters queued for a start after this stop are not waiting on this process.
        let manual_start = !self.start_waiters.is_empty() && self.after_stop != AfterStop::Start;
        match state {
            State::Stopping => {
                match (self.failure.take(), self.after_stop) {
                    // The start that failed was asked for by hand: its caller hears why.
                    (Some(error), AfterStop::Recover) if manual_start => {
                        self.after_stop = AfterStop::Rest;
                        self.fail_start(error, true);
                    }
                    // An automatic start failed: the restart policy decides.
                    (Some(_), AfterStop::Recover) => {
                        self.after_stop = AfterStop::Rest;
                        self.recover(true, None);
                    }
                    // Another start arrived while the failed one was being stopped: it
                    // overlapped a failing start and gets the same answer.
                    (Some(error), AfterStop::Start) => {
                        self.after_stop = AfterStop::Rest;
                        self.fail_start(error, true);
                    }
                    // A stop (or shutdown) by hand arrived meanwhile: it wins.
                    (Some(error), _) => {
                        for waiter in self.start_waiters.drain(..) {
                            let _ = waiter.send(Err(error.clone()));
                        }
                        self.set_stopped();
                    }
                    (None, AfterStop::Recover) => {
                        self.after_stop = AfterStop::Rest;
                        self.recover(true, healthy_for);
                    }
                    (None, after_stop) => {
                        self.set_stopped();
                        if after_stop != AfterStop::Start {
                            let name = self.name().to_string();
                            for waiter in self.start_waiters.drain(..) {
                                let _ = waiter.send(Err(StartError::Interrupted { name: name.clone() }));
                            }
                        }
                    }
                }
                self.stop_finished();
            }
            State::Starting if manual_start => {
                let name = self.name().to_string();
                let logs = self.recent_logs();
                self.fail_start(StartError::Exited { name, exit, reason, logs }, true);
            }
            State::Starting => self.recover(true, None),
            State::Running | State::Unhealthy => self.recover(!exit.success(), healthy_for),
            _ => {}
        }
    }

    /// The process ended without being asked to: apply the restart policy.
    fn recover(&mut self, failed: bool, healthy_for: Option<Duration>) {
        let policy = Policy::of(&self.snap.manifest);
        match lifecycle::after_exit(&policy, &mut self.history, failed, healthy_for, std::time::Instant::now()) {
            Verdict::Restart { attempt, delay } => {
                self.snap.restarts += 1;
                self.set_state(State::Backoff);
                self.logs.push(Stream::Nanny, &format!("restart {attempt} in {:.3}s", delay.as_secs_f64()));
                self.emit(EventKind::Backoff { attempt, delay_ms: delay.as_millis() as u64 });
                if delay.is_zero() {
                    self.spawn_process(true);
                } else {
                    self.deadline = Some(Instant::now() + delay);
                }
            }
            Verdict::Settle { to: State::Failed, reason } => self.set_failed(reason),
            Verdict::Settle { .. } => self.set_stopped(),
        }
    }

    /// The process is gone: answer stop waiters and do what was queued.
    fn stop_finished(&mut self) {
        for waiter in self.stop_waiters.drain(..) {
            let _ = waiter.send(());
        }
        match std::mem::replace(&mut self.after_stop, AfterStop::Rest) {
            AfterStop::Rest | AfterStop::Recover => {}
            AfterStop::Start if !self.snap.state.has_process() => {
                self.history.reset();
                self.spawn_process(false);
            }
            AfterStop::Start => {}
            AfterStop::EndTask => {
                let name = self.name().to_string();
                for waiter in self.start_waiters.drain(..) {
                    let _ = waiter.send(Err(StartError::Removed { name: name.clone() }));
                }
                self.finished = true;
            }
        }
    }

    fn recent_logs(&self) -> Vec<String> {
        self.logs.tail(FAILURE_LOG_LINES).iter().map(|l| l.render()).collect()
    }
}

/// The task driven by a recording fake runtime on a paused clock: every
/// launch is recorded with the (virtual) time it happened, and the test
/// decides when each instance ends. No process, no sleep.
#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;

    use futures_util::future::BoxFuture;
    use nix::sys::signal::Signal;

    use super::*;
    use crate::runtime::compose::{EngineInfo, ToolInfo};
    use crate::runtime::{GroupRecord, LaunchError, Placement, RuntimeInfo};

    /// One launch: when it happened, and the switch that ends the instance.
    struct Launch {
        at: Instant,
        end: Arc<Mutex<Option<oneshot::Sender<Ended>>>>,
    }

    impl Launch {
        fn end(&self, code: i32) {
            let end = self.end.lock().unwrap().take().expect("instance still running");
            let _ = end.send(Ended { exit: ExitInfo { code: Some(code), signal: None }, reason: None });
        }
    }

    struct Fake {
        launches: mpsc::UnboundedSender<Launch>,
        /// Whether the instances' own health check hangs (else it passes).
        checks_hang: Arc<Mutex<bool>>,
    }

    /// Stopping a fake instance ends it at once, with code 0. It offers a
    /// health check of its own, as a Compose project does.
    struct FakeInstance {
        end: Arc<Mutex<Option<oneshot::Sender<Ended>>>>,
        checks_hang: Arc<Mutex<bool>>,
    }

    impl Instance for FakeInstance {
        fn parts(&self) -> Parts {
            Parts { pid: Some(1), containers: Vec::new() }
        }
        fn stop(&self, _signal: Signal, _timeout: Duration) {
            if let Some(end) = self.end.lock().unwrap().take() {
                let _ = end.send(Ended { exit: ExitInfo { code: Some(0), signal: None }, reason: None });
            }
        }
        fn kill(&self) {
            self.stop(Signal::SIGKILL, Duration::ZERO);
        }
        fn group(&self) -> Option<GroupRecord> {
            None
        }
        fn check(&self) -> Option<BoxFuture<'static, health::Outcome>> {
            let hang = *self.checks_hang.lock().unwrap();
            Some(Box::pin(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                (true, None, "fine".to_string())
            }))
        }
    }

    impl Runtime for Fake {
        fn launch(&self, _: &Manifest, _: Option<&Placement>, _: Arc<LogStore>) -> Result<Launched, LaunchError> {
            let (tx, exited) = oneshot::channel();
            let end = Arc::new(Mutex::new(Some(tx)));
            let _ = self.launches.send(Launch { at: Instant::now(), end: end.clone() });
            let instance = FakeInstance { end, checks_hang: self.checks_hang.clone() };
            Ok(Launched { instance: Box::new(instance), exited, ready: None, started_at: None })
        }
        fn adopt(&self, _: &Manifest, _: Arc<LogStore>) -> BoxFuture<'static, Option<Launched>> {
            Box::pin(async { None })
        }
        fn started_outside(&self, _: &Manifest) -> Option<BoxFuture<'static, ()>> {
            None
        }
        fn kill_leftovers(&self, _: GroupRecord) -> Vec<u32> {
            Vec::new()
        }
        fn remove(&self, _: &Manifest) -> BoxFuture<'static, Result<String, String>> {
            Box::pin(async { Ok(String::new()) })
        }
        fn describe(&self) -> BoxFuture<'static, RuntimeInfo> {
            Box::pin(async {
                RuntimeInfo {
                    docker: EngineInfo { available: false, version: None, api_version: None, error: None },
                    compose: ToolInfo { tool: None, version: None, error: None },
                }
            })
        }
    }

    struct Harness {
        service: ServiceHandle,
        arbiter: Arc<Arbiter>,
        checks_hang: Arc<Mutex<bool>>,
        launches: mpsc::UnboundedReceiver<Launch>,
        _state: tempfile::TempDir,
    }

    fn harness(manifest_yaml: &str) -> Harness {
        let state = tempfile::tempdir().unwrap();
        let manifest = crate::manifest::parse(Path::new("/s/x/service.yaml"), manifest_yaml, &|_| true).unwrap();
        let (tx, launches) = mpsc::unbounded_channel();
        let arbiter = Arc::new(Arbiter::default());
        let checks_hang = Arc::new(Mutex::new(false));
        let shared = Shared {
            runtime: Arc::new(Fake { launches: tx, checks_hang: checks_hang.clone() }),
            arbiter: arbiter.clone(),
            http: crate::health::client(),
            store: Store::open(state.path()).unwrap(),
        };
        let logs = Arc::new(LogStore::new(state.path().join("x.log")));
        let service = ServiceHandle::spawn(Arc::new(manifest), shared, logs);
        Harness { service, arbiter, checks_hang, launches, _state: state }
    }

    /// Wait (in virtual time, so at no cost) for `state`; a minute is plenty.
    async fn state_becomes(service: &ServiceHandle, state: State) {
        let mut watch = service.watch();
        let reached = tokio::time::timeout(Duration::from_secs(60), watch.wait_for(|s| s.state == state)).await;
        assert!(reached.is_ok(), "never became {state:?}; now {:?}", service.snapshot().state);
    }

    #[tokio::test(start_paused = true)]
    async fn crashes_are_restarted_after_the_policy_s_delays_until_the_window_is_spent() {
        let mut h = harness(
            "name: x\ncommand: [x]\nrestart: always\nrestart_delay: 1\nrestart_delay_max: 4\nmax_restarts: 4\nrestart_window: 1h\n",
        );
        h.service.start().await.expect("starts (stays up for the settle time)");
        let mut launch = h.launches.recv().await.unwrap();
        let mut delays = Vec::new();
        for _ in 0..4 {
            launch.end(1);
            let crashed = Instant::now();
            launch = h.launches.recv().await.unwrap();
            delays.push((launch.at - crashed).as_secs());
            state_becomes(&h.service, State::Running).await;
        }
        assert_eq!(delays, vec![1, 2, 4, 4], "restart_delay doubles up to restart_delay_max");
        launch.end(1);
        state_becomes(&h.service, State::Failed).await;
        let snap = h.service.snapshot();
        assert_eq!(snap.restarts, 4);
        assert!(snap.last_error.unwrap().contains("restarted 4 times"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_backoff_cancels_the_restart_and_a_start_overrides_it() {
        let mut h = harness("name: x\ncommand: [x]\nrestart: on-failure\nrestart_delay: 30\n");
        h.service.start().await.unwrap();
        h.launches.recv().await.unwrap().end(3);
        state_becomes(&h.service, State::Backoff).await;
        h.service.stop().await;
        assert_eq!(h.service.snapshot().state, State::Stopped);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(h.launches.try_recv().is_err(), "no restart after a stop by hand");

        // Crash again, and start by hand during the backoff: at once, not 30 s later.
        h.service.start().await.unwrap();
        h.launches.recv().await.unwrap().end(3);
        state_becomes(&h.service, State::Backoff).await;
        let asked = Instant::now();
        h.service.start().await.unwrap();
        assert_eq!(h.launches.recv().await.unwrap().at, asked, "a start by hand does not wait for the backoff");
    }

    #[tokio::test(start_paused = true)]
    async fn a_clean_exit_under_on_failure_stops_and_a_gpu_claim_is_released() {
        let mut h = harness("name: x\ncommand: [x]\ngpu_required: true\n");
        h.service.start().await.unwrap();
        assert_eq!(h.arbiter.holder().as_deref(), Some("x"));
        h.launches.recv().await.unwrap().end(0);
        state_becomes(&h.service, State::Stopped).await;
        assert!(h.launches.try_recv().is_err(), "a clean exit is not restarted under on-failure");
        assert_eq!(h.arbiter.holder(), None, "the claim goes with the process");
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_still_out_when_the_process_is_replaced_does_not_hold_back_the_next_checks() {
        let mut h = harness(
            "name: x\ncommand: [x]\nrestart: always\nrestart_delay: 0\nhealth_interval: 1\nhealth_timeout: 3\n",
        );
        h.service.start().await.unwrap();
        let launch = h.launches.recv().await.unwrap();
        // A check hangs, and the process dies while it is out.
        *h.checks_hang.lock().unwrap() = true;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Checks made from now on answer (the one already out keeps hanging).
        *h.checks_hang.lock().unwrap() = false;
        launch.end(1);
        let _replacement = h.launches.recv().await.unwrap();
        // The replacement is checked (and found healthy) within its health_timeout.
        state_becomes(&h.service, State::Running).await;
        assert!(Instant::now() - launch.at < Duration::from_secs(3), "became running only after a timeout");
        assert_eq!(h.service.snapshot().restarts, 1);
    }
}
