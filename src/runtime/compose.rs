//! Docker Compose projects: brought up, stopped and removed with the Compose
//! CLI the machine has (the `docker compose` plugin, else `docker-compose`),
//! and watched through the Docker Engine API (bollard): container state,
//! exit codes and logs, and the engine's event stream, so a dying container
//! is noticed when it dies.
//!
//! Each launched project has a supervising task that owns it: it runs
//! `up -d`, follows the containers' logs and the engine's die events for the
//! project, and reports the project's end to the service task (a container
//! died, or a stop finished).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::HealthStatusEnum;
use bollard::query_parameters::{
    EventsOptionsBuilder, KillContainerOptions, ListContainersOptionsBuilder, LogsOptionsBuilder, StatsOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::sync::{OnceCell, mpsc, oneshot};

use super::{Devices, Ended, ExitInfo, GroupRecord, Instance, LaunchError, Launched, Parts, Placement};
use crate::health::Outcome;
use crate::logs::{LineSplitter, LogStore, Stream};
use crate::manifest::{Manifest, Runtime as Kind};
use crate::usage::Reading;

const PROJECT_LABEL: &str = "com.docker.compose.project";
/// How long to wait between attempts to re-subscribe to engine events.
const EVENTS_RETRY: Duration = Duration::from_secs(1);
/// Container logs replayed when a running project is adopted.
const ADOPT_LOG_LINES: &str = "200";
/// Beyond its own timeout, how long `compose stop`/`kill` may take before the
/// engine is asked directly.
const HALT_SLACK: Duration = Duration::from_secs(30);
/// Compose output lines quoted in an error.
const ERROR_LINES: usize = 8;
/// Compose output kept for the caller (`down`'s answer).
const OUTPUT_KEEP: usize = 64 * 1024;
/// How long `GET /health` waits for the engine and the Compose tool.
const INFO_TIMEOUT: Duration = Duration::from_millis(800);

fn not_answering(what: &str) -> String {
    format!("{what} did not answer within {} ms (DOCKER_HOST {})", INFO_TIMEOUT.as_millis(), docker_host())
}

/// The engine's address, as the Docker client finds it.
fn docker_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

/// The Compose tool found on this machine.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ToolInfo {
    /// `docker compose` or `docker-compose`; `null` when neither works.
    pub tool: Option<String>,
    pub version: Option<String>,
    pub error: Option<String>,
}

/// The Docker engine, as seen through its API.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EngineInfo {
    /// `available`, `unavailable` (it refused or is not there) or
    /// `not answering` (no reply within 800 ms).
    pub status: &'static str,
    pub available: bool,
    pub version: Option<String>,
    pub api_version: Option<String>,
    pub error: Option<String>,
}

/// The Compose runtime. Cheap to clone.
#[derive(Clone)]
pub struct Compose {
    inner: Arc<Inner>,
}

struct Inner {
    overrides_dir: PathBuf,
    tool: OnceCell<Tool>,
    engine: OnceCell<Docker>,
    /// The containers of the projects supervised now (id → service), so a
    /// GPU process in one is known as the service's ([`Compose::owner_of`]).
    containers: std::sync::Mutex<HashMap<String, String>>,
}

#[derive(Debug, Clone)]
pub struct Tool {
    /// `["docker", "compose"]` or `["docker-compose"]`.
    pub argv: Vec<String>,
    version: String,
}

/// A container of a project died, as the engine reported it.
#[derive(Debug, Clone)]
struct Death {
    container_id: String,
    name: String,
    exit_code: Option<i32>,
}

/// The instance was dropped without a stop: supervision ends and the
/// containers are left as they are (an adoption that lost a race, say).
fn abandoned() -> Ended {
    Ended { reason: Some("no longer supervised".into()), ..Ended::exited(ExitInfo { code: None, signal: None }) }
}

/// Resolves when a container of `project` starts (not a `compose run` one),
/// seen through the engine's events from now on; never if the engine is
/// unreachable.
async fn container_started(inner: Arc<Inner>, project: String) {
    let Ok(docker) = inner.engine().await else { return std::future::pending().await };
    let label = format!("{PROJECT_LABEL}={project}");
    loop {
        let filters: HashMap<&str, Vec<&str>> = HashMap::from([
            ("type", vec!["container"]),
            ("event", vec!["start"]),
            ("label", vec![label.as_str(), "com.docker.compose.oneoff=False"]),
        ]);
        let mut events = docker.events(Some(EventsOptionsBuilder::default().filters(&filters).build()));
        if let Some(Ok(_)) = events.next().await {
            return;
        }
        tokio::time::sleep(EVENTS_RETRY).await;
    }
}

/// Follow the engine's die events for `project` from `from` on. Asking for
/// events `since` a time the caller took before it listed the containers
/// leaves no gap in which a death goes unseen; if the stream breaks, it is
/// resumed from the last event seen. Ends when the receiver is dropped.
fn watch_deaths(docker: Docker, project: String, from: jiff::Timestamp) -> mpsc::UnboundedReceiver<Death> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let label = format!("{PROJECT_LABEL}={project}");
        let mut since = from;
        loop {
            let filters: HashMap<&str, Vec<&str>> =
                HashMap::from([("type", vec!["container"]), ("event", vec!["die"]), ("label", vec![label.as_str()])]);
            let since_text = format!("{}.{:09}", since.as_second(), since.subsec_nanosecond());
            let options = EventsOptionsBuilder::default().since(&since_text).filters(&filters).build();
            let mut events = docker.events(Some(options));
            loop {
                let event = tokio::select! {
                    _ = tx.closed() => return,
                    event = events.next() => event,
                };
                let Some(Ok(event)) = event else { break };
                if let Some(nanos) = event.time_nano {
                    since = jiff::Timestamp::from_nanosecond(nanos as i128).unwrap_or(since);
                }
                let Some(actor) = event.actor else { continue };
                let attributes = actor.attributes.unwrap_or_default();
                let death = Death {
                    container_id: actor.id.unwrap_or_default(),
                    name: attributes.get("name").cloned().unwrap_or_default(),
                    exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
                };
                if tx.send(death).is_err() {
                    return;
                }
            }
            tracing::warn!(project, "the Docker engine's event stream ended; resuming it");
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(EVENTS_RETRY) => {}
            }
        }
    });
    rx
}

