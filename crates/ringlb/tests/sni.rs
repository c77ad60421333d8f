//! TLS passthrough routed by SNI through a running `ringlb`: certificates made here with
//! the openssl CLI, real TLS backends and clients in Python's `ssl` (each backend answers
//! with its own name once the handshake is done, so the reply proves the handshake went
//! end to end through ringlb to the pool the name chose). Hellos that real clients cannot
//! be made to send (one byte per segment, post-quantum sized, TLS 1.2 only) are built
//! with `ringlb_tlsinspect::synthetic` and sent to echo backends, whose echo proves they
//! got the exact bytes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ringlb_testkit::*;
use ringlb_tlsinspect::synthetic::{
    ext, hello, post_quantum_key_share, records, sni_ext, versions_ext,
};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringlb"))
}

const WAIT: Duration = Duration::from_secs(10);

/// A TLS server per name on 127.0.0.1: after the handshake it writes `NAME VERSION\n`.
const TLS_BACKENDS: &str = r#"
import socket, ssl, sys, threading
cert, key, names = sys.argv[1], sys.argv[2], sys.argv[3:]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
def handle(name, conn):
    try:
        conn.settimeout(10)
        tls = ctx.wrap_socket(conn, server_side=True)
        tls.sendall(("%s %s\n" % (name, tls.version())).encode())
        tls.close()
    except Exception:
        conn.close()
def serve(name, listener):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(name, conn), daemon=True).start()
for name in names:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    threading.Thread(target=serve, args=(name, listener), daemon=True).start()
    print("READY %s %d" % (name, listener.getsockname()[1]), flush=True)
threading.Event().wait()
"#;

/// Connects through ringlb with this server name, verifies the certificate against the
/// test's CA, and prints `VERSION|REPLY`.
const TLS_CLIENT: &str = r#"
import socket, ssl, sys
port, name, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
sock = socket.create_connection(("127.0.0.1", port), timeout=10)
tls = ctx.wrap_socket(sock, server_hostname=name)
reply = b""
while not reply.endswith(b"\n"):
    chunk = tls.recv(100)
    if not chunk:
        break
    reply += chunk
print("%s|%s" % (tls.version(), reply.decode().strip()))
"#;

/// The ClientHello Python's ssl sends for this server name, in hex.
const CAPTURE_HELLO: &str = r#"
import ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sys.argv[1])
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
sys.stdout.write(outgoing.read().hex())
"#;

