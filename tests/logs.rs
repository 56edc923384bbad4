//! Log capture: a service flooding stdout never stalls (the daemon keeps draining its pipe)
//! while the daemon stays responsive, over-long lines are cut once and the in-memory ring
//! stays within its byte bound, and `follow=true` streams NDJSON.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::Value;

fn read_counter(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn flood_number(line: &str) -> Option<u64> {
    line.strip_prefix("flood line ")?.split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn flooding_service_keeps_progressing_and_daemon_stays_responsive() {
    let ws = Workspace::new();
    let progress = ws.path("progress");
    ws.add(Svc::new("flood").arg("--flood").arg("--progress").arg(&progress).stop_timeout(3.0));
    let d = Daemon::start(&ws.services());
    let quick = http_client();

    d.start_ok("flood").await;

    let mut last = 0u64;
    for round in 0..4 {
        // The service's writes keep going through: its counter strictly increases.
        wait_until(Duration::from_secs(15), &format!("flood counter passes {last} (round {round})"), || {
            let now = read_counter(&progress).unwrap_or(0);
            async move { now > last }
        })
        .await;
        last = read_counter(&progress).unwrap();

        // The daemon answers promptly meanwhile.
        let t0 = Instant::now();
        let r = quick.get(d.u("/health")).send().await.expect("daemon /health while flooding");
        assert_eq!(r.status().as_u16(), 200);
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(3), "daemon /health took {took:?} while a service floods");

        let st = d.status("flood").await;
        assert_eq!(st["status"], "running", "{st}");
    }

    // tail=5 gives five flood lines, and they are recent: eventually past the counter we saw.
    let seen = read_counter(&progress).unwrap();
    wait_until(Duration::from_secs(15), &format!("logs reach flood line {seen}"), || async {
        let l = d.logs("flood", 5).await;
        let lines = l["lines"].as_array().unwrap();
        assert_eq!(lines.len(), 5, "{l}");
        let nums: Vec<Option<u64>> = lines.iter().map(|x| flood_number(x["line"].as_str().unwrap())).collect();
        assert!(nums.iter().all(|n| n.is_some()), "tail=5 should be flood lines: {l}");
        assert!(lines.iter().all(|x| x["stream"] == "stdout"), "{l}");
        nums.last().unwrap().unwrap() >= seen
    })
    .await;

    let t0 = Instant::now();
    d.stop_ok("flood").await;
    assert!(t0.elapsed() < Duration::from_secs(15), "stop of a flooding service took {:?}", t0.elapsed());
    let r = quick.get(d.u("/health")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_streams_ndjson_log_lines() {
    let ws = Workspace::new();
    ws.add(Svc::new("ticker").arg("--tick").arg("0.3"));
    let d = Daemon::start(&ws.services());
    d.start_ok("ticker").await;

    let resp = d.client.get(d.u("/services/ticker/logs?follow=true&tail=1")).send().await.expect("follow request");
    assert_eq!(resp.status().as_u16(), 200);
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::<u8>::new();
    let mut ticks = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ticks.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no 3 distinct tick lines streamed within 20 s (got {ticks:?})"))
            .expect("stream ended while following")
            .expect("stream error");
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not NDJSON ({e}): {text:?}"));
            assert!(v["ts"].as_str().is_some_and(is_rfc3339), "{v}");
            let s = v["stream"].as_str().unwrap_or("");
            assert!(["stdout", "stderr", "nanny"].contains(&s), "{v}");
            if let Some(t) = v["line"].as_str().and_then(|l| l.strip_prefix("tick ")) {
                assert_eq!(s, "stdout", "{v}");
                ticks.insert(t.parse::<u64>().unwrap());
            }
        }
    }
    drop(stream);
    d.stop_ok("ticker").await;
}

/// The in-memory ring's bound (`logs::RING_BYTES`) and the line cut (`logs::MAX_LINE_BYTES`).
const RING_BYTES: usize = 4 * 1024 * 1024;
const MAX_LINE_BYTES: usize = 16 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn long_lines_are_cut_once_and_the_ring_stays_within_its_byte_bound() {
    let ws = Workspace::new();
    // 300 lines of 20 000 bytes (6 MB; 300 cut lines are more than the ring holds), then `done`.
    let script = "import sys\nfor n in range(300):\n    sys.stdout.write('x' * 20000 + ' end of %d\\n' % n)\n\
                  print('done', flush=True)\nimport time\ntime.sleep(1000)\n";
    let yaml = format!("name: long\ncommand: [python3, -c, {}]\n", serde_json::to_string(script).unwrap());
    ws.write_manifest("long", &yaml);
    let d = Daemon::start(&ws.services());
    d.start_ok("long").await;
    d.wait_log_line("long", Duration::from_secs(30), "the line after the flood", |l| l["line"] == "done").await;

    let marker = format!("… [line cut at {MAX_LINE_BYTES} bytes]");
    let lines = d.log_lines("long").await;
    let output: Vec<&str> =
        lines.iter().filter(|l| l["stream"] == "stdout").map(|l| l["line"].as_str().unwrap()).collect();
    let (done, cut) = output.split_last().unwrap();
    assert_eq!(*done, "done");
    for line in cut {
        // Cut at the bound with the marker; the rest of the line (` end of N`) is not a line.
        assert!(line.strip_suffix(&marker).is_some_and(|x| x == "x".repeat(MAX_LINE_BYTES)), "{:.80}…", line);
    }
    let kept: usize = lines.iter().map(|l| l["line"].as_str().unwrap().len()).sum();
    assert!(kept <= RING_BYTES, "{kept} bytes of lines in memory");
    assert!(kept > RING_BYTES - 2 * (MAX_LINE_BYTES + marker.len()), "the ring fills up to its bound: {kept}");
    assert!(cut.len() < 300, "the oldest cut lines left the ring: {} kept", cut.len());
    // The file has every line once, each cut (written by the log writer thread, just after).
    let path = d.state_dir().join("logs/long.log");
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    wait_until_sync(Duration::from_secs(10), "the log file has the last line", || read().contains(" stdout done\n"));
    let file = read();
    let stdout: Vec<&str> = file.lines().filter(|l| l.split_whitespace().nth(1) == Some("stdout")).collect();
    assert_eq!(stdout.len(), 301, "no remainder of a cut line was logged");
    assert_eq!(stdout.iter().filter(|l| l.ends_with(&marker)).count(), 300);
    d.stop_ok("long").await;
}
