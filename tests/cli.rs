//! The `nanny` command-line client: --json output, exit codes, offline `validate` and `new`.

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
        move || cli(None, &["--url", &url, "restart", "cli-svc", "--json"])
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
async fn exit_codes_unknown_service_and_conflict() {
    let ws = Workspace::new();
    ws.add(Svc::new("g1").gpu());
    ws.add(Svc::new("g2").gpu());
    let d = Daemon::start(&ws.services());
    let url = d.url.clone();

    for args in [
        vec!["status", "ghost"],
        vec!["start", "ghost"],
        vec!["stop", "ghost"],
        vec!["show", "ghost"],
        vec!["logs", "ghost"],
    ] {
        let out = cli_async(&url, &args).await;
        assert_eq!(out.code, 4, "{args:?}: {out}");
        assert!(out.all().contains("ghost"), "{args:?} should name the service: {out}");
    }

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
fn unreachable_daemon_exits_3() {
    let url = format!("http://127.0.0.1:{}", free_port());
    for args in [vec!["ls"], vec!["status", "x"], vec!["start", "x", "--json"]] {
        let out = cli(Some(&url), &args);
        assert_eq!(out.code, 3, "{args:?}: {out}");
        assert!(out.all().contains("cannot reach"), "{args:?}: {out}");
    }
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
