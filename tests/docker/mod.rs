//! Docker helpers for the Compose tests (`tests/compose.rs`): is the engine there, the local
//! test image (busybox httpd, built from `tests/fixtures/httpd-image/` with the host's static
//! busybox, no registry needed), a Compose service directory builder, a guard that always
//! removes a test's Compose project, and `docker inspect` of a project's containers.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// The test image every Compose test service runs.
pub const IMAGE: &str = "nanny-test-httpd:1";
/// An image no registry has (and none is reachable anyway).
pub const NO_SUCH_IMAGE: &str = "nanny-no-such-image:1";
pub const PROJECT_LABEL: &str = "com.docker.compose.project";
pub const WORKING_DIR_LABEL: &str = "com.docker.compose.project.working_dir";

// ---------------------------------------------------------------------------------------------
// Running docker / compose
// ---------------------------------------------------------------------------------------------

fn run(program: &str, args: &[&str], cwd: Option<&Path>) -> Output {
    run_env(program, args, cwd, &[])
}

fn run_env(program: &str, args: &[&str], cwd: Option<&Path>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).env_remove("COMPOSE_PROJECT_NAME").env_remove("COMPOSE_FILE");
    cmd.envs(env.iter().copied());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    cmd.output().unwrap_or_else(|e| panic!("cannot run `{program} {}`: {e}", args.join(" ")))
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `docker ARGS`, whatever its outcome.
pub fn docker(args: &[&str]) -> Output {
    run("docker", args, None)
}

/// `docker ARGS`, which must succeed; its stdout, trimmed.
pub fn docker_ok(args: &[&str]) -> String {
    let o = docker(args);
    assert!(o.status.success(), "`docker {}` failed ({}):\n{}", args.join(" "), o.status, text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The Compose tool as the daemon would pick it: the `docker compose` plugin, else
/// `docker-compose`. (program, leading args, name as `/health` reports it).
pub fn compose_tool() -> &'static (String, Vec<String>, String) {
    static TOOL: OnceLock<(String, Vec<String>, String)> = OnceLock::new();
    TOOL.get_or_init(|| {
        let plugin = Command::new("docker")
            .args(["compose", "version", "--short"])
            .stdin(Stdio::null())
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if plugin {
            ("docker".into(), vec!["compose".into()], "docker compose".into())
        } else {
            ("docker-compose".into(), vec![], "docker-compose".into())
        }
    })
}

/// `COMPOSE ARGS` run in `cwd`, whatever its outcome.
pub fn compose(cwd: &Path, args: &[&str]) -> Output {
    compose_env(cwd, args, &[])
}

/// `COMPOSE ARGS` run in `cwd` with `env` added (the variables a compose file interpolates),
/// whatever its outcome.
pub fn compose_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let (program, lead, _) = compose_tool();
    let mut all: Vec<&str> = lead.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    run_env(program, &all, Some(cwd), env)
}

/// `COMPOSE ARGS` in `cwd`, which must succeed; stdout and stderr together.
pub fn compose_ok(cwd: &Path, args: &[&str]) -> String {
    let o = compose(cwd, args);
    assert!(
        o.status.success(),
        "`compose {}` in {} failed ({}):\n{}",
        args.join(" "),
        cwd.display(),
        o.status,
        text(&o)
    );
    text(&o)
}

