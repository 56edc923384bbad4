//! The service lifecycle as data: the states of SPEC §4, the table of
//! transitions allowed between them, and the restart policy (backoff and
//! the sliding restart window). Pure; the service task consults it before
//! every change of state.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::manifest::{Manifest, RestartPolicy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Stopped,
    Starting,
    Running,
    Unhealthy,
    Stopping,
    Backoff,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Running => "running",
            State::Unhealthy => "unhealthy",
            State::Stopping => "stopping",
            State::Backoff => "backoff",
            State::Failed => "failed",
        }
    }

    /// States in which the service holds its GPU claim (SPEC §4).
    pub fn holds_gpu(self) -> bool {
        matches!(self, State::Starting | State::Running | State::Unhealthy | State::Backoff | State::Stopping)
    }

    /// Whether processes of the service may exist in this state.
    pub fn has_process(self) -> bool {
        matches!(self, State::Starting | State::Running | State::Unhealthy | State::Stopping)
    }

    /// The service-manager seed's vocabulary (`GET /api/services/status`).
    pub fn seed_status(self) -> &'static str {
        match self {
            State::Running => "online",
            State::Stopped => "offline",
            State::Starting => "starting",
            State::Unhealthy => "unhealthy",
            State::Stopping => "stopping",
            State::Backoff => "restarting",
            State::Failed => "failed",
        }
    }
}

/// Whether the lifecycle allows going from `from` to `to`.
pub fn allowed(from: State, to: State) -> bool {
    use State::*;
    matches!(
        (from, to),
        (Stopped | Failed, Starting)
            | (Stopped, Failed)
            | (Starting, Running | Stopping | Backoff | Failed)
            | (Running, Unhealthy | Stopping | Backoff | Failed | Stopped)
            | (Unhealthy, Running | Stopped | Stopping | Backoff | Failed)
            | (Stopping, Stopped | Backoff | Failed)
            | (Backoff, Starting | Stopped | Failed)
            | (Failed, Stopped)
    )
}

/// The restart policy of one service (from its manifest).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub restart: RestartPolicy,
    pub delay: Duration,
    pub delay_max: Duration,
    pub max_restarts: u32,
    pub window: Duration,
}

impl Policy {
    pub fn of(m: &Manifest) -> Policy {
        Policy {
            restart: m.restart,
            delay: m.restart_delay,
            delay_max: m.restart_delay_max,
            max_restarts: m.max_restarts,
            window: m.restart_window,
        }
    }

    /// How long a service must stay healthy before its next failure counts
    /// as the first again (the backoff delay resets): `restart_delay_max`,
    /// but at least one second.
    pub fn quiet_period(&self) -> Duration {
        self.delay_max.max(Duration::from_secs(1))
    }
}

/// Restart bookkeeping of one service: the automatic restarts inside the
/// sliding window, and the failures in a row (which drive the delay).
#[derive(Debug, Clone, Default)]
pub struct RestartHistory {
    recent: VecDeque<Instant>,
    consecutive: u32,
}

impl RestartHistory {
    /// Someone started or stopped the service by hand: start afresh.
    pub fn reset(&mut self) {
        *self = RestartHistory::default();
    }
}

/// What to do after a service's process ended without being asked to.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Go to `backoff` and start again after `delay`.
    Restart { attempt: u32, delay: Duration },
    /// No restart; settle in `to` (`stopped` or `failed`) for `reason`.
    Settle { to: State, reason: String },
}

/// Decide after an unexpected end. `failed`: a non-zero exit, a signal, a
/// failed start or an unhealthy verdict (a clean exit is not a failure).
/// `healthy_for`: how long the process had been running healthy, if at all.
pub fn after_exit(
    policy: &Policy,
    history: &mut RestartHistory,
    failed: bool,
    healthy_for: Option<Duration>,
    now: Instant,
) -> Verdict {
    if healthy_for.is_some_and(|h| h >= policy.quiet_period()) {
        history.consecutive = 0;
    }
    let restart = match policy.restart {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => failed,
        RestartPolicy::Never => false,
    };
    if !restart {
        return match failed {
            true => Verdict::Settle { to: State::Failed, reason: "it failed and its restart policy is `never`".into() },
            false => Verdict::Settle { to: State::Stopped, reason: "it exited cleanly".into() },
        };
    }
    while history.recent.front().is_some_and(|t| now.saturating_duration_since(*t) >= policy.window) {
        history.recent.pop_front();
    }
    if history.recent.len() as u32 >= policy.max_restarts {
        return Verdict::Settle {
            to: State::Failed,
            reason: format!(
                "restarted {} times within {}s (max_restarts {}); not restarting until it is started again",
                history.recent.len(),
                policy.window.as_secs_f64(),
                policy.max_restarts
            ),
        };
    }
    history.recent.push_back(now);
    history.consecutive += 1;
    let factor = 2u32.saturating_pow(history.consecutive - 1);
    let delay = policy.delay.saturating_mul(factor).min(policy.delay_max.max(policy.delay));
    Verdict::Restart { attempt: history.consecutive, delay }
}

