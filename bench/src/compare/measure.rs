//! Measurement: CPU per core from /proc/stat, drop counters on the path, a run measured, the
//! saturation search.

use super::*;

/// Per-core busy time from /proc/stat: (busy, total) jiffies per CPU.
pub(super) fn cpu_times() -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

pub(super) fn busy(before: &[(u64, u64)], after: &[(u64, u64)], core: usize) -> f64 {
    match (before.get(core), after.get(core)) {
        (Some(b), Some(a)) if a.1 > b.1 => (a.0 - b.0) as f64 / (a.1 - b.1) as f64,
        _ => 0.0,
    }
}

/// One measured run with the CPU it took.
#[derive(Debug, Clone)]
pub struct Measured {
    /// What the generator and sink saw.
    pub outcome: Outcome,
    /// Busy fraction of the dataplane core.
    pub cpu_dp: f64,
    /// Busy fraction of the generator core.
    pub cpu_gen: f64,
    /// Drops counted on the way, by the place that counted them (nonzero places only):
    /// xdpnetd's counters and every interface's in the lab (the sink's socket drops
    /// included: its interface counts them).
    pub drop_places: Drops,
}

impl Measured {
    /// Drops counted on the way, in all.
    pub fn path_drops(&self) -> u64 {
        self.drop_places.values().sum()
    }

    /// What the run delivered per second: packets at the sink, or for full handshakes the
    /// handshakes completed (the ACK reached the server).
    pub fn rate(&self) -> f64 {
        self.delivered() as f64 / self.outcome.report.seconds.max(1e-9)
    }

    pub(super) fn delivered(&self) -> u64 {
        match &self.outcome.handshakes {
            Some(h) => h.established,
            None => self.outcome.report.received,
        }
    }

    /// Lost: sent and not delivered (packets, or handshakes not completed).
    pub fn lost(&self) -> u64 {
        self.outcome.report.sent.saturating_sub(self.delivered())
    }

    /// The outcome's JSON with the CPU figures, the path's drops and where they were counted.
    pub fn json(&self) -> Value {
        let mut v = self.outcome.json();
        v["cpu_dataplane_core"] = self.cpu_dp.into();
        v["cpu_generator_core"] = self.cpu_gen.into();
        v["path_drops"] = self.path_drops().into();
        v["drop_places"] = serde_json::to_value(&self.drop_places).unwrap_or_default();
        v
    }
}

/// Drops xdpnetd counted, by place (`NODE/worker K/COUNTER`, `NODE/steering early_drop`;
/// nonzero ones only): pipeline drops, I/O drops and the XDP program's early drops. Not its
/// sockets' kernel drops (no fill buffer, RX ring full): on veth the interface counts each of
/// those too (a failed XDP redirect is an `rx_dropped` of the interface), and
/// [`lab::link_drop_places`] reads those.
pub fn xdpnet_drop_places(status: &Value, node: &str) -> Drops {
    let mut m = Drops::new();
    for (k, w) in status["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let mut add = |name: &str, v: &Value| {
            let n = v.as_u64().unwrap_or(0);
            if n > 0 {
                *m.entry(format!("{node}/worker {k}/{name}")).or_default() += n;
            }
        };
        for (reason, v) in w["pipeline"]["drops"].as_object().into_iter().flatten() {
            add(&format!("pipeline {reason}"), v);
        }
        for c in ["tx_ring_full", "handoff_drop", "no_socket"] {
            add(c, &w[c]);
        }
        add("tap drops", &w["tap"]["drops"]);
    }
    // Admission control: the XDP program's drops for a worker that was behind.
    let n = status["steering"]["early_drop"].as_u64().unwrap_or(0);
    if n > 0 {
        m.insert(format!("{node}/steering early_drop"), n);
    }
    m
}

/// Drop counts by the place that counted them.
pub type Drops = std::collections::BTreeMap<String, u64>;

