//! The policy compiler against a direct, slow reading of the API semantics: random
//! namespaces, pods (labels, named ports), NetworkPolicies and ClusterNetworkPolicies; for
//! random flows between pods (and from addresses outside), the compiled table's verdict for
//! each local pod and direction equals what the objects say when read rule by rule.

use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use xdpnet_control::policy::Compiler;
use xdpnet_control::policy_ref;
use xdpnet_control::state::ClusterState;

const NSS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

fn pod_ip(ns: usize, p: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1 + ns as u8, 10 + p as u8)
}

/// A random label set over a small vocabulary (so selectors match often).
fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(
        prop_oneof![Just("app"), Just("tier"), Just("env")].prop_map(String::from),
        prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(String::from),
        0..3,
    )
}

fn selector() -> impl Strategy<Value = Value> {
    (
        proptest::collection::btree_map(
            prop_oneof![
                Just("app"),
                Just("tier"),
                Just("env"),
                Just("pod"),
                Just("ns")
            ]
            .prop_map(String::from),
            prop_oneof![Just("a"), Just("b"), Just("c"), Just("x"), Just("y")]
                .prop_map(String::from),
            0..2,
        ),
        proptest::collection::vec(
            (
                prop_oneof![Just("app"), Just("tier"), Just("env")],
                prop_oneof![
                    Just("In"),
                    Just("NotIn"),
                    Just("Exists"),
                    Just("DoesNotExist")
                ],
                proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..3),
            ),
            0..2,
        ),
    )
        .prop_map(|(ml, me)| {
            let exprs: Vec<Value> = me
                .into_iter()
                .map(|(k, op, vals)| {
                    if op == "Exists" || op == "DoesNotExist" {
                        json!({"key": k, "operator": op})
                    } else {
                        json!({"key": k, "operator": op, "values": vals})
                    }
                })
                .collect();
            json!({"matchLabels": ml, "matchExpressions": exprs})
        })
}

fn np_port() -> impl Strategy<Value = Value> {
    prop_oneof![
        (
            prop_oneof![Just("TCP"), Just("UDP"), Just("SCTP")],
            79u16..83
        )
            .prop_map(|(p, n)| json!({"protocol": p, "port": n})),
        (prop_oneof![Just("TCP"), Just("UDP")], 79u16..82, 0u16..3)
            .prop_map(|(p, n, w)| json!({"protocol": p, "port": n, "endPort": n + w})),
        (
            prop_oneof![Just("TCP"), Just("UDP")],
            prop_oneof![Just("serve-80"), Just("serve-81"), Just("web")]
        )
            .prop_map(|(p, n)| json!({"protocol": p, "port": n})),
        prop_oneof![Just("TCP"), Just("UDP")].prop_map(|p| json!({"protocol": p})),
    ]
}

fn np_peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        selector().prop_map(|s| json!({"podSelector": s})),
        selector().prop_map(|s| json!({"namespaceSelector": s})),
        (selector(), selector())
            .prop_map(|(n, p)| json!({"namespaceSelector": n, "podSelector": p})),
        (1u8..4, 0u8..2).prop_map(|(ns, ex)| {
            let mut b = json!({"cidr": format!("10.244.{ns}.0/24")});
            if ex == 1 {
                b["except"] = json!([format!("10.244.{ns}.10/31")]);
            }
            json!({"ipBlock": b})
        }),
        Just(json!({"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.244.0.0/16"]}})),
    ]
}

fn np_rule(peer_key: &'static str) -> impl Strategy<Value = Value> {
    (
        proptest::option::of(proptest::collection::vec(np_peer(), 0..3)),
        proptest::option::of(proptest::collection::vec(np_port(), 0..3)),
    )
        .prop_map(move |(peers, ports)| {
            let mut r = json!({});
            if let Some(p) = peers {
                r[peer_key] = json!(p);
            }
            if let Some(p) = ports {
                r["ports"] = json!(p);
            }
            r
        })
}

fn network_policy(i: usize) -> impl Strategy<Value = Value> {
    (
        0..3usize,
        selector(),
        proptest::option::of(proptest::collection::vec(np_rule("from"), 0..3)),
        proptest::option::of(proptest::collection::vec(np_rule("to"), 0..3)),
        prop_oneof![
            Just(None),
            Just(Some(vec!["Ingress"])),
            Just(Some(vec!["Egress"])),
            Just(Some(vec!["Ingress", "Egress"]))
        ],
    )
        .prop_map(move |(ns, sel, ing, eg, types)| {
            let mut spec = json!({"podSelector": sel});
            if let Some(i) = ing {
                spec["ingress"] = json!(i);
            }
            if let Some(e) = eg {
                spec["egress"] = json!(e);
            }
            if let Some(t) = types {
                spec["policyTypes"] = json!(t);
            }
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": format!("np{i}"), "namespace": NSS[ns]}, "spec": spec})
        })
}

fn cnp_protocol() -> impl Strategy<Value = Value> {
    prop_oneof![
        (prop_oneof![Just("tcp"), Just("udp")], 79i32..83)
            .prop_map(|(p, n)| json!({p: {"destinationPort": {"number": n}}})),
        (prop_oneof![Just("tcp"), Just("udp")], 79i32..82, 0i32..3).prop_map(
            |(p, n, w)| json!({p: {"destinationPort": {"range": {"start": n, "end": n + w}}}})
        ),
        prop_oneof![Just("tcp"), Just("udp")].prop_map(|p| json!({p: {}})),
        prop_oneof![Just("serve-80"), Just("serve-81")]
            .prop_map(|n| json!({"destinationNamedPort": n})),
    ]
}

