//! Running under systemd: the unit `nanny systemd-unit` prints passes `systemd-analyze verify`,
//! the daemon notifies `READY=1` once its API answers, `STATUS=` lines, watchdog pings when
//! `WATCHDOG_USEC` asks for them and `STOPPING=1` on SIGTERM, and its services never see the
//! notification or watchdog variables.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const LONG: Duration = Duration::from_secs(60);

/// Datagrams from the daemon until one contains `what` (or the deadline).
fn wait_for(socket: &UnixDatagram, what: &str, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + LONG;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).to_string();
            seen.push(message.clone());
            if message.contains(what) {
                return message;
            }
        }
    }
    panic!("no `{what}` from the daemon within {LONG:?}; got {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_tells_systemd_when_it_is_ready_alive_and_stopping() {
    let ws = Workspace::new();
    ws.write_manifest(
        "env",
        "name: env\ncommand: [sh, -c, 'echo \"notify=${NOTIFY_SOCKET-unset} watchdog=${WATCHDOG_USEC-unset}\"; exec sleep 1000']\n",
    );
    let path = ws.path("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let env = [("NOTIFY_SOCKET", path.to_str().unwrap()), ("WATCHDOG_USEC", "400000")];
    let mut d = Daemon::start_with(&ws.services(), &ws.path("state"), &[], &env);
    let mut seen = Vec::new();

    let ready = tokio::task::block_in_place(|| wait_for(&socket, "READY=1", &mut seen));
    assert!(ready.contains("STATUS=1 services, 0 running"), "{ready}");
    assert_eq!(d.get_ok("/health").await["status"], "healthy", "the API answers once READY=1 is sent");
    tokio::task::block_in_place(|| wait_for(&socket, "WATCHDOG=1", &mut seen));

    d.start_ok("env").await;
    let line = d
        .wait_log_line("env", LONG, "the env line", |l| l["line"].as_str().is_some_and(|l| l.starts_with("notify=")))
        .await;
    assert_eq!(line["line"], "notify=unset watchdog=unset", "services never see systemd's variables");
    let status = tokio::task::block_in_place(|| wait_for(&socket, "STATUS=1 services, 1 running", &mut seen));
    assert!(!status.contains("READY"), "{status}");

    d.signal(nix::sys::signal::Signal::SIGTERM);
    tokio::task::block_in_place(|| wait_for(&socket, "STOPPING=1", &mut seen));
    d.wait_exit(LONG);
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let ws = Workspace::new();
    for user in [false, true] {
        let mut args = vec!["systemd-unit", "--services", "/srv/my services"];
        if user {
            args.push("--user");
        }
        let out = Command::new(NANNY).args(&args).output().unwrap();
        let unit = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success());
        for line in ["Type=notify", "Restart=on-failure", "KillMode=mixed", "WatchdogSec=", "NotifyAccess=main"] {
            assert!(unit.contains(line), "{line} in\n{unit}");
        }
        assert!(unit.contains("--services \"/srv/my services\""), "a path with a space is quoted:\n{unit}");
        assert!(unit.contains(if user { "WantedBy=default.target" } else { "WantedBy=multi-user.target" }));
        let Ok(analyze) = Command::new("systemd-analyze").arg("--version").output() else {
            eprintln!("systemd-analyze is not installed: the unit is not verified");
            return;
        };
        assert!(analyze.status.success());
        let file = ws.path("nanny.service");
        std::fs::write(&file, &unit).unwrap();
        // Verified by the system manager's rules (a user manager needs a session to verify in).
        let out = Command::new("systemd-analyze").arg("verify").arg(&file).output().unwrap();
        let complaints = String::from_utf8_lossy(&out.stderr);
        // The unit names a nanny binary that exists (this one); the services dir need not.
        assert!(out.status.success(), "systemd-analyze verify:\n{complaints}\n{unit}");
        assert!(!complaints.contains("nanny.service"), "systemd-analyze verify complains:\n{complaints}\n{unit}");
    }
}
