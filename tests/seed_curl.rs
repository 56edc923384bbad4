//! The seed README's curl commands, run verbatim through `sh -c` against a test daemon.
//! Only `localhost:8080` (the daemon) and `localhost:8001` (my-service) are rewritten to the
//! test's ports; the service names are the seed's own. To read the HTTP status, `-sS -w`
//! output options are added after `curl` — they do not change the request.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

struct Seed {
    subs: Vec<(String, String)>,
    cwd: PathBuf,
}

impl Seed {
    fn adapt(&self, cmd: &str) -> String {
        let mut c = cmd.to_string();
        for (from, to) in &self.subs {
            c = c.replace(from, to);
        }
        c
    }

    fn sh(&self, script: &str) -> String {
        run_sh(&self.cwd, script)
    }

    /// Runs a seed curl command; returns (HTTP status, body as JSON or string).
    async fn curl(&self, cmd: &str) -> (u16, Value) {
        let adapted = self.adapt(cmd);
        assert!(adapted.starts_with("curl "), "{adapted}");
        let script = format!("curl -sS -w '\\n%{{http_code}}' {}", &adapted["curl ".len()..]);
        let cwd = self.cwd.clone();
        let out = tokio::task::spawn_blocking(move || run_sh(&cwd, &script)).await.unwrap();
        let (body, code) = out.rsplit_once('\n').unwrap_or_else(|| panic!("no status line in {out:?}"));
        let code: u16 = code.trim().parse().unwrap_or_else(|_| panic!("bad status line in {out:?}"));
        let v = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
        (code, v)
    }

    /// Runs a seed `curl ... | jq ...` pipeline; returns jq's output parsed as JSON.
    async fn curl_jq(&self, cmd: &str) -> Value {
        let adapted = self.adapt(cmd);
        let script = format!("curl -sS {}", &adapted["curl ".len()..]);
        let cwd = self.cwd.clone();
        let out = tokio::task::spawn_blocking(move || run_sh(&cwd, &script)).await.unwrap();
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("jq output is not JSON ({e}): {out}"))
    }
}

fn run_sh(cwd: &Path, script: &str) -> String {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).current_dir(cwd);
    for var in ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"] {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("run sh");
    assert!(
        out.status.success(),
        "command failed ({}):\n{script}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn seed_service(ws: &Workspace, name: &str) -> u16 {
    let svc = Svc::new(name).gpu().description(&format!("seed service {name}"));
    let port = svc.port.unwrap();
    // The seed's manifest shape, with `command` for the native runtime.
    ws.write_manifest(
        name,
        &format!(
            "name: {name}\n\
             description: {desc}\n\
             version: 1.0.0\n\
             \n\
             gpu_required: true\n\
             vram_gb: 8\n\
             \n\
             command: {cmd}\n\
             ports:\n  - \"{port}:{port}\"\n\
             \n\
             health_endpoint: http://localhost:{port}/health\n\
             health_timeout: 30\n\
             \n\
             tags:\n  - image-generation\n  - stable-diffusion\n",
            desc = svc.description,
            cmd = serde_json::to_string(&svc.command()).unwrap(),
        ),
    );
    port
}

