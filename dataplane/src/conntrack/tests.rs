use super::*;
use crate::wire::proto;
use std::sync::Arc;

fn t(src: u32, sport: u16, dst: u32, dport: u16, proto: u8) -> Tuple {
    Tuple {
        src,
        dst,
        sport,
        dport,
        proto,
    }
}

const VIP: u32 = 0x0a60_000a;
const C: u32 = 0x0af4_0002;
const B1: u32 = 0x0af4_0105;
const B2: u32 = 0x0af4_0206;

#[test]
fn both_directions_are_found() {
    let ct = Conntrack::new(1024, Timeouts::default()).unwrap();
    let orig = t(C, 40000, VIP, 80, proto::TCP);
    let x = t(C, 40000, B1, 8080, proto::TCP);
    assert_eq!(ct.insert_flow(&orig, &x, 5, 0, 0, 0), Ok(x));
    assert_eq!(ct.len(), 2);
    let h = ct.lookup(&orig).expect("orig");
    assert_eq!(h.entry.xlate, x);
    assert_eq!(h.entry.flags & flags::REPLY, 0);
    let r = ct.lookup(&x.reverse()).expect("reply");
    assert_eq!(r.entry.xlate, orig.reverse());
    assert_ne!(r.entry.flags & flags::REPLY, 0);
    assert!(ct.lookup(&t(C, 40001, VIP, 80, proto::TCP)).is_none());
    assert!(ct.lookup(&t(C, 40000, VIP, 80, proto::UDP)).is_none());
}

#[test]
fn first_binding_wins_and_reply_collisions_are_refused() {
    let ct = Conntrack::new(1024, Timeouts::default()).unwrap();
    let orig = t(C, 40000, VIP, 80, proto::TCP);
    let x1 = t(C, 40000, B1, 8080, proto::TCP);
    let x2 = t(C, 40000, B2, 8080, proto::TCP);
    ct.insert_flow(&orig, &x1, 0, 0, 0, 0).unwrap();
    assert_eq!(ct.insert_flow(&orig, &x2, 0, 0, 0, 0), Ok(x1));
    assert_eq!(ct.len(), 2, "the loser's reply entry is removed");
    // Another client flow whose translation would produce the same reply tuple.
    let other = t(C, 40000, VIP + 1, 80, proto::TCP);
    assert_eq!(
        ct.insert_flow(&other, &x1, 0, 0, 0, 0),
        Err(InsertError::ReplyCollision)
    );
    assert_eq!(ct.len(), 2);
}

#[test]
fn touch_updates_flags_and_time() {
    let ct = Conntrack::new(1024, Timeouts::default()).unwrap();
    let orig = t(C, 1, VIP, 80, proto::TCP);
    let x = t(C, 1, B1, 8080, proto::TCP);
    ct.insert_flow(&orig, &x, 10, 0, 0, 0).unwrap();
    let h = ct.lookup(&orig).unwrap();
    ct.touch(&h, 12, flags::FIN);
    let h2 = ct.lookup(&orig).unwrap();
    assert_eq!(h2.entry.last_seen, 12);
    assert_ne!(h2.entry.flags & flags::FIN, 0);
    assert_ne!(h2.entry.flags & flags::SEEN, 0);
    // A stale hit (slot rewritten since) must not modify the new occupant.
    ct.remove(&orig);
    let y = t(C, 2, VIP, 80, proto::TCP);
    ct.insert_flow(&y, &t(C, 2, B1, 8080, proto::TCP), 20, 0, 0, 0)
        .unwrap();
    ct.touch(&h, 30, flags::RST);
    if let Some(hy) = ct.lookup(&y) {
        assert_eq!(hy.entry.flags & flags::RST, 0);
    }
}

