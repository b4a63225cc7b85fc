//! The control core, without I/O: cluster-state events in, tables out. The one writer of the
//! table builder.
//!
//! The same for every source (file, Kubernetes). It keeps the objects ([`ClusterState`]) and
//! what was derived from them, and on each batch of events recomputes only what they touched:
//! one service's spec when that Service or one of its EndpointSlices changed (so an unchanged
//! service keeps its Maglev tables in the builder), the node facts and other nodes when a Node
//! changed, this node's pods when a Pod changed. What the objects cannot say comes from the
//! daemon through this API, never by writing into the builder: the attached pods with their
//! port ids ([`Controller::set_endpoints`]) and the other nodes' next-hop MACs
//! ([`Controller::set_next_hops`]). [`Controller::build`] makes a table when anything in it
//! changed; the daemon publishes it.

use crate::state::{ClusterState, Dirty, Event, Kind};
use crate::translate::{self, LocalConfig, LocalPod, OtherNode, TranslateError};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use xdpnet_dataplane::fib::{
    BuildError, BuildWarning, Endpoint, Fib, FibBuilder, NodeFacts, RemoteNodeSpec, ServiceSpec,
};
use xdpnet_dataplane::wire::MacAddr;

/// A service's key, its spec (None: it has none) and the warnings of its translation.
type Translated = (String, Option<ServiceSpec>, Vec<String>);

/// What a refresh changed besides services.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// Node facts or the other nodes changed.
    pub nodes: bool,
    /// This node's pods changed.
    pub pods: bool,
    /// Services whose spec changed (upserted or removed).
    pub services: usize,
}

/// The control core.
#[derive(Debug)]
pub struct Controller {
    local: LocalConfig,
    state: ClusterState,
    builder: FibBuilder,
    remotes: Vec<OtherNode>,
    local_pods: Vec<LocalPod>,
    svc_warnings: BTreeMap<String, Vec<String>>,
    node_warnings: Vec<String>,
    pod_warnings: Vec<String>,
    pending: Dirty,
    changed: BTreeMap<Kind, u64>,
    policy: crate::policy::Compiler,
    /// The attached pods as the daemon gave them (policy ids are set on them here).
    attached: BTreeMap<Ipv4Addr, Endpoint>,
    policy_ids: BTreeMap<Ipv4Addr, u32>,
    policy_warnings: Vec<String>,
}

impl Controller {
    /// Builds everything from `state`. Fails when this node's own facts are not in it.
    pub fn new(local: LocalConfig, state: ClusterState) -> Result<Self, TranslateError> {
        let node = translate::node_facts(&state, &local)?;
        let mut c = Self {
            builder: FibBuilder::new(node),
            local,
            state,
            remotes: Vec::new(),
            local_pods: Vec::new(),
            svc_warnings: BTreeMap::new(),
            node_warnings: Vec::new(),
            pod_warnings: Vec::new(),
            pending: Dirty::default(),
            changed: BTreeMap::new(),
            policy: crate::policy::Compiler::default(),
            attached: BTreeMap::new(),
            policy_ids: BTreeMap::new(),
            policy_warnings: Vec::new(),
        };
        c.pending.nodes = true;
        c.pending.pods = true;
        c.pending.policy = true;
        c.refresh();
        for (key, spec, w) in c.translate_all() {
            c.put_service(&key, spec, w);
        }
        Ok(c)
    }

    /// Every service at once: translated on all cores (read-only over the objects).
    fn translate_all(&self) -> Vec<Translated> {
        let keys: Vec<&String> = self.state.services.keys().collect();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        let chunk = keys.len().div_ceil(threads).max(1);
        let st = &self.state;
        std::thread::scope(|sc| {
            let hs: Vec<_> = keys
                .chunks(chunk)
                .map(|part| {
                    sc.spawn(move || {
                        part.iter()
                            .map(|k| {
                                let mut w = Vec::new();
                                let spec = translate::service_spec(st, k, &mut w);
                                ((*k).clone(), spec, w)
                            })
                            .collect::<Vec<Translated>>()
                    })
                })
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        })
    }

