//! `xdpnet-bench compare`: xdpnet against the kernel path, in one run, on one lab.
//!
//! One lab (2 nodes x 2 pods and an external client, see `lab`), one generator
//! ([`crate::loadgen`], pinned to the generator core), and every forwarding variant given the
//! same single dataplane core:
//! - **kernel**: the path Flannel (VXLAN backend) and kube-proxy (iptables mode) build, made
//!   by hand in the same namespaces: a `flannel.1` VXLAN device per node with routes, neighbour
//!   and FDB entries for the other node, pods routed over their veths (/32 routes, the
//!   host ends answering for the pods' gateway MAC, as Calico's veth routing does), and the nat
//!   table kube-proxy writes (KUBE-SERVICES, KUBE-SVC-*, KUBE-SEP-* with `statistic random`,
//!   KUBE-NODEPORTS, KUBE-MARK-MASQ, KUBE-POSTROUTING); xdpnetd is stopped. RPS on every lab
//!   interface sends the kernel's receive work to the dataplane core (on veth it would
//!   otherwise run on the sender's core);
//! - **io-only**: xdpnetd `--io-only` (forwarding by destination, no pipeline);
//! - **full**: xdpnetd as it runs in a cluster.
//!
//! For xdpnet the XDP receive work of the veths (NAPI) runs in threads pinned to the
//! dataplane core (`threaded` NAPI), for the same reason.
//!
//! Scenarios: pod -> pod on one node, pod -> pod across nodes, pod -> ClusterIP with the
//! backend on the other node, external client -> NodePort with the backend on the other node.
//! Each at saturation (delivered packets/s, CPU of both cores) and at a fixed offered rate
//! (half the kernel path's saturation rate of that scenario, the same for every variant)
//! for latency. Scale runs repeat the ClusterIP scenario with 100, 1,000 and 10,000 services
//! in the table (and in iptables), and time the first packet of new flows.

use crate::lab::{self, GATEWAY_MAC, Lab, LabService, LabSpec, POD_PORT, run as sh, run_stdin};
use crate::loadgen::frame::{Proto, TrafficSpec};
use crate::loadgen::{self, Outcome, Place, RunSpec, parse_mac};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

/// How xdpnet and the kernel forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Flannel VXLAN + kube-proxy iptables, built by hand.
    Kernel,
    /// xdpnetd --io-only.
    IoOnly,
    /// xdpnetd.
    Full,
}

impl Variant {
    /// All, in run order.
    pub const ALL: [Variant; 3] = [Variant::Kernel, Variant::IoOnly, Variant::Full];
    /// Name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Kernel => "kernel",
            Variant::IoOnly => "io-only",
            Variant::Full => "full",
        }
    }
}

/// What traffic crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// pod-1-0 -> pod-1-1.
    SameNode,
    /// pod-1-0 -> pod-2-0.
    CrossNode,
    /// pod-1-0 -> ClusterIP, backend pod-2-0.
    ClusterIp,
    /// external client -> node-1 NodePort, backend pod-2-0.
    NodePort,
    /// pod-1-0 -> TCP ClusterIP, backend pod-2-0: full handshakes (SYN, SYN-ACK, ACK, RST).
    ClusterIpTcp,
}

impl Scenario {
    /// All, in run order.
    pub const ALL: [Scenario; 5] = [
        Scenario::SameNode,
        Scenario::CrossNode,
        Scenario::ClusterIp,
        Scenario::NodePort,
        Scenario::ClusterIpTcp,
    ];
    /// Name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::SameNode => "pod-pod-same-node",
            Scenario::CrossNode => "pod-pod-cross-node",
            Scenario::ClusterIp => "pod-clusterip",
            Scenario::NodePort => "external-nodeport",
            Scenario::ClusterIpTcp => "pod-clusterip-tcp-handshake",
        }
    }
}

/// The benchmark's ClusterIP (UDP 53 -> pod-2-0:8080).
pub const BENCH_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// The benchmark's NodePort service address.
pub const BENCH_NP_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);
/// The benchmark's NodePort (UDP).
pub const BENCH_NODE_PORT: u16 = 30053;
/// The benchmark's TCP ClusterIP (80 -> pod-2-0:8080).
pub const BENCH_TCP_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 22);
/// Flows (source ports) of the handshake scenario.
pub const HANDSHAKE_FLOWS: u16 = 4096;

/// Options of a compare run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lab prefix.
    pub prefix: String,
    /// Seconds per saturation run.
    pub seconds: f64,
    /// Seconds per fixed-rate (latency) run.
    pub latency_seconds: f64,
    /// Frame size.
    pub size: usize,
    /// Flows per run.
    pub flows: u16,
    /// Service counts of the scale runs (empty: none).
    pub scale: Vec<usize>,
    /// Where the JSON and the SVG go.
    pub out: PathBuf,
    /// The generator's core.
    pub gen_core: usize,
    /// The core every variant forwards on.
    pub dp_core: usize,
    /// Variants to run.
    pub variants: Vec<Variant>,
    /// Scenarios to run.
    pub scenarios: Vec<Scenario>,
    /// Extra xdpnetd arguments (both xdpnet variants), e.g. `--busy-poll`.
    pub xdpnet_args: Vec<String>,
    /// Rate-search probes per saturation measurement (0: offered at full speed only).
    pub probes: usize,
    /// Run the NAPI threads of xdpnet's interfaces as SCHED_FIFO with this priority (they
    /// then preempt a busy-polling worker at once, as softirqs would).
    pub napi_fifo: Option<u8>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            prefix: format!("xcmp{}", std::process::id() % 10_000),
            seconds: 3.0,
            latency_seconds: 2.0,
            size: 64,
            flows: 64,
            scale: vec![100, 1_000, 10_000],
            out: PathBuf::from("target/compare"),
            gen_core: 0,
            dp_core: 1,
            variants: Variant::ALL.to_vec(),
            scenarios: Scenario::ALL.to_vec(),
            xdpnet_args: Vec::new(),
            probes: 6,
            napi_fifo: None,
        }
    }
}

/// Per-core busy time from /proc/stat: (busy, total) jiffies per CPU.
fn cpu_times() -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

