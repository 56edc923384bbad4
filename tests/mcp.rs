//! The MCP server (issue #17): the tool handlers, resources and notifications driven over
//! `/mcp` against a real daemon, the token and `Host` guard in front of it, and a real
//! third-party client, the Python `mcp` SDK (`tests/mcp/client.py`), over HTTP and over stdio
//! (`nanny mcp`), in the current protocol (2026-07-28) and the handshake one (2025-11-25).
//!
//! The Python client runs from the virtual environment `.ci/run` makes (`NANNY_MCP_PYTHON`, or
//! `target/mcp-venv`); without it these tests are skipped locally and fail in CI (`CI=true`).

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

const TOKEN: &str = "0123456789abcdef-mcp-token";
const LEGACY: &str = "2025-11-25";

/// The bundled examples (on free ports) and `crasher`, which writes two lines to stderr and
/// exits with code 3 under `restart: never`.
fn workspace() -> Workspace {
    let ws = Workspace::new();
    ws.add_examples();
    ws.write_manifest(
        "crasher",
        "name: crasher\ndescription: a model server that runs out of memory\nrestart: never\n\
         command: [sh, -c, 'echo loading weights >&2; echo CUDA out of memory >&2; exit 3']\n",
    );
    ws
}

/// `crasher` started and crashed: `failed`, with exit code 3.
async fn crash(d: &Daemon) {
    let (code, body) = d.start_svc("crasher").await;
    assert_eq!(code, 500, "{body}");
    d.wait_state("crasher", "failed", Duration::from_secs(20)).await;
}

/// A JSON-RPC client of `/mcp` in the handshake protocol (a session, answers as SSE).
struct Mcp {
    http: reqwest::Client,
    url: String,
    token: Option<&'static str>,
    session: Option<String>,
    next_id: u64,
}

