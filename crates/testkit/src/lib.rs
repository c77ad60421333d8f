//! ringlb-testkit: the one place ringlb's integration tests get their backends, their
//! running `ringlb`, and their client helpers from.
//!
//! Owns: loopback test backends ([`EchoBackend`], restartable on its address,
//! [`SinkSourceBackend`], [`HalfCloseBackend`], [`ResetBackend`], [`BlackholeBackend`],
//! [`SlowBackend`], [`ProxyBackend`], [`UdpEchoBackend`], [`refused_addr`]), the
//! [`Ringlb`] process handle with its log and metric readers ([`log_time`],
//! [`HealthFlip`], [`Ringlb::metric`]), client helpers, a tagged client load ([`Load`]),
//! skip helpers ([`skip_unless!`], [`Requirement`]) and a network namespace of a test's
//! own ([`Netns`], [`netns_for_test`]). Test-only: plain std threads and
//! blocking sockets, panics with clear messages instead of error plumbing.
//!
//! Must not: touch anything but 127.0.0.0/8, leave threads or sockets behind (every
//! handle stops what it started when dropped: listeners are shut down, connections shut
//! down, threads joined, the ringlb child SIGKILLed and reaped, its config file removed),
//! or signal any process other than the child it spawned, by PID.
//!
//! ```no_run
//! use std::path::Path;
//! use std::time::Duration;
//! use ringlb_testkit::*;
//!
//! let b1 = EchoBackend::tagged("b1");
//! let b2 = EchoBackend::tagged("b2");
//! let yaml = format!(
//!     "admin: 127.0.0.1:0\n\
//!      listeners:\n\
//!      - name: demo\n    bind: 127.0.0.1:0\n    protocol: tcp\n    algorithm: round_robin\n\
//!      \x20   backends:\n    - addr: {}\n    - addr: {}\n",
//!     b1.addr(),
//!     b2.addr()
//! );
//! // In crates/ringlb/tests: Path::new(env!("CARGO_BIN_EXE_ringlb")).
//! let lb = Ringlb::start(Path::new("target/debug/ringlb"), &yaml);
//! let mut c = connect(lb.listener_addr("demo"));
//! let tag = read_line_tag(&mut c); // "b1" or "b2"
//! assert_echo(&mut c, b"hello");
//! reset_close(c); // the backend must see a RST, not a FIN
//! let hit = if tag == "b1" { &b1 } else { &b2 };
//! assert!(hit.wait_ends(1, Duration::from_secs(5)));
//! assert_eq!(hit.ends(), vec![ConnEnd::Reset]);
//! let (status, body) = lb.http_get("/metrics");
//! assert_eq!(status, 200, "{body}");
//! ```
//!
//! Bulk transfer: [`SinkSourceBackend`] speaks a tiny protocol (the client's first 8
//! bytes are a big-endian byte count the backend sends back while it checksums what it
//! receives); [`sink_source_exchange`] is the client side, and
//! [`pattern_checksum`]`(`[`BACKEND_SEED`]`, n)` is what the client must have received.
//!
//! Health checks: when a listener has `health_check`, the prober's connects show up in
//! a backend's [`EchoBackend::accepted`] and [`EchoBackend::conns`] too (with
//! `bytes_in == 0`); [`EchoBackend::client_conns`] counts only connections that carried
//! bytes.
//!
//! Skips: `skip_unless!(Requirement::Root, is_root(), "why")` returns from a test that
//! cannot run here, and records it in the file named by [`SKIP_LOG_ENV`];
//! `scripts/test.sh` lists those and fails if the requirement was available after all.

mod blackhole;
mod checksum;
mod client;
mod load;
mod log;
mod netns;
mod process;
mod proxy;
mod server;
#[doc(hidden)]
pub mod skip;
mod tcp;
mod udp;
mod yaml;

pub use blackhole::{BlackholeBackend, BLACKHOLE_VERIFY};
pub use checksum::{checksum, pattern_checksum, Checksum, Pattern, BACKEND_SEED, CLIENT_SEED};
pub use client::{
    assert_echo, connect, connect_from, connect_with_timeout, read_line_tag, read_until_end,
    read_with_checksum, reset_close, send_with_checksum, sink_source_exchange, split_tag,
    try_read_line_tag, udp_client, udp_roundtrip, wait_until, ClientEnd, Exchange, IO_TIMEOUT,
};
pub use load::{
    tag_counts, tagged_client, tagged_client_timed, tagged_clients, Load, LoadLog, Phases,
};
pub use log::{log_time, parse_health_flip, since, HealthFlip};
pub use netns::{netns_for_test, Netns};
pub use process::{
    ctl, exit_code, http_get, metric_value, parse_admin_line, parse_http_response,
    parse_listener_line, ready_expectation, ReadyExpectation, Ringlb, RinglbBuilder, Signal,
    Successor, READY_TIMEOUT,
};
pub use proxy::{
    parse_proxy_v1, parse_proxy_v2, ProxyBackend, ProxyHeader, ProxySeen, PROXY_V2_SIGNATURE,
};
pub use server::{ConnEnd, ConnRecord};
pub use skip::{have_command, io_uring_available, is_root, Requirement, SKIP_LOG_ENV};
pub use tcp::{
    refused_addr, DelayedEchoBackend, EchoBackend, HalfCloseBackend, HalfCloseRecord, ResetBackend,
    SinkRecord, SinkSourceBackend, SlowBackend,
};
pub use udp::UdpEchoBackend;
pub use yaml::one_listener_yaml;
