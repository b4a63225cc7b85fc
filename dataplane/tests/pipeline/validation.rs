//! Validation: ARP, anti-spoofing, TTL, IP options and fragments, malformed and truncated frames, batches, fuzzing.

use super::*;

#[test]
fn arp_for_the_gateway_and_anything_else_is_answered() {
    let mut n = Node::new(0, &SHAPE);
    let gw = testutil::node_facts(0).gateway_ip;
    let gw_mac = testutil::node_facts(0).gateway_mac;
    let arp = |sender_mac: MacAddr, sender: Ipv4Addr, target: Ipv4Addr| {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ethernet2(sender_mac.0, [0xff; 6])
            .arp(
                etherparse::ArpPacket::new(
                    etherparse::ArpHardwareId::ETHERNET,
                    etherparse::EtherType::IPV4,
                    etherparse::ArpOperation::REQUEST,
                    &sender_mac.0,
                    &sender.octets(),
                    &[0; 6],
                    &target.octets(),
                )
                .unwrap(),
            )
            .write(&mut v)
            .unwrap();
        v
    };
    for target in [gw, pod_ip(0, 3), Ipv4Addr::new(8, 8, 8, 8)] {
        let (v, out) = n.run(Node::pod_port(1), &arp(pod_mac(0, 1), pod_ip(0, 1), target));
        assert_eq!(v, Verdict::Tx(Node::pod_port(1)));
        let p = etherparse::SlicedPacket::from_ethernet(&out).unwrap();
        let Some(etherparse::NetSlice::Arp(a)) = p.net else {
            panic!("arp")
        };
        assert_eq!(a.operation(), etherparse::ArpOperation::REPLY);
        assert_eq!(a.sender_hw_addr(), &gw_mac.0);
        assert_eq!(a.sender_protocol_addr(), &target.octets());
        assert_eq!(a.target_hw_addr(), &pod_mac(0, 1).0);
        assert_eq!(a.target_protocol_addr(), &pod_ip(0, 1).octets());
        assert_eq!(&out[0..6], &pod_mac(0, 1).0);
    }
    // Gratuitous ARP and ARP from a spoofed sender are not answered.
    assert_eq!(
        n.run(
            Node::pod_port(1),
            &arp(pod_mac(0, 1), pod_ip(0, 1), pod_ip(0, 1))
        )
        .0,
        Verdict::Drop(DropReason::ArpIgnored)
    );
    assert_eq!(
        n.run(Node::pod_port(1), &arp(pod_mac(0, 1), pod_ip(0, 2), gw))
            .0,
        Verdict::Drop(DropReason::ArpIgnored)
    );
    assert_eq!(
        n.run(Node::pod_port(1), &arp(pod_mac(0, 2), pod_ip(0, 1), gw))
            .0,
        Verdict::Drop(DropReason::Spoofed)
    );
    // The host asks for a pod: proxy ARP.
    let host_mac = testutil::node_facts(0).host_mac;
    assert_eq!(
        n.run(HOST, &arp(host_mac, gw, pod_ip(0, 2))).0,
        Verdict::Tx(HOST)
    );
    assert_eq!(n.pipe.counters().arp_replies.get(), 4);
}

#[test]
fn spoofed_sources_are_dropped() {
    let mut n = Node::new(0, &SHAPE);
    let bad_ip = from_pod(0, 1, FrameSpec::udp(pod_ip(0, 2), 1, pod_ip(0, 3), 2));
    assert_eq!(
        n.run(Node::pod_port(1), &bad_ip).0,
        Verdict::Drop(DropReason::Spoofed)
    );
    let bad_mac = FrameSpec::udp(pod_ip(0, 1), 1, pod_ip(0, 3), 2)
        .macs(MacAddr([2, 9, 9, 9, 9, 9]), MacAddr::BROADCAST)
        .to_vec();
    assert_eq!(
        n.run(Node::pod_port(1), &bad_mac).0,
        Verdict::Drop(DropReason::Spoofed)
    );
    assert_eq!(n.pipe.counters().drops(DropReason::Spoofed), 2);
    assert_eq!(
        n.run(40, &bad_mac).0,
        Verdict::Drop(DropReason::UnknownPort)
    );
}

