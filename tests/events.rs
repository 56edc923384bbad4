//! Lifecycle events: the history (`GET /events` with since/service/limit), the live SSE stream
//! (`GET /events/stream`, resumable with `Last-Event-ID` without gaps or duplicates), persistence
//! in `STATE_DIR/nanny.db` across daemon restarts, and `nanny events`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn ids(evs: &[Value]) -> Vec<u64> {
    evs.iter().map(id).collect()
}

/// Reads frames until one has id `last` (or panics after `timeout`); returns them all.
async fn read_until(stream: &mut SseStream, last: u64, timeout: Duration) -> Vec<SseFrame> {
    let deadline = Instant::now() + timeout;
    let mut frames: Vec<SseFrame> = Vec::new();
    loop {
        if frames.last().and_then(|f| f.id).is_some_and(|i| i >= last) {
            return frames;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match stream.next(left).await {
            Some(f) => frames.push(f),
            None => panic!(
                "SSE stream: no event with id {last} within {timeout:?}; got {:?}",
                frames.iter().map(|f| f.id).collect::<Vec<_>>()
            ),
        }
    }
}

/// Reads frames until `stop` holds for one (or panics after `timeout`); returns them all.
async fn read_until_frame(
    stream: &mut SseStream,
    timeout: Duration,
    stop: impl Fn(&SseFrame) -> bool,
) -> Vec<SseFrame> {
    let deadline = Instant::now() + timeout;
    let mut frames: Vec<SseFrame> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match stream.next(left).await {
            Some(f) => {
                let done = stop(&f);
                frames.push(f);
                if done {
                    return frames;
                }
            }
            None => panic!(
                "SSE stream: the expected event did not come within {timeout:?}; got {:?}",
                frames.iter().map(|f| f.data.clone()).collect::<Vec<_>>()
            ),
        }
    }
}

fn frame_ids(frames: &[SseFrame]) -> Vec<u64> {
    frames.iter().map(|f| f.id.expect("every SSE event has an id")).collect()
}

fn check_frame(f: &SseFrame) {
    assert_eq!(f.id, f.data["id"].as_u64(), "SSE `id:` is the event id: {f:?}");
    assert_eq!(f.event.as_deref(), f.data["kind"].as_str(), "SSE `event:` is the event kind: {f:?}");
}

/// Rewrites `name`'s manifest with a new description (a `manifest_changed` at the next rescan).
fn touch_manifest(ws: &Workspace, sup: &Svc, n: usize) {
    let yaml =
        sup.yaml().replace(&format!("description: test service {}", sup.name), &format!("description: edited {n}"));
    ws.write_manifest(&sup.name, &yaml);
}

