//! VXLAN header (RFC 7348): flags, 24-bit VNI.

use super::{WireError, need, rd32, wr32};

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// The "I" flag: VNI is valid.
pub const FLAG_VNI: u8 = 0x08;

/// A view of a VXLAN header.
#[derive(Debug, Clone, Copy)]
pub struct VxlanHeader<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> VxlanHeader<T> {
    /// Checks the header is present.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        need("vxlan", HEADER_LEN, buf.as_ref().len())?;
        Ok(Self { buf })
    }
    /// Flags byte.
    pub fn flags(&self) -> u8 {
        self.buf.as_ref()[0]
    }
    /// The VNI (meaningful when [`FLAG_VNI`] is set).
    pub fn vni(&self) -> u32 {
        rd32(self.buf.as_ref(), 4) >> 8
    }
    /// The encapsulated Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanHeader<T> {
    /// Writes flags = I and the VNI, reserved bits zero.
    pub fn set(&mut self, vni: u32) {
        let b = self.buf.as_mut();
        wr32(b, 0, (FLAG_VNI as u32) << 24);
        wr32(b, 4, (vni & 0x00ff_ffff) << 8);
    }
}
