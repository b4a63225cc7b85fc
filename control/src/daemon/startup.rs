//! Startup: the node's interfaces and MTU, the endpoints (metrics, inspect), the source and
//! the first cluster state, the dataplane with its uplink and host port, forwarding and
//! egress masquerade in the node's kernel, and the CNI endpoint.

use super::neighbours::{NeighbourSource, probe};
use super::persist::Persist;
use super::*;
use crate::cni::{CniServer, CniService, CniSettings, PodRequest};
use crate::state::{ClusterState, FileSource, Source};
use crate::translate::LocalConfig;
use anyhow::{Context, bail};
use std::time::{Duration, Instant};
use xdpnet_dataplane::overlay::MTU_OVERHEAD;
use xdpnet_dataplane::runtime::PortRole;
use xdpnet_dataplane::sys::netdev;

/// Puts the calling (control) thread, and so every thread it starts afterwards (endpoints,
/// watches, CNI), on the cores this process may use that no worker is pinned to, when there
/// are any: a table build or a watch decode then never takes a worker's core. Workers pin
/// themselves to their own cores. With no core to spare nothing changes. Returns the cores
/// chosen.
pub(super) fn keep_off_worker_cores(workers: &[usize]) -> Option<Vec<usize>> {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    let me = nix::unistd::Pid::from_raw(0);
    let allowed = sched_getaffinity(me).ok()?;
    let rest: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false) && !workers.contains(&c))
        .collect();
    if rest.is_empty() {
        return None;
    }
    let mut set = CpuSet::new();
    for &c in &rest {
        set.set(c).ok()?;
    }
    sched_setaffinity(me, &set).ok()?;
    Some(rest)
}

/// The smallest IPv4 MTU a pod may have (RFC 791).
const MIN_POD_MTU: u16 = 576;

/// The servers that live as long as the daemon (dropped: they stop).
pub(super) struct Endpoints {
    _http: Option<std::thread::JoinHandle<()>>,
    _inspect: Option<std::thread::JoinHandle<()>>,
}

/// Starts the metrics/health and inspection endpoints, serving `view`.
pub(super) fn serve_endpoints(
    cfg: &DaemonConfig,
    view: &Arc<LoopView>,
) -> anyhow::Result<Endpoints> {
    let http = match cfg.metrics_addr {
        Some(a) => Some(crate::http::serve(a, view.clone()).context("metrics endpoint")?),
        None => None,
    };
    let inspect = match &cfg.inspect_socket {
        Some(p) => Some(crate::http::serve_inspect(p, view.clone()).context("inspect socket")?),
        None => None,
    };
    Ok(Endpoints {
        _http: http,
        _inspect: inspect,
    })
}