/// `COMPOSE version --short`.
pub fn compose_version() -> String {
    let (program, lead, _) = compose_tool();
    let mut all: Vec<&str> = lead.iter().map(String::as_str).collect();
    all.extend(["version", "--short"]);
    let o = run(program, &all, None);
    assert!(o.status.success(), "compose version failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

// ---------------------------------------------------------------------------------------------
// Availability and the test image
// ---------------------------------------------------------------------------------------------

fn in_ci() -> bool {
    std::env::var("CI").map(|v| !v.is_empty() && v != "false" && v != "0").unwrap_or(false)
}

/// Whether the Compose tests can run: the engine answers and a Compose tool exists. In CI
/// (`CI=true`) a missing Docker is a failure; locally the test is skipped with a message.
/// Also builds the test image (once per process).
pub fn available(test: &str) -> bool {
    static OK: OnceLock<Result<(), String>> = OnceLock::new();
    let ok = OK.get_or_init(|| {
        let info =
            Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).stdin(Stdio::null()).output();
        match info {
            Ok(o) if o.status.success() => {}
            Ok(o) => return Err(format!("`docker info` failed: {}", text(&o).trim())),
            Err(e) => return Err(format!("cannot run `docker info`: {e}")),
        }
        let (program, lead, name) = compose_tool();
        let v = Command::new(program).args(lead).args(["version", "--short"]).stdin(Stdio::null()).output();
        match v {
            Ok(o) if o.status.success() => Ok(()),
            _ => Err(format!("no Compose tool (`{name}`) works")),
        }
    });
    match ok {
        Ok(()) => {
            sweep_leftovers();
            build_image();
            true
        }
        Err(e) if in_ci() => panic!("Docker is required in CI (CI=true): {e}"),
        Err(e) => {
            eprintln!("SKIPPED {test}: Docker is not available here ({e})");
            false
        }
    }
}

/// The test process that owns project `name` (`nt-TAG-PID-N`, `nthand-PID-N`), if it is ours.
fn owner_pid(name: &str) -> Option<i32> {
    if !(name.starts_with("nt-") || name.starts_with("nthand-")) {
        return None;
    }
    let mut parts = name.rsplit('-');
    let _n: u64 = parts.next()?.parse().ok()?;
    parts.next()?.parse().ok()
}

/// Removes containers and networks of test projects whose test process is gone (a test run
/// that was killed, so its guards never ran). Once per process.
fn sweep_leftovers() {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(|| {
        let fmt = format!("{{{{.ID}}}} {{{{.Label \"{PROJECT_LABEL}\"}}}}");
        let key = format!("label={PROJECT_LABEL}");
        let dead = |line: &str| -> Option<String> {
            let (id, project) = line.split_once(' ')?;
            let pid = owner_pid(project.trim())?;
            (!Path::new(&format!("/proc/{pid}")).exists()).then(|| id.to_string())
        };
        let ps = docker(&["ps", "-a", "--filter", &key, "--format", &fmt]);
        for id in String::from_utf8_lossy(&ps.stdout).lines().filter_map(dead) {
            let _ = docker(&["rm", "-f", "-v", &id]);
        }
        let nets = docker(&["network", "ls", "--filter", &key, "--format", &fmt]);
        for id in String::from_utf8_lossy(&nets.stdout).lines().filter_map(dead) {
            let _ = docker(&["network", "rm", &id]);
        }
    });
}

/// The host's static busybox (Debian's busybox-static installs /bin/busybox).
fn busybox() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox", "/usr/local/bin/busybox"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("the Compose tests need a static busybox at /bin/busybox (apt-get install busybox-static)");
}

/// Builds `IMAGE` once per test process; a lock file keeps parallel test processes from
/// building at the same moment (the build is idempotent and takes a few seconds).
pub fn build_image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let lock_path = std::env::temp_dir().join("nanny-test-httpd-image.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", lock_path.display()));
        let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .unwrap_or_else(|(_, e)| panic!("flock {}: {e}", lock_path.display()));

        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/httpd-image");
        let ctx = tempfile::Builder::new().prefix("nanny-httpd-image-").tempdir().expect("tempdir");
        crate::common::copy_tree(&fixture, ctx.path());
        fs::copy(busybox(), ctx.path().join("busybox")).expect("copy busybox into the build context");
        let o = docker(&["build", "-q", "-t", IMAGE, &ctx.path().to_string_lossy()]);
        assert!(o.status.success(), "docker build of {IMAGE} failed:\n{}", text(&o));
    });
}

