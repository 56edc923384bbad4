//! What a start or stop is doing while the CLI waits for its answer: the
//! service's status polled every 250 ms, shown as one line rewritten in
//! place on a terminal, as a plain line per new stage otherwise.

use std::convert::Infallible;
use std::io::Write;
use std::time::Duration;

use tokio::time::Instant;

use super::answers::{Config, Status};
use super::control::service_path;
use super::render::shell_quote;
use crate::client::{Client, typed};
use crate::lifecycle::State;

const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `--json`: nothing.
    Quiet,
    /// Not a terminal: a line per stage, no control characters.
    Lines,
    /// A terminal: one line, rewritten.
    Terminal,
}

/// Show the progress of `name` until dropped (it never ends by itself).
pub async fn watch(client: &Client, name: &str, mode: Mode) -> Infallible {
    if mode == Mode::Quiet {
        return std::future::pending().await;
    }
    let config: Option<Config> = match client.get(&service_path(name, "")).await {
        Ok(answer) => typed(answer).ok(),
        Err(_) => None,
    };
    let Some(config) = config else { return std::future::pending().await };
    let mut phase: Option<(String, Instant)> = None;
    loop {
        tokio::time::sleep(POLL).await;
        let Ok(Ok(status)) = client.get(&service_path(name, "/status")).await.map(typed::<Status>) else { continue };
        let key = format!("{}/{}", status.status.as_str(), status.stage.as_deref().unwrap_or(""));
        let since = match &phase {
            Some((current, since)) if *current == key => *since,
            _ => {
                phase = Some((key, Instant::now()));
                if mode == Mode::Lines {
                    eprintln!("{name}: {}", describe(&status, &config, None));
                }
                Instant::now()
            }
        };
        if mode == Mode::Terminal {
            eprint!("\r\x1b[2K{name}: {}", describe(&status, &config, Some(since.elapsed())));
            let _ = std::io::stderr().flush();
        }
    }
}

/// Clear the progress line before the answer is printed.
pub fn finish(mode: Mode) {
    if mode == Mode::Terminal {
        eprint!("\r\x1b[2K");
    }
}

/// What the service is doing, with how long it has been at it and its
/// bound when `elapsed` is known: `waiting for http://…/health (12 s of 30 s)`.
pub fn describe(status: &Status, config: &Config, elapsed: Option<Duration>) -> String {
    let of = |bound: f64| match elapsed {
        Some(e) => format!(" ({} s of {bound} s)", e.as_secs()),
        None => format!(" (up to {bound} s)"),
    };
    let running_for = || elapsed.map(|e| format!(" ({} s)", e.as_secs())).unwrap_or_default();
    match (status.status, status.stage.as_deref()) {
        (State::Starting, Some("waiting for health")) => {
            let check = config.health_endpoint.clone().or_else(|| config.health_command.as_deref().map(shell_quote));
            format!("waiting for {}{}", check.unwrap_or_else(|| "health".into()), of(config.health_timeout))
        }
        (State::Starting, Some(stage @ ("pulling" | "building" | "creating" | "starting containers"))) => {
            format!("{stage}{}", of(config.start_timeout))
        }
        (State::Starting, stage) => format!("{}{}", stage.unwrap_or("starting"), running_for()),
        (State::Stopping, _) => match elapsed {
            Some(e) if e.as_secs_f64() > config.stop_timeout => {
                format!("stopping: SIGKILL sent after {} s ({} s)", config.stop_timeout, e.as_secs())
            }
            _ => format!("stopping: {} sent{}", config.stop_signal, of(config.stop_timeout)),
        },
        (State::Backoff, _) => format!("backoff: {}", status.next.as_deref().unwrap_or("waiting to retry")),
        (state, _) => format!("{}{}", state.as_str(), running_for()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(state: &str, stage: Option<&str>) -> Status {
        serde_json::from_value(json!({ "name": "a", "status": state, "stage": stage, "next": "restarting in 2.0 s" }))
            .unwrap()
    }

    #[test]
    fn each_stage_in_words_with_its_bound() {
        let config: Config = serde_json::from_value(json!({
            "health_endpoint": "http://127.0.0.1:8090/health", "health_timeout": 30.0, "start_timeout": 900.0,
            "stop_signal": "SIGTERM", "stop_timeout": 10.0
        }))
        .unwrap();
        let s = |secs| Some(Duration::from_secs(secs));
        let cases = [
            (
                at("starting", Some("waiting for health")),
                s(12),
                "waiting for http://127.0.0.1:8090/health (12 s of 30 s)",
            ),
            (at("starting", Some("waiting for health")), None, "waiting for http://127.0.0.1:8090/health (up to 30 s)"),
            (at("starting", Some("pulling")), s(40), "pulling (40 s of 900 s)"),
            (at("starting", Some("confirming it stays up")), s(1), "confirming it stays up (1 s)"),
            (at("stopping", None), s(3), "stopping: SIGTERM sent (3 s of 10 s)"),
            (at("stopping", None), s(12), "stopping: SIGKILL sent after 10 s (12 s)"),
            (at("backoff", None), s(1), "backoff: restarting in 2.0 s"),
            (at("stopped", None), None, "stopped"),
        ];
        for (status, elapsed, text) in cases {
            assert_eq!(describe(&status, &config, elapsed), text);
        }
    }
}
