//! `diagnose_service`: everything an assistant needs to say why a service is
//! in its state, in one answer, gathered from the daemon's own commands
//! (status, events, logs, discovery) and summed up in a sentence.

use std::path::Path;

use serde_json::{Value, json};

use super::tools::{Answer, answer, failure};
use crate::daemon::views::ServiceDetail;
use crate::daemon::{Command, Daemon};
use crate::discovery::Invalid;
use crate::events::Filter;
use crate::lifecycle::State;
use crate::logs::{LogLine, Stream};

const LOG_LINES: usize = 20;
const EVENTS: usize = 15;
/// The manifest fields that decide restarts and health verdicts.
const POLICY: &[&str] =
    &["restart", "max_restarts", "restart_window", "restart_delay", "restart_delay_max", "health_failures"];

pub async fn run(d: &Daemon, name: &str) -> Answer {
    let list = match d.ask(Command::List).await {
        Ok(list) => list,
        Err(e) => return Err(failure(d, e).await),
    };
    let detail = match d.ask(|reply| Command::Show { name: name.to_string(), reply }).await {
        Ok(detail) => detail,
        Err(e) => {
            let invalid = invalid_for(&list.invalid, name, None);
            if invalid.is_empty() {
                return Err(failure(d, e).await);
            }
            return answer(json!({
                "name": name,
                "summary": format!("'{name}' is not a service: its manifest is invalid ({}). Fix the manifest, \
                                    then call rediscover.", invalid.join("; ")),
                "invalid_manifest": invalid,
            }));
        }
    };
    let logs = d.ask(|reply| Command::Logs { name: name.to_string(), tail: LOG_LINES, reply }).await;
    let filter = Filter { since: 0, service: Some(name.to_string()), limit: EVENTS };
    let events = d.ask(|reply| Command::Events { filter, reply }).await;
    let (logs, events) = match (logs, events) {
        (Ok(logs), Ok(events)) => (logs, events),
        (Err(e), _) | (_, Err(e)) => return Err(failure(d, e).await),
    };
    let invalid = invalid_for(&list.invalid, name, Some(&detail.config.manifest_path));
    // The service's own last line, not the daemon's note about it.
    let own = |l: &&LogLine| l.stream != Stream::Nanny && !l.line.trim().is_empty();
    let last_line = logs.iter().rev().find(own).map(|l| l.line.clone());
    let config = serde_json::to_value(&detail.config).unwrap_or_default();
    let policy: serde_json::Map<String, Value> =
        POLICY.iter().map(|key| (key.to_string(), config[*key].clone())).collect();
    let s = &detail.state;
    answer(json!({
        "name": name,
        "summary": summary(&detail, last_line.as_deref(), &invalid),
        "status": s.status,
        "last_exit": s.last_exit,
        "last_error": s.last_error,
        "last_health": s.last_health,
        "consecutive_health_failures": s.consecutive_health_failures,
        "restarts": s.restarts,
        "restart_policy": policy,
        "next": next(&detail),
        "gpu_required": detail.config.gpu_required,
        "gpu_service_running": list.gpu_service_running,
        "last_log_lines": logs,
        "recent_events": events,
        "invalid_manifest": invalid,
    }))
}

/// The errors of invalid manifests that concern `name`: in its directory, or
/// its own manifest file (an edit that broke it while it runs).
fn invalid_for(invalid: &[Invalid], name: &str, manifest: Option<&Path>) -> Vec<String> {
    let in_dir = |path: &Path| path.parent().and_then(Path::file_name).is_some_and(|d| d == name);
    invalid
        .iter()
        .filter(|i| in_dir(&i.path) || manifest.is_some_and(|m| m == i.path))
        .flat_map(|i| i.texts())
        .collect()
}

/// What the service does next, in words.
fn next(detail: &ServiceDetail) -> String {
    let s = &detail.state;
    if let Some(next) = &s.next {
        return next.clone();
    }
    match s.status {
        State::Failed => "nothing: the restart policy gave up; it stays failed until someone starts it".into(),
        State::Stopped => "nothing: it stays stopped until someone starts it".into(),
        State::Running => {
            format!("keeps running; health checked every {:.0} s", detail.config.health_interval.as_secs_f64())
        }
        State::Unhealthy => "stays up, and is running again as soon as a health check passes".into(),
        State::Starting | State::Stopping | State::Backoff => format!("finishes {}", s.status.as_str()),
    }
}

fn summary(detail: &ServiceDetail, last_line: Option<&str>, invalid: &[String]) -> String {
    let s = &detail.state;
    let mut out = format!("'{}' is {}", s.name, s.status.as_str());
    if let Some(exit) = &s.last_exit {
        out.push_str(&format!("; its last process {} at {}", exit.exit, exit.at));
    }
    if let Some(error) = &s.last_error {
        out.push_str(&format!("; last error: {error}"));
    }
    if let Some(h) = s.last_health.as_ref().filter(|h| !h.ok) {
        out.push_str(&format!("; last health check failed: {}", h.message));
    }
    let policy = serde_json::to_value(detail.config.restart).unwrap_or_default();
    out.push_str(&format!(
        ". Restarts: {} (restart: {}, at most {} within {:.0} s). Next: {}.",
        s.restarts,
        policy.as_str().unwrap_or("?"),
        detail.config.max_restarts,
        detail.config.restart_window.as_secs_f64(),
        next(detail)
    ));
    if let Some(line) = last_line {
        out.push_str(&format!(" Last log line: {line}"));
    }
    if !invalid.is_empty() {
        out.push_str(&format!(" Its manifest on disk is invalid: {}", invalid.join("; ")));
    }
    out
}
