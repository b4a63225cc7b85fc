//! The lab: a whole cluster in network namespaces on this machine.
//!
//! Layout for prefix `P` (every name carries it; nothing is created outside these namespaces):
//! - `P-ul`: the underlay, a bridge `br0` (no address) joining the nodes and the client;
//! - `P-ext`: a client that is not a node, `eth0` 198.18.0.100/24 on the underlay;
//! - `P-n<i>` (node i = 1..N): uplink `eth0` 198.18.0.(10+i)/24; host port: veth `xdpnet0`
//!   (kernel end, MTU 1450: the underlay's 1500 less 50, the gateway 10.244.i.1/32, routes to
//!   the pod and service CIDRs) <->
//!   `xdpnet0-dp` (dataplane end); pod host ends `xnp<j>`; one `xdpnetd` (its log, status and
//!   state files in the lab directory);
//! - `P-n<i>p<j>`: pod j of node i: `eth0` 10.244.i.(10+j)/24, MTU 1450 (`--mtu` less 50), default route via the
//!   gateway with a permanent neighbour entry for it, TX checksum offload off — the wiring the
//!   CNI gives a pod.
//!
//! Every kernel-stack interface that sends into the dataplane has TX checksum offload off, as
//! a NIC would deliver complete checksums (veth otherwise hands over CHECKSUM_PARTIAL frames).
//!
//! [`Lab`] tears everything down on drop (also on panic); `xdpnet-bench lab down` removes a
//! lab left running by `lab up`, found by its prefix.

use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod cluster;
mod cluster_file;
mod daemons;
mod netns;
mod pcap;
mod topology;
mod traffic;

pub use cluster_file::{ClusterFile, FilePod, PodPort, serve_forever};
use netns::ip;
pub use netns::{
    cleanup_on_signal, fifo_queue, in_ns, link_drop_places, link_drops, namespaces, no_ipv6,
    permanent_neighbour, register, run, run_stdin, teardown, tx_off, tx_on, unregister,
};
pub use pcap::{Capture, parse_pcap};
pub use traffic::{
    Exchange, Server, UdpSink, http_get, ping, ping_whole, tcp_exchange, tcp_whoami, udp_blast,
    udp_exchange, udp_whoami,
};

/// The gateway MAC every node's dataplane answers with (the daemon's default).
pub const GATEWAY_MAC: &str = "02:fe:78:64:70:01";

/// VXLAN port used in the lab.
pub const VXLAN_PORT: u16 = 4789;

/// Port the lab's pods serve TCP and UDP on.
pub const POD_PORT: u16 = 8080;

/// A Service in the lab's state.
#[derive(Debug, Clone)]
pub struct LabService {
    /// Name (namespace `lab`).
    pub name: String,
    /// ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// Service port.
    pub port: u16,
    /// "TCP" or "UDP".
    pub protocol: &'static str,
    /// NodePort (makes it `type: NodePort`).
    pub node_port: Option<u16>,
    /// Backends: indexes into [`Lab::pods`].
    pub backends: Vec<usize>,
}

/// One node.
#[derive(Debug, Clone)]
pub struct LabNode {
    /// Node name (`node-<i>`).
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Underlay address.
    pub ip: Ipv4Addr,
    /// Gateway (first address of its pod CIDR).
    pub gateway: Ipv4Addr,
    /// Status file xdpnetd writes.
    pub status: PathBuf,
    /// Log file.
    pub log: PathBuf,
    /// Core its worker is pinned to.
    pub core: usize,
    /// More addresses (on its `lo`, and ExternalIPs in its Node status).
    pub extra_addrs: Vec<Ipv4Addr>,
}