/// The project files of one service: the user's compose file and, for a GPU
/// service, the override the daemon generates.
struct Project {
    name: String,
    /// The nanny service.
    service: String,
    dir: PathBuf,
    files: Vec<PathBuf>,
    /// The manifest's `stop_timeout`, for stops the supervisor decides on.
    stop_timeout: Duration,
    /// Compose services that run to completion by design ([`ComposeFile::one_shot`]).
    one_shot: Arc<BTreeSet<String>>,
    /// The GPU placement, and the path its files are written at (less the
    /// extension), once the Compose tool is known ([`gpu_files`]).
    gpu: Option<(Placement, PathBuf)>,
}

impl Project {
    /// Write the files giving the project its GPU placement, for `tool`.
    fn place_gpus(&mut self, tool: &Tool) -> Result<(), String> {
        let Some((gpu, base)) = &self.gpu else { return Ok(()) };
        let source = &self.files[0];
        let text = std::fs::read_to_string(source).map_err(|e| format!("cannot read {}: {e}", source.display()))?;
        let files = gpu_files(&text, gpu, tool.reads_override_tag())
            .map_err(|e| format!("{} is not a valid compose file: {e}", source.display()))?;
        let write = |extension: &str, text: &str| {
            let mut path = base.clone().into_os_string();
            path.push(format!(".{extension}"));
            let path = PathBuf::from(path);
            std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
                .and_then(|_| std::fs::write(&path, text))
                .map(|_| path.clone())
                .map_err(|e| format!("cannot write the GPU override {}: {e}", path.display()))
        };
        if let Some(copy) = &files.copy {
            self.files[0] = write("gpu-copy.yml", copy)?;
        }
        self.files.push(write("gpu.yml", &files.overlay)?);
        Ok(())
    }
}

/// How a supervised start begins.
enum Start {
    /// `up -d`, saying what it is doing on `progress`.
    Up { progress: mpsc::UnboundedSender<&'static str> },
    /// Take over these running containers.
    Adopt { running: Vec<Container> },
}

/// Control of a launched project, held by the service task.
enum Control {
    Stop { timeout: Duration },
    Kill,
}

struct ProjectInstance {
    control: mpsc::UnboundedSender<Control>,
    containers: Vec<String>,
    inner: Arc<Inner>,
    project: String,
    one_shot: Arc<BTreeSet<String>>,
}

impl Instance for ProjectInstance {
    fn parts(&self) -> Parts {
        Parts { pid: None, containers: self.containers.clone() }
    }

    fn stop(&self, _signal: Signal, timeout: Duration) {
        let _ = self.control.send(Control::Stop { timeout });
    }

    fn kill(&self) {
        let _ = self.control.send(Control::Kill);
    }

    fn group(&self) -> Option<GroupRecord> {
        None
    }

    fn check(&self) -> Option<BoxFuture<'static, Outcome>> {
        let (inner, project, one_shot) = (self.inner.clone(), self.project.clone(), self.one_shot.clone());
        Some(Box::pin(async move { inner.check(&project, &one_shot).await }))
    }
}

impl Compose {
    /// `state_dir` holds the generated override files.
    pub fn new(state_dir: &Path) -> Compose {
        Compose {
            inner: Arc::new(Inner {
                overrides_dir: state_dir.join("compose"),
                tool: OnceCell::new(),
                engine: OnceCell::new(),
                containers: Default::default(),
            }),
        }
    }

