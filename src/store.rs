//! The state that survives the daemon, in SQLite (`STATE_DIR/nanny.db`):
//! the event history, which services are meant to be running, and the
//! process groups the daemon has spawned (so a daemon started after a crash
//! can clean up what the old one left).
//!
//! One thread owns the connection and serves requests in order, so an
//! event is written before it is published and ids are strictly increasing.
//! The requests waiting when it turns to them are written in one transaction
//! (group commit): a thousand services starting at once cost a few commits,
//! not thousands; what waits on a write hears back once it is committed.
//! The database uses WAL with `synchronous=NORMAL`: a write survives the
//! daemon being killed, which is the failure it is there for.
//!
//! The event history is kept within a [`Retention`]: at start, then every
//! minute, the thread deletes the oldest events beyond it, at most
//! `PRUNE_BATCH` at a time with requests served in between. Queries name
//! only the conditions they are given, so they search an index.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params, params_from_iter};
use tokio::sync::{broadcast, oneshot};

use crate::events::{Event, EventKind, Filter};
use crate::runtime::GroupRecord;

/// What a service is meant to be, as remembered across daemon restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    Running,
    Stopped,
    /// Meant to be running, but its restart policy gave up (the reason):
    /// it stays `failed` until someone starts it.
    GaveUp(String),
}

/// A process group the daemon started, as recorded for crash recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedProcess {
    pub service: String,
    pub group: GroupRecord,
}

#[derive(Debug, thiserror::Error)]
#[error("state database {path}: {source}")]
pub struct StoreError {
    path: String,
    source: rusqlite::Error,
}

/// How much event history is kept: the newest `keep` events, none older than `max_age`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub keep: u64,
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { keep: 100_000, max_age: Duration::from_secs(30 * 24 * 3600) }
    }
}

/// The most requests written in one transaction.
const COMMIT_BATCH: usize = 512;
/// The most events one pruning step deletes.
const PRUNE_BATCH: usize = 2000;
/// How often the history is pruned once it is within its retention.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Which of the events matching a filter a query returns (oldest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    /// The newest `limit`.
    Newest,
    /// The oldest `limit`: one page of a replay.
    Oldest,
}

enum Request {
    Append {
        service: Option<String>,
        kind: EventKind,
    },
    Query {
        filter: Filter,
        take: Take,
        reply: oneshot::Sender<Vec<Event>>,
    },
    BacklogStart {
        filter: Filter,
        reply: oneshot::Sender<u64>,
    },
    SetDesired {
        service: String,
        desired: Desired,
    },
    Desired {
        reply: oneshot::Sender<BTreeMap<String, Desired>>,
    },
    RecordProcess(RecordedProcess),
    ForgetProcess {
        service: String,
    },
    Processes {
        reply: oneshot::Sender<Vec<RecordedProcess>>,
    },
    Flush {
        reply: oneshot::Sender<()>,
    },
    #[cfg(test)]
    Hold(mpsc::Receiver<()>),
}

