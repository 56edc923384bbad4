//! The state that survives the daemon, in SQLite (`STATE_DIR/nanny.db`):
//! the event history, which services are meant to be running, and the
//! process groups the daemon has spawned (so a daemon started after a crash
//! can clean up what the old one left).
//!
//! One thread owns the connection and serves requests in order, so an
//! event is written before it is published and ids are strictly increasing.
//! The database uses WAL with `synchronous=NORMAL`: a write survives the
//! daemon being killed, which is the failure it is there for.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, params};
use tokio::sync::{broadcast, mpsc, oneshot};

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

enum Request {
    Append { service: Option<String>, kind: EventKind },
    Query { filter: Filter, reply: oneshot::Sender<Vec<Event>> },
    SetDesired { service: String, desired: Desired },
    Desired { reply: oneshot::Sender<BTreeMap<String, Desired>> },
    RecordProcess(RecordedProcess),
    ForgetProcess { service: String },
    Processes { reply: oneshot::Sender<Vec<RecordedProcess>> },
    Flush { reply: oneshot::Sender<()> },
}

/// The handle every part of the daemon uses. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::UnboundedSender<Request>,
    live: broadcast::Sender<Event>,
}

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = NORMAL;
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
    /// Open (or create) the database in `state_dir` and start its thread.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
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
        let (tx, rx) = mpsc::unbounded_channel();
        let live = broadcast::channel(1024).0;
        let owner = Owner { conn, live: live.clone() };
        std::thread::Builder::new()
            .name("nanny-store".into())
            .spawn(move || owner.run(rx))
            .expect("the store thread starts");
        Ok(Store { tx, live })
    }

    /// Record an event; it is persisted, logged, then published.
    pub fn emit(&self, service: Option<&str>, kind: EventKind) {
        let _ = self.tx.send(Request::Append { service: service.map(str::to_string), kind });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    pub async fn events(&self, filter: Filter) -> Vec<Event> {
        self.ask(|reply| Request::Query { filter, reply }).await.unwrap_or_default()
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

    /// Resolves once everything sent before it is written.
    pub async fn flush(&self) {
        let _ = self.ask(|reply| Request::Flush { reply }).await;
    }

    async fn ask<T>(&self, request: impl FnOnce(oneshot::Sender<T>) -> Request) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(request(reply)).ok()?;
        rx.await.ok()
    }
}

struct Owner {
    conn: Connection,
    live: broadcast::Sender<Event>,
}

impl Owner {
    fn run(self, mut rx: mpsc::UnboundedReceiver<Request>) {
        while let Some(request) = rx.blocking_recv() {
            if let Err(e) = self.handle(request) {
                tracing::error!("state database: {e}");
            }
        }
    }

    fn handle(&self, request: Request) -> rusqlite::Result<()> {
        match request {
            Request::Append { service, kind } => self.append(service, kind)?,
            Request::Query { filter, reply } => {
                let _ = reply.send(self.query(&filter)?);
            }
            Request::SetDesired { service, desired } => {
                let (running, gave_up) = match desired {
                    Desired::Running => (true, None),
                    Desired::Stopped => (false, None),
                    Desired::GaveUp(reason) => (true, Some(reason)),
                };
                self.conn.execute(
                    "INSERT INTO desired (service, running, updated, gave_up) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (service) DO UPDATE SET running = ?2, updated = ?3, gave_up = ?4",
                    params![service, running, jiff::Timestamp::now().to_string(), gave_up],
                )?;
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
                self.conn.execute(
                    "INSERT OR REPLACE INTO processes (service, pgid, start_ticks, boot_id, daemon_pid, daemon_start_ticks)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        p.service,
                        p.group.pgid,
                        p.group.start_ticks as i64,
                        p.group.boot_id,
                        p.group.daemon_pid,
                        p.group.daemon_start_ticks as i64
                    ],
                )?;
            }
            Request::ForgetProcess { service } => {
                self.conn.execute("DELETE FROM processes WHERE service = ?1", params![service])?;
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
            Request::Flush { reply } => {
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    fn append(&self, service: Option<String>, kind: EventKind) -> rusqlite::Result<()> {
        let ts = jiff::Timestamp::now();
        let message = kind.describe();
        let kind_name = kind.name();
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO events (ts, service, kind, body) VALUES (?1, ?2, ?3, '')",
            params![ts.to_string(), service, kind_name],
        )?;
        let id = tx.last_insert_rowid() as u64;
        let event = Event { id, ts, service, kind, message };
        let body = serde_json::to_string(&event).unwrap_or_default();
        tx.execute("UPDATE events SET body = ?1 WHERE id = ?2", params![body, id as i64])?;
        tx.commit()?;
        match &event.service {
            Some(s) => tracing::info!(event = event.id, service = %s, "{}", event.message),
            None => tracing::info!(event = event.id, "{}", event.message),
        }
        let _ = self.live.send(event);
        Ok(())
    }

    fn query(&self, filter: &Filter) -> rusqlite::Result<Vec<Event>> {
        let limit = if filter.limit == 0 { i64::MAX } else { filter.limit as i64 };
        // The newest `limit` matching events, returned oldest first.
        let mut stmt = self.conn.prepare(
            "SELECT body FROM (
                 SELECT id, body FROM events WHERE id > ?1 AND (?2 IS NULL OR service = ?2)
                 ORDER BY id DESC LIMIT ?3
             ) ORDER BY id",
        )?;
        let bodies: Vec<String> = stmt
            .query_map(params![filter.since as i64, filter.service, limit], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(bodies.iter().filter_map(|b| serde_json::from_str(b).ok()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
