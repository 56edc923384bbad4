//! The tools. Each one is a [`Command`] asked of the daemon; its answer is the
//! same JSON the REST API gives, as structured output. A failure (unknown
//! service, GPU busy, start failed) is a tool error whose text says what
//! happened and what to do next, never a protocol error.

use rmcp::handler::server::tool::IntoCallToolResult;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResponse, CallToolResult, ContentBlock};
use rmcp::{Json, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Nanny, diagnose};
use crate::daemon::views::ServiceSummary;
use crate::daemon::{Command, Daemon};
use crate::error::Error;
use crate::events::Filter;
use crate::lifecycle::{StartError, State};
use crate::logs::RING_LINES;

const DEFAULT_LOG_LINES: usize = 50;
const DEFAULT_EVENTS: usize = 20;
const MAX_EVENTS: usize = 1000;

/// A tool's structured output: always a JSON object.
pub type Object = Map<String, Value>;
/// A tool's answer: a JSON object (structured output), or a tool error. Tools
/// spell it out: the `tool` macro derives the output schema from the words.
pub type Answer = Result<Json<Object>, ToolFailure>;

#[derive(Deserialize, JsonSchema)]
pub struct NameArgs {
    /// The service's name, as list_services shows it.
    pub name: String,
}

#[derive(Deserialize, JsonSchema)]
pub struct StartArgs {
    /// The service's name, as list_services shows it.
    pub name: String,
    /// For a GPU service while another holds the GPU: stop the holder gracefully first
    /// (never a pinned one). Default false.
    #[serde(default)]
    pub force: bool,
}

#[derive(Deserialize, JsonSchema)]
pub struct ListArgs {
    /// Only services whose name contains this text (case-insensitive).
    pub name: Option<String>,
    /// Only services with this tag (e.g. `image-generation`, `llm`).
    pub tag: Option<String>,
    /// Only services in this state: stopped, starting, running, unhealthy, stopping, backoff or failed.
    pub status: Option<String>,
    /// Only GPU services (true) or only CPU services (false).
    pub gpu: Option<bool>,
}

#[derive(Deserialize, JsonSchema)]
pub struct LogsArgs {
    /// The service's name, as list_services shows it.
    pub name: String,
    /// How many of the last lines, 1 to 10000 (default 50).
    pub tail: Option<usize>,
}

#[derive(Deserialize, JsonSchema)]
pub struct EventsArgs {
    /// Only this service's events (default: every service and the daemon's own).
    pub service: Option<String>,
    /// How many of the newest events, 1 to 1000 (default 20).
    pub limit: Option<usize>,
}

#[derive(Deserialize, JsonSchema)]
pub struct GpuArgs {
    /// A service you may want to start: the answer says what starting it would stop.
    pub service: Option<String>,
}

/// A tool error: words an assistant can act on.
#[derive(Debug)]
pub struct ToolFailure(pub String);

impl IntoCallToolResult for ToolFailure {
    fn into_call_tool_result(self) -> Result<CallToolResponse, rmcp::ErrorData> {
        Ok(CallToolResult::error(vec![ContentBlock::text(self.0)]).into())
    }
}

/// A value as a tool's structured output (always a JSON object).
pub fn answer(value: impl serde::Serialize) -> Answer {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => Ok(Json(map)),
        Ok(other) => Ok(Json(Map::from_iter([("value".to_string(), other)]))),
        Err(e) => Err(ToolFailure(format!("cannot encode the answer: {e}"))),
    }
}

/// A daemon error in words an assistant can act on: what happened, the last
/// log lines and what the service does next, and what to try.
pub async fn failure(d: &Daemon, e: Error) -> ToolFailure {
    let mut text = e.to_string();
    let start = match &e {
        Error::Service { error, next } => Some((error, next)),
        Error::Dependency { source, .. } => match &**source {
            Error::Service { error, next } => Some((error, next)),
            _ => None,
        },
        _ => None,
    };
    if let Some((error, next)) = start {
        if !error.logs().is_empty() {
            text.push_str("\nLast log lines:\n");
            text.push_str(&error.logs().join("\n"));
        }
        if let Some(next) = next {
            text.push_str(&format!("\nNext: {next}."));
        }
    }
    let hint = match (&e, start) {
        (Error::NotFound(_), _) => match d.ask(Command::List).await {
            Ok(list) => {
                let names: Vec<&str> = list.services.iter().map(|s| s.name.as_str()).collect();
                format!("Known services: {}. Call list_services for details.", names.join(", "))
            }
            Err(_) => "Call list_services for the names.".to_string(),
        },
        (_, Some((StartError::GpuBusy { holder }, _))) => format!(
            "To start it anyway, call start_service again with force=true: that stops '{holder}' gracefully \
             first. Or call stop_service with name '{holder}'."
        ),
        (_, Some((StartError::GpuFull { shortfall, .. }, _))) if shortfall.blocked.is_empty() => {
            let names: Vec<String> = shortfall.stop.iter().map(|e| format!("'{}'", e.service)).collect();
            format!(
                "To start it anyway, call start_service again with force=true: that stops {} gracefully first. \
                 Call gpu_status to see every GPU's memory and holders.",
                names.join(", ")
            )
        }
        (Error::Pinned { holder, .. }, _) => {
            format!("'{holder}' is pinned: only stopping it by hand (stop_service) frees the GPU.")
        }
        (_, Some(_)) => "Call diagnose_service for the exit, health checks, restart policy and events.".into(),
        _ => String::new(),
    };
    if !hint.is_empty() {
        text.push('\n');
        text.push_str(&hint);
    }
    ToolFailure(text)
}

