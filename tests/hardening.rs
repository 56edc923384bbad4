//! Hardening: one daemon per state directory, the GPU environment a native GPU service gets,
//! the daemon's own health while the Docker engine does not answer, and a body too large for
//! the API costing nothing to the client's next request.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_on_the_same_state_dir_is_refused_and_touches_nothing() {
    let ws = Workspace::new();
    let state = ws.path("state");
    Svc::new("alpha").write(&ws.services());
    let first = Daemon::start_with_state(&ws.services(), &state);
    first.start_ok("alpha").await;
    let pid = pid_of(&first.status("alpha").await);
    let before = first.last_event_id().await;

    // Same state dir, another port: refused at once, naming the first daemon.
    let second = tokio::task::spawn_blocking({
        let (services, state) = (ws.services(), state.clone());
        move || {
            Command::new(NANNY)
                .args(["serve", "--listen", "127.0.0.1:0", "--services"])
                .arg(&services)
                .arg("--state-dir")
                .arg(&state)
                .env_remove("NANNY_STATE_DIR")
                .output()
                .unwrap()
        }
    });
    let out = tokio::time::timeout(LONG, second).await.expect("the second daemon exits").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains(&format!("pid {}", first.pid())), "names the first daemon's pid: {stderr}");
    assert!(stderr.contains(&first.url), "names the first daemon's address: {stderr}");

    // The first daemon's service was not taken for a leftover.
    assert!(pid_alive(pid), "alpha's process survives");
    let status = first.status("alpha").await;
    assert_eq!((status["status"].as_str(), pid_of(&status)), (Some("running"), pid), "{status}");
    let evs = first.events_after(None, before).await;
    assert!(of_kind(&evs, None, "orphan_killed").is_empty(), "{}", render(&evs));
}

