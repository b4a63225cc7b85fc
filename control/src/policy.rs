//! Network policy: NetworkPolicy (`networking.k8s.io/v1`) and ClusterNetworkPolicy
//! (`policy.networking.k8s.io/v1alpha2`) compiled into the dataplane's
//! [`PolicyTable`](xdpnet_dataplane::policy::PolicyTable) for this node's pods.
//!
//! The compiler reads the cluster state (pods with their labels, IPs and named container
//! ports; namespaces and nodes with their labels; the policies) and gives, for each local pod
//! that some policy applies to, both directions' rules in their tiers, with every peer
//! resolved to an address set and every named port resolved on the pod that is the
//! destination (ingress: the local pod itself; egress: each peer pod, so one rule can open
//! different numbers on different pods). Semantics, as the API defines them:
//! - a pod is isolated for a direction when a NetworkPolicy selecting it has that direction
//!   in `policyTypes` (default: Ingress, plus Egress when the policy has egress rules); its
//!   allowed traffic is the union of those policies' rules; a rule's peers are OR'd and each
//!   pairs with each of its ports; no `from`/`to` means every peer, no `ports` every port;
//! - a peer with only `podSelector` means the policy's namespace, `namespaceSelector: {}`
//!   every namespace, both in one peer their AND; `ipBlock` with `except` (which only cuts its
//!   own peer); pod IPs match ipBlocks too;
//! - ports: a number, a named port (name and protocol must match on the destination pod; a
//!   pod without it is not opened), `endPort` (inclusive), protocol TCP by default, UDP,
//!   SCTP (a rule for SCTP never opens TCP);
//! - ClusterNetworkPolicy: `Admin` before NetworkPolicy, `Baseline` after; within a tier by
//!   `priority` (lower first; equal priorities by name), then rule order; `Accept`, `Deny`,
//!   `Pass`; subjects by namespaces or pods; peers namespaces, pods, nodes (their addresses)
//!   and networks; ports by number, range or name. A peer with none of the fields this
//!   version knows fails closed (an `Accept` matches nothing, a `Deny`/`Pass` everything);
//!   `domainNames` peers are not supported and match no address (a warning says so).
//!
//! Selectors that cannot be evaluated (an unknown operator) select nothing, with a warning;
//! the rest of the policy still applies.

use crate::state::ClusterState;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use xdpnet_dataplane::policy::{
    Action, AddrSet, Clause, DirPolicy, Origin, PodPolicy, PolicyTable, PortRange, Rule,
};

/// The label every namespace carries with its own name (the API server sets it).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;

/// A ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`): the fields this version
/// reads (unknown fields are ignored).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicy {
    /// Object metadata (cluster-scoped: a name).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default)]
    pub spec: CnpSpec,
}

/// `spec` of a ClusterNetworkPolicy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpSpec {
    /// `Admin` or `Baseline`.
    #[serde(default)]
    pub tier: String,
    /// 0..1000, lower first.
    #[serde(default)]
    pub priority: i32,
    /// The pods it applies to.
    #[serde(default)]
    pub subject: CnpSubject,
    /// Ingress rules, in order.
    #[serde(default)]
    pub ingress: Vec<CnpRule>,
    /// Egress rules, in order.
    #[serde(default)]
    pub egress: Vec<CnpRule>,
}

/// Exactly one of namespaces or pods.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpSubject {
    /// Every pod of the namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// The pods these select.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// Pods by namespace selector AND pod selector.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    /// Namespaces.
    #[serde(default)]
    pub namespace_selector: LabelSelector,
    /// Pods in them.
    #[serde(default)]
    pub pod_selector: LabelSelector,
}

/// One rule of either direction (`from` for ingress, `to` for egress).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpRule {
    /// For observability.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `Accept`, `Deny` or `Pass`.
    #[serde(default)]
    pub action: String,
    /// Ingress peers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<CnpPeer>,
    /// Egress peers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<CnpPeer>,
    /// Protocols and ports (none: all traffic).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<CnpProtocol>,
}

/// A peer: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpPeer {
    /// Every pod of these namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// These pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// These nodes' addresses (egress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// CIDRs (egress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// FQDNs (egress; not supported: matches no address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
}

/// One protocol entry: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpProtocol {
    /// TCP (to a port, or all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<CnpProtoPort>,
    /// UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<CnpProtoPort>,
    /// SCTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<CnpProtoPort>,
    /// A named container port of the destination pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_named_port: Option<String>,
}

/// A protocol's destination port (none: all).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpProtoPort {
    /// The port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<CnpPort>,
}

/// A number or a range.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpPort {
    /// One port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i32>,
    /// `start..=end`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<CnpRange>,
}

/// An inclusive port range.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CnpRange {
    /// First.
    pub start: i32,
    /// Last.
    pub end: i32,
}

