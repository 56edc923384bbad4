//! The seed's four prompts. Each one's messages already carry the live facts
//! it needs, read from the daemon when the prompt is fetched: the services,
//! the image generation service (found by tag or description), the GPU
//! holder, the service whose state changed last and its logs.

use rmcp::ErrorData;
use rmcp::model::{GetPromptResult, ListPromptsResult, Prompt, PromptMessage, Role};

use super::resources::log_text;
use crate::daemon::views::{ServiceList, ServiceSummary};
use crate::daemon::{Command, Daemon};
use crate::error::Error;
use crate::events::{EventKind, Filter};

/// Name, and the question it answers.
const PROMPTS: &[(&str, &str)] = &[
    ("available_services", "What AI services are available?"),
    ("start_image_generation", "Start the image generation service"),
    ("gpu_holder", "Which service is using the GPU?"),
    ("last_service_logs", "Show me the logs for the last service"),
];
/// Events looked through for the service whose state changed last.
const EVENTS_SCANNED: usize = 500;
const LOG_LINES: usize = 30;

pub fn list() -> ListPromptsResult {
    let prompts = PROMPTS.iter().map(|(name, question)| Prompt::new(*name, Some(*question), None)).collect();
    ListPromptsResult::with_all_items(prompts)
}

pub async fn get(d: &Daemon, name: &str) -> Result<GetPromptResult, ErrorData> {
    let Some((_, question)) = PROMPTS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = PROMPTS.iter().map(|(n, _)| *n).collect();
        return Err(ErrorData::invalid_params(format!("no prompt `{name}` (there are {})", names.join(", ")), None));
    };
    let list = d.ask(Command::List).await.map_err(internal)?;
    let facts = match name {
        "available_services" => available(&list),
        "start_image_generation" => image_generation(&list),
        "gpu_holder" => gpu_holder(&list),
        _ => last_service(d).await?,
    };
    let text = format!("{question}\n\nLive facts from nanny:\n{facts}");
    Ok(GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)]).with_description(*question))
}

fn internal(e: Error) -> ErrorData {
    ErrorData::internal_error(e.to_string(), None)
}

fn line(s: &ServiceSummary) -> String {
    let gpu = if s.gpu_required { format!("GPU, {} GB VRAM", s.vram_gb) } else { "CPU only".into() };
    format!("- {} ({}): {}; {gpu}; tags: [{}]", s.name, s.status.as_str(), s.description, s.tags.join(", "))
}

fn available(list: &ServiceList) -> String {
    let mut text: Vec<String> = list.services.iter().map(line).collect();
    if text.is_empty() {
        text.push("No services are configured.".into());
    }
    for invalid in &list.invalid {
        text.push(format!("- invalid manifest {}: {}", invalid.path.display(), invalid.texts().join("; ")));
    }
    text.join("\n")
}

fn holder_text(list: &ServiceList) -> String {
    match &list.gpu_service_running {
        Some(holder) => format!("The GPU is held by '{holder}'."),
        None => "No service holds the GPU.".into(),
    }
}

/// The image generation service is whichever has an image tag, or says so in its description.
fn image_generation(list: &ServiceList) -> String {
    let is_image = |s: &&ServiceSummary| {
        s.tags.iter().any(|t| t.to_lowercase().contains("image")) || s.description.to_lowercase().contains("image gen")
    };
    let Some(s) = list.services.iter().find(is_image) else {
        return format!("No service is tagged or described as image generation. The services:\n{}", available(list));
    };
    let mut text = format!("The image generation service is '{}':\n{}\n{}", s.name, line(s), holder_text(list));
    match &list.gpu_service_running {
        Some(h) if s.gpu_required && *h != s.name => text.push_str(&format!(
            "\nStarting '{}' needs the GPU: call start_service with name '{}' and force=true to stop '{h}' first, \
             or ask the user.",
            s.name, s.name
        )),
        _ => text.push_str(&format!("\nCall start_service with name '{}'.", s.name)),
    }
    text
}

fn gpu_holder(list: &ServiceList) -> String {
    let mut text = vec![holder_text(list)];
    text.extend(list.services.iter().filter(|s| s.gpu_required).map(line));
    text.join("\n")
}

/// The service whose state changed last, its latest event and its last log lines.
async fn last_service(d: &Daemon) -> Result<String, ErrorData> {
    let filter = Filter { since: 0, service: None, limit: EVENTS_SCANNED };
    let events = d.ask(|reply| Command::Events { filter, reply }).await.map_err(internal)?;
    let not_a_state_change = |k: &EventKind| {
        matches!(k, EventKind::Discovered | EventKind::ManifestChanged { .. } | EventKind::Invalid { .. })
    };
    let Some(event) = events.iter().rev().find(|e| e.service.is_some() && !not_a_state_change(&e.kind)) else {
        return Ok("No service has changed state yet.".into());
    };
    let name = event.service.clone().unwrap_or_default();
    let lines = d.ask(|reply| Command::Logs { name: name.clone(), tail: LOG_LINES, reply }).await.map_err(internal)?;
    let logs = match lines.is_empty() {
        true => "(it has written nothing)".to_string(),
        false => log_text(&lines),
    };
    Ok(format!(
        "The last service whose state changed is '{name}': {} at {} ({}).\nIts last {} log lines:\n{logs}",
        event.kind.name(),
        event.ts,
        event.message,
        lines.len()
    ))
}