/// A bounded number argument, or a tool error naming it.
fn bounded(name: &str, value: Option<usize>, default: usize, max: usize) -> Result<usize, ToolFailure> {
    match value.unwrap_or(default) {
        n if (1..=max).contains(&n) => Ok(n),
        n => Err(ToolFailure(format!("`{name}` must be from 1 to {max}, got {n}"))),
    }
}

fn matches(s: &ServiceSummary, args: &ListArgs, status: Option<State>) -> bool {
    args.name.as_ref().is_none_or(|n| s.name.to_lowercase().contains(&n.to_lowercase()))
        && args.tag.as_ref().is_none_or(|t| s.tags.iter().any(|tag| tag.eq_ignore_ascii_case(t)))
        && status.is_none_or(|st| s.status == st)
        && args.gpu.is_none_or(|g| s.gpu_required == g)
}

fn parse_state(text: &str) -> Result<State, ToolFailure> {
    serde_json::from_value(Value::String(text.trim().to_lowercase())).map_err(|_| {
        ToolFailure(format!(
            "`status` must be one of stopped, starting, running, unhealthy, stopping, backoff, failed; got `{text}`"
        ))
    })
}

impl Nanny {
    async fn ask<T>(&self, command: impl FnOnce(crate::daemon::Reply<T>) -> Command) -> Result<T, ToolFailure> {
        match self.daemon.ask(command).await {
            Ok(value) => Ok(value),
            Err(e) => Err(failure(&self.daemon, e).await),
        }
    }
}

#[tool_router(router = tool_router, vis = "pub(super)")]
impl Nanny {
    #[tool(
        description = "Start a service and wait until it is healthy. A GPU service is refused while another \
                       holds the GPU (the error names the holder); force=true stops the holder first.",
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn start_service(&self, Parameters(args): Parameters<StartArgs>) -> Result<Json<Object>, ToolFailure> {
        let StartArgs { name, force } = args;
        answer(self.ask(|reply| Command::Start { name, force, wait: None, reply }).await?)
    }

    #[tool(
        description = "Stop a service (its whole process group, or its Compose project) and the running \
                       services that depend on it. Returns when nothing of it is left.",
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn stop_service(
        &self,
        Parameters(NameArgs { name }): Parameters<NameArgs>,
    ) -> Result<Json<Object>, ToolFailure> {
        answer(self.ask(|reply| Command::Stop { name, reply }).await?)
    }