    /// The Compose tool, or why there is none, within [`INFO_TIMEOUT`].
    /// Finding it runs `version` (slow to start: v1 is Python, and the
    /// plugin may ask a hung engine); the search goes on after a caller
    /// stopped waiting, so it is found once and remembered.
    pub fn tool_info(&self) -> BoxFuture<'static, ToolInfo> {
        let inner = self.inner.clone();
        let search = tokio::spawn(async move { inner.tool().await });
        Box::pin(async move {
            match tokio::time::timeout(INFO_TIMEOUT, search).await {
                Ok(Ok(Ok(tool))) => {
                    ToolInfo { tool: Some(tool.argv.join(" ")), version: Some(tool.version), error: None }
                }
                Ok(Ok(Err(e))) => ToolInfo { tool: None, version: None, error: Some(e) },
                _ => ToolInfo { tool: None, version: None, error: Some("still looking for a Compose tool".into()) },
            }
        })
    }

    /// Whether the engine answers, within [`INFO_TIMEOUT`]: the daemon's own
    /// health never waits on a hung engine.
    pub fn engine_info(&self) -> BoxFuture<'static, EngineInfo> {
        let inner = self.inner.clone();
        let info = |status, error| EngineInfo { status, available: false, version: None, api_version: None, error };
        // Connecting runs on (and is kept) even when this caller stops waiting.
        let version = tokio::spawn(async move {
            let docker = inner.engine().await?;
            docker.version().await.map_err(|e| engine_error(&e))
        });
        Box::pin(async move {
            let answer = tokio::time::timeout(INFO_TIMEOUT, version).await;
            match answer.map(|joined| joined.unwrap_or_else(|e| Err(e.to_string()))) {
                Ok(Ok(v)) => EngineInfo {
                    status: "available",
                    available: true,
                    version: v.version,
                    api_version: v.api_version,
                    error: None,
                },
                Ok(Err(e)) => info("unavailable", Some(e)),
                Err(_) => info("not answering", Some(not_answering("the Docker engine"))),
            }
        })
    }

    /// The service whose supervised container runs host process `pid`
    /// (read from `/proc/PID/cgroup`).
    pub fn owner_of(&self, pid: u32) -> Option<String> {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let id = container_in_cgroup(&cgroup)?;
        self.inner.containers.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// CPU time and memory of each service's containers (`docker stats`,
    /// one reading each, all at once); nothing while the engine is away.
    pub async fn measure(&self, projects: Vec<(String, Vec<String>)>) -> HashMap<String, Reading> {
        if projects.is_empty() {
            return HashMap::new();
        }
        let Ok(docker) = self.inner.engine().await else { return HashMap::new() };
        let readings = projects.into_iter().map(|(service, containers)| {
            let docker = docker.clone();
            async move {
                let mut total = Reading::default();
                for container in &containers {
                    let options = StatsOptionsBuilder::default().stream(false).one_shot(true).build();
                    let Some(Ok(stats)) = docker.stats(container, Some(options)).next().await else { continue };
                    let cpu = stats.cpu_stats.and_then(|c| c.cpu_usage?.total_usage).unwrap_or(0);
                    total.cpu += Duration::from_nanos(cpu);
                    total.memory_bytes += stats.memory_stats.map(working_set).unwrap_or(0);
                }
                (service, total)
            }
        });
        futures_util::future::join_all(readings).await.into_iter().collect()
    }

    pub fn launch(
        &self,
        manifest: &Manifest,
        gpu: Option<&Placement>,
        logs: Arc<LogStore>,
    ) -> Result<Launched, LaunchError> {
        let project = self.project(manifest, gpu)?;
        let (project_name, one_shot) = (project.name.clone(), project.one_shot.clone());
        let (control, control_rx) = mpsc::unbounded_channel();
        let (ended_tx, exited) = oneshot::channel();
        let (ready_tx, ready) = oneshot::channel();
        let (progress_tx, progress) = mpsc::unbounded_channel();
        let inner = self.inner.clone();
        let start = Start::Up { progress: progress_tx };
        tokio::spawn(async move {
            let ended = inner.supervise(project, start, jiff::Timestamp::now(), logs, control_rx, ready_tx).await;
            let _ = ended_tx.send(ended);
        });
        Ok(Launched {
            instance: Box::new(ProjectInstance {
                control,
                containers: Vec::new(),
                inner: self.inner.clone(),
                project: project_name,
                one_shot,
            }),
            exited,
            ready: Some(ready),
            progress: Some(progress),
            started_at: None,
        })
    }

    /// A project whose containers are all running is taken over as it is.
    pub fn adopt(&self, manifest: &Manifest, logs: Arc<LogStore>) -> BoxFuture<'static, Option<Launched>> {
        let inner = self.inner.clone();
        let project = self.project(manifest, None);
        Box::pin(async move {
            let project = project.ok()?;
            let docker = inner.engine().await.ok()?;
            let watch_from = jiff::Timestamp::now();
            let running = list_project(&docker, &project.name).await.ok()?;
            // Adopted when something runs and every other container is a
            // one-shot job that finished, as the die-event handler sees it.
            let one_shot = project.one_shot.clone();
            if !running.iter().any(|c| c.running) || running.iter().any(|c| !c.running && !c.finished(&one_shot)) {
                return None;
            }
            let running: Vec<Container> = running.into_iter().filter(|c| c.running).collect();
            let started_at = started_at(&docker, &running[0].id).await;
            let containers: Vec<String> = running.iter().map(|c| c.name.clone()).collect();
            let project_name = project.name.clone();
            let (control, control_rx) = mpsc::unbounded_channel();
            let (ended_tx, exited) = oneshot::channel();
            let (ready_tx, ready) = oneshot::channel();
            let task_inner = inner.clone();
            tokio::spawn(async move {
                let start = Start::Adopt { running };
                let ended = task_inner.supervise(project, start, watch_from, logs, control_rx, ready_tx).await;
                let _ = ended_tx.send(ended);
            });
            Some(Launched {
                instance: Box::new(ProjectInstance {
                    control,
                    containers,
                    inner: inner.clone(),
                    project: project_name,
                    one_shot,
                }),
                exited,
                ready: Some(ready),
                progress: None,
                started_at,
            })
        })
    }

    /// Resolves when the project is started outside the daemon (by hand).
    pub fn started_outside(&self, manifest: &Manifest) -> BoxFuture<'static, ()> {
        let project = self.project(manifest, None).map(|p| p.name);
        let inner = self.inner.clone();
        Box::pin(async move {
            match project {
                Ok(project) => container_started(inner, project).await,
                Err(_) => std::future::pending().await,
            }
        })
    }

    /// `compose down`: remove the project's containers and networks
    /// (volumes and images are kept).
    pub async fn down(&self, manifest: &Manifest) -> Result<String, String> {
        let project = self.project(manifest, None).map_err(|e| e.to_string())?;
        let tool = self.inner.tool().await?;
        let output = self.inner.run(&tool, &project, &["down"], None, None).await?;
        Ok(output)
    }

    /// The project's name and files; writes the GPU override if needed.
    fn project(&self, manifest: &Manifest, gpu: Option<&Placement>) -> Result<Project, LaunchError> {
        let Kind::Compose { compose_file, project } = &manifest.runtime else {
            return Err(format!("service '{}' is not a Compose service", manifest.name).into());
        };
        let dir = compose_file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let file = ComposeFile::read(compose_file)?;
        let name = match (project, &file.name) {
            (Some(p), _) => p.clone(),
            (None, Some(n)) => n.clone(),
            (None, None) => default_project_name(&dir),
        };
        let files = vec![compose_file.clone()];
        let gpu = gpu.map(|gpu| (gpu.clone(), self.inner.overrides_dir.join(&manifest.name)));
        let one_shot = Arc::new(file.one_shot());
        Ok(Project {
            name,
            service: manifest.name.clone(),
            dir,
            files,
            stop_timeout: manifest.stop_timeout,
            one_shot,
            gpu,
        })
    }
}

/// A container of a project, as listed by the engine.
#[derive(Debug, Clone)]
struct Container {
    id: String,
    name: String,
    /// Its Compose service (`com.docker.compose.service`).
    service: String,
    running: bool,
    /// It exited with code 0.
    exited_cleanly: bool,
}

impl Container {
    /// A one-shot job (an init or a migration) that finished as it should:
    /// part of the project, not of what must keep running.
    fn finished(&self, one_shot: &BTreeSet<String>) -> bool {
        !self.running && self.exited_cleanly && one_shot.contains(&self.service)
    }
}

impl Inner {
    /// The Compose tool; found once, looked for again while it is missing.
    async fn tool(&self) -> Result<Tool, String> {
        self.tool.get_or_try_init(detect_tool).await.cloned()
    }

    /// The engine client, version negotiated; connected once, retried while
    /// the engine does not answer (so a Docker started later is found).
    async fn engine(&self) -> Result<Docker, String> {
        let docker = self
            .engine
            .get_or_try_init(|| async {
                let docker = Docker::connect_with_defaults().map_err(|e| engine_error(&e))?;
                docker.negotiate_version().await.map_err(|e| engine_error(&e))
            })
            .await
            .cloned()?;
        Ok(docker)
    }

