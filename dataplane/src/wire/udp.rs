//! UDP header (RFC 768). A zero checksum means "none" over IPv4 and stays zero on rewrite.

use super::{WireError, checksum, need, rd16, wr16};

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;
/// Offset of the checksum field.
pub const CHECKSUM_AT: usize = 6;

/// A view of a UDP datagram.
#[derive(Debug, Clone, Copy)]
pub struct UdpPacket<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Checks the header is present and the Length field is within `[8, buffer]`.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        need("udp", HEADER_LEN, b.len())?;
        let l = rd16(b, 4) as usize;
        if l < HEADER_LEN {
            return Err(WireError::Malformed { what: "udp length" });
        }
        need("udp payload", l, b.len())?;
        Ok(Self { buf })
    }
    /// Source port.
    pub fn src_port(&self) -> u16 {
        rd16(self.buf.as_ref(), 0)
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        rd16(self.buf.as_ref(), 2)
    }
    /// Length field.
    pub fn len(&self) -> u16 {
        rd16(self.buf.as_ref(), 4)
    }
    /// True when the Length field says there is no payload.
    pub fn is_empty(&self) -> bool {
        self.len() as usize == HEADER_LEN
    }
    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        rd16(self.buf.as_ref(), 6)
    }
    /// Payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[HEADER_LEN..self.len() as usize]
    }
    /// True when the checksum is absent (0) or verifies against the pseudo header.
    pub fn verify_checksum(&self, src: u32, dst: u32) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let d = &self.buf.as_ref()[..self.len() as usize];
        let s = checksum::sum(d) + checksum::pseudo_header_sum(src, dst, 17, self.len());
        checksum::fold(s) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the source port (checksum untouched: the pipeline's rewrite updates it
    /// incrementally, or call `fill_checksum`).
    pub fn set_src_port(&mut self, p: u16) {
        wr16(self.buf.as_mut(), 0, p);
    }
    /// Sets the destination port.
    pub fn set_dst_port(&mut self, p: u16) {
        wr16(self.buf.as_mut(), 2, p);
    }
    /// Sets the Length field.
    pub fn set_len(&mut self, l: u16) {
        wr16(self.buf.as_mut(), 4, l);
    }
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, c: u16) {
        wr16(self.buf.as_mut(), 6, c);
    }
    /// Computes and writes the checksum over the pseudo header and the datagram.
    pub fn fill_checksum(&mut self, src: u32, dst: u32) {
        self.set_checksum(0);
        let d = &self.buf.as_ref()[..self.len() as usize];
        let s = checksum::sum(d) + checksum::pseudo_header_sum(src, dst, 17, self.len());
        let c = !checksum::fold(s);
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }
}