    /// Puts a service's translation into the builder; true when its spec changed.
    fn put_service(&mut self, key: &str, spec: Option<ServiceSpec>, mut w: Vec<String>) -> bool {
        let changed = match spec {
            Some(spec) if self.builder.service(key) == Some(&spec) => false,
            Some(spec) => {
                if let Err(e) = self.builder.upsert_service(spec) {
                    w.push(format!("service {key}: {e}"));
                    self.builder.remove_service(key);
                }
                true
            }
            None => self.builder.remove_service(key),
        };
        if w.is_empty() {
            self.svc_warnings.remove(key);
        } else {
            self.svc_warnings.insert(key.to_string(), w);
        }
        changed
    }

    /// Applies an event to the objects (derived state waits for [`Controller::refresh`]).
    pub fn apply(&mut self, ev: Event) {
        let mut d = Dirty::default();
        self.state.apply(ev, &mut d);
        for (k, n) in d.changed {
            *self.changed.entry(k).or_default() += n as u64;
        }
        self.pending.nodes |= d.nodes;
        self.pending.pods |= d.pods;
        self.pending.policy |= d.policy;
        self.pending.services.extend(d.services);
    }

    /// Recomputes what the pending events touched and updates the builder's services and node.
    pub fn refresh(&mut self) -> Changes {
        let d = std::mem::take(&mut self.pending);
        let mut ch = Changes::default();
        if d.nodes {
            match translate::node_facts(&self.state, &self.local) {
                Ok(n) => {
                    if n != *self.builder.node() {
                        self.builder.set_node(n);
                        ch.nodes = true;
                    }
                    self.node_warnings.clear();
                }
                Err(e) => {
                    self.node_warnings = vec![format!("keeping the last node facts: {e}")];
                }
            }
            let mut w = Vec::new();
            let r = translate::remotes(&self.state, &self.local, &mut w);
            self.node_warnings.extend(w);
            if r != self.remotes {
                self.remotes = r;
                ch.nodes = true;
            }
        }
        if d.pods {
            let mut w = Vec::new();
            let p = translate::local_pods(&self.state, &self.local, &mut w);
            self.pod_warnings = w;
            if p != self.local_pods {
                self.local_pods = p;
                ch.pods = true;
            }
        }
        for key in &d.services {
            let mut w = Vec::new();
            let spec = translate::service_spec(&self.state, key, &mut w);
            ch.services += usize::from(self.put_service(key, spec, w));
        }
        if d.policy {
            self.compile_policy();
        }
        ch
    }

    /// Compiles network policy for the attached pods; the builder gets the new table and
    /// the endpoints their policy ids (only those whose id changed are touched).
    fn compile_policy(&mut self) {
        let local: Vec<Ipv4Addr> = self.attached.keys().copied().collect();
        let c = self.policy.compile(&self.state, &local);
        self.policy_warnings = c.warnings;
        let same = c.ids == self.policy_ids
            && c.table.pods == self.builder.policy().pods
            && c.table.origins.len() == self.builder.policy().origins.len()
            && c.table
                .origins
                .iter()
                .zip(self.builder.policy().origins.iter())
                .all(|(a, b)| std::sync::Arc::ptr_eq(a, b));
        if same {
            return;
        }
        self.policy_ids = c.ids;
        self.builder.set_policy(c.table);
        for ep in self.attached.values() {
            let id = self.policy_ids.get(&ep.ip).copied().unwrap_or(0);
            if self
                .builder
                .endpoint(ep.ip)
                .is_some_and(|e| e.policy_id != id)
            {
                let _ = self.builder.upsert_endpoint(Endpoint {
                    policy_id: id,
                    ..*ep
                });
            }
        }
    }

