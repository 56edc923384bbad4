//! `nanny webhook test NAME`: a test delivery to one hook, and how it went.

use serde_json::Value;

use super::Failure;
use super::control::escape;
use super::output::print_json;
use crate::client::Client;

pub async fn test(client: &Client, name: &str, json: bool) -> Result<(), Failure> {
    let answer: Value = client.post(&format!("/hooks/{}/test", escape(name)), None).await?;
    let message = answer["message"].as_str().unwrap_or_default().to_string();
    if answer["delivered"] != true {
        return Err(Failure { code: 1, message: format!("error: {message}"), body: answer });
    }
    match json {
        true => print_json(&answer),
        false => println!("{message}"),
    }
    Ok(())
}
