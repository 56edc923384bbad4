//! `nanny start|stop|restart NAME...|all` and `nanny remove NAME`: one
//! request per service, in the order given, with progress while each waits
//! and one result line per service; the exit code is the first failure's.

use std::io::IsTerminal;

use serde_json::{Value, json};

use super::answers::Outcome;
use super::control::{all_services, service_path};
use super::output::print_json;
use super::progress::{self, Mode};
use super::render::outcome_text;
use super::{Conn, Failure};
use crate::client::{Client, typed};

#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// `wait`: seconds to wait in the GPU queue, if at all.
    Start {
        force: bool,
        wait: Option<u64>,
    },
    Restart {
        force: bool,
    },
    Stop,
    Remove,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Start { .. } => "start",
            Action::Restart { .. } => "restart",
            Action::Stop => "stop",
            Action::Remove => "remove",
        }
    }

    fn body(self) -> Option<Value> {
        match self {
            Action::Start { force, wait: Some(timeout) } => {
                Some(json!({ "force": force, "wait": true, "timeout": timeout }))
            }
            Action::Start { force, wait: None } | Action::Restart { force } => Some(json!({ "force": force })),
            Action::Stop | Action::Remove => None,
        }
    }
}

pub async fn run(conn: &Conn, action: Action, names: &[String]) -> Result<(), Failure> {
    let client = conn.client()?;
    let names = match names {
        [all] if all == "all" => all_services(&client).await?,
        _ => names.to_vec(),
    };
    let mode = match (conn.json, std::io::stderr().is_terminal()) {
        (true, _) => Mode::Quiet,
        (false, true) => Mode::Terminal,
        (false, false) => Mode::Lines,
    };
    if let [name] = names.as_slice() {
        let answer = perform(&client, name, action, mode).await?;
        if conn.json {
            print_json(&answer);
        } else {
            println!("{}", outcome_text(&typed::<Outcome>(answer)?));
        }
        return Ok(());
    }
    let mut first_failure = None;
    let mut results = Vec::new();
    for name in &names {
        let result = perform(&client, name, action, mode).await;
        let answer = match result {
            Ok(answer) => answer,
            Err(failure) => {
                if !conn.json {
                    eprintln!("{name}: {}", failure.message);
                }
                results.push(with_service(name, failure.to_json()));
                first_failure.get_or_insert(failure.code);
                continue;
            }
        };
        if !conn.json {
            println!("{name}: {}", outcome_text(&typed::<Outcome>(answer.clone())?));
        }
        results.push(with_service(name, answer));
    }
    if conn.json {
        print_json(&json!({ "results": results }));
    }
    match first_failure {
        None => Ok(()),
        Some(code) => Err(Failure::reported(code)),
    }
}

/// `{"service": NAME, ...answer}`.
fn with_service(name: &str, answer: Value) -> Value {
    let mut object = json!({ "service": name });
    if let (Some(into), Value::Object(fields)) = (object.as_object_mut(), answer) {
        into.extend(fields);
    }
    object
}

/// One request, with its progress shown meanwhile; Ctrl-C leaves it to the daemon.
async fn perform(client: &Client, name: &str, action: Action, mode: Mode) -> Result<Value, Failure> {
    let path = service_path(name, &format!("/{}", action.verb()));
    let result = tokio::select! {
        answer = client.post(&path, action.body()) => answer.map_err(Failure::from),
        never = progress::watch(client, name, mode) => match never {},
        _ = tokio::signal::ctrl_c() => {
            progress::finish(mode);
            return Err(Failure::new(
                130,
                format!("{name}: interrupted; the {} goes on in the daemon (`nanny status {name}` shows how it ends)", action.verb()),
            ));
        }
    };
    progress::finish(mode);
    result
}