fn cnp_peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        selector().prop_map(|s| json!({"namespaces": s})),
        (selector(), selector())
            .prop_map(|(n, p)| json!({"pods": {"namespaceSelector": n, "podSelector": p}})),
        (1u8..4).prop_map(|ns| json!({"networks": [format!("10.244.{ns}.0/24")]})),
    ]
}

fn cnp(i: usize) -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just("Admin"), Just("Baseline")],
        0i32..3,
        prop_oneof![
            selector().prop_map(|s| json!({"namespaces": s})),
            (selector(), selector())
                .prop_map(|(n, p)| json!({"pods": {"namespaceSelector": n, "podSelector": p}})),
        ],
        proptest::collection::vec(
            (
                prop_oneof![Just("Accept"), Just("Deny"), Just("Pass")],
                proptest::collection::vec(cnp_peer(), 1..3),
                proptest::collection::vec(cnp_protocol(), 0..2),
            ),
            0..3,
        ),
        proptest::collection::vec(
            (
                prop_oneof![Just("Accept"), Just("Deny"), Just("Pass")],
                proptest::collection::vec(cnp_peer(), 1..3),
                proptest::collection::vec(cnp_protocol(), 0..2),
            ),
            0..3,
        ),
    )
        .prop_map(move |(tier, prio, subject, ing, eg)| {
            let rule = |key: &str, (a, peers, protos): (&str, Vec<Value>, Vec<Value>)| {
                json!({"action": a, key: peers, "protocols": protos})
            };
            json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
                   "metadata": {"name": format!("cnp{i}")},
                   "spec": {"tier": tier, "priority": prio, "subject": subject,
                            "ingress": ing.into_iter().map(|r| rule("from", r)).collect::<Vec<_>>(),
                            "egress": eg.into_iter().map(|r| rule("to", r)).collect::<Vec<_>>()}})
        })
}

/// The cluster: namespaces x, y, z (with random labels), pods a, b, c in each (random labels,
/// named ports that differ between pods), all on node-1 (all local).
fn cluster() -> impl Strategy<Value = Vec<Value>> {
    (
        proptest::collection::vec(labels(), 3),
        proptest::collection::vec(labels(), 9),
        proptest::collection::vec(0u16..3, 9),
        proptest::collection::vec(network_policy(0).boxed(), 0..4),
        proptest::collection::vec(cnp(0).boxed(), 0..3),
    )
        .prop_map(|(nsl, pl, port_shift, nps, cnps)| {
            let mut objs = Vec::new();
            for (i, ns) in NSS.iter().enumerate() {
                objs.push(json!({"apiVersion": "v1", "kind": "Namespace",
                                 "metadata": {"name": ns, "labels": nsl[i]}}));
            }
            for (ni, ns) in NSS.iter().enumerate() {
                for (pi, p) in PODS.iter().enumerate() {
                    let k = ni * 3 + pi;
                    let mut l = pl[k].clone();
                    l.insert("pod".into(), p.to_string());
                    let shift = port_shift[k];
                    objs.push(json!({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": p, "namespace": ns, "labels": l},
                        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": [
                            {"name": "serve-80", "containerPort": 80 + shift, "protocol": "TCP"},
                            {"name": "serve-81", "containerPort": 81, "protocol": "UDP"},
                            {"name": "web", "containerPort": 79 + shift, "protocol": "TCP"}]}]},
                        "status": {"phase": "Running", "podIP": pod_ip(ni, pi).to_string()}}));
                }
            }
            for (i, mut n) in nps.into_iter().enumerate() {
                n["metadata"]["name"] = json!(format!("np{i}"));
                objs.push(n);
            }
            for (i, mut c) in cnps.into_iter().enumerate() {
                c["metadata"]["name"] = json!(format!("cnp{i}"));
                objs.push(c);
            }
            objs
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn compiled_policy_agrees_with_the_api_semantics(
        objs in cluster(),
        flows in proptest::collection::vec(
            (0usize..10, 0usize..9, prop_oneof![Just(6u8), Just(17u8), Just(132u8)], 78u16..84), 40),
    ) {
        let mut st = ClusterState::default();
        for o in &objs {
            st.add_yaml(std::path::Path::new("gen"), &serde_json::to_string(o).unwrap()).unwrap();
        }
        let all: Vec<Ipv4Addr> = (0..3).flat_map(|n| (0..3).map(move |p| pod_ip(n, p))).collect();
        let c = Compiler::default().compile(&st, &all);
        let outside = u32::from(Ipv4Addr::new(192, 0, 2, 7));
        for (a, b, proto, port) in flows {
            let peer = if a == 9 { outside } else { u32::from(all[a]) };
            let me_ip = all[b];
            let id = c.ids.get(&me_ip).copied().unwrap_or(0);
            for ingress in [true, false] {
                let want = policy_ref::allowed_dir(&st, me_ip, ingress, peer.into(), proto, port);
                let got = match c.table.get(id) {
                    None => true,
                    Some(pp) => {
                        let d = if ingress { &pp.ingress } else { &pp.egress };
                        d.judge(peer, proto, port, true).allows()
                    }
                };
                prop_assert_eq!(got, want, "pod {} {} peer {} proto {} port {}: {:#?}",
                    me_ip, if ingress { "ingress" } else { "egress" }, Ipv4Addr::from(peer), proto, port, objs);
            }
        }
    }
}
