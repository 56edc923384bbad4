//! Alerts: webhooks and command hooks, configured in the daemon's config
//! file (`nanny.yaml`, see [`HooksFile`]). Each hook has an event filter
//! (kinds, services, tags) and a bounded queue of its own with a worker that
//! delivers, retrying with backoff; supervision only ever pushes onto the
//! queue (a full queue drops the event, counted and logged), so a slow or
//! dead endpoint never slows a start. Webhooks POST JSON (the event and the
//! service's status), signed with HMAC-SHA256 when a secret is set; command
//! hooks run a program (no shell) with the same JSON on stdin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use crate::daemon::Daemon;
use crate::daemon::views::StatusView;
use crate::events::{Event, EventKind};
use crate::manifest::parse_duration;

/// Events waiting for one hook; beyond this, new ones are dropped.
const QUEUE: usize = 1000;
/// The header carrying `sha256=HEX`, the HMAC-SHA256 of the body.
pub const SIGNATURE_HEADER: &str = "X-Nanny-Signature";

/// The daemon's config file: `webhooks:` and `commands:` lists, and the
/// declared GPUs (`gpus: ["0:24GiB"]`, used when `--gpu` gives none).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksFile {
    #[serde(default)]
    pub webhooks: Vec<WebhookSpec>,
    #[serde(default)]
    pub commands: Vec<CommandSpec>,
    #[serde(default)]
    pub gpus: Vec<String>,
}

/// Which events a hook wants; every list empty (or absent) means all.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wanted {
    /// Event kinds (`failed`, `unhealthy`, `exited`, …), plus `restarted`
    /// (a start by the restart policy) and `preempted` (`gpu_preempted`).
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub services: Vec<String>,
    /// Services with any of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub name: String,
    pub url: String,
    #[serde(flatten)]
    pub wanted: Wanted,
    /// Signs each body (`X-Nanny-Signature: sha256=HEX`).
    pub secret: Option<String>,
    /// Attempts after the first failed one (1 s, 2 s, 4 s … apart, at most 60 s).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Per attempt; `5s` by default.
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    pub name: String,
    /// Program and arguments; the event's JSON comes on stdin.
    pub command: Vec<String>,
    #[serde(flatten)]
    pub wanted: Wanted,
    pub timeout: Option<String>,
}

fn default_retries() -> u32 {
    5
}

/// Aliases users reach for, and the kinds they stand for.
const ALIASES: [(&str, &str); 2] = [("restarted", "starting"), ("preempted", "gpu_preempted")];

const KINDS: [&str; 20] = [
    "daemon_started",
    "daemon_stopping",
    "discovered",
    "removed",
    "manifest_changed",
    "invalid",
    "starting",
    "adopted",
    "healthy",
    "unhealthy",
    "exited",
    "backoff",
    "failed",
    "stopping",
    "stopped",
    "gpu_preempted",
    "gpu_over_use",
    "waiting",
    "stop_timed_out",
    "orphan_killed",
];

impl HooksFile {
    /// Read and check `path`; a missing file is no hooks at all.
    pub fn load(path: &Path) -> Result<HooksFile, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HooksFile::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let file: HooksFile = serde_saphyr::from_str(&text).map_err(|e| {
            let message = e.to_string();
            format!("{}: {}", path.display(), message.lines().next().unwrap_or_default().trim_start_matches("error: "))
        })?;
        file.check().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(file)
    }

    fn check(&self) -> Result<(), String> {
        for gpu in &self.gpus {
            crate::gpu::inventory::Declared::parse(gpu).map_err(|e| format!("gpus: {e}"))?;
        }
        let mut names = std::collections::BTreeSet::new();
        let wanted = self
            .webhooks
            .iter()
            .map(|w| (&w.name, &w.wanted))
            .chain(self.commands.iter().map(|c| (&c.name, &c.wanted)));
        for (name, wanted) in wanted {
            if !names.insert(name) {
                return Err(format!("two hooks are named `{name}`"));
            }
            for kind in &wanted.events {
                if !KINDS.contains(&kind.as_str()) && !ALIASES.iter().any(|(alias, _)| alias == kind) {
                    return Err(format!(
                        "hook `{name}`: unknown event kind `{kind}` (one of {}, restarted, preempted)",
                        KINDS.join(", ")
                    ));
                }
            }
        }
        for hook in &self.webhooks {
            if !hook.url.starts_with("http://") {
                return Err(format!(
                    "webhook `{}`: url `{}` must start with http:// (no TLS in this build)",
                    hook.name, hook.url
                ));
            }
            timeout(&hook.timeout).map_err(|e| format!("webhook `{}`: timeout: {e}", hook.name))?;
        }
        for hook in &self.commands {
            if hook.command.is_empty() {
                return Err(format!("command hook `{}`: empty command", hook.name));
            }
            timeout(&hook.timeout).map_err(|e| format!("command hook `{}`: timeout: {e}", hook.name))?;
        }
        Ok(())
    }
}

