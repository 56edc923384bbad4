//! The pure GPU planner of the `vram` policy: given the GPUs, the services
//! that hold them and a request, where the request goes and whom it would
//! have to stop, or why it cannot go anywhere. No I/O, no clock: the
//! [`super::Arbiter`] feeds it and applies its answer, one at a time.
//!
//! Rules (issue #18):
//! - a holder counts for `max(declared, measured)` on each GPU it holds;
//!   memory used by processes not ours counts as used;
//! - free = min(reported free, total − foreign − Σ holders) − headroom;
//! - a request needs `vram` bytes free on each of its `gpus` GPUs;
//! - among GPUs where it fits as things are, the tightest fit wins;
//! - otherwise the fewest, lowest-priority, least-recently-started holders
//!   are stopped, never a pinned one and never one of higher priority.

use std::fmt;

/// One binary gibibyte: `vram_gb` and `--gpu 0:24GiB` count in these.
pub const GIB: u64 = 1 << 30;

/// How many holders of one GPU the planner considers stopping (it tries
/// every subset of them, smallest first).
const MAX_CANDIDATES: usize = 12;

/// One GPU as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub index: u32,
    pub total: u64,
    /// Free memory as the driver reports it (NVML); `None` for a declared GPU.
    pub reported_free: Option<u64>,
    /// Used by processes that are not our services' (NVML).
    pub foreign: u64,
}

/// A service that holds GPUs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub service: String,
    pub gpus: Vec<u32>,
    /// Declared (`vram_gb`), per GPU.
    pub vram: u64,
    /// Measured use per GPU (NVML), once known.
    pub measured: Option<u64>,
    pub priority: i32,
    pub pinned: bool,
    /// When it started, as an increasing number: lower is longer ago.
    pub started: u64,
}

impl Holder {
    /// What it counts for on each of its GPUs.
    pub fn counted(&self) -> u64 {
        self.vram.max(self.measured.unwrap_or(0))
    }
}

/// What a start asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub service: String,
    /// Needed on each GPU.
    pub vram: u64,
    pub gpus: usize,
    pub priority: i32,
}

/// A holder the request would have to stop, and what that frees per GPU.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Eviction {
    pub service: String,
    pub frees_bytes: u64,
}

/// Where the request goes, and whom it must stop first (none: it fits now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub gpus: Vec<u32>,
    pub evict: Vec<Eviction>,
}

/// Why a request fits nowhere, even after stopping every holder it may stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// One sentence per GPU.
    pub reasons: Vec<String>,
}

/// `12.5 GiB`.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB as f64)
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reasons.join("; "))
    }
}

/// What the request could do on one GPU.
struct Option_ {
    index: u32,
    evict: Vec<usize>,
    /// Free after placing it there (the tightest fit has the least).
    left: u64,
    /// The highest priority among those stopped.
    worst: i32,
}

/// Plan `request` on `gpus` held by `holders` (the requester is not among
/// them), keeping `headroom` bytes free on every GPU.
pub fn plan(gpus: &[Gpu], holders: &[Holder], request: &Request, headroom: u64) -> Result<Plan, Blocked> {
    let wanted = request.gpus.max(1);
    if gpus.len() < wanted {
        let have = gpus.len();
        return Err(Blocked { reasons: vec![format!("it needs {wanted} GPUs and the daemon has {have}")] });
    }
    let mut options = Vec::new();
    let mut reasons = Vec::new();
    for gpu in gpus {
        match on_gpu(gpu, holders, request, headroom) {
            Ok(option) => options.push(option),
            Err(reason) => reasons.push(reason),
        }
    }
    if options.len() < wanted {
        return Err(Blocked { reasons });
    }
    options.sort_by_key(|o| (o.evict.len(), o.worst, o.left, o.index));
    let chosen = &options[..wanted];
    let mut evict: Vec<Eviction> = Vec::new();
    for i in chosen.iter().flat_map(|o| &o.evict) {
        let h = &holders[*i];
        if !evict.iter().any(|e| e.service == h.service) {
            evict.push(Eviction { service: h.service.clone(), frees_bytes: h.counted() });
        }
    }
    let mut placed: Vec<u32> = chosen.iter().map(|o| o.index).collect();
    placed.sort_unstable();
    Ok(Plan { gpus: placed, evict })
}