impl kube::Resource for ClusterNetworkPolicy {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;
    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "ClusterNetworkPolicy".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "policy.networking.k8s.io".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1alpha2".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "clusternetworkpolicies".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A pod as policy sees it.
#[derive(Debug, Clone)]
struct PodView<'a> {
    ns: &'a str,
    labels: &'a BTreeMap<String, String>,
    ip: u32,
    /// Named container ports: (name, protocol, number).
    named: Vec<(&'a str, u8, u16)>,
}

impl PodView<'_> {
    fn named_port(&self, name: &str, proto: u8) -> Option<u16> {
        self.named
            .iter()
            .find(|(n, p, _)| *n == name && *p == proto)
            .map(|x| x.2)
    }
}

static EMPTY: BTreeMap<String, String> = BTreeMap::new();

fn proto_num(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(TCP),
        "UDP" => Some(UDP),
        "SCTP" => Some(SCTP),
        _ => None,
    }
}

/// The IPv4 address of a pod that policy can see (not host-network, not finished).
pub fn pod_ipv4(p: &Pod) -> Option<Ipv4Addr> {
    if p.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return None;
    }
    let st = p.status.as_ref()?;
    if matches!(st.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ips = st.pod_ips.iter().flatten().map(|i| i.ip.as_str());
    st.pod_ip
        .as_deref()
        .into_iter()
        .chain(ips)
        .find_map(|s| s.parse::<Ipv4Addr>().ok())
}

fn pod_view(p: &Pod) -> Option<PodView<'_>> {
    let ip = pod_ipv4(p)?;
    let mut named = Vec::new();
    for c in p.spec.iter().flat_map(|s| &s.containers) {
        for cp in c.ports.iter().flatten() {
            if let (Some(n), Some(proto), Ok(num)) = (
                cp.name.as_deref(),
                proto_num(cp.protocol.as_deref()),
                u16::try_from(cp.container_port),
            ) {
                named.push((n, proto, num));
            }
        }
    }
    Some(PodView {
        ns: p.metadata.namespace.as_deref().unwrap_or("default"),
        labels: p.metadata.labels.as_ref().unwrap_or(&EMPTY),
        ip: ip.into(),
        named,
    })
}

