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

pub mod maglev;
pub mod net;

use crate::hash::IntMap;
use crate::wire::{MacAddr, checksum, ipv4, proto};
use maglev::Maglev;
pub use net::Ipv4Net;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

/// Index of a port in the worker set (uplink, host, pods).
pub type PortId = u16;

/// Length of the VXLAN outer headers: Ethernet + IPv4 + UDP + VXLAN.
pub const ENCAP_LEN: usize = 14 + 20 + 8 + 8;

/// Default VXLAN UDP port (IANA).
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Default VNI.
pub const DEFAULT_VNI: u32 = 1;

/// Transport protocols a service port can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => proto::TCP,
            Protocol::Udp => proto::UDP,
        }
    }
}

/// Facts about this node the pipeline needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// Node name.
    pub name: String,
    /// Underlay (InternalIP) address of this node: VXLAN endpoint and NodePort address.
    pub underlay_ip: Ipv4Addr,
    /// MAC of the uplink interface.
    pub underlay_mac: MacAddr,
    /// VXLAN network identifier.
    pub vni: u32,
    /// VXLAN UDP port.
    pub vxlan_port: u16,
    /// Underlay MTU (pods get `mtu - 50`).
    pub mtu: u16,
    /// This node's pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// The whole cluster's pod CIDR (sources outside it are masqueraded on service traffic).
    pub cluster_cidr: Ipv4Net,
    /// Gateway address the pods route through (also the host port's kernel-side address).
    pub gateway_ip: Ipv4Addr,
    /// MAC the dataplane answers with for the gateway, on pod ports and the host port.
    pub gateway_mac: MacAddr,
    /// MAC of the kernel's end of the host port.
    pub host_mac: MacAddr,
    /// Source address for masqueraded service traffic (external clients, other hosts): replies
    /// to it come back to this node through the overlay.
    pub masquerade_ip: Ipv4Addr,
    /// Source address for service traffic that the dataplane hands back to this node's kernel
    /// (a backend on a node address or outside the cluster) from a client the kernel would
    /// take for itself (the host, or one masqueraded): an address of the pod CIDR that no pod
    /// and no kernel interface has (its network address), so the kernel accepts it from the
    /// host port and routes its replies back there.
    pub host_masquerade_ip: Ipv4Addr,
    /// Every IPv4 address of this node (its Node's status addresses; `underlay_ip` among
    /// them): traffic to one of them goes to the host port.
    pub addrs: Vec<Ipv4Addr>,
    /// Port id of the uplink.
    pub uplink_port: PortId,
    /// Port id of the host port.
    pub host_port: PortId,
}

/// What kind of port a port id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// The node's NIC.
    Uplink,
    /// The host port into the node's kernel.
    Host,
    /// A pod's veth; the pod's IP and MAC (anti-spoofing checks frames against them).
    Pod {
        /// The pod's IP.
        ip: Ipv4Addr,
        /// The pod's MAC.
        mac: MacAddr,
    },
    /// Not in use.
    Unused,
}

/// A pod attached to this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Pod's eth0 MAC.
    pub mac: MacAddr,
    /// The port its host-side veth is on.
    pub port: PortId,
    /// Network policy id (0 = none; enforcement comes later).
    pub policy_id: u32,
}

/// Builder input for another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteNodeSpec {
    /// Node name.
    pub name: String,
    /// Its underlay address (VTEP).
    pub underlay_ip: Ipv4Addr,
    /// MAC of the next hop towards it (the node itself on a flat underlay, else the gateway).
    pub next_hop_mac: MacAddr,
    /// Its pod CIDRs.
    pub pod_cidrs: Vec<Ipv4Net>,
    /// Its addresses (InternalIPs, ExternalIPs; `underlay_ip` may be among them): routed to it
    /// through the overlay, and accepted as inner sources from it.
    pub addrs: Vec<Ipv4Addr>,
}

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
    pub outer: [u8; ENCAP_LEN],
    /// Ones'-complement sum of the outer IPv4 header with length and checksum zero.
    pub outer_ip_sum: u32,
}

