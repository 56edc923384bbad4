//! nanny in its own container, as the README's "Container" section runs it: the base image made
//! by `deploy/build-base.sh` from this machine's Debian packages (skipped when an image with the
//! same content hash exists), the daemon image from `deploy/Dockerfile` with the binary under
//! test, and the repository's `compose.yaml` brought up on a free port with a temporary services
//! directory holding a Compose service (the busybox httpd test image) and a native one. The
//! seed's curl calls are made against it from the host: `/health`, `/services`, starting the
//! Compose service from inside the container (its container appears on the host's engine), its
//! status `running`, stopping it; the native service runs inside the container and answers on
//! the host's loopback (host network). Everything is removed afterwards, even when the test
//! fails (guards). Without Docker the test is skipped locally and fails in CI (`CI=true`).

mod common;
mod docker;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use docker::{Project, Web};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `deploy/build-base.sh`: the base image's tag (`nanny-base:HASH`).
fn build_base() -> String {
    let out = std::process::Command::new("bash")
        .arg(repo().join("deploy/build-base.sh"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run deploy/build-base.sh");
    assert!(out.status.success(), "deploy/build-base.sh failed:\n{}", docker::text(&out));
    let image = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(image.starts_with("nanny-base:"), "deploy/build-base.sh printed {image:?}");
    image
}

/// The daemon's image from `deploy/Dockerfile` on `base`, with the binary under test copied in
/// (a build context of its own holding only the Dockerfile and the binary).
fn build_daemon_image(base: &str, tag: &str) {
    let ctx = tempfile::Builder::new().prefix("nanny-image-").tempdir().expect("tempdir");
    fs::copy(repo().join("deploy/Dockerfile"), ctx.path().join("Dockerfile")).unwrap();
    fs::copy(NANNY, ctx.path().join("nanny")).expect("copy the nanny binary into the build context");
    let ctx_path = ctx.path().to_string_lossy().into_owned();
    let base_arg = format!("BASE={base}");
    let out = docker::docker(&[
        "build",
        "-q",
        "--build-arg",
        &base_arg,
        "--build-arg",
        "NANNY_BIN=nanny",
        "-t",
        tag,
        &ctx_path,
    ]);
    assert!(out.status.success(), "docker build of {tag} failed:\n{}", docker::text(&out));
}

/// The daemon's Compose project (the repository's `compose.yaml`) and its image: `down -v`
/// (containers, network, the state volume), then whatever is left by label, then the image,
/// when dropped, even when the test panics.
struct DaemonProject {
    name: String,
    env: Vec<(String, String)>,
    image: String,
}

impl DaemonProject {
    fn compose(&self, args: &[&str]) -> std::process::Output {
        let file = repo().join("compose.yaml");
        let file = file.to_string_lossy();
        let mut all = vec!["-p", self.name.as_str(), "-f", &file];
        all.extend_from_slice(args);
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        docker::compose_env(&repo(), &all, &env)
    }

    fn logs(&self) -> String {
        docker::text(&self.compose(&["logs", "--no-color", "--tail", "60"]))
    }
}

impl Drop for DaemonProject {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- the daemon container's log ----\n{}\n---- end ----", self.logs());
        }
        let _ = self.compose(&["down", "-v", "--remove-orphans", "-t", "20"]);
        let label = format!("label={}={}", docker::PROJECT_LABEL, self.name);
        let ids = docker::docker(&["ps", "-aq", "--filter", &label]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = docker::docker(&["rm", "-f", "-v", id]);
        }
        let _ = docker::docker(&["volume", "rm", &format!("{}_nanny-state", self.name)]);
        let _ = docker::docker(&["rmi", &self.image]);
    }
}

/// A native service that runs inside the container: python3's http.server (the image has
/// python3, for its Compose tool) on `port` of the host's loopback.
fn write_native(services: &Path, port: u16) {
    let dir = services.join("native");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("service.yaml"),
        format!(
            "name: native\ndescription: python3 http.server inside the container\nversion: 1.0.0\n\
             gpu_required: false\ncommand: [python3, -m, http.server, \"{port}\", --bind, 127.0.0.1]\n\
             port: {port}\nhealth_endpoint: http://127.0.0.1:{port}/\nhealth_timeout: 30\nstop_timeout: 2\n"
        ),
    )
    .unwrap();
}

