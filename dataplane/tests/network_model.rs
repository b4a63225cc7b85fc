//! The Kubernetes network model beyond pod to pod, in memory: pods and node addresses both
//! ways through the overlay, service backends on node addresses and outside the cluster
//! (from pods, the host and outside clients), NodePorts on other nodes' addresses, and no
//! overlay injection from pods.

mod common;

use common::*;
use std::net::{Ipv4Addr, SocketAddrV4};
use xdpnet_dataplane::counters::DropReason;
use xdpnet_dataplane::fib::{Protocol, RemoteNodeSpec, ServicePortSpec, ServiceSpec};
use xdpnet_dataplane::pipeline::{SNAT_PORT_MIN, Verdict};
use xdpnet_dataplane::testutil::{
    self, FrameSpec, HOST, UPLINK, node_ip, pod_ip, pod_mac, service_ip,
};
use xdpnet_dataplane::wire::tcp;

/// Node 1's second address (an ExternalIP in its Node status).
const N1_EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
/// An address outside the cluster (an API server elsewhere, the internet).
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 5);

fn from_pod(i: u32, j: u32, spec: FrameSpec) -> Vec<u8> {
    spec.macs(pod_mac(i, j), testutil::node_facts(i).gateway_mac)
        .to_vec()
}

fn from_host(i: u32, spec: FrameSpec) -> Vec<u8> {
    let f = testutil::node_facts(i);
    spec.macs(f.host_mac, f.gateway_mac).to_vec()
}

/// Three nodes where node 1 also has [`N1_EXTERNAL`], known to everyone.
fn cluster() -> Vec<Node> {
    let mut nodes: Vec<Node> = (0..SHAPE.nodes).map(|i| Node::new(i, &SHAPE)).collect();
    for n in nodes.iter_mut() {
        if n.index == 1 {
            let mut f = testutil::node_facts(1);
            f.addrs = vec![node_ip(1), N1_EXTERNAL];
            n.builder.set_node(f);
        } else {
            n.builder.upsert_node(RemoteNodeSpec {
                name: "node-1".into(),
                underlay_ip: node_ip(1),
                next_hop_mac: testutil::node_mac(1),
                pod_cidrs: vec![testutil::pod_cidr(1)],
                addrs: vec![node_ip(1), N1_EXTERNAL],
            });
        }
        n.rebuild();
    }
    nodes
}

/// Service 0 of every node with only these TCP backends (port 80 -> backend port).
fn set_backends(nodes: &mut [Node], backends: Vec<SocketAddrV4>) {
    for n in nodes.iter_mut() {
        n.builder
            .upsert_service(ServiceSpec {
                name: "default/kubernetes".into(),
                cluster_ips: vec![service_ip(0)],
                ports: vec![ServicePortSpec {
                    protocol: Protocol::Tcp,
                    port: 80,
                    node_port: Some(30000),
                    backends: backends.clone(),
                }],
                ..ServiceSpec::default()
            })
            .unwrap();
        n.rebuild();
    }
}

