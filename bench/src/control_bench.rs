//! The control-plane benchmark: a big cluster's objects -> table, and one EndpointSlice change
//! -> table published, through the same controller the daemon runs.

use k8s_openapi::api::core::v1::{
    Namespace, Node, NodeAddress, NodeSpec, NodeStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use xdpnet_control::controller::Controller;
use xdpnet_control::state::{ClusterState, Dirty, Event, Object};
use xdpnet_control::translate::LocalConfig;
use xdpnet_dataplane::fib::{FibBuilder, RemoteNodeSpec};
use xdpnet_dataplane::rcu::FibCell;
use xdpnet_dataplane::wire::MacAddr;

/// Size of the synthetic cluster.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Services.
    pub services: usize,
    /// Endpoints per service.
    pub endpoints: usize,
    /// Nodes.
    pub nodes: usize,
}

fn meta(ns: Option<&str>, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: ns.map(str::to_string),
        ..Default::default()
    }
}

fn node(i: usize) -> Node {
    Node {
        metadata: meta(None, format!("node-{i}")),
        spec: Some(NodeSpec {
            pod_cidr: Some(format!("10.{}.{}.0/24", 64 + i / 256, i % 256)),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: format!("198.18.{}.{}", i / 250, 1 + i % 250),
            }]),
            ..Default::default()
        }),
    }
}

/// The i-th endpoint address of service `s` (spread over the nodes' pod CIDRs).
fn ep_ip(shape: &Shape, s: usize, k: usize, salt: usize) -> String {
    let n = (s * 7 + k * 13 + salt) % shape.nodes;
    format!(
        "10.{}.{}.{}",
        64 + n / 256,
        n % 256,
        2 + (s + k + salt) % 250
    )
}

fn slice(shape: &Shape, s: usize, salt: usize) -> EndpointSlice {
    let mut labels = BTreeMap::new();
    labels.insert("kubernetes.io/service-name".to_string(), format!("svc-{s}"));
    EndpointSlice {
        metadata: ObjectMeta {
            labels: Some(labels),
            ..meta(Some("bench"), format!("svc-{s}-abcde"))
        },
        address_type: "IPv4".into(),
        endpoints: (0..shape.endpoints)
            .map(|k| Endpoint {
                addresses: vec![ep_ip(shape, s, k, if k == 0 { salt } else { 0 })],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some(format!("node-{}", (s + k) % shape.nodes)),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

/// The objects of a cluster of this shape (node 0 is "this" node).
pub fn cluster(shape: &Shape) -> ClusterState {
    let mut st = ClusterState::default();
    let mut d = Dirty::default();
    for i in 0..shape.nodes {
        st.apply(Event::Upsert(Object::Node(node(i))), &mut d);
    }
    st.apply(
        Event::Upsert(Object::Namespace(Namespace {
            metadata: meta(None, "bench".into()),
            ..Default::default()
        })),
        &mut d,
    );
    for s in 0..shape.services {
        let svc = Service {
            metadata: meta(Some("bench"), format!("svc-{s}")),
            spec: Some(ServiceSpec {
                cluster_ip: Some(format!(
                    "10.{}.{}.{}",
                    96 + s / 65536,
                    (s / 256) % 256,
                    s % 256
                )),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        st.apply(Event::Upsert(Object::Service(svc)), &mut d);
        st.apply(
            Event::Upsert(Object::EndpointSlice(slice(shape, s, 0))),
            &mut d,
        );
    }
    st
}

fn local() -> LocalConfig {
    LocalConfig {
        pod_cidr: None,
        node_name: "node-0".into(),
        underlay_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        host_mac: MacAddr([2, 0, 0, 0, 1, 1]),
        gateway_mac: MacAddr([2, 0, 0, 0, 2, 1]),
        vni: 1,
        vxlan_port: 4789,
        mtu: 1500,
        cluster_cidr: "10.0.0.0/8".parse().expect("cidr"),
        uplink_port: 0,
        host_port: 1,
    }
}

/// Resident memory of this process in bytes.
pub fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

/// Results.
#[derive(Debug, Clone)]
pub struct Report {
    /// Memory of the objects (stores), bytes.
    pub stores_bytes: u64,
    /// Memory added by the controller and the built table, bytes.
    pub table_bytes: u64,
    /// From objects to a published table.
    pub full_build: Duration,
    /// Of which: objects -> builder inputs (the controller's translation).
    pub translate: Duration,
    /// One slice change -> published, sorted.
    pub changes: Vec<Duration>,
    /// Baseline: one service's backends changed in the builder directly (no objects), sorted.
    pub baseline: Vec<Duration>,
}

/// Runs the benchmark: builds the cluster, the first table, then `changes` slice changes.
pub fn run(shape: Shape, changes: usize) -> Report {
    let r0 = rss();
    let st = cluster(&shape);
    let r1 = rss();
    let t = Instant::now();
    let mut ctl = Controller::new(local(), st).expect("node-0 exists");
    let translate = t.elapsed();
    // Every node's next hop: one MAC (a flat underlay).
    let neigh: BTreeMap<Ipv4Addr, MacAddr> = ctl
        .remotes()
        .iter()
        .map(|r| (r.underlay_ip, MacAddr([2, 1, 0, 0, 0, 1])))
        .collect();
    let _ = ctl.set_next_hops(&neigh);
    let cell = FibCell::new(ctl.build_now());
    let full_build = t.elapsed();
    let r2 = rss();
    // The baseline's own builder with the same services and nodes (the controller is the one
    // writer of its builder).
    let mut direct = FibBuilder::new(ctl.node().clone());
    for spec in ctl.specs() {
        let _ = direct.upsert_service(spec.clone());
    }
    for r in ctl.remotes() {
        direct.upsert_node(RemoteNodeSpec {
            name: r.name.clone(),
            underlay_ip: r.underlay_ip,
            next_hop_mac: MacAddr([2, 1, 0, 0, 0, 1]),
            pod_cidrs: r.pod_cidrs.clone(),
            addrs: r.addrs.clone(),
        });
    }
    drop(direct.build());
    let mut lat = Vec::with_capacity(changes);
    let mut base = Vec::with_capacity(changes);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..changes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let s = (x % shape.services as u64) as usize;
        let ev = Event::Upsert(Object::EndpointSlice(slice(&shape, s, 1 + i)));
        let t = Instant::now();
        ctl.apply(ev);
        ctl.refresh();
        let fib = ctl.build_now();
        drop(cell.publish(fib));
        lat.push(t.elapsed());
        // Baseline: the same kind of change given to the builder directly (no objects, no
        // translation): the table's own cost of one service's new backends.
        let mut spec = ctl.specs().nth(s).cloned().expect("spec");
        if let Some(p) = spec.ports.first_mut() {
            if let Some(b) = p.backends.first_mut() {
                b.set_port(b.port() ^ 1);
            }
        }
        let t = Instant::now();
        let _ = direct.upsert_service(spec);
        let fib = direct.build();
        drop(cell.publish(fib));
        base.push(t.elapsed());
    }
    lat.sort();
    base.sort();
    Report {
        stores_bytes: r1.saturating_sub(r0),
        table_bytes: r2.saturating_sub(r1),
        full_build,
        translate,
        changes: lat,
        baseline: base,
    }
}

/// The p-th percentile of sorted durations.
pub fn pct(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}