/// The handle every part of the daemon uses. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Request>,
    /// Events as they are written: shared, so a slot of the channel's ring (1024, for
    /// listeners that fall behind) is a pointer, and a listener's copy costs no allocation.
    live: broadcast::Sender<Arc<Event>>,
    /// Wait for answers in a blocking task (see [`Store::holding_paused_clock`]).
    hold_clock: bool,
}

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = NORMAL;
    PRAGMA cache_size = -512;
    CREATE TABLE IF NOT EXISTS events (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        ts      TEXT NOT NULL,
        service TEXT,
        kind    TEXT NOT NULL,
        body    TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS events_service ON events (service, id);
    CREATE TABLE IF NOT EXISTS desired (
        service TEXT PRIMARY KEY,
        running INTEGER NOT NULL,
        updated TEXT NOT NULL,
        gave_up TEXT
    );
    CREATE TABLE IF NOT EXISTS processes (
        service     TEXT PRIMARY KEY,
        pgid        INTEGER NOT NULL,
        start_ticks INTEGER NOT NULL,
        boot_id     TEXT NOT NULL DEFAULT '',
        daemon_pid  INTEGER NOT NULL DEFAULT 0,
        daemon_start_ticks INTEGER NOT NULL DEFAULT 0
    );
";

impl Store {
    /// Open (or create) the database in `state_dir` and start its thread,
    /// with the default retention.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(state_dir, Retention::default())
    }

    /// Open (or create) the database in `state_dir` and start its thread,
    /// which prunes the history to `retention`.
    pub fn open_with(state_dir: &Path, retention: Retention) -> Result<Store, StoreError> {
        let path = state_dir.join("nanny.db");
        let error = |source| StoreError { path: path.display().to_string(), source };
        let conn = Connection::open(&path).map_err(error)?;
        conn.execute_batch(SCHEMA).map_err(error)?;
        // Databases written by earlier versions gain the columns added since.
        for (table, column, definition) in [
            ("processes", "boot_id", "TEXT NOT NULL DEFAULT ''"),
            ("processes", "daemon_pid", "INTEGER NOT NULL DEFAULT 0"),
            ("processes", "daemon_start_ticks", "INTEGER NOT NULL DEFAULT 0"),
            ("desired", "gave_up", "TEXT"),
        ] {
            let present: bool = conn
                .query_row(
                    &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = '{column}'"),
                    [],
                    |r| r.get(0),
                )
                .map_err(error)?;
            if !present {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {definition}")).map_err(error)?;
            }
        }
        let (tx, rx) = mpsc::channel();
        let live = broadcast::channel(1024).0;
        let owner = Owner { conn, live: live.clone(), retention };
        std::thread::Builder::new()
            .name("nanny-store".into())
            .spawn(move || owner.run(rx))
            .expect("the store thread starts");
        Ok(Store { tx, live, hold_clock: false })
    }

    /// For tests on a paused tokio clock, which jumps to the next timer whenever the runtime
    /// waits on nothing of its own, as it does while a task awaits this thread's answer: wait
    /// for answers in a blocking task instead, which holds the clock still meanwhile.
    #[cfg(test)]
    pub fn holding_paused_clock(self) -> Store {
        Store { hold_clock: true, ..self }
    }

    /// For tests: the store thread writes nothing sent after this until the returned sender
    /// is dropped.
    #[cfg(test)]
    pub fn hold(&self) -> mpsc::Sender<()> {
        let (release, until) = mpsc::channel();
        let _ = self.tx.send(Request::Hold(until));
        release
    }

    /// Record an event; it is persisted, logged, then published.
    pub fn emit(&self, service: Option<&str>, kind: EventKind) {
        let _ = self.tx.send(Request::Append { service: service.map(str::to_string), kind });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.live.subscribe()
    }

    /// The newest `filter.limit` matching events (all if 0), oldest first.
    pub async fn events(&self, filter: Filter) -> Vec<Event> {
        self.ask(|reply| Request::Query { filter, take: Take::Newest, reply }).await.unwrap_or_default()
    }

    /// The oldest `filter.limit` matching events: a page of a replay.
    pub async fn page(&self, filter: Filter) -> Vec<Event> {
        self.ask(|reply| Request::Query { filter, take: Take::Oldest, reply }).await.unwrap_or_default()
    }

    /// The id after which the newest `filter.limit` matching events begin
    /// (`filter.since` if there are no more than that, or the limit is 0).
    pub async fn backlog_start(&self, filter: Filter) -> u64 {
        let since = filter.since;
        self.ask(|reply| Request::BacklogStart { filter, reply }).await.unwrap_or(since)
    }

    /// Record what `service` is meant to be. Requests are written in the
    /// order they are sent; [`Store::flush`] waits until they are.
    pub fn set_desired(&self, service: &str, desired: Desired) {
        let _ = self.tx.send(Request::SetDesired { service: service.to_string(), desired });
    }

    /// What every service with a record was last meant to be.
    pub async fn desired(&self) -> BTreeMap<String, Desired> {
        self.ask(|reply| Request::Desired { reply }).await.unwrap_or_default()
    }

    pub fn record_process(&self, process: RecordedProcess) {
        let _ = self.tx.send(Request::RecordProcess(process));
    }

    pub fn forget_process(&self, service: &str) {
        let _ = self.tx.send(Request::ForgetProcess { service: service.to_string() });
    }

    pub async fn processes(&self) -> Vec<RecordedProcess> {
        self.ask(|reply| Request::Processes { reply }).await.unwrap_or_default()
    }

    /// Resolves once everything sent before it is written. The store thread waits on no one,
    /// so this only waits for the requests queued before it (written in a few transactions,
    /// no fsync: WAL, `NORMAL`).
    pub async fn flush(&self) {
        let _ = self.ask(|reply| Request::Flush { reply }).await;
    }

    async fn ask<T: Send + 'static>(&self, request: impl FnOnce(oneshot::Sender<T>) -> Request) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(request(reply)).ok()?;
        match self.hold_clock {
            false => rx.await.ok(),
            true => tokio::task::spawn_blocking(move || rx.blocking_recv().ok()).await.ok().flatten(),
        }
    }
}

