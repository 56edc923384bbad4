//! `GET /services/{name}/logs`, `nanny logs [-f]`.

use crate::daemon::Daemon;
use crate::error::Error;
use crate::logs::{Follower, LogLine};

pub fn tail(d: &Daemon, name: &str, n: usize) -> Result<Vec<LogLine>, Error> {
    Ok(d.service(name)?.logs.tail(n))
}

pub fn follow(d: &Daemon, name: &str, n: usize) -> Result<(Vec<LogLine>, Follower), Error> {
    Ok(d.service(name)?.logs.follow(n))
}
