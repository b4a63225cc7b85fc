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
//!   KUBE-NODEPORTS, KUBE-MARK-MASQ, KUBE-POSTROUTING); xdpnetd is stopped. RPS on the nodes'
//!   interfaces sends the kernel's receive work to the dataplane core (on veth it would
//!   otherwise run on the sender's core); the underlay bridge (the switch) and the external
//!   client do theirs on the generator core, for every variant;
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

mod bed;
mod chart;
mod churn;
mod kernel;
mod measure;
mod report;
mod tcp;

pub use bed::Bed;
pub use chart::svg;
pub use churn::ChurnRun;
use kernel::bench_services;
pub use kernel::kube_proxy_rules;
pub use measure::{Drops, Measured, xdpnet_drop_places};
use measure::{mpps, us};
use report::{
    curve_table, json_rate, overload_table, ratios, scale_table, summary_table, tcp_table,
};
pub use tcp::{TcpPath, TcpRun, check_iperf3};

/// How xdpnet and the kernel forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Flannel VXLAN + kube-proxy iptables, built by hand.
    Kernel,
    /// xdpnetd --io-only.
    IoOnly,
    /// xdpnetd.
    Full,
    /// xdpnetd with the pods' `eth0` a tap (`--pod-interface tap`: offloads kept, large
    /// segments through user space).
    Tap,
}

