//! The web dashboard (issue #19) in a real headless Chromium, driven by Selenium from
//! `tests/web/dashboard.py`: the page lists the services and filters them, a click starts one,
//! shows its progress and its row turns running without a reload, a failed start shows why and
//! the last lines, a GPU conflict is explained and forced in one click (and under the `vram`
//! policy the GPU panel follows placement and the wait queue, and a start can wait), a process
//! killed by pid shows its restart in the row and the timeline, the log view shows a new line,
//! a dropped event stream says "reconnecting" and resumes with nothing missed, an invalid
//! manifest appears with its error, and with a token the page asks for it, keeps it out of
//! every URL and shows the form again on a 401.
//!
//! Needs the test venv's `selenium` (`NANNY_TEST_PYTHON`, made by `.ci/run`) and Debian's
//! `chromium` and `chromium-driver`; without them these tests are skipped locally and fail in
//! CI (`CI=true`). `screenshots` (ignored) rewrites `docs/dashboard-*.png`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::json;

const TOKEN: &str = "0123456789abcdef-web-token";

/// The Python that has selenium, when Chromium and its driver are there too.
fn browser_python() -> Option<String> {
    let python = python_with("selenium")?;
    let present = ["/usr/bin/chromium", "/usr/bin/chromedriver"].iter().all(|p| Path::new(p).exists());
    needed(present, "chromium or chromium-driver is missing").then_some(python)
}

/// Runs one scenario of `tests/web/dashboard.py`, asserting that it passes.
fn drive(python: &str, d: &Daemon, config: serde_json::Value) {
    let mut config = config;
    config["url"] = json!(d.url);
    let out = run_script(python, "web/dashboard.py", &config.to_string());
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "dashboard check failed:\n{stdout}\n{}\ndaemon stderr:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.stderr()
    );
}

/// `talker` prints to stderr whatever the test writes into its file `say`.
fn talker() -> &'static str {
    "name: talker\ndescription: prints what it is told\ntags: [test]\n\
     command: [sh, -c, 'echo talker ready; while :; do if [ -e say ]; then cat say >&2; rm say; fi; sleep 0.05; done']\n"
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_is_live_and_drives_services() {
    let Some(python) = browser_python() else { return };
    let ws = Workspace::new();
    ws.add_examples();
    ws.add(
        Svc::new("alpha")
            .description("a test service, healthy after 1 s")
            .args(["--health-after", "1"])
            .extra("tags: [test]\nrestart_delay: 0.2\n"),
    );
    ws.write_manifest(
        "crasher",
        "name: crasher\nrestart: never\ncommand: [sh, -c, 'echo loading weights; echo CUDA out of memory >&2; exit 3']\n",
    );
    ws.add(Svc::new("gpu-a").gpu());
    ws.add(Svc::new("gpu-b").gpu());
    ws.write_manifest("talker", talker());
    let d = Daemon::start(&ws.services());
    let services = ws.services().to_string_lossy().into_owned();
    drive(&python, &d, json!({"scenario": "live", "services": services}));
    // What the page did, it did through the API.
    assert_eq!(d.state_of("gpu-b").await, "running");
    assert_eq!(d.status("alpha").await["restarts"], 1);
}

