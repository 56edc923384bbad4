//! Desired state and crash recovery: after `kill -9` of the daemon its services' direct children
//! die, and the next daemon on the same state directory kills what is left of their process
//! groups (`orphan_killed`), then starts the services that were meant to be running; a clean
//! SIGTERM remembers the running services (default) or forgets them (`--on-shutdown forget`,
//! `NANNY_ON_SHUTDOWN=forget`), leaving only `autostart` ones for the next start; a daemon killed
//! mid-start comes back with the start and without the old process group.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

async fn pids(d: &Daemon, names: &[&str]) -> BTreeMap<String, i32> {
    let mut out = BTreeMap::new();
    for n in names {
        out.insert(n.to_string(), pid_of(&d.status(n).await));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_daemon_crash_leftovers_are_killed_and_services_restored() {
    let ws = Workspace::new();
    let state = ws.path("state");
    let grandchild_file = ws.path("alpha.grandchild");
    Svc::new("alpha").arg("--grandchild").arg(&grandchild_file).write(&ws.services());
    Svc::new("beta").write(&ws.services());
    Svc::new("idle").write(&ws.services());
    Svc::new("never").write(&ws.services());
    Svc::new("gpu-a").gpu().write(&ws.services());
    Svc::new("gpu-b").gpu().write(&ws.services());

    let mut d1 = Daemon::start_with_state(&ws.services(), &state);
    d1.start_ok("alpha").await;
    d1.start_ok("beta").await;
    d1.start_ok("idle").await;
    d1.stop_ok("idle").await;
    d1.start_ok("gpu-a").await;
    // gpu-b takes the GPU from gpu-a: gpu-b is the GPU service running at the crash.
    let (code, v) = d1.start_forced("gpu-b").await;
    assert_eq!(code, 200, "forced start of gpu-b: {v}");
    assert_eq!(v["preempted"], serde_json::json!(["gpu-a"]), "{v}");
    assert_eq!(d1.state_of("gpu-a").await, "stopped");

    let grandchild = read_pidfile(&grandchild_file).await;
    let _cleanup = KillOnDrop(vec![grandchild]);
    let old = pids(&d1, &["alpha", "beta", "gpu-b"]).await;
    // (Also a round trip through the store: everything recorded so far is on disk.)
    let history = d1.all_events().await;
    let old_last = id(history.last().unwrap());

    d1.kill9();
    for (name, pid) in &old {
        wait_pid_gone(*pid, Duration::from_secs(20), &format!("{name}'s process after the daemon was killed")).await;
    }
    assert!(pid_alive(grandchild), "the grandchild outlives the killed daemon (only direct children get PDEATHSIG)");
    remove(&grandchild_file);

    let d2 = Daemon::start_with_state(&ws.services(), &state);
    wait_pid_gone(grandchild, Duration::from_secs(20), "alpha's grandchild left by the killed daemon").await;
    for name in ["alpha", "beta"] {
        let st = d2.wait_state(name, "running", LONG).await;
        assert_ne!(pid_of(&st), old[name], "{name} runs in a new process: {st}");
    }
    // One GPU service gets the GPU back; wait until whichever it is runs.
    let mut list = Value::Null;
    let deadline = std::time::Instant::now() + LONG;
    while std::time::Instant::now() < deadline {
        list = d2.services().await;
        let holder = list["gpu_service_running"].as_str().unwrap_or("").to_string();
        if !holder.is_empty() && d2.state_of(&holder).await == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let running_gpu: Vec<&Value> = list["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["gpu_required"] == true && s["status"] != "stopped")
        .collect();
    assert_eq!(running_gpu.len(), 1, "one GPU service at a time: {list}");
    for name in ["idle", "never"] {
        assert_eq!(d2.state_of(name).await, "stopped", "{name} was not running before the crash");
    }

    let all = d2.all_events().await;
    assert_increasing(&all);
    assert_eq!(&all[..history.len()], &history[..], "the history before the crash is intact");
    let new: Vec<Value> = all.iter().filter(|e| id(e) > old_last).cloned().collect();
    assert_eq!(new[0]["kind"], "daemon_started", "{}", render(&new));
    let orphans = of_kind(&new, None, "orphan_killed");
    assert_eq!(orphans.len(), 1, "exactly the grandchild was left over: {}", render(&new));
    assert_eq!(orphans[0]["service"], "alpha", "{}", render(&new));
    assert_eq!(orphans[0]["pid"], grandchild, "{}", render(&new));
    let restarted = expect_event(&new, "alpha", "starting");
    assert!(id(orphans[0]) < id(restarted), "leftovers are killed before services start again: {}", render(&new));
    assert!(first(&new, "idle", "starting", 0).is_none(), "{}", render(&new));

    // The GPU service running at the crash is the one restored; the one it had preempted
    // was not running and stays stopped.
    assert_eq!(
        list["gpu_service_running"],
        "gpu-b",
        "gpu-b held the GPU when the daemon died: {list}\n{}",
        render(&new)
    );
    let st = d2.status("gpu-b").await;
    assert_eq!(st["status"], "running", "{st}");
    assert_ne!(pid_of(&st), old["gpu-b"], "{st}");
    assert_eq!(d2.state_of("gpu-a").await, "stopped", "gpu-a was preempted before the crash");
    assert!(first(&new, "gpu-a", "starting", 0).is_none(), "{}", render(&new));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_restores_services_even_with_on_shutdown_forget() {
    let ws = Workspace::new();
    let state = ws.path("state");
    Svc::new("alpha").write(&ws.services());
    let mut d1 = Daemon::start_with(&ws.services(), &state, &["--on-shutdown", "forget"], &[]);
    d1.start_ok("alpha").await;
    let old = pid_of(&d1.status("alpha").await);
    // The desired state is written by the store thread after the answer; a round trip through
    // the store (requests are served in order) makes sure it is on disk before the crash.
    d1.last_event_id().await;
    d1.kill9();
    wait_pid_gone(old, Duration::from_secs(20), "alpha after the daemon was killed").await;
    let d2 = Daemon::start_with_state(&ws.services(), &state);
    let st = d2.wait_state("alpha", "running", LONG).await;
    assert_ne!(pid_of(&st), old);
    assert!(of_kind(&d2.all_events().await, None, "orphan_killed").is_empty(), "nothing was left over");
}

/// alpha and beta (beta depends on alpha) started by hand, idle started then stopped, auto
/// `autostart`; then a clean SIGTERM and a new daemon. Returns the new daemon.
async fn clean_restart(ws: &Workspace, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let state = ws.path("state");
    Svc::new("alpha").write(&ws.services());
    Svc::new("beta").extra("depends_on: [alpha]\n").write(&ws.services());
    Svc::new("idle").write(&ws.services());
    Svc::new("auto").extra("autostart: true\n").write(&ws.services());

    let mut d1 = Daemon::start_with(&ws.services(), &state, args, env);
    d1.wait_state("auto", "running", LONG).await;
    d1.start_ok("beta").await; // starts alpha first
    d1.start_ok("idle").await;
    d1.stop_ok("idle").await;
    let old = pids(&d1, &["alpha", "beta", "auto"]).await;
    let last = d1.last_event_id().await;
    d1.terminate();
    for (name, pid) in &old {
        assert!(!pid_alive(*pid), "{name} was stopped by the clean shutdown");
    }

    let d2 = Daemon::start_with_state(&ws.services(), &state);
    let evs = d2.events_after(None, last).await;
    assert_eq!(evs[0]["kind"], "daemon_stopping", "{}", render(&evs));
    let beta_stopped = expect_event(&evs, "beta", "stopped");
    let alpha_stopping = expect_event(&evs, "alpha", "stopping");
    assert!(id(beta_stopped) < id(alpha_stopping), "dependents are stopped first: {}", render(&evs));
    d2
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_shutdown_remembers_running_services_by_default() {
    let ws = Workspace::new();
    let d2 = clean_restart(&ws, &[], &[]).await;
    for name in ["auto", "alpha", "beta"] {
        d2.wait_state(name, "running", LONG).await;
    }
    assert_eq!(d2.state_of("idle").await, "stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_shutdown_forget_brings_back_only_autostart_services() {
    let ws = Workspace::new();
    let d2 = clean_restart(&ws, &["--on-shutdown", "forget"], &[]).await;
    d2.wait_state("auto", "running", LONG).await;
    for name in ["alpha", "beta", "idle"] {
        assert_eq!(d2.state_of(name).await, "stopped", "{name} was forgotten");
    }
    let evs = d2.all_events().await;
    let restarted_at = last_daemon_start(&evs);
    assert!(first(&evs, "alpha", "starting", restarted_at).is_none(), "{}", render(&evs));
}

#[tokio::test(flavor = "multi_thread")]
async fn nanny_on_shutdown_env_forgets_too() {
    let ws = Workspace::new();
    let d2 = clean_restart(&ws, &[], &[("NANNY_ON_SHUTDOWN", "forget")]).await;
    d2.wait_state("auto", "running", LONG).await;
    for name in ["alpha", "beta", "idle"] {
        assert_eq!(d2.state_of(name).await, "stopped", "{name} was forgotten");
    }
}

/// A daemon SIGKILLed in the middle of a start (its status says `starting`, its grandchild
/// runs) leaves a next daemon that kills what is left of the group and restores the start.
/// tests/chaos.rs found a daemon that forgot both, the wish and the process group still queued
/// for the store when the status already showed them (now written first); that race needs the
/// chaos suite's load to show, this pins the contract, with a crash-looping neighbour keeping
/// the store busy.
#[tokio::test(flavor = "multi_thread")]
async fn a_start_shown_as_starting_survives_a_daemon_sigkill_with_its_wish_and_its_process_group() {
    let ws = Workspace::new();
    let state = ws.path("state");
    let gc = ws.path("slow.gc");
    Svc::new("slow").arg("--health-after").arg("2").arg("--grandchild").arg(&gc).write(&ws.services());
    Svc::new("looper")
        .no_port()
        .arg("--exit-after")
        .arg("0")
        .arg("1")
        .extra("restart: always\nrestart_delay: 0\nmax_restarts: 10000\nrestart_window: 1\n")
        .write(&ws.services());
    let mut daemon = Daemon::start_with_state(&ws.services(), &state);
    for round in 0..3 {
        let _ = daemon.start_svc("looper").await;
        daemon.stop_ok("slow").await;
        remove(&gc);
        let start = tokio::spawn({
            let (client, url) = (daemon.client.clone(), daemon.u("/services/slow/start"));
            async move { client.post(url).send().await.map(|r| r.status().as_u16()) }
        });
        daemon.wait_state("slow", "starting", LONG).await;
        let grandchild = read_pidfile(&gc).await;
        daemon.kill9();
        assert!(start.await.unwrap().is_err(), "round {round}: the start was answered before the kill");

        daemon = Daemon::start_with_state(&ws.services(), &state);
        wait_pid_gone(grandchild, LONG, &format!("round {round}: the grandchild of the start killed mid-way")).await;
        daemon.wait_state("slow", "running", LONG).await;
    }
}
