use super::*;
use crate::overlay::{DEFAULT_VNI, DEFAULT_VXLAN_PORT};
use crate::testutil::{self, ClusterShape};
use crate::wire::{MacAddr, proto};
use proptest::prelude::*;

const SHAPE: ClusterShape = ClusterShape {
    nodes: 4,
    pods_per_node: 5,
    services: 20,
    backends: 3,
};

#[test]
fn lookups() {
    let fib = testutil::cluster_builder(&SHAPE).build();
    let ep = fib
        .endpoint(testutil::pod_ip(0, 2).into())
        .expect("local pod");
    assert_eq!(ep.port, testutil::FIRST_POD_PORT + 2);
    assert_eq!(
        fib.port_kind(ep.port),
        PortKind::Pod {
            ip: testutil::pod_ip(0, 2),
            mac: testutil::pod_mac(0, 2)
        }
    );
    assert_eq!(fib.port_kind(testutil::UPLINK), PortKind::Uplink);
    assert_eq!(fib.port_kind(testutil::HOST), PortKind::Host);
    assert_eq!(fib.port_kind(999), PortKind::Unused);
    assert!(fib.endpoint(testutil::pod_ip(1, 2).into()).is_none());
    let r = fib.route(testutil::pod_ip(3, 1).into()).expect("remote");
    assert_eq!(r.underlay_ip, testutil::node_ip(3));
    assert!(
        fib.route(testutil::pod_ip(0, 1).into()).is_none(),
        "own CIDR is not remote"
    );
    assert!(
        fib.route(u32::from(std::net::Ipv4Addr::new(10, 250, 0, 1)))
            .is_none()
    );
    assert_eq!(
        fib.node_by_underlay(testutil::node_ip(2).into())
            .unwrap()
            .name,
        "node-2"
    );
    let vip: u32 = testutil::service_ip(7).into();
    let s = fib.service(vip, 80, proto::TCP).expect("service");
    assert_eq!(s.lb.name, "default/svc-7:80/tcp");
    assert!(!s.external);
    assert_eq!(s.lb.backends.len(), 3);
    assert!(fib.service(vip, 81, proto::TCP).is_none());
    assert_eq!(
        fib.service(vip, 53, proto::UDP).unwrap().lb.proto,
        proto::UDP
    );
    let np = fib
        .service(testutil::node_ip(0).into(), 30007, proto::TCP)
        .expect("nodeport");
    assert!(np.external);
    assert!(std::ptr::eq(np.lb, s.lb));
    // Another node's address too (a pod's NodePort traffic is balanced where it starts);
    // an address of no node is no NodePort.
    assert!(
        fib.service(testutil::node_ip(1).into(), 30007, proto::TCP)
            .is_some()
    );
    assert!(
        fib.service(
            u32::from(std::net::Ipv4Addr::new(198, 51, 100, 1)),
            30007,
            proto::TCP
        )
        .is_none()
    );
    assert!(fib.is_vip(vip));
    assert!(!fib.is_vip(testutil::node_ip(0).into()));
}

#[test]
fn outer_header_is_valid() {
    let fib = testutil::cluster_builder(&SHAPE).build();
    let r = fib.route(testutil::pod_ip(1, 0).into()).unwrap();
    let h = r.outer.bytes();
    assert_eq!(&h[0..6], &testutil::node_mac(1).0);
    assert_eq!(&h[6..12], &testutil::node_mac(0).0);
    assert_eq!(h[14], 0x45);
    assert_eq!(
        u16::from_be_bytes([h[20], h[21]]) & crate::wire::ipv4::FLAG_DF,
        crate::wire::ipv4::FLAG_DF
    );
    assert_eq!(u16::from_be_bytes([h[36], h[37]]), DEFAULT_VXLAN_PORT);
    assert_eq!(h[42], 0x08);
    assert_eq!(u32::from_be_bytes([0, h[46], h[47], h[48]]), DEFAULT_VNI);
}

#[test]
fn backend_change_shares_everything_else() {
    let mut b = testutil::cluster_builder(&SHAPE);
    let f1 = b.build();
    let mut spec = testutil::service_spec(&SHAPE, 5);
    spec.ports[0].backends.pop();
    b.upsert_service(spec).unwrap();
    let f2 = b.build();
    assert_eq!(f2.generation(), f1.generation() + 1);
    assert!(
        Arc::ptr_eq(&f1.index, &f2.index),
        "frontends unchanged: index shared"
    );
    assert!(Arc::ptr_eq(&f1.endpoints, &f2.endpoints));
    assert!(Arc::ptr_eq(&f1.remotes, &f2.remotes));
    let mut changed = 0;
    for (a, c) in f1.lbs.iter().zip(f2.lbs.iter()) {
        if !Arc::ptr_eq(a, c) {
            changed += 1;
            assert!(a.name.starts_with("default/svc-5:"));
        }
    }
    assert_eq!(changed, 2, "both ports of svc-5 rebuilt, nothing else");
    let vip: u32 = testutil::service_ip(5).into();
    assert_eq!(
        f2.service(vip, 80, proto::TCP).unwrap().lb.backends.len(),
        2
    );
    assert_eq!(
        f1.service(vip, 80, proto::TCP).unwrap().lb.backends.len(),
        3,
        "old snapshot untouched"
    );
}

