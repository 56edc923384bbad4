//! Shared helpers for the integration tests: run the real `nanny` binary against a
//! temporary services directory and talk to it over HTTP.
#![allow(dead_code)]

use std::fs;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicUsize, Ordering};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tempfile::TempDir;

/// Absolute path of the `nanny` binary under test.
pub const NANNY: &str = env!("CARGO_BIN_EXE_nanny");

/// Absolute path of the python fixture service.
pub fn fixture_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/svc.py")
}

/// Absolute path of the bundled example services.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/services")
}

/// An HTTP client that never goes through a proxy (for talking to services directly).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).no_proxy().build().unwrap()
}

/// A port that was free a moment ago.
/// A free port for a fixture service, taken below the kernel's ephemeral range: a port from
/// `bind(:0)` can be handed out again to any outgoing connection or `:0` listener (the test's own
/// HTTP polling, other daemons) before the service binds it, which makes a busy machine's
/// services fail at startup with "address already in use".
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(12000, 65535);
    let (start, span) = (10000u32, low - 10000);
    let seed = std::process::id() as u64 * 7919
        + std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::SeqCst) as u64;
        // A simple mix so concurrent test processes spread over the range.
        let x = (seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let port = (start + (x >> 33) as u32 % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found below {low}");
}

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// Polls `cond` (async) every 50 ms until it returns true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Blocking variant of [`wait_until`].
pub fn wait_until_sync(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// The state letter from /proc/PID/stat (R, S, Z, ...), None if the process does not exist.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ..." — comm may contain spaces/parens, so split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// True if the process exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Ok(()) => !matches!(proc_state(pid), Some('Z') | Some('X') | None),
        Err(_) => false,
    }
}

/// Reads a pid written by the fixture (`--pidfile`, `--grandchild`), waiting for it to appear.
pub async fn read_pidfile(path: &Path) -> i32 {
    let mut pid = None;
    wait_until(Duration::from_secs(20), &format!("pidfile {} is written", path.display()), || {
        pid = fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<i32>().ok());
        let ok = pid.is_some();
        async move { ok }
    })
    .await;
    pid.unwrap()
}

pub async fn wait_pid_gone(pid: i32, timeout: Duration, what: &str) {
    wait_until(timeout, &format!("pid {pid} ({what}) is gone"), || async move { !pid_alive(pid) }).await;
}

// ---------------------------------------------------------------------------------------------
// Services directory and manifests
// ---------------------------------------------------------------------------------------------

/// A temp directory holding `services/` plus scratch files (pidfiles, locks, ...).
pub struct Workspace {
    pub tmp: TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new().prefix("nanny-test-").tempdir().expect("tempdir");
        fs::create_dir_all(tmp.path().join("services")).unwrap();
        Workspace { tmp }
    }

    pub fn services(&self) -> PathBuf {
        self.tmp.path().join("services")
    }

    /// A scratch path inside the workspace (not inside services/).
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Writes `services/DIR/service.yaml` with the given text; returns the manifest path.
    pub fn write_manifest(&self, dir: &str, yaml: &str) -> PathBuf {
        let d = self.services().join(dir);
        fs::create_dir_all(&d).unwrap();
        let p = d.join("service.yaml");
        fs::write(&p, yaml).unwrap();
        p
    }

    pub fn remove_service_dir(&self, dir: &str) {
        fs::remove_dir_all(self.services().join(dir)).unwrap();
    }

    /// Writes a fixture service; returns the spec back (with its port).
    pub fn add(&self, spec: Svc) -> Svc {
        self.write_manifest(&spec.name, &spec.yaml());
        spec
    }
}

/// A manifest for the python fixture service.
#[derive(Clone, Debug)]
pub struct Svc {
    pub name: String,
    pub port: Option<u16>,
    pub args: Vec<String>,
    pub gpu: bool,
    pub health: bool,
    pub health_timeout: f64,
    pub stop_timeout: f64,
    pub description: String,
    pub extra: String,
}

