//! `GET /events`, `GET /events/stream`, `nanny events [-f]`: the event
//! history, and the live stream resumed without a gap.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::daemon::Daemon;
use crate::error::Error;
use crate::events::{Event, Filter};
use crate::store::Store;

/// Events a stream reads from the store per request, so that a long replay
/// never holds the store thread and other requests are served between pages.
pub const PAGE: usize = 500;

pub async fn history(d: &Daemon, filter: Filter) -> Result<Vec<Event>, Error> {
    Ok(d.store.events(filter).await)
}

pub async fn page(d: &Daemon, filter: Filter) -> Result<Vec<Event>, Error> {
    Ok(d.store.page(filter).await)
}

/// A stream of the newest `filter.limit` stored events after `filter.since`
/// (all of them if the limit is 0), then the live ones.
pub async fn subscribe(d: &Daemon, filter: Filter) -> Result<EventFeed, Error> {
    Ok(EventFeed::new(d.store.clone(), filter).await)
}

/// One client's events: the stored ones read a page at a time, then the
/// live ones, skipping those already read. A client that falls behind the
/// live channel goes back to reading pages from its last event.
pub struct EventFeed {
    store: Store,
    /// `since` is the last event delivered; `limit` is the page size.
    filter: Filter,
    live: broadcast::Receiver<Arc<Event>>,
    replaying: bool,
    pending: VecDeque<Event>,
}

impl EventFeed {
    pub(crate) async fn new(store: Store, filter: Filter) -> EventFeed {
        // Subscribed first, so no event falls between the stored and the live ones.
        let live = store.subscribe();
        let since = store.backlog_start(filter.clone()).await;
        let filter = Filter { since, limit: PAGE, ..filter };
        EventFeed { store, filter, live, replaying: true, pending: VecDeque::new() }
    }

    /// The next event; `None` once the store is gone.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.filter.since = event.id;
                return Some(event);
            }
            if self.replaying {
                let page = self.store.page(self.filter.clone()).await;
                self.replaying = page.len() == PAGE;
                self.pending = page.into();
                continue;
            }
            match self.live.recv().await {
                Ok(event) if self.filter.matches(&event) => self.pending.push_back(Arc::unwrap_or_clone(event)),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => self.replaying = true,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::events::EventKind;

    async fn read(feed: &mut EventFeed, n: usize) -> Vec<u64> {
        let mut ids = Vec::new();
        while ids.len() < n {
            let next = tokio::time::timeout(Duration::from_secs(10), feed.next()).await;
            ids.push(next.expect("the next event within 10 s").expect("the feed goes on").id);
        }
        ids
    }

    #[tokio::test]
    async fn a_feed_replays_in_pages_then_goes_live_and_catches_up_after_falling_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for _ in 0..1200 {
            store.emit(Some("a"), EventKind::Discovered);
        }
        store.emit(Some("b"), EventKind::Discovered);
        store.flush().await;

        let mut all = EventFeed::new(store.clone(), Filter { since: 1, limit: 0, ..Filter::default() }).await;
        let only_b = Filter { service: Some("b".into()), limit: 5, ..Filter::default() };
        let mut b = EventFeed::new(store.clone(), only_b).await;
        assert_eq!(read(&mut all, 1200).await, (2..=1201).collect::<Vec<_>>(), "three pages, no gap");
        assert_eq!(read(&mut b, 1).await, [1201]);

        // More events than the live channel holds arrive while nobody reads.
        for _ in 0..3000 {
            store.emit(Some("a"), EventKind::Stopped);
        }
        store.emit(Some("b"), EventKind::Stopped);
        assert_eq!(read(&mut all, 3001).await, (1202..=4202).collect::<Vec<_>>(), "caught up from the store");
        assert_eq!(read(&mut b, 1).await, [4202]);
        store.emit(None, EventKind::Discovered);
        assert_eq!(read(&mut all, 1).await, [4203], "live again");
    }
}
