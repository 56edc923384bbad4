//! Every service converges to what was last asked of it: a start that dies is
//! restarted under the policy, a stop asked during a start wins, a restore is
//! retried until its dependency is up, giving up survives a daemon restart,
//! and an adopted GPU project is never joined by a second GPU holder.

mod common;
mod docker;

use std::time::Duration;

use common::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(30);

/// A native service without a health check: `sh -c SCRIPT`.
fn sh_service(ws: &Workspace, name: &str, script: &str, extra: &str) {
    let command = serde_json::to_string(&["sh", "-c", script]).unwrap();
    ws.write_manifest(name, &format!("name: {name}\ncommand: {command}\n{extra}"));
}

fn starting_events(evs: &[Value], service: &str) -> Vec<Value> {
    of_kind(evs, Some(service), "starting").into_iter().cloned().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_50ms_crash_loop_under_always_is_restarted_at_once_and_again() {
    let ws = Workspace::new();
    sh_service(&ws, "crashy", "sleep 0.05; exit 3", "restart: always\nrestart_delay: 0\nmax_restarts: 1000\n");
    let d = Daemon::start(&ws.services());

    let (code, v) = d.start_svc("crashy").await;
    assert_eq!(code, 500, "a start that dies is reported: {v}");
    assert!(v["detail"].as_str().unwrap().contains("exited with code 3 while starting"), "{v}");
    assert!(v["next"].as_str().is_some_and(|n| n.starts_with("restarting in 0.0 s (restart 1 of 1000")), "{v}");

    let evs =
        d.wait_events(LONG, "20 restarts of the crash loop", |evs| starting_events(evs, "crashy").len() > 20).await;
    let starts = starting_events(&evs, "crashy");
    // Measured on the daemon's own clock: 20 restarts within 4 s of the first start.
    let within = starts.iter().filter(|e| ms_between(&starts[0], e) <= 4000.0).count();
    assert!(within > 20, "only {within} starts within 4 s:\n{}", render(&evs));
    assert!(starts[1..].iter().all(|e| e["automatic"] == true), "{}", render(&evs));
    d.stop_ok("crashy").await;
    assert_eq!(d.state_of("crashy").await, "stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_failure_with_max_restarts_3_runs_four_times_then_fails() {
    let ws = Workspace::new();
    sh_service(&ws, "broken", "exit 1", "restart: on-failure\nrestart_delay: 0.05\nmax_restarts: 3\n");
    let d = Daemon::start(&ws.services());

    let (code, v) = d.start_svc("broken").await;
    assert_eq!(code, 500, "{v}");
    assert!(v["next"].as_str().is_some_and(|n| n.contains("restart 1 of 3")), "{v}");
    let st = d.wait_state("broken", "failed", LONG).await;
    assert_eq!(st["restarts"], 3, "{st}");
    assert!(st["last_error"].as_str().unwrap().contains("restarted 3 times"), "{st}");
    assert!(st["next"].is_null(), "{st}");
    let evs = d.events_of("broken").await;
    assert_eq!(starting_events(&evs, "broken").len(), 4, "1 + 3 runs:\n{}", render(&evs));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_during_a_dependency_wait_wins_over_the_start() {
    let ws = Workspace::new();
    ws.add(Svc::new("db").args(["--health-after", "2"]));
    ws.add(Svc::new("app").extra("depends_on: [db]\n"));
    let d = Daemon::start(&ws.services());

    let start = tokio::spawn({
        let url = d.u("/services/app/start");
        async move {
            let r = http_client().post(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    });
    d.wait_state("db", "starting", LONG).await;
    let stop = d.stop_ok("app").await;
    assert_eq!(stop["status"], "stopped", "{stop}");

    let (code, v) = start.await.unwrap();
    assert_eq!(code, 409, "the earlier start gives way to the later stop: {v}");
    assert!(v["detail"].as_str().unwrap().contains("stopped before it became healthy"), "{v}");
    d.wait_state("db", "running", LONG).await;
    assert_eq!(d.state_of("app").await, "stopped");
    let evs = d.events_of("app").await;
    assert!(starting_events(&evs, "app").is_empty(), "app was never launched:\n{}", render(&evs));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_waits_for_its_dependency_and_starts_once_it_is_up() {
    let ws = Workspace::new();
    let fail = ws.path("db.fail");
    ws.add(Svc::new("db").arg("--fail-start-file").arg(&fail).extra("restart: never\n"));
    ws.add(Svc::new("app").extra("depends_on: [db]\n"));
    let state = ws.path("state");
    let mut first = Daemon::start_with_state(&ws.services(), &state);
    first.start_ok("app").await;
    first.kill9();

    // The dependency cannot start when the daemon comes back.
    touch(&fail);
    let d = Daemon::start_with_state(&ws.services(), &state);
    d.wait_state("db", "failed", LONG).await;
    assert_eq!(d.state_of("app").await, "stopped", "app waits for db");

    // Once db is started by hand, app follows on its own.
    remove(&fail);
    d.start_ok("db").await;
    d.wait_state("app", "running", LONG).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_the_policy_gave_up_on_stays_failed_across_daemon_restarts() {
    let ws = Workspace::new();
    sh_service(&ws, "quitter", "exit 1", "restart: always\nrestart_delay: 0\nmax_restarts: 1\n");
    let state = ws.path("state");
    let mut first = Daemon::start_with_state(&ws.services(), &state);
    let _ = first.start_svc("quitter").await;
    let st = first.wait_state("quitter", "failed", LONG).await;
    let reason = st["last_error"].as_str().unwrap().to_string();
    first.terminate();

    for kill in [false, true] {
        let mut d = Daemon::start_with_state(&ws.services(), &state);
        let after = d.last_event_id().await;
        let st = d.wait_state("quitter", "failed", LONG).await;
        assert_eq!(st["last_error"], reason.as_str(), "{st}");
        // Restore is done once the other services are settled; give it a moment to misbehave.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let evs = d.events_after(Some("quitter"), after).await;
        assert!(starting_events(&evs, "quitter").is_empty(), "not started again:\n{}", render(&evs));
        if kill { d.kill9() } else { d.terminate() }
    }

    // Starting it by hand gives it a fresh budget.
    let d = Daemon::start_with_state(&ws.services(), &state);
    let (code, v) = d.start_svc("quitter").await;
    assert_eq!(code, 500, "{v}");
    assert!(v["next"].as_str().is_some_and(|n| n.contains("restart 1 of 1")), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_adopted_gpu_project_keeps_the_gpu_and_a_restored_gpu_service_waits_for_it() {
    if !docker::available("an_adopted_gpu_project_keeps_the_gpu_and_a_restored_gpu_service_waits_for_it") {
        return;
    }
    let ws = Workspace::new();
    ws.add(Svc::new("gpu-native").gpu());
    let pname = docker::unique("adoptgpu");
    let project = docker::Web::new("gpu-compose", &pname).gpu().write(&ws.services(), &pname);
    let state = ws.path("state");

    // The native GPU service is meant to be running when the daemon dies.
    let mut previous = Daemon::start_with_state(&ws.services(), &state);
    previous.start_ok("gpu-native").await;
    previous.kill9();
    // Meanwhile the Compose GPU project is brought up by hand.
    project.compose_ok(&["up", "-d"]);

    let d = Daemon::start_with_state(&ws.services(), &state);
    d.wait_state("gpu-compose", "running", LONG).await;
    let evs = d
        .wait_events(LONG, "the restored GPU service waits for the holder", |evs| {
            of_kind(evs, Some("gpu-native"), "waiting")
                .iter()
                .any(|e| e["reason"].as_str().unwrap().contains("gpu-compose"))
        })
        .await;
    let after = last_daemon_start(&evs);
    assert!(first(&evs, "gpu-native", "starting", after).is_none(), "never two holders:\n{}", render(&evs));
    assert_eq!(d.services().await["gpu_service_running"], "gpu-compose");
    assert_eq!(d.state_of("gpu-native").await, "backoff");
    assert!(project.only().running, "the adopted project is left alone");

    // Once the holder is stopped, the restored service gets the GPU on its own.
    d.stop_ok("gpu-compose").await;
    d.wait_state("gpu-native", "running", LONG).await;
    assert_eq!(d.services().await["gpu_service_running"], "gpu-native");
}
