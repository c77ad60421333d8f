//! ringlb-logging: the process's `log` backend.
//!
//! Owns: how a line looks ([`Format`]: text, byte-compatible with env_logger's default,
//! or one JSON object per line; the `<N>` priority prefix when stderr is journald's
//! stream, [`journald`]), which records pass (`RUST_LOG`, else the configured level,
//! changeable at reload), and the one thread that writes to stderr. Every other thread
//! only renders its line and hands it over through a bounded queue without waiting: a
//! slow journald or a full pipe can delay the log, never a worker. Lines that find the
//! queue full are dropped and counted ([`Dropped`]), and the writer says so in a warning
//! at most every 10 s.
//!
//! Must not: block the caller of `log::…!` on I/O or on the writer, allocate more than
//! the one line per record, or lose lines at a clean exit ([`flush`] before it).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod format;
pub mod journald;
mod syslog;
mod writer;

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use log::{LevelFilter, Log, Metadata, Record};
use nix::sys::signal::{SigSet, SigmaskHow};

pub use format::{priority, render, Format, Style};
pub use syslog::{SyslogAddress, SyslogSettings};
use writer::{DropReport, Queue};
pub use writer::{Dropped, ACCESS_CAPACITY, BATCH_BYTES, OTHER_RESERVE, PIPE_BUF};

/// The access log's target: its lines may be dropped when the queue is full.
pub const ACCESS_TARGET: &str = "ringlb::access";
/// The target of the logger's own lines (the drop warning).
pub const TARGET: &str = "ringlb::log";

/// How long [`Log::flush`] waits for the writer.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What the logger is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The configured level (`log_level`); reloads may change it unless `rust_log` is set.
    pub level: LevelFilter,
    /// `RUST_LOG`: env_logger's filter syntax, on top of `level`; it wins for good.
    pub rust_log: Option<String>,
    pub format: Format,
    /// The format was given on the command line: reloads do not change it.
    pub format_pinned: bool,
    /// Prefix every line with its journald priority.
    pub journald: bool,
    /// Colour the level (text format on a terminal).
    pub color: bool,
}

impl Settings {
    /// Settings for this process: `RUST_LOG` from the environment, journald when
    /// stderr is the stream `JOURNAL_STREAM` names, colours when stderr is a terminal
    /// and neither `NO_COLOR` nor `TERM=dumb` says otherwise.
    pub fn from_env(level: LevelFilter, format: Format, format_pinned: bool) -> Settings {
        let journald = journald::stderr_is_journal();
        let color = !journald
            && std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            && std::env::var_os("TERM").is_none_or(|t| t != "dumb");
        Settings {
            level,
            rust_log: std::env::var("RUST_LOG").ok(),
            format,
            format_pinned,
            journald,
            color,
        }
    }
}

/// A logger and its writer thread. The process has one ([`init`]); tests build their
/// own around any sink.
pub struct Logger {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

struct Shared {
    /// From `RUST_LOG`; without it `level` decides.
    filter: Option<env_filter::Filter>,
    level: AtomicUsize,
    format: AtomicU8,
    format_pinned: bool,
    journald: bool,
    color: bool,
    queue: Queue,
    /// Where every line also goes, as an RFC 5424 message; changeable at reload.
    syslog: arc_swap::ArcSwapOption<SyslogSettings>,
}

impl Logger {
    /// Starts the writer thread (`ringlb-log`) writing to `sink`.
    pub fn new(settings: &Settings, sink: Box<dyn Write + Send>) -> std::io::Result<Logger> {
        Logger::with_capacity(settings, sink, ACCESS_CAPACITY, OTHER_RESERVE)
    }

    /// [`Logger::new`] with a queue of `access` access-log lines plus `reserve` others.
    pub fn with_capacity(
        settings: &Settings,
        sink: Box<dyn Write + Send>,
        access: usize,
        reserve: usize,
    ) -> std::io::Result<Logger> {
        let filter = settings.rust_log.as_deref().map(|spec| {
            env_filter::Builder::new()
                .filter_level(settings.level)
                .parse(spec)
                .build()
        });
        let shared = Arc::new(Shared {
            filter,
            level: AtomicUsize::new(settings.level as usize),
            format: AtomicU8::new(format_code(settings.format)),
            format_pinned: settings.format_pinned,
            journald: settings.journald,
            color: settings.color,
            queue: Queue::new(access, reserve),
            syslog: arc_swap::ArcSwapOption::empty(),
        });
        let for_writer = shared.clone();
        // The writer must never be the thread a process signal (SIGTERM, SIGHUP) is
        // delivered to: it starts with every signal blocked, whatever the caller's mask.
        let previous = SigSet::all()
            .thread_swap_mask(SigmaskHow::SIG_BLOCK)
            .map_err(std::io::Error::from)?;
        let spawned = std::thread::Builder::new()
            .name("ringlb-log".into())
            .spawn(move || {
                let mut report = DropReport::default();
                let s = &for_writer;
                s.queue.run(
                    sink,
                    |batch| s.report_drops(&mut report, batch),
                    || s.syslog.load_full(),
                );
            });
        previous.thread_set_mask().map_err(std::io::Error::from)?;
        let writer = spawned?;
        shared.queue.set_writer(writer.thread().clone());
        Ok(Logger {
            shared,
            writer: Some(writer),
        })
    }

