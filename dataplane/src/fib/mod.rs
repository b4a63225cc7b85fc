//! The forwarding table (Fib): one immutable snapshot of everything the packet path looks up.
//!
//! Owns: local endpoints (pod IP -> port, MAC, policy id), remote pod CIDRs -> node (with a
//! prebuilt VXLAN outer header per node), services (ClusterIP, NodePort, LoadBalancer ingress
//! IPs, externalIPs; TCP/UDP; several ports each) with a Maglev table per service port, and the
//! node's own facts.
//!
//! Promises: a `Fib` never changes after it is built; every lookup is a hash probe or two and
//! never allocates. Only [`FibBuilder`] (the control thread) makes one; it shares unchanged parts
//! with the previous snapshot (`Arc`), so one endpoint change re-does one service's Maglev table
//! and clones a vector of pointers, not the whole table. Publication to workers is in
//! [`crate::rcu`].

pub mod builder;
pub mod maglev;
pub mod net;
pub mod services;
pub mod spec;
pub mod tables;

pub use builder::{BuildError, BuildWarning, FibBuilder};
pub use net::Ipv4Net;
pub use services::{Lb, SvcHit};
use services::{SvcIndex, svc_key};
pub use spec::{
    Endpoint, NodeFacts, PortKind, Protocol, RemoteNodeSpec, ServicePortSpec, ServiceSpec,
};
use std::sync::Arc;
pub use tables::{LocalTable, Lpm, RemoteNode, Remotes};

/// Index of a port in the worker set (uplink, host, pods).
pub type PortId = u16;

/// Port ids are below this.
pub const MAX_PORTS: usize = 4096;

/// The forwarding table snapshot.
#[derive(Debug, Clone)]
pub struct Fib {
    generation: u64,
    node: Arc<NodeFacts>,
    ports: Arc<[PortKind]>,
    endpoints: Arc<LocalTable>,
    remotes: Arc<Remotes>,
    lbs: Arc<Vec<Arc<Lb>>>,
    index: Arc<SvcIndex>,
    policy: Arc<crate::policy::PolicyTable>,
}

