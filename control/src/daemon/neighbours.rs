//! Next hops of other nodes: the kernel's neighbour table over rtnetlink, re-read when the
//! kernel announces a change, `/proc/net/arp` when rtnetlink cannot be opened; and the probe
//! that makes the kernel resolve an address nobody asked for yet.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use xdpnet_dataplane::wire::MacAddr;

/// Next-hop MACs from `/proc/net/arp` (the fallback when rtnetlink cannot be opened).
fn proc_neighbours() -> BTreeMap<Ipv4Addr, MacAddr> {
    let Ok(text) = std::fs::read_to_string("/proc/net/arp") else {
        return BTreeMap::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // IP, HW type, Flags (0x2 = complete), HW address, Mask, Device
            let complete =
                u32::from_str_radix(f.get(2)?.trim_start_matches("0x"), 16).ok()? & 2 != 0;
            let mac: MacAddr = f.get(3)?.parse().ok()?;
            (complete && mac != MacAddr([0; 6])).then_some((f.first()?.parse().ok()?, mac))
        })
        .collect()
}

/// Makes the kernel resolve `ip` (a datagram to the discard port; the reply, if any, is an ICMP
/// error nobody reads).
pub(super) fn probe(ip: Ipv4Addr) {
    if let Ok(s) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
        let _ = s.send_to(b"", (ip, 9));
    }
}

/// The kernel's neighbour table.
pub(super) struct NeighbourSource {
    nl: Option<crate::neigh::Neighbours>,
}

impl NeighbourSource {
    /// Over rtnetlink, or `/proc/net/arp` when that cannot be opened (logged).
    pub(super) fn open(node: &str) -> Self {
        match crate::neigh::Neighbours::open() {
            Ok(n) => Self { nl: Some(n) },
            Err(e) => {
                super::log!(
                    node,
                    "rtnetlink unavailable ({e}); reading /proc/net/arp instead"
                );
                Self { nl: None }
            }
        }
    }

    /// The table now.
    pub(super) fn read(&mut self) -> BTreeMap<Ipv4Addr, MacAddr> {
        match self.nl.as_mut().map(|n| n.dump()) {
            Some(Ok(t)) => t,
            _ => proc_neighbours(),
        }
    }

    /// True when a re-read may find something new.
    pub(super) fn changed(&mut self) -> bool {
        self.nl.as_mut().is_none_or(|n| n.changed())
    }
}
