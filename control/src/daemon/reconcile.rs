//! Reconcile: brings the dataplane in line with the controller. Next hops of other nodes go
//! to the controller, pod interfaces are attached to (or detached from) workers and their
//! endpoints handed to the controller, the table is built and published when it changed, the
//! uplink's steered frontends follow the services. The controller is the only writer of the
//! table builder; this module only talks to it through its API.

use super::neighbours::probe;
use super::*;
use crate::translate::LocalPod;
use std::time::{Duration, Instant};
use xdpnet_dataplane::fib::{Endpoint, Fib};
use xdpnet_dataplane::runtime::PortRole;
use xdpnet_dataplane::steer;

impl Daemon {
    /// Brings ports, endpoints and other nodes in line with the controller; builds and
    /// publishes when the table changed. `since`: when the first event of this batch arrived.
    pub(super) fn sync(&mut self, since: Option<Instant>) {
        let mut warnings = self.ctl.warnings();
        for r in self.ctl.set_next_hops(&self.neigh) {
            probe(r.underlay_ip);
            warnings.push(format!(
                "node {}: next hop {} not resolved yet",
                r.name, r.underlay_ip
            ));
        }
        let want = self.wanted_pods();
        self.attach_new(&want);
        let eps = self
            .pods
            .iter()
            .filter(|(i, _)| want.contains_key(*i))
            .map(|(_, a)| Endpoint {
                ip: a.ip,
                mac: a.mac,
                port: a.port,
                policy_id: 0,
            });
        self.attach_errors
            .retain(|_, e| !matches!(e, LoopError::Refused { .. }));
        for (ep, e) in self.ctl.set_endpoints(eps) {
            warnings.push(format!("endpoint {}: {e}", ep.ip));
            if let Some((i, _)) = self.pods.iter().find(|(_, a)| a.ip == ep.ip) {
                let host_if = i.clone();
                self.attach_errors
                    .insert(host_if.clone(), LoopError::Refused { host_if, error: e });
            }
        }
        let t = Instant::now();
        if let Some(fib) = self.ctl.build() {
            self.publish(fib, since, t);
        }
        warnings.extend(self.ctl.build_warnings().iter().map(|w| w.to_string()));
        warnings.extend(self.attach_errors.values().map(|e| e.to_string()));
        self.detach_gone(&want);
        let fronts = steer::frontends(self.ctl.node().underlay_ip, self.ctl.specs());
        if let Err(e) = self.dp.set_frontends(fronts) {
            warnings.push(format!("steering: {e}"));
        }
        self.log_warnings(warnings);
        if let Ok(mut r) = self.view.reserved.lock() {
            *r = self.ctl.local_pods().iter().map(|p| p.ip).collect();
        }
    }

    /// The pods to attach, by host interface: those the CNI endpoint wired, and those the
    /// cluster state wires by annotation (hand-wired labs).
    pub(super) fn wanted_pods(&self) -> BTreeMap<String, LocalPod> {
        let mut want: BTreeMap<String, LocalPod> = self
            .ctl
            .local_pods()
            .iter()
            .map(|p| (p.ifname.clone(), p.clone()))
            .collect();
        for (i, p) in &self.cni_pods {
            want.insert(
                i.clone(),
                LocalPod {
                    key: p.key.clone(),
                    ip: p.ip,
                    mac: p.mac,
                    ifname: i.clone(),
                    tap: p.tap.clone(),
                },
            );
        }
        want
    }

    fn next_port(&self) -> Option<PortId> {
        let used: BTreeSet<PortId> = self.pods.values().map(|a| a.port).collect();
        (FIRST_POD_PORT..xdpnet_dataplane::runtime::MAX_PORTS as PortId).find(|p| !used.contains(p))
    }

