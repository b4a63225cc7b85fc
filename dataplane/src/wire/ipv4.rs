//! IPv4 header (RFC 791). Options are skipped using IHL; the payload ends at Total Length
//! (Ethernet padding after it is ignored).

use super::checksum;
use super::{WireError, need, rd16, rd32, wr16, wr32};
use std::net::Ipv4Addr;

/// Minimum header length (IHL = 5).
pub const MIN_HEADER_LEN: usize = 20;
/// Don't Fragment flag in the flags/fragment-offset word.
pub const FLAG_DF: u16 = 0x4000;
/// More Fragments flag.
pub const FLAG_MF: u16 = 0x2000;

/// Field offsets in the header.
pub mod field {
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

/// A view of an IPv4 packet.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Validates version, IHL (>= 5, within the buffer) and Total Length (>= IHL*4, within the
    /// buffer). Does not verify the checksum: see [`Ipv4Packet::verify_checksum`].
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        need("ipv4", MIN_HEADER_LEN, b.len())?;
        if b[field::VER_IHL] >> 4 != 4 {
            return Err(WireError::Malformed {
                what: "ipv4 version",
            });
        }
        let ihl = ((b[field::VER_IHL] & 0x0f) as usize) * 4;
        if ihl < MIN_HEADER_LEN {
            return Err(WireError::Malformed { what: "ipv4 IHL" });
        }
        need("ipv4 options", ihl, b.len())?;
        let total = rd16(b, field::LEN) as usize;
        if total < ihl {
            return Err(WireError::Malformed {
                what: "ipv4 total length",
            });
        }
        need("ipv4 payload", total, b.len())?;
        Ok(Self { buf })
    }
    /// Wraps a buffer already validated by `new_checked`.
    pub fn new_unchecked(buf: T) -> Self {
        Self { buf }
    }
    /// IP version (4 for a header this view accepts with `new_checked`).
    pub fn version(&self) -> u8 {
        self.buf.as_ref()[field::VER_IHL] >> 4
    }
    /// Header length in bytes (IHL * 4).
    pub fn header_len(&self) -> usize {
        ((self.buf.as_ref()[field::VER_IHL] & 0x0f) as usize) * 4
    }
    /// DSCP/ECN byte.
    pub fn tos(&self) -> u8 {
        self.buf.as_ref()[field::TOS]
    }
    /// Total Length field.
    pub fn total_len(&self) -> u16 {
        rd16(self.buf.as_ref(), field::LEN)
    }
    /// Identification.
    pub fn ident(&self) -> u16 {
        rd16(self.buf.as_ref(), field::IDENT)
    }
    /// Flags and fragment offset word.
    pub fn flags_frag(&self) -> u16 {
        rd16(self.buf.as_ref(), field::FLG_OFF)
    }
    /// True when this is a fragment other than the first (it carries no L4 header).
    pub fn is_later_fragment(&self) -> bool {
        self.flags_frag() & 0x1fff != 0
    }
    /// True when this is any fragment (MF set or offset non-zero).
    pub fn is_fragment(&self) -> bool {
        self.flags_frag() & (0x1fff | FLAG_MF) != 0
    }
    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buf.as_ref()[field::TTL]
    }
    /// Protocol.
    pub fn protocol(&self) -> u8 {
        self.buf.as_ref()[field::PROTOCOL]
    }
    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        rd16(self.buf.as_ref(), field::CHECKSUM)
    }
    /// Source address as a host-order integer.
    pub fn src_u32(&self) -> u32 {
        rd32(self.buf.as_ref(), field::SRC)
    }
    /// Destination address as a host-order integer.
    pub fn dst_u32(&self) -> u32 {
        rd32(self.buf.as_ref(), field::DST)
    }
    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        self.src_u32().into()
    }
    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        self.dst_u32().into()
    }
    /// True when the header checksum verifies.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        let b = self.buf.as_ref();
        if let Some(h) = b
            .get(..MIN_HEADER_LEN)
            .filter(|_| self.header_len() == MIN_HEADER_LEN)
        {
            // The common 20-byte header: five 32-bit words.
            let s: u64 = (0..5).map(|i| rd32(h, i * 4) as u64).sum();
            return checksum::fold(s) == 0xffff;
        }
        checksum::fold(checksum::sum(&b[..self.header_len()])) == 0xffff
    }
    /// The L4 payload (between the header and Total Length).
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[self.header_len()..self.total_len() as usize]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Mutable L4 payload.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (h, t) = (self.header_len(), self.total_len() as usize);
        &mut self.buf.as_mut()[h..t]
    }
    /// Sets the source address, updating the header checksum incrementally.
    pub fn set_src_u32(&mut self, v: u32) {
        let old = self.src_u32();
        wr32(self.buf.as_mut(), field::SRC, v);
        let c = checksum::update32(self.checksum(), old, v);
        wr16(self.buf.as_mut(), field::CHECKSUM, c);
    }
    /// Sets the destination address, updating the header checksum incrementally.
    pub fn set_dst_u32(&mut self, v: u32) {
        let old = self.dst_u32();
        wr32(self.buf.as_mut(), field::DST, v);
        let c = checksum::update32(self.checksum(), old, v);
        wr16(self.buf.as_mut(), field::CHECKSUM, c);
    }
    /// Forwarding hop: decrements TTL with an incremental checksum update. Returns false and
    /// leaves the packet alone when the TTL would expire (TTL <= 1).
    #[inline]
    pub fn decrement_ttl(&mut self) -> bool {
        let b = self.buf.as_mut();
        if b[field::TTL] <= 1 {
            return false;
        }
        let old = rd16(b, field::TTL);
        b[field::TTL] -= 1;
        let c = checksum::update16(rd16(b, field::CHECKSUM), old, old - 0x0100);
        wr16(b, field::CHECKSUM, c);
        true
    }
    /// Sets the TTL, updating the checksum incrementally.
    pub fn set_ttl(&mut self, ttl: u8) {
        let b = self.buf.as_mut();
        let old = rd16(b, field::TTL);
        b[field::TTL] = ttl;
        let new = rd16(b, field::TTL);
        let c = checksum::update16(rd16(b, field::CHECKSUM), old, new);
        wr16(b, field::CHECKSUM, c);
    }
    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len();
        let b = self.buf.as_mut();
        wr16(b, field::CHECKSUM, 0);
        let c = checksum::checksum(&b[..hl]);
        wr16(b, field::CHECKSUM, c);
    }
    /// Writes a plain 20-byte header (no options). The checksum is filled.
    #[allow(clippy::too_many_arguments)] // mirrors the header's fields one to one
    pub fn write_header(
        &mut self,
        tos: u8,
        total_len: u16,
        ident: u16,
        flags_frag: u16,
        ttl: u8,
        protocol: u8,
        src: u32,
        dst: u32,
    ) {
        let b = self.buf.as_mut();
        b[field::VER_IHL] = 0x45;
        b[field::TOS] = tos;
        wr16(b, field::LEN, total_len);
        wr16(b, field::IDENT, ident);
        wr16(b, field::FLG_OFF, flags_frag);
        b[field::TTL] = ttl;
        b[field::PROTOCOL] = protocol;
        wr32(b, field::SRC, src);
        wr32(b, field::DST, dst);
        self.fill_checksum();
    }
}
