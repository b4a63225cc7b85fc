//! Synthetic frames and clusters for tests, the pipeline demo, benchmarks and fuzzing.
//!
//! Frames are written with this crate's own wire views; tests check them (and the pipeline's
//! output) with an independent parser (etherparse).

use crate::fib::{
    Endpoint, FibBuilder, Ipv4Net, NodeFacts, PortId, Protocol, RemoteNodeSpec, ServicePortSpec,
    ServiceSpec,
};
use crate::wire::{self, EthernetFrame, Ipv4Packet, MacAddr, proto};
use std::net::{Ipv4Addr, SocketAddrV4};

/// A frame to build.
#[derive(Debug, Clone, Copy)]
pub struct FrameSpec {
    /// Ethernet source.
    pub src_mac: MacAddr,
    /// Ethernet destination.
    pub dst_mac: MacAddr,
    /// IPv4 source.
    pub src: Ipv4Addr,
    /// IPv4 destination.
    pub dst: Ipv4Addr,
    /// TCP, UDP or ICMP.
    pub proto: u8,
    /// Source port (ICMP: echo identifier).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// TCP flags.
    pub tcp_flags: u8,
    /// ICMP type (ICMP only).
    pub icmp_type: u8,
    /// TTL.
    pub ttl: u8,
    /// Payload bytes after the L4 header.
    pub payload_len: usize,
}

impl FrameSpec {
    /// A UDP frame with 18 bytes of payload (a 64-byte frame).
    pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        Self {
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            src,
            dst,
            proto: proto::UDP,
            sport,
            dport,
            tcp_flags: 0,
            icmp_type: 0,
            ttl: 64,
            payload_len: 18,
        }
    }
    /// A TCP frame with the given flags and no payload.
    pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Self {
        Self {
            proto: proto::TCP,
            tcp_flags: flags,
            payload_len: 6,
            ..Self::udp(src, sport, dst, dport)
        }
    }
    /// An ICMP echo request.
    pub fn ping(src: Ipv4Addr, dst: Ipv4Addr, ident: u16) -> Self {
        Self {
            proto: proto::ICMP,
            icmp_type: wire::icmp::ECHO_REQUEST,
            sport: ident,
            dport: 1,
            ..Self::udp(src, 0, dst, 0)
        }
    }
    /// With these MACs.
    pub fn macs(mut self, src: MacAddr, dst: MacAddr) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }
    /// Frame length this spec produces.
    pub fn len(&self) -> usize {
        14 + 20 + self.l4_header_len() + self.payload_len
    }
    /// Never empty (there is always a header).
    pub fn is_empty(&self) -> bool {
        false
    }
    fn l4_header_len(&self) -> usize {
        match self.proto {
            proto::TCP => 20,
            _ => 8,
        }
    }

    /// Writes the frame at the start of `buf` (which must hold [`FrameSpec::len`] bytes) with
    /// valid checksums; returns its length. The payload is a counting pattern.
    pub fn write(&self, buf: &mut [u8]) -> usize {
        let len = self.len();
        let buf = &mut buf[..len];
        {
            let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
            eth.set_dst(self.dst_mac);
            eth.set_src(self.src_mac);
            eth.set_ethertype(wire::ethernet::ethertype::IPV4);
        }
        let l4h = self.l4_header_len();
        let l4_len = l4h + self.payload_len;
        for (i, b) in buf[34 + l4h..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let (s, d) = (u32::from(self.src), u32::from(self.dst));
        {
            let l4 = &mut buf[34..];
            match self.proto {
                proto::TCP => {
                    l4[..20].fill(0);
                    l4[0..2].copy_from_slice(&self.sport.to_be_bytes());
                    l4[2..4].copy_from_slice(&self.dport.to_be_bytes());
                    l4[4..8].copy_from_slice(&1000u32.to_be_bytes());
                    l4[12] = 5 << 4;
                    l4[13] = self.tcp_flags;
                    l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
                    wire::TcpPacket::new_unchecked(&mut l4[..]).fill_checksum(s, d);
                }
                proto::ICMP => {
                    l4[0] = self.icmp_type;
                    l4[1] = 0;
                    l4[2..4].fill(0);
                    l4[4..6].copy_from_slice(&self.sport.to_be_bytes());
                    l4[6..8].copy_from_slice(&self.dport.to_be_bytes());
                    if let Ok(mut ic) = wire::IcmpPacket::new_checked(&mut l4[..]) {
                        ic.fill_checksum();
                    }
                }
                _ => {
                    l4[0..2].copy_from_slice(&self.sport.to_be_bytes());
                    l4[2..4].copy_from_slice(&self.dport.to_be_bytes());
                    l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                    l4[6..8].fill(0);
                    if let Ok(mut u) = wire::UdpPacket::new_checked(&mut l4[..]) {
                        u.fill_checksum(s, d);
                    }
                }
            }
        }
        Ipv4Packet::new_unchecked(&mut buf[14..]).write_header(
            0,
            (20 + l4_len) as u16,
            0x1234,
            wire::ipv4::FLAG_DF,
            self.ttl,
            self.proto,
            s,
            d,
        );
        len
    }

    /// The frame as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.len()];
        self.write(&mut v);
        v
    }
}

