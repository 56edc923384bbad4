//! Discovery of service manifests: valid and invalid manifests, duplicates, skipped
//! directories, seed aliases and `POST /rediscover`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn errors_text(entry: &Value) -> String {
    let errs = entry["errors"].as_array().unwrap_or_else(|| panic!("no errors array in {entry}"));
    assert!(!errs.is_empty(), "invalid entry without errors: {entry}");
    errs.iter().map(|e| e["text"].as_str().expect("each error has its text").to_string()).collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_and_invalid_manifests_are_reported_with_location() {
    let ws = Workspace::new();
    let good = ws.add(
        Svc::new("alpha")
            .gpu()
            .description("Alpha test service")
            .extra("tags: [image-generation, test]\nports: [\"8000:8000\"]\n"),
    );
    // Unknown field (typo) on line 3.
    ws.write_manifest(
        "typo",
        "name: typo\ndescription: has a typo\ngpu_requird: true\ncommand: [\"python3\", \"x.py\"]\n",
    );
    // Bad name on line 1.
    ws.write_manifest("badname", "name: Bad_Name\ncommand: [\"python3\", \"x.py\"]\n");
    // Wrong type on line 3.
    ws.write_manifest("badtype", "name: badtype\ncommand: [\"python3\", \"x.py\"]\nhealth_timeout: soon-ish\n");
    // YAML syntax error.
    ws.write_manifest("syntax", "name: syntax\ncommand: [\"python3\", \"x.py\"\n  oops: : :\n");
    // Neither command nor compose_file.
    ws.write_manifest("noruntime", "name: noruntime\ndescription: nothing to run\n");
    // Skipped directories: `_template` and hidden ones, even with valid manifests.
    ws.write_manifest("_template", &Svc::new("my-service").yaml());
    ws.write_manifest(".hidden", &Svc::new("hidden").yaml());
    // A directory without a manifest is simply not a service.
    std::fs::create_dir_all(ws.services().join("empty-dir")).unwrap();

    let d = Daemon::start(&ws.services());

    let health = d.get_ok("/health").await;
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["services"], 1, "{health}");
    assert!(health["version"].is_string(), "{health}");

    let list = d.services().await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(names(&list["services"]), vec!["alpha"], "{list}");
    assert!(list["gpu_service_running"].is_null(), "{list}");
    let s = &list["services"][0];
    assert_eq!(s["description"], "Alpha test service");
    assert_eq!(s["version"], "1.0.0");
    assert_eq!(s["gpu_required"], true);
    assert_eq!(s["vram_gb"].as_f64(), Some(4.0), "{s}");
    assert_eq!(s["ports"], serde_json::json!(["8000:8000"]));
    assert_eq!(s["health_endpoint"], good.health_url().unwrap().as_str());
    assert_eq!(s["tags"], serde_json::json!(["image-generation", "test"]));
    assert_eq!(s["status"], "stopped");

    let typo = invalid_entry(&list, "typo/service.yaml");
    let t = errors_text(typo);
    assert!(t.contains("gpu_requird"), "error should name the unknown field: {t}");
    assert!(t.contains("service.yaml:3:"), "error should give path:line:col (line 3): {t}");

    let t = errors_text(invalid_entry(&list, "badname/service.yaml"));
    assert!(t.contains("name"), "error should name the field: {t}");
    assert!(t.contains("service.yaml:1:"), "error should give line 1: {t}");

    let t = errors_text(invalid_entry(&list, "badtype/service.yaml"));
    assert!(t.contains("health_timeout"), "error should name the field: {t}");
    assert!(t.contains("service.yaml:3:"), "error should give line 3: {t}");

    errors_text(invalid_entry(&list, "syntax/service.yaml"));
    errors_text(invalid_entry(&list, "noruntime/service.yaml"));

    let invalid_paths: Vec<&str> =
        list["invalid"].as_array().unwrap().iter().filter_map(|e| e["path"].as_str()).collect();
    assert_eq!(invalid_paths.len(), 5, "exactly the 5 broken manifests are invalid: {invalid_paths:?}");
    assert!(
        !invalid_paths.iter().any(|p| p.contains("_template") || p.contains(".hidden")),
        "skipped dirs must not be reported: {invalid_paths:?}"
    );

    // The full configuration of one service, durations as numbers of seconds.
    let full = d.get_ok("/services/alpha").await;
    assert_eq!(full["name"], "alpha");
    assert_eq!(full["status"], "stopped");
    assert_eq!(full["gpu_required"], true);
    assert_eq!(full["command"][0], "python3", "{full}");
    assert_eq!(full["health_endpoint"], good.health_url().unwrap().as_str());
    assert_eq!(full["health_timeout"].as_f64(), Some(20.0), "{full}");
    assert_eq!(full["stop_timeout"].as_f64(), Some(5.0), "{full}");
    assert_eq!(full["restart"], "on-failure", "default restart policy: {full}");
    assert_eq!(full["restart_delay"].as_f64(), Some(1.0), "{full}");
    assert_eq!(full["max_restarts"], 10, "{full}");
    assert_eq!(full["health_interval"].as_f64(), Some(10.0), "{full}");
    assert_eq!(full["tags"], serde_json::json!(["image-generation", "test"]));

    // Invalid services say so; skipped ones are not addressable.
    let (code, v) = d.get("/services/typo").await;
    assert_eq!(code, 422, "{v}");
    assert!(v["errors"][0]["text"].as_str().unwrap().contains("gpu_requird"), "{v}");
    for name in ["my-service", "hidden", "empty-dir"] {
        let (code, v) = d.get(&format!("/services/{name}")).await;
        assert_eq!(code, 404, "{name}: {v}");
        assert!(v["detail"].is_string(), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_names_are_both_invalid_and_others_survive() {
    let ws = Workspace::new();
    ws.write_manifest("twin-one", &Svc::new("twin").yaml());
    ws.write_manifest("twin-two", &Svc::new("twin").yaml());
    ws.add(Svc::new("solo"));

    let d = Daemon::start(&ws.services());
    let list = d.services().await;
    assert_eq!(names(&list["services"]), vec!["solo"], "{list}");
    assert_eq!(list["total"], 1, "{list}");
    for (dir, other) in [("twin-one", "twin-two"), ("twin-two", "twin-one")] {
        let t = errors_text(invalid_entry(&list, &format!("{dir}/service.yaml")));
        assert!(
            t.contains("twin") && (t.to_lowercase().contains("duplicate") || t.contains(other)),
            "error should name the duplicate (name and other manifest): {t}"
        );
    }
    let (code, v) = d.get("/services/twin").await;
    assert_eq!(code, 422, "a duplicate name is an invalid manifest: {v}");
    // The valid one still works.
    d.start_ok("solo").await;
    d.stop_ok("solo").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_aliases_and_string_command_are_accepted() {
    let ws = Workspace::new();
    let port = free_port();
    let script = fixture_script();
    ws.write_manifest(
        "aliased",
        &format!(
            "name: aliased\n\
             description: uses the service-manager seed field names\n\
             version: 1.0.0\n\
             command: python3 '{}' --port {port}\n\
             port: {port}\n\
             health_check_url: http://localhost:{port}/health\n\
             health_timeout: 20\n\
             restart_delay: 0.5\n\
             max_restarts: 3\n\
             working_dir: .\n\
             env:\n  GREETING: hello\n\
             stop_timeout: 500ms\n",
            script.display()
        ),
    );
    let d = Daemon::start(&ws.services());
    let list = d.services().await;
    assert_eq!(names(&list["services"]), vec!["aliased"], "{list}");
    let full = d.get_ok("/services/aliased").await;
    assert_eq!(full["health_endpoint"], format!("http://localhost:{port}/health"), "{full}");
    assert_eq!(full["restart_delay"].as_f64(), Some(0.5), "{full}");
    assert_eq!(full["stop_timeout"].as_f64(), Some(0.5), "{full}");
    assert_eq!(full["max_restarts"], 3, "{full}");
    let cmd: Vec<&str> = full["command"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    assert_eq!(cmd, vec!["python3", &*script.to_string_lossy(), "--port", &*port.to_string()], "{full}");

    let started = d.start_ok("aliased").await;
    assert_eq!(started["health_endpoint"], format!("http://localhost:{port}/health"));
    d.stop_ok("aliased").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rediscover_reports_added_removed_changed_and_invalid() {
    let ws = Workspace::new();
    ws.add(Svc::new("a"));
    let b_pidfile = ws.path("b.pid");
    let b = ws.add(Svc::new("b").arg("--pidfile").arg(&b_pidfile).description("b version one"));

    let d = Daemon::start(&ws.services());
    assert_eq!(d.services().await["total"], 2);
    d.start_ok("b").await;
    let b_pid = read_pidfile(&b_pidfile).await;
    assert_eq!(d.status("b").await["pid"], b_pid);

    // Change the world: add c, remove a, change b (running), add a broken d.
    ws.add(Svc::new("c"));
    ws.remove_service_dir("a");
    ws.write_manifest("b", &b.clone().description("b version two").yaml());
    ws.write_manifest("d", "name: d\ncommand: [\"python3\", \"x.py\"]\nbogus_field: 1\n");

    let (code, r) = d.post("/rediscover", None).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(names(&r["added"]), vec!["c"], "{r}");
    assert_eq!(names(&r["removed"]), vec!["a"], "{r}");
    let changed = r["changed"].as_array().unwrap_or_else(|| panic!("no changed array: {r}"));
    assert_eq!(changed.len(), 1, "{r}");
    assert_eq!(changed[0]["name"], "b", "{r}");
    assert_eq!(changed[0]["running"], true, "{r}");
    assert!(changed[0]["note"].is_string(), "{r}");
    let t = errors_text(invalid_entry(&r, "d/service.yaml"));
    assert!(t.contains("bogus_field") && t.contains("service.yaml:3:"), "{t}");
    assert_eq!(r["total"], 2, "{r}");

    // The changed running service keeps running, same process.
    let st = d.status("b").await;
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(st["pid"], b_pid, "changed running service must keep its process: {st}");
    assert!(pid_alive(b_pid));

    let list = d.services().await;
    assert_eq!(names(&list["services"]), vec!["b", "c"], "{list}");
    let (code, _) = d.get("/services/a").await;
    assert_eq!(code, 404);
    invalid_entry(&list, "d/service.yaml");

    // Restarting picks up the new manifest.
    let (code, v) = d.post("/services/b/restart", None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "running", "{v}");
    wait_pid_gone(b_pid, Duration::from_secs(10), "old b").await;
    assert_eq!(d.get_ok("/services/b").await["description"], "b version two");

    // A second rescan with nothing changed reports nothing new.
    let (code, r) = d.post("/rediscover", None).await;
    assert_eq!(code, 200, "{r}");
    assert!(r["added"].as_array().unwrap().is_empty(), "{r}");
    assert!(r["removed"].as_array().unwrap().is_empty(), "{r}");
    assert!(r["changed"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(r["invalid"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["total"], 2, "{r}");
    d.stop_ok("b").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rediscover_stops_a_removed_running_service() {
    let ws = Workspace::new();
    let pidfile = ws.path("gone.pid");
    ws.add(Svc::new("gone").arg("--pidfile").arg(&pidfile));
    ws.add(Svc::new("stays"));
    let d = Daemon::start(&ws.services());
    d.start_ok("gone").await;
    let pid = read_pidfile(&pidfile).await;
    assert!(pid_alive(pid));

    ws.remove_service_dir("gone");
    let (code, r) = d.post("/rediscover", None).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(names(&r["removed"]), vec!["gone"], "{r}");
    assert_eq!(r["total"], 1, "{r}");
    wait_pid_gone(pid, Duration::from_secs(15), "removed service").await;
    let (code, _) = d.get("/services/gone").await;
    assert_eq!(code, 404);
    assert_eq!(names(&d.services().await["services"]), vec!["stays"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_service_whose_manifest_turns_invalid_keeps_running() {
    let ws = Workspace::new();
    let pidfile = ws.path("web.pid");
    let web = ws.add(Svc::new("web").arg("--pidfile").arg(&pidfile).description("web v1"));
    let d = Daemon::start(&ws.services());
    d.start_ok("web").await;
    let pid = read_pidfile(&pidfile).await;

    // A typo in the running service's manifest, and a copy that duplicates its name.
    ws.write_manifest("web", &format!("{}typo_field: 1\n", web.clone().description("web v2").yaml()));
    let (code, r) = d.post("/rediscover", None).await;
    assert_eq!(code, 200, "{r}");
    assert!(names(&r["removed"]).is_empty(), "a broken manifest must not remove the service: {r}");
    invalid_entry(&r, "web/service.yaml");
    let st = d.status("web").await;
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(st["pid"], pid, "{st}");
    assert!(pid_alive(pid));
    assert_eq!(d.get_ok("/services/web").await["description"], "web v1", "the previous manifest stays in force");

    // Fixing the manifest makes it a plain change again.
    ws.write_manifest("web", &web.clone().description("web v3").yaml());
    let (code, r) = d.post("/rediscover", None).await;
    assert_eq!(code, 200, "{r}");
    assert!(r["invalid"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(r["changed"][0]["name"], "web", "{r}");
    assert_eq!(d.status("web").await["pid"], pid);
    d.stop_ok("web").await;
}
