//! Pure renderers of the daemon's answers for people: tables, labelled
//! sections, log and event lines. Every function takes the values and the
//! [`Style`] and returns text, so tests pin the output on fixed values.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::answers::{Config, Detail, Gpus, Invalid, LogLine, Outcome, Status, Summary};
use super::output::table;
use crate::events::Event;
use crate::lifecycle::State;

/// How to print: which clock, and whether ANSI colours are wanted.
#[derive(Debug, Clone)]
pub struct Style {
    /// `None`: UTC.
    pub zone: Option<TimeZone>,
    pub color: bool,
}

impl Style {
    /// Local time unless `utc`; colours as [`colors`] says.
    pub fn new(utc: bool, terminal: bool) -> Style {
        Style { zone: (!utc).then(TimeZone::system), color: colors(terminal) }
    }

    /// `2026-12-01 17:45:00.123` local, `2026-12-01T16:45:00.123Z` UTC: always the same width.
    pub fn time(&self, ts: Timestamp) -> String {
        match &self.zone {
            Some(zone) => ts.to_zoned_datetime(zone.clone()).strftime("%Y-%m-%d %H:%M:%S%.3f").to_string(),
            None => ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        }
    }

    /// `name` in the `index`th colour of a fixed palette, when colours are on.
    pub fn paint(&self, index: usize, name: &str) -> String {
        const PALETTE: [u8; 6] = [36, 33, 32, 35, 34, 31];
        if self.color { format!("\x1b[{}m{name}\x1b[0m", PALETTE[index % PALETTE.len()]) } else { name.to_string() }
    }
}

/// Colours only for a terminal, and never under `NO_COLOR`.
pub fn colors(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `12s`, `5m 23s`, `3h 4m`, `2d 4h`: the two largest units, as `ps` and pm2 show uptimes.
pub fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A manifest duration: `30 s`, `0.5 s`.
pub fn seconds(value: f64) -> String {
    format!("{} s", number(value))
}

/// `24`, `0.5`: no trailing `.0`.
fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 { format!("{}", value as i64) } else { format!("{value}") }
}

/// `512 B`, `1.5 GiB`: memory as `ps` and `docker stats` users read it.
pub fn bytes(n: u64) -> String {
    let mut value = n as f64;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if value < 1024.0 {
            return if unit == "B" { format!("{n} B") } else { format!("{value:.1} {unit}") };
        }
        value /= 1024.0;
    }
    format!("{value:.1} TiB")
}

/// An argv as a shell would show it: `python3 server.py --name 'a b'`.
pub fn shell_quote(argv: &[String]) -> String {
    argv.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
}

/// One word, quoted only if a shell would need it (`--n=2` stays bare).
fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) { word.to_string() } else { shell_words::quote(word).into_owned() }
}

fn or_dash(text: impl Into<String>) -> String {
    let text = text.into();
    if text.is_empty() { "-".into() } else { text }
}

fn list(items: &[String]) -> String {
    or_dash(items.join(", "))
}

fn optional<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// `running`, or `running*` while a manifest change waits for a restart.
fn status_word(status: State, pending: bool) -> String {
    format!("{}{}", status.as_str(), if pending { "*" } else { "" })
}

/// The `HEALTH` cell: the last check of the current process.
fn health_cell(s: &Status) -> String {
    match &s.last_health {
        Some(_) if !s.status.has_process() => "-".into(),
        Some(h) if h.ok => "ok".into(),
        Some(_) => format!("failing ({})", s.consecutive_health_failures.max(1)),
        None => "-".into(),
    }
}

/// What a person should know beside the state: why it waits, what it does next.
fn note(s: &Status) -> String {
    let mut notes = Vec::new();
    if s.restart_pending {
        notes.push("manifest changed: restart to apply".to_string());
    }
    match s.status {
        State::Starting => notes.extend(s.stage.clone()),
        State::Backoff => notes.extend(s.next.clone()),
        State::Failed => notes.extend(s.last_error.clone()),
        _ => {}
    }
    notes.join("; ")
}

fn gpu_cell(gpu_required: bool, vram_gb: f64) -> String {
    if gpu_required { format!("{} GB", number(vram_gb)) } else { "-".into() }
}

