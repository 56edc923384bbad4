//! Helpers over an event history (the `events` of `GET /events`, oldest first). Fetching and
//! waiting for events are methods of [`super::Daemon`].

use serde_json::Value;

pub fn id(e: &Value) -> u64 {
    e["id"].as_u64().unwrap_or_else(|| panic!("event without a numeric id: {e}"))
}

/// A JSON string holding a timestamp; `what` names it when it is not one.
pub fn timestamp(v: &Value, what: &str) -> jiff::Timestamp {
    let s = v.as_str().unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    s.parse().unwrap_or_else(|e| panic!("{what} {s:?} is not a timestamp: {e}"))
}

/// The event's `ts`.
pub fn ts(e: &Value) -> jiff::Timestamp {
    timestamp(&e["ts"], &format!("the ts of event {e}"))
}

/// Milliseconds from event `a` to event `b` by their timestamps.
pub fn ms_between(a: &Value, b: &Value) -> f64 {
    let d = ts(b).duration_since(ts(a));
    d.as_secs_f64() * 1000.0
}

/// The events of `service` (all if None) with `kind`.
pub fn of_kind<'a>(evs: &'a [Value], service: Option<&str>, kind: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["kind"] == kind && service.is_none_or(|s| e["service"] == s)).collect()
}

/// The first event of `service` with `kind` after id `after`.
pub fn first<'a>(evs: &'a [Value], service: &str, kind: &str, after: u64) -> Option<&'a Value> {
    evs.iter().find(|e| id(e) > after && e["service"] == service && e["kind"] == kind)
}

/// The first event of `service` with `kind`, panicking with the history if there is none.
pub fn expect_event<'a>(evs: &'a [Value], service: &str, kind: &str) -> &'a Value {
    first(evs, service, kind, 0).unwrap_or_else(|| panic!("no `{kind}` event for {service}: {}", render(evs)))
}

/// The id of the newest `daemon_started` event (the current daemon's).
pub fn last_daemon_start(evs: &[Value]) -> u64 {
    of_kind(evs, None, "daemon_started").last().map(|e| id(e)).expect("a daemon_started event")
}

/// The events' kinds, in order ("?" for an event without one).
pub fn kinds<'a>(evs: impl IntoIterator<Item = &'a Value>) -> Vec<String> {
    evs.into_iter().map(|e| e["kind"].as_str().unwrap_or("?").to_string()).collect()
}

/// "id service kind message" per line, for failure messages.
pub fn render(evs: &[Value]) -> String {
    let mut out = String::new();
    for e in evs {
        out.push_str(&format!(
            "\n  {:>4} {:<10} {:<12} {}",
            e["id"],
            e["service"].as_str().unwrap_or("-"),
            e["kind"].as_str().unwrap_or("?"),
            e["message"].as_str().unwrap_or("")
        ));
    }
    out
}

/// Asserts ids strictly increase.
pub fn assert_increasing(evs: &[Value]) {
    for w in evs.windows(2) {
        assert!(id(&w[0]) < id(&w[1]), "event ids must strictly increase: {}", render(evs));
    }
}
