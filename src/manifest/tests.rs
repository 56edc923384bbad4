//! Unit tests of the manifest parser.

use super::*;
use check::duration_secs;

/// Every path exists and is its own real path.
fn exists(p: &Path) -> Option<PathBuf> {
    Some(p.to_path_buf())
}

fn parse_ok(text: &str) -> Manifest {
    parse(Path::new("/svc/a/service.yaml"), text, Paths::Confined, &exists).expect("valid manifest")
}

fn parse_err(text: &str) -> Vec<String> {
    parse(Path::new("/svc/a/service.yaml"), text, Paths::Confined, &exists).expect_err("invalid manifest").lines()
}

#[test]
fn seed_manifest_parses_with_defaults() {
    let m = parse_ok(
        "name: minimal-sd-api\ndescription: Stable Diffusion image generation\nversion: 1.0.0\n\
         gpu_required: true\nvram_gb: 8\ncompose_file: docker-compose.yml\nports:\n  - \"8000:8000\"\n\
         health_endpoint: http://localhost:8000/health\nhealth_timeout: 30\ntags: [image-generation]\n",
    );
    assert_eq!(m.name, "minimal-sd-api");
    assert_eq!(m.version, "1.0.0");
    assert!(m.gpu_required);
    assert_eq!(m.vram_gb, 8.0);
    assert_eq!(m.ports, vec!["8000:8000"]);
    assert_eq!(m.health_endpoint_string().as_deref(), Some("http://localhost:8000/health"));
    assert_eq!(m.runtime, Runtime::Compose { compose_file: PathBuf::from("/svc/a/docker-compose.yml"), project: None });
    assert_eq!(m.restart, RestartPolicy::OnFailure);
    assert_eq!(m.restart_delay, Duration::from_secs(1));
    assert_eq!(m.max_restarts, 10);
    assert_eq!(m.stop_signal, Signal::SIGTERM);
    assert_eq!(m.health_failures, 3);
}

#[test]
fn service_manager_seed_fields_and_aliases() {
    let m = parse_ok(
        "name: my_service\ncommand: python my_service.py --port 8080\nport: 8080\n\
         health_check_url: http://localhost:8080/health\nrestart_delay: 5\nmax_restarts: 10\n\
         env: {A: 1, B: x}\nstop_signal: INT\nrestart_delay_max: 2m\nrestart_window: 500ms\n\
         depends_on: {db: {condition: started}, cache: null}\n",
    );
    let Runtime::Native { command, env, working_dir, .. } = &m.runtime else { panic!() };
    assert_eq!(command, &["python", "my_service.py", "--port", "8080"]);
    assert_eq!(env["A"], "1");
    assert_eq!(working_dir, Path::new("/svc/a"));
    assert_eq!(m.port, Some(8080));
    assert_eq!(m.health_endpoint_string().as_deref(), Some("http://localhost:8080/health"));
    assert_eq!(m.restart_delay, Duration::from_secs(5));
    assert_eq!(m.restart_delay_max, Duration::from_secs(120));
    assert_eq!(m.restart_window, Duration::from_millis(500));
    assert_eq!(m.stop_signal, Signal::SIGINT);
    assert_eq!(m.depends_on.len(), 2);
    assert!(m.depends_on.contains(&Dependency { name: "db".into(), condition: Some(DependencyCondition::Started) }));
}

#[test]
fn unknown_field_is_named_with_position() {
    let errors = parse_err("name: a\ncommand: [x]\nhelth_endpoint: http://x/\n");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("/svc/a/service.yaml:3:"), "{errors:?}");
    assert!(errors[0].contains("helth_endpoint"), "{errors:?}");
}

#[test]
fn every_semantic_problem_is_reported_with_its_position() {
    let errors = parse_err("name: ../etc\ncommand: []\nport: 70000\nrestart_delay: soon\nhealth_endpoint: ftp://x\n");
    let joined = errors.join("\n");
    assert!(joined.contains(":1:7: field `name`"), "{joined}");
    assert!(joined.contains("field `command`"), "{joined}");
    assert!(joined.contains(":3:7: field `port`"), "{joined}");
    assert!(joined.contains(":4:16: field `restart_delay`"), "{joined}");
    assert!(joined.contains("field `health_endpoint`"), "{joined}");
    assert_eq!(errors.len(), 5, "{joined}");
}