/// Free bytes on `gpu` if the holders at `gone` (indices into `holders`) had stopped.
pub fn free(gpu: &Gpu, holders: &[Holder], gone: &[usize], headroom: u64) -> u64 {
    let on = |h: &Holder| h.gpus.contains(&gpu.index);
    let staying: u64 =
        holders.iter().enumerate().filter(|(i, h)| on(h) && !gone.contains(i)).map(|(_, h)| h.counted()).sum();
    let counted = gpu.total.saturating_sub(gpu.foreign).saturating_sub(staying);
    let reported = gpu.reported_free.map_or(u64::MAX, |free| {
        // What the stopped ones really used comes back too.
        free + gone.iter().filter(|i| on(&holders[**i])).map(|i| holders[*i].measured.unwrap_or(0)).sum::<u64>()
    });
    counted.min(reported).saturating_sub(headroom)
}

fn on_gpu(gpu: &Gpu, holders: &[Holder], request: &Request, headroom: u64) -> Result<Option_, String> {
    let need = request.vram;
    let here: Vec<usize> = (0..holders.len()).filter(|i| holders[*i].gpus.contains(&gpu.index)).collect();
    let mut candidates: Vec<usize> =
        here.iter().copied().filter(|i| !holders[*i].pinned && holders[*i].priority <= request.priority).collect();
    candidates.sort_by_key(|i| (holders[*i].priority, holders[*i].started));
    candidates.truncate(MAX_CANDIDATES);
    for size in 0..=candidates.len() {
        // Subsets in order: the lowest-priority, least recently started first.
        let mut best: Option<Option_> = None;
        for subset in subsets(&candidates, size) {
            let free = free(gpu, holders, &subset, headroom);
            if free >= need {
                let worst = subset.iter().map(|i| holders[*i].priority).max().unwrap_or(i32::MIN);
                let option = Option_ { index: gpu.index, left: free - need, worst, evict: subset };
                best = Some(option);
                break;
            }
        }
        if let Some(option) = best {
            return Ok(option);
        }
    }
    // Not even with every holder it may stop gone: say what stands in the way.
    let mut stays: Vec<String> = here
        .iter()
        .filter(|i| !candidates.contains(i))
        .map(|i| {
            let h = &holders[*i];
            match h.pinned {
                true => format!("'{}' is pinned ({})", h.service, gib(h.counted())),
                false => format!("'{}' has a higher priority ({} > {})", h.service, h.priority, request.priority),
            }
        })
        .collect();
    if gpu.foreign > 0 {
        stays.push(format!("other processes use {}", gib(gpu.foreign)));
    }
    let total = gib(gpu.total);
    let mut reason = format!("GPU {} ({total}, {} headroom) cannot give it {}", gpu.index, gib(headroom), gib(need));
    if !stays.is_empty() {
        reason.push_str(&format!(": {}", stays.join(", ")));
    }
    Err(reason)
}