#[test]
fn ttl_expiry_is_counted() {
    let mut n = Node::new(0, &SHAPE);
    let mut spec = FrameSpec::udp(pod_ip(0, 1), 1, pod_ip(0, 3), 2);
    spec.ttl = 1;
    assert_eq!(
        n.run(Node::pod_port(1), &from_pod(0, 1, spec)).0,
        Verdict::Drop(DropReason::TtlExceeded)
    );
}

#[test]
fn ip_options_are_skipped_correctly() {
    let mut n = Node::new(0, &SHAPE);
    // A TCP SYN to a service with 4 bytes of IP options (NOPs + EOL): IHL = 6.
    let f = from_pod(
        0,
        0,
        FrameSpec::tcp(pod_ip(0, 0), 7777, service_ip(1), 80, tcp::SYN),
    );
    let mut g = f[..34].to_vec();
    g.extend_from_slice(&[1, 1, 1, 0]);
    g.extend_from_slice(&f[34..]);
    g[14] = 0x46;
    let total = (g.len() - 14) as u16;
    g[16..18].copy_from_slice(&total.to_be_bytes());
    xdpnet_dataplane::wire::Ipv4Packet::new_checked(&mut g[14..])
        .unwrap()
        .fill_checksum();
    let (v, out) = n.run(Node::pod_port(0), &g);
    assert!(matches!(v, Verdict::Tx(_)));
    let s = if v == Verdict::Tx(UPLINK) {
        check(&unwrap_vxlan(&out).2)
    } else {
        check(&out)
    };
    assert_eq!(
        (s.sport, s.dport),
        (7777, 8080),
        "ports read and rewritten after the options"
    );
    assert!(service_backends(1).contains(&SocketAddrV4::new(s.dst, s.dport)));
}

#[test]
fn later_fragments_to_services_are_dropped() {
    let mut n = Node::new(0, &SHAPE);
    let mut f = from_pod(0, 0, FrameSpec::udp(pod_ip(0, 0), 1, service_ip(1), 53));
    f[20..22].copy_from_slice(&100u16.to_be_bytes()); // fragment offset 800
    xdpnet_dataplane::wire::Ipv4Packet::new_checked(&mut f[14..])
        .unwrap()
        .fill_checksum();
    assert_eq!(
        n.run(Node::pod_port(0), &f).0,
        Verdict::Drop(DropReason::FragmentToService)
    );
    let mut f = from_pod(0, 0, FrameSpec::udp(pod_ip(0, 0), 1, pod_ip(0, 1), 53));
    f[20..22].copy_from_slice(&100u16.to_be_bytes());
    xdpnet_dataplane::wire::Ipv4Packet::new_checked(&mut f[14..])
        .unwrap()
        .fill_checksum();
    assert_eq!(
        n.run(Node::pod_port(0), &f).0,
        Verdict::Tx(Node::pod_port(1)),
        "pod to pod fragments are routed"
    );
}

