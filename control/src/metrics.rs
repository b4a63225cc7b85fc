//! The daemon's own metrics and their Prometheus text rendering.
//!
//! Control-loop metrics live here (updated by the control thread only); dataplane counters
//! (per-worker rx/tx/drops, conntrack) are read from the runtime when a scrape renders. Every
//! degraded state has a gauge: `xdpnet_source_degraded`, `xdpnet_unresolved_nodes`,
//! `xdpnet_unattached_pods`.

use std::fmt::Write as _;
use std::time::Duration;

/// A fixed-bucket histogram (seconds), Prometheus style.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Buckets for control-plane latencies: 50 us .. 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

impl Histogram {
    /// Empty, with these upper bounds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        let v = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// Control-loop metrics.
#[derive(Debug, Clone)]
pub struct ControlMetrics {
    /// Time to build a table.
    pub build: Histogram,
    /// Time from the first event of a batch to the table being published.
    pub event_to_publish: Histogram,
    /// Tables published.
    pub publishes: u64,
    /// Events received.
    pub events: u64,
    /// Source errors.
    pub source_errors: u64,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        Self {
            build: Histogram::new(LATENCY_BUCKETS),
            event_to_publish: Histogram::new(LATENCY_BUCKETS),
            publishes: 0,
            events: 0,
            source_errors: 0,
        }
    }
}

/// A Prometheus text writer.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

impl Text {
    /// A metric family header.
    pub fn family(&mut self, name: &str, ty: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {ty}");
    }
    /// One sample; `labels` as `k="v",...` (empty for none).
    pub fn sample(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {v}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {v}");
        }
    }
    /// A histogram family.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        h.render(&mut self.out, name, help);
    }
    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Escapes a label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let mut h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let mut t = Text::default();
        t.histogram("x_seconds", "test", &h);
        let s = t.finish();
        assert!(s.contains("x_seconds_bucket{le=\"0.001\"} 1\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"0.01\"} 2\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_seconds_count 3\n"), "{s}");
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
