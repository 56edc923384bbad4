//! Waiting for a condition, and checks on the shape of API answers.

use std::fs;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

/// An HTTP client that never goes through a proxy (for talking to services directly).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).no_proxy().build().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// Polls `cond` (async) every 50 ms until it returns true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Blocking variant of [`wait_until`].
pub fn wait_until_sync(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Shapes of answers
// ---------------------------------------------------------------------------------------------

/// "H:MM:SS" or "H:MM:SS.ffffff" like Python's str(timedelta).
pub fn is_uptime(s: &str) -> bool {
    let (hms, frac) = match s.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    let digits = |x: &str| !x.is_empty() && x.chars().all(|c| c.is_ascii_digit());
    parts.len() == 3
        && digits(parts[0])
        && parts[1].len() == 2
        && digits(parts[1])
        && parts[2].len() == 2
        && digits(parts[2])
        && frac.is_none_or(digits)
}

/// Loose RFC 3339 check: "YYYY-MM-DDTHH:MM:SS" prefix and a zone suffix.
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b't')
        && b[13] == b':'
        && b[16] == b':'
        && (s.ends_with('Z') || s.ends_with('z') || {
            let tail = &s[s.len() - 6..];
            (tail.starts_with('+') || tail.starts_with('-')) && tail.as_bytes()[3] == b':'
        })
}

/// Names in a JSON array of strings (or of objects with a `name`), sorted.
pub fn names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("expected array, got {v}"))
        .iter()
        .map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x["name"].as_str().unwrap_or("").to_string()))
        .collect();
    n.sort();
    n
}

/// The entry of the `invalid` list of `GET /services` whose path ends with `suffix`.
pub fn invalid_entry<'a>(list: &'a Value, suffix: &str) -> &'a Value {
    list["invalid"]
        .as_array()
        .unwrap_or_else(|| panic!("no `invalid` array in {list}"))
        .iter()
        .find(|e| e["path"].as_str().is_some_and(|p| p.ends_with(suffix)))
        .unwrap_or_else(|| panic!("no invalid entry for {suffix} in {}", list["invalid"]))
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// Copies a directory tree (files and dirs only).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        let dest = to.join(e.file_name());
        if t.is_dir() {
            copy_tree(&e.path(), &dest);
        } else if t.is_file() {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}