#[test]
fn pods_reach_other_nodes_addresses_through_the_overlay_and_their_kernels_answer_back() {
    let mut nodes = cluster();
    for dst in [node_ip(1), N1_EXTERNAL] {
        // Pod 0/0 -> node 1 (kubelet, node exporter): encapsulated to node 1, unchanged inside.
        let f = from_pod(
            0,
            0,
            FrameSpec::tcp(pod_ip(0, 0), 41000, dst, 10250, tcp::SYN),
        );
        let (v, out) = nodes[0].run(Node::pod_port(0), &f);
        assert_eq!(v, Verdict::Tx(UPLINK), "to {dst}");
        let (outer, _, inner) = unwrap_vxlan(&out);
        assert_eq!((outer.src, outer.dst), (node_ip(0), node_ip(1)));
        let s = check(&inner);
        assert_eq!((s.src, s.dst, s.dport), (pod_ip(0, 0), dst, 10250));
        // Node 1 decapsulates it to its kernel.
        let (v, out) = nodes[1].run(UPLINK, &out);
        assert_eq!(v, Verdict::Tx(HOST), "node 1 hands {dst} to its kernel");
        let s = check(&out);
        assert_eq!(s.eth_dst, testutil::node_facts(1).host_mac.0);
        assert_eq!((s.src, s.dst), (pod_ip(0, 0), dst));
        // Node 1's kernel answers from that address into the overlay.
        let r = from_host(
            1,
            FrameSpec::tcp(dst, 10250, pod_ip(0, 0), 41000, tcp::SYN | tcp::ACK),
        );
        let (v, out) = nodes[1].run(HOST, &r);
        assert_eq!(v, Verdict::Tx(UPLINK));
        // Node 0 accepts the node's own address as an inner source from that node.
        let (v, out) = nodes[0].run(UPLINK, &out);
        assert_eq!(v, Verdict::Tx(Node::pod_port(0)), "reply from {dst}");
        assert_eq!(check(&out).src, dst);
    }
    // An inner source that is no address of the sending node stays a spoof: another node's
    // address, or an address of nobody.
    for src in [node_ip(2), Ipv4Addr::new(198, 18, 0, 99)] {
        let inner = FrameSpec::udp(src, 53, pod_ip(0, 0), 5353).to_vec();
        let before = nodes[0]
            .pipe
            .counters()
            .drops(DropReason::VxlanInnerSpoofed);
        let (v, _) = nodes[0].run(UPLINK, &testutil::vxlan_wrap(&inner, 1, 0, 1));
        assert_eq!(v, Verdict::Drop(DropReason::VxlanInnerSpoofed), "{src}");
        assert_eq!(
            nodes[0]
                .pipe
                .counters()
                .drops(DropReason::VxlanInnerSpoofed),
            before + 1
        );
    }
    // This node's own addresses still go to its own kernel.
    let f = from_pod(0, 1, FrameSpec::udp(pod_ip(0, 1), 5000, node_ip(0), 53));
    assert_eq!(nodes[0].run(Node::pod_port(1), &f).0, Verdict::Tx(HOST));
}

#[test]
fn a_backend_on_another_nodes_address_is_reached_from_pods_and_the_host() {
    // The `kubernetes` Service: its endpoint is node 1's address, no nodeName.
    let api = SocketAddrV4::new(node_ip(1), 6443);
    let mut nodes = cluster();
    set_backends(&mut nodes, vec![api]);
    let gw0 = testutil::node_facts(0).gateway_ip;
    for (client, port, sport) in [(pod_ip(0, 2), Node::pod_port(2), 42000), (gw0, HOST, 42001)] {
        let f = FrameSpec::tcp(client, sport, service_ip(0), 80, tcp::SYN);
        let f = if port == HOST {
            from_host(0, f)
        } else {
            from_pod(0, 2, f)
        };
        let (v, out) = nodes[0].run(port, &f);
        assert_eq!(v, Verdict::Tx(UPLINK), "from {client}");
        let (outer, _, _) = unwrap_vxlan(&out);
        assert_eq!(outer.dst, node_ip(1));
        let (v, out) = nodes[1].run(UPLINK, &out);
        assert_eq!(v, Verdict::Tx(HOST));
        let s = check(&out);
        // Clients inside the pod CIDR (pods, the host's gateway address) keep their address.
        assert_eq!(
            (s.src, s.sport, s.dst, s.dport),
            (client, sport, *api.ip(), 6443)
        );
        // Node 1's API server answers; the reply comes back reverse-NATed.
        let r = from_host(
            1,
            FrameSpec::tcp(*api.ip(), 6443, client, sport, tcp::SYN | tcp::ACK),
        );
        let (v, out) = nodes[1].run(HOST, &r);
        assert_eq!(v, Verdict::Tx(UPLINK));
        let (v, out) = nodes[0].run(UPLINK, &out);
        assert_eq!(v, Verdict::Tx(port), "reply to {client}");
        let s = check(&out);
        assert_eq!(
            (s.src, s.sport, s.dst, s.dport),
            (service_ip(0), 80, client, sport)
        );
    }
}

