//! Health probes: one check of a service's `health_endpoint` (HTTP or TCP) or
//! `health_command` (or a check its runtime offers), bounded by a timeout. Probes never touch service state;
//! the service task decides what a result means.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::manifest::{HealthEndpoint, Manifest};

/// The outcome of one probe, as the status endpoint reports it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProbeResult {
    #[schema(value_type = String, format = DateTime)]
    pub at: jiff::Timestamp,
    pub ok: bool,
    pub http_code: Option<u16>,
    pub latency_ms: f64,
    pub message: String,
}

/// What one check found: healthy or not, the HTTP code if any, and why.
pub type Outcome = (bool, Option<u16>, String);

/// Run a check, never taking longer than `timeout`, and time it.
pub async fn timed(timeout: Duration, check: impl Future<Output = Outcome>) -> ProbeResult {
    let at = jiff::Timestamp::now();
    let started = Instant::now();
    let (ok, http_code, message) = match tokio::time::timeout(timeout, check).await {
        Ok(outcome) => outcome,
        Err(_) => (false, None, format!("no answer within {:.1}s", timeout.as_secs_f64())),
    };
    ProbeResult { at, ok, http_code, latency_ms: started.elapsed().as_secs_f64() * 1000.0, message }
}

/// What to probe, extracted from a manifest so a probe can run on its own task.
#[derive(Debug, Clone)]
pub enum Probe {
    Http(String),
    Tcp { host: String, port: u16 },
    Command { argv: Vec<String>, working_dir: std::path::PathBuf },
}

impl Probe {
    pub fn of(manifest: &Manifest) -> Option<Probe> {
        if let Some(endpoint) = &manifest.health_endpoint {
            return Some(match endpoint {
                HealthEndpoint::Http(url) => Probe::Http(url.clone()),
                HealthEndpoint::Tcp { host, port } => Probe::Tcp { host: host.clone(), port: *port },
            });
        }
        let argv = manifest.health_command.clone()?;
        let working_dir = match &manifest.runtime {
            crate::manifest::Runtime::Native { working_dir, .. } => working_dir.clone(),
            crate::manifest::Runtime::Compose { compose_file, .. } => {
                compose_file.parent().unwrap_or(Path::new(".")).to_path_buf()
            }
        };
        Some(Probe::Command { argv, working_dir })
    }

    /// One check; its caller bounds it with [`timed`].
    pub async fn check(&self, client: &reqwest::Client, timeout: Duration) -> Outcome {
        match self {
            Probe::Http(url) => match client.get(url).timeout(timeout).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    (status.is_success(), Some(status.as_u16()), format!("HTTP {status}"))
                }
                Err(e) => (false, None, error_chain(&e)),
            },
            Probe::Tcp { host, port } => match TcpStream::connect((host.as_str(), *port)).await {
                Ok(_) => (true, None, format!("connected to {host}:{port}")),
                Err(e) => (false, None, format!("cannot connect to {host}:{port}: {}", io_words(&e))),
            },
            Probe::Command { argv, working_dir } => {
                let Some((program, args)) = argv.split_first() else {
                    return (false, None, "empty health_command".into());
                };
                let status = Command::new(program)
                    .args(args)
                    .current_dir(working_dir)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .status()
                    .await;
                match status {
                    Ok(s) if s.success() => (true, None, "health_command exited 0".into()),
                    Ok(s) => (false, None, format!("health_command failed: {s}")),
                    Err(e) => (false, None, format!("cannot run health_command `{program}`: {e}")),
                }
            }
        }
    }
}

/// The HTTP client for probes: no proxies (health endpoints are local).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().expect("a client without TLS always builds")
}

/// What went wrong, in words: the innermost I/O cause ("connection
/// refused", "timed out") rather than the HTTP library's chain of wrappers.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = e;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io_words(io);
        }
        innermost = s;
        source = s.source();
    }
    if let Some(re) = e.downcast_ref::<reqwest::Error>()
        && re.is_timeout()
    {
        return "timed out".into();
    }
    innermost.to_string()
}

/// An I/O error as people say it: `connection refused`, without `(os error 111)`.
fn io_words(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset".into(),
        ConnectionAborted => "connection aborted".into(),
        TimedOut => "timed out".into(),
        AddrNotAvailable => "address not available".into(),
        _ => {
            let text = e.to_string();
            match text.find(" (os error") {
                Some(at) => text[..at].to_string(),
                None => text,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_probe_says_connection_refused() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let http = Probe::Http(format!("http://127.0.0.1:{port}/health"));
        let (ok, code, message) = http.check(&client(), Duration::from_secs(2)).await;
        assert_eq!((ok, code, message.as_str()), (false, None, "connection refused"));
        let tcp = Probe::Tcp { host: "127.0.0.1".into(), port };
        let (_, _, message) = tcp.check(&client(), Duration::from_secs(2)).await;
        assert_eq!(message, format!("cannot connect to 127.0.0.1:{port}: connection refused"));
    }
}
