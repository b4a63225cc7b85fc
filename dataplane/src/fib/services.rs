//! Services in a snapshot: each service port's backends with its Maglev tables ([`Lb`]), and
//! the frontend index (address/port/protocol and NodePort -> service port) with the
//! builder's functions that make both.

use super::maglev::Maglev;
use super::{BuildWarning, NodeFacts, Protocol, ServiceSpec};
use crate::hash::IntMap;
use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::sync::Arc;

/// A built service port: backends and their Maglev tables.
#[derive(Debug)]
pub struct Lb {
    /// `namespace/name:port/proto`, for inspection.
    pub name: String,
    /// IP protocol number.
    pub proto: u8,
    /// The service port.
    pub port: u16,
    /// Backends, sorted.
    pub backends: Box<[SocketAddrV4]>,
    /// Maglev over all backends.
    pub all: Maglev,
    /// Indexes (into `backends`) of this node's backends, and Maglev over them.
    pub local: Box<[u16]>,
    /// Maglev over `local`.
    pub local_table: Maglev,
    /// ClientIP affinity timeout in seconds; 0 = none.
    pub affinity_timeout: u32,
    /// externalTrafficPolicy Local.
    pub external_local: bool,
    /// internalTrafficPolicy Local.
    pub internal_local: bool,
}

impl Lb {
    /// Picks a backend for a flow hash: `external` says whether the traffic came in on a
    /// NodePort / LoadBalancer / external IP (the traffic policies differ).
    #[inline]
    pub fn pick(&self, hash: u64, external: bool) -> Option<SocketAddrV4> {
        let local_only = if external {
            self.external_local
        } else {
            self.internal_local
        };
        if local_only {
            let i = self.local_table.pick(hash)?;
            self.backends.get(*self.local.get(i)? as usize).copied()
        } else {
            self.backends.get(self.all.pick(hash)?).copied()
        }
    }

    /// Prefetches what [`Lb::pick`] will read for this hash.
    #[inline]
    pub fn prefetch_pick(&self, hash: u64, external: bool) {
        let local_only = if external {
            self.external_local
        } else {
            self.internal_local
        };
        if local_only {
            self.local_table.prefetch(hash);
        } else {
            self.all.prefetch(hash);
        }
    }

    /// True when `b` is one of this port's backends.
    pub fn has_backend(&self, b: SocketAddrV4) -> bool {
        self.backends.binary_search(&b).is_ok()
    }
}

/// Service lookup result.
#[derive(Debug, Clone, Copy)]
pub struct SvcHit<'a> {
    /// The service port.
    pub lb: &'a Lb,
    /// Whether the address is an external one (NodePort, LoadBalancer, externalIP).
    pub external: bool,
}

/// Service frontends.
#[derive(Debug, Default)]
pub(super) struct SvcIndex {
    /// (ip, port, proto) -> lb index << 1 | external
    pub(super) by_addr: crate::hash::FlatMap,
    /// (node port, proto) -> lb index
    pub(super) by_node_port: IntMap<u32, u32>,
    /// The lowest and highest NodePort in use (`(u16::MAX, 0)` when none): most packets are for
    /// other ports and skip the NodePort probe with two compares.
    pub(super) node_ports: (u16, u16),
    /// Every service address (for ICMP echo).
    pub(super) vips: IntMap<u32, ()>,
}

#[inline]
pub(super) fn svc_key(ip: u32, port: u16, proto: u8) -> u64 {
    ((ip as u64) << 32) | ((port as u64) << 8) | proto as u64
}

#[derive(Debug)]
pub(super) struct SvcEntry {
    pub(super) spec: ServiceSpec,
    pub(super) built: Vec<Arc<Lb>>,
    /// Position of `built[0]` in the last published lbs vector.
    pub(super) offset: usize,
}

