//! Command line: one subcommand per backend and per load mode, and what each turns into.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::backend::{self, Backend, Kind};
use crate::load::{Direction, LoadConfig, Mode};
use crate::BenchError;

#[derive(Debug, Parser)]
#[command(
    name = "ringlb-bench",
    version,
    about = "Benchmark backends and load generators for ringlb (and any TCP/UDP proxy)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Backend: answer each read with the data read (TCP and/or UDP).
    Echo(EchoArgs),
    /// Backend: read requests of N bytes, answer each with M bytes.
    Respond(RespondArgs),
    /// Backend: read and discard (bulk upload target).
    Sink(ServeArgs),
    /// Backend: write data until the client goes away (bulk download source).
    Source(SourceArgs),
    /// Load: C persistent connections, one small request in flight each.
    Rr(RrArgs),
    /// Load: a new connection per request.
    Connect(ConnectArgs),
    /// Load: S streams moving bytes one way; reports Gbit/s.
    Bulk(BulkArgs),
    /// Load: F UDP flows, one datagram in flight each.
    #[command(name = "udp-rr")]
    UdpRr(UdpRrArgs),
    /// Load: hold N idle connections for the duration, then check each still answers.
    Idle(IdleArgs),
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 250ms, 2s, 1m)"))
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks one; the bound address is printed).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Runtime threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
    /// On SIGTERM/SIGINT: how long open connections may finish before exit.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub drain: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
    Both,
}

#[derive(Debug, Clone, Args)]
pub struct EchoArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Name answered to the tag query (default: the listen address).
    #[arg(long)]
    pub tag: Option<String>,
    #[arg(long, value_enum, default_value = "tcp")]
    pub proto: Proto,
    /// Wait this long before each answer (TCP): a slow backend process.
    #[arg(long, default_value = "0s", value_parser = duration)]
    pub delay: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct RespondArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[arg(long)]
    pub tag: Option<String>,
    /// Request size in bytes.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub request: u32,
    /// Reply size in bytes.
    #[arg(long, default_value_t = 64)]
    pub response: u32,
    /// Wait this long before each answer: a slow backend process.
    #[arg(long, default_value = "0s", value_parser = duration)]
    pub delay: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..))]
    pub chunk: u32,
}

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The only address traffic is sent to.
    #[arg(long)]
    pub target: SocketAddr,
    /// How long the timed window lasts.
    #[arg(long, short = 'd', default_value = "10s", value_parser = duration)]
    pub duration: Duration,
    /// Stop after this many requests in total (0: duration only).
    #[arg(long, short = 'n', default_value_t = 0)]
    pub requests: u64,
    /// Load threads, each with its own event loop.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
    /// Per request (per I/O for bulk, per connect for idle) before it counts as an error.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub timeout: Duration,
    /// Print the JSON report instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Exit 3 if any request failed.
    #[arg(long)]
    pub fail_on_errors: bool,
}

