//! `service.yaml`: bytes in, a validated [`Manifest`] or every problem out.
//!
//! Pure: no I/O beyond resolving the paths the manifest names
//! (`working_dir`, `env_file`, `compose_file`), which is passed in as a
//! closure so tests can decide what exists. Every problem carries the field,
//! and the line and column it comes from when the field is present.
//! `raw` is the YAML as written, `check` the checks of single values,
//! `sections` the checks of each concern.

mod check;
mod raw;
mod sections;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use check::Checker;
pub use check::Resolve;
use raw::RawManifest;

/// File names discovery accepts, in order of preference.
pub const MANIFEST_FILES: [&str; 2] = ["service.yaml", "service.yml"];

/// Every field a manifest accepts.
pub const FIELDS: [&str; 34] = [
    "name",
    "description",
    "version",
    "gpu_required",
    "vram_gb",
    "gpus",
    "compose_file",
    "compose_project",
    "command",
    "working_dir",
    "env",
    "env_file",
    "ports",
    "port",
    "health_endpoint",
    "health_check_url",
    "health_command",
    "start_timeout",
    "health_timeout",
    "health_interval",
    "health_failures",
    "tags",
    "autostart",
    "restart",
    "restart_delay",
    "restart_delay_max",
    "max_restarts",
    "restart_window",
    "stop_signal",
    "stop_timeout",
    "depends_on",
    "priority",
    "pinned",
    "ready",
];

/// A validated service manifest. Paths are absolute (resolved against the
/// manifest's directory).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Manifest {
    pub name: String,
    pub description: String,
    pub version: String,
    pub gpu_required: bool,
    pub vram_gb: f64,
    /// How many GPUs it needs (`vram` policy: `vram_gb` on each); default 1.
    pub gpus: usize,
    #[serde(flatten)]
    pub runtime: Runtime,
    pub ports: Vec<String>,
    pub port: Option<u16>,
    #[serde(serialize_with = "ser_health_endpoint")]
    #[schema(value_type = Option<String>)]
    pub health_endpoint: Option<HealthEndpoint>,
    pub health_command: Option<Vec<String>>,
    /// Compose only: the time `up -d` (pull, build, create) may take before
    /// health checks begin. Accepted, and without effect, for native services.
    #[serde(with = "secs")]
    #[schema(value_type = f64)]
    pub start_timeout: Duration,
    #[serde(with = "secs")]
    #[schema(value_type = f64)]
    pub health_timeout: Duration,
    #[serde(with = "secs")]
    #[schema(value_type = f64)]
    pub health_interval: Duration,
    pub health_failures: u32,
    pub tags: Vec<String>,
    pub autostart: bool,
    pub restart: RestartPolicy,
    #[serde(with = "secs")]
    #[schema(value_type = f64)]
    pub restart_delay: Duration,
    #[serde(with = "secs")]
    #[schema(value_type = f64)]
    pub restart_delay_max: Duration,
    pub max_restarts: u32,
    #[serde(with = "secs")]
    #[schema(value_type = f64)]
    pub restart_window: Duration,
    #[serde(serialize_with = "ser_signal")]
    #[schema(value_type = String)]
    pub stop_signal: Signal,
    #[serde(with = "secs")]
    #[schema(value_type = f64)]
    pub stop_timeout: Duration,
    pub depends_on: Vec<Dependency>,
    pub priority: i32,
    pub pinned: bool,
    /// Native only: how the service says it is ready, besides (before) its
    /// health check. `notify`: it sends `READY=1` to `$NOTIFY_SOCKET`.
    pub ready: Option<Ready>,
    /// The manifest file itself.
    #[schema(value_type = String)]
    pub manifest_path: PathBuf,
}

/// How the service's processes come to exist.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "runtime", rename_all = "lowercase")]
pub enum Runtime {
    Native {
        command: Vec<String>,
        #[schema(value_type = String)]
        working_dir: PathBuf,
        env: BTreeMap<String, String>,
        #[schema(value_type = Option<String>)]
        env_file: Option<PathBuf>,
    },
    Compose {
        #[schema(value_type = String)]
        compose_file: PathBuf,
        /// `compose_project`, when set; else Compose's own default is used.
        project: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthEndpoint {
    Http(String),
    Tcp { host: String, port: u16 },
}

impl fmt::Display for HealthEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthEndpoint::Http(url) => f.write_str(url),
            HealthEndpoint::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
        }
    }
}

