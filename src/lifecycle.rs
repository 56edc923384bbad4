//! The service lifecycle as a pure state machine (SPEC §4):
//! [`Machine::step`] takes the machine, one [`Input`] and the clock value,
//! changes the machine and returns the [`Action`]s the service task carries
//! out (launch, signal, release the GPU, emit, answer, persist). It never
//! sleeps, spawns or reads the clock itself; the task feeds it inputs and
//! sleeps until [`Machine::deadline`]. Phases carry their own data
//! (`Starting { deadline, .. }`, `Stopping { kill_at, then, .. }`,
//! `Backoff { until, .. }`), and the machine keeps converging towards its
//! [`Goal`], with the restart policy's backoff, until the goal holds or the
//! policy gives up.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::events::EventKind;
use crate::manifest::{Manifest, RestartPolicy};
use crate::runtime::ExitInfo;

/// A service without a health check counts as started once it has stayed up
/// this long (capped by its `health_timeout`), like supervisord's `startsecs`.
pub const SETTLE_TIME: Duration = Duration::from_secs(1);
/// After SIGKILL, how long a stop waits for the processes to be gone before
/// it answers that they are not (a process stuck in the kernel).
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// The same for a Compose project, whose kill goes through the Compose tool
/// (a Python program for v1, slow to start on a loaded machine) and the engine.
pub const COMPOSE_STOP_GRACE: Duration = Duration::from_secs(30);
/// How often a service that waits for the GPU or for its runtime (the
/// Docker engine) tries again. Waiting spends none of the restart budget.
pub const WAIT_RETRY: Duration = Duration::from_secs(1);
/// A start whose health check passes sooner than this after the launch is
/// answered only once the instance has been up this long, when another
/// process could have answered the check (a `health_command`, a remote
/// endpoint, a Compose project): a process that dies in its first moments
/// is a failed start, not a success. Slower starts are not held, nor those
/// whose check's port was found free at launch ([`Launch::confirm`]).
pub const CONFIRM_TIME: Duration = Duration::from_millis(300);

/// The state every client sees (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Stopped,
    Starting,
    Running,
    Unhealthy,
    Stopping,
    Backoff,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Running => "running",
            State::Unhealthy => "unhealthy",
            State::Stopping => "stopping",
            State::Backoff => "backoff",
            State::Failed => "failed",
        }
    }

    /// States in which the service holds its GPU claim (SPEC §4).
    pub fn holds_gpu(self) -> bool {
        matches!(self, State::Starting | State::Running | State::Unhealthy | State::Backoff | State::Stopping)
    }

    /// Whether processes of the service may exist in this state.
    pub fn has_process(self) -> bool {
        matches!(self, State::Starting | State::Running | State::Unhealthy | State::Stopping)
    }

    /// The service-manager seed's vocabulary (`GET /api/services/status`).
    pub fn seed_status(self) -> &'static str {
        match self {
            State::Running => "online",
            State::Stopped => "offline",
            State::Starting => "starting",
            State::Unhealthy => "unhealthy",
            State::Stopping => "stopping",
            State::Backoff => "restarting",
            State::Failed => "failed",
        }
    }
}

/// What the service is asked to be; the last request wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    Running,
    Stopped,
    /// Stopped, then the task ends (service removed, daemon shutting down).
    Gone,
}

/// What a start does when another service holds the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBusy {
    /// Answer `GpuBusy` and stay at rest (a start by hand: the caller decides).
    Refuse,
    /// Wait in `backoff` until the GPU is free (a restore at daemon start).
    Wait,
}

/// Why a start did not end with the service running.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StartError {
    #[error("GPU service '{holder}' is already running")]
    GpuBusy { holder: String },
    /// `vram` policy: not enough GPU memory free; who would have to stop.
    #[error("{}", describe_full(name, shortfall))]
    GpuFull { name: String, shortfall: crate::gpu::Shortfall },
    /// Something already listens on a port the service is meant to use.
    #[error("cannot start service '{name}': port {port} is already in use by {holder}")]
    PortInUse { name: String, port: u16, holder: String },
    #[error("cannot start service '{name}': {message}")]
    Spawn { name: String, message: String, logs: Vec<String> },
    #[error("service '{name}' {}", describe_failed_start(exit, reason.as_deref()))]
    Exited { name: String, exit: ExitInfo, reason: Option<String>, logs: Vec<String> },
    #[error("service '{name}' did not become healthy within {timeout:.1}s (last check: {last_check})")]
    HealthTimeout { name: String, timeout: f64, last_check: String, logs: Vec<String> },
    /// The runtime was still bringing it up (Compose `up -d`: pulling,
    /// building, creating) when `start_timeout` ran out.
    #[error("service '{name}' was not up within its start_timeout of {timeout:.0}s (still {stage})")]
    StartTimeout { name: String, timeout: f64, stage: String, logs: Vec<String> },
    /// Another wish came first (a stop, a removal); `why` says which.
    #[error("service '{name}' was stopped before it became healthy: {why}")]
    Interrupted { name: String, why: String },
    #[error("service '{name}' was removed")]
    Removed { name: String },
    #[error("service '{name}' did not stop: {alive} still alive {grace}s after SIGKILL")]
    Stuck { name: String, alive: String, grace: u64 },
}

/// `cannot start service 'x': it needs 20.0 GiB on 1 GPU; it fits once 'a'
/// (frees 12.0 GiB) stops (start it with force to stop them)`.
fn describe_full(name: &str, s: &crate::gpu::Shortfall) -> String {
    use crate::gpu::plan::gib;
    let need = format!("it needs {} on {} GPU{}", gib(s.need), s.gpus, if s.gpus == 1 { "" } else { "s" });
    if !s.blocked.is_empty() {
        return format!(
            "cannot start service '{name}': {need}, and no GPU can give it even with force: {}",
            s.blocked.join("; ")
        );
    }
    let stop: Vec<String> = s.stop.iter().map(|e| format!("'{}' (frees {})", e.service, gib(e.frees_bytes))).collect();
    let verb = if stop.len() == 1 { "stops" } else { "stop" };
    format!(
        "cannot start service '{name}': {need}; it fits once {} {verb} (start it with force to stop them)",
        stop.join(", ")
    )
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
            | StartError::HealthTimeout { logs, .. }
            | StartError::StartTimeout { logs, .. } => logs,
            _ => &[],
        }
    }

    /// The same error carrying the service's last log lines.
    pub fn with_logs(mut self, lines: Vec<String>) -> StartError {
        if let StartError::Spawn { logs, .. }
        | StartError::Exited { logs, .. }
        | StartError::HealthTimeout { logs, .. }
        | StartError::StartTimeout { logs, .. } = &mut self
        {
            *logs = lines;
        }
        self
    }
}