/// Port numbering of the synthetic nodes: uplink 0, host 1, pods from 2.
pub const UPLINK: PortId = 0;
/// The host port.
pub const HOST: PortId = 1;
/// First pod port.
pub const FIRST_POD_PORT: PortId = 2;

/// Underlay address of synthetic node `i` (198.18.0.0/15, the benchmarking range).
pub fn node_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 10)) + i)
}
/// Uplink MAC of node `i`.
pub fn node_mac(i: u32) -> MacAddr {
    let b = i.to_be_bytes();
    MacAddr([0x02, 0xaa, b[0], b[1], b[2], b[3]])
}
/// Pod CIDR of node `i`: 10.244.i.0/24 (i < 256) and on into 10.245.x for larger clusters.
pub fn pod_cidr(i: u32) -> Ipv4Net {
    Ipv4Net::new(
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + (i << 8)),
        24,
    )
    .expect("len 24")
}
/// Address of pod `j` on node `i` (j from 0; .1 is the gateway).
pub fn pod_ip(i: u32, j: u32) -> Ipv4Addr {
    Ipv4Addr::from(pod_cidr(i).addr_u32() + 2 + j)
}
/// MAC of pod `j` on node `i`.
pub fn pod_mac(i: u32, j: u32) -> MacAddr {
    let b = i.to_be_bytes();
    MacAddr([0x0a, 0x58, b[2], b[3], (j >> 8) as u8, j as u8])
}
/// The ClusterIP of service `k` (10.96.0.0/12).
pub fn service_ip(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + k)
}

/// Facts for synthetic node `i`.
pub fn node_facts(i: u32) -> NodeFacts {
    let cidr = pod_cidr(i);
    NodeFacts {
        name: format!("node-{i}"),
        underlay_ip: node_ip(i),
        underlay_mac: node_mac(i),
        vni: crate::overlay::DEFAULT_VNI,
        vxlan_port: crate::overlay::DEFAULT_VXLAN_PORT,
        mtu: 1500,
        pod_cidr: cidr,
        cluster_cidr: "10.244.0.0/14".parse().expect("valid"),
        gateway_ip: cidr.nth(1).expect("in /24"),
        gateway_mac: MacAddr([0x02, 0xfe, 0, 0, (i >> 8) as u8, i as u8]),
        host_mac: MacAddr([0x02, 0xfd, 0, 0, (i >> 8) as u8, i as u8]),
        masquerade_ip: cidr.nth(1).expect("in /24"),
        host_masquerade_ip: cidr.addr(),
        addrs: vec![node_ip(i)],
        uplink_port: UPLINK,
        host_port: HOST,
    }
}

