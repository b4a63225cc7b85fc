//! Helpers of the end-to-end tests: reading captured underlay frames.

#![forbid(unsafe_code)]

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use std::net::Ipv4Addr;

/// What one captured underlay frame is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Underlay {
    /// VXLAN: outer addresses, VNI, inner IPv4 source and destination.
    Vxlan {
        /// Outer source.
        outer_src: Ipv4Addr,
        /// Outer destination.
        outer_dst: Ipv4Addr,
        /// UDP destination port.
        port: u16,
        /// VNI.
        vni: u32,
        /// Inner IPv4 source.
        inner_src: Ipv4Addr,
        /// Inner IPv4 destination.
        inner_dst: Ipv4Addr,
    },
    /// Plain IPv4 (not VXLAN on `vxlan_port`).
    Ipv4 {
        /// Source.
        src: Ipv4Addr,
        /// Destination.
        dst: Ipv4Addr,
    },
    /// Anything else (ARP, IPv6, ...).
    Other,
}

/// Classifies an Ethernet frame seen on the underlay.
pub fn classify(frame: &[u8], vxlan_port: u16) -> Underlay {
    let Ok(p) = SlicedPacket::from_ethernet(frame) else {
        return Underlay::Other;
    };
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        return Underlay::Other;
    };
    let (src, dst) = (ip.header().source_addr(), ip.header().destination_addr());
    if let Some(TransportSlice::Udp(u)) = &p.transport {
        if u.destination_port() == vxlan_port {
            let pl = u.payload();
            if pl.len() >= 8 {
                let vni = u32::from_be_bytes([0, pl[4], pl[5], pl[6]]);
                if let Ok(inner) = SlicedPacket::from_ethernet(&pl[8..]) {
                    if let Some(NetSlice::Ipv4(iip)) = &inner.net {
                        return Underlay::Vxlan {
                            outer_src: src,
                            outer_dst: dst,
                            port: vxlan_port,
                            vni,
                            inner_src: iip.header().source_addr(),
                            inner_dst: iip.header().destination_addr(),
                        };
                    }
                }
            }
        }
    }
    Underlay::Ipv4 { src, dst }
}
