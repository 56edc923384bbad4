//! Health monitoring of running services: checks every `health_interval`, `health_failures`
//! consecutive failures make a service `unhealthy` (then restarted per policy, or left running
//! with `restart: never` until a check passes), fewer failures are forgiven, a hung endpoint is
//! bounded by a timeout and never delays other services' checks, and the status reports the
//! last check.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn health_at(st: &Value) -> jiff::Timestamp {
    timestamp(&st["last_health"]["at"], "last_health.at")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unhealthy_service_is_restarted() {
    let ws = Workspace::new();
    let sick = ws.path("sick");
    Svc::new("web")
        .arg("--unhealthy-file")
        .arg(&sick)
        .extra("health_interval: 0.3\nhealth_failures: 3\nrestart_delay: 0.1\n")
        .write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("web").await;
    let old = pid_of(&d.status("web").await);
    let before = d.last_event_id().await;
    let t0 = Instant::now();
    touch(&sick);
    let unhealthy = d.wait_event("web", "unhealthy", before, LONG, |_| true).await;
    let took = t0.elapsed();
    assert_eq!(unhealthy["consecutive_failures"], 3, "{unhealthy}");
    assert!(unhealthy["last_check"].as_str().is_some_and(|s| s.contains("503")), "{unhealthy}");
    // Three checks 0.3 s apart: the verdict cannot come before the third one.
    assert!(took >= Duration::from_millis(550), "unhealthy after {took:?}, before 3 checks at a 0.3 s interval");
    remove(&sick);

    let st = d.wait_new_process("web", old, LONG).await;
    assert_eq!(st["restarts"], 1, "{st}");
    assert_eq!(st["consecutive_health_failures"], 0, "{st}");
    assert!(!pid_alive(old), "the unhealthy process was stopped");
    d.wait_event("web", "healthy", id(&unhealthy), LONG, |_| true).await;
    let evs = d.events_after(Some("web"), before).await;
    assert_eq!(
        kinds(&evs),
        ["unhealthy", "stopping", "exited", "backoff", "starting", "healthy"],
        "unhealthy -> stopped -> restarted: {}",
        render(&evs)
    );
    // Nanny stopped it: expected, and the event says why.
    assert_eq!(evs[2]["expected"], true, "{}", render(&evs));
    assert!(evs[2]["message"].as_str().unwrap().contains("stopped by nanny: judged unhealthy"), "{}", render(&evs));
    assert_eq!(evs[3]["attempt"], 1, "{}", render(&evs));
    assert_eq!(evs[4]["automatic"], true, "{}", render(&evs));
    assert!(evs[5]["startup_ms"].is_number(), "{}", render(&evs));
}

