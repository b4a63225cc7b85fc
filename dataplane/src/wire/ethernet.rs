//! Ethernet II frames (no VLAN tags: pod and overlay traffic is untagged).

use super::{WireError, need, rd16};
use std::fmt;

/// A 48-bit MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// 00:00:00:00:00:00
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// The address as the low 48 bits of a u64.
    pub fn to_u64(self) -> u64 {
        let b = self.0;
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// Inverse of [`MacAddr::to_u64`] (the high 16 bits are ignored).
    pub fn from_u64(v: u64) -> Self {
        let b = v.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// True for group (multicast and broadcast) addresses.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for MacAddr {
    type Err = WireError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next().ok_or(WireError::Malformed {
                what: "MAC address",
            })?;
            *b = u8::from_str_radix(p, 16).map_err(|_| WireError::Malformed {
                what: "MAC address",
            })?;
        }
        if parts.next().is_some() {
            return Err(WireError::Malformed {
                what: "MAC address",
            });
        }
        Ok(MacAddr(out))
    }
}

/// EtherType values the dataplane handles.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IPv6 (not forwarded yet; counted).
    pub const IPV6: u16 = 0x86dd;
}

/// Field offsets in the header.
pub mod field {
    use std::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: usize = 12;
}

/// Length of an Ethernet II header.
pub const HEADER_LEN: usize = 14;

/// A view of an Ethernet II frame.
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Checks the buffer holds a whole header.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        need("ethernet", HEADER_LEN, buf.as_ref().len())?;
        Ok(Self { buf })
    }
    /// Wraps a buffer known to hold at least [`HEADER_LEN`] bytes.
    pub fn new_unchecked(buf: T) -> Self {
        Self { buf }
    }
    /// Destination MAC.
    pub fn dst(&self) -> MacAddr {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buf.as_ref()[field::DST]);
        MacAddr(m)
    }
    /// Source MAC.
    pub fn src(&self) -> MacAddr {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buf.as_ref()[field::SRC]);
        MacAddr(m)
    }
    /// EtherType.
    pub fn ethertype(&self) -> u16 {
        rd16(self.buf.as_ref(), field::ETHERTYPE)
    }
    /// Bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[HEADER_LEN..]
    }
    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buf
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC.
    pub fn set_dst(&mut self, m: MacAddr) {
        self.buf.as_mut()[field::DST].copy_from_slice(&m.0);
    }
    /// Sets the source MAC.
    pub fn set_src(&mut self, m: MacAddr) {
        self.buf.as_mut()[field::SRC].copy_from_slice(&m.0);
    }
    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, t: u16) {
        super::wr16(self.buf.as_mut(), field::ETHERTYPE, t);
    }
    /// Mutable bytes after the header.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut()[HEADER_LEN..]
    }
}