fn timeout(text: &Option<String>) -> Result<Duration, String> {
    match text {
        None => Ok(Duration::from_secs(5)),
        Some(t) => parse_duration(t).and_then(|d| match d.is_zero() || d > Duration::from_secs(300) {
            true => Err(format!("`{t}` must be more than 0 and at most 5m")),
            false => Ok(d),
        }),
    }
}

impl Wanted {
    fn matches(&self, event: &Event, tags: &[String]) -> bool {
        let kind = event.kind.name();
        let kind_ok = self.events.is_empty()
            || self.events.iter().any(|wanted| match ALIASES.iter().find(|(alias, _)| alias == wanted) {
                Some((_, "starting")) => matches!(event.kind, EventKind::Starting { automatic: true, .. }),
                Some((_, real)) => kind == *real,
                None => kind == *wanted,
            });
        let service = event.service.as_deref();
        let service_ok = self.services.is_empty() || service.is_some_and(|s| self.services.iter().any(|w| w == s));
        let tags_ok = self.tags.is_empty() || tags.iter().any(|t| self.tags.contains(t));
        kind_ok && service_ok && tags_ok
    }
}

/// How one hook delivers.
#[derive(Clone)]
enum Target {
    Web { url: String, secret: Option<String>, retries: u32, timeout: Duration },
    Command { argv: Vec<String>, timeout: Duration },
}

/// A payload for a hook's worker, with whom to tell the outcome (a test delivery).
type Job = (Value, Option<oneshot::Sender<Result<(), String>>>);

/// One configured hook: its filter and its queue.
struct Hook {
    wanted: Wanted,
    queue: mpsc::Sender<Job>,
}

/// Every hook of the daemon, by name.
#[derive(Clone, Default)]
pub struct Hooks {
    hooks: Arc<BTreeMap<String, Hook>>,
}

impl Hooks {
    /// Start one worker per hook; deliveries are counted in `d.metrics`.
    pub fn start(file: HooksFile, d: &Daemon) -> Hooks {
        let http = reqwest::Client::builder().no_proxy().build().expect("a client without TLS always builds");
        let mut hooks = BTreeMap::new();
        let targets = file
            .webhooks
            .into_iter()
            .map(|w| {
                let timeout = timeout(&w.timeout).unwrap_or(Duration::from_secs(5));
                (w.name, w.wanted, Target::Web { url: w.url, secret: w.secret, retries: w.retries, timeout })
            })
            .chain(file.commands.into_iter().map(|c| {
                let timeout = timeout(&c.timeout).unwrap_or(Duration::from_secs(5));
                (c.name, c.wanted, Target::Command { argv: c.command, timeout })
            }));
        for (name, wanted, target) in targets {
            let (queue, jobs) = mpsc::channel(QUEUE);
            tokio::spawn(work(name.clone(), target, jobs, http.clone(), d.metrics.clone()));
            hooks.insert(name, Hook { wanted, queue });
        }
        Hooks { hooks: Arc::new(hooks) }
    }

    pub fn names(&self) -> Vec<String> {
        self.hooks.keys().cloned().collect()
    }

    /// Hand `event` to the hooks that want it.
    pub fn dispatch(&self, d: &Daemon, event: &Event) {
        if self.hooks.is_empty() {
            return;
        }
        let snap = event.service.as_deref().and_then(|s| d.service(s).ok()).map(|h| h.snapshot());
        let tags = snap.as_ref().map(|s| s.manifest.tags.clone()).unwrap_or_default();
        let mut payload = None;
        for (name, hook) in self.hooks.iter() {
            if !hook.wanted.matches(event, &tags) {
                continue;
            }
            let payload = payload.get_or_insert_with(|| {
                let status =
                    snap.as_ref().map(|s| StatusView::of(s, event.service.as_deref().and_then(|n| d.usage.get(n))));
                json!({ "event": event, "service": status })
            });
            if hook.queue.try_send((payload.clone(), None)).is_err() {
                tracing::warn!(hook = name, "the hook's queue is full: event {} dropped", event.id);
                d.metrics.delivery(name, "dropped");
            }
        }
    }