fn busy(before: &[(u64, u64)], after: &[(u64, u64)], core: usize) -> f64 {
    match (before.get(core), after.get(core)) {
        (Some(b), Some(a)) if a.1 > b.1 => (a.0 - b.0) as f64 / (a.1 - b.1) as f64,
        _ => 0.0,
    }
}

/// One measured run with the CPU it took.
#[derive(Debug, Clone)]
pub struct Measured {
    /// What the generator and sink saw.
    pub outcome: Outcome,
    /// Busy fraction of the dataplane core.
    pub cpu_dp: f64,
    /// Busy fraction of the generator core.
    pub cpu_gen: f64,
    /// Drops counted on the way: xdpnetd's counters and every interface's in the lab (the
    /// sink's socket drops included: its interface counts them).
    pub path_drops: u64,
}

impl Measured {
    /// What the run delivered per second: packets at the sink, or for full handshakes the
    /// handshakes completed (the ACK reached the server).
    pub fn rate(&self) -> f64 {
        self.delivered() as f64 / self.outcome.report.seconds.max(1e-9)
    }

    fn delivered(&self) -> u64 {
        match &self.outcome.handshakes {
            Some(h) => h.established,
            None => self.outcome.report.received,
        }
    }

    /// Lost: sent and not delivered (packets, or handshakes not completed).
    pub fn lost(&self) -> u64 {
        self.outcome.report.sent.saturating_sub(self.delivered())
    }

    fn json(&self) -> Value {
        let mut v = self.outcome.json();
        v["cpu_dataplane_core"] = self.cpu_dp.into();
        v["cpu_generator_core"] = self.cpu_gen.into();
        v["path_drops"] = self.path_drops.into();
        v
    }
}

/// Drops xdpnetd counted: pipeline drops and I/O drops. Not its sockets' kernel drops (no
/// fill buffer, RX ring full): on veth the interface counts each of those too (a failed XDP
/// redirect is an `rx_dropped` of the interface), and [`lab::link_drops`] reads those.
pub fn xdpnet_drops(status: &Value) -> u64 {
    let mut n = 0;
    for w in status["workers"].as_array().into_iter().flatten() {
        let u = |v: &Value| v.as_u64().unwrap_or(0);
        n += w["pipeline"]["drops"]
            .as_object()
            .map_or(0, |m| m.values().map(u).sum());
        n += u(&w["tx_ring_full"]) + u(&w["handoff_drop"]) + u(&w["no_socket"]);
    }
    n
}

/// The lab, the kernel path and the daemons, switched between variants.
#[derive(Debug)]
pub struct Bed {
    /// The lab.
    pub lab: Lab,
    opts: Options,
    variant: Option<Variant>,
    /// node-1's uplink MAC (the NodePort's next hop from the external client).
    node1_mac: [u8; 6],
    fillers: usize,
}

impl Bed {
    /// Builds the lab (daemons stopped), the services and the kernel path.
    pub fn up(opts: &Options) -> Result<Bed> {
        let mut spec = LabSpec::new(&opts.prefix, 2, 2);
        spec.workers = 1;
        let mut lab = Lab::up(&spec)?;
        for n in 0..lab.nodes.len() {
            lab.stop_daemon(n, nix::sys::signal::Signal::SIGTERM)?;
            lab.nodes[n].core = opts.dp_core;
        }
        let node1_mac = Place::new(&lab.nodes[0].ns, "eth0").mac()?;
        let mut bed = Bed {
            lab,
            opts: opts.clone(),
            variant: None,
            node1_mac,
            fillers: 0,
        };
        let first = opts.scale.first().copied().unwrap_or(2);
        bed.set_services(first)?;
        bed.kernel_path()?;
        bed.quiet_ipv6()?;
        Ok(bed)
    }

    /// Makes the table (and iptables) hold `total` services: the three of the benchmark and
    /// `total - 3` fillers (TCP 80, two backends each).
    pub fn set_services(&mut self, total: usize) -> Result<()> {
        let fillers = total.saturating_sub(3);
        let pod = |name: &str| self.lab.pods.iter().position(|p| p.name == name);
        let sink = pod("pod-2-0").context("pod-2-0")?;
        let (f1, f2) = (
            pod("pod-1-1").context("pod-1-1")?,
            pod("pod-2-1").context("pod-2-1")?,
        );
        let mut services = Vec::with_capacity(total);
        // The benchmark's services sit in the middle of the list: kube-proxy writes services
        // in map order, so a service's rule is on average half way down KUBE-SERVICES.
        for k in 0..fillers {
            if k == fillers / 2 {
                services.extend(bench_services(sink));
            }
            let ip = u32::from(Ipv4Addr::new(10, 100, 0, 0)) + k as u32;
            services.push(LabService {
                name: format!("fill-{k}"),
                cluster_ip: Ipv4Addr::from(ip),
                port: 80,
                protocol: "TCP",
                node_port: None,
                backends: vec![f1, f2],
            });
        }
        if fillers == 0 {
            services.extend(bench_services(sink));
        }
        self.lab.services = services;
        self.fillers = fillers;
        self.lab.write_state()?;
        let rules = kube_proxy_rules(&self.lab);
        for n in &self.lab.nodes {
            run_stdin("ip", &["netns", "exec", &n.ns, "iptables-restore"], &rules)
                .with_context(|| format!("iptables-restore in {}", n.ns))?;
        }
        if matches!(self.variant, Some(Variant::Full | Variant::IoOnly)) {
            self.wait_services(self.lab.services.len())?;
        }
        Ok(())
    }

