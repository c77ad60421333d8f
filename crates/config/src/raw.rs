//! Stage one: the YAML file as written, before any meaning is given to it.
//!
//! Every struct rejects unknown keys, so a typo is an error naming its path instead of a
//! setting silently ignored. Every scalar is kept as a [`Scalar`] (its text and what kind
//! of YAML scalar it was) and every key is an `Option`: type and range checks happen in
//! `validate`, where all problems are collected at once, and presence stays visible so
//! that a UDP-only key on a TCP listener can be reported.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

#[derive(Debug, serde::Deserialize)]
#[serde(
    deny_unknown_fields,
    rename = "config",
    expecting = "a mapping of top-level keys (workers, admin, listeners, ...)"
)]
pub(crate) struct RawConfig {
    pub workers: Option<Scalar>,
    pub admin: Option<Scalar>,
    pub shutdown_timeout: Option<Scalar>,
    pub withdraw_delay: Option<Scalar>,
    pub log_level: Option<Scalar>,
    pub access_log: Option<Scalar>,
    pub log_format: Option<Scalar>,
    pub control: Option<Scalar>,
    pub state_file: Option<Scalar>,
    pub audit_log: Option<Scalar>,
    pub connection_records: Option<Scalar>,
    pub syslog: Option<RawSyslog>,
    pub listeners: Option<Vec<RawListener>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(
    deny_unknown_fields,
    rename = "listener",
    expecting = "a listener mapping (name, bind, backends, ...)"
)]
pub(crate) struct RawListener {
    pub name: Option<Scalar>,
    pub bind: Option<Scalar>,
    pub protocol: Option<Scalar>,
    pub algorithm: Option<Scalar>,
    pub connect_timeout: Option<Scalar>,
    pub connect_attempts: Option<Scalar>,
    pub idle_timeout: Option<Scalar>,
    pub max_connection_duration: Option<Scalar>,
    pub on_down: Option<Scalar>,
    pub on_down_spread: Option<Scalar>,
    pub on_recover: Option<Scalar>,
    pub connection_report_interval: Option<Scalar>,
    pub max_connections: Option<Scalar>,
    pub allow: Option<Vec<Scalar>>,
    pub proxy_protocol: Option<Scalar>,
    pub forwarding: Option<Scalar>,
    pub source: Option<Vec<Scalar>>,
    pub tcp_keepalive: Option<RawKeepalive>,
    pub tcp_user_timeout: Option<Scalar>,
    pub response_timeout: Option<Scalar>,
    pub session_timeout: Option<Scalar>,
    pub max_sessions: Option<Scalar>,
    pub slow_start: Option<Scalar>,
    pub failback: Option<Scalar>,
    pub min_active: Option<Scalar>,
    pub per_source: Option<RawPerSource>,
    pub stickiness: Option<RawStickiness>,
    pub health_check: Option<RawHealthCheck>,
    pub backends: Option<Vec<RawBackend>>,
    pub routes: Option<Vec<RawRoute>>,
    pub tls_inspect_timeout: Option<Scalar>,
    pub min_tls_version: Option<Scalar>,
    pub on_non_tls: Option<Scalar>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(
    deny_unknown_fields,
    rename = "route",
    expecting = "a route mapping (name, sni, alpn, algorithm, backends)"
)]
pub(crate) struct RawRoute {
    pub name: Option<Scalar>,
    pub sni: Option<Vec<Scalar>>,
    pub alpn: Option<Vec<Scalar>>,
    pub algorithm: Option<Scalar>,
    pub backends: Option<Vec<RawBackend>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(
    deny_unknown_fields,
    rename = "syslog",
    expecting = "a syslog mapping (address, facility, app_name, hostname, queue_size)"
)]
pub(crate) struct RawSyslog {
    pub address: Option<Scalar>,
    pub facility: Option<Scalar>,
    pub app_name: Option<Scalar>,
    pub hostname: Option<Scalar>,
    pub queue_size: Option<Scalar>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(
    deny_unknown_fields,
    rename = "health_check",
    expecting = "a health_check mapping (interval, timeout, rise, fall, port, send, expect)"
)]
pub(crate) struct RawHealthCheck {
    pub interval: Option<Scalar>,
    pub timeout: Option<Scalar>,
    pub rise: Option<Scalar>,
    pub fall: Option<Scalar>,
    pub port: Option<Scalar>,
    pub send: Option<Scalar>,
    pub expect: Option<Scalar>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(
    deny_unknown_fields,
    rename = "tcp_keepalive",
    expecting = "a tcp_keepalive mapping (idle, interval, count)"
)]
pub(crate) struct RawKeepalive {
    pub idle: Option<Scalar>,
    pub interval: Option<Scalar>,
    pub count: Option<Scalar>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(
    deny_unknown_fields,
    rename = "per_source",
    expecting = "a per_source mapping (max_connections, new_per_second, burst, max_sources)"
)]
pub(crate) struct RawPerSource {
    pub max_connections: Option<Scalar>,
    pub new_per_second: Option<Scalar>,
    pub burst: Option<Scalar>,
    pub max_sources: Option<Scalar>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(
    deny_unknown_fields,
    rename = "stickiness",
    expecting = "a stickiness mapping (key, port_range, table_size, expire, single_active)"
)]
pub(crate) struct RawStickiness {
    pub key: Option<Scalar>,
    pub port_range: Option<Scalar>,
    pub table_size: Option<Scalar>,
    pub expire: Option<Scalar>,
    pub single_active: Option<Scalar>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(
    deny_unknown_fields,
    rename = "backend",
    expecting = "a backend mapping (addr, weight, max_connections, backup, priority, on_down)"
)]
pub(crate) struct RawBackend {
    pub addr: Option<Scalar>,
    pub weight: Option<Scalar>,
    pub max_connections: Option<Scalar>,
    pub backup: Option<Scalar>,
    pub priority: Option<Scalar>,
    pub on_down: Option<Scalar>,
}

/// What kind of YAML scalar a value was written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScalarKind {
    Str,
    Int,
    Float,
    Bool,
}

/// A YAML scalar kept as text, so that its meaning (duration, address, number…) is
/// decided and reported by `validate` together with every other problem.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scalar {
    pub text: String,
    pub kind: ScalarKind,
}

impl Scalar {
    /// For messages: text as the user wrote it, strings quoted (`"10.0.0.1"`, `0`).
    pub fn shown(&self) -> String {
        match self.kind {
            ScalarKind::Str => format!("{:?}", self.text),
            _ => self.text.clone(),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl ScalarVisitor {
    fn ok<E>(text: String, kind: ScalarKind) -> Result<Scalar, E> {
        Ok(Scalar { text, kind })
    }
}

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a single value (string, number or boolean)")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Self::ok(v.to_string(), ScalarKind::Bool)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Self::ok(v.to_string(), ScalarKind::Int)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Self::ok(v.to_string(), ScalarKind::Int)
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Scalar, E> {
        Self::ok(v.to_string(), ScalarKind::Int)
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Scalar, E> {
        Self::ok(v.to_string(), ScalarKind::Int)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Self::ok(v.to_string(), ScalarKind::Float)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Self::ok(v.to_owned(), ScalarKind::Str)
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Self::ok(v, ScalarKind::Str)
    }
}