    /// Attaches the wanted pods not attached yet (failures are kept for the CNI's answer).
    fn attach_new(&mut self, want: &BTreeMap<String, LocalPod>) {
        self.attach_errors.retain(|i, _| want.contains_key(i));
        self.tap_fds.retain(|i, _| want.contains_key(i));
        for (ifname, p) in want {
            if let Some(a) = self.pods.get_mut(ifname) {
                a.ip = p.ip;
                a.mac = p.mac;
                continue;
            }
            let Some(port) = self.next_port() else {
                self.attach_errors
                    .insert(ifname.clone(), LoopError::NoPortId(ifname.clone()));
                continue;
            };
            let r = match &p.tap {
                Some(place) => match self.tap_fds.remove(ifname) {
                    Some(fd) => Ok(fd),
                    None => place.open(),
                }
                .map_err(|e| e.to_string())
                .and_then(|fd| {
                    self.dp
                        .add_tap_port(port, ifname, fd)
                        .map_err(|e| e.to_string())
                }),
                None => self
                    .dp
                    .add_port(port, ifname, PortRole::Pod)
                    .map_err(|e| e.to_string()),
            };
            match r {
                Ok(()) => {
                    log!(
                        self.cfg.node_name,
                        "attached pod {} ({} on {ifname}, port {port})",
                        p.key,
                        p.ip
                    );
                    self.attach_errors.remove(ifname);
                    let (ip, mac) = (p.ip, p.mac);
                    self.pods.insert(ifname.clone(), Attached { port, ip, mac });
                }
                Err(e) => {
                    let err = LoopError::AttachFailed {
                        host_if: ifname.clone(),
                        reason: format!("pod {}: {e}", p.key),
                    };
                    self.attach_errors.insert(ifname.clone(), err);
                }
            }
        }
    }

    /// Detaches the attached pods no longer wanted (after the table without them is live).
    fn detach_gone(&mut self, want: &BTreeMap<String, LocalPod>) {
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|i| !want.contains_key(*i))
            .cloned()
            .collect();
        for ifname in gone {
            if let Some(a) = self.pods.remove(&ifname) {
                self.dp.remove_port(a.port);
                log!(self.cfg.node_name, "detached {ifname} (port {})", a.port);
            }
        }
    }

    /// Publishes `fib`, waits for the workers to take it, expires UDP flows to removed
    /// backends (when a UDP service port lost one).
    /// `t`: when the build began.
    fn publish(&mut self, fib: Fib, since: Option<Instant>, t: Instant) {
        self.metrics.build.observe(t.elapsed());
        let generation = fib.generation();
        let published = self.dp.publish(fib);
        if let Some(since) = since {
            self.metrics.event_to_publish.observe(since.elapsed());
        }
        self.metrics.publishes += 1;
        let fib = self.dp.fib();
        // The conntrack walk only when a UDP backend went away (it touches every bucket, on
        // the workers' memory: not for every publish of a busy cluster).
        let purge = fib.udp_backends_removed_since(&published.old);
        published.wait_for_readers(Duration::from_secs(1));
        let expired = if purge {
            self.dp.conntrack().expire_removed_udp_backends(&fib)
        } else {
            0
        };
        log!(
            self.cfg.node_name,
            "published table generation {generation} ({} services, {} local pods, {} remote nodes) built in {:?}{}",
            self.ctl.service_count(),
            fib.endpoints().count(),
            fib.remote_nodes().len(),
            t.elapsed(),
            if expired > 0 {
                format!(", {expired} UDP flows to removed backends expired")
            } else {
                String::new()
            }
        );
        self.view.ready.store(true, Ordering::Relaxed);
        self.persist.mark_due();
    }

    /// Logs each warning once while it lasts; keeps the current ones for the reports.
    fn log_warnings(&mut self, warnings: Vec<String>) {
        for w in &warnings {
            if self.logged.insert(w.clone()) {
                log!(self.cfg.node_name, "warning: {w}");
            }
        }
        self.logged.retain(|w| warnings.contains(w));
        self.warnings = warnings;
    }
}
