//! `POST /services/{name}/restart`, `nanny restart`: stop, then start
//! (with the manifest as it is on disk now).

use crate::daemon::Daemon;
use crate::daemon::views::StartOutcome;
use crate::error::Error;

pub async fn run(d: &Daemon, name: &str, force: bool) -> Result<StartOutcome, Error> {
    d.service(name)?.stop().await?;
    super::start::run(d, name, force).await
}
