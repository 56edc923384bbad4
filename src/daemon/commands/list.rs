//! `GET /services`, `nanny ls`.

use crate::daemon::Daemon;
use crate::daemon::views::{ServiceList, ServiceSummary};

pub fn run(d: &Daemon) -> ServiceList {
    let registry = d.registry.snapshot();
    let services: Vec<ServiceSummary> =
        registry.services.iter().map(|(name, h)| ServiceSummary::of(&h.snapshot(), d.usage.get(name))).collect();
    ServiceList {
        total: services.len(),
        services,
        gpu_service_running: d.arbiter.holder(),
        invalid: registry.invalid.clone(),
    }
}
