//! Next-hop MACs from the kernel's neighbour table over rtnetlink.
//!
//! [`Neighbours::dump`] reads the IPv4 neighbour table of the caller's network namespace
//! (`RTM_GETNEIGH` dump); [`Neighbours::changed`] tells, without blocking, whether the kernel
//! announced a neighbour change since the last call (a socket subscribed to the neighbour
//! multicast group), so the daemon re-reads the table only when it changed.

use crate::podnet::Rtnl;
use netlink_packet_core::NLM_F_DUMP;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use xdpnet_dataplane::wire::MacAddr;

/// rtnetlink multicast group of neighbour changes (`RTMGRP_NEIGH`).
const RTMGRP_NEIGH: u32 = 4;

/// The two rtnetlink sockets.
#[derive(Debug)]
pub struct Neighbours {
    dump: Rtnl,
    events: Socket,
    buf: Vec<u8>,
}

fn usable(s: NeighbourState) -> bool {
    matches!(
        s,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    )
}

impl Neighbours {
    /// Opens the sockets (in the caller's network namespace).
    pub fn open() -> io::Result<Self> {
        let dump = Rtnl::open()?;
        let mut events = Socket::new(NETLINK_ROUTE)?;
        events.bind(&SocketAddr::new(0, RTMGRP_NEIGH))?;
        events.set_non_blocking(true)?;
        Ok(Self {
            dump,
            events,
            buf: vec![0; 1 << 16],
        })
    }

    /// The usable IPv4 neighbours (resolved, stale or permanent) and their MACs.
    pub fn dump(&mut self) -> io::Result<BTreeMap<Ipv4Addr, MacAddr>> {
        let msgs = self
            .dump
            .exchange(
                RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(|e| io::Error::new(e.kind(), format!("RTM_GETNEIGH dump: {e}")))?;
        let mut found = BTreeMap::new();
        for msg in msgs {
            let RouteNetlinkMessage::NewNeighbour(m) = msg else {
                continue;
            };
            if m.header.family != AddressFamily::Inet || !usable(m.header.state) {
                continue;
            }
            let mut ip = None;
            let mut mac = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) => ip = Some(*i),
                    NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                        let mut m6 = [0u8; 6];
                        m6.copy_from_slice(b);
                        mac = Some(MacAddr(m6));
                    }
                    _ => {}
                }
            }
            if let (Some(ip), Some(mac)) = (ip, mac)
                && mac != MacAddr([0; 6])
            {
                found.insert(ip, mac);
            }
        }
        Ok(found)
    }

    /// True when the kernel announced a neighbour change since the last call (never blocks).
    pub fn changed(&mut self) -> bool {
        let mut any = false;
        while let Ok(n) = self.events.recv(&mut &mut self.buf[..], 0) {
            if n == 0 {
                break;
            }
            any = true;
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_this_namespaces_table_without_error() {
        // Whatever the table holds here, a dump must parse and end.
        let mut n = Neighbours::open().expect("rtnetlink");
        let t = n.dump().expect("dump");
        assert!(t.values().all(|m| *m != MacAddr([0; 6])));
        let _ = n.changed();
    }
}
