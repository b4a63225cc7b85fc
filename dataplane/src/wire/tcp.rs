//! TCP header (RFC 9293): ports, flags and the checksum; options are skipped via Data Offset.

use super::{WireError, checksum, need, rd16, rd32, wr16};

/// Minimum header length.
pub const MIN_HEADER_LEN: usize = 20;
/// FIN flag.
pub const FIN: u8 = 0x01;
/// SYN flag.
pub const SYN: u8 = 0x02;
/// RST flag.
pub const RST: u8 = 0x04;
/// PSH flag.
pub const PSH: u8 = 0x08;
/// ACK flag.
pub const ACK: u8 = 0x10;
/// Offset of the checksum field.
pub const CHECKSUM_AT: usize = 16;

/// A view of a TCP segment.
#[derive(Debug, Clone, Copy)]
pub struct TcpPacket<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Checks the fixed header is present and Data Offset is within `[5, buffer]`.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        need("tcp", MIN_HEADER_LEN, b.len())?;
        let doff = ((b[12] >> 4) as usize) * 4;
        if doff < MIN_HEADER_LEN {
            return Err(WireError::Malformed {
                what: "tcp data offset",
            });
        }
        need("tcp options", doff, b.len())?;
        Ok(Self { buf })
    }
    /// Wraps a buffer without checks (for writing a header into zeroed space; accessors may
    /// panic on a buffer shorter than the header).
    pub fn new_unchecked(buf: T) -> Self {
        Self { buf }
    }
    /// Source port.
    pub fn src_port(&self) -> u16 {
        rd16(self.buf.as_ref(), 0)
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        rd16(self.buf.as_ref(), 2)
    }
    /// Sequence number.
    pub fn seq(&self) -> u32 {
        rd32(self.buf.as_ref(), 4)
    }
    /// Header length from Data Offset.
    pub fn header_len(&self) -> usize {
        ((self.buf.as_ref()[12] >> 4) as usize) * 4
    }
    /// Flag bits (FIN..CWR).
    pub fn flags(&self) -> u8 {
        self.buf.as_ref()[13]
    }
    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        rd16(self.buf.as_ref(), CHECKSUM_AT)
    }
    /// Payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[self.header_len()..]
    }
    /// True when the checksum verifies over the pseudo header and the whole segment.
    pub fn verify_checksum(&self, src: u32, dst: u32) -> bool {
        let d = self.buf.as_ref();
        let s = checksum::sum(d) + checksum::pseudo_header_sum(src, dst, 6, d.len() as u16);
        checksum::fold(s) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// Sets the source port (checksum untouched).
    pub fn set_src_port(&mut self, p: u16) {
        wr16(self.buf.as_mut(), 0, p);
    }
    /// Sets the destination port (checksum untouched).
    pub fn set_dst_port(&mut self, p: u16) {
        wr16(self.buf.as_mut(), 2, p);
    }
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, c: u16) {
        wr16(self.buf.as_mut(), CHECKSUM_AT, c);
    }
    /// Computes and writes the checksum over the pseudo header and the whole segment.
    pub fn fill_checksum(&mut self, src: u32, dst: u32) {
        self.set_checksum(0);
        let d = self.buf.as_ref();
        let s = checksum::sum(d) + checksum::pseudo_header_sum(src, dst, 6, d.len() as u16);
        self.set_checksum(!checksum::fold(s));
    }
}
