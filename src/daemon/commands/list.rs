//! `GET /services`, `nanny ls`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::daemon::Daemon;
use crate::daemon::views::{ServiceList, ServiceSummary};

/// Counts the changes to what the list shows: a service's published state, the set of
/// services, a usage sample. Process-wide, so another daemon's change (in tests) costs a
/// rebuild too many, never a stale answer.
static CHANGES: AtomicU64 = AtomicU64::new(0);

/// Something the list shows may have changed.
pub fn changed() {
    CHANGES.fetch_add(1, Ordering::AcqRel);
}

/// The list as JSON, kept while nothing it shows changes: building and serializing a
/// thousand services takes about a millisecond, a kept answer nothing.
#[derive(Default)]
pub struct Kept(Mutex<Option<KeptList>>);

struct KeptList {
    changes: u64,
    gpu_holder: Option<String>,
    json: Bytes,
}

/// The list as JSON: the kept one, or a new one (kept for the next reader).
pub fn json(d: &Daemon) -> Bytes {
    // Read before the list is built: a change while it is built makes the next reader rebuild.
    let (changes, gpu_holder) = (CHANGES.load(Ordering::Acquire), d.arbiter.holder());
    let mut kept = d.kept_list.0.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(k) = kept.as_ref().filter(|k| k.changes == changes && k.gpu_holder == gpu_holder) {
        // Still a reader of CPU and memory: sampling goes on while someone reads.
        drop(d.usage.read());
        return k.json.clone();
    }
    let json = Bytes::from(serde_json::to_vec(&run(d)).unwrap_or_default());
    *kept = Some(KeptList { changes, gpu_holder, json: json.clone() });
    json
}

pub fn run(d: &Daemon) -> ServiceList {
    let registry = d.registry.snapshot();
    let usage = d.usage.read();
    // Each snapshot is read in place (not cloned): a thousand services answer in one pass.
    let services: Vec<ServiceSummary> = registry
        .services
        .iter()
        .map(|(name, h)| ServiceSummary::of(&h.status.borrow(), usage.get(name).copied()))
        .collect();
    drop(usage);
    ServiceList {
        total: services.len(),
        services,
        gpu_service_running: d.arbiter.holder(),
        invalid: registry.invalid.clone(),
    }
}
