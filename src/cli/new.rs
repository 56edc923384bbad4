//! `nanny new NAME`: scaffold a service directory from the bundled template
//! (the same files as `examples/services/_template/`), on the first port
//! from the template's (8090) that no service in the directory uses and
//! nothing listens on now.

use std::collections::BTreeSet;
use std::path::Path;

use super::Failure;
use crate::discovery;
use crate::manifest::{self, Paths};

const TEMPLATE_MANIFEST: &str = include_str!("../../examples/services/_template/service.yaml");
const TEMPLATE_SERVER: &str = include_str!("../../examples/services/_template/server.py");
const TEMPLATE_NAME_LINE: &str = "name: my-service";
const TEMPLATE_PORT: u16 = 8090;

pub fn run(name: &str, services_dir: &Path) -> Result<(), Failure> {
    if !manifest::valid_name(name) {
        return Err(Failure::new(
            2,
            format!(
                "error: `{name}` is not a valid service name: use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit"
            ),
        ));
    }
    let dir = services_dir.join(name);
    if dir.exists() {
        return Err(Failure::new(1, format!("error: {} already exists", dir.display())));
    }
    let io_error = |e: std::io::Error| Failure::new(1, format!("error: cannot create {}: {e}", dir.display()));
    std::fs::create_dir_all(&dir).map_err(io_error)?;
    let port = free_port(services_dir).to_string();
    let manifest_text = TEMPLATE_MANIFEST
        .replacen(TEMPLATE_NAME_LINE, &format!("name: {name}"), 1)
        .replace(&TEMPLATE_PORT.to_string(), &port);
    std::fs::write(dir.join("service.yaml"), manifest_text).map_err(io_error)?;
    let server = TEMPLATE_SERVER.replace("my-service", name).replace(&TEMPLATE_PORT.to_string(), &port);
    std::fs::write(dir.join("server.py"), server).map_err(io_error)?;
    println!("created {}/service.yaml and server.py (port {port})", dir.display());
    println!(
        "next: edit the manifest (port, health_endpoint, command), check it with `nanny validate {}`,",
        services_dir.display()
    );
    println!("      then `nanny rediscover` and `nanny start {name}`");
    Ok(())
}

/// The first port from the template's on that no manifest in
/// `services_dir` names and nothing listens on now.
fn free_port(services_dir: &Path) -> u16 {
    let catalog = discovery::scan(services_dir, Paths::outside_allowed(true));
    let used: BTreeSet<u16> = catalog.services.values().flat_map(|m| crate::ports::of_manifest(m)).collect();
    (TEMPLATE_PORT..=u16::MAX)
        .find(|p| !used.contains(p) && crate::ports::listener(*p).is_none())
        .unwrap_or(TEMPLATE_PORT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn template_has_the_name_line_and_the_port_to_replace() {
        assert!(super::TEMPLATE_MANIFEST.lines().any(|l| l == super::TEMPLATE_NAME_LINE));
        assert!(super::TEMPLATE_MANIFEST.contains(&format!("port: {}", super::TEMPLATE_PORT)));
    }
}
