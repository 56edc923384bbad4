//! Stopping kills whole process groups; the daemon leaves no service behind when it is
//! terminated (SIGTERM/SIGINT) or killed (SIGKILL, via PR_SET_PDEATHSIG).

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread")]
async fn stop_kills_the_whole_process_group() {
    let ws = Workspace::new();
    let pidfile = ws.path("parent.pid");
    let gcfile = ws.path("grandchild.pid");
    ws.add(Svc::new("family").arg("--pidfile").arg(&pidfile).arg("--grandchild").arg(&gcfile));
    let d = Daemon::start(&ws.services());
    d.start_ok("family").await;
    let parent = read_pidfile(&pidfile).await;
    let gc = read_pidfile(&gcfile).await;
    assert!(pid_alive(parent) && pid_alive(gc));

    d.stop_ok("family").await;
    assert!(!pid_alive(parent), "service process {parent} alive after stop returned");
    assert!(!pid_alive(gc), "grandchild {gc} (same process group) alive after stop returned");
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_escalates_to_sigkill_after_stop_timeout() {
    let ws = Workspace::new();
    let pidfile = ws.path("stubborn.pid");
    let gcfile = ws.path("stubborn-gc.pid");
    ws.add(
        Svc::new("stubborn")
            .arg("--ignore-term")
            .arg("--pidfile")
            .arg(&pidfile)
            .arg("--grandchild")
            .arg(&gcfile)
            .stop_timeout(1.0),
    );
    let d = Daemon::start(&ws.services());
    d.start_ok("stubborn").await;
    let parent = read_pidfile(&pidfile).await;
    let gc = read_pidfile(&gcfile).await;

    let t0 = Instant::now();
    d.stop_ok("stubborn").await;
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(900), "SIGKILL came before stop_timeout: {took:?}");
    assert!(took < Duration::from_secs(10), "stop took {took:?} with stop_timeout 1 s");
    assert!(!pid_alive(parent), "SIGTERM-ignoring service {parent} survived stop");
    assert!(!pid_alive(gc), "grandchild {gc} survived stop");
    let st = d.status("stubborn").await;
    assert!(
        st["last_exit"]["signal"].as_str().is_some_and(|s| s.contains("KILL")),
        "last_exit should record SIGKILL: {st}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_stop_signal_is_used() {
    let ws = Workspace::new();
    let pidfile = ws.path("int.pid");
    // The fixture ignores SIGTERM; SIGINT (Python's default KeyboardInterrupt) ends it.
    ws.add(
        Svc::new("int")
            .no_port()
            .arg("--ignore-term")
            .arg("--pidfile")
            .arg(&pidfile)
            .stop_timeout(30.0)
            .extra("stop_signal: SIGINT\n"),
    );
    let d = Daemon::start(&ws.services());
    d.start_ok("int").await;
    let pid = read_pidfile(&pidfile).await;
    let t0 = Instant::now();
    d.stop_ok("int").await;
    assert!(t0.elapsed() < Duration::from_secs(20), "SIGINT should end it long before stop_timeout");
    assert!(!pid_alive(pid));
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_sigterm_stops_every_service() {
    let ws = Workspace::new();
    let p1 = ws.path("one.pid");
    let g1 = ws.path("one-gc.pid");
    let p2 = ws.path("two.pid");
    let p3 = ws.path("three.pid");
    ws.add(Svc::new("one").arg("--pidfile").arg(&p1).arg("--grandchild").arg(&g1));
    ws.add(Svc::new("two").gpu().arg("--pidfile").arg(&p2).arg("--ignore-term").stop_timeout(1.0));
    ws.add(Svc::new("three").no_port().arg("--pidfile").arg(&p3));
    let mut d = Daemon::start(&ws.services());
    d.start_ok("one").await;
    d.start_ok("two").await;
    d.start_ok("three").await;
    let pids = [read_pidfile(&p1).await, read_pidfile(&g1).await, read_pidfile(&p2).await, read_pidfile(&p3).await];
    assert!(pids.iter().all(|&p| pid_alive(p)));

    d.signal(Signal::SIGTERM);
    let status = tokio::task::block_in_place(|| d.wait_exit(Duration::from_secs(30)));
    assert_eq!(status.code(), Some(0), "daemon should exit 0 after SIGTERM: {status:?}\n{}", d.stderr());
    for p in pids {
        assert!(!pid_alive(p), "pid {p} survived the daemon's SIGTERM shutdown");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_sigint_stops_every_service() {
    let ws = Workspace::new();
    let p1 = ws.path("one.pid");
    ws.add(Svc::new("one").arg("--pidfile").arg(&p1));
    let mut d = Daemon::start(&ws.services());
    d.start_ok("one").await;
    let pid = read_pidfile(&p1).await;
    d.signal(Signal::SIGINT);
    let status = tokio::task::block_in_place(|| d.wait_exit(Duration::from_secs(30)));
    assert!(status.code().is_some(), "daemon should exit on its own after SIGINT: {status:?}");
    assert!(!pid_alive(pid), "service survived the daemon's SIGINT shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_sigkill_takes_its_children_along() {
    let ws = Workspace::new();
    let p1 = ws.path("orphan.pid");
    let p2 = ws.path("quiet.pid");
    ws.add(Svc::new("orphan").arg("--pidfile").arg(&p1));
    ws.add(Svc::new("quiet").no_port().arg("--pidfile").arg(&p2).arg("--ignore-term"));
    let mut d = Daemon::start(&ws.services());
    d.start_ok("orphan").await;
    d.start_ok("quiet").await;
    let pids = [read_pidfile(&p1).await, read_pidfile(&p2).await];

    tokio::task::block_in_place(|| d.kill9());
    for p in pids {
        wait_pid_gone(p, Duration::from_secs(10), "service of a SIGKILLed daemon").await;
    }
}

/// Services must not die just because the daemon thread that spawned them went idle
/// (PR_SET_PDEATHSIG fires on the death of the spawning *thread*; tokio retires idle
/// blocking threads after 10 s).
#[tokio::test(flavor = "multi_thread")]
async fn services_outlive_idle_daemon_threads() {
    let ws = Workspace::new();
    let pidfile = ws.path("long.pid");
    ws.add(Svc::new("long").arg("--pidfile").arg(&pidfile));
    let d = Daemon::start(&ws.services());
    d.start_ok("long").await;
    let pid = read_pidfile(&pidfile).await;
    // Observation window, not synchronisation: nothing should happen during it.
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(pid_alive(pid), "service {pid} died while nobody touched it");
    let st = d.status("long").await;
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(st["pid"], pid, "{st}");
    assert_eq!(st["restarts"], 0, "{st}");
    d.stop_ok("long").await;
}
