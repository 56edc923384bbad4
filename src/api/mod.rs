//! The HTTP API (SPEC §5): the only module that knows HTTP and JSON. Each
//! handler turns a request into one [`Command`] and its answer into JSON.

mod access;
mod error;
mod openapi;
mod server;
mod web;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use tower_http::cors::CorsLayer;

use crate::daemon::views::{
    DaemonHealth, EventsAnswer, GpusView, HookTest, LogsAnswer, RediscoverReport, RemoveOutcome, SeedService,
    SeedStatus, ServiceDetail, ServiceList, StartOutcome, StatusView, StopOutcome,
};
use crate::daemon::{Command, Daemon};
use crate::events::Event;
use crate::events::Filter;
use crate::logs::{Followed, Follower, LogLine, RING_LINES, Stream};
use crate::metrics::Metrics;
pub use access::Access;
pub use error::{ApiError, ErrorBody};
pub use openapi::document;
pub use server::serve;

/// Request bodies are tiny (`{"force": true}`); anything larger is refused.
const BODY_LIMIT: usize = 64 * 1024;
const DEFAULT_TAIL: usize = 100;
const DEFAULT_EVENTS: usize = 100;
const MAX_EVENTS: u64 = 10_000;

/// One endpoint: its method, its path and what handles it. The router is
/// built from [`endpoints`], and so is [`routes`], the list tests walk.
struct Endpoint {
    method: Method,
    path: &'static str,
    handler: MethodRouter<Daemon>,
}

impl Endpoint {
    fn new<H: Handler<T, Daemon>, T: 'static>(method: Method, path: &'static str, handler: H) -> Endpoint {
        let filter = MethodFilter::try_from(method.clone()).expect("a standard method");
        Endpoint { method, path, handler: on(filter, handler) }
    }
}

fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(Method::GET, "/health", health),
        Endpoint::new(Method::GET, "/services", list),
        Endpoint::new(Method::GET, "/gpus", gpus),
        Endpoint::new(Method::GET, "/services/{name}", show),
        Endpoint::new(Method::POST, "/services/{name}/start", start),
        Endpoint::new(Method::POST, "/services/{name}/stop", stop),
        Endpoint::new(Method::POST, "/services/{name}/restart", restart),
        Endpoint::new(Method::POST, "/services/{name}/remove", remove),
        Endpoint::new(Method::GET, "/services/{name}/status", status),
        Endpoint::new(Method::GET, "/services/{name}/logs", logs),
        Endpoint::new(Method::POST, "/rediscover", rediscover),
        Endpoint::new(Method::GET, "/events", events),
        Endpoint::new(Method::GET, "/events/stream", event_stream),
        Endpoint::new(Method::GET, "/api/services/status", seed_status),
        Endpoint::new(Method::GET, "/metrics", metrics),
        Endpoint::new(Method::GET, "/openapi.json", openapi::serve),
        Endpoint::new(Method::POST, "/hooks/{name}/test", test_hook),
        Endpoint::new(Method::GET, web::INDEX_PATH, web::index),
        Endpoint::new(Method::GET, web::SCRIPT_PATH, web::script),
        Endpoint::new(Method::GET, web::STYLE_PATH, web::style),
    ]
}

/// The paths anyone may GET, token or not: `/health` and the dashboard's page
/// and assets (they hold no data).
pub fn open_paths() -> Vec<&'static str> {
    access::OPEN.to_vec()
}

/// Services mounted whole, with the methods they answer: the MCP endpoint.
const NESTED: &[(Method, &str)] = &[(Method::POST, MCP_PATH), (Method::GET, MCP_PATH), (Method::DELETE, MCP_PATH)];
const MCP_PATH: &str = "/mcp";

/// Every method and path the API answers.
pub fn routes() -> Vec<(Method, &'static str)> {
    endpoints().into_iter().map(|e| (e.method, e.path)).chain(NESTED.iter().cloned()).collect()
}

