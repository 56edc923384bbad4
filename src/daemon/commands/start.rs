//! `POST /services/{name}/start`, `nanny start [--force]`: starts the
//! service's stopped dependencies first (waiting for each one's condition),
//! then the service, and returns once it is running (healthy) or its start
//! failed. The answer says whether it was already running, which
//! dependencies it started (`also_started`) and the new process's pid. With `force`, the GPU holder is stopped gracefully first (never a
//! `pinned` one). Also the daemon's own start-up restore.
//!
//! A start only says what it wants: each service's task converges on its
//! own. The wish is tied to the service's wish number read when the request
//! began, so a stop asked while the start waited (on a dependency, on a
//! preempted GPU holder) wins.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

use crate::daemon::Daemon;
use crate::daemon::views::StartOutcome;
use crate::deps;
use crate::error::Error;
use crate::events::EventKind;
use crate::lifecycle::State;
use crate::manifest::DependencyCondition;
use crate::service::{ADOPT_TIMEOUT, Failure, OnBusy, ServiceHandle, StartError};
use crate::store::Desired;

/// How many holders a forced start will stop before giving up (each stop
/// can race with another forced start).
const MAX_PREEMPTIONS: usize = 5;

pub async fn run(
    d: &Daemon,
    name: &str,
    force: bool,
    wait: Option<Duration>,
    gone: impl Future<Output = ()>,
) -> Result<StartOutcome, Error> {
    match wait {
        None => start(d, name, force, OnBusy::Refuse).await,
        Some(timeout) => start_when_room(d, name, force, timeout, gone).await,
    }
}

/// `{"wait": true}`: while the GPUs have no room for it, wait in the queue
/// (by priority, then first come) until they have, `timeout` at most. Only
/// the first in line tries again, each time the GPUs' holders change; it
/// leaves the queue when it got in, gave up, or its client went away
/// (`gone`). A stop asked meanwhile ends the wait.
async fn start_when_room(
    d: &Daemon,
    name: &str,
    force: bool,
    timeout: Duration,
    gone: impl Future<Output = ()>,
) -> Result<StartOutcome, Error> {
    let service = d.service(name)?;
    let ask = crate::gpu::Ask::of(service.snapshot().latest_manifest());
    let deadline = Instant::now() + timeout;
    let until = jiff::Timestamp::now() + timeout;
    let mut changes = d.arbiter.changes();
    let mut ticket = None;
    tokio::pin!(gone);
    loop {
        let in_line = ticket.as_ref().is_some_and(crate::gpu::Ticket::is_first);
        if in_line || (ticket.is_none() && d.arbiter.queue_is_empty()) {
            changes.borrow_and_update();
            match start(d, name, force, OnBusy::Refuse).await {
                Err(e) if no_room(&e) => {}
                done => return done,
            }
        }
        let wish = service.snapshot().wishes;
        if ticket.is_none() {
            ticket = Some(d.arbiter.enqueue(&ask, until));
        }
        loop {
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::GpuWaitTimeout { service: name.to_string(), waited: timeout.as_secs_f64() })
                }
                _ = &mut gone => return Err(Error::ClientGone),
            }
            if service.snapshot().wishes != wish {
                let why = "another start or a stop was asked while it waited for the GPU".to_string();
                return Err(StartError::Interrupted { name: name.to_string(), why }.into());
            }
            if ticket.as_ref().is_some_and(crate::gpu::Ticket::is_first) {
                break;
            }
        }
    }
}

/// Whether a start was refused only for want of GPU room.
fn no_room(e: &Error) -> bool {
    match e {
        Error::Service { error: StartError::GpuBusy { .. } | StartError::GpuFull { .. }, next: None } => true,
        Error::Dependency { source, .. } => no_room(source),
        _ => false,
    }
}

