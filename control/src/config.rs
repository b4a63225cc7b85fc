//! The daemon's configuration file (the ConfigMap's `config.yaml`). Every field is optional;
//! command-line flags override it. Unknown fields are an error, so a typo is not silently a
//! default.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Where cluster state comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The Kubernetes API.
    Kubernetes,
    /// A YAML file (`stateFile`).
    File,
}

/// Where this node's pod CIDR comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodCidrSource {
    /// The Node object's `spec.podCIDR(s)` (set by the controller manager's IPAM).
    Node,
}

/// `config.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    /// Source of cluster state.
    pub source: Option<SourceKind>,
    /// State file when `source: file`.
    pub state_file: Option<PathBuf>,
    /// API server URL instead of the in-cluster configuration (plain HTTP allowed).
    pub api_server: Option<String>,
    /// Where the pod CIDR comes from.
    #[serde(rename = "podCIDRSource")]
    pub pod_cidr_source: Option<PodCidrSource>,
    /// The cluster's pod CIDR.
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    /// This node's pod CIDR (default: its Node's spec.podCIDR).
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    /// Uplink interface.
    pub uplink: Option<String>,
    /// The dataplane's end of the host port.
    pub host_port: Option<String>,
    /// The kernel's end of the host port.
    pub host_interface: Option<String>,
    /// VXLAN UDP port.
    pub vxlan_port: Option<u16>,
    /// VXLAN network identifier.
    pub vni: Option<u32>,
    /// Underlay MTU.
    pub mtu: Option<u16>,
    /// Worker cores.
    pub cores: Option<Vec<usize>>,
    /// Busy-poll workers.
    pub busy_poll: Option<bool>,
    /// SCHED_FIFO priority of the workers (1..99).
    pub worker_rt_priority: Option<u8>,
    /// Admission control in the XDP program [default: true] (`--no-early-drop`).
    pub early_drop: Option<bool>,
    /// `veth` or `tap`: what the CNI endpoint gives a new pod (`--pod-interface`).
    pub pod_interface: Option<crate::podnet::PodInterface>,
    /// Metrics and health address.
    pub metrics_address: Option<String>,
    /// Inspect socket path.
    pub inspect_socket: Option<PathBuf>,
    /// CNI endpoint socket path ("none": off).
    pub cni_socket: Option<PathBuf>,
    /// Directory for state kept across restarts.
    pub state_dir: Option<PathBuf>,
    /// UMEM frames per worker.
    pub frames: Option<u32>,
    /// Pods this node is sized for.
    pub max_pods: Option<usize>,
    /// The service CIDR (never masqueraded to) [default: 10.96.0.0/12].
    #[serde(rename = "serviceCIDR")]
    pub service_cidr: Option<String>,
    /// Masquerade pod traffic leaving the cluster to the node's address [default: true];
    /// false for a routed fabric that knows the pod addresses.
    pub masquerade: Option<bool>,
    /// Destinations pod traffic is never masqueraded to, besides the cluster's pod and
    /// service CIDRs (as ip-masq-agent's `nonMasqueradeCIDRs`).
    #[serde(rename = "nonMasqueradeCIDRs")]
    pub non_masquerade_cidrs: Option<Vec<String>>,
}

/// Why a config could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The text is not a valid config (YAML, a known field, a valid value).
    #[error("{0}")]
    Parse(String),
    /// The file's text is not a valid config.
    #[error("{path}: {msg}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        msg: String,
    },
}

impl FileConfig {
    /// Parses a config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_typos() {
        let c = FileConfig::parse("source: kubernetes\nvxlanPort: 8472\ncores: [1, 2]\nclusterCIDR: 10.244.0.0/16\npodCIDRSource: node\n")
            .expect("valid");
        assert_eq!(c.source, Some(SourceKind::Kubernetes));
        assert_eq!(c.vxlan_port, Some(8472));
        assert_eq!(c.cores, Some(vec![1, 2]));
        assert!(
            FileConfig::parse("vxlanPrt: 1\n")
                .expect_err("typo")
                .to_string()
                .contains("unknown field")
        );
        assert!(FileConfig::parse("source: etcd\n").is_err());
        assert_eq!(FileConfig::parse("").expect("empty"), FileConfig::default());
        let c = FileConfig::parse(
            "masquerade: false\nnonMasqueradeCIDRs: [192.168.0.0/16, 172.16.0.0/12]\nserviceCIDR: 10.96.0.0/16\n",
        )
        .expect("valid");
        assert_eq!(c.masquerade, Some(false));
        assert_eq!(c.non_masquerade_cidrs.map(|v| v.len()), Some(2));
        assert_eq!(c.service_cidr.as_deref(), Some("10.96.0.0/16"));
    }
}
