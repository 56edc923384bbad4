//! The client commands' dispatcher and what they share: paths, names, and
//! reading a newline-delimited stream.

use std::io::IsTerminal;

use futures_util::StreamExt;

use super::answers::ServiceList;
use super::render::Style;
use super::{Failure, Sub, WebhookAction, act, events, inspect, logs, ls, webhook};
use crate::client::{Client, typed};
use crate::logs::LineSplitter;

pub async fn run(command: Sub) -> Result<(), Failure> {
    match command {
        Sub::Ls { status, tag, gpu, conn } => ls::list(&conn.client()?, conn.json, ls::Only { status, tag, gpu }).await,
        Sub::Rediscover { conn } => ls::rediscover(&conn.client()?, conn.json).await,
        Sub::Webhook { action: WebhookAction::Test { name }, conn } => {
            webhook::test(&conn.client()?, &name, conn.json).await
        }
        Sub::Show { name, utc, conn } => inspect::show(&conn.client()?, &name, conn.json, &style(utc)).await,
        Sub::Status { name, utc, conn } => inspect::status(&conn.client()?, &name, conn.json, &style(utc)).await,
        Sub::Start { names, force, wait, timeout, conn } => {
            let wait = wait.then(|| timeout.unwrap_or(DEFAULT_WAIT_S));
            act::run(&conn, act::Action::Start { force, wait }, &names.names).await
        }
        Sub::Restart { names, force, conn } => act::run(&conn, act::Action::Restart { force }, &names.names).await,
        Sub::Gpus { conn } => gpus(&conn.client()?, conn.json).await,
        Sub::Stop { names, conn } => act::run(&conn, act::Action::Stop, &names.names).await,
        Sub::Remove { name, conn } => act::run(&conn, act::Action::Remove, &[name]).await,
        Sub::Logs { names, lines, follow, utc, conn } => {
            let client = conn.client()?;
            let names = if names.is_empty() { all_services(&client).await? } else { names };
            logs::run(&client, &names, lines, follow, conn.json, &style(utc)).await
        }
        Sub::Events { service, since, limit, follow, utc, conn } => {
            let query = events::Query { service, since, limit };
            events::run(&conn.client()?, &query, follow, conn.json, &style(utc)).await
        }
        Sub::Serve(_) | Sub::Validate { .. } | Sub::New { .. } | Sub::SystemdUnit { .. } | Sub::Mcp { .. } => {
            unreachable!("handled without a daemon")
        }
    }
}

/// How long `nanny start --wait` waits when no `--timeout` is given.
const DEFAULT_WAIT_S: u64 = 300;

/// `nanny gpus`.
async fn gpus(client: &Client, json: bool) -> Result<(), Failure> {
    let answer = client.get("/gpus").await?;
    if json {
        super::output::print_json(&answer);
    } else {
        println!("{}", super::render::gpus_text(&typed(answer)?, &style(false)));
    }
    Ok(())
}

/// Times and colours for what goes to stdout.
fn style(utc: bool) -> Style {
    Style::new(utc, std::io::stdout().is_terminal())
}

/// Every service the daemon knows, by name.
pub async fn all_services(client: &Client) -> Result<Vec<String>, Failure> {
    let list: ServiceList = typed(client.get("/services").await?)?;
    Ok(list.services.into_iter().map(|s| s.name).collect())
}

pub fn service_path(name: &str, suffix: &str) -> String {
    format!("/services/{}{suffix}", escape(name))
}

/// Percent-encode a path segment or query value; names are validated by the
/// daemon, so escaping only keeps a bad one from changing the URL's shape.
pub fn escape(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }
        })
        .collect()
}

/// Call `each` with every complete line of a streamed answer, until the
/// daemon ends it (an error: a follow never ends by itself).
pub async fn each_line(
    response: reqwest::Response,
    what: &str,
    mut each: impl FnMut(&str) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut body = response.bytes_stream();
    let mut frames = LineSplitter::unbounded();
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|e| Failure::new(1, format!("error: the {what} ended: {}", crate::health::error_chain(&e))))?;
        for line in frames.split(&chunk) {
            each(&line)?;
        }
    }
    Err(Failure::new(1, format!("error: the daemon closed the {what}")))
}