/// Whether `sel` selects `labels`; an error names what cannot be evaluated.
pub fn selects(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return Ok(false);
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let vals = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|h| vals.contains(h)),
            "NotIn" => have.is_none_or(|h| !vals.contains(h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            op => return Err(format!("unknown selector operator {op:?}")),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn parse_cidr(s: &str) -> Option<(u32, u8)> {
    let (a, l) = s.split_once('/')?;
    let a: Ipv4Addr = a.parse().ok()?;
    let l: u8 = l.parse().ok().filter(|l| *l <= 32)?;
    Some((a.into(), l))
}

/// A port entry before it is resolved on a destination pod.
#[derive(Debug, Clone, PartialEq)]
enum PortSpec {
    Num(PortRange),
    Named(u8, String),
}

/// Ports of a rule: `None` = every port of every protocol.
type Ports = Option<Vec<PortSpec>>;

fn np_ports(ports: Option<&Vec<NetworkPolicyPort>>, warn: &mut Vec<String>, what: &str) -> Ports {
    let ports = ports.filter(|p| !p.is_empty())?;
    let mut out = Vec::new();
    for p in ports {
        let Some(proto) = proto_num(p.protocol.as_deref()) else {
            warn.push(format!("{what}: unknown protocol {:?}", p.protocol));
            continue;
        };
        match &p.port {
            None => out.push(PortSpec::Num(PortRange {
                proto,
                lo: 0,
                hi: u16::MAX,
            })),
            Some(IntOrString::Int(n)) => {
                let lo = u16::try_from(*n).unwrap_or(0);
                let hi = p
                    .end_port
                    .and_then(|e| u16::try_from(e).ok())
                    .filter(|e| *e >= lo)
                    .unwrap_or(lo);
                out.push(PortSpec::Num(PortRange { proto, lo, hi }));
            }
            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                Ok(n) => out.push(PortSpec::Num(PortRange {
                    proto,
                    lo: n,
                    hi: n,
                })),
                Err(_) => out.push(PortSpec::Named(proto, s.clone())),
            },
        }
    }
    Some(out)
}

fn cnp_ports(protos: &[CnpProtocol], warn: &mut Vec<String>, what: &str) -> Ports {
    if protos.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for p in protos {
        let mut add = |proto: u8, pp: &CnpProtoPort| {
            let (lo, hi) = match &pp.destination_port {
                None => (0, u16::MAX),
                Some(CnpPort {
                    number: Some(n), ..
                }) => {
                    let n = u16::try_from(*n).unwrap_or(0);
                    (n, n)
                }
                Some(CnpPort { range: Some(r), .. }) => (
                    u16::try_from(r.start).unwrap_or(0),
                    u16::try_from(r.end).unwrap_or(0),
                ),
                Some(_) => (1, 0), // empty: matches nothing
            };
            out.push(PortSpec::Num(PortRange { proto, lo, hi }));
        };
        let mut any = false;
        if let Some(t) = &p.tcp {
            add(TCP, t);
            any = true;
        }
        if let Some(u) = &p.udp {
            add(UDP, u);
            any = true;
        }
        if let Some(s) = &p.sctp {
            add(SCTP, s);
            any = true;
        }
        if let Some(n) = &p.destination_named_port {
            // A named port carries its protocol on the pod: TCP, UDP and SCTP are tried.
            for proto in [TCP, UDP, SCTP] {
                out.push(PortSpec::Named(proto, n.clone()));
            }
            any = true;
        }
        if !any {
            warn.push(format!(
                "{what}: a protocol entry with no field this version knows (ignored)"
            ));
        }
    }
    Some(out)
}

/// Everything the compiler looks up, indexed once per compile.
struct Index<'a> {
    pods: Vec<PodView<'a>>,
    /// Pod indexes per namespace.
    by_ns: BTreeMap<&'a str, Vec<usize>>,
    /// Namespace labels (with the name label), for every namespace that has an object or a
    /// pod.
    ns_labels: BTreeMap<&'a str, BTreeMap<String, String>>,
    /// Node labels and IPv4 addresses.
    nodes: Vec<(&'a BTreeMap<String, String>, Vec<u32>)>,
}

impl<'a> Index<'a> {
    fn new(st: &'a ClusterState) -> Self {
        let pods: Vec<PodView<'a>> = st.pods.values().filter_map(pod_view).collect();
        let mut by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, p) in pods.iter().enumerate() {
            by_ns.entry(p.ns).or_default().push(i);
        }
        let mut ns_labels: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
        for (name, n) in &st.namespaces {
            let mut l = n.metadata.labels.clone().unwrap_or_default();
            l.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
            ns_labels.insert(name.as_str(), l);
        }
        for ns in by_ns.keys() {
            ns_labels.entry(ns).or_insert_with(|| {
                BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())])
            });
        }
        let nodes = st
            .nodes
            .values()
            .map(|n| {
                let ips = n
                    .status
                    .iter()
                    .flat_map(|s| s.addresses.iter().flatten())
                    .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                    .filter_map(|a| a.address.parse::<Ipv4Addr>().ok())
                    .map(u32::from)
                    .collect();
                (n.metadata.labels.as_ref().unwrap_or(&EMPTY), ips)
            })
            .collect();
        Self {
            pods,
            by_ns,
            ns_labels,
            nodes,
        }
    }

    /// Namespaces `sel` selects.
    fn namespaces(&self, sel: &LabelSelector, warn: &mut Vec<String>) -> Vec<&'a str> {
        let mut out = Vec::new();
        for (ns, labels) in &self.ns_labels {
            match selects(sel, labels) {
                Ok(true) => out.push(*ns),
                Ok(false) => {}
                Err(e) => {
                    warn.push(e);
                    return Vec::new();
                }
            }
        }
        out
    }

    /// Pods of namespaces `nss` that `sel` selects (None: all of them).
    fn pods_in(
        &self,
        nss: &[&str],
        sel: Option<&LabelSelector>,
        warn: &mut Vec<String>,
    ) -> Vec<usize> {
        let mut out = Vec::new();
        for ns in nss {
            for &i in self.by_ns.get(ns).into_iter().flatten() {
                match sel.map_or(Ok(true), |s| selects(s, self.pods[i].labels)) {
                    Ok(true) => out.push(i),
                    Ok(false) => {}
                    Err(e) => {
                        warn.push(e);
                        return Vec::new();
                    }
                }
            }
        }
        out
    }
}

/// A rule's peers before ports pair with them: pods (by index) and address blocks.
#[derive(Debug, Default)]
struct Peers {
    pods: BTreeSet<usize>,
    blocks: Vec<(u32, u32)>,
    /// Every address (no peers given, or a fail-closed deny).
    all: bool,
}

impl Peers {
    fn addrs(&self, ix: &Index<'_>) -> AddrSet {
        if self.all {
            return AddrSet::all();
        }
        let mut v = self.blocks.clone();
        v.extend(self.pods.iter().map(|&i| (ix.pods[i].ip, ix.pods[i].ip)));
        AddrSet::from_ranges(v)
    }
}

fn block_ranges(
    cidr: &str,
    except: &[String],
    warn: &mut Vec<String>,
    what: &str,
) -> Vec<(u32, u32)> {
    let Some((p, l)) = parse_cidr(cidr) else {
        warn.push(format!(
            "{what}: ipBlock {cidr:?} is not an IPv4 CIDR (matches nothing)"
        ));
        return Vec::new();
    };
    let ex: Vec<(u32, u8)> = except.iter().filter_map(|e| parse_cidr(e)).collect();
    AddrSet::cidr_except(p, l, &ex).ranges().to_vec()
}

