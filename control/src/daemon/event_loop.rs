//! The event loop: CNI requests, cluster-state events (a burst is coalesced into one refresh:
//! the loop keeps taking events while they come less than 200 µs apart, for at most 2 ms),
//! the source's health, conntrack ageing, next-hop changes, and once a second the state file,
//! the status file and the reports. Runs until `stop` is set.

use super::neighbours::probe;
use super::*;
use crate::cni::{PodOp, PodRequest};
use crate::state::{Event, Source};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// A burst of events is taken while they come closer than this (a watch stream's burst
/// arrives back to back; changes spread over time, even 1,000 a second, each publish)...
const COALESCE_GAP: Duration = Duration::from_micros(200);
/// ...for at most this long.
const COALESCE_MAX: Duration = Duration::from_millis(2);
/// Unresolved next hops are re-read at most this often without a kernel notification.
const NEIGH_RETRY: Duration = Duration::from_millis(200);

/// Runs the loop until `stop` is set; `reload` forces a re-read of the state.
pub(super) fn run(
    d: &mut Daemon,
    source: &mut dyn Source,
    cni: &Receiver<PodRequest>,
    stop: &AtomicBool,
    reload: &AtomicBool,
) {
    let mut last_slow = Instant::now();
    let mut last_neigh = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if reload.swap(false, Ordering::Relaxed) {
            source.reload();
        }
        d.serve_cni(cni);
        d.take_events(source);
        d.watch_health(source);
        let now = d.dp.now_secs();
        d.dp.conntrack().gc(now, 2048);
        d.refresh_neighbours(&mut last_neigh);
        if last_slow.elapsed() >= Duration::from_secs(1) {
            last_slow = Instant::now();
            d.absent_kinds = source.absent_kinds();
            d.slow_tick();
        }
    }
}

impl Daemon {
    /// Takes what the source has (waiting up to 10 ms), coalescing a burst, and applies it.
    fn take_events(&mut self, source: &mut dyn Source) {
        match source.next(Duration::from_millis(10)) {
            Ok(evs) if !evs.is_empty() => {
                let since = Instant::now();
                let mut batch = evs;
                while since.elapsed() < COALESCE_MAX {
                    match source.next(COALESCE_GAP) {
                        Ok(more) if !more.is_empty() => batch.extend(more),
                        _ => break,
                    }
                }
                self.handle(batch, since);
            }
            Ok(_) => {}
            Err(e) => {
                self.metrics.source_errors += 1;
                let msg = format!(
                    "cluster state from {} not used (keeping the current one): {e}",
                    source.describe()
                );
                if self.logged.insert(msg.clone()) {
                    log!(self.cfg.node_name, "{msg}");
                }
            }
        }
    }

    /// Applies a batch of events and syncs.
    fn handle(&mut self, events: Vec<Event>, since: Instant) {
        let vtep = (self.ctl.node().underlay_ip, self.ctl.node().vxlan_port);
        self.metrics.events += events.len() as u64;
        for e in events {
            self.ctl.apply(e);
        }
        let ch = self.ctl.refresh();
        let node = self.ctl.node();
        if (node.underlay_ip, node.vxlan_port) != vtep {
            if let Err(e) = self.dp.set_vtep(node.underlay_ip, node.vxlan_port) {
                log!(self.cfg.node_name, "steering: {e}");
            }
        }
        if ch.nodes {
            for r in self.ctl.remotes() {
                if !self.neigh.contains_key(&r.underlay_ip) {
                    probe(r.underlay_ip);
                }
            }
        }
        self.sync(Some(since));
    }

    /// Logs the source turning degraded or healthy.
    fn watch_health(&mut self, source: &dyn Source) {
        let deg = source.degraded();
        if deg != self.degraded {
            self.degraded = deg;
            log!(
                self.cfg.node_name,
                "{}: {}",
                source.describe(),
                if deg {
                    "degraded (forwarding with the last table)"
                } else {
                    "healthy again"
                }
            );
        }
    }

    /// Re-reads the neighbour table when the kernel announced a change (or, while a next hop
    /// is unresolved, every 200 ms); syncs when a next hop changed.
    fn refresh_neighbours(&mut self, last: &mut Instant) {
        let unresolved = self
            .remote_ips()
            .iter()
            .any(|ip| !self.neigh.contains_key(ip));
        if !(self.neigh_src.changed() || (unresolved && last.elapsed() >= NEIGH_RETRY)) {
            return;
        }
        *last = Instant::now();
        let n = self.neigh_src.read();
        let changed = self
            .remote_ips()
            .iter()
            .any(|ip| n.get(ip) != self.neigh.get(ip));
        self.neigh = n;
        if changed {
            self.sync(None);
        }
    }

    /// Once a second: retries what is not done yet, saves the state, writes the reports.
    fn slow_tick(&mut self) {
        let unresolved = self
            .remote_ips()
            .iter()
            .any(|ip| !self.neigh.contains_key(ip));
        if unresolved || self.wanted_pods().len() != self.pods.len() {
            self.sync(None);
        }
        self.persist
            .save_state(self.ctl.state(), false, &self.cfg.node_name);
        self.write_status();
    }

    /// Serves the CNI endpoint's requests waiting in `rx`: applies them, syncs once, answers.
    fn serve_cni(&mut self, rx: &Receiver<PodRequest>) {
        let mut batch: Vec<PodRequest> = rx.try_iter().collect();
        if batch.is_empty() {
            return;
        }
        let since = Instant::now();
        let mut changed = false;
        for r in &mut batch {
            match &mut r.op {
                PodOp::Attach(p, fd) => {
                    if let Some(fd) = fd.take() {
                        self.tap_fds.insert(p.host_if.clone(), fd);
                    }
                    changed |= self.cni_pods.get(&p.host_if) != Some(p);
                    self.cni_pods.insert(p.host_if.clone(), p.clone());
                }
                PodOp::Detach(h) => changed |= self.cni_pods.remove(h).is_some(),
                PodOp::Check(_) => {}
            }
        }
        if changed {
            self.sync(Some(since));
        }
        for r in batch {
            let answer = match &r.op {
                PodOp::Attach(p, _) => self.attached(&p.host_if),
                PodOp::Check(h) => self.attached(h),
                PodOp::Detach(h) if self.pods.contains_key(h) => {
                    Err(LoopError::StillAttached(h.clone()))
                }
                PodOp::Detach(_) => Ok(()),
            };
            let _ = r.reply.send(answer);
        }
    }

    /// Ok when `host_if` is attached and in the published table; else why not.
    fn attached(&self, host_if: &str) -> Result<(), LoopError> {
        match self.pods.get(host_if) {
            Some(a) if self.dp.fib().endpoint(a.ip.into()).is_some() => Ok(()),
            Some(a) => {
                Err(self
                    .attach_errors
                    .get(host_if)
                    .cloned()
                    .unwrap_or(LoopError::NotInTable {
                        host_if: host_if.to_string(),
                        ip: a.ip,
                    }))
            }
            None => Err(self
                .attach_errors
                .get(host_if)
                .cloned()
                .unwrap_or_else(|| LoopError::NotAttached(host_if.to_string()))),
        }
    }
}