fn need_tools() {
    for tool in ["curl", "jq", "sh", "cp"] {
        let ok = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().unwrap().status.success();
        assert!(ok, "`{tool}` is required by the seed flow test (.ci/run installs it)");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_readme_curl_flow() {
    need_tools();
    let ws = Workspace::new();
    seed_service(&ws, "minimal-sd-api");
    seed_service(&ws, "another-gpu-service");
    let my_port = seed_service(&ws, "my-service");
    let d = Daemon::start(&ws.services());
    let seed = Seed {
        subs: vec![
            ("localhost:8080".into(), format!("localhost:{}", d.port())),
            ("localhost:8001".into(), format!("localhost:{my_port}")),
        ],
        cwd: ws.services(),
    };

    // Quick start: check status.
    let (code, v) = seed.curl("curl http://localhost:8080/health").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "healthy", "{v}");

    let v = seed.curl_jq("curl http://localhost:8080/services | jq").await;
    assert_eq!(v["total"], 3, "{v}");
    assert!(v["gpu_service_running"].is_null(), "{v}");
    let sd = v["services"].as_array().unwrap().iter().find(|s| s["name"] == "minimal-sd-api").unwrap();
    for key in
        ["name", "description", "version", "gpu_required", "vram_gb", "ports", "health_endpoint", "tags", "status"]
    {
        assert!(sd.get(key).is_some(), "GET /services entry lacks `{key}`: {sd}");
    }
    assert_eq!(sd["status"], "stopped");
    assert_eq!(sd["tags"], serde_json::json!(["image-generation", "stable-diffusion"]));

    let v = seed.curl_jq("curl http://localhost:8080/services/minimal-sd-api | jq").await;
    assert_eq!(v["name"], "minimal-sd-api", "{v}");

    // Service control.
    let (code, v) = seed.curl("curl -X POST http://localhost:8080/services/minimal-sd-api/start").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["message"], "Service 'minimal-sd-api' started successfully", "{v}");
    assert_eq!(v["status"], "running", "{v}");
    assert!(v["health_endpoint"].as_str().is_some_and(|s| s.ends_with("/health")), "{v}");

    let v = seed.curl_jq("curl http://localhost:8080/services/minimal-sd-api/status | jq").await;
    assert_eq!(v["name"], "minimal-sd-api", "{v}");
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(v["is_running"], true, "{v}");
    assert_eq!(v["is_healthy"], true, "{v}");
    assert!(v["uptime"].as_str().is_some_and(is_uptime), "{v}");

    let (code, v) = seed.curl("curl http://localhost:8080/services/minimal-sd-api/logs?tail=50").await;
    assert_eq!(code, 200, "{v}");
    assert!(v["lines"].as_array().is_some_and(|l| l.len() <= 50), "{v}");

    // GPU arbitration example flow.
    let (code, v) = seed.curl("curl -X POST http://localhost:8080/services/another-gpu-service/start").await;
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["detail"], "GPU service 'minimal-sd-api' is already running", "{v}");
    assert_eq!(v["gpu_service_running"], "minimal-sd-api", "{v}");

    let (code, v) = seed
        .curl(
            r#"curl -X POST http://localhost:8080/services/another-gpu-service/start \
  -H "Content-Type: application/json" \
  -d '{"force": true}'"#,
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["message"], "Service 'another-gpu-service' started successfully", "{v}");
    assert_eq!(d.state_of("minimal-sd-api").await, "stopped");

    // Troubleshooting: "Can't start GPU service".
    let v = seed.curl_jq("curl http://localhost:8080/services | jq '.gpu_service_running'").await;
    assert_eq!(v, "another-gpu-service");

    // No Content-Type here (curl sends application/x-www-form-urlencoded): still JSON.
    let (code, v) = seed
        .curl(
            r#"curl -X POST http://localhost:8080/services/my-service/start \
  -d '{"force": true}'"#,
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(d.state_of("another-gpu-service").await, "stopped", "force without Content-Type must still force");
    let v = seed.curl_jq("curl http://localhost:8080/services | jq '.gpu_service_running'").await;
    assert_eq!(v, "my-service");

    // Troubleshooting: "Service health check fails".
    let (code, v) = seed.curl("curl http://localhost:8080/services/my-service/status").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["is_healthy"], true, "{v}");
    let (code, v) = seed.curl("curl http://localhost:8001/health").await;
    assert_eq!(code, 200, "my-service answers directly: {v}");
    let (code, v) = seed.curl("curl http://localhost:8080/services/my-service/logs?tail=50").await;
    assert_eq!(code, 200, "{v}");

    // Stop (the seed's command, then the same for the service actually running).
    let (code, v) = seed.curl("curl -X POST http://localhost:8080/services/minimal-sd-api/stop").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["message"], "Service 'minimal-sd-api' stopped successfully", "{v}");
    assert_eq!(v["status"], "stopped", "{v}");
    let (code, v) = seed.curl("curl -X POST http://localhost:8080/services/my-service/stop").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "stopped", "{v}");
    let v = seed.curl_jq("curl http://localhost:8080/services | jq '.gpu_service_running'").await;
    assert!(v.is_null(), "{v}");

    // Adding new services: copy the template, edit service.yaml, rediscover, verify.
    copy_tree(&examples_dir().join("_template"), &ws.services().join("_template"));
    seed.sh("cp -r _template my-new-service");
    edit_template_copy(&ws.services().join("my-new-service"), "my-new-service");
    let (code, v) = seed.curl("curl -X POST http://localhost:8080/rediscover").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(names(&v["added"]), vec!["my-new-service"], "{v}");
    let v = seed.curl_jq("curl http://localhost:8080/services | jq").await;
    assert_eq!(v["total"], 4, "{v}");
    assert!(v["services"].as_array().unwrap().iter().any(|s| s["name"] == "my-new-service"), "{v}");
    let (code, v) = seed.curl("curl -X POST http://localhost:8080/services/my-new-service/start").await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = seed.curl("curl -X POST http://localhost:8080/services/my-new-service/stop").await;
    assert_eq!(code, 200, "{v}");
}

/// "Update service.yaml with service details": new name and a free port.
fn edit_template_copy(dir: &Path, name: &str) {
    let p = dir.join("service.yaml");
    let port = free_port();
    let y = std::fs::read_to_string(&p)
        .unwrap()
        .replace("name: my-service", &format!("name: {name}"))
        .replace("8090", &port.to_string());
    std::fs::write(&p, y).unwrap();
}
