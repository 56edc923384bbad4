//! One task per service: the only code that changes a service's state.
//!
//! The task is a thin executor of the pure [`lifecycle::Machine`]: it turns
//! what happens (a caller's wish, a process exit, a probe result, a timer)
//! into an [`Input`], steps the machine, and carries out the [`Action`]s it
//! returns through the runtime seam, the GPU arbiter, the store and the log.
//! Everyone else reads [`Snapshot`]s from a `watch` channel. Exits arrive
//! from the runtime as they happen; probes run on their own tasks so a hung
//! endpoint never blocks a stop.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};

use crate::gpu::{Arbiter, Ask, Busy};
use crate::health::{self, Probe, ProbeResult};
use crate::lifecycle::{Action, Goal, Input, Launch, Machine, Phase, Refusal, Remember, Spec, State};
use crate::logs::{LogStore, Stream};
use crate::manifest::Manifest;
use crate::metrics::Metrics;
use crate::ports::health_port;
use crate::runtime::{Ended, ExitInfo, Instance, LaunchError, Launched, Parts, Runtime};
use crate::store::{Desired, RecordedProcess, Store};

pub use crate::lifecycle::{Failure, OnBusy, StartError};

/// How often a starting service is probed in its first [`STARTUP_PROBE_BURST`]:
/// often, so a service that is up at once is seen up at once.
pub const STARTUP_PROBE_FIRST: Duration = Duration::from_millis(2);
/// How long after the launch the probes stay that frequent; later they back
/// off with the time the start has taken (a hundredth of it), up to
/// [`STARTUP_PROBE_MAX`] or the `health_interval`, whichever is shorter, so
/// a slow start (a model loading for a minute) costs little CPU and is still
/// seen within a few percent of its time.
pub const STARTUP_PROBE_BURST: Duration = Duration::from_millis(100);
pub const STARTUP_PROBE_MAX: Duration = Duration::from_secs(1);

/// The wait before the next probe of a service that has been starting for `since`.
pub fn startup_probe_interval(since: Duration, health_interval: Duration) -> Duration {
    let cap = STARTUP_PROBE_MAX.min(health_interval).max(STARTUP_PROBE_FIRST);
    match since < STARTUP_PROBE_BURST {
        true => STARTUP_PROBE_FIRST,
        false => (since / 100).clamp(STARTUP_PROBE_FIRST, cap),
    }
}
/// How long a task looks for an instance to adopt before it gives up.
pub const ADOPT_TIMEOUT: Duration = Duration::from_secs(10);
/// After a start outside the daemon: how many looks for all of it running,
/// and how far apart.
const ADOPT_TRIES: usize = 10;
const ADOPT_RETRY: Duration = Duration::from_millis(300);
/// How many log lines (of this attempt) a failed start carries back to the caller.
const FAILURE_LOG_LINES: usize = 20;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExitRecord {
    #[serde(flatten)]
    pub exit: ExitInfo,
    #[schema(value_type = String, format = DateTime)]
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
    /// What happens next while the service converges (`restarting in 1.0 s …`).
    pub next: Option<String>,
    /// The number of the last wish, for [`ServiceHandle::start`]'s `if_current`.
    pub wishes: u64,
    /// Whether the task is still looking for an instance to adopt (at its start).
    pub adopting: bool,
    /// While `starting`: what the start is doing (`pulling`, `creating`,
    /// `waiting for health`, …).
    pub stage: Option<&'static str>,
    /// Whether the last stop needed SIGKILL (the stop signal was ignored).
    pub stop_killed: bool,
}

impl Snapshot {
    /// The configuration as it is on disk now (what the next start uses).
    pub fn latest_manifest(&self) -> &Arc<Manifest> {
        self.pending.as_ref().unwrap_or(&self.manifest)
    }

    /// The configuration to show: the running instance's while one runs,
    /// else the one the next start uses.
    pub fn shown_manifest(&self) -> &Arc<Manifest> {
        match self.state.has_process() {
            true => &self.manifest,
            false => self.latest_manifest(),
        }
    }

    /// A newer manifest that waits for the next start while an instance
    /// runs with the older one.
    pub fn pending_change(&self) -> Option<&Arc<Manifest>> {
        self.pending.as_ref().filter(|_| self.state.has_process())
    }
}

type StartReply = oneshot::Sender<Result<(), Failure>>;
type StopReply = oneshot::Sender<Result<(), StartError>>;

/// What a service task is told. Sent boxed: the channel's memory is a block of slots per
/// service, which a large message would make kilobytes for every idle service.
enum Message {
    Start {
        on_busy: OnBusy,
        if_current: Option<u64>,
        reply: StartReply,
    },
    Stop {
        goal: Goal,
        reply: StopReply,
    },
    GaveUp(String),
    Update(Arc<Manifest>),
    Exited {
        generation: u64,
        ended: Ended,
    },
    Progress {
        generation: u64,
        stage: &'static str,
    },
    Ready {
        generation: u64,
        parts: Parts,
    },
    Probed {
        generation: u64,
        result: ProbeResult,
    },
    /// The service was started outside the daemon (watch number `watch`).
    StartedOutside {
        watch: u64,
    },
    /// An instance found running outside the daemon, to take over.
    Found(Launched),
    /// Looking for it found nothing to take over: watch again.
    NothingToAdopt,
}

