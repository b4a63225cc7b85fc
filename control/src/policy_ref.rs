//! A direct, slow reading of the network policy API semantics, rule by rule from the
//! objects, with none of the compiler's indexes, address sets or sharing: the reference the
//! compiler is tested against (property tests), and the expected matrix of the lab's
//! truth-table suite. Not used by the daemon.

use crate::policy::ClusterNetworkPolicy;
use crate::state::ClusterState;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

struct World<'a> {
    st: &'a ClusterState,
}

struct P {
    ns: String,
    labels: BTreeMap<String, String>,
    ip: u32,
    named: Vec<(String, u8, u16)>,
}

fn pods(st: &ClusterState) -> Vec<P> {
    st.pods
        .values()
        .filter_map(|p| {
            Some(P {
                ns: p
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                labels: p.metadata.labels.clone().unwrap_or_default(),
                ip: u32::from(crate::policy::pod_ipv4(p)?),
                named: p
                    .spec
                    .iter()
                    .flat_map(|s| &s.containers)
                    .flat_map(|c| c.ports.iter().flatten())
                    .filter_map(|cp| {
                        let pr = match cp.protocol.as_deref() {
                            Some("UDP") => 17,
                            Some("SCTP") => 132,
                            _ => 6,
                        };
                        Some((cp.name.clone()?, pr, cp.container_port as u16))
                    })
                    .collect(),
            })
        })
        .collect()
}

fn sel(s: &LabelSelector, l: &BTreeMap<String, String>) -> bool {
    crate::policy::selects(s, l).unwrap_or(false)
}