#[test]
fn a_backend_on_this_nodes_address_or_outside_the_cluster_goes_to_the_kernel() {
    let f0 = testutil::node_facts(0);
    for backend in [
        SocketAddrV4::new(node_ip(0), 6443),
        SocketAddrV4::new(OUTSIDE, 443),
    ] {
        let mut nodes = cluster();
        set_backends(&mut nodes, vec![backend]);
        // From a pod: to the kernel with the pod's address (its replies route back to us).
        let f = from_pod(
            0,
            0,
            FrameSpec::tcp(pod_ip(0, 0), 43000, service_ip(0), 80, tcp::SYN),
        );
        let (v, out) = nodes[0].run(Node::pod_port(0), &f);
        assert_eq!(v, Verdict::Tx(HOST), "{backend}");
        let s = check(&out);
        assert_eq!(s.eth_dst, f0.host_mac.0);
        assert_eq!(
            (s.src, s.sport, s.dst, s.dport),
            (pod_ip(0, 0), 43000, *backend.ip(), backend.port())
        );
        let r = from_host(
            0,
            FrameSpec::tcp(*backend.ip(), backend.port(), pod_ip(0, 0), 43000, tcp::ACK),
        );
        let (v, out) = nodes[0].run(HOST, &r);
        assert_eq!(v, Verdict::Tx(Node::pod_port(0)));
        let s = check(&out);
        assert_eq!((s.src, s.sport), (service_ip(0), 80));

        // From the host (its gateway address is its own: the kernel would take a packet from
        // it for a martian): masqueraded to the host masquerade address, back to the kernel.
        let f = from_host(
            0,
            FrameSpec::tcp(f0.gateway_ip, 44000, service_ip(0), 80, tcp::SYN),
        );
        let (v, out) = nodes[0].run(HOST, &f);
        assert_eq!(v, Verdict::Tx(HOST), "{backend} from the host");
        let s = check(&out);
        assert_eq!(s.src, f0.host_masquerade_ip);
        assert!(s.sport >= SNAT_PORT_MIN);
        assert_eq!((s.dst, s.dport), (*backend.ip(), backend.port()));
        let r = from_host(
            0,
            FrameSpec::tcp(
                *backend.ip(),
                backend.port(),
                s.src,
                s.sport,
                tcp::SYN | tcp::ACK,
            ),
        );
        let (v, out) = nodes[0].run(HOST, &r);
        assert_eq!(v, Verdict::Tx(HOST));
        let s = check(&out);
        assert_eq!(
            (s.src, s.sport, s.dst, s.dport),
            (service_ip(0), 80, f0.gateway_ip, 44000)
        );

        // From outside through the NodePort: masqueraded the same way (with the gateway
        // address the kernel would drop it, with the client's the reply would bypass us).
        let client = Ipv4Addr::new(198, 18, 0, 100);
        let f = FrameSpec::tcp(client, 45000, node_ip(0), 30000, tcp::SYN)
            .macs(testutil::node_mac(9), f0.underlay_mac)
            .to_vec();
        let (v, out) = nodes[0].run(UPLINK, &f);
        assert_eq!(v, Verdict::Tx(HOST), "{backend} from outside");
        let s = check(&out);
        assert_eq!((s.src, s.dst), (f0.host_masquerade_ip, *backend.ip()));
        let r = from_host(
            0,
            FrameSpec::tcp(*backend.ip(), backend.port(), s.src, s.sport, tcp::ACK),
        );
        let (v, out) = nodes[0].run(HOST, &r);
        assert_eq!(v, Verdict::Tx(UPLINK));
        let s = check(&out);
        assert_eq!(s.eth_dst, testutil::node_mac(9).0);
        assert_eq!(
            (s.src, s.sport, s.dst, s.dport),
            (node_ip(0), 30000, client, 45000)
        );
    }
}

