//! The packet pipeline: a batch of frames from one port in, a verdict per frame out.
//!
//! classify -> validate (lengths, IPv4 header checksum, anti-spoofing on pod ports: source IP
//! and MAC must be the pod's) -> VXLAN decap (only from known nodes, only our VNI) -> ARP replies
//! for the gateway (proxy ARP) -> ICMP echo for service addresses -> conntrack (translate
//! established flows either way) or service lookup + Maglev + new conntrack binding (DNAT, and
//! SNAT to the masquerade address for clients outside the cluster) -> route (local pod, remote
//! node by VXLAN, host port, or back out the uplink) -> rewrite (MACs, TTL, incremental
//! checksums per RFC 1624) -> verdict.
//!
//! Vectors, not packets: each stage runs over the whole batch before the next, so the cache
//! misses of the batch overlap instead of adding up. (1) validate, decap, compute the flow hash;
//! prefetch the conntrack bucket (and, for a packet that may open a flow, look its service up
//! and prefetch it); (2) prefetch the conntrack slot, the Maglev entry and the slot a new entry
//! would take; (3) conntrack lookup: established flows and plain routing finish here; a new
//! service flow picks its backend and prefetches its reply tuple's bucket; (4) prefetch that
//! bucket's free slot; (5) record the new flows, translate, route. The table is the snapshot
//! the caller loaded once for the batch.
//!
//! Invariants: never allocates, never logs, never panics on any input; every frame gets exactly
//! one verdict and every drop is counted under one [`DropReason`].
//!
//! Choices where Kubernetes leaves room:
//! - ICMP echo to a service address (ClusterIP, LoadBalancer, external IP) is answered by the
//!   dataplane itself, as IPVS-mode kube-proxy and Cilium do; echo to backends is not needed.
//! - ICMP errors (unreachable, time exceeded, parameter problem) quoting a NAT'd TCP/UDP packet
//!   are translated back (outer and quoted headers, checksums) so PMTU discovery and port
//!   unreachable reach the client with the service address in them.
//! - Non-first IP fragments carry no ports, so they cannot be matched to a service flow: those
//!   addressed to a service are dropped and counted; fragments between pods are routed.
//! - TTL expiry is a counted drop (no ICMP time exceeded is generated).

use crate::conntrack::{self, Conntrack, Tuple, flags as ctf};
use crate::counters::{Counters, DropReason};
use crate::fib::{Fib, NextHop, PortId, PortKind};
use crate::hash::flow_hash;
use crate::packet::Packet;
use crate::wire::{
    self, ArpPacket, EthernetFrame, MacAddr, checksum, ethernet, icmp, ipv4, ipv4::Ipv4Packet,
    proto, tcp, udp,
};
use std::sync::Arc;

mod ingress;
mod route;
mod service;

/// Frames processed per stage. Callers may pass more; they are done in chunks of this size.
pub const MAX_BATCH: usize = 64;

/// First port of the range used for masquerade source ports (above Linux's default ephemeral
/// range, so host connections from the same address do not collide).
pub const SNAT_PORT_MIN: u16 = 61_000;
const SNAT_PORTS: u32 = 65_536 - SNAT_PORT_MIN as u32;
const SNAT_TRIES: u32 = 16;

/// What happens to a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit on this port (the frame was rewritten for it).
    Tx(PortId),
    /// Dropped, counted under this reason.
    Drop(DropReason),
}

/// A new service flow decided in stage three and recorded in stage five, once its reply
/// tuple's conntrack bucket and free slot (prefetched in between) are in cache.
#[derive(Debug, Clone, Copy, Default)]
struct NewFlow {
    xlate: Tuple,
    /// Conntrack hash of the reply tuple (`xlate` reversed).
    rhash: u64,
    masq: bool,
    mac_idx: u16,
    extra: u8,
}

/// What every packet of a batch shares: the table snapshot, conntrack, the clock, the port kind.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    fib: &'a Fib,
    ct: &'a Conntrack,
    now: u16,
    kind: PortKind,
}