fn ports_cell(ports: &[String], port: Option<u16>) -> String {
    if ports.is_empty() { optional(port) } else { ports.join(",") }
}

/// `nanny ls`: one row per service, its status read alongside (`None` when
/// the status could not be read).
pub fn services_table(rows: &[(Summary, Option<Status>)]) -> String {
    let headers = ["NAME", "STATUS", "HEALTH", "UPTIME", "PID", "RESTARTS", "CPU", "MEM", "GPU", "PORTS", "NOTE"];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(summary, status)| {
            let process = status.as_ref().filter(|s| s.status.has_process());
            vec![
                summary.name.clone(),
                status.as_ref().map_or(summary.status.as_str().into(), |s| status_word(s.status, s.restart_pending)),
                status.as_ref().map_or("-".into(), health_cell),
                optional(process.and_then(|s| s.uptime_seconds).map(human_duration)),
                optional(process.and_then(|s| s.pid)),
                status.as_ref().map_or("-".into(), |s| s.restarts.to_string()),
                optional(process.and_then(|s| s.cpu_percent).map(|c| format!("{c:.1}%"))),
                optional(process.and_then(|s| s.memory_bytes).map(bytes)),
                gpu_cell(summary.gpu_required, summary.vram_gb),
                ports_cell(&summary.ports, summary.port),
                status.as_ref().map_or(String::new(), note),
            ]
        })
        .collect();
    table(&headers, &cells)
}

