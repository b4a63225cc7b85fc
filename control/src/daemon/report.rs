//! What the daemon reports: the status file, the inspection dump, the Prometheus metrics.
//!
//! The dataplane's counters are not listed here: each counter set describes itself
//! (`xdpnet_dataplane::counters`: key, Prometheus name, help, kind) and the three reports are
//! generated from those descriptions, so a new counter shows up in all of them or none.

use super::*;
use crate::metrics::{Text, label};
use crate::state::Kind;
use serde_json::{Map, Value, json};
use xdpnet_dataplane::counters::{Counters, DROPS_HELP, DROPS_KEY, DROPS_METRIC, Desc, DropReason};
use xdpnet_dataplane::runtime::WorkerStats;
use xdpnet_dataplane::wire::proto;
use xdpnet_dataplane::worker::IoCounters;

fn proto_name(p: u8) -> &'static str {
    match p {
        proto::TCP => "TCP",
        proto::UDP => "UDP",
        proto::ICMP => "ICMP",
        _ => "?",
    }
}

/// Sets `key` (dots nest) in `obj` to `v`.
fn put(obj: &mut Map<String, Value>, key: &str, v: Value) {
    match key.split_once('.') {
        Some((head, rest)) => {
            let e = obj
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(inner) = e {
                put(inner, rest, v);
            }
        }
        None => {
            obj.insert(key.to_string(), v);
        }
    }
}

/// Every described counter of one worker, with its value, in description order.
fn worker_values(w: &WorkerStats) -> Vec<(&'static Desc, u64)> {
    let mut out = Vec::with_capacity(IoCounters::DESCS.len() + Counters::DESCS.len());
    w.io.for_each(|d, v| out.push((d, v)));
    w.pipeline.for_each(|d, v| out.push((d, v)));
    out
}

/// A worker's counters as the status JSON nests them.
fn worker_json(w: &WorkerStats) -> Value {
    let mut o = Map::new();
    o.insert("core".into(), json!(w.core));
    for (d, v) in worker_values(w) {
        put(&mut o, d.key, json!(v));
    }
    let drops: Map<String, Value> = DropReason::ALL
        .iter()
        .map(|&r| (r.name().to_string(), json!(w.pipeline.drops(r))))
        .collect();
    put(&mut o, DROPS_KEY, Value::Object(drops));
    Value::Object(o)
}

/// The MAC a remote node's frames go to.
fn next_hop(r: &xdpnet_dataplane::fib::RemoteNode) -> String {
    r.outer.next_hop_mac().to_string()
}

impl Daemon {
    pub(super) fn status(&self) -> Value {
        let fib = self.dp.fib();
        let workers: Vec<Value> = self.dp.workers().iter().map(worker_json).collect();
        let st = self.ctl.state();
        let mut v = json!({
            "node": self.cfg.node_name,
            "pid": std::process::id(),
            "ready": self.is_ready(),
            "generation": fib.generation(),
            "publishes": self.metrics.publishes,
            "source_degraded": self.degraded,
            "objects": {"nodes": st.nodes.len(), "pods": st.pods.len(),
                        "services": st.services.len(), "endpointslices": st.slices.len(),
                        "namespaces": st.namespaces.len()},
            "services": self.ctl.service_count(),
            "local_endpoints": fib.endpoints().count(),
            "remote_nodes": fib.remote_nodes().iter().map(|r| json!({
                "name": r.name, "underlay_ip": r.underlay_ip.to_string(), "next_hop_mac": next_hop(r)
            })).collect::<Vec<_>>(),
            "ports": self.dp.ports().iter().map(|p| json!({
                "id": p.id, "ifname": p.ifname, "role": format!("{:?}", p.role), "queues": p.queues
            })).collect::<Vec<_>>(),
            "frontends": self.dp.frontends().iter().map(|f| format!("{}:{}/{}", f.addr, f.port, f.proto)).collect::<Vec<_>>(),
            "workers": workers,
            "warnings": self.warnings,
        });
        if let Value::Object(o) = &mut v {
            self.dp
                .steering_counters()
                .for_each(|d, n| put(o, d.key, json!(n)));
            self.dp
                .conntrack()
                .counters()
                .for_each(|d, n| put(o, d.key, json!(n)));
        }
        v
    }

    pub(super) fn write_status(&self) {
        self.view.heartbeat.store(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            Ordering::Relaxed,
        );
        if let Ok(mut m) = self.view.metrics.lock() {
            *m = self.metrics_text();
        }
        if let Ok(mut i) = self.view.inspect.lock() {
            *i = serde_json::to_string(&self.inspect(10_000)).unwrap_or_default();
        }
        let Some(path) = &self.cfg.status_file else {
            return;
        };
        let body = serde_json::to_vec_pretty(&self.status()).unwrap_or_default();
        if let Err(e) = crate::files::replace(path, &body) {
            log!(
                self.cfg.node_name,
                "cannot write status file {}: {e}",
                path.display()
            );
        }
    }

