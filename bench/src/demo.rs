//! `xdpnet-bench demo` and `xdpnet-bench lab up|down|status`.

use anyhow::{Context, Result, bail};
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use xdpnet_bench::compare::{self, Bed, TcpPath, TcpRun, Variant};
use xdpnet_bench::lab::{self, Lab, LabSpec, POD_PORT};

const DEFAULT_PREFIX: &str = "xnlab";

/// The lab's shape.
#[derive(Debug, clap::Args)]
pub struct LabOpts {
    /// Nodes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=200))]
    nodes: u16,
    /// Pods per node.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=200))]
    pods: u16,
    /// Prefix of every namespace and file (default: xndemo for the demo, xnlab for a lab).
    #[arg(long, value_parser = prefix)]
    prefix: Option<String>,
    /// What a pod's eth0 is: `veth` (an AF_XDP socket on its host end) or `tap` (a
    /// persistent tap that keeps the pod's offloads).
    #[arg(long, default_value = "veth", value_parser = ["veth", "tap"])]
    pod_interface: String,
    /// The underlay's MTU (pods and host ports get 50 less, for VXLAN).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u16).range(1280..=9216))]
    mtu: u16,
    /// The cluster from a YAML file of Kubernetes objects (lab up only): Namespaces, Pods (on
    /// the node their spec.nodeName names, serving the ports their containers declare),
    /// Services (endpoints from their selectors), NetworkPolicies, ClusterNetworkPolicies;
    /// instead of the default pods and services (--pods is then ignored). See the README.
    #[arg(long, value_name = "FILE")]
    cluster: Option<std::path::PathBuf>,
}

/// A lab and a file of objects.
#[derive(Debug, clap::Args)]
pub struct FileOpts {
    /// Prefix of the lab (started with lab up).
    #[arg(long, default_value = DEFAULT_PREFIX, value_parser = prefix)]
    prefix: String,
    /// YAML file of Kubernetes objects (as for lab up --cluster).
    file: std::path::PathBuf,
}

/// The servers of one pod of a cluster-file lab (started by the lab itself).
#[derive(Debug, clap::Args)]
pub struct ServePodOpts {
    /// What the servers answer with.
    #[arg(long)]
    name: String,
    /// TCP ports.
    #[arg(long)]
    tcp: Vec<u16>,
    /// UDP ports.
    #[arg(long)]
    udp: Vec<u16>,
}

/// A lab's name.
#[derive(Debug, clap::Args)]
pub struct PrefixOpt {
    /// Prefix of the lab's namespaces and files.
    #[arg(long, default_value = DEFAULT_PREFIX, value_parser = prefix)]
    prefix: String,
}

/// `lab` commands.
#[derive(Debug, clap::Subcommand)]
pub enum LabCmd {
    /// Build a lab and leave it running.
    Up(LabOpts),
    /// Show a running lab's daemons.
    Status(PrefixOpt),
    /// Remove a lab (processes, namespaces, files).
    Down(PrefixOpt),
    /// Add or change objects of a running lab (lab up, with or without --cluster): pods
    /// (new ones are wired and served; existing ones relabelled), namespaces' labels,
    /// services, NetworkPolicies, ClusterNetworkPolicies.
    Apply(FileOpts),
    /// Remove objects of a running lab (pods with their namespaces, services, policies).
    Delete(FileOpts),
    /// (internal) serve a cluster-file pod's ports.
    #[command(hide = true)]
    ServePod(ServePodOpts),
}

fn prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 12 || !s.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err("1 to 12 letters or digits".into());
    }
    Ok(s.to_string())
}

struct Opts {
    nodes: usize,
    pods: usize,
    prefix: String,
    taps: bool,
    mtu: u16,
    cluster: Option<std::path::PathBuf>,
}

impl LabOpts {
    fn with_default(self, prefix: &str) -> Opts {
        Opts {
            nodes: usize::from(self.nodes),
            pods: usize::from(self.pods),
            prefix: self.prefix.unwrap_or_else(|| prefix.to_string()),
            taps: self.pod_interface == "tap",
            mtu: self.mtu,
            cluster: self.cluster,
        }
    }
}

fn root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab creates network namespaces and loads XDP programs: run as root");
    }
    Ok(())
}