async fn curl(method: &str, url: &str) -> (u16, Value) {
    let client = http_client();
    let req = if method == "POST" { client.post(url) } else { client.get(url) };
    let resp = req.send().await.unwrap_or_else(|e| panic!("curl -X {method} {url}: {e}"));
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_up_serves_the_seed_api_and_runs_compose_and_native_services() {
    if !docker::available("container") {
        return;
    }
    let begin = Instant::now();
    let base = build_base();
    let base_s = begin.elapsed().as_secs_f64();
    let tag = format!("nanny-test-daemon:{}", std::process::id());
    build_daemon_image(&base, &tag);
    let image_s = begin.elapsed().as_secs_f64() - base_s;

    let ws = Workspace::new();
    let services = ws.services();
    let project_name = docker::unique("ctr-web");
    let web = Web::new("web", &project_name);
    // Declared before the daemon's project: dropped after it, so the daemon stops it first.
    let _web_project: Project = web.write(&services, &project_name);
    let native_port = free_port();
    write_native(&services, native_port);

    let port = free_port();
    let daemon = DaemonProject {
        name: docker::unique("ctr-daemon"),
        env: vec![
            ("NANNY_IMAGE".into(), tag.clone()),
            ("NANNY_SERVICES_DIR".into(), services.to_string_lossy().into_owned()),
            ("NANNY_LISTEN".into(), format!("127.0.0.1:{port}")),
        ],
        image: tag.clone(),
    };
    let up = daemon.compose(&["up", "-d", "--no-build"]);
    assert!(up.status.success(), "compose up of compose.yaml failed:\n{}", docker::text(&up));
    let base_url = format!("http://localhost:{port}");
    let u = |path: &str| format!("{base_url}{path}");

    // curl http://localhost:8080/health: healthy, on the mounted directory, with the image's
    // Compose tool and the host's engine.
    let deadline = Instant::now() + LONG;
    let health = loop {
        if let Ok(r) = http_client().get(u("/health")).send().await
            && r.status() == 200
        {
            let h: Value = r.json().await.unwrap_or_default();
            if h["runtimes"]["compose"]["tool"].is_string() {
                break h;
            }
        }
        assert!(Instant::now() < deadline, "no /health with a Compose tool within {LONG:?}:\n{}", daemon.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["services_dir"], services.to_string_lossy().as_ref(), "{health}");
    assert_eq!(health["runtimes"]["docker"]["status"], "available", "{health}");
    let ready_s = begin.elapsed().as_secs_f64() - base_s - image_s;

    // curl http://localhost:8080/services
    let (code, list) = curl("GET", &u("/services")).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(names(&list["services"]), ["native", "web"], "{list}");

    // curl -X POST http://localhost:8080/services/web/start: Compose runs inside the container,
    // on the host's engine; the health endpoint it publishes is reached on the host's loopback.
    let (code, started) = curl("POST", &u("/services/web/start")).await;
    assert_eq!(code, 200, "start web: {started}\n{}", daemon.logs());
    assert_eq!(started["status"], "running", "{started}");
    let ctr = _web_project.only();
    assert!(ctr.running, "the web container runs on the host's engine: {ctr:?}");
    let (code, st) = curl("GET", &u("/services/web/status")).await;
    assert_eq!((code, st["status"].as_str()), (200, Some("running")), "{st}");
    assert_eq!(http_client().get(web.url("/health")).send().await.map(|r| r.status().as_u16()).ok(), Some(200));

    // The native service runs inside the container and listens on the host's loopback.
    let (code, started) = curl("POST", &u("/services/native/start")).await;
    assert_eq!(code, 200, "start native: {started}\n{}", daemon.logs());
    assert_eq!(started["status"], "running", "{started}");
    let answer = http_client().get(format!("http://127.0.0.1:{native_port}/")).send().await;
    assert_eq!(answer.map(|r| r.status().as_u16()).ok(), Some(200), "the native service answers from the container");

    // curl -X POST http://localhost:8080/services/web/stop: the container stops (`compose stop`).
    let (code, stopped) = curl("POST", &u("/services/web/stop")).await;
    assert_eq!((code, stopped["status"].as_str()), (200, Some("stopped")), "{stopped}");
    let ctr = _web_project.only();
    assert!(!ctr.running, "the web container is stopped: {ctr:?}");
    let (code, stopped) = curl("POST", &u("/services/native/stop")).await;
    assert_eq!((code, stopped["status"].as_str()), (200, Some("stopped")), "{stopped}");
    let gone = http_client().get(format!("http://127.0.0.1:{native_port}/")).send().await;
    assert!(gone.is_err(), "the native service no longer listens");

    let total = begin.elapsed().as_secs_f64();
    eprintln!(
        "container figures: base {base_s:.1} s (cached when the same packages and script), daemon image \
         {image_s:.1} s, compose up to /health {ready_s:.1} s, whole flow {total:.1} s"
    );
    assert!(total < 90.0, "the container flow took {total:.1} s (bound: 90 s with the base cached)");
}
