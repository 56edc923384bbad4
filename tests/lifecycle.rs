//! Start / stop / restart / status / logs of native services, failed starts, automatic
//! restarts and the error responses of the lifecycle endpoints.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn find_line<'a>(logs: &'a Value, needle: &str) -> Option<&'a Value> {
    logs["lines"].as_array()?.iter().find(|l| l["line"].as_str().is_some_and(|s| s.contains(needle)))
}

#[tokio::test(flavor = "multi_thread")]
async fn start_status_logs_stop() {
    let ws = Workspace::new();
    let pidfile = ws.path("web.pid");
    let svc = ws.add(Svc::new("web").arg("--pidfile").arg(&pidfile));
    let d = Daemon::start(&ws.services());

    let st = d.status("web").await;
    assert_eq!(st["name"], "web");
    assert_eq!(st["status"], "stopped", "{st}");
    assert_eq!(st["is_running"], false, "{st}");
    assert!(st["uptime"].is_null(), "{st}");
    assert!(st["pid"].is_null(), "{st}");

    // Start returns only once the service is healthy.
    let v = d.start_ok("web").await;
    assert_eq!(v["message"], "Service 'web' started successfully", "{v}");
    assert_eq!(v["health_endpoint"], svc.health_url().unwrap().as_str(), "{v}");
    let direct = http_client().get(svc.health_url().unwrap()).send().await.expect("service answers /health");
    assert_eq!(direct.status().as_u16(), 200);

    let pid = read_pidfile(&pidfile).await;
    let st = d.status("web").await;
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(st["is_running"], true, "{st}");
    assert_eq!(st["is_healthy"], true, "{st}");
    assert_eq!(st["pid"], pid, "status pid is the service's process: {st}");
    assert_eq!(st["restarts"], 0, "{st}");
    let uptime = st["uptime"].as_str().unwrap_or_else(|| panic!("uptime should be a string: {st}"));
    assert!(is_uptime(uptime), "uptime {uptime:?} should look like 0:05:23.123456");
    let lh = &st["last_health"];
    assert_eq!(lh["ok"], true, "{st}");
    assert_eq!(lh["http_code"], 200, "{st}");
    assert!(lh["at"].as_str().is_some_and(is_rfc3339), "{st}");
    assert!(lh["latency_ms"].is_number(), "{st}");

    let list = d.services().await;
    assert_eq!(list["services"][0]["status"], "running", "{list}");

    // Starting again is a no-op.
    let v = d.start_ok("web").await;
    assert_eq!(v["status"], "running");
    assert_eq!(d.status("web").await["pid"], pid, "second start must not spawn a new process");

    // Logs: stdout and stderr lines, timestamped, in order.
    wait_until(Duration::from_secs(10), "both startup lines are in the logs", || async {
        let l = d.logs("web", 100).await;
        find_line(&l, "svc starting").is_some() && find_line(&l, "svc stderr marker").is_some()
    })
    .await;
    let l = d.logs("web", 100).await;
    assert_eq!(l["service"], "web", "{l}");
    let out = find_line(&l, "svc starting").unwrap();
    assert_eq!(out["stream"], "stdout", "{out}");
    assert!(out["ts"].as_str().is_some_and(is_rfc3339), "{out}");
    let err = find_line(&l, "svc stderr marker").unwrap();
    assert_eq!(err["stream"], "stderr", "{err}");
    let lines = l["lines"].as_array().unwrap();
    assert!(l.get("logs").is_none(), "each line comes once, under `lines`: {l}");
    for x in lines {
        let s = x["stream"].as_str().unwrap();
        assert!(["stdout", "stderr", "nanny"].contains(&s), "stream {s}");
    }
    let one = d.logs("web", 1).await;
    assert_eq!(one["lines"].as_array().unwrap().len(), 1, "{one}");
    let newest = &one["lines"][0];
    assert!(newest == lines.last().unwrap() || !lines.contains(newest), "tail=1 is the newest line: {one}");
    let dflt = d.get_ok("/services/web/logs").await;
    assert!(dflt["lines"].as_array().unwrap().len() <= 100);

    // Stop: process gone when the call returns, idempotent.
    let v = d.stop_ok("web").await;
    assert_eq!(v["message"], "Service 'web' stopped successfully", "{v}");
    assert!(!pid_alive(pid), "service process {pid} still alive after stop returned");
    let st = d.status("web").await;
    assert_eq!(st["status"], "stopped", "{st}");
    assert_eq!(st["is_running"], false, "{st}");
    assert_eq!(st["is_healthy"], false, "{st}");
    assert!(st["pid"].is_null(), "{st}");
    assert!(st["uptime"].is_null(), "{st}");
    d.stop_ok("web").await;
    assert_eq!(d.services().await["services"][0]["status"], "stopped");

    // Logs survive the stop.
    let l = d.logs("web", 100).await;
    assert!(find_line(&l, "svc starting").is_some(), "{l}");
}

