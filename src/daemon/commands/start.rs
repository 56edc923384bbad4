//! `POST /services/{name}/start`, `nanny start [--force]`: returns once the
//! service is running (healthy) or its start failed. With `force`, the GPU
//! holder is stopped gracefully first (never a `pinned` one).

use crate::daemon::Daemon;
use crate::daemon::views::StartOutcome;
use crate::error::Error;
use crate::lifecycle::State;
use crate::service::StartError;

/// How many holders a forced start will stop before giving up (each stop
/// can race with another forced start).
const MAX_PREEMPTIONS: usize = 5;

pub async fn run(d: &Daemon, name: &str, force: bool) -> Result<StartOutcome, Error> {
    let service = d.service(name)?;
    let was_running = matches!(service.snapshot().state, State::Running | State::Unhealthy);
    let mut preempted = Vec::new();
    loop {
        match service.start().await {
            Ok(()) => break,
            Err(StartError::GpuBusy { holder }) if force && preempted.len() < MAX_PREEMPTIONS => {
                let Ok(holder_service) = d.service(&holder) else {
                    return Err(StartError::GpuBusy { holder }.into());
                };
                if holder_service.snapshot().manifest.pinned {
                    return Err(Error::Pinned {
                        holder,
                        requested: name.to_string(),
                    });
                }
                tracing::info!(service = name, "force: stopping GPU holder '{holder}'");
                holder_service.stop().await;
                preempted.push(holder);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let snap = service.snapshot();
    Ok(StartOutcome {
        message: format!("Service '{name}' started successfully"),
        status: snap.state,
        health_endpoint: snap.manifest.health_endpoint_string(),
        started: !was_running,
        preempted,
    })
}