/// This node's interface facts and settings: the uplink's and host port's MACs, the underlay
/// MTU (checked against the overlay's overhead).
pub(super) fn local_config(cfg: &DaemonConfig) -> anyhow::Result<LocalConfig> {
    let mac = |ifname: &str, what: &str| -> anyhow::Result<MacAddr> {
        netdev::if_mac(ifname).map(MacAddr).with_context(|| {
            format!("{what} interface {ifname:?} not found in this network namespace")
        })
    };
    let underlay_mac = mac(&cfg.uplink, "uplink")?;
    let host_mac = mac(&cfg.host_if, "host (kernel end)")?;
    mac(&cfg.host_port, "host port (dataplane end)")?;
    let mtu = match cfg.mtu {
        Some(m) => m,
        None => netdev::if_mtu(&cfg.uplink)
            .and_then(|m| u16::try_from(m).ok())
            .context("uplink MTU")?,
    };
    if mtu < MIN_POD_MTU + MTU_OVERHEAD {
        bail!(
            "underlay MTU {mtu} is too small for VXLAN (needs at least {})",
            MIN_POD_MTU + MTU_OVERHEAD
        );
    }
    if usize::from(mtu) + 14 + MTU_OVERHEAD as usize > xdpnet_dataplane::runtime::MAX_CHAIN_FRAME {
        bail!(
            "underlay MTU {mtu} is larger than the dataplane carries (at most {})",
            xdpnet_dataplane::runtime::MAX_CHAIN_FRAME - 14 - MTU_OVERHEAD as usize
        );
    }
    let overlay = u32::from(mtu - MTU_OVERHEAD);
    if let Some(h) = netdev::if_mtu(&cfg.host_if).filter(|&h| h > overlay) {
        log!(
            cfg.node_name,
            "warning: host port {} has MTU {h}, more than the overlay's {overlay}: the node's TCP to other nodes' pods and host-network endpoints offers segments that do not fit once encapsulated (set it to {overlay})",
            cfg.host_if,
        );
    }
    Ok(LocalConfig {
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
    })
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

/// The first state: what the last run persisted (if any) with the source's events on top.
/// Ready as soon as this node's facts are known and the source is healthy — or at once from
/// the persisted state while the source is not (API down or still listing); its lists will
/// replace whatever changed meanwhile. None: stopped while waiting.
pub(super) fn first_state(
    cfg: &DaemonConfig,
    local: &LocalConfig,
    persist: &Persist,
    source: &mut dyn Source,
    stop: &AtomicBool,
) -> anyhow::Result<Option<ClusterState>> {
    let node = &cfg.node_name;
    let mut state = persist.load_state(node).unwrap_or_default();
    let from_disk = crate::translate::node_facts(&state, local).is_ok();
    let is_file = matches!(cfg.source, SourceConfig::File(_));
    let mut waiting_logged = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
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
        let facts = crate::translate::node_facts(&state, local);
        match facts {
            Ok(_) if !source.degraded() => return Ok(Some(state)),
            Ok(_) if from_disk => {
                log!(
                    node,
                    "{} not available yet: starting with the state persisted by the last run",
                    source.describe()
                );
                return Ok(Some(state));
            }
            // A file either has this node or is wrong: say so and stop.
            Err(e) if is_file => {
                return Err(e).with_context(|| format!("cluster state from {}", source.describe()));
            }
            f => {
                if waiting_logged.elapsed() >= Duration::from_secs(10) {
                    waiting_logged = Instant::now();
                    log!(
                        node,
                        "waiting for this node's Node object from {}: {}",
                        source.describe(),
                        f.err().map_or("source degraded".into(), |e| e.to_string())
                    );
                }
            }
        }
    }
}

/// The controller over the first state, the dataplane with the uplink and the host port,
/// forwarding and masquerade: a daemon ready for its loop.
pub(super) fn start(
    cfg: DaemonConfig,
    local: LocalConfig,
    state: ClusterState,
    view: Arc<LoopView>,
    persist: Persist,
    source: String,
) -> anyhow::Result<Daemon> {
    let node = cfg.node_name.clone();
    let ctl = Controller::new(local, state).context("cluster state")?;
    let dp = start_dataplane(&cfg, &ctl)?;
    log!(
        node,
        "dataplane up: {} worker(s) on cores {:?} ({} mode), uplink {} ({}), host port {}, pod CIDR {}, state from {source}",
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
    );
    // Pod traffic the kernel handles (hostPorts DNATed by the portmap plugin, traffic to
    // outside the cluster, masqueraded) is forwarded by this node's kernel.
    if cfg.cni_socket.is_some() || cfg.masquerade.is_some() {
        enable_forwarding(&node);
    }
    masquerade(&cfg)?;
    let mut neigh_src = NeighbourSource::open(&node);
    Ok(Daemon {
        dp,
        ctl,
        neigh: neigh_src.read(),
        neigh_src,
        pods: BTreeMap::new(),
        attach_errors: BTreeMap::new(),
        warnings: Vec::new(),
        absent_kinds: Vec::new(),
        logged: BTreeSet::new(),
        metrics: ControlMetrics::default(),
        degraded: false,
        view,
        persist,
        cni_pods: BTreeMap::new(),
        tap_fds: BTreeMap::new(),
        cfg,
    })
}