    /// Services, endpoints, routes, conntrack (up to `ct_limit` entries) and counters.
    pub(super) fn inspect(&self, ct_limit: usize) -> Value {
        let fib = self.dp.fib();
        let services: Vec<Value> = fib
            .lbs()
            .iter()
            .map(|lb| {
                json!({
                    "name": lb.name, "protocol": proto_name(lb.proto), "port": lb.port,
                    "backends": lb.backends.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
                    "local_backends": lb.local.len(),
                    "affinity_timeout": lb.affinity_timeout,
                    "external_local": lb.external_local, "internal_local": lb.internal_local,
                })
            })
            .collect();
        let strs = |v: &[Ipv4Addr]| v.iter().map(|i| i.to_string()).collect::<Vec<_>>();
        let frontends: Vec<Value> = self
            .ctl
            .specs()
            .map(|s| {
                json!({
                    "name": s.name,
                    "cluster_ips": strs(&s.cluster_ips),
                    "load_balancer_ips": strs(&s.load_balancer_ips),
                    "external_ips": strs(&s.external_ips),
                    "node_ports": s.ports.iter().filter_map(|p| p.node_port).collect::<Vec<_>>(),
                })
            })
            .collect();
        let endpoints: Vec<Value> = fib
            .endpoints()
            .map(|e| json!({"ip": e.ip.to_string(), "mac": e.mac.to_string(), "port": e.port}))
            .collect();
        let routes: Vec<Value> = fib
            .remote_nodes()
            .iter()
            .map(|r| {
                json!({
                    "node": r.name, "underlay_ip": r.underlay_ip.to_string(),
                    "next_hop_mac": next_hop(r),
                    "pod_cidrs": r.pod_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                    "addresses": strs(&r.addrs),
                })
            })
            .collect();
        json!({
            "node": self.cfg.node_name,
            "generation": fib.generation(),
            "services": services,
            "frontends": frontends,
            "endpoints": endpoints,
            "routes": routes,
            "node_addresses": strs(&fib.node().addrs),
            "conntrack": self.conntrack_dump(ct_limit),
            "policy": self.policy_dump(&fib),
            "counters": self.dp.workers().iter().map(worker_json).collect::<Vec<_>>(),
        })
    }

    /// The policy in force for this node's pods, and each policy's counters.
    fn policy_dump(&self, fib: &xdpnet_dataplane::fib::Fib) -> Value {
        let st = self.ctl.state();
        let pods: Vec<(Ipv4Addr, String, u32)> = fib
            .endpoints()
            .filter(|e| e.policy_id != 0)
            .map(|e| {
                let key = st
                    .pods
                    .iter()
                    .find(|(_, p)| crate::policy::pod_ipv4(p) == Some(e.ip))
                    .map(|(k, _)| k.clone())
                    .unwrap_or_else(|| e.ip.to_string());
                (e.ip, key, e.policy_id)
            })
            .collect();
        crate::policy::table_json(fib.policy(), &pods)
    }

    /// Conntrack entries (up to `limit` of them) and their total.
    fn conntrack_dump(&self, limit: usize) -> Value {
        let mut ct = Vec::new();
        let mut total = 0usize;
        let ip = |a: u32| Ipv4Addr::from(a).to_string();
        self.dp.conntrack().for_each(|e| {
            total += 1;
            if ct.len() < limit {
                ct.push(json!({
                    "protocol": proto_name(e.key.proto),
                    "from": format!("{}:{} -> {}:{}", ip(e.key.src), e.key.sport, ip(e.key.dst), e.key.dport),
                    "to": format!("{}:{} -> {}:{}", ip(e.xlate.src), e.xlate.sport, ip(e.xlate.dst), e.xlate.dport),
                    "flags": e.flags, "last_seen": e.last_seen,
                }));
            }
        });
        json!({"entries": total, "shown": ct})
    }