impl Mcp {
    async fn connect(d: &Daemon, token: Option<&'static str>) -> Mcp {
        let mut mcp = Mcp { http: http_client(), url: d.u("/mcp"), token, session: None, next_id: 0 };
        let init = json!({
            "protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "nanny-tests", "version": "1"}
        });
        let response = mcp.post(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init})).await;
        assert_eq!(response.status(), 200);
        mcp.session = response.headers().get("mcp-session-id").map(|v| v.to_str().unwrap().to_string());
        assert!(mcp.session.is_some(), "a handshake session has an id");
        let answer = messages(&response.text().await.unwrap()).remove(0);
        assert_eq!(answer["result"]["protocolVersion"], LEGACY, "{answer}");
        assert_eq!(answer["result"]["serverInfo"]["name"], "nanny", "{answer}");
        let r = mcp.post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        assert!(r.status().is_success(), "{}", r.status());
        mcp
    }

    fn request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, &self.url)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", LEGACY);
        if let Some(session) = &self.session {
            request = request.header("mcp-session-id", session);
        }
        match self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn post(&self, message: &Value) -> reqwest::Response {
        let request = self.request(reqwest::Method::POST).header("content-type", "application/json");
        request.body(message.to_string()).send().await.unwrap()
    }

    /// The result of one request (a protocol error fails the test).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let response = self.post(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await;
        let text = response.text().await.unwrap();
        let answer = messages(&text).into_iter().find(|m| m["id"] == id).unwrap_or_else(|| panic!("{text}"));
        assert!(answer["error"].is_null(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// A tool's result: whether it is an error, its text, and its structured content.
    async fn tool(&mut self, name: &str, arguments: Value) -> (bool, String, Value) {
        let result = self.call("tools/call", json!({"name": name, "arguments": arguments})).await;
        let text = result["content"].as_array().unwrap().iter().filter_map(|c| c["text"].as_str()).collect();
        (result["isError"] == true, text, result["structuredContent"].clone())
    }

    async fn ok(&mut self, name: &str, arguments: Value) -> Value {
        let (error, text, structured) = self.tool(name, arguments.clone()).await;
        assert!(!error, "{name}({arguments}) failed: {text}");
        assert!(structured.is_object(), "{name} gives structured output: {text}");
        structured
    }

    async fn failure(&mut self, name: &str, arguments: Value) -> String {
        let (error, text, _) = self.tool(name, arguments.clone()).await;
        assert!(error, "{name}({arguments}) should be a tool error: {text}");
        text
    }
}

/// The JSON-RPC messages in an answer: a JSON body, or the `data:` of Server-Sent Events.
fn messages(body: &str) -> Vec<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        return vec![v];
    }
    body.lines().filter_map(|l| l.strip_prefix("data:")).filter_map(|d| serde_json::from_str(d.trim()).ok()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_drive_the_daemon_and_failures_are_tool_errors() {
    let ws = workspace();
    let d = Daemon::start(&ws.services());
    crash(&d).await;
    let mut mcp = Mcp::connect(&d, None).await;

    let tools = mcp.call("tools/list", json!({})).await;
    assert_eq!(tools["tools"].as_array().unwrap().len(), 10, "{tools}");

    let list = mcp.ok("list_services", json!({"tag": "llm"})).await;
    assert_eq!(names(&list["services"]), ["llm-chat"], "{list}");
    let list = mcp.ok("list_services", json!({"name": "GEN", "gpu": true})).await;
    assert_eq!(names(&list["services"]), ["image-gen"], "{list}");

    let started = mcp.ok("start_service", json!({"name": "llm-chat"})).await;
    assert_eq!(started["status"], "running", "{started}");
    assert_eq!(d.state_of("llm-chat").await, "running", "the daemon did it");
    let busy = mcp.failure("start_service", json!({"name": "image-gen"})).await;
    assert!(busy.contains("GPU service 'llm-chat' is already running") && busy.contains("force=true"), "{busy}");
    let gpu = mcp.ok("gpu_status", json!({"service": "image-gen"})).await;
    assert_eq!(gpu["gpu_service_running"], "llm-chat", "{gpu}");
    assert_eq!(gpu["start"]["would_stop"], "llm-chat", "{gpu}");
    let forced = mcp.ok("start_service", json!({"name": "image-gen", "force": true})).await;
    assert_eq!(forced["preempted"], json!(["llm-chat"]), "{forced}");
    let status = mcp.ok("get_service_status", json!({"name": "image-gen"})).await;
    assert_eq!(status["is_healthy"], true, "{status}");
    let logs = mcp.ok("get_logs", json!({"name": "image-gen", "tail": 5})).await;
    assert!(logs["lines"].to_string().contains("image-gen listening on port"), "{logs}");
    let restarted = mcp.ok("restart_service", json!({"name": "image-gen"})).await;
    assert_eq!(restarted["status"], "running", "{restarted}");
    let events = mcp.ok("recent_events", json!({"service": "llm-chat", "limit": 10})).await;
    assert!(events["events"].to_string().contains("gpu_preempted"), "{events}");

    let unknown = mcp.failure("stop_service", json!({"name": "nope"})).await;
    assert!(unknown.contains("Service 'nope' not found") && unknown.contains("Known services: "), "{unknown}");
    let unknown = mcp.failure("recent_events", json!({"service": "nope"})).await;
    assert!(unknown.contains("not found"), "{unknown}");
    let bad = mcp.failure("get_logs", json!({"name": "image-gen", "tail": 0})).await;
    assert!(bad.contains("`tail` must be from 1 to 10000"), "{bad}");

    let diagnosis = mcp.ok("diagnose_service", json!({"name": "crasher"})).await;
    assert_eq!(diagnosis["last_exit"]["code"], 3, "{diagnosis}");
    assert_eq!(diagnosis["restart_policy"]["restart"], "never", "{diagnosis}");
    let summary = diagnosis["summary"].as_str().unwrap();
    assert!(
        summary.contains("exited with code 3") && summary.ends_with("Last log line: CUDA out of memory"),
        "{summary}"
    );

    // A manifest broken on disk shows in the diagnosis, and rediscover reports it.
    fs::write(ws.services().join("embeddings/service.yaml"), "name: embeddings\ncommand: [python3]\nport: -1\n")
        .unwrap();
    let report = mcp.ok("rediscover", json!({})).await;
    assert!(report["invalid"].to_string().contains("embeddings"), "{report}");
    let diagnosis = mcp.ok("diagnose_service", json!({"name": "embeddings"})).await;
    assert!(diagnosis["invalid_manifest"].to_string().contains("port"), "{diagnosis}");

    let stopped = mcp.ok("stop_service", json!({"name": "image-gen"})).await;
    assert_eq!(stopped["status"], "stopped", "{stopped}");
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribers_are_told_when_a_service_changes_state() {
    let ws = workspace();
    let d = Daemon::start(&ws.services());
    let mut mcp = Mcp::connect(&d, None).await;
    let stream = mcp.request(reqwest::Method::GET).header("accept", "text/event-stream").send().await.unwrap();
    assert_eq!(stream.status(), 200, "the session's notification stream");
    mcp.call("resources/subscribe", json!({"uri": "service://embeddings"})).await;
    mcp.ok("start_service", json!({"name": "embeddings"})).await;

    let mut body = stream.bytes_stream();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains("notifications/resources/updated") || !seen.contains("service://embeddings") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, body.next()).await {
            Ok(Some(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
            _ => panic!("no update of service://embeddings within 20 s; the stream had:\n{seen}"),
        }
    }
    let content = mcp.call("resources/read", json!({"uri": "service://embeddings"})).await;
    let detail: Value = serde_json::from_str(content["contents"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(detail["status"], "running", "{detail}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_and_host_guard_protect_mcp() {
    let ws = workspace();
    let cors = ["--cors-origin", "https://dash.example"];
    let d = Daemon::start_with(&ws.services(), &ws.path("state"), &cors, &[("NANNY_TOKEN", TOKEN)]);
    // A page of an allowed origin may use MCP's own headers.
    let preflight = d.client.request(reqwest::Method::OPTIONS, d.u("/mcp")).header("origin", "https://dash.example");
    let preflight = preflight.header("access-control-request-method", "POST");
    let preflight =
        preflight.header("access-control-request-headers", "authorization,mcp-session-id,mcp-protocol-version");
    let allowed = preflight.send().await.unwrap();
    assert_eq!(allowed.status(), 200);
    let headers = allowed.headers()["access-control-allow-headers"].to_str().unwrap().to_string();
    assert!(headers.contains("mcp-session-id") && headers.contains("mcp-protocol-version"), "{headers}");
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}});
    let post = |token: Option<&str>, host: Option<&str>| {
        let mut r = d.client.post(d.u("/mcp")).header("accept", "application/json, text/event-stream");
        if let Some(token) = token {
            r = r.bearer_auth(token);
        }
        if let Some(host) = host {
            r = r.header("host", host);
        }
        r.json(&init).send()
    };
    assert_eq!(post(None, None).await.unwrap().status(), 401);
    assert_eq!(post(Some("0123456789abcdef-wrong-token"), None).await.unwrap().status(), 401);
    assert_eq!(post(Some(TOKEN), Some("evil.example")).await.unwrap().status(), 403, "DNS rebinding");
    let huge = json!({"jsonrpc": "2.0", "id": 0, "method": "ping", "params": {"pad": "x".repeat(70_000)}});
    let request = d.client.post(d.u("/mcp")).header("accept", "application/json, text/event-stream");
    assert_eq!(request.bearer_auth(TOKEN).json(&huge).send().await.unwrap().status(), 413, "64 KiB at most");
    let mut mcp = Mcp::connect(&d, Some(TOKEN)).await;
    let list = mcp.ok("list_services", json!({})).await;
    assert_eq!(list["total"], 4, "{list}");
}

/// `nanny mcp --url URL` with `env`: each line written is a JSON-RPC message; `answer` reads
/// the next line of stdout (10 s at most), which must be JSON.
struct Bridge {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Bridge {
    fn start(url: &str, env: &[(&str, &str)]) -> Bridge {
        let mut child = Command::new(NANNY)
            .args(["mcp", "--url", url])
            .env_remove("NANNY_TOKEN")
            .env_remove("NANNY_TOKEN_FILE")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Bridge { child, lines }
    }

    fn send(&mut self, message: Value) {
        let stdin = self.child.stdin.as_mut().unwrap();
        std::io::Write::write_all(stdin, format!("{message}\n").as_bytes()).unwrap();
    }

    fn answer(&self) -> Value {
        let line = self.lines.recv_timeout(Duration::from_secs(10)).expect("an answer on stdout within 10 s");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout carries only protocol, got {line:?}: {e}"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stdio_bridge_carries_the_session_and_the_token_and_ends_with_stdin() {
    let ws = workspace();
    let d = Daemon::start_with(&ws.services(), &ws.path("state"), &[], &[("NANNY_TOKEN", TOKEN)]);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    tokio::task::spawn_blocking(move || {
        let mut without = Bridge::start(&d.url, &[]);
        without.send(init.clone());
        let refused = without.answer();
        assert_eq!(refused["id"], 1, "{refused}");
        assert!(refused["error"]["message"].as_str().unwrap().contains("401"), "{refused}");

        let mut bridge = Bridge::start(&d.url, &[("NANNY_TOKEN", TOKEN)]);
        bridge.send(init);
        assert_eq!(bridge.answer()["result"]["protocolVersion"], LEGACY);
        bridge.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        let call = json!({"name": "get_service_status", "arguments": {"name": "embeddings"}});
        bridge.send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call}));
        let status = bridge.answer();
        assert_eq!(status["id"], 2, "{status}");
        assert_eq!(status["result"]["structuredContent"]["status"], "stopped", "{status}");

        // The session's notifications come through the bridge's GET stream.
        bridge.send(json!({"jsonrpc": "2.0", "id": 3, "method": "resources/subscribe",
                           "params": {"uri": "service://embeddings"}}));
        assert_eq!(bridge.answer()["id"], 3);
        let start = json!({"name": "start_service", "arguments": {"name": "embeddings"}});
        bridge.send(json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": start}));
        let mut seen = Vec::new();
        while !seen.iter().any(|m: &Value| m["params"]["uri"] == "service://embeddings") {
            let message = bridge.answer();
            assert!(message["id"].is_null() || message["id"] == 4, "{message}");
            seen.push(message);
        }
        let updated = seen.iter().find(|m| m["params"]["uri"] == "service://embeddings").unwrap();
        assert_eq!(updated["method"], "notifications/resources/updated", "{updated}");
        drop(bridge.child.stdin.take());
        wait_until_sync(Duration::from_secs(10), "nanny mcp exits once stdin closes", || {
            bridge.child.try_wait().unwrap().is_some_and(|s| s.success())
        });
    })
    .await
    .unwrap();
}

/// `nanny serve --listen 0.0.0.0:0 ARGS` with a token (the harness listens on loopback only);
/// killed when dropped.
struct Exposed {
    child: std::process::Child,
    port: u16,
}

impl Exposed {
    fn start(ws: &Workspace, args: &[&str]) -> Exposed {
        let mut child = Command::new(NANNY)
            .args(["serve", "--listen", "0.0.0.0:0", "--services"])
            .arg(ws.services())
            .arg("--state-dir")
            .arg(ws.path(&format!("state-{}", args.len())))
            .args(args)
            .env("NANNY_TOKEN", TOKEN)
            .env_remove("NANNY_MCP_ALLOWED_HOSTS")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        let port = line.trim().rsplit(':').next().and_then(|p| p.parse().ok());
        let port = port.unwrap_or_else(|| panic!("readiness line {line:?}"));
        Exposed { child, port }
    }

    /// The status of an `initialize` POSTed to `/mcp` for `host`, with the token.
    async fn initialize_for(&self, host: &str) -> u16 {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
        let request = http_client().post(format!("http://127.0.0.1:{}/mcp", self.port));
        let request = request.header("accept", "application/json, text/event-stream").header("host", host);
        request.bearer_auth(TOKEN).json(&init).send().await.unwrap().status().as_u16()
    }
}

impl Drop for Exposed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_loopback_mcp_answers_the_lan_name_or_only_the_allowed_hosts() {
    let ws = Workspace::new();
    let open = Exposed::start(&ws, &[]);
    assert_eq!(open.initialize_for("nanny-box.lan:8080").await, 200, "reached by its LAN name, with the token");
    let narrow = Exposed::start(&ws, &["--mcp-allowed-host", "proxy.example"]);
    assert_eq!(narrow.initialize_for("proxy.example").await, 200);
    assert_eq!(narrow.initialize_for("nanny-box.lan").await, 403, "not an allowed host");
}

/// The Python interpreter of the `mcp` virtual environment, or `None` (skipped) locally.
fn python(test: &str) -> Option<PathBuf> {
    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/mcp-venv/bin/python");
    let python = std::env::var_os("NANNY_MCP_PYTHON").map(PathBuf::from).unwrap_or(default);
    let works = Command::new(&python).args(["-c", "import mcp"]).output().is_ok_and(|o| o.status.success());
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    match (works, in_ci) {
        (true, _) => Some(python),
        (false, true) => panic!("{test}: no Python with the `mcp` package at {} (CI=true)", python.display()),
        (false, false) => {
            eprintln!("SKIPPED {test}: no Python with `mcp` at {} (run .ci/run's venv step)", python.display());
            None
        }
    }
}

/// Runs `client.py ARGS` for each mode and asserts it passed every check.
fn run_client(python: &PathBuf, args: &[String]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py");
    for mode in ["auto", "legacy"] {
        let out = Command::new(python).arg(&script).args(args).arg(mode).env_remove("NANNY_TOKEN").output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "client.py {args:?} {mode} failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains(&format!("ok {mode}: ")), "{stdout}\n{stderr}");
    }
}

/// `client.py` over `transport` (`http`, or `stdio` through `nanny mcp`), against a daemon
/// whose `crasher` has crashed.
async fn python_sdk(test: &str, transport: &str) {
    let Some(python) = python(test) else { return };
    let ws = workspace();
    let d = Daemon::start(&ws.services());
    crash(&d).await;
    let mut args = vec![transport.to_string()];
    if transport == "stdio" {
        args.push(NANNY.to_string());
    }
    args.push(d.url.clone());
    tokio::task::spawn_blocking(move || run_client(&python, &args)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_over_http() {
    python_sdk("the_python_sdk_over_http", "http").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_over_stdio() {
    python_sdk("the_python_sdk_over_stdio", "stdio").await;
}