/// Labelled sections, labels aligned across the whole text.
#[derive(Default)]
struct Sections(Vec<(String, Vec<(&'static str, String)>)>);

impl Sections {
    fn section(&mut self, title: impl Into<String>, fields: Vec<(&'static str, String)>) -> &mut Self {
        self.0.push((title.into(), fields));
        self
    }

    fn render(&self) -> String {
        let width = self.0.iter().flat_map(|(_, f)| f.iter().map(|(l, _)| l.len())).max().unwrap_or(0);
        let mut out = String::new();
        for (title, fields) in &self.0 {
            out.push_str(title);
            out.push('\n');
            for (label, value) in fields {
                out.push_str(&format!("  {label:<width$}  {}\n", or_dash(value.clone())));
            }
        }
        out
    }
}

fn status_sections(sections: &mut Sections, s: &Status, style: &Style) {
    let process = s.status.has_process();
    let mut state = status_word(s.status, s.restart_pending);
    if let Some(stage) = s.stage.as_ref().filter(|_| s.status == State::Starting) {
        state.push_str(&format!(" ({stage})"));
    }
    let since = s.started_at.filter(|_| process).map(|at| {
        let up = s.uptime_seconds.map(|u| format!(" (up {})", human_duration(u))).unwrap_or_default();
        format!("{}{up}", style.time(at))
    });
    let mut fields = vec![("state", state)];
    if s.restart_pending {
        fields.push(("manifest", "changed on disk: restart to apply".into()));
    }
    fields.extend([
        ("since", optional(since)),
        ("pid", optional(s.pid.filter(|_| process))),
        ("containers", list(&s.containers)),
        ("restarts", s.restarts.to_string()),
        ("cpu", optional(s.cpu_percent.map(|c| format!("{c:.1}%")))),
        ("memory", optional(s.memory_bytes.map(bytes))),
        ("next", optional(s.next.clone())),
    ]);
    sections.section("Status", fields);
    let check = s.last_health.as_ref().map(|h| {
        let verdict = if h.ok { "ok" } else { "failed" };
        format!("{verdict}: {} in {:.1} ms, at {}", h.message, h.latency_ms, style.time(h.at))
    });
    let exit = s.last_exit.as_ref().map(|e| {
        let how = match (&e.signal, e.code) {
            (Some(signal), _) => format!("killed by {signal}"),
            (None, Some(code)) => format!("exit code {code}"),
            (None, None) => "ended".into(),
        };
        format!("{how}, at {}", style.time(e.at))
    });
    sections.section(
        "Health",
        vec![
            ("last check", optional(check)),
            ("failures", format!("{} in a row", s.consecutive_health_failures)),
            ("last exit", optional(exit)),
            ("last error", optional(s.last_error.clone())),
        ],
    );
}

/// `nanny status NAME`.
pub fn status_text(s: &Status, style: &Style) -> String {
    let mut sections = Sections::default();
    status_sections(&mut sections, s, style);
    format!("{}\n{}", s.name, sections.render())
}

/// `nanny show NAME`: the configuration, then the status.
pub fn detail_text(d: &Detail, style: &Style) -> String {
    let c = &d.config;
    let mut sections = Sections::default();
    sections.section(
        "Service",
        vec![
            ("description", c.description.clone()),
            ("version", c.version.clone()),
            ("manifest", c.manifest_path.clone()),
            ("tags", list(&c.tags)),
            ("autostart", yes_no(c.autostart)),
            ("depends on", list(&dependencies(c))),
        ],
    );
    sections.section("Runtime", runtime_fields(c));
    let health_command = c.health_command.as_deref().map(shell_quote);
    sections.section(
        "Network and health",
        vec![
            ("ports", ports_cell(&c.ports, c.port)),
            ("health check", optional(c.health_endpoint.clone().or(health_command))),
            ("health timeout", seconds(c.health_timeout)),
            ("check interval", seconds(c.health_interval)),
            ("failures", format!("{} in a row make it unhealthy", c.health_failures)),
        ],
    );
    sections.section(
        "Restart and stop",
        vec![
            ("restart", c.restart.clone()),
            ("delay", format!("{} to {}", seconds(c.restart_delay), seconds(c.restart_delay_max))),
            ("at most", format!("{} restarts in {}", c.max_restarts, seconds(c.restart_window))),
            ("stop", format!("{}, then SIGKILL after {}", c.stop_signal, seconds(c.stop_timeout))),
        ],
    );
    sections.section(
        "GPU",
        vec![
            ("gpu", gpu_cell(c.gpu_required, c.vram_gb)),
            ("priority", c.priority.to_string()),
            ("pinned", yes_no(c.pinned)),
        ],
    );
    status_sections(&mut sections, &d.state, style);
    format!("{} ({} service)\n{}", c.name, c.runtime, sections.render())
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.into()
}

fn dependencies(c: &Config) -> Vec<String> {
    c.depends_on
        .iter()
        .map(|d| match &d.condition {
            Some(condition) => format!("{} ({condition})", d.name),
            None => d.name.clone(),
        })
        .collect()
}

fn runtime_fields(c: &Config) -> Vec<(&'static str, String)> {
    if c.runtime == "compose" {
        return vec![
            ("compose file", optional(c.compose_file.clone())),
            ("project", optional(c.project.clone())),
            ("start timeout", seconds(c.start_timeout)),
        ];
    }
    let env: Vec<String> = c.env.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect();
    vec![
        ("command", shell_quote(c.command.as_deref().unwrap_or_default())),
        ("working dir", optional(c.working_dir.clone())),
        ("env", env.join(" ")),
        ("env file", optional(c.env_file.clone())),
    ]
}

/// The answer to `start`, `stop`, `restart` or `remove`, on one line.
pub fn outcome_text(o: &Outcome) -> String {
    let mut text = if o.message.is_empty() { "done".to_string() } else { o.message.clone() };
    for (names, what) in [
        (&o.also_started, "also started (dependencies)"),
        (&o.also_stopped, "also stopped (they depend on it)"),
        (&o.preempted, "stopped to free the GPU"),
    ] {
        if !names.is_empty() {
            text.push_str(&format!("; {what}: {}", names.join(", ")));
        }
    }
    text
}

/// Invalid manifests, each file with its errors.
pub fn invalid_text(invalid: &[Invalid]) -> String {
    let mut out = String::new();
    if !invalid.is_empty() {
        out.push_str("\ninvalid manifests:\n");
    }
    for entry in invalid {
        out.push_str(&format!("  {}\n", entry.path));
        for error in &entry.errors {
            out.push_str(&format!("    {}\n", error.text));
        }
    }
    out
}

pub const EVENT_HEADERS: [&str; 5] = ["ID", "TIME", "SERVICE", "EVENT", "MESSAGE"];

fn event_cells(e: &Event, style: &Style) -> Vec<String> {
    let kind = serde_json::to_value(&e.kind).ok().and_then(|v| v["kind"].as_str().map(str::to_string));
    vec![
        e.id.to_string(),
        style.time(e.ts),
        e.service.clone().unwrap_or_else(|| "(daemon)".into()),
        kind.unwrap_or_default(),
        e.message.clone(),
    ]
}

/// `nanny events`: a header row and one row per event.
pub fn events_table(events: &[Event], style: &Style) -> String {
    let rows: Vec<Vec<String>> = events.iter().map(|e| event_cells(e, style)).collect();
    table(&EVENT_HEADERS, &rows)
}

/// One event of `events -f`, in fixed widths so the rows line up without
/// knowing what comes next.
pub fn event_row(e: &Event, style: &Style) -> String {
    let cells = event_cells(e, style);
    format!("{:>6}  {}  {:<20}  {:<16}  {}", cells[0], cells[1], cells[2], cells[3], cells[4])
}

/// The header of [`event_row`]s.
pub fn event_header(style: &Style) -> String {
    let time_width = style.time(Timestamp::UNIX_EPOCH).len();
    let [id, time, service, event, message] = EVENT_HEADERS;
    format!("{id:>6}  {time:<time_width$}  {service:<20}  {event:<16}  {message}")
}

/// Which service a log line is from, when lines of several are mixed:
/// its name padded to `width`, in the colour of its `index`.
pub struct Prefix<'a> {
    pub name: &'a str,
    pub index: usize,
    pub width: usize,
}

/// One log line: `[name | ]TIME STREAM LINE`.
pub fn log_line(line: &LogLine, prefix: Option<&Prefix>, style: &Style) -> String {
    let prefix = prefix
        .map(|p| format!("{} | ", style.paint(p.index, &format!("{:<w$}", p.name, w = p.width))))
        .unwrap_or_default();
    format!("{prefix}{} {:<6} {}", style.time(line.ts), line.stream, line.line)
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;

/// `nanny gpus`: the policy and source, one row per GPU with its holders,
/// then the queue.
pub fn gpus_text(g: &Gpus, style: &Style) -> String {
    let mut out = format!("policy: {}   GPUs from: {} ({})\n", g.policy, g.source, g.detail);
    if g.policy == "vram" {
        out.push_str(&format!("headroom: {} per GPU\n", bytes(g.headroom_bytes)));
    }
    if let Some(holder) = &g.holder {
        out.push_str(&format!("holder: {holder}\n"));
    }
    if !g.gpus.is_empty() {
        let rows: Vec<Vec<String>> = g
            .gpus
            .iter()
            .map(|gpu| {
                let holders: Vec<String> = gpu
                    .holders
                    .iter()
                    .map(|h| {
                        let measured = h.measured_bytes.map(|m| format!(", uses {}", bytes(m))).unwrap_or_default();
                        let over = if h.over { " OVER" } else { "" };
                        format!("{} ({}{measured}{over})", h.service, bytes(h.vram_bytes))
                    })
                    .collect();
                vec![
                    gpu.index.to_string(),
                    gpu.uuid.clone().unwrap_or_else(|| gpu.name.clone()),
                    bytes(gpu.total_bytes),
                    optional(gpu.used_bytes.map(bytes)),
                    bytes(gpu.free_bytes),
                    if gpu.foreign_bytes > 0 { bytes(gpu.foreign_bytes) } else { "-".into() },
                    or_dash(holders.join(", ")),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(&["GPU", "ID", "TOTAL", "USED", "FREE", "OTHERS", "HOLDERS"], &rows));
    }
    if !g.queue.is_empty() {
        let rows: Vec<Vec<String>> = g
            .queue
            .iter()
            .enumerate()
            .map(|(i, q)| {
                vec![
                    (i + 1).to_string(),
                    q.service.clone(),
                    format!("{} x {}", bytes(q.vram_bytes), q.gpus),
                    q.priority.to_string(),
                    optional(q.deadline.map(|d| style.time(d))),
                ]
            })
            .collect();
        out.push_str("\nwaiting:\n");
        out.push_str(&table(&["#", "SERVICE", "NEEDS", "PRIORITY", "UNTIL"], &rows));
    }
    out.trim_end().to_string()
}