    /// Prometheus text.
    pub(super) fn metrics_text(&self) -> String {
        let mut t = Text::default();
        self.control_metrics(&mut t);
        let node = |t: &mut Text, d: &Desc, v: u64| {
            t.family(d.metric, d.kind.prometheus(), d.help);
            t.sample(d.metric, "", v);
        };
        self.dp
            .steering_counters()
            .for_each(|d, v| node(&mut t, d, v));
        self.dp
            .conntrack()
            .counters()
            .for_each(|d, v| node(&mut t, d, v));
        let ws = self.dp.workers();
        let values: Vec<Vec<(&'static Desc, u64)>> = ws.iter().map(worker_values).collect();
        let descs = IoCounters::DESCS.iter().chain(Counters::DESCS);
        for (k, d) in descs.enumerate() {
            t.family(d.metric, d.kind.prometheus(), d.help);
            for (i, (w, vals)) in ws.iter().zip(&values).enumerate() {
                let labels = format!("worker=\"{i}\",core=\"{}\"", w.core);
                t.sample(d.metric, &labels, vals.get(k).map_or(0, |x| x.1));
            }
        }
        t.family(DROPS_METRIC, "counter", DROPS_HELP);
        for (i, w) in ws.iter().enumerate() {
            for &r in DropReason::ALL {
                t.sample(
                    DROPS_METRIC,
                    &format!("worker=\"{i}\",reason=\"{}\"", label(r.name())),
                    w.pipeline.drops(r),
                );
            }
        }
        t.finish()
    }

    /// The control loop's own metrics.
    fn control_metrics(&self, t: &mut Text) {
        let m = &self.metrics;
        let mut one = |name: &str, ty: &str, help: &str, v: u64| {
            t.family(name, ty, help);
            t.sample(name, "", v);
        };
        one(
            "xdpnet_table_generation",
            "gauge",
            "Generation of the table the workers use.",
            self.dp.fib().generation(),
        );
        one(
            "xdpnet_table_publishes_total",
            "counter",
            "Tables published.",
            m.publishes,
        );
        one(
            "xdpnet_source_events_total",
            "counter",
            "Events received from the cluster-state source.",
            m.events,
        );
        one(
            "xdpnet_source_errors_total",
            "counter",
            "Errors of the cluster-state source.",
            m.source_errors,
        );
        one(
            "xdpnet_source_degraded",
            "gauge",
            "1 while the source is degraded (forwarding with the last table).",
            u64::from(self.degraded),
        );
        let unresolved = self
            .remote_ips()
            .iter()
            .filter(|ip| !self.neigh.contains_key(ip))
            .count();
        one(
            "xdpnet_unresolved_nodes",
            "gauge",
            "Other nodes whose next-hop MAC is unknown (not routable yet).",
            unresolved as u64,
        );
        one(
            "xdpnet_unattached_pods",
            "gauge",
            "Pods of this node not attached to the dataplane.",
            self.ctl.local_pods().len().saturating_sub(self.pods.len()) as u64,
        );
        one(
            "xdpnet_warnings",
            "gauge",
            "Objects or settings currently skipped (see the log).",
            self.warnings.len() as u64,
        );
        self.object_metrics(t);
    }

    /// The control loop's histograms and the objects it holds.
    fn object_metrics(&self, t: &mut Text) {
        let m = &self.metrics;
        t.histogram(
            "xdpnet_table_build_seconds",
            "Time to build a table.",
            &m.build,
        );
        t.histogram(
            "xdpnet_event_to_publish_seconds",
            "Time from the first event of a batch to its table being published.",
            &m.event_to_publish,
        );
        let fib = self.dp.fib();
        t.family(
            "xdpnet_policy_flows_total",
            "counter",
            "New flows a network policy's rules allowed or denied on this node (policies that apply to its pods).",
        );
        for o in fib.policy().origins.iter() {
            let name = o.name.replace('\\', "\\\\").replace('"', "\\\"");
            t.sample(
                "xdpnet_policy_flows_total",
                &format!("policy=\"{name}\",verdict=\"allowed\""),
                o.allowed(),
            );
            t.sample(
                "xdpnet_policy_flows_total",
                &format!("policy=\"{name}\",verdict=\"denied\""),
                o.denied(),
            );
        }
        t.family(
            "xdpnet_source_kind_absent",
            "gauge",
            "Kinds the API server does not serve (an optional CRD not installed): not watched.",
        );
        for k in &self.absent_kinds {
            t.sample(
                "xdpnet_source_kind_absent",
                &format!("kind=\"{}\"", k.name()),
                1,
            );
        }
        let st = self.ctl.state();
        t.family("xdpnet_objects", "gauge", "Objects held, per kind.");
        for (k, n) in [
            (Kind::Node, st.nodes.len()),
            (Kind::Pod, st.pods.len()),
            (Kind::Service, st.services.len()),
            (Kind::EndpointSlice, st.slices.len()),
            (Kind::Namespace, st.namespaces.len()),
            (Kind::NetworkPolicy, st.network_policies.len()),
            (Kind::ClusterNetworkPolicy, st.cluster_policies.len()),
        ] {
            t.sample("xdpnet_objects", &format!("kind=\"{}\"", k.name()), n);
        }
        t.family(
            "xdpnet_object_changes_total",
            "counter",
            "Object changes applied, per kind.",
        );
        for (k, n) in self.ctl.changed() {
            t.sample(
                "xdpnet_object_changes_total",
                &format!("kind=\"{}\"", k.name()),
                n,
            );
        }
    }
}
