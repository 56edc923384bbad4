//! Chaos: one daemon with 19 native services (GPU services sharing one GPU lock file, a
//! dependency chain, health endpoints that hang, services that ignore SIGTERM, services with
//! grandchildren) while, all at once for `NANNY_CHAOS_SECS` (default 120 s):
//!
//! - a killer SIGKILLs random service processes and grandchildren;
//! - API workers send hundreds of concurrent starts, stops, restarts, forced GPU starts,
//!   rediscovers, reads, and malformed requests (bad JSON, a wrong type, unknown services, a
//!   huge body, a bad method, bad queries), each of which must get its 4xx;
//! - health endpoints are made to hang and recover;
//! - the daemon is SIGKILLed while one service starts and another stops, and restarted on the
//!   same state dir.
//!
//! Afterwards: every process that ever ran in a service's process group is gone once every
//! service is stopped (a /proc walk); no service ever ran twice at once (each holds an exclusive
//! `flock` on a lock file of its own; a second instance records a conflict), no two GPU services
//! ever held the GPU together (they also lock one shared GPU file: a conflict there is an
//! overbooking); the event history's ids strictly increase and the event stream, resumed with
//! `Last-Event-ID` across the daemon's restarts, has exactly the stored events; each restart
//! restores what was wanted (the service killed mid-start runs, the one killed mid-stop is
//! stopped and its processes gone); the service that only ever got malformed requests never
//! started. The figures (kills, requests, 4xx, 5xx, daemon restarts) are printed at the end.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::sync::RwLock;

/// Services the API workers and the killer act on.
const POOL: &[&str] = &[
    "cpu-0", "cpu-1", "cpu-2", "cpu-3", "term-0", "term-1", "hang-0", "hang-1", "gpu-0", "gpu-1", "gpu-2", "dep-base",
    "dep-mid", "dep-top",
];
const GPU: &[&str] = &["gpu-0", "gpu-1", "gpu-2"];
/// Driven only by the restart rounds (`keeper` is also killed at random: it comes back).
const KEEPER: &str = "keeper";
const IDLE: &str = "idle";
const SLOW: &str = "slow";
const STUBBORN: &str = "stubborn";
/// Gets only malformed requests: it must never start.
const SENTINEL: &str = "sentinel";

const POLICY: &str = "restart: always\nrestart_delay: 0.1\nrestart_delay_max: 0.5\nmax_restarts: 10000\n\
                      restart_window: 60\nhealth_interval: 0.5\nhealth_failures: 2\n";

fn all_services() -> Vec<&'static str> {
    let mut v = POOL.to_vec();
    v.extend([KEEPER, IDLE, SLOW, STUBBORN, SENTINEL]);
    v
}

/// Writes the services; every one locks `NAME.lock` and appends its pid to `NAME.starts`.
fn write_services(ws: &Workspace) {
    let file = |name: &str, ext: &str| ws.path(&format!("{name}.{ext}"));
    for name in all_services() {
        let mut svc = Svc::new(name)
            .health_timeout(10.0)
            .stop_timeout(2.0)
            .arg("--lock")
            .arg(file(name, "lock"))
            .arg("--starts")
            .arg(file(name, "starts"))
            .arg("--pidfile")
            .arg(file(name, "pid"))
            .extra(POLICY);
        let grandchild = ["cpu-0", "cpu-1", "cpu-2", "cpu-3", "term-0", "gpu-1", "dep-top", KEEPER, STUBBORN];
        if grandchild.contains(&name) {
            svc = svc.arg("--grandchild").arg(file(name, "gc"));
        }
        if name.starts_with("term-") || name == "gpu-2" {
            svc = svc.arg("--ignore-term").stop_timeout(1.0);
        }
        if name.starts_with("hang-") {
            svc = svc.arg("--hang-file").arg(file(name, "hang"));
        }
        if GPU.contains(&name) {
            svc = svc.gpu().arg("--lock").arg(ws.path("gpu.lock"));
        }
        match name {
            "dep-mid" => svc = svc.extra("depends_on: [dep-base]"),
            "dep-top" => svc = svc.extra("depends_on: [dep-mid]"),
            SLOW => svc = svc.arg("--health-after").arg("1.5"),
            STUBBORN => svc = svc.arg("--ignore-term").stop_timeout(3.0),
            _ => {}
        }
        ws.add(svc);
    }
}

