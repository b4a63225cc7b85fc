//! The lookup tables of a snapshot for pods and nodes: this node's pods by address, other
//! nodes by underlay address and by any address, and the routes to their pod CIDRs (dense
//! array or longest-prefix match). Built by the builder, read by [`super::Fib`]; never change
//! after a build.

use super::{Endpoint, Ipv4Net, NodeFacts, RemoteNodeSpec};
use crate::hash::IntMap;
use crate::overlay::{OuterHeader, Tunnel};
use std::net::Ipv4Addr;

/// Another node, ready for encapsulation.
#[derive(Debug, Clone)]
pub struct RemoteNode {
    /// Node name.
    pub name: String,
    /// Underlay address.
    pub underlay_ip: Ipv4Addr,
    /// Pod CIDRs (inner sources from this node must be inside one, or be one of `addrs`).
    pub pod_cidrs: Vec<Ipv4Net>,
    /// Every address of the node (`underlay_ip` and the others): what its kernel may send
    /// into the overlay as a source besides its pods.
    pub addrs: Vec<Ipv4Addr>,
    /// Prebuilt outer header; lengths, IP checksum and UDP source port are patched per packet.
    pub outer: OuterHeader,
}

impl RemoteNode {
    /// True when an inner source `ip` may come from this node: one of its pods or its own
    /// addresses (its kernel answering a pod, or a host-network pod).
    #[inline]
    pub fn owns_source(&self, ip: u32) -> bool {
        self.pod_cidrs.iter().any(|c| c.contains_u32(ip))
            || self.addrs.iter().any(|a| u32::from(*a) == ip)
    }

    pub(super) fn new(spec: &RemoteNodeSpec, node: &NodeFacts) -> Self {
        let outer = OuterHeader::new(&Tunnel {
            src_mac: node.underlay_mac,
            next_hop_mac: spec.next_hop_mac,
            src_ip: node.underlay_ip.into(),
            dst_ip: spec.underlay_ip.into(),
            port: node.vxlan_port,
            vni: node.vni,
        });
        Self {
            name: spec.name.clone(),
            underlay_ip: spec.underlay_ip,
            pod_cidrs: spec.pod_cidrs.clone(),
            addrs: std::iter::once(spec.underlay_ip)
                .chain(
                    spec.addrs
                        .iter()
                        .copied()
                        .filter(|a| *a != spec.underlay_ip),
                )
                .collect(),
            outer,
        }
    }
}

/// Longest-prefix match over a few prefix lengths: one hash map per length, longest first.
/// Pod CIDRs are usually all one length, so a lookup is one probe.
#[derive(Debug, Default, Clone)]
pub struct Lpm {
    pub(super) by_len: Vec<(u32, IntMap<u32, u32>)>,
}

impl Lpm {
    pub(super) fn insert(&mut self, net: Ipv4Net, v: u32) {
        let mask = net.mask();
        match self.by_len.iter_mut().find(|(m, _)| *m == mask) {
            Some((_, map)) => {
                map.insert(net.addr_u32(), v);
            }
            None => {
                let mut map = IntMap::default();
                map.insert(net.addr_u32(), v);
                self.by_len.push((mask, map));
                self.by_len.sort_by_key(|e| std::cmp::Reverse(e.0));
            }
        }
    }
    /// The value of the longest prefix containing `ip`.
    #[inline]
    pub fn lookup(&self, ip: u32) -> Option<u32> {
        self.by_len
            .iter()
            .find_map(|(mask, map)| map.get(&(ip & mask)).copied())
    }
}

/// This node's pods by IP: a dense array over the pod CIDR (one load, no hashing) when the CIDR
/// is /16 or longer, a hash map otherwise.
#[derive(Debug, Default)]
pub struct LocalTable {
    pub(super) eps: Vec<Endpoint>,
    pub(super) base: u32,
    /// `index + 1` into `eps` per address offset in the CIDR; 0 = none.
    pub(super) dense: Box<[u32]>,
    pub(super) sparse: IntMap<u32, u32>,
}

impl LocalTable {
    pub(super) fn new(cidr: Ipv4Net, eps: Vec<Endpoint>) -> Self {
        let mut t = LocalTable {
            base: cidr.addr_u32(),
            ..Default::default()
        };
        if cidr.prefix_len() >= 16 {
            let mut dense = vec![0u32; 1usize << (32 - cidr.prefix_len())];
            for (i, e) in eps.iter().enumerate() {
                if let Some(slot) = dense.get_mut(u32::from(e.ip).wrapping_sub(t.base) as usize) {
                    *slot = i as u32 + 1;
                }
            }
            t.dense = dense.into_boxed_slice();
        } else {
            t.sparse = eps
                .iter()
                .enumerate()
                .map(|(i, e)| (u32::from(e.ip), i as u32 + 1))
                .collect();
        }
        t.eps = eps;
        t
    }

    /// The pod with address `ip`.
    #[inline]
    pub fn get(&self, ip: u32) -> Option<&Endpoint> {
        let i = if self.dense.is_empty() {
            *self.sparse.get(&ip)?
        } else {
            *self.dense.get(ip.wrapping_sub(self.base) as usize)?
        };
        self.eps.get((i as usize).checked_sub(1)?)
    }
}

/// Remote pod routes as a dense array over the cluster CIDR at the pod CIDRs' common prefix
/// length (one load per lookup), used when every remote pod CIDR has that length and lies in
/// the cluster CIDR and the array stays under a million entries; else `Lpm`.
#[derive(Debug, Default)]
pub(super) struct DenseRoutes {
    pub(super) base: u32,
    pub(super) cluster_mask: u32,
    pub(super) shift: u32,
    /// `node index + 1` per block; 0 = none.
    pub(super) blocks: Box<[u32]>,
}

impl DenseRoutes {
    pub(super) fn build(cluster: Ipv4Net, routes: &[(Ipv4Net, u32)]) -> Option<Self> {
        let len = routes.first()?.0.prefix_len();
        if len < cluster.prefix_len() || len - cluster.prefix_len() > 20 {
            return None;
        }
        if routes
            .iter()
            .any(|(n, _)| n.prefix_len() != len || !cluster.contains_u32(n.addr_u32()))
        {
            return None;
        }
        let shift = 32 - len as u32;
        let mut blocks = vec![0u32; 1usize << (len - cluster.prefix_len())];
        for (n, v) in routes {
            let i = ((n.addr_u32() - cluster.addr_u32()) >> shift) as usize;
            blocks[i] = v + 1;
        }
        Some(Self {
            base: cluster.addr_u32(),
            cluster_mask: cluster.mask(),
            shift,
            blocks: blocks.into_boxed_slice(),
        })
    }

    #[inline]
    pub(super) fn lookup(&self, ip: u32) -> Option<Option<u32>> {
        if ip & self.cluster_mask != self.base {
            return Some(None);
        }
        let v = *self.blocks.get(((ip - self.base) >> self.shift) as usize)?;
        Some(v.checked_sub(1))
    }
}

/// Remote nodes and the routes to their pods.
#[derive(Debug, Default)]
pub struct Remotes {
    pub(super) nodes: Vec<RemoteNode>,
    /// Underlay address -> node (VXLAN sources).
    pub(super) by_ip: IntMap<u32, u32>,
    /// Every address of every remote node -> node (routing to node addresses).
    pub(super) by_addr: IntMap<u32, u32>,
    pub(super) routes: Lpm,
    pub(super) dense: Option<DenseRoutes>,
}
