//! Cluster state: the Kubernetes objects the table is built from, and the file source.
//!
//! One interface for every source ([`Source`], delivering [`Event`]s into a [`ClusterState`]):
//! the file source here reads a YAML file (or a directory of them) of Nodes, Pods, Services,
//! EndpointSlices and Namespaces — several documents per file and `kind: List` both work; the
//! Kubernetes watch source (`kube_source`) delivers the same events. Objects of other kinds are
//! counted and ignored. A file that does not parse is an error naming the file and document,
//! and the caller keeps its previous state. [`save`] writes a state crash-safely for the next
//! start.

use crate::policy::ClusterNetworkPolicy;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// EndpointSlice label naming its service.
pub const LABEL_SERVICE: &str = "kubernetes.io/service-name";

/// The objects the table needs, keyed by `namespace/name` (`name` for Nodes and Namespaces).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    /// Nodes.
    pub nodes: BTreeMap<String, Node>,
    /// Pods.
    pub pods: BTreeMap<String, Pod>,
    /// Services.
    pub services: BTreeMap<String, Service>,
    /// EndpointSlices.
    pub slices: BTreeMap<String, EndpointSlice>,
    /// Namespaces.
    pub namespaces: BTreeMap<String, Namespace>,
    /// NetworkPolicies.
    pub network_policies: BTreeMap<String, NetworkPolicy>,
    /// ClusterNetworkPolicies (by name).
    pub cluster_policies: BTreeMap<String, ClusterNetworkPolicy>,
    /// `namespace/service` -> keys of its EndpointSlices.
    pub slices_by_service: BTreeMap<String, BTreeSet<String>>,
    /// Documents of kinds the table does not use.
    pub ignored: usize,
}

/// The kinds a source delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Node.
    Node,
    /// Pod.
    Pod,
    /// Service.
    Service,
    /// EndpointSlice.
    EndpointSlice,
    /// Namespace.
    Namespace,
    /// NetworkPolicy.
    NetworkPolicy,
    /// ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`).
    ClusterNetworkPolicy,
}

impl Kind {
    /// All kinds.
    pub const ALL: [Kind; 7] = [
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Namespace,
        Kind::NetworkPolicy,
        Kind::ClusterNetworkPolicy,
    ];
    /// Lower-case name (metrics, logs).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Pod => "pod",
            Kind::Service => "service",
            Kind::EndpointSlice => "endpointslice",
            Kind::Namespace => "namespace",
            Kind::NetworkPolicy => "networkpolicy",
            Kind::ClusterNetworkPolicy => "clusternetworkpolicy",
        }
    }
}

/// One object of any kind the table uses.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // moved once from a watcher into the store; boxing only adds an allocation
pub enum Object {
    /// Node.
    Node(Node),
    /// Pod.
    Pod(Pod),
    /// Service.
    Service(Service),
    /// EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// Namespace.
    Namespace(Namespace),
    /// NetworkPolicy.
    NetworkPolicy(NetworkPolicy),
    /// ClusterNetworkPolicy.
    ClusterNetworkPolicy(ClusterNetworkPolicy),
}

impl Object {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Node(_) => Kind::Node,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Namespace(_) => Kind::Namespace,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
            Object::ClusterNetworkPolicy(_) => Kind::ClusterNetworkPolicy,
        }
    }
    fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Node(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::ClusterNetworkPolicy(o) => &o.metadata,
        }
    }
    /// Its key: `name` for cluster-scoped kinds, `namespace/name` otherwise.
    pub fn key(&self) -> Option<String> {
        let m = self.meta();
        match self.kind() {
            Kind::Node | Kind::Namespace | Kind::ClusterNetworkPolicy => m.name.clone(),
            _ => key(m),
        }
    }
}

/// A change from a source.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // as `Object`
pub enum Event {
    /// An object was added or changed.
    Upsert(Object),
    /// The object of this kind and key was deleted.
    Delete(Kind, String),
    /// These are all objects of this kind now (a (re)list, or a reloaded file).
    Replace(Kind, Vec<Object>),
}

