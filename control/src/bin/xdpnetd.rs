//! xdpnetd: the per-node daemon. Runs the AF_XDP dataplane with cluster state from a file of
//! Kubernetes objects (reloaded when it changes). SIGTERM/SIGINT stop it cleanly (programs
//! detached, sockets closed); SIGHUP forces a reload.

#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use xdpnet_control::daemon::{self, DaemonConfig};
use xdpnet_control::dataplane::fib::{DEFAULT_VNI, DEFAULT_VXLAN_PORT, Ipv4Net};
use xdpnet_control::dataplane::runtime::DataplaneConfig;
use xdpnet_control::dataplane::wire::MacAddr;

/// xdpnet node daemon: user-space pod network dataplane over AF_XDP.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// This node's name (its Node object in the state).
    #[arg(long)]
    node_name: String,
    /// Cluster state: a YAML file (or directory) of Nodes, Pods, Services, EndpointSlices.
    #[arg(long)]
    state: PathBuf,
    /// Uplink (NIC) interface.
    #[arg(long, default_value = "eth0")]
    uplink: String,
    /// The dataplane's end of the host port (a veth whose peer is --host-if).
    #[arg(long, default_value = "xdpnet0-dp")]
    host_port: String,
    /// The kernel's end of the host port.
    #[arg(long, default_value = "xdpnet0")]
    host_if: String,
    /// Cores for the workers, comma separated (one worker per core).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    cores: Vec<usize>,
    /// Spin when idle instead of sleeping in poll(2) (lowest latency, one full core per worker).
    #[arg(long)]
    busy_poll: bool,
    /// Underlay MTU (default: the uplink's).
    #[arg(long)]
    mtu: Option<u16>,
    /// VXLAN network identifier.
    #[arg(long, default_value_t = DEFAULT_VNI)]
    vni: u32,
    /// VXLAN UDP port.
    #[arg(long, default_value_t = DEFAULT_VXLAN_PORT)]
    vxlan_port: u16,
    /// The cluster's pod CIDR.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: Ipv4Net,
    /// MAC the dataplane answers with for the pods' gateway.
    #[arg(long, default_value = "02:fe:78:64:70:01")]
    gateway_mac: MacAddr,
    /// Write a status JSON (table generation, ports, counters) here every second.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// UMEM frames per worker.
    #[arg(long, default_value_t = 16384)]
    frames: u32,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(c) = a.cores.iter().find(|&&c| c >= ncpu) {
        anyhow::bail!("--cores: core {c} does not exist (this machine has {ncpu})");
    }
    if a.vni == 0 || a.vni >= 1 << 24 {
        anyhow::bail!("--vni {} is not a 24-bit VNI (1..16777215)", a.vni);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .context("installing signal handlers")?;
    let cfg = DaemonConfig {
        node_name: a.node_name,
        state: a.state,
        uplink: a.uplink,
        host_port: a.host_port,
        host_if: a.host_if,
        mtu: a.mtu,
        vni: a.vni,
        vxlan_port: a.vxlan_port,
        cluster_cidr: a.cluster_cidr,
        gateway_mac: a.gateway_mac,
        status_file: a.status_file,
        dataplane: DataplaneConfig {
            cores: a.cores,
            busy_poll: a.busy_poll,
            frames_per_worker: a.frames,
            ..DataplaneConfig::default()
        },
    };
    daemon::run(cfg, stop, reload)
}