async fn start(d: &Daemon, name: &str, force: bool, on_busy: OnBusy) -> Result<StartOutcome, Error> {
    let service = d.service(name)?;
    let was_running = matches!(service.snapshot().state, State::Running | State::Unhealthy);
    // Each task answers once the store has written its wish, so no answer is lost to a crash.
    let done = start_with_dependencies(d.clone(), name.to_string(), force, on_busy).await?;
    let snap = service.snapshot();
    let message = match (was_running, &snap.last_health) {
        (true, _) => format!("Service '{name}' is already running"),
        (false, Some(_)) => format!("Service '{name}' started successfully"),
        // No check (the manifest's or the runtime's) ever ran: it stayed up.
        (false, None) => {
            let up = snap.started_at.map(|(since, _)| since.elapsed().as_secs_f64().round()).unwrap_or_default();
            format!("Service '{name}' started: running (no health check; up for {up} s)")
        }
    };
    Ok(StartOutcome {
        message,
        status: snap.state,
        health_endpoint: snap.manifest.health_endpoint_string(),
        started: !was_running,
        pid: snap.pid,
        also_started: done.also_started,
        preempted: done.preempted,
    })
}

/// What a start did besides starting the service asked for.
#[derive(Default)]
struct Done {
    /// GPU services stopped to make room (`force`).
    preempted: Vec<String>,
    /// Dependencies that were not up and were started.
    also_started: Vec<String>,
}

type Started = Pin<Box<dyn Future<Output = Result<Done, Error>> + Send>>;

/// Start `name` after its dependencies.
fn start_with_dependencies(d: Daemon, name: String, force: bool, on_busy: OnBusy) -> Started {
    Box::pin(async move {
        let service = d.service(&name)?;
        let wish = service.snapshot().wishes;
        let manifest = service.snapshot().latest_manifest().clone();
        let mut done = Done::default();
        for dep in &manifest.depends_on {
            let dep_service = d.service(&dep.name)?;
            let was_up = dep_service.snapshot().state.has_process();
            let condition = deps::condition(dep_service.snapshot().latest_manifest(), dep.condition);
            let starting = start_with_dependencies(d.clone(), dep.name.clone(), force, on_busy);
            let result = match condition {
                DependencyCondition::Healthy => starting.await,
                DependencyCondition::Started => until_started(&dep_service, starting).await,
            };
            let dep_done = result.map_err(|e| Error::Dependency {
                service: name.clone(),
                dependency: dep.name.clone(),
                source: Box::new(e),
            })?;
            done.preempted.extend(dep_done.preempted);
            for started in dep_done.also_started.into_iter().chain((!was_up).then(|| dep.name.clone())) {
                if !done.also_started.contains(&started) {
                    done.also_started.push(started);
                }
            }
        }
        done.preempted.extend(start_one(&d, &service, &name, force, on_busy, wish).await?);
        Ok(done)
    })
}

/// Drive `starting` until the dependency's process is up (or it failed);
/// the rest of its start goes on in the background.
async fn until_started(dep: &ServiceHandle, starting: Started) -> Result<Done, Error> {
    let mut watch = dep.watch();
    let task = tokio::spawn(starting);
    tokio::select! {
        _ = watch.wait_for(|s| matches!(s.state, State::Starting | State::Running | State::Unhealthy)) => Ok(Done::default()),
        result = task => result.unwrap_or(Err(Error::ShuttingDown)),
    }
}

async fn start_one(
    d: &Daemon,
    service: &ServiceHandle,
    name: &str,
    force: bool,
    on_busy: OnBusy,
    wish: u64,
) -> Result<Vec<String>, Error> {
    let mut preempted = Vec::new();
    let mut releasing = true;
    loop {
        match service.start(on_busy, Some(wish)).await {
            Ok(()) => return Ok(preempted),
            // A GPU service just stopped: its memory may not show free in
            // the driver's figures yet (bounded by `RELEASE_WAIT`).
            Err(Failure { error: StartError::GpuFull { .. }, next: None })
                if releasing && d.arbiter.releasing_until().is_some() =>
            {
                releasing = false;
                let mut changes = d.arbiter.changes();
                let until = d.arbiter.releasing_until().map(Instant::from_std).unwrap_or_else(Instant::now);
                changes.borrow_and_update();
                let _ = tokio::time::timeout_at(until, changes.changed()).await;
            }
            Err(Failure { error: StartError::GpuBusy { holder }, next: None })
                if force && preempted.len() < MAX_PREEMPTIONS =>
            {
                let Ok(holder_service) = d.service(&holder) else {
                    return Err(StartError::GpuBusy { holder }.into());
                };
                if holder_service.snapshot().manifest.pinned {
                    return Err(Error::Pinned { holder, requested: name.to_string() });
                }
                preempt(d, &holder, name).await?;
                preempted.push(holder);
            }
            Err(Failure { error: StartError::GpuFull { name: asked, shortfall }, next: None })
                if force && preempted.len() < MAX_PREEMPTIONS && !shortfall.stop.is_empty() =>
            {
                // The planner never names a pinned holder nor one of higher priority.
                for eviction in shortfall.stop {
                    preempt(d, &eviction.service, &asked).await?;
                    preempted.push(eviction.service);
                }
            }
            // A forced start that lost the race says what it was doing.
            Err(Failure { error: StartError::Interrupted { name, why }, next }) if !preempted.is_empty() => {
                let why = format!("{why} (while it stopped '{}' to free the GPU)", preempted.join("', '"));
                return Err(Failure { error: StartError::Interrupted { name, why }, next }.into());
            }
            Err(failure) => return Err(failure.into()),
        }
    }
}