/// What an applied event touched, for the incremental rebuild.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Some Node changed.
    pub nodes: bool,
    /// Some Pod changed.
    pub pods: bool,
    /// These services (`namespace/name`) need their spec recomputed.
    pub services: BTreeSet<String>,
    /// Network policy must be compiled again (a policy, a namespace, a pod or a node
    /// changed: labels, addresses and named ports all feed it).
    pub policy: bool,
    /// Objects changed, per kind (for metrics).
    pub changed: BTreeMap<Kind, usize>,
}

impl Dirty {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        !self.nodes && !self.pods && self.services.is_empty() && !self.policy
    }
}

fn slice_service(s: &EndpointSlice) -> Option<String> {
    let ns = s.metadata.namespace.as_deref().unwrap_or("default");
    let svc = s.metadata.labels.as_ref()?.get(LABEL_SERVICE)?;
    Some(format!("{ns}/{svc}"))
}

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A document is not valid YAML or not a valid object of its kind.
    #[error("{path}: document {doc}: {msg}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based document number.
        doc: usize,
        /// What is wrong.
        msg: String,
    },
}

fn key(meta: &ObjectMeta) -> Option<String> {
    let name = meta.name.as_deref()?;
    Some(match meta.namespace.as_deref() {
        Some(ns) => format!("{ns}/{name}"),
        None => format!("default/{name}"),
    })
}

