//! Webhooks and command hooks from the daemon's config file: filtered by kind and service,
//! signed with HMAC-SHA256, retried after a failing delivery, a dead endpoint that never
//! slows a start, a command hook fed the event on stdin, and `nanny webhook test`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

/// What the test's receiver got: (path, signature header, body).
type Received = Arc<Mutex<Vec<(String, Option<String>, Value)>>>;

/// A local HTTP server recording every delivery; `/flaky` fails its first request.
async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    async fn record(State(r): State<Received>, uri: axum::http::Uri, headers: HeaderMap, body: String) -> StatusCode {
        let path = uri.path().to_string();
        let signature = headers.get("x-nanny-signature").map(|v| v.to_str().unwrap().to_string());
        let mut r = r.lock().unwrap();
        let first_flaky = path == "/flaky" && !r.iter().any(|(p, _, _)| p == "/flaky");
        r.push((path, signature, serde_json::from_str(&body).unwrap()));
        if first_flaky { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK }
    }
    let app = axum::Router::new().route("/{hook}", post(record)).with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

fn deliveries(r: &Received, path: &str) -> Vec<(Option<String>, Value)> {
    r.lock().unwrap().iter().filter(|(p, _, _)| p == path).map(|(_, s, b)| (s.clone(), b.clone())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hooks_get_the_events_they_want_signed_retried_and_never_in_the_way() {
    let ws = Workspace::new();
    let (url, received) = receiver().await;
    Svc::new("web").extra("tags: [chat]\n").write(&ws.services());
    Svc::new("crashy")
        .args(["--exit-after", "0.2", "3"])
        .no_port()
        .extra("restart: always\nrestart_delay: 0.1\nmax_restarts: 1\nrestart_window: 60\n")
        .write(&ws.services());
    let notified = ws.path("notified.json");
    let config = ws.path("nanny.yaml");
    std::fs::write(
        &config,
        format!(
            "webhooks:\n\
             \x20 - {{name: signed, url: '{url}/signed', secret: s3cret, events: [restarted, failed], services: [crashy]}}\n\
             \x20 - {{name: flaky, url: '{url}/flaky', events: [healthy], tags: [chat], retries: 3}}\n\
             \x20 - {{name: dead, url: 'http://127.0.0.1:9/nothing', events: [starting, healthy], retries: 2, timeout: 1s}}\n\
             commands:\n\
             \x20 - {{name: notify, command: [sh, -c, 'cat > {}'], events: [healthy], services: [web]}}\n",
            notified.display()
        ),
    )
    .unwrap();
    let d = Daemon::start_with(&ws.services(), &ws.path("state"), &["--config", &config.to_string_lossy()], &[]);

    // The dead endpoint (retrying with backoff) never holds a start up.
    let started = std::time::Instant::now();
    d.start_ok("web").await;
    assert!(started.elapsed() < Duration::from_secs(20), "a start took {:?}", started.elapsed());
    let _ = d.start_svc("crashy").await;
    d.wait_state("crashy", "failed", LONG).await;

    // `signed`: only crashy's automatic restart and its failure, each signed with the secret.
    wait_until(LONG, "crashy's restart and failure delivered", || {
        let n = deliveries(&received, "/signed").len();
        async move { n >= 2 }
    })
    .await;
    let signed = deliveries(&received, "/signed");
    let kinds: Vec<&str> = signed.iter().map(|(_, b)| b["event"]["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["starting", "failed"], "{signed:?}");
    assert_eq!(signed[0].1["event"]["automatic"], true);
    for (signature, body) in &signed {
        assert_eq!(body["event"]["service"], "crashy");
        assert_eq!(body["service"]["name"], "crashy", "the payload carries the service's status: {body}");
        let expected = nanny::hooks::signature("s3cret", body.to_string().as_bytes());
        assert_eq!(signature.as_deref(), Some(expected.as_str()), "{body}");
    }

    // `flaky`: web's healthy event (tag chat), failed once, then delivered again.
    wait_until(LONG, "the flaky hook's retry", || {
        let n = deliveries(&received, "/flaky").len();
        async move { n >= 2 }
    })
    .await;
    let flaky = deliveries(&received, "/flaky");
    assert!(flaky.iter().all(|(_, b)| b["event"]["kind"] == "healthy" && b["event"]["service"] == "web"), "{flaky:?}");
    assert_eq!(flaky[0].1, flaky[1].1, "the retry sends the same event");

    // The command hook got the event on stdin.
    wait_until(LONG, "the command hook ran", || {
        let ok = std::fs::read_to_string(&notified).is_ok_and(|t| t.contains("\"healthy\""));
        async move { ok }
    })
    .await;

    // Failed deliveries are visible.
    wait_until(LONG, "the dead hook's failure counted", || {
        let client = d.client.clone();
        let url = d.u("/metrics");
        async move {
            let text = client.get(url).send().await.unwrap().text().await.unwrap();
            text.contains(r#"nanny_hook_deliveries_total{hook="dead",outcome="failed"}"#)
        }
    })
    .await;

    // A test delivery from the CLI.
    let out = cli_async(&d.url, &["webhook", "test", "signed"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(deliveries(&received, "/signed").iter().any(|(_, b)| b["event"]["kind"] == "test"));
    let out = cli_async(&d.url, &["webhook", "test", "nope"]).await;
    assert_eq!(out.code, 4, "{}", out.all());
    assert!(out.stderr.contains("no hook named 'nope' (configured: dead, flaky, notify, signed)"), "{}", out.all());
}

#[test]
fn a_broken_config_file_stops_the_daemon_with_the_reason() {
    let ws = Workspace::new();
    let config = ws.path("nanny.yaml");
    std::fs::write(&config, "webhooks:\n  - {name: a, url: 'http://x/h', events: [faild]}\n").unwrap();
    let out = std::process::Command::new(NANNY)
        .args(["serve", "--listen", "127.0.0.1:0", "--services"])
        .arg(ws.services())
        .arg("--state-dir")
        .arg(ws.path("state"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown event kind `faild`"), "{stderr}");
}