pub fn image_exists(image: &str) -> bool {
    docker(&["image", "inspect", image]).status.success()
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A Compose project name no other test (or test process) uses: `nt-TAG-PID-N`.
pub fn unique(tag: &str) -> String {
    format!("nt-{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst))
}

// ---------------------------------------------------------------------------------------------
// A Compose service directory
// ---------------------------------------------------------------------------------------------

/// A nanny service backed by a Compose project running the busybox httpd image.
#[derive(Clone, Debug)]
pub struct Web {
    /// The nanny service name.
    pub name: String,
    /// Directory name under services/.
    pub dir: String,
    /// `compose_project` in the manifest (None: Compose's default from the directory name).
    pub project: Option<String>,
    pub image: String,
    pub port: u16,
    pub gpu: bool,
    pub health: bool,
    /// The compose file's text, when not the generated one.
    pub compose_text: Option<String>,
    pub extra: String,
}

impl Web {
    /// A service `name` in directory `project`, with `compose_project: PROJECT`.
    pub fn new(name: &str, project: &str) -> Web {
        Web {
            name: name.into(),
            dir: project.into(),
            project: Some(project.into()),
            image: IMAGE.into(),
            port: crate::common::free_port(),
            gpu: false,
            health: true,
            compose_text: None,
            extra: String::new(),
        }
    }

    pub fn dir(mut self, dir: &str) -> Web {
        self.dir = dir.into();
        self
    }

    /// Leave `compose_project` out of the manifest.
    pub fn default_project(mut self) -> Web {
        self.project = None;
        self
    }

    pub fn image(mut self, image: &str) -> Web {
        self.image = image.into();
        self
    }

    pub fn gpu(mut self) -> Web {
        self.gpu = true;
        self
    }

    pub fn no_health(mut self) -> Web {
        self.health = false;
        self
    }

    pub fn compose_text(mut self, text: &str) -> Web {
        self.compose_text = Some(text.into());
        self
    }

    /// Extra manifest lines (must not repeat keys written by `manifest()`).
    pub fn extra(mut self, lines: &str) -> Web {
        crate::common::append_manifest_lines(&mut self.extra, lines);
        self
    }

    pub fn health_url(&self) -> String {
        format!("http://127.0.0.1:{}/health", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn compose_yaml(&self) -> String {
        if let Some(t) = &self.compose_text {
            return t.clone();
        }
        format!(
            "version: \"3.8\"\nservices:\n  web:\n    image: {}\n    ports:\n      - \"127.0.0.1:{}:8000\"\n",
            self.image, self.port
        )
    }

    pub fn manifest(&self) -> String {
        let mut y = format!(
            "name: {}\ndescription: busybox httpd in a Compose project\nversion: 1.0.0\ngpu_required: {}\n",
            self.name, self.gpu
        );
        if self.gpu {
            y.push_str("vram_gb: 2\n");
        }
        y.push_str("compose_file: docker-compose.yml\n");
        if let Some(p) = &self.project {
            y.push_str(&format!("compose_project: {p}\n"));
        }
        y.push_str(&format!("ports:\n  - \"{}:8000\"\n", self.port));
        if self.health {
            y.push_str(&format!("health_endpoint: {}\n", self.health_url()));
        }
        // Compose v1 takes 1-3 s per `up` on a small machine; leave room.
        y.push_str("health_timeout: 60\n");
        // busybox httpd is PID 1 and ignores SIGTERM: keep stops short.
        y.push_str("stop_timeout: 1\n");
        y.push_str(&self.extra);
        y
    }

    /// Writes `SERVICES/DIR/{service.yaml,docker-compose.yml}`; returns the guard that removes
    /// the project (`expected_project`: the name Compose will use).
    pub fn write(&self, services: &Path, expected_project: &str) -> Project {
        let dir = services.join(&self.dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("service.yaml"), self.manifest()).unwrap();
        fs::write(dir.join("docker-compose.yml"), self.compose_yaml()).unwrap();
        Project { name: expected_project.to_string(), dir }
    }
}

// ---------------------------------------------------------------------------------------------
// The cleanup guard
// ---------------------------------------------------------------------------------------------

/// A test's Compose project: removed (containers, networks, volumes) when dropped, even when
/// the test panics. Declare it before the daemon so the daemon is dropped (stopped) first.
pub struct Project {
    pub name: String,
    /// The directory holding `docker-compose.yml`.
    pub dir: PathBuf,
}

impl Project {
    pub fn file(&self) -> PathBuf {
        self.dir.join("docker-compose.yml")
    }

    /// `COMPOSE -p NAME ARGS` in the project directory.
    pub fn compose(&self, args: &[&str]) -> Output {
        let mut all = vec!["-p", self.name.as_str()];
        all.extend_from_slice(args);
        compose(&self.dir, &all)
    }

    /// `COMPOSE -p NAME ARGS`, which must succeed.
    pub fn compose_ok(&self, args: &[&str]) -> String {
        let mut all = vec!["-p", self.name.as_str()];
        all.extend_from_slice(args);
        compose_ok(&self.dir, &all)
    }

    /// The project's containers (running or not), sorted by name.
    pub fn containers(&self) -> Vec<Ctr> {
        containers_by_label(&format!("{PROJECT_LABEL}={}", self.name))
    }

    /// The project's only container (panics if there is not exactly one).
    pub fn only(&self) -> Ctr {
        let mut c = self.containers();
        assert_eq!(c.len(), 1, "project {} should have exactly one container: {c:?}", self.name);
        c.remove(0)
    }

    pub fn networks(&self) -> Vec<String> {
        let label = format!("label={PROJECT_LABEL}={}", self.name);
        let out = docker_ok(&["network", "ls", "-q", "--filter", &label]);
        out.lines().map(str::to_string).collect()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let file = self.file();
        if file.is_file() {
            let _ = self.compose(&["-f", &file.to_string_lossy(), "down", "-v", "--remove-orphans", "-t", "1"]);
        }
        // Whatever `down` could not remove (a broken compose file, a project named otherwise).
        let dir = self.dir.to_string_lossy().into_owned();
        for filter in [format!("label={PROJECT_LABEL}={}", self.name), format!("label={WORKING_DIR_LABEL}={dir}")] {
            let ids = docker(&["ps", "-aq", "--filter", &filter]);
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                let _ = docker(&["rm", "-f", "-v", id]);
            }
            let nets = docker(&["network", "ls", "-q", "--filter", &filter]);
            for id in String::from_utf8_lossy(&nets.stdout).split_whitespace() {
                let _ = docker(&["network", "rm", id]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Containers
// ---------------------------------------------------------------------------------------------

/// A container as `docker inspect` shows it.
#[derive(Clone, Debug)]
pub struct Ctr {
    pub id: String,
    pub name: String,
    pub running: bool,
    pub status: String,
    pub exit_code: i64,
    pub started_at: jiff::Timestamp,
    pub env: Vec<String>,
    pub project: String,
    /// The host pid of its main process (0 when it is not running).
    pub pid: u32,
}

impl Ctr {
    pub fn from_inspect(v: &Value) -> Ctr {
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
        Ctr {
            id: s("/Id"),
            name: s("/Name").trim_start_matches('/').to_string(),
            running: v.pointer("/State/Running").and_then(Value::as_bool).unwrap_or(false),
            status: s("/State/Status"),
            exit_code: v.pointer("/State/ExitCode").and_then(Value::as_i64).unwrap_or(-1),
            started_at: s("/State/StartedAt")
                .parse()
                .unwrap_or_else(|e| panic!("StartedAt of {} is not a timestamp ({e})", s("/Name"))),
            env: v
                .pointer("/Config/Env")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|e| e.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
            project: v
                .pointer(&format!("/Config/Labels/{}", PROJECT_LABEL.replace('/', "~1")))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            pid: v.pointer("/State/Pid").and_then(Value::as_u64).unwrap_or(0) as u32,
        }
    }

    /// The value of `KEY` in the container's environment.
    pub fn env_var(&self, key: &str) -> Option<String> {
        self.env.iter().find_map(|e| e.strip_prefix(key).and_then(|r| r.strip_prefix('=')).map(str::to_string))
    }

    /// Seconds since the container (last) started.
    pub fn age(&self) -> f64 {
        jiff::Timestamp::now().duration_since(self.started_at).as_secs_f64()
    }
}

/// `docker inspect ID` (None if it does not exist).
pub fn inspect(id: &str) -> Option<Ctr> {
    let o = docker(&["inspect", "--type", "container", id]);
    if !o.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&o.stdout).expect("docker inspect prints JSON");
    v.as_array().and_then(|a| a.first()).map(Ctr::from_inspect)
}

/// Containers carrying `LABEL=VALUE`, running or not, sorted by name.
pub fn containers_by_label(label: &str) -> Vec<Ctr> {
    let filter = format!("label={label}");
    let ids = docker_ok(&["ps", "-aq", "--filter", &filter]);
    let mut out: Vec<Ctr> = ids.split_whitespace().filter_map(inspect).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `docker ps -a` names carrying the project label (what a user would see).
pub fn ps_all_names(project: &str) -> Vec<String> {
    let filter = format!("label={PROJECT_LABEL}={project}");
    docker_ok(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]).lines().map(str::to_string).collect()
}
