//! Forwarding-table benchmarks on the cluster: 10,000 services x 10 endpoints, 1,000
//! nodes, 100 pods on this node.
//!
//! - `table/full_build`: every service, node and pod into a fresh builder, then one build.
//! - `table/endpoint_change_to_publish`: one service's backend replaced, the next snapshot built
//!   (sharing everything else) and published to the RCU cell workers read.
//! - `table/baseline_clone_vec_10k_arcs`: cloning a vector of 10,000 `Arc`s, the floor of a
//!   publish that swaps one service (the baseline ratio for the change benchmark).

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use xdpnet_bench::workload::{self, Size};
use xdpnet_dataplane::rcu::FibCell;
use xdpnet_dataplane::testutil;

fn table(c: &mut Criterion) {
    let size = Size::FULL;
    let mut g = c.benchmark_group("table");
    g.sample_size(10);
    g.bench_function("full_build", |b| {
        b.iter(|| {
            let mut builder = workload::builder(&size);
            black_box(builder.build())
        })
    });
    let mut builder = workload::builder(&size);
    let cell = FibCell::new(builder.build());
    let shape = size.shape;
    let mut i = 0u32;
    g.sample_size(100);
    g.bench_function("endpoint_change_to_publish", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                i = i.wrapping_add(1);
                let k = i % shape.services;
                let mut spec = testutil::service_spec(&shape, k);
                for p in spec.ports.iter_mut() {
                    // Unique for every i: never equal to what the service has now.
                    p.backends[0] = std::net::SocketAddrV4::new(
                        testutil::pod_ip(i % shape.nodes, 1),
                        1024 + (i % 60_000) as u16,
                    );
                }
                let t = Instant::now();
                builder.upsert_service(spec).unwrap();
                let f = builder.build();
                let published = cell.publish(f);
                total += t.elapsed();
                // Reclaiming the old snapshot is the control thread's work after the grace
                // period, not part of change-to-publish.
                drop(black_box(published));
            }
            total
        })
    });
    let v: Vec<Arc<u64>> = (0..10_000).map(Arc::new).collect();
    g.bench_function("baseline_clone_vec_10k_arcs", |b| {
        b.iter(|| black_box(v.clone()))
    });
    g.finish();
}

criterion_group!(benches, table);
criterion_main!(benches);
