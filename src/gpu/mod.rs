//! GPU arbitration: the only owner of GPU claims.
//!
//! Two policies. `exclusive` (the default) is the seed's: at most one
//! `gpu_required` service holds the GPU ([`Claims`]). `vram` packs services
//! on the GPUs of the [`inventory`] by their memory, as the pure
//! [`plan::plan`] decides. [`Arbiter`] makes each decision atomically (a
//! short critical section, never held across an `.await`), so concurrent
//! start requests can never both be granted the same memory. It also keeps
//! the queue of starts that wait for room ([`Ticket`]).

pub mod inventory;
pub mod plan;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::manifest::Manifest;
use crate::runtime::{Devices, Placement};
use inventory::{Inventory, Reading, Source};
use plan::{Eviction, GIB};

/// Who holds the GPU under the `exclusive` policy. Pure data and decisions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Claims {
    holder: Option<String>,
}

/// Why a claim was refused: someone else holds the GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub holder: String,
}

impl Claims {
    /// Grant the GPU to `name` if it is free or already `name`'s.
    pub fn claim(&mut self, name: &str) -> Result<(), Held> {
        match &self.holder {
            Some(holder) if holder != name => Err(Held { holder: holder.clone() }),
            _ => {
                self.holder = Some(name.to_string());
                Ok(())
            }
        }
    }

    /// Give up `name`'s claim; a no-op for anyone else.
    pub fn release(&mut self, name: &str) {
        if self.holder.as_deref() == Some(name) {
            self.holder = None;
        }
    }

    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref()
    }
}

/// How GPU services share the GPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// One GPU service at a time (the seed's rule).
    #[default]
    Exclusive,
    /// As many as fit in the GPUs' memory (`vram_gb`, `gpus`).
    Vram,
}

/// The daemon's GPU settings.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub policy: Policy,
    /// Kept free on every GPU (`vram` policy).
    pub headroom: u64,
    /// Exclusive policy: the GPUs the holder gets (`NANNY_GPU_DEVICES`).
    pub devices: Devices,
    /// GPUs declared with `--gpu`.
    pub declared: Vec<inventory::Declared>,
}

/// What a GPU service asks for, from its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub service: String,
    /// Per GPU.
    pub vram: u64,
    pub gpus: usize,
    pub priority: i32,
    pub pinned: bool,
}

impl Ask {
    pub fn of(m: &Manifest) -> Ask {
        Ask {
            service: m.name.clone(),
            vram: (m.vram_gb * GIB as f64) as u64,
            gpus: m.gpus,
            priority: m.priority,
            pinned: m.pinned,
        }
    }
}

/// Why a `vram` claim was refused: whom it would have to stop, or what no
/// stop can change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// Needed on each GPU.
    pub need: u64,
    pub gpus: usize,
    /// Who would have to stop (and what each frees), fewest first.
    pub stop: Vec<Eviction>,
    /// Why it fits nowhere even so (empty when stopping `stop` is enough).
    pub blocked: Vec<String>,
}

/// A refused claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Busy {
    /// `exclusive`: this service holds the GPU.
    Held(Held),
    /// `vram`: no room.
    Full(Shortfall),
}

/// A service holding GPUs: what the planner weighs ([`plan::Holder`], whose `started`
/// orders the holders) and what `/gpus` shows besides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub plan: plan::Holder,
    pub since: jiff::Timestamp,
    /// It uses more than it declared, by a margin ([`over`]).
    pub over: bool,
}

/// A start waiting for room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub id: u64,
    pub ask: Ask,
    pub since: jiff::Timestamp,
    pub deadline: jiff::Timestamp,
}

/// Whether `measured` exceeds `declared` by more than the margin (a tenth, at least 512 MiB).
pub fn over(declared: u64, measured: u64) -> bool {
    measured > declared + (declared / 10).max(512 << 20)
}

#[derive(Debug, Default)]
struct State {
    claims: Claims,
    holders: BTreeMap<String, Holding>,
    gpus: Vec<Reading>,
    queue: Vec<Queued>,
    /// Per GPU: memory used by processes that are not our services' (NVML).
    foreign: BTreeMap<u32, u64>,
    next: u64,
    /// When a holder last let go on a GPU whose memory the driver reports.
    released: Option<Instant>,
}

