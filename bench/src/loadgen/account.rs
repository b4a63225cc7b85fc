//! The generator's and the sink's bookkeeping, independent of any socket (tested in memory).
//!
//! [`Generator`] hands out (flow, source port, sequence) round-robin over the flows, stopping
//! at an optional packet limit; [`Pacer`] says how many packets a fixed rate allows by now;
//! [`Sink`] counts what arrives: packets and bytes, frames that are not ours, packets older
//! than one already seen in their flow (reordered), and the latency from the stamp into an
//! HDR histogram (ns, 3 significant digits). Loss is what was sent and never received:
//! [`Report`] joins the two sides.

use super::frame::{self, Stamp};
use hdrhistogram::Histogram;

/// Largest latency recorded (longer ones are clamped to it): 60 s.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// An empty latency histogram: 1 ns .. 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

/// Records `ns` into `h`, clamped into its range (so it cannot fail).
pub fn record_latency(h: &mut Histogram<u64>, ns: u64) {
    let _ = h.record(ns.clamp(1, MAX_LATENCY_NS));
}

/// Sequence numbers per flow, round-robin over the flows.
#[derive(Debug, Clone)]
pub struct Generator {
    seq: Vec<u32>,
    next_flow: usize,
    src_port: u16,
    /// Packets handed out.
    pub sent: u64,
    limit: Option<u64>,
}

impl Generator {
    /// `flows` flows (1..=65535) with source ports from `src_port`, at most `limit` packets.
    pub fn new(flows: u16, src_port: u16, limit: Option<u64>) -> Self {
        Self {
            seq: vec![0; flows.max(1) as usize],
            next_flow: 0,
            src_port,
            sent: 0,
            limit,
        }
    }

    /// True when the packet limit is reached.
    pub fn done(&self) -> bool {
        self.limit.is_some_and(|l| self.sent >= l)
    }

    /// Packets the limit still allows (u64::MAX without a limit).
    pub fn remaining(&self) -> u64 {
        self.limit.map_or(u64::MAX, |l| l.saturating_sub(self.sent))
    }

    /// The next packet: (flow, source port, sequence).
    pub fn next_packet(&mut self) -> (u16, u16, u32) {
        let f = self.next_flow;
        self.next_flow = if f + 1 == self.seq.len() { 0 } else { f + 1 };
        let s = self.seq[f];
        self.seq[f] = s.wrapping_add(1);
        self.sent += 1;
        (f as u16, self.src_port.wrapping_add(f as u16), s)
    }
}

/// A fixed offered rate (or none: as fast as possible).
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    pps: Option<f64>,
}

impl Pacer {
    /// `pps` packets per second, or unlimited.
    pub fn new(pps: Option<f64>) -> Self {
        Self { pps }
    }

    /// Packets that may go now, `elapsed_ns` after the start with `sent` already out, at most
    /// `cap` (a stalled generator catches up in bursts of at most `cap`).
    pub fn allowed(&self, elapsed_ns: u64, sent: u64, cap: u64) -> u64 {
        match self.pps {
            None => cap,
            Some(r) => {
                let due = (r * elapsed_ns as f64 / 1e9) as u64 + 1;
                due.saturating_sub(sent).min(cap)
            }
        }
    }
}

/// What the sink saw.
#[derive(Debug, Clone)]
pub struct Sink {
    /// Per flow: the next sequence number expected (one past the highest seen).
    next: Vec<u32>,
    /// Per flow: packets received.
    per_flow: Vec<u64>,
    /// Our packets received.
    pub received: u64,
    /// Bytes of our packets (frames without FCS).
    pub bytes: u64,
    /// Packets that arrived after a later one of their flow.
    pub reordered: u64,
    /// Frames that were not ours (other traffic, unknown flow).
    pub foreign: u64,
    /// Latency, ns.
    pub latency: Histogram<u64>,
}

impl Sink {
    /// A sink for `flows` flows.
    pub fn new(flows: u16) -> Self {
        Self {
            next: vec![0; flows.max(1) as usize],
            per_flow: vec![0; flows.max(1) as usize],
            received: 0,
            bytes: 0,
            reordered: 0,
            foreign: 0,
            latency: latency_histogram(),
        }
    }

    /// Takes one received frame at `now_ns` (the run's clock).
    pub fn record(&mut self, frame: &[u8], now_ns: u64) {
        match frame::parse(frame) {
            Some(s) if (s.flow as usize) < self.next.len() => self.take(s, frame.len(), now_ns),
            _ => self.foreign += 1,
        }
    }