#[test]
fn conflicting_frontends_are_reported_not_fatal() {
    let mut b = testutil::cluster_builder(&SHAPE);
    let mut spec = testutil::service_spec(&SHAPE, 3);
    spec.name = "zzz/late".into();
    spec.cluster_ips = vec![testutil::service_ip(3)];
    b.upsert_service(spec).unwrap();
    let fib = b.build();
    assert_eq!(b.warnings().len(), 3, "{:?}", b.warnings()); // two ports + a NodePort
    let vip: u32 = testutil::service_ip(3).into();
    assert_eq!(
        fib.service(vip, 80, proto::TCP).unwrap().lb.name,
        "default/svc-3:80/tcp"
    );
}

#[test]
fn endpoint_outside_cidr_is_refused() {
    let mut b = FibBuilder::new(testutil::node_facts(0));
    let e = Endpoint {
        ip: testutil::pod_ip(1, 0),
        mac: MacAddr::ZERO,
        port: 5,
        policy_id: 0,
    };
    assert!(matches!(
        b.upsert_endpoint(e),
        Err(BuildError::EndpointOutsideCidr { .. })
    ));
}

#[test]
fn a_port_belongs_to_one_pod() {
    let mut b = testutil::cluster_builder(&SHAPE);
    let taken = Endpoint {
        ip: testutil::pod_ip(0, 40),
        mac: MacAddr::ZERO,
        port: testutil::FIRST_POD_PORT,
        policy_id: 0,
    };
    assert!(matches!(
        b.upsert_endpoint(taken),
        Err(BuildError::PortInUse { .. })
    ));
    let uplink = Endpoint {
        port: testutil::UPLINK,
        ..taken
    };
    assert!(matches!(
        b.upsert_endpoint(uplink),
        Err(BuildError::PortInUse { .. })
    ));
    let host = Endpoint {
        port: testutil::HOST,
        ..taken
    };
    assert!(matches!(
        b.upsert_endpoint(host),
        Err(BuildError::PortInUse { .. })
    ));
    // The refused changes left the table as it was; a free port works, and moving a pod
    // frees its old port.
    let fib = b.build();
    assert_eq!(
        fib.endpoint(testutil::pod_ip(0, 0).into()).unwrap().port,
        testutil::FIRST_POD_PORT
    );
    let moved = Endpoint {
        port: 77,
        ..*fib.endpoint(testutil::pod_ip(0, 0).into()).unwrap()
    };
    b.upsert_endpoint(moved).unwrap();
    let fib = b.build();
    assert_eq!(fib.port_kind(testutil::FIRST_POD_PORT), PortKind::Unused);
    assert_eq!(
        fib.endpoint(testutil::pod_ip(0, 0).into()).unwrap().port,
        77
    );
    b.upsert_endpoint(taken).unwrap();
}

#[test]
fn local_traffic_policy_picks_local_backends_only() {
    let mut b = testutil::cluster_builder(&SHAPE);
    let mut spec = testutil::service_spec(&SHAPE, 1);
    spec.external_local = true;
    spec.ports[0].backends = vec![
        std::net::SocketAddrV4::new(testutil::pod_ip(0, 1), 80),
        std::net::SocketAddrV4::new(testutil::pod_ip(1, 1), 80),
        std::net::SocketAddrV4::new(testutil::pod_ip(2, 1), 80),
    ];
    b.upsert_service(spec).unwrap();
    let fib = b.build();
    let lb = fib
        .service(testutil::service_ip(1).into(), 80, proto::TCP)
        .unwrap()
        .lb;
    let mut seen = std::collections::BTreeSet::new();
    for h in 0..10_000u64 {
        seen.insert(lb.pick(crate::hash::mix64(h), true).unwrap());
    }
    assert_eq!(seen.len(), 1, "external: local only");
    let mut seen = std::collections::BTreeSet::new();
    for h in 0..10_000u64 {
        seen.insert(lb.pick(crate::hash::mix64(h), false).unwrap());
    }
    assert_eq!(seen.len(), 3, "internal traffic: cluster-wide");
}

/// What a table says, in a comparable form.
fn digest(f: &Fib) -> Vec<String> {
    let mut out: Vec<String> = f.endpoints().map(|e| format!("ep {e:?}")).collect();
    for n in f.remote_nodes() {
        out.push(format!(
            "node {} {} {:?} {:?}",
            n.name,
            n.underlay_ip,
            n.pod_cidrs,
            n.outer.bytes()
        ));
    }
    for (k, v) in f.index.by_addr.iter() {
        let lb = &f.lbs[(v >> 1) as usize];
        out.push(format!(
            "svc {k:x} ext={} {} {:?} {:?}",
            v & 1,
            lb.name,
            lb.backends,
            lb.all
        ));
    }
    for (k, v) in f.index.by_node_port.iter() {
        out.push(format!("np {k:x} {}", f.lbs[*v as usize].name));
    }
    out.push(format!("ports {:?}", f.ports));
    out.sort();
    out
}

