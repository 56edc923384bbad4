//! `POST /services/{name}/stop`, `nanny stop`: idempotent; returns once no
//! process of the service is left (or answers that one outlived SIGKILL).
//! Services that depend on it are stopped first (as systemd does for
//! `Requires=`), and listed in the answer. Each service's task remembers
//! that it is meant to be stopped. A stop that needed SIGKILL says so.

use crate::daemon::Daemon;
use crate::daemon::views::StopOutcome;
use crate::deps;
use crate::error::Error;

pub async fn run(d: &Daemon, name: &str) -> Result<StopOutcome, Error> {
    let had_process = d.service(name)?.snapshot().state.has_process();
    let also_stopped = stop_with_dependents(d, name).await?;
    d.store.flush().await;
    let snap = d.service(name)?.snapshot();
    let message = match had_process && snap.stop_killed {
        true => format!(
            "Service '{name}' stopped (killed after stop_timeout {} s: it ignored {})",
            snap.manifest.stop_timeout.as_secs_f64(),
            snap.manifest.stop_signal
        ),
        false => format!("Service '{name}' stopped successfully"),
    };
    Ok(StopOutcome { message, status: snap.state, also_stopped })
}

/// Stop the running dependents of `name` (deepest first), then `name`.
/// Returns the dependents that were stopped.
pub async fn stop_with_dependents(d: &Daemon, name: &str) -> Result<Vec<String>, Error> {
    let service = d.service(name)?;
    let registry = d.registry.snapshot();
    let manifests: deps::Services =
        registry.services.iter().map(|(n, h)| (n.clone(), h.snapshot().manifest.clone())).collect();
    let mut stopped = Vec::new();
    for dependent in deps::dependents(&manifests, name) {
        let Some(handle) = registry.services.get(&dependent) else { continue };
        if handle.snapshot().state.holds_gpu() || handle.snapshot().state.has_process() {
            handle.stop().await?;
            stopped.push(dependent);
        }
    }
    service.stop().await?;
    Ok(stopped)
}
