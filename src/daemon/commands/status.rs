//! `GET /services/{name}/status`, `nanny status`.

use crate::daemon::Daemon;
use crate::daemon::views::StatusView;
use crate::error::Error;

pub fn run(d: &Daemon, name: &str) -> Result<StatusView, Error> {
    Ok(StatusView::of(&d.service(name)?.snapshot(), d.usage.get(name)))
}
