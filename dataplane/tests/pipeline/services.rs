//! Services: DNAT and reverse NAT, Maglev spread and affinity, traffic policies, masquerade, ICMP for service flows, replies on another worker.

use super::*;

/// Sends `f` from pod (0, j) and follows it to where it is delivered: returns the delivered
/// frame (decapsulated on the backend's node if it was remote).
fn deliver(nodes: &mut [Node], j: u32, f: &[u8]) -> (u32, Verdict, Vec<u8>) {
    let (v, out) = nodes[0].run(Node::pod_port(j), f);
    if v != Verdict::Tx(UPLINK) {
        return (0, v, out);
    }
    let (outer, _, _) = unwrap_vxlan(&out);
    let to = nodes
        .iter()
        .position(|n| node_ip(n.index) == outer.dst)
        .unwrap();
    let (v2, out2) = nodes[to].run(UPLINK, &out);
    (to as u32, v2, out2)
}

/// Sends a reply frame from backend `b` back to the client pod (0, j): on the backend's node
/// (from its pod port), through VXLAN if needed, to node 0.
fn reply(nodes: &mut [Node], b: SocketAddrV4, f: &[u8]) -> (Verdict, Vec<u8>) {
    let bn = node_of(*b.ip());
    let bj = u32::from(*b.ip()) - u32::from(pod_ip(bn, 0));
    let (v, out) = nodes[bn as usize].run(Node::pod_port(bj), f);
    if bn == 0 {
        return (v, out);
    }
    assert_eq!(v, Verdict::Tx(UPLINK));
    nodes[0].run(UPLINK, &out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// DNAT then reverse NAT restore the exact original tuple, with valid checksums at every
    /// step, whether the backend is local or behind VXLAN.
    #[test]
    fn dnat_then_reverse_nat_restores_the_tuple(k in 0u32..8, j in 0u32..4, sport in 1024u16..65535, udp in any::<bool>(), plen in 0usize..200) {
        let mut nodes: Vec<Node> = (0..SHAPE.nodes).map(|i| Node::new(i, &SHAPE)).collect();
        let vip = service_ip(k);
        let (dport, mut spec) = if udp {
            (53, FrameSpec::udp(pod_ip(0, j), sport, vip, 53))
        } else {
            (80, FrameSpec::tcp(pod_ip(0, j), sport, vip, 80, tcp::SYN))
        };
        spec.payload_len = plen;
        let f = from_pod(0, j, spec);
        let orig = check(&f);
        let (at, v, out) = deliver(&mut nodes, j, &f);
        prop_assert!(matches!(v, Verdict::Tx(_)), "{v:?}");
        let s = check(&out);
        let b = SocketAddrV4::new(s.dst, s.dport);
        prop_assert!(service_backends(k).contains(&b), "{b} is a backend of svc {k}");
        prop_assert_eq!(node_of(s.dst), at);
        if s.dst == pod_ip(0, j) {
            // Hairpin: a pod reaching itself is masqueraded so its reply comes back through us.
            prop_assert_eq!(s.src, testutil::node_facts(0).masquerade_ip);
        } else {
            prop_assert_eq!((s.src, s.sport), (pod_ip(0, j), sport), "no SNAT for pod clients");
        }
        prop_assert_eq!(&s.payload, &orig.payload);
        // The backend answers.
        let rspec = if udp {
            FrameSpec { payload_len: plen, ..FrameSpec::udp(s.dst, s.dport, s.src, s.sport) }
        } else {
            FrameSpec::tcp(s.dst, s.dport, s.src, s.sport, tcp::SYN | tcp::ACK)
        };
        let bn = node_of(s.dst);
        let bj = u32::from(s.dst) - u32::from(pod_ip(bn, 0));
        let rf = from_pod(bn, bj, rspec);
        let (rv, rout) = reply(&mut nodes, b, &rf);
        prop_assert_eq!(rv, Verdict::Tx(Node::pod_port(j)));
        let r = check(&rout);
        prop_assert_eq!(r.tuple(), orig.tuple().reverse());
        prop_assert_eq!((r.src, r.sport, r.dst, r.dport), (vip, dport, pod_ip(0, j), sport));
    }
}

#[test]
fn service_flows_spread_over_all_backends_and_stick() {
    let mut n = Node::new(0, &SHAPE);
    let vip = service_ip(3);
    let mut seen = std::collections::BTreeMap::new();
    for sport in 10_000..12_000u16 {
        let f = from_pod(0, 1, FrameSpec::tcp(pod_ip(0, 1), sport, vip, 80, tcp::SYN));
        let (v, out) = n.run(Node::pod_port(1), &f);
        assert!(matches!(v, Verdict::Tx(_)));
        let s = if v == Verdict::Tx(UPLINK) {
            check(&unwrap_vxlan(&out).2)
        } else {
            check(&out)
        };
        *seen.entry(SocketAddrV4::new(s.dst, s.dport)).or_insert(0) += 1;
        // The next packet of the flow goes to the same backend.
        let f2 = from_pod(0, 1, FrameSpec::tcp(pod_ip(0, 1), sport, vip, 80, tcp::ACK));
        let (_, out2) = n.run(Node::pod_port(1), &f2);
        let s2 = if v == Verdict::Tx(UPLINK) {
            check(&unwrap_vxlan(&out2).2)
        } else {
            check(&out2)
        };
        assert_eq!((s2.dst, s2.dport), (s.dst, s.dport));
    }
    assert_eq!(seen.len(), SHAPE.backends as usize, "{seen:?}");
    for (b, c) in &seen {
        assert!(
            *c > 2000 / SHAPE.backends as usize / 2,
            "{b} got only {c} of 2000"
        );
    }
    assert_eq!(n.pipe.counters().new_flows.get(), 2000);
    assert_eq!(n.ct.len(), 4000);
}

#[test]
fn no_backends_is_a_counted_drop() {
    let mut n = Node::new(0, &SHAPE);
    let mut spec = testutil::service_spec(&SHAPE, 2);
    spec.ports[0].backends.clear();
    n.builder.upsert_service(spec).unwrap();
    n.rebuild();
    let f = from_pod(
        0,
        0,
        FrameSpec::tcp(pod_ip(0, 0), 1234, service_ip(2), 80, tcp::SYN),
    );
    assert_eq!(
        n.run(Node::pod_port(0), &f).0,
        Verdict::Drop(DropReason::NoBackend)
    );
}

#[test]
fn session_affinity_pins_a_client_to_one_backend() {
    let mut n = Node::new(0, &SHAPE);
    let mut spec = testutil::service_spec(&SHAPE, 4);
    spec.affinity_timeout = Some(600);
    n.builder.upsert_service(spec).unwrap();
    n.rebuild();
    let mut backends = std::collections::BTreeSet::new();
    for sport in 20_000..20_200u16 {
        let f = from_pod(0, 2, FrameSpec::udp(pod_ip(0, 2), sport, service_ip(4), 53));
        let (v, out) = n.run(Node::pod_port(2), &f);
        let s = if v == Verdict::Tx(UPLINK) {
            check(&unwrap_vxlan(&out).2)
        } else {
            check(&out)
        };
        backends.insert(s.dst);
    }
    assert_eq!(
        backends.len(),
        1,
        "one backend for all of one client's flows"
    );
    // After the timeout the choice is made afresh (and may differ): the record is gone.
    n.now += 700;
    n.ct.gc(n.now, usize::MAX);
    assert!(
        n.ct.affinity_get(
            ip(pod_ip(0, 2)),
            ip(service_ip(4)),
            53,
            17,
            xdpnet_dataplane::conntrack::tick(n.now),
            600
        )
        .is_none()
    );
}

#[test]
fn removed_backend_gets_no_new_flows_and_its_udp_flows_expire() {
    let mut n = Node::new(0, &SHAPE);
    let vip = service_ip(5);
    let cell = xdpnet_dataplane::rcu::FibCell::new(n.fib.clone());
    // Open UDP and TCP flows until every backend has some.
    let mut udp_flows = vec![];
    let mut tcp_flows = vec![];
    for sport in 30_000..30_200u16 {
        for udp in [true, false] {
            let spec = if udp {
                FrameSpec::udp(pod_ip(0, 0), sport, vip, 53)
            } else {
                FrameSpec::tcp(pod_ip(0, 0), sport, vip, 80, tcp::SYN)
            };
            let (v, out) = n.run(Node::pod_port(0), &from_pod(0, 0, spec));
            let s = if v == Verdict::Tx(UPLINK) {
                check(&unwrap_vxlan(&out).2)
            } else {
                check(&out)
            };
            if udp {
                udp_flows.push((sport, s.dst))
            } else {
                tcp_flows.push((sport, s.dst))
            }
        }
    }
    let gone = udp_flows[0].1;
    assert!(udp_flows.iter().filter(|f| f.1 == gone).count() > 10);
    let mut spec = testutil::service_spec(&SHAPE, 5);
    for p in spec.ports.iter_mut() {
        p.backends.retain(|b| *b.ip() != gone);
    }
    n.builder.upsert_service(spec).unwrap();
    n.rebuild();
    let published = cell.publish(n.fib.clone());
    assert!(published.wait_for_readers(std::time::Duration::from_secs(1)));
    let removed = n.ct.expire_removed_udp_backends(&cell.load());
    let stale_udp = udp_flows.iter().filter(|f| f.1 == gone).count();
    assert_eq!(
        removed,
        stale_udp * 2,
        "both entries of every UDP flow to the removed backend"
    );
    // Existing UDP flows of that backend now pick a live one; TCP flows keep theirs.
    for &(sport, b) in &udp_flows {
        let (v, out) = n.run(
            Node::pod_port(0),
            &from_pod(0, 0, FrameSpec::udp(pod_ip(0, 0), sport, vip, 53)),
        );
        let s = if v == Verdict::Tx(UPLINK) {
            check(&unwrap_vxlan(&out).2)
        } else {
            check(&out)
        };
        assert_ne!(s.dst, gone);
        if b != gone {
            assert_eq!(s.dst, b, "flows to live backends are untouched");
        }
    }
    for &(sport, b) in &tcp_flows {
        let (v, out) = n.run(
            Node::pod_port(0),
            &from_pod(0, 0, FrameSpec::tcp(pod_ip(0, 0), sport, vip, 80, tcp::ACK)),
        );
        let s = if v == Verdict::Tx(UPLINK) {
            check(&unwrap_vxlan(&out).2)
        } else {
            check(&out)
        };
        assert_eq!(
            s.dst, b,
            "established TCP keeps its backend until it closes"
        );
    }
    // New flows never reach the removed backend.
    for sport in 40_000..40_300u16 {
        let (v, out) = n.run(
            Node::pod_port(0),
            &from_pod(0, 0, FrameSpec::tcp(pod_ip(0, 0), sport, vip, 80, tcp::SYN)),
        );
        let s = if v == Verdict::Tx(UPLINK) {
            check(&unwrap_vxlan(&out).2)
        } else {
            check(&out)
        };
        assert_ne!(s.dst, gone);
    }
}

#[test]
fn nodeport_from_outside_is_masqueraded_and_replies_go_back_out() {
    let mut nodes: Vec<Node> = (0..SHAPE.nodes).map(|i| Node::new(i, &SHAPE)).collect();
    let k = 6;
    let np = 30000 + k as u16;
    let f = FrameSpec::tcp(CLIENT, 55555, node_ip(0), np, tcp::SYN)
        .macs(CLIENT_MAC, testutil::node_mac(0))
        .to_vec();
    let (v, out) = nodes[0].run(UPLINK, &f);
    assert!(matches!(v, Verdict::Tx(_)), "{v:?}");
    let (at, s) = if v == Verdict::Tx(UPLINK) {
        let (outer, _, inner) = unwrap_vxlan(&out);
        let at = nodes
            .iter()
            .position(|n| node_ip(n.index) == outer.dst)
            .unwrap();
        let (v2, out2) = nodes[at].run(UPLINK, &out);
        assert!(matches!(v2, Verdict::Tx(p) if p >= testutil::FIRST_POD_PORT));
        assert_eq!(check(&out2).dst, check(&inner).dst);
        (at, check(&out2))
    } else {
        (0, check(&out))
    };
    assert!(service_backends(k).contains(&SocketAddrV4::new(s.dst, s.dport)));
    assert_eq!(
        s.src,
        testutil::node_facts(0).masquerade_ip,
        "external clients are masqueraded"
    );
    assert!(s.sport >= SNAT_PORT_MIN);
    // Backend replies to the masquerade address; node 0 turns it back and sends it out.
    let bj = u32::from(s.dst) - u32::from(pod_ip(at as u32, 0));
    let rf = from_pod(
        at as u32,
        bj,
        FrameSpec::tcp(s.dst, s.dport, s.src, s.sport, tcp::SYN | tcp::ACK),
    );
    let (rv, rout) = if at == 0 {
        nodes[0].run(Node::pod_port(bj), &rf)
    } else {
        let (v, o) = nodes[at].run(Node::pod_port(bj), &rf);
        assert_eq!(v, Verdict::Tx(UPLINK));
        nodes[0].run(UPLINK, &o)
    };
    assert_eq!(rv, Verdict::Tx(UPLINK));
    let r = check(&rout);
    assert_eq!(
        (r.src, r.sport, r.dst, r.dport),
        (node_ip(0), np, CLIENT, 55555)
    );
    assert_eq!(
        r.eth_dst, CLIENT_MAC.0,
        "back to the MAC the flow came from"
    );
    assert_eq!(r.eth_src, testutil::node_mac(0).0);
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address() {
    let mut n = Node::new(0, &SHAPE);
    let mut spec = testutil::service_spec(&SHAPE, 1);
    spec.external_local = true;
    spec.load_balancer_ips = vec![Ipv4Addr::new(198, 18, 100, 1)];
    spec.ports[0].backends = vec![
        SocketAddrV4::new(pod_ip(0, 3), 8080),
        SocketAddrV4::new(pod_ip(1, 0), 8080),
    ];
    n.builder.upsert_service(spec).unwrap();
    n.rebuild();
    for sport in 1000..1050u16 {
        let f = FrameSpec::tcp(CLIENT, sport, Ipv4Addr::new(198, 18, 100, 1), 80, tcp::SYN)
            .macs(CLIENT_MAC, testutil::node_mac(0))
            .to_vec();
        let (v, out) = n.run(UPLINK, &f);
        assert_eq!(v, Verdict::Tx(Node::pod_port(3)), "only the local backend");
        let s = check(&out);
        assert_eq!((s.src, s.sport, s.dst), (CLIENT, sport, pod_ip(0, 3)));
        let (rv, rout) = n.run(
            Node::pod_port(3),
            &from_pod(
                0,
                3,
                FrameSpec::tcp(pod_ip(0, 3), 8080, CLIENT, sport, tcp::SYN | tcp::ACK),
            ),
        );
        assert_eq!(rv, Verdict::Tx(UPLINK));
        let r = check(&rout);
        assert_eq!(
            (r.src, r.sport, r.dst, r.eth_dst),
            (Ipv4Addr::new(198, 18, 100, 1), 80, CLIENT, CLIENT_MAC.0)
        );
    }
}

#[test]
fn pod_reaching_itself_through_a_service_is_masqueraded() {
    let mut n = Node::new(0, &SHAPE);
    let mut spec = testutil::service_spec(&SHAPE, 0);
    spec.ports[0].backends = vec![SocketAddrV4::new(pod_ip(0, 1), 8080)];
    n.builder.upsert_service(spec).unwrap();
    n.rebuild();
    let (v, out) = n.run(
        Node::pod_port(1),
        &from_pod(
            0,
            1,
            FrameSpec::tcp(pod_ip(0, 1), 5000, service_ip(0), 80, tcp::SYN),
        ),
    );
    assert_eq!(v, Verdict::Tx(Node::pod_port(1)));
    let s = check(&out);
    assert_eq!(
        (s.src, s.dst),
        (testutil::node_facts(0).masquerade_ip, pod_ip(0, 1))
    );
}

#[test]
fn icmp_echo_to_a_service_address_is_answered() {
    let mut n = Node::new(0, &SHAPE);
    let f = from_pod(0, 1, FrameSpec::ping(pod_ip(0, 1), service_ip(2), 77));
    let (v, out) = n.run(Node::pod_port(1), &f);
    assert_eq!(v, Verdict::Tx(Node::pod_port(1)));
    let s = check(&out);
    assert_eq!(
        (s.src, s.dst, s.icmp_type),
        (service_ip(2), pod_ip(0, 1), Some(0))
    );
    assert_eq!(s.eth_dst, pod_mac(0, 1).0);
    assert_eq!(n.pipe.counters().icmp_echo_replies.get(), 1);
    // Ping to a pod is just routed.
    let (v, out) = n.run(
        Node::pod_port(1),
        &from_pod(0, 1, FrameSpec::ping(pod_ip(0, 1), pod_ip(0, 2), 1)),
    );
    assert_eq!(v, Verdict::Tx(Node::pod_port(2)));
    assert_eq!(check(&out).icmp_type, Some(8));
}

#[test]
fn icmp_errors_for_natted_flows_are_translated() {
    let mut n = Node::new(0, &SHAPE);
    let mut spec = testutil::service_spec(&SHAPE, 0);
    spec.ports[1].backends = vec![SocketAddrV4::new(pod_ip(0, 2), 5353)];
    n.builder.upsert_service(spec).unwrap();
    n.rebuild();
    let (v, fwd) = n.run(
        Node::pod_port(0),
        &from_pod(0, 0, FrameSpec::udp(pod_ip(0, 0), 4444, service_ip(0), 53)),
    );
    assert_eq!(v, Verdict::Tx(Node::pod_port(2)));
    // The backend answers "port unreachable", quoting the packet it got (IP header + 8 bytes).
    let quoted = &fwd[14..14 + 28];
    let mut err = FrameSpec {
        payload_len: 0,
        ..FrameSpec::ping(pod_ip(0, 2), pod_ip(0, 0), 0)
    }
    .to_vec();
    err.extend_from_slice(quoted);
    // Fix up lengths and checksums for the quoted bytes.
    let total = (err.len() - 14) as u16;
    err[16..18].copy_from_slice(&total.to_be_bytes());
    err[34] = 3; // destination unreachable
    err[35] = 3; // port unreachable
    err[38..42].fill(0);
    let mut ipv = xdpnet_dataplane::wire::Ipv4Packet::new_checked(&mut err[14..]).unwrap();
    ipv.fill_checksum();
    let mut ic = xdpnet_dataplane::wire::IcmpPacket::new_checked(&mut err[34..]).unwrap();
    ic.fill_checksum();
    let err = {
        let mut e = err;
        e[0..6].copy_from_slice(&testutil::node_facts(0).gateway_mac.0);
        e[6..12].copy_from_slice(&pod_mac(0, 2).0);
        e
    };
    let (v, out) = n.run(Node::pod_port(2), &err);
    assert_eq!(v, Verdict::Tx(Node::pod_port(0)));
    let s = check(&out);
    assert_eq!(
        (s.src, s.dst, s.icmp_type),
        (service_ip(0), pod_ip(0, 0), Some(3))
    );
    // The quoted packet is the one the client sent: to the service, with a valid header.
    let q = &s.payload;
    let qip = etherparse::Ipv4HeaderSlice::from_slice(q)
        .unwrap()
        .to_header();
    assert_eq!(qip.header_checksum, qip.calc_header_checksum());
    assert_eq!(
        (Ipv4Addr::from(qip.source), Ipv4Addr::from(qip.destination)),
        (pod_ip(0, 0), service_ip(0))
    );
    assert_eq!(u16::from_be_bytes([q[22], q[23]]), 53);
    assert_eq!(n.pipe.counters().icmp_related.get(), 1);
}

/// Conntrack is shared by all workers: the first packet of a flow on one worker and its reply
/// on another (a different queue, a different thread) still meet.
#[test]
fn replies_can_arrive_on_another_worker() {
    use xdpnet_dataplane::packet::{HEADROOM, Packet};
    use xdpnet_dataplane::pipeline::Pipeline;
    let n = std::sync::Arc::new(Node::new(0, &SHAPE));
    let run = |pipe: &mut Pipeline, n: &Node, port: u16, f: &[u8]| {
        let mut chunk = vec![0u8; HEADROOM + 2048];
        chunk[HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
        let mut pkts = [Packet::new(&mut chunk, HEADROOM, f.len())];
        let mut out = [Verdict::Drop(DropReason::NoRoute)];
        pipe.process(&n.fib, &n.ct, 100, port, &mut pkts, &mut out);
        (out[0], pkts[0].data().to_vec())
    };
    let n2 = n.clone();
    let (v, fwd) = std::thread::spawn(move || {
        let mut worker_a = Pipeline::new();
        let f = from_pod(0, 0, FrameSpec::udp(pod_ip(0, 0), 3333, service_ip(1), 53));
        run(&mut worker_a, &n2, Node::pod_port(0), &f)
    })
    .join()
    .unwrap();
    let s = if v == Verdict::Tx(UPLINK) {
        check(&unwrap_vxlan(&fwd).2)
    } else {
        check(&fwd)
    };
    // The backend's reply, delivered to this node (from its pod port or through VXLAN).
    let bn = node_of(s.dst);
    let reply = FrameSpec::udp(s.dst, s.dport, s.src, s.sport);
    let (port, frame) = if bn == 0 {
        let bj = u32::from(s.dst) - u32::from(pod_ip(0, 0));
        (Node::pod_port(bj), from_pod(0, bj, reply))
    } else {
        (UPLINK, testutil::vxlan_wrap(&reply.to_vec(), bn, 0, 1))
    };
    let n3 = n.clone();
    let (rv, rout) = std::thread::spawn(move || {
        let mut worker_b = Pipeline::new();
        run(&mut worker_b, &n3, port, &frame)
    })
    .join()
    .unwrap();
    assert_eq!(rv, Verdict::Tx(Node::pod_port(0)));
    let r = check(&rout);
    assert_eq!(
        (r.src, r.sport, r.dst, r.dport),
        (service_ip(1), 53, pod_ip(0, 0), 3333)
    );
}
