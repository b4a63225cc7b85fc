//! xdpnet-bench: the load generator, the netns lab and benchmarks.
//!
//! `xdpnet-bench pipeline`: the in-memory pipeline demo. Builds a synthetic cluster (by default
//! the benchmark size: 10,000 services x 10 endpoints, 1,000 nodes, 1,000,000 tracked
//! connections), runs synthetic traffic of each scenario through one worker's pipeline on this
//! core, and prints the rate per scenario.

#![forbid(unsafe_code)]

use anyhow::{Context, Result, bail};
use std::time::Duration;
use xdpnet_bench::workload::{Bench, Scenario, Size};

mod demo;
mod loadgen_cli;

const USAGE: &str = "usage: xdpnet-bench <command>

  demo       build a lab (2 nodes x 2 pods, a ClusterIP and a NodePort service), send real
             traffic through xdpnet, print what worked and the rates, tear it down
  control    control-plane benchmark: 10,000 services x 10 endpoints, 1,000 nodes -> table
             build time, memory, one EndpointSlice change -> published (p50/p99)
             [--services N] [--endpoints N] [--nodes N] [--changes N]
  lab up     build a lab and leave it running   [--nodes N] [--pods M] [--prefix P]
  lab status show a running lab's daemons        [--prefix P]
  lab down   remove a lab (processes, namespaces, files)  [--prefix P]

  pipeline   run synthetic traffic through the dataplane pipeline in memory (one core) and
             print Mpps and ns/packet per scenario
    --small      a small cluster (100 services, 10 nodes, 10,000 flows) instead of the
                 benchmark size (10,000 services x 10 endpoints, 1,000 nodes, 1,000,000 flows)
    --seconds S  time per scenario, over all rounds (default 1)
    --rounds N   interleaved measurement rounds (default 5)
    --only NAME  run only this scenario (and the copy baseline)";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("pipeline") => pipeline(&args[1..]),
        Some("demo") => demo::demo(&args[1..]),
        Some("control") => control(&args[1..]),
        Some("lab") => demo::lab(&args[1..]),
        Some("loadgen") => loadgen_cli::loadgen(&args[1..]),
        Some("compare") => loadgen_cli::compare(&args[1..]),
        Some("-h" | "--help") | None => {
            println!(
                "{USAGE}\n\n{}\n\n{}",
                loadgen_cli::USAGE,
                loadgen_cli::COMPARE_USAGE
            );
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

fn pipeline(args: &[String]) -> Result<()> {
    let mut size = Size::FULL;
    let mut secs = 1.0f64;
    let mut only: Option<String> = None;
    let mut rounds = 5usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--small" => size = Size::SMALL,
            "--rounds" => {
                let v = it.next().context("--rounds needs a value")?;
                rounds = v
                    .parse()
                    .with_context(|| format!("--rounds {v:?} is not a number"))?;
                if !(1..=1000).contains(&rounds) {
                    bail!("--rounds must be between 1 and 1000");
                }
            }
            "--only" => only = Some(it.next().context("--only needs a scenario name")?.clone()),
            "--seconds" => {
                let v = it.next().context("--seconds needs a value")?;
                secs = v
                    .parse()
                    .with_context(|| format!("--seconds {v:?} is not a number"))?;
                if !(0.01..=600.0).contains(&secs) {
                    bail!("--seconds must be between 0.01 and 600");
                }
            }
            other => bail!("unknown option {other:?}\n{USAGE}"),
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

fn control(args: &[String]) -> Result<()> {
    use xdpnet_bench::control_bench::{Shape, pct, run};
    let mut shape = Shape {
        services: 10_000,
        endpoints: 10,
        nodes: 1_000,
    };
    let mut changes = 1_000usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v: usize = it
            .next()
            .with_context(|| format!("{a} needs a value"))?
            .parse()
            .with_context(|| format!("{a} needs a number"))?;
        match a.as_str() {
            "--services" => shape.services = v.max(1),
            "--endpoints" => shape.endpoints = v.clamp(1, 1000),
            "--nodes" => shape.nodes = v.clamp(2, 60_000),
            "--changes" => changes = v.max(1),
            other => bail!("unknown option {other:?}"),
        }
    }
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
