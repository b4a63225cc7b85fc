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
use crate::fib::{ENCAP_LEN, Fib, NextHop, PortId, PortKind};
use crate::hash::flow_hash;
use crate::packet::Packet;
use crate::wire::{
    self, ArpPacket, EthernetFrame, MacAddr, checksum, ethernet, icmp, ipv4, ipv4::Ipv4Packet,
    proto, tcp,
};
use std::sync::Arc;

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
            *v = if d.len() < L3 + 20 || d[12..14] != [0x08, 0x00] {
                Verdict::Drop(DropReason::UnsupportedEthertype)
            } else {
                let dst = u32::from_be_bytes([d[30], d[31], d[32], d[33]]);
                if let Some(ep) = fib.endpoint(dst) {
                    Verdict::Tx(ep.port)
                } else if let Some(r) = fib.route(dst) {
                    d[0..6].copy_from_slice(&r.outer[0..6]);
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
                let opener =
                    m.proto == proto::UDP || m.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN;
                if opener {
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
        for v in out.iter() {
            match v {
                Verdict::Tx(_) => self.counters.tx.inc(),
                Verdict::Drop(r) => self.counters.count_drop(*r),
            }
        }
    }

    /// Stage one: validate, answer ARP, decap; compute the flow tuple and hash.
    fn ingress(
        &self,
        fib: &Fib,
        ct: &Conntrack,
        kind: PortKind,
        rx: PortId,
        p: &mut Packet<'_>,
    ) -> Result<Meta, Verdict> {
        use DropReason::*;
        let eth = EthernetFrame::new_checked(p.data()).map_err(|_| Verdict::Drop(EthMalformed))?;
        let et = eth.ethertype();
        let src_mac = eth.src();
        let node = fib.node();
        let mut decapped = false;
        match kind {
            PortKind::Unused => return Err(Verdict::Drop(UnknownPort)),
            PortKind::Uplink => {
                if et != ethernet::ethertype::IPV4 {
                    return Err(Verdict::Drop(NotForUs));
                }
                let ip = Ipv4Packet::new_checked(&p.data()[L3..])
                    .map_err(|_| Verdict::Drop(Ipv4Malformed))?;
                if !ip.verify_checksum() {
                    return Err(Verdict::Drop(Ipv4Checksum));
                }
                if ip.dst_u32() == u32::from(node.underlay_ip)
                    && ip.protocol() == proto::UDP
                    && !ip.is_fragment()
                {
                    let udp = wire::UdpPacket::new_checked(ip.payload())
                        .map_err(|_| Verdict::Drop(L4Malformed))?;
                    if udp.dst_port() == node.vxlan_port {
                        let outer_src = ip.src_u32();
                        let vx = wire::VxlanHeader::new_checked(udp.payload())
                            .map_err(|_| Verdict::Drop(VxlanMalformed))?;
                        if vx.flags() & wire::vxlan::FLAG_VNI == 0 {
                            return Err(Verdict::Drop(VxlanMalformed));
                        }
                        if vx.vni() != node.vni {
                            return Err(Verdict::Drop(VxlanWrongVni));
                        }
                        let inner = vx.payload();
                        let Some(remote) = fib.node_by_underlay(outer_src) else {
                            return Err(Verdict::Drop(VxlanUnknownNode));
                        };
                        let inner_eth = EthernetFrame::new_checked(inner)
                            .map_err(|_| Verdict::Drop(VxlanMalformed))?;
                        if inner_eth.ethertype() != ethernet::ethertype::IPV4 {
                            return Err(Verdict::Drop(UnsupportedEthertype));
                        }
                        let iip = Ipv4Packet::new_checked(inner_eth.payload())
                            .map_err(|_| Verdict::Drop(Ipv4Malformed))?;
                        // Its pods, or its kernel (its own addresses as source).
                        if !remote.owns_source(iip.src_u32()) {
                            return Err(Verdict::Drop(VxlanInnerSpoofed));
                        }
                        // Strip outer Ethernet + IPv4 (with options) + UDP + VXLAN; the inner
                        // frame ends where the UDP datagram does.
                        let inner_off =
                            L3 + ip.header_len() + wire::udp::HEADER_LEN + wire::vxlan::HEADER_LEN;
                        let inner_len = inner.len();
                        p.pull_front(inner_off);
                        p.truncate(inner_len);
                        decapped = true;
                        self.counters.decap.inc();
                    }
                }
            }
            PortKind::Pod { ip: pod_ip, mac } => {
                if src_mac != mac {
                    return Err(Verdict::Drop(Spoofed));
                }
                if et == ethernet::ethertype::ARP {
                    return Err(self.arp(p, rx, Some(pod_ip.into()), node.gateway_mac));
                }
            }
            PortKind::Host => {
                if et == ethernet::ethertype::ARP {
                    return Err(self.arp(p, rx, None, node.gateway_mac));
                }
            }
        }
        let d = p.data();
        let eth = EthernetFrame::new_checked(d).map_err(|_| Verdict::Drop(EthMalformed))?;
        if eth.ethertype() != ethernet::ethertype::IPV4 {
            return Err(Verdict::Drop(UnsupportedEthertype));
        }
        let ip = Ipv4Packet::new_checked(&d[L3..]).map_err(|_| Verdict::Drop(Ipv4Malformed))?;
        // The outer header of uplink frames was verified above; inner and pod/host headers here.
        if (decapped || kind != PortKind::Uplink) && !ip.verify_checksum() {
            return Err(Verdict::Drop(Ipv4Checksum));
        }
        if let PortKind::Pod { ip: pod_ip, .. } = kind {
            if ip.src() != pod_ip {
                return Err(Verdict::Drop(Spoofed));
            }
        }
        let pr = ip.protocol();
        let later_fragment = ip.is_later_fragment();
        let l4 = L3 + ip.header_len();
        let mut m = Meta {
            l4: l4 as u16,
            proto: pr,
            later_fragment,
            decapped,
            tuple: Tuple {
                src: ip.src_u32(),
                dst: ip.dst_u32(),
                sport: 0,
                dport: 0,
                proto: pr,
            },
            ..Meta::default()
        };
        if !later_fragment {
            let pl = ip.payload();
            match pr {
                proto::TCP => {
                    let t =
                        wire::TcpPacket::new_checked(pl).map_err(|_| Verdict::Drop(L4Malformed))?;
                    m.tuple.sport = t.src_port();
                    m.tuple.dport = t.dst_port();
                    m.tcp_flags = t.flags();
                    m.ports = true;
                }
                proto::UDP => {
                    let u =
                        wire::UdpPacket::new_checked(pl).map_err(|_| Verdict::Drop(L4Malformed))?;
                    m.tuple.sport = u.src_port();
                    m.tuple.dport = u.dst_port();
                    m.ports = true;
                    // A pod never speaks the overlay: its UDP to a node's VXLAN port would,
                    // once it left with a node's address, be taken for that node's traffic.
                    if m.tuple.dport == node.vxlan_port
                        && matches!(kind, PortKind::Pod { .. })
                        && fib.is_node_addr(m.tuple.dst)
                    {
                        return Err(Verdict::Drop(PodToOverlay));
                    }
                }
                proto::ICMP => {
                    wire::IcmpPacket::new_checked(pl).map_err(|_| Verdict::Drop(L4Malformed))?;
                }
                _ => {}
            }
        }
        m.hash = ct.hash(&m.tuple);
        Ok(m)
    }

    /// ARP on a pod port (`pod` = the pod's IP) or the host port: answer requests for any
    /// address but the asker's own with the gateway MAC (we are its only neighbour).
    fn arp(&self, p: &mut Packet<'_>, rx: PortId, pod: Option<u32>, gw_mac: MacAddr) -> Verdict {
        let d = p.data_mut();
        let Ok(a) = ArpPacket::new_checked(&d[L3..]) else {
            return Verdict::Drop(DropReason::ArpMalformed);
        };
        let sender = u32::from(a.sender_ip());
        let target = u32::from(a.target_ip());
        if a.operation() != wire::arp::OP_REQUEST
            || target == sender
            || pod.is_some_and(|ip| ip != sender)
        {
            return Verdict::Drop(DropReason::ArpIgnored);
        }
        let requester = a.sender_mac();
        let Ok(mut a) = ArpPacket::new_checked(&mut d[L3..]) else {
            return Verdict::Drop(DropReason::ArpMalformed);
        };
        a.make_reply(gw_mac);
        let mut eth = EthernetFrame::new_unchecked(&mut d[..]);
        eth.set_dst(requester);
        eth.set_src(gw_mac);
        self.counters.arp_replies.inc();
        Verdict::Tx(rx)
    }

    /// Stage three: ICMP, conntrack lookup, services, routing, rewrite.
    fn forward(&self, cx: &Ctx<'_>, p: &mut Packet<'_>, m: &Meta) -> Step {
        let Ctx { fib, ct, now, kind } = *cx;
        let raw_uplink = kind == PortKind::Uplink && !m.decapped;
        let t = m.tuple;
        if m.proto == proto::ICMP && !m.later_fragment {
            let (ty, is_err) = {
                let d = p.data();
                let ic = wire::IcmpPacket::new_checked(&d[m.l4 as usize..]);
                match ic {
                    Ok(ic) => (ic.msg_type(), ic.is_error()),
                    Err(_) => return Step::Done(Verdict::Drop(DropReason::L4Malformed)),
                }
            };
            if ty == icmp::ECHO_REQUEST && fib.is_vip(t.dst) {
                return Step::Done(self.echo_reply(fib, raw_uplink, p, m));
            }
            if is_err {
                if let Some(v) = self.icmp_related(cx, p, m) {
                    return Step::Done(v);
                }
            }
        }
        if m.ports {
            let mut hit = ct.lookup_hashed(&t, m.hash);
            if let Some(h) = &hit {
                let pure_syn =
                    m.proto == proto::TCP && m.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN;
                if pure_syn
                    && h.entry.flags & (ctf::FIN | ctf::RST) != 0
                    && h.entry.flags & ctf::REPLY == 0
                {
                    // A new connection reusing the tuple of a closed one: start over.
                    ct.remove_flow(&h.entry);
                    hit = None;
                }
            }
            if let Some(h) = hit {
                let add = if m.proto == proto::TCP {
                    tcp_ct_flags(m.tcp_flags)
                } else {
                    0
                };
                ct.touch(&h, now, add);
                rewrite(p.data_mut(), m.l4 as usize, m.proto, &t, &h.entry.xlate);
                self.counters.nat.inc();
                if h.entry.flags & (ctf::REPLY | ctf::UPLINK) == ctf::REPLY | ctf::UPLINK {
                    return Step::Done(self.to_uplink(fib, ct, p, h.entry.mac_idx));
                }
                return Step::Done(self.route(
                    fib,
                    m.decapped,
                    false,
                    p,
                    h.entry.xlate.dst,
                    m.hash,
                ));
            }
            let svc = if m.svc_known {
                fib.svc_hit(m.svc)
            } else {
                fib.service(t.dst, t.dport, t.proto)
            };
            if let Some(svc) = svc {
                return self.prepare_new_flow(cx, raw_uplink, p, m, svc);
            }
        } else if m.later_fragment && fib.is_vip(t.dst) {
            return Step::Done(Verdict::Drop(DropReason::FragmentToService));
        }
        if raw_uplink {
            return Step::Done(Verdict::Drop(DropReason::NotForUs));
        }
        Step::Done(self.route(fib, m.decapped, kind == PortKind::Host, p, t.dst, m.hash))
    }

    /// Stage three of a new service flow: backend (affinity or Maglev), masquerade decision,
    /// the translated tuple; prefetches the reply tuple's conntrack bucket.
    fn prepare_new_flow(
        &self,
        cx: &Ctx<'_>,
        raw_uplink: bool,
        p: &mut Packet<'_>,
        m: &Meta,
        svc: crate::fib::SvcHit<'_>,
    ) -> Step {
        let Ctx { fib, ct, now, kind } = *cx;
        let t = m.tuple;
        let lb = svc.lb;
        let external = svc.external && raw_uplink;
        let mut backend = None;
        if lb.affinity_timeout > 0 {
            if let Some((ip, port)) =
                ct.affinity_get(t.src, t.dst, t.dport, t.proto, now, lb.affinity_timeout)
            {
                let b = std::net::SocketAddrV4::new(ip.into(), port);
                if lb.has_backend(b) {
                    backend = Some(b);
                }
            }
        }
        let backend = match backend {
            Some(b) => b,
            None => {
                let h = if m.svc_known {
                    m.lb_hash
                } else {
                    flow_hash(0, t.src, t.dst, t.sport, t.dport, t.proto)
                };
                let Some(b) = lb.pick(h, external) else {
                    return Step::Done(Verdict::Drop(DropReason::NoBackend));
                };
                if lb.affinity_timeout > 0 {
                    ct.affinity_set(
                        t.src,
                        t.dst,
                        t.dport,
                        t.proto,
                        (u32::from(*b.ip()), b.port()),
                        now,
                        lb.affinity_timeout,
                    );
                }
                b
            }
        };
        let node = fib.node();
        let bip = u32::from(*backend.ip());
        // Masquerade when replies would not come back through us otherwise: clients outside
        // the cluster's pod network (external, other hosts), NodePort/LB traffic unless
        // externalTrafficPolicy is Local, and a pod reaching itself through the service.
        let mut masq = if raw_uplink {
            !lb.external_local
        } else {
            !node.cluster_cidr.contains_u32(t.src) || bip == t.src
        };
        // A backend this node's kernel serves or forwards (a node address of ours, outside
        // the cluster) sees the host as a client of its own, or an outside client whose
        // replies would bypass us: both are masqueraded to the host masquerade address.
        let mut masq_ip = node.masquerade_ip;
        if (masq || !matches!(kind, PortKind::Pod { .. }))
            && matches!(fib.next_hop(bip), NextHop::Host | NextHop::Outside)
        {
            masq = true;
            masq_ip = node.host_masquerade_ip;
        }
        let (mac_idx, extra) = if raw_uplink {
            let src_mac = EthernetFrame::new_unchecked(p.data()).src();
            match ct.macs().intern(src_mac) {
                Some(i) => (i, ctf::UPLINK),
                None => return Step::Done(Verdict::Drop(DropReason::NatCollision)),
            }
        } else {
            (0, 0)
        };
        let mut xlate = Tuple {
            src: t.src,
            dst: bip,
            sport: t.sport,
            dport: backend.port(),
            proto: t.proto,
        };
        if masq {
            xlate.src = u32::from(masq_ip);
            xlate.sport = snat_port(m.hash, 0);
        }
        let rhash = ct.hash(&xlate.reverse());
        ct.prefetch_bucket(rhash);
        Step::New(NewFlow {
            xlate,
            rhash,
            masq,
            mac_idx,
            extra,
        })
    }

    /// Stage five of a new service flow: record it in conntrack (another masquerade port if
    /// the first is taken), translate, route.
    fn commit_new_flow(&self, cx: &Ctx<'_>, p: &mut Packet<'_>, m: &Meta, nf: NewFlow) -> Verdict {
        let Ctx { fib, ct, now, .. } = *cx;
        let t = m.tuple;
        let mut xlate = nf.xlate;
        let tries = if nf.masq { SNAT_TRIES } else { 1 };
        let orig_flags = if m.proto == proto::TCP {
            tcp_ct_flags(m.tcp_flags)
        } else {
            0
        };
        let mut bound = None;
        for k in 0..tries {
            let mut rhash = nf.rhash;
            if nf.masq && k > 0 {
                xlate.sport = snat_port(m.hash, k);
                rhash = ct.hash(&xlate.reverse());
            }
            if let Ok(x) = ct.insert_flow_hashed(
                &t, m.hash, &xlate, rhash, now, nf.mac_idx, nf.extra, orig_flags,
            ) {
                bound = Some(x);
                break;
            }
        }
        let Some(x) = bound else {
            return Verdict::Drop(DropReason::NatCollision);
        };
        self.counters.new_flows.inc();
        self.counters.nat.inc();
        rewrite(p.data_mut(), m.l4 as usize, m.proto, &t, &x);
        self.route(fib, m.decapped, false, p, x.dst, m.hash)
    }

    /// Sends a translated reply back out of the uplink to the MAC the flow came from.
    fn to_uplink(&self, fib: &Fib, ct: &Conntrack, p: &mut Packet<'_>, mac_idx: u16) -> Verdict {
        let Some(mac) = ct.macs().get(mac_idx) else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        let node = fib.node();
        if !dec_ttl(p.data_mut()) {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        let mut eth = EthernetFrame::new_unchecked(p.data_mut());
        eth.set_dst(mac);
        eth.set_src(node.underlay_mac);
        Verdict::Tx(node.uplink_port)
    }

    /// Routes an IPv4 frame to `dst`: a local pod; another node's pod or one of its addresses
    /// (through the overlay, so the node's kernel sees the pod's own address and answers
    /// back the same way); this node's own addresses and everything outside the cluster
    /// (the host port: the kernel delivers it or sends it out, masqueraded). `decapped`: it
    /// came out of the overlay (only local delivery allowed); `from_host`: it came from the
    /// host port untranslated (never sent back there; translated traffic may be).
    fn route(
        &self,
        fib: &Fib,
        decapped: bool,
        from_host: bool,
        p: &mut Packet<'_>,
        dst: u32,
        hash: u64,
    ) -> Verdict {
        let node = fib.node();
        match fib.next_hop(dst) {
            NextHop::Pod(ep) => {
                if !dec_ttl(p.data_mut()) {
                    return Verdict::Drop(DropReason::TtlExceeded);
                }
                let mut eth = EthernetFrame::new_unchecked(p.data_mut());
                eth.set_dst(ep.mac);
                eth.set_src(node.gateway_mac);
                return Verdict::Tx(ep.port);
            }
            NextHop::Node(_) | NextHop::Outside | NextHop::Nowhere if decapped => {
                return Verdict::Drop(DropReason::NoRoute);
            }
            NextHop::Node(remote) => return self.encap(fib, p, remote, hash),
            NextHop::Nowhere => return Verdict::Drop(DropReason::NoRoute),
            NextHop::Host | NextHop::Outside => {}
        }
        if from_host {
            return Verdict::Drop(DropReason::NoRoute);
        }
        if !dec_ttl(p.data_mut()) {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        let mut eth = EthernetFrame::new_unchecked(p.data_mut());
        eth.set_dst(node.host_mac);
        eth.set_src(node.gateway_mac);
        Verdict::Tx(node.host_port)
    }

    fn encap(
        &self,
        fib: &Fib,
        p: &mut Packet<'_>,
        remote: &crate::fib::RemoteNode,
        hash: u64,
    ) -> Verdict {
        let node = fib.node();
        if !dec_ttl(p.data_mut()) {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        let inner_len = p.len;
        let outer_total = inner_len + ENCAP_LEN - ethernet::HEADER_LEN;
        if outer_total > node.mtu as usize {
            return Verdict::Drop(DropReason::MtuExceeded);
        }
        {
            let mut eth = EthernetFrame::new_unchecked(p.data_mut());
            eth.set_src(node.gateway_mac);
            eth.set_dst(node.gateway_mac);
        }
        if !p.push_front(ENCAP_LEN) {
            return Verdict::Drop(DropReason::NoHeadroom);
        }
        let d = p.data_mut();
        d[..ENCAP_LEN].copy_from_slice(&remote.outer);
        let total = outer_total as u16;
        d[16..18].copy_from_slice(&total.to_be_bytes());
        let c = !checksum::fold(remote.outer_ip_sum as u64 + total as u64);
        d[24..26].copy_from_slice(&c.to_be_bytes());
        let sport = 49_152 | ((hash ^ (hash >> 32)) as u16 & 0x3fff);
        d[34..36].copy_from_slice(&sport.to_be_bytes());
        d[38..40].copy_from_slice(&(total - 20).to_be_bytes());
        self.counters.encap.inc();
        Verdict::Tx(node.uplink_port)
    }

    /// Answers an ICMP echo request to a service address.
    fn echo_reply(&self, fib: &Fib, raw_uplink: bool, p: &mut Packet<'_>, m: &Meta) -> Verdict {
        let d = p.data_mut();
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut d[L3..]);
            let (s, t) = (ip.src_u32(), ip.dst_u32());
            // Swapping the addresses leaves the header checksum valid.
            ip.set_src_u32(t);
            ip.set_dst_u32(s);
            ip.set_ttl(64);
        }
        let Ok(mut ic) = wire::IcmpPacket::new_checked(&mut d[m.l4 as usize..]) else {
            return Verdict::Drop(DropReason::L4Malformed);
        };
        ic.set_msg_type(icmp::ECHO_REPLY);
        self.counters.icmp_echo_replies.inc();
        let mut eth = EthernetFrame::new_unchecked(&mut d[..]);
        let src = eth.src();
        let node = fib.node();
        if raw_uplink {
            eth.set_dst(src);
            eth.set_src(node.underlay_mac);
            return Verdict::Tx(node.uplink_port);
        }
        // Back where it came from: the route to the original source. TTL 65 because routing
        // charges the hop: the reply leaves with 64, like one a host generates.
        let dst = m.tuple.src;
        Ipv4Packet::new_unchecked(&mut d[L3..]).set_ttl(65);
        self.route(fib, m.decapped, false, p, dst, m.hash)
    }

    /// Translates an ICMP error that quotes a packet of a NAT'd flow. `None` when the quoted
    /// packet belongs to no tracked flow (the error is then routed as it is).
    fn icmp_related(&self, cx: &Ctx<'_>, p: &mut Packet<'_>, m: &Meta) -> Option<Verdict> {
        let Ctx { fib, ct, now, .. } = *cx;
        let l4 = m.l4 as usize;
        let d = p.data_mut();
        let icmp_len = d.len().checked_sub(l4)?;
        let q = l4 + icmp::HEADER_LEN; // quoted IPv4 header
        let (quoted, qhl, qlen) = {
            let qd = d.get(q..)?;
            if qd.len() < 28 || qd[0] >> 4 != 4 {
                return None;
            }
            let hl = ((qd[0] & 0x0f) as usize) * 4;
            if hl < 20 || qd.len() < hl + 8 {
                return None;
            }
            let pr = qd[9];
            if pr != proto::TCP && pr != proto::UDP {
                return None;
            }
            let t = Tuple {
                src: u32::from_be_bytes([qd[12], qd[13], qd[14], qd[15]]),
                dst: u32::from_be_bytes([qd[16], qd[17], qd[18], qd[19]]),
                sport: u16::from_be_bytes([qd[hl], qd[hl + 1]]),
                dport: u16::from_be_bytes([qd[hl + 2], qd[hl + 3]]),
                proto: pr,
            };
            (t, hl, qd.len())
        };
        let hit = ct.lookup(&quoted.reverse())?;
        ct.touch(&hit, now, 0);
        let new_q = hit.entry.xlate.reverse();
        // Quoted IPv4 header: addresses with incremental header checksum.
        {
            let mut qip = Ipv4Packet::new_unchecked(&mut d[q..]);
            qip.set_src_u32(new_q.src);
            qip.set_dst_u32(new_q.dst);
        }
        // Quoted L4: ports, and its checksum if it was quoted.
        let ql4 = q + qhl;
        let csum_at = if quoted.proto == proto::TCP {
            tcp::CHECKSUM_AT
        } else {
            6
        };
        let has_csum = qlen >= qhl + csum_at + 2;
        let mut c = if has_csum {
            u16::from_be_bytes([d[ql4 + csum_at], d[ql4 + csum_at + 1]])
        } else {
            0
        };
        let udp_none = quoted.proto == proto::UDP && c == 0;
        if has_csum && !udp_none {
            c = checksum::update32(c, quoted.src, new_q.src);
            c = checksum::update32(c, quoted.dst, new_q.dst);
            c = checksum::update16(c, quoted.sport, new_q.sport);
            c = checksum::update16(c, quoted.dport, new_q.dport);
            d[ql4 + csum_at..ql4 + csum_at + 2].copy_from_slice(&c.to_be_bytes());
        }
        d[ql4..ql4 + 2].copy_from_slice(&new_q.sport.to_be_bytes());
        d[ql4 + 2..ql4 + 4].copy_from_slice(&new_q.dport.to_be_bytes());
        // Outer: to the flow's original peer; from the service address if the backend itself
        // (the quoted destination) sent it.
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut d[L3..]);
            if ip.src_u32() == quoted.dst {
                ip.set_src_u32(new_q.dst);
            }
            ip.set_dst_u32(new_q.src);
        }
        if let Ok(mut ic) = wire::IcmpPacket::new_checked(&mut d[l4..l4 + icmp_len]) {
            ic.fill_checksum();
        }
        self.counters.icmp_related.inc();
        let e = hit.entry;
        if e.flags & (ctf::REPLY | ctf::UPLINK) == ctf::REPLY | ctf::UPLINK {
            return Some(self.to_uplink(fib, ct, p, e.mac_idx));
        }
        Some(self.route(fib, m.decapped, false, p, new_q.src, m.hash))
    }
}

