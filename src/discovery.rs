//! Discovery: `DIR/*/service.yaml` → a [`Catalog`] of valid manifests and the
//! invalid ones with their errors; and the pure diff between two catalogs
//! that `rediscover` reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::deps;
use crate::manifest::{self, MANIFEST_FILES, Manifest, ManifestError, Paths, Problem};

/// A manifest that could not be used, with every reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Invalid {
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub errors: Vec<InvalidProblem>,
}

/// One reason, as data (`line` and `column` are 0 when not known) and as
/// one line of text (`path:line:col: field `x`: message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct InvalidProblem {
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub line: u64,
    pub column: u64,
    pub field: Option<String>,
    pub message: String,
    pub text: String,
}

impl Invalid {
    /// A file with one problem found outside the parser (a duplicate name,
    /// a dependency).
    pub fn one(path: PathBuf, field: Option<&str>, message: String) -> Invalid {
        Invalid::new(path, field, vec![message])
    }

    /// A file with problems found outside the parser (the Compose tool's complaints).
    pub fn new(path: PathBuf, field: Option<&str>, messages: Vec<String>) -> Invalid {
        let problem = |message| Problem { field: field.map(str::to_string), line: 0, column: 0, message };
        ManifestError { path, problems: messages.into_iter().map(problem).collect() }.into()
    }

    /// Each problem as one line of text.
    pub fn texts(&self) -> Vec<String> {
        self.errors.iter().map(|e| e.text.clone()).collect()
    }
}

impl From<ManifestError> for Invalid {
    fn from(e: ManifestError) -> Self {
        let errors = e
            .problems
            .iter()
            .zip(e.lines())
            .map(|(p, text)| InvalidProblem {
                path: e.path.clone(),
                line: p.line,
                column: p.column,
                field: p.field.clone(),
                message: p.message.clone(),
                text,
            })
            .collect();
        Invalid { errors, path: e.path }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub services: BTreeMap<String, Arc<Manifest>>,
    pub invalid: Vec<Invalid>,
}

/// Scan `dir` one level deep. Directories starting with `_` or `.` are
/// skipped. A name claimed by two manifests is reported for both, and
/// neither is used; so is a service whose dependencies are unknown or
/// circular, or that needs the GPU and depends on another that does.
/// `paths` says whether manifests may name paths outside their directory.
pub fn scan(dir: &Path, paths: Paths) -> Catalog {
    let mut catalog = Catalog::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            catalog.invalid.push(Invalid::one(dir.to_path_buf(), None, format!("cannot read services directory: {e}")));
            return catalog;
        }
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_dir() || t.is_symlink()).unwrap_or(false))
        .filter(|e| !e.file_name().to_string_lossy().starts_with(['_', '.']))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut by_name: BTreeMap<String, Vec<Manifest>> = BTreeMap::new();
    for service_dir in dirs {
        let Some(path) = MANIFEST_FILES.iter().map(|f| service_dir.join(f)).find(|p| p.is_file()) else {
            continue;
        };
        match manifest::load(&path, paths) {
            Ok(m) => by_name.entry(m.name.clone()).or_default().push(m),
            Err(e) => catalog.invalid.push(e.into()),
        }
    }
    for (name, mut manifests) in by_name {
        if manifests.len() == 1 {
            catalog.services.insert(name, Arc::new(manifests.remove(0)));
            continue;
        }
        let paths: Vec<String> = manifests.iter().map(|m| m.manifest_path.display().to_string()).collect();
        for m in manifests {
            let others: Vec<&str> =
                paths.iter().map(String::as_str).filter(|p| *p != m.manifest_path.display().to_string()).collect();
            let message = format!(
                "service name '{name}' is also used by {}; names must be unique, so neither is loaded",
                others.join(", ")
            );
            catalog.invalid.push(Invalid::one(m.manifest_path, Some("name"), message));
        }
    }
    for (name, problem) in deps::problems(&catalog.services) {
        if let Some(m) = catalog.services.remove(&name) {
            catalog.invalid.push(Invalid::one(m.manifest_path.clone(), Some("depends_on"), problem.to_string()));
        }
    }
    catalog.invalid.sort_by(|a, b| a.path.cmp(&b.path));
    catalog
}

/// What changed between two scans, by service name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

