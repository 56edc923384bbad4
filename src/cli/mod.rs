//! The command line (SPEC §6). `serve` runs the daemon; `validate` and `new`
//! work offline; everything else is a client of the daemon's HTTP API, with
//! its own `--url` and `--json`.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 usage error, 3 daemon
//! unreachable, 4 unknown service, 5 conflict (GPU busy, use `--force`;
//! port in use), 6 the service's manifest is invalid, 130 interrupted
//! (Ctrl-C; the daemon carries on).

mod act;
mod answers;
mod control;
mod events;
mod inspect;
mod logs;
mod ls;
mod new;
mod output;
mod progress;
mod render;
mod serve;
mod validate;
mod webhook;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use serde_json::{Value, json};

use crate::client::ClientError;
use crate::manifest::Paths;

#[derive(Parser)]
#[command(
    name = "nanny",
    version,
    about = "Service Nanny: finds, starts, watches and restarts the AI services on this machine"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Sub,
}

const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// How a client command reaches the daemon and prints its answer.
#[derive(Args, Clone)]
pub struct Conn {
    /// The daemon's address, `http://HOST:PORT` [env: NANNY_URL] [default: http://127.0.0.1:8080].
    // Not clap's `env`: an address from the environment would show in
    // every usage line as if typed.
    #[arg(long, value_parser = parse_url)]
    url: Option<String>,
    /// Print the daemon's JSON answer instead of text; failures too, as a JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Services named on the command line; `all` alone means every service.
#[derive(Args, Clone)]
pub struct Names {
    /// The services, or `all` for every service.
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
}

#[derive(Subcommand)]
enum Sub {
    /// Run the daemon.
    Serve(Box<serve::ServeArgs>),
    /// List services: state, health, uptime, pid, restarts, CPU, memory, GPU, ports.
    Ls {
        /// Only services in this state.
        #[arg(long, value_parser = ["stopped", "starting", "running", "unhealthy", "stopping", "backoff", "failed"])]
        status: Option<String>,
        /// Only services with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only services that need the GPU.
        #[arg(long)]
        gpu: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a service's configuration and state.
    Show {
        /// The service.
        name: String,
        /// Times in UTC instead of local time.
        #[arg(long)]
        utc: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Start services and wait until each is running (healthy).
    Start {
        #[command(flatten)]
        names: Names,
        /// Stop the GPU service holding the GPU first (`vram` policy: the
        /// fewest, lowest-priority services that free enough).
        #[arg(long)]
        force: bool,
        /// When the GPUs have no room, wait in the daemon's queue for it
        /// (by priority, then first come) instead of failing.
        #[arg(long)]
        wait: bool,
        /// With --wait: seconds to wait at most (default 300).
        #[arg(long, requires = "wait", value_parser = clap::value_parser!(u64).range(0..=86_400))]
        timeout: Option<u64>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop services (the whole process group, or the Compose project).
    Stop {
        #[command(flatten)]
        names: Names,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop a service and remove what it leaves (Compose: `down`; volumes and images are kept).
    Remove {
        /// The service.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop then start services, picking up manifest changes.
    Restart {
        #[command(flatten)]
        names: Names,
        /// Stop the GPU service holding the GPU first.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show the GPUs: the policy, each GPU's memory and holders, and the starts waiting for room.
    Gpus {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a service's state, health and last exit.
    Status {
        /// The service.
        name: String,
        /// Times in UTC instead of local time.
        #[arg(long)]
        utc: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show services' recent output; several services (or none: all) are interleaved by time.
    Logs {
        /// The services [default: all].
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// How many lines of each service, from 1 to 10000.
        #[arg(short = 'n', long = "tail", value_name = "N", default_value_t = 100,
              value_parser = clap::value_parser!(u32).range(1..=crate::logs::RING_LINES as i64))]
        lines: u32,
        /// Keep printing new lines as they come.
        #[arg(short, long)]
        follow: bool,
        /// Times in UTC instead of local time.
        #[arg(long)]
        utc: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Rescan the services directory.
    Rediscover {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show lifecycle events, oldest first: the newest N, or with --since the N after that id.
    Events {
        /// Only this service's events.
        #[arg(long, value_name = "NAME")]
        service: Option<String>,
        /// Page forward: the events after this id (the last ID of the previous page).
        #[arg(long, value_name = "ID")]
        since: Option<u64>,
        /// How many events, from 1 to 10000.
        #[arg(short = 'n', long = "limit", value_name = "N", default_value_t = 50,
              value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// Keep printing new events as they happen.
        #[arg(short, long)]
        follow: bool,
        /// Times in UTC instead of local time.
        #[arg(long)]
        utc: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print a systemd unit that runs `nanny serve` (Type=notify, watchdog,
    /// restart on failure); install it under /etc/systemd/system, or with
    /// --user under ~/.config/systemd/user.
    SystemdUnit {
        /// A unit for the user's service manager (`systemctl --user`).
        #[arg(long)]
        user: bool,
        /// Services directory [default: $NANNY_SERVICES_DIR or ./services], made absolute.
        #[arg(long)]
        services: Option<PathBuf>,
        /// State directory, made absolute.
        #[arg(long, default_value = ".nanny")]
        state_dir: PathBuf,
        /// Address the daemon listens on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Webhooks and command hooks of the daemon's config file.
    Webhook {
        #[command(subcommand)]
        action: WebhookAction,
        #[command(flatten)]
        conn: Conn,
    },
    /// Check manifests without a daemon (and Compose files with the Compose tool, when there is one).
    Validate {
        /// Services directory [default: $NANNY_SERVICES_DIR or ./services].
        dir: Option<PathBuf>,
        /// Accept paths outside a service's directory, as `serve --allow-outside-paths` does.
        #[arg(long, env = "NANNY_ALLOW_OUTSIDE_PATHS")]
        allow_outside_paths: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve MCP (for AI assistants) on stdin/stdout, bridged to the daemon's `/mcp`.
    Mcp {
        /// The daemon's address, `http://HOST:PORT` [env: NANNY_URL] [default: http://127.0.0.1:8080].
        #[arg(long, value_parser = parse_url)]
        url: Option<String>,
    },
    /// Create a new service directory from the template.
    New {
        /// The new service's name (lowercase letters, digits, '.', '_', '-').
        name: String,
        /// Where to create it [default: $NANNY_SERVICES_DIR or ./services].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum WebhookAction {
    /// Deliver a test event to the hook NAME now (with its retries) and say how it went.
    Test { name: String },
}

impl Conn {
    /// A client of `--url`, else `NANNY_URL`, else the default; a malformed
    /// address is a usage error.
    fn client(&self) -> Result<crate::client::Client, Failure> {
        Ok(crate::client::Client::new(&daemon_url(&self.url)?))
    }
}

/// `--url`, else `NANNY_URL`, else the default; a malformed address is a usage error.
fn daemon_url(url: &Option<String>) -> Result<String, Failure> {
    Ok(match (url, std::env::var("NANNY_URL")) {
        (Some(url), _) => url.clone(),
        (None, Ok(url)) if !url.is_empty() => {
            parse_url(&url).map_err(|e| Failure::new(2, format!("error: invalid NANNY_URL `{url}`: {e}")))?
        }
        _ => DEFAULT_URL.into(),
    })
}

impl Sub {
    /// Whether the command prints JSON, failures included.
    fn json(&self) -> bool {
        match self {
            Sub::Serve(_) | Sub::New { .. } | Sub::SystemdUnit { .. } | Sub::Mcp { .. } => false,
            Sub::Validate { json, .. } => *json,
            Sub::Ls { conn, .. }
            | Sub::Show { conn, .. }
            | Sub::Start { conn, .. }
            | Sub::Gpus { conn }
            | Sub::Stop { conn, .. }
            | Sub::Remove { conn, .. }
            | Sub::Restart { conn, .. }
            | Sub::Status { conn, .. }
            | Sub::Logs { conn, .. }
            | Sub::Rediscover { conn }
            | Sub::Webhook { conn, .. }
            | Sub::Events { conn, .. } => conn.json,
        }
    }
}

/// `--url`: an `http://` address; anything else is a usage error.
fn parse_url(text: &str) -> Result<String, String> {
    const EXPECTED: &str = "expected http://HOST:PORT";
    match text.split_once("://") {
        None => return Err(format!("no `http://`; {EXPECTED}")),
        Some((scheme, _)) if scheme != "http" => {
            return Err(format!("the daemon speaks plain http, not `{scheme}`; {EXPECTED}"));
        }
        Some(_) => {}
    }
    let url = reqwest::Url::parse(text).map_err(|e| format!("{e}; {EXPECTED}"))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("no host; {EXPECTED}"));
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// A failed command: what to print, which exit code to use, and the
/// daemon's error body when there is one (its fields go into `--json` errors).
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    pub body: Value,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure { code, message: message.into(), body: Value::Null }
    }

    /// A failure already reported on its own lines: only its exit code is left.
    pub fn reported(code: u8) -> Self {
        Failure::new(code, "")
    }

    /// The `--json` form: the daemon's fields, then `error` and `exit_code`.
    fn to_json(&self) -> Value {
        let mut object = match &self.body {
            Value::Object(map) => Value::Object(map.clone()),
            _ => json!({}),
        };
        object["error"] = self.message.trim_start_matches("error: ").into();
        object["exit_code"] = self.code.into();
        object
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Unreachable { .. } => 3,
            ClientError::Api { status: 404, .. } => 4,
            ClientError::Api { status: 409, .. } => 5,
            ClientError::Api { status: 422, body, .. } if body["errors"].is_array() => 6,
            _ => 1,
        };
        let mut message = format!("error: {e}");
        let body = match e {
            ClientError::Api { body, .. } => body,
            _ => Value::Null,
        };
        if code == 5 && body["gpu_service_running"].is_string() && !message.contains("pinned") {
            message.push_str(": use --force to stop it first");
        }
        for error in body["errors"].as_array().into_iter().flatten().filter_map(|e| e["text"].as_str()) {
            message.push_str("\n  ");
            message.push_str(error);
        }
        if let Some(logs) = body["logs"].as_array().filter(|l| !l.is_empty()) {
            message.push_str("\nlast log lines:");
            for line in logs.iter().filter_map(|l| l.as_str()) {
                message.push_str("\n  ");
                message.push_str(line);
            }
        }
        Failure { code, message, body }
    }
}

fn default_services_dir() -> PathBuf {
    std::env::var_os("NANNY_SERVICES_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("services"))
}

/// A usage error (exit 2), naming the flag as it was typed (`-n`, not
/// `--tail`); with `--json` among the arguments, also a JSON object on stdout.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ErrorKind};
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut text = e.render().to_string();
    if let Some(invalid) = e.get(ContextKind::InvalidArg).map(ToString::to_string)
        && let Some(typed) = short_form_typed(&invalid, &args)
    {
        text = text.replace(&invalid, &typed);
    }
    eprint!("{text}");
    if args.iter().any(|a| a == "--json") {
        let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ");
        println!("{}", json!({ "error": first, "exit_code": 2 }));
    }
    ExitCode::from(2)
}

/// `-n <N>` when clap names the flag `--tail <N>` but the user typed `-n`.
fn short_form_typed(invalid: &str, args: &[String]) -> Option<String> {
    let long = invalid.split(' ').next()?.strip_prefix("--")?;
    let command = Cli::command();
    let sub = command.find_subcommand(args.iter().find(|a| !a.starts_with('-'))?)?;
    let short = sub.get_arguments().find(|a| a.get_long() == Some(long))?.get_short()?;
    let typed_long = args.iter().any(|a| a == &format!("--{long}") || a.starts_with(&format!("--{long}=")));
    let typed_short = args.iter().any(|a| a.starts_with(&format!("-{short}")) && !a.starts_with("--"));
    (typed_short && !typed_long).then(|| invalid.replacen(&format!("--{long}"), &format!("-{short}"), 1))
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let json = cli.command.json();
    if matches!(cli.command, Sub::Serve(_)) {
        // Two malloc arenas, not one per thread: the daemon's threads mostly wait, and every
        // arena keeps memory of its own (about 2 MB less at a thousand services).
        // SAFETY: a plain libc call, made before any other thread exists.
        unsafe { nix::libc::mallopt(nix::libc::M_ARENA_MAX, 2) };
        // Before the runtime opens anything: the daemon's spawn slots are its lowest descriptors.
        if let Err(e) = crate::runtime::reserve_spawn_slots() {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    let result = runtime.block_on(async {
        match cli.command {
            Sub::Serve(args) => serve::run(*args).await,
            Sub::Validate { dir, allow_outside_paths, json } => {
                let paths = Paths::outside_allowed(allow_outside_paths);
                validate::run(&dir.unwrap_or_else(default_services_dir), paths, json).await
            }
            Sub::Mcp { url } => crate::mcp::stdio::run(&daemon_url(&url)?).await,
            Sub::New { name, dir } => new::run(&name, &dir.unwrap_or_else(default_services_dir)),
            Sub::SystemdUnit { user, services, state_dir, listen } => {
                let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
                let exe = std::env::current_exe().map_err(|e| Failure::new(1, format!("error: where am I? {e}")))?;
                let services = absolute(&services.unwrap_or_else(default_services_dir));
                print!("{}", crate::systemd::unit(user, &exe, &services, &absolute(&state_dir), &listen));
                Ok(())
            }
            other => {
                // A reader that goes away (`nanny logs x | head`) ends the command quietly.
                // SAFETY: restoring the default disposition of SIGPIPE has no preconditions.
                let _ = unsafe {
                    nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl)
                };
                control::run(other).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !failure.message.is_empty() {
                if json {
                    println!("{}", serde_json::to_string_pretty(&failure.to_json()).unwrap_or_default());
                }
                eprintln!("{}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_flag_and_argument_is_described() {
        let cli = super::Cli::command();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments().filter(|a| !["help", "version"].contains(&a.get_id().as_str())) {
                assert!(arg.get_help().is_some(), "`nanny {}`: `{}` has no help", sub.get_name(), arg.get_id());
            }
        }
    }

    #[test]
    fn a_malformed_url_is_a_usage_error() {
        assert_eq!(super::parse_url("http://127.0.0.1:8080/"), Ok("http://127.0.0.1:8080".into()));
        for bad in ["localhost:8080", "ftp://x", "http://", "127.0.0.1", "http://[::1"] {
            assert!(super::parse_url(bad).is_err(), "{bad}");
        }
        assert_eq!(super::parse_url("localhost:8080"), Err("no `http://`; expected http://HOST:PORT".into()));
    }
}
