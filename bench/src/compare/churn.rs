//! Table churn under load: endpoint changes of a service no run uses, pushed through the API
//! server double (the daemons watch it) while the cross-node scenario runs at a fixed rate,
//! bracketed by the same run without churn.

use super::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// The churned service's name (namespace `lab`).
const CHURN_SERVICE: &str = "churn";

/// One churn measurement.
#[derive(Debug, Clone)]
pub struct ChurnRun {
    /// Endpoint changes asked for per second.
    pub rate: u32,
    /// The offered rate of the runs, packets/s.
    pub offered: f64,
    /// Without churn, before.
    pub before: Measured,
    /// With churn.
    pub during: Measured,
    /// Without churn, after.
    pub after: Measured,
    /// EndpointSlice changes pushed during the churned run.
    pub changes: u64,
    /// Tables both daemons published meanwhile.
    pub publishes: u64,
    /// How long the churn ran, seconds.
    pub seconds: f64,
}

impl ChurnRun {
    /// Delivered with churn over the mean of the runs without it.
    pub fn ratio(&self) -> f64 {
        let base = (self.before.rate() + self.after.rate()) / 2.0;
        self.during.rate() / base.max(1e-9)
    }

    /// Every frame of the churned run received or counted as dropped somewhere.
    pub fn balanced(&self) -> bool {
        let r = &self.during.outcome.report;
        r.sent == r.received + self.during.path_drops()
    }

    pub(super) fn json(&self) -> Value {
        json!({
            "rate": self.rate, "offered_pps": self.offered.round(),
            "changes": self.changes, "publishes": self.publishes, "seconds": self.seconds,
            "publishes_per_second": self.publishes as f64 / self.seconds.max(1e-9),
            "delivered_over_without": self.ratio(), "balanced": self.balanced(),
            "before": self.before.json(), "during": self.during.json(), "after": self.after.json(),
        })
    }
}

impl Bed {
    fn publishes(&self) -> u64 {
        (0..self.lab.nodes.len())
            .filter_map(|n| self.lab.status(n)?["publishes"].as_u64())
            .sum()
    }

    /// Cross node at `offered` packets/s, without churn, with `rate` endpoint changes a
    /// second (a service of its own, two backends, one of them going and coming back), and
    /// without again. Needs the lab's API server double (`Options::churn`).
    pub fn churn(&self, offered: f64, rate: u32) -> Result<ChurnRun> {
        let api = self
            .lab
            .api()
            .context("churn needs the lab's API server double")?;
        let pod = |name: &str| self.lab.pod(name);
        let (a, b) = (pod("pod-1-1")?, pod("pod-2-1")?);
        let ep = |p: &lab::LabPod| {
            json!({"addresses": [p.ip.to_string()], "conditions": {"ready": true},
                   "nodeName": self.lab.nodes[p.node].name})
        };
        let (ea, eb) = (ep(a), ep(b));
        api.upsert(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": CHURN_SERVICE, "namespace": "lab"},
            "spec": {"type": "ClusterIP", "clusterIP": "10.99.0.1",
                     "ports": [{"name": "p", "port": 80, "targetPort": POD_PORT, "protocol": "TCP"}]},
        }));
        let slice = |two: bool| {
            let eps = if two {
                vec![ea.clone(), eb.clone()]
            } else {
                vec![ea.clone()]
            };
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{CHURN_SERVICE}-1"), "namespace": "lab",
                             "labels": {"kubernetes.io/service-name": CHURN_SERVICE}},
                "addressType": "IPv4",
                "ports": [{"name": "p", "port": POD_PORT, "protocol": "TCP"}],
                "endpoints": eps,
            })
        };
        api.upsert(slice(true));
        let spec = self.spec(Scenario::CrossNode, Some(offered), self.opts.seconds)?;
        let before = self.measure(&spec)?;
        let stop = AtomicBool::new(false);
        let changes = AtomicU64::new(0);
        let p0 = self.publishes();
        let t0 = Instant::now();
        let during = std::thread::scope(|sc| {
            sc.spawn(|| {
                // The churn stands for the API server: on the generator's core, not the
                // dataplane's.
                let _ = loadgen::pin_to_core(self.opts.gen_core);
                let tick = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
                let mut next = Instant::now();
                let mut two = false;
                while !stop.load(Ordering::Relaxed) {
                    api.upsert(slice(two));
                    two = !two;
                    changes.fetch_add(1, Ordering::Relaxed);
                    next += tick;
                    if let Some(d) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                }
            });
            let m = self.measure(&spec);
            stop.store(true, Ordering::Relaxed);
            m
        })?;
        let seconds = t0.elapsed().as_secs_f64();
        let publishes = self.publishes().saturating_sub(p0);
        let after = self.measure(&spec)?;
        Ok(ChurnRun {
            rate,
            offered,
            before,
            during,
            after,
            changes: changes.into_inner(),
            publishes,
            seconds,
        })
    }
}