#[tokio::test(flavor = "multi_thread")]
async fn start_without_health_check_and_restart() {
    let ws = Workspace::new();
    let pidfile = ws.path("quiet.pid");
    ws.add(Svc::new("quiet").no_port().arg("--pidfile").arg(&pidfile));
    let d = Daemon::start(&ws.services());

    let t0 = Instant::now();
    let v = d.start_ok("quiet").await;
    assert!(v["health_endpoint"].is_null(), "{v}");
    assert!(t0.elapsed() >= Duration::from_millis(900), "no check: running after staying up 1 s");
    let pid = read_pidfile(&pidfile).await;
    assert!(pid_alive(pid));
    let st = d.status("quiet").await;
    assert_eq!(st["is_running"], true, "{st}");

    let (code, v) = d.post("/services/quiet/restart", None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "running", "{v}");
    assert!(!pid_alive(pid), "old process must be gone after restart");
    let new_pid = pid_of(&d.status("quiet").await);
    assert_ne!(new_pid, pid);
    assert!(pid_alive(new_pid));

    // Restart of a stopped service starts it.
    d.stop_ok("quiet").await;
    assert!(!pid_alive(new_pid));
    let (code, v) = d.post("/services/quiet/restart", None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(d.state_of("quiet").await, "running");
    d.stop_ok("quiet").await;
}

/// `ready: notify` (systemd's readiness protocol): the service gets a `NOTIFY_SOCKET` of its
/// own and stays `starting` ("waiting for READY=1") until a process of its group sends
/// `READY=1` there; then it is `running` at once (no 1 s settle time). `READY=1` from any other
/// live process does not count; `STATUS=` lines go to the service's log.
#[tokio::test(flavor = "multi_thread")]
async fn a_notify_service_runs_once_its_own_process_group_says_ready() {
    let ws = Workspace::new();
    let (pidfile, ready_file) = (ws.path("notified.pid"), ws.path("ready"));
    ws.add(
        Svc::new("notified")
            .no_port()
            .arg("--pidfile")
            .arg(&pidfile)
            .arg("--notify-file")
            .arg(&ready_file)
            .extra("ready: notify\n"),
    );
    let d = Daemon::start(&ws.services());
    let url = d.u("/services/notified/start");
    let start = tokio::spawn(async move {
        let answer = http_client().post(url).send().await.expect("the start answers");
        (answer.status().as_u16(), answer.json::<Value>().await.unwrap())
    });
    let st = d
        .wait_status("notified", Duration::from_secs(30), "waiting for READY=1", |st| {
            st["stage"] == "waiting for READY=1"
        })
        .await;
    assert_eq!(st["status"], "starting", "{st}");

    // Another process (this test) says READY=1 on the service's socket: not taken.
    let pid = read_pidfile(&pidfile).await;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let socket = environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(b"NOTIFY_SOCKET="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .expect("the service has a NOTIFY_SOCKET");
    let name = socket.strip_prefix('@').expect("an abstract socket");
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name).unwrap();
    let stranger = std::os::unix::net::UnixDatagram::unbound().unwrap();
    stranger.send_to_addr(b"READY=1", &addr).unwrap();

    // The service itself says it (after a STATUS= line): running.
    std::fs::write(&ready_file, "").unwrap();
    let (code, answer) = start.await.unwrap();
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["status"], "running", "{answer}");
    let lines = d.log_text("notified").await;
    let at =
        |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle}: {lines:?}"));
    // The stranger's datagram was read first; had it counted, READY=1 would precede the status.
    assert!(at("status: warmed up") < at("READY=1 received"), "{lines:?}");
    d.stop_ok("notified").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn start_fails_with_500_and_logs_when_process_exits() {
    let ws = Workspace::new();
    ws.add(Svc::new("crash").arg("--exit-after").arg("0").arg("7"));
    let d = Daemon::start(&ws.services());

    let t0 = Instant::now();
    let (code, v) = d.start_svc("crash").await;
    assert_eq!(code, 500, "{v}");
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "the exit must be noticed when it happens, not at health_timeout (took {:?})",
        t0.elapsed()
    );
    assert!(v["detail"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    let logs = v["logs"].as_array().unwrap_or_else(|| panic!("500 body must carry logs: {v}"));
    let text: Vec<&str> = logs.iter().map(|x| x.as_str().expect("logs are strings")).collect();
    assert!(
        text.iter().any(|l| l.contains("svc exiting with code 7") || l.contains("svc stderr: exiting")),
        "logs should show why it died: {text:?}"
    );

    // The failed start follows the restart policy (on-failure by default), and says so.
    assert!(v["next"].as_str().is_some_and(|n| n.starts_with("restarting in")), "{v}");
    let st = d.status("crash").await;
    assert!(st["status"] == "backoff" || st["status"] == "starting", "{st}");
    assert_eq!(st["is_running"], false, "{st}");
    assert_eq!(st["last_exit"]["code"], 7, "{st}");
    assert!(st["last_exit"]["at"].as_str().is_some_and(is_rfc3339), "{st}");
}

#[tokio::test(flavor = "multi_thread")]
async fn start_times_out_with_504_and_kills_the_process() {
    let ws = Workspace::new();
    let pidfile = ws.path("slow.pid");
    ws.add(
        Svc::new("slow")
            .arg("--health-after")
            .arg("1000")
            .arg("--pidfile")
            .arg(&pidfile)
            .health_timeout(3.0)
            .stop_timeout(2.0)
            .extra("restart: never\n"),
    );
    let d = Daemon::start(&ws.services());

    let t0 = Instant::now();
    let (code, v) = d.start_svc("slow").await;
    let took = t0.elapsed();
    assert_eq!(code, 504, "{v}");
    assert!(v["detail"].is_string(), "{v}");
    assert!(took >= Duration::from_millis(2500), "gave up before health_timeout: {took:?}");
    assert!(took < Duration::from_secs(20), "took far longer than health_timeout: {took:?}");
    let pid = read_pidfile(&pidfile).await;
    wait_pid_gone(pid, Duration::from_secs(3), "service that never became healthy").await;

    let st = d.status("slow").await;
    assert_eq!(st["is_running"], false, "{st}");
    assert!(st["pid"].is_null(), "{st}");
    assert_eq!(st["status"], "failed", "restart: never leaves a timed-out start failed: {st}");
    assert!(v["next"].is_null(), "nothing happens next under restart: never: {v}");
    assert_eq!(st["last_health"]["ok"], false, "{st}");
    assert_eq!(st["last_health"]["http_code"], 503, "{st}");
}

#[tokio::test(flavor = "multi_thread")]
async fn crashed_service_is_restarted_by_policy() {
    let ws = Workspace::new();
    let pidfile = ws.path("flaky.pid");
    ws.add(
        Svc::new("flaky")
            .arg("--exit-after")
            .arg("3")
            .arg("1")
            .arg("--pidfile")
            .arg(&pidfile)
            .extra("restart_delay: 0.2\n"),
    );
    let d = Daemon::start(&ws.services());
    d.start_ok("flaky").await;
    let first = read_pidfile(&pidfile).await;

    d.wait_status("flaky", Duration::from_secs(30), "restarted after exiting with 1", |st| {
        st["restarts"].as_i64().unwrap_or(0) >= 1
            && st["status"] == "running"
            && st["pid"].as_i64().is_some_and(|p| p as i32 != first)
    })
    .await;
    assert!(!pid_alive(first));
    let st = d.status("flaky").await;
    assert_eq!(st["last_exit"]["code"], 1, "{st}");
    assert!(st["last_exit"]["signal"].is_null(), "{st}");
    d.stop_ok("flaky").await;
    let st = d.status("flaky").await;
    assert_eq!(st["status"], "stopped", "an explicit stop is not restarted: {st}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_is_noticed_and_not_restarted_with_restart_never() {
    let ws = Workspace::new();
    let pidfile = ws.path("once.pid");
    ws.add(
        Svc::new("once").arg("--exit-after").arg("2").arg("1").arg("--pidfile").arg(&pidfile).extra("restart: never\n"),
    );
    let d = Daemon::start(&ws.services());
    d.start_ok("once").await;
    let pid = read_pidfile(&pidfile).await;
    d.wait_status("once", Duration::from_secs(15), "its exit is noticed", |st| st["is_running"] == false).await;
    assert!(!pid_alive(pid));
    let st = d.status("once").await;
    assert!(["stopped", "failed"].contains(&st["status"].as_str().unwrap()), "{st}");
    assert_eq!(st["restarts"], 0, "{st}");
    assert_eq!(st["last_exit"]["code"], 1, "{st}");
    assert!(st["pid"].is_null(), "{st}");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_service_reports_signal() {
    let ws = Workspace::new();
    let pidfile = ws.path("victim.pid");
    ws.add(Svc::new("victim").arg("--pidfile").arg(&pidfile).extra("restart: never\n"));
    let d = Daemon::start(&ws.services());
    d.start_ok("victim").await;
    let pid = read_pidfile(&pidfile).await;
    sigkill(pid);
    d.wait_status("victim", Duration::from_secs(10), "its kill is noticed", |st| st["is_running"] == false).await;
    let st = d.status("victim").await;
    assert!(st["last_exit"]["code"].is_null(), "{st}");
    let sig = st["last_exit"]["signal"].as_str().unwrap_or_else(|| panic!("signal name expected: {st}"));
    assert!(sig.contains("KILL"), "{st}");
}

#[tokio::test(flavor = "multi_thread")]
async fn error_responses() {
    let ws = Workspace::new();
    ws.add(Svc::new("ok"));
    let d = Daemon::start(&ws.services());

    // Unknown service: 404 with a detail on every endpoint.
    for (method, path) in [
        ("GET", "/services/nope"),
        ("GET", "/services/nope/status"),
        ("GET", "/services/nope/logs"),
        ("POST", "/services/nope/start"),
        ("POST", "/services/nope/stop"),
        ("POST", "/services/nope/restart"),
    ] {
        let (code, v) = if method == "GET" { d.get(path).await } else { d.post(path, None).await };
        assert_eq!(code, 404, "{method} {path}: {v}");
        assert!(v["detail"].as_str().is_some_and(|s| s.contains("nope")), "{method} {path}: {v}");
    }

    // `tail` is validated.
    for bad in ["0", "-1", "10001", "abc"] {
        let (code, v) = d.get(&format!("/services/ok/logs?tail={bad}")).await;
        assert_eq!(code, 400, "tail={bad}: {v}");
        assert!(v["detail"].as_str().is_some_and(|s| s.contains("tail")), "tail={bad}: {v}");
    }
    for good in ["1", "10000"] {
        let (code, v) = d.get(&format!("/services/ok/logs?tail={good}")).await;
        assert_eq!(code, 200, "tail={good}: {v}");
    }

    // Invalid JSON bodies are 422 and start nothing.
    let (code, v) = d.post_raw("/services/ok/start", "{not json", Some("application/json")).await;
    assert_eq!(code, 422, "{v}");
    assert!(v["detail"].is_string(), "{v}");
    let (code, v) = d.post_raw("/services/ok/start", r#"{"force": "yes"}"#, Some("application/json")).await;
    assert_eq!(code, 422, "{v}");
    assert_eq!(d.state_of("ok").await, "stopped");

    // Empty body and `{}` and `{"force": false}` are fine, whatever the content type.
    let (code, v) = d.post_raw("/services/ok/start", "", Some("application/json")).await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = d.post("/services/ok/start", Some(json!({}))).await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = d.post_raw("/services/ok/start", r#"{"force": false}"#, None).await;
    assert_eq!(code, 200, "{v}");
    d.stop_ok("ok").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn service_manager_status_shape() {
    let ws = Workspace::new();
    ws.add(Svc::new("up").description("The Up Service"));
    ws.add(Svc::new("down"));
    let d = Daemon::start(&ws.services());
    d.start_ok("up").await;

    let v = d.get_ok("/api/services/status").await;
    assert!(v["timestamp"].as_str().is_some_and(is_rfc3339), "{v}");
    let arr = v["services"].as_array().unwrap();
    assert_eq!(arr.len(), 2, "{v}");
    let up = arr.iter().find(|s| s["id"] == "up").unwrap_or_else(|| panic!("{v}"));
    assert_eq!(up["name"], "The Up Service", "{v}");
    assert_eq!(up["status"], "online", "{v}");
    assert_eq!(up["statusCode"], 200, "{v}");
    let down = arr.iter().find(|s| s["id"] == "down").unwrap_or_else(|| panic!("{v}"));
    assert_eq!(down["status"], "offline", "{v}");
    assert!(down["statusCode"].is_null(), "never checked: {v}");
    d.stop_ok("up").await;
    let v = d.get_ok("/api/services/status").await;
    let up = v["services"].as_array().unwrap().iter().find(|s| s["id"] == "up").cloned().unwrap();
    assert_eq!(up["status"], "offline", "{v}");
}
