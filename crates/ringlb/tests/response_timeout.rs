//! `response_timeout` end to end: a backend whose process stops answering while its kernel
//! still completes handshakes (so a connect-only health check keeps it up) is marked down
//! by the silence clients see, and new connections stop reaching it.

use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::Duration;

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

const WAIT: Duration = Duration::from_secs(20);

fn metric(lb: &Ringlb, name: &str, backend: SocketAddr) -> f64 {
    let series = format!("{name}{{listener=\"t\",backend=\"{backend}\"}}");
    lb.metric(&series)
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

#[test]
fn a_backend_silent_past_response_timeout_is_marked_down() {
    let frozen = DelayedEchoBackend::tagged("frozen", Duration::ZERO);
    let ok = EchoBackend::tagged("ok");
    let yaml = format!(
        "access_log: false\nadmin: 127.0.0.1:0\nlisteners:\n  - name: t\n    bind: 127.0.0.1:0\n    \
         response_timeout: 500ms\n    health_check: {{interval: 1s, timeout: 500ms, rise: 2, fall: 2}}\n    \
         backends:\n      - addr: {}\n      - addr: {}\n",
        frozen.addr(),
        ok.addr()
    );
    let lb = Ringlb::builder(bin(), &yaml)
        .env("RUST_LOG", "info")
        .start();
    assert!(lb.wait_for_log("] ready: ", READY_TIMEOUT));
    let addr = lb.listener_addr("t");
    // Answering: no timeout is counted.
    for _ in 0..6 {
        let mut s = connect(addr);
        let _ = read_line_tag(&mut s);
        assert_echo(&mut s, b"ping\n");
    }
    assert_eq!(
        metric(&lb, "ringlb_backend_response_timeouts_total", frozen.addr()),
        0.0
    );

    // The process stops answering; the kernel still accepts, so checks pass.
    frozen.set_delay(Duration::from_secs(4));
    let mark = lb.log_mark();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let mut s = connect(addr);
                let tag = read_line_tag(&mut s);
                use std::io::Write;
                let _ = s.write_all(b"are you there\n");
                // Held until the end of the test's wait, so the link stays open.
                thread::sleep(Duration::from_secs(3));
                tag
            })
        })
        .collect();
    let needle = format!("backend down: listener=t backend={} ", frozen.addr());
    assert!(
        lb.wait_for_log_after(mark, &needle, WAIT),
        "the silent backend was never marked down:\n{}",
        lb.logs().join("\n")
    );
    // Down now; a connect-only check brings it back after `rise` checks (2 s here), so
    // look at once. (Paired with a send/expect check it would stay out.)
    for _ in 0..10 {
        let mut s = connect(addr);
        assert_eq!(read_line_tag(&mut s), "ok");
    }
    let tags: Vec<String> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    assert!(
        tags.iter().any(|t| t == "frozen"),
        "no client reached it: {tags:?}"
    );
    assert!(metric(&lb, "ringlb_backend_response_timeouts_total", frozen.addr()) >= 2.0);
    assert_eq!(
        metric(&lb, "ringlb_connect_failures_total", frozen.addr()),
        0.0
    );
}
