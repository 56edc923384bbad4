//! The daemon: the registry of services, and the one closed [`Command`] enum
//! every client request becomes. [`Daemon::execute`] is the single
//! exhaustive match; each command lives in its own file under `commands/`.
//! Commands run on their own task, so a client that disconnects never
//! leaves a start or stop half done.

mod commands;
mod registry;
pub mod views;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::error::Error;
use crate::events::{Event, EventKind, Filter};
use crate::gpu::Arbiter;
use crate::hooks::{Hooks, HooksFile};
use crate::logs::{Follower, LogLine};
use crate::manifest::Paths;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::service::{ServiceHandle, Shared};
use crate::store::{Desired, Retention, Store, StoreError};
use crate::usage;

pub use commands::events::EventFeed;
pub use registry::Registry;
use views::{
    DaemonHealth, HookTest, RediscoverReport, RemoveOutcome, ServiceDetail, ServiceList, StartOutcome, StatusView,
    StopOutcome,
};

/// Something `GET /services` shows may have changed (its kept answer is stale).
pub use commands::list::changed as list_changed;

pub type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// Everything a client can ask of the daemon.
pub enum Command {
    List(Reply<ServiceList>),
    /// The list as JSON, kept while it holds (see `commands::list::json`).
    ListJson(Reply<bytes::Bytes>),
    Show {
        name: String,
        reply: Reply<ServiceDetail>,
    },
    Status {
        name: String,
        reply: Reply<StatusView>,
    },
    Start {
        name: String,
        force: bool,
        /// Wait this long in the GPU queue for room rather than answer 409.
        wait: Option<std::time::Duration>,
        reply: Reply<StartOutcome>,
    },
    Gpus(Reply<views::GpusView>),
    Stop {
        name: String,
        reply: Reply<StopOutcome>,
    },
    Restart {
        name: String,
        force: bool,
        reply: Reply<StartOutcome>,
    },
    Logs {
        name: String,
        tail: usize,
        reply: Reply<Vec<LogLine>>,
    },
    FollowLogs {
        name: String,
        tail: usize,
        reply: Reply<(Vec<LogLine>, Follower)>,
    },
    Rediscover(Reply<RediscoverReport>),
    Health(Reply<DaemonHealth>),
    TestHook {
        name: String,
        reply: Reply<HookTest>,
    },
    Remove {
        name: String,
        reply: Reply<RemoveOutcome>,
    },
    Events {
        filter: Filter,
        reply: Reply<Vec<Event>>,
    },
    /// The oldest `filter.limit` events after `filter.since`: the next page forward.
    EventPage {
        filter: Filter,
        reply: Reply<Vec<Event>>,
    },
    SubscribeEvents {
        filter: Filter,
        reply: Reply<EventFeed>,
    },
}

/// Settings fixed for the life of the daemon.
#[derive(Debug, Clone)]
pub struct Config {
    pub services_dir: PathBuf,
    pub state_dir: PathBuf,
    /// The GPU policy, headroom, devices and declared GPUs.
    pub gpu: crate::gpu::Settings,
    /// Whether manifests may name paths outside their own directory.
    pub paths: Paths,
    /// The webhooks and command hooks of the config file.
    pub hooks: HooksFile,
    pub events: Retention,
}

#[derive(Clone)]
pub struct Daemon {
    pub config: Arc<Config>,
    pub registry: Registry,
    pub arbiter: Arc<Arbiter>,
    pub store: Store,
    pub runtime: Arc<dyn Runtime>,
    /// The last CPU and memory reading of each running service.
    pub usage: usage::Table,
    /// What happened since the daemon started, for `/metrics`.
    pub metrics: Metrics,
    /// Webhooks and command hooks, from the config file.
    pub hooks: Hooks,
    pub started: std::time::Instant,
    /// The last list answered, while it holds.
    pub kept_list: Arc<commands::list::Kept>,
}

impl Daemon {
    /// Open the state, clean up after a previous daemon that was killed,
    /// discover the services and start supervising them.
    pub async fn start(config: Config, runtime: Arc<dyn Runtime>) -> Result<Daemon, StoreError> {
        let store = Store::open_with(&config.state_dir, config.events)?;
        // Metrics and hooks see the events of this daemon's life: those after the history's last.
        let metrics = Metrics::default();
        let last = store.events(Filter { limit: 1, ..Filter::default() }).await.last().map_or(0, |e| e.id);
        let feed = EventFeed::new(store.clone(), Filter { since: last, ..Filter::default() }).await;
        store.emit(
            None,
            EventKind::DaemonStarted { version: env!("CARGO_PKG_VERSION").into(), pid: std::process::id() },
        );
        for leftover in store.processes().await {
            for pid in runtime.kill_leftovers(leftover.group.clone()) {
                store.emit(Some(&leftover.service), EventKind::OrphanKilled { pid });
            }
            store.forget_process(&leftover.service);
        }
        let arbiter = Arc::new(Arbiter::new(config.gpu.clone()));
        let shared = Shared {
            runtime: runtime.clone(),
            arbiter: arbiter.clone(),
            http: crate::health::client(),
            store: store.clone(),
            metrics: metrics.clone(),
            groups: Default::default(),
        };
        let groups = shared.groups.clone();
        let registry =
            Registry::start(config.services_dir.clone(), config.paths, config.state_dir.join("logs"), shared).await;
        let usage = usage::Table::default();
        usage::spawn(registry.clone(), runtime.clone(), usage.clone());
        let started = std::time::Instant::now();
        let hooks = Hooks::default();
        let config = Arc::new(config);
        let kept_list = Arc::default();
        let mut d = Daemon { config, registry, arbiter, store, runtime, usage, metrics, hooks, started, kept_list };
        d.hooks = Hooks::start(d.config.hooks.clone(), &d);
        d.follow_events(feed);
        if d.arbiter.source() == crate::gpu::inventory::Source::Nvml {
            d.watch_gpus(groups);
        }
        Ok(d)
    }

