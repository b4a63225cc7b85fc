//! The control core, without I/O: cluster-state events in, an up-to-date [`FibBuilder`] out.
//!
//! The same for every source (file, Kubernetes). It keeps the objects ([`ClusterState`]) and
//! what was derived from them, and on each batch of events recomputes only what they touched:
//! one service's spec when that Service or one of its EndpointSlices changed (so an unchanged
//! service keeps its Maglev tables in the builder), the node facts and other nodes when a Node
//! changed, this node's pods when a Pod changed. Endpoints (which need port ids) and other
//! nodes (which need next-hop MACs) are put into the builder by the daemon, which owns ports and
//! neighbours.

use crate::state::{ClusterState, Dirty, Event, Kind};
use crate::translate::{self, LocalConfig, LocalPod, RemoteNode, TranslateError};
use std::collections::BTreeMap;
use xdpnet_dataplane::fib::{FibBuilder, NodeFacts, ServiceSpec};

/// A service's key, its spec (None: it has none) and the warnings of its translation.
type Translated = (String, Option<ServiceSpec>, Vec<String>);

/// What a refresh changed besides services (already in the builder).
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
    node: NodeFacts,
    remotes: Vec<RemoteNode>,
    local_pods: Vec<LocalPod>,
    specs: BTreeMap<String, ServiceSpec>,
    svc_warnings: BTreeMap<String, Vec<String>>,
    node_warnings: Vec<String>,
    pod_warnings: Vec<String>,
    pending: Dirty,
    changed: BTreeMap<Kind, u64>,
}

impl Controller {
    /// Builds everything from `state`. Fails when this node's own facts are not in it.
    pub fn new(local: LocalConfig, state: ClusterState) -> Result<Self, TranslateError> {
        let node = translate::node_facts(&state, &local)?;
        let mut c = Self {
            builder: FibBuilder::new(node.clone()),
            node,
            local,
            state,
            remotes: Vec::new(),
            local_pods: Vec::new(),
            specs: BTreeMap::new(),
            svc_warnings: BTreeMap::new(),
            node_warnings: Vec::new(),
            pod_warnings: Vec::new(),
            pending: Dirty::default(),
            changed: BTreeMap::new(),
        };
        c.pending.nodes = true;
        c.pending.pods = true;
        c.refresh();
        // Every service at once: translate on all cores (read-only over the objects), then hand
        // the specs to the builder in order.
        let keys: Vec<&String> = c.state.services.keys().collect();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        let chunk = keys.len().div_ceil(threads).max(1);
        let st = &c.state;
        let done: Vec<Vec<Translated>> = std::thread::scope(|sc| {
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
                            .collect()
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        for (key, spec, mut w) in done.into_iter().flatten() {
            if let Some(spec) = spec {
                match c.builder.upsert_service(spec.clone()) {
                    Ok(()) => {
                        c.specs.insert(key.clone(), spec);
                    }
                    Err(e) => w.push(format!("service {key}: {e}")),
                }
            }
            if !w.is_empty() {
                c.svc_warnings.insert(key, w);
            }
        }
        Ok(c)
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
        self.pending.services.extend(d.services);
    }

    /// True when events are waiting for a refresh.
    pub fn is_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Recomputes what the pending events touched and updates the builder's services and node.
    pub fn refresh(&mut self) -> Changes {
        let d = std::mem::take(&mut self.pending);
        let mut ch = Changes::default();
        if d.nodes {
            match translate::node_facts(&self.state, &self.local) {
                Ok(n) => {
                    if n != self.node {
                        self.builder.set_node(n.clone());
                        self.node = n;
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
            match spec {
                Some(spec) => {
                    if self.specs.get(key) != Some(&spec) {
                        match self.builder.upsert_service(spec.clone()) {
                            Ok(()) => {
                                self.specs.insert(key.clone(), spec);
                            }
                            Err(e) => {
                                w.push(format!("service {key}: {e}"));
                                self.builder.remove_service(key);
                                self.specs.remove(key);
                            }
                        }
                        ch.services += 1;
                    }
                }
                None => {
                    if self.specs.remove(key).is_some() {
                        self.builder.remove_service(key);
                        ch.services += 1;
                    }
                }
            }
            if w.is_empty() {
                self.svc_warnings.remove(key);
            } else {
                self.svc_warnings.insert(key.clone(), w);
            }
        }
        ch
    }

    /// The builder (the daemon adds endpoints and other nodes, and builds).
    pub fn builder(&mut self) -> &mut FibBuilder {
        &mut self.builder
    }

    /// The objects.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// This node's facts.
    pub fn node(&self) -> &NodeFacts {
        &self.node
    }

    /// The other nodes.
    pub fn remotes(&self) -> &[RemoteNode] {
        &self.remotes
    }

    /// This node's pods.
    pub fn local_pods(&self) -> &[LocalPod] {
        &self.local_pods
    }

    /// Current service specs.
    pub fn specs(&self) -> impl Iterator<Item = &ServiceSpec> {
        self.specs.values()
    }

    /// Number of service specs.
    pub fn service_count(&self) -> usize {
        self.specs.len()
    }

    /// Objects changed so far, per kind.
    pub fn changed(&self) -> &BTreeMap<Kind, u64> {
        &self.changed
    }

    /// Everything skipped, with why.
    pub fn warnings(&self) -> Vec<String> {
        self.node_warnings
            .iter()
            .chain(&self.pod_warnings)
            .chain(self.svc_warnings.values().flatten())
            .cloned()
            .collect()
    }
}