/// `lab up|down|status`.
pub fn lab(cmd: LabCmd) -> Result<()> {
    root()?;
    match cmd {
        LabCmd::Up(o) => {
            let o = o.with_default(DEFAULT_PREFIX);
            lab::cleanup_on_signal()?;
            let mut spec = LabSpec::new(&o.prefix, o.nodes, o.pods);
            spec.taps = o.taps;
            spec.mtu = o.mtu;
            if let Some(f) = &o.cluster {
                let cf = lab::ClusterFile::read(f)?;
                spec.nodes = spec.nodes.max(cf.nodes_needed());
                spec.max_pods = spec.max_pods.max(cf.pods.len());
                spec.cluster = Some(cf);
            }
            let lab = Lab::up(&spec)?;
            if o.cluster.is_some() {
                for i in 0..lab.pods.len() {
                    lab.serve_pod_detached(i)?;
                }
            }
            lab.save_description()?;
            println!(
                "lab {} up: {} nodes, {} pods, underlay MTU {} (pods {}); state {}; logs in {}",
                o.prefix,
                lab.nodes.len(),
                lab.pods.len(),
                lab.mtu,
                lab.pod_mtu(),
                lab.state_path().display(),
                lab.dir.display()
            );
            for p in &lab.pods {
                let ports: Vec<String> = p
                    .ports
                    .iter()
                    .map(|pp| format!("{}/{}", pp.port, pp.protocol))
                    .collect();
                println!(
                    "  {} {} on {} (netns {}; serves {})",
                    p.who(),
                    p.ip,
                    lab.nodes[p.node].name,
                    p.ns,
                    if o.cluster.is_some() {
                        ports.join(" ")
                    } else {
                        "nothing yet".into()
                    }
                );
            }
            println!(
                "remove it with: xdpnet-bench lab down --prefix {}",
                o.prefix
            );
            lab.keep();
            Ok(())
        }
        LabCmd::Apply(o) => {
            let cf = lab::ClusterFile::read(&o.file)?;
            let mut lab = Lab::attach(&o.prefix)?;
            lab.apply_cluster(&cf, true)?;
            lab.save_description()?;
            println!(
                "lab {}: applied {} namespaces, {} pods, {} services, {} other objects",
                o.prefix,
                cf.namespaces.len(),
                cf.pods.len(),
                cf.services.len(),
                cf.others.len()
            );
            Ok(())
        }
        LabCmd::Delete(o) => {
            let cf = lab::ClusterFile::read(&o.file)?;
            let mut lab = Lab::attach(&o.prefix)?;
            lab.delete_cluster(&cf)?;
            lab.save_description()?;
            println!(
                "lab {}: deleted {} pods, {} services, {} other objects",
                o.prefix,
                cf.pods.len(),
                cf.services.len(),
                cf.others.len()
            );
            Ok(())
        }
        LabCmd::ServePod(o) => lab::serve_forever(&o.name, &o.tcp, &o.udp),
        LabCmd::Down(o) => {
            let n = lab::teardown(&o.prefix);
            let _ = std::fs::remove_dir_all(lab::lab_dir(&o.prefix));
            println!("lab {}: removed {n} namespaces", o.prefix);
            Ok(())
        }
        LabCmd::Status(o) => {
            let nss = lab::namespaces(&o.prefix);
            if nss.is_empty() {
                println!("no lab with prefix {}", o.prefix);
                return Ok(());
            }
            println!("lab {}: {} namespaces", o.prefix, nss.len());
            let dir = lab::lab_dir(&o.prefix);
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            files.sort();
            for f in files
                .iter()
                .filter(|f| f.to_string_lossy().ends_with(".status.json"))
            {
                let s: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(f).unwrap_or_default())
                        .unwrap_or_default();
                let w = &s["workers"][0];
                println!(
                    "  {}: pid {} generation {} endpoints {} remote nodes {} rx {} tx {} drops {}",
                    s["node"].as_str().unwrap_or("?"),
                    s["pid"],
                    s["generation"],
                    s["local_endpoints"],
                    s["remote_nodes"].as_array().map_or(0, Vec::len),
                    w["rx"],
                    w["tx"],
                    w["pipeline"]["drops"]
                        .as_object()
                        .map_or(0, |d| d.values().filter_map(|v| v.as_u64()).sum::<u64>())
                );
            }
            Ok(())
        }
    }
}

