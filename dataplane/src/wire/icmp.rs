//! ICMPv4 (RFC 792): type, code, checksum, and the echo / error bodies.

use super::{WireError, checksum, need, rd16, wr16};

/// Echo reply.
pub const ECHO_REPLY: u8 = 0;
/// Destination unreachable.
pub const DEST_UNREACHABLE: u8 = 3;
/// Echo request.
pub const ECHO_REQUEST: u8 = 8;
/// Time exceeded.
pub const TIME_EXCEEDED: u8 = 11;
/// Parameter problem.
pub const PARAMETER_PROBLEM: u8 = 12;
/// Header length (type, code, checksum, 4 bytes of rest-of-header).
pub const HEADER_LEN: usize = 8;

/// A view of an ICMP message.
#[derive(Debug, Clone, Copy)]
pub struct IcmpPacket<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// Checks the 8-byte header is present.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        need("icmp", HEADER_LEN, buf.as_ref().len())?;
        Ok(Self { buf })
    }
    /// Type.
    pub fn msg_type(&self) -> u8 {
        self.buf.as_ref()[0]
    }
    /// Code.
    pub fn code(&self) -> u8 {
        self.buf.as_ref()[1]
    }
    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        rd16(self.buf.as_ref(), 2)
    }
    /// Echo identifier (echo messages only).
    pub fn echo_ident(&self) -> u16 {
        rd16(self.buf.as_ref(), 4)
    }
    /// True for the error types that quote the offending packet.
    pub fn is_error(&self) -> bool {
        matches!(
            self.msg_type(),
            DEST_UNREACHABLE | TIME_EXCEEDED | PARAMETER_PROBLEM
        )
    }
    /// Bytes after the 8-byte header (the echo data, or the quoted packet of an error).
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[HEADER_LEN..]
    }
    /// True when the checksum verifies over the whole message.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.buf.as_ref())) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    /// Sets the type, updating the checksum incrementally.
    pub fn set_msg_type(&mut self, t: u8) {
        let b = self.buf.as_mut();
        let old = rd16(b, 0);
        b[0] = t;
        let new = rd16(b, 0);
        let c = checksum::update16(rd16(b, 2), old, new);
        wr16(b, 2, c);
    }
    /// Mutable bytes after the header.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut()[HEADER_LEN..]
    }
    /// Recomputes the checksum over the whole message.
    pub fn fill_checksum(&mut self) {
        let b = self.buf.as_mut();
        wr16(b, 2, 0);
        let c = checksum::checksum(b);
        wr16(b, 2, c);
    }
}