impl Svc {
    /// A fixture service listening on a fresh free port, health checked at /health.
    pub fn new(name: &str) -> Self {
        Svc {
            name: name.to_string(),
            port: Some(free_port()),
            args: vec![],
            gpu: false,
            health: true,
            health_timeout: 20.0,
            stop_timeout: 5.0,
            description: format!("test service {name}"),
            extra: String::new(),
        }
    }

    /// No port, no health check ("running" once it stayed up 1 s).
    pub fn no_port(mut self) -> Self {
        self.port = None;
        self.health = false;
        self
    }

    pub fn gpu(mut self) -> Self {
        self.gpu = true;
        self
    }

    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.args.push(a.as_ref().to_string_lossy().into_owned());
        self
    }

    pub fn args<I, S>(mut self, it: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        for a in it {
            self = self.arg(a);
        }
        self
    }

    pub fn health_timeout(mut self, s: f64) -> Self {
        self.health_timeout = s;
        self
    }

    pub fn stop_timeout(mut self, s: f64) -> Self {
        self.stop_timeout = s;
        self
    }

    pub fn description(mut self, d: &str) -> Self {
        self.description = d.to_string();
        self
    }

    /// Extra manifest lines (must not repeat keys written by `yaml()`).
    pub fn extra(mut self, lines: &str) -> Self {
        self.extra.push_str(lines);
        if !self.extra.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }

    pub fn command(&self) -> Vec<String> {
        let mut cmd = vec!["python3".to_string(), fixture_script().to_string_lossy().into_owned()];
        if let Some(p) = self.port {
            cmd.push("--port".into());
            cmd.push(p.to_string());
        }
        cmd.extend(self.args.iter().cloned());
        cmd
    }

    pub fn health_url(&self) -> Option<String> {
        match (self.health, self.port) {
            (true, Some(p)) => Some(format!("http://127.0.0.1:{p}/health")),
            _ => None,
        }
    }

    pub fn yaml(&self) -> String {
        let mut y = String::new();
        y.push_str(&format!("name: {}\n", self.name));
        y.push_str(&format!("description: {}\n", self.description));
        y.push_str("version: 1.0.0\n");
        y.push_str(&format!("gpu_required: {}\n", self.gpu));
        if self.gpu {
            y.push_str("vram_gb: 4\n");
        }
        // JSON is valid YAML flow syntax.
        y.push_str(&format!("command: {}\n", serde_json::to_string(&self.command()).unwrap()));
        if let Some(url) = self.health_url() {
            y.push_str(&format!("health_endpoint: {url}\n"));
        }
        y.push_str(&format!("health_timeout: {}\n", self.health_timeout));
        y.push_str(&format!("stop_timeout: {}\n", self.stop_timeout));
        y.push_str(&self.extra);
        y
    }
    /// Writes `DIR/NAME/service.yaml`.
    pub fn write(&self, services_dir: &Path) -> Svc {
        let d = services_dir.join(&self.name);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("service.yaml"), self.yaml()).unwrap();
        self.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------------

