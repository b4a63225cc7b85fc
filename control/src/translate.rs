//! Cluster state -> what the table should hold: a pure function, no I/O.
//!
//! Services map the way kube-proxy maps them: ClusterIPs, NodePorts, LoadBalancer ingress IPs
//! and externalIPs; backends from the EndpointSlices labelled with the service's name, matched
//! to service ports by port name and protocol; ready endpoints (an unset `ready` counts as
//! ready), or when none is ready the serving-and-terminating ones (KEP-1669). IPv6, SCTP and
//! ExternalName are skipped with a warning.
//!
//! Local pods are this node's Pods with an IPv4 podIP that are not hostNetwork and not
//! finished. With the file source the pod's host-side interface and MAC come from the
//! annotations [`ANN_INTERFACE`] and [`ANN_MAC`] (and [`ANN_TAP_NETNS`] for a tap; the lab writes
//! them); pods the CNI endpoint
//! wires reach the table from the endpoint itself, not from here.

use crate::state::ClusterState;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use xdpnet_dataplane::fib::{Ipv4Net, NodeFacts, PortId, Protocol, ServicePortSpec, ServiceSpec};
use xdpnet_dataplane::wire::MacAddr;

/// Pod annotation: name of the pod's host-side interface on this node.
pub const ANN_INTERFACE: &str = "xdpnet.io/interface";
/// Pod annotation: the pod's interface is a persistent tap (`eth0`, or
/// [`ANN_TAP_IFNAME`]) in this network namespace (a path), not a veth.
pub const ANN_TAP_NETNS: &str = "xdpnet.io/tap-netns";
/// Pod annotation: the tap's name in [`ANN_TAP_NETNS`] (default `eth0`).
pub const ANN_TAP_IFNAME: &str = "xdpnet.io/tap-ifname";
/// Pod annotation: MAC of the pod's interface.
pub const ANN_MAC: &str = "xdpnet.io/mac";
pub use crate::state::LABEL_SERVICE;
/// Default ClientIP affinity timeout (Kubernetes' default).
pub const DEFAULT_AFFINITY_SECS: u32 = 10_800;

/// What this node's daemon knows about itself besides the cluster objects.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// This node's name.
    pub node_name: String,
    /// MAC of the uplink.
    pub underlay_mac: MacAddr,
    /// MAC of the kernel end of the host port.
    pub host_mac: MacAddr,
    /// MAC the dataplane answers with for the gateway.
    pub gateway_mac: MacAddr,
    /// VXLAN network identifier.
    pub vni: u32,
    /// VXLAN UDP port.
    pub vxlan_port: u16,
    /// Underlay MTU.
    pub mtu: u16,
    /// The cluster's pod CIDR.
    pub cluster_cidr: Ipv4Net,
    /// This node's pod CIDR when configured (otherwise its Node's `spec.podCIDR`).
    pub pod_cidr: Option<Ipv4Net>,
    /// Port id of the uplink.
    pub uplink_port: PortId,
    /// Port id of the host port.
    pub host_port: PortId,
}

/// Another node as the cluster describes it (its next-hop MAC is resolved separately).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherNode {
    /// Node name.
    pub name: String,
    /// InternalIP.
    pub underlay_ip: Ipv4Addr,
    /// Pod CIDRs.
    pub pod_cidrs: Vec<Ipv4Net>,
    /// Every IPv4 address in its status (InternalIPs, ExternalIPs).
    pub addrs: Vec<Ipv4Addr>,
}

/// A pod of this node to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPod {
    /// `namespace/name`.
    pub key: String,
    /// Its IP.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: MacAddr,
    /// Host-side interface (for a tap: the key its port goes by).
    pub ifname: String,
    /// The pod's interface is a tap there ([`ANN_TAP_NETNS`]).
    pub tap: Option<crate::podnet::TapPlace>,
}

