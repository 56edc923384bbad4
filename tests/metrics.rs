//! `GET /metrics`, read by the Prometheus client library's own text-format parser (Python
//! `prometheus-client`), with values checked against states the test brings about: services
//! running, stopped and crash-looping, health checks, API requests and events by kind.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

/// Every sample of the exposition, as the real parser reads it.
fn parse(python: &str, text: &str) -> (Value, Vec<Value>) {
    let out = run_script(python, "metrics/parse.py", text);
    assert!(
        out.status.success(),
        "the parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines =
        out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap());
    (lines.next().unwrap(), lines.collect())
}

fn value(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][k] == *v))
        .and_then(|s| s["value"].as_f64())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_tell_what_the_services_are_doing() {
    let Some(python) = python_with("prometheus_client") else { return };
    let ws = Workspace::new();
    Svc::new("web").write(&ws.services());
    Svc::new("idle").write(&ws.services());
    Svc::new("crashy")
        .args(["--exit-after", "0.2", "3"])
        .no_port()
        .extra("restart: always\nrestart_delay: 0.1\n")
        .write(&ws.services());
    Svc::new("gpu").gpu().write(&ws.services());
    let d = Daemon::start(&ws.services());
    d.start_ok("web").await;
    d.start_ok("gpu").await;
    let _ = d.start_svc("crashy").await;
    d.wait_events(LONG, "crashy restarted twice", |evs| {
        evs.iter().filter(|e| e["service"] == "crashy" && e["kind"] == "starting" && e["automatic"] == true).count()
            >= 2
    })
    .await;
    // Resource use is sampled every 2 s.
    d.wait_status("web", LONG, "a memory reading", |st| st["memory_bytes"].is_u64()).await;

    let text = d.client.get(d.u("/metrics")).send().await.unwrap().text().await.unwrap();
    let (meta, samples) = parse(&python, &text);
    let types = &meta["types"];
    for (family, kind) in [
        ("nanny_service_state", "gauge"),
        ("nanny_service_restarts", "counter"),
        ("nanny_service_exits", "counter"),
        ("nanny_events", "counter"),
        ("nanny_health_check_duration_seconds", "histogram"),
        ("nanny_api_requests", "counter"),
        ("nanny_api_request_duration_seconds", "histogram"),
        ("nanny_service_resident_memory_bytes", "gauge"),
        ("nanny_service_cpu_seconds", "counter"),
        ("nanny_gpu_reserved_bytes", "gauge"),
    ] {
        assert_eq!(types[family], kind, "{family} in {meta}");
    }
    let state =
        |service: &str, state: &str| value(&samples, "nanny_service_state", &[("service", service), ("state", state)]);
    assert_eq!(state("web", "running"), Some(1.0));
    assert_eq!(state("web", "stopped"), Some(0.0));
    assert_eq!(state("idle", "stopped"), Some(1.0));
    let one_hot: f64 = samples
        .iter()
        .filter(|s| s["name"] == "nanny_service_state" && s["labels"]["service"] == "idle")
        .map(|s| s["value"].as_f64().unwrap())
        .sum();
    assert_eq!(one_hot, 1.0, "exactly one state per service");
    assert_eq!(value(&samples, "nanny_service_up", &[("service", "web")]), Some(1.0));
    assert_eq!(value(&samples, "nanny_service_healthy", &[("service", "idle")]), Some(0.0));
    assert!(value(&samples, "nanny_service_restarts_total", &[("service", "crashy")]).unwrap() >= 2.0);
    assert!(value(&samples, "nanny_service_exits_total", &[("service", "crashy"), ("code", "3")]).unwrap() >= 2.0);
    assert!(value(&samples, "nanny_events_total", &[("kind", "starting")]).unwrap() >= 4.0);
    assert!(value(&samples, "nanny_health_check_duration_seconds_count", &[("service", "web")]).unwrap() >= 1.0);
    assert_eq!(
        value(&samples, "nanny_health_check_failures_total", &[("service", "web")]),
        None,
        "no failure while running"
    );
    let starts = [("method", "POST"), ("route", "/services/{name}/start"), ("status", "200")];
    assert!(value(&samples, "nanny_api_requests_total", &starts).unwrap() >= 2.0);
    assert!(value(&samples, "nanny_service_resident_memory_bytes", &[("service", "web")]).unwrap() > 1e6);
    assert_eq!(value(&samples, "nanny_gpu_holder", &[("service", "gpu")]), Some(1.0));
    assert_eq!(value(&samples, "nanny_gpu_reserved_bytes", &[]), Some(4.0 * (1u64 << 30) as f64), "vram_gb: 4");

    // OpenMetrics when asked.
    let response = d.client.get(d.u("/metrics")).header("Accept", "application/openmetrics-text").send().await.unwrap();
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    assert!(response.text().await.unwrap().ends_with("# EOF\n"));
}