#[test]
fn runtime_must_be_exactly_one() {
    assert!(parse_err("name: a\n")[0].contains("one of `command`"));
    assert!(parse_err("name: a\ncommand: x\ncompose_file: c.yml\n")[0].contains("not both"));
}

#[test]
fn missing_paths_are_reported() {
    let err =
        parse(Path::new("/svc/a/service.yaml"), "name: a\ncommand: x\nenv_file: .env\n", Paths::Confined, &|_| None)
            .unwrap_err();
    assert!(err.to_string().contains("/svc/a/.env does not exist"), "{err}");
}

#[test]
fn names() {
    for ok in ["a", "0", "minimal-sd-api", "a.b_c-d", &"a".repeat(63)] {
        assert!(valid_name(ok), "{ok}");
    }
    for bad in ["", "A", "-a", "a/b", "a..b", ".a", "_t", "a b", &"a".repeat(64)] {
        assert!(!valid_name(bad), "{bad}");
    }
}

#[test]
fn durations() {
    for (text, secs) in
        [("1", 1.0), ("0.5", 0.5), ("500ms", 0.5), ("2m", 120.0), ("1.5s", 1.5), ("1h", 3600.0), ("7d", 604_800.0)]
    {
        assert_eq!(duration_secs(text), Ok(secs), "{text}");
    }
    for bad in ["", "x", "5 parsecs", "-1", "1.2.3s", "1e19", "inf", "NaN"] {
        assert!(duration_secs(bad).is_err(), "{bad}");
    }
}

#[test]
fn signals() {
    assert_eq!(parse_signal("SIGINT"), Ok(Signal::SIGINT));
    assert_eq!(parse_signal("hup"), Ok(Signal::SIGHUP));
    assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
    assert!(parse_signal("SIGNOPE").is_err());
}

/// Each duration field with its upper bound, as the error writes it.
const DURATION_BOUNDS: [(&str, &str, u64); 7] = [
    ("start_timeout", "24h", 86_400),
    ("health_timeout", "24h", 86_400),
    ("health_interval", "24h", 86_400),
    ("restart_delay", "24h", 86_400),
    ("restart_delay_max", "24h", 86_400),
    ("restart_window", "7d", 604_800),
    ("stop_timeout", "1h", 3_600),
];

#[test]
fn durations_are_bounded_and_errors_name_the_field_and_the_bound() {
    for (field, bound, max) in DURATION_BOUNDS {
        let ok = parse_ok(&format!("name: a\ncommand: x\n{field}: {max}\n"));
        let json = serde_json::to_value(&ok).unwrap();
        assert_eq!(json[field].as_f64(), Some(max as f64), "{field} at its bound is accepted: {json}");

        for (value, shown) in [
            ("1e19".to_string(), "`1e19s` is too long".to_string()),
            (format!("{}", max + 1), format!("`{}s` is too long", max + 1)),
            ("9999h".to_string(), "`9999h` is too long".to_string()),
        ] {
            let errors = parse_err(&format!("name: a\ncommand: x\n{field}: {value}\n"));
            assert_eq!(errors.len(), 1, "{errors:?}");
            let expected =
                format!("/svc/a/service.yaml:3:{}: field `{field}`: {shown} (at most {bound})", field.len() + 3);
            assert_eq!(errors[0], expected, "{field}: {value}");
        }
        for (value, message) in [
            ("-1", "`-1s` is negative; durations are 0 or more"),
            ("-1e300", "`-1e300s` is negative; durations are 0 or more"),
            (".nan", "non-finite float `.nan` rejected"),
            (".inf", "non-finite float `.inf` rejected"),
            ("1e400", "non-finite float `1e400` rejected"),
            (&format!("\"1{}h\"", "0".repeat(400)), "is too long"),
            ("-5m", "`-5m` is not a duration (use seconds, or e.g. 500ms, 2s, 1m)"),
            ("[1]", "invalid type"),
        ] {
            let errors = parse_err(&format!("name: a\ncommand: x\n{field}: {value}\n"));
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].contains(":3:") && errors[0].contains(message), "{field}: {value}: {errors:?}");
        }
    }
}