pub fn diff(old: &Catalog, new: &Catalog) -> Diff {
    let mut d = Diff::default();
    for (name, manifest) in &new.services {
        match old.services.get(name) {
            None => d.added.push(name.clone()),
            Some(previous) if previous != manifest => d.changed.push(name.clone()),
            Some(_) => {}
        }
    }
    d.removed = old.services.keys().filter(|n| !new.services.contains_key(*n)).cloned().collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(dir: &Path, sub: &str, text: &str) {
        fs::create_dir_all(dir.join(sub)).unwrap();
        fs::write(dir.join(sub).join("service.yaml"), text).unwrap();
    }

    #[test]
    fn scans_skips_and_reports() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(d, "a", "name: a\ncommand: [true]\n");
        write(d, "_template", "name: t\ncommand: [true]\n");
        write(d, ".hidden", "name: h\ncommand: [true]\n");
        write(d, "broken", "name: b\ncommand: [true]\nbogus: 1\n");
        write(d, "dup1", "name: same\ncommand: [true]\n");
        write(d, "dup2", "name: same\ncommand: [true]\n");
        fs::create_dir_all(d.join("no-manifest")).unwrap();
        let c = scan(d, Paths::Confined);
        assert_eq!(c.services.keys().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(c.invalid.len(), 3, "{:?}", c.invalid);
        assert!(c.invalid[0].errors[0].text.contains("bogus"));
        assert!(c.invalid[1].errors[0].text.contains("dup2/service.yaml"), "{:?}", c.invalid[1]);
        assert!(c.invalid[2].errors[0].text.contains("dup1/service.yaml"), "{:?}", c.invalid[2]);
    }

    #[test]
    fn diff_names_added_removed_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(d, "keep", "name: keep\ncommand: [true]\n");
        write(d, "edit", "name: edit\ncommand: [true]\n");
        write(d, "gone", "name: gone\ncommand: [true]\n");
        let before = scan(d, Paths::Confined);
        write(d, "edit", "name: edit\ncommand: [false]\n");
        fs::remove_dir_all(d.join("gone")).unwrap();
        write(d, "new", "name: new\ncommand: [true]\n");
        let after = scan(d, Paths::Confined);
        assert_eq!(
            diff(&before, &after),
            Diff { added: vec!["new".into()], removed: vec!["gone".into()], changed: vec!["edit".into()] }
        );
    }

    #[test]
    fn a_gpu_service_depending_on_a_gpu_service_is_invalid() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(d, "llm", "name: llm\ncommand: [true]\ngpu_required: true\n");
        write(d, "chat", "name: chat\ncommand: [true]\ngpu_required: true\ndepends_on: [proxy]\n");
        write(d, "proxy", "name: proxy\ncommand: [true]\ndepends_on: [llm]\n");
        let c = scan(d, Paths::Confined);
        assert_eq!(c.services.keys().collect::<Vec<_>>(), vec!["llm", "proxy"]);
        assert_eq!(c.invalid.len(), 1, "{:?}", c.invalid);
        assert_eq!(c.invalid[0].path, d.join("chat/service.yaml"));
        assert_eq!(
            c.invalid[0].texts(),
            vec![format!(
                "{}: field `depends_on`: 'chat' needs the GPU and depends on 'llm' (through chat -> proxy -> llm), \
                 which also needs the GPU: under the one-GPU-service-at-a-time policy they can never run together",
                d.join("chat/service.yaml").display()
            )]
        );
    }

    #[test]
    fn paths_outside_a_service_directory_make_it_invalid() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(d, "a", "name: a\ncommand: [true]\nworking_dir: ../b\n");
        write(d, "b", "name: b\ncommand: [true]\n");
        let c = scan(d, Paths::Confined);
        assert_eq!(c.services.keys().collect::<Vec<_>>(), vec!["b"]);
        assert!(c.invalid[0].errors[0].text.contains("field `working_dir`: `../b`"), "{:?}", c.invalid);
        assert!(c.invalid[0].errors[0].text.contains("--allow-outside-paths"), "{:?}", c.invalid);
        let c = scan(d, Paths::Anywhere);
        assert_eq!(c.services.keys().collect::<Vec<_>>(), vec!["a", "b"], "{:?}", c.invalid);
    }
}
