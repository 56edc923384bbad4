//! `nanny events`: the newest N, or the N after `--since` (a script walks
//! the history a page at a time); `-f` then follows the live stream.

use super::Failure;
use super::answers::Events;
use super::control::{each_line, escape};
use super::output::print_json;
use super::render::{Style, event_header, event_row, events_table};
use crate::client::{Client, typed};
use crate::events::Event;

pub struct Query {
    pub service: Option<String>,
    pub since: Option<u64>,
    pub limit: u32,
}

impl Query {
    fn string(&self) -> String {
        let mut query = format!("?limit={}", self.limit);
        if let Some(since) = self.since {
            query.push_str(&format!("&since={since}"));
        }
        if let Some(service) = &self.service {
            query.push_str(&format!("&service={}", escape(service)));
        }
        query
    }
}

pub async fn run(client: &Client, query: &Query, follow: bool, json: bool, style: &Style) -> Result<(), Failure> {
    if follow {
        return follow_events(client, query, json, style).await;
    }
    let forward = if query.since.is_some() { "&forward=true" } else { "" };
    let answer = client.get(&format!("/events{}{forward}", query.string())).await?;
    if json {
        print_json(&answer);
    } else {
        print!("{}", events_table(&typed::<Events>(answer)?.events, style));
    }
    Ok(())
}

/// The SSE stream's events as they come (`data:` lines carry JSON).
async fn follow_events(client: &Client, query: &Query, json: bool, style: &Style) -> Result<(), Failure> {
    let response = client.stream(&format!("/events/stream{}", query.string())).await?;
    if !json {
        println!("{}", event_header(style));
    }
    each_line(response, "event stream", |line| {
        let Some(data) = line.strip_prefix("data:") else { return Ok(()) };
        if json {
            println!("{}", data.trim());
        } else if let Ok(event) = serde_json::from_str::<Event>(data.trim()) {
            println!("{}", event_row(&event, style));
        }
        Ok(())
    })
    .await
}
