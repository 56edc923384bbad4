//! `depends_on`: starting a service starts its dependencies first (waiting for each one's
//! condition), stopping one stops its running dependents first, unknown dependencies and cycles
//! make manifests invalid, and `autostart` services come up with their dependencies when the
//! daemon starts.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn before(evs: &[Value], a: (&str, &str), b: (&str, &str)) {
    let (ea, eb) = (expect_event(evs, a.0, a.1), expect_event(evs, b.0, b.1));
    assert!(id(ea) < id(eb), "{} {} must come before {} {}: {}", a.0, a.1, b.0, b.1, render(evs));
}

fn first_error(inv: &Value) -> String {
    inv["errors"][0]["text"].as_str().unwrap_or_else(|| panic!("no errors: {inv}")).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn starting_a_service_starts_its_dependencies_in_order() {
    let ws = Workspace::new();
    // db is slow to become healthy; api only needs it started, web needs api healthy.
    Svc::new("db").arg("--health-after").arg("1.0").write(&ws.services());
    Svc::new("api").extra("depends_on: {db: {condition: started}}\n").write(&ws.services());
    Svc::new("web").extra("depends_on: [api]\n").write(&ws.services());
    let d = Daemon::start(&ws.services());

    let v = d.start_ok("web").await;
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(d.state_of("api").await, "running", "web waited for api to be healthy");
    assert!(
        ["starting", "running"].contains(&d.state_of("db").await.as_str()),
        "db was started (web's start does not wait for db's health)"
    );
    d.wait_state("db", "running", LONG).await;

    let evs = d.all_events().await;
    before(&evs, ("db", "starting"), ("api", "starting"));
    before(&evs, ("api", "starting"), ("api", "healthy"));
    before(&evs, ("api", "healthy"), ("web", "starting"));
    before(&evs, ("web", "starting"), ("web", "healthy"));
    // condition: started -> api did not wait for db's first healthy check.
    before(&evs, ("api", "starting"), ("db", "healthy"));
    for s in ["db", "api", "web"] {
        assert_eq!(of_kind(&evs, Some(s), "starting").len(), 1, "{s} started once: {}", render(&evs));
        assert_eq!(expect_event(&evs, s, "starting")["automatic"], false, "{}", render(&evs));
    }

    // Starting a service whose dependencies already run starts only it.
    d.stop_ok("web").await;
    assert_eq!(d.state_of("api").await, "running", "stopping a dependent leaves its dependencies alone");
    let mark = d.last_event_id().await;
    d.start_ok("web").await;
    let evs = d.events_after(None, mark).await;
    let started: Vec<&str> = of_kind(&evs, None, "starting").iter().map(|e| e["service"].as_str().unwrap()).collect();
    assert_eq!(started, ["web"], "{}", render(&evs));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dependency_without_health_check_only_needs_to_be_started() {
    let ws = Workspace::new();
    // No health check: the default condition is `started`.
    Svc::new("queue").no_port().write(&ws.services());
    Svc::new("worker").extra("depends_on: [queue]\n").write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("worker").await;
    d.wait_state("queue", "running", LONG).await;
    let evs = d.all_events().await;
    before(&evs, ("queue", "starting"), ("worker", "starting"));
    // queue counts as `running` only after its settle time; worker did not wait for that.
    before(&evs, ("worker", "starting"), ("queue", "healthy"));
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_a_dependency_stops_its_dependents_first() {
    let ws = Workspace::new();
    Svc::new("db").write(&ws.services());
    Svc::new("api").extra("depends_on: [db]\n").write(&ws.services());
    Svc::new("web").extra("depends_on: [api, db]\n").write(&ws.services());
    Svc::new("report").extra("depends_on: [db]\n").write(&ws.services()); // never started
    Svc::new("other").write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("web").await;
    d.start_ok("other").await;
    for s in ["db", "api", "web"] {
        assert_eq!(d.state_of(s).await, "running", "{s}");
    }
    let mark = d.last_event_id().await;
    let v = d.stop_ok("db").await;
    assert_eq!(v["also_stopped"], serde_json::json!(["web", "api"]), "dependents, deepest first: {v}");
    for s in ["db", "api", "web", "report"] {
        assert_eq!(d.state_of(s).await, "stopped", "{s}");
    }
    assert_eq!(d.state_of("other").await, "running", "unrelated services are left alone");

    let evs = d.events_after(None, mark).await;
    before(&evs, ("web", "stopped"), ("api", "stopping"));
    before(&evs, ("api", "stopped"), ("db", "stopping"));
    assert!(first(&evs, "report", "stopping", 0).is_none(), "{}", render(&evs));
    assert!(first(&evs, "other", "stopping", 0).is_none(), "{}", render(&evs));
    for e in of_kind(&evs, None, "exited") {
        assert_eq!(e["expected"], true, "{e}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dependency_cycle_makes_every_member_invalid() {
    let ws = Workspace::new();
    Svc::new("a").extra("depends_on: [b]\n").write(&ws.services());
    Svc::new("b").extra("depends_on: [c]\n").write(&ws.services());
    let c = Svc::new("c").extra("depends_on: [a]\n").write(&ws.services());
    Svc::new("d").extra("depends_on: [a]\n").write(&ws.services());
    Svc::new("e").write(&ws.services());
    let dmn = Daemon::start(&ws.services());

    let list = dmn.services().await;
    assert_eq!(names(&list["services"]), ["e"], "{list}");
    let a = invalid_entry(&list, "/a/service.yaml");
    let err = first_error(a);
    assert!(err.contains("/a/service.yaml"), "the error names the file: {err}");
    assert!(err.contains("depends_on"), "the error names the field: {err}");
    assert!(err.contains("dependency cycle: a -> b -> c -> a"), "the cycle is named: {err}");
    for member in ["b", "c"] {
        let err = first_error(invalid_entry(&list, &format!("/{member}/service.yaml")));
        assert!(err.contains(&format!("/{member}/service.yaml")), "{err}");
        assert!(err.contains("depends_on") && err.contains("dependency cycle:"), "{err}");
        for n in ["a -> ", "b -> ", "c -> "] {
            assert!(err.contains(n), "the whole cycle is named in {member}'s error: {err}");
        }
    }
    let err = first_error(invalid_entry(&list, "/d/service.yaml"));
    assert!(err.contains("depends_on") && err.contains("'a'"), "a dependent of a cycle member is unusable: {err}");

    let (code, v) = dmn.start_svc("a").await;
    assert_eq!(code, 422, "its manifest is invalid: {v}");
    assert!(v["errors"][0]["text"].as_str().unwrap().contains("dependency cycle"), "{v}");
    let inv_events = dmn.all_events().await;
    let inv_events = of_kind(&inv_events, None, "invalid");
    assert!(
        inv_events.iter().any(|e| e["path"].as_str().is_some_and(|p| p.ends_with("/a/service.yaml"))
            && e["errors"][0].as_str().is_some_and(|s| s.contains("dependency cycle"))),
        "an `invalid` event names the manifest: {inv_events:?}"
    );

    // Breaking the cycle makes all of them usable; starting a brings up c, then b, then a.
    Svc { extra: String::new(), ..c }.write(&ws.services());
    let (code, v) = dmn.post("/rediscover", None).await;
    assert_eq!(code, 200, "{v}");
    let list = dmn.services().await;
    assert_eq!(names(&list["services"]), ["a", "b", "c", "d", "e"], "{list}");
    assert!(list["invalid"].as_array().unwrap().is_empty(), "{list}");
    dmn.start_ok("a").await;
    let evs = dmn.all_events().await;
    before(&evs, ("c", "healthy"), ("b", "starting"));
    before(&evs, ("b", "healthy"), ("a", "starting"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_dependency_makes_the_manifest_invalid() {
    let ws = Workspace::new();
    Svc::new("x").extra("depends_on: {ghost: {condition: started}}\n").write(&ws.services());
    Svc::new("y").extra("depends_on: [x]\n").write(&ws.services());
    Svc::new("z").write(&ws.services());
    let d = Daemon::start(&ws.services());

    let list = d.services().await;
    assert_eq!(names(&list["services"]), ["z"], "{list}");
    let err = first_error(invalid_entry(&list, "/x/service.yaml"));
    assert!(err.contains("/x/service.yaml") && err.contains("depends_on"), "{err}");
    assert!(err.contains("depends on unknown service 'ghost'"), "{err}");
    let err = first_error(invalid_entry(&list, "/y/service.yaml"));
    assert!(err.contains("/y/service.yaml") && err.contains("'x'"), "y depends on an invalid service: {err}");
    let (code, v) = d.start_svc("y").await;
    assert_eq!(code, 422, "its manifest is invalid: {v}");

    // Once the dependency exists, both become services.
    Svc::new("ghost").write(&ws.services());
    let (code, v) = d.post("/rediscover", None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(names(&d.services().await["services"]), ["ghost", "x", "y", "z"]);
    d.start_ok("y").await;
    for s in ["ghost", "x"] {
        assert_ne!(d.state_of(s).await, "stopped", "{s} was started as a dependency");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn autostart_services_come_up_with_their_dependencies() {
    let ws = Workspace::new();
    Svc::new("db").write(&ws.services());
    Svc::new("api").extra("depends_on: [db]\n").write(&ws.services());
    Svc::new("web").extra("autostart: true\ndepends_on: [api]\n").write(&ws.services());
    Svc::new("lonely").write(&ws.services());
    // Two autostart GPU services: the higher priority one gets the GPU.
    Svc::new("gpu-lo").gpu().extra("autostart: true\npriority: 1\n").write(&ws.services());
    Svc::new("gpu-hi").gpu().extra("autostart: true\npriority: 5\n").write(&ws.services());
    let d = Daemon::start(&ws.services());

    for s in ["db", "api", "web", "gpu-hi"] {
        d.wait_state(s, "running", LONG).await;
    }
    let evs = d.all_events().await;
    before(&evs, ("db", "healthy"), ("api", "starting"));
    before(&evs, ("api", "healthy"), ("web", "starting"));
    assert_eq!(d.state_of("lonely").await, "stopped");
    let list = d.services().await;
    assert_eq!(list["gpu_service_running"], "gpu-hi", "{list}");
    assert_ne!(d.state_of("gpu-lo").await, "running");
    assert!(first(&evs, "gpu-lo", "starting", 0).is_none(), "gpu-lo never started: {}", render(&evs));
}
