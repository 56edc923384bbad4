//! The client commands: each one request to the daemon, then a table for
//! people or the daemon's JSON for scripts.

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::output::{print_fields, print_json, table};
use super::{Failure, Sub};
use crate::client::Client;
use crate::logs::LineSplitter;

pub async fn run(command: Sub, url: &str, json: bool) -> Result<(), Failure> {
    let client = Client::new(url);
    let answer = match &command {
        Sub::Ls => client.get("/services").await?,
        Sub::Show { name } => client.get(&service_path(name, "")).await?,
        Sub::Status { name } => client.get(&service_path(name, "/status")).await?,
        Sub::Start { name, force } => {
            client.post(&service_path(name, "/start"), Some(json!({ "force": force }))).await?
        }
        Sub::Restart { name, force } => {
            client.post(&service_path(name, "/restart"), Some(json!({ "force": force }))).await?
        }
        Sub::Stop { name } => client.post(&service_path(name, "/stop"), None).await?,
        Sub::Remove { name } => client.post(&service_path(name, "/remove"), None).await?,
        Sub::Rediscover => client.post("/rediscover", None).await?,
        Sub::Events { service, since, limit, follow } => {
            let mut query = format!("?limit={limit}&since={}", since.unwrap_or(0));
            if let Some(service) = service {
                query.push_str(&format!("&service={}", escape(service)));
            }
            if *follow {
                return follow_events(&client, &query, json).await;
            }
            client.get(&format!("/events{query}")).await?
        }
        Sub::Logs { name, lines, follow: true } => return follow(&client, name, *lines, json).await,
        Sub::Logs { name, lines, follow: false } => {
            client.get(&format!("{}?tail={lines}", service_path(name, "/logs"))).await?
        }
        Sub::Serve(_) | Sub::Validate { .. } | Sub::New { .. } | Sub::Mcp => {
            unreachable!("handled without a daemon")
        }
    };
    if json {
        print_json(&answer);
        return Ok(());
    }
    match command {
        Sub::Ls => print_list(&answer),
        Sub::Show { .. } | Sub::Status { .. } => print_fields(&answer),
        Sub::Logs { .. } => {
            for line in answer["lines"].as_array().into_iter().flatten() {
                println!("{}", render_line(line));
            }
        }
        Sub::Rediscover => print_rediscover(&answer),
        Sub::Events { .. } => {
            for event in answer["events"].as_array().into_iter().flatten() {
                println!("{}", render_event(event));
            }
        }
        _ => {
            println!("{}", answer["message"].as_str().unwrap_or("ok"));
            for (key, what) in
                [("preempted", "stopped to free the GPU"), ("also_stopped", "stopped first (they depend on it)")]
            {
                let names: Vec<String> = answer[key].as_array().into_iter().flatten().map(text).collect();
                if !names.is_empty() {
                    println!("{what}: {}", names.join(", "));
                }
            }
        }
    }
    Ok(())
}

fn service_path(name: &str, suffix: &str) -> String {
    format!("/services/{}{suffix}", escape(name))
}

/// Percent-encode a path segment or query value; names are validated by the
/// daemon, so escaping only keeps a bad one from changing the URL's shape.
fn escape(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }
        })
        .collect()
}

fn render_event(e: &Value) -> String {
    format!(
        "{:>6}  {}  {:<20} {}",
        text(&e["id"]),
        e["ts"].as_str().unwrap_or(""),
        e["service"].as_str().unwrap_or("(daemon)"),
        e["message"].as_str().unwrap_or("")
    )
}

/// Print the SSE stream's events as they come (`data:` lines carry JSON).
async fn follow_events(client: &Client, query: &str, json: bool) -> Result<(), Failure> {
    let response = client.stream(&format!("/events/stream{query}")).await?;
    let mut body = response.bytes_stream();
    let mut frames = LineSplitter::unbounded();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Failure::new(1, format!("error: event stream ended: {e}")))?;
        for line in frames.split(&chunk) {
            let Some(data) = line.strip_prefix("data:") else { continue };
            match serde_json::from_str::<Value>(data.trim()) {
                Ok(event) if json => println!("{event}"),
                Ok(event) => println!("{}", render_event(&event)),
                Err(_) => {}
            }
        }
    }
    Err(Failure::new(1, "error: the daemon closed the event stream"))
}

fn render_line(line: &Value) -> String {
    format!(
        "{} {:<6} {}",
        line["ts"].as_str().unwrap_or(""),
        line["stream"].as_str().unwrap_or(""),
        line["line"].as_str().unwrap_or("")
    )
}

async fn follow(client: &Client, name: &str, lines: usize, json: bool) -> Result<(), Failure> {
    let response = client.stream(&format!("{}?tail={lines}&follow=true", service_path(name, "/logs"))).await?;
    let mut body = response.bytes_stream();
    let mut frames = LineSplitter::unbounded();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Failure::new(1, format!("error: log stream ended: {e}")))?;
        for raw in frames.split(&chunk) {
            if json {
                println!("{raw}");
            } else if let Ok(line) = serde_json::from_str::<Value>(&raw) {
                println!("{}", render_line(&line));
            }
        }
    }
    Err(Failure::new(1, "error: the daemon closed the log stream"))
}

fn print_list(answer: &Value) {
    let services = answer["services"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let gpu =
                if s["gpu_required"].as_bool() == Some(true) { format!("{} GB", s["vram_gb"]) } else { "-".into() };
            vec![
                text(&s["name"]),
                text(&s["status"]),
                s["cpu_percent"].as_f64().map(|c| format!("{c:.1}%")).unwrap_or_else(|| "-".into()),
                s["memory_bytes"].as_u64().map(bytes).unwrap_or_else(|| "-".into()),
                gpu,
                s["ports"]
                    .as_array()
                    .map(|p| p.iter().map(text).collect::<Vec<_>>().join(","))
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| text(&s["port"])),
                text(&s["description"]),
            ]
        })
        .collect();
    print!("{}", table(&["NAME", "STATUS", "CPU", "MEM", "GPU", "PORTS", "DESCRIPTION"], &rows));
    if let Some(holder) = answer["gpu_service_running"].as_str() {
        println!("\nGPU held by: {holder}");
    }
    print_invalid(answer);
}

fn print_invalid(answer: &Value) {
    let invalid = answer["invalid"].as_array().cloned().unwrap_or_default();
    if invalid.is_empty() {
        return;
    }
    println!("\ninvalid manifests:");
    for entry in invalid {
        for error in entry["errors"].as_array().into_iter().flatten() {
            println!("  {}", text(error));
        }
    }
}

fn print_rediscover(answer: &Value) {
    let names = |key: &str| {
        answer[key].as_array().map(|a| a.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default()
    };
    println!("added:   {}", names("added"));
    println!("removed: {}", names("removed"));
    for changed in answer["changed"].as_array().into_iter().flatten() {
        println!("changed: {}", text(&changed["note"]));
    }
    println!("total:   {}", answer["total"]);
    print_invalid(answer);
}

/// `512 KiB`, `1.5 GiB`: memory as `ps` and `docker stats` users read it.
pub fn bytes(n: u64) -> String {
    let mut value = n as f64;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if value < 1024.0 {
            return if unit == "B" { format!("{n} B") } else { format!("{value:.1} {unit}") };
        }
        value /= 1024.0;
    }
    format!("{value:.1} TiB")
}

/// A JSON value as a person reads it: strings without quotes, null as `-`.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}