    #[tool(
        description = "Stop then start a service with the manifest on disk, and wait until it is healthy.",
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false)
    )]
    pub async fn restart_service(&self, Parameters(args): Parameters<StartArgs>) -> Result<Json<Object>, ToolFailure> {
        let StartArgs { name, force } = args;
        answer(self.ask(|reply| Command::Restart { name, force, reply }).await?)
    }

    #[tool(
        description = "List the services with their state, GPU needs, tags, CPU and memory; optionally only \
                       those matching a name substring, a tag, a status or gpu. Also names the GPU holder \
                       and the manifests that are invalid.",
        annotations(read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn list_services(&self, Parameters(args): Parameters<ListArgs>) -> Result<Json<Object>, ToolFailure> {
        let status = args.status.as_deref().map(parse_state).transpose()?;
        let mut list = self.ask(Command::List).await?;
        list.services.retain(|s| matches(s, &args, status));
        list.total = list.services.len();
        answer(list)
    }

    #[tool(
        description = "One service's state: running or not, healthy, uptime, pid, restarts, last exit, last \
                       health check, last error, and what it does next.",
        annotations(read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn get_service_status(
        &self,
        Parameters(NameArgs { name }): Parameters<NameArgs>,
    ) -> Result<Json<Object>, ToolFailure> {
        answer(self.ask(|reply| Command::Status { name, reply }).await?)
    }

    #[tool(
        description = "The last lines a service wrote to stdout and stderr, oldest first, with their times.",
        annotations(read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn get_logs(&self, Parameters(args): Parameters<LogsArgs>) -> Result<Json<Object>, ToolFailure> {
        let tail = bounded("tail", args.tail, DEFAULT_LOG_LINES, RING_LINES)?;
        let name = args.name;
        let lines = self.ask(|reply| Command::Logs { name: name.clone(), tail, reply }).await?;
        answer(json!({ "service": name, "tail": tail, "lines": lines }))
    }

    #[tool(
        description = "Who holds the GPU, every GPU service and its state, and (given a service) what \
                       starting it would need to stop.",
        annotations(read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn gpu_status(&self, Parameters(args): Parameters<GpuArgs>) -> Result<Json<Object>, ToolFailure> {
        let list = self.ask(Command::List).await?;
        let holder = list.gpu_service_running.clone();
        let gpu: Vec<Value> = list
            .services
            .iter()
            .filter(|s| s.gpu_required)
            .map(|s| json!({ "name": s.name, "status": s.status, "vram_gb": s.vram_gb }))
            .collect();
        let mut out = json!({ "gpu_service_running": holder, "gpu_services": gpu });
        if let Some(name) = args.service {
            let wanted = self.ask(|reply| Command::Show { name: name.clone(), reply }).await?;
            let (must_stop, note) = match &holder {
                _ if !wanted.config.gpu_required => (None, format!("'{name}' needs no GPU: starting it stops nothing")),
                None => (None, "the GPU is free: starting it stops nothing".to_string()),
                Some(h) if *h == name => (None, format!("'{name}' already holds the GPU")),
                Some(h) => {
                    let holder = self.ask(|reply| Command::Show { name: h.clone(), reply }).await?;
                    let note = match holder.config.pinned {
                        true => format!("'{h}' holds the GPU and is pinned: stop it by hand before starting '{name}'"),
                        false => format!("start_service '{name}' with force=true stops '{h}' gracefully first"),
                    };
                    (Some(h.clone()), note)
                }
            };
            out["start"] = json!({ "service": name, "would_stop": must_stop, "note": note });
        }
        // The GPUs, their holders and the queue: the same view as `GET /gpus`.
        out["gpus"] = serde_json::to_value(self.ask(Command::Gpus).await?).unwrap_or_default();
        answer(out)
    }

    #[tool(
        description = "The newest lifecycle events (started, healthy, exited with code or signal, backoff, \
                       failed with reason, GPU preempted, …), oldest first, optionally of one service.",
        annotations(read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn recent_events(&self, Parameters(args): Parameters<EventsArgs>) -> Result<Json<Object>, ToolFailure> {
        let limit = bounded("limit", args.limit, DEFAULT_EVENTS, MAX_EVENTS)?;
        if let Some(Err(e)) = args.service.as_deref().map(|name| self.daemon.service(name)) {
            return Err(failure(&self.daemon, e).await);
        }
        let filter = Filter { since: 0, service: args.service, limit };
        let events = self.ask(|reply| Command::Events { filter, reply }).await?;
        answer(json!({ "events": events }))
    }

    #[tool(
        description = "Rescan the services directory: reports services added, removed, changed (running ones \
                       keep their old manifest until restarted) and manifests that are invalid, with why.",
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn rediscover(&self) -> Result<Json<Object>, ToolFailure> {
        answer(self.ask(Command::Rediscover).await?)
    }

    #[tool(
        description = "Why a service is in its state, in one answer: state, last exit (code or signal), last \
                       health check, restarts in the window and what the restart policy does next, the last \
                       log lines, its recent events, and invalid-manifest errors.",
        annotations(read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    pub async fn diagnose_service(
        &self,
        Parameters(NameArgs { name }): Parameters<NameArgs>,
    ) -> Result<Json<Object>, ToolFailure> {
        diagnose::run(&self.daemon, &name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_is_described_annotated_structured_and_has_a_flat_input_schema() {
        let tools = Nanny::tool_router().list_all();
        assert_eq!(tools.len(), 10);
        for tool in tools {
            let schema = serde_json::to_string(&tool.input_schema).unwrap();
            assert!(!schema.contains("$ref") && !schema.contains("$defs"), "{}: {schema}", tool.name);
            assert_eq!(tool.input_schema.get("type"), Some(&json!("object")), "{}: {schema}", tool.name);
            assert!(tool.description.as_ref().is_some_and(|d| d.len() > 40), "{}", tool.name);
            assert!(tool.annotations.as_ref().is_some_and(|a| a.read_only_hint.is_some()), "{}", tool.name);
            assert!(tool.output_schema.is_some(), "{}", tool.name);
        }
    }

    #[test]
    fn a_list_filter_names_a_bad_status() {
        assert_eq!(parse_state(" Running").unwrap(), State::Running);
        assert!(parse_state("sleepy").unwrap_err().0.contains("`status` must be one of"));
    }
}
