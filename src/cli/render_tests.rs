//! The renderers on fixed answers (built from JSON, as the daemon sends
//! them), pinned by snapshots; times in UTC so they read the same anywhere.

use serde_json::{Value, json};

use super::*;
use crate::cli::answers::{Detail, Status, Summary};

fn utc() -> Style {
    Style { zone: None, color: false }
}

fn from<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap()
}

fn status(name: &str, state: &str, extra: Value) -> Status {
    let mut value = json!({ "name": name, "status": state, "restarts": 0, "consecutive_health_failures": 0 });
    for (k, v) in extra.as_object().unwrap() {
        value[k] = v.clone();
    }
    from(value)
}

fn running() -> Status {
    status(
        "image-gen",
        "running",
        json!({
            "pid": 4242, "uptime_seconds": 323.4, "started_at": "2026-12-01T16:40:00.123Z", "restarts": 2,
            "cpu_percent": 12.5, "memory_bytes": 1_610_612_736u64,
            "last_health": { "at": "2026-12-01T16:45:21.5Z", "ok": true, "http_code": 200, "latency_ms": 3.21, "message": "HTTP 200 OK" },
            "a_field_from_a_newer_daemon": true
        }),
    )
}

fn summary(name: &str, state: &str, extra: Value) -> Summary {
    let mut value = json!({ "name": name, "status": state });
    for (k, v) in extra.as_object().unwrap() {
        value[k] = v.clone();
    }
    from(value)
}

#[test]
fn human_durations_keep_two_units() {
    let cases = [(0.4, "0s"), (59.9, "59s"), (323.0, "5m 23s"), (3600.0, "1h 0m"), (187_200.0, "2d 4h")];
    for (secs, text) in cases {
        assert_eq!(human_duration(secs), text);
    }
    assert_eq!(seconds(30.0), "30 s");
    assert_eq!(seconds(0.5), "0.5 s");
    assert_eq!(bytes(512), "512 B");
    assert_eq!(bytes(1_610_612_736), "1.5 GiB");
}

