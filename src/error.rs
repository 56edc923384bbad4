//! The daemon's one error type: what can go wrong with a request. Module
//! errors roll up into it; `api::error` alone maps it to HTTP.

use crate::service::{Failure, StartError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("Service '{0}' not found")]
    NotFound(String),
    /// A service by that name has a manifest that cannot be used.
    #[error(
        "Service '{name}' has an invalid manifest ({path}): {}; fix it and run `nanny rediscover`",
        errors.iter().map(|e| e.text.as_str()).collect::<Vec<_>>().join("; ")
    )]
    InvalidManifest { name: String, path: String, errors: Vec<crate::discovery::InvalidProblem> },
    /// A start or stop of the service did not end as asked; `next` says
    /// what the service does now (`restarting in 1.0 s …`), if anything.
    #[error("{error}")]
    Service { error: StartError, next: Option<String> },
    #[error("GPU service '{holder}' is pinned; it is never stopped to make room for '{requested}'")]
    Pinned { holder: String, requested: String },
    #[error("cannot start '{service}': its dependency '{dependency}' did not start: {source}")]
    Dependency { service: String, dependency: String, source: Box<Error> },
    #[error("{0}")]
    Runtime(String),
    /// `{"wait": true}`: the GPUs had no room for it within the timeout.
    #[error("service '{service}' waited {waited:.0} s for room on the GPUs and did not get it; try again later")]
    GpuWaitTimeout { service: String, waited: f64 },
    /// The client that asked went away while its start waited in the queue.
    #[error("the client went away")]
    ClientGone,
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("no hook named '{name}' (configured: {})", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    NoSuchHook { name: String, known: Vec<String> },
}

impl From<StartError> for Error {
    fn from(error: StartError) -> Self {
        Error::Service { error, next: None }
    }
}

impl From<Failure> for Error {
    fn from(Failure { error, next }: Failure) -> Self {
        Error::Service { error, next }
    }
}
