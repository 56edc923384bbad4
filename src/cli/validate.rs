//! `nanny validate [DIR]`: check every manifest offline, as discovery would,
//! then each Compose service's file with the Compose tool's own
//! `config -q` when the tool is there.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::Failure;
use super::output::print_json;
use crate::discovery::{self, Invalid};
use crate::manifest::{Manifest, Paths, Runtime};
use crate::runtime::compose::{Tool, detect_tool};

/// How long one `config -q` may take.
const CONFIG_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(dir: &Path, paths: Paths, json: bool) -> Result<(), Failure> {
    if !dir.is_dir() {
        return Err(Failure::new(1, format!("error: {} is not a directory", dir.display())));
    }
    let mut catalog = discovery::scan(dir, paths);
    let composed: Vec<&Manifest> =
        catalog.services.values().map(|m| &**m).filter(|m| matches!(m.runtime, Runtime::Compose { .. })).collect();
    let mut note = None;
    let mut refused = Vec::new();
    if !composed.is_empty() {
        match detect_tool().await {
            Ok(tool) => {
                for manifest in composed {
                    if let Some(invalid) = check_compose_file(&tool, manifest).await {
                        refused.push((manifest.name.clone(), invalid));
                    }
                }
            }
            Err(_) => note = Some("no Compose tool (docker compose, docker-compose): Compose files were not checked"),
        }
    }
    for (name, invalid) in refused {
        catalog.services.remove(&name);
        catalog.invalid.push(invalid);
    }
    if json {
        let valid: Vec<_> =
            catalog.services.values().map(|m| json!({ "name": m.name, "path": m.manifest_path })).collect();
        print_json(&json!({ "valid": valid, "invalid": catalog.invalid, "note": note }));
    } else {
        for m in catalog.services.values() {
            println!("ok       {:<24} {}", m.name, m.manifest_path.display());
        }
        for invalid in &catalog.invalid {
            println!("INVALID  {}", invalid.path.display());
            for error in invalid.texts() {
                println!("  {error}");
            }
        }
        if let Some(note) = note {
            println!("note: {note}");
        }
    }
    match catalog.invalid.len() {
        0 => Ok(()),
        // The JSON above already says which.
        _ if json => Err(Failure::reported(1)),
        n => Err(Failure::new(1, format!("{n} invalid manifest(s) in {}", dir.display()))),
    }
}

/// `TOOL -f FILE [-p PROJECT] config -q`, in the file's directory: its
/// complaint, under the service's manifest, if it has one.
async fn check_compose_file(tool: &Tool, manifest: &Manifest) -> Option<Invalid> {
    let Runtime::Compose { compose_file, project } = &manifest.runtime else { return None };
    let mut command = tokio::process::Command::new(&tool.argv[0]);
    command.args(&tool.argv[1..]).arg("-f").arg(compose_file);
    if let Some(project) = project {
        command.args(["-p", project]);
    }
    command
        .args(["config", "-q"])
        .current_dir(compose_file.parent().unwrap_or(Path::new(".")))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let file = compose_file.display();
    let errors = match tokio::time::timeout(CONFIG_TIMEOUT, command.output()).await {
        Ok(Ok(output)) if output.status.success() => return None,
        Ok(Ok(output)) => {
            let text = String::from_utf8_lossy(&output.stderr);
            let lines: Vec<String> =
                text.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("{file}: {l}")).collect();
            if lines.is_empty() { vec![format!("{file}: `config -q` failed ({})", output.status)] } else { lines }
        }
        Ok(Err(e)) => vec![format!("{file}: cannot run `{}`: {e}", tool.argv.join(" "))],
        Err(_) => {
            vec![format!("{file}: `{} config -q` took longer than {} s", tool.argv.join(" "), CONFIG_TIMEOUT.as_secs())]
        }
    };
    Some(Invalid::new(manifest.manifest_path.clone(), Some("compose_file"), errors))
}
