//! `nanny logs [NAME...]`: one service's output, or several interleaved by
//! time with a coloured name prefix (as `docker compose logs`); `-f` follows.

use serde_json::{Value, json};

use super::Failure;
use super::answers::{LogLine, Logs};
use super::control::{each_line, service_path};
use super::output::print_json;
use super::render::{Prefix, Style, log_line};
use crate::client::{Client, typed};

pub async fn run(
    client: &Client,
    names: &[String],
    tail: u32,
    follow: bool,
    json: bool,
    style: &Style,
) -> Result<(), Failure> {
    if names.is_empty() {
        return if follow { Err(Failure::new(1, "error: there are no services to follow")) } else { Ok(()) };
    }
    let width = names.iter().map(String::len).max().unwrap_or(0);
    let prefixes: Vec<Prefix> = names.iter().enumerate().map(|(index, name)| Prefix { name, index, width }).collect();
    let prefix = |index: usize| (names.len() > 1).then(|| &prefixes[index]);
    if follow {
        return follow_all(client, names, tail, json, style, prefix).await;
    }
    let mut answers = Vec::new();
    for name in names {
        answers.push(client.get(&format!("{}?tail={tail}", service_path(name, "/logs"))).await?);
    }
    if json {
        // One service: the daemon's answer; several: each answer under its name.
        match <[Value; 1]>::try_from(answers) {
            Ok([answer]) => print_json(&answer),
            Err(answers) => print_json(&json!({ "services": answers })),
        }
        return Ok(());
    }
    let mut lines: Vec<(usize, LogLine)> = Vec::new();
    for (index, answer) in answers.into_iter().enumerate() {
        lines.extend(typed::<Logs>(answer)?.lines.into_iter().map(|line| (index, line)));
    }
    lines.sort_by_key(|(_, line)| line.ts);
    for (index, line) in &lines {
        println!("{}", log_line(line, prefix(*index), style));
    }
    Ok(())
}

/// Follow every service at once; lines are printed as they arrive, and the
/// first stream to end (the daemon went away) ends the command.
async fn follow_all<'a>(
    client: &Client,
    names: &[String],
    tail: u32,
    json: bool,
    style: &Style,
    prefix: impl Fn(usize) -> Option<&'a Prefix<'a>>,
) -> Result<(), Failure> {
    let prefix = &prefix;
    let mut streams = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let response = client.stream(&format!("{}?tail={tail}&follow=true", service_path(name, "/logs"))).await?;
        streams.push(Box::pin(each_line(response, "log stream", move |raw| {
            if json {
                println!("{raw}");
            } else if let Ok(line) = serde_json::from_str::<LogLine>(raw) {
                println!("{}", log_line(&line, prefix(index), style));
            }
            Ok(())
        })));
    }
    futures_util::future::select_all(streams).await.0
}