/// Everything `/gpus` shows, read at one instant.
#[derive(Debug, Clone)]
pub struct Board {
    pub policy: Policy,
    pub source: Source,
    pub detail: String,
    pub headroom: u64,
    pub holder: Option<String>,
    pub gpus: Vec<(Reading, u64, u64)>,
    pub holders: Vec<(String, Holding)>,
    pub queue: Vec<Queued>,
}

/// After a GPU service stops, how long a start waits for the driver to show
/// its memory back.
pub const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// The daemon-wide arbiter shared by every service task.
pub struct Arbiter {
    state: Mutex<State>,
    settings: Settings,
    inventory: Inventory,
    /// The policy in force: `vram` needs GPUs to pack on.
    policy: Policy,
    detail: String,
    changes: watch::Sender<u64>,
}

impl Default for Arbiter {
    fn default() -> Arbiter {
        Arbiter::new(Settings::default())
    }
}

impl std::fmt::Debug for Arbiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arbiter").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl Arbiter {
    pub fn new(settings: Settings) -> Arbiter {
        let inventory = Inventory::open(settings.declared.clone());
        let gpus = inventory.read();
        let mut detail = inventory.detail.clone();
        let policy = match (settings.policy, gpus.is_empty()) {
            (Policy::Vram, true) => {
                detail.push_str("; the vram policy needs GPUs to pack on: using the exclusive policy");
                Policy::Exclusive
            }
            (policy, _) => policy,
        };
        let state = State { gpus, ..State::default() };
        Arbiter { state: Mutex::new(state), settings, inventory, policy, detail, changes: watch::Sender::new(0) }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn source(&self) -> Source {
        self.inventory.source
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// Grant `ask` its GPUs (or keep the ones it holds), or say why not.
    pub fn claim(&self, ask: &Ask) -> Result<Placement, Busy> {
        let mut state = self.lock();
        if self.policy == Policy::Exclusive {
            state.claims.claim(&ask.service).map_err(Busy::Held)?;
            if !state.holders.contains_key(&ask.service) {
                let gpus = state.gpus.iter().map(|g| g.index).collect();
                self.hold(&mut state, ask, gpus);
            }
            return Ok(Placement { devices: self.settings.devices.clone() });
        }
        if let Some(holding) = state.holders.get(&ask.service) {
            return Ok(self.placement(&state, &holding.plan.gpus));
        }
        let gpus = self.planned_gpus(&state);
        let holders = planned_holders(&state);
        let request =
            plan::Request { service: ask.service.clone(), vram: ask.vram, gpus: ask.gpus, priority: ask.priority };
        let shortfall = |stop, blocked| Busy::Full(Shortfall { need: ask.vram, gpus: ask.gpus, stop, blocked });
        match plan::plan(&gpus, &holders, &request, self.settings.headroom) {
            Ok(plan) if plan.evict.is_empty() => {
                self.hold(&mut state, ask, plan.gpus.clone());
                Ok(self.placement(&state, &plan.gpus))
            }
            Ok(plan) => Err(shortfall(plan.evict, Vec::new())),
            Err(blocked) => Err(shortfall(Vec::new(), blocked.reasons)),
        }
    }

    /// Give up `name`'s claim; a no-op for anyone else.
    pub fn release(&self, name: &str) {
        let mut state = self.lock();
        state.claims.release(name);
        if let Some(holding) = state.holders.remove(name) {
            if self.inventory.source == Source::Nvml && holding.plan.measured.unwrap_or(0) > 0 {
                state.released = Some(Instant::now());
            }
            drop(state);
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// The `exclusive` holder (the seed's `gpu_service_running`).
    pub fn holder(&self) -> Option<String> {
        self.lock().claims.holder().map(str::to_string)
    }

    /// Whether `name` holds GPUs.
    pub fn holds(&self, name: &str) -> bool {
        self.lock().holders.contains_key(name)
    }

    /// Until when a refused start should wait for memory a stopped service
    /// had to show back in the driver's figures.
    pub fn releasing_until(&self) -> Option<Instant> {
        self.lock().released.map(|at| at + RELEASE_WAIT).filter(|until| *until > Instant::now())
    }

    /// A receiver that changes whenever a claim is released, the queue
    /// changes or new readings arrive.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Queue a start that waits for room; it leaves the queue when the ticket is dropped.
    pub fn enqueue(&self, ask: &Ask, deadline: jiff::Timestamp) -> Ticket<'_> {
        let mut state = self.lock();
        state.next += 1;
        let id = state.next;
        let entry = Queued { id, ask: ask.clone(), since: jiff::Timestamp::now(), deadline };
        // By priority (highest first), then first come.
        let at = state.queue.iter().position(|q| q.ask.priority < entry.ask.priority).unwrap_or(state.queue.len());
        state.queue.insert(at, entry);
        drop(state);
        self.changes.send_modify(|n| *n += 1);
        Ticket { arbiter: self, id }
    }

    /// Whether anyone waits.
    pub fn queue_is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }

    fn is_first(&self, id: u64) -> bool {
        self.lock().queue.first().is_some_and(|q| q.id == id)
    }

    /// New readings of the GPUs (NVML): what each of our services uses
    /// (`owner` names the service of a host pid). Returns the services
    /// found using more than they declared, newly.
    pub fn refresh(&self, readings: Vec<Reading>, owner: impl Fn(u32) -> Option<String>) -> Vec<(String, u64, u64)> {
        let mut state = self.lock();
        let mut used: BTreeMap<String, u64> = BTreeMap::new();
        state.foreign.clear();
        for gpu in &readings {
            let mut per_service: BTreeMap<String, u64> = BTreeMap::new();
            let mut ours = 0;
            for (pid, bytes) in &gpu.processes {
                if let Some(service) = owner(*pid) {
                    *per_service.entry(service).or_default() += bytes;
                    ours += bytes;
                }
            }
            // What the driver counts as used that is not our processes'.
            state.foreign.insert(gpu.index, gpu.used.unwrap_or(0).saturating_sub(ours));
            for (service, bytes) in per_service {
                let entry = used.entry(service).or_default();
                *entry = (*entry).max(bytes);
            }
        }
        let mut newly_over = Vec::new();
        for (name, holding) in state.holders.iter_mut() {
            let now = used.get(name).copied();
            let was = holding.over;
            let plan = &mut holding.plan;
            holding.over = was || now.is_some_and(|m| over(plan.vram, m));
            // Once over, it is packed by the most it was seen using, from then on.
            plan.measured = if holding.over { now.max(plan.measured) } else { now };
            if holding.over && !was {
                newly_over.push((name.clone(), plan.vram, plan.measured.unwrap_or(0)));
            }
        }
        state.gpus = readings;
        drop(state);
        self.changes.send_modify(|n| *n += 1);
        newly_over
    }

    /// Read the inventory again (blocking NVML calls: off the async threads).
    pub fn read_inventory(&self) -> Vec<Reading> {
        self.inventory.read()
    }

    /// Everything `/gpus` shows.
    pub fn board(&self) -> Board {
        let state = self.lock();
        let gpus = self.planned_gpus(&state);
        let holders = planned_holders(&state);
        let board_gpus = state
            .gpus
            .iter()
            .zip(&gpus)
            .map(|(r, g)| (r.clone(), plan::free(g, &holders, &[], self.settings.headroom), g.foreign))
            .collect();
        let mut holding: Vec<(String, Holding)> = state.holders.iter().map(|(n, h)| (n.clone(), h.clone())).collect();
        holding.sort_by_key(|(_, h)| h.plan.started);
        Board {
            policy: self.policy,
            source: self.inventory.source,
            detail: self.detail.clone(),
            headroom: self.settings.headroom,
            holder: state.claims.holder().map(str::to_string),
            gpus: board_gpus,
            holders: holding,
            queue: state.queue.clone(),
        }
    }

    fn hold(&self, state: &mut State, ask: &Ask, gpus: Vec<u32>) {
        state.next += 1;
        let plan = plan::Holder {
            service: ask.service.clone(),
            gpus,
            vram: ask.vram,
            measured: None,
            priority: ask.priority,
            pinned: ask.pinned,
            started: state.next,
        };
        let holding = Holding { plan, since: jiff::Timestamp::now(), over: false };
        state.holders.insert(ask.service.clone(), holding);
    }

    /// The GPUs by UUID where the driver gives one, else by index.
    fn placement(&self, state: &State, gpus: &[u32]) -> Placement {
        let ids = gpus
            .iter()
            .map(|i| {
                let uuid = state.gpus.iter().find(|g| g.index == *i).and_then(|g| g.uuid.clone());
                uuid.unwrap_or_else(|| i.to_string())
            })
            .collect();
        Placement { devices: Devices::Listed(ids) }
    }

    /// The GPUs as the planner sees them: memory used by processes that are
    /// not our services' is foreign.
    fn planned_gpus(&self, state: &State) -> Vec<plan::Gpu> {
        state
            .gpus
            .iter()
            .map(|r| plan::Gpu {
                index: r.index,
                total: r.total,
                reported_free: r.free,
                foreign: state.foreign.get(&r.index).copied().unwrap_or(0),
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn planned_holders(state: &State) -> Vec<plan::Holder> {
    state.holders.values().map(|h| h.plan.clone()).collect()
}

/// A start's place in the queue; dropping it (the start got in, gave up,
/// or its client went away) leaves the queue.
pub struct Ticket<'a> {
    arbiter: &'a Arbiter,
    id: u64,
}

impl Ticket<'_> {
    /// Whether this start is first in line.
    pub fn is_first(&self) -> bool {
        self.arbiter.is_first(self.id)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.arbiter.lock().queue.retain(|q| q.id != self.id);
        self.arbiter.changes.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let mut c = Claims::default();
        assert_eq!(c.claim("a"), Ok(()));
        assert_eq!(c.claim("a"), Ok(()), "re-claiming is idempotent");
        assert_eq!(c.claim("b"), Err(Held { holder: "a".into() }));
        c.release("b");
        assert_eq!(c.holder(), Some("a"), "only the holder can release");
        c.release("a");
        assert_eq!(c.holder(), None);
        assert_eq!(c.claim("b"), Ok(()));
    }

    fn ask(name: &str, gib: u64) -> Ask {
        Ask { service: name.into(), vram: gib * GIB, gpus: 1, priority: 0, pinned: false }
    }

    #[test]
    fn concurrent_claims_grant_exactly_one() {
        let arbiter = std::sync::Arc::new(Arbiter::default());
        let granted: Vec<bool> = (0..16)
            .map(|i| {
                let a = arbiter.clone();
                std::thread::spawn(move || a.claim(&ask(&format!("s{i}"), 1)).is_ok())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(granted.iter().filter(|g| **g).count(), 1);
    }

    fn vram_arbiter() -> Arbiter {
        let declared =
            vec![inventory::Declared { index: 0, total: 24 * GIB }, inventory::Declared { index: 1, total: 24 * GIB }];
        Arbiter::new(Settings { policy: Policy::Vram, headroom: GIB, declared, ..Settings::default() })
    }

    #[test]
    fn concurrent_vram_claims_never_overbook_a_gpu() {
        let arbiter = std::sync::Arc::new(vram_arbiter());
        // 16 × 10 GiB on 2 × 23 GiB usable: exactly four fit.
        let granted: Vec<Option<Placement>> = (0..16)
            .map(|i| {
                let a = arbiter.clone();
                std::thread::spawn(move || a.claim(&ask(&format!("s{i}"), 10)).ok())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let placed: Vec<Placement> = granted.into_iter().flatten().collect();
        assert_eq!(placed.len(), 4, "{placed:?}");
        for gpu in ["0", "1"] {
            let on = placed.iter().filter(|p| p.devices == Devices::Listed(vec![gpu.into()])).count();
            assert_eq!(on, 2, "two per GPU: {placed:?}");
        }
    }

    #[test]
    fn a_refusal_names_whom_to_stop_and_a_release_makes_room() {
        let arbiter = vram_arbiter();
        assert!(arbiter.claim(&ask("a", 20)).is_ok());
        assert!(arbiter.claim(&ask("b", 20)).is_ok());
        let Err(Busy::Full(short)) = arbiter.claim(&ask("c", 20)) else { panic!("c must not fit") };
        assert_eq!(
            short.stop,
            vec![Eviction { service: "a".into(), frees_bytes: 20 * GIB }],
            "the least recently started"
        );
        assert!(short.blocked.is_empty());
        let mut changes = arbiter.changes();
        changes.borrow_and_update();
        arbiter.release("a");
        assert!(changes.has_changed().unwrap(), "waiters hear of the release");
        assert_eq!(arbiter.claim(&ask("c", 20)), Ok(Placement { devices: Devices::Listed(vec!["0".into()]) }));
    }

    #[test]
    fn measured_use_over_the_declared_is_flagged_once_and_packed_by() {
        let arbiter = vram_arbiter();
        let Ok(placed) = arbiter.claim(&ask("a", 4)) else { panic!("a fits") };
        assert_eq!(placed.devices, Devices::Listed(vec!["0".into()]), "the tightest fit: GPU 0 first");
        let reading = |index: u32, processes: Vec<(u32, u64)>| {
            let used: u64 = processes.iter().map(|p| p.1).sum();
            Reading {
                index,
                uuid: Some(format!("GPU-{index}")),
                name: "test".into(),
                total: 24 * GIB,
                used: Some(used),
                free: Some(24 * GIB - used),
                processes,
            }
        };
        // Pid 10 is a's, pid 99 nobody's: 16 GiB for a (4 declared), 2 GiB foreign.
        let owner = |pid: u32| (pid == 10).then(|| "a".to_string());
        let readings = vec![reading(0, vec![(10, 16 * GIB), (99, 2 * GIB)]), reading(1, vec![])];
        assert_eq!(arbiter.refresh(readings.clone(), owner), vec![("a".to_string(), 4 * GIB, 16 * GIB)]);
        assert!(arbiter.refresh(readings, owner).is_empty(), "said once");
        let board = arbiter.board();
        assert!(board.holders[0].1.over);
        assert_eq!(board.gpus[0].2, 2 * GIB, "foreign use");
        assert_eq!(board.gpus[0].1, 24 * GIB - 16 * GIB - 2 * GIB - GIB, "free counts a at its measured use");
        // 6 GiB would fit beside a by its declared 4 GiB, not by its measured 16: GPU 1, by UUID.
        assert_eq!(arbiter.claim(&ask("b", 6)), Ok(Placement { devices: Devices::Listed(vec!["GPU-1".into()]) }));
        // Using less for a moment does not make it count for less; others' use is read anew.
        arbiter.refresh(vec![reading(0, vec![(10, GIB), (99, 3 * GIB)]), reading(1, vec![])], owner);
        let board = arbiter.board();
        assert_eq!(board.holders[0].1.plan.measured, Some(16 * GIB));
        assert_eq!(board.gpus[0].2, 3 * GIB);
    }

    #[test]
    fn the_queue_orders_by_priority_then_arrival_and_tickets_leave_it() {
        let arbiter = vram_arbiter();
        let deadline = jiff::Timestamp::now();
        let first = arbiter.enqueue(&ask("low", 1), deadline);
        let urgent = arbiter.enqueue(&Ask { priority: 5, ..ask("high", 1) }, deadline);
        let later = arbiter.enqueue(&ask("low2", 1), deadline);
        let order: Vec<String> = arbiter.board().queue.iter().map(|q| q.ask.service.clone()).collect();
        assert_eq!(order, ["high", "low", "low2"]);
        assert!(urgent.is_first() && !first.is_first());
        drop(urgent);
        assert!(first.is_first());
        drop(first);
        assert!(later.is_first());
        drop(later);
        assert!(arbiter.queue_is_empty());
    }
}
