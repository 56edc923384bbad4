//! The `nanny` command-line client: --json output, exit codes, several
//! services at once, progress, paging, help, offline `validate` and `new`;
//! the human output's error messages pinned by a snapshot.

mod common;

use std::fs;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn ls_start_status_logs_stop_with_json() {
    let ws = Workspace::new();
    ws.add(Svc::new("cli-svc").description("CLI test service"));
    ws.add(Svc::new("cli-gpu").gpu());
    let d = Daemon::start(&ws.services());
    let url = d.url.clone();

    let out = cli_async(&url, &["ls", "--json"]).await;
    assert_eq!(out.code, 0, "{out}");
    let v = out.json();
    assert_eq!(v["total"], 2, "{v}");
    let mut names: Vec<&str> = v["services"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, vec!["cli-gpu", "cli-svc"]);

    // Human output mentions the services too.
    let out = cli_async(&url, &["ls"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("cli-svc") && out.stdout.contains("cli-gpu"), "{out}");

    let out = cli_async(&url, &["show", "cli-svc", "--json"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.json()["description"], "CLI test service");

    let out = cli_async(&url, &["start", "cli-svc", "--json"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.json()["status"], "running", "{out}");

    let out = cli_async(&url, &["status", "cli-svc", "--json"]).await;
    assert_eq!(out.code, 0, "{out}");
    let v = out.json();
    assert_eq!(v["is_running"], true, "{v}");
    assert!(v["pid"].is_number(), "{v}");

    let out = cli_async(&url, &["status", "cli-svc"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("running"), "{out}");

    wait_until(std::time::Duration::from_secs(10), "startup line reaches the logs", || async {
        d.log_text("cli-svc").await.iter().any(|l| l.contains("svc starting"))
    })
    .await;
    let out = cli_async(&url, &["logs", "cli-svc", "-n", "50", "--json"]).await;
    assert_eq!(out.code, 0, "{out}");
    let v = out.json();
    let lines = v["lines"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert!(!lines.is_empty() && lines.len() <= 50, "{v}");
    assert!(lines.iter().any(|l| l["line"].as_str().unwrap_or("").contains("svc starting")), "{v}");
    let out = cli_async(&url, &["logs", "cli-svc", "-n", "50"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("svc starting"), "{out}");

    // --url works as well as NANNY_URL.
    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || cli(None, &["restart", "cli-svc", "--url", &url, "--json"])
    })
    .await
    .unwrap();
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.json()["status"], "running", "{out}");

    let out = cli_async(&url, &["rediscover", "--json"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.json()["total"], 2, "{out}");

    let out = cli_async(&url, &["stop", "cli-svc", "--json"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.json()["status"], "stopped", "{out}");
    assert_eq!(d.state_of("cli-svc").await, "stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gpu_conflict_exits_5_and_force_resolves_it() {
    let ws = Workspace::new();
    ws.add(Svc::new("g1").gpu());
    ws.add(Svc::new("g2").gpu());
    let d = Daemon::start(&ws.services());
    let url = d.url.clone();

    let out = cli_async(&url, &["start", "g1"]).await;
    assert_eq!(out.code, 0, "{out}");
    let out = cli_async(&url, &["start", "g2"]).await;
    assert_eq!(out.code, 5, "GPU conflict: {out}");
    assert!(out.all().contains("g1"), "conflict message names the holder: {out}");
    let out = cli_async(&url, &["start", "g2", "--force"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(d.state_of("g1").await, "stopped");
    assert_eq!(d.state_of("g2").await, "running");
    let out = cli_async(&url, &["stop", "g2"]).await;
    assert_eq!(out.code, 0, "{out}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [vec!["frobnicate"], vec!["start"], vec!["logs", "x", "-n", "lots"]] {
        let out = cli(Some("http://127.0.0.1:1"), &args);
        assert_eq!(out.code, 2, "{args:?}: {out}");
    }
}

#[test]
fn validate_reports_broken_manifest_with_file_and_line() {
    let ws = Workspace::new();
    ws.add(Svc::new("fine"));
    let broken = ws.write_manifest(
        "broken",
        "name: broken\ndescription: typo below\nversion: 1.0.0\nhelth_endpoint: http://localhost:1/health\ncommand: [\"python3\", \"x.py\"]\n",
    );
    let services = ws.services();
    let out = cli(None, &["validate", services.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out}");
    let all = out.all();
    assert!(all.contains("broken/service.yaml"), "names the file: {out}");
    assert!(all.contains("service.yaml:4:"), "names the line: {out}");
    assert!(all.contains("helth_endpoint"), "names the field: {out}");
    assert!(!all.contains("fine/service.yaml:"), "the valid manifest has no errors: {out}");

    // --json variant is parseable.
    let out = cli(None, &["validate", services.to_str().unwrap(), "--json"]);
    assert_eq!(out.code, 1, "{out}");
    let _ = out.json();

    fs::remove_file(&broken).unwrap();
    let out = cli(None, &["validate", services.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out}");

    // Default directory: NANNY_SERVICES_DIR.
    let out = cli_in(None, &["validate"], None, &[("NANNY_SERVICES_DIR", services.to_str().unwrap())]);
    assert_eq!(out.code, 0, "{out}");
}

#[test]
fn new_scaffolds_a_valid_service() {
    let ws = Workspace::new();
    let dir = ws.path("scaffold");
    fs::create_dir_all(&dir).unwrap();
    let out = cli(None, &["new", "my-thing", "--dir", dir.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out}");
    let yaml = fs::read_to_string(dir.join("my-thing/service.yaml")).expect("service.yaml created");
    assert!(yaml.lines().any(|l| l == "name: my-thing"), "{yaml}");
    assert!(!yaml.contains("name: my-service"), "{yaml}");
    assert!(dir.join("my-thing/server.py").is_file());

    let out = cli(None, &["validate", dir.to_str().unwrap()]);
    assert_eq!(out.code, 0, "scaffolded service validates: {out}");

    // A second service gets a port the first one does not use.
    let out = cli(None, &["new", "other-thing", "--dir", dir.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out}");
    let port_of = |name: &str| {
        let yaml = fs::read_to_string(dir.join(name).join("service.yaml")).unwrap();
        yaml.lines().find_map(|l| l.strip_prefix("port: ").map(str::to_string)).expect("a port line")
    };
    assert_ne!(port_of("my-thing"), port_of("other-thing"));
    fs::remove_dir_all(dir.join("other-thing")).unwrap();

    // Never overwrite an existing service.
    fs::write(dir.join("my-thing/server.py"), "# mine\n").unwrap();
    let out = cli(None, &["new", "my-thing", "--dir", dir.to_str().unwrap()]);
    assert_ne!(out.code, 0, "{out}");
    assert_eq!(fs::read_to_string(dir.join("my-thing/server.py")).unwrap(), "# mine\n");

    // Invalid names are refused.
    let out = cli(None, &["new", "Not A Name", "--dir", dir.to_str().unwrap()]);
    assert_ne!(out.code, 0, "{out}");
    assert!(!dir.join("Not A Name").exists());

    // Default directory: NANNY_SERVICES_DIR, then ./services.
    let out = cli_in(None, &["new", "from-env"], None, &[("NANNY_SERVICES_DIR", dir.to_str().unwrap())]);
    assert_eq!(out.code, 0, "{out}");
    assert!(dir.join("from-env/service.yaml").is_file());
    let cwd = ws.path("cwd");
    fs::create_dir_all(cwd.join("services")).unwrap();
    let out = cli_in(None, &["new", "from-cwd"], Some(&cwd), &[]);
    assert_eq!(out.code, 0, "{out}");
    assert!(cwd.join("services/from-cwd/service.yaml").is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn scaffolded_service_runs() {
    let ws = Workspace::new();
    let out = cli(None, &["new", "fresh", "--dir", ws.services().to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out}");
    // Move it off the port `new` chose (free then) so parallel tests cannot collide.
    let p = ws.services().join("fresh/service.yaml");
    let yaml = fs::read_to_string(&p).unwrap();
    let chosen = yaml.lines().find_map(|l| l.strip_prefix("port: ")).expect("a port line").to_string();
    let port = free_port();
    fs::write(&p, yaml.replace(&chosen, &port.to_string())).unwrap();

    let d = Daemon::start(&ws.services());
    d.start_ok("fresh").await;
    let body: serde_json::Value =
        http_client().get(format!("http://127.0.0.1:{port}/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["status"], "ok");
    d.stop_ok("fresh").await;
}

/// `text` with the daemon's address and the fixture's ports masked, for snapshots.
fn masked(text: &str, url: &str) -> String {
    text.replace(url, "http://127.0.0.1:PORT")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_fails_with_its_exit_code_words_and_a_json_error() {
    let ws = Workspace::new();
    ws.add(Svc::new("g1").gpu());
    ws.add(Svc::new("g2").gpu());
    let d = Daemon::start(&ws.services());
    let url = d.url.clone();
    let down = format!("http://127.0.0.1:{}", free_port());
    let ghostly: [&[&str]; 7] = [
        &["show", "ghost"],
        &["status", "ghost"],
        &["start", "ghost"],
        &["stop", "ghost"],
        &["restart", "ghost"],
        &["remove", "ghost"],
        &["logs", "ghost"],
    ];
    let anywhere: [&[&str]; 3] = [&["ls"], &["rediscover"], &["events"]];
    for args in ghostly.iter().chain(&anywhere) {
        let out = cli_async(&down, args).await;
        assert_eq!(out.code, 3, "{args:?}: {out}");
        assert!(out.stderr.contains("connection refused. Is `nanny serve` running? Set --url or NANNY_URL."), "{out}");
        assert!(!out.stderr.contains("error sending request") && !out.stderr.contains("os error"), "{out}");
        let out = cli_async(&down, &[*args, &["--json"]].concat()).await;
        assert_eq!(out.code, 3, "{args:?}: {out}");
        let v = out.json();
        assert_eq!(v["exit_code"], 3, "{v}");
        assert!(v["error"].as_str().unwrap().starts_with("cannot connect to the daemon"), "{v}");
    }
    for args in ghostly {
        let out = cli_async(&url, args).await;
        assert_eq!(out.code, 4, "{args:?}: {out}");
        assert!(out.stderr.contains("Service 'ghost' not found"), "{args:?} names the service: {out}");
        let out = cli_async(&url, &[args, &["--json"]].concat()).await;
        assert_eq!(out.code, 4, "{args:?}: {out}");
        let v = out.json();
        assert_eq!(
            (v["exit_code"].as_u64(), v["detail"].as_str()),
            (Some(4), Some("Service 'ghost' not found")),
            "{v}"
        );
    }

    let out = cli_async(&down, &["ls"]).await;
    let mut messages = vec![format!("$ nanny ls  (exit {})\n{}", out.code, masked(&out.stderr, &down))];
    let mut record = |args: &[&str], out: &CliOut| {
        messages.push(format!("$ nanny {}  (exit {})\n{}", args.join(" "), out.code, masked(&out.stderr, &url)));
    };
    let out = cli_async(&url, &["status", "ghost"]).await;
    record(&["status", "ghost"], &out);
    let out = cli_async(&url, &["start", "g1"]).await;
    assert_eq!(out.code, 0, "{out}");
    let out = cli_async(&url, &["start", "g2"]).await;
    record(&["start", "g2"], &out);
    let out = cli_async(&url, &["start", "g2", "--json"]).await;
    assert_eq!(out.code, 5, "{out}");
    assert_eq!(out.json()["gpu_service_running"], "g1", "the API's fields are in the JSON error: {out}");
    for args in [
        &["logs", "g1", "-n", "0"][..],
        &["logs", "g1", "--tail", "0"],
        &["events", "-n0"],
        &["ls", "--url", "localhost:8080"],
        &["ls", "--url", "ftp://x"],
    ] {
        let out = cli_async(&url, args).await;
        assert_eq!(out.code, 2, "{args:?}: {out}");
        record(args, &out);
    }
    let out = cli_async(&url, &["logs", "g1", "-n", "0", "--json"]).await;
    assert_eq!((out.code, out.json()["exit_code"].as_u64()), (2, Some(2)), "{out}");
    insta::assert_snapshot!("error_messages", messages.join("\n"));
    let out = cli_async(&url, &["stop", "all"]).await;
    assert_eq!(out.code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn several_services_at_once_one_line_each() {
    let ws = Workspace::new();
    for name in ["a", "b"] {
        ws.add(Svc::new(name));
    }
    ws.add(Svc::new("c").extra("tags: [web]"));
    let d = Daemon::start(&ws.services());
    let url = d.url.clone();

    let out = cli_async(&url, &["start", "a", "ghost", "b"]).await;
    assert_eq!(out.code, 4, "the first failure's exit code: {out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("a: ") && lines[1].starts_with("b: "), "{out}");
    assert!(out.stderr.contains("ghost: error: Service 'ghost' not found"), "{out}");
    assert_eq!((d.state_of("a").await, d.state_of("b").await), ("running".into(), "running".into()));

    // Filters.
    let names_of = |out: &CliOut| -> Vec<String> {
        out.stdout.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(String::from).collect()
    };
    let out = cli_async(&url, &["ls", "--status", "running"]).await;
    assert_eq!(names_of(&out), ["a", "b"], "{out}");
    assert!(out.stdout.starts_with("NAME  STATUS   HEALTH  UPTIME"), "{out}");
    let out = cli_async(&url, &["ls", "--tag", "web"]).await;
    assert_eq!(names_of(&out), ["c"], "{out}");
    let out = cli_async(&url, &["ls", "--gpu", "--json"]).await;
    assert_eq!(out.json()["services"], serde_json::json!([]), "{out}");
    let out = cli_async(&url, &["ls", "--status", "sleeping"]).await;
    assert_eq!(out.code, 2, "{out}");

    // Logs of every service, interleaved by time with the name in front.
    d.wait_log_line("b", std::time::Duration::from_secs(10), "b's startup line", |l| {
        l["line"].as_str().is_some_and(|l| l.contains("svc starting"))
    })
    .await;
    let out = cli_async(&url, &["logs", "--utc", "-n", "5"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.lines().any(|l| l.starts_with("a | ")) && out.stdout.lines().any(|l| l.starts_with("b | ")),
        "{out}"
    );
    assert!(!out.stdout.contains('\x1b'), "no colours when not a terminal: {out}");
    let first = out.stdout.lines().next().unwrap();
    let time = &first[4..28];
    assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "UTC to the millisecond: {first}");

    // -f with several: each stream's lines as they come, prefixed.
    let mut follow = std::process::Command::new(NANNY)
        .args(["logs", "-f", "-n", "5", "a", "b"])
        .env("NANNY_URL", &url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn nanny logs -f");
    let mut seen = std::collections::BTreeSet::new();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    for line in lines.map_while(Result::ok) {
        seen.extend(line.split_once(" | ").map(|(name, _)| name.to_string()));
        if seen.len() == 2 {
            break;
        }
    }
    follow.kill().unwrap();
    follow.wait().unwrap();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["a", "b"]);

    let out = cli_async(&url, &["stop", "all", "--json"]).await;
    assert_eq!(out.code, 0, "{out}");
    let results = out.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 3, "{out}");
    assert!(results.iter().all(|r| r["status"] == "stopped"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_lines_while_starting_and_stopping() {
    let ws = Workspace::new();
    let slow = ws.add(Svc::new("slow").args(["--health-after", "1", "--ignore-term"]).stop_timeout(1.0));
    let d = Daemon::start(&ws.services());
    let out = cli_async(&d.url, &["start", "slow"]).await;
    assert_eq!(out.code, 0, "{out}");
    let waiting = format!("slow: waiting for {} (up to ", slow.health_url().unwrap());
    assert!(out.stderr.lines().any(|l| l.starts_with(&waiting)), "a plain line per stage: {out}");
    assert!(!out.all().contains('\x1b') && !out.all().contains('\r'), "no control characters: {out}");
    let out = cli_async(&d.url, &["stop", "slow"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stderr.lines().any(|l| l == "slow: stopping: SIGTERM sent (up to 1 s)"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_page_forward_with_a_header_row() {
    let ws = Workspace::new();
    ws.add(Svc::new("p"));
    let d = Daemon::start(&ws.services());
    d.start_ok("p").await;
    d.stop_ok("p").await;
    let all: Vec<u64> = d.all_events().await.iter().map(id).collect();
    assert!(all.len() >= 5, "{all:?}");
    let page = |since: u64| {
        let url = d.url.clone();
        async move {
            let out = cli_async(&url, &["events", "--since", &since.to_string(), "-n", "2", "--json"]).await;
            assert_eq!(out.code, 0, "{out}");
            out.json()["events"].as_array().unwrap().iter().map(id).collect::<Vec<u64>>()
        }
    };
    assert_eq!(page(0).await, all[..2]);
    assert_eq!(page(all[1]).await, all[2..4]);
    let out = cli_async(&d.url, &["events", "-n", "2", "--utc"]).await;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("ID") && lines[0].contains("TIME") && lines[0].contains("MESSAGE"), "{out}");
    assert!(lines[2].starts_with(&all[all.len() - 1].to_string()), "the newest last: {out}");
    let log = d.stderr();
    assert!(log.contains("INFO") && !log.contains('\x1b'), "the daemon's log has no colours off a terminal: {log}");
}

#[test]
fn help_shows_each_command_its_own_flags() {
    let out = cli(Some("http://127.0.0.1:1"), &["serve", "--help"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(!out.stdout.contains("--url") && !out.stdout.contains("--json"), "{out}");
    let out = cli(Some("http://127.0.0.1:1"), &["serve", "--url", "http://x:1"]);
    assert_eq!(out.code, 2, "{out}");
    let out = cli(Some("http://127.0.0.1:1"), &["start", "--help"]);
    assert!(out.stdout.contains("Usage: nanny start [OPTIONS] <NAME>..."), "{out}");
    assert!(out.stdout.contains("--url <URL>") && out.stdout.contains("[env: NANNY_URL]"), "{out}");
    let out = cli(Some("http://127.0.0.1:1"), &["start"]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("Usage: nanny start <NAME>..."), "not the address from NANNY_URL: {out}");
    let out = cli(Some("localhost:8080"), &["ls", "--json"]);
    assert_eq!(out.code, 2, "a malformed NANNY_URL is a usage error: {out}");
    assert!(out.json()["error"].as_str().unwrap().starts_with("invalid NANNY_URL `localhost:8080`"), "{out}");
}

#[test]
fn validate_runs_the_compose_tools_own_check() {
    let ws = Workspace::new();
    ws.write_manifest("web", "name: web\ndescription: d\nversion: 1.0.0\ncompose_file: docker-compose.yml\n");
    fs::write(ws.services().join("web/docker-compose.yml"), "services:\n  web:\n    imagee: nginx\n").unwrap();
    let out = cli(None, &["validate", ws.services().to_str().unwrap()]);
    if out.stdout.contains("note: no Compose tool") {
        assert_eq!(out.code, 0, "skipped with a note when there is no Compose tool: {out}");
        return;
    }
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stdout.contains("INVALID  ") && out.stdout.contains("web/service.yaml"), "{out}");
    assert!(out.stdout.contains("docker-compose.yml: ") && out.stdout.contains("imagee"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_leaves_the_start_to_the_daemon() {
    use std::io::{BufRead, BufReader};
    let ws = Workspace::new();
    ws.add(Svc::new("slow").args(["--health-after", "2"]));
    let d = Daemon::start(&ws.services());
    let mut start = std::process::Command::new(NANNY)
        .args(["start", "slow"])
        .env("NANNY_URL", &d.url)
        .env_remove("NANNY_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn nanny start");
    let mut stderr = BufReader::new(start.stderr.take().unwrap());
    let mut line = String::new();
    // The progress line says the start is under way, and the handler is installed.
    stderr.read_line(&mut line).unwrap();
    assert!(line.starts_with("slow: waiting for "), "{line}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(start.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(start.wait().unwrap().code(), Some(130), "{rest}");
    assert!(rest.contains("slow: interrupted; the start goes on in the daemon"), "{rest}");
    d.wait_state("slow", "running", std::time::Duration::from_secs(10)).await;
}
