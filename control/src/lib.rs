//! xdpnet control plane: cluster-state sources, the table builder driver, the CNI endpoint,
//! IPAM, metrics and inspection.
//!
//! This crate is the control thread's home. The pure table builder it drives lives in
//! `xdpnet_dataplane::fib::FibBuilder`; sources (file, Kubernetes watches), the CNI endpoint
//! and metrics arrive with their issues.

#![forbid(unsafe_code)]

pub use xdpnet_dataplane as dataplane;