/// How a native service announces that it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Ready {
    /// The systemd readiness protocol: `READY=1` sent by a process of the
    /// service's group to the datagram socket named by `NOTIFY_SOCKET`.
    Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DependencyCondition {
    Started,
    Healthy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Dependency {
    pub name: String,
    /// `None`: healthy when the dependency has a check, else started.
    pub condition: Option<DependencyCondition>,
}

impl Manifest {
    /// The health endpoint as the seed shows it (`null` when none).
    pub fn health_endpoint_string(&self) -> Option<String> {
        self.health_endpoint.as_ref().map(ToString::to_string)
    }

    pub fn has_health_check(&self) -> bool {
        self.health_endpoint.is_some() || self.health_command.is_some()
    }
}

/// One thing wrong with a manifest, located as precisely as the YAML allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Problem {
    pub field: Option<String>,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// Every problem found in one manifest file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

impl ManifestError {
    pub fn single(path: &Path, field: Option<&str>, message: impl Into<String>) -> Self {
        ManifestError {
            path: path.to_path_buf(),
            problems: vec![Problem { field: field.map(str::to_string), line: 0, column: 0, message: message.into() }],
        }
    }

    /// One line per problem: `path:line:col: field `x`: message`.
    pub fn lines(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|p| {
                let mut s = self.path.display().to_string();
                if p.line > 0 {
                    s.push_str(&format!(":{}:{}", p.line, p.column));
                }
                s.push_str(": ");
                if let Some(field) = &p.field {
                    s.push_str(&format!("field `{field}`: "));
                }
                s.push_str(&p.message);
                s
            })
            .collect()
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

/// Whether `name` is a valid service name: `[a-z0-9][a-z0-9._-]{0,62}`, and
/// never `..`-like, so it is safe as a path component and a URL segment.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
        && !name.contains("..")
}

/// Whether `name` is a project name Compose accepts: `[a-z0-9][a-z0-9_-]*`.
pub fn valid_project(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Parse a signal name as `SIGTERM`, `TERM` or its number.
pub fn parse_signal(text: &str) -> Result<Signal, String> {
    let upper = text.trim().to_ascii_uppercase();
    if let Ok(n) = upper.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("unknown signal number {n}"));
    }
    let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    Signal::from_str(&full).map_err(|_| format!("unknown signal `{text}`"))
}

/// Whether the paths a manifest names (`working_dir`, `env_file`,
/// `compose_file`) must stay inside its own directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Paths {
    /// No `..` out of it, no absolute path elsewhere, no symlink that
    /// resolves outside it. What the daemon and `validate` use.
    #[default]
    Confined,
    Anywhere,
}

/// A duration as manifests write it (`90`, `0.5`, `500ms`, `2m`, `12h`, `7d`),
/// for the daemon's own settings.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let secs = check::duration_secs(text)?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{text}` is not a duration this daemon can keep"))
}

impl Paths {
    /// What `--allow-outside-paths` asks for.
    pub fn outside_allowed(allowed: bool) -> Paths {
        if allowed { Paths::Anywhere } else { Paths::Confined }
    }
}

