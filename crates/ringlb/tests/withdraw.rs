//! `withdraw_delay`: on SIGTERM `/ready` answers 503 at once while the listeners keep
//! accepting for the delay, so a router following `/ready` (a BGP announcement) stops
//! sending new flows before the listeners close; then the usual drain.

use std::path::Path;
use std::time::{Duration, Instant};

use ringlb_testkit::*;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

#[test]
fn ready_turns_503_before_the_listeners_stop_accepting() {
    let backend = EchoBackend::tagged("b");
    let yaml = format!(
        "admin: 127.0.0.1:0\naccess_log: false\nwithdraw_delay: 1500ms\nlisteners:\n  - name: t\n    \
         bind: 127.0.0.1:0\n    backends:\n      - addr: {}\n",
        backend.addr()
    );
    let mut lb = Ringlb::builder(bin(), &yaml).start();
    assert!(lb.wait_for_log("] ready: ", READY_TIMEOUT));
    let addr = lb.listener_addr("t");
    assert_eq!(lb.http_get("/ready").0, 200);

    let signalled = Instant::now();
    lb.signal(Signal::Term);
    assert!(
        wait_until(Duration::from_secs(5), || lb.http_get("/ready").0 == 503),
        "/ready never turned 503"
    );
    let turned = signalled.elapsed();
    // Still accepting and serving inside the delay.
    let mut served = 0;
    while signalled.elapsed() < Duration::from_millis(1000) {
        let mut s = connect(addr);
        assert_eq!(read_line_tag(&mut s), "b");
        served += 1;
    }
    assert!(served > 0);
    // Then the listeners close and the process exits (nothing left to drain).
    assert!(
        wait_until(Duration::from_secs(10), || connect_with_timeout(
            addr,
            Duration::from_secs(1)
        )
        .is_err()),
        "the listeners never closed"
    );
    let closed = signalled.elapsed();
    println!("withdraw: /ready 503 after {turned:?}, {served} connections served in the window, listeners closed after {closed:?}");
    assert!(turned < Duration::from_millis(1000), "{turned:?}");
    assert!(closed >= Duration::from_millis(1500), "{closed:?}");
    assert!(lb.wait_exit(Duration::from_secs(10)).is_some());
    assert!(lb.count_log("still accepting for withdraw_delay 1.5s") == 1);
}
