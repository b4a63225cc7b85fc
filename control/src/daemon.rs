//! xdpnetd's control loop: a cluster-state source in, a running dataplane out.
//!
//! At start: reads the uplink's MAC and MTU and the host port's MAC, gets the first state (from
//! the source, or from the state persisted by the last run when the source cannot answer),
//! builds the first table, starts the workers, wires the uplink and the host port. Then it
//! waits for events: a batch of events arriving together (a burst) is coalesced into one
//! refresh — the loop keeps taking events while they come less than 1 ms apart, for at most
//! 10 ms — so a lone event is published within about a millisecond and a burst once. Only what
//! the events touched is recomputed ([`Controller`]); the table is built and published only
//! when something in it changed. Around that: next-hop MACs of other nodes from the kernel's
//! neighbour table, attaching and detaching pod interfaces, the uplink's steered frontends,
//! conntrack ageing, the status file, metrics and inspection. SIGTERM/SIGINT end the loop;
//! dropping the dataplane detaches programs and closes sockets.

use crate::cni::{CniPod, CniService, PodOp, PodRequest};
use crate::controller::Controller;
use crate::metrics::{ControlMetrics, Text, label};
use crate::state::{ClusterState, Event, FileSource, Kind, Source};
use crate::translate::{LocalConfig, LocalPod};
use anyhow::{Context, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xdpnet_dataplane::counters::DropReason;
use xdpnet_dataplane::fib::{Endpoint, Ipv4Net, PortId, RemoteNodeSpec};
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

/// Where the cluster state comes from.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// A YAML file or directory of objects.
    File(PathBuf),
    /// The Kubernetes API (in-cluster config, or `kubeconfig`, or `server` for a plain-HTTP
    /// API server such as the tests' double).
    Kubernetes {
        /// URL of an API server to use instead of the inferred configuration.
        server: Option<String>,
    },
}

/// The daemon's settings (from the command line and the config file).
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// This node's name (its Node object).
    pub node_name: String,
    /// Egress masquerade of pod traffic leaving the cluster (None: off).
    pub masquerade: Option<crate::masq::MasqConfig>,
    /// The source of cluster state.
    pub source: SourceConfig,
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
    /// This node's pod CIDR (None: its Node's `spec.podCIDR`).
    pub pod_cidr: Option<Ipv4Net>,
    /// MAC the dataplane answers with for the gateway.
    pub gateway_mac: MacAddr,
    /// Where to write the status JSON (None: nowhere).
    pub status_file: Option<PathBuf>,
    /// Directory for state kept across restarts (the last cluster state); None: nothing kept.
    pub state_dir: Option<PathBuf>,
    /// Address of the metrics and health HTTP endpoint (None: off).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Unix socket for `xdpnetd inspect` (None: off).
    pub inspect_socket: Option<PathBuf>,
    /// Unix socket of the CNI endpoint the `xdpnet` plugin calls (None: off).
    pub cni_socket: Option<PathBuf>,
    /// Dataplane runtime settings.
    pub dataplane: DataplaneConfig,
}

macro_rules! log {
    ($node:expr, $($t:tt)*) => {
        eprintln!("xdpnetd[{}]: {}", $node, format!($($t)*))
    };
}