/// Why a launch (or an adoption) did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Another service holds the GPU.
    GpuBusy { holder: String },
    /// `vram` policy: no room on the GPUs.
    GpuFull(crate::gpu::Shortfall),
    /// Something listens on one of its ports already; `holder` says who
    /// (`pid 4242 (service 'alpha')`).
    PortBusy { port: u16, holder: String },
    /// The command cannot be run (a missing program, a bad `working_dir`).
    Spawn(String),
    /// The runtime cannot be reached now (no Docker engine): worth waiting for.
    Unavailable(String),
}

/// What the service task tells the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A caller's wish. `if_current`: only if no other wish arrived since
    /// the machine's wish number was that (a start that waited on its
    /// dependencies, or on a preemption, must not undo a later stop).
    Want {
        goal: Goal,
        on_busy: OnBusy,
        if_current: Option<u64>,
    },
    /// Remembered from a previous daemon: the policy gave up on it.
    GaveUp {
        reason: String,
    },
    /// The manifest changed on disk.
    Manifest(Spec),
    /// The instance asked for by [`Action::Launch`] or [`Action::Adopt`] runs.
    Launched(Launch),
    /// [`Action::Launch`] could not be carried out.
    Refused(Refusal),
    /// [`Action::Adopt`] found another service holding the GPU; the task
    /// holds the instance, unclaimed, to stop it.
    AdoptRefused {
        holder: String,
    },
    /// The runtime reports the instance up (Compose: `up -d` done).
    Ready,
    Probed {
        ok: bool,
        message: String,
    },
    /// The instance ended and nothing of it is left. `unavailable`: it never
    /// ran because its runtime could not be reached.
    Exited {
        exit: ExitInfo,
        reason: Option<String>,
        unavailable: bool,
    },
    /// An instance of the service was found running (started by a previous
    /// daemon or by hand); the task holds it until [`Action::Adopt`].
    Found,
    /// [`Machine::deadline`] has passed.
    Timer,
}

/// An instance that runs now, as [`Input::Launched`] reports it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Launch {
    pub pid: Option<u32>,
    pub containers: Vec<String>,
    /// Whether health checks (the manifest's or the runtime's) decide.
    pub checks: bool,
    /// Whether the runtime will say when it is up ([`Input::Ready`]).
    pub awaits_ready: bool,
    /// Found running rather than launched.
    pub adopted: bool,
    /// Launched by the restart policy, not by a request.
    pub automatic: bool,
    /// Whether a check passing within [`CONFIRM_TIME`] of the launch waits
    /// for the process to stay up that long (the check could be answered by
    /// another process).
    pub confirm: bool,
}

/// What the service task carries out, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Apply a pending manifest, claim the GPU if the service needs it (else
    /// give up any claim), launch; the result comes back as an input.
    Launch {
        automatic: bool,
    },
    /// Take over the instance that was found, claiming the GPU if needed.
    Adopt,
    /// Drop the found instance without touching it.
    Abandon,
    /// Ask the instance to stop (stop signal, `compose stop`).
    Stop,
    /// SIGKILL the group (`compose kill`).
    Kill,
    /// Give up the GPU claim (the processes are gone).
    Release,
    Emit(EventKind),
    Log(String),
    /// Answer every waiting start.
    Started(Result<(), Failure>),
    /// Answer only the start whose wish is the input being stepped.
    Answer(Result<(), Failure>),
    /// Answer every waiting stop.
    Stopped(Result<(), StartError>),
    /// Remember what the service is meant to be across daemon restarts.
    Persist(Remember),
    /// End the task (after [`Goal::Gone`] is reached).
    Finish,
}

/// A failed start as its caller hears it: why, and what happens next.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub error: StartError,
    /// `restarting in 1.0 s (restart 1 of 10 within 300 s)`, or `None` when
    /// nothing will happen without another request.
    pub next: Option<String>,
}

/// What is persisted of the goal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remember {
    Running,
    Stopped,
    GaveUp(String),
}

/// What the machine needs of the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub name: String,
    pub gpu: bool,
    pub policy: Policy,
    pub health_timeout: Duration,
    /// How long the runtime may take to bring it up before health checks
    /// begin (Compose `up -d`: a pull or a build may take minutes).
    pub start_timeout: Duration,
    pub health_failures: u32,
    pub stop_timeout: Duration,
    pub stop_signal: String,
    /// After SIGKILL, how long the stop waits before it answers that
    /// something outlived it ([`STOP_GRACE`], [`COMPOSE_STOP_GRACE`]).
    pub stop_grace: Duration,
}

impl Spec {
    pub fn of(m: &Manifest) -> Spec {
        Spec {
            name: m.name.clone(),
            gpu: m.gpu_required,
            policy: Policy::of(m),
            health_timeout: m.health_timeout,
            start_timeout: m.start_timeout,
            health_failures: m.health_failures,
            stop_timeout: m.stop_timeout,
            stop_signal: m.stop_signal.to_string(),
            stop_grace: match m.runtime {
                crate::manifest::Runtime::Native { .. } => STOP_GRACE,
                crate::manifest::Runtime::Compose { .. } => COMPOSE_STOP_GRACE,
            },
        }
    }
}

/// Why the service waits in `backoff`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// The restart policy's delay.
    Restart,
    /// Another service holds the GPU.
    Gpu { holder: String },
    /// Something else listens on one of its ports.
    Port { port: u16, holder: String },
    /// The runtime cannot be reached (the Docker engine).
    Runtime { reason: String },
}

/// What happens once a stop has ended the instance.
#[derive(Debug, Clone, PartialEq)]
pub enum Then {
    /// Whatever the goal says now: launch again if it is `running`.
    Converge,
    /// The task stopped it because it failed (no health within the timeout,
    /// judged unhealthy): the restart policy decides.
    Recover(Fault),
    /// It was found running while another service held the GPU: `failed`.
    Fail(String),
}

impl Then {
    /// Why the daemon stopped the instance, for its `exited` event.
    fn why(&self) -> String {
        match self {
            Then::Converge => "asked to stop".into(),
            Then::Recover(Fault { error: Some(StartError::HealthTimeout { timeout, .. }), .. }) => {
                format!("stopped by nanny: no health check passed within health_timeout {timeout} s")
            }
            Then::Recover(Fault { error: Some(StartError::StartTimeout { timeout, .. }), .. }) => {
                format!("stopped by nanny: not up within start_timeout {timeout} s")
            }
            Then::Recover(Fault { error: Some(error), .. }) => format!("stopped by nanny: {error}"),
            Then::Recover(Fault { error: None, .. }) => "stopped by nanny: judged unhealthy".into(),
            Then::Fail(reason) => format!("stopped by nanny: {reason}"),
        }
    }
}