/// The workers with an empty table for this node, the uplink and the host port attached,
/// the VXLAN endpoint steered.
fn start_dataplane(cfg: &DaemonConfig, ctl: &Controller) -> anyhow::Result<Dataplane> {
    let empty = xdpnet_dataplane::fib::FibBuilder::new(ctl.node().clone()).build();
    // Frames as large as the underlay MTU asks: above 1500, 4 KiB chunks, and chains of
    // them for what one does not hold (AF_XDP multi-buffer).
    let mut dcfg = cfg.dataplane.clone();
    let mtu = u32::from(ctl.node().mtu);
    dcfg.frame_size = xdpnet_dataplane::sys::xsk::Umem::frame_size_for(mtu);
    dcfg.multi_buffer = mtu + 14 + 256 > dcfg.frame_size;
    if dcfg.multi_buffer {
        log!(
            cfg.node_name,
            "underlay MTU {mtu}: frames of up to {} bytes in 4 KiB UMEM frames, longer ones as chains (AF_XDP multi-buffer)",
            dcfg.frame_size - 256
        );
    }
    let mut dp = Dataplane::start(dcfg, empty).context("starting the dataplane")?;
    dp.add_port(UPLINK_PORT, &cfg.uplink, PortRole::Uplink)
        .with_context(|| format!("uplink {}", cfg.uplink))?;
    dp.add_port(HOST_PORT, &cfg.host_port, PortRole::Host)
        .with_context(|| format!("host port {}", cfg.host_port))?;
    dp.set_vtep(ctl.node().underlay_ip, ctl.node().vxlan_port)?;
    Ok(dp)
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

/// Installs (or, when off, removes) egress masquerade in the node's kernel.
fn masquerade(cfg: &DaemonConfig) -> anyhow::Result<()> {
    let node = &cfg.node_name;
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
    Ok(())
}

impl Daemon {
    /// The CNI endpoint, when configured: IPAM over this node's pod CIDR; pods wired before a
    /// restart are taken up again with the addresses they have.
    pub(super) fn start_cni(
        &mut self,
        to_loop: std::sync::mpsc::Sender<PodRequest>,
    ) -> anyhow::Result<Option<CniServer>> {
        let Some(sock) = self.cfg.cni_socket.clone() else {
            return Ok(None);
        };
        let node = self.ctl.node().clone();
        let ipam = self.persist.open_ipam(node.pod_cidr).context("IPAM")?;
        let svc = Arc::new(CniService::new(
            CniSettings {
                gateway: node.gateway_ip,
                gateway_mac: self.cfg.gateway_mac,
                max_mtu: u32::from(node.mtu - MTU_OVERHEAD),
                pod_interface: self.cfg.pod_interface,
            },
            ipam,
            to_loop,
            self.view.clone(),
        ));
        let (found, missing) = svc.existing().context("reading pod interfaces")?;
        for p in found {
            log!(
                node.name,
                "reattaching pod {} ({} on {})",
                p.key,
                p.ip,
                p.host_if
            );
            self.cni_pods.insert(p.host_if.clone(), p);
        }
        for k in missing {
            log!(
                node.name,
                "pod {k}: its interface is gone; its address is kept until the runtime's DEL or GC"
            );
        }
        let server = crate::cni::serve(&sock, svc)
            .with_context(|| format!("CNI socket {}", sock.display()))?;
        Ok(Some(server))
    }

    /// The first turn: next hops probed, the first table published, state and status written.
    pub(super) fn begin(&mut self) {
        for ip in self.remote_ips() {
            if !self.neigh.contains_key(&ip) {
                probe(ip);
            }
        }
        self.sync(None);
        self.persist
            .save_state(self.ctl.state(), true, &self.cfg.node_name);
        self.write_status();
    }
}
