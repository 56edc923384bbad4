//! Property tests of [`parse`]: whatever the text, it never panics, and
//! every problem it reports names a field or a position. A small seeded
//! generator (set `NANNY_PROPS_SEED` to replay a failure).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use super::{FIELDS, Paths, parse};

const CASES: usize = 256;

const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "0.5",
    "1e19",
    "-1e19",
    "1e308",
    "-1e308",
    "4e-324",
    "1e400",
    ".nan",
    ".inf",
    "-.inf",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "4294967296",
    "65536",
    "3600",
    "3601",
    "86400",
    "86401",
    "604800",
    "604801",
];
const DURATIONS: &[&str] = &[
    "0",
    "-1",
    "0.5",
    "1e19",
    "-1e19",
    "1e308",
    ".nan",
    "3601",
    "86401",
    "604801",
    "18446744073709551616",
    "-9223372036854775808",
    "\"24h\"",
    "\"25h\"",
    "\"7d\"",
    "8d",
    "500ms",
    "1.5m",
    "-5m",
    "5 parsecs",
    "\"1e19\"",
    "99999999999999999999999h",
    "\"0\"",
    "1.2.3s",
    "\"\"",
    "h",
];
const PATHS: &[&str] =
    &[".", "..", "../x", "/etc", "/svc/a/x", "a/../../b", "sub/x", "c.yml", "'../'", "\"\\0\"", "\"\"", "~", "./.."];
const URLS: &[&str] = &[
    "http://localhost:1/health",
    "https://localhost:8443/health",
    "http://",
    "http://[::1",
    "http://[::1]:80/",
    "ftp://x/",
    "tcp://:0",
    "tcp://h:99999",
    "tcp://a:b",
    "tcp://[::1]:8080",
    "tcp://h:1",
    "\"\"",
    "://",
];
const COMMANDS: &[&str] = &["[x]", "[]", "['']", "\"a 'b\"", "\"\"", "x y z", "[1, 2]", "[x, [y]]", "'\\'"];
const STRINGS: &[&str] = &[
    "a",
    "A",
    "../etc",
    "\"\"",
    "ünïcödé",
    "\"a\\u0000b\"",
    "SIGKILL",
    "TERM",
    "99",
    "0",
    "-1",
    "always",
    "on-failure",
    "never",
    "bogus",
    "a..b",
    "my_project",
    "-x",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
];
const BOOLS: &[&str] = &["true", "false", "yes", "1", "null"];
const LISTS: &[&str] = &["[]", "[a, b]", "[8000, true]", "['8000:8000']", "[[a]]", "a"];
const MAPS: &[&str] = &["{}", "{A: 1, B: x}", "{A: [1]}", "{'': x}", "{A: {B: C}}", "{A: null}"];
const DEPENDENCIES: &[&str] = &[
    "[]",
    "[b]",
    "[b, c]",
    "[a]",
    "[\"../x\"]",
    "{db: {condition: started}}",
    "{db: {condition: healthy}}",
    "{db: {condition: bogus}}",
    "{db: null}",
    "{db: {other: 1}}",
    "[b, b]",
    "{db: 1}",
];

/// The values that sit on the edges of what `field` accepts: huge,
/// negative, not numbers, paths that escape, URLs the probe cannot use.
fn edges(field: &str) -> &'static [&'static str] {
    match field {
        "gpu_required" | "autostart" | "pinned" => BOOLS,
        "vram_gb" | "gpus" | "port" | "health_failures" | "max_restarts" | "priority" => NUMBERS,
        "compose_file" | "working_dir" | "env_file" => PATHS,
        "health_endpoint" | "health_check_url" => URLS,
        "command" | "health_command" => COMMANDS,
        "ports" | "tags" => LISTS,
        "env" => MAPS,
        "depends_on" => DEPENDENCIES,
        f if f.ends_with("timeout") || f.ends_with("interval") || f.starts_with("restart_") => DURATIONS,
        _ => STRINGS,
    }
}

const PUNCTUATION: &[char] =
    &['\n', ' ', '\t', '-', ':', '#', '[', ']', '{', '}', ',', '&', '*', '!', '|', '>', '\'', '"', '%', '@', '?'];

struct Gen(fastrand::Rng);