#[test]
fn timeouts_follow_state() {
    let to = Timeouts::default();
    let ct = Conntrack::new(4096, to).unwrap();
    let mk = |sport: u16, pr: u8| {
        let o = t(C, sport, VIP, 80, pr);
        let x = t(C, sport, B1, 8080, pr);
        ct.insert_flow(&o, &x, tick(0), 0, 0, 0).unwrap();
        (o, x)
    };
    let (udp1, _) = mk(1, proto::UDP);
    let (udp2, udp2x) = mk(2, proto::UDP);
    let (syn, _) = mk(3, proto::TCP);
    let (est, estx) = mk(4, proto::TCP);
    let (rst, _) = mk(5, proto::TCP);
    // udp2 saw a reply; est saw a reply; rst saw an RST.
    ct.touch(&ct.lookup(&udp2x.reverse()).unwrap(), tick(0), 0);
    ct.touch(&ct.lookup(&estx.reverse()).unwrap(), tick(0), 0);
    ct.touch(&ct.lookup(&rst).unwrap(), tick(0), flags::RST);
    let alive = |k: &Tuple| ct.lookup(k).is_some();
    let sweep = |now: u32| {
        ct.gc(now, usize::MAX);
    };
    sweep(to.tcp_closing + 2 * TICK_SECS);
    assert!(!alive(&rst), "RST flows go after the closing timeout");
    assert!(alive(&udp1) && alive(&syn) && alive(&est));
    sweep(to.udp + 2 * TICK_SECS);
    assert!(!alive(&udp1), "one-way UDP expires after {}s", to.udp);
    assert!(alive(&udp2) && alive(&syn));
    sweep(to.tcp_syn + 2 * TICK_SECS);
    assert!(!alive(&syn));
    sweep(to.udp_stream + 2 * TICK_SECS);
    assert!(!alive(&udp2));
    assert!(alive(&est));
    sweep(to.tcp_established + 2 * TICK_SECS);
    assert!(!alive(&est));
    assert_eq!(ct.len(), 0, "partners go with their flows");
}

#[test]
fn traffic_in_either_direction_keeps_a_flow() {
    let ct = Conntrack::new(1024, Timeouts::default()).unwrap();
    let o = t(C, 9, VIP, 53, proto::UDP);
    let x = t(C, 9, B1, 53, proto::UDP);
    ct.insert_flow(&o, &x, tick(0), 0, 0, 0).unwrap();
    // Only the reply direction keeps getting packets.
    for s in (0..300).step_by(10) {
        ct.touch(&ct.lookup(&x.reverse()).unwrap(), tick(s), 0);
        ct.gc(s, usize::MAX);
    }
    assert!(ct.lookup(&o).is_some());
}

#[test]
fn capacity_is_bounded_and_eviction_keeps_pairs() {
    let ct = Conntrack::new(64, Timeouts::default()).unwrap();
    for i in 0..5000u32 {
        let o = t(C + i, 1000, VIP, 80, proto::TCP);
        let x = t(C + i, 1000, B1, 8080, proto::TCP);
        ct.insert_flow(&o, &x, tick(i), 0, 0, 0).unwrap();
    }
    assert!(ct.len() <= ct.capacity());
    assert!(ct.evictions() > 0);
    let mut orphans = 0;
    ct.for_each(|e| {
        if ct.lookup(&e.xlate.reverse()).is_none() {
            orphans += 1;
        }
    });
    assert_eq!(orphans, 0, "an evicted entry takes its partner along");
    assert_eq!(ct.len() % 2, 0);
}

