//! Who may use the API. With a token (`NANNY_TOKEN`, `--token-file`), every
//! endpoint but `GET /health` and the dashboard's static page wants `Authorization: Bearer TOKEN`, compared
//! in constant time. Whatever the token, a browser page from another origin
//! is refused (it could otherwise make a visitor's browser start and stop
//! services on their machine), and on a loopback address so is a `Host` that
//! is not local (DNS rebinding); `--cors-origin` names origins to allow.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::{ApiError, web};

/// The endpoints anyone may call, exact paths: liveness probes carry no
/// secret, and neither do the dashboard's page and assets (`web::PATHS`;
/// every piece of data the page shows comes from a guarded endpoint).
pub(super) const OPEN: &[&str] = &["/health", web::INDEX_PATH, web::SCRIPT_PATH, web::STYLE_PATH];

/// The daemon's access policy, fixed at start.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The bearer token every request but `OPEN` must carry.
    pub token: Option<String>,
    /// Browser origins allowed to call the API (`https://dash.example`).
    pub cors_origins: Vec<String>,
    /// Whether the daemon listens on loopback only (then `Host` must be local).
    pub loopback: bool,
}

impl Access {
    fn allows_origin(&self, origin: &str, host: Option<&str>) -> bool {
        // The daemon's own pages (same origin) and the configured ones.
        let same = host.is_some_and(|h| origin == format!("http://{h}") || origin == format!("https://{h}"));
        same || self.cors_origins.iter().any(|o| o == origin)
    }
}

/// Refuses what the policy does not allow, before any handler runs.
pub async fn guard(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if access.loopback && !host.is_none_or(is_local_host) {
        let host = host.unwrap_or_default();
        return refuse(
            StatusCode::FORBIDDEN,
            format!("requests for host `{host}` are refused: the daemon listens on loopback only"),
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok())
        && !access.allows_origin(origin, host)
    {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("cross-origin requests from `{origin}` are refused (allow one with --cors-origin)"),
        );
    }
    if let Some(token) = &access.token
        && !OPEN.contains(&request.uri().path())
        && !bearer_matches(headers, token)
    {
        let mut response = refuse(
            StatusCode::UNAUTHORIZED,
            "this daemon wants a token: send `Authorization: Bearer TOKEN` (the CLI sends NANNY_TOKEN)".into(),
        );
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}

fn refuse(status: StatusCode, detail: String) -> Response {
    ApiError::new(status, detail).into_response()
}

/// Whether the request carries `Authorization: Bearer TOKEN`, compared in
/// constant time (only the length can be learnt from the timing).
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers.get(header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")) else {
        return false;
    };
    bool::from(given.ct_eq(token.as_bytes()))
}

/// `localhost`, `127.0.0.1`, `[::1]`, with or without a port.
fn is_local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_hosts() {
        for host in ["localhost", "localhost:8080", "127.0.0.1:8080", "127.1.2.3", "[::1]:8080", "LOCALHOST"] {
            assert!(is_local_host(host), "{host}");
        }
        for host in ["evil.example", "evil.example:8080", "10.0.0.1:8080", "localhost.evil.example", "[::2]:80"] {
            assert!(!is_local_host(host), "{host}");
        }
    }

    #[test]
    fn bearer_tokens_must_match_exactly() {
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            h
        };
        assert!(bearer_matches(&with("Bearer s3cret"), "s3cret"));
        for wrong in ["Bearer s3cre", "Bearer s3cret2", "bearer s3cret", "s3cret", "Basic s3cret"] {
            assert!(!bearer_matches(&with(wrong), "s3cret"), "{wrong}");
        }
        assert!(!bearer_matches(&HeaderMap::new(), "s3cret"));
    }

    #[test]
    fn origins() {
        let access = Access { cors_origins: vec!["https://dash.example".into()], ..Access::default() };
        assert!(access.allows_origin("http://127.0.0.1:8080", Some("127.0.0.1:8080")), "same origin");
        assert!(access.allows_origin("https://dash.example", Some("127.0.0.1:8080")));
        assert!(!access.allows_origin("https://evil.example", Some("127.0.0.1:8080")));
        assert!(!access.allows_origin("null", None));
    }
}