#[derive(Default)]
struct Figures {
    kills: AtomicU64,
    requests: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
    malformed: AtomicU64,
    daemon_restarts: AtomicU64,
    /// Answers per HTTP status.
    by_status: Mutex<std::collections::BTreeMap<u16, u64>>,
}

struct Chaos {
    daemon: RwLock<Daemon>,
    ws: Workspace,
    state_dir: PathBuf,
    figures: Figures,
    /// What went wrong, in words; the test fails at the end if any.
    failures: Mutex<Vec<String>>,
    stop: AtomicBool,
    client: reqwest::Client,
}

impl Chaos {
    fn fail(&self, what: String) {
        eprintln!("chaos failure: {what}");
        self.failures.lock().unwrap().push(what);
    }

    /// Sends one request to the current daemon (which cannot be restarted meanwhile); counts it.
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Body>) -> Option<(u16, Value)> {
        let daemon = self.daemon.read().await;
        let mut rb = self.client.request(method.clone(), daemon.u(path));
        if let Some((bytes, content_type)) = body {
            rb = rb.header("content-type", content_type).body(bytes);
        }
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) => {
                self.fail(format!("{method} {path}: no answer from the daemon: {e:?}"));
                return None;
            }
        };
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        self.figures.requests.fetch_add(1, SeqCst);
        *self.figures.by_status.lock().unwrap().entry(code).or_default() += 1;
        match code {
            400..=499 => self.figures.client_errors.fetch_add(1, SeqCst),
            500..=599 => self.figures.server_errors.fetch_add(1, SeqCst),
            _ => 0,
        };
        Some((code, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    /// A request whose answer must be one of `allowed`.
    async fn expect(&self, method: reqwest::Method, path: &str, body: Option<Value>, allowed: &[u16]) {
        let body = body.map(|b| (b.to_string().into_bytes(), "application/json"));
        if let Some((code, v)) = self.send(method.clone(), path, body).await
            && !allowed.contains(&code)
        {
            self.fail(format!("{method} {path} -> {code} (expected one of {allowed:?}): {v}"));
        }
    }
}

/// A request body and its Content-Type.
type Body = (Vec<u8>, &'static str);

/// One malformed request and the 4xx it must get.
async fn malformed(chaos: &Chaos, rng: &mut fastrand::Rng) {
    use reqwest::Method;
    let sentinel_start = format!("/services/{SENTINEL}/start");
    let (method, path, body, want): (Method, String, Option<Body>, u16) = match rng.usize(0..8) {
        0 => (Method::POST, sentinel_start, Some((b"{\"force\": tru".to_vec(), "application/json")), 422),
        1 => (Method::POST, sentinel_start, Some((b"{\"force\": \"yes\"}".to_vec(), "application/json")), 422),
        2 => (Method::POST, format!("/services/no-such-{}/start", rng.u32(..)), None, 404),
        3 => (Method::POST, sentinel_start, Some((vec![b' '; 100 * 1024], "application/json")), 413),
        4 => (Method::DELETE, format!("/services/{SENTINEL}"), None, 405),
        5 => (Method::GET, "/events?limit=abc".into(), None, 400),
        6 => (Method::GET, format!("/services/{SENTINEL}/logs?tail=0"), None, 400),
        _ => (Method::POST, "/services/no-such/stop".into(), None, 404),
    };
    chaos.figures.malformed.fetch_add(1, SeqCst);
    if let Some((code, v)) = chaos.send(method.clone(), &path, body).await
        && code != want
    {
        chaos.fail(format!("malformed {method} {path} -> {code} (expected {want}): {v}"));
    }
}

/// Random API traffic until told to stop.
async fn api_worker(chaos: Arc<Chaos>, seed: u64) {
    use reqwest::Method;
    let mut rng = fastrand::Rng::with_seed(seed);
    // A start may fail (its process was killed: 500; its health hung: 504; a stop or the GPU
    // got in the way: 409); a stop may outlive SIGKILL's grace only in theory (504).
    let changes = [200, 409, 500, 504];
    while !chaos.stop.load(SeqCst) {
        let name = POOL[rng.usize(..POOL.len())];
        match rng.usize(0..100) {
            0..25 => chaos.expect(Method::POST, &format!("/services/{name}/start"), None, &changes).await,
            25..40 => chaos.expect(Method::POST, &format!("/services/{name}/stop"), None, &[200, 504]).await,
            40..48 => chaos.expect(Method::POST, &format!("/services/{name}/restart"), None, &changes).await,
            48..56 => {
                let gpu = GPU[rng.usize(..GPU.len())];
                chaos
                    .expect(Method::POST, &format!("/services/{gpu}/start"), Some(json!({"force": true})), &changes)
                    .await
            }
            56..60 => chaos.expect(Method::POST, "/rediscover", None, &[200]).await,
            60..68 => chaos.expect(Method::GET, &format!("/services/{name}/status"), None, &[200]).await,
            68..72 => chaos.expect(Method::GET, "/services", None, &[200]).await,
            72..75 => chaos.expect(Method::GET, "/events?limit=50", None, &[200]).await,
            _ => malformed(&chaos, &mut rng).await,
        }
    }
}

/// The pid in a pidfile, if that process still runs `what` (a pid may have been reused).
fn live_pid(path: &Path, what: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    (pid_alive(pid) && String::from_utf8_lossy(&cmdline).contains(what)).then_some(pid)
}

/// SIGKILLs a random service process or grandchild every 50-250 ms.
async fn killer(chaos: Arc<Chaos>, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let targets: Vec<&str> = POOL.iter().copied().chain([KEEPER]).collect();
    while !chaos.stop.load(SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.u64(50..250))).await;
        let name = targets[rng.usize(..targets.len())];
        let (file, what) = if rng.bool() { ("pid", "svc.py") } else { ("gc", "sleep") };
        if let Some(pid) = live_pid(&chaos.ws.path(&format!("{name}.{file}")), what)
            && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
        {
            chaos.figures.kills.fetch_add(1, SeqCst);
        }
    }
}

