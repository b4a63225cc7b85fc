//! Cluster state: the Kubernetes objects the table is built from, and the file source.
//!
//! One interface for every source ([`ClusterState`]): the file source here reads a YAML file
//! (or a directory of them) of Nodes, Pods, Services and EndpointSlices — several documents per
//! file and `kind: List` both work; the Kubernetes watch source fills the same stores. Objects
//! of other kinds are counted and ignored. A file that does not parse is an error naming the
//! file and document, and the caller keeps its previous state.

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The objects the table needs, keyed by `namespace/name` (`name` for Nodes).
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
    /// Documents of kinds the table does not use.
    pub ignored: usize,
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

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<String> {
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
    pub fn add_yaml(&mut self, path: &Path, text: &str) -> Result<(), StateError> {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let err = |msg: String| StateError::Parse {
                path: path.to_path_buf(),
                doc: i + 1,
                msg,
            };
            let v = serde_yaml::Value::deserialize(doc).map_err(|e| err(e.to_string()))?;
            if v.is_null() {
                continue;
            }
            self.add_value(v).map_err(err)?;
        }
        Ok(())
    }

    fn add_value(&mut self, v: serde_yaml::Value) -> Result<(), String> {
        let kind = v
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or("no `kind`")?
            .to_string();
        let named = |k: Option<String>| k.ok_or_else(|| format!("{kind} without metadata.name"));
        match kind.as_str() {
            "List" | "NodeList" | "PodList" | "ServiceList" | "EndpointSliceList" => {
                if let Some(items) = v.get("items").and_then(|i| i.as_sequence()) {
                    for it in items.clone() {
                        self.add_value(it)?;
                    }
                }
            }
            "Node" => {
                let n: Node = serde_yaml::from_value(v).map_err(|e| format!("Node: {e}"))?;
                let name = n
                    .metadata
                    .name
                    .clone()
                    .ok_or("Node without metadata.name")?;
                self.nodes.insert(name, n);
            }
            "Pod" => {
                let p: Pod = serde_yaml::from_value(v).map_err(|e| format!("Pod: {e}"))?;
                self.pods.insert(named(key(&p.metadata))?, p);
            }
            "Service" => {
                let s: Service = serde_yaml::from_value(v).map_err(|e| format!("Service: {e}"))?;
                self.services.insert(named(key(&s.metadata))?, s);
            }
            "EndpointSlice" => {
                let s: EndpointSlice =
                    serde_yaml::from_value(v).map_err(|e| format!("EndpointSlice: {e}"))?;
                self.slices.insert(named(key(&s.metadata))?, s);
            }
            _ => self.ignored += 1,
        }
        Ok(())
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

/// A source of cluster state: the file source now, the Kubernetes watch source next. The
/// daemon polls it from its control loop and rebuilds the table from what it returns.
pub trait Source {
    /// The new state when it changed since the last successful poll; `Ok(None)` when
    /// unchanged; an error (the caller keeps its state) when the new state is unusable.
    fn poll(&mut self) -> Result<Option<ClusterState>, StateError>;
    /// What it reads from, for logs.
    fn describe(&self) -> String;
}

impl Source for FileSource {
    fn poll(&mut self) -> Result<Option<ClusterState>, StateError> {
        FileSource::poll(self)
    }
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

/// Watches a state file (or directory) for changes by content, so editors that replace the
/// file, `touch` and rename-into-place all count, and a half-written file that fails to parse
/// is retried on the next poll.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    last: Option<u64>,
}

impl FileSource {
    /// Watches `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            last: None,
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