/// Why no table can be built yet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    /// Our own Node object is missing.
    #[error("node {0:?} is not in the cluster state")]
    NoSuchNode(String),
    /// Our Node has no usable address.
    #[error("node {0:?} has no IPv4 InternalIP address")]
    NoAddress(String),
    /// Our Node has no pod CIDR.
    #[error("node {0:?} has no IPv4 podCIDR")]
    NoPodCidr(String),
    /// The cluster CIDR does not contain our pod CIDR.
    #[error("pod CIDR {pod} of this node is outside the cluster CIDR {cluster}")]
    CidrOutsideCluster {
        /// Ours.
        pod: Ipv4Net,
        /// The cluster's.
        cluster: Ipv4Net,
    },
}

fn internal_ip(n: &Node) -> Option<Ipv4Addr> {
    n.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

/// Every IPv4 address in a Node's status (InternalIP, ExternalIP; names are skipped), in
/// order, without repeats.
fn node_addrs(n: &Node) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    let addrs = n.status.as_ref().and_then(|s| s.addresses.as_ref());
    for a in addrs.into_iter().flatten() {
        if let Ok(ip) = a.address.parse::<Ipv4Addr>() {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

fn pod_cidrs(n: &Node) -> Vec<Ipv4Net> {
    let Some(spec) = n.spec.as_ref() else {
        return Vec::new();
    };
    let mut out: Vec<Ipv4Net> = spec
        .pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .filter_map(|c| c.parse().ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// This node's facts from its Node object and the local configuration.
pub fn node_facts(st: &ClusterState, cfg: &LocalConfig) -> Result<NodeFacts, TranslateError> {
    let me = st
        .nodes
        .get(&cfg.node_name)
        .ok_or_else(|| TranslateError::NoSuchNode(cfg.node_name.clone()))?;
    let underlay_ip =
        internal_ip(me).ok_or_else(|| TranslateError::NoAddress(cfg.node_name.clone()))?;
    let pod_cidr = match cfg.pod_cidr {
        Some(c) => c,
        None => *pod_cidrs(me)
            .first()
            .ok_or_else(|| TranslateError::NoPodCidr(cfg.node_name.clone()))?,
    };
    if !(cfg.cluster_cidr.contains(pod_cidr.addr())
        && cfg.cluster_cidr.prefix_len() <= pod_cidr.prefix_len())
    {
        return Err(TranslateError::CidrOutsideCluster {
            pod: pod_cidr,
            cluster: cfg.cluster_cidr,
        });
    }
    let gateway_ip = Ipv4Addr::from(pod_cidr.addr_u32() + 1);
    Ok(NodeFacts {
        name: cfg.node_name.clone(),
        underlay_ip,
        underlay_mac: cfg.underlay_mac,
        vni: cfg.vni,
        vxlan_port: cfg.vxlan_port,
        mtu: cfg.mtu,
        pod_cidr,
        cluster_cidr: cfg.cluster_cidr,
        gateway_ip,
        gateway_mac: cfg.gateway_mac,
        host_mac: cfg.host_mac,
        masquerade_ip: gateway_ip,
        host_masquerade_ip: pod_cidr.addr(),
        addrs: node_addrs(me),
        uplink_port: cfg.uplink_port,
        host_port: cfg.host_port,
    })
}

/// The other nodes (with warnings for unusable ones).
pub fn remotes(st: &ClusterState, cfg: &LocalConfig, warnings: &mut Vec<String>) -> Vec<OtherNode> {
    let mut remotes = Vec::new();
    for (name, n) in &st.nodes {
        if *name == cfg.node_name {
            continue;
        }
        match (internal_ip(n), pod_cidrs(n)) {
            (Some(ip), cidrs) if !cidrs.is_empty() => remotes.push(OtherNode {
                name: name.clone(),
                underlay_ip: ip,
                pod_cidrs: cidrs,
                addrs: node_addrs(n),
            }),
            _ => warnings.push(format!(
                "node {name}: no IPv4 InternalIP or podCIDR, skipped"
            )),
        }
    }
    remotes
}

/// This node's pods to attach (with warnings for pods that cannot be).
pub fn local_pods(
    st: &ClusterState,
    cfg: &LocalConfig,
    warnings: &mut Vec<String>,
) -> Vec<LocalPod> {
    let mut local_pods = Vec::new();
    for (key, p) in &st.pods {
        let Some(spec) = p.spec.as_ref() else {
            continue;
        };
        if spec.node_name.as_deref() != Some(cfg.node_name.as_str())
            || spec.host_network == Some(true)
        {
            continue;
        }
        let status = p.status.as_ref();
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            continue;
        }
        let Some(ip) = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let ann = p.metadata.annotations.as_ref();
        let ifname = ann.and_then(|a| a.get(ANN_INTERFACE));
        let mac = ann
            .and_then(|a| a.get(ANN_MAC))
            .and_then(|m| m.parse::<MacAddr>().ok());
        let tap = ann
            .and_then(|a| a.get(ANN_TAP_NETNS))
            .map(|ns| crate::podnet::TapPlace {
                netns: ns.into(),
                ifname: ann
                    .and_then(|a| a.get(ANN_TAP_IFNAME))
                    .cloned()
                    .unwrap_or_else(|| "eth0".into()),
            });
        match (ifname, mac) {
            (Some(i), Some(mac)) if !i.is_empty() && i.len() < 16 => local_pods.push(LocalPod {
                key: key.clone(),
                ip,
                mac,
                ifname: i.clone(),
                tap,
            }),
            _ => warnings.push(format!(
                "pod {key}: no valid {ANN_INTERFACE} / {ANN_MAC} annotations, not attached"
            )),
        }
    }
    local_pods
}

/// The spec of service `key` (`namespace/name`), None when it has none (deleted,
/// ExternalName, headless without ports...).
pub fn service_spec(
    st: &ClusterState,
    key: &str,
    warnings: &mut Vec<String>,
) -> Option<ServiceSpec> {
    service(key, st.services.get(key)?, st, warnings)
}

fn parse_protocol(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        _ => None,
    }
}

fn service(
    key: &str,
    s: &Service,
    st: &ClusterState,
    warnings: &mut Vec<String>,
) -> Option<ServiceSpec> {
    let spec = s.spec.as_ref()?;
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if ty == "ExternalName" {
        return None;
    }
    let v4 = |v: &str| v.parse::<Ipv4Addr>().ok();
    let mut cluster_ips: Vec<Ipv4Addr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| v4(ip))
        .collect();
    cluster_ips.sort();
    cluster_ips.dedup();
    let external_ips: Vec<Ipv4Addr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| v4(ip))
        .collect();
    let load_balancer_ips: Vec<Ipv4Addr> = if ty == "LoadBalancer" {
        s.status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref().and_then(v4))
            .collect()
    } else {
        Vec::new()
    };
    let slices: Vec<&EndpointSlice> = st
        .slices_of(key)
        .filter(|sl| sl.address_type == "IPv4")
        .collect();
    let mut ports = Vec::new();
    for sp in spec.ports.iter().flatten() {
        let Some(protocol) = parse_protocol(sp.protocol.as_deref()) else {
            warnings.push(format!(
                "service {key}: protocol {:?} not supported, port skipped",
                sp.protocol
            ));
            continue;
        };
        let Ok(port) = u16::try_from(sp.port) else {
            warnings.push(format!("service {key}: port {} out of range", sp.port));
            continue;
        };
        let node_port = if matches!(ty, "NodePort" | "LoadBalancer") {
            sp.node_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|&p| p != 0)
        } else {
            None
        };
        let pname = sp.name.as_deref().unwrap_or("");
        let mut ready = BTreeSet::new();
        let mut terminating = BTreeSet::new();
        for sl in &slices {
            for ep_port in sl.ports.iter().flatten() {
                if ep_port.name.as_deref().unwrap_or("") != pname
                    || parse_protocol(ep_port.protocol.as_deref()) != Some(protocol)
                {
                    continue;
                }
                let Some(target) = ep_port.port.and_then(|p| u16::try_from(p).ok()) else {
                    continue;
                };
                for ep in &sl.endpoints {
                    let c = ep.conditions.as_ref();
                    let is_ready = c.and_then(|c| c.ready).unwrap_or(true);
                    let serving = c.and_then(|c| c.serving).unwrap_or(is_ready);
                    let term = c.and_then(|c| c.terminating).unwrap_or(false);
                    for a in &ep.addresses {
                        let Some(ip) = v4(a) else { continue };
                        if is_ready && !term {
                            ready.insert(SocketAddrV4::new(ip, target));
                        } else if serving && term {
                            terminating.insert(SocketAddrV4::new(ip, target));
                        }
                    }
                }
            }
        }
        let backends = if ready.is_empty() { terminating } else { ready };
        ports.push(ServicePortSpec {
            protocol,
            port,
            node_port,
            backends: backends.into_iter().collect(),
        });
    }
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(DEFAULT_AFFINITY_SECS)
    });
    Some(ServiceSpec {
        name: key.to_string(),
        cluster_ips,
        load_balancer_ips,
        external_ips,
        ports,
        affinity_timeout,
        external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything the table should hold.
    #[derive(Debug, Clone)]
    struct Desired {
        /// This node.
        node: NodeFacts,
        /// Other nodes.
        remotes: Vec<OtherNode>,
        /// Services.
        services: Vec<ServiceSpec>,
        /// This node's pods.
        local_pods: Vec<LocalPod>,
        /// Objects skipped, with why.
        warnings: Vec<String>,
    }

    /// The table's inputs from the cluster state (everything at once).
    fn desired(st: &ClusterState, cfg: &LocalConfig) -> Result<Desired, TranslateError> {
        let node = node_facts(st, cfg)?;
        let mut warnings = Vec::new();
        let remotes = remotes(st, cfg, &mut warnings);
        let mut services = Vec::new();
        for key in st.services.keys() {
            if let Some(spec) = service_spec(st, key, &mut warnings) {
                services.push(spec);
            }
        }
        let local_pods = local_pods(st, cfg, &mut warnings);
        Ok(Desired {
            node,
            remotes,
            services,
            local_pods,
            warnings,
        })
    }

    use std::path::Path;

    fn cfg() -> LocalConfig {
        LocalConfig {
            pod_cidr: None,
            node_name: "node-1".into(),
            underlay_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            host_mac: MacAddr([2, 0, 0, 0, 1, 1]),
            gateway_mac: MacAddr([2, 0, 0, 0, 2, 1]),
            vni: 1,
            vxlan_port: 4789,
            mtu: 1500,
            cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
            uplink_port: 0,
            host_port: 1,
        }
    }

    const STATE: &str = r#"
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: Hostname, address: n1}, {type: InternalIP, address: 198.18.0.11}]}
---
kind: Node
metadata: {name: node-2}
spec: {podCIDRs: [10.244.2.0/24, "fd00::/64"]}
status: {addresses: [{type: InternalIP, address: 198.18.0.12}, {type: Hostname, address: n2}, {type: ExternalIP, address: 203.0.113.12}, {type: InternalIP, address: "fd00::12"}]}
---
kind: Pod
metadata: {name: a, namespace: demo, annotations: {xdpnet.io/interface: xnpod0, xdpnet.io/mac: "02:00:0a:f4:01:0a"}}
spec: {nodeName: node-1, containers: []}
status: {podIP: 10.244.1.10}
---
kind: Pod
metadata: {name: noann, namespace: demo}
spec: {nodeName: node-1, containers: []}
status: {podIP: 10.244.1.11}
---
kind: Pod
metadata: {name: other, namespace: demo}
spec: {nodeName: node-2, containers: []}
status: {podIP: 10.244.2.10}
---
kind: Service
metadata: {name: web, namespace: demo}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  externalTrafficPolicy: Local
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP}
  - {name: s, port: 9, protocol: SCTP}
