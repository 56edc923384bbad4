//! `POST /rediscover`, `nanny rediscover`: rescan the services directory.

use crate::daemon::Daemon;
use crate::daemon::views::{ChangedService, RediscoverReport};
use crate::error::Error;

pub async fn run(d: &Daemon) -> Result<RediscoverReport, Error> {
    let rescan = d.registry.rescan().await.ok_or(Error::ShuttingDown)?;
    let registry = d.registry.snapshot();
    let changed = rescan
        .changed
        .into_iter()
        .map(|(name, running)| ChangedService {
            note: if running {
                format!("manifest changed; '{name}' keeps running with its previous manifest until it is restarted")
            } else {
                format!("manifest changed; '{name}' will use it at its next start")
            },
            name,
            running,
        })
        .collect();
    Ok(RediscoverReport {
        added: rescan.added,
        removed: rescan.removed,
        changed,
        invalid: registry.invalid.clone(),
        total: registry.services.len(),
    })
}