    /// The project's containers as a health check: all running, and healthy
    /// where they have a HEALTHCHECK.
    async fn check(&self, project: &str, one_shot: &BTreeSet<String>) -> Outcome {
        let docker = match self.engine().await {
            Ok(d) => d,
            Err(e) => return (false, None, e),
        };
        let containers = match list_project(&docker, project).await {
            Ok(list) if list.is_empty() => return (false, None, format!("project '{project}' has no container")),
            Ok(list) => list,
            Err(e) => return (false, None, e),
        };
        let (mut healthchecked, mut running) = (0, 0);
        for c in containers.iter().filter(|c| !c.finished(one_shot)) {
            running += 1;
            if !c.running {
                return (false, None, format!("container {} is not running", c.name));
            }
            let health = docker.inspect_container(&c.id, None).await.ok().and_then(|i| i.state?.health?.status);
            match health {
                Some(HealthStatusEnum::HEALTHY) => healthchecked += 1,
                Some(status @ (HealthStatusEnum::STARTING | HealthStatusEnum::UNHEALTHY)) => {
                    return (false, None, format!("container {} is {status}", c.name));
                }
                _ => {}
            }
        }
        // A container without a HEALTHCHECK counts as healthy while it runs.
        let message = match healthchecked {
            0 => format!("{running} container(s) running (no HEALTHCHECK: running counts as healthy)"),
            n if n == running => format!("{running} container(s) running and healthy"),
            n => format!("{running} container(s) running, {n} healthy by their HEALTHCHECK, the rest without one"),
        };
        (true, None, message)
    }

