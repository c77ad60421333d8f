//! Helpers shared by the validation unit tests: small YAML documents and assertions.

use crate::model::{Config, TcpSettings, UdpSettings};
use crate::parse;

/// `path: message` lines of a config that must be invalid.
pub(super) fn errors(yaml: &str) -> Vec<String> {
    match parse(yaml) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

pub(super) fn ok(yaml: &str) -> Config {
    parse(yaml).unwrap_or_else(|e| panic!("expected valid, got:\n{e}\n--- yaml\n{yaml}"))
}

/// One listener `l` on 127.0.0.1:7000 with `extra` keys (indented by 4) and a backend.
pub(super) fn one(extra: &str) -> String {
    format!(
        "listeners:\n  - name: l\n    bind: 127.0.0.1:7000\n{extra}    backends:\n      - addr: 10.0.0.1:80\n"
    )
}

/// Like `one` but with a udp listener.
pub(super) fn one_udp(extra: &str) -> String {
    one(&format!("    protocol: udp\n{extra}"))
}

/// A listener whose backends are given (each line indented by 6).
pub(super) fn with_backends(backends: &str) -> String {
    format!("listeners:\n  - name: l\n    bind: 127.0.0.1:7000\n    backends:\n{backends}")
}

pub(super) fn assert_one_error(yaml: &str, path: &str, needle: &str) {
    let e = errors(yaml);
    assert_eq!(e.len(), 1, "expected one error, got {e:#?}");
    assert!(
        e[0].starts_with(&format!("{path}: ")) && e[0].contains(needle),
        "expected `{path}: …{needle}…`, got {:?}",
        e[0]
    );
}

/// `errors` are exactly as many as `want`, each starting with its line of `want`.
pub(super) fn assert_errors_start_with(errors: &[String], want: &[&str]) {
    assert_eq!(errors.len(), want.len(), "{errors:#?}");
    for (got, want) in errors.iter().zip(want) {
        assert!(got.starts_with(want), "{got:?} should start with {want:?}");
    }
}

pub(super) fn two(bind_a: &str, proto_a: &str, bind_b: &str, proto_b: &str) -> String {
    format!(
        "listeners:\n  - name: a\n    bind: \"{bind_a}\"\n    protocol: {proto_a}\n    backends: [{{addr: 10.0.0.1:80}}]\n\
         \x20 - name: b\n    bind: \"{bind_b}\"\n    protocol: {proto_b}\n    backends: [{{addr: 10.0.0.1:80}}]\n"
    )
}

/// The TCP settings of the first listener, which must be a TCP listener.
pub(super) fn tcp(c: &Config) -> TcpSettings {
    c.listeners[0].tcp().expect("a tcp listener").clone()
}

/// The UDP settings of the first listener, which must be a UDP listener.
pub(super) fn udp(c: &Config) -> UdpSettings {
    *c.listeners[0].udp().expect("a udp listener")
}
