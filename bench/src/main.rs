//! xdpnet-bench: the load generator, the netns lab and benchmarks.
//!
//! `xdpnet-bench pipeline`: the in-memory pipeline demo. Builds a synthetic cluster (by default
//! the benchmark size: 10,000 services x 10 endpoints, 1,000 nodes, 1,000,000 tracked
//! connections), runs synthetic traffic of each scenario through one worker's pipeline on this
//! core, and prints the rate per scenario.

#![forbid(unsafe_code)]

use anyhow::{Result, bail};
use std::time::Duration;
use xdpnet_bench::workload::{Bench, Scenario, Size};

mod demo;
mod loadgen_cli;

use clap::{Args, Parser, Subcommand};

/// xdpnet's load generator, netns lab and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "xdpnet-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build a lab (2 nodes x 2 pods, a ClusterIP and a NodePort service), send real traffic
    /// through xdpnet, print what worked and the rates, tear it down.
    Demo(demo::LabOpts),
    /// Control-plane benchmark: a big cluster's objects -> table build time, memory, one
    /// EndpointSlice change -> published (p50/p99).
    Control(ControlArgs),
    /// A lab in network namespaces: up (left running), status, down.
    Lab {
        #[command(subcommand)]
        cmd: demo::LabCmd,
    },
    /// Synthetic traffic through the dataplane pipeline in memory (one core): Mpps and
    /// ns/packet per scenario.
    Pipeline(PipelineArgs),
    /// AF_XDP traffic generator and sink (root; in lab namespaces).
    Loadgen(loadgen_cli::LoadgenArgs),
    /// xdpnet against the kernel path (Flannel VXLAN + kube-proxy iptables) on one lab:
    /// kernel, xdpnetd --io-only and xdpnetd, each scenario at saturation and at half the
    /// kernel path's rate (latency), then scale runs; writes compare.json and compare.svg.
    Compare(loadgen_cli::CompareArgs),
}

#[derive(Debug, Args)]
struct PipelineArgs {
    /// A small cluster (100 services, 10 nodes, 10,000 flows) instead of the benchmark size
    /// (10,000 services x 10 endpoints, 1,000 nodes, 1,000,000 flows).
    #[arg(long)]
    small: bool,
    /// Time per scenario, over all rounds (0.01..600).
    #[arg(long, default_value_t = 1.0, value_parser = seconds)]
    seconds: f64,
    /// Interleaved measurement rounds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
    rounds: u16,
    /// Run only this scenario (and the copy baseline).
    #[arg(long, value_name = "NAME")]
    only: Option<String>,
}

fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.01..=600.0).contains(&v) => Ok(v),
        Ok(_) => Err("must be between 0.01 and 600".into()),
        Err(_) => Err(format!("{s:?} is not a number")),
    }
}

#[derive(Debug, Args)]
struct ControlArgs {
    /// Services.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    services: u32,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    endpoints: u32,
    /// Nodes.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(2..=60_000))]
    nodes: u32,
    /// EndpointSlice changes measured.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    changes: u32,
}

/// Errors end the process with one line, never a backtrace (`xdpnet_control::edge`).
fn main() -> std::process::ExitCode {
    xdpnet_control::edge::exit("xdpnet-bench", run(Cli::parse()))
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Pipeline(a) => pipeline(a),
        Cmd::Demo(o) => demo::demo(o),
        Cmd::Control(a) => control(a),
        Cmd::Lab { cmd } => demo::lab(cmd),
        Cmd::Loadgen(a) => loadgen_cli::loadgen(a),
        Cmd::Compare(a) => loadgen_cli::compare(a),
    }
}