/// One pod.
#[derive(Debug, Clone)]
pub struct LabPod {
    /// Pod name (`pod-<i>-<j>`).
    pub name: String,
    /// Index of its node in [`Lab::nodes`].
    pub node: usize,
    /// Its namespace.
    pub ns: String,
    /// Its IP.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: String,
    /// Host-side interface in the node namespace.
    pub host_if: String,
    /// Its Kubernetes namespace (`lab` unless a cluster file says otherwise).
    pub namespace: String,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The ports it serves (TCP and UDP [`POD_PORT`] unless a cluster file says otherwise).
    pub ports: Vec<PodPort>,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Name prefix of everything.
    pub prefix: String,
    /// Nodes.
    pub nodes: usize,
    /// Pods per node.
    pub pods_per_node: usize,
    /// Directory holding `xdpnetd`.
    pub bin_dir: PathBuf,
    /// Extra xdpnetd arguments.
    pub daemon_args: Vec<String>,
    /// Workers (cores) per daemon.
    pub workers: usize,
    /// RX/TX queues of each node's uplink veth.
    pub uplink_queues: usize,
    /// UMEM frames per daemon worker.
    pub frames: u32,
    /// Pods each daemon is sized for (`--max-pods`).
    pub max_pods: usize,
    /// Serve the cluster state from a test double of the Kubernetes API server (one listener
    /// at 127.0.0.1:6443 inside every node namespace, one shared set of objects) instead of
    /// the state file.
    pub kube_api: bool,
    /// Pods get a persistent tap as `eth0` (offloads on, polled through its descriptor)
    /// instead of a veth; the daemons' CNI endpoints wire new pods the same way.
    pub taps: bool,
    /// The underlay's MTU (node uplinks and the switch); pods and host ports get 50 less (the
    /// VXLAN overhead), on both paths. Above what one UMEM frame holds the daemons carry a
    /// frame in several (AF_XDP multi-buffer).
    pub mtu: u16,
    /// The cluster from a file of Kubernetes objects (`lab up --cluster`): its namespaces,
    /// pods (on the nodes they name, serving the ports they declare), services and policies
    /// instead of the default pods and services.
    pub cluster: Option<ClusterFile>,
}

impl LabSpec {
    /// `nodes` x `pods` with the binaries next to the running executable.
    pub fn new(prefix: &str, nodes: usize, pods_per_node: usize) -> Self {
        Self {
            prefix: prefix.to_string(),
            nodes,
            pods_per_node,
            bin_dir: bin_dir(),
            daemon_args: Vec::new(),
            workers: 1,
            uplink_queues: 1,
            frames: 8192,
            max_pods: 8,
            kube_api: false,
            taps: false,
            mtu: 1500,
            cluster: None,
        }
    }
}

/// Where the workspace's binaries are: `XDPNET_BIN_DIR`, else the running executable's
/// directory (or its parent, for test executables in `deps/`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDPNET_BIN_DIR") {
        return d.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.join("xdpnetd").exists() {
        dir
    } else {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    }
}

/// A running lab. Dropping it tears it down.
#[derive(Debug)]
pub struct Lab {
    /// Prefix.
    pub prefix: String,
    /// Lab directory (state, logs, status files).
    pub dir: PathBuf,
    /// Underlay namespace.
    pub underlay_ns: String,
    /// External client namespace.
    pub ext_ns: String,
    /// External client address.
    pub ext_ip: Ipv4Addr,
    /// Nodes.
    pub nodes: Vec<LabNode>,
    /// Pods.
    pub pods: Vec<LabPod>,
    /// Services in the state file.
    pub services: Vec<LabService>,
    /// Pods left out of the state file (as if deleted from the cluster; their namespaces stay).
    pub absent: std::collections::BTreeSet<usize>,
    /// More objects for the state file, each one YAML document (Services, EndpointSlices,
    /// NetworkPolicies... as `kubectl get -o yaml` prints them), written after the lab's own.
    pub extra_objects: Vec<String>,
    daemons: Vec<Option<Child>>,
    servers: Vec<Server>,
    bin_dir: PathBuf,
    daemon_args: Vec<String>,
    workers: usize,
    uplink_queues: usize,
    frames: u32,
    max_pods: usize,
    /// Pods are taps ([`LabSpec::taps`]).
    pub taps: bool,
    /// The underlay's MTU ([`LabSpec::mtu`]).
    pub mtu: u16,
    /// Kubernetes namespaces and their labels.
    pub namespaces: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// Services of a cluster file (their EndpointSlices follow the pods' labels).
    pub file_services: Vec<serde_json::Value>,
    /// Other objects of cluster files (policies...), one each.
    pub file_objects: Vec<serde_json::Value>,
    /// The API server double (and its listeners in the other node namespaces).
    api: Vec<xdpnet_control::api_double::ApiDouble>,
    /// (kind, key) of the objects given to the API double.
    api_objects: std::collections::BTreeSet<(String, String)>,
    keep: bool,
}

impl Lab {
    /// The MTU of pods, host ports and the kernel path's VXLAN device: the underlay's less
    /// the VXLAN overhead.
    pub fn pod_mtu(&self) -> u16 {
        self.mtu - xdpnet_dataplane::overlay::MTU_OVERHEAD
    }
}

/// The lab directory for a prefix.
pub fn lab_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("xdpnet-lab-{prefix}"))
}
