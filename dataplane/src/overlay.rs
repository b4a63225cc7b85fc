//! The overlay between nodes: how a frame for another node is wrapped, and what the wrapping
//! costs.
//!
//! Today one encapsulation, VXLAN (RFC 7348) over IPv4/UDP: [`OuterHeader`] is the outer
//! Ethernet + IPv4 + UDP + VXLAN header towards one node, built once by the table builder (so
//! the packet path copies 50 bytes instead of writing fields), and [`OuterHeader::wrap`] is the
//! per-packet part: push the header in front of the inner frame, patch the lengths, the IPv4
//! checksum (incrementally from a precomputed sum) and the UDP source port (from the inner
//! flow's hash, so the underlay's ECMP and RSS spread flows). [`MTU_OVERHEAD`] is what every
//! interface feeding the overlay (pods, the host port) gives up of the underlay MTU; the control
//! plane takes it from here.
//!
//! A second encapsulation (WireGuard) would sit beside VXLAN here: its own header template and
//! wrap, with its per-peer state (keys, counters) outside the immutable table.
//!
//! Promises: `wrap` never allocates and never panics; a frame it refuses is left as it was.

use crate::counters::DropReason;
use crate::packet::Packet;
use crate::wire::{MacAddr, checksum, ethernet, ipv4, proto, udp, vxlan};

/// Length of the VXLAN outer headers: Ethernet + IPv4 + UDP + VXLAN.
pub const ENCAP_LEN: usize =
    ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + udp::HEADER_LEN + vxlan::HEADER_LEN;

/// What the overlay takes of the underlay MTU (outer IPv4 + UDP + VXLAN + inner Ethernet): an
/// interface feeding it has at most the underlay MTU minus this.
pub const MTU_OVERHEAD: u16 = ENCAP_LEN as u16;

/// Default VXLAN UDP port (IANA).
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Default VNI.
pub const DEFAULT_VNI: u32 = 1;

// Offsets in the outer header.
const IP: usize = ethernet::HEADER_LEN;
const UDP: usize = IP + ipv4::MIN_HEADER_LEN;
const VXLAN: usize = UDP + udp::HEADER_LEN;
/// UDP source ports of the overlay: the dynamic range, 14 bits of the flow hash.
const SPORT_BASE: u16 = 49_152;

/// The prebuilt outer header towards one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OuterHeader {
    bytes: [u8; ENCAP_LEN],
    /// Ones'-complement sum of the outer IPv4 header with length and checksum zero.
    ip_sum: u32,
}

/// Where an outer header goes and what it carries.
#[derive(Debug, Clone, Copy)]
pub struct Tunnel {
    /// This node's underlay MAC.
    pub src_mac: MacAddr,
    /// The next hop towards the far node.
    pub next_hop_mac: MacAddr,
    /// This node's underlay address.
    pub src_ip: u32,
    /// The far node's underlay address.
    pub dst_ip: u32,
    /// VXLAN UDP port.
    pub port: u16,
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
}

impl OuterHeader {
    /// The header for `t`, with lengths, checksum and source port left to [`OuterHeader::wrap`].
    pub fn new(t: &Tunnel) -> Self {
        let mut h = [0u8; ENCAP_LEN];
        {
            let mut eth = crate::wire::EthernetFrame::new_unchecked(&mut h[..]);
            eth.set_dst(t.next_hop_mac);
            eth.set_src(t.src_mac);
            eth.set_ethertype(ethernet::ethertype::IPV4);
        }
        ipv4::Ipv4Packet::new_unchecked(&mut h[IP..UDP]).write_header(
            0,
            0,
            0,
            ipv4::FLAG_DF,
            64,
            proto::UDP,
            t.src_ip,
            t.dst_ip,
        );
        // Checksum field back to zero; the base sum excludes length and checksum.
        h[IP + ipv4::field::CHECKSUM..][..2].copy_from_slice(&[0, 0]);
        let ip_sum = u32::from(checksum::fold(checksum::sum(&h[IP..UDP])));
        h[UDP + 2..UDP + 4].copy_from_slice(&t.port.to_be_bytes());
        if let Ok(mut vx) = crate::wire::VxlanHeader::new_checked(&mut h[VXLAN..]) {
            vx.set(t.vni);
        }
        Self { bytes: h, ip_sum }
    }

    /// The header's bytes (lengths, checksum and source port zero).
    pub fn bytes(&self) -> &[u8; ENCAP_LEN] {
        &self.bytes
    }

    /// The MAC the wrapped frames are sent to.
    pub fn next_hop_mac(&self) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.bytes[ethernet::field::DST]);
        MacAddr(m)
    }

    /// Wraps the frame in `p` (an Ethernet frame, its MACs already set) for the far node:
    /// refuses it when the outer packet would exceed `mtu` or there is no headroom. `hash` is
    /// the inner flow's hash (the UDP source port comes from it).
    #[inline]
    pub fn wrap(&self, p: &mut Packet<'_>, hash: u64, mtu: u16) -> Result<(), DropReason> {
        let outer_total = p.len + ENCAP_LEN - ethernet::HEADER_LEN;
        // A large segment still to be cut is checked segment by segment when it is cut.
        if outer_total > mtu as usize && p.gso == 0 {
            return Err(DropReason::MtuExceeded);
        }
        if !p.push_front(ENCAP_LEN) {
            return Err(DropReason::NoHeadroom);
        }
        let d = p.data_mut();
        d[..ENCAP_LEN].copy_from_slice(&self.bytes);
        let total = outer_total as u16;
        let c = !checksum::fold(self.ip_sum as u64 + total as u64);
        let sport = SPORT_BASE | ((hash ^ (hash >> 32)) as u16 & 0x3fff);
        let ip = &mut d[IP..UDP];
        ip[ipv4::field::LEN..][..2].copy_from_slice(&total.to_be_bytes());
        ip[ipv4::field::CHECKSUM..][..2].copy_from_slice(&c.to_be_bytes());
        let u = &mut d[UDP..VXLAN];
        u[0..2].copy_from_slice(&sport.to_be_bytes());
        u[4..6].copy_from_slice(
            &total
                .wrapping_sub(ipv4::MIN_HEADER_LEN as u16)
                .to_be_bytes(),
        );
        Ok(())
    }
}
