//! `nanny status NAME` and `nanny show NAME`: labelled sections.

use serde::de::DeserializeOwned;

use super::Failure;
use super::answers::{Detail, Status};
use super::control::service_path;
use super::output::print_json;
use super::render::{Style, detail_text, status_text};
use crate::client::{Client, typed};

pub async fn status(client: &Client, name: &str, json: bool, style: &Style) -> Result<(), Failure> {
    inspect(client, &service_path(name, "/status"), json, |s: &Status| status_text(s, style)).await
}

pub async fn show(client: &Client, name: &str, json: bool, style: &Style) -> Result<(), Failure> {
    inspect(client, &service_path(name, ""), json, |d: &Detail| detail_text(d, style)).await
}

/// The answer at `path`: as JSON, or read as a `T` and rendered.
async fn inspect<T: DeserializeOwned>(
    client: &Client,
    path: &str,
    json: bool,
    render: impl Fn(&T) -> String,
) -> Result<(), Failure> {
    let answer = client.get(path).await?;
    if json {
        print_json(&answer);
    } else {
        print!("{}", render(&typed::<T>(answer)?));
    }
    Ok(())
}