    /// Own one start of a project until it has ended.
    async fn supervise(
        self: Arc<Self>,
        project: Project,
        start: Start,
        watch_from: jiff::Timestamp,
        logs: Arc<LogStore>,
        mut control: mpsc::UnboundedReceiver<Control>,
        ready: oneshot::Sender<Parts>,
    ) -> Ended {
        let fail = |reason: String, unavailable: bool| {
            // Compose's own output is in the log already; one line says why.
            logs.push(Stream::Nanny, reason.lines().next().unwrap_or_default());
            Ended { exit: ExitInfo { code: None, signal: None }, reason: Some(reason), unavailable }
        };
        // Without an engine or a Compose tool nothing ran: worth waiting for.
        let docker = match self.engine().await {
            Ok(d) => d,
            Err(e) => return fail(e, true),
        };
        let tool = match self.tool().await {
            Ok(t) => t,
            Err(e) => return fail(e, true),
        };
        let mut project = project;
        if let Err(e) = project.place_gpus(&tool) {
            return fail(e, false);
        }
        let mut deaths = watch_deaths(docker.clone(), project.name.clone(), watch_from);
        let since = watch_from.as_second();
        let backfill = matches!(start, Start::Adopt { .. });
        let containers = match start {
            Start::Adopt { running } => running,
            Start::Up { progress } => {
                logs.push(Stream::Nanny, &format!("{} -p {} up -d", tool.argv.join(" "), project.name));
                // `up -d` may take long (a pull): a stop or kill meanwhile abandons
                // it (the Compose process dies with its future) and stops what exists.
                tokio::select! {
                    result = self.run(&tool, &project, &["up", "-d"], Some(&logs), Some(&progress)) => {
                        if let Err(e) = result {
                            return fail(e, false);
                        }
                    }
                    request = control.recv() => {
                        let Some(request) = request else { return abandoned() };
                        if let Some(ended) = self.halt(&docker, &tool, &project, request, &logs).await {
                            return ended;
                        }
                    }
                }
                match list_project(&docker, &project.name).await {
                    Ok(list) if list.iter().any(|c| c.running) => list.into_iter().filter(|c| c.running).collect(),
                    Ok(_) => {
                        let reason = format!("no container of project '{}' is running after `up -d`", project.name);
                        return fail(reason, false);
                    }
                    Err(e) => return fail(e, false),
                }
            }
        };
        for c in &containers {
            let tail = backfill.then_some(ADOPT_LOG_LINES);
            tokio::spawn(follow_logs(docker.clone(), c.clone(), logs.clone(), since, tail));
        }
        let _ = ready.send(Parts { pid: None, containers: containers.iter().map(|c| c.name.clone()).collect() });
        let ended = self.follow(&docker, &tool, &project, &containers, &mut deaths, &mut control, &logs).await;
        self.containers.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, service| *service != project.service);
        ended
    }

    /// Follow a started project until it ends; its containers are known as
    /// the service's meanwhile.
    #[allow(clippy::too_many_arguments)]
    async fn follow(
        &self,
        docker: &Docker,
        tool: &Tool,
        project: &Project,
        containers: &[Container],
        deaths: &mut mpsc::UnboundedReceiver<Death>,
        control: &mut mpsc::UnboundedReceiver<Control>,
        logs: &LogStore,
    ) -> Ended {
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(containers.iter().map(|c| (c.id.clone(), project.service.clone())));

        let mut halting = false;
        loop {
            tokio::select! {
                request = control.recv() => {
                    let Some(request) = request else { return abandoned() };
                    if let Some(ended) = self.halt(docker, tool, project, request, logs).await {
                        return ended;
                    }
                    // Something still runs: the service task will kill, and
                    // a death may yet end it.
                    halting = true;
                }
                Some(death) = deaths.recv() => {
                    if halting {
                        match self.ended_if_gone(docker, project, logs).await {
                            Some(ended) => return ended,
                            None => continue,
                        }
                    }
                    // Containers replaced by `up -d` die too; only ours count.
                    let Some(dead) = containers.iter().find(|c| c.id == death.container_id) else { continue };
                    // A one-shot job that finished is not the end, unless it was all there was.
                    if death.exit_code == Some(0) && project.one_shot.contains(&dead.service) {
                        logs.push(Stream::Nanny, &format!("one-shot container {} finished (exit code 0)", death.name));
                        if containers.iter().any(|c| !project.one_shot.contains(&c.service)) {
                            continue;
                        }
                    }
                    let code = death.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "unknown".into());
                    let reason = format!("container {} died (exit code {code})", death.name);
                    logs.push(Stream::Nanny, &reason);
                    // The rest of the project goes with it, as a process group's
                    // members do, so nothing keeps running (or holding the GPU)
                    // behind a service that is no longer supervised.
                    let others = list_project(docker, &project.name).await.unwrap_or_default();
                    if others.iter().any(|c| c.running) {
                        let stop = Control::Stop { timeout: project.stop_timeout };
                        if self.halt(docker, tool, project, stop, logs).await.is_none() {
                            // Still running: reported once it is gone, so a
                            // GPU claim never outlives a container.
                            halting = true;
                            continue;
                        }
                    }
                    let exit = ExitInfo { code: death.exit_code, signal: None };
                    return Ended { reason: Some(reason), ..Ended::exited(exit) };
                }
            }
        }
    }

    /// Stop or kill the project with the Compose tool; if that fails (the
    /// compose file is gone or broken, the tool hangs), container by
    /// container through the engine. Returns how the project ended, or
    /// `None` while a container still runs.
    async fn halt(
        &self,
        docker: &Docker,
        tool: &Tool,
        project: &Project,
        how: Control,
        logs: &LogStore,
    ) -> Option<Ended> {
        let (args, limit) = match how {
            Control::Stop { timeout } => {
                (vec!["stop".to_string(), "-t".into(), timeout.as_secs().max(1).to_string()], timeout + HALT_SLACK)
            }
            Control::Kill => (vec!["kill".to_string()], HALT_SLACK),
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let outcome = match tokio::time::timeout(limit, self.run(tool, project, &args, Some(logs), None)).await {
            Ok(result) => result.map(drop),
            Err(_) => Err(format!("no answer within {}s", limit.as_secs())),
        };
        if let Err(e) = outcome {
            logs.push(Stream::Nanny, &format!("compose {} failed ({e}); going through the engine", args[0]));
            for c in list_project(docker, &project.name).await.unwrap_or_default().iter().filter(|c| c.running) {
                let result = match how {
                    Control::Stop { timeout } => {
                        let options = StopContainerOptionsBuilder::default().t(timeout.as_secs().max(1) as i32).build();
                        docker.stop_container(&c.id, Some(options)).await
                    }
                    Control::Kill => docker.kill_container(&c.id, None::<KillContainerOptions>).await,
                };
                if let Err(e) = result {
                    logs.push(Stream::Nanny, &format!("cannot stop container {}: {}", c.name, engine_error(&e)));
                }
            }
        }
        self.ended_if_gone(docker, project, logs).await
    }

    /// How the project ended, if none of its containers runs any more (or
    /// the engine cannot say: then nothing is known to hold anything).
    async fn ended_if_gone(&self, docker: &Docker, project: &Project, logs: &LogStore) -> Option<Ended> {
        let containers = list_project(docker, &project.name).await.unwrap_or_default();
        let running: Vec<&str> = containers.iter().filter(|c| c.running).map(|c| c.name.as_str()).collect();
        if !running.is_empty() {
            logs.push(Stream::Nanny, &format!("still running: {}", running.join(", ")));
            return None;
        }
        let code = match containers.first() {
            Some(c) => exit_code(docker, &c.id).await,
            None => None,
        };
        Some(Ended::exited(ExitInfo { code, signal: None }))
    }

    /// Run the Compose tool on `project`; its output goes to `logs`. On
    /// failure the error quotes Compose's own last lines.
    async fn run(
        &self,
        tool: &Tool,
        project: &Project,
        args: &[&str],
        logs: Option<&LogStore>,
        progress: Option<&mpsc::UnboundedSender<&'static str>>,
    ) -> Result<String, String> {
        let mut command = tokio::process::Command::new(&tool.argv[0]);
        super::scrub_env(&mut command);
        // Relative paths, `.env` and the project are the user's file's
        // directory's, also when the first file is a generated copy.
        command.args(&tool.argv[1..]).arg("-p").arg(&project.name).arg("--project-directory").arg(&project.dir);
        for file in &project.files {
            command.arg("-f").arg(file);
        }
        let mut child = command
            .args(args)
            .current_dir(&project.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", tool.argv.join(" ")))?;
        // Each line goes to the log as it comes (a pull or a build may take
        // minutes), and says what the tool is doing.
        let mut out = child.stdout.take().map(|o| BufReader::new(o).lines());
        let mut err = child.stderr.take().map(|e| BufReader::new(e).lines());
        let mut text = String::new();
        let mut last = std::collections::VecDeque::new();
        loop {
            let line = tokio::select! {
                line = next_line(&mut out), if out.is_some() => line,
                line = next_line(&mut err), if err.is_some() => line,
                else => break,
            };
            let Some(line) = line.filter(|l| !l.trim().is_empty()) else { continue };
            if let Some(logs) = logs {
                logs.push(Stream::Nanny, &line);
            }
            if let (Some(progress), Some(stage)) = (progress, stage_of(&line)) {
                let _ = progress.send(stage);
            }
            if text.len() < OUTPUT_KEEP {
                text.push_str(&line);
                text.push('\n');
            }
            if last.len() == ERROR_LINES {
                last.pop_front();
            }
            last.push_back(line);
        }
        let status = child.wait().await.map_err(|e| format!("waiting for {}: {e}", tool.argv.join(" ")))?;
        if status.success() {
            return Ok(text);
        }
        let quoted = Vec::from(last).join("\n");
        Err(format!("`{} {}` failed ({status}): {quoted}", tool.argv.join(" "), args.join(" ")))
    }
}

/// The next line of a pipe; the pipe is dropped (`None`) at its end.
async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(pipe: &mut Option<Lines<R>>) -> Option<String> {
    let line = pipe.as_mut()?.next_line().await.ok().flatten();
    if line.is_none() {
        *pipe = None;
    }
    line
}

/// What a line of `up -d` output says the tool is doing (v1 and v2 wording).
fn stage_of(line: &str) -> Option<&'static str> {
    let words = line.to_ascii_lowercase();
    let has = |w: &str| words.contains(w);
    if has("pulling") || has("pull complete") || has("downloading") || has("extracting") {
        Some("pulling")
    } else if has("building") || words.trim_start().starts_with("step ") || words.starts_with('#') {
        Some("building")
    } else if has("creating") || has("recreating") {
        Some("creating")
    } else if has("starting") {
        Some("starting containers")
    } else {
        None
    }
}