    /// The most verbose level any record can pass at: what `log::set_max_level` needs.
    pub fn max_level(&self) -> LevelFilter {
        match &self.shared.filter {
            Some(f) => f.filter(),
            None => self.shared.level(),
        }
    }

    /// Changes the level; ignored (returns false) when `RUST_LOG` decides.
    pub fn set_level(&self, level: LevelFilter) -> bool {
        if self.shared.filter.is_some() {
            return false;
        }
        self.shared.level.store(level as usize, Ordering::Relaxed);
        true
    }

    /// Changes the format; ignored (returns false) when the command line pinned it.
    pub fn set_format(&self, format: Format) -> bool {
        if self.shared.format_pinned {
            return false;
        }
        self.shared
            .format
            .store(format_code(format), Ordering::Relaxed);
        true
    }

    pub fn format(&self) -> Format {
        self.shared.style().format
    }

    /// Waits up to `timeout` until every queued line is written; false if it was not.
    pub fn flush_within(&self, timeout: Duration) -> bool {
        self.shared.queue.flush(timeout)
    }

    pub fn dropped(&self) -> Dropped {
        self.shared.queue.dropped()
    }

    /// Sends every line to a syslog receiver too (`None`: stops). A new receiver takes
    /// the lines logged from now on.
    pub fn set_syslog(&self, settings: Option<SyslogSettings>) {
        let same = self.shared.syslog.load().as_deref() == settings.as_ref();
        if !same {
            self.shared.syslog.store(settings.map(Arc::new));
            self.shared.queue.wake_writer();
        }
    }

    /// Syslog messages dropped since start: the receiver did not take them in time, or
    /// went away with them.
    pub fn syslog_dropped(&self) -> u64 {
        self.shared.queue.syslog_dropped.load(Ordering::Relaxed)
    }
}

impl Shared {
    fn level(&self) -> LevelFilter {
        match self.level.load(Ordering::Relaxed) {
            0 => LevelFilter::Off,
            1 => LevelFilter::Error,
            2 => LevelFilter::Warn,
            3 => LevelFilter::Info,
            4 => LevelFilter::Debug,
            _ => LevelFilter::Trace,
        }
    }

