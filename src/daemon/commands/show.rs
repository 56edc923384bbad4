//! `GET /services/{name}`, `nanny show`.

use crate::daemon::Daemon;
use crate::daemon::views::ServiceDetail;
use crate::error::Error;

pub fn run(d: &Daemon, name: &str) -> Result<ServiceDetail, Error> {
    Ok(ServiceDetail::of(&d.service(name)?.snapshot(), d.usage.get(name)))
}