fn np_peers(
    ix: &Index<'_>,
    policy_ns: &str,
    peers: Option<&Vec<NetworkPolicyPeer>>,
    warn: &mut Vec<String>,
    what: &str,
) -> Peers {
    let mut out = Peers::default();
    let Some(peers) = peers.filter(|p| !p.is_empty()) else {
        out.all = true;
        return out;
    };
    for peer in peers {
        if let Some(b) = &peer.ip_block {
            out.blocks.extend(block_ranges(
                &b.cidr,
                b.except.as_deref().unwrap_or_default(),
                warn,
                what,
            ));
            continue;
        }
        let nss: Vec<&str> = match &peer.namespace_selector {
            Some(sel) => ix.namespaces(sel, warn),
            None => vec![policy_ns],
        };
        if peer.namespace_selector.is_none() && peer.pod_selector.is_none() {
            continue; // an empty peer selects nothing
        }
        out.pods
            .extend(ix.pods_in(&nss, peer.pod_selector.as_ref(), warn));
    }
    out
}

/// Clauses of a rule whose destination is `dest` (ingress: the local pod; its named ports
/// resolve there). `None` when the rule cannot match (all its ports are named and `dest`
/// has none of them).
fn ingress_clauses(
    peers: &Arc<AddrSet>,
    ports: &Ports,
    dest: &PodView<'_>,
) -> Option<Box<[Clause]>> {
    let ranges: Vec<PortRange> = match ports {
        None => Vec::new(),
        Some(ps) => {
            let r: Vec<PortRange> = ps
                .iter()
                .filter_map(|p| match p {
                    PortSpec::Num(r) => Some(*r),
                    PortSpec::Named(proto, n) => dest.named_port(n, *proto).map(|num| PortRange {
                        proto: *proto,
                        lo: num,
                        hi: num,
                    }),
                })
                .collect();
            if r.is_empty() {
                return None;
            }
            r
        }
    };
    Some(
        vec![Clause {
            peers: peers.clone(),
            ports: ranges.into(),
        }]
        .into(),
    )
}

/// Clauses of an egress rule: numbered ports with every peer; each named port with the peer
/// pods it resolves on, grouped by the number it resolves to. `None` when nothing can match.
fn egress_clauses(ix: &Index<'_>, peers: &Peers, ports: &Ports) -> Option<Box<[Clause]>> {
    let all = Arc::new(peers.addrs(ix));
    let Some(ps) = ports else {
        return Some(
            vec![Clause {
                peers: all,
                ports: Arc::from(Vec::new()),
            }]
            .into(),
        );
    };
    let mut out = Vec::new();
    let nums: Vec<PortRange> = ps
        .iter()
        .filter_map(|p| match p {
            PortSpec::Num(r) => Some(*r),
            PortSpec::Named(..) => None,
        })
        .collect();
    if !nums.is_empty() {
        out.push(Clause {
            peers: all.clone(),
            ports: nums.into(),
        });
    }
    for p in ps {
        let PortSpec::Named(proto, name) = p else {
            continue;
        };
        // The pods among the peers (pod IPs in ipBlocks count) that have this port.
        let mut by_num: BTreeMap<u16, Vec<(u32, u32)>> = BTreeMap::new();
        for pod in &ix.pods {
            if all.contains(pod.ip) {
                if let Some(n) = pod.named_port(name, *proto) {
                    by_num.entry(n).or_default().push((pod.ip, pod.ip));
                }
            }
        }
        for (n, ips) in by_num {
            out.push(Clause {
                peers: Arc::new(AddrSet::from_ranges(ips)),
                ports: vec![PortRange {
                    proto: *proto,
                    lo: n,
                    hi: n,
                }]
                .into(),
            });
        }
    }
    (!out.is_empty()).then(|| out.into())
}

/// The policy types of a NetworkPolicy, with the API server's default applied.
pub fn np_types(np: &NetworkPolicy) -> (bool, bool) {
    let spec = np.spec.as_ref();
    match spec.and_then(|s| s.policy_types.as_ref()) {
        Some(t) if !t.is_empty() => (
            t.iter().any(|x| x == "Ingress"),
            t.iter().any(|x| x == "Egress"),
        ),
        _ => (
            true,
            spec.and_then(|s| s.egress.as_ref())
                .is_some_and(|e| !e.is_empty()),
        ),
    }
}

/// One compiled ClusterNetworkPolicy rule before it is placed: action, peers, ports.
struct CnpCompiled {
    admin: bool,
    priority: i32,
    name: String,
    subjects: BTreeSet<usize>,
    ingress: Vec<(Action, Arc<AddrSet>, Ports)>,
    egress: Vec<(Action, Peers, Ports)>,
}