#[test]
fn argv_is_quoted_as_a_shell_shows_it() {
    let argv: Vec<String> = ["python3", "server.py", "--prompt", "a cat's hat", "--n=2"].map(String::from).into();
    assert_eq!(shell_quote(&argv), r#"python3 server.py --prompt 'a cat'\''s hat' --n=2"#);
}

#[test]
fn times_have_a_fixed_width_to_the_millisecond() {
    let ts: Timestamp = "2026-12-01T16:45:00Z".parse().unwrap();
    assert_eq!(utc().time(ts), "2026-12-01T16:45:00.000Z");
    let local = Style { zone: Some(TimeZone::fixed(jiff::tz::offset(2))), color: false };
    assert_eq!(local.time(ts), "2026-12-01 18:45:00.000");
    assert_eq!(local.time("2026-12-01T16:45:00.5Z".parse().unwrap()).len(), local.time(ts).len());
}

#[test]
fn ls_table() {
    let rows = vec![
        (
            summary("image-gen", "running", json!({ "gpu_required": true, "vram_gb": 24.0, "port": 8090 })),
            Some(running()),
        ),
        (
            summary("llm", "backoff", json!({ "ports": ["8001", "8002"] })),
            Some(status(
                "llm",
                "backoff",
                json!({ "restarts": 3, "next": "restarting in 4.0 s (restart 3 of 10 within 300 s)" }),
            )),
        ),
        (
            summary("tts", "unhealthy", json!({ "port": 9000 })),
            Some(status(
                "tts",
                "unhealthy",
                json!({ "pid": 77, "uptime_seconds": 187_300.0, "consecutive_health_failures": 3, "restart_pending": true,
                        "last_health": { "at": "2026-12-01T16:45:21Z", "ok": false, "latency_ms": 1.0, "message": "HTTP 503" } }),
            )),
        ),
        (
            summary("asr", "starting", json!({})),
            Some(status("asr", "starting", json!({ "stage": "waiting for health", "pid": 78, "uptime_seconds": 2.0 }))),
        ),
        (
            summary("old", "failed", json!({})),
            Some(status("old", "failed", json!({ "last_error": "exited with code 1" }))),
        ),
        (summary("gone", "stopped", json!({})), None),
    ];
    insta::assert_snapshot!(services_table(&rows));
}

#[test]
fn status_sections() {
    insta::assert_snapshot!("status_running", status_text(&running(), &utc()));
    let failed = status(
        "llm",
        "failed",
        json!({ "restarts": 10, "last_error": "service 'llm' exited with code 1 before it became healthy",
                "last_exit": { "code": 1, "signal": null, "at": "2026-12-01T16:30:00Z" } }),
    );
    insta::assert_snapshot!("status_failed", status_text(&failed, &utc()));
}

#[test]
fn show_sections() {
    let native: Detail = from(json!({
        "name": "image-gen", "description": "Stable Diffusion", "version": "1.2.0", "gpu_required": true, "vram_gb": 24.0,
        "runtime": "native", "command": ["python3", "server.py", "--prompt", "a b"], "working_dir": "/srv/image-gen",
        "env": { "MODEL": "sdxl", "GREETING": "hello world" }, "env_file": null, "ports": [], "port": 8090,
        "health_endpoint": "http://127.0.0.1:8090/health", "health_command": null, "start_timeout": 300.0,
        "health_timeout": 30.0, "health_interval": 10.0, "health_failures": 3, "tags": ["gpu", "images"],
        "autostart": false, "restart": "on-failure", "restart_delay": 1.0, "restart_delay_max": 60.0, "max_restarts": 10,
        "restart_window": 300.0, "stop_signal": "SIGTERM", "stop_timeout": 10.0,
        "depends_on": [{ "name": "redis", "condition": "healthy" }], "priority": 0, "pinned": false,
        "manifest_path": "/srv/services/image-gen/service.yaml", "status": "running",
        "state": running_json()
    }));
    insta::assert_snapshot!("show_native", detail_text(&native, &utc()));
    let compose: Detail = from(json!({
        "name": "vllm", "runtime": "compose", "compose_file": "/srv/services/vllm/compose.yaml", "project": null,
        "start_timeout": 600.0, "health_timeout": 120.0, "health_interval": 10.0, "stop_signal": "SIGTERM",
        "stop_timeout": 10.0, "restart": "always", "status": "stopped",
        "state": { "name": "vllm", "status": "stopped", "restarts": 0 }
    }));
    insta::assert_snapshot!("show_compose", detail_text(&compose, &utc()));
}

fn running_json() -> Value {
    json!({ "name": "image-gen", "status": "running", "pid": 4242, "uptime_seconds": 323.4,
            "started_at": "2026-12-01T16:40:00.123Z", "restarts": 2 })
}

#[test]
fn events_rows() {
    let events: Vec<Event> = from(json!([
        { "id": 1, "ts": "2026-12-01T16:40:00Z", "service": null, "kind": "daemon_started", "version": "0.1.0", "pid": 10, "message": "daemon started" },
        { "id": 2, "ts": "2026-12-01T16:40:00.25Z", "service": "image-gen", "kind": "starting", "pid": 4242, "automatic": false, "message": "starting (pid 4242)" },
        { "id": 13, "ts": "2026-12-01T16:40:02.5Z", "service": "image-gen", "kind": "healthy", "startup_ms": 2250.0, "message": "healthy after 2250 ms" }
    ]));
    insta::assert_snapshot!("events_table", events_table(&events, &utc()));
    let follow: Vec<String> =
        std::iter::once(event_header(&utc())).chain(events.iter().map(|e| event_row(e, &utc()))).collect();
    insta::assert_snapshot!("events_follow", follow.join("\n"));
}

#[test]
fn log_lines_with_and_without_prefix() {
    let lines: Vec<LogLine> = from(json!([
        { "ts": "2026-12-01T16:40:00.001Z", "stream": "nanny", "line": "spawned pid 4242" },
        { "ts": "2026-12-01T16:40:00.5Z", "stream": "stdout", "line": "svc starting" },
        { "ts": "2026-12-01T16:40:01Z", "stream": "stderr", "line": "warning: slow disk" }
    ]));
    let alone: Vec<String> = lines.iter().map(|l| log_line(l, None, &utc())).collect();
    insta::assert_snapshot!("logs_one_service", alone.join("\n"));
    let prefixes = [Prefix { name: "llm", index: 0, width: 9 }, Prefix { name: "image-gen", index: 1, width: 9 }];
    let mixed: Vec<String> =
        lines.iter().enumerate().map(|(i, l)| log_line(l, Some(&prefixes[i % 2]), &utc())).collect();
    insta::assert_snapshot!("logs_several_services", mixed.join("\n"));
    let colored = Style { zone: None, color: true };
    assert_eq!(
        log_line(&lines[0], Some(&prefixes[1]), &colored),
        "\x1b[33mimage-gen\x1b[0m | 2026-12-01T16:40:00.001Z nanny  spawned pid 4242"
    );
}

#[test]
fn outcomes_on_one_line() {
    let outcome: Outcome =
        from(json!({ "message": "Service 'b' stopped", "also_stopped": ["c", "d"], "status": "stopped" }));
    assert_eq!(outcome_text(&outcome), "Service 'b' stopped; also stopped (they depend on it): c, d");
    let forced: Outcome = from(json!({ "message": "started", "preempted": ["g1"] }));
    assert_eq!(outcome_text(&forced), "started; stopped to free the GPU: g1");
}

#[test]
fn gpus_show_each_gpu_its_holders_and_the_queue() {
    let gpus: crate::cli::answers::Gpus = from(json!({
        "policy": "vram", "source": "nvml", "detail": "NVML: 2 GPU(s)", "headroom_bytes": 1u64 << 30, "holder": null,
        "gpus": [
            { "index": 0, "uuid": "GPU-8f3a", "name": "NVIDIA H200", "total_bytes": 150_323_855_360u64,
              "used_bytes": 32_212_254_720u64, "free_bytes": 107_374_182_400u64, "foreign_bytes": 2_147_483_648u64,
              "holders": [
                { "service": "llm-chat", "vram_bytes": 21_474_836_480u64, "measured_bytes": 30_064_771_072u64,
                  "since": "2026-12-01T19:00:00Z", "over": true },
                { "service": "embeddings", "vram_bytes": 4_294_967_296u64, "measured_bytes": null,
                  "since": "2026-12-01T19:01:00Z", "over": false } ] },
            { "index": 1, "uuid": "GPU-77c0", "name": "NVIDIA H200", "total_bytes": 150_323_855_360u64,
              "used_bytes": 0, "free_bytes": 149_250_113_536u64, "foreign_bytes": 0, "holders": [] } ],
        "queue": [ { "service": "image-gen", "vram_bytes": 85_899_345_920u64, "gpus": 2, "priority": 5,
                     "since": "2026-12-01T19:02:00Z", "deadline": "2026-12-01T19:07:00Z" } ]
    }));
    insta::assert_snapshot!("gpus_vram", gpus_text(&gpus, &utc()));
    let exclusive: crate::cli::answers::Gpus = from(json!({
        "policy": "exclusive", "source": "none", "detail": "NVML not available (libnvidia-ml.so.1 not loaded), and no GPU was declared (--gpu)",
        "headroom_bytes": 1u64 << 30, "holder": "image-gen", "gpus": [], "queue": []
    }));
    insta::assert_snapshot!("gpus_exclusive", gpus_text(&exclusive, &utc()));
}
