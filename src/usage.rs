//! What each running service costs the machine: CPU % and resident memory,
//! sampled every [`SAMPLE_EVERY`] for all services at once (one pass over
//! `/proc` for native process groups, one stats call per container), never
//! per request. Readers get the last sample from [`Table`].
//!
//! Sampling runs only while someone reads: [`IDLE_AFTER`] without a reader
//! and it stops (the table empties rather than go stale), so a daemon nobody
//! asks costs no CPU however many services it runs; the next reader wakes it
//! (and sees readings from the sample after).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::daemon::Registry;
use crate::runtime::{Parts, Runtime};

/// How often services are measured.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How long sampling goes on after the last reader.
pub const IDLE_AFTER: Duration = Duration::from_secs(60);

/// One reading of an instance, as the runtime measures it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reading {
    /// CPU time used since the instance started (all its processes).
    pub cpu: Duration,
    /// Resident memory now.
    pub memory_bytes: u64,
}

/// A service's resource use, as shown by `status` and `ls`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// Over the last interval; 100 is one core. `None` until two readings exist.
    pub cpu_percent: Option<f64>,
    /// CPU time the instance has used so far.
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
}

/// The last usage of every measured service. Cheap to clone.
#[derive(Clone, Default)]
pub struct Table {
    inner: Arc<Mutex<HashMap<String, Usage>>>,
    /// When a reader last asked; `None` before the first.
    read_at: Arc<Mutex<Option<Instant>>>,
    /// Wakes the sampler when a reader comes while it rests.
    wake: Arc<tokio::sync::Notify>,
}

impl Table {
    pub fn get(&self, service: &str) -> Option<Usage> {
        self.read().get(service).copied()
    }

    /// Every service's usage, for a reader of them all (hold it briefly).
    pub fn read(&self) -> std::sync::MutexGuard<'_, HashMap<String, Usage>> {
        let now = Instant::now();
        let previous = self.read_at.lock().unwrap_or_else(|p| p.into_inner()).replace(now);
        if previous.is_none_or(|at| now.duration_since(at) >= IDLE_AFTER) {
            self.wake.notify_one();
        }
        self.lock()
    }

    /// Whether a reader asked within [`IDLE_AFTER`].
    fn wanted(&self) -> bool {
        self.read_at.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|at| at.elapsed() < IDLE_AFTER)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Usage>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The previous reading of a service's instance, to turn CPU time into a rate.
struct Previous {
    parts: Parts,
    at: Instant,
    cpu: Duration,
}

/// CPU % between two readings of the same instance.
fn cpu_percent(previous: Option<&Previous>, parts: &Parts, at: Instant, cpu: Duration) -> Option<f64> {
    let p = previous.filter(|p| &p.parts == parts)?;
    let wall = at.checked_duration_since(p.at)?.as_secs_f64();
    let used = cpu.checked_sub(p.cpu)?.as_secs_f64();
    (wall > 0.0).then(|| (used / wall * 1000.0).round() / 10.0)
}

/// Measure every service with something running, every [`SAMPLE_EVERY`]
/// while someone reads, into `table`.
pub fn spawn(registry: Registry, runtime: Arc<dyn Runtime>, table: Table) {
    tokio::spawn(async move {
        let mut previous: HashMap<String, Previous> = HashMap::new();
        loop {
            if !table.wanted() {
                table.lock().clear();
                crate::daemon::list_changed();
                previous.clear();
                table.wake.notified().await;
            }
            let instances: Vec<(String, Parts)> = registry
                .snapshot()
                .services
                .iter()
                .map(|(name, handle)| (name.clone(), handle.snapshot()))
                .filter(|(_, snap)| snap.state.has_process())
                .map(|(name, snap)| (name, Parts { pid: snap.pid, containers: snap.containers }))
                .filter(|(_, parts)| parts.pid.is_some() || !parts.containers.is_empty())
                .collect();
            let readings = runtime.measure(instances.clone()).await;
            let at = Instant::now();
            let mut usage = HashMap::new();
            let mut next = HashMap::new();
            for (name, parts) in instances {
                let Some(reading) = readings.get(&name) else { continue };
                let cpu_percent = cpu_percent(previous.get(&name), &parts, at, reading.cpu);
                let cpu_seconds = reading.cpu.as_secs_f64();
                usage.insert(name.clone(), Usage { cpu_percent, cpu_seconds, memory_bytes: reading.memory_bytes });
                next.insert(name, Previous { parts, at, cpu: reading.cpu });
            }
            previous = next;
            *table.lock() = usage;
            crate::daemon::list_changed();
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_needs_two_readings_of_the_same_instance() {
        let t0 = Instant::now();
        let parts = Parts { pid: Some(7), containers: Vec::new() };
        let before = Previous { parts: parts.clone(), at: t0, cpu: Duration::from_millis(100) };
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(cpu_percent(None, &parts, t1, Duration::from_millis(600)), None);
        assert_eq!(cpu_percent(Some(&before), &parts, t1, Duration::from_millis(600)), Some(25.0));
        let other = Parts { pid: Some(8), containers: Vec::new() };
        assert_eq!(cpu_percent(Some(&before), &other, t1, Duration::from_secs(1)), None, "a new instance");
        assert_eq!(cpu_percent(Some(&before), &parts, t1, Duration::ZERO), None, "cpu time went back");
    }
}