fn cnp_action(a: &str) -> Option<Action> {
    match a {
        "Accept" => Some(Action::Allow),
        "Deny" => Some(Action::Deny),
        "Pass" => Some(Action::Pass),
        _ => None,
    }
}

fn cnp_peers(
    ix: &Index<'_>,
    peers: &[CnpPeer],
    action: Action,
    warn: &mut Vec<String>,
    what: &str,
) -> Peers {
    let mut out = Peers::default();
    for p in peers {
        let mut known = false;
        if let Some(sel) = &p.namespaces {
            known = true;
            let nss = ix.namespaces(sel, warn);
            out.pods.extend(ix.pods_in(&nss, None, warn));
        }
        if let Some(np) = &p.pods {
            known = true;
            let nss = ix.namespaces(&np.namespace_selector, warn);
            out.pods
                .extend(ix.pods_in(&nss, Some(&np.pod_selector), warn));
        }
        if let Some(sel) = &p.nodes {
            known = true;
            for (labels, ips) in &ix.nodes {
                match selects(sel, labels) {
                    Ok(true) => out.blocks.extend(ips.iter().map(|&i| (i, i))),
                    Ok(false) => {}
                    Err(e) => warn.push(format!("{what}: {e}")),
                }
            }
        }
        if let Some(nets) = &p.networks {
            known = true;
            for n in nets {
                out.blocks.extend(block_ranges(n, &[], warn, what));
            }
        }
        if p.domain_names.is_some() {
            known = true;
            warn.push(format!(
                "{what}: domainNames peers are not supported (they match no address)"
            ));
        }
        if !known && action != Action::Allow {
            // Fail closed: a Deny or Pass with a peer this version cannot read denies all.
            out.all = true;
        }
    }
    out
}

/// The compiler. Keeps each policy's counters ([`Origin`]) across compiles, by name.
#[derive(Debug, Default)]
pub struct Compiler {
    origins: HashMap<String, Arc<Origin>>,
}

/// A compile's result.
#[derive(Debug, Default)]
pub struct Compiled {
    /// The table for the Fib.
    pub table: Arc<PolicyTable>,
    /// Policy id of each local pod some policy applies to (others: 0).
    pub ids: BTreeMap<Ipv4Addr, u32>,
    /// What could not be compiled as written (each once per compile).
    pub warnings: Vec<String>,
}

