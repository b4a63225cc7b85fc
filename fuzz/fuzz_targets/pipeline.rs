//! The whole pipeline on arbitrary frames: the first byte picks the receiving port (uplink,
//! host, a pod, an unused port), the rest is the frame. Invariants checked: no panic, exactly
//! one verdict, every drop counted, a transmitted frame stays inside its buffer.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use xdpnet_dataplane::conntrack::{Conntrack, Timeouts};
use xdpnet_dataplane::counters::DropReason;
use xdpnet_dataplane::fib::Fib;
use xdpnet_dataplane::packet::{HEADROOM, Packet};
use xdpnet_dataplane::pipeline::{Pipeline, Verdict};
use xdpnet_dataplane::testutil::{self, ClusterShape};

struct World {
    fib: Fib,
    ct: Conntrack,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let shape = ClusterShape { nodes: 3, pods_per_node: 4, services: 8, backends: 4 };
        World {
            fib: testutil::cluster_builder(&shape).build(),
            ct: Conntrack::new(4096, Timeouts::default()).expect("small table"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, frame)) = data.split_first() else { return };
    let w = world();
    let port = (sel % 8) as u16; // 0 uplink, 1 host, 2..5 pods, 6..7 unused
    let mut chunk = vec![0u8; HEADROOM + 2048];
    let len = frame.len().min(2048);
    chunk[HEADROOM..HEADROOM + len].copy_from_slice(&frame[..len]);
    let mut pipe = Pipeline::new();
    let mut pkts = [Packet::new(&mut chunk, HEADROOM, len)];
    let mut out = [Verdict::Drop(DropReason::NoRoute)];
    pipe.process(&w.fib, &w.ct, 1, port, &mut pkts, &mut out);
    let c = pipe.counters();
    assert_eq!(c.rx.get(), 1);
    assert_eq!(c.tx.get() + c.total_drops(), 1);
    if let Verdict::Tx(_) = out[0] {
        assert!(pkts[0].off + pkts[0].len <= HEADROOM + 2048);
        assert!(pkts[0].len >= 14);
    }
});
