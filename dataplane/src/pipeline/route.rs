//! Routing: where a frame goes once its addresses are final (a local pod, another node through
//! the overlay, the host port, back out of the uplink), with the TTL and MACs rewritten for it.

use super::*;

impl Pipeline {
    /// Sends a translated reply back out of the uplink to the MAC the flow came from.
    pub(super) fn to_uplink(
        &self,
        fib: &Fib,
        ct: &Conntrack,
        p: &mut Packet<'_>,
        mac_idx: u16,
    ) -> Verdict {
        let Some(mac) = ct.macs().get(mac_idx) else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        let node = fib.node();
        if !dec_ttl(p.data_mut()) {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        let mut eth = EthernetFrame::new_unchecked(p.data_mut());
        eth.set_dst(mac);
        eth.set_src(node.underlay_mac);
        Verdict::Tx(node.uplink_port)
    }

    /// Routes an IPv4 frame to `dst`: a local pod; another node's pod or one of its addresses
    /// (through the overlay, so the node's kernel sees the pod's own address and answers
    /// back the same way); this node's own addresses and everything outside the cluster
    /// (the host port: the kernel delivers it or sends it out, masqueraded). `decapped`: it
    /// came out of the overlay (only local delivery allowed); `from_host`: it came from the
    /// host port untranslated (never sent back there; translated traffic may be).
    pub(super) fn route(
        &self,
        fib: &Fib,
        decapped: bool,
        from_host: bool,
        p: &mut Packet<'_>,
        dst: u32,
        hash: u64,
    ) -> Verdict {
        let node = fib.node();
        match fib.next_hop(dst) {
            NextHop::Pod(ep) => {
                if !dec_ttl(p.data_mut()) {
                    return Verdict::Drop(DropReason::TtlExceeded);
                }
                let mut eth = EthernetFrame::new_unchecked(p.data_mut());
                eth.set_dst(ep.mac);
                eth.set_src(node.gateway_mac);
                return Verdict::Tx(ep.port);
            }
            NextHop::Node(_) | NextHop::Outside | NextHop::Nowhere if decapped => {
                return Verdict::Drop(DropReason::NoRoute);
            }
            NextHop::Node(remote) => return self.encap(fib, p, remote, hash),
            NextHop::Nowhere => return Verdict::Drop(DropReason::NoRoute),
            NextHop::Host | NextHop::Outside => {}
        }
        if from_host {
            return Verdict::Drop(DropReason::NoRoute);
        }
        if !dec_ttl(p.data_mut()) {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        let mut eth = EthernetFrame::new_unchecked(p.data_mut());
        eth.set_dst(node.host_mac);
        eth.set_src(node.gateway_mac);
        Verdict::Tx(node.host_port)
    }

    /// Wraps the frame for `remote` (its inner MACs are the gateway's: the far dataplane
    /// rewrites them on delivery).
    pub(super) fn encap(
        &self,
        fib: &Fib,
        p: &mut Packet<'_>,
        remote: &crate::fib::RemoteNode,
        hash: u64,
    ) -> Verdict {
        let node = fib.node();
        if !dec_ttl(p.data_mut()) {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        {
            let mut eth = EthernetFrame::new_unchecked(p.data_mut());
            eth.set_src(node.gateway_mac);
            eth.set_dst(node.gateway_mac);
        }
        if let Err(r) = remote.outer.wrap(p, hash, node.mtu) {
            return Verdict::Drop(r);
        }
        self.counters.encap.inc();
        Verdict::Tx(node.uplink_port)
    }
}

/// Decrements the TTL of the IPv4 packet in an Ethernet frame; false when it would expire (or
/// the frame is too short to hold an IPv4 header, which validation already excluded).
#[inline]
pub(super) fn dec_ttl(d: &mut [u8]) -> bool {
    d.get_mut(L3..L3 + ipv4::MIN_HEADER_LEN)
        .is_some_and(|h| Ipv4Packet::new_unchecked(h).decrement_ttl())
}