impl LoadArgs {
    pub fn config(&self) -> LoadConfig {
        LoadConfig {
            target: self.target,
            duration: self.duration,
            requests: self.requests,
            threads: usize::from(self.threads),
            timeout: self.timeout,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ExchangeArgs {
    /// Request size in bytes.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub request: u32,
    /// Expected reply size (default: the request size, as from an echo backend).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub response: Option<u32>,
    /// Ask each connection's backend for its tag and count answers per tag.
    #[arg(long)]
    pub count_tags: bool,
    /// Total requests per second, sent on a fixed schedule (open loop): latency counts
    /// from when a request was due, so one that waited behind a stalled reply counts the
    /// wait. Default: closed loop, as fast as replies come.
    #[arg(long)]
    pub rate: Option<f64>,
}

impl ExchangeArgs {
    fn sizes(&self) -> (usize, usize) {
        let req = self.request as usize;
        (req, self.response.map_or(req, |r| r as usize))
    }
}

#[derive(Debug, Clone, Args)]
pub struct RrArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Persistent connections.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub connections: usize,
    #[command(flatten)]
    pub exchange: ExchangeArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Connect loops running in parallel.
    #[arg(long, short = 'c', default_value_t = 16)]
    pub concurrency: usize,
    #[command(flatten)]
    pub exchange: ExchangeArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DirectionArg {
    /// Upload to a `sink`.
    Send,
    /// Download from a `source`.
    Recv,
}

#[derive(Debug, Clone, Args)]
pub struct BulkArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    #[arg(long, short = 's', default_value_t = 1)]
    pub streams: usize,
    #[arg(long, value_enum, default_value = "send")]
    pub direction: DirectionArg,
    /// Bytes per write/read call.
    #[arg(long, default_value_t = 65536)]
    pub chunk: usize,
}

#[derive(Debug, Clone, Args)]
pub struct UdpRrArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    #[arg(long, short = 'f', default_value_t = 1)]
    pub flows: usize,
    /// Datagram size (≥ 8: the first 8 bytes carry a sequence number).
    #[arg(long, default_value_t = 32)]
    pub request: usize,
}

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    #[arg(long, short = 'c', default_value_t = 1000)]
    pub connections: usize,
    /// Size of the final check request.
    #[arg(long, default_value_t = 32)]
    pub request: usize,
    /// Expected reply size to the final check (default: request size).
    #[arg(long)]
    pub response: Option<usize>,
    /// Connects in flight at once while opening.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Each connection carries one request and its reply before it goes quiet.
    #[arg(long)]
    pub warm: bool,
}

impl Command {
    /// The load mode and its bounds, or `None` for a backend subcommand.
    pub fn load(&self) -> Option<(Mode, &LoadArgs)> {
        Some(match self {
            Command::Rr(a) => {
                let (request, response) = a.exchange.sizes();
                let mode = Mode::Rr {
                    connections: a.connections,
                    request,
                    response,
                    count_tags: a.exchange.count_tags,
                    rate: a.exchange.rate,
                };
                (mode, &a.load)
            }
            Command::Connect(a) => {
                let (request, response) = a.exchange.sizes();
                let mode = Mode::Connect {
                    concurrency: a.concurrency,
                    request,
                    response,
                    count_tags: a.exchange.count_tags,
                    rate: a.exchange.rate,
                };
                (mode, &a.load)
            }
            Command::Bulk(a) => {
                let direction = match a.direction {
                    DirectionArg::Send => Direction::Send,
                    DirectionArg::Recv => Direction::Recv,
                };
                let mode = Mode::Bulk {
                    streams: a.streams,
                    direction,
                    chunk: a.chunk,
                };
                (mode, &a.load)
            }
            Command::UdpRr(a) => (
                Mode::UdpRr {
                    flows: a.flows,
                    request: a.request,
                },
                &a.load,
            ),
            Command::Idle(a) => (
                Mode::Idle {
                    connections: a.connections,
                    request: a.request,
                    response: a.response.unwrap_or(a.request),
                    connect_concurrency: a.connect_concurrency,
                    warm: a.warm,
                },
                &a.load,
            ),
            Command::Echo(_) | Command::Respond(_) | Command::Sink(_) | Command::Source(_) => {
                return None
            }
        })
    }