#[test]
fn zero_is_refused_where_a_duration_must_be_positive() {
    for field in ["start_timeout", "health_timeout", "health_interval"] {
        let errors = parse_err(&format!("name: a\ncommand: x\n{field}: 0\n"));
        assert_eq!(
            errors,
            vec![format!("/svc/a/service.yaml:3:{}: field `{field}`: must be greater than 0", field.len() + 3)]
        );
    }
    for field in ["restart_delay", "restart_delay_max", "restart_window", "stop_timeout"] {
        parse_ok(&format!("name: a\ncommand: x\n{field}: 0\n"));
    }
}

#[test]
fn counts_are_bounded() {
    for (field, min, max) in [("health_failures", 1, 1000), ("max_restarts", 0, 10_000)] {
        parse_ok(&format!("name: a\ncommand: x\n{field}: {max}\n"));
        parse_ok(&format!("name: a\ncommand: x\n{field}: {min}\n"));
        for bad in [
            format!("{}", max + 1),
            format!("{}", min - 1),
            "4294967296".to_string(),
            "-9223372036854775808".to_string(),
        ] {
            let errors = parse_err(&format!("name: a\ncommand: x\n{field}: {bad}\n"));
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(
                errors[0].contains(&format!("field `{field}`: must be a whole number from {min} to {max}, not {bad}")),
                "{errors:?}"
            );
        }
        let errors = parse_err(&format!("name: a\ncommand: x\n{field}: 1e30\n"));
        assert!(errors[0].contains(":3:"), "a count that is not an integer is a located type error: {errors:?}");
    }
}

#[test]
fn start_timeout_defaults_to_15_minutes_and_serializes_in_seconds() {
    let native = parse_ok("name: a\ncommand: x\n");
    assert_eq!(native.start_timeout, Duration::from_secs(15 * 60));
    let compose = parse_ok("name: a\ncompose_file: c.yml\nstart_timeout: 2h\n");
    assert_eq!(compose.start_timeout, Duration::from_secs(7200));
    assert_eq!(serde_json::to_value(&compose).unwrap()["start_timeout"].as_f64(), Some(7200.0));
    let native = parse_ok("name: a\ncommand: x\nstart_timeout: 0.5\n");
    assert_eq!(native.start_timeout, Duration::from_millis(500), "accepted for native services too");
}