/// Makes the hang services' health endpoints hang for a while, then answer again.
async fn hanger(chaos: Arc<Chaos>) {
    let mut on = false;
    while !chaos.stop.load(SeqCst) {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        on = !on;
        for name in ["hang-0", "hang-1"] {
            let f = chaos.ws.path(&format!("{name}.hang"));
            if on { touch(&f) } else { remove(&f) }
        }
    }
    for name in ["hang-0", "hang-1"] {
        remove(&chaos.ws.path(&format!("{name}.hang")));
    }
}

/// Follows `/events/stream` across daemon restarts (resuming with `Last-Event-ID`), recording
/// every id, until `done`.
async fn follower(chaos: Arc<Chaos>, ids: Arc<Mutex<Vec<u64>>>, done: Arc<AtomicBool>) {
    while !done.load(SeqCst) {
        let last = ids.lock().unwrap().last().map(|i| i.to_string());
        let mut stream = {
            // Held while connecting, so the daemon is not restarted in between.
            let daemon = chaos.daemon.read().await;
            SseStream::connect(&daemon.u("/events/stream"), last.as_deref()).await
        };
        // A frame, or None after a quiet second or when the daemon went away: reconnect.
        while let Some(frame) = stream.next(Duration::from_secs(1)).await {
            if let Some(id) = frame.id {
                ids.lock().unwrap().push(id);
            }
        }
    }
}

/// Status of `name` from the current daemon (the caller holds the daemon).
async fn wait_state(daemon: &Daemon, name: &str, state: &str) -> Value {
    daemon.wait_state(name, state, Duration::from_secs(40)).await
}

