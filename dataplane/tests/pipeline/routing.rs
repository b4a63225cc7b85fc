//! Routing: pod to pod on a node and across nodes (VXLAN encap and decap, its checks), the host port, the I/O-only mode.

use super::*;

#[test]
fn pod_to_pod_same_node() {
    let mut n = Node::new(0, &SHAPE);
    let f = from_pod(0, 0, FrameSpec::udp(pod_ip(0, 0), 1111, pod_ip(0, 1), 2222));
    let (v, out) = n.run(Node::pod_port(0), &f);
    assert_eq!(v, Verdict::Tx(Node::pod_port(1)));
    let s = check(&out);
    assert_eq!(s.eth_dst, pod_mac(0, 1).0);
    assert_eq!(s.eth_src, testutil::node_facts(0).gateway_mac.0);
    assert_eq!(s.ttl, 63);
    assert_eq!(
        (s.src, s.dst, s.sport, s.dport),
        (pod_ip(0, 0), pod_ip(0, 1), 1111, 2222)
    );
    assert_eq!(s.payload, check(&f).payload);
    assert_eq!(n.pipe.counters().tx.get(), 1);
}

#[test]
fn pod_to_remote_pod_is_encapsulated() {
    let mut n = Node::new(0, &SHAPE);
    let f = from_pod(
        0,
        0,
        FrameSpec::tcp(pod_ip(0, 0), 40000, pod_ip(2, 3), 80, tcp::SYN),
    );
    let (v, out) = n.run(Node::pod_port(0), &f);
    assert_eq!(v, Verdict::Tx(UPLINK));
    let (outer, vni, inner) = unwrap_vxlan(&out);
    assert_eq!(outer.eth_dst, testutil::node_mac(2).0);
    assert_eq!(outer.eth_src, testutil::node_mac(0).0);
    assert_eq!((outer.src, outer.dst), (node_ip(0), node_ip(2)));
    assert_eq!(outer.dport, 4789);
    assert!(
        outer.sport >= 49152,
        "source port {} from the flow hash",
        outer.sport
    );
    assert!(outer.dont_fragment);
    assert_eq!(outer.ttl, 64);
    assert_eq!(vni, 1);
    let s = check(&inner);
    assert_eq!(
        (s.src, s.dst, s.sport, s.dport, s.ttl),
        (pod_ip(0, 0), pod_ip(2, 3), 40000, 80, 63)
    );
    assert_eq!(s.ip_payload, check(&f).ip_payload);
    // Same flow, same source port; another flow may differ.
    let (_, out2) = n.run(Node::pod_port(0), &f);
    assert_eq!(unwrap_vxlan(&out2).0.sport, outer.sport);
    assert_eq!(n.pipe.counters().encap.get(), 2);
}

#[test]
fn vxlan_port_and_vni_are_configurable() {
    let mut facts = testutil::node_facts(0);
    facts.vni = 4242;
    facts.vxlan_port = 8472;
    let mut n = Node::new(0, &SHAPE);
    n.builder.set_node(facts);
    n.rebuild();
    let f = from_pod(0, 0, FrameSpec::udp(pod_ip(0, 0), 1, pod_ip(1, 1), 2));
    let (v, out) = n.run(Node::pod_port(0), &f);
    assert_eq!(v, Verdict::Tx(UPLINK));
    let (outer, vni, _) = unwrap_vxlan(&out);
    assert_eq!((outer.dport, vni), (8472, 4242));
}

#[test]
fn decap_delivers_to_local_pod() {
    let mut n1 = Node::new(1, &SHAPE);
    let inner = FrameSpec::udp(pod_ip(0, 2), 5000, pod_ip(1, 3), 6000).to_vec();
    let (v, out) = n1.run(UPLINK, &testutil::vxlan_wrap(&inner, 0, 1, 1));
    assert_eq!(v, Verdict::Tx(Node::pod_port(3)));
    let s = check(&out);
    assert_eq!(s.eth_dst, pod_mac(1, 3).0);
    assert_eq!((s.src, s.dst, s.ttl), (pod_ip(0, 2), pod_ip(1, 3), 63));
    assert_eq!(n1.pipe.counters().decap.get(), 1);
}

