//! GPU arbitration: at most one `gpu_required` service at a time, 409 on conflict, `force`
//! takes over, and concurrent requests never let two GPU services overlap (each fixture
//! GPU service takes an exclusive flock on one shared file and reports LOCK CONFLICT if it
//! ever runs at the same time as another).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn assert_no_lock_conflict_file(lock: &Path) {
    let conflicts = std::path::PathBuf::from(format!("{}.conflicts", lock.display()));
    if let Ok(text) = std::fs::read_to_string(&conflicts) {
        panic!("two GPU services overlapped:\n{text}");
    }
}

async fn assert_no_lock_conflict_logged(d: &Daemon, names: &[String]) {
    for n in names {
        let lines = d.log_text(n).await;
        assert!(!lines.iter().any(|l| l.contains("LOCK CONFLICT")), "service {n} printed LOCK CONFLICT: {lines:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn second_gpu_service_conflicts_and_force_takes_over() {
    let ws = Workspace::new();
    let lock = ws.path("gpu.lock");
    let a_pid = ws.path("a.pid");
    let b_pid = ws.path("b.pid");
    ws.add(Svc::new("gpu-a").gpu().arg("--lock").arg(&lock).arg("--pidfile").arg(&a_pid));
    ws.add(Svc::new("gpu-b").gpu().arg("--lock").arg(&lock).arg("--pidfile").arg(&b_pid));
    ws.add(Svc::new("cpu-c"));
    let d = Daemon::start(&ws.services());

    d.start_ok("gpu-a").await;
    let a = read_pidfile(&a_pid).await;
    assert_eq!(d.services().await["gpu_service_running"], "gpu-a");

    let (code, v) = d.start_svc("gpu-b").await;
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["detail"], "GPU service 'gpu-a' is already running", "{v}");
    assert_eq!(v["gpu_service_running"], "gpu-a", "{v}");
    assert_eq!(d.state_of("gpu-b").await, "stopped");
    assert!(!b_pid.exists(), "gpu-b must not have been spawned at all");

    // A CPU service is not affected by the GPU rule.
    d.start_ok("cpu-c").await;

    // force: the holder is stopped first (gracefully), then the new one starts.
    let (code, v) = d.start_forced("gpu-b").await;
    assert_eq!(code, 200, "{v}\n{}", d.stderr());
    assert_eq!(v["message"], "Service 'gpu-b' started successfully", "{v}");
    assert!(!pid_alive(a), "gpu-a must be gone once gpu-b is started");
    assert_eq!(d.state_of("gpu-a").await, "stopped");
    assert_eq!(d.state_of("gpu-b").await, "running");
    assert_eq!(d.state_of("cpu-c").await, "running", "force must not touch CPU services");
    let list = d.services().await;
    assert_eq!(list["gpu_service_running"], "gpu-b", "{list}");
    // The holder was stopped gracefully (SIGTERM handler ran → exit code 0, no signal).
    let st = d.status("gpu-a").await;
    assert_eq!(st["last_exit"]["code"], 0, "gpu-a should have exited on SIGTERM: {st}");

    // Forcing the holder itself is a no-op.
    let b = read_pidfile(&b_pid).await;
    let (code, v) = d.start_forced("gpu-b").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(d.status("gpu-b").await["pid"], b);

    d.stop_ok("gpu-b").await;
    assert!(d.services().await["gpu_service_running"].is_null());
    d.start_ok("gpu-a").await;
    d.stop_ok("gpu-a").await;
    d.stop_ok("cpu-c").await;
    assert_no_lock_conflict_file(&lock);
    assert_no_lock_conflict_logged(&d, &["gpu-a".into(), "gpu-b".into()]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_starting_gpu_service_already_holds_the_gpu() {
    let ws = Workspace::new();
    let lock = ws.path("gpu.lock");
    ws.add(Svc::new("warming").gpu().arg("--lock").arg(&lock).arg("--health-after").arg("3"));
    ws.add(Svc::new("other").gpu().arg("--lock").arg(&lock));
    let d = std::sync::Arc::new(Daemon::start(&ws.services()));

    let d2 = d.clone();
    let first = tokio::spawn(async move { d2.start_svc("warming").await });
    d.wait_state("warming", "starting", Duration::from_secs(15)).await;
    let (code, v) = d.start_svc("other").await;
    assert_eq!(code, 409, "a starting GPU service holds the GPU: {v}");
    assert_eq!(v["gpu_service_running"], "warming", "{v}");
    let (code, v) = first.await.unwrap();
    assert_eq!(code, 200, "{v}");
    d.stop_ok("warming").await;
    assert_no_lock_conflict_file(&lock);
}

fn gpu_fleet(ws: &Workspace, lock: &Path, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let name = format!("gpu-{i}");
            ws.add(Svc::new(&name).gpu().arg("--lock").arg(lock).arg("--pidfile").arg(ws.path(&format!("{name}.pid"))));
            name
        })
        .collect()
}

/// Start every one of `names` at the same moment (forced or not); each name with its answer.
async fn race_starts(d: &std::sync::Arc<Daemon>, names: &[String], force: bool) -> Vec<(String, (u16, Value))> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(names.len()));
    let tasks: Vec<_> = names
        .iter()
        .map(|n| {
            let (d, n, barrier) = (d.clone(), n.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let r = if force { d.start_forced(&n).await } else { d.start_svc(&n).await };
                (n, r)
            })
        })
        .collect();
    let mut results = vec![];
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_starts_admit_exactly_one_gpu_service() {
    let ws = Workspace::new();
    let lock = ws.path("gpu.lock");
    let names = gpu_fleet(&ws, &lock, 5);
    let d = std::sync::Arc::new(Daemon::start(&ws.services()));

    let results = race_starts(&d, &names, false).await;
    let winners: Vec<&String> = results.iter().filter(|(_, (c, _))| *c == 200).map(|(n, _)| n).collect();
    let losers: Vec<&(String, (u16, Value))> = results.iter().filter(|(_, (c, _))| *c == 409).collect();
    assert_eq!(winners.len(), 1, "exactly one 200: {results:?}");
    assert_eq!(losers.len(), 4, "four 409: {results:?}");
    let winner = winners[0].clone();
    for (n, (_, v)) in &losers {
        assert_eq!(v["gpu_service_running"], winner.as_str(), "409 for {n} names the holder: {v}");
    }

    let list = d.services().await;
    assert_eq!(list["gpu_service_running"], winner.as_str(), "{list}");
    for n in &names {
        let expect = if *n == winner { "running" } else { "stopped" };
        assert_eq!(d.state_of(n).await, expect, "{n}");
        if *n != winner {
            assert!(!ws.path(&format!("{n}.pid")).exists(), "losing service {n} must never have been spawned");
        }
    }
    assert_no_lock_conflict_file(&lock);
    assert_no_lock_conflict_logged(&d, &names).await;
    d.stop_ok(&winner).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_forced_starts_end_with_one_gpu_service() {
    let ws = Workspace::new();
    let lock = ws.path("gpu.lock");
    let names = gpu_fleet(&ws, &lock, 5);
    let d = std::sync::Arc::new(Daemon::start(&ws.services()));

    // Someone already holds the GPU, then five forced starts race.
    d.start_ok("gpu-0").await;

    let results = race_starts(&d, &names, true).await;
    for (n, (code, v)) in &results {
        assert!(
            *code == 200 || *code == 409,
            "forced start of {n} -> {code} {v} (a 500 here usually means LOCK CONFLICT)\n{}",
            d.stderr()
        );
    }
    assert!(results.iter().any(|(_, (c, _))| *c == 200), "{results:?}");

    // Give in-flight work a chance to settle: wait until nothing is starting/stopping.
    wait_until(Duration::from_secs(30), "no GPU service is starting or stopping", || {
        let d = d.clone();
        let names = names.clone();
        async move {
            for n in &names {
                let s = d.state_of(n).await;
                if s == "starting" || s == "stopping" {
                    return false;
                }
            }
            true
        }
    })
    .await;

    let mut running = vec![];
    for n in &names {
        let st = d.status(n).await;
        if st["is_running"] == true {
            running.push(n.clone());
        }
    }
    assert_eq!(running.len(), 1, "exactly one GPU service running at the end: {running:?}");
    let holder = &running[0];
    assert_eq!(d.services().await["gpu_service_running"], holder.as_str());
    // Every other GPU process is gone.
    for n in &names {
        if n == holder {
            continue;
        }
        if let Ok(s) = std::fs::read_to_string(ws.path(&format!("{n}.pid"))) {
            let pid: i32 = s.trim().parse().unwrap();
            assert!(!pid_alive(pid), "{n} (pid {pid}) still alive while {holder} holds the GPU");
        }
    }
    assert_no_lock_conflict_file(&lock);
    assert_no_lock_conflict_logged(&d, &names).await;
    d.stop_ok(holder).await;
}

/// A GPU service whose manifest stops asking for the GPU while it waits to restart gives the
/// GPU up when it restarts, so another GPU service can start.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_that_no_longer_needs_the_gpu_gives_it_up_at_its_restart() {
    let ws = Workspace::new();
    // Healthy, then exits 1 a moment later; restarted after a 2 s backoff.
    let crashy = Svc::new("crashy").gpu().args(["--exit-after-healthy", "0.3", "1"]).extra("restart_delay: 2\n");
    ws.add(crashy.clone());
    ws.add(Svc::new("other").gpu());
    let d = Daemon::start(&ws.services());
    d.start_ok("crashy").await;
    d.wait_state("crashy", "backoff", Duration::from_secs(20)).await;
    assert_eq!(d.services().await["gpu_service_running"], "crashy", "backoff keeps the GPU");

    // The manifest no longer asks for the GPU (and no longer crashes).
    let mut calm = Svc::new("crashy").extra("restart_delay: 2\n");
    calm.port = crashy.port;
    ws.write_manifest("crashy", &calm.yaml());
    let (code, r) = d.post("/rediscover", None).await;
    assert_eq!(code, 200, "{r}");
    d.wait_state("crashy", "running", Duration::from_secs(20)).await;

    let (code, v) = d.start_svc("other").await;
    assert_eq!(code, 200, "the GPU must be free once crashy runs without needing it: {v}");
    assert_eq!(d.services().await["gpu_service_running"], "other");
    d.stop_ok("other").await;
    d.stop_ok("crashy").await;
}
