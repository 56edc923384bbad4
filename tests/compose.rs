//! The Compose runtime against a real Docker engine: start/stop/status/logs through the API,
//! a killed container restarted per policy (noticed from the engine's event stream), a project
//! started by hand adopted at daemon start, a daemon restart (SIGKILL) adopting instead of
//! restarting, clear errors for a broken compose file and an unpullable image while a native
//! service keeps running, GPU exclusivity between a Compose and a native GPU service plus the
//! override environment, a GPU reservation replaced by the placed `device_ids` (checked on the
//! real tool's merged `config`), a container's host pid known as its service's (the NVML
//! mapping), `/health` runtimes, and `remove` running `down`.
//!
//! Every test uses its own Compose project (`nt-TAG-PID-N`), removed by a guard even when the
//! test panics. Without Docker the tests are skipped locally and fail in CI (`CI=true`).

mod common;
mod docker;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use docker::{IMAGE, NO_SUCH_IMAGE, Web};
use serde_json::{Value, json};

/// Generous: Compose v1 takes 1-3 s per `up` on a 2-core machine, more under parallel tests.
const LONG: Duration = Duration::from_secs(90);

macro_rules! require_docker {
    () => {
        if !docker::available(std::thread::current().name().unwrap_or(module_path!())) {
            return;
        }
    };
}

/// The status' `containers`, as strings.
fn containers_of(st: &Value) -> Vec<String> {
    st["containers"]
        .as_array()
        .unwrap_or_else(|| panic!("status without a `containers` array: {st}"))
        .iter()
        .map(|c| c.as_str().unwrap_or_else(|| panic!("container name is not a string: {st}")).to_string())
        .collect()
}

/// Milliseconds between two instants, absolute.
fn ms_apart(a: jiff::Timestamp, b: jiff::Timestamp) -> f64 {
    if a > b { a.duration_since(b).as_secs_f64() * 1000.0 } else { b.duration_since(a).as_secs_f64() * 1000.0 }
}

/// GET `url` without a proxy; the status code (None if it could not connect).
async fn http_code(url: &str) -> Option<u16> {
    http_client().get(url).send().await.ok().map(|r| r.status().as_u16())
}

/// Polls docker until the container `id` satisfies `cond`; returns it.
async fn wait_container(id: &str, what: &str, cond: impl Fn(&docker::Ctr) -> bool) -> docker::Ctr {
    let mut last = None;
    wait_until(LONG, &format!("container {id}: {what}"), || {
        last = docker::inspect(id);
        let ok = last.as_ref().is_some_and(&cond);
        async move { ok }
    })
    .await;
    last.unwrap()
}

