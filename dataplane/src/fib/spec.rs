//! What the builder takes: this node's facts, its pods, other nodes and services, as the
//! control plane translates them from cluster objects. Plain data, compared by value (the
//! builder skips what did not change).

use super::{Ipv4Net, PortId};
use crate::wire::{MacAddr, proto};
use std::net::{Ipv4Addr, SocketAddrV4};

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
    /// Network policy id: its rules are `Fib::policy().get(policy_id)` (0 = no policy applies).
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