    fn style(&self) -> Style {
        Style {
            format: if self.format.load(Ordering::Relaxed) == format_code(Format::Json) {
                Format::Json
            } else {
                Format::Text
            },
            journald: self.journald,
            color: self.color,
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        match &self.filter {
            Some(f) => f.enabled(metadata),
            None => metadata.level() <= self.level(),
        }
    }

    fn matches(&self, record: &Record<'_>) -> bool {
        match &self.filter {
            Some(f) => f.matches(record),
            None => record.level() <= self.level(),
        }
    }

    /// Appends the drop warning to the writer's batch when one is due.
    fn report_drops(&self, report: &mut DropReport, batch: &mut String) {
        let Some(new) = report.due(Instant::now(), self.queue.dropped()) else {
            return;
        };
        let fields: [(&str, u64); 2] =
            [("access_dropped", new.access), ("other_dropped", new.other)];
        self.own_warning(
            batch,
            &fields,
            format_args!(
                "log: dropped {} access-log line(s) and {} other line(s) since the last report: \
                 stderr's reader (journald, a pipe) did not keep up; \
                 ringlb_access_log_dropped_total and ringlb_log_dropped_total count them",
                new.access, new.other
            ),
        );
    }

    /// Renders a warning of the logger's own (target [`TARGET`]) into `batch`.
    fn own_warning(
        &self,
        batch: &mut String,
        fields: &dyn log::kv::Source,
        args: std::fmt::Arguments<'_>,
    ) {
        let record = Record::builder()
            .level(log::Level::Warn)
            .target(TARGET)
            .args(args)
            .key_values(fields)
            .build();
        if self.matches(&record) {
            render(batch, self.style(), &record, SystemTime::now());
        }
    }
}

fn format_code(format: Format) -> u8 {
    match format {
        Format::Text => 0,
        Format::Json => 1,
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.shared.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        let s = &self.shared;
        if !s.matches(record) {
            return;
        }
        let access = record.target() == ACCESS_TARGET;
        if access && s.queue.access_full() {
            s.queue.count_drop(true);
            return;
        }
        let mut line = s.queue.buffer();
        let (style, now) = (s.style(), SystemTime::now());
        render(&mut line, style, record, now);
        let split = line.len();
        if let Some(settings) = s.syslog.load().as_deref() {
            syslog::render(&mut line, settings, style.format, record, now);
        }
        s.queue.push_split(line, split, access);
    }

    fn flush(&self) {
        self.flush_within(FLUSH_TIMEOUT);
    }
}

impl Drop for Logger {
    /// Writes what is queued, then ends the writer thread.
    fn drop(&mut self) {
        self.shared.queue.stop();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Why [`init`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot start the log writer thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("a logger is already installed")]
    AlreadySet,
}

static GLOBAL: OnceLock<Logger> = OnceLock::new();

/// Installs the process's logger, writing to stderr.
pub fn init(settings: &Settings) -> Result<(), InitError> {
    let logger = Logger::new(settings, Box::new(std::io::stderr()))?;
    let max = logger.max_level();
    GLOBAL.set(logger).map_err(|_| InitError::AlreadySet)?;
    let installed = GLOBAL.get().ok_or(InitError::AlreadySet)?;
    log::set_logger(installed).map_err(|_| InitError::AlreadySet)?;
    log::set_max_level(max);
    Ok(())
}

/// Changes the level of the installed logger (a reload's `log_level`); false when
/// `RUST_LOG` decides or none is installed.
pub fn set_level(level: LevelFilter) -> bool {
    let Some(logger) = GLOBAL.get() else {
        return false;
    };
    let changed = logger.set_level(level);
    if changed {
        log::set_max_level(level);
    }
    changed
}

/// Changes the format of the installed logger (a reload's `log_format`); false when
/// `--log-format` pinned it or none is installed.
pub fn set_format(format: Format) -> bool {
    GLOBAL.get().is_some_and(|l| l.set_format(format))
}

/// The installed logger's format, if one is installed.
pub fn format() -> Option<Format> {
    GLOBAL.get().map(Logger::format)
}

/// Waits up to `timeout` until everything logged so far is written; true when it was
/// (or no logger is installed).
pub fn flush(timeout: Duration) -> bool {
    GLOBAL.get().is_none_or(|l| l.flush_within(timeout))
}

/// Lines the installed logger dropped since start (zero without one).
pub fn dropped() -> Dropped {
    GLOBAL.get().map(Logger::dropped).unwrap_or_default()
}

/// Points the installed logger's syslog output at `settings` (`None`: off).
pub fn set_syslog(settings: Option<SyslogSettings>) {
    if let Some(l) = GLOBAL.get() {
        l.set_syslog(settings);
    }
}

/// Syslog messages the installed logger dropped since start (zero without one).
pub fn syslog_dropped() -> u64 {
    GLOBAL.get().map_or(0, Logger::syslog_dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink tests can read, and hold up: while `gate` is locked, writes wait.
    #[derive(Clone, Default)]
    struct Sink {
        out: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.out.lock().unwrap().clone()).unwrap()
        }
    }

    fn settings(format: Format) -> Settings {
        Settings {
            level: LevelFilter::Info,
            rust_log: None,
            format,
            format_pinned: false,
            journald: false,
            color: false,
        }
    }

    fn log_to(logger: &Logger, level: log::Level, target: &str, msg: &str) {
        logger.log(
            &Record::builder()
                .level(level)
                .target(target)
                .args(format_args!("{msg}"))
                .build(),
        );
    }

    #[test]
    fn lines_reach_the_sink_in_order_and_flush_waits_for_them() {
        let sink = Sink::default();
        let logger = Logger::new(&settings(Format::Text), Box::new(sink.clone())).unwrap();
        for i in 0..1000 {
            log_to(&logger, log::Level::Info, ACCESS_TARGET, &format!("n={i}"));
        }
        log_to(&logger, log::Level::Debug, "t", "filtered out");
        assert!(logger.flush_within(Duration::from_secs(30)));
        let text = sink.text();
        let ns: Vec<usize> = text
            .lines()
            .map(|l| l.rsplit_once("n=").unwrap().1.parse().unwrap())
            .collect();
        assert_eq!(ns, (0..1000).collect::<Vec<_>>());
        assert_eq!(logger.dropped(), Dropped::default());
    }