/// Stop `holder` (and the services that depend on it) so that `by` gets its
/// GPU room, and say so in `holder`'s events. Its task remembers it stopped:
/// it is not meant to come back.
async fn preempt(d: &Daemon, holder: &str, by: &str) -> Result<(), Error> {
    tracing::info!(service = by, "force: stopping '{holder}' to free the GPU");
    super::stop::stop_with_dependents(d, holder).await?;
    d.store.emit(Some(holder), EventKind::GpuPreempted { by: by.to_string() });
    Ok(())
}

/// At daemon start: `autostart` services and those last meant to be running,
/// GPU services one at a time by `priority` (so the GPU rule decides who
/// wins, not a race), the others at once. Services found running (adopted)
/// are settled first, so they keep the GPU they hold; a service the restart
/// policy gave up on stays `failed`. A restored service waits for the GPU
/// and for its runtime rather than failing, and one whose dependency is not
/// up yet starts once it is.
pub async fn restore(d: &Daemon) {
    let registry = d.registry.snapshot();
    for service in registry.services.values() {
        let mut watch = service.watch();
        let _ = tokio::time::timeout(ADOPT_TIMEOUT * 2, watch.wait_for(|s| !s.adopting)).await;
    }
    let desired = d.store.desired().await;
    let mut targets = Vec::new();
    for (name, service) in &registry.services {
        let manifest = service.snapshot().latest_manifest().clone();
        match desired.get(name) {
            Some(Desired::GaveUp(reason)) => service.gave_up(reason.clone()),
            Some(Desired::Running) => targets.push((name.clone(), manifest)),
            _ if manifest.autostart => targets.push((name.clone(), manifest)),
            _ => {}
        }
    }
    targets.sort_by_key(|(name, m)| (std::cmp::Reverse(m.priority), name.clone()));
    let (gpu, cpu): (Vec<_>, Vec<_>) = targets.into_iter().partition(|(_, m)| m.gpu_required);
    for (name, _) in cpu {
        let d = d.clone();
        tokio::spawn(async move { restore_one(&d, &name).await });
    }
    for (name, _) in gpu {
        restore_one(d, &name).await;
    }
}

/// Restore one service; when a dependency is not up, try again once it is
/// (unless someone asked something else of the service meanwhile).
async fn restore_one(d: &Daemon, name: &str) {
    loop {
        let Ok(service) = d.service(name) else { return };
        let wish = service.snapshot().wishes;
        match start(d, name, false, OnBusy::Wait).await {
            Ok(_) => return tracing::info!(service = name, "started at daemon start"),
            Err(Error::Dependency { dependency, source, .. }) => {
                tracing::warn!(service = name, "waiting for its dependency '{dependency}': {source}");
                let Ok(dep) = d.service(&dependency) else { return };
                let (mut dep_watch, mut own_watch) = (dep.watch(), service.watch());
                tokio::select! {
                    _ = dep_watch.wait_for(|s| matches!(s.state, State::Running | State::Unhealthy)) => {}
                    _ = own_watch.wait_for(|s| s.wishes != wish) => return,
                }
            }
            Err(e) => return tracing::warn!(service = name, "not running yet at daemon start: {e}"),
        }
    }
}