/// A failure of the instance, as the restart policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// The start it ended, if it failed while starting.
    pub error: Option<StartError>,
    /// A non-zero exit, a signal, a failed start or an unhealthy verdict.
    pub failed: bool,
    /// How long it had been running healthy, if at all.
    pub healthy_for: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    Stopped,
    Starting {
        since: Instant,
        deadline: Instant,
        /// Whether health checks (the manifest's or the runtime's) decide.
        checks: bool,
        /// Whether the runtime is yet to report the instance up.
        awaits_ready: bool,
        adopted: bool,
        /// Until when a passing check waits for the process to stay up.
        confirm_until: Option<Instant>,
        /// A check passed before `confirm_until`; running once that is over.
        passed: bool,
    },
    Running {
        since: Instant,
    },
    Unhealthy {
        since: Instant,
    },
    Stopping {
        kill_at: Instant,
        /// When SIGKILL was sent; the stop answers `STOP_GRACE` later at most.
        killed_at: Option<Instant>,
        /// The grace passed and the processes are still there.
        stuck: bool,
        then: Then,
    },
    Backoff {
        until: Instant,
        wait: Wait,
    },
    Failed {
        reason: String,
    },
}

impl Phase {
    pub fn state(&self) -> State {
        match self {
            Phase::Stopped => State::Stopped,
            Phase::Starting { .. } => State::Starting,
            Phase::Running { .. } => State::Running,
            Phase::Unhealthy { .. } => State::Unhealthy,
            Phase::Stopping { .. } => State::Stopping,
            Phase::Backoff { .. } => State::Backoff,
            Phase::Failed { .. } => State::Failed,
        }
    }
}

/// One service's lifecycle: its phase, its goal, and what the restart
/// policy remembers.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    pub spec: Spec,
    /// A newer manifest found while processes ran, applied at the next launch.
    pub pending: Option<Spec>,
    pub phase: Phase,
    pub goal: Goal,
    /// How the current wish to run treats a busy GPU.
    pub on_busy: OnBusy,
    /// Counts wishes, for [`Input::Want`]'s `if_current`.
    pub wishes: u64,
    pub history: RestartHistory,
    /// Automatic restarts since the service was created.
    pub restarts: u32,
    pub health_failures: u32,
    pub last_check: Option<String>,
    pub last_error: Option<String>,
    /// What happens next, in words, while the service converges.
    pub next: Option<String>,
    /// Whether the last stop needed SIGKILL (the stop signal was ignored).
    pub stop_killed: bool,
}

impl Machine {
    pub fn new(spec: Spec) -> Machine {
        Machine {
            spec,
            pending: None,
            phase: Phase::Stopped,
            goal: Goal::Stopped,
            on_busy: OnBusy::Refuse,
            wishes: 0,
            history: RestartHistory::default(),
            restarts: 0,
            health_failures: 0,
            last_check: None,
            last_error: None,
            next: None,
            stop_killed: false,
        }
    }

    pub fn state(&self) -> State {
        self.phase.state()
    }

    /// While a stop's processes outlive SIGKILL by the spec's `stop_grace`: the error
    /// that says so (what is still alive is for the task to fill in).
    pub fn stuck_error(&self) -> Option<StartError> {
        matches!(self.phase, Phase::Stopping { stuck: true, .. }).then(|| StartError::Stuck {
            name: self.spec.name.clone(),
            alive: String::new(),
            grace: self.spec.stop_grace.as_secs(),
        })
    }