    fn take(&mut self, s: Stamp, len: usize, now_ns: u64) {
        let f = s.flow as usize;
        self.received += 1;
        self.per_flow[f] += 1;
        self.bytes += len as u64;
        // Wrapping comparison: a sequence "behind" the expected one arrived late (the first
        // packet of a flow sets where it starts).
        if self.per_flow[f] > 1 && (s.seq.wrapping_sub(self.next[f]) as i32) < 0 {
            self.reordered += 1;
        } else {
            self.next[f] = s.seq.wrapping_add(1);
        }
        record_latency(&mut self.latency, now_ns.saturating_sub(s.ts_ns));
    }

    /// Packets received in flow `f`.
    pub fn flow_received(&self, f: u16) -> u64 {
        self.per_flow.get(f as usize).copied().unwrap_or(0)
    }
}

/// Latency percentiles in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// From a histogram (all zero when empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }

    /// As JSON (µs with 0.1 µs resolution are easier to read; ns are exact).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "p50_ns": self.p50, "p90_ns": self.p90, "p99_ns": self.p99,
            "p999_ns": self.p999, "max_ns": self.max, "mean_ns": self.mean.round(),
        })
    }
}

/// Generator and sink joined: what a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Packets the kernel took from the generator's TX ring (completed).
    pub sent: u64,
    /// Our packets the sink received.
    pub received: u64,
    /// Sent and not received.
    pub lost: u64,
    /// Received after a later packet of their flow.
    pub reordered: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Frames at the sink that were not ours.
    pub foreign: u64,
    /// Generating time, s.
    pub seconds: f64,
    /// Latency.
    pub latency: Latency,
}

impl Report {
    /// Joins `sent` (completed by the kernel) with what `sink` saw over `seconds`.
    pub fn new(sent: u64, sink: &Sink, seconds: f64) -> Self {
        Self {
            sent,
            received: sink.received,
            lost: sent.saturating_sub(sink.received),
            reordered: sink.reordered,
            bytes: sink.bytes,
            foreign: sink.foreign,
            seconds,
            latency: Latency::of(&sink.latency),
        }
    }

    /// Offered (sent) packets per second.
    pub fn tx_pps(&self) -> f64 {
        self.sent as f64 / self.seconds.max(1e-9)
    }

    /// Delivered packets per second.
    pub fn rx_pps(&self) -> f64 {
        self.received as f64 / self.seconds.max(1e-9)
    }

    /// As JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "sent": self.sent,
            "received": self.received,
            "lost": self.lost,
            "loss_ratio": if self.sent == 0 { 0.0 } else { self.lost as f64 / self.sent as f64 },
            "reordered": self.reordered,
            "bytes": self.bytes,
            "foreign": self.foreign,
            "seconds": self.seconds,
            "tx_pps": self.tx_pps().round(),
            "rx_pps": self.rx_pps().round(),
            "rx_gbit_s": self.bytes as f64 * 8.0 / self.seconds.max(1e-9) / 1e9,
            "latency": self.latency.json(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::{Proto, Template, TrafficSpec};
    use super::*;
    use std::net::Ipv4Addr;

    fn template() -> Template {
        Template::new(&TrafficSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: Ipv4Addr::new(10, 244, 1, 10),
            dst_ip: Ipv4Addr::new(10, 244, 2, 10),
            dst_port: 8080,
            src_port: 20_000,
            src_addrs: 1,
            proto: Proto::Udp,
            size: 64,
        })
        .expect("valid")
    }

