//! `POST /services/{name}/remove`, `nanny remove`: stop the service, then
//! remove what it leaves behind (a Compose project's containers and
//! networks; volumes and images are kept). Stopping alone never removes.
//! A native service leaves nothing behind: for it, `remove` is a stop, and
//! the answer says so.

use crate::daemon::Daemon;
use crate::daemon::views::RemoveOutcome;
use crate::error::Error;

pub async fn run(d: &Daemon, name: &str) -> Result<RemoveOutcome, Error> {
    let also_stopped = super::stop::stop_with_dependents(d, name).await?;
    let manifest = d.service(name)?.snapshot().latest_manifest().clone();
    let output =
        d.runtime.remove(&manifest).await.map_err(|e| Error::Runtime(format!("cannot remove '{name}': {e}")))?;
    let message = match manifest.runtime {
        crate::manifest::Runtime::Native { .. } => {
            format!("Service '{name}' stopped; a native service leaves nothing else to remove")
        }
        crate::manifest::Runtime::Compose { .. } => format!("Service '{name}' stopped and removed"),
    };
    Ok(RemoveOutcome { message, output, also_stopped })
}
