//! The `vram` GPU policy on declared GPUs (`--gpu 0:24GiB`): services are packed by their
//! `vram_gb`, never past a GPU's memory, placed with CUDA_VISIBLE_DEVICES; a start that does not
//! fit is told whom it would have to stop, `force` stops the fewest, lowest-priority, least
//! recently started (never a pinned one, never one of higher priority), and `wait` queues it by
//! priority then arrival. The proof of "never overbooked" is the services' own: each adds its
//! claim to a shared ledger under flock at start and exits with an OVERBOOKED marker when a GPU's
//! sum would pass its total.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const GIB: u64 = 1 << 30;

/// A workspace of ledger services: `(name, vram GiB, extra manifest lines)`.
struct Fleet {
    ws: Workspace,
    ledger: PathBuf,
}

impl Fleet {
    fn new(totals: &str, services: &[(&str, u32, &str)]) -> Fleet {
        let ws = Workspace::new();
        let ledger = ws.path("ledger");
        for (name, vram, extra) in services {
            let svc = Svc::new(name).vram(*vram).health_timeout(20.0).args([
                "--ledger",
                ledger.to_str().unwrap(),
                "--vram",
                &vram.to_string(),
                "--gpu-totals",
                totals,
            ]);
            ws.write_manifest(name, &format!("{}{extra}", svc.yaml()));
        }
        Fleet { ws, ledger }
    }

    fn daemon(&self, gpus: &[&str]) -> Daemon {
        let mut args = vec!["--gpu-policy", "vram"];
        for g in gpus {
            args.extend(["--gpu", g]);
        }
        let state = self.ws.path("state");
        Daemon::start_with(&self.ws.services(), &state, &args, &[])
    }

    fn assert_never_overbooked(&self) {
        let marker = PathBuf::from(format!("{}.OVERBOOKED", self.ledger.display()));
        if let Ok(text) = std::fs::read_to_string(&marker) {
            panic!("a GPU was overbooked:\n{text}");
        }
    }

    /// What the running services wrote: service → the GPUs it saw in CUDA_VISIBLE_DEVICES.
    fn ledger(&self) -> BTreeMap<String, BTreeSet<String>> {
        ledger_of(&self.ledger)
    }
}

fn ledger_of(path: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let [who, gpu, _] = parts[..] {
            let service = who.split(':').next().unwrap().to_string();
            out.entry(service).or_default().insert(gpu.to_string());
        }
    }
    out
}

/// What `GET /gpus` says: service → the GPU indices it holds.
fn holders(gpus: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for gpu in gpus["gpus"].as_array().unwrap() {
        for h in gpu["holders"].as_array().unwrap() {
            let service = h["service"].as_str().unwrap().to_string();
            out.entry(service).or_default().insert(gpu["index"].to_string());
        }
    }
    out
}