/// Parse and validate the manifest at `path` whose text is `text`.
/// `resolve` answers the real path of a path the manifest names, or `None`
/// when it does not exist.
pub fn parse(path: &Path, text: &str, paths: Paths, resolve: Resolve) -> Result<Manifest, ManifestError> {
    let raw: RawManifest = serde_saphyr::from_str(text).map_err(|e| yaml_error(path, &e))?;
    let mut c = Checker::new(path.parent().unwrap_or(Path::new(".")), paths, resolve);
    c.problems.extend(unknown_fields(text));
    let name = sections::name(&mut c, &raw);
    let runtime = sections::runtime(&mut c, &raw);
    let vram_gb = sections::vram_gb(&mut c, &raw);
    let gpus = sections::gpus(&mut c, &raw);
    let port = sections::port(&mut c, &raw);
    let health = sections::health(&mut c, &raw);
    let restart = sections::restart(&mut c, &raw);
    let (stop_signal, stop_timeout) = sections::stop(&mut c, &raw);
    let depends_on = sections::dependencies(&mut c, &raw, &name);
    let ready = sections::ready(&mut c, &raw);
    let (Some(runtime), true) = (runtime, c.problems.is_empty()) else {
        return Err(ManifestError { path: path.to_path_buf(), problems: c.problems });
    };
    Ok(Manifest {
        name,
        description: raw.description.unwrap_or_default(),
        version: raw.version.unwrap_or_default(),
        gpu_required: raw.gpu_required.unwrap_or(false),
        vram_gb,
        gpus,
        runtime,
        ports: raw.ports.unwrap_or_default(),
        port,
        health_endpoint: health.endpoint,
        health_command: health.command,
        start_timeout: health.start_timeout,
        health_timeout: health.timeout,
        health_interval: health.interval,
        health_failures: health.failures,
        tags: raw.tags.unwrap_or_default(),
        autostart: raw.autostart.unwrap_or(false),
        restart: restart.policy,
        restart_delay: restart.delay,
        restart_delay_max: restart.delay_max,
        max_restarts: restart.max_restarts,
        restart_window: restart.window,
        stop_signal,
        stop_timeout,
        depends_on,
        priority: raw.priority.unwrap_or(0),
        pinned: raw.pinned.unwrap_or(false),
        ready,
        manifest_path: path.to_path_buf(),
    })
}

/// Read and parse the manifest file at `path`, checking the paths it names
/// on the file system.
pub fn load(path: &Path, paths: Paths) -> Result<Manifest, ManifestError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ManifestError::single(path, None, format!("cannot read: {e}")))?;
    parse(path, &text, paths, &|p| p.canonicalize().ok())
}

/// Every top-level field the manifest format does not have, where it is
/// written, with the known field it most looks like.
fn unknown_fields(text: &str) -> Vec<Problem> {
    let Ok(keys) = serde_saphyr::from_str::<BTreeMap<String, serde::de::IgnoredAny>>(text) else { return Vec::new() };
    keys.into_keys()
        .filter(|key| !FIELDS.contains(&key.as_str()))
        .map(|key| {
            // Block style (`key: value` at the start of a line) is located; flow style is not.
            let line = text
                .lines()
                .position(|l| l.strip_prefix(key.as_str()).is_some_and(|rest| rest.trim_start().starts_with(':')));
            let closest = FIELDS
                .iter()
                .map(|field| (strsim::jaro_winkler(&key, field), *field))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .filter(|(likeness, _)| *likeness >= 0.85);
            let message = match closest {
                Some((_, field)) => format!("unknown field; did you mean `{field}`?"),
                None => "unknown field (the fields are listed in docs/manifest.md)".to_string(),
            };
            let (line, column) = line.map_or((0, 0), |l| (l as u64 + 1, 1));
            Problem { field: Some(key), line, column, message }
        })
        .collect()
}

fn yaml_error(path: &Path, error: &serde_saphyr::Error) -> ManifestError {
    let (line, column) = error.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
    // serde-saphyr renders "error: line L column C: message" and a snippet;
    // the position is reported separately, so keep only the message.
    let full = error.to_string();
    let first = full.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let message = match first.strip_prefix("line ").and_then(|rest| rest.split_once(": ")) {
        Some((_, message)) => message.trim().to_string(),
        None => first.trim().to_string(),
    };
    let field = message.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next()).map(str::to_string);
    let message = match &field {
        Some(_) => "unknown field (typo?); ".to_string() + &message,
        None => message,
    };
    ManifestError { path: path.to_path_buf(), problems: vec![Problem { field, line, column, message }] }
}

fn ser_health_endpoint<S: serde::Serializer>(e: &Option<HealthEndpoint>, s: S) -> Result<S::Ok, S::Error> {
    e.as_ref().map(ToString::to_string).serialize(s)
}

fn ser_signal<S: serde::Serializer>(signal: &Signal, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(signal.as_str())
}

/// Durations serialize as a number of seconds.
mod secs {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
