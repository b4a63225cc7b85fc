//! What the daemon reports: the status file, the inspection dump, the Prometheus metrics.

use super::*;
use serde_json::json;
use xdpnet_dataplane::wire::proto;

fn proto_name(p: u8) -> &'static str {
    match p {
        proto::TCP => "TCP",
        proto::UDP => "UDP",
        proto::ICMP => "ICMP",
        _ => "?",
    }
}

impl Daemon {
    pub(super) fn status(&self) -> serde_json::Value {
        use serde_json::json;
        let fib = self.dp.fib();
        let workers: Vec<serde_json::Value> = self
            .dp
            .workers()
            .iter()
            .map(|w| {
                let drops: serde_json::Map<String, serde_json::Value> = DropReason::ALL
                    .iter()
                    .map(|&r| (r.name().to_string(), json!(w.pipeline.drops(r))))
                    .collect();
                let io = &w.io;
                let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                json!({
                    "core": w.core,
                    "rx": io.rx.get(), "tx": io.tx.get(),
                    "tx_ring_full": io.tx_ring_full.get(),
                    "handoff_out": io.handoff_out.get(), "handoff_in": io.handoff_in.get(),
                    "handoff_drop": io.handoff_drop.get(), "no_socket": io.no_socket.get(),
                    "bad_desc": io.bad_desc.get(), "batches": io.batches.get(),
                    "kernel": {"rx_dropped": g(&io.xsk_rx_dropped), "rx_ring_full": g(&io.xsk_rx_ring_full),
                               "fill_ring_empty": g(&io.xsk_fill_empty), "invalid_descs": g(&io.xsk_invalid)},
                    "frames": {"total": g(&io.frames_total), "free": g(&io.frames_free),
                               "fill": g(&io.frames_fill), "tx": g(&io.frames_tx)},
                    "pipeline": {
                        "rx": w.pipeline.rx.get(), "tx": w.pipeline.tx.get(),
                        "encap": w.pipeline.encap.get(), "decap": w.pipeline.decap.get(),
                        "new_flows": w.pipeline.new_flows.get(), "nat": w.pipeline.nat.get(),
                        "arp_replies": w.pipeline.arp_replies.get(),
                        "icmp_echo_replies": w.pipeline.icmp_echo_replies.get(),
                        "drops": drops,
                    },
                })
            })
            .collect();
        let [to_socket, passed, unknown] = self.dp.steering_counters();
        json!({
            "node": self.cfg.node_name,
            "pid": std::process::id(),
            "ready": self.shared.ready.load(Ordering::Relaxed),
            "generation": fib.generation(),
            "publishes": self.metrics.publishes,
            "source_degraded": self.degraded,
            "objects": {"nodes": self.ctl.state().nodes.len(), "pods": self.ctl.state().pods.len(),
                        "services": self.ctl.state().services.len(), "endpointslices": self.ctl.state().slices.len(),
                        "namespaces": self.ctl.state().namespaces.len()},
            "services": self.ctl.service_count(),
            "local_endpoints": fib.endpoints().count(),
            "remote_nodes": fib.remote_nodes().iter().map(|r| json!({
                "name": r.name, "underlay_ip": r.underlay_ip.to_string(), "next_hop_mac": MacAddr(r.outer[0..6].try_into().unwrap_or([0; 6])).to_string()
            })).collect::<Vec<_>>(),
            "ports": self.dp.ports().iter().map(|p| json!({
                "id": p.id, "ifname": p.ifname, "role": format!("{:?}", p.role), "queues": p.queues
            })).collect::<Vec<_>>(),
            "frontends": self.dp.frontends().iter().map(|f| format!("{}:{}/{}", f.addr, f.port, f.proto)).collect::<Vec<_>>(),
            "steering": {"to_socket": to_socket, "passed": passed, "unknown_port": unknown},
            "conntrack_entries": self.dp.conntrack().len(),
            "workers": workers,
            "warnings": self.warnings,
        })
    }