/// The size of a synthetic cluster.
#[derive(Debug, Clone, Copy)]
pub struct ClusterShape {
    /// Nodes (node 0 is "this" node).
    pub nodes: u32,
    /// Pods per node.
    pub pods_per_node: u32,
    /// Services.
    pub services: u32,
    /// Backends per service.
    pub backends: u32,
}

/// Backend `b` of service `k`: pods spread over all nodes.
pub fn backend_of(shape: &ClusterShape, k: u32, b: u32) -> SocketAddrV4 {
    let n = (k.wrapping_mul(7) + b) % shape.nodes;
    let j = (k.wrapping_mul(13) + b * 3) % shape.pods_per_node;
    SocketAddrV4::new(pod_ip(n, j), 8080)
}

/// The spec of service `k`: TCP 80 and UDP 53 on its ClusterIP, NodePort 30000 + k for TCP if
/// k < 2768.
pub fn service_spec(shape: &ClusterShape, k: u32) -> ServiceSpec {
    let backends: Vec<SocketAddrV4> = (0..shape.backends)
        .map(|b| backend_of(shape, k, b))
        .collect();
    ServiceSpec {
        name: format!("default/svc-{k}"),
        cluster_ips: vec![service_ip(k)],
        ports: vec![
            ServicePortSpec {
                protocol: Protocol::Tcp,
                port: 80,
                node_port: (k < 2768).then_some(30000 + k as u16),
                backends: backends.clone(),
            },
            ServicePortSpec {
                protocol: Protocol::Udp,
                port: 53,
                node_port: None,
                backends,
            },
        ],
        ..ServiceSpec::default()
    }
}

/// A builder for node 0 of a synthetic cluster, with everything in it.
pub fn cluster_builder(shape: &ClusterShape) -> FibBuilder {
    let mut b = FibBuilder::new(node_facts(0));
    for j in 0..shape.pods_per_node {
        b.upsert_endpoint(Endpoint {
            ip: pod_ip(0, j),
            mac: pod_mac(0, j),
            port: FIRST_POD_PORT + j as PortId,
            policy_id: 0,
        })
        .expect("pod in node 0's CIDR");
    }
    for i in 1..shape.nodes {
        b.upsert_node(RemoteNodeSpec {
            name: format!("node-{i}"),
            underlay_ip: node_ip(i),
            next_hop_mac: node_mac(i),
            pod_cidrs: vec![pod_cidr(i)],
            addrs: vec![],
        });
    }
    for k in 0..shape.services {
        b.upsert_service(service_spec(shape, k))
            .expect("within limits");
    }
    b
}

/// Wraps `inner` (an Ethernet frame) in VXLAN from node `from` to node `to`.
pub fn vxlan_wrap(inner: &[u8], from: u32, to: u32, vni: u32) -> Vec<u8> {
    let mut v = vec![0u8; crate::overlay::ENCAP_LEN + inner.len()];
    {
        let mut eth = EthernetFrame::new_unchecked(&mut v[..]);
        eth.set_dst(node_mac(to));
        eth.set_src(node_mac(from));
        eth.set_ethertype(wire::ethernet::ethertype::IPV4);
    }
    let total = (v.len() - 14) as u16;
    Ipv4Packet::new_unchecked(&mut v[14..]).write_header(
        0,
        total,
        0,
        wire::ipv4::FLAG_DF,
        64,
        proto::UDP,
        node_ip(from).into(),
        node_ip(to).into(),
    );
    v[34..36].copy_from_slice(&50000u16.to_be_bytes());
    v[36..38].copy_from_slice(&crate::overlay::DEFAULT_VXLAN_PORT.to_be_bytes());
    v[38..40].copy_from_slice(&(total - 20).to_be_bytes());
    if let Ok(mut vx) = wire::VxlanHeader::new_checked(&mut v[42..]) {
        vx.set(vni);
    }
    v[50..].copy_from_slice(inner);
    v
}