/// Spawns `nanny serve --listen 127.0.0.1:0` on `services` and `state_dir` (stderr to
/// `stderr_path`, nanny's own env settings cleared), waits 30 s for its readiness line and
/// returns the child and the URL it listens on. Its stdout is drained for its whole life.
pub fn spawn_serve(
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

pub struct Daemon {
    pub child: Option<Child>,
    pub url: String,
    pub tmp: TempDir,
    pub client: reqwest::Client,
    stderr_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl Daemon {
    /// Spawns `nanny serve` on a random port and waits (30 s) for its readiness line.
    pub fn start(services_dir: &Path) -> Daemon {
        let tmp = tempfile::Builder::new().prefix("nanny-daemon-").tempdir().expect("tempdir");
        let stderr_path = tmp.path().join("daemon.stderr");
        let (child, url) = spawn_serve(services_dir, &tmp.path().join("state"), &[], &[], &stderr_path);
        Daemon {
            child: Some(child),
            url,
            tmp,
            client: reqwest::Client::builder().timeout(Duration::from_secs(90)).no_proxy().build().unwrap(),
            stderr_path,
            exit: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("daemon already reaped").id() as i32
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

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

    pub async fn stop_ok(&self, name: &str) -> Value {
        let (code, v) = self.stop_svc(name).await;
        assert_eq!(code, 200, "stop {name} -> {code} {v}");
        assert_eq!(v["status"], "stopped", "stop {name} body {v}");
        v
    }

    pub async fn status(&self, name: &str) -> Value {
        self.get_ok(&format!("/services/{name}/status")).await
    }

    pub async fn state_of(&self, name: &str) -> String {
        self.status(name).await["status"].as_str().unwrap_or("").to_string()
    }

    pub async fn logs(&self, name: &str, tail: usize) -> Value {
        self.get_ok(&format!("/services/{name}/logs?tail={tail}")).await
    }

    /// All log lines' text for a service (up to 10000).
    pub async fn log_text(&self, name: &str) -> Vec<String> {
        let v = self.logs(name, 10000).await;
        v["lines"]
            .as_array()
            .map(|a| a.iter().map(|l| l["line"].as_str().unwrap_or("").to_string()).collect())
            .unwrap_or_default()
    }

    pub async fn services(&self) -> Value {
        self.get_ok("/services").await
    }

    // ---- process control ----

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).expect("signal daemon");
    }

    /// Waits for the daemon to exit (panics after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.exit {
            return s;
        }
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                self.exit = Some(s);
                return s;
            }
            if Instant::now() >= deadline {
                panic!("daemon did not exit within {timeout:?}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("nanny daemon did not exit 20 s after SIGTERM; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------

pub struct CliOut {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOut {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("CLI stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for CliOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `nanny ARGS` with NANNY_URL set to `url` (if given) and a cleared nanny environment.
pub fn cli(url: Option<&str>, args: &[&str]) -> CliOut {
    cli_in(url, args, None, &[])
}

pub fn cli_in(url: Option<&str>, args: &[&str], cwd: Option<&Path>, env: &[(&str, &str)]) -> CliOut {
    let mut cmd = Command::new(NANNY);
    cmd.args(args)
        .env_remove("NANNY_URL")
        .env_remove("NANNY_TOKEN")
        .env_remove("NANNY_SERVICES_DIR")
        .stdin(Stdio::null());
    if let Some(u) = url {
        cmd.env("NANNY_URL", u);
    }
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out: Output = cmd.output().expect("run nanny CLI");
    CliOut {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Async wrapper so CLI calls don't block a runtime worker.
pub async fn cli_async(url: &str, args: &[&str]) -> CliOut {
    let url = url.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        cli(Some(&url), &a)
    })
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------------------------

/// Copies a directory tree (files and dirs only).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        let dest = to.join(e.file_name());
        if t.is_dir() {
            copy_tree(&e.path(), &dest);
        } else if t.is_file() {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// "H:MM:SS" or "H:MM:SS.ffffff" like Python's str(timedelta).
pub fn is_uptime(s: &str) -> bool {
    let (hms, frac) = match s.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    let digits = |x: &str| !x.is_empty() && x.chars().all(|c| c.is_ascii_digit());
    parts.len() == 3
        && digits(parts[0])
        && parts[1].len() == 2
        && digits(parts[1])
        && parts[2].len() == 2
        && digits(parts[2])
        && frac.is_none_or(digits)
}

/// Loose RFC 3339 check: "YYYY-MM-DDTHH:MM:SS" prefix and a zone suffix.
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b't')
        && b[13] == b':'
        && b[16] == b':'
        && (s.ends_with('Z') || s.ends_with('z') || {
            let tail = &s[s.len() - 6..];
            (tail.starts_with('+') || tail.starts_with('-')) && tail.as_bytes()[3] == b':'
        })
}

/// Names in a JSON array of strings, sorted.
pub fn names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("expected array, got {v}"))
        .iter()
        .map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x["name"].as_str().unwrap_or("").to_string()))
        .collect();
    n.sort();
    n
}