enum Step {
    Done(Verdict),
    New(NewFlow),
}

#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    /// Offset of the L4 header in the data.
    l4: u16,
    proto: u8,
    tcp_flags: u8,
    /// TCP/UDP with ports (not a later fragment).
    ports: bool,
    later_fragment: bool,
    decapped: bool,
    /// Stage one looked the service up: `svc` holds the result (`NO_SVC` = none).
    svc_known: bool,
    svc: u32,
    tuple: Tuple,
    hash: u64,
    /// Unseeded flow hash for Maglev (set with `svc`).
    lb_hash: u64,
}

const NO_SVC: u32 = u32::MAX;

const L3: usize = ethernet::HEADER_LEN;

/// A worker's pipeline: scratch space and counters. One per worker thread.
#[derive(Debug)]
pub struct Pipeline {
    counters: Arc<Counters>,
    meta: [Meta; MAX_BATCH],
    pending: [bool; MAX_BATCH],
    new: [NewFlow; MAX_BATCH],
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Pipeline {
    /// A pipeline with fresh counters.
    pub fn new() -> Self {
        Self {
            counters: Arc::new(Counters::default()),
            meta: [Meta::default(); MAX_BATCH],
            pending: [false; MAX_BATCH],
            new: [NewFlow::default(); MAX_BATCH],
        }
    }

    /// The counters (shared with whoever reports them).
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// I/O-only mode (a benchmark's ceiling of the I/O layer, `xdpnetd --io-only`): forwards by
    /// the IPv4 destination alone, with no validation, service, conntrack, encapsulation or
    /// rewrite: a local pod's address goes out its port unchanged, an address in another node's
    /// pod CIDR goes out the uplink with only the destination MAC set to that node's next hop,
    /// anything else is dropped (`no_route`, or `unsupported_ethertype` for non-IPv4). The
    /// same frames cross the same ports as in the full pipeline, so the difference between the
    /// two is the pipeline's cost. Not a way to run a cluster: nothing is checked.
    pub fn forward_io_only(&mut self, fib: &Fib, pkts: &mut [Packet<'_>], out: &mut [Verdict]) {
        let n = pkts.len().min(out.len());
        self.counters.rx.add(n as u64);
        for (p, v) in pkts[..n].iter_mut().zip(out.iter_mut()) {
            let d = p.data_mut();
            *v = if d.len() < L3 + ipv4::MIN_HEADER_LEN
                || EthernetFrame::new_unchecked(&d[..]).ethertype() != ethernet::ethertype::IPV4
            {
                Verdict::Drop(DropReason::UnsupportedEthertype)
            } else {
                let dst = Ipv4Packet::new_unchecked(&d[L3..]).dst_u32();
                if let Some(ep) = fib.endpoint(dst) {
                    Verdict::Tx(ep.port)
                } else if let Some(r) = fib.route(dst) {
                    EthernetFrame::new_unchecked(&mut d[..]).set_dst(r.outer.next_hop_mac());
                    Verdict::Tx(fib.node().uplink_port)
                } else {
                    Verdict::Drop(DropReason::NoRoute)
                }
            };
            match *v {
                Verdict::Tx(_) => self.counters.tx.inc(),
                Verdict::Drop(r) => self.counters.count_drop(r),
            }
        }
    }

    /// Processes `pkts` received on port `rx`; writes one verdict per packet into `out`
    /// (`out.len()` must be at least `pkts.len()`; extra packets get no verdict and are left
    /// untouched). `now_secs` is a monotonic clock in seconds (conntrack ages).
    pub fn process(
        &mut self,
        fib: &Fib,
        ct: &Conntrack,
        now_secs: u32,
        rx: PortId,
        pkts: &mut [Packet<'_>],
        out: &mut [Verdict],
    ) {
        let n = pkts.len().min(out.len());
        let mut start = 0;
        while start < n {
            let end = (start + MAX_BATCH).min(n);
            self.process_chunk(
                fib,
                ct,
                now_secs,
                rx,
                &mut pkts[start..end],
                &mut out[start..end],
            );
            start = end;
        }
    }

    fn process_chunk(
        &mut self,
        fib: &Fib,
        ct: &Conntrack,
        now_secs: u32,
        rx: PortId,
        pkts: &mut [Packet<'_>],
        out: &mut [Verdict],
    ) {
        let kind = fib.port_kind(rx);
        self.counters.rx.add(pkts.len() as u64);
        // Stage one: validate and classify every frame; prefetch its conntrack bucket, and for
        // a packet that may open a flow (TCP SYN, UDP) look its service up and prefetch that.
        for (i, p) in pkts.iter_mut().enumerate() {
            match self.ingress(fib, ct, kind, rx, p) {
                Ok(mut m) => {
                    if m.ports {
                        ct.prefetch_bucket(m.hash);
                        let opener = m.proto == proto::UDP
                            || m.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN;
                        if opener {
                            let t = &m.tuple;
                            m.svc_known = true;
                            fib.prefetch_service(t.dst, t.dport, t.proto);
                        }
                    }
                    self.meta[i] = m;
                    self.pending[i] = true;
                }
                Err(v) => {
                    out[i] = v;
                    self.pending[i] = false;
                }
            }
        }
        // Stage one and a half: flow openers look their service up (prefetched above) and
        // prefetch it.
        for i in 0..pkts.len() {
            let m = &mut self.meta[i];
            if self.pending[i] && m.svc_known {
                let t = &m.tuple;
                m.svc = fib.service_ref(t.dst, t.dport, t.proto).unwrap_or(NO_SVC);
                if let Some(svc) = fib.svc_hit(m.svc) {
                    crate::sys::prefetch(svc.lb);
                }
            }
        }
        // Stage two: the bucket headers are (on their way) in cache; prefetch the slots. A
        // packet that may open a flow (TCP SYN, UDP) to a service also gets its Maglev entry
        // and the slot its conntrack entry would go to prefetched.
        for i in 0..pkts.len() {
            let m = &mut self.meta[i];
            if self.pending[i] && m.ports {
                ct.prefetch_slot(m.hash);
                // `svc_known`: stage one found it may open a flow and looked its service up.
                if m.svc_known {
                    let t = m.tuple;
                    if let Some(svc) = fib.svc_hit(m.svc) {
                        let raw_uplink = kind == PortKind::Uplink && !m.decapped;
                        m.lb_hash = flow_hash(0, t.src, t.dst, t.sport, t.dport, t.proto);
                        svc.lb.prefetch_pick(m.lb_hash, svc.external && raw_uplink);
                        ct.prefetch_free_slot(m.hash);
                    }
                }
            }
        }
        // Stage three: lookups; established flows and plain routing finish here. A new service
        // flow picks its backend and prefetches its reply tuple's bucket.
        let now = conntrack::tick(now_secs);
        let cx = Ctx { fib, ct, now, kind };
        for (i, p) in pkts.iter_mut().enumerate() {
            if self.pending[i] {
                let m = self.meta[i];
                match self.forward(&cx, p, &m) {
                    Step::Done(v) => {
                        out[i] = v;
                        self.pending[i] = false;
                    }
                    Step::New(nf) => self.new[i] = nf,
                }
            }
        }
        // Stage four: the reply tuples' bucket headers are in cache: prefetch their free slots.
        for i in 0..pkts.len() {
            if self.pending[i] {
                ct.prefetch_free_slot(self.new[i].rhash);
            }
        }
        // Stage five: record the new flows, translate and route them.
        for (i, p) in pkts.iter_mut().enumerate() {
            if self.pending[i] {
                let (m, nf) = (self.meta[i], self.new[i]);
                out[i] = self.commit_new_flow(&cx, p, &m, nf);
            }
        }
        // Transmissions counted once per batch; drops by reason as they come.
        let mut tx = 0u64;
        for v in out.iter() {
            match v {
                Verdict::Tx(_) => tx += 1,
                Verdict::Drop(r) => self.counters.count_drop(*r),
            }
        }
        self.counters.tx.add(tx);
    }
}