/// The API behind the access guard; `mcp_hosts` are the `Host` names `/mcp`
/// answers for (empty: any).
pub fn router(daemon: Daemon, access: Access, mcp_hosts: Vec<String>) -> Router {
    let cors = (!access.cors_origins.is_empty()).then(|| {
        let origins: Vec<HeaderValue> = access.cors_origins.iter().filter_map(|o| o.parse().ok()).collect();
        let mcp_session = header::HeaderName::from_static("mcp-session-id");
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
                mcp_session.clone(),
                header::HeaderName::from_static("mcp-protocol-version"),
                header::HeaderName::from_static("mcp-method"),
                header::HeaderName::from_static("mcp-name"),
            ])
            .expose_headers([mcp_session])
    });
    let mut router = Router::new();
    for endpoint in endpoints() {
        router = router.route(endpoint.path, endpoint.handler);
    }
    let router = router
        .route_service(MCP_PATH, crate::mcp::http_service(daemon.clone(), mcp_hosts, BODY_LIMIT))
        .route_layer(axum::middleware::from_fn_with_state(daemon.metrics.clone(), count_request))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(Arc::new(access), access::guard))
        .with_state(daemon);
    // Outermost, so a preflight is answered before the guard sees it.
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

type ApiResult = Result<Response, ApiError>;

/// Count each request by its route pattern, status and time to answer.
async fn count_request(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
    let method = request.method().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    metrics.request(&method, &route, response.status().as_u16(), started.elapsed());
    response
}

/// `GET /metrics`: the Prometheus text format, or OpenMetrics when the
/// scraper asks for it.
#[utoipa::path(get, path = "/metrics", tag = "daemon", responses((status = 200, description = "Prometheus text format, or OpenMetrics with `Accept: application/openmetrics-text`", content_type = "text/plain", body = String), (status = 401, description = "Token missing or wrong", body = ErrorBody)))]
async fn metrics(State(d): State<Daemon>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()).unwrap_or_default();
    let openmetrics = accept.contains("application/openmetrics-text");
    let body = crate::metrics::render(&d, openmetrics);
    ([(header::CONTENT_TYPE, crate::metrics::content_type(openmetrics))], body).into_response()
}

/// The `{name}` path segment; a malformed one is a JSON 400 like every error.
struct Name(String);

impl<S: Send + Sync> FromRequestParts<S> for Name {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(name)| Name(name))
            .map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, r.body_text()))
    }
}

fn ok(value: impl serde::Serialize) -> ApiResult {
    Ok(Json(value).into_response())
}

#[utoipa::path(get, path = "/health", tag = "daemon", responses((status = 200, description = "The daemon's own health (never needs the token)", body = DaemonHealth)))]
async fn health(State(d): State<Daemon>) -> ApiResult {
    ok(d.ask(Command::Health).await?)
}

#[utoipa::path(get, path = "/services", tag = "services", responses((status = 200, description = "Every service, and the invalid manifests", body = ServiceList), (status = 401, description = "Token missing or wrong", body = ErrorBody)))]
async fn list(State(d): State<Daemon>) -> ApiResult {
    let json = d.ask(Command::ListJson).await?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], json).into_response())
}

#[utoipa::path(get, path = "/services/{name}", tag = "services", params(("name" = String, Path, description = "The service's name")), responses((status = 200, description = "Configuration and state", body = ServiceDetail), (status = 404, description = "Unknown service", body = ErrorBody), (status = 422, description = "The service's manifest is invalid", body = ErrorBody), (status = 401, description = "Token missing or wrong", body = ErrorBody)))]
async fn show(State(d): State<Daemon>, Name(name): Name) -> ApiResult {
    ok(d.ask(|reply| Command::Show { name, reply }).await?)
}

#[utoipa::path(get, path = "/services/{name}/status", tag = "services", params(("name" = String, Path, description = "The service's name")), responses((status = 200, description = "The service's state", body = StatusView), (status = 404, description = "Unknown service", body = ErrorBody), (status = 422, description = "The service's manifest is invalid", body = ErrorBody), (status = 401, description = "Token missing or wrong", body = ErrorBody)))]
async fn status(State(d): State<Daemon>, Name(name): Name) -> ApiResult {
    ok(d.ask(|reply| Command::Status { name, reply }).await?)
}

#[utoipa::path(get, path = "/gpus", tag = "daemon", responses((status = 200, description = "The GPUs, their holders and the starts waiting for room", body = GpusView), (status = 401, description = "Token missing or wrong", body = ErrorBody)))]
async fn gpus(State(d): State<Daemon>) -> ApiResult {
    ok(d.ask(Command::Gpus).await?)
}

