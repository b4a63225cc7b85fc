//! xdpnet-bench library: synthetic workloads for the in-memory pipeline (the `pipeline` demo and
//! the criterion benchmarks share them).

#![forbid(unsafe_code)]

pub mod workload;