impl Compiler {
    /// Compiles every policy of `st` for the local pods `local` (their IPs).
    pub fn compile(&mut self, st: &ClusterState, local: &[Ipv4Addr]) -> Compiled {
        let ix = Index::new(st);
        let mut warn = Vec::new();
        let mut origins: Vec<Arc<Origin>> = Vec::new();
        fn origin_of(
            name: String,
            cache: &HashMap<String, Arc<Origin>>,
            origins: &mut Vec<Arc<Origin>>,
        ) -> u32 {
            let o = cache
                .get(&name)
                .cloned()
                .unwrap_or_else(|| Arc::new(Origin::new(name)));
            origins.push(o);
            (origins.len() - 1) as u32
        }
        let local: BTreeSet<u32> = local.iter().map(|&ip| u32::from(ip)).collect();
        let local_idx: BTreeMap<u32, usize> = ix
            .pods
            .iter()
            .enumerate()
            .filter(|(_, p)| local.contains(&p.ip))
            .map(|(i, p)| (p.ip, i))
            .collect();
        let mut per: BTreeMap<usize, PodPolicy> = BTreeMap::new();
        let mut used: HashMap<String, Arc<Origin>> = HashMap::new();

        // NetworkPolicies, by namespace/name.
        let mut ingress_allow: BTreeMap<usize, Vec<Rule>> = BTreeMap::new();
        let mut egress_allow: BTreeMap<usize, Vec<Rule>> = BTreeMap::new();
        let mut iso_in: BTreeSet<usize> = BTreeSet::new();
        let mut iso_eg: BTreeSet<usize> = BTreeSet::new();
        for (key, np) in &st.network_policies {
            let what = format!("NetworkPolicy {key}");
            let ns = np.metadata.namespace.as_deref().unwrap_or("default");
            let Some(spec) = np.spec.as_ref() else {
                continue;
            };
            let selected: Vec<usize> = ix
                .pods_in(
                    &[ns],
                    Some(&spec.pod_selector.clone().unwrap_or_default()),
                    &mut warn,
                )
                .into_iter()
                .filter(|i| local_idx.contains_key(&ix.pods[*i].ip))
                .collect();
            if selected.is_empty() {
                continue;
            }
            let (ti, te) = np_types(np);
            let origin = origin_of(what.clone(), &self.origins, &mut origins);
            used.insert(what.clone(), origins[origin as usize].clone());
            if ti {
                let rules: Vec<(Arc<AddrSet>, Ports)> = spec
                    .ingress
                    .iter()
                    .flatten()
                    .map(|r| {
                        let peers = np_peers(&ix, ns, r.from.as_ref(), &mut warn, &what);
                        (
                            Arc::new(peers.addrs(&ix)),
                            np_ports(r.ports.as_ref(), &mut warn, &what),
                        )
                    })
                    .collect();
                for &i in &selected {
                    iso_in.insert(i);
                    for (k, (peers, ports)) in rules.iter().enumerate() {
                        if let Some(clauses) = ingress_clauses(peers, ports, &ix.pods[i]) {
                            ingress_allow.entry(i).or_default().push(Rule {
                                clauses,
                                action: Action::Allow,
                                origin,
                                index: k as u16,
                            });
                        }
                    }
                }
            }
            if te {
                let rules: Vec<Rule> = spec
                    .egress
                    .iter()
                    .flatten()
                    .enumerate()
                    .filter_map(|(k, r)| {
                        let peers = np_peers(&ix, ns, r.to.as_ref(), &mut warn, &what);
                        let ports = np_ports(r.ports.as_ref(), &mut warn, &what);
                        Some(Rule {
                            clauses: egress_clauses(&ix, &peers, &ports)?,
                            action: Action::Allow,
                            origin,
                            index: k as u16,
                        })
                    })
                    .collect();
                for &i in &selected {
                    iso_eg.insert(i);
                    egress_allow
                        .entry(i)
                        .or_default()
                        .extend(rules.iter().cloned());
                }
            }
        }

        // ClusterNetworkPolicies, in tier order.
        let mut cnps: Vec<CnpCompiled> = Vec::new();
        for (name, c) in &st.cluster_policies {
            let what = format!("ClusterNetworkPolicy {name}");
            let admin = match c.spec.tier.as_str() {
                "Admin" => true,
                "Baseline" => false,
                t => {
                    warn.push(format!("{what}: unknown tier {t:?} (ignored)"));
                    continue;
                }
            };
            let subj = &c.spec.subject;
            let subjects: BTreeSet<usize> = match (&subj.namespaces, &subj.pods) {
                (Some(sel), None) => {
                    let nss = ix.namespaces(sel, &mut warn);
                    ix.pods_in(&nss, None, &mut warn).into_iter().collect()
                }
                (None, Some(p)) => {
                    let nss = ix.namespaces(&p.namespace_selector, &mut warn);
                    ix.pods_in(&nss, Some(&p.pod_selector), &mut warn)
                        .into_iter()
                        .collect()
                }
                _ => {
                    warn.push(format!(
                        "{what}: subject needs exactly one of namespaces, pods (ignored)"
                    ));
                    continue;
                }
            };
            let subjects: BTreeSet<usize> = subjects
                .into_iter()
                .filter(|i| local_idx.contains_key(&ix.pods[*i].ip))
                .collect();
            if subjects.is_empty() {
                continue;
            }
            let mut compiled = CnpCompiled {
                admin,
                priority: c.spec.priority,
                name: what.clone(),
                subjects,
                ingress: Vec::new(),
                egress: Vec::new(),
            };
            for r in &c.spec.ingress {
                let Some(a) = cnp_action(&r.action) else {
                    warn.push(format!(
                        "{what}: unknown action {:?} (rule ignored)",
                        r.action
                    ));
                    continue;
                };
                let peers = cnp_peers(&ix, &r.from, a, &mut warn, &what);
                let ports = cnp_ports(&r.protocols, &mut warn, &what);
                compiled
                    .ingress
                    .push((a, Arc::new(peers.addrs(&ix)), ports));
            }
            for r in &c.spec.egress {
                let Some(a) = cnp_action(&r.action) else {
                    warn.push(format!(
                        "{what}: unknown action {:?} (rule ignored)",
                        r.action
                    ));
                    continue;
                };
                let peers = cnp_peers(&ix, &r.to, a, &mut warn, &what);
                let ports = cnp_ports(&r.protocols, &mut warn, &what);
                compiled.egress.push((a, peers, ports));
            }
            cnps.push(compiled);
        }
        cnps.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        let mut admin_in: BTreeMap<usize, Vec<Rule>> = BTreeMap::new();
        let mut admin_eg: BTreeMap<usize, Vec<Rule>> = BTreeMap::new();
        let mut base_in: BTreeMap<usize, Vec<Rule>> = BTreeMap::new();
        let mut base_eg: BTreeMap<usize, Vec<Rule>> = BTreeMap::new();
        for c in &cnps {
            let origin = origin_of(c.name.clone(), &self.origins, &mut origins);
            used.insert(c.name.clone(), origins[origin as usize].clone());
            let eg: Vec<Rule> = c
                .egress
                .iter()
                .enumerate()
                .filter_map(|(k, (a, peers, ports))| {
                    Some(Rule {
                        clauses: egress_clauses(&ix, peers, ports)?,
                        action: *a,
                        origin,
                        index: k as u16,
                    })
                })
                .collect();
            let (tin, teg) = if c.admin {
                (&mut admin_in, &mut admin_eg)
            } else {
                (&mut base_in, &mut base_eg)
            };
            for &i in &c.subjects {
                for (k, (a, peers, ports)) in c.ingress.iter().enumerate() {
                    if let Some(clauses) = ingress_clauses(peers, ports, &ix.pods[i]) {
                        tin.entry(i).or_default().push(Rule {
                            clauses,
                            action: *a,
                            origin,
                            index: k as u16,
                        });
                    }
                }
                if !eg.is_empty() {
                    teg.entry(i).or_default().extend(eg.iter().cloned());
                }
            }
        }

        for &i in local_idx.values() {
            let pp = PodPolicy {
                ingress: DirPolicy {
                    admin: admin_in.remove(&i).unwrap_or_default().into(),
                    isolated: iso_in.contains(&i),
                    allow: ingress_allow.remove(&i).unwrap_or_default().into(),
                    baseline: base_in.remove(&i).unwrap_or_default().into(),
                },
                egress: DirPolicy {
                    admin: admin_eg.remove(&i).unwrap_or_default().into(),
                    isolated: iso_eg.contains(&i),
                    allow: egress_allow.remove(&i).unwrap_or_default().into(),
                    baseline: base_eg.remove(&i).unwrap_or_default().into(),
                },
            };
            if !pp.is_empty() {
                per.insert(i, pp);
            }
        }
        // Counters of policies that no longer apply here are dropped.
        self.origins = used;
        let mut pods = Vec::with_capacity(per.len());
        let mut ids = BTreeMap::new();
        for (i, pp) in per {
            pods.push(pp);
            ids.insert(Ipv4Addr::from(ix.pods[i].ip), pods.len() as u32);
        }
        warn.sort();
        warn.dedup();
        Compiled {
            table: Arc::new(PolicyTable {
                pods: pods.into(),
                origins: origins.into(),
            }),
            ids,
            warnings: warn,
        }
    }
}

