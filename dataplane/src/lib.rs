//! xdpnet dataplane: packet views, the forwarding table and its publication, connection
//! tracking, and the per-batch packet pipeline.
//!
//! Everything here except the AF_XDP/UMEM layer (added with the ports) is safe Rust; the crate
//! denies `unsafe_code` and that one module will opt in with documented invariants.

#![deny(unsafe_code)]

pub mod conntrack;
pub mod counters;
pub mod fib;
pub mod hash;
pub mod packet;
pub mod pipeline;
pub mod rcu;
pub mod testutil;
pub mod wire;
