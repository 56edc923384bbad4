//! The test venv's Python (`NANNY_TEST_PYTHON`, made by `.ci/run`), for the third-party checkers
//! the tests run: the Prometheus text parser, the OpenAPI validator, the MCP client.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// The Python that can `import module`: the test venv's, else `python3`. `None` (the caller
/// skips) when it cannot, except in CI (`CI=true`), where that is a failure.
pub fn python_with(module: &str) -> Option<String> {
    let python = std::env::var("NANNY_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python).args(["-c", &format!("import {module}")]).status().is_ok_and(|s| s.success());
    needed(ok, &format!("{python} cannot import {module}")).then_some(python)
}

/// Whether what a test needs is `present`: `false` (the caller skips, saying `missing`) when it
/// is not, except in CI (`CI=true`), where that is a failure.
pub fn needed(present: bool, missing: &str) -> bool {
    if !present {
        let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!in_ci, "{missing}: .ci/run installs it");
        eprintln!("skipped: {missing}");
    }
    present
}

/// Run `tests/SCRIPT` with `input` on stdin.
pub fn run_script(python: &str, script: &str, input: &str) -> Output {
    let mut child = Command::new(python)
        .arg(format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python} {script}: {e}"));
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}
