//! The [`Checker`] that collects problems while a manifest is validated, and
//! the checks of single values: durations and counts within bounds, argv,
//! paths that exist and stay inside the service directory.

use std::ops::RangeInclusive;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::raw::{RawCommand, RawDuration, S};
use super::{Paths, Problem};

/// Answers the real (canonical) path of a path that exists, `None` for one
/// that does not.
pub type Resolve<'a> = &'a dyn Fn(&Path) -> Option<PathBuf>;

/// What a duration field accepts, and its value when absent.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limit {
    pub default: Duration,
    /// Whether 0 is refused.
    pub positive: bool,
    pub max: Duration,
}

pub(super) const MINUTE: u64 = 60;
pub(super) const HOUR: u64 = 60 * MINUTE;
pub(super) const DAY: u64 = 24 * HOUR;

impl Limit {
    pub const fn secs(default: u64, positive: bool, max: u64) -> Limit {
        Limit { default: Duration::from_secs(default), positive, max: Duration::from_secs(max) }
    }

    /// `secs` (written as `written`) as a duration within this limit.
    fn check(&self, secs: f64, written: &str) -> Result<Duration, String> {
        if secs.is_nan() {
            Err(format!("`{written}` is not a number of seconds"))
        } else if secs < 0.0 {
            Err(format!("`{written}` is negative; durations are 0 or more"))
        } else if secs == 0.0 && self.positive {
            Err("must be greater than 0".to_string())
        } else if secs > self.max.as_secs_f64() {
            Err(format!("`{written}` is too long (at most {})", human(self.max)))
        } else {
            Ok(Duration::from_secs_f64(secs))
        }
    }
}

/// A whole number of seconds as the shortest unit that writes it exactly.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if s.is_multiple_of(DAY) && s > DAY => format!("{}d", s / DAY),
        _ if s.is_multiple_of(HOUR) => format!("{}h", s / HOUR),
        _ if s.is_multiple_of(MINUTE) => format!("{}m", s / MINUTE),
        _ => format!("{s}s"),
    }
}

/// A number of seconds as YAML would show it (exponent for huge values).
fn written_seconds(secs: f64) -> String {
    if secs.abs() >= 1e9 { format!("{secs:e}s") } else { format!("{secs}s") }
}

/// The seconds in a duration string: a number (`1`, `0.5`) optionally
/// followed by a unit (`ms`, `s`, `m`, `h`, `d`).
pub(super) fn duration_secs(text: &str) -> Result<f64, String> {
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
        "d" => 86400.0,
        other => return Err(format!("unknown duration unit `{other}` (use ms, s, m, h or d)")),
    };
    Ok(value * scale)
}

/// Collects problems while a manifest is checked; knows the service
/// directory that relative paths start from.
pub(super) struct Checker<'a> {
    pub problems: Vec<Problem>,
    pub dir: PathBuf,
    paths: Paths,
    resolve: Resolve<'a>,
}

impl<'a> Checker<'a> {
    pub fn new(dir: &Path, paths: Paths, resolve: Resolve<'a>) -> Self {
        Checker { problems: Vec::new(), dir: dir.to_path_buf(), paths, resolve }
    }

    pub fn report<T>(&mut self, field: &str, at: &S<T>, message: impl Into<String>) {
        self.problems.push(Problem {
            field: Some(field.to_string()),
            line: at.referenced.line(),
            column: at.referenced.column(),
            message: message.into(),
        });
    }

    /// A problem of a field that is absent, so has no position.
    pub fn report_missing(&mut self, field: &str, message: impl Into<String>) {
        self.problems.push(Problem { field: Some(field.to_string()), line: 0, column: 0, message: message.into() });
    }

    pub fn duration(&mut self, field: &str, raw: &Option<S<RawDuration>>, limit: Limit) -> Duration {
        let Some(raw) = raw else { return limit.default };
        let checked = match &raw.value {
            RawDuration::Seconds(s) => limit.check(*s, &written_seconds(*s)),
            RawDuration::Text(t) => duration_secs(t).and_then(|s| limit.check(s, t.trim())),
        };
        checked.unwrap_or_else(|e| {
            self.report(field, raw, e);
            limit.default
        })
    }

    pub fn count(&mut self, field: &str, raw: &Option<S<i64>>, range: RangeInclusive<u32>, default: u32) -> u32 {
        let Some(raw) = raw else { return default };
        match u32::try_from(raw.value) {
            Ok(n) if range.contains(&n) => n,
            _ => {
                let (min, max) = range.into_inner();
                self.report(field, raw, format!("must be a whole number from {min} to {max}, not {}", raw.value));
                default
            }
        }
    }

    pub fn argv(&mut self, field: &str, raw: &S<RawCommand>) -> Vec<String> {
        let argv = match &raw.value {
            RawCommand::List(list) => list.clone(),
            RawCommand::Line(line) => match shell_words::split(line) {
                Ok(words) => words,
                Err(e) => {
                    self.report(field, raw, format!("cannot split `{line}` into words: {e}"));
                    return Vec::new();
                }
            },
        };
        if argv.first().is_none_or(|program| program.is_empty()) {
            self.report(field, raw, "must name a program to run");
        }
        argv
    }

    /// `raw` resolved against the service directory: it must exist, and
    /// (unless [`Paths::Anywhere`]) stay inside the directory, as written
    /// and once symlinks are resolved.
    pub fn path(&mut self, field: &str, raw: &S<String>) -> PathBuf {
        let path = self.dir.join(&raw.value);
        let real = (self.resolve)(&path);
        if self.paths == Paths::Confined && !self.inside(&raw.value, real.as_deref()) {
            let message = format!(
                "`{}` ({}) is outside the service directory {}; paths must stay inside it \
                 unless the daemon runs with --allow-outside-paths",
                raw.value,
                real.as_deref().unwrap_or(&path).display(),
                self.dir.display(),
            );
            self.report(field, raw, message);
        } else if real.is_none() {
            self.report(field, raw, format!("{} does not exist", path.display()));
        }
        path
    }

    fn inside(&self, written: &str, real: Option<&Path>) -> bool {
        let written = Path::new(written);
        let as_written = match written.is_absolute() {
            true => written.strip_prefix(&self.dir).is_ok_and(|rest| !climbs_out(rest)),
            false => !climbs_out(written),
        };
        let resolved = match (real, (self.resolve)(&self.dir)) {
            (Some(real), Some(real_dir)) => real.starts_with(real_dir),
            _ => true,
        };
        as_written && resolved
    }
}

/// Whether a relative path leaves the directory it starts from (`a/../..`).
fn climbs_out(relative: &Path) -> bool {
    let mut depth = 0usize;
    for component in relative.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return true,
            },
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}