    /// When the task must send [`Input::Timer`].
    pub fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Starting { deadline, .. } => Some(*deadline),
            Phase::Stopping { stuck: true, .. } => None,
            Phase::Stopping { killed_at: Some(at), .. } => Some(*at + self.spec.stop_grace),
            Phase::Stopping { kill_at, .. } => Some(*kill_at),
            Phase::Backoff { until, .. } => Some(*until),
            _ => None,
        }
    }

    /// The pure transition function: `(state, input, now) -> (state, actions)`.
    pub fn step(mut self, input: Input, now: Instant) -> (Machine, Vec<Action>) {
        let mut out = Vec::new();
        self.apply(input, now, &mut out);
        (self, out)
    }

    /// [`Machine::step`] in place.
    pub fn apply(&mut self, input: Input, now: Instant, out: &mut Vec<Action>) {
        let remembered = self.remember();
        // What only answers an action of the machine's own (a launch, an
        // adoption) is ignored anywhere else: the machine never acts on a
        // report it did not ask for.
        let at_rest = matches!(self.phase, Phase::Stopped | Phase::Failed { .. } | Phase::Backoff { .. });
        if !at_rest && matches!(input, Input::Launched(_) | Input::Refused(_) | Input::AdoptRefused { .. }) {
            return;
        }
        match input {
            Input::Want { goal, on_busy, if_current } => self.want(goal, on_busy, if_current, now, out),
            Input::GaveUp { reason } => {
                if self.phase == Phase::Stopped {
                    self.goal = Goal::Running;
                    self.last_error = Some(reason.clone());
                    self.phase = Phase::Failed { reason };
                }
            }
            Input::Manifest(spec) => match self.state().has_process() {
                true => self.pending = Some(spec),
                false => {
                    self.spec = spec;
                    self.pending = None;
                }
            },
            Input::Launched(launch) => self.launched(launch, now, out),
            Input::Refused(refusal) => self.refused(refusal, now, out),
            Input::AdoptRefused { holder } => {
                // Found running while another holds the GPU: never two holders.
                let reason = format!("found running while GPU service '{holder}' holds the GPU; stopped");
                out.push(Action::Emit(EventKind::Waiting { reason: reason.clone() }));
                self.begin_stop(Then::Fail(reason), now, out);
            }
            Input::Ready => {
                if let Phase::Starting { awaits_ready, checks, deadline, .. } = &mut self.phase {
                    *awaits_ready = false;
                    *deadline = now + self.spec.health_timeout;
                    if !*checks {
                        self.became_running(now, out);
                    }
                }
            }
            Input::Probed { ok, message } => self.probed(ok, message, now, out),
            Input::Exited { exit, reason, unavailable } => self.exited(exit, reason, unavailable, now, out),
            Input::Found => match self.phase {
                // Running now: whoever started it wants it running.
                Phase::Stopped | Phase::Failed { .. } => {
                    self.wishes += 1;
                    self.history.reset();
                    self.goal = Goal::Running;
                    out.push(Action::Adopt);
                }
                _ => out.push(Action::Abandon),
            },
            Input::Timer => self.timer(now, out),
        }
        let remember = self.remember();
        if remember != remembered
            && let Some(remember) = remember
        {
            out.push(Action::Persist(remember));
        }
    }

    /// What is persisted of the goal (`None`: nothing, the daemon is going away).
    fn remember(&self) -> Option<Remember> {
        match (&self.goal, &self.phase) {
            (Goal::Gone, _) => None,
            (Goal::Stopped, _) => Some(Remember::Stopped),
            (Goal::Running, Phase::Failed { reason }) => Some(Remember::GaveUp(reason.clone())),
            (Goal::Running, _) => Some(Remember::Running),
        }
    }

    fn want(&mut self, goal: Goal, on_busy: OnBusy, if_current: Option<u64>, now: Instant, out: &mut Vec<Action>) {
        match if_current {
            Some(wish) if wish != self.wishes => {
                // Someone asked something else since: that wish stands.
                let why = match self.goal {
                    Goal::Running => "another start was asked meanwhile",
                    Goal::Stopped => "a stop was asked while this start waited",
                    Goal::Gone => "it is being removed",
                };
                let error = StartError::Interrupted { name: self.spec.name.clone(), why: why.into() };
                return out.push(Action::Answer(Err(Failure { error, next: None })));
            }
            Some(_) => {}
            None => self.wishes += 1,
        }
        // A wish by hand overrides a pending restart and gives a fresh budget.
        self.history.reset();
        if goal != Goal::Running {
            self.goal = if self.goal == Goal::Gone { Goal::Gone } else { goal };
            let why = match self.goal {
                Goal::Gone => "it is being removed",
                _ => "a stop was asked",
            };
            let error = StartError::Interrupted { name: self.spec.name.clone(), why: why.into() };
            out.push(Action::Started(Err(Failure { error, next: None })));
            return match &mut self.phase {
                Phase::Starting { .. } | Phase::Running { .. } | Phase::Unhealthy { .. } => {
                    self.begin_stop(Then::Converge, now, out)
                }
                Phase::Stopping { then, .. } => {
                    if matches!(then, Then::Recover(_)) {
                        *then = Then::Converge;
                    }
                }
                Phase::Backoff { .. } | Phase::Failed { .. } => self.settle_stopped(out),
                Phase::Stopped => self.settled(out),
            };
        }
        if self.goal == Goal::Gone {
            let error = StartError::Removed { name: self.spec.name.clone() };
            return out.push(Action::Answer(Err(Failure { error, next: None })));
        }
        self.goal = Goal::Running;
        self.on_busy = on_busy;
        match self.phase {
            Phase::Running { .. } | Phase::Unhealthy { .. } => out.push(Action::Started(Ok(()))),
            // The caller waits for this start, or for the one after the stop.
            Phase::Starting { .. } | Phase::Stopping { .. } => {}
            Phase::Stopped | Phase::Failed { .. } | Phase::Backoff { .. } => self.launch(false, out),
        }
    }

    fn launch(&mut self, automatic: bool, out: &mut Vec<Action>) {
        if let Some(spec) = self.pending.take() {
            self.spec = spec;
        }
        out.push(Action::Launch { automatic });
    }

    fn launched(&mut self, launch: Launch, now: Instant, out: &mut Vec<Action>) {
        let Launch { pid, containers, checks, awaits_ready, adopted, automatic, confirm } = launch;
        // `health_timeout` counts from when the runtime has it up.
        let settle = match (awaits_ready, checks || adopted) {
            (true, _) => self.spec.start_timeout,
            (false, true) => self.spec.health_timeout,
            (false, false) => SETTLE_TIME.min(self.spec.health_timeout),
        };
        let confirm_until = (confirm && !adopted).then_some(now + CONFIRM_TIME);
        self.phase = Phase::Starting {
            since: now,
            deadline: now + settle,
            checks,
            awaits_ready,
            adopted,
            confirm_until,
            passed: false,
        };
        self.health_failures = 0;
        self.last_check = None;
        self.next = None;
        out.push(Action::Emit(match adopted {
            true => EventKind::Adopted { pid, containers },
            false => EventKind::Starting { pid, automatic },
        }));
    }

    fn refused(&mut self, refusal: Refusal, now: Instant, out: &mut Vec<Action>) {
        let name = self.spec.name.clone();
        match refusal {
            Refusal::GpuBusy { holder } => {
                let next = format!("waiting for the GPU ('{holder}' holds it)");
                self.busy(StartError::GpuBusy { holder: holder.clone() }, Wait::Gpu { holder }, next, now, out);
            }
            Refusal::GpuFull(shortfall) => {
                let holder = match shortfall.stop.is_empty() {
                    true => "no GPU has room".to_string(),
                    false => shortfall.stop.iter().map(|e| format!("'{}'", e.service)).collect::<Vec<_>>().join(", "),
                };
                let next = format!("waiting for GPU memory ({holder})");
                self.busy(StartError::GpuFull { name, shortfall }, Wait::Gpu { holder }, next, now, out);
            }
            Refusal::PortBusy { port, holder } => {
                let next = format!("waiting for port {port} (in use by {holder})");
                out.push(Action::Log(format!("port {port} is already in use by {holder}")));
                let error = StartError::PortInUse { name, port, holder: holder.clone() };
                self.busy(error, Wait::Port { port, holder }, next, now, out);
            }
            Refusal::Unavailable(reason) => {
                let next = format!("waiting for its runtime ({reason})");
                self.wait(Wait::Runtime { reason: reason.clone() }, next.clone(), now, out);
                let error = StartError::Spawn { name, message: reason, logs: Vec::new() };
                out.push(Action::Started(Err(Failure { error, next: Some(next) })));
            }
            Refusal::Spawn(message) => {
                out.push(Action::Log(message.clone()));
                let error = StartError::Spawn { name, message, logs: Vec::new() };
                self.fault(Fault { error: Some(error), failed: true, healthy_for: None }, now, out);
            }
        }
    }

    /// Something the start needs is taken (the GPU, a port): a start by hand
    /// is refused and the caller decides; a restart or a restore waits.
    fn busy(&mut self, error: StartError, wait: Wait, next: String, now: Instant, out: &mut Vec<Action>) {
        if self.on_busy == OnBusy::Wait || matches!(self.phase, Phase::Backoff { .. }) {
            self.wait(wait, next.clone(), now, out);
            out.push(Action::Started(Err(Failure { error, next: Some(next) })));
        } else {
            // Refused: nothing changes but the wish, which did not happen
            // (and a GPU claimed for the launch is given back).
            self.goal = Goal::Stopped;
            out.push(Action::Release);
            out.push(Action::Started(Err(Failure { error, next: None })));
        }
    }

    fn wait(&mut self, wait: Wait, next: String, now: Instant, out: &mut Vec<Action>) {
        if !matches!(&self.phase, Phase::Backoff { wait: w, .. } if *w == wait) {
            out.push(Action::Emit(EventKind::Waiting { reason: next.clone() }));
        }
        self.phase = Phase::Backoff { until: now + WAIT_RETRY, wait };
        self.next = Some(format!("{next}; trying again every {} s", WAIT_RETRY.as_secs()));
    }

    fn became_running(&mut self, now: Instant, out: &mut Vec<Action>) {
        let (startup_ms, checked) = match self.phase {
            Phase::Starting { since, adopted: false, checks, .. } => {
                (Some(now.duration_since(since).as_secs_f64() * 1000.0), checks)
            }
            Phase::Starting { checks, .. } => (None, checks),
            _ => (None, true),
        };
        self.phase = Phase::Running { since: now };
        self.last_error = None;
        self.next = None;
        out.push(Action::Log("running".into()));
        out.push(Action::Emit(EventKind::Healthy { startup_ms, checked }));
        out.push(Action::Started(Ok(())));
    }

    fn probed(&mut self, ok: bool, message: String, now: Instant, out: &mut Vec<Action>) {
        match self.phase {
            Phase::Starting { awaits_ready: false, confirm_until, ref mut passed, ref mut deadline, .. } if ok => {
                self.last_check = Some(message);
                match confirm_until {
                    // Passed at once: running once it has also stayed up a moment.
                    Some(until) if now < until => {
                        *passed = true;
                        *deadline = (*deadline).min(until);
                    }
                    _ => self.became_running(now, out),
                }
            }
            Phase::Starting { .. } => self.last_check = Some(message),
            Phase::Running { since } | Phase::Unhealthy { since } if !ok => {
                self.health_failures += 1;
                let failures = self.health_failures;
                out.push(Action::Log(format!("health check failed ({failures} in a row): {message}")));
                if failures < self.spec.health_failures || self.state() != State::Running {
                    return;
                }
                self.phase = Phase::Unhealthy { since };
                out.push(Action::Emit(EventKind::Unhealthy { consecutive_failures: failures, last_check: message }));
                if self.spec.policy.restart != RestartPolicy::Never {
                    let fault = Fault { error: None, failed: true, healthy_for: Some(now.duration_since(since)) };
                    self.begin_stop(Then::Recover(fault), now, out);
                }
            }
            Phase::Running { .. } => self.health_failures = 0,
            Phase::Unhealthy { .. } => {
                self.health_failures = 0;
                self.phase = Phase::Running { since: now };
                out.push(Action::Log("healthy again".into()));
                out.push(Action::Emit(EventKind::Healthy { startup_ms: None, checked: true }));
            }
            _ => {}
        }
    }

    fn exited(
        &mut self,
        exit: ExitInfo,
        reason: Option<String>,
        unavailable: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        // An exit the daemon caused (a stop, a health verdict) is expected,
        // and the event says why it was stopped.
        let why = match &self.phase {
            Phase::Stopping { then, killed_at, .. } => {
                self.stop_killed = killed_at.is_some();
                let killed = match killed_at {
                    Some(_) => format!("; killed after stop_timeout {} s", self.spec.stop_timeout.as_secs_f64()),
                    None => String::new(),
                };
                Some(format!("{}{killed}", then.why()))
            }
            _ => None,
        };
        if self.state().has_process() {
            let (code, signal) = (exit.code, exit.signal.map(|s| s.to_string()));
            out.push(Action::Emit(EventKind::Exited { code, signal, expected: why.is_some(), reason: why }));
        }
        match std::mem::replace(&mut self.phase, Phase::Stopped) {
            Phase::Starting { .. } if unavailable => {
                let reason = reason.unwrap_or_else(|| "its runtime cannot be reached".into());
                self.refused(Refusal::Unavailable(reason), now, out);
            }
            Phase::Starting { .. } => {
                let error = StartError::Exited { name: self.spec.name.clone(), exit, reason, logs: Vec::new() };
                self.fault(Fault { error: Some(error), failed: true, healthy_for: None }, now, out);
            }
            Phase::Running { since } | Phase::Unhealthy { since } => {
                let healthy_for = Some(now.duration_since(since));
                self.fault(Fault { error: None, failed: !exit.success(), healthy_for }, now, out);
            }
            Phase::Stopping { then, .. } => match then {
                Then::Fail(reason) => self.settle_failed(reason, None, out),
                Then::Recover(fault) if self.goal == Goal::Running => self.fault(fault, now, out),
                Then::Converge if self.goal == Goal::Running => {
                    out.push(Action::Emit(EventKind::Stopped));
                    out.push(Action::Stopped(Ok(())));
                    self.launch(false, out);
                }
                Then::Recover(_) | Then::Converge => self.settle_stopped(out),
            },
            // Nothing ran: an exit of an older instance, already accounted for.
            phase => self.phase = phase,
        }
    }

    /// The instance failed (or ended) without being asked to: the restart
    /// policy decides. A failed start's caller hears why and what is next.
    fn fault(&mut self, fault: Fault, now: Instant, out: &mut Vec<Action>) {
        if self.goal != Goal::Running {
            if let Some(error) = fault.error {
                out.push(Action::Started(Err(Failure { error, next: None })));
            }
            return self.settle_stopped(out);
        }
        let policy = self.spec.policy;
        match after_exit(&policy, &mut self.history, fault.failed, fault.healthy_for, now) {
            Verdict::Restart { attempt, delay } => {
                self.restarts += 1;
                let next = format!(
                    "restarting in {:.1} s (restart {} of {} within {} s)",
                    delay.as_secs_f64(),
                    self.history.recent.len(),
                    policy.max_restarts,
                    policy.window.as_secs_f64()
                );
                self.phase = Phase::Backoff { until: now + delay, wait: Wait::Restart };
                self.next = Some(next.clone());
                if let Some(error) = &fault.error {
                    self.last_error = Some(error.to_string());
                }
                out.push(Action::Log(format!("restart {attempt} in {:.3}s", delay.as_secs_f64())));
                out.push(Action::Emit(EventKind::Backoff { attempt, delay_ms: delay.as_millis() as u64 }));
                if let Some(error) = fault.error {
                    out.push(Action::Started(Err(Failure { error, next: Some(next) })));
                }
                if delay.is_zero() {
                    self.launch(true, out);
                }
            }
            Verdict::Settle { to: State::Failed, reason } => {
                let reason = match (&fault.error, policy.restart) {
                    (Some(error), RestartPolicy::Never) => error.to_string(),
                    _ => reason,
                };
                self.settle_failed(reason, fault.error, out);
            }
            Verdict::Settle { .. } => {
                // A clean exit the policy does not restart: it is done.
                self.goal = Goal::Stopped;
                self.settle_stopped(out);
            }
        }
    }

    fn settle_stopped(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::Stopped;
        self.next = None;
        out.push(Action::Release);
        out.push(Action::Emit(EventKind::Stopped));
        self.settled(out);
    }

    fn settle_failed(&mut self, reason: String, error: Option<StartError>, out: &mut Vec<Action>) {
        self.phase = Phase::Failed { reason: reason.clone() };
        self.last_error = Some(reason.clone());
        self.next = None;
        out.push(Action::Release);
        out.push(Action::Log(format!("failed: {reason}")));
        out.push(Action::Emit(EventKind::Failed { reason }));
        if let Some(error) = error {
            out.push(Action::Started(Err(Failure { error, next: None })));
        }
        self.settled(out);
    }

    /// At rest: stops are answered, and a service being removed ends.
    fn settled(&mut self, out: &mut Vec<Action>) {
        out.push(Action::Stopped(Ok(())));
        if self.goal == Goal::Gone {
            let error = StartError::Removed { name: self.spec.name.clone() };
            out.push(Action::Started(Err(Failure { error, next: None })));
            out.push(Action::Finish);
        }
    }

    fn begin_stop(&mut self, then: Then, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::Log(format!("stopping ({})", self.spec.stop_signal)));
        out.push(Action::Stop);
        out.push(Action::Emit(EventKind::Stopping { signal: self.spec.stop_signal.clone() }));
        self.phase = Phase::Stopping { kill_at: now + self.spec.stop_timeout, killed_at: None, stuck: false, then };
    }

    fn timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.deadline().is_none_or(|deadline| now < deadline) {
            return;
        }
        match &mut self.phase {
            Phase::Starting { checks, awaits_ready, passed, .. } => {
                let (checks, awaits_ready) = (*checks, *awaits_ready);
                if *passed || (!checks && !awaits_ready) {
                    return self.became_running(now, out);
                }
                let name = self.spec.name.clone();
                let error = if awaits_ready {
                    let timeout = self.spec.start_timeout.as_secs_f64();
                    let stage = "bringing it up".to_string();
                    out.push(Action::Log(format!("not up within start_timeout ({timeout:.0}s): stopping it")));
                    StartError::StartTimeout { name, timeout, stage, logs: Vec::new() }
                } else {
                    let last_check = self.last_check.clone().unwrap_or_else(|| "none completed".into());
                    let timeout = self.spec.health_timeout.as_secs_f64();
                    out.push(Action::Log(format!("health check did not pass within {timeout:.1}s: {last_check}")));
                    StartError::HealthTimeout { name, timeout, last_check, logs: Vec::new() }
                };
                self.begin_stop(Then::Recover(Fault { error: Some(error), failed: true, healthy_for: None }), now, out);
            }
            Phase::Stopping { killed_at: killed_at @ None, .. } => {
                *killed_at = Some(now);
                out.push(Action::Log("stop_timeout passed: killing it".into()));
                out.push(Action::Kill);
            }
            Phase::Stopping { stuck, .. } => {
                *stuck = true;
                let error = self.stuck_error().expect("the stop is stuck");
                self.last_error = Some(error.to_string());
                out.push(Action::Log(error.to_string()));
                out.push(Action::Emit(EventKind::StopTimedOut { grace_s: self.spec.stop_grace.as_secs() }));
                out.push(Action::Stopped(Err(error.clone())));
                out.push(Action::Started(Err(Failure { error, next: None })));
            }
            Phase::Backoff { .. } => self.launch(true, out),
            _ => {}
        }
    }
}