// ---------------------------------------------------------------------------------------------
// /health
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_the_docker_engine_and_the_compose_tool() {
    require_docker!();
    let ws = Workspace::new();
    let d = Daemon::start(&ws.services());

    // The Compose tool is looked for in the background (`version` is slow to start); until it
    // is found, `/health` says it is still looking rather than wait.
    let mut h = d.get_ok("/health").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while h["runtimes"]["compose"]["tool"].is_null() && Instant::now() < deadline {
        let error = h["runtimes"]["compose"]["error"].as_str().unwrap_or_default().to_string();
        assert!(error.starts_with("still looking"), "{h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        h = d.get_ok("/health").await;
    }
    let rt = &h["runtimes"];
    assert!(rt.is_object(), "/health without `runtimes`: {h}");

    let engine = &rt["docker"];
    assert_eq!(engine["available"], true, "docker runtime: {engine}");
    assert_eq!(engine["error"], Value::Null, "docker runtime: {engine}");
    let server_version = docker::docker_ok(&["version", "--format", "{{.Server.Version}}"]);
    let api_version = docker::docker_ok(&["version", "--format", "{{.Server.APIVersion}}"]);
    assert_eq!(engine["version"], server_version.as_str(), "docker runtime: {engine}");
    assert_eq!(engine["api_version"], api_version.as_str(), "docker runtime: {engine}");

    let tool = &rt["compose"];
    let (_, _, tool_name) = docker::compose_tool();
    assert_eq!(tool["tool"], tool_name.as_str(), "compose runtime: {tool}");
    assert_eq!(tool["version"], docker::compose_version().as_str(), "compose runtime: {tool}");
    assert_eq!(tool["error"], Value::Null, "compose runtime: {tool}");
}

// ---------------------------------------------------------------------------------------------
// start / status / logs / stop
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn start_status_logs_and_stop_through_the_api() {
    require_docker!();
    let ws = Workspace::new();
    let pname = docker::unique("life");
    let web = Web::new("web", &pname).extra("health_interval: 2\n");
    let p = web.write(&ws.services(), &pname);
    let d = Daemon::start(&ws.services());

    // Discovered, not started by discovery.
    assert_eq!(d.state_of("web").await, "stopped");
    assert!(p.containers().is_empty(), "discovery must not start anything: {:?}", p.containers());
    let list = d.services().await;
    let row = list["services"].as_array().unwrap().iter().find(|s| s["name"] == "web").cloned();
    let row = row.unwrap_or_else(|| panic!("web not listed: {list}"));
    assert_eq!(row["health_endpoint"], web.health_url().as_str(), "{row}");

    // ---- start ----
    let t0 = jiff::Timestamp::now();
    let v = d.start_ok("web").await;
    assert_eq!(v["message"], "Service 'web' started successfully", "{v}");
    assert_eq!(v["health_endpoint"], web.health_url().as_str(), "{v}");

    // Answered once the container runs and the endpoint answers.
    let c = p.only();
    assert!(c.running, "container after start: {c:?}");
    assert_eq!(c.project, pname);
    assert!(c.started_at >= t0.checked_sub(jiff::SignedDuration::from_secs(1)).unwrap(), "{c:?}");
    assert_eq!(http_code(&web.health_url()).await, Some(200), "health endpoint right after start");

    let st = d.status("web").await;
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(st["is_running"], true, "{st}");
    assert_eq!(st["is_healthy"], true, "{st}");
    assert_eq!(st["pid"], Value::Null, "a Compose service has no pid: {st}");
    assert_eq!(containers_of(&st), vec![c.name.clone()], "{st}");
    let uptime = st["uptime"].as_str().unwrap_or_else(|| panic!("uptime: {st}"));
    assert!(is_uptime(uptime), "uptime {uptime:?}");
    assert_eq!(st["last_exit"], Value::Null, "{st}");

    let evs = d.events_of("web").await;
    let ks = kinds(&evs);
    let s = ks.iter().position(|k| k == "starting").unwrap_or_else(|| panic!("no starting: {}", render(&evs)));
    let h = ks.iter().position(|k| k == "healthy").unwrap_or_else(|| panic!("no healthy: {}", render(&evs)));
    assert!(s < h, "starting before healthy: {}", render(&evs));
    assert_eq!(evs[s]["automatic"], false, "{}", render(&evs));
    assert_eq!(evs[s]["pid"], Value::Null, "{}", render(&evs));

    // Starting again is a no-op: the same container, not restarted.
    d.start_ok("web").await;
    let again = p.only();
    assert_eq!((again.id.as_str(), again.started_at), (c.id.as_str(), c.started_at), "second start restarted it");

    // ---- logs ----
    let marker = format!("/marker-{}", std::process::id());
    assert_eq!(http_code(&web.url(&marker)).await, Some(404));
    let prefix = format!("[{}] ", c.name);
    let hit = d
        .wait_log_line("web", LONG, "httpd logged the marker request", |l| {
            let line = l["line"].as_str().unwrap_or("");
            line.starts_with(&prefix) && line.contains(&marker)
        })
        .await;
    // busybox httpd -vv logs requests on stderr.
    assert_eq!(hit["stream"], "stderr", "{hit}");
    assert!(is_rfc3339(hit["ts"].as_str().unwrap_or("")), "{hit}");

    let lines = d.log_lines("web").await;
    let nanny: Vec<&str> =
        lines.iter().filter(|l| l["stream"] == "nanny").map(|l| l["line"].as_str().unwrap_or("")).collect();
    assert!(
        nanny.iter().any(|l| l.contains(&pname)),
        "the daemon's own lines (compose output) should be in the log, naming the project: {nanny:?}"
    );
    for l in &lines {
        if l["stream"] == "stdout" || l["stream"] == "stderr" {
            let line = l["line"].as_str().unwrap_or("");
            assert!(line.starts_with(&prefix), "container output must be prefixed with {prefix:?}: {l}");
        }
    }
    let one = d.logs("web", 1).await;
    assert_eq!(one["lines"].as_array().map(Vec::len), Some(1), "tail=1: {one}");
    let (code, bad) = d.get("/services/web/logs?tail=abc").await;
    assert_eq!(code, 400, "{bad}");

    // ---- stop: containers stopped, kept ----
    let after = d.last_event_id().await;
    let v = d.stop_ok("web").await;
    // busybox httpd is PID 1 and ignores SIGTERM: the answer may say it was killed.
    assert!(v["message"].as_str().unwrap().starts_with("Service 'web' stopped"), "{v}");
    let stopped = docker::inspect(&c.id).unwrap_or_else(|| panic!("stop must keep the container ({})", c.name));
    assert!(!stopped.running, "container after stop: {stopped:?}");
    assert_eq!(stopped.status, "exited", "{stopped:?}");
    assert_eq!(docker::ps_all_names(&pname), vec![c.name.clone()], "`docker ps -a` still lists it");
    assert!(docker::image_exists(IMAGE));

    let st = d.status("web").await;
    assert_eq!(st["status"], "stopped", "{st}");
    assert_eq!(st["is_running"], false, "{st}");
    assert_eq!(st["uptime"], Value::Null, "{st}");
    assert_eq!(st["pid"], Value::Null, "{st}");
    let evs = d.events_after(Some("web"), after).await;
    assert_eq!(kinds(&evs).last().map(String::as_str), Some("stopped"), "{}", render(&evs));
    assert!(of_kind(&evs, None, "stopping").len() == 1, "{}", render(&evs));
    for e in of_kind(&evs, None, "exited") {
        assert_eq!(e["expected"], true, "a requested stop is expected: {}", render(&evs));
    }
    assert!(of_kind(&evs, None, "backoff").is_empty(), "no restart after a stop: {}", render(&evs));

    // Still stopped a moment later (no restart policy kicking in), and stop is idempotent.
    d.stop_ok("web").await;
    assert!(!docker::inspect(&c.id).unwrap().running);

    // ---- start again: running again ----
    d.start_ok("web").await;
    let c2 = p.only();
    assert!(c2.running && c2.started_at > c.started_at, "{c2:?} vs {c:?}");
    assert_eq!(http_code(&web.health_url()).await, Some(200));
    d.stop_ok("web").await;
}

// ---------------------------------------------------------------------------------------------
// A container dying is noticed and restarted per policy
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_container_is_noticed_at_once_and_restarted_per_policy() {
    require_docker!();
    let ws = Workspace::new();
    let pname = docker::unique("kill");
    // Long health interval: only the engine's event stream can notice the death quickly.
    let web = Web::new("web", &pname).extra("restart: on-failure\nrestart_delay: 0.2\nhealth_interval: 60\n");
    let p = web.write(&ws.services(), &pname);
    let d = Daemon::start(&ws.services());

    d.start_ok("web").await;
    let c0 = p.only();
    let after = d.last_event_id().await;

    let killed_at = jiff::Timestamp::now();
    docker::docker_ok(&["kill", &c0.name]);

    let exited = d.wait_event("web", "exited", after, LONG, |_| true).await;
    assert_eq!(exited["code"], 137, "{exited}");
    assert_eq!(exited["expected"], false, "{exited}");
    let noticed = timestamp(&exited["ts"], "exited.ts");
    assert!(
        ms_apart(noticed, killed_at) < 5000.0,
        "the death must be noticed from the engine's events, not a poll: killed at {killed_at}, exited event at {noticed}"
    );

    let healthy = d.wait_event("web", "healthy", id(&exited), LONG, |_| true).await;
    let evs = d.events_after(Some("web"), after).await;
    let ks = kinds(&evs);
    let upto = evs.iter().position(|e| id(e) == id(&healthy)).unwrap();
    assert!(upto >= 3, "exited, backoff, starting before healthy: {}", render(&evs));
    assert_eq!(&ks[..3], &["exited", "backoff", "starting"], "events after the kill, in order: {}", render(&evs));
    assert_eq!(evs[1]["attempt"], 1, "{}", render(&evs));
    assert_eq!(evs[2]["automatic"], true, "{}", render(&evs));

    let st = d.wait_state("web", "running", LONG).await;
    assert_eq!(st["restarts"], 1, "{st}");
    assert_eq!(st["last_exit"]["code"], 137, "{st}");
    let c1 = p.only();
    assert!(c1.running, "{c1:?}");
    assert!(c1.started_at > c0.started_at, "a new container start: {c1:?} vs {c0:?}");
    assert_eq!(containers_of(&st), vec![c1.name.clone()], "{st}");
    assert_eq!(http_code(&web.health_url()).await, Some(200));

    // The daemon's log says why.
    d.wait_log_line("web", LONG, "a nanny line about the container dying", |l| {
        l["stream"] == "nanny" && l["line"].as_str().unwrap_or("").contains(&c0.name)
    })
    .await;

    d.stop_ok("web").await;
}

// ---------------------------------------------------------------------------------------------
// A project started by hand is adopted
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_project_started_by_hand_is_adopted_with_its_real_uptime() {
    require_docker!();
    let ws = Workspace::new();
    // No compose_project: the daemon must use Compose's own default, the directory's name
    // lowercased with only [a-z0-9_-] kept (as the seed's `docker compose up -d` would).
    let tag = docker::unique("hand");
    let dir = format!("Nt.{}", &tag[3..].replacen("hand", "Hand", 1));
    let pname: String = dir
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_".contains(*c))
        .collect();
    let web = Web::new("handmade", &pname).dir(&dir).default_project();
    let p = web.write(&ws.services(), &pname);

    // The seed's "test locally" step: `docker compose up -d` in the service directory.
    docker::compose_ok(&p.dir, &["up", "-d"]);
    let c0 = p.only();
    assert!(c0.running, "{c0:?}");
    assert_eq!(c0.project, pname, "Compose's own project name for {dir}");
    // Let it run a while so its uptime is clearly older than the daemon.
    wait_container(&c0.id, "has been up 2 s", |c| c.age() >= 2.0).await;

    let d = Daemon::start(&ws.services());
    d.wait_state("handmade", "running", LONG).await;
    let age_before = c0.age();
    let st = d.status("handmade").await;
    let age_after = c0.age();
    let uptime = st["uptime_seconds"].as_f64().unwrap_or_else(|| panic!("uptime_seconds: {st}"));
    assert!(
        uptime >= 2.0 && uptime >= age_before - 0.1 && uptime <= age_after + 0.1,
        "uptime must count from the container's StartedAt ({}), not the daemon's start: uptime {uptime} s, \
         container age {age_before}..{age_after} s; {st}",
        c0.started_at
    );
    assert!(is_uptime(st["uptime"].as_str().unwrap_or("")), "{st}");
    let started = timestamp(&st["started_at"], "status.started_at");
    assert!(ms_apart(started, c0.started_at) < 5.0, "started_at {started} vs StartedAt {}", c0.started_at);
    assert_eq!(containers_of(&st), vec![c0.name.clone()], "{st}");
    assert_eq!(st["pid"], Value::Null, "{st}");

    let evs = d.events_of("handmade").await;
    let adopted = of_kind(&evs, None, "adopted");
    assert_eq!(adopted.len(), 1, "{}", render(&evs));
    assert_eq!(adopted[0]["containers"], json!([c0.name]), "{}", render(&evs));
    let healthy = of_kind(&evs, None, "healthy");
    assert!(!healthy.is_empty() && id(healthy[0]) > id(adopted[0]), "adopted, then healthy: {}", render(&evs));
    assert!(of_kind(&evs, None, "starting").is_empty(), "an adopted project is not started: {}", render(&evs));

    // `start` does not start it twice.
    let v = d.start_ok("handmade").await;
    if let Some(started) = v.get("started") {
        assert_eq!(started, false, "{v}");
    }
    let c1 = p.only();
    assert_eq!(
        (c1.id.as_str(), c1.started_at, c1.running),
        (c0.id.as_str(), c0.started_at, true),
        "start restarted it"
    );
    let evs = d.events_of("handmade").await;
    assert!(of_kind(&evs, None, "starting").is_empty(), "{}", render(&evs));

    // Its output is followed: a request shows up in the service's log.
    let marker = format!("/adopted-{}", std::process::id());
    assert_eq!(http_code(&web.url(&marker)).await, Some(404));
    let prefix = format!("[{}] ", c0.name);
    d.wait_log_line("handmade", LONG, "the adopted container's request log", |l| {
        let line = l["line"].as_str().unwrap_or("");
        line.starts_with(&prefix) && line.contains(&marker)
    })
    .await;

    // The daemon owns it now: stop stops the containers.
    d.stop_ok("handmade").await;
    let c2 = docker::inspect(&c0.id).expect("stop keeps the container");
    assert!(!c2.running, "{c2:?}");
}

// ---------------------------------------------------------------------------------------------
// Daemon restart: adopted, not restarted
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_and_restarted_adopts_the_running_project() {
    require_docker!();
    let ws = Workspace::new();
    let pname = docker::unique("rst");
    let web = Web::new("web", &pname).extra("restart: on-failure\nrestart_delay: 0.2\nhealth_interval: 60\n");
    let p = web.write(&ws.services(), &pname);
    let state = ws.path("state");

    let mut a = Daemon::start_with_state(&ws.services(), &state);
    a.start_ok("web").await;
    let c0 = p.only();

    a.kill9();
    let still = docker::inspect(&c0.id).unwrap();
    assert!(still.running, "a SIGKILLed daemon leaves the containers running: {still:?}");

    let b = Daemon::start_with_state(&ws.services(), &state);
    b.wait_state("web", "running", LONG).await;
    let age_before = c0.age();
    let st = b.status("web").await;
    let age_after = c0.age();
    let since = last_daemon_start(&b.all_events().await);
    let evs = b.events_after(Some("web"), since).await;
    assert!(!of_kind(&evs, None, "adopted").is_empty(), "the new daemon adopts it: {}", render(&evs));
    assert!(of_kind(&evs, None, "starting").is_empty(), "the new daemon must not restart it: {}", render(&evs));
    let c1 = p.only();
    assert_eq!(
        (c1.id.as_str(), c1.started_at, c1.running),
        (c0.id.as_str(), c0.started_at, true),
        "the container must be left running as it was"
    );
    assert_eq!(containers_of(&st), vec![c0.name.clone()], "{st}");
    let uptime = st["uptime_seconds"].as_f64().unwrap_or_else(|| panic!("uptime_seconds: {st}"));
    assert!(
        uptime >= age_before - 0.1 && uptime <= age_after + 0.1,
        "uptime {uptime} s must count from StartedAt ({}, age {age_before}..{age_after} s); {st}",
        c0.started_at
    );
    let started = timestamp(&st["started_at"], "status.started_at");
    assert!(ms_apart(started, c0.started_at) < 5.0, "started_at {started} vs StartedAt {}", c0.started_at);

    // A clean SIGTERM of the daemon stops its services, Compose ones included.
    let mut b = b;
    b.terminate();
    let c3 = docker::inspect(&c0.id).expect("SIGTERM stops, it does not remove");
    assert!(!c3.running, "after the daemon's SIGTERM: {c3:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_killed_right_after_adoption_is_noticed_and_restarted() {
    require_docker!();
    let ws = Workspace::new();
    let pname = docker::unique("adk");
    // Long health interval: only the engine's event stream can notice the death in time.
    let web = Web::new("web", &pname).extra("restart: on-failure\nrestart_delay: 0.2\nhealth_interval: 60\n");
    let p = web.write(&ws.services(), &pname);
    p.compose_ok(&["up", "-d"]);
    let c0 = p.only();

    let d = Daemon::start(&ws.services());
    d.wait_state("web", "running", LONG).await;
    let evs = d.events_of("web").await;
    assert_eq!(of_kind(&evs, None, "adopted").len(), 1, "{}", render(&evs));

    // The daemon says it supervises the project: a death now must not go unnoticed.
    let after = d.last_event_id().await;
    let killed_at = jiff::Timestamp::now();
    docker::docker_ok(&["kill", &c0.name]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let exited = loop {
        let evs = d.events_after(Some("web"), after).await;
        if let Some(e) = of_kind(&evs, None, "exited").first() {
            break (*e).clone();
        }
        if Instant::now() >= deadline {
            let st = d.status("web").await;
            panic!(
                "container {} was killed at {killed_at} right after its adoption, but 20 s later the daemon has \
                 no `exited` event; status {st}; docker says {:?}; events: {}",
                c0.name,
                docker::inspect(&c0.id).map(|c| (c.status, c.exit_code)),
                render(&d.events_of("web").await)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(exited["code"], 137, "{exited}");
    assert_eq!(exited["expected"], false, "{exited}");
    let noticed = timestamp(&exited["ts"], "exited.ts");
    assert!(ms_apart(noticed, killed_at) < 5000.0, "killed at {killed_at}, exited event at {noticed}");
    let starting = d.wait_event("web", "starting", id(&exited), LONG, |_| true).await;
    assert_eq!(starting["automatic"], true, "{starting}");
    d.wait_event("web", "healthy", id(&starting), LONG, |_| true).await;
    let c1 = p.only();
    assert!(c1.running && c1.started_at > c0.started_at, "{c1:?}");
    d.stop_ok("web").await;
}

// ---------------------------------------------------------------------------------------------
// Failures are clear and leave other services alone
// ---------------------------------------------------------------------------------------------

/// A native service running alongside; returns its pid.
async fn start_native(d: &Daemon, svc: &Svc) -> i32 {
    d.start_ok(&svc.name).await;
    pid_of(&d.status(&svc.name).await)
}

async fn assert_native_untouched(d: &Daemon, svc: &Svc, pid: i32) {
    let st = d.status(&svc.name).await;
    assert_eq!(st["status"], "running", "the native service must keep running: {st}");
    assert_eq!(st["pid"].as_i64(), Some(i64::from(pid)), "the native service must not be restarted: {st}");
    assert_eq!(http_code(&svc.health_url().unwrap()).await, Some(200));
    assert!(of_kind(&d.events_of(&svc.name).await, None, "exited").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_compose_file_gives_a_clear_error_and_leaves_others_alone() {
    require_docker!();
    let ws = Workspace::new();
    let native = ws.add(Svc::new("native"));
    let pname = docker::unique("yaml");
    let broken = "services:\n  web:\n    image: [unclosed\n    ports: {\n";
    // `restart: never`: the failed start is left `failed` (under a restart policy it would
    // be retried, as any failed start is).
    let web = Web::new("broken", &pname).compose_text(broken).extra("restart: never\n");
    let p = web.write(&ws.services(), &pname);
    let d = Daemon::start(&ws.services());
    let pid = start_native(&d, &native).await;

    let (code, v) = d.start_svc("broken").await;
    assert_eq!(code, 500, "start with a broken compose file: {v}");
    let detail = v["detail"].as_str().unwrap_or_else(|| panic!("no detail: {v}"));
    assert!(detail.contains("broken"), "the detail names the service: {detail}");
    assert!(detail.contains("docker-compose.yml"), "the detail names the compose file: {detail}");

    let st = d.status("broken").await;
    assert_eq!(st["status"], "failed", "{st}");
    let err = st["last_error"].as_str().unwrap_or("");
    assert!(err.contains("docker-compose.yml"), "last_error names the file: {st}");
    assert!(p.containers().is_empty(), "nothing was created: {:?}", p.containers());
    assert_eq!(fs::read_to_string(p.file()).unwrap(), broken, "the compose file is left as it was");

    // Listed, not hidden; the native service is untouched and still controllable.
    let list = d.services().await;
    assert!(names(&list["services"]).contains(&"broken".to_string()), "{list}");
    assert_native_untouched(&d, &native, pid).await;
    d.stop_ok("native").await;
    d.start_ok("native").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unpullable_image_gives_composes_own_error_and_leaves_others_alone() {
    require_docker!();
    let ws = Workspace::new();
    let native = ws.add(Svc::new("native"));
    let pname = docker::unique("pull");
    let web = Web::new("nopull", &pname).image(NO_SUCH_IMAGE).extra("restart: never\n");
    let p = web.write(&ws.services(), &pname);
    let d = Daemon::start(&ws.services());
    let pid = start_native(&d, &native).await;

    let (code, v) = d.start_svc("nopull").await;
    assert_eq!(code, 500, "start with an image that cannot be pulled: {v}");
    let detail = v["detail"].as_str().unwrap_or_else(|| panic!("no detail: {v}"));
    assert!(detail.contains("nopull"), "the detail names the service: {detail}");
    let image_name = NO_SUCH_IMAGE.split(':').next().unwrap();
    assert!(detail.contains(image_name), "the detail quotes Compose's message naming the image: {detail}");

    let st = d.status("nopull").await;
    assert_eq!(st["status"], "failed", "{st}");
    assert!(p.containers().iter().all(|c| !c.running), "{:?}", p.containers());

    // Compose's output is in the service's log too.
    let lines = d.log_lines("nopull").await;
    assert!(
        lines.iter().any(|l| l["stream"] == "nanny" && l["line"].as_str().unwrap_or("").contains(image_name)),
        "compose's own output in the log: {lines:?}"
    );

    // No restart loop for a start that cannot work.
    let evs = d.events_of("nopull").await;
    assert!(of_kind(&evs, None, "backoff").is_empty(), "{}", render(&evs));
    assert_native_untouched(&d, &native, pid).await;
}

// ---------------------------------------------------------------------------------------------
// GPU
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn gpu_compose_and_native_services_exclude_each_other_and_get_the_override() {
    require_docker!();
    let ws = Workspace::new();
    let native = ws.add(Svc::new("gpu-native").gpu());
    let pname = docker::unique("gpu");
    let web = Web::new("gpu-compose", &pname).gpu();
    let p = web.write(&ws.services(), &pname);
    let original = fs::read(p.file()).unwrap();
    let state = ws.path("state");

    let a = Daemon::start_with(&ws.services(), &state, &[], &[("NANNY_GPU_DEVICES", "0,1")]);
    a.start_ok("gpu-compose").await;
    let c = p.only();
    assert_eq!(c.env_var("NVIDIA_VISIBLE_DEVICES").as_deref(), Some("0,1"), "container env {:?}", c.env);
    // The toolkit numbers the container's GPUs from 0: CUDA's variable is left to the image.
    assert_eq!(c.env_var("CUDA_VISIBLE_DEVICES"), None, "container env {:?}", c.env);
    assert_eq!(fs::read(p.file()).unwrap(), original, "the user's compose file must not change");
    let override_file = state.join("compose/gpu-compose.gpu.yml");
    assert!(override_file.is_file(), "the override lives in the state dir: {}", override_file.display());
    let list = a.services().await;
    assert_eq!(list["gpu_service_running"], "gpu-compose", "{list}");

    // Native GPU service refused while the Compose one holds the GPU.
    let (code, v) = a.start_svc("gpu-native").await;
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["detail"], "GPU service 'gpu-compose' is already running", "{v}");
    assert_eq!(v["gpu_service_running"], "gpu-compose", "{v}");
    assert!(p.only().running, "a refused start leaves the holder alone");

    // force: the Compose holder is stopped (containers stopped), the native one starts.
    let (code, v) = a.start_forced("gpu-native").await;
    assert_eq!(code, 200, "forced start of the native GPU service: {v}");
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(http_code(&native.health_url().unwrap()).await, Some(200));
    assert_eq!(a.state_of("gpu-compose").await, "stopped");
    let stopped = docker::inspect(&c.id).expect("preemption stops, it does not remove");
    assert!(!stopped.running, "the preempted Compose service's container: {stopped:?}");
    let list = a.services().await;
    assert_eq!(list["gpu_service_running"], "gpu-native", "{list}");
    let native_pid = pid_of(&a.status("gpu-native").await);

    // And the other way round.
    let (code, v) = a.start_svc("gpu-compose").await;
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["detail"], "GPU service 'gpu-native' is already running", "{v}");
    assert_eq!(v["gpu_service_running"], "gpu-native", "{v}");
    assert!(!docker::inspect(&c.id).unwrap().running, "a refused start starts no container");

    let (code, v) = a.start_forced("gpu-compose").await;
    assert_eq!(code, 200, "forced start of the Compose GPU service: {v}");
    assert_eq!(a.state_of("gpu-native").await, "stopped");
    wait_pid_gone(native_pid, Duration::from_secs(10), "preempted native GPU service").await;
    let c2 = p.only();
    assert!(c2.running, "{c2:?}");
    assert_eq!(c2.env_var("NVIDIA_VISIBLE_DEVICES").as_deref(), Some("0,1"), "{:?}", c2.env);
    assert_eq!(fs::read(p.file()).unwrap(), original, "the user's compose file must not change");
    let evs = a.events_of("gpu-native").await;
    assert!(!of_kind(&evs, None, "gpu_preempted").is_empty(), "{}", render(&evs));

    // Without NANNY_GPU_DEVICES the containers get `all`.
    let mut a = a;
    a.terminate();
    let b = Daemon::start_with_state(&ws.services(), &ws.path("state-b"));
    b.start_ok("gpu-compose").await;
    let c3 = p.only();
    assert_eq!(c3.env_var("NVIDIA_VISIBLE_DEVICES").as_deref(), Some("all"), "{:?}", c3.env);
    assert_eq!(c3.env_var("CUDA_VISIBLE_DEVICES"), None, "`all` means nothing to CUDA: {:?}", c3.env);
    assert_eq!(fs::read(p.file()).unwrap(), original, "the user's compose file must not change");
    b.stop_ok("gpu-compose").await;
}

/// A service reserving GPUs the documented way (`count: all`) gets exactly the placed GPUs:
/// Docker's device request wins over `NVIDIA_VISIBLE_DEVICES`, so the reservation itself is
/// replaced. Checked on the merged configuration the real Compose tool computes from the files
/// the daemon generated (no GPU needed: without one, `up` fails at the device request).
#[tokio::test(flavor = "multi_thread")]
async fn a_gpu_reservation_in_the_compose_file_becomes_the_placed_device_ids() {
    require_docker!();
    let ws = Workspace::new();
    let pname = docker::unique("gpures");
    let compose = format!(
        "services:\n  web:\n    image: {IMAGE}\n    deploy:\n      resources:\n        reservations:\n          \
         devices:\n            - driver: nvidia\n              count: all\n              capabilities: [gpu]\n  \
         side:\n    image: {IMAGE}\n"
    );
    let web = Web::new("gpu-reserving", &pname).gpu().compose_text(&compose);
    let p = web.write(&ws.services(), &pname);
    let original = fs::read(p.file()).unwrap();
    let state = ws.path("state");
    let d = Daemon::start_with(&ws.services(), &state, &[], &[("NANNY_GPU_DEVICES", "1")]);
    // Without an NVIDIA runtime the engine refuses the device request; the files are written first.
    let _ = d.start_svc("gpu-reserving").await;
    let overlay = state.join("compose/gpu-reserving.gpu.yml");
    wait_until(LONG, "the GPU override is written", || {
        let overlay = overlay.clone();
        async move { overlay.is_file() }
    })
    .await;
    assert_eq!(fs::read(p.file()).unwrap(), original, "the user's compose file must not change");
    // The files as the daemon passes them: a copy replacing the user's file when the tool cannot
    // `!override` (Compose v1 merges reservations as a union, so `count: all` would remain).
    let copy = state.join("compose/gpu-reserving.gpu-copy.yml");
    let first = if copy.is_file() { copy } else { p.file() };
    let (first, overlay) = (first.to_string_lossy().into_owned(), overlay.to_string_lossy().into_owned());
    let dir = p.dir.to_string_lossy().into_owned();
    let args = ["-p", pname.as_str(), "--project-directory", dir.as_str(), "-f", &first, "-f", &overlay, "config"];
    let merged: Value = serde_saphyr::from_str(&docker::compose_ok(&p.dir, &args)).expect("merged config is YAML");
    let devices = &merged["services"]["web"]["deploy"]["resources"]["reservations"]["devices"];
    let device = json!({"driver": "nvidia", "device_ids": ["1"], "capabilities": ["gpu"]});
    assert_eq!(devices, &json!([device]), "exactly the placed GPU, no `count`: {merged}");
    assert!(merged["services"]["side"].get("deploy").is_none(), "a service without a GPU reservation: {merged}");
    let env = |service: &str| merged["services"][service]["environment"]["NVIDIA_VISIBLE_DEVICES"].clone();
    assert_eq!((env("web"), env("side")), (json!("1"), json!("1")), "{merged}");
}

/// A GPU process NVML reports by its host pid is the service's when it runs in one of the
/// service's containers: the runtime maps the pid through `/proc/PID/cgroup` to the container,
/// so the arbiter counts its memory as the service's, not as others' use.
#[tokio::test(flavor = "multi_thread")]
async fn a_process_in_a_supervised_container_is_known_as_the_services() {
    require_docker!();
    let ws = Workspace::new();
    let pname = docker::unique("owner");
    let p = Web::new("owned", &pname).write(&ws.services(), &pname);
    let paths = nanny::manifest::Paths::outside_allowed(true);
    let manifest = nanny::manifest::load(&p.dir.join("service.yaml"), paths).expect("the manifest loads");
    let compose = nanny::runtime::compose::Compose::new(&ws.path("state"));
    let logs = std::sync::Arc::new(nanny::logs::LogStore::new(ws.path("owned.log")));
    let launched = compose.launch(&manifest, None, logs).expect("launched");
    let ready = tokio::time::timeout(LONG, launched.ready.expect("Compose says when it is up")).await;
    ready.expect("up within the deadline").expect("up -d succeeded");
    let c = p.only();
    assert!(c.running && c.pid > 0, "{c:?}");
    assert_eq!(compose.owner_of(c.pid).as_deref(), Some("owned"), "container {} pid {}", c.id, c.pid);
    assert_eq!(compose.owner_of(std::process::id()), None, "a host process is nobody's container");
    launched.instance.kill();
    let ended = tokio::time::timeout(LONG, launched.exited).await.expect("ended within the deadline");
    assert!(ended.is_ok(), "the supervisor reported the end");
}

// ---------------------------------------------------------------------------------------------
// remove
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn remove_stops_and_runs_down_keeping_the_image() {
    require_docker!();
    let ws = Workspace::new();
    let pname = docker::unique("rm");
    let web = Web::new("web", &pname).no_health();
    let p = web.write(&ws.services(), &pname);
    let d = Daemon::start(&ws.services());

    // Without a health endpoint: running once `up -d` is done with the container running.
    let v = d.start_ok("web").await;
    assert_eq!(v["message"], "Service 'web' started successfully", "{v}");
    let c = p.only();
    assert!(c.running, "{c:?}");
    assert_eq!(containers_of(&d.status("web").await), vec![c.name.clone()]);
    assert!(!p.networks().is_empty(), "compose created the project network");

    let (code, v) = d.post("/services/web/remove", None).await;
    assert_eq!(code, 200, "remove: {v}");
    assert!(v["message"].as_str().unwrap_or("").contains("web"), "{v}");
    assert!(p.containers().is_empty(), "down removes the containers: {:?}", p.containers());
    assert!(docker::ps_all_names(&pname).is_empty());
    assert!(p.networks().is_empty(), "down removes the project network: {:?}", p.networks());
    assert!(docker::image_exists(IMAGE), "down keeps the image");
    let st = d.status("web").await;
    assert_eq!(st["status"], "stopped", "{st}");
    assert!(containers_of(&st).is_empty(), "{st}");
    let evs = d.events_of("web").await;
    assert!(of_kind(&evs, None, "backoff").is_empty(), "no restart after remove: {}", render(&evs));

    // Removing again is harmless, and the service can be started afresh.
    let (code, v) = d.post("/services/web/remove", None).await;
    assert_eq!(code, 200, "second remove: {v}");
    d.start_ok("web").await;
    let fresh = p.only();
    assert!(fresh.running && fresh.id != c.id, "a new container after down: {fresh:?}");
    d.stop_ok("web").await;
}

// ---------------------------------------------------------------------------------------------
// The containers' own HEALTHCHECK
// ---------------------------------------------------------------------------------------------

/// Without a `health_endpoint`, a Compose service is checked through its containers: it is
/// `running` only once the container's HEALTHCHECK reports healthy, and a container that turns
/// unhealthy makes the service unhealthy.
#[tokio::test(flavor = "multi_thread")]
async fn a_container_healthcheck_decides_when_the_service_is_running() {
    require_docker!();
    let ws = Workspace::new();
    let pname = docker::unique("hc");
    let web = Web::new("web", &pname).no_health().extra("health_interval: 0.5\nhealth_failures: 2\nrestart: never\n");
    // Healthy once /www/ok exists; the check runs every second after a short start period.
    let compose = format!(
        "version: \"3.8\"\nservices:\n  web:\n    image: {}\n    healthcheck:\n      test: [\"CMD\", \"/bin/busybox\", \"test\", \"-e\", \"/www/ok\"]\n      interval: 1s\n      start_period: 1s\n    entrypoint: [\"/bin/busybox\", \"sh\", \"-c\", \"sleep 2; /bin/busybox touch /www/ok; exec /bin/busybox httpd -f -p 8000 -h /www\"]\n",
        web.image
    );
    let web = web.compose_text(&compose);
    let p = web.write(&ws.services(), &pname);
    let d = Daemon::start(&ws.services());

    let v = d.start_ok("web").await;
    assert_eq!(v["status"], "running", "{v}");
    let c = p.only();
    let health = docker::docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", &c.id]);
    assert_eq!(health.trim(), "healthy", "start answered before the container's HEALTHCHECK passed");
    let st = d.status("web").await;
    assert_eq!(st["last_health"]["ok"], true, "{st}");
    assert!(st["last_health"]["message"].as_str().unwrap_or("").contains("healthy"), "{st}");

    // The container turns unhealthy: the service follows.
    docker::docker_ok(&["exec", &c.id, "/bin/busybox", "rm", "/www/ok"]);
    d.wait_state("web", "unhealthy", Duration::from_secs(30)).await;
    d.stop_ok("web").await;
}

/// A project brought up by hand while the daemon runs (the seed's "test locally" step) is
/// recognised at once, not left shown as stopped, and `start` does not start it twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_project_started_by_hand_while_the_daemon_runs_is_adopted() {
    require_docker!();
    let ws = Workspace::new();
    let pname = docker::unique("live");
    let web = Web::new("live", &pname);
    let p = web.write(&ws.services(), &pname);
    let d = Daemon::start(&ws.services());
    assert_eq!(d.state_of("live").await, "stopped");

    p.compose_ok(&["up", "-d"]);
    let c0 = p.only();
    d.wait_state("live", "running", LONG).await;
    let evs = d.events_of("live").await;
    assert_eq!(of_kind(&evs, None, "adopted").len(), 1, "{}", render(&evs));
    assert!(of_kind(&evs, None, "starting").is_empty(), "adopted, not started: {}", render(&evs));
    assert_eq!(containers_of(&d.status("live").await), vec![c0.name.clone()]);

    d.start_ok("live").await;
    let c1 = p.only();
    assert_eq!((c1.id, c1.started_at), (c0.id, c0.started_at), "start restarted it");

    // Stopped through the daemon, then started by hand again: adopted again.
    d.stop_ok("live").await;
    p.compose_ok(&["start"]);
    d.wait_state("live", "running", LONG).await;
    assert_eq!(of_kind(&d.events_of("live").await, None, "adopted").len(), 2);
    d.stop_ok("live").await;
}

/// A `compose run` container carries the project's label but is not part of the service: it
/// neither fails the service's container check nor ends the service when it dies.
#[tokio::test(flavor = "multi_thread")]
async fn a_one_off_container_of_the_project_is_not_the_service() {
    require_docker!();
    let ws = Workspace::new();
    let pname = docker::unique("oneoff");
    let web = Web::new("web", &pname).no_health().extra("health_interval: 0.3\n");
    let p = web.write(&ws.services(), &pname);
    let d = Daemon::start(&ws.services());
    d.start_ok("web").await;
    let service_container = p.only();

    p.compose_ok(&["run", "-d", "--no-deps", "web"]);
    let label = format!("label=com.docker.compose.project={pname}");
    let oneoff =
        docker::docker_ok(&["ps", "-q", "--filter", &label, "--filter", "label=com.docker.compose.oneoff=True"]);
    let oneoff = oneoff.trim();
    assert!(!oneoff.is_empty(), "compose run made a one-off container");
    docker::docker_ok(&["kill", oneoff]);
    let killed_at = jiff::Timestamp::now();

    // Two container checks after the kill, both passing, and the service still running.
    wait_until(LONG, "two checks after the one-off died", || async {
        let st = d.status("web").await;
        let at: jiff::Timestamp = st["last_health"]["at"].as_str().unwrap_or("").parse().unwrap_or(killed_at);
        at.duration_since(killed_at).as_secs_f64() > 0.7
    })
    .await;
    let st = d.status("web").await;
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(st["last_health"]["ok"], true, "{st}");
    assert_eq!(containers_of(&st), vec![service_container.name.clone()], "{st}");
    let evs = d.events_of("web").await;
    assert!(of_kind(&evs, None, "exited").is_empty(), "the one-off's death is not the service's: {}", render(&evs));
    d.stop_ok("web").await;
}

// ---------------------------------------------------------------------------------------------
// Long `up -d` and one-shot containers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_up_that_builds_for_longer_than_health_timeout_is_not_cut_short() {
    require_docker!();
    docker::build_image();
    let ws = Workspace::new();
    let pname = docker::unique("build");
    let tag = format!("{pname}:1");
    let web = Web::new("slow", &pname);
    // A build step that sleeps longer than health_timeout: the clock starts once the container runs.
    let compose = format!(
        "services:\n  web:\n    build: .\n    image: {tag}\n    ports:\n      - \"127.0.0.1:{}:8000\"\n",
        web.port
    );
    let p = web.compose_text(&compose).write(&ws.services(), &pname);
    fs::write(p.dir.join("Dockerfile"), format!("FROM {IMAGE}\nRUN [\"/bin/busybox\", \"sleep\", \"5\"]\n")).unwrap();
    let manifest = fs::read_to_string(p.dir.join("service.yaml")).unwrap();
    fs::write(p.dir.join("service.yaml"), manifest.replace("health_timeout: 60", "health_timeout: 2")).unwrap();
    struct RemoveImage(String);
    impl Drop for RemoveImage {
        fn drop(&mut self) {
            let _ = docker::docker(&["rmi", "-f", &self.0]);
        }
    }
    let _image = RemoveImage(tag);

    let d = Daemon::start(&ws.services());
    let start = {
        let (client, url) = (d.client.clone(), d.u("/services/slow/start"));
        tokio::spawn(async move { client.post(url).send().await.unwrap().status().as_u16() })
    };
    // While `up -d` builds, the status says so, and nothing is probed.
    let st = d.wait_status("slow", LONG, "the build stage", |st| st["stage"] == "building").await;
    assert_eq!(st["status"], "starting", "{st}");
    assert_eq!(st["last_health"], Value::Null, "no probing while `up -d` runs: {st}");
    assert_eq!(start.await.unwrap(), 200, "the start succeeds: {}", d.log_text("slow").await.join("\n"));
    let st = d.status("slow").await;
    assert_eq!((st["status"].as_str(), &st["stage"]), (Some("running"), &Value::Null), "{st}");
    let log = d.log_text("slow").await;
    assert!(
        log.iter().any(|l| l.contains("Step") || l.contains("Building")),
        "the build streams into the log: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_shot_container_that_finishes_does_not_end_the_service_or_its_adoption() {
    require_docker!();
    docker::build_image();
    let ws = Workspace::new();
    let pname = docker::unique("oneshot");
    let web = Web::new("app", &pname).extra("restart: on-failure\nrestart_delay: 0.2\n");
    // `migrate` runs for a moment after `up -d` returns, then exits 0 by design.
    let compose = format!(
        "services:\n  web:\n    image: {IMAGE}\n    ports:\n      - \"127.0.0.1:{}:8000\"\n  \
         migrate:\n    image: {IMAGE}\n    entrypoint: [\"/bin/busybox\", \"sleep\", \"2\"]\n    restart: \"no\"\n",
        web.port
    );
    let p = web.compose_text(&compose).write(&ws.services(), &pname);
    let state = ws.path("state");

    let mut a = Daemon::start_with_state(&ws.services(), &state);
    let before = a.last_event_id().await;
    a.start_ok("app").await;
    a.wait_log_line("app", LONG, "the one-shot's end", |l| {
        l["line"].as_str().is_some_and(|l| l.contains("one-shot container") && l.contains("finished"))
    })
    .await;
    let st = a.status("app").await;
    assert_eq!((st["status"].as_str(), st["restarts"].as_u64()), (Some("running"), Some(0)), "{st}");
    let evs = a.events_after(Some("app"), before).await;
    assert!(of_kind(&evs, None, "exited").is_empty(), "the service did not end: {}", render(&evs));
    // Its containers' memory is measured (`docker stats`).
    a.wait_status("app", LONG, "the containers' memory", |st| st["memory_bytes"].as_u64().is_some_and(|m| m > 0)).await;

    // A new daemon adopts the project as it is: one container running, the job finished.
    a.kill9();
    let b = Daemon::start_with_state(&ws.services(), &state);
    b.wait_state("app", "running", LONG).await;
    let since = last_daemon_start(&b.all_events().await);
    let evs = b.events_after(Some("app"), since).await;
    assert!(!of_kind(&evs, None, "adopted").is_empty(), "adopted: {}", render(&evs));
    assert!(of_kind(&evs, None, "starting").is_empty(), "not started again: {}", render(&evs));
    assert_eq!(p.containers().iter().filter(|c| c.running).count(), 1, "{:?}", p.containers());
}