impl Fib {
    /// Monotonic version number (from the builder).
    pub fn generation(&self) -> u64 {
        self.generation
    }
    /// This node.
    #[inline]
    pub fn node(&self) -> &NodeFacts {
        &self.node
    }
    /// The kind of a port.
    #[inline]
    pub fn port_kind(&self, p: PortId) -> PortKind {
        self.ports
            .get(p as usize)
            .copied()
            .unwrap_or(PortKind::Unused)
    }
    /// A local pod by IP.
    #[inline]
    pub fn endpoint(&self, ip: u32) -> Option<&Endpoint> {
        self.endpoints.get(ip)
    }
    /// All local pods.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.eps.iter()
    }
    /// The remote node whose pod CIDR holds `ip`.
    #[inline(always)]
    pub fn route(&self, ip: u32) -> Option<&RemoteNode> {
        let i = match self.remotes.dense.as_ref().and_then(|d| d.lookup(ip)) {
            Some(hit) => hit?,
            None => self.remotes.routes.lookup(ip)?,
        };
        self.remotes.nodes.get(i as usize)
    }
    /// A remote node by underlay address (VXLAN sources must be one).
    #[inline]
    pub fn node_by_underlay(&self, ip: u32) -> Option<&RemoteNode> {
        let i = *self.remotes.by_ip.get(&ip)?;
        self.remotes.nodes.get(i as usize)
    }
    /// The remote node that has address `ip` (any of its Node addresses).
    #[inline]
    pub fn node_by_addr(&self, ip: u32) -> Option<&RemoteNode> {
        let i = *self.remotes.by_addr.get(&ip)?;
        self.remotes.nodes.get(i as usize)
    }
    /// Where a packet to `ip` goes, as far as the table knows: the one place that tells pods,
    /// other nodes, this node and the outside world apart (routing and the masquerade decision
    /// of new service flows both ask it).
    #[inline(always)]
    pub fn next_hop(&self, ip: u32) -> NextHop<'_> {
        if let Some(ep) = self.endpoint(ip) {
            return NextHop::Pod(ep);
        }
        // Another node's pod, or one of its addresses (the builder never lists one of ours as
        // another node's).
        if let Some(r) = self.route(ip).or_else(|| self.node_by_addr(ip)) {
            return NextHop::Node(r);
        }
        if self.is_own_addr(ip) {
            NextHop::Host
        } else if self.node.cluster_cidr.contains_u32(ip) {
            NextHop::Nowhere
        } else {
            NextHop::Outside
        }
    }
    /// True when `ip` is one of this node's own addresses (or its gateway address).
    #[inline]
    pub fn is_own_addr(&self, ip: u32) -> bool {
        ip == u32::from(self.node.gateway_ip)
            || ip == u32::from(self.node.underlay_ip)
            || self.node.addrs.iter().any(|a| u32::from(*a) == ip)
    }
    /// True when `ip` is an address of any node of the cluster (this one included).
    #[inline]
    pub fn is_node_addr(&self, ip: u32) -> bool {
        self.is_own_addr(ip) || self.remotes.by_addr.contains_key(&ip)
    }
    /// All remote nodes.
    pub fn remote_nodes(&self) -> &[RemoteNode] {
        &self.remotes.nodes
    }
    /// The service port at `ip:port/proto` (ClusterIP, LoadBalancer, external IP), or the
    /// NodePort when `ip` is an address of any node (a pod reaching another node's NodePort
    /// is balanced here, as Cilium does; the uplink only steers this node's addresses).
    #[inline]
    pub fn service(&self, ip: u32, port: u16, proto: u8) -> Option<SvcHit<'_>> {
        self.svc_hit(self.service_ref(ip, port, proto)?)
    }

    /// [`Fib::service`] as a small copyable handle into this snapshot: `index << 1 | external`.
    #[inline(always)]
    pub fn service_ref(&self, ip: u32, port: u16, proto: u8) -> Option<u32> {
        if let Some(v) = self.index.by_addr.get(svc_key(ip, port, proto)) {
            return Some(v);
        }
        let (lo, hi) = self.index.node_ports;
        if port < lo || port > hi {
            return None;
        }
        self.node_port_ref(ip, port, proto)
    }

    /// The NodePort part of [`Fib::service_ref`], out of line: most packets never get here.
    #[inline(never)]
    fn node_port_ref(&self, ip: u32, port: u16, proto: u8) -> Option<u32> {
        let v = *self
            .index
            .by_node_port
            .get(&(((port as u32) << 8) | proto as u32))?;
        if self.is_node_addr(ip) {
            return Some((v << 1) | 1);
        }
        None
    }

    /// The service of a handle from [`Fib::service_ref`] on this snapshot.
    #[inline]
    pub fn svc_hit(&self, r: u32) -> Option<SvcHit<'_>> {
        let lb = self.lbs.get((r >> 1) as usize)?;
        Some(SvcHit {
            lb,
            external: r & 1 == 1,
        })
    }
    /// Prefetches where [`Fib::service_ref`] will look for `ip:port/proto`.
    #[inline]
    pub fn prefetch_service(&self, ip: u32, port: u16, proto: u8) {
        self.index.by_addr.prefetch(svc_key(ip, port, proto));
    }

    /// True when `ip` is a service address (ClusterIP, LoadBalancer or external IP).
    #[inline]
    pub fn is_vip(&self, ip: u32) -> bool {
        self.index.vips.contains_key(&ip)
    }
    /// Every built service port.
    pub fn lbs(&self) -> &[Arc<Lb>] {
        &self.lbs
    }

    /// The network policy table.
    #[inline]
    pub fn policy(&self) -> &crate::policy::PolicyTable {
        &self.policy
    }

    /// The policy of the local pod at `ip`, when some policy applies to it.
    #[inline]
    pub fn pod_policy(&self, ip: u32) -> Option<&crate::policy::PodPolicy> {
        let ep = self.endpoint(ip)?;
        if ep.policy_id == 0 {
            return None;
        }
        self.policy.get(ep.policy_id)
    }

    /// True when some UDP service port of `old` lost a backend in this snapshot (or is gone):
    /// only then can a UDP flow point at a backend that is no more. Service ports the
    /// incremental build carried over unchanged (the same `Arc`) are not looked into.
    pub fn udp_backends_removed_since(&self, old: &Fib) -> bool {
        let udp = |l: &&Arc<Lb>| l.proto == crate::wire::proto::UDP;
        let mut olds = old.lbs.iter().filter(udp).peekable();
        if olds.peek().is_none() {
            return false;
        }
        let kept: std::collections::HashSet<*const Lb> =
            self.lbs.iter().filter(udp).map(Arc::as_ptr).collect();
        let mut by_name: Option<std::collections::HashMap<&str, &Lb>> = None;
        for o in olds {
            if kept.contains(&Arc::as_ptr(o)) {
                continue;
            }
            let names = by_name.get_or_insert_with(|| {
                self.lbs
                    .iter()
                    .filter(udp)
                    .map(|l| (l.name.as_str(), &**l))
                    .collect()
            });
            match names.get(o.name.as_str()) {
                Some(n) if o.backends.iter().all(|b| n.has_backend(*b)) => {}
                _ => return true,
            }
        }
        false
    }
}

/// Where a packet goes ([`Fib::next_hop`]).
#[derive(Debug, Clone, Copy)]
pub enum NextHop<'a> {
    /// A pod of this node.
    Pod(&'a Endpoint),
    /// Another node (one of its pods or addresses): through the overlay.
    Node(&'a RemoteNode),
    /// One of this node's own addresses: its kernel, through the host port.
    Host,
    /// Outside the cluster: the node's kernel sends it on (masqueraded).
    Outside,
    /// Inside the cluster's pod CIDR, but no pod or node has it.
    Nowhere,
}

#[cfg(test)]
mod tests;