    pub(super) fn write_status(&self) {
        self.shared.heartbeat.store(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            Ordering::Relaxed,
        );
        if let Ok(mut m) = self.shared.metrics.lock() {
            *m = self.metrics_text();
        }
        if let Ok(mut i) = self.shared.inspect.lock() {
            *i = serde_json::to_string(&self.inspect(10_000)).unwrap_or_default();
        }
        let Some(path) = &self.cfg.status_file else {
            return;
        };
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(&self.status()).unwrap_or_default();
        if std::fs::write(&tmp, body)
            .and_then(|()| std::fs::rename(&tmp, path))
            .is_err()
        {
            log!(
                self.cfg.node_name,
                "cannot write status file {}",
                path.display()
            );
        }
    }

    /// Services, endpoints, routes, conntrack (up to `ct_limit` entries) and counters.
    pub(super) fn inspect(&self, ct_limit: usize) -> serde_json::Value {
        let fib = self.dp.fib();
        let services: Vec<serde_json::Value> = fib
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
        let frontends: Vec<serde_json::Value> = self
            .ctl
            .specs()
            .map(|s| {
                json!({
                    "name": s.name,
                    "cluster_ips": s.cluster_ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                    "load_balancer_ips": s.load_balancer_ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                    "external_ips": s.external_ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                    "node_ports": s.ports.iter().filter_map(|p| p.node_port).collect::<Vec<_>>(),
                })
            })
            .collect();
        let endpoints: Vec<serde_json::Value> = fib
            .endpoints()
            .map(|e| json!({"ip": e.ip.to_string(), "mac": e.mac.to_string(), "port": e.port}))
            .collect();
        let routes: Vec<serde_json::Value> = fib
            .remote_nodes()
            .iter()
            .map(|r| {
                json!({
                    "node": r.name, "underlay_ip": r.underlay_ip.to_string(),
                    "next_hop_mac": MacAddr(r.outer[0..6].try_into().unwrap_or([0; 6])).to_string(),
                    "pod_cidrs": r.pod_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                    "addresses": r.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut ct = Vec::new();
        let mut total = 0usize;
        let ip = |a: u32| Ipv4Addr::from(a).to_string();
        self.dp.conntrack().for_each(|e| {
            total += 1;
            if ct.len() < ct_limit {
                ct.push(json!({
                    "protocol": proto_name(e.key.proto),
                    "from": format!("{}:{} -> {}:{}", ip(e.key.src), e.key.sport, ip(e.key.dst), e.key.dport),
                    "to": format!("{}:{} -> {}:{}", ip(e.xlate.src), e.xlate.sport, ip(e.xlate.dst), e.xlate.dport),
                    "flags": e.flags, "last_seen": e.last_seen,
                }));
            }
        });
        json!({
            "node": self.cfg.node_name,
            "generation": fib.generation(),
            "services": services,
            "frontends": frontends,
            "endpoints": endpoints,
            "routes": routes,
            "node_addresses": fib.node().addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "conntrack": {"entries": total, "shown": ct},
            "counters": self.status()["workers"],
        })
    }

    /// Prometheus text.
    pub(super) fn metrics_text(&self) -> String {
        let mut t = Text::default();
        let fib = self.dp.fib();
        t.family(
            "xdpnet_table_generation",
            "gauge",
            "Generation of the table the workers use.",
        );
        t.sample("xdpnet_table_generation", "", fib.generation());
        t.histogram(
            "xdpnet_table_build_seconds",
            "Time to build a table.",
            &self.metrics.build,
        );
        t.histogram(
            "xdpnet_event_to_publish_seconds",
            "Time from the first event of a batch to its table being published.",
            &self.metrics.event_to_publish,
        );
        t.family(
            "xdpnet_table_publishes_total",
            "counter",
            "Tables published.",
        );
        t.sample("xdpnet_table_publishes_total", "", self.metrics.publishes);
        t.family(
            "xdpnet_source_events_total",
            "counter",
            "Events received from the cluster-state source.",
        );
        t.sample("xdpnet_source_events_total", "", self.metrics.events);
        t.family(
            "xdpnet_source_errors_total",
            "counter",
            "Errors of the cluster-state source.",
        );
        t.sample("xdpnet_source_errors_total", "", self.metrics.source_errors);
        t.family(
            "xdpnet_source_degraded",
            "gauge",
            "1 while the source is degraded (forwarding with the last table).",
        );
        t.sample("xdpnet_source_degraded", "", u8::from(self.degraded));
        let st = self.ctl.state();
        t.family("xdpnet_objects", "gauge", "Objects held, per kind.");
        for (k, n) in [
            (Kind::Node, st.nodes.len()),
            (Kind::Pod, st.pods.len()),
            (Kind::Service, st.services.len()),
            (Kind::EndpointSlice, st.slices.len()),
            (Kind::Namespace, st.namespaces.len()),
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
        let unresolved = self
            .remote_ips()
            .iter()
            .filter(|ip| !self.neigh.contains_key(ip))
            .count();
        t.family(
            "xdpnet_unresolved_nodes",
            "gauge",
            "Other nodes whose next-hop MAC is unknown (not routable yet).",
        );
        t.sample("xdpnet_unresolved_nodes", "", unresolved);
        t.family(
            "xdpnet_unattached_pods",
            "gauge",
            "Pods of this node not attached to the dataplane.",
        );
        t.sample(
            "xdpnet_unattached_pods",
            "",
            self.ctl.local_pods().len().saturating_sub(self.pods.len()),
        );
        t.family(
            "xdpnet_warnings",
            "gauge",
            "Objects or settings currently skipped (see the log).",
        );
        t.sample("xdpnet_warnings", "", self.warnings.len());
        t.family(
            "xdpnet_conntrack_entries",
            "gauge",
            "Connection-tracking entries (two per flow).",
        );
        t.sample("xdpnet_conntrack_entries", "", self.dp.conntrack().len());
        let ws = self.dp.workers();
        for (name, help) in [
            (
                "xdpnet_worker_rx_packets_total",
                "Frames received by a worker.",
            ),
            (
                "xdpnet_worker_tx_packets_total",
                "Frames a worker queued for transmission.",
            ),
            (
                "xdpnet_worker_tx_ring_full_total",
                "Frames dropped: output TX ring full.",
            ),
            (
                "xdpnet_worker_handoff_total",
                "Frames copied to another worker.",
            ),
            (
                "xdpnet_worker_handoff_drops_total",
                "Frames dropped on the way to another worker.",
            ),
        ] {
            t.family(name, "counter", help);
            for (i, w) in ws.iter().enumerate() {
                let v = match name {
                    "xdpnet_worker_rx_packets_total" => w.io.rx.get(),
                    "xdpnet_worker_tx_packets_total" => w.io.tx.get(),
                    "xdpnet_worker_tx_ring_full_total" => w.io.tx_ring_full.get(),
                    "xdpnet_worker_handoff_total" => w.io.handoff_out.get(),
                    _ => w.io.handoff_drop.get(),
                };
                t.sample(name, &format!("worker=\"{i}\",core=\"{}\"", w.core), v);
            }
        }
        t.family(
            "xdpnet_worker_drops_total",
            "counter",
            "Frames dropped by the pipeline, per reason.",
        );
        for (i, w) in ws.iter().enumerate() {
            for &r in DropReason::ALL {
                t.sample(
                    "xdpnet_worker_drops_total",
                    &format!("worker=\"{i}\",reason=\"{}\"", label(r.name())),
                    w.pipeline.drops(r),
                );
            }
        }
        t.family(
            "xdpnet_worker_kernel_rx_dropped_total",
            "counter",
            "Frames the kernel could not hand to a worker's sockets (no fill buffer, ring full).",
        );
        for (i, w) in ws.iter().enumerate() {
            t.sample(
                "xdpnet_worker_kernel_rx_dropped_total",
                &format!("worker=\"{i}\""),
                w.io.xsk_rx_dropped.load(Ordering::Relaxed),
            );
        }
        t.finish()
    }
}