/// The body of a start or restart.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct StartBody {
    #[serde(default)]
    force: bool,
    /// Start only: when the GPUs have no room, wait in the queue for it
    /// (by priority, then first come) instead of answering 409.
    #[serde(default)]
    wait: bool,
    /// Seconds to wait at most (default 300); then 503 with Retry-After.
    #[serde(default)]
    timeout: Option<f64>,
}

/// How long a waiting start waits when the body gives no timeout.
const DEFAULT_WAIT: f64 = 300.0;

impl StartBody {
    fn wait(&self) -> Result<Option<std::time::Duration>, ApiError> {
        let timeout = self.timeout.unwrap_or(DEFAULT_WAIT);
        match (self.wait, std::time::Duration::try_from_secs_f64(timeout)) {
            (false, _) if self.timeout.is_some() => {
                Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "`timeout` needs `\"wait\": true`"))
            }
            (false, _) => Ok(None),
            (true, Ok(t)) if timeout <= 86_400.0 => Ok(Some(t)),
            (true, _) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("`timeout` must be a number of seconds from 0 to 86400, got {timeout}"),
            )),
        }
    }
}

/// The start body is optional and read as JSON whatever its Content-Type
/// (the seed's own troubleshooting example sends none).
fn start_body(body: Result<Bytes, BytesRejection>) -> Result<StartBody, ApiError> {
    let body = body.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(StartBody::default());
    }
    // Like the seed's FastAPI: a body that is not the expected JSON is a 422.
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid request body (expected {{\"force\": true|false, \"wait\": true|false, \"timeout\": seconds}}): {e}"),
        )
    })
}

#[utoipa::path(post, path = "/services/{name}/start", tag = "services", params(("name" = String, Path, description = "The service's name")), request_body(content = Option<StartBody>, description = "Optional; read as JSON whatever the Content-Type"), responses((status = 200, description = "Started: running (healthy)", body = StartOutcome), (status = 409, description = "GPU busy (`gpu_service_running`), no GPU memory (`would_stop`, `blocked`), pinned, or port in use", body = ErrorBody), (status = 503, description = "`wait`: no room within the timeout (Retry-After)", body = ErrorBody), (status = 500, description = "Exited or could not be spawned", body = ErrorBody), (status = 504, description = "Not healthy within health_timeout", body = ErrorBody), (status = 404, description = "Unknown service", body = ErrorBody), (status = 422, description = "The service's manifest is invalid", body = ErrorBody), (status = 401, description = "Token missing or wrong", body = ErrorBody)))]
async fn start(State(d): State<Daemon>, Name(name): Name, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let body = start_body(body)?;
    let (force, wait) = (body.force, body.wait()?);
    ok(d.ask(|reply| Command::Start { name, force, wait, reply }).await?)
}

#[utoipa::path(post, path = "/services/{name}/restart", tag = "services", params(("name" = String, Path, description = "The service's name")), request_body(content = Option<StartBody>), responses((status = 200, description = "Restarted", body = StartOutcome), (status = 409, description = "GPU busy", body = ErrorBody), (status = 404, description = "Unknown service", body = ErrorBody), (status = 422, description = "The service's manifest is invalid", body = ErrorBody), (status = 401, description = "Token missing or wrong", body = ErrorBody)))]
async fn restart(State(d): State<Daemon>, Name(name): Name, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let force = start_body(body)?.force;
    ok(d.ask(|reply| Command::Restart { name, force, reply }).await?)
}

#[utoipa::path(post, path = "/services/{name}/remove", tag = "services", params(("name" = String, Path, description = "The service's name")), responses((status = 200, description = "Stopped, then `compose down`", body = RemoveOutcome), (status = 502, description = "Removal failed", body = ErrorBody), (status = 404, description = "Unknown service", body = ErrorBody), (status = 422, description = "The service's manifest is invalid", body = ErrorBody), (status = 401, description = "Token missing or wrong", body = ErrorBody)))]
async fn remove(State(d): State<Daemon>, Name(name): Name) -> ApiResult {
    ok(d.ask(|reply| Command::Remove { name, reply }).await?)
}

#[utoipa::path(post, path = "/services/{name}/stop", tag = "services", params(("name" = String, Path, description = "The service's name")), responses((status = 200, description = "No process is left", body = StopOutcome), (status = 504, description = "Processes outlived SIGKILL", body = ErrorBody), (status = 404, description = "Unknown service", body = ErrorBody), (status = 422, description = "The service's manifest is invalid", body = ErrorBody), (status = 401, description = "Token missing or wrong", body = ErrorBody)))]
async fn stop(State(d): State<Daemon>, Name(name): Name) -> ApiResult {
    ok(d.ask(|reply| Command::Stop { name, reply }).await?)
}

