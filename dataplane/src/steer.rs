//! The XDP steering program (`bpf/xdpnet.bpf.c`, compiled by the build script) and its maps.
//!
//! Owns: the loaded BPF object, one `bpf_link` per interface it is attached to, and the maps
//! the program reads (`xsks`, `ports`, `steer`, `vteps`, `congested`). Promises: links are detached when
//! this value drops, and the kernel detaches them when the process dies (links die with their
//! last fd), so a crashed daemon leaves no program behind; an uplink frame the dataplane does
//! not own (see [`Steering::sync_frontends`]) always gets XDP_PASS. Control-thread only.

use crate::fib::ServiceSpec;
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, Object, ObjectBuilder};
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xdpnet.bpf.o"));

/// Entries of the program's XSKMAP and of its per-slot congestion flags.
pub const XSKMAP_SLOTS: usize = 4096;

/// How the program treats frames of one (interface, queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteerMode {
    /// Every frame to the socket (pod and host ports).
    All = 0,
    /// Only VXLAN to us and service frontends; the rest to the kernel (the uplink).
    Uplink = 1,
}

/// A frontend steered from the uplink: destination address, port (0 for ICMP), IP protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    /// Destination address.
    pub addr: Ipv4Addr,
    /// Destination port (0 for ICMP).
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
}

impl Frontend {
    fn key(&self) -> [u8; 8] {
        let mut k = [0u8; 8];
        k[0..4].copy_from_slice(&self.addr.octets());
        k[4..6].copy_from_slice(&self.port.to_be_bytes());
        k[6] = self.proto;
        k
    }
}

/// What the uplink must steer for these services: NodePorts on `node_ip`, every port of
/// LoadBalancer and external IPs, and ICMP to those (echo is answered by the dataplane).
pub fn frontends<'a>(
    node_ip: Ipv4Addr,
    services: impl Iterator<Item = &'a ServiceSpec>,
) -> BTreeSet<Frontend> {
    let mut out = BTreeSet::new();
    for s in services {
        for p in &s.ports {
            let proto = p.protocol.number();
            if let Some(np) = p.node_port {
                out.insert(Frontend {
                    addr: node_ip,
                    port: np,
                    proto,
                });
            }
            for &addr in s.load_balancer_ips.iter().chain(&s.external_ips) {
                out.insert(Frontend {
                    addr,
                    port: p.port,
                    proto,
                });
                if addr != node_ip {
                    out.insert(Frontend {
                        addr,
                        port: 0,
                        proto: crate::wire::proto::ICMP,
                    });
                }
            }
        }
    }
    out
}

/// Why loading or driving the program failed.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    /// libbpf refused (names the step).
    #[error("XDP program: {what}: {source}")]
    Bpf {
        /// The step.
        what: String,
        /// libbpf's error.
        source: libbpf_rs::Error,
    },
}

