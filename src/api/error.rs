//! The one place where errors become HTTP statuses. Every error body is
//! `{"detail": "human message", ...}` like the seed's FastAPI.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::Error;
use crate::service::StartError;

/// Every error answer: `detail` in words, plus what the error adds (for a
/// GPU conflict `gpu_service_running` (`exclusive`) or `need_bytes`, `gpus`,
/// `would_stop` and `blocked` (`vram`), for a failed start `logs`, `exit` and
/// `next`, for an invalid manifest `path` and `errors`, for a port in use
/// `port` and `port_holder`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub detail: String,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub more: serde_json::Map<String, Value>,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

/// What a start that waited in vain is told to wait before trying again.
const RETRY_AFTER_S: u64 = 5;

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError { status, body: json!({ "detail": detail.into() }), retry_after: None }
    }

    fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.body[key] = value.into();
        self
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let detail = e.to_string();
        match &e {
            Error::NotFound(_) | Error::NoSuchHook { .. } => ApiError::new(StatusCode::NOT_FOUND, detail),
            Error::InvalidManifest { path, errors, .. } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
                .with("path", path.as_str())
                .with("errors", serde_json::to_value(errors).unwrap_or_default()),
            Error::Dependency { source, .. } => {
                // The dependency's own failure decides the status and extras.
                let mut err = ApiError::from((**source).clone());
                err.body["detail"] = detail.into();
                err
            }
            Error::ShuttingDown | Error::ClientGone => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, detail),
            Error::GpuWaitTimeout { .. } => {
                ApiError { retry_after: Some(RETRY_AFTER_S), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, detail) }
            }
            Error::Runtime(_) => ApiError::new(StatusCode::BAD_GATEWAY, detail),
            Error::Pinned { holder, .. } => {
                ApiError::new(StatusCode::CONFLICT, detail).with("gpu_service_running", holder.as_str())
            }
            Error::Service { error, next } => {
                let status = match error {
                    StartError::GpuBusy { .. }
                    | StartError::GpuFull { .. }
                    | StartError::PortInUse { .. }
                    | StartError::Interrupted { .. } => StatusCode::CONFLICT,
                    StartError::HealthTimeout { .. } | StartError::StartTimeout { .. } | StartError::Stuck { .. } => {
                        StatusCode::GATEWAY_TIMEOUT
                    }
                    StartError::Exited { .. } | StartError::Spawn { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                    StartError::Removed { .. } => StatusCode::NOT_FOUND,
                };
                let mut err = ApiError::new(status, detail);
                if let StartError::GpuBusy { holder } = error {
                    err = err.with("gpu_service_running", holder.as_str());
                }
                if let StartError::GpuFull { shortfall, .. } = error {
                    err = err
                        .with("need_bytes", shortfall.need)
                        .with("gpus", shortfall.gpus)
                        .with("would_stop", serde_json::to_value(&shortfall.stop).unwrap_or_default())
                        .with("blocked", shortfall.blocked.clone());
                }
                if let StartError::PortInUse { port, holder, .. } = error {
                    err = err.with("port", *port).with("port_holder", holder.as_str());
                }
                if let StartError::Exited { exit, .. } = error {
                    err = err.with("exit", serde_json::to_value(exit).unwrap_or_default());
                }
                if !error.logs().is_empty() {
                    err = err.with("logs", error.logs().to_vec());
                }
                if let Some(next) = next {
                    err = err.with("next", next.as_str());
                }
                err
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
