//! Per-thread counters, their merge, and the report printed as a table or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::BenchError;

/// Highest latency the histogram holds, in nanoseconds (60 s); longer samples saturate.
const MAX_NS: u64 = 60_000_000_000;

/// What one load thread measured. Kept per thread (not per connection): a histogram of this
/// range is ~200 KiB, which 10,000 idle connections could not each afford.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Latency of each successful request, in nanoseconds.
    pub hist: Histogram<u64>,
    pub requests: u64,
    pub errors: u64,
    /// Payload bytes moved (bulk: the stream; others: request + response bytes).
    pub bytes: u64,
    /// Connections (or UDP flows) that answered, by backend tag.
    pub tags: BTreeMap<String, u64>,
    /// Errors by "phase: kind", so a failing run says why.
    pub error_kinds: BTreeMap<String, u64>,
}

impl Stats {
    pub fn new() -> Result<Self, BenchError> {
        let hist = Histogram::new_with_bounds(1, MAX_NS, 3)
            .map_err(|e| BenchError::Histogram(e.to_string()))?;
        Ok(Stats {
            hist,
            requests: 0,
            errors: 0,
            bytes: 0,
            tags: BTreeMap::new(),
            error_kinds: BTreeMap::new(),
        })
    }

    pub fn record_ok(&mut self, latency: Duration, bytes: u64) {
        self.requests += 1;
        self.bytes += bytes;
        self.record_latency(latency);
    }

    /// A latency sample that is not a request (idle: connect time).
    pub fn record_latency(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(MAX_NS);
        self.hist.saturating_record(ns.clamp(1, MAX_NS));
    }

    /// Counts one failed request; `phase` says where (connect, write, read, verify...).
    pub fn record_error(&mut self, phase: &str, err: &io::Error) {
        self.errors += 1;
        *self
            .error_kinds
            .entry(format!("{phase}: {}", err.kind()))
            .or_insert(0) += 1;
    }

    pub fn record_tag(&mut self, tag: &str) {
        *self.tags.entry(tag.to_string()).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &Stats) -> Result<(), BenchError> {
        self.hist
            .add(&other.hist)
            .map_err(|e| BenchError::Histogram(e.to_string()))?;
        self.requests += other.requests;
        self.errors += other.errors;
        self.bytes += other.bytes;
        for (k, v) in &other.tags {
            *self.tags.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &other.error_kinds {
            *self.error_kinds.entry(k.clone()).or_insert(0) += v;
        }
        Ok(())
    }
}

/// Latency percentiles in microseconds, rounded to 0.1 µs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

fn us(ns: f64) -> f64 {
    (ns / 100.0).round() / 10.0
}

/// `None` when nothing was recorded: a table of zeros would read as "infinitely fast".
pub fn summarize(hist: &Histogram<u64>) -> Option<Latency> {
    if hist.is_empty() {
        return None;
    }
    let q = |p: f64| us(hist.value_at_quantile(p) as f64);
    Some(Latency {
        p50: q(0.50),
        p90: q(0.90),
        p99: q(0.99),
        p999: q(0.999),
        max: us(hist.max() as f64),
        mean: us(hist.mean()),
    })
}

/// The result of one load run. Field names are the JSON schema documented in bench/README.md.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub mode: String,
    pub target: String,
    pub duration_s: f64,
    /// Completed requests (rr, connect, udp-rr), or connections held and verified (idle).
    pub requests: u64,
    pub errors: u64,
    /// requests / duration_s.
    pub rate: f64,
    /// `null` for bulk, where there is no request to time.
    pub latency_us: Option<Latency>,
    pub bytes: u64,
    /// Bulk only: payload Gbit/s summed over all streams.
    pub gbit_s: Option<f64>,
    /// Only with --count-tags: connections per backend tag.
    pub tags: Option<BTreeMap<String, u64>>,
    pub error_kinds: BTreeMap<String, u64>,
    /// Connections, streams or flows the run used.
    pub connections: u64,
    pub threads: usize,
}

impl Report {
    pub fn new(
        mode: &str,
        target: &str,
        elapsed: Duration,
        stats: &Stats,
        connections: u64,
        threads: usize,
        count_tags: bool,
    ) -> Self {
        let secs = elapsed.as_secs_f64();
        let per_s = |v: f64| if secs > 0.0 { v / secs } else { 0.0 };
        let bulk = mode == "bulk";
        Report {
            mode: mode.to_string(),
            target: target.to_string(),
            duration_s: (secs * 1000.0).round() / 1000.0,
            requests: stats.requests,
            errors: stats.errors,
            rate: (per_s(stats.requests as f64) * 10.0).round() / 10.0,
            latency_us: if bulk { None } else { summarize(&stats.hist) },
            bytes: stats.bytes,
            gbit_s: bulk.then(|| (per_s(stats.bytes as f64 * 8.0) / 1e6).round() / 1e3),
            tags: count_tags.then(|| stats.tags.clone()),
            error_kinds: stats.error_kinds.clone(),
            connections,
            threads,
        }
    }

    pub fn to_json(&self) -> Result<String, BenchError> {
        serde_json::to_string(self).map_err(|e| BenchError::Json(e.to_string()))
    }