impl Gen {
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.0.usize(..items.len())]
    }

    /// A YAML value in flow style: a scalar, or a list or map nesting more.
    fn value(&mut self, depth: u32) -> String {
        match self.0.u8(..10) {
            0 | 1 if depth < 4 => {
                let items: Vec<String> = (0..self.0.usize(..4)).map(|_| self.value(depth + 1)).collect();
                format!("[{}]", items.join(", "))
            }
            2 | 3 if depth < 4 => {
                let entries: Vec<String> = (0..self.0.usize(..4))
                    .map(|_| {
                        let key = match self.0.bool() {
                            true => self.pick(&FIELDS).to_string(),
                            false => self.pick(&["condition", "a", "db", "1", "? x", "started", "healthy"]).to_string(),
                        };
                        format!("{key}: {}", self.value(depth + 1))
                    })
                    .collect();
                format!("{{{}}}", entries.join(", "))
            }
            4 => self.text(12).replace(['\n', '#'], " "),
            _ => {
                let field = self.pick(&FIELDS);
                self.pick(edges(field)).to_string()
            }
        }
    }

    /// Up to `max` characters: ASCII, YAML punctuation, control and
    /// multi-byte characters.
    fn text(&mut self, max: usize) -> String {
        (0..self.0.usize(..=max))
            .map(|_| match self.0.u8(..6) {
                0 => self.0.char('\0'..='\u{7f}'),
                1 => self.0.char('\u{80}'..='\u{10ffff}'),
                2 | 3 => PUNCTUATION[self.0.usize(..PUNCTUATION.len())],
                _ => self.0.alphanumeric(),
            })
            .collect()
    }

    /// A manifest: a name and a runtime (mostly), then a few fields, each
    /// with an edge value of its kind (mostly) or any value; sometimes an
    /// unknown field, a repeated one or a block list.
    fn manifest(&mut self) -> String {
        let mut text = String::new();
        if self.0.u8(..8) != 0 {
            text.push_str(self.pick(&["name: a\n", "name: gpu-a\ngpu_required: true\n"]));
        }
        if self.0.u8(..8) != 0 {
            text.push_str(self.pick(&["command: [x]\n", "compose_file: c.yml\n"]));
        }
        let mut used = Vec::new();
        for _ in 0..self.0.usize(1..6) {
            let field = match self.0.u8(..20) {
                0 => self.pick(&["bogus", "Name", "health-timeout", "name"]),
                _ => self.pick(&FIELDS),
            };
            if used.contains(&field) || (text.contains(&format!("{field}:")) && self.0.u8(..10) != 0) {
                continue;
            }
            used.push(field);
            let value = match self.0.u8(..4) {
                0 => self.value(0),
                _ => self.pick(edges(field)).to_string(),
            };
            match self.0.u8(..10) {
                0 => text.push_str(&format!("{field}:\n  - {value}\n  - {}\n", self.value(2))),
                _ => text.push_str(&format!("{field}: {value}\n")),
            }
        }
        text
    }
}

/// What the files a manifest names resolve to, varied per case.
fn resolver(case: usize) -> fn(&Path) -> Option<PathBuf> {
    match case % 3 {
        0 => |p| Some(p.to_path_buf()),
        1 => |_| None,
        _ => |_| Some(PathBuf::from("/elsewhere")),
    }
}

/// Parses `text`; panics (with the text, for a failing case) if `parse`
/// panicked or returned a problem with neither a field nor a position.
fn check(seed: u64, case: usize, text: &str) {
    let paths = if case.is_multiple_of(2) { Paths::Confined } else { Paths::Anywhere };
    let resolve = resolver(case);
    let result = catch_unwind(AssertUnwindSafe(|| parse(Path::new("/svc/a/service.yaml"), text, paths, &resolve)));
    let replay = format!("NANNY_PROPS_SEED={seed} (case {case}), input:\n{text}\n---");
    match result {
        Err(_) => panic!("parse panicked; {replay}"),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            assert!(!e.problems.is_empty(), "an error without a problem; {replay}");
            for p in &e.problems {
                assert!(p.field.is_some() || p.line > 0, "{p:?} names no field and no position; {replay}");
            }
        }
    }
}

fn seed() -> u64 {
    std::env::var("NANNY_PROPS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..))
}

#[test]
fn arbitrary_text_never_panics_and_every_error_is_located() {
    let seed = seed();
    let mut g = Gen(fastrand::Rng::with_seed(seed));
    for case in 0..CASES {
        let text = match case % 2 {
            0 => String::from_utf8_lossy(&(0..g.0.usize(..200)).map(|_| g.0.u8(..)).collect::<Vec<_>>()).into_owned(),
            _ => g.text(200),
        };
        check(seed, case, &text);
    }
}

#[test]
fn structured_manifests_with_any_values_never_panic_and_every_error_names_its_field() {
    let seed = seed();
    let mut g = Gen(fastrand::Rng::with_seed(seed));
    for case in 0..CASES {
        let text = g.manifest();
        check(seed, case, &text);
    }
}
