//! Shared helpers of the pipeline tests: a node (table, conntrack, pipeline) fed in memory, and
//! an independent check of every output frame with etherparse.

#![allow(dead_code)] // each test file uses a different part

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use std::net::Ipv4Addr;
use xdpnet_dataplane::conntrack::{Conntrack, Timeouts, Tuple};
use xdpnet_dataplane::counters::DropReason;
use xdpnet_dataplane::fib::{Fib, FibBuilder, PortId};
use xdpnet_dataplane::packet::{HEADROOM, Packet};
use xdpnet_dataplane::pipeline::{Pipeline, Verdict};
use xdpnet_dataplane::testutil::{self, ClusterShape};

pub const SHAPE: ClusterShape = ClusterShape {
    nodes: 3,
    pods_per_node: 4,
    services: 8,
    backends: 4,
};

/// One node's dataplane, in memory.
pub struct Node {
    pub index: u32,
    pub builder: FibBuilder,
    pub fib: Fib,
    pub ct: Conntrack,
    pub pipe: Pipeline,
    pub now: u32,
}

impl Node {
    /// Node `i` of a cluster of `shape` (its builder sees the cluster from node i).
    pub fn new(i: u32, shape: &ClusterShape) -> Self {
        let mut builder = FibBuilder::new(testutil::node_facts(i));
        let b0 = testutil::cluster_builder(shape);
        let _ = b0;
        for j in 0..shape.pods_per_node {
            builder
                .upsert_endpoint(xdpnet_dataplane::fib::Endpoint {
                    ip: testutil::pod_ip(i, j),
                    mac: testutil::pod_mac(i, j),
                    port: testutil::FIRST_POD_PORT + j as PortId,
                    policy_id: 0,
                })
                .unwrap();
        }
        for n in 0..shape.nodes {
            if n != i {
                builder.upsert_node(xdpnet_dataplane::fib::RemoteNodeSpec {
                    name: format!("node-{n}"),
                    underlay_ip: testutil::node_ip(n),
                    next_hop_mac: testutil::node_mac(n),
                    pod_cidrs: vec![testutil::pod_cidr(n)],
                    addrs: vec![],
                });
            }
        }
        for k in 0..shape.services {
            builder
                .upsert_service(testutil::service_spec(shape, k))
                .unwrap();
        }
        let fib = builder.build();
        Self {
            index: i,
            builder,
            fib,
            ct: Conntrack::new(1 << 14, Timeouts::default()).unwrap(),
            pipe: Pipeline::new(),
            now: 100,
        }
    }

    pub fn rebuild(&mut self) {
        self.fib = self.builder.build();
    }

    /// Runs one frame received on `port`; returns the verdict and the frame as it is now.
    pub fn run(&mut self, port: PortId, frame: &[u8]) -> (Verdict, Vec<u8>) {
        let mut chunk = vec![0u8; HEADROOM + 2048];
        let len = frame.len().min(2048);
        chunk[HEADROOM..HEADROOM + len].copy_from_slice(&frame[..len]);
        let mut pkts = [Packet::new(&mut chunk, HEADROOM, len)];
        let mut out = [Verdict::Drop(DropReason::NoRoute)];
        self.pipe
            .process(&self.fib, &self.ct, self.now, port, &mut pkts, &mut out);
        (out[0], pkts[0].data().to_vec())
    }

    pub fn pod_port(j: u32) -> PortId {
        testutil::FIRST_POD_PORT + j as PortId
    }
}

/// What etherparse sees in a frame, after it checked every checksum.
#[derive(Debug, Clone)]
pub struct Seen {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub dont_fragment: bool,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// The IP payload (L4 header and data).
    pub ip_payload: Vec<u8>,
    /// The L4 payload.
    pub payload: Vec<u8>,
    pub icmp_type: Option<u8>,
}

impl Seen {
    pub fn tuple(&self) -> Tuple {
        Tuple {
            src: self.src.into(),
            dst: self.dst.into(),
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
        }
    }
}

/// Parses `frame` with etherparse and asserts the IPv4 header checksum and the TCP/UDP/ICMP
/// checksums are right.
pub fn check(frame: &[u8]) -> Seen {
    let p = SlicedPacket::from_ethernet(frame).expect("etherparse parses the frame");
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = p.link else {
        panic!("not ethernet")
    };
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not ipv4")
    };
    let hdr = ip.header().to_header();
    assert_eq!(
        hdr.header_checksum,
        hdr.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let mut s = Seen {
        eth_src: eth.source(),
        eth_dst: eth.destination(),
        src: hdr.source.into(),
        dst: hdr.destination.into(),
        ttl: hdr.time_to_live,
        dont_fragment: hdr.dont_fragment,
        proto: hdr.protocol.0,
        sport: 0,
        dport: 0,
        ip_payload: ip.payload().payload.to_vec(),
        payload: vec![],
        icmp_type: None,
    };
    match &p.transport {
        Some(TransportSlice::Udp(u)) => {
            if u.checksum() != 0 {
                let want = u.to_header().calc_checksum_ipv4(&hdr, u.payload()).unwrap();
                assert_eq!(u.checksum(), want, "UDP checksum");
            }
            s.sport = u.source_port();
            s.dport = u.destination_port();
            s.payload = u.payload().to_vec();
        }
        Some(TransportSlice::Tcp(t)) => {
            let want = t.calc_checksum_ipv4(hdr.source, hdr.destination).unwrap();
            assert_eq!(t.checksum(), want, "TCP checksum");
            s.sport = t.source_port();
            s.dport = t.destination_port();
            s.payload = t.payload().to_vec();
        }
        Some(TransportSlice::Icmpv4(i)) => {
            let sum = xdpnet_dataplane::wire::checksum::sum(i.slice());
            assert_eq!(
                xdpnet_dataplane::wire::checksum::fold(sum),
                0xffff,
                "ICMP checksum"
            );
            s.icmp_type = Some(i.type_u8());
            s.payload = i.payload().to_vec();
        }
        _ => {}
    }
    s
}

/// Splits a VXLAN frame: checks the outer headers and returns (outer, VNI, inner frame).
pub fn unwrap_vxlan(frame: &[u8]) -> (Seen, u32, Vec<u8>) {
    let outer = check(frame);
    assert_eq!(outer.proto, 17);
    let vx = &outer.payload;
    assert!(vx.len() >= 8);
    assert_eq!(vx[0], 0x08, "VXLAN I flag");
    let vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
    (outer.clone(), vni, vx[8..].to_vec())
}

pub fn ip(a: Ipv4Addr) -> u32 {
    a.into()
}
