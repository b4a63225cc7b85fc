//! xdpnet control plane: cluster-state sources, the table builder driver, the CNI endpoint,
//! IPAM, metrics and inspection.
//!
//! This crate is the control thread's home: [`state`] (the cluster objects and the file
//! source), [`translate`] (objects -> table inputs, pure), [`daemon`] (xdpnetd: drives the
//! dataplane runtime from a source). The pure table builder it feeds lives in
//! `xdpnet_dataplane::fib::FibBuilder`.

#![forbid(unsafe_code)]

pub use xdpnet_dataplane as dataplane;

pub mod api_double;
pub mod cni;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod files;
pub mod http;
pub mod inspect;
pub mod ipam;
pub mod kube_source;
pub mod masq;
pub mod metrics;
pub mod neigh;
pub mod podnet;
pub mod state;
pub mod translate;
pub mod view;