#[test]
fn a_nodeport_on_another_nodes_address_is_balanced_here_from_pods() {
    let mut nodes = cluster();
    let backend = SocketAddrV4::new(pod_ip(2, 1), 8080);
    set_backends(&mut nodes, vec![backend]);
    for (k, dst) in [node_ip(1), N1_EXTERNAL, node_ip(0)]
        .into_iter()
        .enumerate()
    {
        let sport = 46000 + k as u16;
        let f = from_pod(
            0,
            0,
            FrameSpec::tcp(pod_ip(0, 0), sport, dst, 30000, tcp::SYN),
        );
        let (v, out) = nodes[0].run(Node::pod_port(0), &f);
        assert_eq!(v, Verdict::Tx(UPLINK), "NodePort on {dst}");
        let (outer, _, inner) = unwrap_vxlan(&out);
        assert_eq!(outer.dst, node_ip(2), "straight to the backend's node");
        let s = check(&inner);
        assert_eq!((s.src, s.dst, s.dport), (pod_ip(0, 0), pod_ip(2, 1), 8080));
        let r = from_pod(
            2,
            1,
            FrameSpec::tcp(pod_ip(2, 1), 8080, pod_ip(0, 0), sport, tcp::SYN | tcp::ACK),
        );
        let (v, out) = nodes[2].run(Node::pod_port(1), &r);
        assert_eq!(v, Verdict::Tx(UPLINK));
        let (v, out) = nodes[0].run(UPLINK, &out);
        assert_eq!(v, Verdict::Tx(Node::pod_port(0)));
        let s = check(&out);
        assert_eq!((s.src, s.sport), (dst, 30000));
    }
}

#[test]
fn a_pod_cannot_speak_the_overlay_to_any_node() {
    let mut nodes = cluster();
    // A crafted VXLAN frame from pod 0/0 carrying a packet "from" pod 0/1 to pod 2/0.
    let forged = FrameSpec::udp(pod_ip(0, 1), 5000, pod_ip(2, 0), 8080).to_vec();
    let mut vx = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    vx.extend_from_slice(&forged);
    for dst in [
        node_ip(1),
        N1_EXTERNAL,
        node_ip(2),
        node_ip(0),
        testutil::node_facts(0).gateway_ip,
    ] {
        let mut spec = FrameSpec::udp(pod_ip(0, 0), 4789, dst, 4789);
        spec.payload_len = vx.len();
        let mut f = from_pod(0, 0, spec);
        f[42..].copy_from_slice(&vx);
        f[40..42].copy_from_slice(&[0, 0]); // no UDP checksum
        let before = nodes[0].pipe.counters().drops(DropReason::PodToOverlay);
        let (v, _) = nodes[0].run(Node::pod_port(0), &f);
        assert_eq!(v, Verdict::Drop(DropReason::PodToOverlay), "to {dst}");
        assert_eq!(
            nodes[0].pipe.counters().drops(DropReason::PodToOverlay),
            before + 1
        );
    }
    // Other UDP to nodes, and the VXLAN port outside the cluster, pass.
    let f = from_pod(0, 0, FrameSpec::udp(pod_ip(0, 0), 4789, node_ip(1), 53));
    assert_eq!(nodes[0].run(Node::pod_port(0), &f).0, Verdict::Tx(UPLINK));
    let f = from_pod(0, 0, FrameSpec::udp(pod_ip(0, 0), 5000, OUTSIDE, 4789));
    assert_eq!(nodes[0].run(Node::pod_port(0), &f).0, Verdict::Tx(HOST));
}