    #[test]
    fn a_stuck_sink_drops_and_counts_access_lines_and_never_blocks() {
        let sink = Sink::default();
        let logger =
            Logger::with_capacity(&settings(Format::Text), Box::new(sink.clone()), 16, 4).unwrap();
        let held = sink.gate.lock().unwrap();
        // The writer takes at most one batch and then waits on the gate; the queue fills.
        for i in 0..10_000 {
            log_to(&logger, log::Level::Info, ACCESS_TARGET, &format!("n={i}"));
        }
        log_to(
            &logger,
            log::Level::Warn,
            "ringlb::control",
            "backend down: kept",
        );
        let dropped = logger.dropped();
        assert!(dropped.access > 0, "{dropped:?}");
        assert_eq!(dropped.other, 0, "the reserve takes the warning");
        assert!(!logger.flush_within(Duration::from_millis(1)), "still held");
        drop(held);
        assert!(logger.flush_within(Duration::from_secs(30)));
        log_to(&logger, log::Level::Info, ACCESS_TARGET, "n=after");
        assert!(logger.flush_within(Duration::from_secs(30)));
        let text = sink.text();
        assert!(text.contains("backend down: kept"), "{text}");
        assert!(text.contains("n=after"), "logs flow again: {text}");
        let warning = text
            .lines()
            .find(|l| l.contains("log: dropped"))
            .unwrap_or_else(|| panic!("no drop warning in {text}"));
        assert!(warning.contains("WARN  ringlb::log]"), "{warning}");
        let written = text.lines().filter(|l| l.contains("n=")).count() as u64;
        assert_eq!(
            written + dropped.access,
            10_001,
            "every line written or counted"
        );
    }

    #[test]
    fn json_lines_and_a_format_change() {
        let sink = Sink::default();
        let logger = Logger::new(&settings(Format::Json), Box::new(sink.clone())).unwrap();
        log_to(&logger, log::Level::Info, "a", "one");
        assert!(logger.set_format(Format::Text));
        log_to(&logger, log::Level::Info, "a", "two");
        assert!(logger.flush_within(Duration::from_secs(30)));
        let text = sink.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(
            (v["msg"].as_str(), v["target"].as_str()),
            (Some("one"), Some("a"))
        );
        assert!(lines[1].ends_with(" INFO  a] two"), "{}", lines[1]);
        let pinned = Logger::new(
            &Settings {
                format_pinned: true,
                ..settings(Format::Json)
            },
            Box::new(Sink::default()),
        )
        .unwrap();
        assert!(!pinned.set_format(Format::Text));
        assert_eq!(pinned.format(), Format::Json);
    }

    #[test]
    fn rust_log_wins_over_the_level() {
        let sink = Sink::default();
        let logger = Logger::new(
            &Settings {
                rust_log: Some("warn,ringlb::access=info,ringlb::quiet=off".into()),
                ..settings(Format::Text)
            },
            Box::new(sink.clone()),
        )
        .unwrap();
        assert!(!logger.set_level(LevelFilter::Trace), "RUST_LOG decides");
        assert_eq!(logger.max_level(), LevelFilter::Info);
        log_to(&logger, log::Level::Info, ACCESS_TARGET, "kept access");
        log_to(&logger, log::Level::Info, "ringlb::control", "dropped info");
        log_to(&logger, log::Level::Error, "ringlb::quiet", "off");
        log_to(&logger, log::Level::Warn, "ringlb::control", "kept warn");
        assert!(logger.flush_within(Duration::from_secs(30)));
        let text = sink.text();
        assert!(
            text.contains("kept access") && text.contains("kept warn"),
            "{text}"
        );
        assert!(
            !text.contains("dropped info") && !text.contains("off"),
            "{text}"
        );
    }

    #[test]
    fn the_level_can_be_raised_and_lowered() {
        let sink = Sink::default();
        let logger = Logger::new(&settings(Format::Text), Box::new(sink.clone())).unwrap();
        assert!(logger.set_level(LevelFilter::Debug));
        assert_eq!(logger.max_level(), LevelFilter::Debug);
        log_to(&logger, log::Level::Debug, "t", "debug shown");
        assert!(logger.set_level(LevelFilter::Warn));
        log_to(&logger, log::Level::Info, "t", "info hidden");
        assert!(logger.flush_within(Duration::from_secs(30)));
        let text = sink.text();
        assert!(
            text.contains("debug shown") && !text.contains("info hidden"),
            "{text}"
        );
    }
}
