//! `service.yaml`: bytes in, a validated [`Manifest`] or every problem out.
//!
//! Pure: no I/O beyond the existence checks of paths the manifest names
//! (`working_dir`, `env_file`, `compose_file`), which are passed in as a
//! closure so tests can decide what exists. Every problem carries the field,
//! line and column it comes from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

/// File names discovery accepts, in order of preference.
pub const MANIFEST_FILES: [&str; 2] = ["service.yaml", "service.yml"];

/// A validated service manifest. Paths are absolute (resolved against the
/// manifest's directory).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    pub name: String,
    pub description: String,
    pub version: String,
    pub gpu_required: bool,
    pub vram_gb: f64,
    #[serde(flatten)]
    pub runtime: Runtime,
    pub ports: Vec<String>,
    pub port: Option<u16>,
    #[serde(serialize_with = "ser_health_endpoint")]
    pub health_endpoint: Option<HealthEndpoint>,
    pub health_command: Option<Vec<String>>,
    #[serde(with = "secs")]
    pub health_timeout: Duration,
    #[serde(with = "secs")]
    pub health_interval: Duration,
    pub health_failures: u32,
    pub tags: Vec<String>,
    pub autostart: bool,
    pub restart: RestartPolicy,
    #[serde(with = "secs")]
    pub restart_delay: Duration,
    #[serde(with = "secs")]
    pub restart_delay_max: Duration,
    pub max_restarts: u32,
    #[serde(with = "secs")]
    pub restart_window: Duration,
    #[serde(serialize_with = "ser_signal")]
    pub stop_signal: Signal,
    #[serde(with = "secs")]
    pub stop_timeout: Duration,
    pub depends_on: Vec<Dependency>,
    pub priority: i32,
    pub pinned: bool,
    /// The manifest file itself.
    pub manifest_path: PathBuf,
}

/// How the service's processes come to exist.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "runtime", rename_all = "lowercase")]
pub enum Runtime {
    Native {
        command: Vec<String>,
        working_dir: PathBuf,
        env: BTreeMap<String, String>,
        env_file: Option<PathBuf>,
    },
    Compose {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DependencyCondition {
    Started,
    Healthy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

const NAME_RULE: &str = "must match [a-z0-9][a-z0-9._-]{0,62} and contain no `..`";

/// Parse a duration: a number of seconds (`1`, `0.5`) or a string with a unit
/// (`500ms`, `2s`, `1.5m`, `1h`; a bare number string means seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("`{text}` is not a duration (use seconds, or e.g. 500ms, 2s, 1m)"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!("unknown duration unit `{other}` (use ms, s, m or h)"));
        }
    };
    seconds(value * scale)
}

fn seconds(value: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value).map_err(|_| format!("{value} is not a non-negative duration"))
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

// ---------------------------------------------------------------------------
// The raw, positioned shape of the YAML.

type S<T> = Spanned<T>;

/// A duration as written: a number of seconds or a string with a unit.
enum RawDuration {
    Seconds(f64),
    Text(String),
}

/// An argv as written: a list, or one string split like a shell would.
enum RawCommand {
    List(Vec<String>),
    Line(String),
}

/// `depends_on` as written: a list of names, or a map of name to options.
enum RawDependsOn {
    Names(Vec<String>),
    Map(BTreeMap<String, Option<RawDependencySpec>>),
}

/// These accept either of two YAML shapes. They are written as visitors,
/// not `#[serde(untagged)]`, because untagged buffering would turn scalars
/// such as `8001` or `true` inside a list into numbers and booleans.
mod raw_shapes {
    use super::*;
    use serde::de::{self, MapAccess, SeqAccess, Visitor};

