//! xdpnetd's control loop: a cluster-state source in, a running dataplane out.
//!
//! At start: reads the uplink's MAC and MTU and the host port's MAC, gets the first state (from
//! the source, or from the state persisted by the last run when the source cannot answer),
//! builds the first table, starts the workers, wires the uplink and the host port. Then it
//! waits for events: a batch of events arriving together (a burst) is coalesced into one
//! refresh — the loop keeps taking events while they come less than 200 µs apart, for at
//! most 2 ms — so a lone event is published within a fraction of a millisecond, a burst
//! once, and changes spread over time (even 1,000 a second) each on their own. Only what
//! the events touched is recomputed ([`Controller`]); the table is built and published only
//! when something in it changed. Around that: next-hop MACs of other nodes from the kernel's
//! neighbour table, attaching and detaching pod interfaces, the uplink's steered frontends,
//! conntrack ageing, the status file, metrics and inspection. SIGTERM/SIGINT end the loop;
//! dropping the dataplane detaches programs and closes sockets.

use crate::cni::{CniPod, LoopError};
use crate::controller::Controller;
use crate::metrics::ControlMetrics;
use crate::view::LoopView;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use xdpnet_dataplane::fib::{Ipv4Net, PortId};
use xdpnet_dataplane::runtime::{Dataplane, DataplaneConfig};
use xdpnet_dataplane::wire::MacAddr;

mod event_loop;
mod neighbours;
mod persist;
mod reconcile;
mod report;
mod startup;

pub use startup::open_source;

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
    /// What the CNI endpoint gives a new pod as its interface.
    pub pod_interface: crate::podnet::PodInterface,
    /// Dataplane runtime settings.
    pub dataplane: DataplaneConfig,
}

macro_rules! log {
    ($node:expr, $($t:tt)*) => {
        eprintln!("xdpnetd[{}]: {}", $node, format!($($t)*))
    };
}

pub(crate) use log;

/// A pod port the daemon attached.
#[derive(Debug)]
struct Attached {
    port: PortId,
    ip: Ipv4Addr,
    mac: MacAddr,
}

/// The running daemon: the dataplane, the controller, and what the loop keeps between turns.
struct Daemon {
    cfg: DaemonConfig,
    neigh_src: neighbours::NeighbourSource,
    dp: Dataplane,
    ctl: Controller,
    neigh: BTreeMap<Ipv4Addr, MacAddr>,
    /// ifname -> attachment
    pods: BTreeMap<String, Attached>,
    /// ifname -> why it is not attached (answered to the CNI endpoint)
    attach_errors: BTreeMap<String, LoopError>,
    warnings: Vec<String>,
    logged: BTreeSet<String>,
    metrics: ControlMetrics,
    degraded: bool,
    view: Arc<LoopView>,
    persist: persist::Persist,
    /// Pods the CNI endpoint wired, by host end.
    cni_pods: BTreeMap<String, CniPod>,
    /// Tap descriptors the CNI endpoint opened, until their pod is attached.
    tap_fds: BTreeMap<String, std::os::fd::OwnedFd>,
    /// Kinds the source cannot deliver (an optional CRD not installed).
    absent_kinds: Vec<crate::state::Kind>,
}

/// Runs the daemon until `stop` is set. `reload` forces a re-read of the state.
pub fn run(
    cfg: DaemonConfig,
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    if let Some(cores) = startup::keep_off_worker_cores(&cfg.dataplane.cores) {
        log!(
            cfg.node_name,
            "control threads on cores {cores:?}, workers on {:?}",
            cfg.dataplane.cores
        );
    }
    let view = Arc::new(LoopView::default());
    let _endpoints = startup::serve_endpoints(&cfg, &view)?;
    let local = startup::local_config(&cfg)?;
    let mut source = open_source(&cfg)?;
    let persist = persist::Persist::new(cfg.state_dir.clone());
    let Some(state) = startup::first_state(&cfg, &local, &persist, source.as_mut(), &stop)? else {
        return Ok(());
    };
    let mut d = startup::start(cfg, local, state, view, persist, source.describe())?;
    let (cni_tx, cni_rx) = std::sync::mpsc::channel();
    let _cni = d.start_cni(cni_tx)?;
    d.begin();
    event_loop::run(&mut d, source.as_mut(), &cni_rx, &stop, &reload);
    d.finish();
    Ok(())
}

impl Daemon {
    /// Stops: the last state saved, the status file removed, programs detached, sockets closed.
    fn finish(mut self) {
        let node = self.cfg.node_name.clone();
        log!(node, "stopping: detaching programs and closing sockets");
        self.persist.save_state(self.ctl.state(), true, &node);
        if let Some(p) = &self.cfg.status_file {
            let _ = std::fs::remove_file(p);
        }
        self.dp.shutdown();
        log!(node, "stopped");
    }

    fn remote_ips(&self) -> Vec<Ipv4Addr> {
        self.ctl.remotes().iter().map(|r| r.underlay_ip).collect()
    }

    fn is_ready(&self) -> bool {
        self.view.ready.load(Ordering::Relaxed)
    }
}
