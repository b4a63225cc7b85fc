//! Pipeline benchmarks: ns per packet through one worker's pipeline, in memory, on a table of
//! 10,000 services x 10 endpoints, 1,000 nodes and 1,000,000 tracked connections (2,000,000
//! conntrack entries). Batches of 32 frames from one port, as an AF_XDP RX batch.
//!
//! Each packet is first copied from a pre-built pool into its frame buffer (the NIC's DMA);
//! `copy_only` measures that alone and is the baseline the others are compared with. The
//! established-flow packets walk all 1,000,000 connections in random order, so conntrack
//! lookups go to memory, not to a hot few cache lines.
//!
//! Reported per packet (criterion's throughput in elements).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::time::Duration;
use xdpnet_bench::workload::{Bench, Scenario, Size};

fn pipeline(c: &mut Criterion) {
    let size = if std::env::var_os("XDPNET_BENCH_SMALL").is_some() {
        Size::SMALL
    } else {
        Size::FULL
    };
    let mut bench = Bench::new(size).expect("conntrack memory");
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(4));
    for sc in Scenario::ALL {
        g.bench_function(sc.name(), |b| {
            b.iter_custom(|iters| {
                let (el, tx) = bench.run(sc, iters);
                if sc != Scenario::CopyOnly {
                    assert_eq!(tx, iters, "{} dropped packets", sc.name());
                }
                el
            })
        });
    }
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
