//! The daemon's one error type: what can go wrong with a request. Module
//! errors roll up into it; `api::error` alone maps it to HTTP.

use crate::service::StartError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("Service '{0}' not found")]
    NotFound(String),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("GPU service '{holder}' is pinned; it is never stopped to make room for '{requested}'")]
    Pinned { holder: String, requested: String },
    #[error("cannot start '{service}': its dependency '{dependency}' did not start: {source}")]
    Dependency { service: String, dependency: String, source: Box<Error> },
    #[error("{0}")]
    Runtime(String),
    #[error("the daemon is shutting down")]
    ShuttingDown,
}