#[test]
fn https_health_endpoints_are_refused_with_a_way_out() {
    for field in ["health_endpoint", "health_check_url"] {
        let errors = parse_err(&format!("name: a\ncommand: x\n{field}: https://localhost:8443/health\n"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert!(e.contains(&format!(":3:{}: field `{field}`:", field.len() + 3)), "{e}");
        assert!(e.contains("no TLS") && e.contains("health_command") && e.contains("[curl, -fsSk, "), "{e}");
        assert!(e.contains("tcp://HOST:PORT"), "{e}");
    }
    assert!(parse_err("name: a\ncommand: x\nhealth_endpoint: ftp://x/\n")[0].contains("not an http:// or tcp:// URL"));
    parse_ok("name: a\ncommand: x\nhealth_endpoint: http://localhost:1/health\n");
    parse_ok("name: a\ncommand: x\nhealth_endpoint: tcp://localhost:1\n");
}

#[test]
fn paths_outside_the_service_directory_are_refused_unless_allowed() {
    let cases = [
        ("working_dir", "command: x\nworking_dir"),
        ("env_file", "command: x\nenv_file"),
        ("compose_file", "compose_file"),
    ];
    for (field, prefix) in cases {
        for outside in ["..", "../b/x", "/etc/passwd", "sub/../../x", "/svc/a/../b", "./sub/../.."] {
            let text = format!("name: a\n{prefix}: {outside}\n");
            let err = parse(Path::new("/svc/a/service.yaml"), &text, Paths::Confined, &exists).unwrap_err().lines();
            assert_eq!(err.len(), 1, "{err:?}");
            assert!(err[0].contains(&format!("field `{field}`: `{outside}`")), "{err:?}");
            assert!(
                err[0].contains(
                    "is outside the service directory /svc/a; paths must stay inside it unless the daemon runs with \
                     --allow-outside-paths"
                ),
                "{err:?}"
            );
            parse(Path::new("/svc/a/service.yaml"), &text, Paths::Anywhere, &exists).expect("allowed anywhere");
        }
        for inside in [".", "sub/x", "sub/../x", "/svc/a/x", "./x"] {
            parse_ok(&format!("name: a\n{prefix}: {inside}\n"));
        }
    }
}

#[test]
fn a_symlink_that_resolves_outside_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (services, elsewhere) = (tmp.path().join("services"), tmp.path().join("elsewhere"));
    let dir = services.join("a");
    std::fs::create_dir_all(dir.join("inner")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join(".env"), "A=1\n").unwrap();
    std::fs::write(dir.join("inner/.env"), "A=1\n").unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("out")).unwrap();
    std::os::unix::fs::symlink(dir.join("inner"), dir.join("in")).unwrap();
    let manifest = dir.join("service.yaml");

    std::fs::write(&manifest, "name: a\ncommand: x\nworking_dir: out\nenv_file: out/.env\n").unwrap();
    let err = load(&manifest, Paths::Confined).unwrap_err().lines();
    assert_eq!(err.len(), 2, "{err:?}");
    let real = elsewhere.canonicalize().unwrap();
    assert!(err[0].contains(&format!("field `working_dir`: `out` ({})", real.display())), "{err:?}");
    assert!(err[1].contains("field `env_file`: `out/.env`") && err[1].contains("outside"), "{err:?}");
    load(&manifest, Paths::Anywhere).expect("allowed anywhere");

    std::fs::write(&manifest, "name: a\ncommand: x\nworking_dir: in\nenv_file: in/.env\n").unwrap();
    load(&manifest, Paths::Confined).expect("a symlink that stays inside is fine");

    // The service directory itself may be a symlink (discovery follows them).
    let linked = services.join("linked");
    std::os::unix::fs::symlink(&dir, &linked).unwrap();
    std::fs::write(&manifest, "name: a\ncommand: x\nworking_dir: .\nenv_file: inner/.env\n").unwrap();
    load(&linked.join("service.yaml"), Paths::Confined).expect("inside its real directory");
}

/// The fields a struct's `Deserialize` asks for, caught as it asks.
struct FieldsOf(&'static [&'static str]);

impl<'de> serde::Deserializer<'de> for &mut FieldsOf {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("only structs"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = fields;
        Err(serde::de::Error::custom("caught"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

#[test]
fn fields_lists_every_accepted_field() {
    let mut caught = FieldsOf(&[]);
    let _ = <super::raw::RawManifest as serde::Deserialize>::deserialize(&mut caught);
    assert_eq!(caught.0, FIELDS);
}

#[test]
fn every_problem_is_reported_as_data_with_its_line_and_a_suggestion_for_a_typo() {
    let text = "name: Bad Name\ncommand: x\ngpu_requried: true\nhealth_timeout: 1e19\nwhatever: 1\n";
    let error = parse(Path::new("/s/a/service.yaml"), text, Paths::Confined, &|p| Some(p.to_path_buf())).unwrap_err();
    let mut found: Vec<(u64, Option<&str>, &str)> =
        error.problems.iter().map(|p| (p.line, p.field.as_deref(), p.message.as_str())).collect();
    found.sort();
    assert_eq!(found.len(), 4, "{found:?}");
    assert_eq!((found[0].0, found[0].1), (1, Some("name")), "{found:?}");
    assert_eq!(found[1], (3, Some("gpu_requried"), "unknown field; did you mean `gpu_required`?"));
    assert_eq!((found[2].0, found[2].1), (4, Some("health_timeout")), "{found:?}");
    assert_eq!(found[3], (5, Some("whatever"), "unknown field (the fields are listed in docs/manifest.md)"));
    let lines = error.lines();
    assert!(
        lines
            .iter()
            .any(|l| l == "/s/a/service.yaml:3:1: field `gpu_requried`: unknown field; did you mean `gpu_required`?"),
        "{lines:?}"
    );
}