/// The daemon's handle on a service task. Cheap to clone.
#[derive(Clone)]
pub struct ServiceHandle {
    tx: mpsc::UnboundedSender<Box<Message>>,
    /// The published snapshot; `borrow()` it briefly to read without cloning.
    pub status: watch::Receiver<Snapshot>,
    pub logs: Arc<LogStore>,
}

impl ServiceHandle {
    pub fn spawn(manifest: Arc<Manifest>, shared: Shared, logs: Arc<LogStore>) -> ServiceHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let machine = Machine::new(Spec::of(&manifest));
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
            next: None,
            wishes: 0,
            adopting: true,
            stage: None,
            stop_killed: false,
        };
        let (status_tx, status) = watch::channel(snapshot.clone());
        let mut task = Task {
            machine,
            snap: snapshot,
            shared,
            logs: logs.clone(),
            rx,
            tx: tx.clone(),
            status: status_tx,
            generation: 0,
            instance: None,
            found: None,
            start_waiters: Vec::new(),
            stop_waiters: Vec::new(),
            answers: Vec::new(),
            probed: false,
            next_probe: None,
            probe_in_flight: false,
            probing_since: None,
            runtime_stage: None,
            attempt_at: None,
            outside: None,
            watch: 0,
            finished: false,
            unwritten: false,
            unpublished: false,
        };
        // An `async` block that owns the task, not an `async fn` taking it by value: such a
        // future keeps its argument twice (as passed, and as moved into the body), and there is
        // one per service.
        tokio::spawn(async move { task.run().await });
        ServiceHandle { tx, status, logs }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.status.borrow().clone()
    }

    /// A receiver of every new snapshot, to wait for a state.
    pub fn watch(&self) -> watch::Receiver<Snapshot> {
        self.status.clone()
    }

    fn name(&self) -> String {
        self.status.borrow().manifest.name.clone()
    }

    /// Want the service running; resolves once it runs or this start failed
    /// (then with what happens next). `if_current`: only if no other wish
    /// came since the snapshot's `wishes` was that number.
    pub async fn start(&self, on_busy: OnBusy, if_current: Option<u64>) -> Result<(), Failure> {
        let (reply, rx) = oneshot::channel();
        let removed = || Failure { error: StartError::Removed { name: self.name() }, next: None };
        if self.tx.send(Box::new(Message::Start { on_busy, if_current, reply })).is_err() {
            return Err(removed());
        }
        rx.await.unwrap_or_else(|_| Err(removed()))
    }

    /// Want the service stopped; resolves once none of its processes is
    /// left, or with `Stuck` when they outlive SIGKILL by the grace period.
    pub async fn stop(&self) -> Result<(), StartError> {
        self.ask_stop(Goal::Stopped).await
    }

    /// Stop the service and end its task.
    pub async fn shutdown(&self) -> Result<(), StartError> {
        self.ask_stop(Goal::Gone).await
    }

    /// At daemon start: the restart policy had given up on it.
    pub fn gave_up(&self, reason: String) {
        let _ = self.tx.send(Box::new(Message::GaveUp(reason)));
    }

    pub fn update(&self, manifest: Arc<Manifest>) {
        let _ = self.tx.send(Box::new(Message::Update(manifest)));
    }

    async fn ask_stop(&self, goal: Goal) -> Result<(), StartError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Box::new(Message::Stop { goal, reply })).is_ok() {
            return rx.await.unwrap_or(Ok(()));
        }
        Ok(())
    }
}

/// What every service task shares with the daemon.
#[derive(Clone)]
pub struct Shared {
    pub runtime: Arc<dyn Runtime>,
    pub arbiter: Arc<Arbiter>,
    pub http: reqwest::Client,
    pub store: Store,
    pub metrics: Metrics,
    pub groups: Groups,
}

/// Which service leads which process group (native services), to name the
/// holder of a port another service wants.
pub type Groups = Arc<Mutex<HashMap<u32, String>>>;

/// An answer to send once `settle` has published the snapshot.
enum Answer {
    Start(StartReply, Result<(), Failure>),
    Stop(StopReply, Result<(), StartError>),
}