/// The restart policy of one service (from its manifest).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub restart: RestartPolicy,
    pub delay: Duration,
    pub delay_max: Duration,
    pub max_restarts: u32,
    pub window: Duration,
}

impl Policy {
    pub fn of(m: &Manifest) -> Policy {
        Policy {
            restart: m.restart,
            delay: m.restart_delay,
            delay_max: m.restart_delay_max,
            max_restarts: m.max_restarts,
            window: m.restart_window,
        }
    }

    /// How long a service must stay healthy before its next failure counts
    /// as the first again (the backoff delay resets): `restart_delay_max`,
    /// but at least one second.
    pub fn quiet_period(&self) -> Duration {
        self.delay_max.max(Duration::from_secs(1))
    }
}

/// Restart bookkeeping of one service: the automatic restarts inside the
/// sliding window, and the failures in a row (which drive the delay).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestartHistory {
    recent: VecDeque<Instant>,
    consecutive: u32,
}

impl RestartHistory {
    /// Someone started or stopped the service by hand: start afresh.
    pub fn reset(&mut self) {
        *self = RestartHistory::default();
    }
}

/// What to do after a service's process ended without being asked to.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Go to `backoff` and start again after `delay`.
    Restart { attempt: u32, delay: Duration },
    /// No restart; settle in `to` (`stopped` or `failed`) for `reason`.
    Settle { to: State, reason: String },
}

