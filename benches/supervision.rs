//! Supervision latency, measured against the real daemon and real processes:
//!
//! - restart: from a running service's process being SIGKILLed to its
//!   replacement being spawned (`restart: always`, `restart_delay: 0`),
//!   read off the replacement's `starting` event;
//! - ready: from a service starting to listen to the daemon reporting it
//!   `running` (its `healthy` event).
//!
//! `cargo bench --bench supervision [-- TRIALS]` (default 100 trials each).
//! Prints median, p90 and max in milliseconds.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

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

    fn post(&self, path: &str) -> Value {
        let response = self.http.post(format!("{}{path}", self.url)).send().unwrap();
        assert!(response.status().is_success(), "{path}: {}", response.text().unwrap());
        response.json().unwrap()
    }

    /// Wait for the first event of `kind` for `service` after `since`.
    fn event_after(&self, service: &str, kind: &str, since: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let events = self.get(&format!("/events?service={service}&since={since}&limit=10000"));
            if let Some(e) = events["events"].as_array().unwrap().iter().find(|e| e["kind"] == kind) {
                return e.clone();
            }
            assert!(Instant::now() < deadline, "no {kind} event for {service}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn last_event_id(&self) -> u64 {
        self.get("/events?limit=1")["last_id"].as_u64().unwrap_or(0)
    }
}

fn timestamp_secs(event: &Value) -> f64 {
    let ts: jiff::Timestamp = event["ts"].as_str().unwrap().parse().unwrap();
    ts.as_nanosecond() as f64 / 1e9
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64()
}

fn report(what: &str, mut samples_ms: Vec<f64>) {
    samples_ms.sort_by(f64::total_cmp);
    let at = |q: f64| samples_ms[((samples_ms.len() - 1) as f64 * q).round() as usize];
    println!("{what}: n={} median={:.2} ms p90={:.2} ms max={:.2} ms", samples_ms.len(), at(0.5), at(0.9), at(1.0));
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
    std::fs::write(
        services.join("crashy/service.yaml"),
        "name: crashy\ncommand: [sleep, '1000']\nrestart: always\nrestart_delay: 0\nmax_restarts: 1000000\nhealth_timeout: 0.05\n",
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
}
