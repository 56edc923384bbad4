//! Resources: `service://status`, `service://metrics`, `service://events`,
//! `service://{name}` and `service://logs/{name}`, read through the daemon;
//! and the notifications a subscriber gets when a service changes state,
//! driven by the store's event broadcast: `subscriptions/listen` (protocol
//! 2026-07-28) or `resources/subscribe` (older sessions).

use std::sync::{Arc, Mutex};

use rmcp::model::{
    ListResourceTemplatesResult, ListResourcesResult, ReadResourceResult, Resource, ResourceContents, ResourceTemplate,
    ResourceUpdatedNotificationParam,
};
use rmcp::service::{Peer, SubscriptionContext, SubscriptionSendError};
use rmcp::{ErrorData, RoleServer};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::Subscribed;
use crate::daemon::{Command, Daemon};
use crate::error::Error;
use crate::events::{Event, EventKind, Filter};
use crate::logs::LogLine;

pub const STATUS: &str = "service://status";
pub const METRICS: &str = "service://metrics";
pub const EVENTS: &str = "service://events";
const LOGS_PREFIX: &str = "service://logs/";
const SERVICE_PREFIX: &str = "service://";
/// Log lines a `service://logs/{name}` read returns.
const LOG_LINES: usize = 200;
/// Events `service://events` returns.
const RECENT_EVENTS: usize = 100;

pub async fn list(d: &Daemon) -> Result<ListResourcesResult, ErrorData> {
    let resource = |uri: &str, name: &str, description: &str| {
        Resource::new(uri, name).with_description(description).with_mime_type("application/json")
    };
    let mut resources = vec![
        resource(
            STATUS,
            "status",
            "Every service with its state, the GPU holder and invalid manifests (GET /services)",
        ),
        resource(METRICS, "metrics", "CPU and memory of every running service, restarts, and the daemon's health"),
        resource(EVENTS, "events", "The 100 most recent lifecycle events, oldest first"),
    ];
    let services = d.ask(Command::List).await.map_err(internal)?;
    for s in &services.services {
        let about = format!("{}: configuration and full status ({})", s.name, s.status.as_str());
        resources.push(resource(&format!("{SERVICE_PREFIX}{}", s.name), &s.name, &about));
    }
    Ok(ListResourcesResult::with_all_items(resources))
}

pub fn templates() -> ListResourceTemplatesResult {
    ListResourceTemplatesResult::with_all_items(vec![
        ResourceTemplate::new(format!("{LOGS_PREFIX}{{name}}"), "logs")
            .with_description(format!("The last {LOG_LINES} lines a service wrote (stdout and stderr)"))
            .with_mime_type("text/plain"),
        ResourceTemplate::new(format!("{SERVICE_PREFIX}{{name}}"), "service")
            .with_description("One service's configuration and full status")
            .with_mime_type("application/json"),
    ])
}

pub async fn read(d: &Daemon, uri: &str) -> Result<ReadResourceResult, ErrorData> {
    let text = match uri {
        STATUS => to_json(d.ask(Command::List).await),
        METRICS => metrics(d).await,
        EVENTS => {
            let filter = Filter { limit: RECENT_EVENTS, ..Filter::default() };
            to_json(d.ask(|reply| Command::Events { filter, reply }).await)
        }
        _ => match uri.strip_prefix(LOGS_PREFIX) {
            Some(name) => {
                let name = name.to_string();
                let lines = d.ask(|reply| Command::Logs { name, tail: LOG_LINES, reply }).await.map_err(not_found)?;
                let text = log_text(&lines);
                return Ok(ReadResourceResult::new(vec![
                    ResourceContents::text(text, uri).with_mime_type("text/plain"),
                ]));
            }
            None => match uri.strip_prefix(SERVICE_PREFIX).filter(|n| !n.is_empty() && !n.contains('/')) {
                Some(name) => {
                    let name = name.to_string();
                    to_json(Ok(d.ask(|reply| Command::Show { name, reply }).await.map_err(not_found)?))
                }
                None => return Err(ErrorData::resource_not_found(format!("no resource `{uri}`"), None)),
            },
        },
    }?;
    Ok(ReadResourceResult::new(vec![ResourceContents::text(text, uri).with_mime_type("application/json")]))
}

/// Log lines as a person reads them: `TIMESTAMP [stream] line`.
pub fn log_text(lines: &[LogLine]) -> String {
    let mut text = String::new();
    for line in lines {
        let stream = serde_json::to_value(line.stream).ok();
        let stream = stream.as_ref().and_then(Value::as_str).unwrap_or("?");
        text.push_str(&format!("{} [{stream}] {}\n", line.ts, line.line));
    }
    text
}