struct Task {
    machine: Machine,
    snap: Snapshot,
    shared: Shared,
    logs: Arc<LogStore>,
    rx: mpsc::UnboundedReceiver<Box<Message>>,
    tx: mpsc::UnboundedSender<Box<Message>>,
    status: watch::Sender<Snapshot>,
    /// Incremented per instance; stale exits and probes are ignored.
    generation: u64,
    /// The running instance (process group or Compose project).
    instance: Option<Box<dyn Instance>>,
    /// An instance found running, until the machine adopts or abandons it.
    found: Option<Launched>,
    start_waiters: Vec<StartReply>,
    stop_waiters: Vec<StopReply>,
    answers: Vec<Answer>,
    /// Whether the current instance has been probed yet.
    probed: bool,
    next_probe: Option<Instant>,
    probe_in_flight: bool,
    /// When the current instance's startup probes began (at the launch, or
    /// when its runtime said it is up): their pace follows the time since.
    probing_since: Option<Instant>,
    /// What the runtime last said it is doing while it brings the instance up.
    runtime_stage: Option<&'static str>,
    /// When the current instance was launched (not adopted): a failed start
    /// carries only the log lines written since.
    attempt_at: Option<jiff::Timestamp>,
    /// While at rest: the watch for a start outside the daemon, and its number.
    outside: Option<tokio::task::AbortHandle>,
    watch: u64,
    finished: bool,
    /// A wish or a process group was sent to the store since the last snapshot: it is written
    /// before the next one is published (see `settle`).
    unwritten: bool,
    /// The snapshot is behind the machine: `settle` publishes it.
    unpublished: bool,
}

impl Task {
    async fn run(&mut self) {
        // An engine that does not answer must not keep the task from its inputs.
        let adopted =
            tokio::time::timeout(ADOPT_TIMEOUT, self.shared.runtime.adopt(&self.snap.manifest, self.logs.clone()));
        if let Ok(Some(launched)) = adopted.await {
            self.found = Some(launched);
            self.turn(Input::Found);
        }
        self.snap.adopting = false;
        self.unpublished = true;
        self.settle().await;
        while !self.finished {
            let deadline = self.machine.deadline().map(Instant::from_std);
            let next_probe = self.next_probe.filter(|_| !self.probe_in_flight);
            tokio::select! {
                Some(message) = self.rx.recv() => self.on_message(*message),
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => self.turn(Input::Timer),
                _ = sleep_until(next_probe.unwrap_or_else(Instant::now)), if next_probe.is_some() => self.launch_probe(),
            }
            self.settle().await;
        }
        if let Some(watch) = self.outside.take() {
            watch.abort();
        }
    }

    fn name(&self) -> &str {
        &self.snap.manifest.name
    }

    fn on_message(&mut self, message: Message) {
        match message {
            Message::Start { on_busy, if_current, reply } => {
                self.start_waiters.push(reply);
                self.turn(Input::Want { goal: Goal::Running, on_busy, if_current });
            }
            Message::Stop { goal, reply } => {
                self.stop_waiters.push(reply);
                self.turn(Input::Want { goal, on_busy: OnBusy::Refuse, if_current: None });
            }
            Message::GaveUp(reason) => self.turn(Input::GaveUp { reason }),
            Message::Update(manifest) => {
                let spec = Spec::of(&manifest);
                if self.machine.state().has_process() {
                    self.snap.pending = Some(manifest);
                } else {
                    self.snap.manifest = manifest;
                    self.snap.pending = None;
                }
                self.turn(Input::Manifest(spec));
            }
            Message::Exited { generation, ended } if generation == self.generation => self.on_exit(ended),
            Message::Progress { generation, stage } if generation == self.generation => {
                self.runtime_stage = Some(stage);
                self.unpublished = true;
            }
            Message::Ready { generation, parts } if generation == self.generation => {
                self.snap.containers = parts.containers;
                self.turn(Input::Ready);
            }
            Message::Probed { generation, result } if generation == self.generation => self.on_probe(result),
            Message::StartedOutside { watch } if watch == self.watch && self.at_rest() => self.look_for_outside_start(),
            Message::Found(launched) if self.at_rest() => {
                self.found = Some(launched);
                self.turn(Input::Found);
            }
            Message::NothingToAdopt if self.at_rest() => self.watch_outside(),
            // Not at rest any more: a dropped `Launched` is abandoned, not stopped.
            Message::StartedOutside { .. } | Message::Found(_) | Message::NothingToAdopt => {}
            Message::Exited { .. } | Message::Probed { .. } | Message::Ready { .. } | Message::Progress { .. } => {}
        }
    }

