//! The service lifecycle as data: the states of SPEC §4 and the table of
//! transitions allowed between them. Pure; the service task consults it
//! before every change of state.

use serde::Serialize;

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
        matches!(
            self,
            State::Starting | State::Running | State::Unhealthy | State::Backoff | State::Stopping
        )
    }

    /// Whether processes of the service may exist in this state.
    pub fn has_process(self) -> bool {
        matches!(
            self,
            State::Starting | State::Running | State::Unhealthy | State::Stopping
        )
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
            | (Unhealthy, Running | Stopping | Backoff | Failed)
            | (Stopping, Stopped | Failed)
            | (Backoff, Starting | Stopped | Failed)
            | (Failed, Stopped)
    )
}

#[cfg(test)]
mod tests {
    use super::State::*;
    use super::*;

    const ALL: [State; 7] = [
        Stopped, Starting, Running, Unhealthy, Stopping, Backoff, Failed,
    ];

    #[test]
    fn transition_table() {
        // Every pair, so a change to the table is a deliberate change here.
        let expected = [
            (Stopped, vec![Starting, Failed]),
            (Starting, vec![Running, Stopping, Backoff, Failed]),
            (Running, vec![Stopped, Unhealthy, Stopping, Backoff, Failed]),
            (Unhealthy, vec![Running, Stopping, Backoff, Failed]),
            (Stopping, vec![Stopped, Failed]),
            (Backoff, vec![Stopped, Starting, Failed]),
            (Failed, vec![Stopped, Starting]),
        ];
        for (from, targets) in expected {
            for to in ALL {
                assert_eq!(
                    allowed(from, to),
                    targets.contains(&to),
                    "{from:?} -> {to:?}"
                );
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
}