impl ClusterState {
    /// Reads a YAML file, or every `*.yaml`/`*.yml`/`*.json` file of a directory (sorted).
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let io = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut st = ClusterState::default();
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                })
                .collect();
            files.sort();
            for f in files {
                let text = std::fs::read_to_string(&f).map_err(|source| StateError::Io {
                    path: f.clone(),
                    source,
                })?;
                st.add_yaml(&f, &text)?;
            }
        } else {
            let text = std::fs::read_to_string(path).map_err(io)?;
            st.add_yaml(path, &text)?;
        }
        Ok(st)
    }

    /// Adds every object of a YAML text (several documents, `kind: List` expanded).
    /// Documents are numbered from 1 among the non-empty ones.
    pub fn add_yaml(&mut self, path: &Path, text: &str) -> Result<(), StateError> {
        let mut input = text.as_bytes();
        for (i, doc) in serde_saphyr::read_with_options::<_, Value>(
            &mut input,
            // As Kubernetes reads YAML: only true/false are booleans (a namespace `y` stays a
            // name, not YAML 1.1's yes).
            serde_saphyr::options! { strict_booleans: true },
        )
        .enumerate()
        {
            let err = |msg: String| StateError::Parse {
                path: path.to_path_buf(),
                doc: i + 1,
                msg,
            };
            let v = doc.map_err(|e| err(e.to_string()))?;
            if v.is_null() {
                continue;
            }
            self.add_value(v).map_err(err)?;
        }
        Ok(())
    }

    fn add_value(&mut self, v: Value) -> Result<(), String> {
        let kind = v
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or("no `kind`")?
            .to_string();
        let named = |k: Option<String>| k.ok_or_else(|| format!("{kind} without metadata.name"));
        match kind.as_str() {
            "List"
            | "NodeList"
            | "PodList"
            | "ServiceList"
            | "EndpointSliceList"
            | "NamespaceList"
            | "NetworkPolicyList"
            | "ClusterNetworkPolicyList" => {
                if let Some(items) = v.get("items").and_then(|i| i.as_array()) {
                    for it in items.clone() {
                        self.add_value(it)?;
                    }
                }
            }
            "Node" => {
                let n: Node = serde_json::from_value(v).map_err(|e| format!("Node: {e}"))?;
                named(n.metadata.name.clone())?;
                self.apply(Event::Upsert(Object::Node(n)), &mut Dirty::default());
            }
            "Pod" => {
                let p: Pod = serde_json::from_value(v).map_err(|e| format!("Pod: {e}"))?;
                named(key(&p.metadata))?;
                self.apply(Event::Upsert(Object::Pod(p)), &mut Dirty::default());
            }
            "Service" => {
                let s: Service = serde_json::from_value(v).map_err(|e| format!("Service: {e}"))?;
                named(key(&s.metadata))?;
                self.apply(Event::Upsert(Object::Service(s)), &mut Dirty::default());
            }
            "EndpointSlice" => {
                let s: EndpointSlice =
                    serde_json::from_value(v).map_err(|e| format!("EndpointSlice: {e}"))?;
                named(key(&s.metadata))?;
                self.apply(
                    Event::Upsert(Object::EndpointSlice(s)),
                    &mut Dirty::default(),
                );
            }
            "Namespace" => {
                let n: Namespace =
                    serde_json::from_value(v).map_err(|e| format!("Namespace: {e}"))?;
                named(n.metadata.name.clone())?;
                self.apply(Event::Upsert(Object::Namespace(n)), &mut Dirty::default());
            }
            "NetworkPolicy" => {
                let mut n: NetworkPolicy =
                    serde_json::from_value(v).map_err(|e| format!("NetworkPolicy: {e}"))?;
                named(key(&n.metadata))?;
                // As the API server does: protocol TCP where a port leaves it out.
                for r in n.spec.iter_mut().flat_map(|s| {
                    s.ingress
                        .iter_mut()
                        .flatten()
                        .flat_map(|r| r.ports.iter_mut().flatten())
                        .chain(
                            s.egress
                                .iter_mut()
                                .flatten()
                                .flat_map(|r| r.ports.iter_mut().flatten()),
                        )
                }) {
                    r.protocol.get_or_insert_with(|| "TCP".into());
                }
                self.apply(
                    Event::Upsert(Object::NetworkPolicy(n)),
                    &mut Dirty::default(),
                );
            }
            "ClusterNetworkPolicy" => {
                let c: ClusterNetworkPolicy =
                    serde_json::from_value(v).map_err(|e| format!("ClusterNetworkPolicy: {e}"))?;
                named(c.metadata.name.clone())?;
                self.apply(
                    Event::Upsert(Object::ClusterNetworkPolicy(c)),
                    &mut Dirty::default(),
                );
            }
            _ => self.ignored += 1,
        }
        Ok(())
    }

    /// Applies one event; records in `dirty` what it touched. Objects without a name are
    /// ignored (a source never sends them).
    pub fn apply(&mut self, ev: Event, dirty: &mut Dirty) {
        match ev {
            Event::Upsert(o) => {
                if let Some(k) = o.key() {
                    self.upsert(k, o, dirty);
                }
            }
            Event::Delete(kind, k) => self.delete(kind, &k, dirty),
            Event::Replace(kind, objs) => {
                let mut keep = BTreeSet::new();
                for o in objs {
                    if o.kind() != kind {
                        continue;
                    }
                    if let Some(k) = o.key() {
                        keep.insert(k.clone());
                        self.upsert(k, o, dirty);
                    }
                }
                let gone: Vec<String> = match kind {
                    Kind::Node => self
                        .nodes
                        .keys()
                        .filter(|k| !keep.contains(*k))
                        .cloned()
                        .collect(),
                    Kind::Pod => self
                        .pods
                        .keys()
                        .filter(|k| !keep.contains(*k))
                        .cloned()
                        .collect(),
                    Kind::Service => self
                        .services
                        .keys()
                        .filter(|k| !keep.contains(*k))
                        .cloned()
                        .collect(),
                    Kind::EndpointSlice => self
                        .slices
                        .keys()
                        .filter(|k| !keep.contains(*k))
                        .cloned()
                        .collect(),
                    Kind::Namespace => self
                        .namespaces
                        .keys()
                        .filter(|k| !keep.contains(*k))
                        .cloned()
                        .collect(),
                    Kind::NetworkPolicy => self
                        .network_policies
                        .keys()
                        .filter(|k| !keep.contains(*k))
                        .cloned()
                        .collect(),
                    Kind::ClusterNetworkPolicy => self
                        .cluster_policies
                        .keys()
                        .filter(|k| !keep.contains(*k))
                        .cloned()
                        .collect(),
                };
                for k in gone {
                    self.delete(kind, &k, dirty);
                }
            }
        }
    }

    fn upsert(&mut self, k: String, o: Object, dirty: &mut Dirty) {
        let kind = o.kind();
        let changed = match o {
            Object::Node(n) => {
                let c = self.nodes.get(&k) != Some(&n);
                dirty.nodes |= c;
                self.nodes.insert(k, n);
                c
            }
            Object::Pod(p) => {
                let c = self.pods.get(&k) != Some(&p);
                dirty.pods |= c;
                self.pods.insert(k, p);
                c
            }
            Object::Service(s) => {
                let c = self.services.get(&k) != Some(&s);
                if c {
                    dirty.services.insert(k.clone());
                }
                self.services.insert(k, s);
                c
            }
            Object::EndpointSlice(s) => {
                let old = self.slices.get(&k);
                let c = old != Some(&s);
                if c {
                    if let Some(svc) = old.and_then(slice_service) {
                        if let Some(set) = self.slices_by_service.get_mut(&svc) {
                            set.remove(&k);
                        }
                        dirty.services.insert(svc);
                    }
                    if let Some(svc) = slice_service(&s) {
                        self.slices_by_service
                            .entry(svc.clone())
                            .or_default()
                            .insert(k.clone());
                        dirty.services.insert(svc);
                    }
                }
                self.slices.insert(k, s);
                c
            }
            Object::Namespace(n) => {
                let c = self.namespaces.get(&k) != Some(&n);
                self.namespaces.insert(k, n);
                c
            }
            Object::NetworkPolicy(n) => {
                let c = self.network_policies.get(&k) != Some(&n);
                self.network_policies.insert(k, n);
                c
            }
            Object::ClusterNetworkPolicy(n) => {
                let c = self.cluster_policies.get(&k) != Some(&n);
                self.cluster_policies.insert(k, n);
                c
            }
        };
        if changed && kind != Kind::Service && kind != Kind::EndpointSlice {
            dirty.policy = true;
        }
        if changed {
            *dirty.changed.entry(kind).or_default() += 1;
        }
    }

    fn delete(&mut self, kind: Kind, k: &str, dirty: &mut Dirty) {
        let had = match kind {
            Kind::Node => {
                let h = self.nodes.remove(k).is_some();
                dirty.nodes |= h;
                h
            }
            Kind::Pod => {
                let h = self.pods.remove(k).is_some();
                dirty.pods |= h;
                h
            }
            Kind::Service => {
                let h = self.services.remove(k).is_some();
                if h {
                    dirty.services.insert(k.to_string());
                }
                h
            }
            Kind::EndpointSlice => match self.slices.remove(k) {
                Some(s) => {
                    if let Some(svc) = slice_service(&s) {
                        if let Some(set) = self.slices_by_service.get_mut(&svc) {
                            set.remove(k);
                            if set.is_empty() {
                                self.slices_by_service.remove(&svc);
                            }
                        }
                        dirty.services.insert(svc);
                    }
                    true
                }
                None => false,
            },
            Kind::Namespace => self.namespaces.remove(k).is_some(),
            Kind::NetworkPolicy => self.network_policies.remove(k).is_some(),
            Kind::ClusterNetworkPolicy => self.cluster_policies.remove(k).is_some(),
        };
        if had && kind != Kind::Service && kind != Kind::EndpointSlice {
            dirty.policy = true;
        }
        if had {
            *dirty.changed.entry(kind).or_default() += 1;
        }
    }

    /// The EndpointSlices of service `namespace/name`.
    pub fn slices_of(&self, service: &str) -> impl Iterator<Item = &EndpointSlice> {
        self.slices_by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
    }

    /// Every object as Replace events (one per kind): what a fresh consumer needs.
    pub fn to_events(&self) -> Vec<Event> {
        vec![
            Event::Replace(
                Kind::Node,
                self.nodes.values().cloned().map(Object::Node).collect(),
            ),
            Event::Replace(
                Kind::Pod,
                self.pods.values().cloned().map(Object::Pod).collect(),
            ),
            Event::Replace(
                Kind::Service,
                self.services
                    .values()
                    .cloned()
                    .map(Object::Service)
                    .collect(),
            ),
            Event::Replace(
                Kind::EndpointSlice,
                self.slices
                    .values()
                    .cloned()
                    .map(Object::EndpointSlice)
                    .collect(),
            ),
            Event::Replace(
                Kind::Namespace,
                self.namespaces
                    .values()
                    .cloned()
                    .map(Object::Namespace)
                    .collect(),
            ),
            Event::Replace(
                Kind::NetworkPolicy,
                self.network_policies
                    .values()
                    .cloned()
                    .map(Object::NetworkPolicy)
                    .collect(),
            ),
            Event::Replace(
                Kind::ClusterNetworkPolicy,
                self.cluster_policies
                    .values()
                    .cloned()
                    .map(Object::ClusterNetworkPolicy)
                    .collect(),
            ),
        ]
    }

    /// Objects per kind (nodes, pods, services, endpoint slices).
    pub fn counts(&self) -> [usize; 4] {
        [
            self.nodes.len(),
            self.pods.len(),
            self.services.len(),
            self.slices.len(),
        ]
    }
}

