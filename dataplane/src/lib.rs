//! xdpnet dataplane: packet views, the forwarding table and its publication, connection
//! tracking, and the per-batch packet pipeline.
//!
//! Everything here is safe Rust except the `sys` module (AF_XDP rings, sockets and UMEM;
//! netdev ioctls; descriptor passing and eventfd; table memory and prefetch hints): the crate
//! denies `unsafe_code` and `sys` alone opts in, with a
//! `SAFETY:` comment on every unsafe block.

#![deny(unsafe_code)]

pub mod conntrack;
pub mod counters;
pub mod fib;
pub mod gso;
pub mod hash;
pub mod overlay;
pub mod packet;
pub mod pipeline;
pub mod policy;
pub mod rcu;
pub mod runtime;
pub mod steer;
pub mod sys;
pub mod testutil;
pub mod wire;
pub mod worker;
