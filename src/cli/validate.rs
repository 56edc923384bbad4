//! `nanny validate [DIR]`: check every manifest offline, as discovery would.

use std::path::Path;

use serde_json::json;

use super::Failure;
use super::output::print_json;
use crate::discovery;
use crate::manifest::Paths;

pub fn run(dir: &Path, paths: Paths, json: bool) -> Result<(), Failure> {
    if !dir.is_dir() {
        return Err(Failure::new(1, format!("error: {} is not a directory", dir.display())));
    }
    let catalog = discovery::scan(dir, paths);
    if json {
        let valid: Vec<_> =
            catalog.services.values().map(|m| json!({ "name": m.name, "path": m.manifest_path })).collect();
        print_json(&json!({ "valid": valid, "invalid": catalog.invalid }));
    } else {
        for m in catalog.services.values() {
            println!("ok       {:<24} {}", m.name, m.manifest_path.display());
        }
        for invalid in &catalog.invalid {
            println!("INVALID  {}", invalid.path.display());
            for error in &invalid.errors {
                println!("  {error}");
            }
        }
    }
    match catalog.invalid.len() {
        0 => Ok(()),
        n => Err(Failure::new(1, format!("{n} invalid manifest(s) in {}", dir.display()))),
    }
}