/// The Compose tool on this machine: the `docker compose` plugin, else `docker-compose`.
pub async fn detect_tool() -> Result<Tool, String> {
    let candidates: [&[&str]; 2] = [&["docker", "compose"], &["docker-compose"]];
    let mut tried = Vec::new();
    for argv in candidates {
        let output = super::scrub_env(&mut tokio::process::Command::new(argv[0]))
            .args(&argv[1..])
            .args(["version", "--short"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await;
        match output {
            Ok(o) if o.status.success() => {
                let version = String::from_utf8_lossy(&o.stdout).trim().to_string();
                return Ok(Tool { argv: argv.iter().map(|s| s.to_string()).collect(), version });
            }
            Ok(o) => tried.push(format!("`{} version`: {}", argv.join(" "), String::from_utf8_lossy(&o.stderr).trim())),
            Err(e) => tried.push(format!("`{}`: {e}", argv.join(" "))),
        }
    }
    Err(format!("no Docker Compose tool found ({})", tried.join("; ")))
}

/// Memory in use less the page cache that can be dropped, as `docker stats` shows it.
fn working_set(memory: bollard::models::ContainerMemoryStats) -> u64 {
    let usage = memory.usage.unwrap_or(0);
    let stats = memory.stats.unwrap_or_default();
    let cache = stats.get("inactive_file").or_else(|| stats.get("total_inactive_file")).or_else(|| stats.get("cache"));
    usage.saturating_sub(cache.copied().unwrap_or(0))
}

fn engine_error(e: &bollard::errors::Error) -> String {
    format!("the Docker engine at {} is not reachable: {}", docker_host(), crate::health::error_chain(e))
}

async fn list_project(docker: &Docker, project: &str) -> Result<Vec<Container>, String> {
    let label = format!("{PROJECT_LABEL}={project}");
    // `compose run` containers belong to the project but not to its services.
    let filters: HashMap<&str, Vec<&str>> =
        HashMap::from([("label", vec![label.as_str(), "com.docker.compose.oneoff=False"])]);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    let list = docker.list_containers(Some(options)).await.map_err(|e| engine_error(&e))?;
    let mut containers: Vec<Container> = list
        .into_iter()
        .map(|c| Container {
            id: c.id.unwrap_or_default(),
            name: c.names.and_then(|n| n.first().map(|n| n.trim_start_matches('/').to_string())).unwrap_or_default(),
            service: c.labels.and_then(|mut l| l.remove("com.docker.compose.service")).unwrap_or_default(),
            running: c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
            exited_cleanly: c.status.as_deref().is_some_and(|s| s.starts_with("Exited (0)")),
        })
        .collect();
    containers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(containers)
}

async fn started_at(docker: &Docker, id: &str) -> Option<jiff::Timestamp> {
    let inspect = docker.inspect_container(id, None).await.ok()?;
    inspect.state?.started_at?.parse().ok()
}

async fn exit_code(docker: &Docker, id: &str) -> Option<i32> {
    let inspect = docker.inspect_container(id, None).await.ok()?;
    inspect.state?.exit_code.map(|c| c as i32)
}

/// Copy a container's output into the service's log, each line prefixed by
/// the container's name.
async fn follow_logs(docker: Docker, container: Container, logs: Arc<LogStore>, since: i64, tail: Option<&str>) {
    let mut options = LogsOptionsBuilder::default().follow(true).stdout(true).stderr(true);
    options = match tail {
        Some(tail) => options.tail(tail),
        None => options.since(since as i32),
    };
    let mut stream = docker.logs(&container.id, Some(options.build()));
    let (mut out, mut err) = (LineSplitter::default(), LineSplitter::default());
    while let Some(Ok(chunk)) = stream.next().await {
        let (stream, splitter, bytes) = match &chunk {
            bollard::container::LogOutput::StdErr { message } => (Stream::Stderr, &mut err, message),
            bollard::container::LogOutput::StdOut { message } | bollard::container::LogOutput::Console { message } => {
                (Stream::Stdout, &mut out, message)
            }
            bollard::container::LogOutput::StdIn { .. } => continue,
        };
        let lines: Vec<String> =
            splitter.split(bytes).into_iter().map(|l| format!("[{}] {l}", container.name)).collect();
        logs.push_many(stream, lines);
    }
}

/// Compose's default project name for a directory: its base name,
/// lowercased, keeping only `a-z0-9_-`, without leading `_`/`-`.
pub fn default_project_name(dir: &Path) -> String {
    let base = std::path::absolute(dir).ok().and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
    base.unwrap_or_default()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect::<String>()
        .trim_start_matches(['_', '-'])
        .to_string()
}

/// The parts of a compose file the daemon needs.
#[derive(Deserialize)]
struct ComposeFile {
    name: Option<String>,
    #[serde(default)]
    services: BTreeMap<String, ComposeService>,
}

/// The parts of one of its services the daemon needs.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ComposeService {
    /// `restart:`; `"no"` (or an unquoted `no`, a boolean to YAML 1.1).
    restart: Option<serde_json::Value>,
    /// `depends_on:`, a list of names or a map of name to `{condition}`.
    depends_on: Option<serde_json::Value>,
}

impl ComposeFile {
    /// Services that run to completion by design: those another service
    /// waits for with `condition: service_completed_successfully`, and
    /// those that say `restart: "no"`. Only the others must keep running.
    fn one_shot(&self) -> BTreeSet<String> {
        let awaited = self.services.values().filter_map(|s| s.depends_on.as_ref()?.as_object()).flat_map(|deps| {
            deps.iter()
                .filter(|(_, d)| d.get("condition").and_then(|c| c.as_str()) == Some("service_completed_successfully"))
                .map(|(name, _)| name.clone())
        });
        let never_restarted = self.services.iter().filter_map(|(name, s)| {
            let no = matches!(&s.restart, Some(serde_json::Value::String(r)) if r == "no")
                || s.restart == Some(serde_json::Value::Bool(false));
            no.then(|| name.clone())
        });
        awaited.chain(never_restarted).collect()
    }

    fn read(path: &Path) -> Result<ComposeFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_saphyr::from_str(&text).map_err(|e| {
            let message = e.to_string();
            let first = message.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
            format!("{} is not a valid compose file: {first}", path.display())
        })
    }
}

