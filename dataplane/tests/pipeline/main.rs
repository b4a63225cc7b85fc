//! The pipeline end to end in memory: real frames in, frames out checked by etherparse.

#[path = "../common/mod.rs"]
mod common;

mod routing;
mod services;
mod validation;

use common::*;
use proptest::prelude::*;
use std::net::{Ipv4Addr, SocketAddrV4};
use xdpnet_dataplane::counters::DropReason;
use xdpnet_dataplane::pipeline::{SNAT_PORT_MIN, Verdict};
use xdpnet_dataplane::testutil::{
    self, FrameSpec, HOST, UPLINK, node_ip, pod_ip, pod_mac, service_ip,
};
use xdpnet_dataplane::wire::{MacAddr, tcp};

fn from_pod(i: u32, j: u32, spec: FrameSpec) -> Vec<u8> {
    spec.macs(pod_mac(i, j), testutil::node_facts(i).gateway_mac)
        .to_vec()
}

fn service_backends(k: u32) -> Vec<SocketAddrV4> {
    (0..SHAPE.backends)
        .map(|b| testutil::backend_of(&SHAPE, k, b))
        .collect()
}

/// The node index a pod IP lives on.
fn node_of(ip: Ipv4Addr) -> u32 {
    (u32::from(ip) - u32::from(Ipv4Addr::new(10, 244, 0, 0))) >> 8
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);

const CLIENT_MAC: MacAddr = MacAddr([2, 0xcc, 0, 0, 0, 1]);