/// The README's demo.
pub fn demo(o: LabOpts) -> Result<()> {
    root()?;
    let o = o.with_default("xndemo");
    // Ctrl-C (or SIGTERM) at any point removes the lab and exits.
    lab::cleanup_on_signal()?;
    let stop = Arc::new(AtomicBool::new(false));
    println!(
        "building the lab: {} nodes x {} pods (namespaces {}-*)",
        o.nodes, o.pods, o.prefix
    );
    let t = Instant::now();
    let mut spec = LabSpec::new(&o.prefix, o.nodes, o.pods);
    spec.mtu = o.mtu;
    let mut lab = Lab::up(&spec)?;
    println!(
        "  up in {:.1?}: one xdpnetd per node, AF_XDP on every port",
        t.elapsed()
    );
    lab.serve_all()?;
    let ext_ns = lab.ext_ns.clone();
    lab.serve(&ext_ns, "outside", 8080)?;
    let r = demo_traffic(&lab, &stop);
    let ok = r.is_ok();
    if let Err(e) = &r {
        println!("FAILED: {e:#}");
        for n in 0..lab.nodes.len() {
            println!("--- {} log ---\n{}", lab.nodes[n].name, lab.log_tail(n, 15));
        }
    }
    println!("tearing down");
    lab.down()?;
    if !ok {
        bail!("demo failed");
    }
    tcp_against_the_kernel_path(&o.prefix, o.mtu, &stop)?;
    let left = lab::namespaces(&o.prefix);
    if !left.is_empty() {
        bail!("namespaces left behind: {left:?}");
    }
    println!("done: nothing left behind");
    Ok(())
}

