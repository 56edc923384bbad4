//! Answers that say what happened (issue 16, "wrong answers"): a port collision is refused
//! with who holds the port, an early death after a passing check is a failed start, an
//! invalid manifest is named as such, `ls`/`show` describe the running instance with the
//! change on disk beside it, exits nanny caused are never "unexpected", start/stop/restart/
//! remove messages say what was done (a forced start that lost a race says why), a restart
//! waits for a taken port, and a failed start shows only its own log lines.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

/// A fixture service on the port of `other` (same command line, health endpoint and `port`).
fn on_port_of(name: &str, other: &Svc) -> Svc {
    let port = other.port.expect("a port");
    Svc { port: Some(port), ..Svc::new(name) }.extra(&format!("port: {port}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_in_use_refuses_the_start_and_names_its_holder() {
    let ws = Workspace::new();
    let alpha = ws.add(Svc::new("alpha").extra("restart: never"));
    ws.add(on_port_of("beta", &alpha).extra("restart: never"));
    let d = Daemon::start(&ws.services());
    d.start_ok("alpha").await;
    let alpha_pid = pid_of(&d.status("alpha").await);

    let (code, v) = d.start_svc("beta").await;
    let port = alpha.port.unwrap();
    assert_eq!(code, 409, "{v}");
    let holder = format!("pid {alpha_pid} (service 'alpha')");
    assert_eq!(v["detail"], format!("cannot start service 'beta': port {port} is already in use by {holder}"));
    assert_eq!(v["port"], port, "{v}");
    assert_eq!(d.state_of("beta").await, "stopped");
    let kinds: Vec<String> =
        d.events_of("beta").await.iter().map(|e| e["kind"].as_str().unwrap().to_string()).collect();
    assert!(!kinds.contains(&"starting".to_string()), "nothing was launched: {kinds:?}");

    // The CLI reports it as a conflict.
    let out = cli(Some(&d.url), &["start", "beta"]);
    assert_eq!(out.code, 5, "{out}");
    assert!(out.stderr.contains(&holder), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_waits_for_its_port_and_names_the_holder() {
    let ws = Workspace::new();
    let exit = ws.path("exit");
    let svc = ws.add(Svc::new("gamma").arg("--exit-file").arg(&exit).extra("restart: always\nrestart_delay: 1"));
    let port = svc.port.unwrap();
    let d = Daemon::start(&ws.services());
    d.start_ok("gamma").await;
    let after = d.last_event_id().await;

    // It crashes, and while it waits out its restart delay something else takes its port.
    touch(&exit);
    let mut taken = None;
    wait_until_sync(T, "the port is free to take", || {
        taken = std::net::TcpListener::bind(("127.0.0.1", port)).ok();
        taken.is_some()
    });
    let holder = format!("port {port} (in use by pid {})", std::process::id());
    let waiting = d.wait_event("gamma", "waiting", after, T, |_| true).await;
    assert!(waiting["message"].as_str().unwrap().contains(&holder), "{waiting}");
    let st = d.status("gamma").await;
    assert_eq!(st["status"], "backoff", "{st}");
    assert!(st["next"].as_str().unwrap().contains(&holder), "{st}");

    // Once the port is free, it starts again.
    drop(taken);
    d.wait_state("gamma", "running", T).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_that_dies_right_after_its_check_passed_is_a_failed_start() {
    let ws = Workspace::new();
    // The check passes at once (as another process's answer would); the process dies 50 ms in.
    ws.write_manifest(
        "early",
        "name: early\ncommand: [sh, -c, 'sleep 0.05; exit 3']\nhealth_command: ['true']\nrestart: never\n",
    );
    let d = Daemon::start(&ws.services());
    let (code, v) = d.start_svc("early").await;
    assert_eq!(code, 500, "{v}");
    assert_eq!(v["exit"]["code"], 3, "{v}");
    assert_eq!(d.state_of("early").await, "failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn acting_on_a_service_with_an_invalid_manifest_says_so() {
    let ws = Workspace::new();
    ws.write_manifest("broken", "name: broken\ncommand: [python3]\nhealth_timeout: soon\n");
    // Found by its `name:` too, when the directory is called something else.
    ws.write_manifest("some-dir", "name: renamed\ncommand: [python3]\nrestart: sometimes\n");
    let d = Daemon::start(&ws.services());

    for (method, path) in [
        ("POST", "/services/broken/start"),
        ("POST", "/services/broken/stop"),
        ("POST", "/services/broken/restart"),
        ("POST", "/services/broken/remove"),
        ("GET", "/services/broken/status"),
        ("GET", "/services/broken"),
        ("GET", "/services/broken/logs"),
        ("GET", "/services/renamed/status"),
    ] {
        let (code, v) = match method {
            "GET" => d.get(path).await,
            _ => d.post(path, None).await,
        };
        assert_eq!(code, 422, "{method} {path}: {v}");
        assert!(v["detail"].as_str().unwrap().contains("has an invalid manifest"), "{method} {path}: {v}");
        let errors = v["errors"].as_array().unwrap_or_else(|| panic!("{method} {path}: no errors: {v}"));
        assert!(
            !errors.is_empty() && errors.iter().all(|e| e["text"].as_str().unwrap().contains("service.yaml:")),
            "{v}"
        );
    }

    let out = cli(Some(&d.url), &["status", "broken"]);
    assert_eq!(out.code, 6, "{out}");
    assert!(out.stderr.contains("health_timeout"), "the error names the field: {out}");
    let (code, _) = d.get("/services/nothing-here/status").await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_an_edit_ls_and_show_describe_the_running_instance_and_the_pending_change() {
    let ws = Workspace::new();
    let with_port = |svc: Svc| {
        let port = svc.port.unwrap();
        (ws.add(svc.extra(&format!("port: {port}"))), port)
    };
    let (old, old_port) = with_port(Svc::new("edited"));
    let d = Daemon::start(&ws.services());
    d.start_ok("edited").await;

    let (new, new_port) = with_port(Svc::new("edited"));
    let report = d.post("/rediscover", None).await.1;
    assert_eq!(report["changed"][0]["name"], "edited", "{report}");

    let list = d.services().await;
    let row = &list["services"][0];
    assert_eq!(row["port"], old_port, "ls shows what runs: {row}");
    assert_eq!(row["health_endpoint"], old.health_url().unwrap());
    assert_eq!(row["pending_change"], true, "{row}");

    let show = d.get_ok("/services/edited").await;
    assert_eq!(show["port"], old_port, "{show}");
    assert_eq!(show["pending"]["port"], json!({"old": old_port, "new": new_port}), "{show}");
    assert_eq!(show["pending"]["health_endpoint"]["new"], new.health_url().unwrap(), "{show}");
    assert!(show["pending"].get("name").is_none(), "only the fields that differ: {show}");
    assert_eq!(d.status("edited").await["restart_pending"], true);

    // A restart applies it: nothing is pending any more (the list kept from before is not
    // answered again: the daemon keeps its JSON only while nothing in it changes).
    let (code, v) = d.post("/services/edited/restart", None).await;
    assert_eq!(code, 200, "{v}");
    let row = &d.services().await["services"][0];
    assert_eq!((row["port"].clone(), row["pending_change"].clone()), (json!(new_port), json!(false)), "{row}");
    assert_eq!(d.get_ok("/services/edited").await["pending"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exit_nanny_caused_is_expected_and_says_why() {
    let ws = Workspace::new();
    // Never healthy: stopped by nanny after its health_timeout.
    ws.add(Svc::new("slow").arg("--health-after").arg("60").health_timeout(0.5).extra("restart: never"));
    let d = Daemon::start(&ws.services());
    let (code, v) = d.start_svc("slow").await;
    assert_eq!(code, 504, "{v}");
    let exited = d.wait_event("slow", "exited", 0, T, |_| true).await;
    assert_eq!(exited["expected"], true, "{exited}");
    let message = exited["message"].as_str().unwrap();
    assert!(!message.contains("unexpectedly"), "{message}");
    assert!(message.contains("stopped by nanny: no health check passed within health_timeout 0.5 s"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn start_stop_restart_and_remove_say_what_they_did() {
    let ws = Workspace::new();
    ws.add(Svc::new("base"));
    ws.add(Svc::new("top").extra("depends_on: [base]"));
    ws.add(Svc::new("stubborn").arg("--ignore-term").stop_timeout(0.5));
    ws.add(Svc::new("quiet").no_port());
    let d = Daemon::start(&ws.services());

    let v = d.start_ok("top").await;
    assert_eq!(v["also_started"], json!(["base"]), "{v}");
    assert_eq!(v["message"], "Service 'top' started successfully");
    let v = d.start_ok("top").await;
    assert_eq!(
        (v["message"].as_str(), v["started"].as_bool()),
        (Some("Service 'top' is already running"), Some(false))
    );
    assert_eq!(v["also_started"], json!([]), "{v}");

    let old_pid = pid_of(&d.status("top").await);
    let (code, v) = d.post("/services/top/restart", None).await;
    assert_eq!(code, 200, "{v}");
    let pid = v["pid"].as_i64().expect("the new pid");
    assert_ne!(pid, i64::from(old_pid));
    assert_eq!(v["message"], format!("Service 'top' restarted (pid {pid})"));

    d.start_ok("stubborn").await;
    let v = d.stop_ok("stubborn").await;
    assert_eq!(v["message"], "Service 'stubborn' stopped (killed after stop_timeout 0.5 s: it ignored SIGTERM)");
    let v = d.stop_ok("stubborn").await;
    assert_eq!(v["message"], "Service 'stubborn' stopped successfully", "an idempotent stop killed nothing");

    let (code, v) = d.post("/services/top/remove", None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["message"], "Service 'top' stopped; a native service leaves nothing else to remove");

    let v = d.start_ok("quiet").await;
    assert_eq!(v["message"], "Service 'quiet' started: running (no health check; up for 1 s)");
    let healthy = d.wait_event("quiet", "healthy", 0, T, |_| true).await;
    assert_eq!(healthy["message"], "running (no health check; up for 1 s)");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_start_shows_only_the_lines_of_this_attempt() {
    let ws = Workspace::new();
    let fail = ws.path("fail");
    touch(&fail);
    ws.add(Svc::new("flaky").arg("--fail-start-file").arg(&fail).extra("restart: never"));
    let d = Daemon::start(&ws.services());

    let (code, first) = d.start_svc("flaky").await;
    assert_eq!(code, 500, "{first}");
    let (code, second) = d.start_svc("flaky").await;
    assert_eq!(code, 500, "{second}");
    let pid_line = |v: &Value| -> String {
        let logs = v["logs"].as_array().unwrap_or_else(|| panic!("no logs: {v}"));
        let line = logs.iter().filter_map(|l| l.as_str()).find(|l| l.contains("svc starting pid="));
        line.unwrap_or_else(|| panic!("no start line: {v}")).split("pid=").nth(1).unwrap().to_string()
    };
    let (first_pid, second_pid) = (pid_line(&first), pid_line(&second));
    assert_ne!(first_pid, second_pid);
    let logs = second["logs"].as_array().unwrap();
    assert!(
        logs.iter().all(|l| !l.as_str().unwrap().contains(&format!("pid={first_pid}"))),
        "the first attempt's lines are not shown again: {second}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forced_start_that_lost_the_race_says_why() {
    let ws = Workspace::new();
    // The holder ignores SIGTERM, so stopping it takes its stop_timeout.
    ws.add(Svc::new("gpu-a").gpu().arg("--ignore-term").stop_timeout(1.5));
    ws.add(Svc::new("gpu-b").gpu());
    let d = Daemon::start(&ws.services());
    d.start_ok("gpu-a").await;

    let forced = tokio::spawn({
        let url = d.u("/services/gpu-b/start");
        async move {
            let r = http_client().post(url).json(&json!({"force": true})).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    });
    d.wait_state("gpu-a", "stopping", T).await;
    d.stop_ok("gpu-b").await;
    let (code, v) = forced.await.unwrap();
    assert_eq!(code, 409, "{v}");
    let expected = "a stop was asked while this start waited (while it stopped 'gpu-a' to free the GPU)";
    assert!(v["detail"].as_str().unwrap().ends_with(expected), "{v}");
}
