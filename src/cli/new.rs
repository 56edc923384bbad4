//! `nanny new NAME`: scaffold a service directory from the bundled template
//! (the same files as `examples/services/_template/`).

use std::path::Path;

use super::Failure;
use crate::manifest;

const TEMPLATE_MANIFEST: &str = include_str!("../../examples/services/_template/service.yaml");
const TEMPLATE_SERVER: &str = include_str!("../../examples/services/_template/server.py");
const TEMPLATE_NAME_LINE: &str = "name: my-service";

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
    let manifest_text = TEMPLATE_MANIFEST.replacen(TEMPLATE_NAME_LINE, &format!("name: {name}"), 1);
    std::fs::write(dir.join("service.yaml"), manifest_text).map_err(io_error)?;
    std::fs::write(dir.join("server.py"), TEMPLATE_SERVER.replace("my-service", name)).map_err(io_error)?;
    println!("created {}/service.yaml and server.py", dir.display());
    println!(
        "next: edit the manifest (port, health_endpoint, command), check it with `nanny validate {}`,",
        services_dir.display()
    );
    println!("      then `nanny rediscover` and `nanny start {name}`");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn template_has_the_name_line_to_replace() {
        assert!(super::TEMPLATE_MANIFEST.lines().any(|l| l == super::TEMPLATE_NAME_LINE));
    }
}
