//! The command line (SPEC §6). `serve` runs the daemon; `validate` and `new`
//! work offline; everything else is a client of the daemon's HTTP API.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 usage error, 3 daemon
//! unreachable, 4 unknown service, 5 conflict (GPU busy).

mod control;
mod new;
mod output;
mod serve;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::ClientError;
use crate::manifest::Paths;

#[derive(Parser)]
#[command(
    name = "nanny",
    version,
    about = "Service Nanny: finds, starts, watches and restarts the AI services on this machine"
)]
pub struct Cli {
    /// The daemon's address.
    #[arg(long, global = true, env = "NANNY_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Sub,
}

#[derive(Subcommand)]
enum Sub {
    /// Run the daemon.
    Serve(serve::ServeArgs),
    /// List services and their states.
    Ls,
    /// Show a service's full configuration and state.
    Show { name: String },
    /// Start a service and wait until it is running (healthy).
    Start {
        name: String,
        /// Stop the GPU service holding the GPU first.
        #[arg(long)]
        force: bool,
    },
    /// Stop a service (the whole process group, or the Compose project).
    Stop { name: String },
    /// Stop a service and remove what it leaves (Compose: `down`; volumes and images are kept).
    Remove { name: String },
    /// Stop then start a service, picking up manifest changes.
    Restart {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Show a service's status.
    Status { name: String },
    /// Show a service's recent output.
    Logs {
        name: String,
        /// How many lines.
        #[arg(short = 'n', long = "tail", default_value_t = 100)]
        lines: usize,
        /// Keep printing new lines as they come.
        #[arg(short, long)]
        follow: bool,
    },
    /// Rescan the services directory.
    Rediscover,
    /// Show lifecycle events (oldest first).
    Events {
        /// Only this service's events.
        #[arg(long)]
        service: Option<String>,
        /// Only events after this id.
        #[arg(long)]
        since: Option<u64>,
        /// How many of the newest events.
        #[arg(short = 'n', long = "limit", default_value_t = 50)]
        limit: usize,
        /// Keep printing new events as they happen.
        #[arg(short, long)]
        follow: bool,
    },
    /// Check manifests without a daemon.
    Validate {
        /// Services directory [default: $NANNY_SERVICES_DIR or ./services].
        dir: Option<PathBuf>,
        /// Accept paths outside a service's directory, as `serve --allow-outside-paths` does.
        #[arg(long, env = "NANNY_ALLOW_OUTSIDE_PATHS")]
        allow_outside_paths: bool,
    },
    /// Serve MCP (for AI assistants) on stdin/stdout, bridged to the daemon's `/mcp`.
    Mcp,
    /// Create a new service directory from the template.
    New {
        name: String,
        /// Where to create it [default: $NANNY_SERVICES_DIR or ./services].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// A failed command: what to print and which exit code to use.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Unreachable { .. } => 3,
            ClientError::Api { status: 404, .. } => 4,
            ClientError::Api { status: 409, .. } => 5,
            _ => 1,
        };
        let mut message = format!("error: {e}");
        if let ClientError::Api { body, .. } = &e
            && let Some(logs) = body["logs"].as_array()
            && !logs.is_empty()
        {
            message.push_str("\nlast log lines:");
            for line in logs.iter().filter_map(|l| l.as_str()) {
                message.push_str("\n  ");
                message.push_str(line);
            }
        }
        Failure { code, message }
    }
}

fn default_services_dir() -> PathBuf {
    std::env::var_os("NANNY_SERVICES_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("services"))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    let result = runtime.block_on(async {
        match cli.command {
            Sub::Serve(args) => serve::run(args).await,
            Sub::Validate { dir, allow_outside_paths } => {
                let paths = Paths::outside_allowed(allow_outside_paths);
                validate::run(&dir.unwrap_or_else(default_services_dir), paths, cli.json)
            }
            Sub::Mcp => crate::mcp::stdio::run(&cli.url).await,
            Sub::New { name, dir } => new::run(&name, &dir.unwrap_or_else(default_services_dir)),
            other => {
                // A reader that goes away (`nanny logs x | head`) ends the command quietly.
                // SAFETY: restoring the default disposition of SIGPIPE has no preconditions.
                let _ = unsafe {
                    nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl)
                };
                control::run(other, &cli.url, cli.json).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
