//! `POST /services/{name}/start`, `nanny start [--force]`: starts the
//! service's stopped dependencies first (waiting for each one's condition),
//! then the service, and returns once it is running (healthy) or its start
//! failed. With `force`, the GPU holder is stopped gracefully first (never a
//! `pinned` one). Also the daemon's own start-up restore.

use std::future::Future;
use std::pin::Pin;

use crate::daemon::Daemon;
use crate::daemon::views::StartOutcome;
use crate::deps;
use crate::error::Error;
use crate::events::EventKind;
use crate::lifecycle::State;
use crate::manifest::DependencyCondition;
use crate::service::{ServiceHandle, StartError};

/// How many holders a forced start will stop before giving up (each stop
/// can race with another forced start).
const MAX_PREEMPTIONS: usize = 5;

pub async fn run(d: &Daemon, name: &str, force: bool) -> Result<StartOutcome, Error> {
    let service = d.service(name)?;
    let was_running = matches!(service.snapshot().state, State::Running | State::Unhealthy);
    let preempted = start_with_dependencies(d.clone(), name.to_string(), force).await?;
    d.store.set_desired(name, true).await;
    let snap = service.snapshot();
    Ok(StartOutcome {
        message: format!("Service '{name}' started successfully"),
        status: snap.state,
        health_endpoint: snap.manifest.health_endpoint_string(),
        started: !was_running,
        preempted,
    })
}

type Started = Pin<Box<dyn Future<Output = Result<Vec<String>, Error>> + Send>>;

/// Start `name` after its dependencies; returns the GPU services preempted.
fn start_with_dependencies(d: Daemon, name: String, force: bool) -> Started {
    Box::pin(async move {
        let service = d.service(&name)?;
        let manifest = service.snapshot().latest_manifest().clone();
        let mut preempted = Vec::new();
        for dep in &manifest.depends_on {
            let dep_service = d.service(&dep.name)?;
            let condition = deps::condition(dep_service.snapshot().latest_manifest(), dep.condition);
            let starting = start_with_dependencies(d.clone(), dep.name.clone(), force);
            let result = match condition {
                DependencyCondition::Healthy => starting.await,
                DependencyCondition::Started => until_started(&dep_service, starting).await,
            };
            preempted.extend(result.map_err(|e| Error::Dependency {
                service: name.clone(),
                dependency: dep.name.clone(),
                source: Box::new(e),
            })?);
        }
        preempted.extend(start_one(&d, &service, &name, force).await?);
        Ok(preempted)
    })
}

/// Drive `starting` until the dependency's process is up (or it failed);
/// the rest of its start goes on in the background.
async fn until_started(dep: &ServiceHandle, starting: Started) -> Result<Vec<String>, Error> {
    let mut watch = dep.watch();
    let task = tokio::spawn(starting);
    tokio::select! {
        _ = watch.wait_for(|s| matches!(s.state, State::Starting | State::Running | State::Unhealthy)) => Ok(Vec::new()),
        result = task => result.unwrap_or(Err(Error::ShuttingDown)),
    }
}

async fn start_one(d: &Daemon, service: &ServiceHandle, name: &str, force: bool) -> Result<Vec<String>, Error> {
    let mut preempted = Vec::new();
    loop {
        match service.start().await {
            Ok(()) => return Ok(preempted),
            Err(StartError::GpuBusy { holder }) if force && preempted.len() < MAX_PREEMPTIONS => {
                let Ok(holder_service) = d.service(&holder) else {
                    return Err(StartError::GpuBusy { holder }.into());
                };
                if holder_service.snapshot().manifest.pinned {
                    return Err(Error::Pinned { holder, requested: name.to_string() });
                }
                tracing::info!(service = name, "force: stopping GPU holder '{holder}'");
                super::stop::stop_with_dependents(d, &holder).await?;
                // Preempted: it is not meant to come back after a crash.
                d.store.set_desired(&holder, false).await;
                d.store.emit(Some(&holder), EventKind::GpuPreempted { by: name.to_string() });
                preempted.push(holder);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// At daemon start: `autostart` services and those last meant to be running,
/// GPU services one at a time by `priority` (so the GPU rule decides who
/// wins, not a race), the others at once.
pub async fn restore(d: &Daemon) {
    let desired = d.store.desired().await;
    let registry = d.registry.snapshot();
    let mut targets: Vec<_> = registry
        .services
        .iter()
        .map(|(name, h)| (name.clone(), h.snapshot().latest_manifest().clone()))
        .filter(|(name, m)| m.autostart || desired.contains(name))
        .collect();
    targets.sort_by_key(|(name, m)| (std::cmp::Reverse(m.priority), name.clone()));
    let (gpu, cpu): (Vec<_>, Vec<_>) = targets.into_iter().partition(|(_, m)| m.gpu_required);
    for (name, _) in cpu {
        let d = d.clone();
        tokio::spawn(async move { report_restore(&name, run(&d, &name, false).await) });
    }
    for (name, _) in gpu {
        report_restore(&name, run(d, &name, false).await);
    }
}

fn report_restore(name: &str, result: Result<StartOutcome, Error>) {
    match result {
        Ok(_) => tracing::info!(service = name, "started at daemon start"),
        Err(e) => tracing::warn!(service = name, "not started at daemon start: {e}"),
    }
}
