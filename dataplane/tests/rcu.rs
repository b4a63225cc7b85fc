//! Table publication under concurrent readers: no torn reads, no leaked versions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use xdpnet_dataplane::fib::{Fib, FibBuilder, Protocol, ServicePortSpec, ServiceSpec};
use xdpnet_dataplane::rcu::FibCell;
use xdpnet_dataplane::testutil;

/// Generation g has services 0..(g % 17), and service k has k + 1 backends: a reader can check
/// that what it sees belongs to exactly one generation.
fn consistent(f: &Fib) -> bool {
    let n = (f.generation() % 17) as usize;
    f.lbs().len() == n
        && f.lbs().iter().all(|lb| {
            let k: usize = lb
                .name
                .trim_start_matches("ns/s")
                .split(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            lb.backends.len() == k + 1 && lb.all.len() >= 100 * (k + 1)
        })
}

fn set_generation_shape(b: &mut FibBuilder, g: u64) {
    let n = (g % 17) as u32;
    for k in 0..17u32 {
        let name = format!("ns/s{k}");
        if k < n {
            b.upsert_service(ServiceSpec {
                name,
                cluster_ips: vec![testutil::service_ip(k)],
                ports: vec![ServicePortSpec {
                    protocol: Protocol::Tcp,
                    port: 80,
                    node_port: None,
                    backends: (0..=k)
                        .map(|i| std::net::SocketAddrV4::new(testutil::pod_ip(1, i), 80))
                        .collect(),
                }],
                ..ServiceSpec::default()
            })
            .unwrap();
        } else {
            b.remove_service(&name);
        }
    }
}

#[test]
fn swaps_under_concurrent_readers() {
    let mut b = FibBuilder::new(testutil::node_facts(0));
    set_generation_shape(&mut b, 1);
    let first = b.build();
    assert!(consistent(&first));
    let cell = Arc::new(FibCell::new(first));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (cell, stop) = (cell.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last = 0;
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let f = cell.load();
                    assert!(consistent(&f), "torn read at generation {}", f.generation());
                    assert!(f.generation() >= last, "went back in time");
                    last = f.generation();
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let mut weak: Vec<Weak<Fib>> = Vec::new();
    for g in 2..=5000u64 {
        set_generation_shape(&mut b, g);
        let f = b.build();
        assert_eq!(f.generation(), g);
        let old = cell.publish(f);
        weak.push(Arc::downgrade(&old.old));
    }
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 0);
    // Every replaced version is freed once readers are gone (the builder keeps only the last).
    let alive = weak.iter().filter(|w| w.strong_count() > 0).count();
    assert_eq!(alive, 0, "{alive} replaced versions leaked");
    assert_eq!(cell.load().generation(), 5000);
}

#[test]
fn grace_period_waits_for_a_reader() {
    let mut b = FibBuilder::new(testutil::node_facts(0));
    let cell = Arc::new(FibCell::new(b.build()));
    let held = cell.load_full();
    let p = cell.publish(b.build());
    assert!(
        !p.wait_for_readers(std::time::Duration::from_millis(20)),
        "a reader still holds it"
    );
    drop(held);
    let p = cell.publish(b.build());
    assert!(p.wait_for_readers(std::time::Duration::from_secs(1)));
}