#[test]
fn concurrent_inserts_and_lookups() {
    let ct = Arc::new(Conntrack::new(200_000, Timeouts::default()).unwrap());
    let threads: Vec<_> = (0..4u32)
        .map(|w| {
            let ct = ct.clone();
            std::thread::spawn(move || {
                for i in 0..20_000u32 {
                    let src = 0x0a00_0000 + w * 100_000 + i;
                    let o = t(src, 5, VIP, 80, proto::TCP);
                    let x = t(src, 5, B1 + (i % 7), 8080, proto::TCP);
                    assert_eq!(ct.insert_flow(&o, &x, 0, 0, 0, 0), Ok(x));
                    assert_eq!(ct.lookup(&o).map(|h| h.entry.xlate), Some(x));
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    assert_eq!(ct.len(), 4 * 20_000 * 2);
}

#[test]
fn racing_first_packets_agree_on_one_binding() {
    let ct = Arc::new(Conntrack::new(100_000, Timeouts::default()).unwrap());
    let threads: Vec<_> = (0..4u32)
        .map(|w| {
            let ct = ct.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                for i in 0..5_000u32 {
                    let o = t(C, i as u16, VIP, 80, proto::UDP);
                    // Each worker would pick a different backend; all must end up with one.
                    let x = t(C, i as u16, B1 + w, 8080, proto::UDP);
                    seen.push(ct.insert_flow(&o, &x, 0, 0, 0, 0).unwrap());
                }
                seen
            })
        })
        .collect();
    let results: Vec<Vec<Tuple>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for i in 0..5_000 {
        let first = results[0][i];
        assert!(
            results.iter().all(|r| r[i] == first),
            "flow {i} has two bindings"
        );
        let o = t(C, i as u16, VIP, 80, proto::UDP);
        assert_eq!(ct.lookup(&o).unwrap().entry.xlate, first);
        assert_eq!(
            ct.lookup(&first.reverse()).unwrap().entry.xlate,
            o.reverse()
        );
    }
    assert_eq!(
        ct.len(),
        10_000,
        "no orphan reply entries of losing workers"
    );
}

#[test]
fn affinity_records_expire() {
    let ct = Conntrack::new(1024, Timeouts::default()).unwrap();
    ct.affinity_set(C, VIP, 80, proto::TCP, (B1, 8080), tick(0), 100);
    assert_eq!(
        ct.affinity_get(C, VIP, 80, proto::TCP, tick(50), 100),
        Some((B1, 8080))
    );
    assert_eq!(ct.affinity_get(C, VIP, 80, proto::UDP, tick(50), 100), None);
    assert_eq!(
        ct.affinity_get(C, VIP, 80, proto::TCP, tick(160), 100),
        None
    );
    ct.affinity_set(C, VIP, 80, proto::TCP, (B2, 8080), tick(160), 100);
    assert_eq!(
        ct.affinity_get(C, VIP, 80, proto::TCP, tick(170), 100),
        Some((B2, 8080))
    );
    ct.gc(400, usize::MAX);
    assert_eq!(ct.len(), 0);
}

#[test]
fn mac_table_interns() {
    let ct = Conntrack::new(16, Timeouts::default()).unwrap();
    let a = crate::wire::MacAddr([2, 0, 0, 0, 0, 1]);
    let b = crate::wire::MacAddr([2, 0, 0, 0, 0, 2]);
    let ia = ct.macs().intern(a).unwrap();
    let ib = ct.macs().intern(b).unwrap();
    assert_ne!(ia, 0);
    assert_ne!(ia, ib);
    assert_eq!(ct.macs().intern(a), Some(ia));
    assert_eq!(ct.macs().get(ia), Some(a));
    assert_eq!(ct.macs().get(0), None);
}

#[test]
fn gc_runs_beside_workers_without_losing_live_flows() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let ct = Arc::new(Conntrack::new(100_000, Timeouts::default()).unwrap());
    // Old flows (seen at t=0) that GC must expire, and live ones workers keep touching.
    for i in 0..5_000u32 {
        let o = t(0x0b00_0000 + i, 7, VIP, 53, proto::UDP);
        ct.insert_flow(
            &o,
            &t(0x0b00_0000 + i, 7, B1, 53, proto::UDP),
            tick(0),
            0,
            0,
            0,
        )
        .unwrap();
    }
    let now = 1_000u32;
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2u32)
        .map(|w| {
            let (ct, stop) = (ct.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) || i < 2_000 {
                    let src = 0x0c00_0000 + w * 1_000_000 + i;
                    let o = t(src, 9, VIP, 80, proto::TCP);
                    let x = t(src, 9, B2, 8080, proto::TCP);
                    ct.insert_flow(&o, &x, tick(now), 0, 0, flags::SYN).unwrap();
                    mine.push(o);
                    // Touch every live flow of ours now and then, as traffic would.
                    for k in mine.iter().rev().take(8) {
                        let h = ct.lookup(k).expect("a live flow vanished");
                        ct.touch(&h, tick(now), 0);
                    }
                    i += 1;
                    if i > 20_000 {
                        break;
                    }
                }
                mine
            })
        })
        .collect();
    let mut removed = 0;
    for _ in 0..50 {
        removed += ct.gc(now, 1 << 12).removed;
    }
    stop.store(true, Ordering::Relaxed);
    let live: Vec<Tuple> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    for o in &live {
        assert!(ct.lookup(o).is_some(), "GC removed a live flow");
    }
    while ct.gc(now, 1 << 14).removed > 0 {}
    let old_left = (0..5_000u32)
        .filter(|i| {
            ct.lookup(&t(0x0b00_0000 + i, 7, VIP, 53, proto::UDP))
                .is_some()
        })
        .count();
    assert_eq!(old_left, 0, "every expired flow goes");
    assert!(removed > 0);
    assert_eq!(ct.len(), live.len() * 2);
}
