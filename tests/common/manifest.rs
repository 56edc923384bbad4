//! The services directory of a test ([`Workspace`]), manifests for the `svc.py` fixture
//! ([`Svc`]), free ports for them and the fixture's control files.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use tempfile::TempDir;

/// Absolute path of the python fixture service.
pub fn fixture_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/svc.py")
}

/// Absolute path of the bundled example services.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/services")
}

/// A free port for a fixture service, taken below the kernel's ephemeral range: a port from
/// `bind(:0)` can be handed out again to any outgoing connection or `:0` listener (the test's own
/// HTTP polling, other daemons) before the service binds it, which makes a busy machine's
/// services fail at startup with "address already in use".
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(12000, 65535);
    let (start, span) = (10000u32, low - 10000);
    let seed = std::process::id() as u64 * 7919
        + std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::SeqCst) as u64;
        // A simple mix so concurrent test processes spread over the range.
        let x = (seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let port = (start + (x >> 33) as u32 % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found below {low}");
}

// ---------------------------------------------------------------------------------------------
// Services directory and manifests
// ---------------------------------------------------------------------------------------------

/// A temp directory holding `services/` plus scratch files (pidfiles, locks, ...).
pub struct Workspace {
    pub tmp: TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new().prefix("nanny-test-").tempdir().expect("tempdir");
        fs::create_dir_all(tmp.path().join("services")).unwrap();
        Workspace { tmp }
    }

    pub fn services(&self) -> PathBuf {
        self.tmp.path().join("services")
    }

    /// A scratch path inside the workspace (not inside services/).
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Writes `services/DIR/service.yaml` with the given text; returns the manifest path.
    pub fn write_manifest(&self, dir: &str, yaml: &str) -> PathBuf {
        let d = self.services().join(dir);
        fs::create_dir_all(&d).unwrap();
        let p = d.join("service.yaml");
        fs::write(&p, yaml).unwrap();
        p
    }

    pub fn remove_service_dir(&self, dir: &str) {
        fs::remove_dir_all(self.services().join(dir)).unwrap();
    }

    /// Copies the bundled examples into `services/`, each on a free port instead of its own
    /// (8101-8103); returns the ports by service name.
    pub fn add_examples(&self) -> std::collections::HashMap<&'static str, u16> {
        super::copy_tree(&examples_dir(), &self.services());
        let mut ports = std::collections::HashMap::new();
        for (name, old) in [("image-gen", 8101u16), ("llm-chat", 8102), ("embeddings", 8103)] {
            let p = self.services().join(name).join("service.yaml");
            let new = free_port();
            let yaml = fs::read_to_string(&p).unwrap().replace(&old.to_string(), &new.to_string());
            fs::write(&p, yaml).unwrap();
            ports.insert(name, new);
        }
        ports
    }

    /// Writes a fixture service; returns the spec back (with its port).
    pub fn add(&self, spec: Svc) -> Svc {
        self.write_manifest(&spec.name, &spec.yaml());
        spec
    }
}

/// A manifest for the python fixture service.
#[derive(Clone, Debug)]
pub struct Svc {
    pub name: String,
    pub port: Option<u16>,
    pub args: Vec<String>,
    pub gpu: bool,
    /// `vram_gb` of a GPU service.
    pub vram_gb: u32,
    pub health: bool,
    pub health_timeout: f64,
    pub stop_timeout: f64,
    pub description: String,
    pub extra: String,
}

impl Svc {
    /// A fixture service listening on a fresh free port, health checked at /health.
    pub fn new(name: &str) -> Self {
        Svc {
            name: name.to_string(),
            port: Some(free_port()),
            args: vec![],
            gpu: false,
            vram_gb: 4,
            health: true,
            health_timeout: 20.0,
            stop_timeout: 5.0,
            description: format!("test service {name}"),
            extra: String::new(),
        }
    }

    /// No port, no health check ("running" once it stayed up 1 s).
    pub fn no_port(mut self) -> Self {
        self.port = None;
        self.health = false;
        self
    }

    /// A GPU service declaring 4 GiB.
    pub fn gpu(mut self) -> Self {
        self.gpu = true;
        self
    }

    /// A GPU service declaring `gb` GiB.
    pub fn vram(mut self, gb: u32) -> Self {
        self.gpu = true;
        self.vram_gb = gb;
        self
    }

    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.args.push(a.as_ref().to_string_lossy().into_owned());
        self
    }

    pub fn args<I, S>(mut self, it: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        for a in it {
            self = self.arg(a);
        }
        self
    }

    pub fn health_timeout(mut self, s: f64) -> Self {
        self.health_timeout = s;
        self
    }

    pub fn stop_timeout(mut self, s: f64) -> Self {
        self.stop_timeout = s;
        self
    }

    pub fn description(mut self, d: &str) -> Self {
        self.description = d.to_string();
        self
    }

    /// Extra manifest lines (must not repeat keys written by `yaml()`).
    pub fn extra(mut self, lines: &str) -> Self {
        append_manifest_lines(&mut self.extra, lines);
        self
    }

    pub fn command(&self) -> Vec<String> {
        let mut cmd = vec!["python3".to_string(), fixture_script().to_string_lossy().into_owned()];
        if let Some(p) = self.port {
            cmd.push("--port".into());
            cmd.push(p.to_string());
        }
        cmd.extend(self.args.iter().cloned());
        cmd
    }

    pub fn health_url(&self) -> Option<String> {
        match (self.health, self.port) {
            (true, Some(p)) => Some(format!("http://127.0.0.1:{p}/health")),
            _ => None,
        }
    }

    pub fn yaml(&self) -> String {
        let mut y = String::new();
        y.push_str(&format!("name: {}\n", self.name));
        y.push_str(&format!("description: {}\n", self.description));
        y.push_str("version: 1.0.0\n");
        y.push_str(&format!("gpu_required: {}\n", self.gpu));
        if self.gpu {
            y.push_str(&format!("vram_gb: {}\n", self.vram_gb));
        }
        // JSON is valid YAML flow syntax.
        y.push_str(&format!("command: {}\n", serde_json::to_string(&self.command()).unwrap()));
        if let Some(url) = self.health_url() {
            y.push_str(&format!("health_endpoint: {url}\n"));
        }
        y.push_str(&format!("health_timeout: {}\n", self.health_timeout));
        y.push_str(&format!("stop_timeout: {}\n", self.stop_timeout));
        y.push_str(&self.extra);
        y
    }
    /// Writes `DIR/NAME/service.yaml`.
    pub fn write(&self, services_dir: &Path) -> Svc {
        let d = services_dir.join(&self.name);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("service.yaml"), self.yaml()).unwrap();
        self.clone()
    }
}

/// Appends `lines` to the extra lines of a manifest builder, ending them with a newline.
pub fn append_manifest_lines(extra: &mut String, lines: &str) {
    extra.push_str(lines);
    if !extra.ends_with('\n') {
        extra.push('\n');
    }
}

// ---------------------------------------------------------------------------------------------
// The fixture's control files
// ---------------------------------------------------------------------------------------------

/// Creates (or truncates) a control file for the fixture.
pub fn touch(path: &Path) {
    fs::write(path, b"x").unwrap();
}

pub fn remove(path: &Path) {
    let _ = fs::remove_file(path);
}

/// Lines of a `--starts` file (one pid per process start).
pub fn starts(path: &Path) -> Vec<i32> {
    fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
}