/// Writes `st` as YAML to `path` crash-safely ([`crate::files::write_atomic`]).
pub fn save(st: &ClusterState, path: &Path) -> std::io::Result<()> {
    let mut text = String::new();
    let mut doc = |v: Result<String, serde_saphyr::SerializeError>| -> std::io::Result<()> {
        text.push_str("---\n");
        text.push_str(&v.map_err(std::io::Error::other)?);
        Ok(())
    };
    for n in st.nodes.values() {
        doc(serde_saphyr::to_string(n))?;
    }
    for p in st.pods.values() {
        doc(serde_saphyr::to_string(p))?;
    }
    for s in st.services.values() {
        doc(serde_saphyr::to_string(s))?;
    }
    for s in st.slices.values() {
        doc(serde_saphyr::to_string(s))?;
    }
    for n in st.namespaces.values() {
        doc(serde_saphyr::to_string(n))?;
    }
    crate::files::write_atomic(path, text.as_bytes())
}

/// Why a source could not deliver (the caller keeps its state and the source retries).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A state file could not be used.
    #[error(transparent)]
    State(#[from] StateError),
    /// The Kubernetes API failed (unreachable, refused, a watch error).
    #[error("Kubernetes API: {0}")]
    Api(String),
}

/// A source of cluster state: a file, or the Kubernetes API. The daemon's control loop asks it
/// for changes; both deliver the same [`Event`]s.
pub trait Source {
    /// Waits up to `timeout` for changes and returns them (empty when none came).
    fn next(&mut self, timeout: std::time::Duration) -> Result<Vec<Event>, SourceError>;
    /// What it reads from, for logs.
    fn describe(&self) -> String;
    /// True while the source is degraded (API unreachable, file unusable).
    fn degraded(&self) -> bool {
        false
    }
    /// Re-reads everything at the next call (SIGHUP).
    fn reload(&mut self) {}
    /// Kinds the source cannot deliver because the cluster does not serve them (an optional
    /// CRD that is not installed): they stay empty.
    fn absent_kinds(&self) -> Vec<Kind> {
        Vec::new()
    }
}

