//! `POST /services/{name}/restart`, `nanny restart`: stop, then start
//! (with the manifest as it is on disk now); the answer names the new pid.

use crate::daemon::Daemon;
use crate::daemon::views::StartOutcome;
use crate::error::Error;

pub async fn run(d: &Daemon, name: &str, force: bool) -> Result<StartOutcome, Error> {
    d.service(name)?.stop().await?;
    let outcome = super::start::run(d, name, force, None, std::future::pending()).await?;
    let pid = outcome.pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default();
    Ok(StartOutcome { message: format!("Service '{name}' restarted{pid}"), ..outcome })
}