/// Next-hop MACs from `/proc/net/arp` (the fallback when rtnetlink cannot be opened).
fn proc_neighbours() -> BTreeMap<Ipv4Addr, MacAddr> {
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

/// What the metrics and inspection endpoints serve, refreshed by the control loop.
#[derive(Debug, Default)]
pub struct Shared {
    /// Prometheus text.
    pub metrics: Mutex<String>,
    /// Inspection JSON.
    pub inspect: Mutex<String>,
    /// Seconds since the epoch of the control loop's last turn (liveness).
    pub heartbeat: AtomicU64,
    /// The dataplane forwards with a table built from cluster state (readiness).
    pub ready: AtomicBool,
}

/// The kernel's neighbour table: over rtnetlink, re-read when the kernel announces a change.
struct NeighbourSource {
    nl: Option<crate::neigh::Neighbours>,
}

impl NeighbourSource {
    fn open(node: &str) -> Self {
        match crate::neigh::Neighbours::open() {
            Ok(n) => Self { nl: Some(n) },
            Err(e) => {
                log!(
                    node,
                    "rtnetlink unavailable ({e}); reading /proc/net/arp instead"
                );
                Self { nl: None }
            }
        }
    }
    fn read(&mut self) -> BTreeMap<Ipv4Addr, MacAddr> {
        match self.nl.as_mut().map(|n| n.dump()) {
            Some(Ok(t)) => t,
            _ => proc_neighbours(),
        }
    }
    /// True when a re-read may find something new.
    fn changed(&mut self) -> bool {
        self.nl.as_mut().is_none_or(|n| n.changed())
    }
}

struct Daemon {
    cfg: DaemonConfig,
    neigh_src: NeighbourSource,
    dp: Dataplane,
    ctl: Controller,
    neigh: BTreeMap<Ipv4Addr, MacAddr>,
    /// ifname -> attachment
    pods: BTreeMap<String, Attached>,
    warnings: Vec<String>,
    logged: BTreeSet<String>,
    metrics: ControlMetrics,
    degraded: bool,
    shared: Arc<Shared>,
    persisted_at: Option<Instant>,
    persist_due: bool,
    /// Pods the CNI endpoint wired, by host end.
    cni_pods: BTreeMap<String, CniPod>,
    cni: Option<Arc<CniService>>,
}

impl Daemon {
    fn next_port(&self) -> Option<PortId> {
        let used: BTreeSet<PortId> = self.pods.values().map(|a| a.port).collect();
        (FIRST_POD_PORT..xdpnet_dataplane::runtime::MAX_PORTS as PortId).find(|p| !used.contains(p))
    }

    /// Brings ports, endpoints and other nodes in line with the controller; builds and
    /// publishes when the table changed. `since`: when the first event of this batch arrived.
    fn sync(&mut self, since: Option<Instant>) {
        let node = self.ctl.node().clone();
        let mut warnings = self.ctl.warnings();
        // Other nodes: only those whose next hop is known.
        let mut remotes: BTreeMap<String, RemoteNodeSpec> = BTreeMap::new();
        for r in self.ctl.remotes() {
            match self.neigh.get(&r.underlay_ip) {
                Some(&mac) => {
                    remotes.insert(
                        r.name.clone(),
                        RemoteNodeSpec {
                            name: r.name.clone(),
                            underlay_ip: r.underlay_ip,
                            next_hop_mac: mac,
                            pod_cidrs: r.pod_cidrs.clone(),
                            addrs: r.addrs.clone(),
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
        let want = self.wanted_pods();
        for (ifname, p) in &want {
            if let Some(a) = self.pods.get_mut(ifname) {
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
                        node.name,
                        "attached pod {} ({} on {ifname}, port {port})",
                        p.key,
                        p.ip
                    );
                    self.pods.insert(
                        ifname.clone(),
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
            .filter(|i| !want.contains_key(*i))
            .cloned()
            .collect();

        let want_eps: BTreeMap<Ipv4Addr, Endpoint> = self
            .pods
            .iter()
            .filter(|(i, _)| want.contains_key(*i))
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
        let b = self.ctl.builder();
        for ip in b.endpoint_ips() {
            if !want_eps.contains_key(&ip) {
                b.remove_endpoint(ip);
            }
        }
        for ep in want_eps.values() {
            if let Err(e) = b.upsert_endpoint(*ep) {
                warnings.push(format!("endpoint {}: {e}", ep.ip));
            }
        }
        for n in b.remote_names() {
            if !remotes.contains_key(&n) {
                b.remove_node(&n);
            }
        }
        for r in remotes.into_values() {
            b.upsert_node(r);
        }
        if b.is_dirty() {
            let t = Instant::now();
            let fib = b.build();
            for w in b.warnings() {
                warnings.push(w.to_string());
            }
            self.metrics.build.observe(t.elapsed());
            let generation = fib.generation();
            let published = self.dp.publish(fib);
            if let Some(since) = since {
                self.metrics.event_to_publish.observe(since.elapsed());
            }
            self.metrics.publishes += 1;
            published.wait_for_readers(Duration::from_secs(1));
            let fib = self.dp.fib();
            let expired = self.dp.conntrack().expire_removed_udp_backends(&fib);
            log!(
                node.name,
                "published table generation {generation} ({} services, {} local pods, {} remote nodes) built in {:?}{}",
                self.ctl.service_count(),
                want_eps.len(),
                fib.remote_nodes().len(),
                t.elapsed(),
                if expired > 0 {
                    format!(", {expired} UDP flows to removed backends expired")
                } else {
                    String::new()
                }
            );
            self.shared.ready.store(true, Ordering::Relaxed);
            self.persist_due = true;
        }
        for ifname in gone {
            if let Some(a) = self.pods.remove(&ifname) {
                self.dp.remove_port(a.port);
                log!(node.name, "detached {ifname} (port {})", a.port);
            }
        }
        let fronts = steer::frontends(node.underlay_ip, self.ctl.specs());
        if let Err(e) = self.dp.set_frontends(fronts) {
            warnings.push(format!("steering: {e}"));
        }
        for w in &warnings {
            if self.logged.insert(w.clone()) {
                log!(node.name, "warning: {w}");
            }
        }
        self.logged.retain(|w| warnings.contains(w));
        self.warnings = warnings;
        if let Some(c) = &self.cni {
            c.set_reserved(self.ctl.local_pods().iter().map(|p| p.ip).collect());
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

    /// The pods to attach, by host interface: those the CNI endpoint wired, and those the
    /// cluster state wires by annotation (hand-wired labs).
    fn wanted_pods(&self) -> BTreeMap<String, LocalPod> {
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
                },
            );
        }
        want
    }

    /// Serves the CNI endpoint's requests waiting in `rx`: applies them, syncs once, answers.
    fn serve_cni(&mut self, rx: &std::sync::mpsc::Receiver<PodRequest>) {
        let mut batch = Vec::new();
        while let Ok(r) = rx.try_recv() {
            batch.push(r);
        }
        if batch.is_empty() {
            return;
        }
        let since = Instant::now();
        let mut changed = false;
        for r in &batch {
            match &r.op {
                PodOp::Attach(p) => {
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
                PodOp::Attach(p) => self.attached(&p.host_if),
                PodOp::Check(h) => self.attached(h),
                PodOp::Detach(h) => {
                    if self.pods.contains_key(h) {
                        Err(format!("{h} is still attached"))
                    } else {
                        Ok(())
                    }
                }
            };
            let _ = r.reply.send(answer);
        }
    }

    /// Ok when `host_if` is attached and in the published table.
    fn attached(&self, host_if: &str) -> Result<(), String> {
        match self.pods.get(host_if) {
            Some(a) if self.dp.fib().endpoints().any(|e| e.ip == a.ip) => Ok(()),
            Some(a) => Err(format!(
                "{host_if} is attached but {} is not in the table",
                a.ip
            )),
            None => Err(self
                .warnings
                .iter()
                .find(|w| w.contains(host_if))
                .cloned()
                .unwrap_or_else(|| format!("{host_if} is not attached"))),
        }
    }

    fn remote_ips(&self) -> Vec<Ipv4Addr> {
        self.ctl.remotes().iter().map(|r| r.underlay_ip).collect()
    }

    /// Saves the cluster state for the next start (write, fsync, rename), at most every 5 s.
    fn persist(&mut self, force: bool) {
        let Some(dir) = &self.cfg.state_dir else {
            return;
        };
        if !self.persist_due
            || (!force
                && self
                    .persisted_at
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(5)))
        {
            return;
        }
        let path = dir.join("cluster-state.yaml");
        match crate::state::save(self.ctl.state(), &path) {
            Ok(()) => {
                self.persist_due = false;
                self.persisted_at = Some(Instant::now());
            }
            Err(e) => log!(
                self.cfg.node_name,
                "cannot persist the cluster state: {e:#}"
            ),
        }
    }
}

mod report;

/// Reads the state persisted by a previous run, if any.
fn load_persisted(cfg: &DaemonConfig) -> Option<ClusterState> {
    let path = cfg.state_dir.as_ref()?.join("cluster-state.yaml");
    if !path.exists() {
        return None;
    }
    match ClusterState::load(&path) {
        Ok(st) => Some(st),
        Err(e) => {
            log!(cfg.node_name, "ignoring persisted state: {e}");
            None
        }
    }
}

/// Opens the configured source.
pub fn open_source(cfg: &DaemonConfig) -> anyhow::Result<Box<dyn Source>> {
    Ok(match &cfg.source {
        SourceConfig::File(p) => Box::new(FileSource::new(p)),
        SourceConfig::Kubernetes { server } => Box::new(
            crate::kube_source::KubeSource::start(&cfg.node_name, server.clone())
                .context("starting the Kubernetes source")?,
        ),
    })
}

fn needs_forwarding(cfg: &DaemonConfig) -> bool {
    cfg.cni_socket.is_some() || cfg.masquerade.is_some()
}

/// Turns `net.ipv4.ip_forward` on (warns when it cannot).
fn enable_forwarding(node: &str) {
    match std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward") {
        Ok(v) if v.trim() == "1" => {}
        _ => match std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
            Ok(()) => log!(node, "enabled IPv4 forwarding (net.ipv4.ip_forward=1)"),
            Err(e) => log!(
                node,
                "warning: cannot enable IPv4 forwarding ({e}); hostPorts and traffic to outside the cluster will not work"
            ),
        },
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
    if let Some(h) = xsk::if_mtu(&cfg.host_if).filter(|&h| h + 50 > u32::from(mtu)) {
        log!(
            node,
            "warning: host port {} has MTU {h}, more than the overlay's {}: the node's TCP to other nodes' pods and host-network endpoints offers segments that do not fit once encapsulated (set it to {})",
            cfg.host_if,
            u32::from(mtu) - 50,
            u32::from(mtu) - 50
        );
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
        pod_cidr: cfg.pod_cidr,
        uplink_port: UPLINK_PORT,
        host_port: HOST_PORT,
    };
    let shared = Arc::new(Shared::default());
    let _http = match cfg.metrics_addr {
        Some(a) => Some(crate::http::serve(a, shared.clone()).context("metrics endpoint")?),
        None => None,
    };
    let _inspect = match &cfg.inspect_socket {
        Some(p) => Some(crate::http::serve_inspect(p, shared.clone()).context("inspect socket")?),
        None => None,
    };
    let mut source = open_source(&cfg)?;

    // The first state: what the last run persisted (if any) with the source's events on top.
    // Start as soon as this node's facts are known and the source is healthy — or at once from
    // the persisted state while the source is not (API down or still listing); its lists will
    // replace whatever changed meanwhile.
    let mut state = load_persisted(&cfg).unwrap_or_default();
    let from_disk = crate::translate::node_facts(&state, &local).is_ok();
    let is_file = matches!(cfg.source, SourceConfig::File(_));
    let mut waiting_logged = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        match source.next(Duration::from_millis(200)) {
            Ok(evs) => {
                for e in evs {
                    state.apply(e, &mut Default::default());
                }
            }
            Err(e) if is_file => {
                return Err(e).with_context(|| format!("cluster state from {}", source.describe()));
            }
            Err(e) => log!(node, "cluster state from {}: {e}", source.describe()),
        }
        let facts = crate::translate::node_facts(&state, &local);
        if facts.is_ok() && !source.degraded() {
            break;
        }
        if facts.is_ok() && from_disk {
            log!(
                node,
                "{} not available yet: starting with the state persisted by the last run",
                source.describe()
            );
            break;
        }
        let facts = match facts {
            // A file either has this node or is wrong: say so and stop.
            Err(e) if is_file => {
                return Err(e).with_context(|| format!("cluster state from {}", source.describe()));
            }
            f => f,
        };
        if waiting_logged.elapsed() >= Duration::from_secs(10) {
            waiting_logged = Instant::now();
            log!(
                node,
                "waiting for this node's Node object from {}: {}",
                source.describe(),
                facts
                    .err()
                    .map_or("source degraded".into(), |e| e.to_string())
            );
        }
    }
    let ctl = Controller::new(local, state).context("cluster state")?;
    let mut b0 = xdpnet_dataplane::fib::FibBuilder::new(ctl.node().clone());
    let fib = b0.build();
    let mut dp = Dataplane::start(cfg.dataplane.clone(), fib).context("starting the dataplane")?;
    dp.add_port(UPLINK_PORT, &cfg.uplink, PortRole::Uplink)
        .with_context(|| format!("uplink {}", cfg.uplink))?;
    dp.add_port(HOST_PORT, &cfg.host_port, PortRole::Host)
        .with_context(|| format!("host port {}", cfg.host_port))?;
    dp.set_vtep(ctl.node().underlay_ip, ctl.node().vxlan_port)?;
    log!(
        node,
        "dataplane up: {} worker(s) on cores {:?} ({} mode), uplink {} ({}), host port {}, pod CIDR {}, state from {}",
        cfg.dataplane.cores.len(),
        cfg.dataplane.cores,
        match (cfg.dataplane.busy_poll, cfg.dataplane.io_only) {
            (_, true) => "I/O-only benchmark",
            (true, _) => "busy-poll",
            _ => "low-CPU poll",
        },
        cfg.uplink,
        ctl.node().underlay_ip,
        cfg.host_port,
        ctl.node().pod_cidr,
        source.describe()
    );
    // Pod traffic the kernel handles (hostPorts DNATed by the portmap plugin, traffic to
    // outside the cluster, masqueraded) is forwarded by this node's kernel.
    if needs_forwarding(&cfg) {
        enable_forwarding(&node);
    }
    match &cfg.masquerade {
        Some(m) => {
            crate::masq::install(m).context("egress masquerade")?;
            log!(
                node,
                "egress masquerade on: pod traffic to outside {} leaves with this node's address (nftables table ip {})",
                m.exempt()
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                crate::masq::TABLE
            );
        }
        None => {
            if crate::masq::installed() {
                let _ = crate::masq::remove();
            }
            log!(node, "egress masquerade off");
        }
    }
    let mut neigh_src = NeighbourSource::open(&node);
    let mut d = Daemon {
        dp,
        ctl,
        neigh: neigh_src.read(),
        neigh_src,
        pods: BTreeMap::new(),
        warnings: Vec::new(),
        logged: BTreeSet::new(),
        metrics: ControlMetrics::default(),
        degraded: false,
        shared,
        persisted_at: None,
        persist_due: false,
        cni_pods: BTreeMap::new(),
        cni: None,
        cfg,
    };
    // The CNI endpoint: IPAM over this node's pod CIDR; pods wired before a restart are
    // reattached with the addresses they have.
    let (cni_tx, cni_rx) = std::sync::mpsc::channel::<PodRequest>();
    let _cni_server = match d.cfg.cni_socket.clone() {
        None => None,
        Some(sock) => {
            let dir = d
                .cfg
                .state_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("/var/lib/xdpnet"));
            let node_facts = d.ctl.node().clone();
            let ipam = crate::ipam::Ipam::open(node_facts.pod_cidr, &dir.join("ipam.json"))
                .context("IPAM")?;
            let svc = Arc::new(CniService::new(
                crate::cni::CniSettings {
                    gateway: node_facts.gateway_ip,
                    gateway_mac: d.cfg.gateway_mac,
                    max_mtu: u32::from(mtu) - 50,
                },
                ipam,
                cni_tx,
                {
                    let shared = d.shared.clone();
                    Box::new(move || shared.ready.load(Ordering::Relaxed))
                },
            ));
            let (found, missing) = svc.existing().context("reading pod interfaces")?;
            for p in found {
                log!(
                    node,
                    "reattaching pod {} ({} on {})",
                    p.key,
                    p.ip,
                    p.host_if
                );
                d.cni_pods.insert(p.host_if.clone(), p);
            }
            for k in missing {
                log!(
                    node,
                    "pod {k}: its interface is gone; its address is kept until the runtime's DEL or GC"
                );
            }
            d.cni = Some(svc.clone());
            Some(
                crate::cni::serve(&sock, svc)
                    .with_context(|| format!("CNI socket {}", sock.display()))?,
            )
        }
    };
    for ip in d.remote_ips() {
        if !d.neigh.contains_key(&ip) {
            probe(ip);
        }
    }
    d.sync(None);
    d.persist(true);
    d.write_status();

    let mut last_slow = Instant::now();
    let mut last_neigh = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if reload.swap(false, Ordering::Relaxed) {
            source.reload();
        }
        d.serve_cni(&cni_rx);
        match source.next(Duration::from_millis(10)) {
            Ok(evs) if !evs.is_empty() => {
                let since = Instant::now();
                let mut batch = evs;
                // Coalesce a burst: take what follows within 1 ms, for at most 10 ms.
                while since.elapsed() < Duration::from_millis(10) {
                    match source.next(Duration::from_millis(1)) {
                        Ok(more) if !more.is_empty() => batch.extend(more),
                        _ => break,
                    }
                }
                d.handle(batch, since);
            }
            Ok(_) => {}
            Err(e) => {
                d.metrics.source_errors += 1;
                let msg = format!(
                    "cluster state from {} not used (keeping the current one): {e}",
                    source.describe()
                );
                if d.logged.insert(msg.clone()) {
                    log!(d.cfg.node_name, "{msg}");
                }
            }
        }
        let deg = source.degraded();
        if deg != d.degraded {
            d.degraded = deg;
            log!(
                d.cfg.node_name,
                "{}: {}",
                source.describe(),
                if deg {
                    "degraded (forwarding with the last table)"
                } else {
                    "healthy again"
                }
            );
        }
        let now = d.dp.now_secs();
        d.dp.conntrack().gc(now, 2048);
        let unresolved = d.remote_ips().iter().any(|ip| !d.neigh.contains_key(ip));
        if d.neigh_src.changed()
            || (unresolved && last_neigh.elapsed() >= Duration::from_millis(200))
        {
            last_neigh = Instant::now();
            let n = d.neigh_src.read();
            let changed = d.remote_ips().iter().any(|ip| n.get(ip) != d.neigh.get(ip));
            d.neigh = n;
            if changed {
                d.sync(None);
            }
        }
        if last_slow.elapsed() >= Duration::from_secs(1) {
            last_slow = Instant::now();
            let unresolved = d.remote_ips().iter().any(|ip| !d.neigh.contains_key(ip));
            if unresolved || d.wanted_pods().len() != d.pods.len() {
                d.sync(None);
            }
            d.persist(false);
            d.write_status();
        }
    }
    log!(
        d.cfg.node_name,
        "stopping: detaching programs and closing sockets"
    );
    d.persist(true);
    if let Some(p) = &d.cfg.status_file {
        let _ = std::fs::remove_file(p);
    }
    let Daemon { dp, .. } = d;
    dp.shutdown();
    log!(node, "stopped");
    Ok(())
}
