//! The pipeline end to end in memory: real frames in, frames out checked by etherparse.

mod common;

use common::*;
use proptest::prelude::*;
use std::net::{Ipv4Addr, SocketAddrV4};
use xdpnet_dataplane::counters::DropReason;
use xdpnet_dataplane::pipeline::{SNAT_PORT_MIN, Verdict};
use xdpnet_dataplane::testutil::{
    self, FrameSpec, HOST, UPLINK, node_ip, pod_ip, pod_mac, service_ip,
};
use xdpnet_dataplane::wire::{MacAddr, tcp};

fn from_pod(i: u32, j: u32, spec: FrameSpec) -> Vec<u8> {
    spec.macs(pod_mac(i, j), testutil::node_facts(i).gateway_mac)
        .to_vec()
}

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

fn service_backends(k: u32) -> Vec<SocketAddrV4> {
    (0..SHAPE.backends)
        .map(|b| testutil::backend_of(&SHAPE, k, b))
        .collect()
}

/// The node index a pod IP lives on.
fn node_of(ip: Ipv4Addr) -> u32 {
    (u32::from(ip) - u32::from(Ipv4Addr::new(10, 244, 0, 0))) >> 8
}

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
        prop_assert_eq!(r.tuple(), orig.tuple().reverse_for_test());
        prop_assert_eq!((r.src, r.sport, r.dst, r.dport), (vip, dport, pod_ip(0, j), sport));
    }
}

trait Rev {
    fn reverse_for_test(&self) -> Self;
}
impl Rev for xdpnet_dataplane::conntrack::Tuple {
    fn reverse_for_test(&self) -> Self {
        self.reverse()
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

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
const CLIENT_MAC: MacAddr = MacAddr([2, 0xcc, 0, 0, 0, 1]);

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