    fn wait_services(&self, want: usize) -> Result<()> {
        let t = std::time::Instant::now();
        for n in 0..self.lab.nodes.len() {
            while self.lab.status(n).and_then(|s| s["services"].as_u64()) != Some(want as u64) {
                if t.elapsed() > Duration::from_secs(60) {
                    bail!(
                        "{} did not load {want} services; log:\n{}",
                        self.lab.nodes[n].name,
                        self.lab.log_tail(n, 20)
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Flannel's VXLAN device, routes, neighbours and FDB entries; pods routed over their
    /// veths; forwarding on; RPS to the dataplane core on every interface of the lab.
    fn kernel_path(&mut self) -> Result<()> {
        let nodes = self.lab.nodes.clone();
        let vtep_mac = |i: usize| format!("0e:f1:a0:00:00:{:02x}", i + 1);
        for (i, n) in nodes.iter().enumerate() {
            let ns = n.ns.as_str();
            sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                ],
            )?;
            let local = n.ip.to_string();
            sh(
                "ip",
                &[
                    "-n",
                    ns,
                    "link",
                    "add",
                    "flannel.1",
                    "type",
                    "vxlan",
                    "id",
                    "1",
                    "local",
                    &local,
                    "dev",
                    "eth0",
                    "dstport",
                    "8472",
                    "nolearning",
                ],
            )?;
            sh(
                "ip",
                &[
                    "-n",
                    ns,
                    "link",
                    "set",
                    "flannel.1",
                    "address",
                    &vtep_mac(i),
                    "mtu",
                    "1450",
                    "up",
                ],
            )?;
            let own = format!("10.244.{}.0/32", i + 1);
            sh("ip", &["-n", ns, "addr", "add", &own, "dev", "flannel.1"])?;
            for (j, m) in nodes.iter().enumerate() {
                if i == j {
                    continue;
                }
                let gw = format!("10.244.{}.0", j + 1);
                let cidr = format!("10.244.{}.0/24", j + 1);
                sh(
                    "ip",
                    &[
                        "-n",
                        ns,
                        "route",
                        "add",
                        &cidr,
                        "via",
                        &gw,
                        "dev",
                        "flannel.1",
                        "onlink",
                    ],
                )?;
                sh(
                    "ip",
                    &[
                        "-n",
                        ns,
                        "neigh",
                        "replace",
                        &gw,
                        "lladdr",
                        &vtep_mac(j),
                        "dev",
                        "flannel.1",
                        "nud",
                        "permanent",
                    ],
                )?;
                let dst = m.ip.to_string();
                sh(
                    "bridge",
                    &[
                        "-n",
                        ns,
                        "fdb",
                        "append",
                        &vtep_mac(j),
                        "dev",
                        "flannel.1",
                        "dst",
                        &dst,
                    ],
                )?;
            }
        }
        for p in self.lab.pods.clone() {
            let ns = self.lab.nodes[p.node].ns.clone();
            let host = p.host_if.as_str();
            sh(
                "ip",
                &["-n", &ns, "link", "set", host, "address", GATEWAY_MAC],
            )?;
            let dst = format!("{}/32", p.ip);
            sh("ip", &["-n", &ns, "route", "add", &dst, "dev", host])?;
            let ip = p.ip.to_string();
            sh(
                "ip",
                &[
                    "-n",
                    &ns,
                    "neigh",
                    "replace",
                    &ip,
                    "lladdr",
                    &p.mac,
                    "dev",
                    host,
                    "nud",
                    "permanent",
                ],
            )?;
        }
        // RPS: receive processing of every interface on the dataplane core.
        let mask = format!("{:x}", 1u64 << self.opts.dp_core);
        let mut nss: Vec<String> = nodes.iter().map(|n| n.ns.clone()).collect();
        nss.push(self.lab.underlay_ns.clone());
        nss.push(self.lab.ext_ns.clone());
        for ns in nss {
            let script = format!(
                "for q in /sys/class/net/*/queues/rx-*/rps_cpus; do echo {mask} > $q; done"
            );
            sh("ip", &["netns", "exec", &ns, "sh", "-c", &script])?;
        }
        Ok(())
    }

    /// Turns IPv6 off in every namespace of the lab: no autoconfiguration or MLD chatter
    /// among the generator's frames (each such frame would be dropped and counted).
    pub fn quiet_ipv6(&self) -> Result<()> {
        let mut nss: Vec<&str> = self.lab.nodes.iter().map(|n| n.ns.as_str()).collect();
        nss.extend(self.lab.pods.iter().map(|p| p.ns.as_str()));
        nss.push(&self.lab.underlay_ns);
        nss.push(&self.lab.ext_ns);
        for ns in nss {
            lab::no_ipv6(ns)?;
        }
        Ok(())
    }

    /// Switches to `v`: stops or (re)starts the daemons.
    pub fn use_variant(&mut self, v: Variant) -> Result<()> {
        if self.variant == Some(v) {
            return Ok(());
        }
        for n in 0..self.lab.nodes.len() {
            if self.lab.daemon_running(n) {
                self.lab.stop_daemon(n, nix::sys::signal::Signal::SIGTERM)?;
            }
            let _ = std::fs::remove_file(&self.lab.nodes[n].status);
        }
        if v != Variant::Kernel {
            let mut args = self.opts.xdpnet_args.clone();
            if v == Variant::IoOnly {
                args.push("--io-only".into());
            }
            self.lab.set_daemon_args(args);
            for n in 0..self.lab.nodes.len() {
                self.lab.start_daemon(n)?;
            }
            self.lab.wait_ready(Duration::from_secs(60))?;
            self.variant = Some(v);
            self.wait_services(self.lab.services.len())?;
            self.pin_napi()?;
        }
        self.variant = Some(v);
        Ok(())
    }

    /// Threaded NAPI on every XDP interface of the nodes, the threads on the dataplane core;
    /// the daemons' other threads (control loop, status, metrics) on the generator core: the
    /// dataplane core forwards and nothing else, as kube-proxy's and Flannel's daemons are
    /// idle while the kernel path forwards.
    fn pin_napi(&self) -> Result<()> {
        for n in 0..self.lab.nodes.len() {
            let Some(pid) = self.lab.daemon_pid(n) else {
                continue;
            };
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
                .with_context(|| format!("threads of xdpnetd {pid}"))?;
            for t in tasks.flatten() {
                let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                if !comm.starts_with("xdpnet-w") {
                    let tid = t.file_name().to_string_lossy().into_owned();
                    let _ = sh(
                        "taskset",
                        &["-p", "-c", &self.opts.gen_core.to_string(), &tid],
                    );
                }
            }
        }
        for n in &self.lab.nodes {
            let script = "for d in /sys/class/net/*; do \
                 if ip link show $(basename $d) | grep -q 'prog/xdp'; then echo 1 > $d/threaded; fi; done";
            sh("ip", &["netns", "exec", &n.ns, "sh", "-c", script])?;
        }
        let ps = sh("ps", &["-e", "-o", "pid=,comm="])?;
        for l in ps.lines() {
            let mut it = l.split_whitespace();
            if let (Some(pid), Some(comm)) = (it.next(), it.next())
                && comm.starts_with("napi/")
            {
                let _ = sh(
                    "taskset",
                    &["-p", "-c", &self.opts.dp_core.to_string(), pid],
                );
                if let Some(prio) = self.opts.napi_fifo {
                    let _ = sh("chrt", &["-f", "-p", &prio.to_string(), pid]);
                }
            }
        }
        Ok(())
    }

    /// The generator run for `scenario` under the current variant.
    pub fn spec(&self, s: Scenario, rate: Option<f64>, seconds: f64) -> Result<RunSpec> {
        let pod = |name: &str| {
            self.lab
                .pods
                .iter()
                .find(|p| p.name == name)
                .with_context(|| format!("{name} in the lab"))
        };
        let (src, dst) = (pod("pod-1-0")?, pod("pod-2-0")?);
        let io = self.variant == Some(Variant::IoOnly);
        let gw = parse_mac(GATEWAY_MAC)?;
        // The generator's (namespace, MAC, address), the sink pod, next hop, destination.
        let from_pod = (src.ns.as_str(), parse_mac(&src.mac)?, src.ip);
        let (from, to, dst_mac, dst_ip, dst_port) = match s {
            Scenario::SameNode => {
                let d = pod("pod-1-1")?;
                (from_pod, d, gw, d.ip, POD_PORT)
            }
            Scenario::CrossNode => (from_pod, dst, gw, dst.ip, POD_PORT),
            // I/O-only has no services: the same hops, addressed to the backend.
            Scenario::ClusterIp | Scenario::ClusterIpTcp if io => {
                (from_pod, dst, gw, dst.ip, POD_PORT)
            }
            Scenario::ClusterIp => (from_pod, dst, gw, BENCH_CLUSTER_IP, 53),
            Scenario::ClusterIpTcp => (from_pod, dst, gw, BENCH_TCP_IP, 80),
            Scenario::NodePort => {
                let ext = Place::new(&self.lab.ext_ns, "eth0");
                let client = (self.lab.ext_ns.as_str(), ext.mac()?, self.lab.ext_ip);
                if io {
                    (client, dst, self.node1_mac, dst.ip, POD_PORT)
                } else {
                    let node1 = self.lab.nodes[0].ip;
                    (client, dst, self.node1_mac, node1, BENCH_NODE_PORT)
                }
            }
        };
        let tcp = s == Scenario::ClusterIpTcp;
        let proto = if tcp { Proto::TcpHandshake } else { Proto::Udp };
        Ok(RunSpec {
            frame: TrafficSpec {
                src_mac: from.1,
                dst_mac,
                src_ip: from.2,
                dst_ip,
                dst_port,
                src_port: 10_000,
                src_addrs: 1,
                proto,
                size: self.opts.size.max(proto.min_frame()),
            },
            flows: if tcp {
                HANDSHAKE_FLOWS
            } else {
                self.opts.flows
            },
            rate,
            seconds,
            packets: None,
            from: Place::new(from.0, "eth0"),
            to: Place::new(&to.ns, "eth0"),
            core: Some(self.opts.gen_core),
            progress: false,
        })
    }

    /// Drops counted on the path now: xdpnetd's counters when it runs, plus every interface
    /// drop in the lab's namespaces (nodes, pods, underlay, client).
    pub fn path_drops(&self) -> Result<u64> {
        let mut n = 0;
        if matches!(self.variant, Some(Variant::Full | Variant::IoOnly)) {
            for i in 0..self.lab.nodes.len() {
                n += self.lab.status(i).map_or(0, |s| xdpnet_drops(&s));
            }
        }
        for node in &self.lab.nodes {
            n += lab::link_drops(&node.ns)?;
        }
        for p in &self.lab.pods {
            n += lab::link_drops(&p.ns)?;
        }
        n += lab::link_drops(&self.lab.underlay_ns)?;
        n += lab::link_drops(&self.lab.ext_ns)?;
        Ok(n)
    }

    /// Runs `spec`, measuring both cores (and not the drop counters: quicker).
    pub fn probe(&self, spec: &RunSpec) -> Result<Measured> {
        let c0 = cpu_times();
        let outcome = loadgen::run(spec)?;
        let c1 = cpu_times();
        Ok(Measured {
            cpu_dp: busy(&c0, &c1, self.opts.dp_core),
            cpu_gen: busy(&c0, &c1, self.opts.gen_core),
            path_drops: 0,
            outcome,
        })
    }

    /// The most this variant delivers in scenario `s`: one run offered at the generator's
    /// full speed, then a search for the highest offered rate losing at most 1 % (a
    /// forwarder overloaded past its capacity may deliver less than at its capacity: receive
    /// work for frames it then drops): from what full speed delivered, doubling while
    /// nothing is lost or halving while something is, then bisecting. Returns the run
    /// that delivered most, and the search's figures.
    pub fn saturate(&self, s: Scenario) -> Result<Saturation> {
        let blast = self.measure(&self.spec(s, None, self.opts.seconds)?)?;
        let mut best = blast.clone();
        let mut pdr = 0.0f64;
        // First probe: what reached the sink at full speed (packets; for handshakes the SYNs,
        // an upper bound of the handshakes a second), or, when full speed collapsed (under a
        // quarter of the offered rate got through), the geometric mean of the two. Then
        // double while nothing is lost (halve while something is), then bisect the bracket.
        let (rx, tx) = (blast.outcome.report.rx_pps(), blast.outcome.report.tx_pps());
        let mut rate = if rx * 4.0 < tx { (rx * tx).sqrt() } else { rx };
        let (mut ok, mut bad): (Option<f64>, Option<f64>) = (None, None);
        // Let the overload drain out of every queue before probing.
        std::thread::sleep(Duration::from_millis(500));
        for _ in 0..self.opts.probes {
            if rate <= 1_000.0 {
                break;
            }
            let m = self.probe(&self.spec(s, Some(rate), self.opts.seconds)?)?;
            if m.lost() as f64 <= m.outcome.report.sent as f64 * 0.01 {
                ok = Some(ok.map_or(rate, |o| o.max(rate)));
                pdr = pdr.max(m.rate());
            } else {
                bad = Some(bad.map_or(rate, |b| b.min(rate)));
            }
            if m.rate() > best.rate() {
                best = m;
            }
            rate = match (ok, bad) {
                (Some(o), None) => o * 2.0,
                (None, Some(b)) => b / 2.0,
                (Some(o), Some(b)) => (o + b) / 2.0,
                (None, None) => break,
            };
        }
        Ok(Saturation {
            blast_rx_pps: blast.rate(),
            blast_tx_pps: blast.outcome.report.tx_pps(),
            pdr_pps: pdr,
            best,
        })
    }

    /// Runs `spec`, measuring both cores and the path's drop counters.
    pub fn measure(&self, spec: &RunSpec) -> Result<Measured> {
        // xdpnetd refreshes its status (and its sockets' kernel counters) about once a second.
        let settle = || {
            if matches!(self.variant, Some(Variant::Full | Variant::IoOnly)) {
                std::thread::sleep(Duration::from_millis(1_600));
            }
        };
        settle();
        let d0 = self.path_drops()?;
        let c0 = cpu_times();
        let outcome = loadgen::run(spec)?;
        let c1 = cpu_times();
        settle();
        let d1 = self.path_drops()?;
        Ok(Measured {
            cpu_dp: busy(&c0, &c1, self.opts.dp_core),
            cpu_gen: busy(&c0, &c1, self.opts.gen_core),
            path_drops: d1.saturating_sub(d0),
            outcome,
        })
    }
}

fn bench_services(sink: usize) -> Vec<LabService> {
    vec![
        LabService {
            name: "bench-udp".into(),
            cluster_ip: BENCH_CLUSTER_IP,
            port: 53,
            protocol: "UDP",
            node_port: None,
            backends: vec![sink],
        },
        LabService {
            name: "bench-tcp".into(),
            cluster_ip: BENCH_TCP_IP,
            port: 80,
            protocol: "TCP",
            node_port: None,
            backends: vec![sink],
        },
        LabService {
            name: "bench-np".into(),
            cluster_ip: BENCH_NP_IP,
            port: 53,
            protocol: "UDP",
            node_port: Some(BENCH_NODE_PORT),
            backends: vec![sink],
        },
    ]
}

fn chain(kind: &str, key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    format!("{kind}-{:016X}", h)
}

/// The nat table kube-proxy (iptables mode) writes for the lab's services (the same on every
/// node).
pub fn kube_proxy_rules(lab: &Lab) -> String {
    let mut r = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let mut body = String::new();
    let mut nodeports = String::new();
    for s in &lab.services {
        let proto = s.protocol.to_ascii_lowercase();
        let svc = chain("KUBE-SVC", &s.name);
        let _ = writeln!(r, ":{svc} - [0:0]");
        let _ = writeln!(
            body,
            "-A KUBE-SERVICES -d {}/32 -p {proto} -m {proto} --dport {} -j {svc}",
            s.cluster_ip, s.port
        );
        let _ = writeln!(
            body,
            "-A {svc} ! -s 10.244.0.0/16 -d {}/32 -p {proto} -m {proto} --dport {} -j KUBE-MARK-MASQ",
            s.cluster_ip, s.port
        );
        if let Some(np) = s.node_port {
            let ext = chain("KUBE-EXT", &s.name);
            let _ = writeln!(r, ":{ext} - [0:0]");
            let _ = writeln!(
                nodeports,
                "-A KUBE-NODEPORTS -p {proto} -m {proto} --dport {np} -j {ext}"
            );
            let _ = writeln!(body, "-A {ext} -j KUBE-MARK-MASQ");
            let _ = writeln!(body, "-A {ext} -j {svc}");
        }
        let k = s.backends.len();
        for (i, &b) in s.backends.iter().enumerate() {
            let p = &lab.pods[b];
            let sep = chain("KUBE-SEP", &format!("{}/{}", s.name, p.ip));
            let _ = writeln!(r, ":{sep} - [0:0]");
            let left = k - i;
            if left > 1 {
                let _ = writeln!(
                    body,
                    "-A {svc} -m statistic --mode random --probability {:.11} -j {sep}",
                    1.0 / left as f64
                );
            } else {
                let _ = writeln!(body, "-A {svc} -j {sep}");
            }
            let _ = writeln!(body, "-A {sep} -s {}/32 -j KUBE-MARK-MASQ", p.ip);
            let _ = writeln!(
                body,
                "-A {sep} -p {proto} -m {proto} -j DNAT --to-destination {}:{POD_PORT}",
                p.ip
            );
        }
    }
    r.push_str(
        "-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n-A POSTROUTING -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -j MASQUERADE --random-fully\n",
    );
    r.push_str(&body);
    r.push_str(&nodeports);
    r.push_str("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n");
    r
}

/// The saturation measurement of one cell.
#[derive(Debug, Clone)]
pub struct Saturation {
    /// Delivered when offered at the generator's full speed.
    pub blast_rx_pps: f64,
    /// What the generator offered then.
    pub blast_tx_pps: f64,
    /// Highest delivered rate with at most 1 % loss (0 when none was found).
    pub pdr_pps: f64,
    /// The run that delivered the most.
    pub best: Measured,
}

/// One (variant, scenario) cell.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Variant.
    pub variant: Variant,
    /// Scenario.
    pub scenario: Scenario,
    /// At saturation (the run that delivered the most).
    pub saturation: Measured,
    /// The rate search.
    pub search: Saturation,
    /// At the fixed rate.
    pub latency: Option<Measured>,
    /// The fixed rate offered, packets/s.
    pub latency_rate: f64,
}

/// One scale point.
#[derive(Debug, Clone)]
pub struct ScalePoint {
    /// Variant.
    pub variant: Variant,
    /// Services in the table.
    pub services: usize,
    /// ClusterIP scenario at saturation.
    pub saturation: Measured,
    /// First packets of new flows, at a low rate.
    pub first_packet: Measured,
}

fn mpps(m: &Measured) -> f64 {
    m.rate() / 1e6
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// Runs the whole comparison; prints the tables, writes `compare.json` and `compare.svg` into
/// `opts.out`, returns the JSON.
pub fn run(opts: &Options) -> Result<Value> {
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    if opts.gen_core >= ncpu || opts.dp_core >= ncpu || opts.gen_core == opts.dp_core {
        bail!(
            "need two different cores below {ncpu} (generator {}, dataplane {})",
            opts.gen_core,
            opts.dp_core
        );
    }
    println!(
        "compare: {} B UDP, {} flows, {} s per saturation run, {} s per latency run; generator on core {}, every variant forwards on core {}",
        opts.size, opts.flows, opts.seconds, opts.latency_seconds, opts.gen_core, opts.dp_core
    );
    let mut bed = Bed::up(opts)?;
    // The generator's own ceiling, same frames, same core.
    let ceil_spec = bed.spec(Scenario::SameNode, None, opts.seconds)?;
    let ceiling = loadgen::ceiling(&ceil_spec, &format!("{}-c", opts.prefix))?;
    println!(
        "loadgen ceiling (generator straight into the sink): {:.3} Mpps delivered, {:.3} Mpps sent",
        ceiling.report.rx_pps() / 1e6,
        ceiling.report.tx_pps() / 1e6
    );
    let mut cells: Vec<Cell> = Vec::new();
    for &v in &opts.variants {
        bed.use_variant(v)?;
        for &s in &opts.scenarios {
            let search = bed.saturate(s)?;
            let sat = search.best.clone();
            // Latency at half the kernel path's saturation (the same offered rate for every
            // variant), or half this variant's when the kernel path is not run.
            let base = cells
                .iter()
                .find(|c| c.variant == Variant::Kernel && c.scenario == s)
                .map_or(sat.rate(), |c| c.saturation.rate());
            let rate = (base / 2.0).max(1_000.0);
            let lat = bed.measure(&bed.spec(s, Some(rate), opts.latency_seconds)?)?;
            println!(
                "  {:<8} {:<20} max delivered {:>7.3} Mpps (offered {:>7.3}; full speed {:>7.3} -> {:>7.3}; <=1% loss {:>7.3}; core {} busy {:>3.0}%)   at {:>7.3} Mpps: p50 {:>7.1} p99 {:>8.1} us, lost {}",
                v.name(),
                s.name(),
                mpps(&sat),
                sat.outcome.report.tx_pps() / 1e6,
                search.blast_tx_pps / 1e6,
                search.blast_rx_pps / 1e6,
                search.pdr_pps / 1e6,
                opts.dp_core,
                sat.cpu_dp * 100.0,
                rate / 1e6,
                us(lat.outcome.report.latency.p50),
                us(lat.outcome.report.latency.p99),
                lat.lost()
            );
            if let Some(h) = &lat.outcome.handshakes {
                println!(
                    "           handshakes at the fixed rate: {:.0}/s completed, SYN -> SYN-ACK p50 {:.1} p99 {:.1} us; at the most delivered: {:.0}/s",
                    h.established as f64 / lat.outcome.report.seconds.max(1e-9),
                    us(h.latency.p50),
                    us(h.latency.p99),
                    sat.outcome.handshakes.map_or(0.0, |h| h.established as f64
                        / sat.outcome.report.seconds.max(1e-9))
                );
            }
            cells.push(Cell {
                variant: v,
                scenario: s,
                saturation: sat,
                search,
                latency: Some(lat),
                latency_rate: rate,
            });
        }
    }
    let mut scale: Vec<ScalePoint> = Vec::new();
    if !opts.scale.is_empty() {
        println!("scale runs (pod -> ClusterIP, backend on the other node):");
        let mut port_base = 20_000u16;
        for v in [Variant::Kernel, Variant::Full]
            .into_iter()
            .filter(|v| opts.variants.contains(v))
        {
            bed.use_variant(v)?;
            for &n in &opts.scale {
                bed.set_services(n)?;
                let sat = bed.saturate(Scenario::ClusterIp)?.best;
                // First packets: 5,000 new flows, one packet each, at 20 kpps.
                let mut fp = bed.spec(Scenario::ClusterIp, Some(20_000.0), 1.0)?;
                fp.flows = 5_000;
                fp.packets = Some(5_000);
                fp.frame.src_port = port_base;
                port_base = port_base.wrapping_add(5_000);
                let first = bed.measure(&fp)?;
                println!(
                    "  {:<8} {:>6} services: {:>7.3} Mpps delivered; first packet p50 {:>6.1} p99 {:>7.1} us ({} of {} delivered)",
                    v.name(),
                    n,
                    mpps(&sat),
                    us(first.outcome.report.latency.p50),
                    us(first.outcome.report.latency.p99),
                    first.outcome.report.received,
                    first.outcome.report.sent
                );
                scale.push(ScalePoint {
                    variant: v,
                    services: n,
                    saturation: sat,
                    first_packet: first,
                });
            }
        }
    }
    let table = summary_table(&cells, opts);
    println!("\n{table}");
    let scale_table = scale_table(&scale);
    if !scale.is_empty() {
        println!("{scale_table}");
    }
    let out = json!({
        "options": {
            "size": opts.size, "flows": opts.flows, "seconds": opts.seconds,
            "latency_seconds": opts.latency_seconds, "generator_core": opts.gen_core,
            "dataplane_core": opts.dp_core, "xdpnet_args": opts.xdpnet_args,
            "probes": opts.probes,
        },
        "loadgen_ceiling": ceiling.json(),
        "results": cells.iter().map(|c| json!({
            "variant": c.variant.name(), "scenario": c.scenario.name(),
            "saturation": c.saturation.json(),
            "full_speed": {"tx_pps": c.search.blast_tx_pps.round(), "rx_pps": c.search.blast_rx_pps.round()},
            "loss_1pct_rx_pps": c.search.pdr_pps.round(),
            "latency_rate_pps": c.latency_rate.round(),
            "latency": c.latency.as_ref().map(Measured::json),
        })).collect::<Vec<_>>(),
        "ratios": ratios(&cells),
        "scale": scale.iter().map(|p| json!({
            "variant": p.variant.name(), "services": p.services,
            "saturation": p.saturation.json(), "first_packet": p.first_packet.json(),
        })).collect::<Vec<_>>(),
        "table": table,
        "scale_table": scale_table,
    });
    let jp = opts.out.join("compare.json");
    std::fs::write(&jp, serde_json::to_string_pretty(&out)?)
        .with_context(|| format!("writing {}", jp.display()))?;
    let sp = opts.out.join("compare.svg");
    std::fs::write(&sp, svg(&out)).with_context(|| format!("writing {}", sp.display()))?;
    println!("wrote {} and {}", jp.display(), sp.display());
    drop(bed);
    Ok(out)
}

fn find(cells: &[Cell], v: Variant, s: Scenario) -> Option<&Cell> {
    cells.iter().find(|c| c.variant == v && c.scenario == s)
}

fn ratios(cells: &[Cell]) -> Value {
    let mut out = serde_json::Map::new();
    for s in Scenario::ALL {
        let get = |v| find(cells, v, s).map(|c| c.saturation.rate());
        let (k, io, f) = (
            get(Variant::Kernel),
            get(Variant::IoOnly),
            get(Variant::Full),
        );
        let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        out.insert(
            s.name().into(),
            json!({"full_over_io_only": div(f, io), "full_over_kernel": div(f, k)}),
        );
    }
    Value::Object(out)
}

fn summary_table(cells: &[Cell], opts: &Options) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| scenario | kernel Mpps | io-only Mpps | full Mpps | full / io-only | full / kernel | core {} busy (k / io / full) | p99 us at half kernel rate (k / io / full) |",
        opts.dp_core
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |");
    for s in Scenario::ALL {
        let get = |v| find(cells, v, s);
        if [Variant::Kernel, Variant::IoOnly, Variant::Full]
            .iter()
            .all(|&v| get(v).is_none())
        {
            continue;
        }
        let rate = |v| get(v).map(|c| mpps(&c.saturation));
        let f3 = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.3}"));
        let f2 = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}"));
        let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let cpu = |v| {
            get(v).map_or("-".into(), |c| {
                format!("{:.0}%", c.saturation.cpu_dp * 100.0)
            })
        };
        let p99 = |v| {
            get(v)
                .and_then(|c| c.latency.as_ref())
                .map_or("-".into(), |l| {
                    format!("{:.1}", us(l.outcome.report.latency.p99))
                })
        };
        let (k, io, f) = (
            rate(Variant::Kernel),
            rate(Variant::IoOnly),
            rate(Variant::Full),
        );
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} / {} / {} | {} / {} / {} |",
            s.name(),
            f3(k),
            f3(io),
            f3(f),
            f2(div(f, io)),
            f2(div(f, k)),
            cpu(Variant::Kernel),
            cpu(Variant::IoOnly),
            cpu(Variant::Full),
            p99(Variant::Kernel),
            p99(Variant::IoOnly),
            p99(Variant::Full),
        );
    }
    t
}

