//! xdpnetd's control loop: a cluster-state source in, a running dataplane out.
//!
//! At start: reads the uplink's MAC and MTU and the host port's MAC, loads the state, builds
//! the first table, starts the workers, wires the uplink and the host port. Then, every tick:
//! reloads the state when the file changed (a bad file is logged and the old state kept),
//! resolves next-hop MACs of other nodes from the kernel's neighbour table (probing the ones it
//! does not know), attaches new local pods' interfaces, builds and publishes the table only when
//! something changed, unwires ports of pods that went away after the grace period, keeps the
//! uplink's steered frontends equal to the services', ages conntrack, and writes a status file.
//! On SIGTERM/SIGINT it returns; dropping the dataplane detaches programs and closes sockets.

use crate::state::{ClusterState, FileSource, Source};
use crate::translate::{self, Desired, LocalConfig, RemoteNode};
use anyhow::{Context, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use xdpnet_dataplane::counters::DropReason;
use xdpnet_dataplane::fib::{Endpoint, FibBuilder, Ipv4Net, PortId, RemoteNodeSpec};
use xdpnet_dataplane::runtime::{Dataplane, DataplaneConfig, PortRole};
use xdpnet_dataplane::steer;
use xdpnet_dataplane::sys::xsk;
use xdpnet_dataplane::wire::MacAddr;

/// Port id of the uplink.
pub const UPLINK_PORT: PortId = 0;
/// Port id of the host port.
pub const HOST_PORT: PortId = 1;
/// First port id of pods.
pub const FIRST_POD_PORT: PortId = 2;

/// The daemon's settings (from the command line or, later, the ConfigMap).
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// This node's name (its Node object).
    pub node_name: String,
    /// Cluster state file or directory.
    pub state: PathBuf,
    /// Uplink interface.
    pub uplink: String,
    /// The dataplane's end of the host port.
    pub host_port: String,
    /// The kernel's end of the host port.
    pub host_if: String,
    /// Underlay MTU (default: the uplink's).
    pub mtu: Option<u16>,
    /// VXLAN network identifier.
    pub vni: u32,
    /// VXLAN UDP port.
    pub vxlan_port: u16,
    /// The cluster's pod CIDR.
    pub cluster_cidr: Ipv4Net,
    /// MAC the dataplane answers with for the gateway.
    pub gateway_mac: MacAddr,
    /// Where to write the status JSON (None: nowhere).
    pub status_file: Option<PathBuf>,
    /// Dataplane runtime settings.
    pub dataplane: DataplaneConfig,
}

macro_rules! log {
    ($node:expr, $($t:tt)*) => {
        eprintln!("xdpnetd[{}]: {}", $node, format!($($t)*))
    };
}

/// Next-hop MACs from the kernel's IPv4 neighbour table (`/proc/net/arp` of our namespace).
fn neighbours() -> BTreeMap<Ipv4Addr, MacAddr> {
    let Ok(text) = std::fs::read_to_string("/proc/net/arp") else {
        return BTreeMap::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // IP, HW type, Flags (0x2 = complete), HW address, Mask, Device
            let complete =
                u32::from_str_radix(f.get(2)?.trim_start_matches("0x"), 16).ok()? & 2 != 0;
            let mac: MacAddr = f.get(3)?.parse().ok()?;
            (complete && mac != MacAddr([0; 6])).then_some((f.first()?.parse().ok()?, mac))
        })
        .collect()
}

/// Makes the kernel resolve `ip` (a datagram to the discard port; the reply, if any, is an ICMP
/// error nobody reads).
fn probe(ip: Ipv4Addr) {
    if let Ok(s) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
        let _ = s.send_to(b"", (ip, 9));
    }
}

struct Attached {
    port: PortId,
    ip: Ipv4Addr,
    mac: MacAddr,
}

struct Daemon {
    cfg: DaemonConfig,
    local: LocalConfig,
    dp: Dataplane,
    builder: FibBuilder,
    state: ClusterState,
    desired: Desired,
    neigh: BTreeMap<Ipv4Addr, MacAddr>,
    /// ifname -> attachment
    pods: BTreeMap<String, Attached>,
    warnings: Vec<String>,
    publishes: u64,
    last_publish: Option<Instant>,
}