// ---- The compiled table as JSON (inspect), and back (explain judges with the same code). ----

fn proto_name(p: u8) -> String {
    match p {
        TCP => "TCP".into(),
        UDP => "UDP".into(),
        SCTP => "SCTP".into(),
        n => n.to_string(),
    }
}

fn proto_of(s: &str) -> Option<u8> {
    match s {
        "TCP" | "tcp" => Some(TCP),
        "UDP" | "udp" => Some(UDP),
        "SCTP" | "sctp" => Some(SCTP),
        "ICMP" | "icmp" => Some(1),
        n => n.parse().ok(),
    }
}

fn range_str(lo: u32, hi: u32) -> String {
    let (a, b) = (Ipv4Addr::from(lo), Ipv4Addr::from(hi));
    if lo == hi {
        return a.to_string();
    }
    let span = hi.wrapping_sub(lo).wrapping_add(1);
    if span.is_power_of_two() && lo % span == 0 {
        return format!("{a}/{}", 32 - span.trailing_zeros());
    }
    if lo == 0 && hi == u32::MAX {
        return "0.0.0.0/0".into();
    }
    format!("{a}-{b}")
}

fn parse_range(s: &str) -> Option<(u32, u32)> {
    if let Some((a, b)) = s.split_once('-') {
        return Some((
            a.parse::<Ipv4Addr>().ok()?.into(),
            b.parse::<Ipv4Addr>().ok()?.into(),
        ));
    }
    if s.contains('/') {
        let (p, l) = parse_cidr(s)?;
        let r = AddrSet::cidr_except(p, l, &[]);
        return r.ranges().first().copied();
    }
    let a: u32 = s.parse::<Ipv4Addr>().ok()?.into();
    Some((a, a))
}

