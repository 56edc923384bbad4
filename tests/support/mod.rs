//! Helpers for the supervision tests (restart policy, health monitoring, dependencies, events,
//! crash recovery), on top of `tests/common`: a manifest builder for the `svc.py` fixture,
//! event-history helpers usable with either daemon harness, a daemon harness that can be
//! restarted on the same state directory with extra arguments, and an SSE reader.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

use crate::common::{Daemon, pid_alive};

// ---------------------------------------------------------------------------------------------
// Manifests for the svc.py fixture (supervision tests)
// ---------------------------------------------------------------------------------------------

/// Creates (or truncates) a control file for the fixture.
pub fn touch(path: &Path) {
    fs::write(path, b"x").unwrap();
}

pub fn remove(path: &Path) {
    let _ = fs::remove_file(path);
}

/// Lines of a `--starts` file (one pid per process start).
pub fn starts(path: &Path) -> Vec<i32> {
    fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

// ---------------------------------------------------------------------------------------------
// Talking to a daemon: works with `common::Daemon` and `Nanny`
// ---------------------------------------------------------------------------------------------

pub trait Api {
    fn base_url(&self) -> &str;
    fn http(&self) -> &reqwest::Client;
    fn daemon_stderr(&self) -> String;

    async fn api_get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http()
            .get(format!("{}{path}", self.base_url()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        finish(r).await
    }

    async fn api_post(&self, path: &str) -> (u16, Value) {
        let r = self
            .http()
            .post(format!("{}{path}", self.base_url()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        finish(r).await
    }

    async fn api_post_body(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http()
            .post(format!("{}{path}", self.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        finish(r).await
    }

    async fn api_get_ok(&self, path: &str) -> Value {
        let (code, v) = self.api_get(path).await;
        assert_eq!(code, 200, "GET {path} -> {code} {v}");
        v
    }

    async fn svc_status(&self, name: &str) -> Value {
        self.api_get_ok(&format!("/services/{name}/status")).await
    }

    async fn svc_state(&self, name: &str) -> String {
        self.svc_status(name).await["status"].as_str().unwrap_or("").to_string()
    }

    /// `POST /services/NAME/start`, asserting 200 and `running`.
    async fn start_running(&self, name: &str) -> Value {
        let (code, v) = self.api_post(&format!("/services/{name}/start")).await;
        assert_eq!(code, 200, "start {name} -> {code} {v}\ndaemon stderr:\n{}", self.daemon_stderr());
        assert_eq!(v["status"], "running", "start {name}: {v}");
        v
    }

    /// `POST /services/NAME/stop`, asserting 200 and `stopped`.
    async fn stop_stopped(&self, name: &str) -> Value {
        let (code, v) = self.api_post(&format!("/services/{name}/stop")).await;
        assert_eq!(code, 200, "stop {name} -> {code} {v}");
        assert_eq!(v["status"], "stopped", "stop {name}: {v}");
        v
    }

    /// `GET /events?QUERY`, asserting 200; the `events` array.
    async fn events(&self, query: &str) -> Vec<Value> {
        let v = self.api_get_ok(&format!("/events?{query}")).await;
        v["events"].as_array().unwrap_or_else(|| panic!("`events` is not an array: {v}")).clone()
    }

    /// The whole stored history (up to 10000 events).
    async fn all_events(&self) -> Vec<Value> {
        self.events("limit=10000").await
    }

    /// One service's history (up to 10000 events).
    async fn events_of(&self, service: &str) -> Vec<Value> {
        self.events(&format!("limit=10000&service={service}")).await
    }

    /// Polls the service's status until `cond` holds; returns that status.
    async fn wait_status(&self, name: &str, timeout: Duration, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.svc_status(name).await;
            if cond(&st) {
                return st;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting until {name}: {what}; last status {st}\nevents: {}\ndaemon stderr:\n{}",
                    render(&self.events_of(name).await),
                    self.daemon_stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> Value {
        self.wait_status(name, timeout, &format!("status is {state}"), |st| st["status"] == state).await
    }

    /// Polls the history (all of it) until `cond` holds for it; returns the history.
    async fn wait_events(&self, timeout: Duration, what: &str, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
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
                    self.daemon_stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the first event of `service` with `kind` (and `pred`) whose id is above `after`.
    async fn wait_event(
        &self,
        service: &str,
        kind: &str,
        after: u64,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let evs = self
            .wait_events(timeout, &format!("a `{kind}` event of {service} after id {after}"), |evs| {
                evs.iter().any(|e| id(e) > after && e["service"] == service && e["kind"] == kind && pred(e))
            })
            .await;
        evs.into_iter().find(|e| id(e) > after && e["service"] == service && e["kind"] == kind && pred(e)).unwrap()
    }

    /// The id of the newest stored event (0 if none).
    async fn last_event_id(&self) -> u64 {
        self.events("limit=1").await.last().map(id).unwrap_or(0)
    }
}

async fn finish(resp: reqwest::Response) -> (u16, Value) {
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (code, v)
}

impl Api for Daemon {
    fn base_url(&self) -> &str {
        &self.url
    }
    fn http(&self) -> &reqwest::Client {
        &self.client
    }
    fn daemon_stderr(&self) -> String {
        self.stderr()
    }
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

pub fn id(e: &Value) -> u64 {
    e["id"].as_u64().unwrap_or_else(|| panic!("event without a numeric id: {e}"))
}

pub fn ts(e: &Value) -> jiff::Timestamp {
    let s = e["ts"].as_str().unwrap_or_else(|| panic!("event without ts: {e}"));
    s.parse().unwrap_or_else(|err| panic!("event ts {s:?} is not a timestamp ({err}): {e}"))
}

/// Milliseconds from event `a` to event `b` by their timestamps.
pub fn ms_between(a: &Value, b: &Value) -> f64 {
    let d = ts(b).duration_since(ts(a));
    d.as_secs_f64() * 1000.0
}

/// The events of `service` (all if None) with `kind`.
pub fn of_kind<'a>(evs: &'a [Value], service: Option<&str>, kind: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["kind"] == kind && service.is_none_or(|s| e["service"] == s)).collect()
}

/// Position (index) of the first event of `service` with `kind` after id `after`.
pub fn first<'a>(evs: &'a [Value], service: &str, kind: &str, after: u64) -> Option<&'a Value> {
    evs.iter().find(|e| id(e) > after && e["service"] == service && e["kind"] == kind)
}

/// "id service kind message" per line, for failure messages.
pub fn render(evs: &[Value]) -> String {
    let mut out = String::new();
    for e in evs {
        out.push_str(&format!(
            "\n  {:>4} {:<10} {:<12} {}",
            e["id"],
            e["service"].as_str().unwrap_or("-"),
            e["kind"].as_str().unwrap_or("?"),
            e["message"].as_str().unwrap_or("")
        ));
    }
    out
}

/// Asserts ids strictly increase.
pub fn assert_increasing(evs: &[Value]) {
    for w in evs.windows(2) {
        assert!(id(&w[0]) < id(&w[1]), "event ids must strictly increase: {}", render(evs));
    }
}

// ---------------------------------------------------------------------------------------------
// A daemon on a state directory the test chooses (so it can be restarted on it)
// ---------------------------------------------------------------------------------------------

static STARTS: AtomicUsize = AtomicUsize::new(0);

pub struct Nanny {
    pub child: Child,
    pub url: String,
    pub client: reqwest::Client,
    pub state_dir: PathBuf,
    stderr_path: PathBuf,
    _logs: TempDir,
    exit: Option<ExitStatus>,
}

impl Nanny {
    /// `nanny serve --services SERVICES --listen 127.0.0.1:0 --state-dir STATE ARGS...` with
    /// `env` added; waits (30 s) for its readiness line.
    pub fn start_with(services: &Path, state_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Nanny {
        let logs = tempfile::Builder::new().prefix("nanny-support-").tempdir().expect("tempdir");
        let n = STARTS.fetch_add(1, Ordering::SeqCst);
        let stderr_path = logs.path().join(format!("daemon-{n}.stderr"));
        let (child, url) = crate::common::spawn_serve(services, state_dir, args, env, &stderr_path);
        Nanny {
            child,
            url,
            client: reqwest::Client::builder().timeout(Duration::from_secs(90)).no_proxy().build().unwrap(),
            state_dir: state_dir.to_path_buf(),
            stderr_path,
            _logs: logs,
            exit: None,
        }
    }

    pub fn start(services: &Path, state_dir: &Path) -> Nanny {
        Nanny::start_with(services, state_dir, &[], &[])
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).expect("signal daemon");
    }

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

impl Api for Nanny {
    fn base_url(&self) -> &str {
        &self.url
    }
    fn http(&self) -> &reqwest::Client {
        &self.client
    }
    fn daemon_stderr(&self) -> String {
        self.stderr()
    }
}

impl Drop for Nanny {
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

/// SIGKILLs the listed pids when dropped (processes a test may leave behind on failure).
#[derive(Default)]
pub struct KillOnDrop(pub Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if pid > 0 && pid_alive(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct SseFrame {
    pub id: Option<u64>,
    pub event: Option<String>,
    pub data: Value,
}

pub struct SseStream {
    resp: reqwest::Response,
    buf: String,
}

impl SseStream {
    /// Opens `URL` (a full `.../events/stream?...` address), sending `Last-Event-ID` if given.
    pub async fn connect(url: &str, last_event_id: Option<&str>) -> SseStream {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut rb = client.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            rb = rb.header("last-event-id", id);
        }
        let resp = rb.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(resp.status().as_u16(), 200, "GET {url}");
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(ct.starts_with("text/event-stream"), "content-type of {url}: {ct:?}");
        SseStream { resp, buf: String::new() }
    }

    /// The next event with data (comments / keep-alives skipped); None when `timeout` passes
    /// first or the stream ends.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseFrame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(frame) = self.take_frame() {
                if let Some(f) = frame {
                    return Some(f);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk()).await.ok()?;
            match chunk {
                Ok(Some(bytes)) => self.buf.push_str(&String::from_utf8_lossy(&bytes).replace("\r\n", "\n")),
                _ => return None,
            }
        }
    }

    /// Pops one complete frame from the buffer: Some(None) for a frame without data.
    fn take_frame(&mut self) -> Option<Option<SseFrame>> {
        let end = self.buf.find("\n\n")?;
        let raw: String = self.buf.drain(..end + 2).collect();
        let (mut id, mut event, mut data) = (None, None, Vec::new());
        for line in raw.lines() {
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.parse::<u64>().unwrap_or_else(|_| panic!("SSE id {value:?} is not a number"))),
                "event" => event = Some(value.to_string()),
                "data" => data.push(value.to_string()),
                _ => {}
            }
        }
        if data.is_empty() {
            return Some(None);
        }
        let text = data.join("\n");
        let data = serde_json::from_str(&text).unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {text}"));
        Some(Some(SseFrame { id, event, data }))
    }
}