    /// The human table.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "mode        {}", self.mode);
        let _ = writeln!(s, "target      {}", self.target);
        let _ = writeln!(
            s,
            "duration    {:.3} s, {} connections, {} thread(s)",
            self.duration_s, self.connections, self.threads
        );
        if let Some(g) = self.gbit_s {
            let _ = writeln!(s, "throughput  {g:.3} Gbit/s ({} bytes)", self.bytes);
        } else {
            let _ = writeln!(s, "requests    {} ({:.1} /s)", self.requests, self.rate);
        }
        let _ = writeln!(s, "errors      {}", self.errors);
        for (k, v) in &self.error_kinds {
            let _ = writeln!(s, "  {v:>8}  {k}");
        }
        if let Some(l) = self.latency_us {
            let _ = writeln!(
                s,
                "latency µs  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (mean {:.1})",
                l.p50, l.p90, l.p99, l.p999, l.max, l.mean
            );
        }
        if let Some(tags) = &self.tags {
            let _ = writeln!(s, "tags        (connections per backend)");
            for (k, v) in tags {
                let _ = writeln!(s, "  {v:>8}  {k}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_with(samples_us: &[u64]) -> Stats {
        let mut st = Stats::new().unwrap();
        for &v in samples_us {
            st.record_ok(Duration::from_micros(v), 96);
        }
        st
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        // 1..=1000 µs: p50 is 500 µs, p99 990 µs, max 1000 µs (3 significant digits).
        let samples: Vec<u64> = (1..=1000).collect();
        let l = summarize(&stats_with(&samples).hist).unwrap();
        assert!((l.p50 - 500.0).abs() <= 1.0, "{l:?}");
        assert!((l.p90 - 900.0).abs() <= 1.0, "{l:?}");
        assert!((l.p99 - 990.0).abs() <= 1.0, "{l:?}");
        assert!((l.p999 - 999.0).abs() <= 1.0, "{l:?}");
        assert!((l.max - 1000.0).abs() <= 1.0, "{l:?}");
        assert!((l.mean - 500.5).abs() <= 1.0, "{l:?}");
    }

    #[test]
    fn empty_histogram_has_no_summary() {
        assert_eq!(summarize(&Stats::new().unwrap().hist), None);
    }

    #[test]
    fn sub_microsecond_and_huge_samples_are_kept_in_range() {
        let mut st = Stats::new().unwrap();
        st.record_ok(Duration::from_nanos(0), 0);
        st.record_ok(Duration::from_secs(3600), 0);
        assert_eq!(st.requests, 2);
        assert_eq!(st.hist.min(), 1);
        assert!(st.hist.max() >= MAX_NS - MAX_NS / 500);
    }

    #[test]
    fn merge_adds_counts_tags_and_histograms() {
        let mut a = stats_with(&[10, 20]);
        a.record_tag("b1");
        a.record_error("read", &io::Error::from(io::ErrorKind::ConnectionReset));
        let mut b = stats_with(&[30]);
        b.record_tag("b1");
        b.record_tag("b2");
        b.record_error("read", &io::Error::from(io::ErrorKind::ConnectionReset));
        a.merge(&b).unwrap();
        assert_eq!(a.requests, 3);
        assert_eq!(a.hist.len(), 3);
        assert_eq!(a.bytes, 3 * 96);
        assert_eq!(a.errors, 2);
        assert_eq!(a.tags.get("b1"), Some(&2));
        assert_eq!(a.tags.get("b2"), Some(&1));
        assert_eq!(a.error_kinds.get("read: connection reset"), Some(&2));
    }

    #[test]
    fn json_has_the_documented_schema() {
        let st = stats_with(&[100, 200, 300, 400]);
        let r = Report::new(
            "rr",
            "127.0.0.1:9000",
            Duration::from_secs(2),
            &st,
            4,
            1,
            false,
        );
        let v: serde_json::Value = serde_json::from_str(&r.to_json().unwrap()).unwrap();
        assert_eq!(v["mode"], "rr");
        assert_eq!(v["target"], "127.0.0.1:9000");
        assert_eq!(v["duration_s"], 2.0);
        assert_eq!(v["requests"], 4);
        assert_eq!(v["errors"], 0);
        assert_eq!(v["rate"], 2.0);
        assert!(v["latency_us"]["p50"].as_f64().unwrap() > 199.0);
        for k in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_us"][k].is_number(), "{k}");
        }
        assert!(v["gbit_s"].is_null());
        assert!(v["tags"].is_null());
    }

    #[test]
    fn bulk_report_has_gbit_and_no_latency() {
        let mut st = Stats::new().unwrap();
        st.bytes = 1_250_000_000; // 10 Gbit over 2 s
        let r = Report::new("bulk", "t", Duration::from_secs(2), &st, 1, 1, false);
        assert_eq!(r.gbit_s, Some(5.0));
        assert_eq!(r.latency_us, None);
        assert!(r.to_table().contains("5.000 Gbit/s"));
    }

    #[test]
    fn tags_appear_only_when_counted() {
        let mut st = stats_with(&[5]);
        st.record_tag("b3");
        let on = Report::new("connect", "t", Duration::from_secs(1), &st, 1, 1, true);
        assert_eq!(on.tags.as_ref().and_then(|t| t.get("b3")), Some(&1));
        assert!(on.to_table().contains("b3"));
        let off = Report::new("connect", "t", Duration::from_secs(1), &st, 1, 1, false);
        assert_eq!(off.tags, None);
    }
}
