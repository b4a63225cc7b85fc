//! The one writer of snapshots: [`FibBuilder`] keeps the inputs and the last snapshot, so a
//! small change makes a new snapshot that shares everything it did not touch.

use super::services::{self, SvcEntry};
use super::tables::{DenseRoutes, LocalTable, Remotes};
use super::*;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
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

/// Builds [`Fib`] snapshots from cluster state. Keeps the inputs and the last snapshot so a
/// small change produces a new snapshot sharing everything that did not change.
/// What a build skipped without failing: the table is built without it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildWarning {
    /// Two services claim the same frontend (address and port, or NodePort): the first
    /// (`.0`, by name) keeps it, the second (`.1`) loses only that frontend (`.2`).
    #[error("services {0} and {1} both claim {2}")]
    FrontendConflict(String, String, String),
}

#[derive(Debug)]
pub struct FibBuilder {
    node: Arc<NodeFacts>,
    ports: Vec<PortKind>,
    endpoints: BTreeMap<Ipv4Addr, Endpoint>,
    nodes: BTreeMap<String, RemoteNodeSpec>,
    services: BTreeMap<String, SvcEntry>,
    policy: Arc<crate::policy::PolicyTable>,
    dirty_policy: bool,
    generation: u64,
    last: Option<Fib>,
    dirty_ports: bool,
    dirty_endpoints: bool,
    dirty_nodes: bool,
    /// Services whose frontends (addresses, ports) changed or that were added/removed.
    dirty_index: bool,
    /// Services whose backends changed (frontends same).
    dirty_backends: Vec<String>,
    warnings: Vec<BuildWarning>,
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
            policy: Arc::default(),
            dirty_policy: false,
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

    /// The service `name` as given, if held.
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.get(name).map(|e| &e.spec)
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
            || self.dirty_policy
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
                                e.built = services::build_lbs(&node, &e.spec);
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
                let (lbs, index, warnings) = services::build_index(&node, &mut self.services);
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
            policy: self.policy.clone(),
        };
        self.dirty_ports = false;
        self.dirty_endpoints = false;
        self.dirty_nodes = false;
        self.dirty_index = false;
        self.dirty_policy = false;
        self.dirty_backends.clear();
        self.last = Some(fib.clone());
        fib
    }

    /// The network policy of the next snapshots: local pods' rules, found through their
    /// endpoints' `policy_id` (set those with [`FibBuilder::upsert_endpoint`]).
    pub fn set_policy(&mut self, policy: Arc<crate::policy::PolicyTable>) {
        self.policy = policy;
        self.dirty_policy = true;
    }

    /// The local endpoint at `ip`, as last upserted.
    pub fn endpoint(&self, ip: Ipv4Addr) -> Option<&Endpoint> {
        self.endpoints.get(&ip)
    }

    /// The policy table the next snapshot gets.
    pub fn policy(&self) -> &Arc<crate::policy::PolicyTable> {
        &self.policy
    }

    /// Problems found by the last build that rebuilt the service index (conflicting frontends:
    /// the service whose name sorts first keeps the address; the other loses only that frontend).
    pub fn warnings(&self) -> &[BuildWarning] {
        &self.warnings
    }
}