impl Daemon {
    fn next_port(&self) -> Option<PortId> {
        let used: BTreeSet<PortId> = self.pods.values().map(|a| a.port).collect();
        (FIRST_POD_PORT..xdpnet_dataplane::runtime::MAX_PORTS as PortId).find(|p| !used.contains(p))
    }

    /// Brings ports and table in line with `self.desired`.
    fn apply(&mut self) {
        let d = self.desired.clone();
        let mut warnings = d.warnings.clone();
        // Other nodes: only those whose next hop is known.
        let mut remotes: BTreeMap<String, RemoteNodeSpec> = BTreeMap::new();
        for r in &d.remotes {
            match self.neigh.get(&r.underlay_ip) {
                Some(&mac) => {
                    remotes.insert(
                        r.name.clone(),
                        RemoteNodeSpec {
                            name: r.name.clone(),
                            underlay_ip: r.underlay_ip,
                            next_hop_mac: mac,
                            pod_cidrs: r.pod_cidrs.clone(),
                        },
                    );
                }
                None => {
                    probe(r.underlay_ip);
                    warnings.push(format!(
                        "node {}: next hop {} not resolved yet",
                        r.name, r.underlay_ip
                    ));
                }
            }
        }
        // New local pods: wire their interfaces.
        let want: BTreeMap<&str, &translate::LocalPod> = d
            .local_pods
            .iter()
            .map(|p| (p.ifname.as_str(), p))
            .collect();
        for (ifname, p) in &want {
            if let Some(a) = self.pods.get_mut(*ifname) {
                a.ip = p.ip;
                a.mac = p.mac;
                continue;
            }
            let Some(port) = self.next_port() else {
                warnings.push(format!("pod {}: no free port id", p.key));
                continue;
            };
            match self.dp.add_port(port, ifname, PortRole::Pod) {
                Ok(()) => {
                    log!(
                        self.cfg.node_name,
                        "attached pod {} ({} on {ifname}, port {port})",
                        p.key,
                        p.ip
                    );
                    self.pods.insert(
                        ifname.to_string(),
                        Attached {
                            port,
                            ip: p.ip,
                            mac: p.mac,
                        },
                    );
                }
                Err(e) => warnings.push(format!("pod {}: attaching {ifname}: {e}", p.key)),
            }
        }
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|i| !want.contains_key(i.as_str()))
            .cloned()
            .collect();