    /// Deliver a test event to `name` now and say how it went.
    pub async fn test(&self, name: &str) -> Option<Result<(), String>> {
        let hook = self.hooks.get(name)?;
        let (tell, told) = oneshot::channel();
        let payload = json!({
            "event": { "id": 0, "ts": jiff::Timestamp::now(), "service": null, "kind": "test",
                       "message": format!("a test delivery to hook `{name}`") },
            "service": null,
        });
        if hook.queue.send((payload, Some(tell))).await.is_err() {
            return Some(Err("the hook's worker is gone".into()));
        }
        Some(told.await.unwrap_or_else(|_| Err("the hook's worker is gone".into())))
    }
}

/// Deliver a hook's jobs one after another.
async fn work(
    name: String,
    target: Target,
    mut jobs: mpsc::Receiver<Job>,
    http: reqwest::Client,
    metrics: crate::metrics::Metrics,
) {
    while let Some((payload, tell)) = jobs.recv().await {
        let body = payload.to_string();
        let outcome = match &target {
            Target::Web { url, secret, retries, timeout } => {
                post(&http, url, secret.as_deref(), &body, *retries, *timeout).await
            }
            Target::Command { argv, timeout } => run(argv, &body, *timeout).await,
        };
        match &outcome {
            Ok(()) => metrics.delivery(&name, "delivered"),
            Err(e) => {
                tracing::warn!(hook = name, "delivery failed: {e}");
                metrics.delivery(&name, "failed");
            }
        }
        if let Some(tell) = tell {
            let _ = tell.send(outcome);
        }
    }
}

/// `sha256=HEX` of `body` keyed with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    secret: Option<&str>,
    body: &str,
    retries: u32,
    timeout: Duration,
) -> Result<(), String> {
    let mut wait = Duration::from_secs(1);
    let mut attempt = 0;
    loop {
        let mut request =
            http.post(url).timeout(timeout).header("content-type", "application/json").body(body.to_string());
        if let Some(secret) = secret {
            request = request.header(SIGNATURE_HEADER, signature(secret, body.as_bytes()));
        }
        let error = match request.send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => crate::health::error_chain(&e),
        };
        if attempt == retries {
            return Err(format!("{url}: {error} (after {} attempts)", attempt + 1));
        }
        attempt += 1;
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(60));
    }
}

async fn run(argv: &[String], body: &str, timeout: Duration) -> Result<(), String> {
    let mut command = tokio::process::Command::new(&argv[0]);
    let mut child = crate::runtime::scrub_env(&mut command)
        .args(&argv[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run `{}`: {e}", argv[0]))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(body.as_bytes()).await;
    }
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("`{}` {status}", argv[0])),
        Ok(Err(e)) => Err(format!("`{}`: {e}", argv[0])),
        Err(_) => Err(format!("`{}` did not finish within {}s", argv[0], timeout.as_secs())),
    }
}

/// Where the config file is by default: `nanny.yaml` beside the state dir.
pub fn default_path(state_dir: &Path) -> PathBuf {
    state_dir.parent().unwrap_or(Path::new(".")).join("nanny.yaml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        let sig = signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(sig, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn config_errors_name_the_hook_and_the_problem() {
        let check =
            |text: &str| serde_saphyr::from_str::<HooksFile>(text).map_err(|e| e.to_string()).and_then(|f| f.check());
        assert!(check("webhooks:\n  - {name: a, url: 'http://x/h', events: [failed, restarted]}\n").is_ok());
        let e = check("webhooks:\n  - {name: a, url: 'http://x/h', events: [faild]}\n").unwrap_err();
        assert!(e.contains("unknown event kind `faild`"), "{e}");
        let e = check("webhooks:\n  - {name: a, url: 'https://x/h'}\n").unwrap_err();
        assert!(e.contains("http://"), "{e}");
        let e = check("commands:\n  - {name: a, command: [x]}\n  - {name: a, command: [y]}\n").unwrap_err();
        assert!(e.contains("two hooks are named `a`"), "{e}");
        assert!(check("webhook: []\n").unwrap_err().contains("unknown field"));
    }
}