async fn start_with(d: &Daemon, name: &str, body: Value) -> (u16, Value) {
    d.post(&format!("/services/{name}/start"), Some(body)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_starts_stops_forces_and_waits_never_overbook_a_gpu() {
    let names: Vec<String> = (0..8).map(|i| format!("pack-{i}")).collect();
    let sizes = [6, 8, 10, 12, 6, 8, 10, 12];
    let priorities = ["", "priority: 1\n", "", "priority: 2\n", "", "", "priority: 1\n", ""];
    let services: Vec<(&str, u32, &str)> =
        names.iter().zip(sizes).zip(priorities).map(|((n, s), p)| (n.as_str(), s, p)).collect();
    let fleet = Fleet::new("0:24,1:24", &services);
    let d = Arc::new(fleet.daemon(&["0:24GiB", "1:24GiB"]));

    let health = d.get_ok("/health").await;
    assert_eq!(health["gpu"]["policy"], "vram", "{health}");
    assert_eq!(health["gpu"]["source"], "declared", "{health}");

    // Six clients, each a stream of random requests, for a bounded time.
    let deadline = Instant::now() + Duration::from_secs(20);
    let tasks: Vec<_> = (0..6u64)
        .map(|client| {
            let (d, names) = (d.clone(), names.clone());
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(client);
                let mut answered = Vec::new();
                while Instant::now() < deadline {
                    let name = &names[rng.usize(..names.len())];
                    let (what, (code, body)) = match rng.u8(..4) {
                        0 => ("start", d.start_svc(name).await),
                        1 => ("force", d.start_forced(name).await),
                        2 => ("wait", start_with(&d, name, json!({"wait": true, "timeout": 1.5})).await),
                        _ => ("stop", d.stop_svc(name).await),
                    };
                    assert!(
                        matches!((what, code), (_, 200) | ("start" | "force", 409) | ("wait", 409 | 503) | (_, 409)),
                        "{what} {name}: {code} {body}"
                    );
                    if let (409, Some(stop)) = (code, body["would_stop"].as_array()) {
                        // Either who would have to stop, or why nobody it may stop is enough.
                        let (detail, blocked) = (body["detail"].as_str().unwrap(), &body["blocked"]);
                        match stop.is_empty() {
                            false => assert!(detail.contains("start it with force"), "{body}"),
                            true => assert!(detail.contains("even with force") && blocked[0].is_string(), "{body}"),
                        }
                    }
                    answered.push((what, code));
                }
                answered
            })
        })
        .collect();
    let mut answered = Vec::new();
    for t in tasks {
        answered.extend(t.await.unwrap());
    }
    fleet.assert_never_overbooked();
    let count = |what: &str, code: u16| answered.iter().filter(|a| **a == (what, code)).count();
    let tally: Vec<String> = ["start", "force", "wait", "stop"]
        .iter()
        .flat_map(|w| [200, 409, 503].map(|c| format!("{w} {c}: {}", count(w, c))))
        .collect();
    eprintln!("{} requests: {}", answered.len(), tally.join(", "));
    assert!(answered.len() >= 100, "only {} requests in 20 s", answered.len());
    for what in ["start", "force", "wait", "stop"] {
        assert!(count(what, 200) > 0, "no {what} succeeded: {tally:?}");
    }
    assert!(count("start", 409) > 0, "the GPUs were never full: {tally:?}");
    let preempted = d.all_events().await.iter().filter(|e| e["kind"] == "gpu_preempted").count();
    assert!(preempted > 0, "no forced start had to stop anyone");

    // At rest, what the services saw (CUDA_VISIBLE_DEVICES) is what the daemon says they hold.
    let gpus = d.get_ok("/gpus").await;
    assert_eq!(gpus["policy"], "vram");
    assert_eq!(gpus["source"], "declared");
    assert_eq!(gpus["headroom_bytes"], GIB);
    assert_eq!(holders(&gpus), fleet.ledger(), "/gpus against the services' own ledger: {gpus}");
    for gpu in gpus["gpus"].as_array().unwrap() {
        let held: u64 = gpu["holders"].as_array().unwrap().iter().map(|h| h["vram_bytes"].as_u64().unwrap()).sum();
        assert!(held + GIB <= 24 * GIB, "GPU {} holds {held} bytes: {gpu}", gpu["index"]);
        assert_eq!(gpu["free_bytes"].as_u64().unwrap(), 23 * GIB - held, "free as the daemon counts it: {gpu}");
        assert_eq!(gpu["total_bytes"], 24 * GIB);
        assert!(gpu["uuid"].is_null() && gpu["used_bytes"].is_null() && gpu["name"] == "declared", "{gpu}");
    }
    for name in &names {
        d.stop_svc(name).await;
    }
    fleet.assert_never_overbooked();
    assert!(fleet.ledger().is_empty(), "every service removed its claim on SIGTERM: {:?}", fleet.ledger());
}

