//! The bundled example services validate, and run under the daemon.

mod common;

use std::fs;

use common::*;
use nanny::manifest::FIELDS;
use serde_json::json;

#[test]
fn bundled_examples_validate() {
    let dir = examples_dir();
    let out = cli(None, &["validate", dir.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out}");
    for name in ["image-gen", "llm-chat", "embeddings"] {
        assert!(dir.join(name).join("service.yaml").is_file(), "{name}");
    }
}

#[test]
fn template_documents_every_manifest_field() {
    let yaml = fs::read_to_string(examples_dir().join("_template/service.yaml")).unwrap();
    assert!(yaml.lines().any(|l| l == "name: my-service"), "`nanny new` replaces this exact line");
    for f in FIELDS {
        let present = yaml.lines().any(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.starts_with(&format!("{f}:"))
        });
        assert!(present, "template lacks field `{f}`");
    }
    // Copied and renamed, the template is a valid service.
    let ws = Workspace::new();
    copy_tree(&examples_dir().join("_template"), &ws.services().join("copied"));
    let p = ws.services().join("copied/service.yaml");
    fs::write(&p, yaml.replace("name: my-service", "name: copied")).unwrap();
    let out = cli(None, &["validate", ws.services().to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bundled_examples_run_under_the_daemon() {
    let ws = Workspace::new();
    let ports = ws.add_examples();
    let d = Daemon::start(&ws.services());
    let list = d.services().await;
    assert_eq!(list["total"], 3, "_template is skipped: {list}");
    assert!(list["invalid"].as_array().is_none_or(|a| a.is_empty()), "{list}");
    let by_name = |n: &str| list["services"].as_array().unwrap().iter().find(|s| s["name"] == n).cloned().unwrap();
    assert_eq!(by_name("image-gen")["gpu_required"], true);
    assert_eq!(by_name("image-gen")["tags"], json!(["image-generation"]));
    assert_eq!(by_name("llm-chat")["vram_gb"].as_f64(), Some(12.0));
    assert_eq!(by_name("embeddings")["gpu_required"], false);

    let http = http_client();

    d.start_ok("embeddings").await;
    let r: serde_json::Value = http
        .post(format!("http://127.0.0.1:{}/embed", ports["embeddings"]))
        .json(&json!({"input": ["hello"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["data"].as_array().unwrap().len(), 1, "{r}");

    d.start_ok("image-gen").await;
    let r = http
        .post(format!("http://127.0.0.1:{}/generate", ports["image-gen"]))
        .json(&json!({"prompt": "a cat"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let (code, v) = d.start_svc("llm-chat").await;
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["gpu_service_running"], "image-gen");
    let (code, v) = d.start_forced("llm-chat").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(d.state_of("image-gen").await, "stopped");
    let r: serde_json::Value = http
        .post(format!("http://127.0.0.1:{}/chat", ports["llm-chat"]))
        .json(&json!({"messages": [{"role": "user", "content": "ping"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["message"]["content"].as_str().unwrap().contains("ping"), "{r}");

    // Each request is logged to stdout and captured.
    wait_until(std::time::Duration::from_secs(10), "llm-chat request lines are logged", || async {
        d.log_text("llm-chat").await.iter().any(|l| l.contains("POST /chat"))
    })
    .await;
    let img_logs = d.log_text("image-gen").await;
    assert!(img_logs.iter().any(|l| l.contains("SIGTERM")), "image-gen exits cleanly on SIGTERM: {img_logs:?}");
    assert_eq!(d.status("image-gen").await["last_exit"]["code"], 0);

    let pid = pid_of(&d.status("llm-chat").await);
    d.stop_ok("llm-chat").await;
    d.stop_ok("embeddings").await;
    assert!(!pid_alive(pid));
}
