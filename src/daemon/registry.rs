//! The registry: owns the set of discovered services. One task applies
//! rescans one at a time (spawning tasks for added services, handing new
//! manifests to changed ones, stopping removed ones); readers get an
//! immutable snapshot from a `watch` channel.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::deps;
use crate::discovery::{self, Catalog, Invalid};
use crate::events::EventKind;
use crate::logs::LogStore;
use crate::manifest::Paths;
use crate::service::{ServiceHandle, Shared};
use crate::store::Desired;

/// What readers see: the services and the manifests that could not be used.
#[derive(Clone, Default)]
pub struct Snapshot {
    pub services: BTreeMap<String, ServiceHandle>,
    pub invalid: Vec<Invalid>,
}

/// What one rescan changed.
#[derive(Debug, Default)]
pub struct Rescan {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Changed services, with whether a process was running at the time.
    pub changed: Vec<(String, bool)>,
}

enum Request {
    Rescan(oneshot::Sender<Rescan>),
    Shutdown(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Registry {
    tx: mpsc::Sender<Request>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
}

impl Registry {
    pub async fn start(services_dir: PathBuf, paths: Paths, logs_dir: PathBuf, shared: Shared) -> Registry {
        let (tx, rx) = mpsc::channel(16);
        let (publish, snapshot) = watch::channel(Arc::new(Snapshot::default()));
        let catalog = Catalog::default();
        let mut owner = Owner { services_dir, paths, logs_dir, shared, catalog, handles: BTreeMap::new(), publish };
        owner.rescan().await;
        tokio::spawn(owner.run(rx));
        Registry { tx, snapshot }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    pub async fn rescan(&self) -> Option<Rescan> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Rescan(reply)).await.ok()?;
        rx.await.ok()
    }

    /// Stop every service; afterwards the registry answers no more requests.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Request::Shutdown(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct Owner {
    services_dir: PathBuf,
    /// Whether manifests may name paths outside their directory.
    paths: Paths,
    logs_dir: PathBuf,
    shared: Shared,
    catalog: Catalog,
    handles: BTreeMap<String, ServiceHandle>,
    publish: watch::Sender<Arc<Snapshot>>,
}

impl Owner {
    async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(request) = rx.recv().await {
            match request {
                Request::Rescan(reply) => {
                    let _ = reply.send(self.rescan().await);
                }
                Request::Shutdown(reply) => {
                    // Dependents first: deepest in the dependency graph, in parallel per level.
                    let mut by_depth: BTreeMap<usize, Vec<&ServiceHandle>> = BTreeMap::new();
                    for (name, handle) in &self.handles {
                        by_depth.entry(deps::depth(&self.catalog.services, name)).or_default().push(handle);
                    }
                    for (_, level) in by_depth.into_iter().rev() {
                        futures_util::future::join_all(level.into_iter().map(ServiceHandle::shutdown)).await;
                    }
                    let _ = reply.send(());
                    return;
                }
            }
        }
    }

    async fn rescan(&mut self) -> Rescan {
        let (dir, paths) = (self.services_dir.clone(), self.paths);
        let mut catalog = tokio::task::spawn_blocking(move || discovery::scan(&dir, paths)).await.unwrap_or_default();
        // A service whose manifest is still there but now invalid (a typo, a
        // duplicate name, a broken dependency) keeps its previous manifest and
        // keeps running: only a manifest that is gone removes a service.
        for (name, previous) in &self.catalog.services {
            if !catalog.services.contains_key(name) && catalog.invalid.iter().any(|i| i.path == previous.manifest_path)
            {
                catalog.services.insert(name.clone(), previous.clone());
            }
        }
        let diff = discovery::diff(&self.catalog, &catalog);
        let mut report = Rescan { added: diff.added.clone(), removed: diff.removed.clone(), changed: Vec::new() };
        let store = &self.shared.store;
        for invalid in catalog.invalid.iter().filter(|i| !self.catalog.invalid.contains(i)) {
            store.emit(None, EventKind::Invalid { path: invalid.path.display().to_string(), errors: invalid.texts() });
        }
        for name in &diff.added {
            store.emit(Some(name), EventKind::Discovered);
            let logs = Arc::new(LogStore::new(self.logs_dir.join(format!("{name}.log"))));
            let handle = ServiceHandle::spawn(catalog.services[name].clone(), self.shared.clone(), logs);
            self.handles.insert(name.clone(), handle);
        }
        for name in &diff.changed {
            let handle = &self.handles[name];
            let running = handle.snapshot().state.has_process();
            handle.update(catalog.services[name].clone());
            store.emit(Some(name), EventKind::ManifestChanged { running });
            report.changed.push((name.clone(), running));
        }
        for name in &diff.removed {
            store.emit(Some(name), EventKind::Removed);
            store.set_desired(name, Desired::Stopped);
        }
        let removed: Vec<ServiceHandle> = diff.removed.iter().filter_map(|n| self.handles.remove(n)).collect();
        self.catalog = catalog;
        // Removed services vanish from the API at once, then are stopped.
        self.publish_snapshot();
        futures_util::future::join_all(removed.iter().map(ServiceHandle::shutdown)).await;
        report
    }

    fn publish_snapshot(&self) {
        self.publish
            .send_replace(Arc::new(Snapshot { services: self.handles.clone(), invalid: self.catalog.invalid.clone() }));
        crate::daemon::list_changed();
    }
}
