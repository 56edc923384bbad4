//! `GET /services`, `nanny ls`.

use crate::daemon::Daemon;
use crate::daemon::views::{ServiceList, ServiceSummary};

pub fn run(d: &Daemon) -> ServiceList {
    let registry = d.registry.snapshot();
    let usage = d.usage.read();
    // Each snapshot is read in place (not cloned): a thousand services answer in one pass.
    let services: Vec<ServiceSummary> = registry
        .services
        .iter()
        .map(|(name, h)| ServiceSummary::of(&h.status.borrow(), usage.get(name).copied()))
        .collect();
    drop(usage);
    ServiceList {
        total: services.len(),
        services,
        gpu_service_running: d.arbiter.holder(),
        invalid: registry.invalid.clone(),
    }
}