/// The `k`th masquerade source port candidate for a flow.
#[inline]
fn snat_port(hash: u64, k: u32) -> u16 {
    SNAT_PORT_MIN + ((hash as u32).wrapping_add(k.wrapping_mul(7919)) % SNAT_PORTS) as u16
}

#[inline]
fn tcp_ct_flags(f: u8) -> u8 {
    let mut o = 0;
    if f & tcp::SYN != 0 {
        o |= ctf::SYN;
    }
    if f & tcp::FIN != 0 {
        o |= ctf::FIN;
    }
    if f & tcp::RST != 0 {
        o |= ctf::RST;
    }
    o
}

/// Decrements the TTL of the IPv4 packet in an Ethernet frame; false when it would expire (or
/// the frame is too short to hold an IPv4 header, which validation already excluded).
#[inline]
fn dec_ttl(d: &mut [u8]) -> bool {
    d.get_mut(L3..L3 + ipv4::MIN_HEADER_LEN)
        .is_some_and(|h| Ipv4Packet::new_unchecked(h).decrement_ttl())
}

/// Rewrites the packet's 5-tuple from `from` to `to`: addresses, ports, and the IPv4 and L4
/// checksums incrementally (RFC 1624: one accumulated difference applied to each checksum; a
/// zero UDP checksum stays zero).
#[inline]
fn rewrite(d: &mut [u8], l4: usize, pr: u8, from: &Tuple, to: &Tuple) {
    // Sum of (~old + new) over the changed 16-bit words.
    let w32 = |o: u32, n: u32| (!o >> 16) + (!o & 0xffff) + (n >> 16) + (n & 0xffff);
    let addr_diff = w32(from.src, to.src) + w32(from.dst, to.dst);
    let port_diff = (!(from.sport as u32) & 0xffff)
        + to.sport as u32
        + (!(from.dport as u32) & 0xffff)
        + to.dport as u32;
    let apply = |c: u16, diff: u32| -> u16 {
        let acc = (!c) as u32 + diff;
        !checksum::fold(acc as u64)
    };
    let csum_at = match pr {
        proto::TCP => l4 + tcp::CHECKSUM_AT,
        proto::UDP => l4 + 6,
        _ => usize::MAX,
    };
    if let Some(cb) = d.get_mut(csum_at..csum_at + 2) {
        let c = u16::from_be_bytes([cb[0], cb[1]]);
        if !(pr == proto::UDP && c == 0) {
            let mut n = apply(c, addr_diff + port_diff);
            if pr == proto::UDP && n == 0 {
                n = 0xffff;
            }
            cb.copy_from_slice(&n.to_be_bytes());
        }
        if let Some(pb) = d.get_mut(l4..l4 + 4) {
            pb[0..2].copy_from_slice(&to.sport.to_be_bytes());
            pb[2..4].copy_from_slice(&to.dport.to_be_bytes());
        }
    }
    if let Some(h) = d.get_mut(L3..L3 + 20) {
        let c = u16::from_be_bytes([h[10], h[11]]);
        h[10..12].copy_from_slice(&apply(c, addr_diff).to_be_bytes());
        h[12..16].copy_from_slice(&to.src.to_be_bytes());
        h[16..20].copy_from_slice(&to.dst.to_be_bytes());
    }
}