#[derive(Debug, Clone)]
enum Op {
    Svc(u32, Vec<u32>),
    DelSvc(u32),
    Ep(u32),
    DelEp(u32),
    Node(u32),
    DelNode(u32),
    Build,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..30, proptest::collection::vec(0u32..40, 0..6)).prop_map(|(k, b)| Op::Svc(k, b)),
        1 => (0u32..30).prop_map(Op::DelSvc),
        2 => (0u32..20).prop_map(Op::Ep),
        1 => (0u32..20).prop_map(Op::DelEp),
        1 => (1u32..8).prop_map(Op::Node),
        1 => (1u32..8).prop_map(Op::DelNode),
        2 => Just(Op::Build),
    ]
}

fn apply(b: &mut FibBuilder, op: &Op) {
    let shape = ClusterShape {
        nodes: 8,
        pods_per_node: 20,
        services: 30,
        backends: 0,
    };
    match op {
        Op::Svc(k, bs) => {
            let mut s = testutil::service_spec(&shape, *k);
            let backends: Vec<_> = bs
                .iter()
                .map(|&i| std::net::SocketAddrV4::new(testutil::pod_ip(i % 8, i), 80))
                .collect();
            s.ports[0].backends = backends.clone();
            s.ports[1].backends = backends;
            b.upsert_service(s).unwrap();
        }
        Op::DelSvc(k) => {
            b.remove_service(&format!("default/svc-{k}"));
        }
        Op::Ep(j) => b
            .upsert_endpoint(Endpoint {
                ip: testutil::pod_ip(0, *j),
                mac: testutil::pod_mac(0, *j),
                port: 2 + *j as u16,
                policy_id: 0,
            })
            .unwrap(),
        Op::DelEp(j) => {
            b.remove_endpoint(testutil::pod_ip(0, *j));
        }
        Op::Node(i) => b.upsert_node(RemoteNodeSpec {
            name: format!("node-{i}"),
            underlay_ip: testutil::node_ip(*i),
            next_hop_mac: testutil::node_mac(*i),
            pod_cidrs: vec![testutil::pod_cidr(*i)],
            addrs: vec![],
        }),
        Op::DelNode(i) => {
            b.remove_node(&format!("node-{i}"));
        }
        Op::Build => {
            b.build();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Incremental builds (any interleaving of changes and builds) give the same table as one
    /// from-scratch build of the final state.
    #[test]
    fn incremental_equals_scratch(ops in proptest::collection::vec(op(), 1..60)) {
        let mut inc = FibBuilder::new(testutil::node_facts(0));
        for o in &ops {
            apply(&mut inc, o);
        }
        let a = inc.build();
        let mut scratch = FibBuilder::new(testutil::node_facts(0));
        for o in ops.iter().filter(|o| !matches!(o, Op::Build)) {
            apply(&mut scratch, o);
        }
        let b = scratch.build();
        prop_assert_eq!(digest(&a), digest(&b));
    }
}

#[test]
fn only_a_lost_udp_backend_calls_for_the_conntrack_walk() {
    let mut b = testutil::cluster_builder(&SHAPE);
    let v1 = b.build();
    // Nothing changed / a backend added to both ports: no UDP flow can be left pointing at a
    // backend that is gone.
    let v2 = b.build();
    assert!(!v2.udp_backends_removed_since(&v1));
    let mut grown = testutil::service_spec(&SHAPE, 3);
    for p in &mut grown.ports {
        p.backends
            .push(std::net::SocketAddrV4::new(testutil::pod_ip(1, 4), 9999));
    }
    b.upsert_service(grown.clone()).unwrap();
    let v3 = b.build();
    assert!(!v3.udp_backends_removed_since(&v2));
    // A backend leaves only the TCP port: still nothing to expire.
    let mut tcp_only = grown.clone();
    tcp_only.ports[0].backends.pop();
    b.upsert_service(tcp_only.clone()).unwrap();
    let v4 = b.build();
    assert!(!v4.udp_backends_removed_since(&v3));
    // It leaves the UDP port: expire.
    let mut udp_too = tcp_only.clone();
    udp_too.ports[1].backends.pop();
    b.upsert_service(udp_too).unwrap();
    let v5 = b.build();
    assert!(v5.udp_backends_removed_since(&v4));
    // A service removed: its UDP flows must go.
    assert!(b.remove_service("default/svc-7"));
    let v6 = b.build();
    assert!(v6.udp_backends_removed_since(&v5));
    assert!(!v6.udp_backends_removed_since(&v6));
}
