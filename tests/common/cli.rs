//! Running `nanny` subcommands.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use super::NANNY;

pub struct CliOut {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOut {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("CLI stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for CliOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `nanny ARGS` with NANNY_URL set to `url` (if given) and a cleared nanny environment.
pub fn cli(url: Option<&str>, args: &[&str]) -> CliOut {
    cli_in(url, args, None, &[])
}

pub fn cli_in(url: Option<&str>, args: &[&str], cwd: Option<&Path>, env: &[(&str, &str)]) -> CliOut {
    let mut cmd = Command::new(NANNY);
    cmd.args(args)
        .env_remove("NANNY_URL")
        .env_remove("NANNY_TOKEN")
        .env_remove("NANNY_SERVICES_DIR")
        .stdin(Stdio::null());
    if let Some(u) = url {
        cmd.env("NANNY_URL", u);
    }
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out: Output = cmd.output().expect("run nanny CLI");
    CliOut {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Async wrapper so CLI calls don't block a runtime worker.
pub async fn cli_async(url: &str, args: &[&str]) -> CliOut {
    let url = url.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        cli(Some(&url), &a)
    })
    .await
    .unwrap()
}