#[tokio::test(flavor = "multi_thread")]
async fn history_is_filtered_by_since_service_and_limit() {
    let ws = Workspace::new();
    Svc::new("a").write(&ws.services());
    Svc::new("b").write(&ws.services());
    let d = Daemon::start(&ws.services());

    d.start_ok("a").await;
    d.start_ok("b").await;
    d.stop_ok("a").await;

    let all = d.all_events().await;
    assert_increasing(&all);
    assert_eq!(all[0]["kind"], "daemon_started", "{}", render(&all));
    assert!(all[0]["service"].is_null(), "{}", render(&all));
    for e in &all {
        assert!(e["ts"].as_str().is_some_and(is_rfc3339), "{e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        assert!(e["kind"].is_string(), "{e}");
    }
    for s in ["a", "b"] {
        assert!(first(&all, s, "discovered", 0).is_some(), "{}", render(&all));
    }
    let a: Vec<Value> = all.iter().filter(|e| e["service"] == "a").cloned().collect();
    assert_eq!(kinds(&a), ["discovered", "starting", "healthy", "stopping", "exited", "stopped"], "{}", render(&a));
    assert!(a[1]["pid"].is_u64() && a[1]["automatic"] == false, "{}", a[1]);
    assert!(a[2]["startup_ms"].is_number(), "{}", a[2]);
    assert_eq!(a[3]["signal"], "SIGTERM", "{}", a[3]);
    assert_eq!(a[4]["expected"], true, "{}", a[4]);
    assert!(a[4].get("code").is_some() && a[4].get("signal").is_some(), "{}", a[4]);

    // Default: everything (fewer than 100), last_id is the newest id.
    let v = d.get_ok("/events").await;
    assert_eq!(v["events"].as_array().unwrap().len(), all.len(), "{v}");
    assert_eq!(v["last_id"], id(all.last().unwrap()), "{v}");

    // since
    let k = id(&all[all.len() / 2]);
    let after = d.events(&format!("since={k}")).await;
    assert_eq!(ids(&after), ids(&all).into_iter().filter(|i| *i > k).collect::<Vec<_>>());

    // service
    assert_eq!(ids(&d.events("service=a").await), ids(&a));
    assert!(d.events("service=nope").await.is_empty());

    // limit: the newest N, oldest first.
    let newest = d.get_ok("/events?limit=2").await;
    let evs = newest["events"].as_array().unwrap();
    assert_eq!(ids(evs), ids(&all[all.len() - 2..]), "{newest}");
    assert_eq!(newest["last_id"], id(all.last().unwrap()));

    // All three together.
    let a_start = id(first(&all, "a", "starting", 0).unwrap());
    let evs = d.events(&format!("since={a_start}&service=a&limit=2")).await;
    assert_eq!(ids(&evs), ids(&a[a.len() - 2..]), "{}", render(&evs));
    let evs = d.events(&format!("since={a_start}&service=a&limit=100")).await;
    assert_eq!(ids(&evs), ids(&a[2..]), "{}", render(&evs));
}

#[tokio::test(flavor = "multi_thread")]
async fn history_default_limit_and_bad_parameters() {
    let ws = Workspace::new();
    let a = Svc::new("a").write(&ws.services());
    let d = Daemon::start(&ws.services());

    // 110 cheap events: a rescan after each manifest edit.
    for n in 0..110 {
        touch_manifest(&ws, &a, n);
        let (code, v) = d.post("/rediscover", None).await;
        assert_eq!(code, 200, "{v}");
    }
    let all = d.all_events().await;
    assert!(all.len() > 110, "{}", all.len());
    assert_eq!(of_kind(&all, Some("a"), "manifest_changed").len(), 110);
    assert!(of_kind(&all, Some("a"), "manifest_changed").iter().all(|e| e["running"] == false));
    let v = d.get_ok("/events").await;
    let evs = v["events"].as_array().unwrap();
    assert_eq!(evs.len(), 100, "the default limit is 100");
    assert_eq!(ids(evs), ids(&all[all.len() - 100..]), "the newest 100, oldest first");
    assert_eq!(v["last_id"], id(all.last().unwrap()));

    for bad in ["limit=0", "limit=10001", "limit=-1", "limit=abc", "limit=1.5", "since=abc", "since=-5", "since=1.5"] {
        let (code, v) = d.get(&format!("/events?{bad}")).await;
        assert_eq!(code, 400, "GET /events?{bad} -> {code} {v}");
        assert!(
            v["detail"].as_str().is_some_and(|s| !s.is_empty()),
            "GET /events?{bad}: JSON detail expected, got {v}"
        );
    }
    let (code, v) = d.get("/events?limit=10000").await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = d.get("/events?limit=1").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    let (code, v) = d.get("/events/stream?limit=abc").await;
    assert_eq!(code, 400, "the stream validates its query too: {v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_delivers_live_events_in_order_after_storing_them() {
    let ws = Workspace::new();
    Svc::new("a").write(&ws.services());
    Svc::new("b").write(&ws.services());
    let d = Daemon::start(&ws.services());
    let db = rusqlite::Connection::open(d.state_dir().join("nanny.db")).expect("open nanny.db");
    let stored = |event_id: u64| -> bool {
        db.query_row("SELECT count(*) FROM events WHERE id = ?1", [event_id as i64], |r| r.get::<_, i64>(0)).unwrap()
            == 1
    };

    let since = d.last_event_id().await;
    let mut all = SseStream::connect(&d.u(&format!("/events/stream?since={since}")), None).await;
    let mut only_b = SseStream::connect(&d.u(&format!("/events/stream?since={since}&service=b")), None).await;

    d.start_ok("a").await;
    d.start_ok("b").await;

    let frames = read_until_frame(&mut all, LONG, |f| f.data["service"] == "b" && f.data["kind"] == "healthy").await;
    let got = frame_ids(&frames);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "ids increase: {got:?}");
    assert!(got.iter().all(|i| *i > since), "nothing at or before since={since}: {got:?}");
    for f in &frames {
        check_frame(f);
        assert!(stored(f.id.unwrap()), "event {} was published before it was stored", f.id.unwrap());
    }
    let seq: Vec<(String, String)> = frames
        .iter()
        .map(|f| (f.data["service"].as_str().unwrap_or("").to_string(), f.data["kind"].as_str().unwrap().to_string()))
        .collect();
    let want: Vec<(String, String)> = [("a", "starting"), ("a", "healthy"), ("b", "starting"), ("b", "healthy")]
        .iter()
        .map(|(s, k)| (s.to_string(), k.to_string()))
        .collect();
    assert_eq!(seq, want);
    // The same events as the history, in the same order.
    let history = d.events(&format!("since={since}")).await;
    assert_eq!(got, ids(&history));

    let frames = read_until_frame(&mut only_b, LONG, |f| f.data["kind"] == "healthy").await;
    assert!(frames.iter().all(|f| f.data["service"] == "b"), "service filter on the stream: {frames:?}");
    assert_eq!(frames.len(), 2, "{frames:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_resumes_after_last_event_id_without_gaps_or_duplicates() {
    let ws = Workspace::new();
    let a = Svc::new("a").write(&ws.services());
    let d = Daemon::start(&ws.services());
    d.start_ok("a").await;
    d.stop_ok("a").await;

    let history = d.all_events().await;
    assert!(history.len() >= 6, "{}", render(&history));
    let k = id(&history[history.len() / 2]);
    let last = id(history.last().unwrap());
    let expected: Vec<u64> = ids(&history).into_iter().filter(|i| *i > k).collect();

    // Reconnect with Last-Event-ID: exactly the events after it, then live ones.
    let mut stream = SseStream::connect(&d.u("/events/stream"), Some(&k.to_string())).await;
    let frames = read_until(&mut stream, last, LONG).await;
    assert_eq!(frame_ids(&frames), expected, "replay after Last-Event-ID {k}");
    frames.iter().for_each(check_frame);
    d.start_ok("a").await;
    let more = read_until_frame(&mut stream, LONG, |f| f.data["service"] == "a" && f.data["kind"] == "healthy").await;
    let mut got = frame_ids(&frames);
    got.extend(frame_ids(&more));
    let history = d.all_events().await;
    let want: Vec<u64> = ids(&history).into_iter().filter(|i| *i > k && *i <= *got.last().unwrap()).collect();
    assert_eq!(got, want, "replayed then live, no gap and no duplicate");

    // Events keep coming while a client connects: the replay/live boundary loses and repeats
    // nothing.
    let url = d.url.clone();
    let services = ws.services();
    let writer = tokio::spawn(async move {
        let client = http_client();
        for n in 0..40 {
            let yaml = a.yaml().replace("description: test service a", &format!("description: v{n}"));
            std::fs::write(services.join("a/service.yaml"), yaml).unwrap();
            let r = client.post(format!("{url}/rediscover")).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
        }
    });
    // Connect in the middle of the writes.
    d.wait_events(LONG, "some of the rescans happened", |evs| of_kind(evs, Some("a"), "manifest_changed").len() >= 5)
        .await;
    let mut stream = SseStream::connect(&d.u("/events/stream?since=0"), None).await;
    writer.await.unwrap();
    let last = d.last_event_id().await;
    let frames = read_until(&mut stream, last, LONG).await;
    let all = d.all_events().await;
    assert_eq!(frame_ids(&frames), ids(&all), "since=0 replays everything, then the live events, exactly once");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_persist_across_daemon_restarts() {
    let ws = Workspace::new();
    Svc::new("a").write(&ws.services());
    let state = ws.path("state");
    let mut d = Daemon::start_with_state(&ws.services(), &state);
    d.start_ok("a").await;
    let before = d.all_events().await;
    d.terminate();

    // Stored in STATE_DIR/nanny.db, table events(id, ts, service, kind, body).
    let rows: Vec<(u64, String, Option<String>, String, String)> = {
        let db = rusqlite::Connection::open(state.join("nanny.db")).expect("open nanny.db");
        let mut stmt = db.prepare("SELECT id, ts, service, kind, body FROM events ORDER BY id").unwrap();
        stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert!(rows.len() > before.len(), "the shutdown's events were stored too");
    for (e, row) in before.iter().zip(&rows) {
        assert_eq!(id(e), row.0);
        assert_eq!(e["kind"], row.3.as_str());
        assert_eq!(e["service"].as_str(), row.2.as_deref());
        let body: Value = serde_json::from_str(&row.4).expect("body is JSON");
        assert_eq!(&body, e, "the stored body is the event");
    }
    assert!(rows.iter().any(|r| r.3 == "daemon_stopping"), "{rows:?}");
    let stopped_a = rows.iter().any(|r| r.3 == "stopped" && r.2.as_deref() == Some("a"));
    assert!(stopped_a, "{rows:?}");
    let old_max = rows.last().unwrap().0;

    let d = Daemon::start_with_state(&ws.services(), &state);
    let after = d.all_events().await;
    assert_increasing(&after);
    assert_eq!(&after[..before.len()], &before[..], "the old history is intact");
    assert_eq!(ids(&after[..rows.len()]), rows.iter().map(|r| r.0).collect::<Vec<_>>());
    let started = after
        .iter()
        .find(|e| id(e) > old_max && e["kind"] == "daemon_started")
        .unwrap_or_else(|| panic!("a new daemon_started: {}", render(&after)));
    assert!(id(started) > old_max, "ids keep increasing across restarts");
    assert_eq!(of_kind(&after, None, "daemon_started").len(), 2, "{}", render(&after));
}

#[tokio::test(flavor = "multi_thread")]
async fn rescans_report_changes_removals_and_invalid_manifests() {
    let ws = Workspace::new();
    let a = Svc::new("a").write(&ws.services());
    let b = Svc::new("b").write(&ws.services());
    let d = Daemon::start(&ws.services());
    d.start_ok("a").await;
    let mark = d.last_event_id().await;

    touch_manifest(&ws, &a, 1);
    touch_manifest(&ws, &b, 1);
    let (code, v) = d.post("/rediscover", None).await;
    assert_eq!(code, 200, "{v}");
    ws.remove_service_dir("b");
    Svc::new("c").write(&ws.services());
    let broken = ws.write_manifest("broken", "name: broken\ncommand: [\"true\"]\nbogus_field: 1\n");
    let (code, v) = d.post("/rediscover", None).await;
    assert_eq!(code, 200, "{v}");

    let evs = d.events_after(None, mark).await;
    let changed_a = expect_event(&evs, "a", "manifest_changed");
    assert_eq!(changed_a["running"], true, "{changed_a}");
    let changed_b = expect_event(&evs, "b", "manifest_changed");
    assert_eq!(changed_b["running"], false, "{changed_b}");
    assert!(
        first(&evs, "b", "removed", 0).is_some(),
        "a `removed` event for b once its directory is gone and a rescan ran: {}",
        render(&evs)
    );
    assert!(first(&evs, "c", "discovered", 0).is_some(), "{}", render(&evs));
    let invalid = of_kind(&evs, None, "invalid");
    assert_eq!(invalid.len(), 1, "{}", render(&evs));
    assert_eq!(invalid[0]["path"], broken.to_str().unwrap(), "{}", invalid[0]);
    let errors = invalid[0]["errors"].as_array().unwrap_or_else(|| panic!("errors is a list: {}", invalid[0]));
    assert!(errors.iter().any(|e| e.as_str().is_some_and(|s| s.contains("bogus_field"))), "{}", invalid[0]);
    assert_increasing(&evs);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_prints_and_follows_events() {
    let ws = Workspace::new();
    Svc::new("a").write(&ws.services());
    Svc::new("b").write(&ws.services());
    let d = Daemon::start(&ws.services());
    d.start_ok("a").await;

    let out = cli_async(&d.url, &["events", "--json"]).await;
    assert_eq!(out.code, 0, "{out}");
    let v = out.json();
    let evs = v["events"].as_array().unwrap_or_else(|| panic!("{out}"));
    assert_eq!(ids(evs), ids(&d.all_events().await), "{out}");
    assert_eq!(v["last_id"], id(evs.last().unwrap()), "{out}");

    let out = cli_async(&d.url, &["events", "--service", "a", "-n", "2", "--json"]).await;
    assert_eq!(out.code, 0, "{out}");
    let evs = out.json()["events"].as_array().unwrap().clone();
    assert_eq!(evs.len(), 2, "{out}");
    assert!(evs.iter().all(|e| e["service"] == "a"), "{out}");
    assert_eq!(evs[1]["kind"], "healthy", "the newest last: {out}");

    let k = id(&evs[0]);
    let out = cli_async(&d.url, &["events", "--since", &k.to_string(), "--json"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.json()["events"].as_array().unwrap().iter().all(|e| id(e) > k), "{out}");

    let out = cli_async(&d.url, &["events"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.lines().count() >= 4, "{out}");
    assert!(out.stdout.contains("daemon") && out.stdout.contains("discovered"), "{out}");

    // -f: prints new events as they happen.
    let mut follow = Command::new(NANNY)
        .args(["events", "-f", "--json", "--service", "b"])
        .env("NANNY_URL", &d.url)
        .env_remove("NANNY_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nanny events -f");
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Its backlog (b's discovered event) shows it is connected before b starts.
    let first_line = rx.recv_timeout(Duration::from_secs(30)).expect("nanny events -f prints the backlog");
    let first_event: Value = serde_json::from_str(&first_line).unwrap_or_else(|e| panic!("{e}: {first_line}"));
    assert_eq!(first_event["kind"], "discovered", "{first_line}");
    d.start_ok("b").await;
    let mut kinds = Vec::new();
    let deadline = Instant::now() + LONG;
    while !kinds.contains(&"healthy".to_string()) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| panic!("no healthy event from -f; got {kinds:?}"));
        let e: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(e["service"], "b", "{line}");
        kinds.push(e["kind"].as_str().unwrap().to_string());
    }
    assert_eq!(kinds, ["starting", "healthy"]);
    let _ = follow.kill();
    let _ = follow.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_stream_replays_a_long_backlog_a_page_at_a_time() {
    let ws = Workspace::new();
    // 1200 `discovered` events: more than two pages of the store (500 events each).
    for n in 0..1200 {
        ws.write_manifest(&format!("s{n:04}"), &format!("name: s{n:04}\ncommand: [sleep, '1000']\n"));
    }
    Svc::new("a").write(&ws.services());
    let d = Daemon::start(&ws.services());
    let history = d.all_events().await;
    assert!(history.len() > 1200, "{}", history.len());

    // Resume from the first event; the live ones (a's start) come during or after the replay.
    let mut stream = SseStream::connect(&d.u("/events/stream"), Some(&id(&history[0]).to_string())).await;
    d.start_ok("a").await;
    let frames = read_until_frame(&mut stream, LONG, |f| f.data["service"] == "a" && f.data["kind"] == "healthy").await;
    frames.iter().for_each(check_frame);
    let got = frame_ids(&frames);
    let all = d.all_events().await;
    let want: Vec<u64> = ids(&all).into_iter().filter(|i| *i > id(&history[0]) && i <= got.last().unwrap()).collect();
    assert_eq!(got.len(), want.len(), "no gap and no duplicate across pages and into the live events");
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_history_is_pruned_to_its_retention_when_the_daemon_starts() {
    let ws = Workspace::new();
    let a = Svc::new("a").write(&ws.services());
    let state = ws.path("state");
    let mut d = Daemon::start_with_state(&ws.services(), &state);
    for n in 0..30 {
        touch_manifest(&ws, &a, n);
        let (code, v) = d.post("/rediscover", None).await;
        assert_eq!(code, 200, "{v}");
    }
    d.terminate();
    let stored = || -> Vec<u64> {
        let db = rusqlite::Connection::open(state.join("nanny.db")).expect("open nanny.db");
        let mut stmt = db.prepare("SELECT id FROM events ORDER BY id").unwrap();
        stmt.query_map([], |r| r.get::<_, i64>(0)).unwrap().map(|i| i.unwrap() as u64).collect()
    };
    let old = stored();
    assert!(old.len() > 30, "{old:?}");

    // By count: the newest 10 of the old history are left.
    let mut d = Daemon::start_with(&ws.services(), &state, &["--events-keep", "10"], &[]);
    let after = d.all_events().await;
    let kept: Vec<u64> = ids(&after).into_iter().filter(|i| i <= old.last().unwrap()).collect();
    assert_eq!(kept, old[old.len() - 10..], "{}", render(&after));
    d.terminate();

    // By age: events older than 7 days go, whatever their number.
    let old = stored();
    let newest_three = old[old.len() - 3];
    let db = rusqlite::Connection::open(state.join("nanny.db")).unwrap();
    db.execute("UPDATE events SET ts = '2020-01-01T00:00:00Z' WHERE id < ?1", [newest_three as i64]).unwrap();
    drop(db);
    let d = Daemon::start_with(&ws.services(), &state, &[], &[("NANNY_EVENTS_MAX_AGE", "7d")]);
    let after = d.all_events().await;
    let kept: Vec<u64> = ids(&after).into_iter().filter(|i| i <= old.last().unwrap()).collect();
    assert_eq!(kept, old[old.len() - 3..], "{}", render(&after));
}
