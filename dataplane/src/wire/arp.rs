//! ARP for IPv4 over Ethernet (RFC 826). Only this hardware/protocol pair is accepted.

use super::{MacAddr, WireError, need, rd16, rd32, wr16, wr32};
use std::net::Ipv4Addr;

/// ARP request opcode.
pub const OP_REQUEST: u16 = 1;
/// ARP reply opcode.
pub const OP_REPLY: u16 = 2;
/// Length of an Ethernet/IPv4 ARP packet.
pub const LEN: usize = 28;

mod field {
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    pub const SHA: usize = 8;
    pub const SPA: usize = 14;
    pub const THA: usize = 18;
    pub const TPA: usize = 24;
}

/// A view of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy)]
pub struct ArpPacket<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Checks length and that this is Ethernet/IPv4 ARP.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        need("arp", LEN, b.len())?;
        if rd16(b, field::HTYPE) != 1
            || rd16(b, field::PTYPE) != 0x0800
            || b[field::HLEN] != 6
            || b[field::PLEN] != 4
        {
            return Err(WireError::Malformed { what: "arp" });
        }
        Ok(Self { buf })
    }
    /// Operation.
    pub fn operation(&self) -> u16 {
        rd16(self.buf.as_ref(), field::OPER)
    }
    fn mac(&self, at: usize) -> MacAddr {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buf.as_ref()[at..at + 6]);
        MacAddr(m)
    }
    /// Sender hardware address.
    pub fn sender_mac(&self) -> MacAddr {
        self.mac(field::SHA)
    }
    /// Sender protocol address.
    pub fn sender_ip(&self) -> Ipv4Addr {
        rd32(self.buf.as_ref(), field::SPA).into()
    }
    /// Target hardware address.
    pub fn target_mac(&self) -> MacAddr {
        self.mac(field::THA)
    }
    /// Target protocol address.
    pub fn target_ip(&self) -> Ipv4Addr {
        rd32(self.buf.as_ref(), field::TPA).into()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Turns this request into the reply "`answer_ip` is at `answer_mac`" in place.
    pub fn make_reply(&mut self, answer_mac: MacAddr) {
        let requester_mac = self.sender_mac();
        let requester_ip = u32::from(self.sender_ip());
        let answer_ip = u32::from(self.target_ip());
        let b = self.buf.as_mut();
        wr16(b, field::OPER, OP_REPLY);
        b[field::SHA..field::SHA + 6].copy_from_slice(&answer_mac.0);
        wr32(b, field::SPA, answer_ip);
        b[field::THA..field::THA + 6].copy_from_slice(&requester_mac.0);
        wr32(b, field::TPA, requester_ip);
    }
}
