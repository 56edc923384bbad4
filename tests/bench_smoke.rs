//! The benchmark harness keeps working: `bench/run --smoke` against this build of nanny and
//! the peers installed here (supervisord, s6; one not installed is marked unavailable; Horust,
//! built by hand and not in CI, is left to the full run: its HTTP readiness trial sometimes
//! never reports Running, not yet understood), with
//! small N and few samples. It must exit 0, measure every workload for nanny, say where a peer
//! cannot do a workload, and leave no process behind.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const PEERS: [&str; 2] = ["supervisord", "s6"];

fn number(v: &Value, key: &str, what: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{what}: no number {key}: {v}"))
}

#[test]
fn smoke_run_measures_nanny_and_the_installed_peers() {
    let out = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = Command::new(root.join("bench/run"))
        .args(["--smoke", "--tools", "nanny,supervisord,s6", "--nanny", common::NANNY, "--out"])
        .arg(out.path())
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .expect("bench/run runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "bench/run --smoke failed ({}):\n{stdout}\n{stderr}", run.status);

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("latest.json")).unwrap()).unwrap();
    let results = &doc["results"];
    assert_eq!(doc["mode"], "smoke");

    // nanny: every workload measured, with figures in a plausible range.
    let crash = &results["crash"]["nanny"];
    assert!(number(crash, "n", "crash") >= 3.0, "{crash}");
    assert!(number(crash, "p50", "crash") < 1000.0, "restart delay 0 respawns well within a second: {crash}");
    let ready = &results["ready_http"]["nanny"];
    assert!((0.0..5000.0).contains(&number(ready, "p50", "ready_http")), "{ready}");
    let notify = &results["ready_self"]["nanny"];
    assert!(notify.get("p50").is_some() || notify["cannot"].as_str().unwrap().starts_with("not yet"), "{notify}");
    let scale = results.as_object().unwrap().iter().find(|(k, _)| k.starts_with("scale_")).expect("a scale result").1;
    let nanny_scale = &scale["nanny"];
    assert!(
        number(nanny_scale, "up_s", "scale") > 0.0 && number(nanny_scale, "stop_s", "scale") >= 0.0,
        "{nanny_scale}"
    );
    assert!(number(nanny_scale, "pss_mb", "scale") > 1.0, "the daemon's memory is measured: {nanny_scale}");
    let anon = number(nanny_scale, "anon_mb", "scale");
    assert!(
        anon > 0.1 && anon < number(nanny_scale, "rss_mb", "scale"),
        "anonymous memory, a part of RSS: {nanny_scale}"
    );
    let api = &results["api"]["nanny"];
    assert_eq!(number(api, "errors", "api"), 0.0, "{api}");
    assert!(number(api, "n", "api") >= 50.0, "{api}");
    assert!(number(&results["logs"]["nanny"], "wall_s", "logs") > 0.0);
    for w in ["gpu_swap", "gpu_manual"] {
        assert!(number(&results[w]["nanny"], "n", w) >= 2.0, "{w}: {}", results[w]["nanny"]);
    }

    // Peers: measured where installed, marked unavailable otherwise, never an error; the
    // workloads a peer cannot do say so.
    let unavailable = doc["unavailable"].as_object().unwrap();
    for peer in PEERS {
        if let Some(why) = unavailable.get(peer) {
            assert!(!why.as_str().unwrap().is_empty());
            continue;
        }
        let c = &results["crash"][peer];
        assert!(number(c, "n", &format!("{peer} crash")) >= 3.0, "{peer}: {c}");
        assert!(results["gpu_swap"][peer]["cannot"].is_string(), "{peer} has no GPU arbitration");
    }
    for (workload, peer) in
        [("ready_http", "supervisord"), ("ready_self", "supervisord"), ("ready_http", "s6"), ("api", "s6")]
    {
        if !unavailable.contains_key(peer) {
            assert!(results[workload][peer]["cannot"].is_string(), "{workload}/{peer}: {}", results[workload][peer]);
        }
    }
    for (w, by) in results.as_object().unwrap() {
        for (tool, v) in by.as_object().unwrap() {
            assert!(v.get("error").is_none(), "{w}/{tool}: {v}");
        }
    }

    // The table names every tool asked for, and the run cleaned up after itself.
    let table = std::fs::read_to_string(out.path().join("latest.md")).unwrap();
    assert!(table.starts_with("| figure | nanny | supervisord | s6 |"), "{table}");
    let scratch = stdout.split("(scratch ").nth(1).and_then(|s| s.split(')').next()).expect("scratch dir printed");
    assert!(!Path::new(scratch).exists(), "scratch dir {scratch} removed");
    let leftovers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(scratch))
        .collect();
    assert!(leftovers.is_empty(), "processes left behind: {leftovers:?}");
}
