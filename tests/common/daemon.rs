//! The daemon under test: `nanny serve` on a services directory, talked to over HTTP.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tempfile::TempDir;

use super::{NANNY, id, render};

/// Spawns `nanny serve --listen 127.0.0.1:0` on `services` and `state_dir` (stderr to
/// `stderr_path`, nanny's own env settings cleared), waits 30 s for its readiness line and
/// returns the child and the URL it listens on. Its stdout is drained for its whole life.
fn spawn_serve(
    services: &Path,
    state_dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    stderr_path: &Path,
) -> (Child, String) {
    let stderr = fs::File::create(stderr_path).unwrap();
    let mut cmd = Command::new(NANNY);
    cmd.arg("serve")
        .arg("--services")
        .arg(services)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--state-dir")
        .arg(state_dir)
        .args(args)
        .env_remove("NANNY_URL")
        .env_remove("NANNY_TOKEN")
        .env_remove("NANNY_SERVICES_DIR")
        .env_remove("NANNY_LISTEN")
        .env_remove("NANNY_STATE_DIR")
        .env_remove("NANNY_ON_SHUTDOWN")
        .env_remove("NANNY_GPU_DEVICES")
        .env_remove("NANNY_ALLOW_OUTSIDE_PATHS")
        .env_remove("NANNY_EVENTS_KEEP")
        .env_remove("NANNY_CONFIG")
        .env_remove("NANNY_TOKEN_FILE")
        .env_remove("NANNY_CORS_ORIGINS")
        .env_remove("NANNY_REQUEST_TIMEOUT")
        .env_remove("NANNY_MCP_ALLOWED_HOSTS")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("NANNY_EVENTS_MAX_AGE")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .env("RUST_BACKTRACE", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr));
    let mut child = cmd.spawn().expect("spawn nanny serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        // Keep draining stdout for the daemon's whole life so it never blocks on a pipe.
        let mut first = true;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if first {
                first = false;
                let _ = tx.send(line);
            }
        }
    });
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(l) => l,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = fs::read_to_string(stderr_path).unwrap_or_default();
            panic!("nanny serve printed no readiness line within 30 s ({e}); stderr:\n{stderr}");
        }
    };
    let url = line
        .strip_prefix("nanny listening on ")
        .unwrap_or_else(|| panic!("unexpected readiness line {line:?}"))
        .trim()
        .trim_end_matches('/')
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "readiness line {line:?}");
    (child, url)
}

/// A running `nanny serve`. Dropping it terminates it (SIGTERM, then SIGKILL after 20 s) and
/// prints its stderr when the test is panicking.
pub struct Daemon {
    pub url: String,
    pub client: reqwest::Client,
    child: Child,
    state_dir: PathBuf,
    stderr_path: PathBuf,
    /// Holds the daemon's stderr file (and its state directory when the test gave none).
    _scratch: TempDir,
    exit: Option<ExitStatus>,
}

impl Daemon {
    /// `nanny serve` on `services_dir` with a state directory of its own (removed with it).
    pub fn start(services_dir: &Path) -> Daemon {
        let scratch = tempfile::Builder::new().prefix("nanny-daemon-").tempdir().expect("tempdir");
        let state_dir = scratch.path().join("state");
        Daemon::spawn(services_dir, &state_dir, &[], &[], scratch)
    }

    /// `nanny serve` on `services` and the state directory `state_dir`, which outlives the
    /// daemon: a later daemon started on it takes over its history and desired state.
    pub fn start_with_state(services: &Path, state_dir: &Path) -> Daemon {
        Daemon::start_with(services, state_dir, &[], &[])
    }

    /// `nanny serve --services SERVICES --listen 127.0.0.1:0 --state-dir STATE ARGS...` with
    /// `env` added; waits (30 s) for its readiness line.
    pub fn start_with(services: &Path, state_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let scratch = tempfile::Builder::new().prefix("nanny-daemon-").tempdir().expect("tempdir");
        Daemon::spawn(services, state_dir, args, env, scratch)
    }

