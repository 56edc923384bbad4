//! `GET /services/{name}`, `nanny show`.

use crate::daemon::Daemon;
use crate::daemon::views::{ServiceDetail, StatusView};
use crate::error::Error;

pub fn run(d: &Daemon, name: &str) -> Result<ServiceDetail, Error> {
    let snap = d.service(name)?.snapshot();
    Ok(ServiceDetail {
        config: (**snap.latest_manifest()).clone(),
        status: snap.state,
        state: StatusView::of(&snap, d.usage.get(name)),
    })
}
