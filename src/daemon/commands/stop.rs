//! `POST /services/{name}/stop`, `nanny stop`: idempotent; returns once no
//! process of the service is left.

use crate::daemon::Daemon;
use crate::daemon::views::StopOutcome;
use crate::error::Error;

pub async fn run(d: &Daemon, name: &str) -> Result<StopOutcome, Error> {
    let service = d.service(name)?;
    service.stop().await;
    Ok(StopOutcome {
        message: format!("Service '{name}' stopped successfully"),
        status: service.snapshot().state,
    })
}