impl Source for FileSource {
    fn next(&mut self, timeout: std::time::Duration) -> Result<Vec<Event>, SourceError> {
        let wait = self
            .due
            .saturating_duration_since(std::time::Instant::now());
        if wait > timeout {
            std::thread::sleep(timeout);
            return Ok(Vec::new());
        }
        std::thread::sleep(wait);
        self.due = std::time::Instant::now() + self.every;
        match self.poll() {
            Ok(Some(st)) => {
                self.bad = false;
                Ok(st.to_events())
            }
            Ok(None) => Ok(Vec::new()),
            Err(e) => {
                self.bad = true;
                Err(e.into())
            }
        }
    }
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
    fn degraded(&self) -> bool {
        self.bad
    }
    fn reload(&mut self) {
        FileSource::reload(self);
    }
}

/// Watches a state file (or directory) for changes by content, so editors that replace the
/// file, `touch` and rename-into-place all count, and a half-written file that fails to parse
/// is retried on the next poll.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    last: Option<u64>,
    every: std::time::Duration,
    due: std::time::Instant,
    bad: bool,
}

impl FileSource {
    /// Watches `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            last: None,
            every: std::time::Duration::from_millis(200),
            due: std::time::Instant::now(),
            bad: false,
        }
    }

    /// The watched path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fingerprint(&self) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        if self.path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&self.path)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .collect();
            files.sort();
            for f in files {
                f.hash(&mut h);
                std::fs::read(&f).ok()?.hash(&mut h);
            }
        } else {
            std::fs::read(&self.path).ok()?.hash(&mut h);
        }
        Some(h.finish())
    }

    /// Forces a re-read at the next [`Source::next`] (SIGHUP).
    pub fn reload(&mut self) {
        self.last = None;
        self.due = std::time::Instant::now();
    }

    /// The new state when the content changed since the last successful poll; `Ok(None)` when
    /// unchanged; an error (state kept by the caller) when the new content is unusable.
    pub fn poll(&mut self) -> Result<Option<ClusterState>, StateError> {
        let fp = self.fingerprint();
        if fp.is_some() && fp == self.last {
            return Ok(None);
        }
        let st = ClusterState::load(&self.path)?;
        self.last = fp;
        Ok(Some(st))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 198.18.0.11}]}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: demo}
  spec: {clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080, protocol: TCP}]}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: x}
