//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the
//! handlers' own annotations and the answer types (`utoipa`), never kept by
//! hand. A test checks it lists every route the router serves.

use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Service Nanny", description = "Finds, starts, watches and restarts the AI services on this machine."),
    paths(
        super::health,
        super::list,
        super::gpus,
        super::show,
        super::status,
        super::start,
        super::restart,
        super::stop,
        super::remove,
        super::logs,
        super::events,
        super::event_stream,
        super::rediscover,
        super::seed_status,
        super::metrics,
        super::test_hook,
        serve,
        super::web::index,
        super::web::script,
        super::web::style,
        mcp_message,
        mcp_stream,
        mcp_end,
    ),
    modifiers(&Bearer),
    security(("bearer" = []))
)]
struct Document;

/// The token, when the daemon has one (`NANNY_TOKEN`); `/health` never needs it.
struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The document, as JSON.
pub fn document() -> String {
    Document::openapi().to_pretty_json().expect("the document serializes")
}

#[utoipa::path(get, path = "/openapi.json", tag = "daemon", responses((status = 200, description = "This document")))]
pub(super) async fn serve() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document()).into_response()
}

// The MCP endpoint (Streamable HTTP, JSON-RPC 2.0) is rmcp's service, not a
// handler of ours: these stand in for it in the document only.

/// Send one JSON-RPC message to the MCP server; see the README's MCP section.
#[utoipa::path(
    post,
    path = "/mcp",
    tag = "mcp",
    request_body(content = Object, description = "A JSON-RPC message"),
    responses(
        (status = 200, description = "A JSON-RPC answer, as JSON or as an SSE stream"),
        (status = 202, description = "A notification or response accepted"),
        (status = 401, description = "Token missing or wrong", body = super::ErrorBody)
    )
)]
#[allow(dead_code)]
fn mcp_message() {}

/// The session's stream of server notifications (SSE).
#[utoipa::path(get, path = "/mcp", tag = "mcp", params(("Mcp-Session-Id" = String, Header)), responses(
    (status = 200, description = "Server-Sent Events carrying JSON-RPC notifications", content_type = "text/event-stream")
))]
#[allow(dead_code)]
fn mcp_stream() {}

/// End an MCP session.
#[utoipa::path(delete, path = "/mcp", tag = "mcp", params(("Mcp-Session-Id" = String, Header)), responses(
    (status = 200, description = "The session is closed")
))]
#[allow(dead_code)]
fn mcp_end() {}
