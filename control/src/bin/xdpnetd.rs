//! xdpnetd: the per-node daemon. Runs the AF_XDP dataplane with cluster state from the
//! Kubernetes API or a file of Kubernetes objects. SIGTERM/SIGINT stop it cleanly (programs
//! detached, sockets closed); SIGHUP re-reads a state file. `xdpnetd inspect` dumps a running
//! daemon's tables.

#![forbid(unsafe_code)]

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use xdpnet_control::config::{FileConfig, SourceKind};
use xdpnet_control::daemon::{self, DaemonConfig, SourceConfig};
use xdpnet_control::dataplane::fib::Ipv4Net;
use xdpnet_control::dataplane::overlay::{DEFAULT_VNI, DEFAULT_VXLAN_PORT};
use xdpnet_control::dataplane::runtime::DataplaneConfig;
use xdpnet_control::dataplane::wire::MacAddr;
use xdpnet_control::masq::MasqConfig;

const DEFAULT_INSPECT_SOCKET: &str = "/run/xdpnet/xdpnetd.sock";

/// xdpnet node daemon: user-space pod network dataplane over AF_XDP.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Configuration file (the ConfigMap's config.yaml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's name (its Node object).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Take cluster state from this YAML file (or directory) of Nodes, Pods, Services,
    /// EndpointSlices instead of the Kubernetes API.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Kubernetes API server URL (default: in-cluster configuration or kubeconfig).
    #[arg(long)]
    api_server: Option<String>,
    /// Uplink (NIC) interface [default: eth0].
    #[arg(long)]
    uplink: Option<String>,
    /// The dataplane's end of the host port [default: xdpnet0-dp].
    #[arg(long)]
    host_port: Option<String>,
    /// The kernel's end of the host port [default: xdpnet0].
    #[arg(long)]
    host_if: Option<String>,
    /// Cores for the workers, comma separated (one worker per core) [default: 0].
    #[arg(long, value_delimiter = ',')]
    cores: Option<Vec<usize>>,
    /// Spin when idle instead of sleeping in poll(2).
    #[arg(long)]
    busy_poll: bool,
    /// Run the workers SCHED_FIFO at this priority (1..99): a worker with frames to move runs
    /// before the NAPI threads feeding it on its core (see BENCHMARKS.md). Not with
    /// --busy-poll.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=99), conflicts_with = "busy_poll")]
    worker_rt_priority: Option<u8>,
    /// No admission control: never tell the XDP program to drop frames for a worker that is
    /// behind (benchmarks compare with and without; see BENCHMARKS.md).
    #[arg(long)]
    no_early_drop: bool,
    /// What the CNI endpoint gives a new pod: `veth` (an AF_XDP socket on its host end) or
    /// `tap` (a persistent tap in the pod that keeps its offloads) [default: veth].
    #[arg(long)]
    pod_interface: Option<xdpnet_control::podnet::PodInterface>,
    /// Benchmarks only: forward by destination address without the pipeline (no services,
    /// checks, encapsulation or rewrite) and take every uplink frame: the ceiling of the I/O
    /// layer that `xdpnet-bench compare` measures. Never on a real node.
    #[arg(long)]
    io_only: bool,
    /// Underlay MTU [default: the uplink's].
    #[arg(long)]
    mtu: Option<u16>,
    /// VXLAN network identifier [default: 1].
    #[arg(long)]
    vni: Option<u32>,
    /// VXLAN UDP port [default: 4789].
    #[arg(long)]
    vxlan_port: Option<u16>,
    /// The cluster's pod CIDR [default: 10.244.0.0/16].
    #[arg(long)]
    cluster_cidr: Option<Ipv4Net>,
    /// MAC the dataplane answers with for the pods' gateway.
    #[arg(long, default_value = "02:fe:78:64:70:01")]
    gateway_mac: MacAddr,
    /// Write a status JSON (table generation, ports, counters) here every second.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Keep state across restarts here (the last cluster state).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Serve Prometheus metrics and /healthz, /readyz on this address (e.g. 0.0.0.0:9460).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Unix socket for `xdpnetd inspect` ("none" to disable) [default: /run/xdpnet/xdpnetd.sock].
    #[arg(long)]
    inspect_socket: Option<PathBuf>,
    /// This node's pod CIDR for IPAM and routing [default: the Node's spec.podCIDR].
    #[arg(long)]
    pod_cidr: Option<xdpnet_control::dataplane::fib::Ipv4Net>,
    /// Unix socket of the CNI endpoint ("none" to disable) [default: /run/xdpnet/cni.sock].
    #[arg(long)]
    cni_socket: Option<PathBuf>,
    /// UMEM frames per worker [default: 16384].
    #[arg(long)]
    frames: Option<u32>,
    /// Pods this node is sized for (each pod socket's share of the frames) [default: 110].
    #[arg(long)]
    max_pods: Option<usize>,
    /// The service CIDR (never masqueraded to) [default: 10.96.0.0/12].
    #[arg(long)]
    service_cidr: Option<Ipv4Net>,
    /// Do not masquerade pod traffic leaving the cluster (a routed fabric knows the pods).
    #[arg(long)]
    no_masquerade: bool,
    /// Destinations never masqueraded to, besides the pod and service CIDRs (repeatable,
    /// or comma-separated; replaces the config's nonMasqueradeCIDRs).
    #[arg(long, value_delimiter = ',')]
    non_masquerade_cidr: Vec<Ipv4Net>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Remove what xdpnetd leaves on the node for its successor: the egress masquerade rules
    /// (nftables table ip xdpnet). Run it after the DaemonSet is gone.
    Cleanup,
    /// Dump a running daemon's services, endpoints, routes, conntrack and counters.
    Inspect {
        /// The daemon's inspect socket.
        #[arg(long, default_value = DEFAULT_INSPECT_SOCKET)]
        socket: PathBuf,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Conntrack entries to print.
        #[arg(long, default_value_t = 20)]
        conntrack: usize,
        /// `policy NAMESPACE/POD`: only the network policy rules in force for that pod (both
        /// directions, tier by tier), and the policies' counters.
        what: Vec<String>,
    },
    /// The network policy verdict on a flow, and the rule (or the default) that decided it, for
    /// each end that is a pod of this node. Addresses as the pods see them (a Service's
    /// backend, not its ClusterIP).
    Explain {
        /// The daemon's inspect socket.
        #[arg(long, default_value = DEFAULT_INSPECT_SOCKET)]
        socket: PathBuf,
        /// Source address.
        #[arg(long)]
        from: std::net::Ipv4Addr,
        /// Destination address.
        #[arg(long)]
        to: std::net::Ipv4Addr,
        /// tcp, udp, sctp, icmp or a protocol number.
        #[arg(long, default_value = "tcp")]
        protocol: String,
        /// Destination port.
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Errors end the process with one line, never a backtrace (`xdpnet_control::edge`).
fn main() -> std::process::ExitCode {
    xdpnet_control::edge::exit("xdpnetd", run(Args::parse()))
}

fn run(a: Args) -> anyhow::Result<()> {
    if let Some(Cmd::Inspect {
        socket,
        json,
        conntrack,
        what,
    }) = &a.cmd
    {
        return match what.as_slice() {
            [] => xdpnet_control::inspect::print(socket, *json, *conntrack),
            [w, pod] if w == "policy" => xdpnet_control::inspect::print_policy(socket, pod, *json),
            _ => anyhow::bail!("inspect takes nothing, or `policy NAMESPACE/POD`"),
        };
    }
    if let Some(Cmd::Explain {
        socket,
        from,
        to,
        protocol,
        port,
        json,
    }) = &a.cmd
    {
        let proto = xdpnet_control::policy::Flow::protocol(protocol).ok_or_else(|| {
            anyhow::anyhow!("protocol {protocol:?}: tcp, udp, sctp, icmp or a number")
        })?;
        let flow = xdpnet_control::policy::Flow {
            src: *from,
            dst: *to,
            proto,
            port: *port,
        };
        return xdpnet_control::inspect::print_explain(socket, flow, *json);
    }
    if let Some(Cmd::Cleanup) = &a.cmd {
        if xdpnet_control::masq::installed() {
            xdpnet_control::masq::remove()?;
            println!("removed nftables table ip {}", xdpnet_control::masq::TABLE);
        } else {
            println!("nothing to remove");
        }
        return Ok(());
    }
    let file = match &a.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let node_name = a
        .node_name
        .clone()
        .context("--node-name (or NODE_NAME) is required")?;
    let source = match (&a.state, file.source, &file.state_file) {
        (Some(p), _, _) => SourceConfig::File(p.clone()),
        (None, Some(SourceKind::File), Some(p)) => SourceConfig::File(p.clone()),
        (None, Some(SourceKind::File), None) => bail!("config: source: file needs stateFile"),
        (None, _, _) => SourceConfig::Kubernetes {
            server: a.api_server.clone().or(file.api_server.clone()),
        },
    };
    let cluster_cidr = match (a.cluster_cidr, &file.cluster_cidr) {
        (Some(c), _) => c,
        (None, Some(c)) => c
            .parse()
            .map_err(|e| anyhow::anyhow!("config: clusterCIDR {c:?}: {e:?}"))?,
        (None, None) => "10.244.0.0/16"
            .parse()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
    };
    let cidr = |what: &str, c: &str| -> anyhow::Result<Ipv4Net> {
        c.parse()
            .map_err(|e| anyhow::anyhow!("config: {what} {c:?}: {e:?}"))
    };
    let service_cidr = match (a.service_cidr, &file.service_cidr) {
        (Some(c), _) => c,
        (None, Some(c)) => cidr("serviceCIDR", c)?,
        (None, None) => cidr("serviceCIDR", "10.96.0.0/12")?,
    };
    let non_masquerade = if a.non_masquerade_cidr.is_empty() {
        file.non_masquerade_cidrs
            .iter()
            .flatten()
            .map(|c| cidr("nonMasqueradeCIDRs", c))
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        a.non_masquerade_cidr.clone()
    };
    let pod_cidr = match (a.pod_cidr, &file.pod_cidr) {
        (Some(c), _) => Some(c),
        (None, Some(c)) => Some(
            c.parse()
                .map_err(|e| anyhow::anyhow!("config: podCIDR {c:?}: {e:?}"))?,
        ),
        (None, None) => None,
    };
    let cores = a.cores.clone().or(file.cores.clone()).unwrap_or(vec![0]);
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(c) = cores.iter().find(|&&c| c >= ncpu) {
        bail!("cores: core {c} does not exist (this machine has {ncpu})");
    }
    let vni = a.vni.or(file.vni).unwrap_or(DEFAULT_VNI);
    if vni == 0 || vni >= 1 << 24 {
        bail!("vni {vni} is not a 24-bit VNI (1..16777215)");
    }
    let metrics_addr = match (a.metrics_addr, &file.metrics_address) {
        (Some(m), _) => Some(m),
        (None, Some(m)) => Some(
            m.parse()
                .with_context(|| format!("config: metricsAddress {m:?}"))?,
        ),
        (None, None) => None,
    };
    let inspect_socket = a
        .inspect_socket
        .clone()
        .or(file.inspect_socket.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_INSPECT_SOCKET));
    let inspect_socket = (inspect_socket.as_os_str() != "none").then_some(inspect_socket);
    let cni_socket = a
        .cni_socket
        .clone()
        .or(file.cni_socket.clone())
        .unwrap_or_else(|| PathBuf::from(xdpnet_cni::DEFAULT_SOCKET));
    let cni_socket = (cni_socket.as_os_str() != "none").then_some(cni_socket);
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .context("installing signal handlers")?;
    let host_if = a
        .host_if
        .or(file.host_interface)
        .unwrap_or_else(|| "xdpnet0".into());
    let masquerade = (!a.no_masquerade && file.masquerade.unwrap_or(true)).then(|| MasqConfig {
        cluster_cidr,
        service_cidr,
        non_masquerade,
        host_if: host_if.clone(),
    });
    let cfg = DaemonConfig {
        node_name,
        masquerade,
        source,
        uplink: a.uplink.or(file.uplink).unwrap_or_else(|| "eth0".into()),
        host_port: a
            .host_port
            .or(file.host_port)
            .unwrap_or_else(|| "xdpnet0-dp".into()),
        host_if,
        mtu: a.mtu.or(file.mtu),
        vni,
        vxlan_port: a
            .vxlan_port
            .or(file.vxlan_port)
            .unwrap_or(DEFAULT_VXLAN_PORT),
        cluster_cidr,
        pod_cidr,
        gateway_mac: a.gateway_mac,
        status_file: a.status_file,
        state_dir: a.state_dir.or(file.state_dir),
        metrics_addr,
        inspect_socket,
        cni_socket,
        pod_interface: a.pod_interface.or(file.pod_interface).unwrap_or_default(),
        dataplane: DataplaneConfig {
            cores,
            busy_poll: a.busy_poll || file.busy_poll.unwrap_or(false),
            worker_rt_priority: a.worker_rt_priority.or(file.worker_rt_priority),
            io_only: a.io_only,
            frames_per_worker: a.frames.or(file.frames).unwrap_or(16_384),
            max_pods: a.max_pods.or(file.max_pods).unwrap_or(110),
            early_drop: !a.no_early_drop && file.early_drop.unwrap_or(true),
            ..DataplaneConfig::default()
        },
    };
    daemon::run(cfg, stop, reload)
}