/// One restart round, with the API workers held off: `keeper` wanted running and `idle`
/// stopped; `stubborn` (ignores SIGTERM) in the middle of its stop and `slow` in the middle of
/// its start when the daemon is SIGKILLed; a new daemon on the same state dir must bring every
/// one of them where it was wanted, and leave nothing of `stubborn`'s process group.
async fn restart_round(chaos: &Chaos) {
    let mut daemon = chaos.daemon.write().await;
    let (code, v) = daemon.start_svc(KEEPER).await;
    assert!([200, 500, 504].contains(&code), "start keeper -> {code} {v}");
    daemon.stop_ok(IDLE).await;
    daemon.stop_ok(SLOW).await;
    daemon.start_ok(STUBBORN).await;
    let stubborn_group = pid_of(&daemon.status(STUBBORN).await);

    let (client, stop_url, start_url) = (
        daemon.client.clone(),
        daemon.u(&format!("/services/{STUBBORN}/stop")),
        daemon.u(&format!("/services/{SLOW}/start")),
    );
    let stop = tokio::spawn({
        let client = client.clone();
        async move { client.post(stop_url).send().await.map(|r| r.status().as_u16()) }
    });
    wait_state(&daemon, STUBBORN, "stopping").await;
    let start = tokio::spawn(async move { client.post(start_url).send().await.map(|r| r.status().as_u16()) });
    wait_state(&daemon, SLOW, "starting").await;
    daemon.kill9();
    chaos.figures.daemon_restarts.fetch_add(1, SeqCst);
    for (what, call) in [("stop of stubborn", stop), ("start of slow", start)] {
        if let Ok(answer) = call.await.unwrap() {
            panic!("the {what} was answered ({answer}) by a daemon that was SIGKILLed before it could be");
        }
    }

    let services = chaos.ws.services();
    *daemon = tokio::task::block_in_place(|| Daemon::start_with(&services, &chaos.state_dir, &[], &[]));
    wait_state(&daemon, SLOW, "running").await;
    wait_state(&daemon, KEEPER, "running").await;
    wait_state(&daemon, STUBBORN, "stopped").await;
    assert_eq!(daemon.state_of(IDLE).await, "stopped", "idle was wanted stopped before the restart");
    let group = HashSet::from([stubborn_group]);
    wait_until(Duration::from_secs(20), "stubborn's process group (killed mid-stop) is gone", || {
        let left = group_members(&group);
        async move { left.is_empty() }
    })
    .await;
}