#[tokio::test(flavor = "multi_thread")]
async fn force_stops_the_fewest_lowest_priority_oldest_and_never_a_pinned_or_higher_one() {
    let fleet = Fleet::new(
        "0:24",
        &[
            ("keep", 5, "pinned: true\n"),
            ("old", 6, ""),
            ("young", 6, ""),
            ("chief", 6, "priority: 3\n"),
            ("big", 8, "priority: 1\n"),
            ("huge", 20, "priority: 1\n"),
        ],
    );
    let d = fleet.daemon(&["0:24GiB"]);
    for name in ["keep", "old", "young", "chief"] {
        d.start_ok(name).await;
    }
    // 23 GiB usable (1 GiB headroom), all of it held.
    let (code, v) = d.start_svc("big").await;
    assert_eq!(code, 409, "{v}");
    assert_eq!(
        v["would_stop"],
        json!([{"service": "old", "frees_bytes": 6 * GIB}, {"service": "young", "frees_bytes": 6 * GIB}]),
        "the fewest, lowest-priority, oldest first; never pinned 'keep' nor 'chief' (priority 3): {v}"
    );
    assert_eq!(
        v["detail"],
        "cannot start service 'big': it needs 8.0 GiB on 1 GPU; it fits once 'old' (frees 6.0 GiB), \
         'young' (frees 6.0 GiB) stop (start it with force to stop them)"
    );
    assert_eq!(d.state_of("old").await, "running", "a refusal stops nothing");

    let asked = Instant::now();
    let (code, v) = d.start_forced("big").await;
    let swap = asked.elapsed();
    assert_eq!(code, 200, "{v}");
    // The swap's own cost: its time less the services' own stops and start (from their events).
    let all = d.all_events().await;
    let span = |service: &str, from: &str, to: &str| {
        let last = |kind: &str| all.iter().rev().find(|e| e["service"] == service && e["kind"] == kind).map(ts);
        let (a, b) = (last(from).unwrap(), last(to).unwrap());
        Duration::from_secs_f64(b.duration_since(a).as_secs_f64().max(0.0))
    };
    let own =
        span("old", "stopping", "stopped") + span("young", "stopping", "stopped") + span("big", "starting", "healthy");
    eprintln!("forced swap: {swap:?} in all, {:?} beyond the services' own stops and start", swap.saturating_sub(own));
    let preempted: BTreeSet<String> =
        v["preempted"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
    assert_eq!(preempted, BTreeSet::from(["old".to_string(), "young".to_string()]), "{v}");
    for name in ["old", "young"] {
        assert_eq!(d.state_of(name).await, "stopped");
        let events = d.events_of(name).await;
        let by: Vec<&Value> = events.iter().filter(|e| e["kind"] == "gpu_preempted").collect();
        assert_eq!(by.last().map(|e| &e["by"]), Some(&json!("big")), "{name} is told who preempted it: {events:?}");
    }
    for name in ["keep", "chief", "big"] {
        assert_eq!(d.state_of(name).await, "running");
    }

    // Nothing it may stop makes room: 409 even with force, saying why.
    let (code, v) = d.start_forced("huge").await;
    assert_eq!(code, 409, "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains("'keep' is pinned") && detail.contains("'chief' has a higher priority (3 > 1)"), "{v}");
    assert_eq!(v["would_stop"], json!([]), "{v}");
    assert_eq!(d.state_of("big").await, "running", "a blocked force stops nothing");
    fleet.assert_never_overbooked();
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_starts_queue_by_priority_then_arrival_and_time_out_with_retry_after() {
    let fleet = Fleet::new(
        "0:24",
        &[
            ("holder", 20, ""),
            ("first", 20, ""),
            ("second", 20, ""),
            ("urgent", 20, "priority: 5\n"),
            ("quitter", 20, ""),
        ],
    );
    fleet.ws.add(Svc::new("cpu"));
    let d = Arc::new(fleet.daemon(&["0:24GiB"]));
    d.start_ok("holder").await;

    // A start that waits in vain: 503 with Retry-After.
    let asked = Instant::now();
    let r =
        d.client.post(d.u("/services/first/start")).json(&json!({"wait": true, "timeout": 1})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().get("retry-after").is_some(), "{:?}", r.headers());
    assert!(asked.elapsed() >= Duration::from_secs(1));
    let body: Value = r.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("waited 1 s for room on the GPUs"), "{body}");
    assert_eq!(d.get_ok("/gpus").await["queue"], json!([]), "a start that gave up left the queue");

    // Three waiters, one at a time into the queue.
    let mut waiting = Vec::new();
    for (name, behind) in [("first", 0), ("second", 1), ("urgent", 2)] {
        let d2 = d.clone();
        waiting.push((
            name,
            tokio::spawn(async move { start_with(&d2, name, json!({"wait": true, "timeout": 60})).await }),
        ));
        wait_until(Duration::from_secs(10), "the start to queue", || {
            let d = d.clone();
            async move { d.get_ok("/gpus").await["queue"].as_array().unwrap().len() > behind }
        })
        .await;
    }
    let gpus = d.get_ok("/gpus").await;
    let order: Vec<&str> = gpus["queue"].as_array().unwrap().iter().map(|q| q["service"].as_str().unwrap()).collect();
    assert_eq!(order, ["urgent", "first", "second"], "by priority, then arrival: {gpus}");
    assert_eq!(gpus["queue"][0]["vram_bytes"], 20 * GIB);
    assert_eq!(gpus["queue"][0]["priority"], 5);

    // A service that needs no GPU is never held up by the queue.
    let asked = Instant::now();
    d.start_ok("cpu").await;
    assert!(asked.elapsed() < Duration::from_secs(10));

    // A waiting client that hangs up leaves the queue.
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(500)).no_proxy().build().unwrap();
    let gone = impatient.post(d.u("/services/quitter/start")).json(&json!({"wait": true, "timeout": 60})).send().await;
    assert!(gone.is_err(), "the client gave up before an answer");
    wait_until(Duration::from_secs(10), "the hung-up start to leave the queue", || {
        let d = d.clone();
        async move { !d.get_ok("/gpus").await["queue"].to_string().contains("quitter") }
    })
    .await;

    // Each stop lets the next in line in.
    for (next, holder) in [("urgent", "holder"), ("first", "urgent"), ("second", "first")] {
        d.stop_ok(holder).await;
        let (name, task) = waiting.iter_mut().position(|(n, _)| *n == next).map(|i| waiting.remove(i)).unwrap();
        let (code, v) = task.await.unwrap();
        assert_eq!(code, 200, "{name}: {v}");
        assert_eq!(d.state_of(name).await, "running");
        for (other, _) in &waiting {
            assert_ne!(d.state_of(other).await, "running", "{other} started before {name}");
        }
    }
    assert_eq!(d.state_of("quitter").await, "stopped", "the hung-up start never ran");
    fleet.assert_never_overbooked();
}

#[tokio::test(flavor = "multi_thread")]
async fn without_nvml_or_declared_gpus_the_vram_policy_falls_back_to_exclusive_and_says_so() {
    let ws = Workspace::new();
    ws.add(Svc::new("gpu-a").gpu());
    ws.add(Svc::new("gpu-b").gpu());
    let d = Daemon::start_with(&ws.services(), &ws.path("state"), &["--gpu-policy", "vram"], &[]);
    let health = d.get_ok("/health").await;
    // No driver on the machines that run the tests.
    assert_eq!(health["gpu"]["policy"], "exclusive", "{health}");
    assert_eq!(health["gpu"]["source"], "none", "{health}");
    let detail = health["gpu"]["detail"].as_str().unwrap();
    assert!(detail.contains("NVML not available") && detail.contains("exclusive policy"), "{health}");

    // A bad wait is a clear 422 naming the problem.
    for (body, says) in
        [(json!({"timeout": 5}), "`timeout` needs"), (json!({"wait": true, "timeout": -1}), "from 0 to 86400")]
    {
        let (code, v) = start_with(&d, "gpu-a", body).await;
        assert_eq!(code, 422, "{v}");
        assert!(v["detail"].as_str().unwrap().contains(says), "{v}");
    }

    // The exclusive rule, answered as ever; /gpus names the one holder.
    d.start_ok("gpu-a").await;
    let (code, v) = d.start_svc("gpu-b").await;
    assert_eq!((code, &v["detail"]), (409, &json!("GPU service 'gpu-a' is already running")), "{v}");
    let gpus = d.get_ok("/gpus").await;
    assert_eq!(gpus["holder"], "gpu-a", "{gpus}");
    assert_eq!(gpus["gpus"], json!([]), "{gpus}");
    assert_eq!(gpus["queue"], json!([]), "{gpus}");

    let out = cli_async(&d.url, &["gpus", "--json"]).await;
    assert_eq!(out.json()["holder"], "gpu-a", "{}", out.all());
    let out = cli_async(&d.url, &["gpus"]).await;
    assert!(out.stdout.contains("policy: exclusive") && out.stdout.contains("holder: gpu-a"), "{}", out.all());
    // `nanny start --wait` queues until the holder lets go.
    let url = d.url.clone();
    let waiting = tokio::spawn(async move { cli_async(&url, &["start", "gpu-b", "--wait", "--timeout", "60"]).await });
    wait_until(Duration::from_secs(10), "gpu-b to queue", || async {
        d.get_ok("/gpus").await["queue"].to_string().contains("gpu-b")
    })
    .await;
    d.stop_ok("gpu-a").await;
    let out = waiting.await.unwrap();
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(d.state_of("gpu-b").await, "running");
}

#[tokio::test(flavor = "multi_thread")]
async fn gpus_can_be_declared_in_the_config_file() {
    let ws = Workspace::new();
    let config = ws.path("nanny.yaml");
    std::fs::write(&config, "gpus: [\"0:24GiB\", \"1:80GiB\"]\n").unwrap();
    let args = ["--gpu-policy", "vram", "--config", config.to_str().unwrap()];
    let d = Daemon::start_with(&ws.services(), &ws.path("state"), &args, &[]);
    let gpus = d.get_ok("/gpus").await;
    assert_eq!((&gpus["policy"], &gpus["source"]), (&json!("vram"), &json!("declared")), "{gpus}");
    let totals: Vec<u64> =
        gpus["gpus"].as_array().unwrap().iter().map(|g| g["total_bytes"].as_u64().unwrap()).collect();
    assert_eq!(totals, [24 * GIB, 80 * GIB]);
    let out = cli_async(&d.url, &["gpus"]).await;
    assert!(out.stdout.contains("policy: vram") && out.stdout.contains("80.0 GiB"), "{}", out.all());
}
