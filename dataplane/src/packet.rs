//! A packet buffer: a frame's whole chunk (headroom, data, tailroom) and the data's place in it.
//!
//! On AF_XDP the chunk is a UMEM frame; in tests and benchmarks it is a plain `Vec`. The
//! pipeline grows the front (VXLAN encap) and shrinks it (decap) by moving `off`, never by
//! copying the payload, as long as the chunk has the headroom.

/// Headroom every port reserves in front of received data (room for the VXLAN outer headers).
pub const HEADROOM: usize = 256;

/// One frame in a batch.
#[derive(Debug)]
pub struct Packet<'a> {
    /// The whole chunk.
    pub chunk: &'a mut [u8],
    /// Start of the data in the chunk.
    pub off: usize,
    /// Length of the data.
    pub len: usize,
    /// Payload bytes per TCP segment when the frame is a large segment still to be cut (from
    /// a tap port with TSO); 0 for a frame that is what it says.
    pub gso: u16,
}

impl<'a> Packet<'a> {
    /// A packet whose data is `chunk[off..off + len]`; clamps to the chunk.
    pub fn new(chunk: &'a mut [u8], off: usize, len: usize) -> Self {
        let off = off.min(chunk.len());
        let len = len.min(chunk.len() - off);
        Self {
            chunk,
            off,
            len,
            gso: 0,
        }
    }
    /// The data.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.chunk[self.off..self.off + self.len]
    }
    /// The data, mutable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.chunk[self.off..self.off + self.len]
    }
    /// Grows the data at the front by `n` bytes (uninitialised: the caller writes them).
    /// Moves the data back if the headroom is short but the chunk has room. False if neither.
    #[inline]
    pub fn push_front(&mut self, n: usize) -> bool {
        if self.off >= n {
            self.off -= n;
            self.len += n;
            return true;
        }
        if self.len + n > self.chunk.len() {
            return false;
        }
        let shift = n - self.off;
        self.chunk
            .copy_within(self.off..self.off + self.len, self.off + shift);
        self.off += shift;
        self.off -= n;
        self.len += n;
        true
    }
    /// Removes `n` bytes from the front (caller checked `n <= len`).
    #[inline]
    pub fn pull_front(&mut self, n: usize) {
        let n = n.min(self.len);
        self.off += n;
        self.len -= n;
    }
    /// Shortens the data to `len` bytes.
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}
