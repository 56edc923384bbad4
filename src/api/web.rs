//! The web dashboard (issue #19): one page and its two assets, compiled into
//! the binary (no build step, nothing from a CDN). They hold no data, so they
//! are served without the token (`access::OPEN`); everything the page shows
//! comes from the guarded API, called with the token the page asks for.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// The page's own paths, open to anyone (exact paths, listed in `access::OPEN`).
pub const INDEX_PATH: &str = "/";
pub const SCRIPT_PATH: &str = "/app.js";
pub const STYLE_PATH: &str = "/style.css";

const INDEX: &str = include_str!("../web/index.html");
const SCRIPT: &str = include_str!("../web/app.js");
const STYLE: &str = include_str!("../web/style.css");

/// Only the page's own script, style and API; no frames, no inline script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    response
}

/// `GET /`: the dashboard.
#[utoipa::path(get, path = "/", tag = "web", security(()), responses((status = 200, description = "The web dashboard (never needs the token; it asks for it)", content_type = "text/html", body = String)))]
pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /app.js`: the dashboard's script.
#[utoipa::path(get, path = "/app.js", tag = "web", security(()), responses((status = 200, description = "The dashboard's script", content_type = "text/javascript", body = String)))]
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /style.css`: the dashboard's style sheet.
#[utoipa::path(get, path = "/style.css", tag = "web", security(()), responses((status = 200, description = "The dashboard's style sheet", content_type = "text/css", body = String)))]
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