/// Decide after an unexpected end. `failed`: a non-zero exit, a signal, a
/// failed start or an unhealthy verdict (a clean exit is not a failure).
/// `healthy_for`: how long the process had been running healthy, if at all.
pub fn after_exit(
    policy: &Policy,
    history: &mut RestartHistory,
    failed: bool,
    healthy_for: Option<Duration>,
    now: Instant,
) -> Verdict {
    if healthy_for.is_some_and(|h| h >= policy.quiet_period()) {
        history.consecutive = 0;
    }
    let restart = match policy.restart {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => failed,
        RestartPolicy::Never => false,
    };
    if !restart {
        return match failed {
            true => Verdict::Settle { to: State::Failed, reason: "it failed and its restart policy is `never`".into() },
            false => Verdict::Settle { to: State::Stopped, reason: "it exited cleanly".into() },
        };
    }
    while history.recent.front().is_some_and(|t| now.saturating_duration_since(*t) >= policy.window) {
        history.recent.pop_front();
    }
    if history.recent.len() as u32 >= policy.max_restarts {
        return Verdict::Settle {
            to: State::Failed,
            reason: format!(
                "restarted {} times within {}s (max_restarts {}); not restarting until it is started again",
                history.recent.len(),
                policy.window.as_secs_f64(),
                policy.max_restarts
            ),
        };
    }
    history.recent.push_back(now);
    history.consecutive += 1;
    let factor = 2u32.saturating_pow(history.consecutive - 1);
    let delay = policy.delay.saturating_mul(factor).min(policy.delay_max.max(policy.delay));
    Verdict::Restart { attempt: history.consecutive, delay }
}

#[cfg(test)]
mod tests {
    use super::State::{Backoff, Failed, Running, Starting, Stopped, Stopping, Unhealthy};
    use super::*;

