//! Every forwarded connection ends with one typed outcome that both the access log and
//! `ringlb_connections_ended_total` report: the two are checked against each other, and
//! against what the client did, with a backend that resets every connection before ringlb
//! can send it the PROXY header (the case that once ended with neither a line nor a count).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

const WAIT: Duration = Duration::from_secs(15);

fn metric(lb: &Ringlb, series: &str) -> u64 {
    let (status, body) = lb.http_get("/metrics");
    assert_eq!(status, 200, "{body}");
    // Absent means nothing was counted yet.
    metric_value(&body, series).map_or(0, |v| v as u64)
}

fn ended(lb: &Ringlb, listener: &str, end: &str) -> u64 {
    metric(
        lb,
        &format!("ringlb_connections_ended_total{{listener=\"{listener}\",end=\"{end}\"}}"),
    )
}

fn no_backend(lb: &Ringlb, listener: &str) -> u64 {
    metric(
        lb,
        &format!("ringlb_denied_total{{listener=\"{listener}\",reason=\"no_backend\"}}"),
    )
}

fn access_ends(lb: &Ringlb, listener: &str) -> Vec<String> {
    lb.logs()
        .iter()
        .filter(|l| l.contains(" ringlb::access] ") && l.contains(&format!("listener={listener} ")))
        .filter_map(|l| {
            l.rsplit_once(" end=")
                .map(|(_, end)| end.trim().to_string())
        })
        .collect()
}

#[test]
fn every_forwarded_connection_is_counted_and_logged_once() {
    skip_unless!(
        Requirement::IoUring,
        io_uring_available(),
        "io_uring is not available here"
    );
    const RESETS: usize = 30;
    let echo = EchoBackend::start();
    let resetting = ResetBackend::start();
    let yaml = format!(
        "admin: 127.0.0.1:0
listeners:
  - name: good
    bind: 127.0.0.1:0
    backends:
      - addr: {echo}
  - name: header
    bind: 127.0.0.1:0
    proxy_protocol: v2
    backends:
      - addr: {resetting}
",
        echo = echo.addr(),
        resetting = resetting.addr(),
    );
    let lb = Ringlb::start(bin(), &yaml);
    assert!(
        lb.wait_for_log("ready:", WAIT),
        "ringlb did not become ready"
    );

    // Positive control: one clean exchange, closed by the client first.
    let mut c = TcpStream::connect(lb.listener_addr("good")).expect("connect good");
    c.set_read_timeout(Some(WAIT)).expect("timeout");
    c.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).expect("echo");
    drop(c);
    assert!(
        wait_until(WAIT, || ended(&lb, "good", "client_close") == 1),
        "client_close not counted: {:?}",
        access_ends(&lb, "good")
    );
    // The log writer thread writes the line shortly after the counter moves.
    assert!(
        wait_until(WAIT, || access_ends(&lb, "good") == ["client_close"]),
        "{:?}",
        access_ends(&lb, "good")
    );

    // A backend that resets at once: depending on when the RST lands, the connect fails
    // (denied_no_backend: its only backend failed), the header send fails
    // (proxy_header_failed) or the relay sees it (backend_reset). Whichever, the client is
    // reset, and the connection is counted and logged exactly once.
    for _ in 0..RESETS {
        let mut c = TcpStream::connect(lb.listener_addr("header")).expect("connect header");
        c.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut sink = Vec::new();
        assert!(
            c.read_to_end(&mut sink).is_err(),
            "the client must see a reset, not a clean end"
        );
    }
    let counted = || {
        ended(&lb, "header", "proxy_header_failed")
            + ended(&lb, "header", "backend_reset")
            + no_backend(&lb, "header")
    };
    assert!(
        wait_until(WAIT, || counted() == RESETS as u64),
        "counted {} of {RESETS}",
        counted()
    );
    assert!(
        wait_until(WAIT, || access_ends(&lb, "header").len() >= RESETS),
        "{:?}",
        access_ends(&lb, "header")
    );
    let ends = access_ends(&lb, "header");
    assert_eq!(ends.len(), RESETS, "{ends:?}");
    let logged = |end: &str| ends.iter().filter(|e| *e == end).count() as u64;
    for end in ["proxy_header_failed", "backend_reset"] {
        assert_eq!(
            logged(end),
            ended(&lb, "header", end),
            "{end}: log {ends:?} vs counter"
        );
    }
    assert_eq!(
        logged("denied_no_backend"),
        no_backend(&lb, "header"),
        "{ends:?}"
    );
    // Nothing else was counted for these connections.
    for end in [
        "client_close",
        "backend_close",
        "client_reset",
        "local_error",
    ] {
        assert_eq!(ended(&lb, "header", end), 0, "{end}");
    }
}
