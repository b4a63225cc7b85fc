//! Connection tracking shared by all workers: 5-tuple -> NAT binding, both directions.
//!
//! Layout: a fixed array of buckets of 16 slots. A bucket header (one cache line) holds 16
//! 16-bit tags (from the key's hash), a writer lock and an overflow count; a slot (32 bytes)
//! holds one entry: key tuple, translated tuple, state flags and a coarse last-seen time. An
//! entry lives in its home bucket, or when that is full in one of the next three (the home's
//! overflow count tells readers to look there), so a live entry is only evicted when 64 slots
//! around its home are all taken.
//!
//! Concurrency:
//! - Readers (workers, every packet) never lock: they match tags, then read the slot under a
//!   per-slot sequence counter (seqlock) and verify the full key. A torn read is retried.
//! - Writers (new flows, deletes, GC) take the bucket's spin lock for a few dozen nanoseconds;
//!   there is no global lock. Insert is insert-if-absent under that lock, so two workers racing
//!   on the first packets of one flow agree on one binding.
//! - Hot-path updates (last seen, TCP flags) are a compare-and-swap on the slot's meta word,
//!   made only when the value changes (about once per second per flow).
//!
//! Every flow has two entries: the original direction (key = tuple as the client sent it,
//! value = tuple after NAT) and the reply direction (key = reverse of the translated tuple,
//! value = reverse of the original). Translating a packet is "rewrite its tuple to the value".
//!
//! Bounded: when a bucket is full, an expired or else the least recently seen entry of that
//! bucket is evicted (with its partner). GC walks buckets incrementally from a cursor and never
//! stalls workers: it holds one bucket lock at a time.
//!
//! Never allocates after construction; no unsafe code.

pub mod affinity;
mod flows;
mod table;

pub use affinity::{AFFINITY_KEY_BIT, AffinityKey, AffinityValue};
pub use table::{Conntrack, MacTable};

/// An IPv4 5-tuple (host-order addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Tuple {
    /// Source address.
    pub src: u32,
    /// Destination address.
    pub dst: u32,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
}

impl Tuple {
    /// The tuple of a packet going the other way.
    #[inline]
    pub fn reverse(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }
    #[inline]
    fn hash(&self, seed: u64) -> u64 {
        crate::hash::flow_hash(seed, self.src, self.dst, self.sport, self.dport, self.proto)
    }
}

/// Entry state flags.
pub mod flags {
    /// TCP SYN seen in this direction.
    pub const SYN: u8 = 0x01;
    /// TCP FIN seen in this direction.
    pub const FIN: u8 = 0x02;
    /// TCP RST seen in this direction.
    pub const RST: u8 = 0x04;
    /// A packet matched this entry (for the reply entry: the flow is established).
    pub const SEEN: u8 = 0x08;
    /// This is the reply-direction entry.
    pub const REPLY: u8 = 0x10;
    /// The flow came in on the uplink; replies go back out to `mac_idx`'s MAC.
    pub const UPLINK: u8 = 0x20;
    /// A ClientIP session-affinity record, not a flow.
    pub const AFFINITY: u8 = 0x40;
    /// Slot in use.
    pub const USED: u8 = 0x80;
}

/// Timeouts in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP until a reply was seen.
    pub tcp_syn: u32,
    /// TCP with traffic both ways.
    pub tcp_established: u32,
    /// TCP after RST, or FIN in both directions.
    pub tcp_closing: u32,
    /// UDP one way.
    pub udp: u32,
    /// UDP with replies.
    pub udp_stream: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn: 60,
            tcp_established: 21_600,
            tcp_closing: 10,
            udp: 30,
            udp_stream: 120,
        }
    }
}

/// Seconds per clock tick of the coarse last-seen time (16 bits of 2 s: 36 hours of range,
/// enough for any timeout here including 24 h affinity; GC runs far more often).
pub const TICK_SECS: u32 = 2;

/// A coarse timestamp: seconds since some start, as the tables store it.
#[inline]
pub fn tick(now_secs: u32) -> u16 {
    (now_secs / TICK_SECS) as u16
}

#[inline]
fn age_secs(now: u16, then: u16) -> u32 {
    now.wrapping_sub(then) as u32 * TICK_SECS
}

/// A copy of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The tuple packets of this direction arrive with.
    pub key: Tuple,
    /// The tuple to rewrite them to.
    pub xlate: Tuple,
    /// [`flags`].
    pub flags: u8,
    /// Last seen, in ticks.
    pub last_seen: u16,
    /// Index into the MAC table (flows from the uplink).
    pub mac_idx: u16,
}

/// A lookup hit: the entry and where it lives (for updates).
#[derive(Debug, Clone, Copy)]
pub struct Hit {
    /// The entry.
    pub entry: Entry,
    slot: u32,
    seq: u16,
}

/// Why an insert did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// The reply tuple of the new binding is already used by another flow.
    #[error("reply tuple already in use")]
    ReplyCollision,
}

/// Statistics of one GC step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcStats {
    /// Buckets visited.
    pub buckets: usize,
    /// Entries removed.
    pub removed: usize,
}

#[cfg(test)]
mod tests;
