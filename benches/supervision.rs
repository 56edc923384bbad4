//! Supervision latency, measured against the real daemon and real processes:
//!
//! - restart: from a running service's process being SIGKILLed to its
//!   replacement being spawned (`restart: always`, `restart_delay: 0`),
//!   read off the replacement's `starting` event;
//! - ready: from a service starting to listen to the daemon reporting it
//!   `running` (its `healthy` event);
//! - crash loop: a service whose process exits with code 3 after 50 ms, over
//!   and over (`restart: always`, `restart_delay: 0`, no health check), from
//!   each `exited` event to the next `starting` event. Its start by hand
//!   answers an error (the process died), which is not fatal here. If the
//!   daemon stops restarting it (no spawn within 5 s of a crash), the bench
//!   says so instead of printing figures.
//!
//! `cargo bench --bench supervision [-- TRIALS]` (default 100 trials each;
//! the crash loop collects twice as many crashes).
//! Prints median, p90, p99 and max in milliseconds.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// How long the crash loop may go without a new spawn before it counts as not restarted.
const CRASH_LOOP_STALL: Duration = Duration::from_secs(5);

const READY_SERVER: &str = r#"
import http.server, sys, time
port, delay, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
time.sleep(delay)
server = http.server.HTTPServer(("127.0.0.1", port), H)
open(out, "w").write(repr(time.time()))
server.serve_forever()
"#;

struct Daemon {
    child: Child,
    url: String,
    http: reqwest::blocking::Client,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(services: &Path, state: &Path) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nanny"))
            .args(["serve", "--listen", "127.0.0.1:0", "--services"])
            .arg(services)
            .arg("--state-dir")
            .arg(state)
            .env("NANNY_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("nanny starts");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        let url = line.trim().strip_prefix("nanny listening on ").expect("listening line").to_string();
        Daemon { child, url, http: reqwest::blocking::Client::builder().no_proxy().build().unwrap() }
    }

    fn get(&self, path: &str) -> Value {
        self.http.get(format!("{}{path}", self.url)).send().unwrap().json().unwrap()
    }