#[derive(Deserialize)]
struct LogsQuery {
    tail: Option<String>,
    follow: Option<String>,
}

fn parse_tail(tail: Option<&str>) -> Result<usize, ApiError> {
    let Some(text) = tail else {
        return Ok(DEFAULT_TAIL);
    };
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=RING_LINES).contains(&n) => Ok(n),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("query parameter `tail` must be a whole number from 1 to {RING_LINES}, got `{text}`"),
        )),
    }
}

fn parse_flag(name: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false" | "0" | "no") => Ok(false),
        Some("" | "true" | "1" | "yes") => Ok(true),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("query parameter `{name}` must be true or false, got `{other}`"),
        )),
    }
}

#[utoipa::path(get, path = "/services/{name}/logs", tag = "services", params(("name" = String, Path, description = "The service's name"), ("tail" = Option<usize>, Query, description = "Lines, 1-10000 (default 100)"), ("follow" = Option<bool>, Query, description = "Stream NDJSON lines as they come")), responses((status = 200, description = "The last lines (or, with follow, an NDJSON stream of LogLine)", body = LogsAnswer), (status = 400, description = "Bad query", body = ErrorBody), (status = 404, description = "Unknown service", body = ErrorBody), (status = 422, description = "The service's manifest is invalid", body = ErrorBody), (status = 401, description = "Token missing or wrong", body = ErrorBody)))]
async fn logs(State(d): State<Daemon>, Name(name): Name, query: Result<Query<LogsQuery>, QueryRejection>) -> ApiResult {
    let Query(query) = query.map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, r.body_text()))?;
    let tail = parse_tail(query.tail.as_deref())?;
    if parse_flag("follow", query.follow.as_deref())? {
        let (lines, live) = d.ask(|reply| Command::FollowLogs { name, tail, reply }).await?;
        return Ok(follow_response(lines, live));
    }
    let lines = d.ask(|reply| Command::Logs { name: name.clone(), tail, reply }).await?;
    ok(LogsAnswer { service: name, tail, lines })
}

/// Newline-delimited JSON: the tail, then every new line as it comes.
fn follow_response(lines: Vec<LogLine>, follower: Follower) -> Response {
    fn ndjson(lines: &[LogLine]) -> Result<Bytes, std::convert::Infallible> {
        let mut bytes = Vec::new();
        for line in lines {
            let _ = serde_json::to_writer(&mut bytes, line);
            bytes.push(b'\n');
        }
        Ok(Bytes::from(bytes))
    }
    let backlog = futures_util::stream::iter([ndjson(&lines)]);
    let live = futures_util::stream::unfold(follower, |mut follower| async move {
        let lines = match follower.next().await? {
            Followed::Lines(lines) => lines,
            Followed::Lost(n) => vec![LogLine {
                ts: jiff::Timestamp::now(),
                stream: Stream::Nanny,
                line: format!("{n} lines skipped (reader too slow)"),
            }],
        };
        Some((ndjson(&lines), follower))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(backlog.chain(live)))
        .expect("static headers are valid")
}

#[derive(Deserialize)]
struct EventsQuery {
    since: Option<String>,
    service: Option<String>,
    limit: Option<String>,
    /// `GET /events` only: the oldest `limit` after `since` instead of the newest.
    forward: Option<String>,
}

impl EventsQuery {
    fn filter(&self, last_event_id: Option<&str>) -> Result<Filter, ApiError> {
        let number = |name: &str, text: &str| {
            text.trim().parse::<u64>().ok().filter(|n| i64::try_from(*n).is_ok()).ok_or_else(|| {
                ApiError::new(StatusCode::BAD_REQUEST, format!("`{name}` must be a whole number >= 0, got `{text}`"))
            })
        };
        // `Last-Event-ID` (an SSE client reconnecting) wins over `since`.
        let since = match (last_event_id, self.since.as_deref()) {
            (Some(id), _) => number("Last-Event-ID", id)?,
            (None, Some(since)) => number("since", since)?,
            (None, None) => 0,
        };
        let limit = match self.limit.as_deref() {
            None => DEFAULT_EVENTS,
            Some(text) => match number("limit", text)? {
                n @ 1..=MAX_EVENTS => n as usize,
                _ => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("`limit` must be from 1 to {MAX_EVENTS}, got `{text}`"),
                    ));
                }
            },
        };
        Ok(Filter { since, service: self.service.clone(), limit })
    }
}

