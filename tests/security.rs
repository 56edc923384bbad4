//! Who may use the API: the bearer token on every route but `/health` and the dashboard's static
//! page (walking the router's own route list, so a route added later cannot be left open), the
//! refusal to listen on a non-loopback address without a token, cross-origin and foreign-`Host`
//! requests refused, slow and oversized requests cut off, and the CLI sending `NANNY_TOKEN`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;

const TOKEN: &str = "0123456789abcdef-test-token";

/// Every route, with `{name}` naming a real service.
fn routes() -> Vec<(Method, String)> {
    nanny::api::routes().into_iter().map(|(method, path)| (method, path.replace("{name}", "alpha"))).collect()
}

/// The status of `method path` with an optional bearer token (headers only: the SSE stream
/// stays open, and only its status matters).
async fn status_of(d: &Daemon, method: &Method, path: &str, token: Option<&str>) -> u16 {
    let mut request = d.client.request(method.clone(), d.u(path)).timeout(Duration::from_secs(60));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}")).status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_every_route_but_health_wants_it() {
    let ws = Workspace::new();
    Svc::new("alpha").write(&ws.services());
    let d = Daemon::start_with(&ws.services(), &ws.path("state"), &[], &[("NANNY_TOKEN", TOKEN)]);
    let routes = routes();
    assert!(routes.len() >= 13, "{routes:?}");
    for (method, path) in &routes {
        // `/health` and the dashboard's page and assets (no data) are open; nothing else.
        let open = nanny::api::open_paths().contains(&path.as_str());
        for (token, what) in [(None, "no token"), (Some("0123456789abcdef-wrong-token"), "a wrong token")] {
            let code = status_of(&d, method, path, token).await;
            match open {
                true => assert_eq!(code, 200, "{method} {path} with {what}"),
                false => assert_eq!(code, 401, "{method} {path} with {what}"),
            }
        }
        let code = status_of(&d, method, path, Some(TOKEN)).await;
        assert_ne!(code, 401, "{method} {path} with the token");
    }
    // The 401 says what to do, and names the scheme.
    let response = d.client.get(d.u("/services")).send().await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("Authorization: Bearer"), "{body}");

    // The CLI sends NANNY_TOKEN (or the file NANNY_TOKEN_FILE names).
    let out = cli_in(Some(&d.url), &["ls"], None, &[("NANNY_TOKEN", TOKEN)]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("alpha"), "{}", out.all());
    let file = ws.path("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let out = cli_in(Some(&d.url), &["ls"], None, &[("NANNY_TOKEN_FILE", &file.to_string_lossy())]);
    assert_eq!(out.code, 0, "{}", out.all());
    let out = cli_in(Some(&d.url), &["ls"], None, &[]);
    assert_ne!(out.code, 0, "{}", out.all());
    assert!(out.stderr.contains("NANNY_TOKEN"), "says which token: {}", out.all());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_no_route_asks_for_one_and_services_never_see_it() {
    let ws = Workspace::new();
    Svc::new("alpha").write(&ws.services());
    ws.write_manifest("env", "name: env\ncommand: [sh, -c, 'echo \"token=${NANNY_TOKEN-unset}\"; exec sleep 1000']\n");
    let d = Daemon::start(&ws.services());
    for (method, path) in &routes() {
        assert_ne!(status_of(&d, method, path, None).await, 401, "{method} {path}");
    }
    // A daemon given a token keeps it from its services.
    let d = Daemon::start_with(&ws.services(), &ws.path("state-b"), &[], &[("NANNY_TOKEN", TOKEN)]);
    let out = cli_in(Some(&d.url), &["start", "env"], None, &[("NANNY_TOKEN", TOKEN)]);
    assert_eq!(out.code, 0, "{}", out.all());
    let out = cli_in(Some(&d.url), &["logs", "env"], None, &[("NANNY_TOKEN", TOKEN)]);
    assert!(out.stdout.contains("token=unset"), "{}", out.all());
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_origin_and_foreign_host_requests_are_refused() {
    let ws = Workspace::new();
    Svc::new("alpha").write(&ws.services());
    let d = Daemon::start_with(&ws.services(), &ws.path("state"), &["--cors-origin", "https://dash.example"], &[]);
    let post = |origin: Option<&str>, host: Option<&str>| {
        let mut request = d.client.post(d.u("/services/alpha/stop"));
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        if let Some(host) = host {
            request = request.header("Host", host);
        }
        async move { request.send().await.unwrap() }
    };
    // A page on another site cannot make a visitor's browser drive the daemon.
    let response = post(Some("https://evil.example"), None).await;
    assert_eq!(response.status(), 403);
    assert_eq!(response.headers().get("access-control-allow-origin"), None);
    // DNS rebinding: a name that resolves to 127.0.0.1 is not a local Host.
    assert_eq!(post(None, Some("evil.example:8080")).await.status(), 403);
    // The configured origin may, and is told so.
    let response = post(Some("https://dash.example"), None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "https://dash.example");
    // No banner names the server.
    let response = d.client.get(d.u("/health")).send().await.unwrap();
    assert_eq!(response.headers().get("server"), None);
}

/// `nanny serve ARGS` on a fresh state dir until it prints its address or exits.
fn serve(ws: &Workspace, args: &[&str], env: &[(&str, &str)]) -> (std::process::Child, Option<String>) {
    let mut child = Command::new(NANNY)
        .arg("serve")
        .arg("--services")
        .arg(ws.services())
        .arg("--state-dir")
        .arg(ws.path(&format!("state-{}", args.join("-").replace(['/', ':', '.'], "_"))))
        .args(args)
        .env_remove("NANNY_TOKEN")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = String::new();
    let mut out = child.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    while !stdout.ends_with('\n') && out.read(&mut byte).unwrap_or(0) == 1 {
        stdout.push(byte[0] as char);
    }
    (child, stdout.strip_prefix("nanny listening on ").map(|url| url.trim().to_string()))
}

#[test]
fn a_non_loopback_address_needs_a_token_or_the_insecure_flag() {
    let ws = Workspace::new();
    let (child, url) = serve(&ws, &["--listen", "0.0.0.0:0"], &[]);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!((url, out.status.code()), (None, Some(2)), "{stderr}");
    assert!(stderr.contains("NANNY_TOKEN") && stderr.contains("--insecure-no-token"), "{stderr}");

    let (mut child, url) = serve(&ws, &["--listen", "0.0.0.0:0"], &[("NANNY_TOKEN", TOKEN)]);
    assert!(url.is_some(), "with a token it listens");
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut child, url) = serve(&ws, &["--listen", "0.0.0.0:0", "--insecure-no-token"], &[]);
    assert!(url.is_some(), "with the insecure flag it listens");
    child.kill().unwrap();
    child.wait().unwrap();

    let (child, _) = serve(&ws, &[], &[("NANNY_TOKEN", "short")]);
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16 characters"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_client_is_cut_off_and_an_oversized_head_refused() {
    let ws = Workspace::new();
    let d = Daemon::start_with(&ws.services(), &ws.path("state"), &["--request-timeout", "1s"], &[]);
    let addr = d.url.trim_start_matches("http://").to_string();

    // One byte every 200 ms: the head never completes, and the daemon hangs up.
    let slow = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            let mut stream = TcpStream::connect(&addr).unwrap();
            let started = Instant::now();
            for byte in b"GET /services HTTP/1.1\r\nHost: localhost\r\nX-Slow: ".iter().cycle() {
                if stream.write_all(&[*byte]).is_err() || started.elapsed() > Duration::from_secs(30) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            started.elapsed()
        }
    });
    let held = slow.await.unwrap();
    assert!(held < Duration::from_secs(10), "a slow client held a connection for {held:?}");

    let mut stream = TcpStream::connect(&addr).unwrap();
    let head = format!("GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    let _ = stream.write_all(head.as_bytes());
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // The daemon is unharmed.
    assert_eq!(d.get_ok("/health").await["status"], "healthy");
}