/// TCP bulk with the tool every CNI benchmark uses (iperf3, 1 stream, 3 s), through xdpnet
/// (veth pods and tap pods) and through the kernel path a Flannel VXLAN + kube-proxy iptables
/// node has, built in this run on a second lab (`compare`'s bed): the same pods, the same
/// cores (client and server on core 0, forwarding on core 1).
fn tcp_against_the_kernel_path(prefix: &str, mtu: u16, stop: &AtomicBool) -> Result<()> {
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    if ncpu < 2 {
        println!(
            "
(TCP against the kernel path skipped: it needs two cores)"
        );
        return Ok(());
    }
    if let Err(e) = compare::check_iperf3() {
        println!(
            "
(TCP against the kernel path skipped: {e:#})"
        );
        return Ok(());
    }
    println!(
        "
TCP bulk, iperf3 (1 stream, 3 s; client and server on core 0, forwarding on core 1) on a second lab,
against the kernel path (Flannel VXLAN + kube-proxy iptables, the pods' offloads as a distro leaves them) built in this run:"
    );
    let opts = compare::Options {
        prefix: format!("{prefix}-k"),
        scale: vec![],
        gen_core: 0,
        dp_core: 1,
        mtu,
        ..compare::Options::default()
    };
    let mut bed = Bed::up(&opts)?;
    let mut runs: Vec<TcpRun> = Vec::new();
    for v in [Variant::Kernel, Variant::Full, Variant::Tap] {
        bed.use_variant(v)?;
        for p in TcpPath::ALL {
            check(stop)?;
            runs.push(bed.iperf(p, 1, 3)?);
        }
    }
    drop(bed);
    let find = |v: Variant, p: TcpPath| runs.iter().find(|r| r.variant == v && r.path == p);
    let cell = |r: Option<&TcpRun>| {
        r.map_or("-".to_string(), |r| {
            format!(
                "{:>6.2} Gbit/s ({:.2} % retr.)",
                r.bits_per_second / 1e9,
                r.retransmit_ratio() * 100.0
            )
        })
    };
    println!(
        "  {:<24} {:<28} {:<28} {:<28} veth / kernel, tap / kernel",
        "path", "kernel", "xdpnet, veth pods", "xdpnet, tap pods"
    );
    for p in TcpPath::ALL {
        let (k, f, t) = (
            find(Variant::Kernel, p),
            find(Variant::Full, p),
            find(Variant::Tap, p),
        );
        let ratio = |x: Option<&TcpRun>| match (x, k) {
            (Some(x), Some(k)) if k.bits_per_second > 0.0 => {
                format!("x{:.2}", x.bits_per_second / k.bits_per_second)
            }
            _ => "-".into(),
        };
        println!(
            "  {:<24} {:<28} {:<28} {:<28} {}, {}",
            p.name(),
            cell(k),
            cell(f),
            cell(t),
            ratio(f),
            ratio(t)
        );
    }
    Ok(())
}

fn check(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn demo_traffic(lab: &Lab, stop: &AtomicBool) -> Result<()> {
    let a = &lab.pods[0];
    let same = lab.pods.iter().skip(1).find(|p| p.node == a.node);
    let other = lab.pods.iter().find(|p| p.node != a.node);
    let mb = 8 << 20;
    println!(
        "\ntraffic (each TCP line: {} MiB sent and echoed back, every byte checked; the rates against the kernel path are measured with iperf3 below)",
        mb >> 20
    );
    if let Some(b) = same {
        check(stop)?;
        lab::ping(&a.ns, b.ip, 3)?;
        let x = lab::tcp_exchange(&a.ns, SocketAddrV4::new(b.ip, POD_PORT), mb)?;
        println!(
            "  ok  pod->pod same node   {} -> {}: ping, TCP echo ({} bytes)",
            a.name, b.name, x.bytes
        );
    }
    if let Some(b) = other {
        check(stop)?;
        lab::ping(&a.ns, b.ip, 3)?;
        let x = lab::tcp_exchange(&a.ns, SocketAddrV4::new(b.ip, POD_PORT), mb)?;
        println!(
            "  ok  pod->pod cross node  {} -> {} (VXLAN): ping, TCP echo ({} bytes)",
            a.name, b.name, x.bytes
        );
    }
    check(stop)?;
    let web = &lab.services[0];
    let vip = SocketAddrV4::new(web.cluster_ip, web.port);
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..40 {
        let x = lab::tcp_exchange(&a.ns, vip, 1000)?;
        *seen.entry(x.server).or_default() += 1;
    }
    println!(
        "  ok  ClusterIP {vip}: 40 connections from {} spread over {seen:?}",
        a.name
    );
    check(stop)?;
    let np = &lab.services[1];
    let node = &lab.nodes[0];
    let to = SocketAddrV4::new(node.ip, np.node_port.unwrap_or(30080));
    let x = lab::tcp_exchange(&lab.ext_ns, to, mb)?;
    println!(
        "  ok  NodePort {to} from a client off the cluster -> {}: TCP echo ({} bytes)",
        x.server, x.bytes
    );
    check(stop)?;
    let udp = &lab.services[2];
    let names = lab::udp_exchange(&a.ns, SocketAddrV4::new(udp.cluster_ip, udp.port), 10)?;
    println!(
        "  ok  UDP service {}:{}: 10 datagrams answered by {:?}",
        udp.cluster_ip,
        udp.port,
        {
            let mut n = names.clone();
            n.sort();
            n.dedup();
            n
        }
    );
    check(stop)?;
    let outside = SocketAddrV4::new(lab.ext_ip, 8080);
    let (_, seen) = lab::tcp_whoami(&a.ns, outside)?;
    println!(
        "  ok  {} -> {outside} (outside the cluster, no route to pods): it saw {} (masqueraded by {}'s kernel)",
        a.name,
        seen.ip(),
        lab.nodes[a.node].name
    );
    check(stop)?;
    if let Some(b) = other {
        let sink = lab::UdpSink::start(&b.ns, 9000)?;
        let secs = 2.0;
        let sent = lab::udp_blast(&a.ns, SocketAddrV4::new(b.ip, 9000), 64, secs)?;
        std::thread::sleep(Duration::from_millis(300));
        let (got, _) = sink.finish();
        println!(
            "  ok  UDP flood {} -> {} across nodes (64-byte payloads from one kernel socket, {secs} s): offered {:.0} kpps, delivered {:.0} kpps ({:.1} % lost where the sender outruns a stage; counters below)",
            a.name,
            b.name,
            sent as f64 / secs / 1e3,
            got as f64 / secs / 1e3,
            100.0 * (sent.saturating_sub(got)) as f64 / sent.max(1) as f64
        );
    }
    check(stop)?;
    println!("\ndataplane counters:");
    std::thread::sleep(Duration::from_millis(1100));
    for n in 0..lab.nodes.len() {
        let s = lab.status(n).context("status")?;
        let w = &s["workers"][0];
        let drops: Vec<String> = w["pipeline"]["drops"]
            .as_object()
            .map(|d| {
                d.iter()
                    .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "  {}: rx {} tx {} encap {} decap {} new flows {} | drops: {}",
            lab.nodes[n].name,
            w["rx"],
            w["tx"],
            w["pipeline"]["encap"],
            w["pipeline"]["decap"],
            w["pipeline"]["new_flows"],
            if drops.is_empty() {
                "none".into()
            } else {
                drops.join(" ")
            }
        );
    }
    Ok(())
}
