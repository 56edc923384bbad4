//! The manifest checked one concern at a time: identity, runtime (native
//! or Compose), health, restart policy, stop, dependencies. Each reads the
//! raw fields it owns and reports what is wrong with them.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::check::{Checker, DAY, HOUR, Limit, MINUTE};
use super::raw::{RawCommand, RawDependsOn, RawManifest, S};
use super::{Dependency, HealthEndpoint, Ready, RestartPolicy, Runtime, parse_signal, valid_name, valid_project};

const NAME_RULE: &str = "must match [a-z0-9][a-z0-9._-]{0,62} and contain no `..`";

const START_TIMEOUT: Limit = Limit::secs(15 * MINUTE, true, DAY);
const HEALTH_TIMEOUT: Limit = Limit::secs(30, true, DAY);
const HEALTH_INTERVAL: Limit = Limit::secs(10, true, DAY);
const RESTART_DELAY: Limit = Limit::secs(1, false, DAY);
const RESTART_DELAY_MAX: Limit = Limit::secs(60, false, DAY);
const RESTART_WINDOW: Limit = Limit::secs(5 * MINUTE, false, 7 * DAY);
const STOP_TIMEOUT: Limit = Limit::secs(10, false, HOUR);

/// The service's name (required).
pub(super) fn name(c: &mut Checker, raw: &RawManifest) -> String {
    match &raw.name {
        None => {
            c.report_missing("name", "is required");
            String::new()
        }
        Some(n) => {
            if !valid_name(&n.value) {
                c.report("name", n, format!("`{}` is not a valid service name: {NAME_RULE}", n.value));
            }
            n.value.clone()
        }
    }
}

/// `vram_gb`: informational, a finite number >= 0.
pub(super) fn vram_gb(c: &mut Checker, raw: &RawManifest) -> f64 {
    match &raw.vram_gb {
        Some(v) if !(v.value >= 0.0 && v.value.is_finite()) => {
            c.report("vram_gb", v, "must be a number >= 0");
            0.0
        }
        Some(v) => v.value,
        None => 0.0,
    }
}

/// `gpus`: how many GPUs a GPU service needs, 1 to 64 (default 1).
pub(super) fn gpus(c: &mut Checker, raw: &RawManifest) -> usize {
    match &raw.gpus {
        Some(n) if !(1..=64).contains(&n.value) => {
            c.report("gpus", n, "must be a whole number from 1 to 64");
            1
        }
        Some(n) => n.value as usize,
        None => 1,
    }
}

/// `port`: informational, 1 to 65535.
pub(super) fn port(c: &mut Checker, raw: &RawManifest) -> Option<u16> {
    let p = raw.port.as_ref()?;
    match u16::try_from(p.value) {
        Ok(port) if port > 0 => Some(port),
        _ => {
            c.report("port", p, "must be a port number between 1 and 65535");
            None
        }
    }
}

/// Exactly one of `command` (native) and `compose_file` (Compose). `None`
/// only after reporting why.
pub(super) fn runtime(c: &mut Checker, raw: &RawManifest) -> Option<Runtime> {
    match (&raw.command, &raw.compose_file) {
        (Some(command), None) => Some(native(c, raw, command)),
        (None, Some(compose_file)) => Some(compose(c, raw, compose_file)),
        (Some(command), Some(_)) => {
            c.report("command", command, "give either `command` or `compose_file`, not both");
            None
        }
        (None, None) => {
            c.report_missing(
                "command",
                "one of `command` (a native process) or `compose_file` (a Compose project) is required",
            );
            None
        }
    }
}

fn native(c: &mut Checker, raw: &RawManifest, command: &S<RawCommand>) -> Runtime {
    let command = c.argv("command", command);
    let working_dir = match &raw.working_dir {
        Some(w) => c.path("working_dir", w),
        None => c.dir.clone(),
    };
    let env_file = raw.env_file.as_ref().map(|f| c.path("env_file", f));
    Runtime::Native { command, working_dir, env: raw.env.clone().unwrap_or_default(), env_file }
}

fn compose(c: &mut Checker, raw: &RawManifest, compose_file: &S<String>) -> Runtime {
    for (field, present) in
        [("working_dir", raw.working_dir.is_some()), ("env", raw.env.is_some()), ("env_file", raw.env_file.is_some())]
    {
        if present {
            c.report(
                "compose_file",
                compose_file,
                format!("`{field}` applies only to `command` services; set it in the compose file"),
            );
        }
    }
    let compose_file = c.path("compose_file", compose_file);
    let project = raw.compose_project.as_ref().map(|p| {
        if !valid_project(&p.value) {
            c.report("compose_project", p, format!("`{}` is not a valid Compose project name: use lowercase letters, digits, '_' and '-', starting with a letter or digit", p.value));
        }
        p.value.clone()
    });
    Runtime::Compose { compose_file, project }
}