---
"#;

    #[test]
    fn loads_documents_and_lists() {
        let mut st = ClusterState::default();
        st.add_yaml(Path::new("t.yaml"), DOC).expect("valid");
        assert_eq!(st.counts(), [1, 0, 1, 0]);
        assert!(st.services.contains_key("demo/web"));
        assert_eq!(st.ignored, 1);
    }

    #[test]
    fn saved_state_loads_back_the_same() {
        let mut st = ClusterState::default();
        st.add_yaml(Path::new("t.yaml"), DOC).expect("valid");
        let dir = std::env::temp_dir().join(format!("xdpnet-save-{}", std::process::id()));
        let p = dir.join("cluster-state.yaml");
        save(&st, &p).expect("save");
        let back = ClusterState::load(&p).expect("load");
        assert_eq!(back.counts(), st.counts());
        assert_eq!(back.nodes, st.nodes);
        assert_eq!(back.services, st.services);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn bad_documents_name_the_document() {
        for bad in [
            "kind: Node\nmetadata: {name: a}\nspec: {podCIDR: [1, 2]}\n",
            "---\nkind: Node\nmetadata: {name: a}\n---\n: : :\n",
            "apiVersion: v1\nmetadata: {name: a}\n",
            "kind: Pod\nmetadata: {namespace: x}\n",
        ] {
            let mut st = ClusterState::default();
            let e = st.add_yaml(Path::new("bad.yaml"), bad).expect_err(bad);
            let msg = e.to_string();
            assert!(msg.starts_with("bad.yaml: document "), "{msg}");
        }
    }

    #[test]
    fn file_source_reports_changes_once() {
        let dir = std::env::temp_dir().join(format!("xdpnet-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let f = dir.join("c.yaml");
        std::fs::write(&f, DOC).expect("write");
        let mut src = FileSource::new(&f);
        assert!(src.poll().expect("ok").is_some());
        assert!(src.poll().expect("ok").is_none());
        std::fs::write(
            &f,
            "kind: Node\nmetadata: {name: a}\nspec: {podCIDR: [1]}\n",
        )
        .expect("w");
        assert!(src.poll().is_err());
        std::fs::write(&f, "").expect("w");
        let st = src.poll().expect("ok").expect("changed");
        assert_eq!(st.counts(), [0, 0, 0, 0]);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