impl World<'_> {
    fn ns_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut l = self
            .st
            .namespaces
            .get(ns)
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        l.insert(crate::policy::NAMESPACE_NAME_LABEL.into(), ns.into());
        l
    }
    fn pod_at(&self, ip: u32) -> Option<P> {
        pods(self.st).into_iter().find(|p| p.ip == ip)
    }
    fn in_cidr(ip: u32, cidr: &str) -> bool {
        let Some((a, l)) = cidr.split_once('/') else {
            return false;
        };
        let (Ok(a), Ok(l)) = (a.parse::<Ipv4Addr>(), l.parse::<u32>()) else {
            return false;
        };
        let a = u32::from(a);
        let m = if l == 0 { 0 } else { u32::MAX << (32 - l) };
        ip & m == a & m
    }

    /// NetworkPolicy peer matches the address `ip` (a pod's, or outside).
    fn np_peer(
        &self,
        np_ns: &str,
        peer: &k8s_openapi::api::networking::v1::NetworkPolicyPeer,
        ip: u32,
    ) -> bool {
        if let Some(b) = &peer.ip_block {
            return Self::in_cidr(ip, &b.cidr)
                && !b.except.iter().flatten().any(|e| Self::in_cidr(ip, e));
        }
        let Some(p) = self.pod_at(ip) else {
            return false;
        };
        let ns_ok = match &peer.namespace_selector {
            Some(s) => sel(s, &self.ns_labels(&p.ns)),
            None => p.ns == np_ns,
        };
        let pod_ok = peer.pod_selector.as_ref().is_none_or(|s| sel(s, &p.labels));
        (peer.namespace_selector.is_some() || peer.pod_selector.is_some()) && ns_ok && pod_ok
    }

    /// NetworkPolicy port matches, resolved on destination `dst`.
    fn np_port(
        ports: Option<&Vec<k8s_openapi::api::networking::v1::NetworkPolicyPort>>,
        dst: Option<&P>,
        proto: u8,
        port: u16,
    ) -> bool {
        let Some(ports) = ports.filter(|p| !p.is_empty()) else {
            return true;
        };
        ports.iter().any(|p| {
            let pr = match p.protocol.as_deref().unwrap_or("TCP") {
                "UDP" => 17,
                "SCTP" => 132,
                _ => 6,
            };
            if pr != proto {
                return false;
            }
            match &p.port {
                None => true,
                Some(IntOrString::Int(n)) => {
                    let end = p.end_port.unwrap_or(*n);
                    (*n..=end.max(*n)).contains(&i32::from(port))
                }
                Some(IntOrString::String(name)) => dst.is_some_and(|d| {
                    d.named
                        .iter()
                        .any(|(n, pp, num)| n == name && *pp == proto && *num == port)
                }),
            }
        })
    }

    fn np_types(np: &NetworkPolicy) -> (bool, bool) {
        crate::policy::np_types(np)
    }

    /// (isolated, allowed) by NetworkPolicies for pod `me` in a direction.
    fn np_tier(&self, me: &P, ingress: bool, peer: u32, proto: u8, port: u16) -> Option<bool> {
        let mut isolated = false;
        let mut allowed = false;
        for np in self.st.network_policies.values() {
            let ns = np.metadata.namespace.as_deref().unwrap_or("default");
            let Some(spec) = np.spec.as_ref() else {
                continue;
            };
            if ns != me.ns || !sel(&spec.pod_selector.clone().unwrap_or_default(), &me.labels) {
                continue;
            }
            let (ti, te) = Self::np_types(np);
            if ingress && ti {
                isolated = true;
                let dst = Some(me);
                allowed |= spec.ingress.iter().flatten().any(|r| {
                    let peers_ok = match r.from.as_ref().filter(|f| !f.is_empty()) {
                        None => true,
                        Some(f) => f.iter().any(|p| self.np_peer(ns, p, peer)),
                    };
                    peers_ok && Self::np_port(r.ports.as_ref(), dst, proto, port)
                });
            }
            if !ingress && te {
                isolated = true;
                let dst = self.pod_at(peer);
                allowed |= spec.egress.iter().flatten().any(|r| {
                    let peers_ok = match r.to.as_ref().filter(|f| !f.is_empty()) {
                        None => true,
                        Some(f) => f.iter().any(|p| self.np_peer(ns, p, peer)),
                    };
                    peers_ok && Self::np_port(r.ports.as_ref(), dst.as_ref(), proto, port)
                });
            }
        }
        isolated.then_some(allowed)
    }

    fn cnp_subject(&self, c: &ClusterNetworkPolicy, me: &P) -> bool {
        match (&c.spec.subject.namespaces, &c.spec.subject.pods) {
            (Some(n), None) => sel(n, &self.ns_labels(&me.ns)),
            (None, Some(p)) => {
                sel(&p.namespace_selector, &self.ns_labels(&me.ns))
                    && sel(&p.pod_selector, &me.labels)
            }
            _ => false,
        }
    }

    fn cnp_peer(&self, p: &crate::policy::CnpPeer, ip: u32) -> bool {
        if let Some(nets) = &p.networks {
            return nets.iter().any(|n| Self::in_cidr(ip, n));
        }
        let Some(pod) = self.pod_at(ip) else {
            return false;
        };
        if let Some(n) = &p.namespaces {
            return sel(n, &self.ns_labels(&pod.ns));
        }
        if let Some(np) = &p.pods {
            return sel(&np.namespace_selector, &self.ns_labels(&pod.ns))
                && sel(&np.pod_selector, &pod.labels);
        }
        false
    }

    fn cnp_proto(
        protos: &[crate::policy::CnpProtocol],
        dst: Option<&P>,
        proto: u8,
        port: u16,
    ) -> bool {
        if protos.is_empty() {
            return true;
        }
        protos.iter().any(|p| {
            let by = |pp: &Option<crate::policy::CnpProtoPort>, pr: u8| {
                pp.as_ref().is_some_and(|pp| {
                    pr == proto
                        && match &pp.destination_port {
                            None => true,
                            Some(crate::policy::CnpPort {
                                number: Some(n), ..
                            }) => i32::from(port) == *n,
                            Some(crate::policy::CnpPort { range: Some(r), .. }) => {
                                (r.start..=r.end).contains(&i32::from(port))
                            }
                            Some(_) => false,
                        }
                })
            };
            by(&p.tcp, 6)
                || by(&p.udp, 17)
                || p.destination_named_port.as_ref().is_some_and(|name| {
                    dst.is_some_and(|d| {
                        d.named
                            .iter()
                            .any(|(n, pr, num)| n == name && *pr == proto && *num == port)
                    })
                })
        })
    }

    /// The first matching rule's action in a tier, Pass meaning "go on".
    fn cnp_tier(
        &self,
        admin: bool,
        me: &P,
        ingress: bool,
        peer: u32,
        proto: u8,
        port: u16,
    ) -> Option<bool> {
        let mut cs: Vec<&ClusterNetworkPolicy> = self
            .st
            .cluster_policies
            .values()
            .filter(|c| (c.spec.tier == "Admin") == admin && self.cnp_subject(c, me))
            .collect();
        cs.sort_by(|a, b| {
            let key = |c: &ClusterNetworkPolicy| {
                (
                    c.spec.priority,
                    format!(
                        "ClusterNetworkPolicy {}",
                        c.metadata.name.as_deref().unwrap_or_default()
                    ),
                )
            };
            key(a).cmp(&key(b))
        });
        let dst_peer = self.pod_at(peer);
        for c in cs {
            let rules = if ingress {
                &c.spec.ingress
            } else {
                &c.spec.egress
            };
            for r in rules {
                let peers = if ingress { &r.from } else { &r.to };
                let dst = if ingress { Some(me) } else { dst_peer.as_ref() };
                if peers.iter().any(|p| self.cnp_peer(p, peer))
                    && Self::cnp_proto(&r.protocols, dst, proto, port)
                {
                    match r.action.as_str() {
                        "Accept" => return Some(true),
                        "Deny" => return Some(false),
                        _ => return None, // Pass: the rest of this tier is skipped
                    }
                }
            }
        }
        None
    }

    fn allowed(&self, me: &P, ingress: bool, peer: u32, proto: u8, port: u16) -> bool {
        if let Some(v) = self.cnp_tier(true, me, ingress, peer, proto, port) {
            return v;
        }
        if let Some(v) = self.np_tier(me, ingress, peer, proto, port) {
            return v;
        }
        self.cnp_tier(false, me, ingress, peer, proto, port)
            .unwrap_or(true)
    }
}

/// Whether policy lets `peer` and the pod at `me` talk in a direction: `ingress` from `peer`
/// to `me`, else from `me` to `peer`; `port` the destination port over `proto`. A `me` that
/// is no pod of `st` is allowed (policy applies to pods).
pub fn allowed_dir(
    st: &ClusterState,
    me: Ipv4Addr,
    ingress: bool,
    peer: Ipv4Addr,
    proto: u8,
    port: u16,
) -> bool {
    let w = World { st };
    match w.pod_at(me.into()) {
        Some(p) => w.allowed(&p, ingress, peer.into(), proto, port),
        None => true,
    }
}

/// Whether a new flow from `src` to `dst` (addresses as the pods see them) may pass: the
/// source pod's egress and the destination pod's ingress both allow it.
pub fn allowed(st: &ClusterState, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, port: u16) -> bool {
    allowed_dir(st, src, false, dst, proto, port) && allowed_dir(st, dst, true, src, proto, port)
}