    macro_rules! two_shapes {
        ($ty:ident, $expecting:literal, { $($method:item)* }) => {
            impl<'de> Deserialize<'de> for $ty {
                fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    struct V;
                    impl<'de> Visitor<'de> for V {
                        type Value = $ty;
                        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                            f.write_str($expecting)
                        }
                        $($method)*
                    }
                    d.deserialize_any(V)
                }
            }
        };
    }

    fn seq_of_strings<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<String>()? {
            items.push(item);
        }
        Ok(items)
    }

    two_shapes!(RawDuration, "a number of seconds or a duration such as \"500ms\" or \"2m\"", {
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawDuration, E> {
            Ok(RawDuration::Seconds(v as f64))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawDuration, E> {
            Ok(RawDuration::Seconds(v as f64))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawDuration, E> {
            Ok(RawDuration::Seconds(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
            Ok(RawDuration::Text(v.to_string()))
        }
    });

    two_shapes!(RawCommand, "a list of arguments or a command line", {
        fn visit_str<E: de::Error>(self, v: &str) -> Result<RawCommand, E> {
            Ok(RawCommand::Line(v.to_string()))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawCommand, A::Error> {
            seq_of_strings(seq).map(RawCommand::List)
        }
    });

    two_shapes!(RawDependsOn, "a list of service names or a map of name to {condition: started|healthy}", {
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawDependsOn, A::Error> {
            seq_of_strings(seq).map(RawDependsOn::Names)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawDependsOn, A::Error> {
            let mut deps = BTreeMap::new();
            while let Some((name, spec)) = map.next_entry::<String, Option<RawDependencySpec>>()? {
                deps.insert(name, spec);
            }
            Ok(RawDependsOn::Map(deps))
        }
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDependencySpec {
    condition: Option<DependencyCondition>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: Option<S<String>>,
    description: Option<String>,
    version: Option<String>,
    gpu_required: Option<bool>,
    vram_gb: Option<S<f64>>,
    compose_file: Option<S<String>>,
    compose_project: Option<S<String>>,
    command: Option<S<RawCommand>>,
    working_dir: Option<S<String>>,
    env: Option<BTreeMap<String, String>>,
    env_file: Option<S<String>>,
    ports: Option<Vec<String>>,
    port: Option<S<i64>>,
    health_endpoint: Option<S<String>>,
    health_check_url: Option<S<String>>,
    health_command: Option<S<RawCommand>>,
    health_timeout: Option<S<RawDuration>>,
    health_interval: Option<S<RawDuration>>,
    health_failures: Option<S<i64>>,
    tags: Option<Vec<String>>,
    autostart: Option<bool>,
    restart: Option<RestartPolicy>,
    restart_delay: Option<S<RawDuration>>,
    restart_delay_max: Option<S<RawDuration>>,
    max_restarts: Option<S<i64>>,
    restart_window: Option<S<RawDuration>>,
    stop_signal: Option<S<String>>,
    stop_timeout: Option<S<RawDuration>>,
    depends_on: Option<S<RawDependsOn>>,
    priority: Option<i32>,
    pinned: Option<bool>,
}

/// Collects problems while a manifest is checked.
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn report<T>(&mut self, field: &str, at: &Spanned<T>, message: impl Into<String>) {
        self.problems.push(Problem {
            field: Some(field.to_string()),
            line: at.referenced.line(),
            column: at.referenced.column(),
            message: message.into(),
        });
    }

    fn report_unplaced(&mut self, field: Option<&str>, message: impl Into<String>) {
        self.problems.push(Problem { field: field.map(str::to_string), line: 0, column: 0, message: message.into() });
    }

    fn duration(&mut self, field: &str, raw: Option<S<RawDuration>>, default: Duration) -> Duration {
        let Some(raw) = raw else { return default };
        let parsed = match &raw.value {
            RawDuration::Seconds(s) => seconds(*s),
            RawDuration::Text(t) => parse_duration(t),
        };
        parsed.unwrap_or_else(|e| {
            self.report(field, &raw, e);
            default
        })
    }

    fn count(&mut self, field: &str, raw: Option<S<i64>>, min: i64, default: u32) -> u32 {
        let Some(raw) = raw else { return default };
        match u32::try_from(raw.value) {
            Ok(n) if raw.value >= min => n,
            _ => {
                self.report(field, &raw, format!("must be a whole number >= {min}"));
                default
            }
        }
    }

    fn argv(&mut self, field: &str, raw: S<RawCommand>) -> Vec<String> {
        let argv = match &raw.value {
            RawCommand::List(list) => list.clone(),
            RawCommand::Line(line) => match shell_words::split(line) {
                Ok(words) => words,
                Err(e) => {
                    self.report(field, &raw, format!("cannot split `{line}` into words: {e}"));
                    return Vec::new();
                }
            },
        };
        if argv.first().is_none_or(|program| program.is_empty()) {
            self.report(field, &raw, "must name a program to run");
        }
        argv
    }

    fn path(&mut self, field: &str, raw: &S<String>, base: &Path, exists: &dyn Fn(&Path) -> bool) -> PathBuf {
        let path = base.join(&raw.value);
        if !exists(&path) {
            self.report(field, raw, format!("{} does not exist", path.display()));
        }
        path
    }
}

/// Parse and validate the manifest at `path` whose text is `text`.
/// `exists` answers whether a path the manifest names exists.
pub fn parse(path: &Path, text: &str, exists: &dyn Fn(&Path) -> bool) -> Result<Manifest, ManifestError> {
    let raw: RawManifest = serde_saphyr::from_str(text).map_err(|e| yaml_error(path, &e))?;
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut c = Checker { problems: Vec::new() };

    let name = match &raw.name {
        None => {
            c.report_unplaced(Some("name"), "is required");
            String::new()
        }
        Some(n) if !valid_name(&n.value) => {
            c.report("name", n, format!("`{}` is not a valid service name: {NAME_RULE}", n.value));
            n.value.clone()
        }
        Some(n) => n.value.clone(),
    };

    let runtime = match (raw.command, raw.compose_file) {
        (Some(command), None) => {
            let command = c.argv("command", command);
            let working_dir = match &raw.working_dir {
                Some(w) => c.path("working_dir", w, &dir, exists),
                None => dir.clone(),
            };
            let env_file = raw.env_file.as_ref().map(|f| c.path("env_file", f, &dir, exists));
            let env = raw.env.unwrap_or_default();
            Some(Runtime::Native { command, working_dir, env, env_file })
        }
        (None, Some(compose_file)) => {
            for (field, present) in [
                ("working_dir", raw.working_dir.is_some()),
                ("env", raw.env.is_some()),
                ("env_file", raw.env_file.is_some()),
            ] {
                if present {
                    c.report(
                        "compose_file",
                        &compose_file,
                        format!("`{field}` applies only to `command` services; set it in the compose file"),
                    );
                }
            }
            let compose_file = c.path("compose_file", &compose_file, &dir, exists);
            let project = raw.compose_project.map(|p| {
                if !valid_project(&p.value) {
                    c.report("compose_project", &p, format!("`{}` is not a valid Compose project name: use lowercase letters, digits, '_' and '-', starting with a letter or digit", p.value));
                }
                p.value
            });
            Some(Runtime::Compose { compose_file, project })
        }
        (Some(command), Some(_)) => {
            c.report("command", &command, "give either `command` or `compose_file`, not both");
            None
        }
        (None, None) => {
            c.report_unplaced(
                None,
                "one of `command` (a native process) or `compose_file` (a Compose project) is required",
            );
            None
        }
    };

    let vram_gb = match raw.vram_gb {
        Some(v) if !(v.value >= 0.0 && v.value.is_finite()) => {
            c.report("vram_gb", &v, "must be a number >= 0");
            0.0
        }
        Some(v) => v.value,
        None => 0.0,
    };

    let port = raw.port.as_ref().and_then(|p| match u16::try_from(p.value) {
        Ok(port) if port > 0 => Some(port),
        _ => {
            c.report("port", p, "must be a port number between 1 and 65535");
            None
        }
    });

    let health_endpoint = match (raw.health_endpoint, raw.health_check_url) {
        (Some(e), Some(_)) => {
            c.report("health_check_url", &e, "is an alias of `health_endpoint`; give only one");
            None
        }
        (Some(e), None) => health_endpoint(&mut c, "health_endpoint", &e),
        (None, Some(e)) => health_endpoint(&mut c, "health_check_url", &e),
        (None, None) => None,
    };
    let health_command = raw.health_command.map(|h| {
        if health_endpoint.is_some() {
            c.report("health_command", &h, "give either `health_endpoint` or `health_command`, not both");
        }
        c.argv("health_command", h)
    });

    let health_timeout = c.duration("health_timeout", raw.health_timeout, Duration::from_secs(30));
    let health_interval = c.duration("health_interval", raw.health_interval, Duration::from_secs(10));
    let restart_delay = c.duration("restart_delay", raw.restart_delay, Duration::from_secs(1));
    let restart_delay_max = c.duration("restart_delay_max", raw.restart_delay_max, Duration::from_secs(60));
    let restart_window = c.duration("restart_window", raw.restart_window, Duration::from_secs(300));
    let stop_timeout = c.duration("stop_timeout", raw.stop_timeout, Duration::from_secs(10));
    if health_interval.is_zero() {
        c.report_unplaced(Some("health_interval"), "must be greater than 0");
    }
    if health_timeout.is_zero() {
        c.report_unplaced(Some("health_timeout"), "must be greater than 0");
    }

    let stop_signal = match raw.stop_signal {
        None => Signal::SIGTERM,
        Some(s) => parse_signal(&s.value).unwrap_or_else(|e| {
            c.report("stop_signal", &s, e);
            Signal::SIGTERM
        }),
    };

    let depends_on = match raw.depends_on {
        None => Vec::new(),
        Some(d) => {
            let deps: Vec<Dependency> = match &d.value {
                RawDependsOn::Names(names) => {
                    names.iter().map(|n| Dependency { name: n.clone(), condition: None }).collect()
                }
                RawDependsOn::Map(map) => map
                    .iter()
                    .map(|(n, spec)| Dependency { name: n.clone(), condition: spec.as_ref().and_then(|s| s.condition) })
                    .collect(),
            };
            for dep in &deps {
                if !valid_name(&dep.name) {
                    c.report("depends_on", &d, format!("`{}` is not a valid service name", dep.name));
                } else if dep.name == name {
                    c.report("depends_on", &d, "a service cannot depend on itself");
                }
            }
            deps
        }
    };

    let manifest = Manifest {
        name,
        description: raw.description.unwrap_or_default(),
        version: raw.version.unwrap_or_default(),
        gpu_required: raw.gpu_required.unwrap_or(false),
        vram_gb,
        ports: raw.ports.unwrap_or_default(),
        port,
        health_endpoint,
        health_command,
        health_timeout,
        health_interval,
        health_failures: c.count("health_failures", raw.health_failures, 1, 3),
        tags: raw.tags.unwrap_or_default(),
        autostart: raw.autostart.unwrap_or(false),
        restart: raw.restart.unwrap_or(RestartPolicy::OnFailure),
        restart_delay,
        restart_delay_max,
        max_restarts: c.count("max_restarts", raw.max_restarts, 0, 10),
        restart_window,
        stop_signal,
        stop_timeout,
        depends_on,
        priority: raw.priority.unwrap_or(0),
        pinned: raw.pinned.unwrap_or(false),
        manifest_path: path.to_path_buf(),
        runtime: match runtime {
            Some(r) => r,
            None => Runtime::Compose { compose_file: PathBuf::new(), project: None },
        },
    };
    if c.problems.is_empty() {
        Ok(manifest)
    } else {
        Err(ManifestError { path: path.to_path_buf(), problems: c.problems })
    }
}

/// Read and parse the manifest file at `path`.
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ManifestError::single(path, None, format!("cannot read: {e}")))?;
    parse(path, &text, &|p| p.exists())
}

fn health_endpoint(c: &mut Checker, field: &str, raw: &S<String>) -> Option<HealthEndpoint> {
    let text = raw.value.trim();
    if let Some(rest) = text.strip_prefix("tcp://") {
        let parsed = rest
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .filter(|(host, port)| !host.is_empty() && *port > 0);
        return match parsed {
            Some((host, port)) => Some(HealthEndpoint::Tcp { host: host.trim_matches(['[', ']']).to_string(), port }),
            None => {
                c.report(field, raw, format!("`{text}` must look like tcp://HOST:PORT"));
                None
            }
        };
    }
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            Some(HealthEndpoint::Http(text.to_string()))
        }
        Ok(_) | Err(_) => {
            c.report(field, raw, format!("`{text}` is not an http://, https:// or tcp:// URL"));
            None
        }
    }
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
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Manifest {
        parse(Path::new("/svc/a/service.yaml"), text, &|_| true).expect("valid manifest")
    }

    fn parse_err(text: &str) -> Vec<String> {
        parse(Path::new("/svc/a/service.yaml"), text, &|_| true).expect_err("invalid manifest").lines()
    }

    #[test]
    fn seed_manifest_parses_with_defaults() {
        let m = parse_ok(
            "name: minimal-sd-api\ndescription: Stable Diffusion image generation\nversion: 1.0.0\n\
             gpu_required: true\nvram_gb: 8\ncompose_file: docker-compose.yml\nports:\n  - \"8000:8000\"\n\
             health_endpoint: http://localhost:8000/health\nhealth_timeout: 30\ntags: [image-generation]\n",
        );
        assert_eq!(m.name, "minimal-sd-api");
        assert_eq!(m.version, "1.0.0");
        assert!(m.gpu_required);
        assert_eq!(m.vram_gb, 8.0);
        assert_eq!(m.ports, vec!["8000:8000"]);
        assert_eq!(m.health_endpoint_string().as_deref(), Some("http://localhost:8000/health"));
        assert_eq!(
            m.runtime,
            Runtime::Compose { compose_file: PathBuf::from("/svc/a/docker-compose.yml"), project: None }
        );
        assert_eq!(m.restart, RestartPolicy::OnFailure);
        assert_eq!(m.restart_delay, Duration::from_secs(1));
        assert_eq!(m.max_restarts, 10);
        assert_eq!(m.stop_signal, Signal::SIGTERM);
        assert_eq!(m.health_failures, 3);
    }

    #[test]
    fn service_manager_seed_fields_and_aliases() {
        let m = parse_ok(
            "name: my_service\ncommand: python my_service.py --port 8080\nport: 8080\n\
             health_check_url: http://localhost:8080/health\nrestart_delay: 5\nmax_restarts: 10\n\
             env: {A: 1, B: x}\nstop_signal: INT\nrestart_delay_max: 2m\nrestart_window: 500ms\n\
             depends_on: {db: {condition: started}, cache: null}\n",
        );
        let Runtime::Native { command, env, working_dir, .. } = &m.runtime else { panic!() };
        assert_eq!(command, &["python", "my_service.py", "--port", "8080"]);
        assert_eq!(env["A"], "1");
        assert_eq!(working_dir, Path::new("/svc/a"));
        assert_eq!(m.port, Some(8080));
        assert_eq!(m.health_endpoint_string().as_deref(), Some("http://localhost:8080/health"));
        assert_eq!(m.restart_delay, Duration::from_secs(5));
        assert_eq!(m.restart_delay_max, Duration::from_secs(120));
        assert_eq!(m.restart_window, Duration::from_millis(500));
        assert_eq!(m.stop_signal, Signal::SIGINT);
        assert_eq!(m.depends_on.len(), 2);
        assert!(
            m.depends_on.contains(&Dependency { name: "db".into(), condition: Some(DependencyCondition::Started) })
        );
    }

    #[test]
    fn unknown_field_is_named_with_position() {
        let errors = parse_err("name: a\ncommand: [x]\nhelth_endpoint: http://x/\n");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("/svc/a/service.yaml:3:"), "{errors:?}");
        assert!(errors[0].contains("helth_endpoint"), "{errors:?}");
    }

    #[test]
    fn every_semantic_problem_is_reported_with_its_position() {
        let errors =
            parse_err("name: ../etc\ncommand: []\nport: 70000\nrestart_delay: soon\nhealth_endpoint: ftp://x\n");
        let joined = errors.join("\n");
        assert!(joined.contains(":1:7: field `name`"), "{joined}");
        assert!(joined.contains("field `command`"), "{joined}");
        assert!(joined.contains(":3:7: field `port`"), "{joined}");
        assert!(joined.contains(":4:16: field `restart_delay`"), "{joined}");
        assert!(joined.contains("field `health_endpoint`"), "{joined}");
        assert_eq!(errors.len(), 5, "{joined}");
    }

    #[test]
    fn runtime_must_be_exactly_one() {
        assert!(parse_err("name: a\n")[0].contains("one of `command`"));
        assert!(parse_err("name: a\ncommand: x\ncompose_file: c.yml\n")[0].contains("not both"));
    }

    #[test]
    fn missing_paths_are_reported() {
        let err =
            parse(Path::new("/svc/a/service.yaml"), "name: a\ncommand: x\nenv_file: .env\n", &|_| false).unwrap_err();
        assert!(err.to_string().contains("/svc/a/.env does not exist"), "{err}");
    }

    #[test]
    fn names() {
        for ok in ["a", "0", "minimal-sd-api", "a.b_c-d", &"a".repeat(63)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "A", "-a", "a/b", "a..b", ".a", "_t", "a b", &"a".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn durations() {
        for (text, ms) in
            [("1", 1000), ("0.5", 500), ("500ms", 500), ("2m", 120_000), ("1.5s", 1500), ("1h", 3_600_000)]
        {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(ms)), "{text}");
        }
        for bad in ["", "x", "5 parsecs", "-1", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGINT"), Ok(Signal::SIGINT));
        assert_eq!(parse_signal("hup"), Ok(Signal::SIGHUP));
        assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
        assert!(parse_signal("SIGNOPE").is_err());
    }
}
