//! Services and NAT: ICMP to service addresses, the conntrack lookup that translates
//! established flows either way, a new service flow's backend (affinity or Maglev) and
//! masquerade decision, its conntrack binding, ICMP errors of NAT'd flows, and the incremental
//! rewrite of addresses, ports and checksums (RFC 1624).

use super::*;

impl Pipeline {
    /// Stage three: ICMP, conntrack lookup, services, routing, rewrite.
    pub(super) fn forward(&self, cx: &Ctx<'_>, p: &mut Packet<'_>, m: &Meta) -> Step {
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
                // A flow tracked for network policy alone is not translated.
                if h.entry.xlate != t {
                    rewrite(p.data_mut(), m.l4 as usize, m.proto, &t, &h.entry.xlate);
                    self.counters.nat.inc();
                }
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
            // Without NAT, a flow is tracked when network policy applies to one of its pods:
            // judged once (stage five), its replies then pass.
            if !raw_uplink && policy_applies(cx, t.src, t.dst) {
                let rhash = ct.hash(&t.reverse());
                ct.prefetch_bucket(rhash);
                return Step::New(NewFlow {
                    xlate: t,
                    rhash,
                    ..NewFlow::default()
                });
            }
        } else if m.later_fragment && fib.is_vip(t.dst) {
            return Step::Done(Verdict::Drop(DropReason::FragmentToService));
        } else if !m.later_fragment && !raw_uplink && policy_applies(cx, t.src, t.dst) {
            // No ports, no tracking (ICMP, other protocols): each packet is judged, except
            // ICMP echo replies and errors, which answer something.
            let answer = m.proto == proto::ICMP && {
                let d = p.data();
                wire::IcmpPacket::new_checked(&d[m.l4 as usize..])
                    .is_ok_and(|ic| ic.msg_type() == icmp::ECHO_REPLY || ic.is_error())
            };
            if !answer {
                if let Some(r) = judge(cx, &t, false) {
                    return Step::Done(Verdict::Drop(r));
                }
            }
        }
        if raw_uplink {
            return Step::Done(Verdict::Drop(DropReason::NotForUs));
        }
        Step::Done(self.route(fib, m.decapped, kind == PortKind::Host, p, t.dst, m.hash))
    }

    /// Stage three of a new service flow: backend (affinity or Maglev), masquerade decision,
    /// the translated tuple; prefetches the reply tuple's conntrack bucket.
    pub(super) fn prepare_new_flow(
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
    pub(super) fn commit_new_flow(
        &self,
        cx: &Ctx<'_>,
        p: &mut Packet<'_>,
        m: &Meta,
        nf: NewFlow,
    ) -> Verdict {
        let Ctx { fib, ct, now, .. } = *cx;
        let t = m.tuple;
        let mut xlate = nf.xlate;
        // Network policy, once per flow, after DNAT (SNAT does not change who is judged).
        if let Some(r) = judge(cx, &xlate, true) {
            return Verdict::Drop(r);
        }
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
        if x == t {
            self.counters.policy_flows.inc();
        } else {
            self.counters.new_flows.inc();
            self.counters.nat.inc();
            rewrite(p.data_mut(), m.l4 as usize, m.proto, &t, &x);
        }
        self.route(fib, m.decapped, false, p, x.dst, m.hash)
    }

    /// Answers an ICMP echo request to a service address.
    pub(super) fn echo_reply(
        &self,
        fib: &Fib,
        raw_uplink: bool,
        p: &mut Packet<'_>,
        m: &Meta,
    ) -> Verdict {
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
    pub(super) fn icmp_related(
        &self,
        cx: &Ctx<'_>,
        p: &mut Packet<'_>,
        m: &Meta,
    ) -> Option<Verdict> {
        let Ctx { fib, ct, now, .. } = *cx;
        let l4 = m.l4 as usize;
        let d = p.data_mut();
        let icmp_len = d.len().checked_sub(l4)?;
        let q = l4 + icmp::HEADER_LEN; // quoted IPv4 header
        let (quoted, qhl, qlen) = {
            // The quoted header and the first 8 bytes of its L4 header (all ICMP must quote).
            let qd = d.get(q..)?;
            if qd.len() < ipv4::MIN_HEADER_LEN + 8 {
                return None;
            }
            let qip = Ipv4Packet::new_unchecked(qd);
            let hl = qip.header_len();
            if qip.version() != 4 || hl < ipv4::MIN_HEADER_LEN || qd.len() < hl + 8 {
                return None;
            }
            let pr = qip.protocol();
            if pr != proto::TCP && pr != proto::UDP {
                return None;
            }
            // Only the ports of the quoted L4 header are there for sure: no view of a whole
            // TCP/UDP header fits, the ports are the first two words of either.
            let t = Tuple {
                src: qip.src_u32(),
                dst: qip.dst_u32(),
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
            udp::CHECKSUM_AT
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

/// True when network policy applies to the source (a pod of this node sending on its own
/// port) or to the destination (a pod of this node) of a flow from `src` to `dst`.
#[inline]
pub(super) fn policy_applies(cx: &Ctx<'_>, src: u32, dst: u32) -> bool {
    // No pod of this node has policy (the common case): no endpoint lookups per packet.
    if cx.fib.policy().pods.is_empty() {
        return false;
    }
    (matches!(cx.kind, PortKind::Pod { .. }) && cx.fib.pod_policy(src).is_some())
        || cx.fib.pod_policy(dst).is_some()
}

/// Judges a new flow `x` (as it will leave: after DNAT and SNAT) by network policy: egress of
/// the source pod when it was sent by a pod of this node, against the destination; ingress
/// of the destination pod when it is one of this node's, against the source as the pod sees
/// it (traffic from this node itself — the host port, or masqueraded to one of the node's
/// addresses — is allowed, as kubelet probes must be). Counts the verdict against the policy
/// that decided it; the drop reason when denied.
#[inline]
pub(super) fn judge(cx: &Ctx<'_>, x: &Tuple, has_ports: bool) -> Option<DropReason> {
    let fib = cx.fib;
    let table = fib.policy();
    if let PortKind::Pod { ip, .. } = cx.kind {
        if let Some(pp) = fib.pod_policy(u32::from(ip)) {
            let j = pp.egress.judge(x.dst, x.proto, x.dport, has_ports);
            table.count(j);
            if !j.allows() {
                return Some(DropReason::PolicyEgress);
            }
        }
    }
    if cx.kind != PortKind::Host && !fib.is_own_addr(x.src) {
        if let Some(pp) = fib.pod_policy(x.dst) {
            let j = pp.ingress.judge(x.src, x.proto, x.dport, has_ports);
            table.count(j);
            if !j.allows() {
                return Some(DropReason::PolicyIngress);
            }
        }
    }
    None
}

/// The `k`th masquerade source port candidate for a flow.
#[inline]
pub(super) fn snat_port(hash: u64, k: u32) -> u16 {
    SNAT_PORT_MIN + ((hash as u32).wrapping_add(k.wrapping_mul(7919)) % SNAT_PORTS) as u16
}

#[inline]
pub(super) fn tcp_ct_flags(f: u8) -> u8 {
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

/// Rewrites the packet's 5-tuple from `from` to `to`: addresses, ports, and the IPv4 and L4
/// checksums incrementally (RFC 1624: one accumulated difference applied to each checksum; a
/// zero UDP checksum stays zero).
#[inline]
pub(super) fn rewrite(d: &mut [u8], l4: usize, pr: u8, from: &Tuple, to: &Tuple) {
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
        proto::UDP => l4 + udp::CHECKSUM_AT,
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
    if let Some(h) = d.get_mut(L3..L3 + ipv4::MIN_HEADER_LEN) {
        use ipv4::field::{CHECKSUM, DST, SRC};
        let c = u16::from_be_bytes([h[CHECKSUM], h[CHECKSUM + 1]]);
        h[CHECKSUM..CHECKSUM + 2].copy_from_slice(&apply(c, addr_diff).to_be_bytes());
        h[SRC..SRC + 4].copy_from_slice(&to.src.to_be_bytes());
        h[DST..DST + 4].copy_from_slice(&to.dst.to_be_bytes());
    }
}
