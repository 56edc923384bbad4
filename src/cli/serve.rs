//! `nanny serve`: run the daemon until SIGTERM or SIGINT, then stop every
//! service (dependents first) before exiting.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};

use super::Failure;
use crate::api::Access;
use crate::daemon::{Config, Daemon};
use crate::gpu::inventory::Declared;
use crate::gpu::{Policy, Settings};
use crate::hooks::HooksFile;
use crate::lock::StateLock;
use crate::manifest::{Paths, parse_duration};
use crate::runtime::compose::Compose;
use crate::runtime::{Devices, Native, Runtimes};
use crate::store::Retention;

#[derive(Args)]
pub struct ServeArgs {
    /// Directory holding one sub-directory per service.
    #[arg(long, env = "NANNY_SERVICES_DIR", default_value = "services")]
    services: PathBuf,
    /// Address to listen on (port 0 picks a free one; the chosen address is printed).
    #[arg(long, env = "NANNY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where logs, event history and desired state are kept.
    #[arg(long, env = "NANNY_STATE_DIR", default_value = ".nanny")]
    state_dir: PathBuf,
    /// What a clean shutdown (SIGTERM/SIGINT) does with the services that
    /// were running: `remember` starts them again when the daemon next
    /// starts; `forget` leaves only `autostart` services to start then.
    /// After a crash the services meant to be running are always restored.
    #[arg(long, env = "NANNY_ON_SHUTDOWN", value_enum, default_value_t = OnShutdown::Remember)]
    on_shutdown: OnShutdown,
    /// The GPUs that GPU services may use: `all`, or indices or UUIDs such
    /// as `0,1` (native services get them as `CUDA_VISIBLE_DEVICES`,
    /// containers as `NVIDIA_VISIBLE_DEVICES`).
    #[arg(long, env = "NANNY_GPU_DEVICES", default_value = "all", value_parser = Devices::parse)]
    gpu_devices: Devices,
    /// How GPU services share the GPUs: `exclusive`, one at a time (the
    /// default), or `vram`, as many as fit in each GPU's memory by their
    /// `vram_gb` (and `gpus`), placed by UUID.
    #[arg(long, env = "NANNY_GPU_POLICY", value_enum, default_value_t = Policy::Exclusive)]
    gpu_policy: Policy,
    /// GPU memory the `vram` policy keeps free on every GPU.
    #[arg(long, env = "NANNY_GPU_HEADROOM", default_value = "1GiB", value_parser = crate::gpu::inventory::parse_size)]
    gpu_headroom: u64,
    /// Declare a GPU as INDEX:MEMORY (`0:24GiB`); repeat for more. Declared
    /// GPUs are used instead of what NVML reports (machines without a driver, tests).
    #[arg(long = "gpu", env = "NANNY_GPUS", value_delimiter = ',', value_parser = Declared::parse)]
    gpus: Vec<Declared>,
    /// Let manifests name `working_dir`, `env_file` and `compose_file`
    /// outside their own directory (by default a `../`, an absolute path or
    /// a symlink that leads out is a manifest error).
    #[arg(long, env = "NANNY_ALLOW_OUTSIDE_PATHS")]
    allow_outside_paths: bool,
    /// Require `Authorization: Bearer TOKEN` on every endpoint but
    /// `/health` (the CLI sends NANNY_TOKEN). Prefer --token-file: an
    /// environment variable is visible to whoever can read /proc/PID/environ.
    #[arg(long = "token", env = "NANNY_TOKEN", hide_env_values = true, hide = true)]
    token: Option<String>,
    /// Read the token from this file (its first line).
    #[arg(long, env = "NANNY_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Listen on a non-loopback address without a token: anyone who can reach
    /// it can run any program as this user.
    #[arg(long)]
    insecure_no_token: bool,
    /// A browser origin allowed to call the API (CORS), e.g.
    /// `https://dash.example`; repeat for more. None by default.
    #[arg(long = "cors-origin", env = "NANNY_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// A `Host` name (or `host:port`) the MCP endpoint `/mcp` answers for when the daemon
    /// listens beyond loopback (by default it answers any, like the rest of the API, the
    /// token guarding it); repeat for more. On loopback only local names are answered.
    #[arg(long = "mcp-allowed-host", env = "NANNY_MCP_ALLOWED_HOSTS", value_delimiter = ',')]
    mcp_allowed_hosts: Vec<String>,
    /// Time a client has to send a request's head, and its body.
    #[arg(long, env = "NANNY_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_age)]
    request_timeout: Duration,
    /// The daemon's config file (webhooks and command hooks) [default:
    /// `nanny.yaml` in the directory that holds the state dir].
    #[arg(long, env = "NANNY_CONFIG")]
    config: Option<PathBuf>,
    /// How many of the newest events the history keeps.
    #[arg(long, env = "NANNY_EVENTS_KEEP", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    events_keep: u64,
    /// How long the history keeps an event (`30d`, `12h`, `90m`, seconds).
    #[arg(long, env = "NANNY_EVENTS_MAX_AGE", default_value = "30d", value_parser = parse_age)]
    events_max_age: Duration,
}

/// How long to keep events: a duration as the manifest writes it (`30d`, `12h`, `90m`, seconds).
fn parse_age(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        age if age.is_zero() => Err("must be longer than 0".into()),
        age => Ok(age),
    }
}