    /// The backend to serve, its listen options and whether it serves TCP / UDP.
    pub fn backend(&self) -> Option<(Backend, &ServeArgs, bool, bool)> {
        let tag =
            |t: &Option<String>, s: &ServeArgs| t.clone().unwrap_or_else(|| s.listen.to_string());
        Some(match self {
            Command::Echo(a) => (
                Backend {
                    kind: Kind::Echo,
                    tag: tag(&a.tag, &a.serve),
                    delay: a.delay,
                },
                &a.serve,
                a.proto != Proto::Udp,
                a.proto != Proto::Tcp,
            ),
            Command::Respond(a) => (
                Backend {
                    kind: Kind::Respond {
                        request: a.request as usize,
                        response: a.response as usize,
                    },
                    tag: tag(&a.tag, &a.serve),
                    delay: a.delay,
                },
                &a.serve,
                true,
                false,
            ),
            Command::Sink(s) => (
                Backend {
                    kind: Kind::Sink,
                    tag: s.listen.to_string(),
                    delay: Duration::ZERO,
                },
                s,
                true,
                false,
            ),
            Command::Source(a) => (
                Backend {
                    kind: Kind::Source {
                        chunk: a.chunk as usize,
                    },
                    tag: a.serve.listen.to_string(),
                    delay: Duration::ZERO,
                },
                &a.serve,
                true,
                false,
            ),
            _ => return None,
        })
    }
}