fn scale_table(points: &[ScalePoint]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| variant | services | delivered Mpps | vs first scale point | first packet p50 us | first packet p99 us | first packets delivered |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for p in points {
        let base = points
            .iter()
            .find(|q| q.variant == p.variant)
            .map_or(1.0, |q| mpps(&q.saturation));
        let r = &p.first_packet.outcome.report;
        let _ = writeln!(
            t,
            "| {} | {} | {:.3} | {:.3} | {:.1} | {:.1} | {} / {} |",
            p.variant.name(),
            p.services,
            mpps(&p.saturation),
            mpps(&p.saturation) / base.max(1e-9),
            us(r.latency.p50),
            us(r.latency.p99),
            r.received,
            r.sent
        );
    }
    t
}

/// Delivered per second in a run's JSON: completed handshakes for `tcp-handshake`, else
/// packets at the sink.
fn json_rate(run: &Value) -> f64 {
    match run["handshakes"]["per_second"].as_f64() {
        Some(h) => h,
        None => run["rx_pps"].as_f64().unwrap_or(0.0),
    }
}

/// Bar charts from a compare result (the JSON [`run`] writes): most delivered per scenario
/// and variant, p99 latency at the fixed rate, and the scale runs' most delivered by service
/// count. `xdpnet-bench compare --plot` redraws a saved result with it.
pub fn svg(result: &Value) -> String {
    let ceiling_pps = result["loadgen_ceiling"]["rx_pps"].as_f64().unwrap_or(0.0);
    // (variant, scenario, most delivered per second, p99 µs at the fixed rate)
    let cells: Vec<(Variant, Scenario, f64, Option<f64>)> = result["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let v = Variant::ALL
                .into_iter()
                .find(|v| r["variant"].as_str() == Some(v.name()))?;
            let sc = Scenario::ALL
                .into_iter()
                .find(|s| r["scenario"].as_str() == Some(s.name()))?;
            Some((
                v,
                sc,
                json_rate(&r["saturation"]),
                r["latency"]["latency"]["p99_ns"].as_f64().map(|x| x / 1e3),
            ))
        })
        .collect();
    const W: f64 = 1240.0;
    const H: f64 = 420.0;
    let colors = [
        (Variant::Kernel, "#9e9e9e"),
        (Variant::IoOnly, "#64b5f6"),
        (Variant::Full, "#1565c0"),
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>"
    );
    // Panels: (title, x0, values per scenario and variant).
    let panel = |s: &mut String,
                 x0: f64,
                 title: &str,
                 groups: &[(String, Vec<(Variant, f64)>)],
                 unit: &str,
                 line: Option<(f64, &str)>| {
        let (w, h, top) = (330.0, 280.0, 60.0);
        let max = groups
            .iter()
            .flat_map(|g| g.1.iter().map(|x| x.1))
            .chain(line.map(|l| l.0))
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.1;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"30\" font-size=\"14\" font-weight=\"bold\">{title}</text>",
            x0
        );
        let _ = writeln!(
            s,
            "<line x1=\"{x0}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
            top + h,
            x0 + w,
            top + h
        );
        for k in 0..=4 {
            let v = max * k as f64 / 4.0;
            let y = top + h - h * k as f64 / 4.0;
            let label = if max > 20.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            };
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{label}</text><line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#eee\"/>",
                x0 - 4.0,
                y + 4.0,
                x0 + w
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" fill=\"#555\">{unit}</text>",
            x0,
            top - 8.0
        );
        if let Some((v, label)) = line {
            let y = top + h - h * v / max;
            let _ = writeln!(
                s,
                "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#c62828\" stroke-dasharray=\"4 3\"/><text x=\"{}\" y=\"{:.1}\" fill=\"#c62828\" text-anchor=\"end\">{label}</text>",
                x0 + w,
                x0 + w,
                y - 3.0
            );
        }
        let gw = w / groups.len().max(1) as f64;
        for (gi, (name, vals)) in groups.iter().enumerate() {
            let bw = (gw - 16.0) / 3.0;
            for (vi, (v, val)) in vals.iter().enumerate() {
                let color = colors.iter().find(|c| c.0 == *v).map_or("#000", |c| c.1);
                let bh = h * val / max;
                let x = x0 + gi as f64 * gw + 8.0 + vi as f64 * bw;
                let _ = writeln!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{color}\"><title>{} {name}: {val:.3}</title></rect>",
                    top + h - bh,
                    bw - 2.0,
                    v.name()
                );
            }
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{name}</text>",
                x0 + gi as f64 * gw + gw / 2.0,
                top + h + 16.0
            );
        }
    };
    let short = |sc: Scenario| match sc {
        Scenario::SameNode => "same node",
        Scenario::CrossNode => "cross node",
        Scenario::ClusterIp => "ClusterIP",
        Scenario::NodePort => "NodePort",
        Scenario::ClusterIpTcp => "TCP hs",
    };
    type CellRow = (Variant, Scenario, f64, Option<f64>);
    let groups = |f: &dyn Fn(&CellRow) -> Option<f64>| -> Vec<(String, Vec<(Variant, f64)>)> {
        Scenario::ALL
            .iter()
            .map(|&sc| {
                (
                    short(sc).to_string(),
                    Variant::ALL
                        .iter()
                        .filter_map(|&v| {
                            cells
                                .iter()
                                .find(|c| c.0 == v && c.1 == sc)
                                .and_then(f)
                                .map(|x| (v, x))
                        })
                        .collect(),
                )
            })
            .filter(|g: &(String, Vec<(Variant, f64)>)| !g.1.is_empty())
            .collect()
    };
    let rate = groups(&|c| Some(c.2 / 1e6));
    panel(
        &mut s,
        60.0,
        "Most delivered (TCP hs: M handshakes/s)",
        &rate,
        "Mpps",
        Some((ceiling_pps / 1e6, "loadgen ceiling")),
    );
    let lat = groups(&|c| c.3);
    panel(
        &mut s,
        480.0,
        "p99 latency at half the kernel rate",
        &lat,
        "us",
        None,
    );
    let mut sg: Vec<(String, Vec<(Variant, f64)>)> = Vec::new();
    for p in result["scale"].as_array().into_iter().flatten() {
        let Some(v) = Variant::ALL
            .into_iter()
            .find(|v| p["variant"].as_str() == Some(v.name()))
        else {
            continue;
        };
        let name = p["services"].to_string();
        let x = json_rate(&p["saturation"]) / 1e6;
        match sg.iter_mut().find(|g| g.0 == name) {
            Some(g) => g.1.push((v, x)),
            None => sg.push((name, vec![(v, x)])),
        }
    }
    if !sg.is_empty() {
        panel(
            &mut s,
            890.0,
            "ClusterIP, most delivered, by services",
            &sg,
            "Mpps",
            None,
        );
    }
    for (i, (v, c)) in colors.iter().enumerate() {
        let x = 60.0 + i as f64 * 110.0;
        let _ = writeln!(
            s,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{c}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            H - 40.0,
            x + 16.0,
            H - 30.0,
            v.name()
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chart has one bar per (variant, scenario) and per scale point, each as tall as its
    /// value against the panel's largest, handshakes counted as completed per second.
    #[test]
    fn chart_from_a_result() {
        let r = json!({
            "loadgen_ceiling": {"rx_pps": 800_000.0},
            "results": [
                {"variant": "kernel", "scenario": "pod-pod-cross-node",
                 "saturation": {"rx_pps": 100_000.0}, "latency": {"latency": {"p99_ns": 50_000}}},
                {"variant": "full", "scenario": "pod-pod-cross-node",
                 "saturation": {"rx_pps": 200_000.0}, "latency": {"latency": {"p99_ns": 100_000}}},
                {"variant": "full", "scenario": "pod-clusterip-tcp-handshake",
                 "saturation": {"rx_pps": 90_000.0, "handshakes": {"per_second": 30_000.0}},
                 "latency": null},
                {"variant": "nonsense", "scenario": "pod-clusterip", "saturation": {}},
            ],
            "scale": [
                {"variant": "full", "services": 100, "saturation": {"rx_pps": 150_000.0}},
                {"variant": "full", "services": 10000, "saturation": {"rx_pps": 150_000.0}},
            ],
        });
        let s = svg(&r);
        let titles: Vec<&str> = s
            .split("<title>")
            .skip(1)
            .map(|t| t.split("</title>").next().unwrap_or(""))
            .collect();
        assert_eq!(
            titles,
            vec![
                "kernel cross node: 0.100",
                "full cross node: 0.200",
                "full TCP hs: 0.030",
                "kernel cross node: 50.000",
                "full cross node: 100.000",
                "full 100: 0.150",
                "full 10000: 0.150",
            ]
        );
        // Heights: the ceiling (0.8) sets the first panel's scale (x 1.1), 280 px tall.
        let h = |v: f64| format!("height=\"{:.1}\"", 280.0 * v / (0.8 * 1.1));
        assert!(s.contains(&h(0.2)) && s.contains(&h(0.1)), "{s}");
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
    }
}
