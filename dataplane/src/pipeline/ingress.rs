//! Stage one: ingress checks. Validates every frame against its port (anti-spoofing on pod
//! ports, VXLAN only from known nodes with our VNI and inner sources they own), answers ARP for
//! the gateway, takes the overlay's header off, and computes the flow tuple and its hash.

use super::*;

impl Pipeline {
    /// Stage one: validate, answer ARP, decap; compute the flow tuple and hash.
    pub(super) fn ingress(
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
    pub(super) fn arp(
        &self,
        p: &mut Packet<'_>,
        rx: PortId,
        pod: Option<u32>,
        gw_mac: MacAddr,
    ) -> Verdict {
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
}