    const T0: Duration = Duration::from_secs(1000);

    fn spec(restart: RestartPolicy) -> Spec {
        Spec {
            name: "x".into(),
            gpu: false,
            policy: Policy {
                restart,
                delay: Duration::from_millis(100),
                delay_max: Duration::from_millis(700),
                max_restarts: 4,
                window: Duration::from_secs(10),
            },
            health_timeout: Duration::from_secs(30),
            start_timeout: Duration::from_secs(900),
            health_failures: 1,
            stop_timeout: Duration::from_secs(10),
            stop_signal: "SIGTERM".into(),
            stop_grace: STOP_GRACE,
        }
    }

    /// A machine in each phase, wanting to run (as it would be there).
    fn machines(now: Instant) -> Vec<(&'static str, Machine)> {
        let base = Machine { goal: Goal::Running, ..Machine::new(spec(RestartPolicy::OnFailure)) };
        let at = |phase: Phase| Machine { phase, ..base.clone() };
        let starting = |checks, since: Instant| Phase::Starting {
            since,
            deadline: now,
            checks,
            awaits_ready: false,
            adopted: false,
            confirm_until: Some(since + CONFIRM_TIME),
            passed: false,
        };
        let stopping = |then| Phase::Stopping { kill_at: now, killed_at: None, stuck: false, then };
        vec![
            ("stopped", Machine { goal: Goal::Stopped, ..base.clone() }),
            ("starting", at(starting(true, now - CONFIRM_TIME))),
            ("starting/nocheck", at(starting(false, now - CONFIRM_TIME))),
            // Launched just now: a passing check is confirmed a moment later.
            ("starting/fresh", at(starting(true, now))),
            ("running", at(Phase::Running { since: now })),
            ("unhealthy", at(Phase::Unhealthy { since: now })),
            ("stopping", Machine { goal: Goal::Stopped, ..at(stopping(Then::Converge)) }),
            ("stopping/recover", at(stopping(Then::Recover(Fault { error: None, failed: true, healthy_for: None })))),
            (
                "stopping/killed",
                at(Phase::Stopping {
                    kill_at: now,
                    killed_at: Some(now - STOP_GRACE),
                    stuck: false,
                    then: Then::Converge,
                }),
            ),
            ("backoff", at(Phase::Backoff { until: now, wait: Wait::Restart })),
            ("failed", at(Phase::Failed { reason: "gave up".into() })),
        ]
    }

    fn inputs() -> Vec<(&'static str, Input)> {
        let want = |goal| Input::Want { goal, on_busy: OnBusy::Refuse, if_current: None };
        let exit = |code| Input::Exited {
            exit: ExitInfo { code: Some(code), signal: None },
            reason: None,
            unavailable: false,
        };
        vec![
            ("want-run", want(Goal::Running)),
            ("want-stop", want(Goal::Stopped)),
            ("want-gone", want(Goal::Gone)),
            ("stale-wish", Input::Want { goal: Goal::Running, on_busy: OnBusy::Refuse, if_current: Some(99) }),
            ("launched", Input::Launched(Launch::default())),
            ("gpu-busy", Input::Refused(Refusal::GpuBusy { holder: "h".into() })),
            ("port-busy", Input::Refused(Refusal::PortBusy { port: 8090, holder: "pid 1".into() })),
            ("spawn-err", Input::Refused(Refusal::Spawn("no such file".into()))),
            ("no-engine", Input::Refused(Refusal::Unavailable("no engine".into()))),
            ("adopt-refused", Input::AdoptRefused { holder: "h".into() }),
            ("ready", Input::Ready),
            ("probe-ok", Input::Probed { ok: true, message: "ok".into() }),
            ("probe-fail", Input::Probed { ok: false, message: "503".into() }),
            ("exit-1", exit(1)),
            ("exit-0", exit(0)),
            ("found", Input::Found),
            ("timer", Input::Timer),
        ]
    }