#[test]
fn bad_vxlan_is_dropped_by_reason() {
    let mut n1 = Node::new(1, &SHAPE);
    let inner = FrameSpec::udp(pod_ip(0, 2), 5000, pod_ip(1, 3), 6000).to_vec();
    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        (
            testutil::vxlan_wrap(&inner, 0, 1, 7),
            DropReason::VxlanWrongVni,
        ),
        (
            testutil::vxlan_wrap(&inner, 9, 1, 1),
            DropReason::VxlanUnknownNode,
        ),
        (
            testutil::vxlan_wrap(
                &FrameSpec::udp(pod_ip(2, 2), 5000, pod_ip(1, 3), 6000).to_vec(),
                0,
                1,
                1,
            ),
            DropReason::VxlanInnerSpoofed,
        ),
        (
            testutil::vxlan_wrap(&inner[..10], 0, 1, 1),
            DropReason::VxlanMalformed,
        ),
        (
            testutil::vxlan_wrap(&inner[..30], 0, 1, 1),
            DropReason::Ipv4Malformed,
        ),
        (
            {
                let mut v = testutil::vxlan_wrap(&inner, 0, 1, 1);
                v[42] = 0; // I flag clear
                v
            },
            DropReason::VxlanMalformed,
        ),
        (
            // To a pod of another node: no transit through us.
            testutil::vxlan_wrap(
                &FrameSpec::udp(pod_ip(0, 2), 5000, pod_ip(2, 3), 6000).to_vec(),
                0,
                1,
                1,
            ),
            DropReason::NoRoute,
        ),
    ];
    for (f, want) in cases {
        let (v, _) = n1.run(UPLINK, &f);
        assert_eq!(v, Verdict::Drop(want));
    }
    for r in [
        DropReason::VxlanWrongVni,
        DropReason::VxlanUnknownNode,
        DropReason::VxlanInnerSpoofed,
        DropReason::Ipv4Malformed,
        DropReason::NoRoute,
    ] {
        assert_eq!(n1.pipe.counters().drops(r), 1, "{r:?}");
    }
    assert_eq!(n1.pipe.counters().drops(DropReason::VxlanMalformed), 2);
}

#[test]
fn uplink_traffic_that_is_not_ours_is_counted() {
    let mut n = Node::new(0, &SHAPE);
    // To the node IP on a port that is no NodePort (the steering program would pass it).
    let f = FrameSpec::tcp(
        Ipv4Addr::new(198, 18, 0, 200),
        5555,
        node_ip(0),
        22,
        tcp::SYN,
    )
    .to_vec();
    assert_eq!(n.run(UPLINK, &f).0, Verdict::Drop(DropReason::NotForUs));
}

#[test]
fn host_reaches_pods_and_services_and_pods_reach_the_host() {
    let mut n = Node::new(0, &SHAPE);
    let gw = testutil::node_facts(0).gateway_ip;
    let host_mac = testutil::node_facts(0).host_mac;
    let gw_mac = testutil::node_facts(0).gateway_mac;
    // Host (kubelet probe) -> pod.
    let f = FrameSpec::tcp(gw, 33000, pod_ip(0, 2), 8080, tcp::SYN)
        .macs(host_mac, gw_mac)
        .to_vec();
    assert_eq!(n.run(HOST, &f).0, Verdict::Tx(Node::pod_port(2)));
    // Pod -> host.
    let (v, out) = n.run(
        Node::pod_port(2),
        &from_pod(
            0,
            2,
            FrameSpec::tcp(pod_ip(0, 2), 8080, gw, 33000, tcp::SYN | tcp::ACK),
        ),
    );
    assert_eq!(v, Verdict::Tx(HOST));
    assert_eq!(check(&out).eth_dst, host_mac.0);
    // Pod -> outside world goes to the host kernel (which masquerades).
    let (v, _) = n.run(
        Node::pod_port(2),
        &from_pod(
            0,
            2,
            FrameSpec::udp(pod_ip(0, 2), 1, Ipv4Addr::new(198, 19, 1, 1), 53),
        ),
    );
    assert_eq!(v, Verdict::Tx(HOST));
    // Host -> ClusterIP from the node address: masqueraded (replies must come back here).
    let f = FrameSpec::tcp(node_ip(0), 34000, service_ip(0), 80, tcp::SYN)
        .macs(host_mac, gw_mac)
        .to_vec();
    let (v, out) = n.run(HOST, &f);
    assert!(matches!(v, Verdict::Tx(_)));
    let s = if v == Verdict::Tx(UPLINK) {
        check(&unwrap_vxlan(&out).2)
    } else {
        check(&out)
    };
    assert_eq!(s.src, testutil::node_facts(0).masquerade_ip);
    // Host -> unknown address: never sent back to the host.
    let f = FrameSpec::udp(gw, 1, Ipv4Addr::new(198, 19, 1, 1), 53)
        .macs(host_mac, gw_mac)
        .to_vec();
    assert_eq!(n.run(HOST, &f).0, Verdict::Drop(DropReason::NoRoute));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Encap on one node then decap on the other is the identity on the inner packet: the IP
    /// payload is byte for byte the same and the IP header differs only by the two hops' TTL
    /// decrements (and the checksum that follows).
    #[test]
    fn encap_then_decap_is_identity(to in 1u32..3, j in 0u32..4, j2 in 0u32..4, sport in any::<u16>(), dport in any::<u16>(),
                                   tcp_proto in any::<bool>(), plen in 0usize..1400, tos in any::<u8>()) {
        let mut nodes: Vec<Node> = (0..SHAPE.nodes).map(|i| Node::new(i, &SHAPE)).collect();
        let spec = if tcp_proto {
            FrameSpec { payload_len: plen, ..FrameSpec::tcp(pod_ip(0, j), sport, pod_ip(to, j2), dport, tcp::ACK | tcp::PSH) }
        } else {
            FrameSpec { payload_len: plen, ..FrameSpec::udp(pod_ip(0, j), sport, pod_ip(to, j2), dport) }
        };
        let mut f = from_pod(0, j, spec);
        f[15] = tos;
        xdpnet_dataplane::wire::Ipv4Packet::new_checked(&mut f[14..]).unwrap().fill_checksum();
        let (v, wire_frame) = nodes[0].run(Node::pod_port(j), &f);
        prop_assert_eq!(v, Verdict::Tx(UPLINK));
        let (outer, vni, inner) = unwrap_vxlan(&wire_frame);
        prop_assert_eq!(vni, 1);
        prop_assert_eq!(outer.dst, node_ip(to));
        prop_assert!(outer.sport >= 49152);
        prop_assert_eq!(inner.len(), f.len());
        let (v2, out) = nodes[to as usize].run(UPLINK, &wire_frame);
        prop_assert_eq!(v2, Verdict::Tx(Node::pod_port(j2)));
        prop_assert_eq!(out.len(), f.len());
        let (a, b) = (check(&f), check(&out));
        prop_assert_eq!(&a.ip_payload, &b.ip_payload);
        prop_assert_eq!(b.ttl, a.ttl - 2);
        // Header bytes other than TTL (8) and checksum (10..12) are unchanged.
        for i in (0..20).filter(|i| ![8, 10, 11].contains(i)) {
            prop_assert_eq!(f[14 + i], out[14 + i], "header byte {}", i);
        }
        prop_assert_eq!(&out[0..6], &pod_mac(to, j2).0);
    }
}