fn pipeline(a: PipelineArgs) -> Result<()> {
    let size = if a.small { Size::SMALL } else { Size::FULL };
    let (secs, rounds, only) = (a.seconds, usize::from(a.rounds), a.only);
    if let Some(o) = &only {
        if !Scenario::ALL.iter().any(|s| s.name() == o) {
            bail!(
                "--only {o:?}: one of {}",
                Scenario::ALL
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let s = size.shape;
    println!(
        "xdpnet pipeline demo: one worker, in memory, this core\ncluster: {} services x {} endpoints, {} nodes, {} pods on this node, {} connections",
        s.services, s.backends, s.nodes, s.pods_per_node, size.flows
    );
    let mut b = Bench::new(size)?;
    println!(
        "table built in {:.1} ms; {} connections established in {:.2} s ({} conntrack entries)\n",
        b.build_time.as_secs_f64() * 1e3,
        size.flows,
        b.fill_time.as_secs_f64(),
        b.conntrack_entries()
    );
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|sc| *sc == Scenario::CopyOnly || only.as_deref().is_none_or(|o| o == sc.name()))
        .collect();
    // Calibrate each scenario to about `secs / rounds` per round, then run the rounds
    // interleaved: every round measures the copy baseline and each scenario back to back, so
    // the net figure (scenario minus baseline of the same round) is robust to machine drift.
    let counts: Vec<u64> = scenarios
        .iter()
        .map(|&sc| {
            let (el, _) = b.run(sc, 100_000);
            let per = el.as_secs_f64() / 100_000.0;
            ((secs / rounds as f64 / per.max(1e-9)) as u64).clamp(50_000, 500_000_000)
        })
        .collect();
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); scenarios.len()];
    let mut net: Vec<Vec<f64>> = vec![Vec::new(); scenarios.len()];
    let mut delivered = vec![(0u64, 0u64); scenarios.len()];
    for _ in 0..rounds {
        let mut copy = 0.0;
        for (k, &sc) in scenarios.iter().enumerate() {
            let (el, tx) = b.run(sc, counts[k]);
            let v = el.as_secs_f64() * 1e9 / counts[k] as f64;
            if sc == Scenario::CopyOnly {
                copy = v;
            }
            ns[k].push(v);
            net[k].push(if sc == Scenario::CopyOnly {
                v
            } else {
                v - copy
            });
            delivered[k].0 += tx;
            delivered[k].1 += counts[k];
        }
    }
    println!(
        "{:<28} {:>10} {:>12} {:>12} {:>12} {:>10}",
        "scenario", "Mpps", "ns/packet", "(best)", "net ns/pkt", "delivered"
    );
    for (k, sc) in scenarios.iter().enumerate() {
        let med = median(&mut ns[k]);
        let best = ns[k].iter().copied().fold(f64::INFINITY, f64::min);
        let delivered = if *sc == Scenario::CopyOnly {
            "-".to_string()
        } else {
            format!(
                "{:.1}%",
                delivered[k].0 as f64 * 100.0 / delivered[k].1 as f64
            )
        };
        println!(
            "{:<28} {:>10.2} {:>12.1} {:>12.1} {:>12.1} {:>10}",
            sc.name(),
            1e3 / med,
            med,
            best,
            median(&mut net[k]),
            delivered
        );
    }
    println!(
        "(medians of {rounds} interleaved rounds; net = minus the copy baseline of the same round)"
    );
    let mut changes: Vec<Duration> = (0..200).map(|i| b.endpoint_change(i)).collect();
    changes.sort();
    let (full, _) = b.full_build();
    println!(
        "\ntable: full build {:.1} ms; one endpoint change to published table: p50 {:.1} us, p99 {:.1} us",
        full.as_secs_f64() * 1e3,
        changes[100].as_secs_f64() * 1e6,
        changes[198].as_secs_f64() * 1e6
    );
    let c = b.pipeline().counters();
    let drops = c.nonzero_drops();
    if !drops.is_empty() {
        println!(
            "drops: {}",
            drops
                .iter()
                .map(|(r, n)| format!("{}={n}", r.name()))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!(
        "conntrack: {} entries, {} evictions",
        b.conntrack_entries(),
        b.ct.evictions()
    );
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn control(a: ControlArgs) -> Result<()> {
    use xdpnet_bench::control_bench::{Shape, pct, run};
    let shape = Shape {
        services: a.services as usize,
        endpoints: a.endpoints as usize,
        nodes: a.nodes as usize,
    };
    let changes = a.changes as usize;
    println!(
        "control plane: {} services x {} endpoints, {} nodes, {} changes",
        shape.services, shape.endpoints, shape.nodes, changes
    );
    let r = run(shape, changes);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "  full build (objects -> published table): {:.1} ms (translation {:.1} ms, table {:.1} ms)",
        ms(r.full_build),
        ms(r.translate),
        ms(r.full_build - r.translate)
    );
    println!(
        "  memory: stores {:.1} MiB + controller and table {:.1} MiB = {:.1} MiB",
        r.stores_bytes as f64 / 1048576.0,
        r.table_bytes as f64 / 1048576.0,
        (r.stores_bytes + r.table_bytes) as f64 / 1048576.0
    );
    println!(
        "  one EndpointSlice change -> published: p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        us(pct(&r.changes, 0.5)),
        us(pct(&r.changes, 0.99)),
        us(pct(&r.changes, 1.0))
    );
    println!(
        "  baseline (the same change given to the table builder directly): p50 {:.0} us, p99 {:.0} us; change/baseline at p50 x{:.2}",
        us(pct(&r.baseline, 0.5)),
        us(pct(&r.baseline, 0.99)),
        us(pct(&r.changes, 0.5)) / us(pct(&r.baseline, 0.5)).max(0.001)
    );
    Ok(())
}
