//! The MCP server (Model Context Protocol, issue #17): AI assistants see,
//! diagnose and drive the services. Built on `rmcp`; every tool, resource and
//! prompt asks the daemon through [`Daemon::ask`], exactly as `api/` does, so
//! nothing here is a second implementation of a behaviour.
//!
//! - `tools.rs`: the tools (`start_service`, `list_services`, …) and how a
//!   daemon error becomes a tool error an assistant can act on;
//! - `diagnose.rs`: `diagnose_service`, one answer built from status, events,
//!   logs and manifest errors;
//! - `resources.rs`: `service://…` resources and the notifications sent to
//!   subscribers when services change state;
//! - `prompts.rs`: the seed's four prompts, filled with live facts;
//! - `stdio.rs`: `nanny mcp`, a stdin/stdout bridge to a daemon's `/mcp`.
//!
//! Over HTTP the server is [`http_service`], mounted at `/mcp` by `api::router`.

mod diagnose;
mod prompts;
mod resources;
pub mod stdio;
mod tools;

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{
    GetPromptRequestParams, GetPromptResponse, Implementation, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse,
    ServerCapabilities, ServerConfig, SubscribeRequestParams, SubscriptionFilter, UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler, tool_handler};

use crate::daemon::Daemon;

/// The protocol versions served: the current one and those older clients
/// negotiate through `initialize`.
const VERSIONS: &[ProtocolVersion] = &[
    ProtocolVersion::V_2026_07_28,
    ProtocolVersion::V_2025_11_25,
    ProtocolVersion::V_2025_06_18,
    ProtocolVersion::V_2025_03_26,
    ProtocolVersion::V_2024_11_05,
];

const INSTRUCTIONS: &str = "nanny supervises the AI services on this machine (native processes and \
Docker Compose projects); at most one GPU service runs at a time. Start with list_services; when a \
service is broken, diagnose_service explains why (exit code, health checks, restart policy, last log \
lines, events). Starting a GPU service while another holds the GPU fails naming the holder: \
start_service with force=true stops it first.";

/// One MCP session's server: the daemon, the tools, and the resources this
/// session subscribed to with the pre-2026 `resources/subscribe`.
#[derive(Clone)]
pub struct Nanny {
    daemon: Daemon,
    tool_router: ToolRouter<Nanny>,
    subscribed: Arc<Mutex<Subscribed>>,
}

/// The URIs a session subscribed to, and whether its watcher runs.
#[derive(Default)]
struct Subscribed {
    uris: HashSet<String>,
    watching: bool,
}

impl Nanny {
    pub fn new(daemon: Daemon) -> Nanny {
        Nanny { daemon, tool_router: Nanny::tool_router(), subscribed: Arc::default() }
    }
}

/// The Streamable HTTP endpoint. `allowed_hosts` is the SDK's own `Host`
/// check; empty means any host (the daemon's guard has already checked the
/// `Host`, the `Origin` and the token). Bodies over `body_limit` get 413.
pub fn http_service(
    daemon: Daemon,
    allowed_hosts: Vec<String>,
    body_limit: usize,
) -> StreamableHttpService<Nanny, LocalSessionManager> {
    let config =
        StreamableHttpServerConfig::default().with_allowed_hosts(allowed_hosts).with_max_request_body_bytes(body_limit);
    StreamableHttpService::new(move || Ok(Nanny::new(daemon.clone())), Arc::default(), config)
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Nanny {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources()
            .enable_resources_subscribe()
            .enable_resources_list_changed()
            .enable_prompts()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("nanny", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(VERSIONS)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        resources::list(&self.daemon).await
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(resources::templates())
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        resources::read(&self.daemon, &request.uri).await.map(Into::into)
    }

    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        Some(requested.supported_by(&self.get_info().capabilities))
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        resources::listen(&self.daemon, context).await;
        Ok(())
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        resources::subscribe(&self.daemon, &self.subscribed, request.uri, context.peer);
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.subscribed.lock().unwrap_or_else(|e| e.into_inner()).uris.remove(&request.uri);
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(prompts::list())
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        prompts::get(&self.daemon, &request.name).await.map(Into::into)
    }
}

/// The `Host` names `/mcp` answers for. On loopback, only local names, as
/// the access guard demands; beyond loopback, any (the token guards it, as
/// every endpoint) unless `--mcp-allowed-host` names some.
pub fn allowed_hosts(loopback: bool, named: &[String]) -> Vec<String> {
    let local = ["localhost", "127.0.0.1", "::1"].map(String::from);
    match (loopback, named.is_empty()) {
        (true, _) => local.to_vec(),
        (false, true) => Vec::new(),
        (false, false) => local.into_iter().chain(named.iter().cloned()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcp_hosts_follow_the_listen_address() {
        let local = ["localhost", "127.0.0.1", "::1"];
        assert_eq!(allowed_hosts(true, &["box.lan".into()]), local, "loopback: local names only, as the guard");
        assert!(allowed_hosts(false, &[]).is_empty(), "beyond loopback: any host, the token guards it");
        assert_eq!(allowed_hosts(false, &["box.lan".into()]), [&local[..], &["box.lan"]].concat());
    }
}