/// Every `size`-element subset of `items`, in lexicographic order.
fn subsets(items: &[usize], size: usize) -> Vec<Vec<usize>> {
    fn go(items: &[usize], size: usize, start: usize, current: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if current.len() == size {
            return out.push(current.clone());
        }
        for i in start..items.len() {
            if items.len() - i < size - current.len() {
                return;
            }
            current.push(items[i]);
            go(items, size, i + 1, current, out);
            current.pop();
        }
    }
    let mut out = Vec::new();
    go(items, size, 0, &mut Vec::new(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    //! The planner's decisions as a table, one case per row: `plan_table.txt`.
    use super::*;

    /// A GPU: `0:24` (declared, 24 GiB), `1:80/free=60/foreign=10` (NVML).
    fn gpu(text: &str) -> Gpu {
        let (index, rest) = text.split_once(':').unwrap();
        let mut parts = rest.split('/');
        let mut g =
            Gpu { index: index.parse().unwrap(), total: gb(parts.next().unwrap()), reported_free: None, foreign: 0 };
        for part in parts {
            match part.split_once('=').unwrap() {
                ("free", v) => g.reported_free = Some(gb(v)),
                ("foreign", v) => g.foreign = gb(v),
                other => panic!("{other:?}"),
            }
        }
        g
    }

    fn gb(text: &str) -> u64 {
        (text.parse::<f64>().unwrap() * GIB as f64) as u64
    }

    /// A holder: `a@0,1=8` (8 GiB on GPUs 0 and 1), with `/m=10` measured,
    /// `/p=5` priority, `/pin` pinned; its position is its start order.
    fn holder(text: &str, started: u64) -> Holder {
        let mut parts = text.split('/');
        let head = parts.next().unwrap();
        let (service, rest) = head.split_once('@').unwrap();
        let (gpus, vram) = rest.split_once('=').unwrap();
        let mut h = Holder {
            service: service.into(),
            gpus: gpus.split(',').map(|g| g.parse().unwrap()).collect(),
            vram: gb(vram),
            measured: None,
            priority: 0,
            pinned: false,
            started,
        };
        for part in parts {
            match part.split_once('=') {
                Some(("m", v)) => h.measured = Some(gb(v)),
                Some(("p", v)) => h.priority = v.parse().unwrap(),
                None if part == "pin" => h.pinned = true,
                other => panic!("{other:?}"),
            }
        }
        h
    }

    /// `new=20x2/p=1` → 20 GiB on each of 2 GPUs, priority 1.
    fn request(text: &str) -> Request {
        let mut parts = text.split('/');
        let (service, rest) = parts.next().unwrap().split_once('=').unwrap();
        let (vram, gpus) = rest.split_once('x').unwrap_or((rest, "1"));
        let mut r = Request { service: service.into(), vram: gb(vram), gpus: gpus.parse().unwrap(), priority: 0 };
        for part in parts {
            match part.split_once('=') {
                Some(("p", v)) => r.priority = v.parse().unwrap(),
                other => panic!("{other:?}"),
            }
        }
        r
    }

    fn outcome(result: Result<Plan, Blocked>) -> String {
        match result {
            Ok(plan) => {
                let gpus: Vec<String> = plan.gpus.iter().map(u32::to_string).collect();
                let evict: Vec<String> =
                    plan.evict.iter().map(|e| format!("{}({})", e.service, e.frees_bytes / GIB)).collect();
                match evict.is_empty() {
                    true => format!("gpu {}", gpus.join(",")),
                    false => format!("gpu {} stop {}", gpus.join(","), evict.join(",")),
                }
            }
            Err(blocked) => format!("refused: {blocked}"),
        }
    }

    /// Each row: `case | gpus | holders | request | headroom GiB | expected`.
    #[test]
    fn the_planner_decides_as_the_table_says() {
        let table = include_str!("plan_table.txt");
        let mut failures = Vec::new();
        for line in table.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
            let cols: Vec<&str> = line.split('|').map(str::trim).collect();
            let [case, gpus, holders, req, headroom, expected] = cols[..] else { panic!("bad row: {line}") };
            let gpus: Vec<Gpu> = gpus.split_whitespace().map(gpu).collect();
            let holders: Vec<Holder> = holders
                .split_whitespace()
                .filter(|h| *h != "-")
                .enumerate()
                .map(|(i, h)| holder(h, i as u64))
                .collect();
            let got = outcome(plan(&gpus, &holders, &request(req), gb(headroom)));
            if got != expected {
                failures.push(format!("{case}: expected `{expected}`, got `{got}`"));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn subsets_come_smallest_first_in_order() {
        assert_eq!(subsets(&[1, 2, 3], 2), vec![vec![1, 2], vec![1, 3], vec![2, 3]]);
        assert_eq!(subsets(&[1, 2], 0), vec![Vec::<usize>::new()]);
        assert!(subsets(&[1], 2).is_empty());
    }
}
