//! xdpnet control plane: cluster-state sources, the table builder driver, the CNI endpoint,
//! IPAM, metrics and inspection.
//!
//! This crate is the control thread's home: [`state`] (the cluster objects and the file
//! source), [`translate`] (objects -> table inputs, pure), [`controller`] (the incremental
//! core and the one writer of the table builder, `xdpnet_dataplane::fib::FibBuilder`),
//! [`daemon`] (xdpnetd: drives the dataplane runtime from a source), [`cni`] (the endpoint the
//! plugin calls; it asks the daemon, the daemon never calls it), [`view`] (what the daemon
//! publishes for the other threads). Calls go one way: cni -> daemon (a channel of typed
//! requests and answers), daemon -> controller -> builder, daemon -> http/view.

#![forbid(unsafe_code)]

pub use xdpnet_dataplane as dataplane;

pub mod api_double;
pub mod cni;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod edge;
pub mod files;
pub mod http;
pub mod inspect;
pub mod ipam;
pub mod kube_source;
pub mod masq;
pub mod metrics;
pub mod neigh;
pub mod podnet;
pub mod policy;
pub mod policy_ref;
pub mod state;
pub mod translate;
pub mod view;