/// How the service is judged alive, and how long it is given.
pub(super) struct Health {
    pub endpoint: Option<HealthEndpoint>,
    pub command: Option<Vec<String>>,
    pub start_timeout: Duration,
    pub timeout: Duration,
    pub interval: Duration,
    pub failures: u32,
}

pub(super) fn health(c: &mut Checker, raw: &RawManifest) -> Health {
    let endpoint = match (&raw.health_endpoint, &raw.health_check_url) {
        (Some(e), Some(_)) => {
            c.report("health_check_url", e, "is an alias of `health_endpoint`; give only one");
            None
        }
        (Some(e), None) => health_endpoint(c, "health_endpoint", e),
        (None, Some(e)) => health_endpoint(c, "health_check_url", e),
        (None, None) => None,
    };
    let command = raw.health_command.as_ref().map(|h| {
        if endpoint.is_some() {
            c.report("health_command", h, "give either `health_endpoint` or `health_command`, not both");
        }
        c.argv("health_command", h)
    });
    Health {
        endpoint,
        command,
        start_timeout: c.duration("start_timeout", &raw.start_timeout, START_TIMEOUT),
        timeout: c.duration("health_timeout", &raw.health_timeout, HEALTH_TIMEOUT),
        interval: c.duration("health_interval", &raw.health_interval, HEALTH_INTERVAL),
        failures: c.count("health_failures", &raw.health_failures, 1..=1000, 3),
    }
}

/// An `http://` URL or `tcp://HOST:PORT`. `https://` is refused: the probe
/// client has no TLS.
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
        Ok(url) if url.scheme() == "http" && url.host().is_some() => Some(HealthEndpoint::Http(text.to_string())),
        Ok(url) if url.scheme() == "https" => {
            c.report(
                field,
                raw,
                format!(
                    "`{text}`: https:// cannot be probed (the health probe has no TLS); use \
                     `health_command: [curl, -fsSk, \"{text}\"]` or a tcp://HOST:PORT endpoint"
                ),
            );
            None
        }
        Ok(_) | Err(_) => {
            c.report(field, raw, format!("`{text}` is not an http:// or tcp:// URL"));
            None
        }
    }
}

/// What happens after the service exits or turns unhealthy.
pub(super) struct Restart {
    pub policy: RestartPolicy,
    pub delay: Duration,
    pub delay_max: Duration,
    pub max_restarts: u32,
    pub window: Duration,
}

pub(super) fn restart(c: &mut Checker, raw: &RawManifest) -> Restart {
    Restart {
        policy: raw.restart.unwrap_or(RestartPolicy::OnFailure),
        delay: c.duration("restart_delay", &raw.restart_delay, RESTART_DELAY),
        delay_max: c.duration("restart_delay_max", &raw.restart_delay_max, RESTART_DELAY_MAX),
        max_restarts: c.count("max_restarts", &raw.max_restarts, 0..=10_000, 10),
        window: c.duration("restart_window", &raw.restart_window, RESTART_WINDOW),
    }
}

/// The signal a stop sends, and how long before SIGKILL follows.
pub(super) fn stop(c: &mut Checker, raw: &RawManifest) -> (Signal, Duration) {
    let signal = match &raw.stop_signal {
        None => Signal::SIGTERM,
        Some(s) => parse_signal(&s.value).unwrap_or_else(|e| {
            c.report("stop_signal", s, e);
            Signal::SIGTERM
        }),
    };
    (signal, c.duration("stop_timeout", &raw.stop_timeout, STOP_TIMEOUT))
}

/// `depends_on`, as names with an optional condition. Whether the names
/// exist is for discovery (`deps`) to say.
pub(super) fn dependencies(c: &mut Checker, raw: &RawManifest, name: &str) -> Vec<Dependency> {
    let Some(d) = &raw.depends_on else { return Vec::new() };
    let deps: Vec<Dependency> = match &d.value {
        RawDependsOn::Names(names) => names.iter().map(|n| Dependency { name: n.clone(), condition: None }).collect(),
        RawDependsOn::Map(map) => map
            .iter()
            .map(|(n, spec)| Dependency { name: n.clone(), condition: spec.as_ref().and_then(|s| s.condition) })
            .collect(),
    };
    for dep in &deps {
        if !valid_name(&dep.name) {
            c.report("depends_on", d, format!("`{}` is not a valid service name", dep.name));
        } else if dep.name == name {
            c.report("depends_on", d, "a service cannot depend on itself");
        }
    }
    deps
}

/// `ready: notify`, for native services only (a Compose project is ready
/// when its containers run).
pub(super) fn ready(c: &mut Checker, raw: &RawManifest) -> Option<Ready> {
    let ready = raw.ready.as_ref()?;
    if raw.compose_file.is_some() {
        c.report(
            "ready",
            ready,
            "applies only to `command` services (a Compose project is ready when its containers run)",
        );
        return None;
    }
    Some(ready.value)
}