async fn metrics(d: &Daemon) -> Result<String, ErrorData> {
    let list = d.ask(Command::List).await.map_err(internal)?;
    let health = d.ask(Command::Health).await.map_err(internal)?;
    let mut services = Vec::new();
    for s in &list.services {
        let name = s.name.clone();
        let status = d.ask(|reply| Command::Status { name, reply }).await.map_err(internal)?;
        services.push(json!({
            "name": s.name, "status": s.status, "cpu_percent": s.cpu_percent, "memory_bytes": s.memory_bytes,
            "uptime_seconds": status.uptime_seconds, "restarts": status.restarts,
            "consecutive_health_failures": status.consecutive_health_failures,
            "last_health_latency_ms": status.last_health.as_ref().map(|h| h.latency_ms),
        }));
    }
    to_json(Ok(json!({ "daemon": health, "services": services })))
}

fn to_json<T: serde::Serialize>(value: Result<T, Error>) -> Result<String, ErrorData> {
    serde_json::to_string_pretty(&value.map_err(internal)?).map_err(|e| ErrorData::internal_error(e.to_string(), None))
}

fn internal(e: Error) -> ErrorData {
    ErrorData::internal_error(e.to_string(), None)
}

fn not_found(e: Error) -> ErrorData {
    match e {
        Error::NotFound(_) => ErrorData::resource_not_found(format!("{e} (read service://status for the names)"), None),
        e => internal(e),
    }
}

/// What an event changes: the resources to report as updated, and whether
/// the list of resources changed (a service appeared or went away).
fn affected(event: &Event) -> (Vec<String>, bool) {
    let Some(name) = &event.service else {
        return (vec![EVENTS.to_string()], false);
    };
    let uris = [STATUS, METRICS, EVENTS].map(str::to_string).into_iter();
    let uris = uris.chain([format!("{SERVICE_PREFIX}{name}"), format!("{LOGS_PREFIX}{name}")]).collect();
    (uris, matches!(event.kind, EventKind::Discovered | EventKind::Removed))
}

/// What the next broadcast item changes (`None` once the daemon is gone);
/// after falling behind, whatever was subscribed may have changed.
fn changes(item: Result<Arc<Event>, RecvError>, subscribed: &[String]) -> Option<(Vec<String>, bool)> {
    match item {
        Ok(event) => Some(affected(&event)),
        Err(RecvError::Lagged(_)) => Some((subscribed.to_vec(), true)),
        Err(RecvError::Closed) => None,
    }
}

/// A `subscriptions/listen` stream (protocol 2026-07-28): the accepted
/// notifications for every event, until the client closes it.
pub async fn listen(d: &Daemon, context: SubscriptionContext) {
    let mut live = d.store.subscribe();
    loop {
        let event = tokio::select! {
            _ = context.cancelled() => return,
            event = live.recv() => event,
        };
        let subscribed = context.accepted().resource_subscriptions.as_deref().unwrap_or_default();
        let Some((uris, list_changed)) = changes(event, subscribed) else { return };
        let sink = context.sink();
        for uri in uris.into_iter().filter(|u| subscribed.contains(u)) {
            if gone(sink.notify_resource_updated(uri).await) {
                return;
            }
        }
        if list_changed && gone(sink.notify_resource_list_changed().await) {
            return;
        }
    }
}

/// Whether a send failed because the subscription is over (a notification
/// the client did not ask for is simply not sent).
fn gone(result: Result<(), SubscriptionSendError>) -> bool {
    matches!(result, Err(SubscriptionSendError::SubscriptionClosed | SubscriptionSendError::Service(_)))
}

/// `resources/subscribe` (sessions before 2026-07-28): remember the URI, and
/// start the session's watcher on its first subscription. The watcher ends
/// when the session's peer is gone.
pub fn subscribe(d: &Daemon, subscribed: &Arc<Mutex<Subscribed>>, uri: String, peer: Peer<RoleServer>) {
    let mut state = subscribed.lock().unwrap_or_else(|e| e.into_inner());
    state.uris.insert(uri);
    if std::mem::replace(&mut state.watching, true) {
        return;
    }
    let (mut live, subscribed) = (d.store.subscribe(), subscribed.clone());
    tokio::spawn(async move {
        loop {
            let item = live.recv().await;
            let uris: Vec<String> = subscribed.lock().unwrap_or_else(|e| e.into_inner()).uris.iter().cloned().collect();
            let Some((changed, list_changed)) = changes(item, &uris) else { return };
            for uri in changed.into_iter().filter(|u| uris.contains(u)) {
                if peer.notify_resource_updated(ResourceUpdatedNotificationParam::new(uri)).await.is_err() {
                    return;
                }
            }
            if list_changed && peer.notify_resource_list_changed().await.is_err() {
                return;
            }
        }
    });
}