/// Builds the [`Lb`]s of one service (one Maglev table per distinct backend set).
pub(super) fn build_lbs(node: &NodeFacts, spec: &ServiceSpec) -> Vec<Arc<Lb>> {
    // Ports of one service usually share their backend set: build each Maglev table once.
    let mut built: Vec<(Vec<SocketAddrV4>, Maglev, Maglev)> = Vec::new();
    spec.ports
        .iter()
        .map(|p| {
            let mut backends = p.backends.clone();
            backends.sort();
            backends.dedup();
            let local: Vec<u16> = backends
                .iter()
                .enumerate()
                .filter(|(_, b)| {
                    node.pod_cidr.contains(*b.ip())
                        || *b.ip() == node.underlay_ip
                        || node.addrs.contains(b.ip())
                })
                .map(|(i, _)| i as u16)
                .collect();
            let (all, local_table) = match built.iter().find(|(b, _, _)| *b == backends) {
                Some((_, a, l)) => (a.clone(), l.clone()),
                None => {
                    let local_addrs: Vec<SocketAddrV4> =
                        local.iter().map(|&i| backends[i as usize]).collect();
                    let t = (Maglev::new(&backends), Maglev::new(&local_addrs));
                    built.push((backends.clone(), t.0.clone(), t.1.clone()));
                    t
                }
            };
            let proto_name = match p.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            Arc::new(Lb {
                name: format!("{}:{}/{}", spec.name, p.port, proto_name),
                proto: p.protocol.number(),
                port: p.port,
                all,
                local_table,
                local: local.into_boxed_slice(),
                backends: backends.into_boxed_slice(),
                affinity_timeout: spec.affinity_timeout.unwrap_or(0),
                external_local: spec.external_local,
                internal_local: spec.internal_local,
            })
        })
        .collect()
}

/// Builds the Maglev tables of `todo` on all cores (a full build is thousands of tables).
fn build_missing(node: &NodeFacts, mut todo: Vec<&mut SvcEntry>) {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if todo.len() < 64 || threads == 1 {
        for e in todo {
            e.built = build_lbs(node, &e.spec);
        }
        return;
    }
    let per = todo.len().div_ceil(threads);
    std::thread::scope(|s| {
        for chunk in todo.chunks_mut(per) {
            s.spawn(move || {
                for e in chunk.iter_mut() {
                    e.built = build_lbs(node, &e.spec);
                }
            });
        }
    });
}

/// Builds the frontend index over every service (and the Maglev tables still missing);
/// conflicting frontends are warnings: the service whose name sorts first keeps the address.
pub(super) fn build_index(
    node: &NodeFacts,
    services: &mut BTreeMap<String, SvcEntry>,
) -> (Vec<Arc<Lb>>, SvcIndex, Vec<BuildWarning>) {
    let mut lbs = Vec::new();
    let mut index = SvcIndex {
        node_ports: (u16::MAX, 0),
        ..SvcIndex::default()
    };
    let mut by_addr: Vec<(u64, u32)> = Vec::new();
    let mut warnings = Vec::new();
    let mut owner: IntMap<u64, String> = IntMap::default();
    let mut np_owner: IntMap<u32, String> = IntMap::default();
    build_missing(
        node,
        services
            .values_mut()
            .filter(|e| e.built.is_empty())
            .collect(),
    );
    for e in services.values_mut() {
        e.offset = lbs.len();
        for (k, p) in e.spec.ports.iter().enumerate() {
            let li = (e.offset + k) as u32;
            let pr = p.protocol.number();
            let addrs = e
                .spec
                .cluster_ips
                .iter()
                .map(|ip| (ip, 0))
                .chain(e.spec.load_balancer_ips.iter().map(|ip| (ip, 1)))
                .chain(e.spec.external_ips.iter().map(|ip| (ip, 1)));
            for (ip, ext) in addrs {
                let key = svc_key((*ip).into(), p.port, pr);
                match owner.get(&key) {
                    Some(o) if *o != e.spec.name => {
                        warnings.push(BuildWarning::FrontendConflict(
                            o.clone(),
                            e.spec.name.clone(),
                            format!("{ip}:{}", p.port),
                        ));
                        continue;
                    }
                    _ => {}
                }
                owner.insert(key, e.spec.name.clone());
                by_addr.push((key, (li << 1) | ext));
                index.vips.insert((*ip).into(), ());
            }
            if let Some(np) = p.node_port {
                let key = ((np as u32) << 8) | pr as u32;
                match np_owner.get(&key) {
                    Some(o) if *o != e.spec.name => {
                        warnings.push(BuildWarning::FrontendConflict(
                            o.clone(),
                            e.spec.name.clone(),
                            format!("nodePort {np}"),
                        ));
                        continue;
                    }
                    _ => {}
                }
                np_owner.insert(key, e.spec.name.clone());
                index.by_node_port.insert(key, li);
                let (lo, hi) = index.node_ports;
                index.node_ports = (lo.min(np), hi.max(np));
            }
        }
        lbs.extend(e.built.iter().cloned());
    }
    index.by_addr = crate::hash::FlatMap::new(&by_addr);
    (lbs, index, warnings)
}