/// I/O-only mode: local pods by address, other nodes' pods to the uplink with only the
/// destination MAC set, everything else dropped and counted; no other byte changes.
#[test]
fn io_only_forwards_by_destination_without_rewriting() {
    let mut n = Node::new(0, &SHAPE);
    let mut run = |frame: &[u8]| {
        let mut chunk = vec![0u8; xdpnet_dataplane::packet::HEADROOM + 2048];
        let off = xdpnet_dataplane::packet::HEADROOM;
        chunk[off..off + frame.len()].copy_from_slice(frame);
        let mut pkts = [xdpnet_dataplane::packet::Packet::new(
            &mut chunk,
            off,
            frame.len(),
        )];
        let mut out = [Verdict::Drop(DropReason::EthMalformed)];
        n.pipe.forward_io_only(&n.fib, &mut pkts, &mut out);
        (out[0], pkts[0].data().to_vec())
    };
    let local = from_pod(0, 0, FrameSpec::udp(pod_ip(0, 0), 1, pod_ip(0, 1), 2));
    let (v, out) = run(&local);
    assert_eq!(v, Verdict::Tx(Node::pod_port(1)));
    assert_eq!(
        out, local,
        "a local frame leaves unchanged (no TTL, no MAC rewrite)"
    );

    let remote = from_pod(0, 0, FrameSpec::udp(pod_ip(0, 0), 1, pod_ip(2, 3), 2));
    let (v, out) = run(&remote);
    assert_eq!(v, Verdict::Tx(UPLINK));
    assert_eq!(out[0..6], testutil::node_mac(2).0, "next hop MAC");
    assert_eq!(
        out[6..],
        remote[6..],
        "nothing else changes: no encapsulation"
    );

    let svc = from_pod(0, 0, FrameSpec::udp(pod_ip(0, 0), 1, service_ip(0), 53));
    assert_eq!(run(&svc).0, Verdict::Drop(DropReason::NoRoute));
    assert_eq!(
        run(&[0u8; 20]).0,
        Verdict::Drop(DropReason::UnsupportedEthertype)
    );
    let c = n.pipe.counters();
    assert_eq!((c.rx.get(), c.tx.get()), (4, 2));
    assert_eq!(c.drops(DropReason::NoRoute), 1);
    assert_eq!(c.drops(DropReason::UnsupportedEthertype), 1);
}