#[tokio::test(flavor = "multi_thread")]
async fn with_restart_never_an_unhealthy_service_keeps_running_until_it_recovers() {
    let ws = Workspace::new();
    let sick = ws.path("sick");
    Svc::new("api")
        .arg("--unhealthy-file")
        .arg(&sick)
        .extra("restart: never\nhealth_interval: 0.3\nhealth_failures: 3\n")
        .write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("api").await;
    let pid = pid_of(&d.status("api").await);
    let before = d.last_event_id().await;
    touch(&sick);
    let st = d.wait_state("api", "unhealthy", LONG).await;
    assert_eq!(st["is_running"], true, "{st}");
    assert_eq!(st["is_healthy"], false, "{st}");
    assert_eq!(st["pid"], pid, "{st}");
    assert!(st["consecutive_health_failures"].as_u64().unwrap() >= 3, "{st}");
    assert_eq!(st["last_health"]["ok"], false, "{st}");
    assert_eq!(st["last_health"]["http_code"], 503, "{st}");

    // Checks go on; it stays unhealthy, same process, one `unhealthy` event.
    let st = d
        .wait_status("api", LONG, "five failed checks in a row", |st| {
            st["consecutive_health_failures"].as_u64().unwrap_or(0) >= 5
        })
        .await;
    assert_eq!(st["status"], "unhealthy", "{st}");
    assert_eq!(st["pid"], pid, "{st}");
    assert_eq!(d.services().await["services"][0]["status"], "unhealthy");

    remove(&sick);
    let st = d.wait_state("api", "running", LONG).await;
    assert_eq!(st["pid"], pid, "the same process recovered: {st}");
    assert_eq!(st["consecutive_health_failures"], 0, "{st}");
    assert_eq!(st["restarts"], 0, "{st}");
    assert_eq!(st["last_health"]["ok"], true, "{st}");
    let healthy = d.wait_event("api", "healthy", before, LONG, |_| true).await;
    assert!(healthy["startup_ms"].is_null(), "recovering is not a startup: {healthy}");
    let evs = d.events_after(Some("api"), before).await;
    assert_eq!(kinds(&evs), ["unhealthy", "healthy"], "{}", render(&evs));
    assert_eq!(evs[0]["consecutive_failures"], 3, "{}", render(&evs));
    assert!(pid_alive(pid));
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_below_the_threshold_are_forgiven() {
    let ws = Workspace::new();
    let sick = ws.path("sick");
    Svc::new("db")
        .arg("--unhealthy-file")
        .arg(&sick)
        .extra("health_interval: 0.3\nhealth_failures: 5\n")
        .write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("db").await;
    let pid = pid_of(&d.status("db").await);
    let before = d.last_event_id().await;
    touch(&sick);
    let st = d
        .wait_status("db", LONG, "two failed checks", |st| st["consecutive_health_failures"].as_u64().unwrap_or(0) >= 2)
        .await;
    remove(&sick);
    assert_eq!(st["status"], "running", "below health_failures it still counts as running: {st}");
    assert_eq!(st["is_healthy"], true, "{st}");
    assert_eq!(st["last_health"]["ok"], false, "{st}");

    let st = d
        .wait_status("db", LONG, "a passing check cleared the count", |st| {
            st["consecutive_health_failures"] == 0 && st["last_health"]["ok"] == true
        })
        .await;
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(st["pid"], pid, "{st}");
    assert_eq!(st["restarts"], 0, "{st}");
    let evs = d.events_after(Some("db"), before).await;
    assert!(evs.is_empty(), "no transition for forgiven failures: {}", render(&evs));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_health_endpoint_does_not_delay_other_services() {
    let ws = Workspace::new();
    let hang = ws.path("hang");
    Svc::new("hung")
        .arg("--hang-file")
        .arg(&hang)
        .extra("restart: never\nhealth_interval: 0.3\nhealth_failures: 3\n")
        .write(&ws.services());
    Svc::new("steady").extra("health_interval: 0.3\n").write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("hung").await;
    d.start_ok("steady").await;
    touch(&hang);

    // While `hung` never answers, `steady` is still checked every interval.
    let mut seen: Vec<jiff::Timestamp> = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let st = d.status("steady").await;
        assert_eq!(st["status"], "running", "{st}");
        assert_eq!(st["last_health"]["ok"], true, "{st}");
        let at = health_at(&st);
        if seen.last() != Some(&at) {
            seen.push(at);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.len() >= 5, "steady was checked only {} times in 3 s at a 0.3 s interval: {seen:?}", seen.len());
    for w in seen.windows(2) {
        let gap = w[1].duration_since(w[0]).as_secs_f64();
        assert!(gap > 0.0, "last_health.at must advance: {seen:?}");
        assert!(gap < 1.5, "steady's checks {gap:.3} s apart at a 0.3 s interval: {seen:?}");
    }

    // The hung checks time out and count as failures.
    let st = d.wait_state("hung", "unhealthy", LONG).await;
    let lh = &st["last_health"];
    assert_eq!(lh["ok"], false, "{st}");
    assert!(lh["http_code"].is_null(), "no HTTP answer: {st}");
    let latency = lh["latency_ms"].as_f64().unwrap_or_else(|| panic!("latency_ms: {st}"));
    assert!((100.0..10_000.0).contains(&latency), "a hung check is cut off by a timeout: {st}");
    let unhealthy = d.wait_event("hung", "unhealthy", 0, LONG, |_| true).await;
    assert_eq!(unhealthy["consecutive_failures"], 3, "{unhealthy}");

    // And a hung check never blocks a stop.
    let t0 = Instant::now();
    d.stop_ok("hung").await;
    assert!(t0.elapsed() < Duration::from_secs(5), "stop took {:?}", t0.elapsed());
    assert_eq!(d.state_of("steady").await, "running");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_the_last_check() {
    let ws = Workspace::new();
    let sick = ws.path("sick");
    Svc::new("probe")
        .arg("--unhealthy-file")
        .arg(&sick)
        .extra("health_interval: 0.3\nhealth_failures: 100\n")
        .write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("probe").await;
    let st = d.status("probe").await;
    let lh = &st["last_health"];
    assert!(lh["at"].as_str().is_some_and(is_rfc3339), "{st}");
    assert_eq!(lh["ok"], true, "{st}");
    assert_eq!(lh["http_code"], 200, "{st}");
    let latency = lh["latency_ms"].as_f64().unwrap_or_else(|| panic!("latency_ms is a number: {st}"));
    assert!((0.0..5000.0).contains(&latency), "{st}");
    assert!(lh["message"].is_string(), "{st}");
    assert_eq!(st["consecutive_health_failures"], 0, "{st}");
    let first_at = health_at(&st);
    let age = jiff::Timestamp::now().duration_since(first_at).as_secs_f64();
    assert!((-1.0..10.0).contains(&age), "last check {age:.3} s ago: {st}");

    // The next periodic check replaces it.
    let st = d.wait_status("probe", LONG, "a newer check", |st| health_at(st) > first_at).await;
    assert_eq!(st["last_health"]["ok"], true, "{st}");

    // A failing check is reported with its HTTP code, also in the seed's status shape.
    touch(&sick);
    let st = d.wait_status("probe", LONG, "a failed check", |st| st["last_health"]["ok"] == false).await;
    assert_eq!(st["last_health"]["http_code"], 503, "{st}");
    assert!(st["consecutive_health_failures"].as_u64().unwrap() >= 1, "{st}");
    assert_eq!(st["status"], "running", "{st}");
    let seed = d.get_ok("/api/services/status").await;
    let row = seed["services"].as_array().unwrap().iter().find(|s| s["id"] == "probe").cloned().unwrap();
    assert_eq!(row["statusCode"], 503, "{seed}");
    remove(&sick);
    d.wait_status("probe", LONG, "a passing check", |st| st["last_health"]["http_code"] == 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_command_failures_count_too() {
    let ws = Workspace::new();
    let sick = ws.path("sick");
    let cmd = serde_json::to_string(&["test", "!", "-e", sick.to_str().unwrap()]).unwrap();
    Svc::new("worker")
        .no_port()
        .extra(&format!("health_command: {cmd}\nhealth_interval: 0.3\nhealth_failures: 2\nrestart: never\n"))
        .write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("worker").await;
    touch(&sick);
    let st = d.wait_state("worker", "unhealthy", LONG).await;
    assert_eq!(st["last_health"]["ok"], false, "{st}");
    assert!(st["last_health"]["http_code"].is_null(), "{st}");
    remove(&sick);
    let st = d.wait_state("worker", "running", LONG).await;
    assert_eq!(st["last_health"]["ok"], true, "{st}");
}