#[test]
fn truncated_frames_are_dropped_at_every_offset() {
    let mut n = Node::new(0, &SHAPE);
    let frames = [
        from_pod(0, 0, FrameSpec::udp(pod_ip(0, 0), 1, pod_ip(0, 1), 2)),
        from_pod(
            0,
            0,
            FrameSpec::tcp(pod_ip(0, 0), 1, service_ip(1), 80, tcp::SYN),
        ),
        from_pod(0, 0, FrameSpec::ping(pod_ip(0, 0), service_ip(1), 3)),
    ];
    for f in &frames {
        for cut in 0..f.len() {
            let before = n.pipe.counters().total_drops();
            let (v, _) = n.run(Node::pod_port(0), &f[..cut]);
            let want = if cut < 14 {
                DropReason::EthMalformed
            } else {
                DropReason::Ipv4Malformed
            };
            assert_eq!(v, Verdict::Drop(want), "cut at {cut}");
            assert_eq!(n.pipe.counters().total_drops(), before + 1);
        }
    }
    // Through VXLAN: the inner frame truncated, the outer consistent.
    let mut n1 = Node::new(1, &SHAPE);
    let inner = FrameSpec::tcp(pod_ip(0, 0), 1, pod_ip(1, 1), 80, tcp::SYN).to_vec();
    for cut in 0..inner.len() {
        let (v, _) = n1.run(UPLINK, &testutil::vxlan_wrap(&inner[..cut], 0, 1, 1));
        let want = if cut < 14 {
            DropReason::VxlanMalformed
        } else {
            DropReason::Ipv4Malformed
        };
        assert_eq!(v, Verdict::Drop(want), "inner cut at {cut}");
    }
    // And the outer frame cut anywhere.
    let outer = testutil::vxlan_wrap(&inner, 0, 1, 1);
    for cut in 0..outer.len() {
        let (v, _) = n1.run(UPLINK, &outer[..cut]);
        assert!(
            matches!(
                v,
                Verdict::Drop(
                    DropReason::EthMalformed | DropReason::NotForUs | DropReason::Ipv4Malformed
                )
            ),
            "outer cut at {cut}: {v:?}"
        );
    }
}

#[test]
fn bad_headers_are_dropped_by_reason() {
    let mut n = Node::new(0, &SHAPE);
    let good = from_pod(0, 0, FrameSpec::udp(pod_ip(0, 0), 1, pod_ip(0, 1), 2));
    let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut g = good.clone();
        f(&mut g);
        g
    };
    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        (mutate(&|g| g[14] = 0x44), DropReason::Ipv4Malformed), // IHL 4
        (mutate(&|g| g[14] = 0x4f), DropReason::Ipv4Malformed), // IHL 15 > frame
        (mutate(&|g| g[14] = 0x65), DropReason::Ipv4Malformed), // version 6
        (
            mutate(&|g| g[16..18].copy_from_slice(&2000u16.to_be_bytes())),
            DropReason::Ipv4Malformed,
        ), // total > frame
        (
            mutate(&|g| g[16..18].copy_from_slice(&10u16.to_be_bytes())),
            DropReason::Ipv4Malformed,
        ), // total < IHL
        (mutate(&|g| g[24] ^= 0xff), DropReason::Ipv4Checksum),
        (
            mutate(&|g| g[12..14].copy_from_slice(&0x86ddu16.to_be_bytes())),
            DropReason::UnsupportedEthertype,
        ),
        (
            mutate(&|g| {
                g[38..40].copy_from_slice(&4u16.to_be_bytes()); // UDP length < 8
            }),
            DropReason::L4Malformed,
        ),
    ];
    for (f, want) in cases {
        assert_eq!(n.run(Node::pod_port(0), &f).0, Verdict::Drop(want));
    }
}

