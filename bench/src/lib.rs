//! xdpnet-bench library: synthetic workloads for the in-memory pipeline (the `pipeline` demo and
//! the criterion benchmarks share them) and the netns lab (the demo, `lab up|down|status` and the
//! end-to-end tests share it).

#![forbid(unsafe_code)]

pub mod compare;
pub mod control_bench;
pub mod lab;
pub mod loadgen;
pub mod workload;