/// Every event id from the start: the stored history, paged oldest first.
async fn stored_ids(daemon: &Daemon) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        let since = out.last().copied().unwrap_or(0);
        let page = daemon.events(&format!("since={since}&forward=true&limit=10000")).await;
        if page.is_empty() {
            return out;
        }
        assert_increasing(&page);
        out.extend(page.iter().map(id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_leaves_no_orphan_no_duplicate_no_overbooking_and_a_complete_history() {
    let secs: u64 = std::env::var("NANNY_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let seed: u64 =
        std::env::var("NANNY_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    eprintln!("chaos: {secs} s, seed {seed} (NANNY_CHAOS_SECS, NANNY_CHAOS_SEED)");
    let begin = Instant::now();

    let ws = Workspace::new();
    write_services(&ws);
    let state_dir = ws.path("state");
    let daemon = Daemon::start_with(&ws.services(), &state_dir, &[], &[]);
    let listed = daemon.services().await;
    assert_eq!(listed["total"], all_services().len(), "every service is valid: {listed}");
    let chaos = Arc::new(Chaos {
        daemon: RwLock::new(daemon),
        ws,
        state_dir,
        figures: Figures::default(),
        failures: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        // The daemon closes a keep-alive connection left idle for its request timeout (10 s): a
        // request sent on one at that moment would be lost, so pooled connections are dropped sooner.
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_idle_timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .unwrap(),
    });

    let ids = Arc::new(Mutex::new(Vec::new()));
    let follow_done = Arc::new(AtomicBool::new(false));
    let follow = tokio::spawn(follower(chaos.clone(), ids.clone(), follow_done.clone()));
    let mut tasks = Vec::new();
    for n in 0..6 {
        tasks.push(tokio::spawn(api_worker(chaos.clone(), seed.wrapping_add(n))));
    }
    tasks.push(tokio::spawn(killer(chaos.clone(), seed.wrapping_add(100))));
    tasks.push(tokio::spawn(hanger(chaos.clone())));

    // A daemon restart every 25 s or so, at least two.
    let rounds = (secs / 25).max(2);
    let chaos_start = Instant::now();
    for round in 1..=rounds {
        let at = Duration::from_secs(secs) * round as u32 / (rounds as u32 + 1);
        tokio::time::sleep(at.saturating_sub(chaos_start.elapsed())).await;
        restart_round(&chaos).await;
    }
    tokio::time::sleep(Duration::from_secs(secs).saturating_sub(chaos_start.elapsed())).await;
    chaos.stop.store(true, SeqCst);
    for t in tasks {
        t.await.expect("a chaos task panicked");
    }
    let chaos_secs = chaos_start.elapsed().as_secs_f64();

    // Stop everything; then nothing of any process group that ever ran may be left.
    let daemon = chaos.daemon.read().await;
    let d: &Daemon = &daemon;
    let stops = all_services().into_iter().map(|name| async move { (name, d.stop_svc(name).await) });
    for (name, (code, v)) in futures_util::future::join_all(stops).await {
        assert_eq!((code, v["status"].as_str()), (200, Some("stopped")), "stop {name}: {v}");
    }
    let mut groups = HashSet::new();
    for name in all_services() {
        groups.extend(starts(&chaos.ws.path(&format!("{name}.starts"))));
    }
    let mut left = Vec::new();
    wait_until(Duration::from_secs(10), "no process of any service's group is left", || {
        left = group_members(&groups);
        let ok = left.is_empty();
        async move { ok }
    })
    .await;

    // Never two instances of a service, never two GPU holders.
    for name in all_services() {
        let conflicts = chaos.ws.path(&format!("{name}.lock.conflicts"));
        let text = std::fs::read_to_string(&conflicts).unwrap_or_default();
        assert!(text.is_empty(), "a second instance of {name} ran while the first held its lock:\n{text}");
    }
    let overbooked = std::fs::read_to_string(chaos.ws.path("gpu.lock.conflicts")).unwrap_or_default();
    assert!(overbooked.is_empty(), "OVERBOOKED: a GPU service started while another held the GPU:\n{overbooked}");

    // The sentinel got only malformed requests.
    assert_eq!(daemon.state_of(SENTINEL).await, "stopped");
    assert!(starts(&chaos.ws.path(&format!("{SENTINEL}.starts"))).is_empty(), "a malformed request started {SENTINEL}");

    // The history: strictly increasing ids, and the stream has exactly the stored events.
    let stored = stored_ids(&daemon).await;
    let newest = *stored.last().expect("events were stored");
    wait_until(Duration::from_secs(20), "the event stream caught up with the stored history", || {
        let caught = ids.lock().unwrap().last().is_some_and(|&l| l >= newest);
        async move { caught }
    })
    .await;
    follow_done.store(true, SeqCst);
    let streamed = ids.lock().unwrap().clone();
    for w in streamed.windows(2) {
        assert!(w[0] < w[1], "the stream's ids must strictly increase: {} then {}", w[0], w[1]);
    }
    let first = streamed[0];
    let stored_range: BTreeSet<u64> = stored.iter().copied().filter(|&i| i >= first && i <= newest).collect();
    let streamed_range: BTreeSet<u64> = streamed.iter().copied().filter(|&i| i <= newest).collect();
    let missing: Vec<_> = stored_range.difference(&streamed_range).take(20).collect();
    let extra: Vec<_> = streamed_range.difference(&stored_range).take(20).collect();
    assert!(missing.is_empty() && extra.is_empty(), "stream vs /events: missing {missing:?}, not stored {extra:?}");
    drop(daemon);
    follow.abort();

    let f = &chaos.figures;
    eprintln!(
        "chaos figures: {chaos_secs:.0} s of chaos, {} SIGKILLs of service processes survived, {} requests served \
         ({} malformed), {} answered 4xx, {} answered 5xx, {} daemon restarts (SIGKILL mid-start and mid-stop), \
         {} events streamed, {} process groups checked; answers by status {:?}; whole test {:.0} s",
        f.kills.load(SeqCst),
        f.requests.load(SeqCst),
        f.malformed.load(SeqCst),
        f.client_errors.load(SeqCst),
        f.server_errors.load(SeqCst),
        f.daemon_restarts.load(SeqCst),
        streamed.len(),
        groups.len(),
        f.by_status.lock().unwrap(),
        begin.elapsed().as_secs_f64()
    );
    let failures = chaos.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failures, the first:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );

    let mut daemon = chaos.daemon.write().await;
    daemon.terminate();
}