/// The container id in a process's `/proc/PID/cgroup`: the last path
/// segment that is one, as the engine names the container's cgroup with the
/// cgroupfs driver (`/docker/ID`) or the systemd one (`docker-ID.scope`), in
/// cgroup v1 (a line per controller) and v2 (`0::PATH`).
fn container_in_cgroup(cgroup: &str) -> Option<&str> {
    cgroup
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .map(|segment| segment.trim_start_matches("docker-").trim_end_matches(".scope"))
        .rfind(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The first Compose `docker compose` version whose `!override` tag
/// replaces a sequence instead of appending to it (2.24.4).
const OVERRIDE_TAG_SINCE: (u32, u32, u32) = (2, 24, 4);

impl Tool {
    /// Whether this tool reads `!override` in an override file. Compose v1
    /// (`docker-compose` 1.x) cannot parse it; older v2 plugins append.
    fn reads_override_tag(&self) -> bool {
        let mut parts = self.version.trim().trim_start_matches('v').split(['.', '-', '+']).map(|p| p.parse::<u32>());
        let mut next = || parts.next().and_then(Result::ok).unwrap_or(0);
        (next(), next(), next()) >= OVERRIDE_TAG_SINCE
    }
}

/// The files Compose is given for a GPU placement, in order after the
/// user's compose file (or instead of it).
#[derive(Debug, PartialEq)]
struct GpuFiles {
    /// A copy of the user's compose file whose GPU reservations name the
    /// placed GPUs, used instead of the user's file: for a tool that cannot
    /// replace a sequence from an override (v1 merges `devices` as a union,
    /// v2 before 2.24.4 appends), so a base `count: all` would still win.
    copy: Option<String>,
    /// The override: `NVIDIA_VISIBLE_DEVICES` for every service and, with
    /// `!override`, the replaced GPU reservations.
    overlay: String,
}

/// How the project's files give it the GPU placement, so the user's compose
/// file is never edited. Every service gets `NVIDIA_VISIBLE_DEVICES` (what
/// the NVIDIA runtime reads for a service with `runtime: nvidia` and no
/// device request). A service that reserves GPUs the documented way
/// (`deploy.resources.reservations.devices` with `capabilities: [gpu]` or
/// `driver: nvidia`) gets them from Docker's device request, which wins
/// over that variable: its GPU entries are replaced by one with
/// `device_ids:` the placed GPUs (no `count`, which Compose refuses with
/// it), keeping the driver, capabilities and options.
fn gpu_files(source: &str, gpu: &Placement, override_tag: bool) -> Result<GpuFiles, String> {
    let mut file: serde_json::Value = serde_saphyr::from_str(source).map_err(|e| e.to_string())?;
    let services: Vec<String> = match file.get("services").and_then(|s| s.as_object()) {
        Some(services) => services.keys().cloned().collect(),
        None => Vec::new(),
    };
    let mut overlay = String::from("# Generated by nanny: the GPU placement the arbiter chose.\nservices:\n");
    let mut replaced = Vec::new();
    if let Devices::Listed(ids) = &gpu.devices {
        for name in &services {
            let Some(devices) = file.pointer_mut(&format!(
                "/services/{}/deploy/resources/reservations/devices",
                name.replace('~', "~0").replace('/', "~1")
            )) else {
                continue;
            };
            let Some(list) = devices.as_array_mut() else { continue };
            if !list.iter().any(is_gpu_request) {
                continue;
            }
            let mut placed = false;
            let mut new_list = Vec::new();
            for entry in list.drain(..) {
                if !is_gpu_request(&entry) {
                    new_list.push(entry);
                } else if !placed {
                    placed = true;
                    new_list.push(placed_request(entry, ids));
                }
            }
            *list = new_list;
            replaced.push((name.clone(), serde_json::Value::Array(list.clone())));
        }
    }
    for name in &services {
        overlay.push_str(&format!("  {}:\n    environment:\n", serde_json::Value::from(name.as_str())));
        for (key, value) in gpu.devices.container_env() {
            overlay.push_str(&format!("      {key}: \"{value}\"\n"));
        }
        if let (true, Some((_, devices))) = (override_tag, replaced.iter().find(|(n, _)| n == name)) {
            overlay.push_str(&format!(
                "    deploy:\n      resources:\n        reservations:\n          devices: !override {devices}\n"
            ));
        }
    }
    // JSON is YAML to both tools; `${VAR}` references are kept as written.
    let copy = (!override_tag && !replaced.is_empty()).then(|| {
        format!("# Generated by nanny: the user's compose file with the GPUs the arbiter placed.\n{file:#}\n")
    });
    Ok(GpuFiles { copy, overlay })
}

/// A device request for GPUs: `capabilities` naming `gpu`, or the NVIDIA driver.
fn is_gpu_request(entry: &serde_json::Value) -> bool {
    let gpu_capability = entry.get("capabilities").and_then(|c| c.as_array()).is_some_and(|c| {
        c.iter().any(|c| c.as_str() == Some("gpu") || c.as_array().is_some_and(|c| c.iter().any(|c| c == "gpu")))
    });
    gpu_capability || entry.get("driver").and_then(|d| d.as_str()) == Some("nvidia")
}

/// `entry` asking for exactly `ids`.
fn placed_request(mut entry: serde_json::Value, ids: &[String]) -> serde_json::Value {
    if let Some(request) = entry.as_object_mut() {
        request.remove("count");
        request.insert("device_ids".into(), ids.iter().map(|id| serde_json::Value::from(id.as_str())).collect());
        request.entry("driver").or_insert_with(|| "nvidia".into());
        request.entry("capabilities").or_insert_with(|| serde_json::json!(["gpu"]));
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_follow_compose() {
        assert_eq!(default_project_name(Path::new("/srv/Minimal SD-API")), "minimalsd-api");
        assert_eq!(default_project_name(Path::new("/srv/_x.y")), "xy");
        assert_eq!(default_project_name(Path::new("/srv/web_1")), "web_1");
    }

    #[test]
    fn one_shot_services_are_awaited_to_completion_or_never_restarted() {
        let text = "services:\n  web:\n    image: x\n    restart: unless-stopped\n    depends_on:\n      \
                    migrate: {condition: service_completed_successfully}\n      db: {condition: service_started}\n  \
                    migrate: {image: x}\n  db: {image: x}\n  seed: {image: x, restart: \"no\"}\n  \
                    init: {image: x, restart: no}\n  worker: {image: x, depends_on: [db]}\n";
        let file: ComposeFile = serde_saphyr::from_str(text).unwrap();
        assert_eq!(file.one_shot().into_iter().collect::<Vec<_>>(), vec!["init", "migrate", "seed"]);
    }

    #[test]
    fn up_output_names_its_stage() {
        for (line, stage) in [
            ("Pulling web (nginx:latest)...", Some("pulling")),
            (" web Pulling ", Some("pulling")),
            ("Building web", Some("building")),
            ("Step 2/3 : RUN sleep 5", Some("building")),
            ("#5 [2/2] RUN sleep 5", Some("building")),
            ("Creating nt_web_1 ... ", Some("creating")),
            (" Container nt-web-1  Starting", Some("starting containers")),
            ("latest: digest: sha256:…", None),
        ] {
            assert_eq!(stage_of(line), stage, "{line}");
        }
    }

    #[test]
    fn a_container_is_found_in_its_process_cgroup_with_either_driver_and_version() {
        let id = "3f4c9e5a0b1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f";
        let v2_systemd = format!("0::/system.slice/docker-{id}.scope\n");
        let v2_cgroupfs = format!("0::/docker/{id}\n");
        let v1_cgroupfs = format!(
            "12:memory:/docker/{id}\n11:devices:/docker/{id}\n1:name=systemd:/docker/{id}\n0::/system.slice/containerd.service\n"
        );
        let v1_systemd =
            format!("4:cpu,cpuacct:/system.slice/docker-{id}.scope\n1:name=systemd:/system.slice/docker-{id}.scope\n");
        let nested = format!("0::/system.slice/docker-{id}.scope/init.scope\n");
        for text in [v2_systemd, v2_cgroupfs, v1_cgroupfs, v1_systemd, nested] {
            assert_eq!(container_in_cgroup(&text), Some(id), "{text}");
        }
        for host in ["0::/user.slice/user-1000.slice/session-2.scope\n", "0::/\n", "", "0::/docker/abc\n"] {
            assert_eq!(container_in_cgroup(host), None, "{host}");
        }
    }

    fn listed(ids: &[&str]) -> Placement {
        Placement { devices: Devices::Listed(ids.iter().map(|id| id.to_string()).collect()) }
    }

    fn tool(version: &str) -> Tool {
        Tool { argv: vec!["docker".into(), "compose".into()], version: version.into() }
    }

    const RESERVING: &str = "x-gpu: &gpu\n  resources:\n    reservations:\n      devices:\n        \
                             - {driver: nvidia, count: all, capabilities: [gpu], options: {a: b}}\n        \
                             - {driver: other, count: 1, capabilities: [tpu]}\nservices:\n  \
                             web: {image: x, environment: [\"A=${A}\"], deploy: *gpu}\n  worker: {image: y}\n";

    /// The replaced reservation of `service` in a generated file.
    fn devices(text: &str, service: &str) -> serde_json::Value {
        let text = text.replace("!override ", "");
        let file: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        file.pointer(&format!("/services/{service}/deploy/resources/reservations/devices")).cloned().unwrap()
    }

    #[test]
    fn override_names_every_service() {
        let text = "services:\n  web: {image: x}\n  worker: {image: y}\n";
        let files = gpu_files(text, &listed(&["0"]), false).unwrap();
        assert_eq!(files.copy, None, "nothing reserves a GPU: the user's file is used as it is");
        let parsed: ComposeFile = serde_saphyr::from_str(&files.overlay).unwrap();
        assert_eq!(parsed.services.keys().collect::<Vec<_>>(), vec!["web", "worker"]);
        assert!(files.overlay.contains("NVIDIA_VISIBLE_DEVICES: \"0\"") && !files.overlay.contains("deploy"));
        assert!(!files.overlay.contains("CUDA_VISIBLE_DEVICES"), "CUDA numbers the container's GPUs from 0");
        let every = gpu_files(RESERVING, &Placement { devices: Devices::All }, false).unwrap();
        assert_eq!(every.copy, None, "all GPUs: the reservation stays as written");
        assert!(every.overlay.contains("NVIDIA_VISIBLE_DEVICES: \"all\""));
    }

    #[test]
    fn a_gpu_reservation_is_replaced_by_the_placed_device_ids_with_override() {
        let files = gpu_files(RESERVING, &listed(&["1", "GPU-8f"]), true).unwrap();
        assert_eq!(files.copy, None);
        assert!(files.overlay.contains("devices: !override ["), "{}", files.overlay);
        let expected = serde_json::json!([
            {"driver": "nvidia", "capabilities": ["gpu"], "options": {"a": "b"}, "device_ids": ["1", "GPU-8f"]},
            {"driver": "other", "count": 1, "capabilities": ["tpu"]},
        ]);
        assert_eq!(devices(&files.overlay, "web"), expected);
        let parsed: serde_json::Value = serde_saphyr::from_str(&files.overlay.replace("!override ", "")).unwrap();
        assert!(parsed.pointer("/services/worker/deploy").is_none(), "worker reserves no GPU");
        assert!(parsed.pointer("/services/worker/environment/NVIDIA_VISIBLE_DEVICES").is_some());
    }

    #[test]
    fn without_override_the_copy_of_the_file_reserves_the_placed_gpus() {
        let files = gpu_files(RESERVING, &listed(&["1"]), false).unwrap();
        assert!(!files.overlay.contains("!override") && !files.overlay.contains("deploy"));
        let copy = files.copy.expect("a copy");
        assert_eq!(devices(&copy, "web")[0]["device_ids"], serde_json::json!(["1"]));
        assert!(devices(&copy, "web")[0].get("count").is_none(), "Compose refuses count with device_ids");
        assert!(copy.contains("A=${A}"), "interpolation is left to Compose");
        assert!(devices(&copy, "web")[1].get("count").is_some(), "other devices are kept");
    }

    #[test]
    fn the_override_tag_is_used_by_compose_2_24_4_and_later() {
        for (version, reads) in [("1.29.2", false), ("2.24.3", false), ("2.24.4", true), ("v2.29.1", true)] {
            assert_eq!(tool(version).reads_override_tag(), reads, "{version}");
        }
        assert!(tool("2.30.0-desktop.1").reads_override_tag());
    }
}
