//! The incremental path (events applied one batch at a time to a long-lived controller and
//! builder) builds the same table as a from-scratch build of the final state, for thousands of
//! random add/update/delete sequences.

use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use xdpnet_control::controller::Controller;
use xdpnet_control::state::{ClusterState, Dirty, Event, Kind, Object};
use xdpnet_control::translate::LocalConfig;
use xdpnet_dataplane::fib::Fib;
use xdpnet_dataplane::wire::MacAddr;

fn local() -> LocalConfig {
    LocalConfig {
        pod_cidr: None,
        node_name: "node-1".into(),
        underlay_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        host_mac: MacAddr([2, 0, 0, 0, 1, 1]),
        gateway_mac: MacAddr([2, 0, 0, 0, 2, 1]),
        vni: 1,
        vxlan_port: 4789,
        mtu: 1500,
        cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
        uplink_port: 0,
        host_port: 1,
    }
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

fn node(i: u8, cidr_variant: u8) -> Object {
    Object::Node(obj(json!({"metadata": {"name": format!("node-{i}")},
        "spec": {"podCIDR": format!("10.244.{}.0/24", i + 10 * cidr_variant)},
        "status": {"addresses": [{"type": "InternalIP", "address": format!("198.18.0.{}", 10 + i)}]}})))
}

fn service(i: u8, variant: u8) -> Object {
    let mut ports = vec![json!({"name": "http", "port": 80, "protocol": "TCP"})];
    if variant & 1 == 1 {
        ports.push(json!({"name": "dns", "port": 53, "protocol": "UDP"}));
    }
    let ty = if variant & 2 == 2 {
        "NodePort"
    } else {
        "ClusterIP"
    };
    if ty == "NodePort" {
        ports[0]["nodePort"] = json!(30000 + i as u16);
    }
    let mut spec = json!({"type": ty, "clusterIP": format!("10.96.0.{}", 10 + i), "ports": ports});
    if variant & 4 == 4 {
        spec["externalTrafficPolicy"] = json!("Local");
        spec["externalIPs"] = json!([format!("203.0.113.{i}")]);
    }
    if variant & 8 == 8 {
        spec["sessionAffinity"] = json!("ClientIP");
    }
    Object::Service(obj(
        json!({"metadata": {"name": format!("s{i}"), "namespace": "ns"}, "spec": spec}),
    ))
}

fn slice(svc: u8, part: u8, eps: &[u8]) -> Object {
    Object::EndpointSlice(obj(
        json!({"metadata": {"name": format!("s{svc}-{part}"), "namespace": "ns",
            "labels": {"kubernetes.io/service-name": format!("s{svc}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
        "endpoints": eps.iter().map(|e| json!({"addresses": [format!("10.244.{}.{}", 1 + e % 3, 10 + e)],
            "conditions": {"ready": e % 5 != 0, "serving": true, "terminating": e % 5 == 0}})).collect::<Vec<_>>()}),
    ))
}

#[derive(Debug, Clone)]
enum Op {
    Node(u8, u8),
    DelNode(u8),
    Svc(u8, u8),
    DelSvc(u8),
    Slice(u8, u8, Vec<u8>),
    DelSlice(u8, u8),
    Refresh,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (2u8..5, 0u8..2).prop_map(|(i, v)| Op::Node(i, v)),
        (2u8..5).prop_map(Op::DelNode),
        (0u8..6, 0u8..16).prop_map(|(i, v)| Op::Svc(i, v)),
        (0u8..6).prop_map(Op::DelSvc),
        (0u8..6, 0u8..2, proptest::collection::vec(0u8..20, 0..6))
            .prop_map(|(s, p, e)| Op::Slice(s, p, e)),
        (0u8..6, 0u8..2).prop_map(|(s, p)| Op::DelSlice(s, p)),
        Just(Op::Refresh),
    ]
}

fn event(o: &Op) -> Option<Event> {
    Some(match o {
        Op::Node(i, v) => Event::Upsert(node(*i, *v)),
        Op::DelNode(i) => Event::Delete(Kind::Node, format!("node-{i}")),
        Op::Svc(i, v) => Event::Upsert(service(*i, *v)),
        Op::DelSvc(i) => Event::Delete(Kind::Service, format!("ns/s{i}")),
        Op::Slice(s, p, e) => Event::Upsert(slice(*s, *p, e)),
        Op::DelSlice(s, p) => Event::Delete(Kind::EndpointSlice, format!("ns/s{s}-{p}")),
        Op::Refresh => return None,
    })
}

/// What the daemon adds: other nodes with a next hop.
fn sync_nodes(c: &mut Controller) {
    let neigh: BTreeMap<Ipv4Addr, MacAddr> = c
        .remotes()
        .iter()
        .map(|r| {
            (
                r.underlay_ip,
                MacAddr([2, 1, 0, 0, 0, r.underlay_ip.octets()[3]]),
            )
        })
        .collect();
    let _ = c.set_next_hops(&neigh);
}

/// Everything a packet can observe of a table, in a canonical order.
fn dump(f: &Fib, probe: &[(u32, u16, u8)]) -> String {
    let mut out = format!("node {:?}\n", f.node());
    let mut lbs: Vec<String> = f
        .lbs()
        .iter()
        .map(|lb| {
            format!(
                "{} {} {} {:?} {:?} {:?} {:?} {} {} {}",
                lb.name,
                lb.proto,
                lb.port,
                lb.backends,
                lb.all.entries(),
                lb.local,
                lb.local_table.entries(),
                lb.affinity_timeout,
                lb.external_local,
                lb.internal_local
            )
        })
        .collect();
    lbs.sort();
    for l in lbs {
        out += &l;
        out.push('\n');
    }
    for &(ip, port, proto) in probe {
        let hit = f.service(ip, port, proto).map(|h| h.lb.name.clone());
        out += &format!("{ip}:{port}/{proto} -> {hit:?} vip={}\n", f.is_vip(ip));
    }
    let mut rs: Vec<String> = f
        .remote_nodes()
        .iter()
        .map(|r| {
            format!(
                "{} {} {:?} {:?}",
                r.name,
                r.underlay_ip,
                r.pod_cidrs,
                r.outer.bytes()
            )
        })
        .collect();
    rs.sort();
    out += &rs.join("\n");
    for i in 0..=255u32 {
        let ip = u32::from(Ipv4Addr::new(10, 244, 0, 0)) + (i << 8) + 1;
        out += &format!("{i}:{:?} ", f.route(ip).map(|r| &r.name));
    }
    out
}

fn probes() -> Vec<(u32, u16, u8)> {
    let mut v = Vec::new();
    for i in 0..6u32 {
        let cip = u32::from(Ipv4Addr::new(10, 96, 0, 10 + i as u8));
        let eip = u32::from(Ipv4Addr::new(203, 0, 113, i as u8));
        for (port, proto) in [(80u16, 6u8), (53, 17), (81, 6)] {
            v.push((cip, port, proto));
            v.push((eip, port, proto));
        }
        v.push((
            u32::from(Ipv4Addr::new(198, 18, 0, 11)),
            30_000 + i as u16,
            6,
        ));
    }
    v
}

fn base() -> ClusterState {
    let mut st = ClusterState::default();
    st.apply(Event::Upsert(node(1, 0)), &mut Dirty::default());
    st
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    #[test]
    fn incremental_equals_from_scratch(ops in proptest::collection::vec(op(), 1..40)) {
        let mut inc = Controller::new(local(), base()).expect("own node");
        sync_nodes(&mut inc);
        let _ = inc.build_now();
        for o in &ops {
            match event(o) {
                Some(e) => inc.apply(e),
                None => {
                    inc.refresh();
                    sync_nodes(&mut inc);
                    let _ = inc.build_now();
                }
            }
        }
        inc.refresh();
        sync_nodes(&mut inc);
        let a = inc.build_now();

        let mut fresh = Controller::new(local(), inc.state().clone()).expect("own node");
        sync_nodes(&mut fresh);
        let b = fresh.build_now();
        let p = probes();
        prop_assert_eq!(dump(&a, &p), dump(&b, &p));
    }
}
