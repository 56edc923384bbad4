//! `GET /health`: the daemon's own health, and what runtimes it found.

use crate::daemon::Daemon;
use crate::daemon::views::{self, DaemonHealth};

pub async fn run(d: &Daemon) -> DaemonHealth {
    let list = super::list::run(d);
    DaemonHealth {
        status: "healthy",
        version: env!("CARGO_PKG_VERSION"),
        uptime: views::python_timedelta(d.started.elapsed()),
        services: list.total,
        invalid: list.invalid.len(),
        gpu_service_running: list.gpu_service_running,
        gpu: views::GpuHealth {
            policy: d.arbiter.policy(),
            source: d.arbiter.source(),
            detail: d.arbiter.detail().to_string(),
        },
        services_dir: d.config.services_dir.display().to_string(),
        runtimes: d.runtime.describe().await,
    }
}