    /// Frames as the generator makes them: (flow, frame), sent at 1 µs intervals.
    fn generate(g: &mut Generator, t: &Template, n: usize) -> Vec<(u16, u64, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let mut b = vec![0u8; t.len()];
                t.write(&mut b);
                let (flow, sport, seq) = g.next_packet();
                let ts = i as u64 * 1_000;
                t.stamp(&mut b, flow, sport, seq, ts);
                (flow, ts, b)
            })
            .collect()
    }

    #[test]
    fn generator_round_robin_and_limit() {
        let mut g = Generator::new(3, 1000, Some(7));
        let got: Vec<_> = (0..7).map(|_| g.next_packet()).collect();
        assert_eq!(
            got,
            vec![
                (0, 1000, 0),
                (1, 1001, 0),
                (2, 1002, 0),
                (0, 1000, 1),
                (1, 1001, 1),
                (2, 1002, 1),
                (0, 1000, 2)
            ]
        );
        assert!(g.done());
        assert_eq!(g.remaining(), 0);
        assert_eq!(Generator::new(1, 1, None).remaining(), u64::MAX);
    }

    #[test]
    fn pacer_offers_the_rate() {
        let p = Pacer::new(Some(1_000_000.0));
        // 1 Mpps: after 1 ms, 1,001 packets due (the first goes at t = 0).
        assert_eq!(p.allowed(1_000_000, 0, u64::MAX), 1_001);
        assert_eq!(p.allowed(1_000_000, 1_001, u64::MAX), 0);
        assert_eq!(p.allowed(1_000_000, 900, 64), 64, "bursts capped");
        assert_eq!(Pacer::new(None).allowed(5, 1 << 40, 64), 64);
    }

    /// In order, nothing lost: no loss, no reordering, every latency recorded.
    #[test]
    fn in_order_delivery() {
        let t = template();
        let mut g = Generator::new(4, 20_000, None);
        let frames = generate(&mut g, &t, 1000);
        let mut s = Sink::new(4);
        for (_, ts, f) in &frames {
            s.record(f, ts + 5_000);
        }
        let r = Report::new(g.sent, &s, 1.0);
        assert_eq!(
            (r.sent, r.received, r.lost, r.reordered),
            (1000, 1000, 0, 0)
        );
        assert_eq!(r.bytes, 64_000);
        assert_eq!(s.flow_received(3), 250);
        // Every latency 5 µs (histogram precision: 3 significant digits).
        assert!((4_995..=5_005).contains(&r.latency.p50), "{:?}", r.latency);
        assert!((4_995..=5_005).contains(&r.latency.max));
    }

    /// Drops and swaps: loss is exact, each late packet counts once.
    #[test]
    fn loss_and_reordering() {
        let t = template();
        let mut g = Generator::new(2, 20_000, None);
        let mut frames = generate(&mut g, &t, 100);
        // Lose every 10th packet (10 lost).
        let lost: Vec<_> = frames.iter().step_by(10).map(|f| f.2.clone()).collect();
        frames.retain(|f| !lost.contains(&f.2));
        // Swap two pairs of the same flow: each makes one packet late.
        frames.swap(20, 22);
        frames.swap(40, 42);
        // A frame of a flow the sink does not know, and garbage: foreign.
        let mut s = Sink::new(2);
        let mut other = vec![0u8; 64];
        t.write(&mut other);
        t.stamp(&mut other, 9, 1, 0, 0);
        s.record(&other, 0);
        s.record(&[1, 2, 3], 0);
        for (_, ts, f) in &frames {
            s.record(f, ts + 1_000);
        }
        let r = Report::new(g.sent, &s, 2.0);
        assert_eq!(r.sent, 100);
        assert_eq!(r.received, 90);
        assert_eq!(r.lost, 10);
        assert_eq!(r.reordered, 2);
        assert_eq!(r.foreign, 2);
        assert_eq!(r.rx_pps(), 45.0);
    }

    /// Percentiles come from the latencies recorded: 1..=1000 µs uniformly.
    #[test]
    fn histogram_percentiles() {
        let t = template();
        let mut s = Sink::new(1);
        let mut b = vec![0u8; 64];
        t.write(&mut b);
        for i in 1..=1000u32 {
            t.stamp(&mut b, 0, 1, i, 0);
            s.record(&b, i as u64 * 1_000);
        }
        let l = Latency::of(&s.latency);
        let near = |v: u64, want: u64| v.abs_diff(want) <= want / 500 + 1;
        assert!(near(l.p50, 500_000), "{l:?}");
        assert!(near(l.p90, 900_000), "{l:?}");
        assert!(near(l.p99, 990_000), "{l:?}");
        assert!(near(l.p999, 999_000), "{l:?}");
        assert!(near(l.max, 1_000_000), "{l:?}");
        let j = Report::new(1000, &s, 1.0).json();
        assert_eq!(j["lost"], 0);
        assert!(
            j["latency"]["p99_ns"]
                .as_u64()
                .is_some_and(|v| near(v, 990_000))
        );
    }

    /// Sequence numbers wrap without being taken for reordering.
    #[test]
    fn sequence_wraps() {
        let t = template();
        let mut s = Sink::new(1);
        let mut b = vec![0u8; 64];
        t.write(&mut b);
        for seq in [u32::MAX - 1, u32::MAX, 0, 1] {
            t.stamp(&mut b, 0, 1, seq, 0);
            s.record(&b, 10);
        }
        assert_eq!((s.received, s.reordered), (4, 0));
        t.stamp(&mut b, 0, 1, u32::MAX, 0);
        s.record(&b, 10);
        assert_eq!(s.reordered, 1);
    }
}