        // The table.
        self.builder.set_node(d.node.clone());
        let want_eps: BTreeMap<Ipv4Addr, Endpoint> = self
            .pods
            .iter()
            .filter(|(i, _)| want.contains_key(i.as_str()))
            .map(|(_, a)| {
                (
                    a.ip,
                    Endpoint {
                        ip: a.ip,
                        mac: a.mac,
                        port: a.port,
                        policy_id: 0,
                    },
                )
            })
            .collect();
        let have_eps: Vec<Ipv4Addr> = self.builder_endpoints();
        for ip in have_eps {
            if !want_eps.contains_key(&ip) {
                self.builder.remove_endpoint(ip);
            }
        }
        for ep in want_eps.values() {
            if let Err(e) = self.builder.upsert_endpoint(*ep) {
                warnings.push(format!("endpoint {}: {e}", ep.ip));
            }
        }
        let have_nodes: Vec<String> = self.builder.remote_names();
        for n in have_nodes {
            if !remotes.contains_key(&n) {
                self.builder.remove_node(&n);
            }
        }
        for r in remotes.into_values() {
            self.builder.upsert_node(r);
        }
        let want_svcs: BTreeSet<&str> = d.services.iter().map(|s| s.name.as_str()).collect();
        for n in self.builder.service_names() {
            if !want_svcs.contains(n.as_str()) {
                self.builder.remove_service(&n);
            }
        }
        for s in &d.services {
            if let Err(e) = self.builder.upsert_service(s.clone()) {
                warnings.push(format!("service {}: {e}", s.name));
            }
        }
        if self.builder.is_dirty() {
            let fib = self.builder.build();
            for w in self.builder.warnings() {
                warnings.push(w.to_string());
            }
            let generation = fib.generation();
            let t = Instant::now();
            self.dp
                .publish(fib)
                .wait_for_readers(Duration::from_secs(1));
            self.publishes += 1;
            self.last_publish = Some(Instant::now());
            let fib = self.dp.fib();
            let expired = self.dp.conntrack().expire_removed_udp_backends(&fib);
            log!(
                self.cfg.node_name,
                "published table generation {generation} ({} services, {} local pods, {} remote nodes) in {:?}{}",
                d.services.len(),
                want_eps.len(),
                fib.remote_nodes().len(),
                t.elapsed(),
                if expired > 0 {
                    format!(", {expired} UDP flows to removed backends expired")
                } else {
                    String::new()
                }
            );
        }
        for ifname in gone {
            if let Some(a) = self.pods.remove(&ifname) {
                self.dp.remove_port(a.port);
                log!(self.cfg.node_name, "detached {ifname} (port {})", a.port);
            }
        }
        let fronts = steer::frontends(d.node.underlay_ip, d.services.iter());
        if let Err(e) = self.dp.set_frontends(fronts) {
            warnings.push(format!("steering: {e}"));
        }
        for w in &warnings {
            if !self.warnings.contains(w) {
                log!(self.cfg.node_name, "warning: {w}");
            }
        }
        self.warnings = warnings;
    }

    fn builder_endpoints(&self) -> Vec<Ipv4Addr> {
        self.builder.endpoint_ips()
    }

    fn reload(&mut self, st: ClusterState) {
        match translate::desired(&st, &self.local) {
            Ok(d) => {
                if d.node.underlay_ip != self.desired.node.underlay_ip
                    || d.node.vxlan_port != self.desired.node.vxlan_port
                {
                    if let Err(e) = self.dp.set_vtep(d.node.underlay_ip, d.node.vxlan_port) {
                        log!(self.cfg.node_name, "steering: {e}");
                    }
                }
                self.state = st;
                self.desired = d;
                self.apply();
            }
            Err(e) => log!(
                self.cfg.node_name,
                "new cluster state not used (keeping the old one): {e}"
            ),
        }
    }

    fn remote_ips(&self) -> Vec<Ipv4Addr> {
        self.desired
            .remotes
            .iter()
            .map(|r: &RemoteNode| r.underlay_ip)
            .collect()
    }

    fn status(&self) -> serde_json::Value {
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
            "ready": true,
            "generation": fib.generation(),
            "publishes": self.publishes,
            "objects": {"nodes": self.state.nodes.len(), "pods": self.state.pods.len(),
                        "services": self.state.services.len(), "endpointslices": self.state.slices.len()},
            "services": self.desired.services.len(),
            "local_endpoints": fib.endpoints().count(),
            "remote_nodes": fib.remote_nodes().iter().map(|r| json!({
                "name": r.name, "underlay_ip": r.underlay_ip.to_string(), "next_hop_mac": MacAddr(r.outer[0..6].try_into().unwrap_or([0; 6])).to_string()
            })).collect::<Vec<_>>(),
            "ports": self.dp.ports().iter().map(|p| json!({
                "id": p.id, "ifname": p.ifname, "role": format!("{:?}", p.role), "queues": p.queues
            })).collect::<Vec<_>>(),
            "frontends": self.dp_frontends(),
            "steering": {"to_socket": to_socket, "passed": passed, "unknown_port": unknown},
            "conntrack_entries": self.dp.conntrack().len(),
            "workers": workers,
            "warnings": self.warnings,
        })
    }

    fn dp_frontends(&self) -> Vec<String> {
        steer::frontends(self.desired.node.underlay_ip, self.desired.services.iter())
            .iter()
            .map(|f| format!("{}:{}/{}", f.addr, f.port, f.proto))
            .collect()
    }

    fn write_status(&self) {
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
}

