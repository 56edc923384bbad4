//! The restart policy: `restart: always|on-failure|never`, exponential backoff capped at
//! `restart_delay_max`, the sliding `max_restarts`/`restart_window` budget, the quiet period
//! that resets the backoff, manual start/stop overriding a pending restart, and a GPU service
//! keeping the GPU while it waits in `backoff`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn backoffs(evs: &[Value]) -> Vec<(u64, u64)> {
    of_kind(evs, None, "backoff")
        .iter()
        .map(|e| {
            (
                e["attempt"].as_u64().unwrap_or_else(|| panic!("backoff without attempt: {e}")),
                e["delay_ms"].as_u64().unwrap_or_else(|| panic!("backoff without delay_ms: {e}")),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_loop_hits_the_window_limit_then_a_manual_start_works() {
    let ws = Workspace::new();
    Svc::new("crashy")
        .arg("--exit-after-healthy")
        .arg("0.2")
        .arg("1")
        .extra("restart_delay: 0.05\nrestart_delay_max: 0.2\nmax_restarts: 3\nrestart_window: 30\n")
        .write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("crashy").await;
    let st = d.wait_state("crashy", "failed", LONG).await;
    d.wait_event("crashy", "failed", 0, LONG, |_| true).await;
    assert_eq!(st["restarts"], 3, "three automatic restarts before giving up: {st}");
    assert_eq!(st["is_running"], false, "{st}");
    assert!(st["pid"].is_null(), "a failed service has no process: {st}");
    assert_eq!(st["last_exit"]["code"], 1, "{st}");
    assert!(st["last_exit"]["at"].as_str().is_some_and(is_rfc3339), "{st}");
    let last_error = st["last_error"].as_str().unwrap_or_else(|| panic!("last_error is set when failed: {st}"));
    assert!(last_error.contains("restarted 3 times within 30s"), "{st}");

    let evs = d.events_of("crashy").await;
    assert_eq!(backoffs(&evs).iter().map(|b| b.0).collect::<Vec<_>>(), vec![1, 2, 3], "{}", render(&evs));
    let starting = of_kind(&evs, None, "starting");
    assert_eq!(starting.len(), 4, "one manual start and three restarts: {}", render(&evs));
    assert_eq!(starting[0]["automatic"], false, "{}", render(&evs));
    assert!(starting[1..].iter().all(|e| e["automatic"] == true), "{}", render(&evs));
    let exited = of_kind(&evs, None, "exited");
    assert_eq!(exited.len(), 4, "{}", render(&evs));
    for e in &exited {
        assert_eq!(e["code"], 1, "{e}");
        assert_eq!(e["expected"], false, "{e}");
    }
    let failed = of_kind(&evs, None, "failed");
    assert_eq!(failed.len(), 1, "{}", render(&evs));
    let failed = failed[0];
    assert!(failed["reason"].as_str().is_some_and(|r| r.contains("restarted 3 times within 30s")), "{failed}");
    assert!(failed["message"].as_str().is_some_and(|r| r.contains("restarted 3 times within 30s")), "{failed}");
    assert_eq!(evs.last().unwrap()["kind"], "failed", "nothing happens after giving up: {}", render(&evs));

    // Started by hand, it runs again, with a fresh restart budget.
    let before = d.last_event_id().await;
    d.start_ok("crashy").await;
    let manual = d.wait_event("crashy", "starting", before, LONG, |_| true).await;
    assert_eq!(manual["automatic"], false, "{manual}");
    let b = d.wait_event("crashy", "backoff", id(&manual), LONG, |_| true).await;
    assert_eq!(b["attempt"], 1, "the manual start reset the consecutive failures: {b}");
    d.stop_ok("crashy").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backoff_delays_double_up_to_the_cap() {
    let ws = Workspace::new();
    Svc::new("flappy")
        .arg("--exit-after-healthy")
        .arg("0.2")
        .arg("1")
        .extra("restart_delay: 0.05\nrestart_delay_max: 0.2\nmax_restarts: 6\nrestart_window: 120\n")
        .write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("flappy").await;
    let st = d.wait_state("flappy", "failed", LONG).await;
    d.wait_event("flappy", "failed", 0, LONG, |_| true).await;
    assert_eq!(st["restarts"], 6, "{st}");
    let evs = d.events_of("flappy").await;
    assert_eq!(
        backoffs(&evs),
        vec![(1, 50), (2, 100), (3, 200), (4, 200), (5, 200), (6, 200)],
        "delay = restart_delay x 2^(n-1), capped at restart_delay_max: {}",
        render(&evs)
    );

    // Each restart waits at least its delay: exited -> backoff -> (delay) -> starting -> healthy.
    // Timestamps are taken when the event is stored, so allow a few ms of jitter below.
    const JITTER_MS: f64 = 20.0;
    for b in of_kind(&evs, None, "backoff") {
        let delay = b["delay_ms"].as_f64().unwrap();
        let exited = evs.iter().rev().find(|e| id(e) < id(b) && e["kind"] == "exited").expect("exited before backoff");
        let starting = first(&evs, "flappy", "starting", id(b)).expect("starting after backoff");
        let healthy = first(&evs, "flappy", "healthy", id(b)).expect("healthy after the restart");
        assert!(id(exited) < id(b) && id(b) < id(starting) && id(starting) < id(healthy), "{}", render(&evs));
        assert_eq!(starting["automatic"], true, "{starting}");
        let gap = ms_between(exited, starting);
        assert!(
            gap >= delay - JITTER_MS,
            "restart {} came {gap:.1} ms after the exit, before its {delay} ms delay: {}",
            b["attempt"],
            render(&evs)
        );
        assert!(gap < delay + 5000.0, "restart {} came {gap:.1} ms after the exit: {}", b["attempt"], render(&evs));
        let wait = ms_between(b, starting);
        assert!(wait >= delay - JITTER_MS, "backoff {b} -> starting {starting}: {wait:.1} ms");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_never_leaves_a_crashed_service_failed() {
    let ws = Workspace::new();
    let starts_file = ws.path("once.starts");
    Svc::new("once")
        .arg("--exit-after-healthy")
        .arg("0.2")
        .arg("1")
        .arg("--starts")
        .arg(&starts_file)
        .extra("restart: never\nrestart_delay: 0.05\n")
        .write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("once").await;
    let st = d.wait_state("once", "failed", LONG).await;
    d.wait_event("once", "failed", 0, LONG, |_| true).await;
    assert_eq!(st["restarts"], 0, "{st}");
    assert_eq!(st["last_exit"]["code"], 1, "{st}");
    assert!(st["last_error"].is_string(), "{st}");
    let evs = d.events_of("once").await;
    assert!(of_kind(&evs, None, "backoff").is_empty(), "{}", render(&evs));
    let exited = of_kind(&evs, None, "exited");
    assert_eq!(exited.len(), 1, "{}", render(&evs));
    assert_eq!(exited[0]["expected"], false, "{}", render(&evs));
    let failed = of_kind(&evs, None, "failed");
    assert_eq!(failed.len(), 1, "{}", render(&evs));
    assert!(failed[0]["reason"].as_str().is_some_and(|r| r.contains("never")), "{}", failed[0]);
    // Not restarted later either (ten restart delays later).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(d.state_of("once").await, "failed");
    assert_eq!(starts(&starts_file).len(), 1, "started exactly once");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_failure_does_not_restart_a_clean_exit() {
    let ws = Workspace::new();
    let starts_file = ws.path("clean.starts");
    // No `restart:` line: on-failure is the default.
    Svc::new("clean")
        .arg("--exit-after-healthy")
        .arg("0.2")
        .arg("0")
        .arg("--starts")
        .arg(&starts_file)
        .extra("restart_delay: 0.05\n")
        .write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("clean").await;
    let st = d.wait_state("clean", "stopped", LONG).await;
    d.wait_event("clean", "stopped", 0, LONG, |_| true).await;
    assert_eq!(st["restarts"], 0, "{st}");
    assert_eq!(st["last_exit"]["code"], 0, "{st}");
    let evs = d.events_of("clean").await;
    assert!(of_kind(&evs, None, "backoff").is_empty(), "{}", render(&evs));
    let exited = of_kind(&evs, None, "exited");
    assert_eq!(exited.len(), 1, "{}", render(&evs));
    assert_eq!(exited[0]["code"], 0, "{}", render(&evs));
    assert_eq!(evs.last().unwrap()["kind"], "stopped", "{}", render(&evs));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(d.state_of("clean").await, "stopped");
    assert_eq!(starts(&starts_file).len(), 1, "started exactly once");
}

#[tokio::test(flavor = "multi_thread")]
async fn always_restarts_a_clean_exit() {
    let ws = Workspace::new();
    let starts_file = ws.path("loop.starts");
    Svc::new("loop")
        .arg("--exit-after-healthy")
        .arg("0.2")
        .arg("0")
        .arg("--starts")
        .arg(&starts_file)
        .extra("restart: always\nrestart_delay: 0.05\nrestart_delay_max: 0.1\n")
        .write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("loop").await;
    let evs = d
        .wait_events(LONG, "two automatic restarts of loop", |evs| {
            of_kind(evs, Some("loop"), "starting").iter().filter(|e| e["automatic"] == true).count() >= 2
        })
        .await;
    let evs: Vec<Value> = evs.into_iter().filter(|e| e["service"] == "loop").collect();
    assert!(d.status("loop").await["restarts"].as_u64().unwrap() >= 2);
    let exited = of_kind(&evs, None, "exited");
    assert!(exited.len() >= 2, "{}", render(&evs));
    assert!(exited.iter().all(|e| e["code"] == 0), "clean exits: {}", render(&evs));
    let auto: Vec<_> = of_kind(&evs, None, "starting").into_iter().filter(|e| e["automatic"] == true).collect();
    assert!(auto.len() >= 2, "{}", render(&evs));
    d.stop_ok("loop").await;
    let pids: Vec<u64> = of_kind(&evs, None, "starting").iter().map(|e| e["pid"].as_u64().unwrap()).collect();
    assert!(pids.len() >= 3, "a new process per restart: {pids:?}");
    assert!(starts(&starts_file).len() >= 2, "the fixture itself saw its restart");
    let mut unique = pids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), pids.len(), "{pids:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_failure_restarts_a_killed_process() {
    let ws = Workspace::new();
    Svc::new("victim").extra("restart_delay: 0.1\n").write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("victim").await;
    let old = pid_of(&d.status("victim").await);
    sigkill(old);
    let st = d.wait_new_process("victim", old, LONG).await;
    assert_eq!(st["restarts"], 1, "{st}");
    assert!(st["last_exit"]["code"].is_null(), "{st}");
    assert_eq!(st["last_exit"]["signal"], "SIGKILL", "{st}");
    let evs = d.events_of("victim").await;
    let exited = of_kind(&evs, None, "exited");
    assert_eq!(exited.len(), 1, "{}", render(&evs));
    assert_eq!(exited[0]["signal"], "SIGKILL", "{}", render(&evs));
    assert!(exited[0]["code"].is_null(), "{}", render(&evs));
    assert_eq!(exited[0]["expected"], false, "{}", render(&evs));
    assert_eq!(backoffs(&evs), vec![(1, 100)], "{}", render(&evs));
    assert!(!pid_alive(old));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_manual_start_follows_the_restart_policy() {
    let ws = Workspace::new();
    let fail = ws.path("fail");
    let starts_file = ws.path("broken.starts");
    touch(&fail);
    Svc::new("broken")
        .arg("--fail-start-file")
        .arg(&fail)
        .arg("--starts")
        .arg(&starts_file)
        .extra("restart: always\nrestart_delay: 0.2\n")
        .write(&ws.services());
    let d = Daemon::start(&ws.services());

    let (code, v) = d.start_svc("broken").await;
    assert_eq!(code, 500, "a start whose process exits fails at once: {v}");
    assert!(v["detail"].as_str().unwrap().contains("exited with code 1 while starting"), "{v}");
    assert!(v["next"].as_str().is_some_and(|n| n.starts_with("restarting in 0.2 s (restart 1 of 10")), "{v}");
    // restart: always applies to a failed start too: once the cause is gone, it runs.
    remove(&fail);
    let st = d.wait_state("broken", "running", LONG).await;
    assert!(st["restarts"].as_u64().unwrap() >= 1, "{st}");
    assert!(starts(&starts_file).len() >= 2, "started again by the policy");
    let evs = d.events_of("broken").await;
    assert!(!of_kind(&evs, None, "backoff").is_empty(), "{}", render(&evs));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_that_fails_while_starting_counts_as_another_failure() {
    let ws = Workspace::new();
    let fail = ws.path("fail");
    Svc::new("fragile")
        .arg("--fail-start-file")
        .arg(&fail)
        .extra("restart_delay: 0.1\nrestart_delay_max: 5\nmax_restarts: 10\nrestart_window: 120\n")
        .write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("fragile").await;
    let old = pid_of(&d.status("fragile").await);
    touch(&fail);
    sigkill(old);
    // attempt 1 (100 ms) fails at startup -> attempt 2 (200 ms) fails -> attempt 3 (400 ms)...
    d.wait_event("fragile", "backoff", 0, LONG, |e| e["attempt"] == 3).await;
    remove(&fail);
    let st = d.wait_new_process("fragile", old, LONG).await;
    let evs = d.events_of("fragile").await;
    let b = backoffs(&evs);
    assert!(b.len() >= 3, "{}", render(&evs));
    assert_eq!(b[..3], [(1, 100), (2, 200), (3, 400)], "failed restarts back off further: {}", render(&evs));
    assert!(st["restarts"].as_u64().unwrap() >= 3, "{st}");
    // Between the backoffs: an automatic start whose process exited with 1.
    let backoff_events = of_kind(&evs, None, "backoff");
    for pair in backoff_events.windows(2) {
        let between: Vec<&Value> = evs.iter().filter(|e| id(e) > id(pair[0]) && id(e) < id(pair[1])).collect();
        assert_eq!(kinds(between.iter().copied()), ["starting", "exited"], "{}", render(&evs));
        assert_eq!(between[0]["automatic"], true);
        assert_eq!(between[1]["code"], 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_period_resets_the_backoff() {
    let ws = Workspace::new();
    let crash = ws.path("crash");
    // quiet period = max(restart_delay_max, 1 s) = 1 s
    Svc::new("steady")
        .arg("--exit-file")
        .arg(&crash)
        .extra("restart_delay: 0.1\nrestart_delay_max: 0.3\nmax_restarts: 10\nrestart_window: 120\n")
        .write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("steady").await;
    let mut pid = pid_of(&d.status("steady").await);
    // Two crashes in quick succession: attempts 1 and 2.
    for _ in 0..2 {
        touch(&crash);
        let st = d.wait_new_process("steady", pid, LONG).await;
        pid = pid_of(&st);
    }
    // Healthy for well over the quiet period (it was running before we saw it), then a
    // crash: attempt 1 again.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(d.state_of("steady").await, "running");
    touch(&crash);
    d.wait_new_process("steady", pid, LONG).await;
    let evs = d.events_of("steady").await;
    assert_eq!(backoffs(&evs), vec![(1, 100), (2, 200), (1, 100)], "{}", render(&evs));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_restart_window_slides() {
    let ws = Workspace::new();
    let crash = ws.path("crash");
    Svc::new("slider")
        .arg("--exit-file")
        .arg(&crash)
        .extra("restart_delay: 0.05\nrestart_delay_max: 0.1\nmax_restarts: 2\nrestart_window: 3\n")
        .write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("slider").await;
    let mut pid = pid_of(&d.status("slider").await);
    // Two restarts: the budget of the window is used up.
    for _ in 0..2 {
        touch(&crash);
        let st = d.wait_new_process("slider", pid, LONG).await;
        pid = pid_of(&st);
    }
    let evs = d.events_of("slider").await;
    let second = of_kind(&evs, None, "backoff")[1].clone();
    // Once both restarts are older than restart_window, a crash is restarted again.
    d.wait_status("slider", LONG, "3.3 s after the second restart", |_| {
        jiff::Timestamp::now().duration_since(ts(&second)).as_secs_f64() > 3.3
    })
    .await;
    touch(&crash);
    let st = d.wait_new_process("slider", pid, LONG).await;
    assert_eq!(st["restarts"], 3, "{st}");
    let evs = d.events_of("slider").await;
    assert_eq!(of_kind(&evs, None, "backoff").len(), 3, "{}", render(&evs));
    assert!(of_kind(&evs, None, "failed").is_empty(), "{}", render(&evs));
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_during_backoff_cancels_the_restart() {
    let ws = Workspace::new();
    let crash = ws.path("crash");
    let starts_file = ws.path("waiting.starts");
    Svc::new("waiting")
        .arg("--exit-file")
        .arg(&crash)
        .arg("--starts")
        .arg(&starts_file)
        .extra("restart_delay: 1.5\n")
        .write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("waiting").await;
    touch(&crash);
    let st = d.wait_state("waiting", "backoff", LONG).await;
    assert_eq!(st["is_running"], false, "{st}");
    let t0 = Instant::now();
    let v = d.stop_ok("waiting").await;
    assert!(t0.elapsed() < Duration::from_secs(1), "stopping a service in backoff has nothing to wait for: {v}");
    let stop_id = d.last_event_id().await;
    // Past the restart delay: still stopped, never started again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let st = d.status("waiting").await;
    assert_eq!(st["status"], "stopped", "{st}");
    assert_eq!(starts(&starts_file).len(), 1, "no restart after the stop");
    let evs = d.events_of("waiting").await;
    assert!(evs.iter().all(|e| id(e) <= stop_id), "nothing after the stop: {}", render(&evs));
    assert_eq!(evs.last().unwrap()["kind"], "stopped", "{}", render(&evs));
}

#[tokio::test(flavor = "multi_thread")]
async fn start_during_backoff_starts_now() {
    let ws = Workspace::new();
    let crash = ws.path("crash");
    Svc::new("patient").arg("--exit-file").arg(&crash).extra("restart_delay: 30\n").write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("patient").await;
    let old = pid_of(&d.status("patient").await);
    touch(&crash);
    d.wait_state("patient", "backoff", LONG).await;
    let before = d.last_event_id().await;
    let t0 = Instant::now();
    d.start_ok("patient").await;
    assert!(t0.elapsed() < Duration::from_secs(15), "a manual start does not wait for the 30 s restart delay");
    let st = d.status("patient").await;
    assert_eq!(st["status"], "running", "{st}");
    assert_ne!(pid_of(&st), old, "{st}");
    let evs = d.events_of("patient").await;
    let starting: Vec<_> = evs.iter().filter(|e| id(e) > before && e["kind"] == "starting").collect();
    assert_eq!(starting.len(), 1, "{}", render(&evs));
    assert_eq!(starting[0]["automatic"], false, "{}", render(&evs));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gpu_service_in_backoff_keeps_the_gpu() {
    let ws = Workspace::new();
    let crash = ws.path("crash");
    Svc::new("gpu-a").gpu().arg("--exit-file").arg(&crash).extra("restart_delay: 30\n").write(&ws.services());
    Svc::new("gpu-b").gpu().write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("gpu-a").await;
    touch(&crash);
    d.wait_state("gpu-a", "backoff", LONG).await;
    assert_eq!(d.services().await["gpu_service_running"], "gpu-a");

    let (code, v) = d.start_svc("gpu-b").await;
    assert_eq!(code, 409, "gpu-a still holds the GPU while waiting to restart: {v}");
    assert_eq!(v["gpu_service_running"], "gpu-a", "{v}");
    assert!(v["detail"].as_str().is_some_and(|s| s.contains("gpu-a")), "{v}");
    assert_eq!(d.state_of("gpu-b").await, "stopped");
    assert_eq!(d.state_of("gpu-a").await, "backoff");

    // force takes the GPU from the service in backoff, which then stays stopped.
    let (code, v) = d.start_forced("gpu-b").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(d.state_of("gpu-a").await, "stopped");
    assert_eq!(d.services().await["gpu_service_running"], "gpu-b");

    // Once gpu-b is stopped, gpu-a can have the GPU again.
    d.stop_ok("gpu-b").await;
    d.start_ok("gpu-a").await;
    assert_eq!(d.services().await["gpu_service_running"], "gpu-a");
}

/// An automatic restart whose health check never passes is being stopped when someone stops
/// the service by hand: the stop wins, and the restart policy does not start it again.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_by_hand_wins_over_the_recovery_of_a_failed_automatic_start() {
    let ws = Workspace::new();
    let unhealthy = ws.path("unhealthy");
    let svc = Svc::new("flaky")
        .args(["--exit-after-healthy", "0.5", "1", "--ignore-term"])
        .arg("--unhealthy-file")
        .arg(&unhealthy)
        .health_timeout(1.5)
        .stop_timeout(4.0)
        .extra("restart_delay: 0.1\n");
    ws.add(svc);
    let d = Daemon::start(&ws.services());
    d.start_ok("flaky").await;
    // From now on /health answers 503: the automatic restart after the crash cannot pass.
    touch(&unhealthy);
    wait_until(Duration::from_secs(30), "the failed automatic start is being stopped", || async {
        let evs = d.events_of("flaky").await;
        of_kind(&evs, None, "starting").len() == 2 && d.state_of("flaky").await == "stopping"
    })
    .await;

    d.stop_ok("flaky").await;
    assert_eq!(d.state_of("flaky").await, "stopped");
    // Nothing restarts it: the state stays `stopped` well past the 0.1 s restart delay.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_eq!(d.state_of("flaky").await, "stopped", "{}", render(&d.events_of("flaky").await));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let evs = d.events_of("flaky").await;
    assert_eq!(of_kind(&evs, None, "starting").len(), 2, "{}", render(&evs));
}