/// `GET /events?since=ID&service=NAME&limit=N[&forward=true]`: the newest
/// `limit` matching events after `since` (with `forward`, the oldest: the
/// next page), oldest first.
#[utoipa::path(get, path = "/events", tag = "events", params(("since" = Option<u64>, Query, description = "Only events after this id"), ("service" = Option<String>, Query), ("limit" = Option<usize>, Query), ("forward" = Option<bool>, Query, description = "The oldest `limit` after `since` (the next page)")), responses((status = 200, description = "The events, oldest first", body = EventsAnswer), (status = 400, description = "Bad query", body = ErrorBody), (status = 401, description = "Token missing or wrong", body = ErrorBody)))]
async fn events(State(d): State<Daemon>, query: Result<Query<EventsQuery>, QueryRejection>) -> ApiResult {
    let Query(query) = query.map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, r.body_text()))?;
    let filter = query.filter(None)?;
    let events = if parse_flag("forward", query.forward.as_deref())? {
        d.ask(|reply| Command::EventPage { filter, reply }).await?
    } else {
        d.ask(|reply| Command::Events { filter, reply }).await?
    };
    let last_id = events.last().map(|e| e.id);
    ok(EventsAnswer { events, last_id })
}

/// `GET /events/stream`: Server-Sent Events, each with its id, so a client
/// that reconnects with `Last-Event-ID` misses nothing.
#[utoipa::path(get, path = "/events/stream", tag = "events", params(("since" = Option<u64>, Query), ("service" = Option<String>, Query), ("limit" = Option<usize>, Query), ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event")), responses((status = 200, description = "Server-Sent Events, each an Event with its id", content_type = "text/event-stream", body = Event), (status = 401, description = "Token missing or wrong", body = ErrorBody)))]
async fn event_stream(
    State(d): State<Daemon>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult {
    let Query(query) = query.map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, r.body_text()))?;
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let mut filter = query.filter(last_event_id)?;
    // A client resuming from an id gets everything it missed; a new one, the
    // newest `limit` (default 100) before going live.
    if query.limit.is_none() && (last_event_id.is_some() || query.since.is_some()) {
        filter.limit = 0;
    }
    let feed = d.ask(|reply| Command::SubscribeEvents { filter, reply }).await?;
    let events = futures_util::stream::unfold(feed, |mut feed| async move {
        let e = feed.next().await?;
        let sse = SseEvent::default().id(e.id.to_string()).event(e.kind.name()).json_data(&e).unwrap_or_default();
        Some((Ok::<_, std::convert::Infallible>(sse), feed))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

#[utoipa::path(post, path = "/hooks/{name}/test", tag = "daemon", params(("name" = String, Path, description = "The hook's name")), responses((status = 200, description = "How the test delivery went", body = HookTest), (status = 404, description = "No such hook", body = ErrorBody), (status = 401, description = "Token missing or wrong", body = ErrorBody)))]
async fn test_hook(State(d): State<Daemon>, Name(name): Name) -> ApiResult {
    ok(d.ask(|reply| Command::TestHook { name, reply }).await?)
}

#[utoipa::path(post, path = "/rediscover", tag = "daemon", responses((status = 200, description = "What changed", body = RediscoverReport), (status = 401, description = "Token missing or wrong", body = ErrorBody)))]
async fn rediscover(State(d): State<Daemon>) -> ApiResult {
    ok(d.ask(Command::Rediscover).await?)
}

/// The service-manager seed's `GET /api/services/status`.
#[utoipa::path(get, path = "/api/services/status", tag = "services", responses((status = 200, description = "The service-manager seed's status list", body = SeedStatus), (status = 401, description = "Token missing or wrong", body = ErrorBody)))]
async fn seed_status(State(d): State<Daemon>) -> ApiResult {
    let list = d.ask(Command::List).await?;
    let services = list
        .services
        .iter()
        .map(|s| SeedService {
            id: s.name.clone(),
            name: if s.description.is_empty() { s.name.clone() } else { s.description.clone() },
            status: s.status.seed_status(),
            status_code: s.last_http_code,
        })
        .collect();
    ok(SeedStatus { services, timestamp: jiff::Timestamp::now() })
}