/// Under `--gpu-policy vram` with two declared GPUs: the GPU panel shows each GPU's holders with
/// their declared memory and its free memory as `GET /gpus` counts it, a start queued by another
/// client appears in the panel's queue and leaves it when it gives up or is placed, a start that
/// does not fit says who would have to stop and is forced in one click, and "Wait for the GPU"
/// queues it until room is freed.
#[tokio::test(flavor = "multi_thread")]
async fn the_gpu_panel_follows_placement_the_queue_and_refusals_under_vram() {
    let Some(python) = browser_python() else { return };
    let ws = Workspace::new();
    for (name, gb) in [("a", 16), ("b", 16), ("c", 12), ("d", 12)] {
        ws.add(Svc::new(name).vram(gb));
    }
    let args = ["--gpu-policy", "vram", "--gpu", "0:24GiB", "--gpu", "1:24GiB"];
    let d = Daemon::start_with(&ws.services(), &ws.path("state"), &args, &[]);
    let started = std::time::Instant::now();
    drive(&python, &d, json!({"scenario": "gpus"}));
    eprintln!("gpu scenario: {:?}", started.elapsed());
    assert_eq!(d.state_of("b").await, "running");
    assert!(
        d.all_events().await.iter().any(|e| e["kind"] == "gpu_preempted" && e["by"] == "d"),
        "d's force stopped someone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_the_page_asks_for_it_and_keeps_it_out_of_urls() {
    let Some(python) = browser_python() else { return };
    let ws = Workspace::new();
    ws.add(Svc::new("alpha"));
    let d = Daemon::start_with(&ws.services(), &ws.path("state"), &[], &[("NANNY_TOKEN", TOKEN)]);
    drive(&python, &d, json!({"scenario": "token", "token": TOKEN}));
}

/// The page and its assets are served without the token, with a content security policy that
/// allows only the daemon's own script, style and API.
#[tokio::test(flavor = "multi_thread")]
async fn the_page_is_open_and_holds_no_data() {
    let ws = Workspace::new();
    ws.add(Svc::new("alpha"));
    let d = Daemon::start_with(&ws.services(), &ws.path("state"), &[], &[("NANNY_TOKEN", TOKEN)]);
    for (path, kind) in [("/", "text/html"), ("/app.js", "text/javascript"), ("/style.css", "text/css")] {
        let response = d.client.get(d.u(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind), "{path}: {headers:?}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"), "{csp}");
        let body = response.text().await.unwrap();
        assert!(!body.contains("alpha"), "{path} holds no data");
        assert!(!body.contains("http://") && !body.contains("https://"), "{path} loads nothing from elsewhere");
    }
    // Only those exact paths are open.
    for path in ["/index.html", "/app.js/", "/services"] {
        let code = d.client.get(d.u(path)).send().await.unwrap().status();
        assert_eq!(code, 401, "{path}");
    }
}

/// Rewrites `docs/dashboard-wide.png`, `docs/dashboard-wide-dark.png`,
/// `docs/dashboard-narrow.png` and `docs/dashboard-gpu.png`: `cargo nextest run --run-ignored only -E 'test(screenshots)'`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "rewrites the screenshots in docs/; run by hand"]
async fn screenshots() {
    let python = browser_python().expect("selenium, chromium and chromedriver");
    let ws = Workspace::new();
    ws.add_examples();
    ws.write_manifest(
        "vision-ocr",
        "name: vision-ocr\ndescription: OCR model server (crashes while loading)\ntags: [vision]\n\
         restart: never\ncommand: [sh, -c, 'echo loading weights; echo CUDA out of memory >&2; exit 3']\n",
    );
    ws.write_manifest(
        "whisper",
        "name: whisper\ndescription: speech to text\ncommand: [python3, -m, http.server]\nhealth_timeout: fast\n",
    );
    // One declared 16 GiB GPU under the `vram` policy: image-gen (8 GiB) holds it, llm-chat
    // (12 GiB) does not fit, and the GPU panel shows the memory.
    let args = ["--gpu-policy", "vram", "--gpu", "0:16GiB"];
    let d = Daemon::start_with(&ws.services(), &ws.path("state"), &args, &[]);
    d.start_ok("image-gen").await;
    d.start_ok("embeddings").await;
    let (code, _) = d.start_svc("vision-ocr").await;
    assert_eq!(code, 500);
    d.wait_state("vision-ocr", "failed", Duration::from_secs(20)).await;
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    drive(
        &python,
        &d,
        json!({"scenario": "screenshots", "out": out, "running": ["image-gen", "embeddings"], "failed": ["vision-ocr"], "conflict": "llm-chat"}),
    );
}