/// What a batch owes once it is committed.
enum Committed {
    Event(Event),
    Flushed(oneshot::Sender<()>),
}

struct Owner {
    conn: Connection,
    live: broadcast::Sender<Arc<Event>>,
    retention: Retention,
}

impl Owner {
    /// Serve requests until every handle is gone, pruning at start and then
    /// every `PRUNE_EVERY`; while a prune has more to delete, one request
    /// and one batch take turns.
    fn run(self, rx: mpsc::Receiver<Request>) {
        let mut prune_at = Instant::now();
        loop {
            if Instant::now() >= prune_at {
                let deleted = self.prune().unwrap_or_else(|e| {
                    tracing::error!("state database: pruning events: {e}");
                    0
                });
                prune_at = Instant::now() + if deleted == PRUNE_BATCH { Duration::ZERO } else { PRUNE_EVERY };
            }
            match rx.recv_timeout(prune_at.saturating_duration_since(Instant::now())) {
                Ok(first) => {
                    let mut batch = vec![first];
                    batch.extend(std::iter::from_fn(|| rx.try_recv().ok()).take(COMMIT_BATCH - 1));
                    self.serve(batch);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    /// Serve `batch` in one transaction; once it is committed, publish its events and answer
    /// those waiting on it.
    fn serve(&self, batch: Vec<Request>) {
        let mut committed = Vec::new();
        let result = self.conn.unchecked_transaction().and_then(|tx| {
            for request in batch {
                if let Err(e) = self.handle(request, &mut committed) {
                    tracing::error!("state database: {e}");
                }
            }
            tx.commit()
        });
        if let Err(e) = result {
            tracing::error!("state database: {e}");
            // An event is published only once it is persisted; those waiting still hear back.
            committed.retain(|done| !matches!(done, Committed::Event(_)));
        }
        for done in committed {
            match done {
                Committed::Event(event) => {
                    match &event.service {
                        Some(s) => tracing::info!(event = event.id, service = %s, "{}", event.message),
                        None => tracing::info!(event = event.id, "{}", event.message),
                    }
                    let _ = self.live.send(Arc::new(event));
                }
                Committed::Flushed(reply) => {
                    let _ = reply.send(());
                }
            }
        }
    }

    /// Delete the oldest events beyond the retention, at most `PRUNE_BATCH`;
    /// returns how many. Ids only grow, so the newest `keep` are those above
    /// the newest id minus `keep`.
    fn prune(&self) -> rusqlite::Result<usize> {
        let newest: Option<i64> = self.conn.query_row("SELECT max(id) FROM events", [], |r| r.get(0))?;
        let Some(newest) = newest else { return Ok(0) };
        let beyond_count = newest.saturating_sub(i64::try_from(self.retention.keep).unwrap_or(i64::MAX));
        let too_old = jiff::Timestamp::now().checked_sub(self.retention.max_age).unwrap_or(jiff::Timestamp::MIN);
        let mut stmt = self.conn.prepare_cached("SELECT id, ts FROM events ORDER BY id LIMIT ?1")?;
        let mut rows = stmt.query([PRUNE_BATCH as i64])?;
        let (mut last, mut count) = (None, 0);
        while let Some(row) = rows.next()? {
            let (id, ts): (i64, String) = (row.get(0)?, row.get(1)?);
            // A timestamp that does not parse is not kept for its age.
            let expired = id <= beyond_count || ts.parse::<jiff::Timestamp>().ok().is_none_or(|ts| ts < too_old);
            if !expired {
                break;
            }
            (last, count) = (Some(id), count + 1);
        }
        if let Some(last) = last {
            self.conn.execute("DELETE FROM events WHERE id <= ?1", [last])?;
            tracing::debug!(deleted = count, "pruned events up to {last}");
        }
        Ok(count)
    }

    fn handle(&self, request: Request, committed: &mut Vec<Committed>) -> rusqlite::Result<()> {
        match request {
            Request::Append { service, kind } => committed.push(Committed::Event(self.append(service, kind)?)),
            Request::Query { filter, take, reply } => {
                let _ = reply.send(self.query(&filter, take)?);
            }
            Request::BacklogStart { filter, reply } => {
                let start = match filter.limit {
                    0 => None,
                    _ => {
                        let (sql, params) = select(&filter, Select::BacklogStart);
                        self.conn
                            .prepare_cached(&sql)?
                            .query_row(params_from_iter(params), |r| r.get::<_, Option<i64>>(0))?
                    }
                };
                let _ = reply.send(start.map_or(filter.since, |first| first as u64 - 1));
            }
            Request::SetDesired { service, desired } => {
                let (running, gave_up) = match desired {
                    Desired::Running => (true, None),
                    Desired::Stopped => (false, None),
                    Desired::GaveUp(reason) => (true, Some(reason)),
                };
                self.conn
                    .prepare_cached(
                        "INSERT INTO desired (service, running, updated, gave_up) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (service) DO UPDATE SET running = ?2, updated = ?3, gave_up = ?4",
                    )?
                    .execute(params![service, running, jiff::Timestamp::now().to_string(), gave_up])?;
            }
            Request::Desired { reply } => {
                let mut stmt = self.conn.prepare("SELECT service, running, gave_up FROM desired")?;
                let rows = stmt.query_map([], |row| {
                    let desired = match (row.get::<_, bool>(1)?, row.get::<_, Option<String>>(2)?) {
                        (true, Some(reason)) => Desired::GaveUp(reason),
                        (true, None) => Desired::Running,
                        (false, _) => Desired::Stopped,
                    };
                    Ok((row.get(0)?, desired))
                })?;
                let _ = reply.send(rows.collect::<Result<_, _>>()?);
            }
            Request::RecordProcess(p) => {
                self.conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO processes (service, pgid, start_ticks, boot_id, daemon_pid, daemon_start_ticks)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        p.service,
                        p.group.pgid,
                        p.group.start_ticks as i64,
                        p.group.boot_id,
                        p.group.daemon_pid,
                        p.group.daemon_start_ticks as i64
                    ])?;
            }
            Request::ForgetProcess { service } => {
                self.conn.prepare_cached("DELETE FROM processes WHERE service = ?1")?.execute(params![service])?;
            }
            Request::Processes { reply } => {
                let mut stmt = self.conn.prepare(
                    "SELECT service, pgid, start_ticks, boot_id, daemon_pid, daemon_start_ticks FROM processes",
                )?;
                let rows = stmt
                    .query_map([], |row| {
                        Ok(RecordedProcess {
                            service: row.get(0)?,
                            group: GroupRecord {
                                pgid: row.get(1)?,
                                start_ticks: row.get::<_, i64>(2)? as u64,
                                boot_id: row.get(3)?,
                                daemon_pid: row.get(4)?,
                                daemon_start_ticks: row.get::<_, i64>(5)? as u64,
                            },
                        })
                    })?
                    .collect::<Result<_, _>>()?;
                let _ = reply.send(rows);
            }
            Request::Flush { reply } => committed.push(Committed::Flushed(reply)),
            #[cfg(test)]
            Request::Hold(until) => drop(until.recv()),
        }
        Ok(())
    }

    /// Write an event (inside the batch's transaction); it is published once committed.
    fn append(&self, service: Option<String>, kind: EventKind) -> rusqlite::Result<Event> {
        let ts = jiff::Timestamp::now();
        let message = kind.describe();
        let kind_name = kind.name();
        self.conn
            .prepare_cached("INSERT INTO events (ts, service, kind, body) VALUES (?1, ?2, ?3, '')")?
            .execute(params![ts.to_string(), service, kind_name])?;
        let id = self.conn.last_insert_rowid() as u64;
        let event = Event { id, ts, service, kind, message };
        let body = serde_json::to_string(&event).unwrap_or_default();
        self.conn.prepare_cached("UPDATE events SET body = ?1 WHERE id = ?2")?.execute(params![body, id as i64])?;
        Ok(event)
    }

    fn query(&self, filter: &Filter, take: Take) -> rusqlite::Result<Vec<Event>> {
        let (sql, params) = select(filter, Select::Events(take));
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let bodies: Vec<String> =
            stmt.query_map(params_from_iter(params), |row| row.get(0))?.collect::<Result<_, _>>()?;
        Ok(bodies.iter().filter_map(|b| serde_json::from_str(b).ok()).collect())
    }
}

/// What [`select`] builds a query for.
#[derive(Debug, Clone, Copy)]
enum Select {
    /// The matching events' bodies, oldest first.
    Events(Take),
    /// The smallest id of the newest `limit` matching events.
    BacklogStart,
}

/// The SQL and parameters of a query over the events matching `filter`.
/// The `WHERE` clause names only the conditions the filter sets (never
/// `?2 IS NULL OR service = ?2`), so SQLite searches `events_service`, or
/// the primary key, instead of scanning the table.
fn select(filter: &Filter, what: Select) -> (String, Vec<SqlValue>) {
    let mut params = vec![SqlValue::Integer(i64::try_from(filter.since).unwrap_or(i64::MAX))];
    let mut matching = "id > ?1".to_string();
    if let Some(service) = &filter.service {
        params.push(SqlValue::Text(service.clone()));
        matching.push_str(" AND service = ?2");
    }
    let limit = if filter.limit == 0 { i64::MAX } else { i64::try_from(filter.limit).unwrap_or(i64::MAX) };
    params.push(SqlValue::Integer(limit));
    let limit = format!("?{}", params.len());
    let sql = match what {
        Select::Events(Take::Newest) => format!(
            "SELECT body FROM (SELECT id, body FROM events WHERE {matching} ORDER BY id DESC LIMIT {limit}) ORDER BY id"
        ),
        Select::Events(Take::Oldest) => format!("SELECT body FROM events WHERE {matching} ORDER BY id LIMIT {limit}"),
        Select::BacklogStart => {
            format!("SELECT min(id) FROM (SELECT id FROM events WHERE {matching} ORDER BY id DESC LIMIT {limit})")
        }
    };
    (sql, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes events `ids` at `ts` straight into `dir`'s database, in one
    /// transaction; event `i` belongs to service `s{i % 100}`.
    fn fill(dir: &Path, ids: std::ops::RangeInclusive<u64>, ts: jiff::Timestamp) {
        let conn = Connection::open(dir.join("nanny.db")).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        let mut insert =
            tx.prepare("INSERT INTO events (id, ts, service, kind, body) VALUES (?1, ?2, ?3, ?4, ?5)").unwrap();
        for id in ids {
            let service = format!("s{}", id % 100);
            let event =
                Event { id, ts, service: Some(service), kind: EventKind::Discovered, message: "discovered".into() };
            let body = serde_json::to_string(&event).unwrap();
            insert.execute(params![id as i64, ts.to_string(), event.service, event.kind.name(), body]).unwrap();
        }
        drop(insert);
        tx.commit().unwrap();
    }

    fn ago(days: u64) -> jiff::Timestamp {
        jiff::Timestamp::now().checked_sub(Duration::from_secs(days * 86400)).unwrap()
    }

    fn ids(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.id).collect()
    }

    const KEEP_ALL: Retention = Retention { keep: u64::MAX, max_age: Duration::from_secs(3650 * 86400) };

    #[test]
    fn queries_search_an_index_instead_of_scanning() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 1..=1000, ago(0));
        let conn = Connection::open(dir.path().join("nanny.db")).unwrap();
        conn.execute_batch("ANALYZE").unwrap();
        for service in [None, Some("s7".to_string())] {
            let filter = Filter { since: 10, service: service.clone(), limit: 100 };
            for what in [Select::Events(Take::Newest), Select::Events(Take::Oldest), Select::BacklogStart] {
                let (sql, params) = select(&filter, what);
                let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
                let plan: Vec<String> =
                    stmt.query_map(params_from_iter(params), |r| r.get(3)).unwrap().collect::<Result<_, _>>().unwrap();
                let plan = plan.join("; ");
                assert!(!plan.contains("SCAN events"), "{what:?} {service:?}: {plan}");
                let index = if service.is_some() {
                    "INDEX events_service (service=? AND id>?)"
                } else {
                    "INTEGER PRIMARY KEY (rowid>?)"
                };
                assert!(
                    plan.contains(&format!("SEARCH events USING {index}"))
                        || plan.contains(&format!("SEARCH events USING COVERING {index}")),
                    "{what:?} {service:?}: {plan}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_filtered_query_of_a_large_history_answers_fast() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 1..=200_000, ago(0));
        let store = Store::open_with(dir.path(), KEEP_ALL).unwrap();
        let t0 = Instant::now();
        let newest = store.events(Filter { since: 0, service: Some("s7".into()), limit: 100 }).await;
        let took = t0.elapsed();
        assert_eq!(ids(&newest), (190_007..=199_907).step_by(100).collect::<Vec<_>>());
        assert!(took < Duration::from_millis(200), "the newest 100 of one service took {took:?}");
        let t0 = Instant::now();
        let page = store.page(Filter { since: 100_000, service: Some("s7".into()), limit: 500 }).await;
        let took = t0.elapsed();
        assert_eq!(page.len(), 500);
        assert_eq!(page[0].id, 100_007);
        assert!(took < Duration::from_millis(200), "a page of one service took {took:?}");
        assert_eq!(store.backlog_start(Filter { since: 0, service: Some("s7".into()), limit: 3 }).await, 199_706);
    }

    #[tokio::test]
    async fn pages_and_backlog_starts() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 1..=1000, ago(0));
        let store = Store::open_with(dir.path(), KEEP_ALL).unwrap();
        let page = |since, service: Option<&str>, limit| {
            store.page(Filter { since, service: service.map(str::to_string), limit })
        };
        assert_eq!(ids(&page(0, None, 500).await), (1..=500).collect::<Vec<_>>());
        assert_eq!(ids(&page(500, Some("s7"), 3).await), [507, 607, 707]);
        assert!(page(1000, None, 500).await.is_empty());
        let start = |since, service: Option<&str>, limit| {
            store.backlog_start(Filter { since, service: service.map(str::to_string), limit })
        };
        assert_eq!(start(0, None, 10).await, 990, "the newest 10 are 991..=1000");
        assert_eq!(start(0, Some("s7"), 2).await, 806, "s7's newest 2 are 807 and 907");
        assert_eq!(start(995, None, 10).await, 995, "fewer than the limit after since");
        assert_eq!(start(5, None, 0).await, 5, "no limit");
    }

    #[test]
    fn pruning_deletes_the_oldest_beyond_the_retention_a_batch_at_a_time() {
        let steps = |retention: Retention| {
            let dir = tempfile::tempdir().unwrap();
            fill(dir.path(), 1..=3000, ago(40));
            fill(dir.path(), 3001..=5000, ago(1));
            let conn = Connection::open(dir.path().join("nanny.db")).unwrap();
            let owner = Owner { conn, live: broadcast::channel(1).0, retention };
            let steps: Vec<usize> = std::iter::from_fn(|| Some(owner.prune().unwrap())).take(4).collect();
            let (first, count): (i64, i64) = owner
                .conn
                .query_row("SELECT min(id), count(*) FROM events", [], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap();
            (steps, first, count)
        };
        let by_age = Retention { keep: 100_000, max_age: Duration::from_secs(30 * 86400) };
        assert_eq!(steps(by_age), (vec![PRUNE_BATCH, 1000, 0, 0], 3001, 2000), "older than 30 days");
        let by_count = Retention { keep: 1500, ..KEEP_ALL };
        assert_eq!(steps(by_count), (vec![PRUNE_BATCH, 1500, 0, 0], 3501, 1500), "the newest 1500");
    }

    #[tokio::test]
    async fn the_store_prunes_at_start_and_answers_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 1..=10_000, ago(0));
        let store = Store::open_with(dir.path(), Retention { keep: 1000, ..KEEP_ALL }).unwrap();
        store.emit(None, EventKind::Discovered);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let all = store.events(Filter::default()).await;
            assert_eq!(all.last().map(|e| e.id), Some(10_001), "answered while pruning");
            if all.len() == 1000 {
                assert_eq!(all[0].id, 9002, "the newest 1000 are kept");
                break;
            }
            assert!(Instant::now() < deadline, "still {} events", all.len());
        }
    }

    #[tokio::test]
    async fn events_are_numbered_persisted_and_filtered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut live = store.subscribe();
        store.emit(Some("a"), EventKind::Discovered);
        store.emit(Some("b"), EventKind::Discovered);
        store.emit(Some("a"), EventKind::Stopped);
        let first = live.recv().await.unwrap();
        assert_eq!((first.id, first.service.as_deref()), (1, Some("a")));
        let a = store.events(Filter { service: Some("a".into()), ..Filter::default() }).await;
        assert_eq!(a.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(a[1].kind, EventKind::Stopped);
        let recent = store.events(Filter { since: 1, limit: 1, ..Filter::default() }).await;
        assert_eq!(recent.iter().map(|e| e.id).collect::<Vec<_>>(), vec![3]);
        drop(store);

        let reopened = Store::open(dir.path()).unwrap();
        reopened.emit(None, EventKind::DaemonStopping { reason: "test".into() });
        let all = reopened.events(Filter::default()).await;
        assert_eq!(
            all.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![1, 2, 3, 4],
            "history survives, ids keep growing"
        );
    }

    #[tokio::test]
    async fn desired_state_and_processes_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.set_desired("a", Desired::Running);
        store.set_desired("b", Desired::Running);
        store.set_desired("b", Desired::Stopped);
        store.set_desired("c", Desired::GaveUp("crash loop".into()));
        let desired = store.desired().await;
        assert_eq!(desired["a"], Desired::Running);
        assert_eq!(desired["b"], Desired::Stopped);
        assert_eq!(desired["c"], Desired::GaveUp("crash loop".into()));
        let p = RecordedProcess {
            service: "a".into(),
            group: GroupRecord { pgid: 42, start_ticks: 7, boot_id: "b".into(), daemon_pid: 9, daemon_start_ticks: 11 },
        };
        store.record_process(p.clone());
        assert_eq!(store.processes().await, vec![p]);
        store.forget_process("a");
        assert!(store.processes().await.is_empty());
    }
}
