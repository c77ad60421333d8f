//! Golden tests over the shipped configurations.
//!
//! - every `configs/*.yaml` is valid;
//! - every `configs/invalid/NAME.yaml` is rejected with exactly the lines of
//!   `configs/invalid/NAME.expected`, which hold what `ringlb check` prints: one
//!   `error: {path}: {message}` line per problem, in order.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringlb_config::{load, Algorithm, Protocol};

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    out
}

#[test]
fn every_example_config_is_valid() {
    let files = files_with_ext(&configs_dir(), "yaml");
    assert!(
        files.len() >= 3,
        "expected the example configs, found {files:?}"
    );
    for f in files {
        if let Err(e) = load(&f) {
            panic!("{} should be valid, got:\n{e}", f.display());
        }
    }
}

#[test]
fn every_invalid_config_gives_exactly_its_expected_lines() {
    let dir = configs_dir().join("invalid");
    let files = files_with_ext(&dir, "yaml");
    assert!(
        files.len() >= 6,
        "expected at least 6 invalid configs, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for f in &files {
        let expected_path = f.with_extension("expected");
        let expected = fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        let expected: Vec<&str> = expected.lines().collect();
        let got: Vec<String> = match load(f) {
            Ok(_) => vec!["<valid>".to_owned()],
            Err(e) => e.errors.iter().map(|e| format!("error: {e}")).collect(),
        };
        if got != expected {
            failures.push(format!(
                "{}\n--- expected\n{}\n--- got\n{}\n",
                f.display(),
                expected.join("\n"),
                got.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_expected_file_has_its_config() {
    let dir = configs_dir().join("invalid");
    for e in files_with_ext(&dir, "expected") {
        assert!(
            e.with_extension("yaml").exists(),
            "{} has no matching .yaml",
            e.display()
        );
    }
}

/// The demo script relies on these exact values.
#[test]
fn demo_config_is_what_the_demo_script_expects() {
    let c = load(&configs_dir().join("demo.yaml")).unwrap();
    assert_eq!(c.admin, Some("127.0.0.1:9901".parse().unwrap()));
    assert_eq!(c.listeners.len(), 1);
    let l = &c.listeners[0];
    assert_eq!(l.name, "demo");
    assert_eq!(l.bind, "127.0.0.1:9000".parse().unwrap());
    assert_eq!(l.protocol(), Protocol::Tcp);
    assert_eq!(l.algorithm, Algorithm::RoundRobin);
    let tcp = l.tcp().unwrap();
    assert_eq!(tcp.connect_attempts, 2);
    assert_eq!(tcp.connect_timeout, Duration::from_millis(200));
    let hc = l.health_check.clone().unwrap();
    assert_eq!(hc.interval, Duration::from_millis(200));
    assert_eq!(hc.timeout, Duration::from_millis(100));
    assert_eq!((hc.rise, hc.fall), (2, 2));
    let labels: Vec<&str> = l.backends.iter().map(|b| b.label.as_str()).collect();
    assert_eq!(
        labels,
        ["127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103"]
    );
}

/// Every example keeps the unauthenticated admin endpoint on loopback.
#[test]
fn examples_keep_admin_on_loopback() {
    for f in files_with_ext(&configs_dir(), "yaml") {
        let c = load(&f).unwrap();
        if let Some(a) = c.admin {
            assert!(a.ip().is_loopback(), "{}: admin on {a}", f.display());
        }
    }
}

#[test]
fn payment_gateway_has_one_listener_per_interface() {
    let c = load(&configs_dir().join("payment-gateway.yaml")).unwrap();
    let names: Vec<&str> = c.listeners.iter().map(|l| l.name.as_str()).collect();
    for want in ["payment", "query", "notifications"] {
        assert!(
            names.contains(&want),
            "missing listener {want} in {names:?}"
        );
    }
    let payment = &c.listeners[0];
    assert!(matches!(
        payment.algorithm,
        Algorithm::LeastConnections | Algorithm::Maglev
    ));
    assert!(payment.backends.iter().any(|b| b.is_backup()));
    assert!(payment.tcp().unwrap().connect_attempts > 1);
}