/// Runs a backend in the foreground until SIGTERM or SIGINT, then drains and returns.
/// Prints `ringlb-bench <kind> listening on <proto> <addr>` to stderr once bound.
pub fn serve(backend: Backend, args: &ServeArgs, tcp: bool, udp: bool) -> Result<(), BenchError> {
    let kind = match backend.kind {
        Kind::Echo => "echo",
        Kind::Respond { .. } => "respond",
        Kind::Sink => "sink",
        Kind::Source { .. } => "source",
    };
    let runtime_err = |source| BenchError::Runtime {
        what: format!("{kind} backend"),
        source,
    };
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(args.threads))
            .enable_all()
            .build()
    }
    .map_err(runtime_err)?;
    let listen = args.listen;
    let drain = args.drain;
    rt.block_on(async move {
        let bind = |proto, source| BenchError::Bind {
            proto,
            addr: listen,
            source,
        };
        // Bound before any readiness line is printed, so a script that waits for the
        // line can connect at once.
        let tcp_l = if tcp {
            let l = backend::tcp_listener(listen).map_err(|e| bind("tcp", e))?;
            let a = l.local_addr().map_err(|e| bind("tcp", e))?;
            eprintln!("ringlb-bench {kind} listening on tcp {a}");
            Some(l)
        } else {
            None
        };
        let udp_s = if udp {
            // Both protocols on port 0: UDP takes the port TCP got.
            let at = match &tcp_l {
                Some(l) => l.local_addr().map_err(|e| bind("udp", e))?,
                None => listen,
            };
            let s = tokio::net::UdpSocket::bind(at)
                .await
                .map_err(|e| bind("udp", e))?;
            let a = s.local_addr().map_err(|e| bind("udp", e))?;
            eprintln!("ringlb-bench {kind} listening on udp {a}");
            Some(s)
        } else {
            None
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        if let Some(l) = tcp_l {
            let mut rx = stop_rx.clone();
            let b = Arc::new(backend);
            tasks.push(tokio::spawn(async move {
                backend::serve_tcp(
                    l,
                    b,
                    async move {
                        let _ = rx.changed().await;
                    },
                    drain,
                )
                .await
            }));
        }
        if let Some(s) = udp_s {
            let mut rx = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                backend::serve_udp(s, async move {
                    let _ = rx.changed().await;
                })
                .await
            }));
        }
        wait_for_signal().await.map_err(runtime_err)?;
        let _ = stop_tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    })
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ringlb-bench").chain(args.iter().copied()))
    }

    #[test]
    fn rr_defaults_are_the_settlement_pattern() {
        let cli = parse(&["rr", "--target", "127.0.0.1:9000"]).unwrap();
        let (mode, load) = cli.command.load().unwrap();
        assert_eq!(
            mode,
            Mode::Rr {
                connections: 64,
                request: 32,
                response: 32,
                count_tags: false,
                rate: None
            }
        );
        assert_eq!(load.duration, Duration::from_secs(10));
        assert_eq!(load.threads, 1);
        assert!(!load.json);
    }

    #[test]
    fn rr_sizes_durations_and_flags() {
        let cli = parse(&[
            "rr",
            "--target",
            "127.0.0.1:1",
            "-c",
            "8",
            "--request",
            "32",
            "--response",
            "64",
            "-d",
            "250ms",
            "-n",
            "1000",
            "--json",
            "--count-tags",
            "--threads",
            "2",
        ])
        .unwrap();
        let (mode, load) = cli.command.load().unwrap();
        assert_eq!(
            mode,
            Mode::Rr {
                connections: 8,
                request: 32,
                response: 64,
                count_tags: true,
                rate: None
            }
        );
        let cfg = load.config();
        assert_eq!(cfg.duration, Duration::from_millis(250));
        assert_eq!(cfg.requests, 1000);
        assert_eq!(cfg.threads, 2);
        assert!(load.json);
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(parse(&["rr"]).is_err(), "target is required");
        assert!(
            parse(&["rr", "--target", "localhost"]).is_err(),
            "needs ip:port"
        );
        assert!(parse(&["rr", "--target", "127.0.0.1:1", "-d", "ten"]).is_err());
        assert!(parse(&["rr", "--target", "127.0.0.1:1", "--threads", "0"]).is_err());
        assert!(parse(&["rr", "--target", "127.0.0.1:1", "--request", "0"]).is_err());
        assert!(parse(&["bulk", "--target", "127.0.0.1:1", "--direction", "up"]).is_err());
        assert!(parse(&["nope"]).is_err());
    }

    #[test]
    fn other_modes_map_to_their_options() {
        let c = parse(&["udp-rr", "--target", "127.0.0.1:1", "-f", "4"]).unwrap();
        assert_eq!(
            c.command.load().unwrap().0,
            Mode::UdpRr {
                flows: 4,
                request: 32
            }
        );
        let c = parse(&[
            "bulk",
            "--target",
            "127.0.0.1:1",
            "-s",
            "4",
            "--direction",
            "recv",
        ])
        .unwrap();
        assert_eq!(
            c.command.load().unwrap().0,
            Mode::Bulk {
                streams: 4,
                direction: Direction::Recv,
                chunk: 65536
            }
        );
        let c = parse(&[
            "idle",
            "--target",
            "127.0.0.1:1",
            "-c",
            "10000",
            "--response",
            "64",
        ])
        .unwrap();
        assert_eq!(
            c.command.load().unwrap().0,
            Mode::Idle {
                connections: 10000,
                request: 32,
                response: 64,
                connect_concurrency: 256,
                warm: false,
            }
        );
        let c = parse(&["connect", "--target", "127.0.0.1:1", "--rate", "500"]).unwrap();
        let (
            Mode::Connect {
                concurrency, rate, ..
            },
            _,
        ) = c.command.load().unwrap()
        else {
            panic!("connect mode expected")
        };
        assert_eq!((concurrency, rate), (16, Some(500.0)));
    }

    #[test]
    fn backends_parse_with_tags_and_protocols() {
        let c = parse(&[
            "echo",
            "--listen",
            "127.0.0.1:9101",
            "--tag",
            "b1",
            "--proto",
            "both",
        ])
        .unwrap();
        assert!(c.command.load().is_none());
        let (b, s, tcp, udp) = c.command.backend().unwrap();
        assert_eq!(b.kind, Kind::Echo);
        assert_eq!(b.tag, "b1");
        assert_eq!(s.listen.port(), 9101);
        assert!(tcp && udp);
        let c = parse(&["respond", "--listen", "127.0.0.1:0", "--response", "64"]).unwrap();
        let (b, _, tcp, udp) = c.command.backend().unwrap();
        assert_eq!(
            b.kind,
            Kind::Respond {
                request: 32,
                response: 64
            }
        );
        assert_eq!(b.tag, "127.0.0.1:0");
        assert!(tcp && !udp);
    }
}