/// Runs the daemon until `stop` is set. `reload` forces a re-read of the state.
pub fn run(
    cfg: DaemonConfig,
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let node = cfg.node_name.clone();
    let mac = |ifname: &str, what: &str| -> anyhow::Result<MacAddr> {
        xsk::if_mac(ifname).map(MacAddr).with_context(|| {
            format!("{what} interface {ifname:?} not found in this network namespace")
        })
    };
    let underlay_mac = mac(&cfg.uplink, "uplink")?;
    let host_mac = mac(&cfg.host_if, "host (kernel end)")?;
    mac(&cfg.host_port, "host port (dataplane end)")?;
    let mtu = match cfg.mtu {
        Some(m) => m,
        None => xsk::if_mtu(&cfg.uplink)
            .and_then(|m| u16::try_from(m).ok())
            .context("uplink MTU")?,
    };
    if mtu < 576 + 50 {
        bail!("underlay MTU {mtu} is too small for VXLAN (needs at least 626)");
    }
    let local = LocalConfig {
        node_name: cfg.node_name.clone(),
        underlay_mac,
        host_mac,
        gateway_mac: cfg.gateway_mac,
        vni: cfg.vni,
        vxlan_port: cfg.vxlan_port,
        mtu,
        cluster_cidr: cfg.cluster_cidr,
        uplink_port: UPLINK_PORT,
        host_port: HOST_PORT,
    };
    let mut source: Box<dyn Source> = Box::new(FileSource::new(&cfg.state));
    let state = source
        .poll()
        .with_context(|| format!("cluster state from {}", source.describe()))?
        .unwrap_or_default();
    let desired = translate::desired(&state, &local)
        .with_context(|| format!("cluster state {}", cfg.state.display()))?;
    let mut builder = FibBuilder::new(desired.node.clone());
    let fib = builder.build();
    let mut dp = Dataplane::start(cfg.dataplane.clone(), fib).context("starting the dataplane")?;
    dp.add_port(UPLINK_PORT, &cfg.uplink, PortRole::Uplink)
        .with_context(|| format!("uplink {}", cfg.uplink))?;
    dp.add_port(HOST_PORT, &cfg.host_port, PortRole::Host)
        .with_context(|| format!("host port {}", cfg.host_port))?;
    dp.set_vtep(desired.node.underlay_ip, desired.node.vxlan_port)?;
    log!(
        node,
        "dataplane up: {} worker(s) on cores {:?} ({} mode), uplink {} ({}), host port {}, node {} pod CIDR {}",
        cfg.dataplane.cores.len(),
        cfg.dataplane.cores,
        if cfg.dataplane.busy_poll {
            "busy-poll"
        } else {
            "low-CPU poll"
        },
        cfg.uplink,
        desired.node.underlay_ip,
        cfg.host_port,
        node,
        desired.node.pod_cidr
    );
    let mut d = Daemon {
        local,
        dp,
        builder,
        state,
        desired,
        neigh: neighbours(),
        pods: BTreeMap::new(),
        warnings: Vec::new(),
        publishes: 0,
        last_publish: None,
        cfg,
    };
    for ip in d.remote_ips() {
        if !d.neigh.contains_key(&ip) {
            probe(ip);
        }
    }
    d.apply();
    d.write_status();

    let tick = Duration::from_millis(50);
    let mut last_slow = Instant::now();
    let mut last_neigh = Instant::now();
    let mut last_file = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        if reload.swap(false, Ordering::Relaxed)
            || last_file.elapsed() >= Duration::from_millis(200)
        {
            last_file = Instant::now();
            match source.poll() {
                Ok(Some(st)) => {
                    log!(
                        d.cfg.node_name,
                        "cluster state changed: {:?} (nodes, pods, services, slices)",
                        st.counts()
                    );
                    d.reload(st);
                }
                Ok(None) => {}
                Err(e) => log!(
                    d.cfg.node_name,
                    "cluster state not reloaded (keeping the old one): {e}"
                ),
            }
        }
        let now = d.dp.now_secs();
        d.dp.conntrack().gc(now, 2048);
        if last_neigh.elapsed() >= Duration::from_millis(200) {
            last_neigh = Instant::now();
            let n = neighbours();
            let changed = d.remote_ips().iter().any(|ip| n.get(ip) != d.neigh.get(ip));
            d.neigh = n;
            if changed {
                d.apply();
            }
        }
        if last_slow.elapsed() >= Duration::from_secs(1) {
            last_slow = Instant::now();
            let unresolved = d.remote_ips().iter().any(|ip| !d.neigh.contains_key(ip));
            if unresolved || d.desired.local_pods.len() != d.pods.len() {
                d.apply();
            }
            d.write_status();
        }
    }
    log!(
        d.cfg.node_name,
        "stopping: detaching programs and closing sockets"
    );
    if let Some(p) = &d.cfg.status_file {
        let _ = std::fs::remove_file(p);
    }
    let Daemon { dp, .. } = d;
    dp.shutdown();
    log!(node, "stopped");
    Ok(())
}