fn bpf(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> SteerError {
    let what = what.into();
    move |source| SteerError::Bpf { what, source }
}

crate::counters::counter_set! {
    /// The steering program's counters (per-CPU in the program, summed when read).
    pub struct SteeringCounters {
        to_socket: Counter, "steering.to_socket", "xdpnet_steering_to_socket_total", "Uplink frames the XDP program redirected to the dataplane.";
        passed: Counter, "steering.passed", "xdpnet_steering_passed_total", "Uplink frames the XDP program passed to the kernel.";
        unknown_port: Counter, "steering.unknown_port", "xdpnet_steering_unknown_port_total", "Frames on an interface queue the dataplane has no socket for (passed to the kernel).";
        early_drop: Counter, "steering.early_drop", "xdpnet_steering_early_drop_total", "Frames the XDP program dropped because the worker owning their socket was behind (admission control, before any copy into the UMEM).";
    }
}

/// The loaded steering program.
#[derive(Debug)]
pub struct Steering {
    links: HashMap<u32, Link>,
    xsks: MapHandle,
    ports: MapHandle,
    steer: MapHandle,
    vteps: MapHandle,
    stats: MapHandle,
    congested: MapHandle,
    frontends: BTreeSet<Frontend>,
    // Last: the object outlives the map handles' use of its maps (they hold their own fds).
    obj: Object,
}

impl Steering {
    /// Loads the program and creates its maps (needs CAP_BPF / CAP_NET_ADMIN).
    pub fn load() -> Result<Self, SteerError> {
        let open = ObjectBuilder::default()
            .open_memory(OBJECT)
            .map_err(bpf("open object"))?;
        let obj = open.load().map_err(bpf("load (verifier or permissions)"))?;
        let map = |name: &str| -> Result<MapHandle, SteerError> {
            let m = obj
                .maps()
                .find(|m| m.name() == name)
                .ok_or_else(|| SteerError::Bpf {
                    what: format!("map {name}"),
                    source: libbpf_rs::Error::from(std::io::Error::from(
                        std::io::ErrorKind::NotFound,
                    )),
                })?;
            MapHandle::try_from(&m).map_err(bpf(format!("dup map {name}")))
        };
        Ok(Self {
            links: HashMap::new(),
            xsks: map("xsks")?,
            ports: map("ports")?,
            steer: map("steer")?,
            vteps: map("vteps")?,
            stats: map("stats")?,
            congested: map("congested")?,
            frontends: BTreeSet::new(),
            obj,
        })
    }

    /// Attaches the program to interface `ifindex` (native XDP where the driver has it).
    pub fn attach(&mut self, ifindex: u32) -> Result<(), SteerError> {
        if self.links.contains_key(&ifindex) {
            return Ok(());
        }
        let prog = self
            .obj
            .progs_mut()
            .find(|p| p.name() == "xdpnet_steer")
            .ok_or_else(|| SteerError::Bpf {
                what: "program xdpnet_steer".into(),
                source: libbpf_rs::Error::from(std::io::Error::from(std::io::ErrorKind::NotFound)),
            })?;
        let link = prog
            .attach_xdp(ifindex as i32)
            .map_err(bpf(format!("attach to ifindex {ifindex}")))?;
        self.links.insert(ifindex, link);
        Ok(())
    }

    /// Detaches from `ifindex` (no-op when not attached).
    pub fn detach(&mut self, ifindex: u32) {
        if let Some(l) = self.links.remove(&ifindex) {
            // The interface may already be gone (pod deleted): then the kernel dropped the
            // attachment with it and detach has nothing to do.
            let _ = l.detach();
        }
    }

    /// Interfaces the program is attached to.
    pub fn attached(&self) -> impl Iterator<Item = u32> + '_ {
        self.links.keys().copied()
    }

    /// Routes (ifindex, queue) to XSKMAP `slot` with `mode`.
    pub fn set_port(
        &self,
        ifindex: u32,
        queue: u32,
        slot: u32,
        mode: SteerMode,
    ) -> Result<(), SteerError> {
        let mut k = [0u8; 8];
        k[..4].copy_from_slice(&ifindex.to_ne_bytes());
        k[4..].copy_from_slice(&queue.to_ne_bytes());
        let mut v = [0u8; 8];
        v[..4].copy_from_slice(&slot.to_ne_bytes());
        v[4..].copy_from_slice(&(mode as u32).to_ne_bytes());
        self.ports
            .update(&k, &v, MapFlags::ANY)
            .map_err(bpf("update ports"))
    }

    /// Forgets (ifindex, queue).
    pub fn clear_port(&self, ifindex: u32, queue: u32) {
        let mut k = [0u8; 8];
        k[..4].copy_from_slice(&ifindex.to_ne_bytes());
        k[4..].copy_from_slice(&queue.to_ne_bytes());
        let _ = self.ports.delete(&k);
    }

    /// Puts socket `fd` into XSKMAP `slot`.
    pub fn set_socket(&self, slot: u32, fd: BorrowedFd<'_>) -> Result<(), SteerError> {
        self.xsks
            .update(
                &slot.to_ne_bytes(),
                &(fd.as_raw_fd() as u32).to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(bpf(format!("update xsks[{slot}]")))
    }

    /// Empties XSKMAP `slot` (closing the socket empties it too).
    pub fn clear_socket(&self, slot: u32) {
        let _ = self.xsks.delete(&slot.to_ne_bytes());
    }

    /// This node's VTEP address and VXLAN port.
    pub fn set_vtep(&self, addr: Ipv4Addr, port: u16) -> Result<(), SteerError> {
        let mut v = [0u8; 8];
        v[..4].copy_from_slice(&addr.octets());
        v[4..6].copy_from_slice(&port.to_be_bytes());
        self.vteps
            .update(&0u32.to_ne_bytes(), &v, MapFlags::ANY)
            .map_err(bpf("update vteps"))
    }

    /// Makes the steered frontends exactly `want` (adds first, then removes, so a frontend
    /// present before and after is never missing).
    pub fn sync_frontends(&mut self, want: BTreeSet<Frontend>) -> Result<(), SteerError> {
        for f in want.difference(&self.frontends) {
            self.steer
                .update(&f.key(), &[1], MapFlags::ANY)
                .map_err(bpf(format!("update steer {f:?}")))?;
        }
        for f in self.frontends.difference(&want) {
            let _ = self.steer.delete(&f.key());
        }
        self.frontends = want;
        Ok(())
    }

    /// Frontends steered now.
    pub fn frontends(&self) -> &BTreeSet<Frontend> {
        &self.frontends
    }

    /// The program's congestion flags (one 8-byte word per XSKMAP slot, nonzero: drop frames
    /// for that slot), mapped into this process for the workers to write.
    pub fn congestion(&self) -> Result<crate::sys::SharedWords, SteerError> {
        use std::os::fd::AsFd;
        crate::sys::SharedWords::map(self.congested.as_fd(), XSKMAP_SLOTS).map_err(|e| {
            SteerError::Bpf {
                what: "mmap congested".into(),
                source: libbpf_rs::Error::from(e),
            }
        })
    }

    /// Program counters summed over CPUs, read now.
    pub fn counters(&self) -> SteeringCounters {
        let out = SteeringCounters::default();
        for (i, o) in [
            &out.to_socket,
            &out.passed,
            &out.unknown_port,
            &out.early_drop,
        ]
        .into_iter()
        .enumerate()
        {
            if let Ok(Some(per_cpu)) = self
                .stats
                .lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY)
            {
                o.set(
                    per_cpu
                        .iter()
                        .filter_map(|v| v.get(..8))
                        .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
                        .sum(),
                );
            }
        }
        out
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        let ifs: Vec<u32> = self.links.keys().copied().collect();
        for i in ifs {
            self.detach(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fib::{Protocol, ServicePortSpec};

    #[test]
    fn frontends_cover_node_ports_and_external_addresses_only() {
        let node = Ipv4Addr::new(198, 18, 0, 11);
        let svc = ServiceSpec {
            name: "a/web".into(),
            cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 10)],
            load_balancer_ips: vec![Ipv4Addr::new(203, 0, 113, 7)],
            external_ips: vec![node],
            ports: vec![
                ServicePortSpec {
                    protocol: Protocol::Tcp,
                    port: 80,
                    node_port: Some(30080),
                    backends: vec![],
                },
                ServicePortSpec {
                    protocol: Protocol::Udp,
                    port: 53,
                    node_port: None,
                    backends: vec![],
                },
            ],
            ..Default::default()
        };
        let f = frontends(node, [&svc].into_iter());
        let want: BTreeSet<Frontend> = [
            (node, 30080, 6),
            (node, 80, 6),
            (node, 53, 17),
            (Ipv4Addr::new(203, 0, 113, 7), 80, 6),
            (Ipv4Addr::new(203, 0, 113, 7), 53, 17),
            (Ipv4Addr::new(203, 0, 113, 7), 0, 1),
        ]
        .into_iter()
        .map(|(addr, port, proto)| Frontend { addr, port, proto })
        .collect();
        // No ClusterIP (never on the wire of the uplink), no ICMP for the node's own address
        // (its pings belong to the node).
        assert_eq!(f, want);
        let k = Frontend {
            addr: Ipv4Addr::new(1, 2, 3, 4),
            port: 0x1234,
            proto: 17,
        }
        .key();
        assert_eq!(k, [1, 2, 3, 4, 0x12, 0x34, 17, 0]);
    }
}