#[test]
fn batches_get_one_verdict_each() {
    use xdpnet_dataplane::packet::{HEADROOM, Packet};
    let n = Node::new(0, &SHAPE);
    let mut pipe = xdpnet_dataplane::pipeline::Pipeline::new();
    let frames: Vec<Vec<u8>> = (0..150u16)
        .map(|i| {
            if i % 3 == 0 {
                vec![0u8; (i % 14) as usize]
            } else {
                from_pod(
                    0,
                    0,
                    FrameSpec::udp(pod_ip(0, 0), 1000 + i, service_ip(i as u32 % 8), 53),
                )
            }
        })
        .collect();
    let mut chunks: Vec<Vec<u8>> = frames.iter().map(|_| vec![0u8; HEADROOM + 2048]).collect();
    let mut pkts: Vec<Packet<'_>> = chunks
        .iter_mut()
        .zip(&frames)
        .map(|(c, f)| {
            c[HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
            Packet::new(c, HEADROOM, f.len())
        })
        .collect();
    let mut out = vec![Verdict::Drop(DropReason::NoRoute); pkts.len()];
    pipe.process(&n.fib, &n.ct, 1, Node::pod_port(0), &mut pkts, &mut out);
    let c = pipe.counters();
    assert_eq!(c.rx.get(), 150);
    assert_eq!(c.tx.get() + c.total_drops(), 150);
    assert_eq!(c.drops(DropReason::EthMalformed), 50);
    assert_eq!(c.tx.get(), 100);
    for (i, v) in out.iter().enumerate() {
        assert_eq!(matches!(v, Verdict::Tx(_)), i % 3 != 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any bytes on any port: no panic, one verdict, counted.
    #[test]
    fn arbitrary_frames_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300), port in 0u16..8, seed in any::<u64>()) {
        let mut n = Node::new(0, &SHAPE);
        // Half the cases start from a valid frame with a few bytes flipped, to get deep.
        let mut f = if seed % 2 == 0 {
            let mut g = testutil::vxlan_wrap(&FrameSpec::udp(pod_ip(1, 0), 9, pod_ip(0, 1), 9).to_vec(), 1, 0, 1);
            for (i, b) in data.iter().take(4).enumerate() {
                let at = (seed as usize >> (i * 8)) % g.len();
                g[at] = *b;
            }
            g
        } else {
            data
        };
        if seed % 3 == 0 { f.truncate((seed as usize >> 40) % (f.len() + 1)); }
        let (_v, _) = n.run(port, &f);
        let c = n.pipe.counters();
        prop_assert_eq!(c.rx.get(), 1);
        prop_assert_eq!(c.tx.get() + c.total_drops(), 1);
    }
}

/// Writes the fuzz seed corpus (real frames of every kind the pipeline handles) when
/// XDPNET_WRITE_SEEDS names a directory; otherwise checks that each seed is handled.
#[test]
fn fuzz_seed_corpus() {
    let gw = testutil::node_facts(0).gateway_mac;
    let frames: Vec<(&str, u8, Vec<u8>)> = vec![
        (
            "pod-udp-local",
            2,
            from_pod(0, 0, FrameSpec::udp(pod_ip(0, 0), 1, pod_ip(0, 1), 2)),
        ),
        (
            "pod-tcp-service",
            2,
            from_pod(
                0,
                0,
                FrameSpec::tcp(pod_ip(0, 0), 1000, service_ip(1), 80, tcp::SYN),
            ),
        ),
        (
            "pod-udp-service",
            3,
            from_pod(0, 1, FrameSpec::udp(pod_ip(0, 1), 1000, service_ip(2), 53)),
        ),
        (
            "pod-ping-vip",
            2,
            from_pod(0, 0, FrameSpec::ping(pod_ip(0, 0), service_ip(3), 9)),
        ),
        (
            "pod-remote",
            2,
            from_pod(0, 0, FrameSpec::udp(pod_ip(0, 0), 1, pod_ip(2, 1), 2)),
        ),
        (
            "uplink-vxlan",
            0,
            testutil::vxlan_wrap(
                &FrameSpec::tcp(pod_ip(1, 0), 5, pod_ip(0, 2), 6, tcp::ACK).to_vec(),
                1,
                0,
                1,
            ),
        ),
        (
            "uplink-nodeport",
            0,
            FrameSpec::tcp(CLIENT, 4000, node_ip(0), 30001, tcp::SYN)
                .macs(CLIENT_MAC, testutil::node_mac(0))
                .to_vec(),
        ),
        (
            "host-to-pod",
            1,
            FrameSpec::tcp(
                testutil::node_facts(0).gateway_ip,
                5,
                pod_ip(0, 3),
                8080,
                tcp::SYN,
            )
            .macs(testutil::node_facts(0).host_mac, gw)
            .to_vec(),
        ),
    ];
    if let Some(dir) = std::env::var_os("XDPNET_WRITE_SEEDS") {
        for (name, port, f) in &frames {
            let mut data = vec![*port];
            data.extend_from_slice(f);
            std::fs::write(
                std::path::Path::new(&dir).join(format!("seed-{name}")),
                data,
            )
            .unwrap();
        }
    }
    let mut n = Node::new(0, &SHAPE);
    for (name, port, f) in &frames {
        let (v, _) = n.run(*port as u16, f);
        assert!(matches!(v, Verdict::Tx(_)), "{name}: {v:?}");
    }
}