    /// Actions in a few words each, so a table row reads at a glance.
    fn render(actions: &[Action]) -> String {
        let words: Vec<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Launch { automatic } => Some(if *automatic { "launch(auto)" } else { "launch" }.into()),
                Action::Adopt => Some("adopt".into()),
                Action::Abandon => Some("abandon".into()),
                Action::Stop => Some("stop".into()),
                Action::Kill => Some("kill".into()),
                Action::Release => Some("release".into()),
                Action::Emit(kind) => Some(format!("+{}", kind.name())),
                Action::Log(_) => None,
                Action::Started(Ok(())) | Action::Answer(Ok(())) => Some("ok".into()),
                Action::Started(Err(f)) | Action::Answer(Err(f)) => Some(format!(
                    "err:{}{}",
                    match &f.error {
                        StartError::GpuBusy { .. } | StartError::GpuFull { .. } => "gpu",
                        StartError::PortInUse { .. } => "port",
                        StartError::Spawn { .. } => "spawn",
                        StartError::Exited { .. } => "exited",
                        StartError::HealthTimeout { .. } => "timeout",
                        StartError::StartTimeout { .. } => "start-timeout",
                        StartError::Interrupted { .. } => "interrupted",
                        StartError::Removed { .. } => "removed",
                        StartError::Stuck { .. } => "stuck",
                    },
                    if f.next.is_some() { "+next" } else { "" }
                )),
                Action::Stopped(Ok(())) => Some("stopped-ok".into()),
                Action::Stopped(Err(_)) => Some("stopped-err".into()),
                Action::Persist(r) => Some(format!("persist:{r:?}")),
                Action::Finish => Some("finish".into()),
            })
            .collect();
        words.join(" ")
    }

    /// Every phase × every input: the state it ends in and what it does.
    /// A change to the lifecycle is a deliberate change to this table.
    #[test]
    fn transition_table() {
        let now = Instant::now() + T0;
        let mut rows = Vec::new();
        for (phase, machine) in machines(now) {
            for (input, event) in inputs() {
                let (after, actions) = machine.clone().step(event, now);
                let row = format!("{phase:17} {input:14} -> {:9} {}", after.state().as_str(), render(&actions));
                rows.push(row.trim_end().to_string());
            }
        }
        let table = rows.join("\n");
        let expected = include_str!("lifecycle_table.txt");
        assert_eq!(table.trim(), expected.trim(), "the lifecycle table changed:\n{table}");
    }

    #[test]
    fn gpu_claim_is_held_while_processes_may_exist_or_a_restart_is_pending() {
        for state in [Stopped, Starting, Running, Unhealthy, Stopping, Backoff, Failed] {
            if state.has_process() || state == Backoff {
                assert!(state.holds_gpu(), "{state:?}");
            }
        }
        assert!(!Stopped.holds_gpu());
        assert!(!Failed.holds_gpu());
    }

    fn policy(restart: RestartPolicy) -> Policy {
        Policy {
            restart,
            delay: Duration::from_millis(100),
            delay_max: Duration::from_millis(700),
            max_restarts: 4,
            window: Duration::from_secs(10),
        }
    }

    fn delays(verdicts: &[Verdict]) -> Vec<Option<u64>> {
        verdicts
            .iter()
            .map(|v| match v {
                Verdict::Restart { delay, .. } => Some(delay.as_millis() as u64),
                Verdict::Settle { .. } => None,
            })
            .collect()
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_then_the_window_gives_up() {
        let p = policy(RestartPolicy::OnFailure);
        let mut h = RestartHistory::default();
        let t0 = Instant::now();
        let verdicts: Vec<Verdict> =
            (0..5).map(|i| after_exit(&p, &mut h, true, None, t0 + Duration::from_secs(i))).collect();
        assert_eq!(delays(&verdicts), vec![Some(100), Some(200), Some(400), Some(700), None]);
        let Verdict::Settle { to, reason } = &verdicts[4] else { unreachable!() };
        assert_eq!(*to, Failed);
        assert!(reason.contains("restarted 4 times within 10s"), "{reason}");
    }

    #[test]
    fn the_window_slides() {
        let p = policy(RestartPolicy::Always);
        let mut h = RestartHistory::default();
        let t0 = Instant::now();
        for i in 0..4 {
            assert!(matches!(after_exit(&p, &mut h, true, None, t0 + Duration::from_secs(i)), Verdict::Restart { .. }));
        }
        // The first restart (t0) has left the 10 s window by t0 + 10 s.
        assert!(matches!(after_exit(&p, &mut h, true, None, t0 + Duration::from_secs(10)), Verdict::Restart { .. }));
        assert!(matches!(
            after_exit(&p, &mut h, true, None, t0 + Duration::from_secs(10)),
            Verdict::Settle { to: Failed, .. }
        ));
    }

    #[test]
    fn a_quiet_period_resets_the_delay() {
        let p = policy(RestartPolicy::OnFailure);
        let mut h = RestartHistory::default();
        let t0 = Instant::now();
        after_exit(&p, &mut h, true, None, t0);
        after_exit(&p, &mut h, true, Some(Duration::from_millis(500)), t0);
        let v = after_exit(&p, &mut h, true, Some(p.quiet_period()), t0);
        assert_eq!(v, Verdict::Restart { attempt: 1, delay: Duration::from_millis(100) });
    }

    #[test]
    fn policies() {
        let t0 = Instant::now();
        let cases = [
            (RestartPolicy::Always, false, true),
            (RestartPolicy::Always, true, true),
            (RestartPolicy::OnFailure, true, true),
            (RestartPolicy::OnFailure, false, false),
            (RestartPolicy::Never, true, false),
            (RestartPolicy::Never, false, false),
        ];
        for (restart, failed, restarts) in cases {
            let v = after_exit(&policy(restart), &mut RestartHistory::default(), failed, None, t0);
            assert_eq!(matches!(v, Verdict::Restart { .. }), restarts, "{restart:?} failed={failed}");
            if let Verdict::Settle { to, .. } = v {
                assert_eq!(to, if failed { Failed } else { Stopped });
            }
        }
    }

    #[test]
    fn health_timeout_counts_from_when_the_runtime_has_it_up() {
        let now = Instant::now() + T0;
        let launch = Launch {
            pid: None,
            containers: Vec::new(),
            checks: true,
            awaits_ready: true,
            adopted: false,
            automatic: false,
            confirm: false,
        };
        let base = Machine { goal: Goal::Running, ..Machine::new(spec(RestartPolicy::Never)) };
        let (up, _) = base.step(Input::Launched(launch), now);
        assert_eq!(up.deadline(), Some(now + up.spec.start_timeout), "`up -d` has start_timeout");
        let later = now + Duration::from_secs(120);
        let (ready, _) = up.clone().step(Input::Ready, later);
        assert_eq!(ready.deadline(), Some(later + ready.spec.health_timeout), "then health_timeout");

        // Out of time while still coming up: stopped, and the start fails once it is gone.
        let (timed_out, actions) = up.step(Input::Timer, now + Duration::from_secs(900));
        assert_eq!(timed_out.state(), Stopping);
        assert!(actions.contains(&Action::Stop), "{actions:?}");
        let exit = Input::Exited { exit: ExitInfo { code: None, signal: None }, reason: None, unavailable: false };
        let (_, actions) = timed_out.step(exit, now + Duration::from_secs(901));
        let error = actions.iter().find_map(|a| match a {
            Action::Started(Err(f)) => Some(f.error.to_string()),
            _ => None,
        });
        let expected = "service 'x' was not up within its start_timeout of 900s (still bringing it up)";
        assert_eq!(error.as_deref(), Some(expected), "{actions:?}");
    }

    #[test]
    fn a_quick_pass_waits_for_the_process_to_stay_up_only_when_another_could_have_answered() {
        let now = Instant::now() + T0;
        let base = Machine { goal: Goal::Running, ..Machine::new(spec(RestartPolicy::Never)) };
        let launch = |confirm| Input::Launched(Launch { checks: true, confirm, ..Launch::default() });
        let ok = || Input::Probed { ok: true, message: "ok".into() };

        // Its own port was free at launch: the first pass is enough.
        let (own, _) = base.clone().step(launch(false), now);
        assert_eq!(own.step(ok(), now).0.state(), Running);

        // A health command (anyone could answer): running once up for CONFIRM_TIME ...
        let (any, _) = base.step(launch(true), now);
        let (passed, actions) = any.step(ok(), now + Duration::from_millis(10));
        assert_eq!(passed.state(), Starting, "{actions:?}");
        assert_eq!(passed.deadline(), Some(now + CONFIRM_TIME));
        assert_eq!(passed.clone().step(Input::Timer, now + CONFIRM_TIME).0.state(), Running);
        // ... and an exit before that is a failed start.
        let exit = Input::Exited { exit: ExitInfo { code: Some(1), signal: None }, reason: None, unavailable: false };
        let (after, actions) = passed.step(exit, now + Duration::from_millis(50));
        assert_eq!(after.state(), Failed);
        assert!(actions.iter().any(|a| matches!(a, Action::Started(Err(_)))), "{actions:?}");
    }

    #[test]
    fn zero_delay_stays_zero() {
        let p = Policy { delay: Duration::ZERO, ..policy(RestartPolicy::Always) };
        let v = after_exit(&p, &mut RestartHistory::default(), true, None, Instant::now());
        assert_eq!(v, Verdict::Restart { attempt: 1, delay: Duration::ZERO });
    }
}