/// A native GPU service started with `command` that prints the GPU variables it sees.
fn gpu_env_printer(ws: &Workspace) {
    ws.write_manifest(
        "gpu-env",
        "name: gpu-env\ngpu_required: true\nvram_gb: 1\n\
         command: [sh, -c, 'echo \"CUDA=${CUDA_VISIBLE_DEVICES-unset} NVIDIA=${NVIDIA_VISIBLE_DEVICES-unset}\"; exec sleep 1000']\n",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_native_gpu_service_sees_every_gpu_or_the_listed_ones() {
    let ws = Workspace::new();
    gpu_env_printer(&ws);

    // Every GPU: CUDA_VISIBLE_DEVICES is left unset (`all` would hide every GPU from CUDA).
    let mut d = Daemon::start(&ws.services());
    d.start_ok("gpu-env").await;
    d.wait_log_line("gpu-env", LONG, "the environment line", |l| {
        l["line"].as_str().is_some_and(|l| l.starts_with("CUDA="))
    })
    .await;
    assert!(d.log_text("gpu-env").await.contains(&"CUDA=unset NVIDIA=unset".to_string()));
    d.terminate();

    // Listed GPUs: CUDA gets exactly the list.
    let d = Daemon::start_with(&ws.services(), &ws.path("state-b"), &["--gpu-devices", "1,GPU-8f2c"], &[]);
    d.start_ok("gpu-env").await;
    d.wait_log_line("gpu-env", LONG, "the environment line", |l| {
        l["line"].as_str().is_some_and(|l| l.starts_with("CUDA="))
    })
    .await;
    assert!(d.log_text("gpu-env").await.contains(&"CUDA=1,GPU-8f2c NVIDIA=unset".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn gpu_devices_that_are_not_indices_or_uuids_are_refused_at_start() {
    let ws = Workspace::new();
    let out = Command::new(NANNY)
        .args(["serve", "--listen", "127.0.0.1:0", "--services"])
        .arg(ws.services())
        .arg("--state-dir")
        .arg(ws.path("state"))
        .env("NANNY_GPU_DEVICES", "0,first")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {stderr}");
    assert!(stderr.contains("`first` is neither a GPU index"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_answers_within_a_second_while_the_docker_engine_hangs() {
    let ws = Workspace::new();
    Svc::new("alpha").write(&ws.services());
    // An "engine" that accepts connections and never says a word.
    let socket = ws.path("hung-docker.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let host = format!("unix://{}", socket.display());
    let d = Daemon::start_with(&ws.services(), &ws.path("state"), &[], &[("DOCKER_HOST", &host)]);

    for _ in 0..2 {
        let asked = std::time::Instant::now();
        let health = d.get_ok("/health").await;
        let took = asked.elapsed();
        assert!(took < Duration::from_secs(3), "GET /health took {took:?}: {health}");
        assert_eq!(health["status"], "healthy", "{health}");
        assert_eq!(health["runtimes"]["docker"]["status"], "not answering", "{health}");
        assert_eq!(health["runtimes"]["docker"]["available"], false, "{health}");
    }
    // Native services are not held up by the engine.
    d.start_ok("alpha").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_ls_show_each_services_cpu_and_memory_over_its_process_group() {
    let ws = Workspace::new();
    // The memory is held by a child of the leader: the whole group counts.
    ws.write_manifest(
        "hog",
        "name: hog\ncommand: [sh, -c, 'python3 -c \"import time; b = b\\\"x\\\" * (64 << 20); print(\\\"held\\\", flush=True); time.sleep(1000)\" & wait']\n",
    );
    ws.write_manifest("spin", "name: spin\ncommand: [sh, -c, 'while :; do :; done']\n");
    let d = Daemon::start(&ws.services());
    d.start_ok("hog").await;
    d.start_ok("spin").await;

    let st = d
        .wait_status("hog", LONG, "64 MiB resident", |st| st["memory_bytes"].as_u64().is_some_and(|m| m >= 64 << 20))
        .await;
    assert!(st["memory_bytes"].as_u64().unwrap() < 256 << 20, "{st}");
    d.wait_status("spin", LONG, "a busy loop's CPU", |st| st["cpu_percent"].as_f64().is_some_and(|c| c > 20.0)).await;

    let out = cli(Some(&d.url), &["ls"]);
    let header = out.stdout.lines().next().unwrap_or_default().to_string();
    assert!(header.contains("CPU") && header.contains("MEM"), "{}", out.all());
    let hog = out.stdout.lines().find(|l| l.starts_with("hog ")).unwrap_or_else(|| panic!("{}", out.all()));
    assert!(hog.contains(" MiB"), "{hog}");

    // A stopped service has no reading.
    d.stop_ok("spin").await;
    let st = d.wait_status("spin", LONG, "no reading once stopped", |st| st["cpu_percent"].is_null()).await;
    assert!(st["memory_bytes"].is_null(), "{st}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_reaching_outside_its_directory_is_invalid_unless_the_daemon_allows_it() {
    let ws = Workspace::new();
    let outside = ws.path("elsewhere");
    std::fs::create_dir_all(&outside).unwrap();
    ws.write_manifest("escape", "name: escape\ncommand: [sleep, '1000']\nworking_dir: ../../elsewhere\n");
    // Through a symlink inside the directory, too.
    std::fs::create_dir_all(ws.services().join("escape2")).unwrap();
    std::os::unix::fs::symlink(&outside, ws.services().join("escape2/data")).unwrap();
    ws.write_manifest("escape2", "name: escape2\ncommand: [sleep, '1000']\nworking_dir: data\n");

    let d = Daemon::start(&ws.services());
    let list = d.services().await;
    for dir in ["escape", "escape2"] {
        let errors = invalid_entry(&list, &format!("{dir}/service.yaml"))["errors"].to_string();
        assert!(errors.contains("working_dir") && errors.contains("outside the service directory"), "{errors}");
        assert!(errors.contains("--allow-outside-paths"), "says how to allow it: {errors}");
    }
    let out = cli_in(None, &["validate", &ws.services().to_string_lossy()], None, &[]);
    assert_eq!(out.code, 1, "{}", out.all());

    let d = Daemon::start_with(&ws.services(), &ws.path("state-b"), &["--allow-outside-paths"], &[]);
    assert_eq!(names(&d.services().await["services"]), vec!["escape", "escape2"]);
    let out = cli_in(None, &["validate", "--allow-outside-paths", &ws.services().to_string_lossy()], None, &[]);
    assert_eq!(out.code, 0, "{}", out.all());
}

/// Found by tests/chaos.rs: a 413 (body over 64 KiB, not read to its end) closed the connection
/// without saying so, so a client that kept the connection lost its next request on it.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_too_large_closes_its_connection_and_the_clients_next_request_is_answered() {
    let ws = Workspace::new();
    Svc::new("alpha").no_port().write(&ws.services());
    let daemon = Daemon::start(&ws.services());
    // One pooled connection, reused for every request.
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(1).build().unwrap();
    for round in 0..5 {
        let huge = client
            .post(daemon.u("/services/alpha/start"))
            .header("content-type", "application/json")
            .body(vec![b' '; 1024 * 1024])
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: the oversized start got no answer: {e:?}"));
        assert_eq!(huge.status(), 413, "round {round}");
        assert_eq!(huge.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]), "round {round}");
        let next = client.get(daemon.u("/services/alpha/status")).send().await;
        let next = next.unwrap_or_else(|e| panic!("round {round}: the request after the 413 was lost: {e:?}"));
        assert_eq!(next.status(), 200, "round {round}");
    }
    assert_eq!(daemon.state_of("alpha").await, "stopped", "no oversized start started anything");
}