    /// Count every event and hand it to the hooks, from one feed of the store
    /// (which catches up from the database if it falls behind, so none is missed).
    fn follow_events(&self, mut feed: EventFeed) {
        let d = self.clone();
        tokio::spawn(async move {
            while let Some(event) = feed.next().await {
                d.metrics.event(&event);
                d.hooks.dispatch(&d, &event);
            }
        });
    }

    /// Read the GPUs every second (NVML): what our services use, which
    /// processes are not ours, and who uses more than declared.
    fn watch_gpus(&self, groups: crate::service::Groups) {
        let d = self.clone();
        tokio::spawn(async move {
            loop {
                let arbiter = d.arbiter.clone();
                let Ok(readings) = tokio::task::spawn_blocking(move || arbiter.read_inventory()).await else { return };
                // A native service's process group, else a Compose service's container.
                let owner = |pid: u32| {
                    let native = crate::runtime::group_of(pid)
                        .and_then(|group| groups.lock().unwrap_or_else(|p| p.into_inner()).get(&group).cloned());
                    native.or_else(|| d.runtime.container_owner(pid))
                };
                for (service, declared, measured) in d.arbiter.refresh(readings, owner) {
                    let kind = EventKind::GpuOverUse { declared_bytes: declared, measured_bytes: measured };
                    d.store.emit(Some(&service), kind);
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }

    /// Start what should be running: `autostart` services, and those that
    /// were running when the previous daemon ended. Runs in the background.
    pub fn restore(&self) {
        let d = self.clone();
        tokio::spawn(async move { commands::start::restore(&d).await });
    }

    /// Run `command` on its own task; its reply arrives on the channel inside it.
    pub fn execute(&self, command: Command) {
        let d = self.clone();
        tokio::spawn(async move {
            match command {
                Command::List(reply) => send(reply, Ok(commands::list::run(&d))),
                Command::ListJson(reply) => send(reply, Ok(commands::list::json(&d))),
                Command::Show { name, reply } => send(reply, commands::show::run(&d, &name)),
                Command::Status { name, reply } => send(reply, commands::status::run(&d, &name)),
                Command::Start { name, force, wait, mut reply } => {
                    // A waiting start leaves the queue when its client goes away.
                    let result = commands::start::run(&d, &name, force, wait, reply.closed()).await;
                    send(reply, result)
                }
                Command::Gpus(reply) => send(reply, Ok(commands::gpus::run(&d))),
                Command::Stop { name, reply } => send(reply, commands::stop::run(&d, &name).await),
                Command::Restart { name, force, reply } => send(reply, commands::restart::run(&d, &name, force).await),
                Command::Logs { name, tail, reply } => send(reply, commands::logs::tail(&d, &name, tail)),
                Command::FollowLogs { name, tail, reply } => send(reply, commands::logs::follow(&d, &name, tail)),
                Command::Rediscover(reply) => send(reply, commands::rediscover::run(&d).await),
                Command::Health(reply) => send(reply, Ok(commands::health::run(&d).await)),
                Command::TestHook { name, reply } => send(reply, commands::hook::test(&d, &name).await),
                Command::Remove { name, reply } => send(reply, commands::remove::run(&d, &name).await),
                Command::Events { filter, reply } => send(reply, commands::events::history(&d, filter).await),
                Command::EventPage { filter, reply } => send(reply, commands::events::page(&d, filter).await),
                Command::SubscribeEvents { filter, reply } => {
                    send(reply, commands::events::subscribe(&d, filter).await)
                }
            }
        });
    }

    /// Ask the daemon something and wait for the answer.
    pub async fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, Error> {
        let (reply, rx) = oneshot::channel();
        self.execute(command(reply));
        rx.await.unwrap_or(Err(Error::ShuttingDown))
    }

    /// The service called `name`; when there is none, whether an invalid
    /// manifest is meant to be it (by its directory, or its `name:` line).
    pub fn service(&self, name: &str) -> Result<ServiceHandle, Error> {
        let registry = self.registry.snapshot();
        if let Some(service) = registry.services.get(name) {
            return Ok(service.clone());
        }
        let invalid = registry.invalid.iter().find(|i| {
            let dir = i.path.parent().and_then(|d| d.file_name()).and_then(|d| d.to_str());
            dir == Some(name) || written_name(&i.path).as_deref() == Some(name)
        });
        Err(match invalid {
            Some(i) => Error::InvalidManifest {
                name: name.to_string(),
                path: i.path.display().to_string(),
                errors: i.errors.clone(),
            },
            None => Error::NotFound(name.to_string()),
        })
    }

    /// Stop every service, dependents before their dependencies, and end
    /// supervision (daemon shutdown). With `forget`, nothing is restored at
    /// the next start but `autostart` services.
    pub async fn shutdown(&self, reason: &str, forget: bool) {
        self.store.emit(None, EventKind::DaemonStopping { reason: reason.to_string() });
        if forget {
            for name in self.registry.snapshot().services.keys() {
                self.store.set_desired(name, Desired::Stopped);
            }
        }
        self.registry.shutdown().await;
        self.store.flush().await;
    }
}

/// The `name:` a manifest that does not parse may still say it has.
fn written_name(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let value = text.lines().find_map(|line| line.strip_prefix("name:"))?;
    let value = value.split(" #").next()?.trim().trim_matches(['"', '\'']);
    Some(value.to_string())
}

fn send<T>(reply: Reply<T>, result: Result<T, Error>) {
    let _ = reply.send(result);
}