/// A directory of the test's own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ringlb-sni-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for every name the tests route (it is its own CA).
fn make_cert(dir: &TempDir) -> (String, String) {
    let (cert, key) = (dir.path("cert.pem"), dir.path("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=ringlb-sni-test"])
        .args([
            "-addext",
            "subjectAltName=DNS:pay.bank-a.example,DNS:*.bank-b.example,DNS:*.x.bank-b.example,DNS:other.example",
        ])
        .args(["-keyout", &key, "-out", &cert])
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// The Python TLS backends, one per name; killed by PID when dropped.
struct TlsBackends {
    child: Child,
    addrs: HashMap<String, SocketAddr>,
}

impl TlsBackends {
    fn start(cert: &str, key: &str, names: &[&str]) -> TlsBackends {
        let mut child = Command::new("python3")
            .args(["-c", TLS_BACKENDS, cert, key])
            .args(names)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut backends = TlsBackends {
            child,
            addrs: HashMap::new(),
        };
        // Each READY line comes once its socket listens: no connect can race it.
        for line in BufReader::new(stdout).lines().take(names.len()) {
            let line = line.expect("read READY line");
            let mut words = line.split_whitespace().skip(1);
            let (Some(name), Some(port)) = (words.next(), words.next()) else {
                panic!("unexpected line from the TLS backends: {line:?}");
            };
            let port: u16 = port.parse().expect("port");
            backends
                .addrs
                .insert(name.to_owned(), SocketAddr::from(([127, 0, 0, 1], port)));
        }
        assert_eq!(
            backends.addrs.len(),
            names.len(),
            "TLS backends did not start"
        );
        backends
    }

    fn addr(&self, name: &str) -> SocketAddr {
        self.addrs[name]
    }
}

impl Drop for TlsBackends {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VERSION|REPLY` of one TLS client through `lb` with server name `sni`.
fn tls_client(lb: SocketAddr, sni: &str, ca: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", TLS_CLIENT, &lb.port().to_string(), sni, ca])
        .output()
        .expect("run the python TLS client");
    assert!(
        out.status.success(),
        "TLS client for {sni} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn captured_hello(sni: &str) -> Vec<u8> {
    let out = Command::new("python3")
        .args(["-c", CAPTURE_HELLO, sni])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = String::from_utf8_lossy(&out.stdout);
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// One listener `tls` with `extra` keys, the default pool `default` and two routes.
/// The backends of `routed_yaml`'s three pools, each answering with its pool's name.
fn three_pools() -> (EchoBackend, EchoBackend, EchoBackend) {
    (
        EchoBackend::tagged("default"),
        EchoBackend::tagged("pay"),
        EchoBackend::tagged("bank-b"),
    )
}

fn routed_yaml(extra: &str, default: SocketAddr, pay: SocketAddr, bank_b: SocketAddr) -> String {
    format!(
        "admin: 127.0.0.1:0\n\
         listeners:\n\
         \x20 - name: tls\n\
         \x20   bind: 127.0.0.1:0\n\
         {extra}\
         \x20   backends: [{{addr: \"{default}\"}}]\n\
         \x20   routes:\n\
         \x20     - sni: [pay.bank-a.example]\n\
         \x20       backends: [{{addr: \"{pay}\"}}]\n\
         \x20     - name: bank-b\n\
         \x20       sni: [\"*.bank-b.example\"]\n\
         \x20       backends: [{{addr: \"{bank_b}\"}}]\n"
    )
}

fn routed_total(lb: &Ringlb, route: &str) -> f64 {
    lb.metric(&format!(
        "ringlb_sni_routed_total{{listener=\"tls\",route=\"{route}\"}}"
    ))
    .unwrap_or(0.0)
}

fn rejected_total(lb: &Ringlb, reason: &str) -> f64 {
    lb.metric(&format!(
        "ringlb_sni_rejected_total{{listener=\"tls\",reason=\"{reason}\"}}"
    ))
    .unwrap_or(0.0)
}

/// Sends `bytes` (one write per `segment` bytes, Nagle off) and checks that the echo
/// backend tagged `tag` got exactly them.
fn echoed_through(lb: SocketAddr, bytes: &[u8], segment: usize, tag: &str) {
    let mut c = connect(lb);
    c.set_nodelay(true).unwrap();
    for chunk in bytes.chunks(segment) {
        c.write_all(chunk).unwrap();
    }
    assert_eq!(read_line_tag(&mut c), tag);
    let mut back = vec![0u8; bytes.len()];
    c.read_exact(&mut back).expect("echo of the hello");
    assert!(
        back == bytes,
        "the backend got other bytes than the client sent"
    );
}

/// Waits until the client's connection is closed by ringlb (EOF or reset).
fn closed_by_lb(c: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    wait_until(WAIT, || match c.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    })
}

#[test]
fn names_reach_their_pools_with_the_handshake_completed_end_to_end() {
    skip_unless!(
        Requirement::Command("openssl"),
        have_command("openssl"),
        "needs the openssl CLI to make certificates"
    );
    skip_unless!(
        Requirement::Command("python3"),
        have_command("python3"),
        "needs python3's ssl for TLS backends and clients"
    );
    let dir = TempDir::new("pools");
    let (cert, key) = make_cert(&dir);
    let tls = TlsBackends::start(&cert, &key, &["A", "B", "D"]);
    let yaml = routed_yaml(
        "    health_check: {interval: 200ms, timeout: 200ms}\n",
        tls.addr("D"),
        tls.addr("A"),
        tls.addr("B"),
    );
    let lb = Ringlb::start(bin(), &yaml);
    let addr = lb.listener_addr("tls");
    assert_eq!(
        tls_client(addr, "pay.bank-a.example", &cert),
        "TLSv1.3|A TLSv1.3"
    );
    assert_eq!(
        tls_client(addr, "x.bank-b.example", &cert),
        "TLSv1.3|B TLSv1.3"
    );
    assert_eq!(
        tls_client(addr, "Deep.X.Bank-B.example", &cert),
        "TLSv1.3|B TLSv1.3"
    );
    assert_eq!(
        tls_client(addr, "other.example", &cert),
        "TLSv1.3|D TLSv1.3"
    );
    assert!(wait_until(WAIT, || routed_total(&lb, "bank-b") == 2.0));
    assert_eq!(routed_total(&lb, "pay.bank-a.example"), 1.0);
    assert_eq!(routed_total(&lb, "default"), 1.0);
    // The access log names the route, the server name and the version offered.
    assert!(
        lb.wait_for_log(
            "route=pay.bank-a.example sni=pay.bank-a.example tls=1.3",
            WAIT
        ),
        "{}",
        lb.logs().join("\n")
    );
    assert!(lb.wait_for_log("route=default sni=other.example tls=1.3", WAIT));
    // The sni families and the pools' backend series keep the exposition valid.
    let (status, text) = lb.http_get("/metrics");
    assert_eq!(status, 200);
    if let Err(e) = openmetrics_parser::prometheus::parse_prometheus(&text) {
        panic!("/metrics is not valid Prometheus text ({e:?}):\n{text}");
    }
    assert!(text.contains("ringlb_sni_fallback_total{listener=\"tls\",reason=\"timeout\"} 0"));
    assert!(text.contains("ringlb_backend_up{listener=\"tls/bank-b\",backend="));
    let (status, body) = lb.http_get("/status");
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let routes = &status["listeners"][0]["routes"];
    assert_eq!(routes[1]["name"], "bank-b");
    assert_eq!(routes[1]["backends"][0]["addr"], tls.addr("B").to_string());
    assert_eq!(routes[1]["backends"][0]["up"], true);
}

#[test]
fn a_hello_in_one_byte_segments_still_routes() {
    skip_unless!(
        Requirement::Command("python3"),
        have_command("python3"),
        "needs python3's ssl to produce a real ClientHello"
    );
    let (default, pay, bank_b) = three_pools();
    let lb = Ringlb::start(
        bin(),
        &routed_yaml("", default.addr(), pay.addr(), bank_b.addr()),
    );
    let addr = lb.listener_addr("tls");
    let hello = captured_hello("pay.bank-a.example");
    assert!(hello.len() > 100, "{}", hello.len());
    echoed_through(addr, &hello, 1, "pay");
    echoed_through(addr, &captured_hello("z.bank-b.example"), 7, "bank-b");
    assert!(wait_until(WAIT, || routed_total(&lb, "pay.bank-a.example") == 1.0));
}

#[test]
fn a_post_quantum_sized_hello_routes() {
    let (default, pay, bank_b) = three_pools();
    let lb = Ringlb::start(
        bin(),
        &routed_yaml("", default.addr(), pay.addr(), bank_b.addr()),
    );
    let addr = lb.listener_addr("tls");
    let large = records(
        &hello(&[
            sni_ext("pq.bank-b.example"),
            versions_ext(&[0x0304]),
            post_quantum_key_share(),
            ext(21, &[0; 400]),
        ]),
        16384,
    );
    assert!(large.len() > 1500, "{}", large.len());
    // In segments the size of a typical MSS, and in small TLS records too.
    echoed_through(addr, &large, 1448, "bank-b");
    let fragmented = records(
        &hello(&[sni_ext("pay.bank-a.example"), post_quantum_key_share()]),
        500,
    );
    echoed_through(addr, &fragmented, 1448, "pay");
}

#[test]
fn plain_text_goes_to_the_default_pool_or_is_closed_as_configured() {
    let (default, pay, bank_b) = three_pools();
    let mut lb = Ringlb::start(
        bin(),
        &routed_yaml("", default.addr(), pay.addr(), bank_b.addr()),
    );
    let addr = lb.listener_addr("tls");
    echoed_through(
        addr,
        b"GET / HTTP/1.1\r\nHost: pay.bank-a.example\r\n\r\n",
        64,
        "default",
    );
    assert!(wait_until(WAIT, || lb.metric(
        "ringlb_sni_fallback_total{listener=\"tls\",reason=\"not_tls\"}"
    ) == Some(1.0)));

    // The same listener told to close what is not TLS; a reload applies it.
    let mark = lb.reload(&routed_yaml(
        "    on_non_tls: close\n",
        default.addr(),
        pay.addr(),
        bank_b.addr(),
    ));
    assert!(lb.wait_for_log_after(mark, "reload applied", WAIT));
    let mut c = connect(addr);
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(closed_by_lb(&mut c), "a plain-text client must be closed");
    assert!(wait_until(WAIT, || rejected_total(&lb, "not_tls") == 1.0));
    assert_eq!(
        lb.metric("ringlb_denied_total{listener=\"tls\",reason=\"unrouted\"}"),
        Some(1.0)
    );
    assert_eq!(
        default.client_conns(),
        1,
        "only the first client reached it"
    );
}

#[test]
fn a_silent_client_times_out() {
    let (default, pay, bank_b) = three_pools();
    let close = routed_yaml(
        "    tls_inspect_timeout: 300ms\n    on_non_tls: close\n",
        default.addr(),
        pay.addr(),
        bank_b.addr(),
    );
    let mut lb = Ringlb::start(bin(), &close);
    let addr = lb.listener_addr("tls");
    let mut c = connect(addr);
    assert!(closed_by_lb(&mut c), "a silent client must be closed");
    assert!(wait_until(WAIT, || rejected_total(&lb, "timeout") == 1.0));
    assert_eq!(default.accepted(), 0);

    // With the default fallback, a client that waits for the server to speak first
    // reaches the default pool once the timeout has passed.
    let mark = lb.reload(&close.replace("on_non_tls: close", "on_non_tls: default"));
    assert!(lb.wait_for_log_after(mark, "reload applied", WAIT));
    let mut c = connect(addr);
    assert_eq!(read_line_tag(&mut c), "default");
    assert_echo(&mut c, b"server spoke first");
}

#[test]
fn hellos_below_min_tls_version_are_closed() {
    let (default, pay, bank_b) = three_pools();
    let lb = Ringlb::start(
        bin(),
        &routed_yaml(
            "    min_tls_version: 1.3\n",
            default.addr(),
            pay.addr(),
            bank_b.addr(),
        ),
    );
    let addr = lb.listener_addr("tls");
    let old = records(
        &hello(&[sni_ext("pay.bank-a.example"), versions_ext(&[0x0303])]),
        16384,
    );
    let mut c = connect(addr);
    c.write_all(&old).unwrap();
    assert!(closed_by_lb(&mut c), "a TLS 1.2 hello must be closed");
    assert!(wait_until(WAIT, || rejected_total(&lb, "tls_version") == 1.0));
    let new = records(
        &hello(&[
            sni_ext("pay.bank-a.example"),
            versions_ext(&[0x0304, 0x0303]),
        ]),
        16384,
    );
    echoed_through(addr, &new, 4096, "pay");
    assert_eq!(pay.client_conns(), 1);
}

#[test]
fn a_reload_moves_a_name_to_another_pool() {
    let (default, pay, bank_b) = three_pools();
    let mut lb = Ringlb::start(
        bin(),
        &routed_yaml("", default.addr(), pay.addr(), bank_b.addr()),
    );
    let addr = lb.listener_addr("tls");
    let to_pay = records(&hello(&[sni_ext("pay.bank-a.example")]), 16384);
    echoed_through(addr, &to_pay, 4096, "pay");
    // pay.bank-a.example now belongs to bank-b's pool (a wildcard over bank-a).
    let moved = format!(
        "admin: 127.0.0.1:0\n\
         listeners:\n\
         \x20 - name: tls\n\
         \x20   bind: 127.0.0.1:0\n\
         \x20   backends: [{{addr: \"{}\"}}]\n\
         \x20   routes:\n\
         \x20     - name: bank-b\n\
         \x20       sni: [\"*.bank-b.example\", \"*.bank-a.example\"]\n\
         \x20       backends: [{{addr: \"{}\"}}]\n",
        default.addr(),
        bank_b.addr()
    );
    let mark = lb.reload(&moved);
    assert!(lb.wait_for_log_after(mark, "reload applied", WAIT));
    echoed_through(addr, &to_pay, 4096, "bank-b");
    assert_eq!(pay.client_conns(), 1);
}

#[test]
fn each_pool_is_health_checked_on_its_own() {
    let (default, pay) = (EchoBackend::tagged("default"), EchoBackend::tagged("pay"));
    let dead = refused_addr();
    let yaml = format!(
        "admin: 127.0.0.1:0\n\
         listeners:\n\
         \x20 - name: tls\n\
         \x20   bind: 127.0.0.1:0\n\
         \x20   health_check: {{interval: 100ms, timeout: 100ms, fall: 1, rise: 1}}\n\
         \x20   backends: [{{addr: \"{}\"}}]\n\
         \x20   routes:\n\
         \x20     - name: pay\n\
         \x20       sni: [pay.bank-a.example]\n\
         \x20       backends: [{{addr: \"{dead}\"}}, {{addr: \"{}\"}}]\n",
        default.addr(),
        pay.addr()
    );
    let lb = Ringlb::start(bin(), &yaml);
    let down = format!("backend down: listener=tls/pay backend={dead}");
    assert!(lb.wait_for_log(&down, WAIT), "{}", lb.logs().join("\n"));
    // Once it is down, every connection of the pool goes to the live backend at once.
    let to_pay = records(&hello(&[sni_ext("pay.bank-a.example")]), 16384);
    for _ in 0..4 {
        echoed_through(lb.listener_addr("tls"), &to_pay, 4096, "pay");
    }
    assert_eq!(pay.client_conns(), 4);
    assert_eq!(lb.count_log("backend down: listener=tls backend="), 0);
    // The pool's backends have their series under the pool's name.
    let up = |b: &dyn std::fmt::Display| {
        lb.metric(&format!(
            "ringlb_backend_up{{listener=\"tls/pay\",backend=\"{b}\"}}"
        ))
    };
    assert_eq!((up(&dead), up(&pay.addr())), (Some(0.0), Some(1.0)));
    assert_eq!(
        lb.metric(&format!(
            "ringlb_backend_health_transitions_total{{listener=\"tls/pay\",backend=\"{dead}\"}}"
        )),
        Some(1.0)
    );
    assert_eq!(
        lb.metric(&format!(
            "ringlb_backend_up{{listener=\"tls\",backend=\"{}\"}}",
            default.addr()
        )),
        Some(1.0)
    );
}

#[test]
fn on_down_ends_the_links_of_a_route_backend() {
    let default = EchoBackend::tagged("default");
    let mut pay = EchoBackend::tagged("pay");
    let yaml = format!(
        "admin: 127.0.0.1:0\n\
         listeners:\n\
         \x20 - name: tls\n\
         \x20   bind: 127.0.0.1:0\n\
         \x20   on_down: close\n\
         \x20   on_down_spread: 0s\n\
         \x20   health_check: {{interval: 100ms, timeout: 50ms, fall: 2, rise: 2}}\n\
         \x20   backends: [{{addr: \"{}\"}}]\n\
         \x20   routes:\n\
         \x20     - name: pay\n\
         \x20       sni: [pay.bank-a.example]\n\
         \x20       backends: [{{addr: \"{}\"}}]\n",
        default.addr(),
        pay.addr()
    );
    let lb = Ringlb::start(bin(), &yaml);
    let to_pay = records(&hello(&[sni_ext("pay.bank-a.example")]), 16384);
    let mut link = connect(lb.listener_addr("tls"));
    link.write_all(&to_pay).unwrap();
    assert_eq!(read_line_tag(&mut link), "pay");
    let mut back = vec![0u8; to_pay.len()];
    link.read_exact(&mut back).unwrap();
    pay.close_listener();
    let down = format!("backend down: listener=tls/pay backend={}", pay.addr());
    assert!(lb.wait_for_log(&down, WAIT), "{}", lb.logs().join("\n"));
    assert!(closed_by_lb(&mut link), "on_down: close must end the link");
    assert!(wait_until(WAIT, || lb.metric(
        "ringlb_connections_ended_total{listener=\"tls\",end=\"backend_down_close\"}"
    ) == Some(1.0)));
    assert!(lb.wait_for_log("on_down: listener=tls/pay backend=", WAIT));
}