impl RemoteNode {
    /// True when an inner source `ip` may come from this node: one of its pods or its own
    /// addresses (its kernel answering a pod, or a host-network pod).
    #[inline]
    pub fn owns_source(&self, ip: u32) -> bool {
        self.pod_cidrs.iter().any(|c| c.contains_u32(ip))
            || self.addrs.iter().any(|a| u32::from(*a) == ip)
    }

    fn new(spec: &RemoteNodeSpec, node: &NodeFacts) -> Self {
        let mut h = [0u8; ENCAP_LEN];
        h[0..6].copy_from_slice(&spec.next_hop_mac.0);
        h[6..12].copy_from_slice(&node.underlay_mac.0);
        h[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        {
            let mut ip = ipv4::Ipv4Packet::new_unchecked(&mut h[14..34]);
            ip.write_header(
                0,
                0,
                0,
                ipv4::FLAG_DF,
                64,
                proto::UDP,
                node.underlay_ip.into(),
                spec.underlay_ip.into(),
            );
        }
        // Checksum field back to zero; the base sum excludes length and checksum.
        h[24..26].copy_from_slice(&[0, 0]);
        let outer_ip_sum = checksum::sum(&h[14..34]) as u32;
        h[36..38].copy_from_slice(&node.vxlan_port.to_be_bytes());
        h[42] = crate::wire::vxlan::FLAG_VNI;
        h[46..49].copy_from_slice(&(node.vni & 0xff_ffff).to_be_bytes()[1..]);
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
            outer: h,
            outer_ip_sum,
        }
    }
}

/// One port of a service as the builder takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortSpec {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The service port (on ClusterIPs, LoadBalancer and external IPs).
    pub port: u16,
    /// The NodePort, if any.
    pub node_port: Option<u16>,
    /// Ready backends (address and target port) for this port.
    pub backends: Vec<SocketAddrV4>,
}

/// A service as the builder takes it (the control plane maps Service + EndpointSlices to this).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceSpec {
    /// `namespace/name`.
    pub name: String,
    /// ClusterIPs.
    pub cluster_ips: Vec<Ipv4Addr>,
    /// LoadBalancer ingress IPs.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// externalIPs.
    pub external_ips: Vec<Ipv4Addr>,
    /// Ports.
    pub ports: Vec<ServicePortSpec>,
    /// `sessionAffinity: ClientIP` timeout in seconds (None = no affinity).
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local`: external traffic only to this node's backends, client IP
    /// kept.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`: cluster traffic only to this node's backends.
    pub internal_local: bool,
}

/// A built service port: backends and their Maglev tables.
#[derive(Debug)]
pub struct Lb {
    /// `namespace/name:port/proto`, for inspection.
    pub name: String,
    /// IP protocol number.
    pub proto: u8,
    /// The service port.
    pub port: u16,
    /// Backends, sorted.
    pub backends: Box<[SocketAddrV4]>,
    /// Maglev over all backends.
    pub all: Maglev,
    /// Indexes (into `backends`) of this node's backends, and Maglev over them.
    pub local: Box<[u16]>,
    /// Maglev over `local`.
    pub local_table: Maglev,
    /// ClientIP affinity timeout in seconds; 0 = none.
    pub affinity_timeout: u32,
    /// externalTrafficPolicy Local.
    pub external_local: bool,
    /// internalTrafficPolicy Local.
    pub internal_local: bool,
}

impl Lb {
    /// Picks a backend for a flow hash: `external` says whether the traffic came in on a
    /// NodePort / LoadBalancer / external IP (the traffic policies differ).
    #[inline]
    pub fn pick(&self, hash: u64, external: bool) -> Option<SocketAddrV4> {
        let local_only = if external {
            self.external_local
        } else {
            self.internal_local
        };
        if local_only {
            let i = self.local_table.pick(hash)?;
            self.backends.get(*self.local.get(i)? as usize).copied()
        } else {
            self.backends.get(self.all.pick(hash)?).copied()
        }
    }