#[cfg(test)]
mod tests {
    use super::State::*;
    use super::*;

    const ALL: [State; 7] = [Stopped, Starting, Running, Unhealthy, Stopping, Backoff, Failed];

    #[test]
    fn transition_table() {
        // Every pair, so a change to the table is a deliberate change here.
        let expected = [
            (Stopped, vec![Starting, Failed]),
            (Starting, vec![Running, Stopping, Backoff, Failed]),
            (Running, vec![Stopped, Unhealthy, Stopping, Backoff, Failed]),
            (Unhealthy, vec![Running, Stopped, Stopping, Backoff, Failed]),
            (Stopping, vec![Stopped, Backoff, Failed]),
            (Backoff, vec![Stopped, Starting, Failed]),
            (Failed, vec![Stopped, Starting]),
        ];
        for (from, targets) in expected {
            for to in ALL {
                assert_eq!(allowed(from, to), targets.contains(&to), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn gpu_claim_is_held_while_processes_may_exist_or_a_restart_is_pending() {
        for state in ALL {
            if state.has_process() || state == Backoff {
                assert!(state.holds_gpu(), "{state:?}");
            }
        }
        assert!(!Stopped.holds_gpu());
        assert!(!Failed.holds_gpu());
    }

    fn policy(restart: RestartPolicy) -> Policy {
        Policy {
            restart,
            delay: Duration::from_millis(100),
            delay_max: Duration::from_millis(700),
            max_restarts: 4,
            window: Duration::from_secs(10),
        }
    }

    fn delays(verdicts: &[Verdict]) -> Vec<Option<u64>> {
        verdicts
            .iter()
            .map(|v| match v {
                Verdict::Restart { delay, .. } => Some(delay.as_millis() as u64),
                Verdict::Settle { .. } => None,
            })
            .collect()
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_then_the_window_gives_up() {
        let p = policy(RestartPolicy::OnFailure);
        let mut h = RestartHistory::default();
        let t0 = Instant::now();
        let verdicts: Vec<Verdict> =
            (0..5).map(|i| after_exit(&p, &mut h, true, None, t0 + Duration::from_secs(i))).collect();
        assert_eq!(delays(&verdicts), vec![Some(100), Some(200), Some(400), Some(700), None]);
        let Verdict::Settle { to, reason } = &verdicts[4] else { unreachable!() };
        assert_eq!(*to, Failed);
        assert!(reason.contains("restarted 4 times within 10s"), "{reason}");
    }

    #[test]
    fn the_window_slides() {
        let p = policy(RestartPolicy::Always);
        let mut h = RestartHistory::default();
        let t0 = Instant::now();
        for i in 0..4 {
            assert!(matches!(after_exit(&p, &mut h, true, None, t0 + Duration::from_secs(i)), Verdict::Restart { .. }));
        }
        // The first restart (t0) has left the 10 s window by t0 + 10 s.
        assert!(matches!(after_exit(&p, &mut h, true, None, t0 + Duration::from_secs(10)), Verdict::Restart { .. }));
        assert!(matches!(
            after_exit(&p, &mut h, true, None, t0 + Duration::from_secs(10)),
            Verdict::Settle { to: Failed, .. }
        ));
    }

    #[test]
    fn a_quiet_period_resets_the_delay() {
        let p = policy(RestartPolicy::OnFailure);
        let mut h = RestartHistory::default();
        let t0 = Instant::now();
        after_exit(&p, &mut h, true, None, t0);
        after_exit(&p, &mut h, true, Some(Duration::from_millis(500)), t0);
        let v = after_exit(&p, &mut h, true, Some(p.quiet_period()), t0);
        assert_eq!(v, Verdict::Restart { attempt: 1, delay: Duration::from_millis(100) });
    }

    #[test]
    fn policies() {
        let t0 = Instant::now();
        let cases = [
            (RestartPolicy::Always, false, true),
            (RestartPolicy::Always, true, true),
            (RestartPolicy::OnFailure, true, true),
            (RestartPolicy::OnFailure, false, false),
            (RestartPolicy::Never, true, false),
            (RestartPolicy::Never, false, false),
        ];
        for (restart, failed, restarts) in cases {
            let v = after_exit(&policy(restart), &mut RestartHistory::default(), failed, None, t0);
            assert_eq!(matches!(v, Verdict::Restart { .. }), restarts, "{restart:?} failed={failed}");
            if let Verdict::Settle { to, .. } = v {
                assert_eq!(to, if failed { Failed } else { Stopped });
            }
        }
    }

    #[test]
    fn zero_delay_stays_zero() {
        let p = Policy { delay: Duration::ZERO, ..policy(RestartPolicy::Always) };
        let v = after_exit(&p, &mut RestartHistory::default(), true, None, Instant::now());
        assert_eq!(v, Verdict::Restart { attempt: 1, delay: Duration::ZERO });
    }
}
