//! Every packet view's checked constructor and accessors on arbitrary bytes: no panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use xdpnet_dataplane::wire::*;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = EthernetFrame::new_checked(data) {
        let _ = (e.src(), e.dst(), e.ethertype(), e.payload().len());
    }
    if let Ok(a) = ArpPacket::new_checked(data) {
        let _ = (a.operation(), a.sender_ip(), a.sender_mac(), a.target_ip(), a.target_mac());
    }
    if let Ok(ip) = Ipv4Packet::new_checked(data) {
        let _ = (ip.src(), ip.dst(), ip.ttl(), ip.protocol(), ip.verify_checksum(), ip.payload().len());
        let _ = (ip.is_fragment(), ip.is_later_fragment(), ip.header_len(), ip.flags_frag());
    }
    if let Ok(u) = UdpPacket::new_checked(data) {
        let _ = (u.src_port(), u.dst_port(), u.payload().len(), u.verify_checksum(1, 2));
    }
    if let Ok(t) = TcpPacket::new_checked(data) {
        let _ = (t.src_port(), t.dst_port(), t.flags(), t.seq(), t.payload().len(), t.verify_checksum(1, 2));
    }
    if let Ok(i) = IcmpPacket::new_checked(data) {
        let _ = (i.msg_type(), i.code(), i.is_error(), i.verify_checksum(), i.payload().len());
    }
    if let Ok(v) = VxlanHeader::new_checked(data) {
        let _ = (v.flags(), v.vni(), v.payload().len());
    }
});