    /// Step the machine with `input` and whatever its actions report back; `settle` then
    /// publishes the snapshot and answers the callers.
    fn turn(&mut self, input: Input) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let mut actions = Vec::new();
            self.machine.apply(input, Instant::now().into_std(), &mut actions);
            for action in actions {
                if let Some(reported) = self.execute(action) {
                    inputs.push_back(reported);
                }
            }
        }
        self.unpublished = true;
    }

    /// After each input: publish the snapshot, then answer the callers, so an answer is never
    /// contradicted by an older snapshot. What the snapshot is about to show (a wish taken, a
    /// process group started or gone) must survive a daemon killed the moment after (restore
    /// and the leftover cleanup read it), so it waits until the store has written that. The
    /// task waits without holding a thread: a thousand services starting at once share a few
    /// commits.
    async fn settle(&mut self) {
        if std::mem::take(&mut self.unwritten) {
            self.shared.store.flush().await;
        }
        if std::mem::take(&mut self.unpublished) {
            self.publish();
        }
    }

    /// Carry out one action; some report back with an input.
    fn execute(&mut self, action: Action) -> Option<Input> {
        match action {
            Action::Launch { automatic } => return Some(self.launch(automatic)),
            Action::Adopt => return self.adopt(),
            Action::Abandon => self.found = None,
            Action::Stop => {
                let m = &self.snap.manifest;
                if let Some(instance) = &self.instance {
                    instance.stop(m.stop_signal, m.stop_timeout);
                }
            }
            Action::Kill => {
                if let Some(instance) = &self.instance {
                    instance.kill();
                }
            }
            Action::Release => self.shared.arbiter.release(&self.snap.manifest.name),
            Action::Emit(kind) => self.shared.store.emit(Some(&self.snap.manifest.name), kind),
            Action::Log(line) => self.logs.push(Stream::Nanny, &line),
            Action::Started(result) => {
                let result = result.map_err(|f| Failure { error: self.with_details(f.error), next: f.next });
                for reply in self.start_waiters.drain(..) {
                    self.answers.push(Answer::Start(reply, result.clone()));
                }
            }
            Action::Answer(result) => {
                if let Some(reply) = self.start_waiters.pop() {
                    self.answers.push(Answer::Start(reply, result));
                }
            }
            Action::Stopped(result) => {
                let result = result.map_err(|e| self.with_details(e));
                for reply in self.stop_waiters.drain(..) {
                    self.answers.push(Answer::Stop(reply, result.clone()));
                }
            }
            Action::Persist(remember) => {
                let desired = match remember {
                    Remember::Running => Desired::Running,
                    Remember::Stopped => Desired::Stopped,
                    Remember::GaveUp(reason) => Desired::GaveUp(reason),
                };
                self.shared.store.set_desired(self.name(), desired);
                self.unwritten = true;
            }
            Action::Finish => self.finished = true,
        }
        None
    }

    /// Claim the GPU if needed (or give up a claim the manifest no longer
    /// needs) and launch.
    fn launch(&mut self, automatic: bool) -> Input {
        if let Some(pending) = self.snap.pending.take() {
            self.snap.manifest = pending;
        }
        let manifest = self.snap.manifest.clone();
        let placement = match manifest.gpu_required {
            false => {
                self.shared.arbiter.release(&manifest.name);
                None
            }
            true => match self.shared.arbiter.claim(&Ask::of(&manifest)) {
                Ok(placement) => Some(placement),
                Err(Busy::Held(held)) => return Input::Refused(Refusal::GpuBusy { holder: held.holder }),
                Err(Busy::Full(shortfall)) => return Input::Refused(Refusal::GpuFull(shortfall)),
            },
        };
        self.attempt_at = Some(jiff::Timestamp::now());
        match self.shared.runtime.launch(&manifest, placement.as_ref(), self.logs.clone()) {
            Ok(launched) => Input::Launched(Launch { automatic, ..self.begin_instance(launched) }),
            Err(LaunchError::Spawn(message)) => Input::Refused(Refusal::Spawn(message)),
            Err(LaunchError::Unavailable(reason)) => Input::Refused(Refusal::Unavailable(reason)),
            Err(LaunchError::PortInUse { port, pid, pgid }) => {
                Input::Refused(Refusal::PortBusy { port, holder: self.port_holder(pid, pgid) })
            }
        }
    }

    /// `pid 4242 (service 'alpha')`: who holds a port, as far as we can see.
    fn port_holder(&self, pid: Option<u32>, pgid: Option<u32>) -> String {
        let groups = self.shared.groups.lock().unwrap_or_else(|p| p.into_inner());
        match (pid, pgid.and_then(|g| groups.get(&g))) {
            (Some(pid), Some(service)) => format!("pid {pid} (service '{service}')"),
            (Some(pid), None) => format!("pid {pid}"),
            (None, _) => "a process nanny cannot see (pid unknown)".into(),
        }
    }

    /// Take over the instance that was found: with the GPU claim if it
    /// needs one, else held unclaimed so the machine can stop it.
    fn adopt(&mut self) -> Option<Input> {
        let launched = self.found.take()?;
        self.attempt_at = None;
        let manifest = self.snap.manifest.clone();
        let claimed = match manifest.gpu_required {
            true => self.shared.arbiter.claim(&Ask::of(&manifest)).map(drop),
            false => Ok(()),
        };
        let launch = self.begin_instance(launched);
        Some(match claimed {
            Ok(()) => Input::Launched(Launch { adopted: true, ..launch }),
            Err(Busy::Held(held)) => Input::AdoptRefused { holder: held.holder },
            // Never stop others for an instance found running: it is the one that goes.
            Err(Busy::Full(shortfall)) => {
                let holders: Vec<&str> = shortfall.stop.iter().map(|e| e.service.as_str()).collect();
                let holder = match holders.is_empty() {
                    true => "no GPU has room".to_string(),
                    false => holders.join("', '"),
                };
                Input::AdoptRefused { holder }
            }
        })
    }

    /// Wire a new instance's exit and readiness to this task.
    fn begin_instance(&mut self, launched: Launched) -> Launch {
        self.generation += 1;
        let generation = self.generation;
        let tx = self.tx.clone();
        let exited = launched.exited;
        tokio::spawn(async move {
            if let Ok(ended) = exited.await {
                let _ = tx.send(Box::new(Message::Exited { generation, ended }));
            }
        });
        let awaits_ready = launched.ready.is_some();
        // A probe of the previous instance may still be out; its answer is
        // ignored (older generation) and must not hold back this one's probes.
        self.probe_in_flight = false;
        self.probed = false;
        self.next_probe = None;
        self.probing_since = None;
        self.runtime_stage = None;
        if let Some(mut progress) = launched.progress {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                while let Some(stage) = progress.recv().await {
                    if tx.send(Box::new(Message::Progress { generation, stage })).is_err() {
                        return;
                    }
                }
            });
        }
        if let Some(ready) = launched.ready {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                if let Ok(parts) = ready.await {
                    let _ = tx.send(Box::new(Message::Ready { generation, parts }));
                }
            });
        }
        let instance = launched.instance;
        if let Some(group) = instance.group() {
            self.shared.store.record_process(RecordedProcess { service: self.snap.manifest.name.clone(), group });
            self.unwritten = true;
        }
        let parts = instance.parts();
        if let Some(pid) = parts.pid {
            self.shared.groups.lock().unwrap_or_else(|p| p.into_inner()).insert(pid, self.snap.manifest.name.clone());
        }
        self.instance = Some(instance);
        let now = Instant::now();
        let started = launched.started_at.unwrap_or_else(jiff::Timestamp::now);
        let age = jiff::Timestamp::now().duration_since(started).unsigned_abs();
        self.snap.pid = parts.pid;
        self.snap.containers = parts.containers.clone();
        self.snap.started_at = Some((now.checked_sub(age).unwrap_or(now), started));
        // A native launch found the health endpoint's local port free, so
        // only this process can answer there: no need to confirm a quick pass.
        let m = &self.snap.manifest;
        let own_port = matches!(m.runtime, crate::manifest::Runtime::Native { .. }) && health_port(m).is_some();
        Launch {
            pid: parts.pid,
            containers: parts.containers,
            checks: self.checks_health(),
            awaits_ready,
            adopted: false,
            automatic: false,
            confirm: !own_port,
        }
    }

    fn on_exit(&mut self, ended: Ended) {
        let Ended { exit, reason, unavailable } = ended;
        self.instance = None;
        self.shared.store.forget_process(self.name());
        self.unwritten = true;
        let what = match self.snap.manifest.runtime {
            crate::manifest::Runtime::Native { .. } => "process",
            crate::manifest::Runtime::Compose { .. } => "project",
        };
        self.logs.push(Stream::Nanny, &format!("{what} {exit}"));
        self.snap.last_exit = Some(ExitRecord { exit, at: jiff::Timestamp::now() });
        self.snap.started_at = None;
        if let Some(pid) = self.snap.pid.take() {
            self.shared.groups.lock().unwrap_or_else(|p| p.into_inner()).remove(&pid);
        }
        self.snap.containers.clear();
        self.turn(Input::Exited { exit, reason, unavailable });
    }

    fn on_probe(&mut self, result: ProbeResult) {
        self.probe_in_flight = false;
        if !matches!(self.machine.state(), State::Starting | State::Running | State::Unhealthy) {
            return;
        }
        let (ok, message) = (result.ok, result.message.clone());
        let took = Duration::from_secs_f64(result.latency_ms.max(0.0) / 1000.0);
        // A check that fails while the service is still starting up is not a failure yet.
        let failed = !ok && self.machine.state() != State::Starting;
        self.shared.metrics.health_check(&self.snap.manifest.name, took, !failed);
        self.snap.last_health = Some(result);
        self.probed = true;
        self.turn(Input::Probed { ok, message });
    }

    /// The error with what only the task knows: the last log lines, and
    /// what is still alive of a stop that did not end.
    fn with_details(&self, error: StartError) -> StartError {
        match error {
            StartError::Stuck { name, grace, .. } => {
                let parts = self.instance.as_ref().map(|i| i.parts()).unwrap_or_default();
                let alive = match (parts.pid, parts.containers.is_empty()) {
                    (Some(pid), _) => format!("process group {pid}"),
                    (None, false) => format!("containers {}", parts.containers.join(", ")),
                    (None, true) => "its instance".to_string(),
                };
                StartError::Stuck { name, alive, grace }
            }
            StartError::StartTimeout { name, timeout, stage, logs } => {
                let stage = self.runtime_stage.map(str::to_string).unwrap_or(stage);
                StartError::StartTimeout { name, timeout, stage, logs }.with_logs(self.recent_logs())
            }
            error => error.with_logs(self.recent_logs()),
        }
    }

    /// Keep the probes, the watch for outside starts and the published
    /// snapshot in line with the machine; then answer the callers.
    fn publish(&mut self) {
        let state = self.machine.state();
        let awaits_ready = matches!(self.machine.phase, Phase::Starting { awaits_ready: true, .. });
        match state {
            // No probing while the runtime is still bringing it up (a pull, a build).
            State::Starting if awaits_ready => self.next_probe = None,
            State::Starting | State::Running | State::Unhealthy if self.checks_health() => {
                if self.next_probe.is_none() && !self.probe_in_flight {
                    let wait = match state {
                        State::Starting if !self.probed => {
                            self.probing_since.get_or_insert_with(Instant::now);
                            Duration::ZERO
                        }
                        State::Starting => {
                            let since = *self.probing_since.get_or_insert_with(Instant::now);
                            startup_probe_interval(since.elapsed(), self.snap.manifest.health_interval)
                        }
                        _ => self.snap.manifest.health_interval,
                    };
                    self.next_probe = Some(Instant::now() + wait);
                }
            }
            _ => self.next_probe = None,
        }
        if self.at_rest() {
            self.watch_outside();
        } else if let Some(watch) = self.outside.take() {
            watch.abort();
        }
        let m = &self.machine;
        self.snap.state = state;
        self.snap.stage = match state {
            State::Starting if awaits_ready => Some(self.runtime_stage.unwrap_or("launching")),
            State::Starting if self.checks_health() => Some("waiting for health"),
            State::Starting => Some("confirming it stays up"),
            _ => None,
        };
        self.snap.restarts = m.restarts;
        self.snap.consecutive_failures = m.health_failures;
        // A stuck stop says what is still alive, which only the task knows.
        self.snap.last_error = match m.stuck_error() {
            Some(error) => Some(self.with_details(error).to_string()),
            None => m.last_error.clone(),
        };
        self.snap.next = m.next.clone();
        self.snap.wishes = m.wishes;
        self.snap.stop_killed = m.stop_killed;
        self.status.send_replace(self.snap.clone());
        crate::daemon::list_changed();
        for answer in self.answers.drain(..) {
            match answer {
                Answer::Start(reply, result) => drop(reply.send(result)),
                Answer::Stop(reply, result) => drop(reply.send(result)),
            }
        }
    }

    /// Stopped or failed: nothing runs and nothing is about to.
    fn at_rest(&self) -> bool {
        matches!(self.machine.state(), State::Stopped | State::Failed)
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
            let _ = tx.send(Box::new(Message::StartedOutside { watch }));
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
                    let _ = tx.send(Box::new(Message::Found(launched)));
                    return;
                }
                tokio::time::sleep(ADOPT_RETRY).await;
            }
            let _ = tx.send(Box::new(Message::NothingToAdopt));
        });
    }

    /// Whether the service has a health check: its manifest's, or one its
    /// runtime offers.
    fn checks_health(&self) -> bool {
        self.snap.manifest.has_health_check() || self.instance.as_ref().is_some_and(|i| i.check().is_some())
    }

    fn launch_probe(&mut self) {
        let timeout = match self.machine.deadline() {
            Some(deadline) if self.machine.state() == State::Starting => {
                Instant::from_std(deadline).saturating_duration_since(Instant::now())
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
        self.next_probe = None;
        let (generation, tx) = (self.generation, self.tx.clone());
        tokio::spawn(async move {
            let result = health::timed(timeout, check).await;
            let _ = tx.send(Box::new(Message::Probed { generation, result }));
        });
    }

    /// The last lines of the current attempt (an older attempt's lines
    /// would explain nothing about this one).
    fn recent_logs(&self) -> Vec<String> {
        let lines = self.logs.tail(FAILURE_LOG_LINES);
        lines.iter().filter(|l| self.attempt_at.is_none_or(|at| l.ts >= at)).map(|l| l.render()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::usage::Reading;
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
            let _ = end.send(Ended::exited(ExitInfo { code: Some(code), signal: None }));
        }
    }

    struct Fake {
        launches: mpsc::UnboundedSender<Launch>,
        knobs: Knobs,
    }

    /// How the fake's instances behave; tests turn these during a run.
    #[derive(Clone, Default)]
    struct Knobs {
        /// Whether the instances' own health check hangs (else it passes).
        checks_hang: Arc<Mutex<bool>>,
        /// Whether stop and kill are ignored (a process stuck in the kernel).
        unkillable: Arc<Mutex<bool>>,
    }

    /// Stopping a fake instance ends it at once, with code 0. It offers a
    /// health check of its own, as a Compose project does.
    struct FakeInstance {
        end: Arc<Mutex<Option<oneshot::Sender<Ended>>>>,
        knobs: Knobs,
    }

    impl Instance for FakeInstance {
        fn parts(&self) -> Parts {
            Parts { pid: Some(1), containers: Vec::new() }
        }
        fn stop(&self, _signal: Signal, _timeout: Duration) {
            if *self.knobs.unkillable.lock().unwrap() {
                return;
            }
            if let Some(end) = self.end.lock().unwrap().take() {
                let _ = end.send(Ended::exited(ExitInfo { code: Some(0), signal: None }));
            }
        }
        fn kill(&self) {
            self.stop(Signal::SIGKILL, Duration::ZERO);
        }
        fn group(&self) -> Option<GroupRecord> {
            None
        }
        fn check(&self) -> Option<BoxFuture<'static, health::Outcome>> {
            let hang = *self.knobs.checks_hang.lock().unwrap();
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
            let instance = FakeInstance { end, knobs: self.knobs.clone() };
            Ok(Launched { instance: Box::new(instance), exited, ready: None, progress: None, started_at: None })
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
                    docker: EngineInfo {
                        status: "unavailable",
                        available: false,
                        version: None,
                        api_version: None,
                        error: None,
                    },
                    compose: ToolInfo { tool: None, version: None, error: None },
                }
            })
        }
        fn measure(&self, _: Vec<(String, Parts)>) -> BoxFuture<'static, HashMap<String, Reading>> {
            Box::pin(async { HashMap::new() })
        }
    }

    struct Harness {
        service: ServiceHandle,
        store: Store,
        arbiter: Arc<Arbiter>,
        knobs: Knobs,
        launches: mpsc::UnboundedReceiver<Launch>,
        _state: tempfile::TempDir,
    }

    fn harness(manifest_yaml: &str) -> Harness {
        let state = tempfile::tempdir().unwrap();
        let manifest = crate::manifest::parse(
            Path::new("/s/x/service.yaml"),
            manifest_yaml,
            crate::manifest::Paths::Confined,
            &|p| Some(p.into()),
        )
        .unwrap();
        let (tx, launches) = mpsc::unbounded_channel();
        let arbiter = Arc::new(Arbiter::default());
        let knobs = Knobs::default();
        let store = Store::open(state.path()).unwrap().holding_paused_clock();
        let shared = Shared {
            runtime: Arc::new(Fake { launches: tx, knobs: knobs.clone() }),
            arbiter: arbiter.clone(),
            http: crate::health::client(),
            store: store.clone(),
            metrics: Metrics::default(),
            groups: Groups::default(),
        };
        let logs = Arc::new(LogStore::new(state.path().join("x.log")));
        let service = ServiceHandle::spawn(Arc::new(manifest), shared, logs);
        Harness { service, store, arbiter, knobs, launches, _state: state }
    }

    /// Wait (in virtual time, so at no cost) for `state`; a minute is plenty.
    async fn state_becomes(service: &ServiceHandle, state: State) {
        let mut watch = service.watch();
        let reached = tokio::time::timeout(Duration::from_secs(60), watch.wait_for(|s| s.state == state)).await;
        assert!(reached.is_ok(), "never became {state:?}; now {:?}", service.snapshot().state);
    }

    #[test]
    fn startup_probes_are_frequent_at_first_then_back_off_with_the_time_taken() {
        let ms = Duration::from_millis;
        let every = |since, interval| startup_probe_interval(since, interval);
        let long = Duration::from_secs(10);
        assert_eq!(every(ms(0), long), ms(2));
        assert_eq!(every(ms(99), long), ms(2), "every 2 ms for the first 100 ms");
        assert_eq!(every(ms(150), long), ms(2));
        assert_eq!(every(ms(2_000), long), ms(20));
        assert_eq!(every(ms(10_000), long), ms(100), "a hundredth of the time taken");
        assert_eq!(every(ms(300_000), long), ms(1000), "at most every second");
        assert_eq!(every(ms(60_000), ms(300)), ms(300), "or every health_interval when shorter");
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_is_shown_and_answered_only_once_the_store_has_written_it() {
        let mut h = harness("name: x\ncommand: [x]\n");
        let release = h.store.hold();
        let start = tokio::spawn({
            let service = h.service.clone();
            async move { service.start(OnBusy::Refuse, None).await }
        });
        // Launched, and the wish and the process group sent to the store, which holds them.
        let _launch = h.launches.recv().await.unwrap();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(h.service.snapshot().state, State::Stopped, "shown before it was written");
        assert!(!start.is_finished(), "answered before it was written");
        drop(release);
        start.await.unwrap().expect("starts once written");
        assert_eq!(h.store.desired().await.get("x"), Some(&Desired::Running));
    }

    #[tokio::test(start_paused = true)]
    async fn crashes_are_restarted_after_the_policy_s_delays_until_the_window_is_spent() {
        let mut h = harness(
            "name: x\ncommand: [x]\nrestart: always\nrestart_delay: 1\nrestart_delay_max: 4\nmax_restarts: 4\nrestart_window: 1h\n",
        );
        h.service.start(OnBusy::Refuse, None).await.expect("starts (stays up for the settle time)");
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
        h.service.start(OnBusy::Refuse, None).await.unwrap();
        h.launches.recv().await.unwrap().end(3);
        state_becomes(&h.service, State::Backoff).await;
        h.service.stop().await.unwrap();
        assert_eq!(h.service.snapshot().state, State::Stopped);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(h.launches.try_recv().is_err(), "no restart after a stop by hand");

        // Crash again, and start by hand during the backoff: at once, not 30 s later.
        h.service.start(OnBusy::Refuse, None).await.unwrap();
        h.launches.recv().await.unwrap().end(3);
        state_becomes(&h.service, State::Backoff).await;
        let asked = Instant::now();
        h.service.start(OnBusy::Refuse, None).await.unwrap();
        assert_eq!(h.launches.recv().await.unwrap().at, asked, "a start by hand does not wait for the backoff");
    }

    #[tokio::test(start_paused = true)]
    async fn a_clean_exit_under_on_failure_stops_and_a_gpu_claim_is_released() {
        let mut h = harness("name: x\ncommand: [x]\ngpu_required: true\n");
        h.service.start(OnBusy::Refuse, None).await.unwrap();
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
        h.service.start(OnBusy::Refuse, None).await.unwrap();
        let launch = h.launches.recv().await.unwrap();
        // A check hangs, and the process dies while it is out.
        *h.knobs.checks_hang.lock().unwrap() = true;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Checks made from now on answer (the one already out keeps hanging).
        *h.knobs.checks_hang.lock().unwrap() = false;
        launch.end(1);
        let _replacement = h.launches.recv().await.unwrap();
        // The replacement is checked (and found healthy) within its health_timeout. (Its
        // launch is seen before its snapshot, which waits for the store.)
        let mut watch = h.service.watch();
        let replaced = watch.wait_for(|s| s.restarts == 1 && s.state == State::Running);
        assert!(tokio::time::timeout(Duration::from_secs(60), replaced).await.is_ok(), "never running again");
        assert!(Instant::now() - launch.at < Duration::from_secs(3), "became running only after a timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_that_dies_follows_the_restart_policy_and_the_caller_hears_what_is_next() {
        let mut h = harness("name: x\ncommand: [x]\nrestart: on-failure\nrestart_delay: 2\nmax_restarts: 3\n");
        *h.knobs.checks_hang.lock().unwrap() = true;
        let start = tokio::spawn({
            let service = h.service.clone();
            async move { service.start(OnBusy::Refuse, None).await }
        });
        h.launches.recv().await.unwrap().end(1);
        let failure = start.await.unwrap().expect_err("the start failed");
        assert!(matches!(failure.error, StartError::Exited { .. }), "{failure:?}");
        let next = failure.next.expect("what happens next");
        assert!(next.contains("restarting in 2.0 s (restart 1 of 3 within 300 s)"), "{next}");
        assert_eq!(h.service.snapshot().state, State::Backoff);
        // 1 + 3 runs, then the policy gives up.
        for _ in 0..3 {
            h.launches.recv().await.unwrap().end(1);
        }
        state_becomes(&h.service, State::Failed).await;
        assert!(h.launches.try_recv().is_err());
        assert_eq!(h.service.snapshot().restarts, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_that_outlives_sigkill_answers_after_the_grace_and_keeps_the_gpu_claim() {
        let mut h = harness("name: x\ncommand: [x]\ngpu_required: true\nstop_timeout: 2\n");
        h.service.start(OnBusy::Refuse, None).await.unwrap();
        let launch = h.launches.recv().await.unwrap();
        *h.knobs.unkillable.lock().unwrap() = true;
        let asked = Instant::now();
        let error = h.service.stop().await.expect_err("the processes are still there");
        assert_eq!(Instant::now() - asked, Duration::from_secs(2) + crate::lifecycle::STOP_GRACE);
        assert!(matches!(&error, StartError::Stuck { alive, .. } if alive == "process group 1"), "{error:?}");
        let snap = h.service.snapshot();
        assert_eq!(snap.state, State::Stopping);
        assert!(snap.last_error.unwrap().contains("still alive"));
        assert_eq!(h.arbiter.holder().as_deref(), Some("x"), "the claim stays while a process may hold VRAM");
        // When it finally goes, the service is stopped and the claim released.
        launch.end(137);
        state_becomes(&h.service, State::Stopped).await;
        assert_eq!(h.arbiter.holder(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_wins_over_a_start_that_was_waiting() {
        let mut h = harness("name: x\ncommand: [x]\n");
        let wish = h.service.snapshot().wishes;
        h.service.stop().await.unwrap();
        // The start read its wish before the stop (it waited on a dependency).
        let failure = h.service.start(OnBusy::Refuse, Some(wish)).await.expect_err("the later stop wins");
        assert!(matches!(failure.error, StartError::Interrupted { .. }), "{failure:?}");
        assert!(h.launches.try_recv().is_err(), "nothing was launched");
        assert_eq!(h.service.snapshot().state, State::Stopped);
    }
}
