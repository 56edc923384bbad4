//! `GET /events`, `GET /events/stream`, `nanny events [-f]`: the event
//! history, and the live stream resumed without a gap.

use tokio::sync::broadcast;

use crate::daemon::Daemon;
use crate::error::Error;
use crate::events::{Event, Filter};

pub async fn history(d: &Daemon, filter: Filter) -> Result<Vec<Event>, Error> {
    Ok(d.store.events(filter).await)
}

/// The stored events after `filter.since`, and a receiver of later ones.
/// The receiver is taken first, so no event falls between the two; the
/// reader skips live events whose id it has already seen.
pub async fn subscribe(d: &Daemon, filter: Filter) -> Result<(Vec<Event>, broadcast::Receiver<Event>), Error> {
    let live = d.store.subscribe();
    let backlog = d.store.events(filter).await;
    Ok((backlog, live))
}