/// What moved from `before` to `after`, nonzero places only.
fn drops_between(before: &Drops, after: &Drops) -> Drops {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

impl Bed {
    /// Drops counted on the path now, by place: xdpnetd's counters when it runs, plus every
    /// interface drop in the lab's namespaces (nodes, pods, underlay, client).
    pub fn path_drop_places(&self) -> Result<Drops> {
        let mut m = Drops::new();
        if matches!(
            self.variant,
            Some(Variant::Full | Variant::IoOnly | Variant::Tap)
        ) {
            for (i, node) in self.lab.nodes.iter().enumerate() {
                if let Some(s) = self.lab.status(i) {
                    m.extend(xdpnet_drop_places(&s, &node.name));
                }
            }
        }
        let spaces = self.lab.nodes.iter().map(|n| &n.ns);
        let spaces = spaces.chain(self.lab.pods.iter().map(|p| &p.ns));
        for ns in spaces.chain([&self.lab.underlay_ns, &self.lab.ext_ns]) {
            m.extend(lab::link_drop_places(ns)?);
        }
        Ok(m)
    }

    /// Runs `spec`, measuring both cores (and not the drop counters: quicker).
    pub fn probe(&self, spec: &RunSpec) -> Result<Measured> {
        let c0 = cpu_times();
        let outcome = loadgen::run(spec)?;
        let c1 = cpu_times();
        Ok(Measured {
            cpu_dp: busy(&c0, &c1, self.opts.dp_core),
            cpu_gen: busy(&c0, &c1, self.opts.gen_core),
            drop_places: Drops::new(),
            outcome,
        })
    }

    /// The most this variant delivers in scenario `s`: one run offered at the generator's
    /// full speed, then a search for the highest offered rate losing at most 1 % (a
    /// forwarder overloaded past its capacity may deliver less than at its capacity: receive
    /// work for frames it then drops): from what full speed delivered, doubling while
    /// nothing is lost or halving while something is, then bisecting. Returns the run
    /// that delivered most, and the search's figures.
    pub fn saturate(&self, s: Scenario) -> Result<Saturation> {
        let blast = self.measure(&self.spec(s, None, self.opts.seconds)?)?;
        let mut best = blast.clone();
        let mut pdr = 0.0f64;
        // First probe: what reached the sink at full speed (packets; for handshakes the SYNs,
        // an upper bound of the handshakes a second), or, when full speed collapsed (under a
        // quarter of the offered rate got through), the geometric mean of the two. Then
        // double while nothing is lost (halve while something is), then bisect the bracket.
        let (rx, tx) = (blast.outcome.report.rx_pps(), blast.outcome.report.tx_pps());
        let mut rate = if rx * 4.0 < tx { (rx * tx).sqrt() } else { rx };
        let (mut ok, mut bad): (Option<f64>, Option<f64>) = (None, None);
        // Let the overload drain out of every queue before probing.
        std::thread::sleep(Duration::from_millis(500));
        for _ in 0..self.opts.probes {
            if rate <= 1_000.0 {
                break;
            }
            let m = self.probe(&self.spec(s, Some(rate), self.opts.seconds)?)?;
            if m.lost() as f64 <= m.outcome.report.sent as f64 * 0.01 {
                ok = Some(ok.map_or(rate, |o| o.max(rate)));
                pdr = pdr.max(m.rate());
            } else {
                bad = Some(bad.map_or(rate, |b| b.min(rate)));
            }
            if m.rate() > best.rate() {
                best = m;
            }
            rate = match (ok, bad) {
                (Some(o), None) => o * 2.0,
                (None, Some(b)) => b / 2.0,
                (Some(o), Some(b)) => (o + b) / 2.0,
                (None, None) => break,
            };
        }
        Ok(Saturation {
            blast_rx_pps: blast.rate(),
            blast_tx_pps: blast.outcome.report.tx_pps(),
            pdr_pps: pdr,
            best,
        })
    }

    /// Runs `spec`, measuring both cores and the path's drop counters.
    pub fn measure(&self, spec: &RunSpec) -> Result<Measured> {
        // xdpnetd refreshes its status (and its sockets' kernel counters) about once a second.
        let settle = || {
            if matches!(
                self.variant,
                Some(Variant::Full | Variant::IoOnly | Variant::Tap)
            ) {
                std::thread::sleep(Duration::from_millis(1_600));
            }
        };
        settle();
        let d0 = self.path_drop_places()?;
        let c0 = cpu_times();
        let outcome = loadgen::run(spec)?;
        let c1 = cpu_times();
        settle();
        let d1 = self.path_drop_places()?;
        let drop_places = drops_between(&d0, &d1);
        Ok(Measured {
            cpu_dp: busy(&c0, &c1, self.opts.dp_core),
            cpu_gen: busy(&c0, &c1, self.opts.gen_core),
            drop_places,
            outcome,
        })
    }
}

pub(super) fn mpps(m: &Measured) -> f64 {
    m.rate() / 1e6
}

pub(super) fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}