    fn spawn(services: &Path, state_dir: &Path, args: &[&str], env: &[(&str, &str)], scratch: TempDir) -> Daemon {
        let stderr_path = scratch.path().join("daemon.stderr");
        let (child, url) = spawn_serve(services, state_dir, args, env, &stderr_path);
        Daemon {
            url,
            client: reqwest::Client::builder().timeout(Duration::from_secs(90)).no_proxy().build().unwrap(),
            child,
            state_dir: state_dir.to_path_buf(),
            stderr_path,
            _scratch: scratch,
            exit: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The daemon's URL for `path`.
    pub fn u(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    // ---- HTTP ----

    async fn finish(resp: reqwest::Response) -> (u16, Value) {
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text));
        (code, v)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.u(path)).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        Self::finish(r).await
    }

    /// GET expecting 200, returning the body.
    pub async fn get_ok(&self, path: &str) -> Value {
        let (code, v) = self.get(path).await;
        assert_eq!(code, 200, "GET {path} -> {code} {v}");
        v
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut rb = self.client.post(self.u(path));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap_or_else(|e| panic!("POST {path}: {e}"));
        Self::finish(r).await
    }

    pub async fn post_raw(&self, path: &str, body: &'static str, content_type: Option<&str>) -> (u16, Value) {
        let mut rb = self.client.post(self.u(path)).body(body);
        if let Some(ct) = content_type {
            rb = rb.header("content-type", ct);
        }
        let r = rb.send().await.unwrap_or_else(|e| panic!("POST {path}: {e}"));
        Self::finish(r).await
    }

    // ---- services ----

    pub async fn start_svc(&self, name: &str) -> (u16, Value) {
        self.post(&format!("/services/{name}/start"), None).await
    }

    pub async fn start_forced(&self, name: &str) -> (u16, Value) {
        self.post(&format!("/services/{name}/start"), Some(json!({"force": true}))).await
    }

    /// Start, asserting 200 and status running.
    pub async fn start_ok(&self, name: &str) -> Value {
        let (code, v) = self.start_svc(name).await;
        assert_eq!(code, 200, "start {name} -> {code} {v}\ndaemon stderr:\n{}", self.stderr());
        assert_eq!(v["status"], "running", "start {name} body {v}");
        v
    }

    pub async fn stop_svc(&self, name: &str) -> (u16, Value) {
        self.post(&format!("/services/{name}/stop"), None).await
    }

    /// Stop, asserting 200 and status stopped.
    pub async fn stop_ok(&self, name: &str) -> Value {
        let (code, v) = self.stop_svc(name).await;
        assert_eq!(code, 200, "stop {name} -> {code} {v}");
        assert_eq!(v["status"], "stopped", "stop {name} body {v}");
        v
    }

    /// `GET /services/NAME/status`.
    pub async fn status(&self, name: &str) -> Value {
        self.get_ok(&format!("/services/{name}/status")).await
    }

    /// The `status` field of the service's status.
    pub async fn state_of(&self, name: &str) -> String {
        self.status(name).await["status"].as_str().unwrap_or("").to_string()
    }

    /// `GET /services`.
    pub async fn services(&self) -> Value {
        self.get_ok("/services").await
    }