    /// The other nodes' next hops (underlay address -> MAC, the kernel's neighbour table): the
    /// nodes whose next hop is known go into the table, the others wait. Returns those.
    pub fn set_next_hops(&mut self, neigh: &BTreeMap<Ipv4Addr, MacAddr>) -> Vec<&OtherNode> {
        let mut routable: BTreeMap<&str, RemoteNodeSpec> = BTreeMap::new();
        let mut unresolved = Vec::new();
        for r in &self.remotes {
            match neigh.get(&r.underlay_ip) {
                Some(&mac) => {
                    routable.insert(
                        &r.name,
                        RemoteNodeSpec {
                            name: r.name.clone(),
                            underlay_ip: r.underlay_ip,
                            next_hop_mac: mac,
                            pod_cidrs: r.pod_cidrs.clone(),
                            addrs: r.addrs.clone(),
                        },
                    );
                }
                None => unresolved.push(r),
            }
        }
        for n in self.builder.remote_names() {
            if !routable.contains_key(n.as_str()) {
                self.builder.remove_node(&n);
            }
        }
        for r in routable.into_values() {
            self.builder.upsert_node(r);
        }
        unresolved
    }

    /// This node's attached pods (the daemon knows their ports): exactly these are the table's
    /// local endpoints. Returns those the table refused, with why.
    pub fn set_endpoints(
        &mut self,
        eps: impl IntoIterator<Item = Endpoint>,
    ) -> Vec<(Endpoint, BuildError)> {
        let want: BTreeMap<Ipv4Addr, Endpoint> = eps.into_iter().map(|e| (e.ip, e)).collect();
        for ip in self.builder.endpoint_ips() {
            if !want.contains_key(&ip) {
                self.builder.remove_endpoint(ip);
            }
        }
        let pods_changed = want.keys().ne(self.attached.keys());
        self.attached = want.clone();
        if pods_changed {
            // Which policies apply depends on which pods are here.
            self.compile_policy();
        }
        want.into_values()
            .filter_map(|mut ep| {
                ep.policy_id = self.policy_ids.get(&ep.ip).copied().unwrap_or(0);
                self.builder.upsert_endpoint(ep).err().map(|e| (ep, e))
            })
            .collect()
    }

    /// A new table when anything in it changed since the last one, else None.
    pub fn build(&mut self) -> Option<Fib> {
        self.builder.is_dirty().then(|| self.builder.build())
    }

    /// A new table whatever changed (benchmarks, tests).
    pub fn build_now(&mut self) -> Fib {
        self.builder.build()
    }

    /// What the last rebuild of the service index skipped.
    pub fn build_warnings(&self) -> &[BuildWarning] {
        self.builder.warnings()
    }

    /// The objects.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// This node's facts.
    pub fn node(&self) -> &NodeFacts {
        self.builder.node()
    }

    /// The other nodes, as the objects describe them.
    pub fn remotes(&self) -> &[OtherNode] {
        &self.remotes
    }

    /// This node's pods wired by annotation.
    pub fn local_pods(&self) -> &[LocalPod] {
        &self.local_pods
    }

    /// Current service specs.
    pub fn specs(&self) -> impl Iterator<Item = &ServiceSpec> {
        self.builder.service_specs()
    }

    /// Number of service specs.
    pub fn service_count(&self) -> usize {
        self.builder.service_count()
    }

    /// The policy table of the next build (what `inspect policy` and `explain` read).
    pub fn policy_table(&self) -> &std::sync::Arc<xdpnet_dataplane::policy::PolicyTable> {
        self.builder.policy()
    }

    /// The policy id of the local pod at `ip` (0: no policy applies).
    pub fn policy_id(&self, ip: Ipv4Addr) -> u32 {
        self.policy_ids.get(&ip).copied().unwrap_or(0)
    }

    /// Objects changed so far, per kind.
    pub fn changed(&self) -> &BTreeMap<Kind, u64> {
        &self.changed
    }

    /// Objects skipped by translation, with why.
    pub fn warnings(&self) -> Vec<String> {
        self.node_warnings
            .iter()
            .chain(&self.pod_warnings)
            .chain(self.svc_warnings.values().flatten())
            .chain(&self.policy_warnings)
            .cloned()
            .collect()
    }
}