fn rules_json(rules: &[Rule], table: &PolicyTable) -> Value {
    Value::Array(
        rules
            .iter()
            .map(|r| {
                json!({
                    "policy": table.origin(r.origin).map(|o| o.name.clone()),
                    "rule": r.index,
                    "action": match r.action { Action::Allow => "Allow", Action::Deny => "Deny", Action::Pass => "Pass" },
                    "clauses": r.clauses.iter().map(|c| json!({
                        "peers": c.peers.ranges().iter().map(|&(lo, hi)| range_str(lo, hi)).collect::<Vec<_>>(),
                        "ports": c.ports.iter().map(|p| json!({"protocol": proto_name(p.proto), "from": p.lo, "to": p.hi})).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

fn dir_json(d: &DirPolicy, table: &PolicyTable) -> Value {
    json!({
        "admin": rules_json(&d.admin, table),
        "isolated": d.isolated,
        "network_policy": rules_json(&d.allow, table),
        "baseline": rules_json(&d.baseline, table),
    })
}

/// The policy table as JSON: per local pod (`pods`: its IP and `namespace/name`) the rules in
/// force for each direction, and per policy its counters of new flows allowed and denied.
pub fn table_json(table: &PolicyTable, pods: &[(Ipv4Addr, String, u32)]) -> Value {
    json!({
        "pods": pods.iter().filter_map(|(ip, key, id)| {
            let pp = table.get(*id)?;
            Some(json!({"pod": key, "ip": ip.to_string(),
                        "ingress": dir_json(&pp.ingress, table), "egress": dir_json(&pp.egress, table)}))
        }).collect::<Vec<_>>(),
        "policies": table.origins.iter().map(|o| json!({
            "name": o.name, "allowed": o.allowed(), "denied": o.denied(),
        })).collect::<Vec<_>>(),
    })
}

fn rules_from_json(v: &Value, names: &mut Vec<String>) -> Vec<Rule> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let name = r["policy"].as_str().unwrap_or("?").to_string();
            let origin = match names.iter().position(|n| *n == name) {
                Some(i) => i,
                None => {
                    names.push(name);
                    names.len() - 1
                }
            } as u32;
            Rule {
                clauses: r["clauses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| Clause {
                        peers: Arc::new(AddrSet::from_ranges(
                            c["peers"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|p| parse_range(p.as_str()?))
                                .collect(),
                        )),
                        ports: c["ports"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|p| {
                                Some(PortRange {
                                    proto: proto_of(p["protocol"].as_str()?)?,
                                    lo: p["from"].as_u64()? as u16,
                                    hi: p["to"].as_u64()? as u16,
                                })
                            })
                            .collect::<Vec<_>>()
                            .into(),
                    })
                    .collect(),
                action: match r["action"].as_str() {
                    Some("Deny") => Action::Deny,
                    Some("Pass") => Action::Pass,
                    _ => Action::Allow,
                },
                origin,
                index: r["rule"].as_u64().unwrap_or(0) as u16,
            }
        })
        .collect()
}

/// A direction's rules back from [`table_json`]'s form; `names` collects the policies'
/// names (a rule's `origin` indexes it).
pub fn dir_from_json(v: &Value, names: &mut Vec<String>) -> DirPolicy {
    DirPolicy {
        admin: rules_from_json(&v["admin"], names).into(),
        isolated: v["isolated"].as_bool().unwrap_or(false),
        allow: rules_from_json(&v["network_policy"], names).into(),
        baseline: rules_from_json(&v["baseline"], names).into(),
    }
}

/// A flow to explain.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address (as the destination pod sees it: a Service's backend).
    pub dst: Ipv4Addr,
    /// IP protocol.
    pub proto: u8,
    /// Destination port (0 for protocols without ports).
    pub port: u16,
}

impl Flow {
    /// Parses `tcp`, `udp`, `sctp`, `icmp` or a number.
    pub fn protocol(s: &str) -> Option<u8> {
        proto_of(s)
    }
}

/// The verdict on `flow` by the policy in `dump` (an inspect dump's `policy` section): for
/// each end that is a pod of that node, the direction judged, the verdict and what decided it.
pub fn explain(dump: &Value, flow: Flow) -> Value {
    let has_ports = matches!(flow.proto, TCP | UDP | SCTP);
    let mut steps = Vec::new();
    let mut allowed = true;
    for (dir, me, peer) in [
        ("egress", flow.src, flow.dst),
        ("ingress", flow.dst, flow.src),
    ] {
        let Some(p) = dump["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["ip"].as_str() == Some(&me.to_string()))
        else {
            continue;
        };
        let mut names = Vec::new();
        let d = dir_from_json(&p[dir], &mut names);
        let j = d.judge(peer.into(), flow.proto, flow.port, has_ports);
        let ok = j.allows();
        allowed &= ok;
        let (by, tier, rule) = match j {
            xdpnet_dataplane::policy::Judgement::Rule {
                tier,
                origin,
                index,
                ..
            } => (
                names.get(origin as usize).cloned().unwrap_or_default(),
                format!("{tier:?}"),
                Some(index),
            ),
            xdpnet_dataplane::policy::Judgement::Isolated => (
                "no rule allows it: NetworkPolicies isolate the pod".to_string(),
                "NetworkPolicy".into(),
                None,
            ),
            xdpnet_dataplane::policy::Judgement::Default => (
                "no policy decides: allowed by default".to_string(),
                "default".into(),
                None,
            ),
        };
        steps.push(json!({"direction": dir, "pod": p["pod"], "allowed": ok,
                          "tier": tier, "by": by, "rule": rule}));
    }
    json!({"flow": {"src": flow.src.to_string(), "dst": flow.dst.to_string(),
                    "protocol": proto_name(flow.proto), "port": flow.port},
           "allowed": allowed, "steps": steps})
}