    /// POST `path` whatever the answer: its status and JSON body.
    fn try_post(&self, path: &str) -> (reqwest::StatusCode, Value) {
        let response = self.http.post(format!("{}{path}", self.url)).send().unwrap();
        let status = response.status();
        let text = response.text().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// POST `path`, which must succeed.
    fn post(&self, path: &str) -> Value {
        let (status, body) = self.try_post(path);
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    /// The events of `service` after `since`, oldest first.
    fn events_after(&self, service: &str, since: u64) -> Vec<Value> {
        let mut events = self.get(&format!("/events?service={service}&since={since}&limit=10000"));
        std::mem::take(events["events"].as_array_mut().unwrap())
    }

    /// Wait for the first event of `kind` for `service` after `since`.
    fn event_after(&self, service: &str, kind: &str, since: u64) -> Value {
        poll_until(Duration::from_secs(30), || {
            self.events_after(service, since).into_iter().find(|e| e["kind"] == kind)
        })
        .unwrap_or_else(|| panic!("no {kind} event for {service}"))
    }

    fn last_event_id(&self) -> u64 {
        self.get("/events?limit=1")["last_id"].as_u64().unwrap_or(0)
    }
}

/// Call `f` every 5 ms until it gives a value, for at most `timeout`.
fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn timestamp_secs(event: &Value) -> f64 {
    let ts: jiff::Timestamp = event["ts"].as_str().unwrap().parse().unwrap();
    ts.as_nanosecond() as f64 / 1e9
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64()
}

fn report(what: &str, samples_ms: Vec<f64>) {
    println!("{what}: {}", summary(samples_ms));
}

fn summary(mut samples_ms: Vec<f64>) -> String {
    samples_ms.sort_by(f64::total_cmp);
    let at = |q: f64| samples_ms[((samples_ms.len() - 1) as f64 * q).round() as usize];
    format!(
        "n={} median={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
        samples_ms.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    )
}

/// Start `service` (a process that keeps crashing) and time, for each of
/// `crashes` crashes, its `exited` event to the next `starting` event.
/// Prints why instead if the daemon stops restarting it.
fn crash_loop(daemon: &Daemon, service: &str, crashes: usize) {
    const WHAT: &str = "process crashed -> next spawned";
    let mut cursor = daemon.last_event_id();
    // The process dies before it counts as started, so this answers an error.
    let (start_status, start_body) = daemon.try_post(&format!("/services/{service}/start"));
    let mut exited_at = None;
    let mut exits = 0;
    let mut latencies = Vec::new();
    while latencies.len() < crashes {
        let spawned = poll_until(CRASH_LOOP_STALL, || {
            let before = latencies.len();
            for event in daemon.events_after(service, cursor) {
                cursor = event["id"].as_u64().unwrap();
                match event["kind"].as_str() {
                    Some("exited") => {
                        exits += 1;
                        exited_at = Some(timestamp_secs(&event));
                    }
                    Some("starting") => {
                        if let Some(exited) = exited_at.take() {
                            latencies.push((timestamp_secs(&event) - exited) * 1000.0);
                        }
                    }
                    _ => {}
                }
            }
            (latencies.len() > before).then_some(())
        });
        if spawned.is_none() {
            let status = daemon.get(&format!("/services/{service}/status"));
            println!(
                "{WHAT}: crash loop not restarted: no spawn within {}s after {exits} crash(es), {} restart(s); \
                 status {}; start answered {start_status}: {start_body}",
                CRASH_LOOP_STALL.as_secs(),
                latencies.len(),
                status["status"],
            );
            break;
        }
    }
    daemon.post(&format!("/services/{service}/stop"));
    if latencies.len() >= crashes {
        println!("{WHAT}: {} crashes={exits}", summary(latencies));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn main() {
    let trials: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(100);
    let tmp = tempfile::tempdir().unwrap();
    let services = tmp.path().join("services");
    let ready_file = tmp.path().join("ready");
    let port = free_port();
    std::fs::create_dir_all(services.join("crashy")).unwrap();
    std::fs::create_dir_all(services.join("ready")).unwrap();
    std::fs::create_dir_all(services.join("looper")).unwrap();
    std::fs::write(
        services.join("crashy/service.yaml"),
        "name: crashy\ncommand: [sleep, '1000']\nrestart: always\nrestart_delay: 0\nmax_restarts: 10000\nhealth_timeout: 0.05\n",
    )
    .unwrap();
    std::fs::write(
        services.join("looper/service.yaml"),
        "name: looper\ncommand: [sh, -c, 'sleep 0.05; exit 3']\nrestart: always\nrestart_delay: 0\nmax_restarts: 10000\n",
    )
    .unwrap();
    std::fs::write(services.join("ready/server.py"), READY_SERVER).unwrap();
    let ready_manifest = |delay: f64| {
        format!(
            "name: ready\ncommand: [python3, server.py, '{port}', '{delay:.3}', {}]\nhealth_endpoint: http://127.0.0.1:{port}/health\n",
            ready_file.display()
        )
    };
    std::fs::write(services.join("ready/service.yaml"), ready_manifest(0.05)).unwrap();
    let daemon = Daemon::start(&services, &tmp.path().join("state"));

    // Restart latency.
    daemon.post("/services/crashy/start");
    let mut restart = Vec::new();
    for _ in 0..trials {
        let status = daemon.get("/services/crashy/status");
        let pid = status["pid"].as_i64().expect("crashy has a pid") as i32;
        let since = daemon.last_event_id();
        let killed_at = now_secs();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        let starting = daemon.event_after("crashy", "starting", since);
        restart.push((timestamp_secs(&starting) - killed_at) * 1000.0);
        // Let it settle into `running` so every trial starts from the same state.
        daemon.event_after("crashy", "healthy", starting["id"].as_u64().unwrap() - 1);
    }
    daemon.post("/services/crashy/stop");
    report("process killed -> replacement spawned", restart);

    // Ready -> running latency; the service listens after a varying delay.
    let mut ready = Vec::new();
    for i in 0..trials {
        let delay = 0.05 + (i % 10) as f64 * 0.013;
        std::fs::write(services.join("ready/service.yaml"), ready_manifest(delay)).unwrap();
        daemon.post("/rediscover");
        let _ = std::fs::remove_file(&ready_file);
        let since = daemon.last_event_id();
        daemon.post("/services/ready/start");
        let healthy = daemon.event_after("ready", "healthy", since);
        let listening: f64 = std::fs::read_to_string(&ready_file).unwrap().trim().parse().unwrap();
        ready.push((timestamp_secs(&healthy) - listening) * 1000.0);
        daemon.post("/services/ready/stop");
    }
    report("service listening -> reported running", ready);

    // Death -> next spawn latency of a service that keeps crashing.
    crash_loop(&daemon, "looper", 2 * trials);
}