impl Variant {
    /// All, in run order.
    pub const ALL: [Variant; 4] = [
        Variant::Kernel,
        Variant::IoOnly,
        Variant::Full,
        Variant::Tap,
    ];
    /// Name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Kernel => "kernel",
            Variant::IoOnly => "io-only",
            Variant::Full => "full",
            Variant::Tap => "tap",
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
/// The benchmark's TCP NodePort service address.
pub const BENCH_NP_TCP_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 23);
/// The benchmark's TCP NodePort (80 -> pod-2-0:8080).
pub const BENCH_NODE_PORT_TCP: u16 = 30080;
/// Services of the benchmark itself (UDP and TCP ClusterIP, UDP and TCP NodePort).
pub const BENCH_SERVICES: usize = 4;
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
    /// TCP bulk rows (iperf3): the paths, empty for none.
    pub tcp_paths: Vec<TcpPath>,
    /// Parallel streams of each TCP row.
    pub tcp_streams: Vec<u32>,
    /// Seconds per TCP run.
    pub tcp_seconds: u32,
    /// Overload sweep: offered at these multiples of each cell's most-delivered rate (as far
    /// as the generator goes); empty for none.
    pub overload: Vec<f64>,
    /// Latency curve: fixed-rate runs at these fractions of the kernel path's most-delivered
    /// rate of the scenario (of the variant's own when the kernel path is not run).
    pub latency_points: Vec<f64>,
    /// Table churn: endpoint changes a second during a cross-node run of the full variant at
    /// its most delivered rate (0: none). The daemons then watch the lab's API server double
    /// instead of reading the state file, for every run.
    pub churn: u32,
    /// The lab's underlay MTU ([`LabSpec::mtu`]).
    pub mtu: u16,
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
            tcp_paths: TcpPath::ALL.to_vec(),
            tcp_streams: vec![1, 4],
            tcp_seconds: 5,
            overload: vec![2.0, 5.0, 10.0],
            latency_points: vec![0.1, 0.5, 0.9],
            churn: 0,
            mtu: 1500,
        }
    }
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
    /// At the fixed rate (half the kernel path's most delivered: the point of the summary).
    pub latency: Option<Measured>,
    /// The fixed rate offered, packets/s.
    pub latency_rate: f64,
    /// The latency curve: (fraction of the kernel path's most delivered, rate offered, run).
    pub curve: Vec<(f64, f64, Measured)>,
    /// The overload sweep: (multiple of this cell's most delivered, run).
    pub overload: Vec<(f64, Measured)>,
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
    if !opts.tcp_paths.is_empty() {
        check_iperf3()?;
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
    let mut tcp_runs: Vec<TcpRun> = Vec::new();
    for &v in &opts.variants {
        bed.use_variant(v)?;
        // TCP through the kernel's own stacks: the kernel path and xdpnet as a cluster runs
        // it (`--io-only` forwards by address only, a ceiling for the frame I/O, not a path
        // for a pod's TCP).
        let tcp_paths: &[TcpPath] = if v == Variant::IoOnly {
            &[]
        } else {
            &opts.tcp_paths
        };
        for &path in tcp_paths {
            for &streams in &opts.tcp_streams {
                let r = bed.iperf(path, streams, opts.tcp_seconds)?;
                println!(
                    "  {:<8} {:<22} {} stream(s): {:>6.2} Gbit/s, {} retransmits ({:.3} % of {} segments), core {} busy {:>3.0}%, core {} busy {:>3.0}%",
                    v.name(),
                    path.name(),
                    streams,
                    r.bits_per_second / 1e9,
                    r.retransmits,
                    r.retransmit_ratio() * 100.0,
                    r.segments,
                    opts.dp_core,
                    r.cpu_dp * 100.0,
                    opts.gen_core,
                    r.cpu_gen * 100.0
                );
                tcp_runs.push(r);
            }
        }
        for &s in &opts.scenarios {
            let search = bed.saturate(s)?;
            let sat = search.best.clone();
            // Latency at fractions of the kernel path's saturation (the same offered rates
            // for every variant), or of this variant's when the kernel path is not run; the
            // summary's point is half of it.
            let base = cells
                .iter()
                .find(|c| c.variant == Variant::Kernel && c.scenario == s)
                .map_or(sat.rate(), |c| c.saturation.rate());
            let mut points = opts.latency_points.clone();
            if !points.iter().any(|f| (f - 0.5).abs() < 1e-9) {
                points.push(0.5);
            }
            let mut curve = Vec::new();
            for f in points {
                let r = (base * f).max(1_000.0);
                let m = bed.measure(&bed.spec(s, Some(r), opts.latency_seconds)?)?;
                curve.push((f, r, m));
            }
            let (_, rate, lat) = curve
                .iter()
                .find(|(f, _, _)| (f - 0.5).abs() < 1e-9)
                .cloned()
                .context("latency point 0.5")?;
            curve.retain(|(f, _, _)| opts.latency_points.iter().any(|p| (p - f).abs() < 1e-9));
            // Overload: offered at multiples of the most delivered; what still gets through.
            let mut overload = Vec::new();
            for &k in &opts.overload {
                let m = bed.measure(&bed.spec(s, Some(sat.rate() * k), opts.seconds)?)?;
                println!(
                    "  {:<8} {:<20} overload {:>4.1}x: offered {:>7.3} Mpps, delivered {:>7.3} Mpps = {:>5.2}x the most delivered",
                    v.name(),
                    s.name(),
                    k,
                    m.outcome.report.tx_pps() / 1e6,
                    mpps(&m),
                    m.rate() / sat.rate().max(1e-9)
                );
                overload.push((k, m));
            }
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
                curve,
                overload,
            });
        }
    }
    let mut churn: Option<ChurnRun> = None;
    if opts.churn > 0 && opts.variants.contains(&Variant::Full) {
        bed.use_variant(Variant::Full)?;
        let offered = match cells
            .iter()
            .find(|c| c.variant == Variant::Full && c.scenario == Scenario::CrossNode)
        {
            Some(c) => c.saturation.rate(),
            None => bed.saturate(Scenario::CrossNode)?.best.rate(),
        };
        let c = bed.churn(offered, opts.churn)?;
        println!(
            "table churn (full, pod-pod-cross-node at {:.3} Mpps): {} endpoint changes in {:.1} s -> {} tables published by the two daemons ({:.0}/s); delivered {:.3} Mpps against {:.3} / {:.3} without ({:.3}x); every frame accounted for: {} (drops {:?})",
            offered / 1e6,
            c.changes,
            c.seconds,
            c.publishes,
            c.publishes as f64 / c.seconds.max(1e-9),
            mpps(&c.during),
            mpps(&c.before),
            mpps(&c.after),
            c.ratio(),
            c.balanced(),
            c.during.drop_places
        );
        churn = Some(c);
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
    let tcp_table = tcp_table(&tcp_runs);
    if !tcp_runs.is_empty() {
        println!("{tcp_table}");
    }
    let scale_table = scale_table(&scale);
    if !scale.is_empty() {
        println!("{scale_table}");
    }
    let curve_table = curve_table(&cells);
    if cells.iter().any(|c| !c.curve.is_empty()) {
        println!("{curve_table}");
    }
    let overload_table = overload_table(&cells);
    if cells.iter().any(|c| !c.overload.is_empty()) {
        println!("{overload_table}");
    }
    let out = json!({
        "options": {
            "size": opts.size, "flows": opts.flows, "seconds": opts.seconds,
            "latency_seconds": opts.latency_seconds, "generator_core": opts.gen_core,
            "dataplane_core": opts.dp_core, "xdpnet_args": opts.xdpnet_args,
            "probes": opts.probes, "tcp_seconds": opts.tcp_seconds,
            "tcp_streams": opts.tcp_streams, "overload": opts.overload,
            "latency_points": opts.latency_points, "churn": opts.churn,
            "mtu": opts.mtu,
        },
        "tcp": tcp_runs.iter().map(TcpRun::json).collect::<Vec<_>>(),
        "tcp_table": tcp_table,
        "loadgen_ceiling": ceiling.json(),
        "results": cells.iter().map(|c| json!({
            "variant": c.variant.name(), "scenario": c.scenario.name(),
            "saturation": c.saturation.json(),
            "full_speed": {"tx_pps": c.search.blast_tx_pps.round(), "rx_pps": c.search.blast_rx_pps.round()},
            "loss_1pct_rx_pps": c.search.pdr_pps.round(),
            "latency_rate_pps": c.latency_rate.round(),
            "latency": c.latency.as_ref().map(Measured::json),
            "latency_curve": c.curve.iter().map(|(f, r, m)| json!({
                "fraction_of_kernel": f, "offered_pps": r.round(), "run": m.json(),
            })).collect::<Vec<_>>(),
            "overload": c.overload.iter().map(|(k, m)| json!({
                "multiple": k, "offered_pps": m.outcome.report.tx_pps().round(),
                "delivered_pps": m.rate().round(),
                "of_most_delivered": m.rate() / c.saturation.rate().max(1e-9),
                "run": m.json(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "ratios": ratios(&cells),
        "scale": scale.iter().map(|p| json!({
            "variant": p.variant.name(), "services": p.services,
            "saturation": p.saturation.json(), "first_packet": p.first_packet.json(),
        })).collect::<Vec<_>>(),
        "table": table,
        "scale_table": scale_table,
        "latency_curve_table": curve_table,
        "churn": churn.as_ref().map(ChurnRun::json),
        "overload_table": overload_table,
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