    /// Polls the service's status until `cond` holds; returns that status.
    pub async fn wait_status(&self, name: &str, timeout: Duration, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status(name).await;
            if cond(&st) {
                return st;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting until {name}: {what}; last status {st}\nevents: {}\ndaemon stderr:\n{}",
                    render(&self.events_of(name).await),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls the service's status until its `status` is `state`; returns that status.
    pub async fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> Value {
        self.wait_status(name, timeout, &format!("status is {state}"), |st| st["status"] == state).await
    }

    /// Polls the service's status until it runs in a process other than `old_pid`; returns
    /// that status.
    pub async fn wait_new_process(&self, name: &str, old_pid: i32, timeout: Duration) -> Value {
        self.wait_status(name, timeout, &format!("running in a process other than {old_pid}"), |st| {
            st["status"] == "running" && st["pid"].as_i64().is_some_and(|p| p != i64::from(old_pid))
        })
        .await
    }

    // ---- logs ----

    /// `GET /services/NAME/logs?tail=TAIL`.
    pub async fn logs(&self, name: &str, tail: usize) -> Value {
        self.get_ok(&format!("/services/{name}/logs?tail={tail}")).await
    }

    /// The log lines (`{ts, stream, line}`) of a service, up to 10000.
    pub async fn log_lines(&self, name: &str) -> Vec<Value> {
        let v = self.logs(name, 10000).await;
        v["lines"].as_array().unwrap_or_else(|| panic!("logs without `lines`: {v}")).clone()
    }

    /// All log lines' text for a service (up to 10000).
    pub async fn log_text(&self, name: &str) -> Vec<String> {
        let v = self.logs(name, 10000).await;
        v["lines"]
            .as_array()
            .map(|a| a.iter().map(|l| l["line"].as_str().unwrap_or("").to_string()).collect())
            .unwrap_or_default()
    }

    /// Polls the service's log until a line satisfying `pred` shows up; returns it.
    pub async fn wait_log_line(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.log_lines(name).await;
            if let Some(l) = lines.iter().find(|l| pred(l)) {
                return l.clone();
            }
            if Instant::now() >= deadline {
                let text: Vec<String> =
                    lines.iter().map(|l| format!("{} {}", l["stream"], l["line"].as_str().unwrap_or(""))).collect();
                panic!("timed out waiting for a log line of {name}: {what}\nlines:\n{}", text.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // ---- events ----

    /// `GET /events?QUERY`, asserting 200; the `events` array.
    pub async fn events(&self, query: &str) -> Vec<Value> {
        let v = self.get_ok(&format!("/events?{query}")).await;
        v["events"].as_array().unwrap_or_else(|| panic!("`events` is not an array: {v}")).clone()
    }

    /// The whole stored history (up to 10000 events).
    pub async fn all_events(&self) -> Vec<Value> {
        self.events("limit=10000").await
    }

    /// One service's history (up to 10000 events).
    pub async fn events_of(&self, service: &str) -> Vec<Value> {
        self.events(&format!("limit=10000&service={service}")).await
    }

    /// The history of `service` (all of it if None) with ids above `after`, in order.
    pub async fn events_after(&self, service: Option<&str>, after: u64) -> Vec<Value> {
        let evs = match service {
            Some(s) => self.events_of(s).await,
            None => self.all_events().await,
        };
        evs.into_iter().filter(|e| id(e) > after).collect()
    }

    /// The id of the newest stored event (0 if none).
    pub async fn last_event_id(&self) -> u64 {
        self.events("limit=1").await.last().map(id).unwrap_or(0)
    }

    /// Polls the history (all of it) until `cond` holds for it; returns the history.
    pub async fn wait_events(&self, timeout: Duration, what: &str, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let evs = self.all_events().await;
            if cond(&evs) {
                return evs;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting until {what}\nevents: {}\ndaemon stderr:\n{}",
                    render(&evs),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the first event of `service` with `kind` (and `pred`) whose id is above `after`.
    pub async fn wait_event(
        &self,
        service: &str,
        kind: &str,
        after: u64,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let matches = |e: &Value| id(e) > after && e["service"] == service && e["kind"] == kind && pred(e);
        let evs = self
            .wait_events(timeout, &format!("a `{kind}` event of {service} after id {after}"), |evs| {
                evs.iter().any(matches)
            })
            .await;
        evs.into_iter().find(|e| matches(e)).unwrap()
    }

    // ---- the process ----

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).expect("signal daemon");
    }

    /// Waits for the daemon to exit (panics after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.exit {
            return s;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.exit = Some(s);
                return s;
            }
            if Instant::now() >= deadline {
                panic!("daemon did not exit within {timeout:?}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        self.signal(Signal::SIGKILL);
        self.wait_exit(Duration::from_secs(10));
    }

    /// SIGTERM, then wait for a clean exit (status 0).
    pub fn terminate(&mut self) {
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(60));
        assert!(status.success(), "daemon exit after SIGTERM: {status:?}; stderr:\n{}", self.stderr());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- nanny daemon stderr ({}) ----\n{}\n---- end ----", self.url, self.stderr());
        }
        if self.exit.is_some() {
            return;
        }
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("nanny daemon did not exit 20 s after SIGTERM; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