    /// Prefetches what [`Lb::pick`] will read for this hash.
    #[inline]
    pub fn prefetch_pick(&self, hash: u64, external: bool) {
        let local_only = if external {
            self.external_local
        } else {
            self.internal_local
        };
        if local_only {
            self.local_table.prefetch(hash);
        } else {
            self.all.prefetch(hash);
        }
    }

    /// True when `b` is one of this port's backends.
    pub fn has_backend(&self, b: SocketAddrV4) -> bool {
        self.backends.binary_search(&b).is_ok()
    }
}

/// Service lookup result.
#[derive(Debug, Clone, Copy)]
pub struct SvcHit<'a> {
    /// The service port.
    pub lb: &'a Lb,
    /// Whether the address is an external one (NodePort, LoadBalancer, externalIP).
    pub external: bool,
}

/// Longest-prefix match over a few prefix lengths: one hash map per length, longest first.
/// Pod CIDRs are usually all one length, so a lookup is one probe.
#[derive(Debug, Default, Clone)]
pub struct Lpm {
    by_len: Vec<(u32, IntMap<u32, u32>)>,
}

impl Lpm {
    fn insert(&mut self, net: Ipv4Net, v: u32) {
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
    eps: Vec<Endpoint>,
    base: u32,
    /// `index + 1` into `eps` per address offset in the CIDR; 0 = none.
    dense: Box<[u32]>,
    sparse: IntMap<u32, u32>,
}

impl LocalTable {
    fn new(cidr: Ipv4Net, eps: Vec<Endpoint>) -> Self {
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
struct DenseRoutes {
    base: u32,
    cluster_mask: u32,
    shift: u32,
    /// `node index + 1` per block; 0 = none.
    blocks: Box<[u32]>,
}

impl DenseRoutes {
    fn build(cluster: Ipv4Net, routes: &[(Ipv4Net, u32)]) -> Option<Self> {
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
    fn lookup(&self, ip: u32) -> Option<Option<u32>> {
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
    nodes: Vec<RemoteNode>,
    /// Underlay address -> node (VXLAN sources).
    by_ip: IntMap<u32, u32>,
    /// Every address of every remote node -> node (routing to node addresses).
    by_addr: IntMap<u32, u32>,
    routes: Lpm,
    dense: Option<DenseRoutes>,
}

/// Service frontends.
#[derive(Debug, Default)]
struct SvcIndex {
    /// (ip, port, proto) -> lb index << 1 | external
    by_addr: crate::hash::FlatMap,
    /// (node port, proto) -> lb index
    by_node_port: IntMap<u32, u32>,
    /// The lowest and highest NodePort in use (`(u16::MAX, 0)` when none): most packets are for
    /// other ports and skip the NodePort probe with two compares.
    node_ports: (u16, u16),
    /// Every service address (for ICMP echo).
    vips: IntMap<u32, ()>,
}

#[inline]
fn svc_key(ip: u32, port: u16, proto: u8) -> u64 {
    ((ip as u64) << 32) | ((port as u64) << 8) | proto as u64
}

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

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// Two services claim the same address and port.
    #[error("services {0} and {1} both claim {2}")]
    FrontendConflict(String, String, String),
    /// A pod's address is outside this node's pod CIDR.
    #[error("endpoint {ip} is outside this node's pod CIDR {cidr}")]
    EndpointOutsideCidr {
        /// Pod IP.
        ip: Ipv4Addr,
        /// This node's CIDR.
        cidr: Ipv4Net,
    },
    /// A pod was given a port that another pod, the uplink or the host port has.
    #[error("port {port} is already used by {by}")]
    PortInUse {
        /// The port.
        port: PortId,
        /// Who has it.
        by: String,
    },
    /// A service port has more backends than a Maglev table can address.
    #[error("service {0} has {1} backends; at most {max} are supported", max = maglev::MAX_BACKENDS)]
    TooManyBackends(String, usize),
}

#[derive(Debug)]
struct SvcEntry {
    spec: ServiceSpec,
    built: Vec<Arc<Lb>>,
    /// Position of `built[0]` in the last published lbs vector.
    offset: usize,
}

/// Builds [`Fib`] snapshots from cluster state. Keeps the inputs and the last snapshot so a
/// small change produces a new snapshot sharing everything that did not change.
#[derive(Debug)]
pub struct FibBuilder {
    node: Arc<NodeFacts>,
    ports: Vec<PortKind>,
    endpoints: BTreeMap<Ipv4Addr, Endpoint>,
    nodes: BTreeMap<String, RemoteNodeSpec>,
    services: BTreeMap<String, SvcEntry>,
    generation: u64,
    last: Option<Fib>,
    dirty_ports: bool,
    dirty_endpoints: bool,
    dirty_nodes: bool,
    /// Services whose frontends (addresses, ports) changed or that were added/removed.
    dirty_index: bool,
    /// Services whose backends changed (frontends same).
    dirty_backends: Vec<String>,
    warnings: Vec<BuildError>,
}

impl FibBuilder {
    /// A builder for `node` with no pods, nodes or services.
    pub fn new(node: NodeFacts) -> Self {
        let mut ports = vec![PortKind::Unused; (node.uplink_port.max(node.host_port) + 1) as usize];
        ports[node.uplink_port as usize] = PortKind::Uplink;
        ports[node.host_port as usize] = PortKind::Host;
        Self {
            node: Arc::new(node),
            ports,
            endpoints: BTreeMap::new(),
            nodes: BTreeMap::new(),
            services: BTreeMap::new(),
            generation: 0,
            last: None,
            dirty_ports: true,
            dirty_endpoints: true,
            dirty_nodes: true,
            dirty_index: true,
            dirty_backends: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// This node's facts.
    pub fn node(&self) -> &NodeFacts {
        &self.node
    }

    /// Replaces this node's facts (everything is rebuilt).
    pub fn set_node(&mut self, node: NodeFacts) {
        if *self.node != node {
            let mut b = FibBuilder::new(node);
            b.endpoints = std::mem::take(&mut self.endpoints);
            b.nodes = std::mem::take(&mut self.nodes);
            b.services = std::mem::take(&mut self.services);
            b.generation = self.generation;
            for ep in b.endpoints.values() {
                let i = ep.port as usize;
                if b.ports.len() <= i {
                    b.ports.resize(i + 1, PortKind::Unused);
                }
                b.ports[i] = PortKind::Pod {
                    ip: ep.ip,
                    mac: ep.mac,
                };
            }
            for s in b.services.values_mut() {
                s.built.clear();
            }
            *self = b;
        }
    }

    /// Adds or replaces a local pod.
    pub fn upsert_endpoint(&mut self, ep: Endpoint) -> Result<(), BuildError> {
        if !self.node.pod_cidr.contains(ep.ip) {
            return Err(BuildError::EndpointOutsideCidr {
                ip: ep.ip,
                cidr: self.node.pod_cidr,
            });
        }
        if self.endpoints.get(&ep.ip) == Some(&ep) {
            return Ok(());
        }
        match self.ports.get(ep.port as usize) {
            Some(PortKind::Uplink | PortKind::Host) => {
                return Err(BuildError::PortInUse {
                    port: ep.port,
                    by: "the node".into(),
                });
            }
            Some(PortKind::Pod { ip, .. }) if *ip != ep.ip => {
                return Err(BuildError::PortInUse {
                    port: ep.port,
                    by: ip.to_string(),
                });
            }
            _ => {}
        }
        if let Some(old) = self.endpoints.insert(ep.ip, ep) {
            if old.port != ep.port {
                self.ports[old.port as usize] = PortKind::Unused;
            }
        }
        let i = ep.port as usize;
        if self.ports.len() <= i {
            self.ports.resize(i + 1, PortKind::Unused);
        }
        self.ports[i] = PortKind::Pod {
            ip: ep.ip,
            mac: ep.mac,
        };
        self.dirty_endpoints = true;
        self.dirty_ports = true;
        Ok(())
    }

    /// Removes a local pod; true when it was there.
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> bool {
        match self.endpoints.remove(&ip) {
            Some(ep) => {
                self.ports[ep.port as usize] = PortKind::Unused;
                self.dirty_endpoints = true;
                self.dirty_ports = true;
                true
            }
            None => false,
        }
    }

    /// Adds or replaces another node.
    pub fn upsert_node(&mut self, spec: RemoteNodeSpec) {
        if self.nodes.get(&spec.name) != Some(&spec) {
            self.nodes.insert(spec.name.clone(), spec);
            self.dirty_nodes = true;
        }
    }

    /// Removes another node; true when it was there.
    pub fn remove_node(&mut self, name: &str) -> bool {
        let had = self.nodes.remove(name).is_some();
        self.dirty_nodes |= had;
        had
    }

    /// Adds or replaces a service.
    pub fn upsert_service(&mut self, spec: ServiceSpec) -> Result<(), BuildError> {
        for p in &spec.ports {
            if p.backends.len() > maglev::MAX_BACKENDS {
                return Err(BuildError::TooManyBackends(
                    spec.name.clone(),
                    p.backends.len(),
                ));
            }
        }
        match self.services.get_mut(&spec.name) {
            Some(e) if e.spec == spec => {}
            Some(e) => {
                let frontends_same = e.spec.cluster_ips == spec.cluster_ips
                    && e.spec.load_balancer_ips == spec.load_balancer_ips
                    && e.spec.external_ips == spec.external_ips
                    && e.spec.ports.len() == spec.ports.len()
                    && e.spec.ports.iter().zip(&spec.ports).all(|(a, b)| {
                        a.protocol == b.protocol && a.port == b.port && a.node_port == b.node_port
                    });
                if frontends_same && !e.built.is_empty() {
                    self.dirty_backends.push(spec.name.clone());
                } else {
                    self.dirty_index = true;
                }
                e.spec = spec;
                e.built.clear();
            }
            None => {
                self.dirty_index = true;
                self.services.insert(
                    spec.name.clone(),
                    SvcEntry {
                        spec,
                        built: Vec::new(),
                        offset: 0,
                    },
                );
            }
        }
        Ok(())
    }

    /// Removes a service; true when it was there.
    pub fn remove_service(&mut self, name: &str) -> bool {
        let had = self.services.remove(name).is_some();
        self.dirty_index |= had;
        had
    }

    /// Addresses of the local endpoints held.
    pub fn endpoint_ips(&self) -> Vec<Ipv4Addr> {
        self.endpoints.keys().copied().collect()
    }

    /// Names of the other nodes held.
    pub fn remote_names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// Names of the services held.
    pub fn service_names(&self) -> Vec<String> {
        self.services.keys().cloned().collect()
    }

    /// The services held, as given.
    pub fn service_specs(&self) -> impl Iterator<Item = &ServiceSpec> {
        self.services.values().map(|e| &e.spec)
    }

    /// Number of services.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// True when something changed since the last [`FibBuilder::build`].
    pub fn is_dirty(&self) -> bool {
        self.last.is_none()
            || self.dirty_ports
            || self.dirty_endpoints
            || self.dirty_nodes
            || self.dirty_index
            || !self.dirty_backends.is_empty()
    }

    fn build_lbs(node: &NodeFacts, spec: &ServiceSpec) -> Vec<Arc<Lb>> {
        // Ports of one service usually share their backend set: build each Maglev table once.
        let mut built: Vec<(Vec<SocketAddrV4>, Maglev, Maglev)> = Vec::new();
        spec.ports
            .iter()
            .map(|p| {
                let mut backends = p.backends.clone();
                backends.sort();
                backends.dedup();
                let local: Vec<u16> = backends
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| {
                        node.pod_cidr.contains(*b.ip())
                            || *b.ip() == node.underlay_ip
                            || node.addrs.contains(b.ip())
                    })
                    .map(|(i, _)| i as u16)
                    .collect();
                let (all, local_table) = match built.iter().find(|(b, _, _)| *b == backends) {
                    Some((_, a, l)) => (a.clone(), l.clone()),
                    None => {
                        let local_addrs: Vec<SocketAddrV4> =
                            local.iter().map(|&i| backends[i as usize]).collect();
                        let t = (Maglev::new(&backends), Maglev::new(&local_addrs));
                        built.push((backends.clone(), t.0.clone(), t.1.clone()));
                        t
                    }
                };
                let proto_name = match p.protocol {
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                };
                Arc::new(Lb {
                    name: format!("{}:{}/{}", spec.name, p.port, proto_name),
                    proto: p.protocol.number(),
                    port: p.port,
                    all,
                    local_table,
                    local: local.into_boxed_slice(),
                    backends: backends.into_boxed_slice(),
                    affinity_timeout: spec.affinity_timeout.unwrap_or(0),
                    external_local: spec.external_local,
                    internal_local: spec.internal_local,
                })
            })
            .collect()
    }

    /// Builds the next snapshot (a new generation even if nothing changed). Never fails: input
    /// problems are refused at `upsert_*` or reported in [`FibBuilder::warnings`].
    pub fn build(&mut self) -> Fib {
        let node = self.node.clone();
        let last = self.last.take();

        let ports: Arc<[PortKind]> = match &last {
            Some(l) if !self.dirty_ports => l.ports.clone(),
            _ => self.ports.clone().into(),
        };
        let endpoints = match &last {
            Some(l) if !self.dirty_endpoints => l.endpoints.clone(),
            _ => Arc::new(LocalTable::new(
                node.pod_cidr,
                self.endpoints.values().copied().collect(),
            )),
        };
        let remotes = match &last {
            Some(l) if !self.dirty_nodes => l.remotes.clone(),
            _ => {
                let mut r = Remotes::default();
                let mut all = Vec::new();
                for spec in self.nodes.values() {
                    if spec.underlay_ip == node.underlay_ip {
                        continue; // ourselves
                    }
                    let i = r.nodes.len() as u32;
                    r.nodes.push(RemoteNode::new(spec, &node));
                    r.by_ip.insert(spec.underlay_ip.into(), i);
                    for a in std::iter::once(&spec.underlay_ip).chain(&spec.addrs) {
                        if !node.addrs.contains(a) {
                            r.by_addr.entry((*a).into()).or_insert(i);
                        }
                    }
                    for c in &spec.pod_cidrs {
                        r.routes.insert(*c, i);
                        all.push((*c, i));
                    }
                }
                r.dense = DenseRoutes::build(node.cluster_cidr, &all);
                Arc::new(r)
            }
        };

        let (lbs, index) = match &last {
            Some(l) if !self.dirty_index => {
                if self.dirty_backends.is_empty() {
                    (l.lbs.clone(), l.index.clone())
                } else {
                    let mut lbs: Vec<Arc<Lb>> = l.lbs.as_ref().clone();
                    for name in &self.dirty_backends {
                        if let Some(e) = self.services.get_mut(name) {
                            if e.built.is_empty() {
                                e.built = Self::build_lbs(&node, &e.spec);
                            }
                            for (k, lb) in e.built.iter().enumerate() {
                                lbs[e.offset + k] = lb.clone();
                            }
                        }
                    }
                    (Arc::new(lbs), l.index.clone())
                }
            }
            _ => {
                let (lbs, index, warnings) = Self::build_index(&node, &mut self.services);
                self.warnings = warnings;
                (Arc::new(lbs), Arc::new(index))
            }
        };

        self.generation += 1;
        let fib = Fib {
            generation: self.generation,
            node,
            ports,
            endpoints,
            remotes,
            lbs,
            index,
        };
        self.dirty_ports = false;
        self.dirty_endpoints = false;
        self.dirty_nodes = false;
        self.dirty_index = false;
        self.dirty_backends.clear();
        self.last = Some(fib.clone());
        fib
    }

    /// Problems found by the last build that rebuilt the service index (conflicting frontends:
    /// the service whose name sorts first keeps the address; the other loses only that frontend).
    pub fn warnings(&self) -> &[BuildError] {
        &self.warnings
    }

    /// Builds the Maglev tables of `todo` on all cores (a full build is thousands of tables).
    fn build_missing(node: &NodeFacts, mut todo: Vec<&mut SvcEntry>) {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        if todo.len() < 64 || threads == 1 {
            for e in todo {
                e.built = Self::build_lbs(node, &e.spec);
            }
            return;
        }
        let per = todo.len().div_ceil(threads);
        std::thread::scope(|s| {
            for chunk in todo.chunks_mut(per) {
                s.spawn(move || {
                    for e in chunk.iter_mut() {
                        e.built = Self::build_lbs(node, &e.spec);
                    }
                });
            }
        });
    }

    fn build_index(
        node: &NodeFacts,
        services: &mut BTreeMap<String, SvcEntry>,
    ) -> (Vec<Arc<Lb>>, SvcIndex, Vec<BuildError>) {
        let mut lbs = Vec::new();
        let mut index = SvcIndex {
            node_ports: (u16::MAX, 0),
            ..SvcIndex::default()
        };
        let mut by_addr: Vec<(u64, u32)> = Vec::new();
        let mut warnings = Vec::new();
        let mut owner: IntMap<u64, String> = IntMap::default();
        let mut np_owner: IntMap<u32, String> = IntMap::default();
        Self::build_missing(
            node,
            services
                .values_mut()
                .filter(|e| e.built.is_empty())
                .collect(),
        );
        for e in services.values_mut() {
            e.offset = lbs.len();
            for (k, p) in e.spec.ports.iter().enumerate() {
                let li = (e.offset + k) as u32;
                let pr = p.protocol.number();
                let addrs = e
                    .spec
                    .cluster_ips
                    .iter()
                    .map(|ip| (ip, 0))
                    .chain(e.spec.load_balancer_ips.iter().map(|ip| (ip, 1)))
                    .chain(e.spec.external_ips.iter().map(|ip| (ip, 1)));
                for (ip, ext) in addrs {
                    let key = svc_key((*ip).into(), p.port, pr);
                    match owner.get(&key) {
                        Some(o) if *o != e.spec.name => {
                            warnings.push(BuildError::FrontendConflict(
                                o.clone(),
                                e.spec.name.clone(),
                                format!("{ip}:{}", p.port),
                            ));
                            continue;
                        }
                        _ => {}
                    }
                    owner.insert(key, e.spec.name.clone());
                    by_addr.push((key, (li << 1) | ext));
                    index.vips.insert((*ip).into(), ());
                }
                if let Some(np) = p.node_port {
                    let key = ((np as u32) << 8) | pr as u32;
                    match np_owner.get(&key) {
                        Some(o) if *o != e.spec.name => {
                            warnings.push(BuildError::FrontendConflict(
                                o.clone(),
                                e.spec.name.clone(),
                                format!("nodePort {np}"),
                            ));
                            continue;
                        }
                        _ => {}
                    }
                    np_owner.insert(key, e.spec.name.clone());
                    index.by_node_port.insert(key, li);
                    let (lo, hi) = index.node_ports;
                    index.node_ports = (lo.min(np), hi.max(np));
                }
            }
            lbs.extend(e.built.iter().cloned());
        }
        index.by_addr = crate::hash::FlatMap::new(&by_addr);
        (lbs, index, warnings)
    }
}

#[cfg(test)]
mod tests;