/// The API's access policy from the flags: a token, from the environment or
/// a file; a non-loopback address only with one (or the insecure flag).
fn access(args: &ServeArgs) -> Result<Access, String> {
    let token = match (&args.token, &args.token_file) {
        (_, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
            Some(text.lines().next().unwrap_or_default().trim().to_string())
        }
        (token, None) => token.as_ref().map(|t| t.trim().to_string()),
    };
    if token.as_ref().is_some_and(|t| t.len() < 16 || t.contains(char::is_whitespace)) {
        return Err("the token must be at least 16 characters, without spaces (try `openssl rand -hex 32`)".into());
    }
    let loopback = args.listen.ip().is_loopback();
    if !loopback && token.is_none() && !args.insecure_no_token {
        return Err(format!(
            "refusing to listen on {} without a token: anyone who reaches it could run any program as this user. \
             Set NANNY_TOKEN (or --token-file), listen on 127.0.0.1, or pass --insecure-no-token",
            args.listen
        ));
    }
    Ok(Access { token, cors_origins: args.cors_origins.clone(), loopback })
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnShutdown {
    Remember,
    Forget,
}

pub async fn run(args: ServeArgs) -> Result<(), Failure> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("NANNY_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(super::render::colors(std::io::stderr().is_terminal()))
        .init();
    let fail = |m: String| Failure::new(1, format!("error: {m}"));
    if !args.services.is_dir() {
        return Err(fail(format!("services directory {} does not exist", args.services.display())));
    }
    let services_dir = std::path::absolute(&args.services).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(&args.state_dir)
        .map_err(|e| fail(format!("cannot create state dir {}: {e}", args.state_dir.display())))?;
    let state_dir = std::path::absolute(&args.state_dir).map_err(|e| fail(e.to_string()))?;
    // Before anything touches the state: a second daemon must not take the
    // first one's services for leftovers.
    let mut lock = StateLock::acquire(&state_dir).map_err(|e| fail(e.to_string()))?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| fail(e.to_string()))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| fail(e.to_string()))?;

    let access = access(&args).map_err(|m| Failure::new(2, format!("error: {m}")))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| fail(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
    lock.announce(&format!("http://{addr}"));
    let runtime = Runtimes { native: Native, compose: Compose::new(&state_dir) };
    let paths = Paths::outside_allowed(args.allow_outside_paths);
    let events = Retention { keep: args.events_keep, max_age: args.events_max_age };
    let hooks_path = args.config.clone().unwrap_or_else(|| crate::hooks::default_path(&state_dir));
    let hooks = HooksFile::load(&hooks_path).map_err(|m| Failure::new(2, format!("error: {m}")))?;
    // `--gpu` / NANNY_GPUS, else the config file's `gpus:` (checked when it was loaded).
    let declared = match args.gpus.is_empty() {
        true => hooks.gpus.iter().filter_map(|g| Declared::parse(g).ok()).collect(),
        false => args.gpus,
    };
    let mut indices: Vec<u32> = declared.iter().map(|g| g.index).collect();
    indices.sort_unstable();
    if let Some(twice) = indices.windows(2).find(|w| w[0] == w[1]) {
        return Err(Failure::new(
            2,
            format!("error: GPU {} is declared twice (--gpu, NANNY_GPUS or the config file's gpus:)", twice[0]),
        ));
    }
    let gpu = Settings { policy: args.gpu_policy, headroom: args.gpu_headroom, devices: args.gpu_devices, declared };
    let config = Config { services_dir, state_dir, gpu, paths, events, hooks };
    let daemon = Daemon::start(config, Arc::new(runtime)).await.map_err(|e| fail(e.to_string()))?;
    let catalog = daemon.registry.snapshot();
    tracing::info!(
        services = catalog.services.len(),
        invalid = catalog.invalid.len(),
        "discovered services in {}",
        daemon.config.services_dir.display()
    );
    for invalid in &catalog.invalid {
        for error in invalid.texts() {
            tracing::warn!("invalid manifest: {error}");
        }
    }
    let mcp_hosts = crate::mcp::allowed_hosts(access.loopback, &args.mcp_allowed_hosts);
    let router = crate::api::router(daemon.clone(), access, mcp_hosts);
    let server = tokio::spawn(crate::api::serve(listener, router, args.request_timeout));
    println!("nanny listening on http://{addr}");
    daemon.restore();
    crate::systemd::ready(&daemon);

    let reason = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
        result = server => return Err(fail(format!("the HTTP server stopped: {result:?}"))),
    };
    tracing::info!("{reason}: stopping every service (a second signal exits at once)");
    crate::systemd::stopping(reason);
    let forget = args.on_shutdown == OnShutdown::Forget;
    tokio::select! {
        _ = daemon.shutdown(reason, forget) => tracing::info!("all services stopped; exiting"),
        _ = terminate.recv() => return Err(fail("second signal: exiting without waiting for services".into())),
        _ = interrupt.recv() => return Err(fail("second signal: exiting without waiting for services".into())),
    }
    // The services' last lines are in their files before the daemon exits.
    let _ = tokio::task::spawn_blocking(crate::logs::flush).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ages_are_days_or_manifest_durations() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_age("1.5d"), Ok(Duration::from_secs(36 * 3600)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_age("90"), Ok(Duration::from_secs(90)));
        for bad in ["0", "0d", "-1d", "d", "xd", "1e400d", "abc", "7w"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }
}