---
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- addresses: [10.244.1.10]
- addresses: [10.244.2.10]
  conditions: {ready: true}
- addresses: [10.244.2.11]
  conditions: {ready: false, serving: true, terminating: true}
---
kind: EndpointSlice
metadata: {name: web-other-ns, namespace: other, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 1, protocol: TCP}]
endpoints: [{addresses: [10.244.2.99]}]
"#;

    fn state(text: &str) -> ClusterState {
        let mut st = ClusterState::default();
        st.add_yaml(Path::new("t"), text).expect("valid");
        st
    }

    #[test]
    fn a_configured_pod_cidr_overrides_the_nodes() {
        let mut c = cfg();
        c.pod_cidr = Some("10.244.7.0/24".parse().expect("cidr"));
        let f = node_facts(&state(STATE), &c).expect("facts");
        assert_eq!(f.pod_cidr, c.pod_cidr.expect("set"));
        assert_eq!(f.gateway_ip, Ipv4Addr::new(10, 244, 7, 1));
        c.pod_cidr = Some("10.9.0.0/24".parse().expect("cidr"));
        assert!(
            node_facts(&state(STATE), &c).is_err(),
            "outside the cluster CIDR"
        );
    }

    #[test]
    fn maps_nodes_services_and_pods() {
        let d = desired(&state(STATE), &cfg()).expect("builds");
        assert_eq!(d.node.underlay_ip, Ipv4Addr::new(198, 18, 0, 11));
        assert_eq!(d.node.gateway_ip, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(d.remotes.len(), 1);
        assert_eq!(
            d.remotes[0].pod_cidrs,
            vec!["10.244.2.0/24".parse().expect("cidr")]
        );
        // Every IPv4 address of the Node's status (names and IPv6 skipped).
        assert_eq!(
            d.remotes[0].addrs,
            vec![
                Ipv4Addr::new(198, 18, 0, 12),
                Ipv4Addr::new(203, 0, 113, 12)
            ]
        );
        assert_eq!(d.node.addrs, vec![Ipv4Addr::new(198, 18, 0, 11)]);
        assert_eq!(d.node.host_masquerade_ip, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(d.local_pods.len(), 1);
        assert_eq!(d.local_pods[0].ifname, "xnpod0");
        assert!(d.warnings.iter().any(|w| w.contains("demo/noann")));
        assert!(d.warnings.iter().any(|w| w.contains("SCTP")));
        let s = &d.services[0];
        assert_eq!(s.name, "demo/web");
        assert!(s.external_local);
        assert_eq!(s.affinity_timeout, Some(DEFAULT_AFFINITY_SECS));
        assert_eq!(s.ports.len(), 2);
        let http = &s.ports[0];
        assert_eq!(http.node_port, Some(30080));
        // Ready only (the terminating one is not used while others are ready), same namespace.
        assert_eq!(
            http.backends,
            vec![
                "10.244.1.10:8080".parse().expect("a"),
                "10.244.2.10:8080".parse().expect("a")
            ]
        );
        assert_eq!(s.ports[1].backends.len(), 2);
        assert_eq!(s.ports[1].backends[0].port(), 5353);
    }

    #[test]
    fn terminating_fallback_when_nothing_is_ready() {
        let text = STATE.replace("- addresses: [10.244.1.10]\n", "").replace(
            "- addresses: [10.244.2.10]\n  conditions: {ready: true}\n",
            "",
        );
        let d = desired(&state(&text), &cfg()).expect("builds");
        assert_eq!(
            d.services[0].ports[0].backends,
            vec!["10.244.2.11:8080".parse().expect("a")]
        );
    }

    #[test]
    fn own_node_problems_are_errors() {
        let mut c = cfg();
        c.node_name = "nope".into();
        assert_eq!(
            desired(&state(STATE), &c).expect_err("missing"),
            TranslateError::NoSuchNode("nope".into())
        );
        let st = state("kind: Node\nmetadata: {name: node-1}\nspec: {podCIDR: 10.244.1.0/24}\n");
        assert!(matches!(
            desired(&st, &cfg()),
            Err(TranslateError::NoAddress(_))
        ));
        let st = state(
            "kind: Node\nmetadata: {name: node-1}\nspec: {podCIDR: 10.9.1.0/24}\nstatus: {addresses: [{type: InternalIP, address: 1.2.3.4}]}\n",
        );
        assert!(matches!(
            desired(&st, &cfg()),
            Err(TranslateError::CidrOutsideCluster { .. })
        ));
    }
}
