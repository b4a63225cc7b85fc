//! Fast hashing for integer keys: the flow hash (VXLAN source port, Maglev, conntrack buckets)
//! and a `BuildHasher` for the table's integer-keyed maps.
//!
//! These are not DoS-resistant by themselves: every table that takes attacker-controlled keys
//! (conntrack) mixes in a per-process random seed.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const K1: u64 = 0x9e37_79b9_7f4a_7c15;
const K2: u64 = 0xbf58_476d_1ce4_e5b9;
const K3: u64 = 0x94d0_49bb_1331_11eb;

/// A strong 64-bit mix (splitmix64 finaliser).
#[inline(always)]
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(K2);
    x ^= x >> 27;
    x = x.wrapping_mul(K3);
    x ^ (x >> 31)
}

/// Hash of an IPv4 5-tuple with a seed. Symmetric flows are *not* folded together: the two
/// directions of a connection hash differently (conntrack stores both).
#[inline(always)]
pub fn flow_hash(seed: u64, src: u32, dst: u32, sport: u16, dport: u16, proto: u8) -> u64 {
    let a = ((src as u64) << 32) | dst as u64;
    let b = ((sport as u64) << 48) | ((dport as u64) << 32) | ((proto as u64) << 24);
    // The multiply spreads the addresses over all bits before the ports are mixed in; the
    // finaliser then makes every input bit reach the low (bucket) and high (tag) bits.
    mix64(a.wrapping_mul(K1) ^ b ^ seed)
}

/// Hasher for integer keys: one multiply and a fold (Fx-like), good high and low bits.
#[derive(Default, Clone, Copy, Debug)]
pub struct IntHasher(u64);

impl Hasher for IntHasher {
    #[inline]
    fn finish(&self) -> u64 {
        let x = (self.0 as u128).wrapping_mul(K1 as u128);
        (x as u64) ^ ((x >> 64) as u64)
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(K1);
        }
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.0 = (self.0 ^ i as u64).wrapping_mul(K1);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0 ^ i).wrapping_mul(K1);
    }
}

/// A `HashMap` keyed by integers with [`IntHasher`].
pub type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// A random seed for this process (from the std RandomState keys; no extra dependency).
pub fn random_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64)
}

/// An immutable open-addressing map from `u64` to `u32`, built once, with a lookup whose memory
/// location is known from the key alone, so a batch can prefetch it a stage ahead (a `HashMap`
/// hides where it will look). Linear probing over 16-byte entries at load <= 1/2.
#[derive(Debug, Clone, Default)]
pub struct FlatMap {
    entries: Box<[(u64, u32)]>,
    mask: usize,
    len: usize,
}

/// The key [`FlatMap`] reserves for empty entries.
pub const FLAT_EMPTY: u64 = u64::MAX;

impl FlatMap {
    /// Builds the map; a key equal to [`FLAT_EMPTY`] is ignored, a repeated key keeps its
    /// last value.
    pub fn new(pairs: &[(u64, u32)]) -> Self {
        let cap = (pairs.len() * 2).next_power_of_two().max(8);
        let mut entries = vec![(FLAT_EMPTY, 0u32); cap].into_boxed_slice();
        let mask = cap - 1;
        let mut len = 0;
        for &(k, v) in pairs.iter().filter(|(k, _)| *k != FLAT_EMPTY) {
            let mut i = mix64(k) as usize & mask;
            loop {
                if entries[i].0 == FLAT_EMPTY {
                    entries[i] = (k, v);
                    len += 1;
                    break;
                }
                if entries[i].0 == k {
                    entries[i].1 = v;
                    break;
                }
                i = (i + 1) & mask;
            }
        }
        Self { entries, mask, len }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value of `k`.
    #[inline]
    pub fn get(&self, k: u64) -> Option<u32> {
        if k == FLAT_EMPTY {
            return None;
        }
        let mut i = mix64(k) as usize & self.mask;
        loop {
            let (ek, v) = *self.entries.get(i)?;
            if ek == k {
                return Some(v);
            }
            if ek == FLAT_EMPTY {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Prefetches the entry a lookup of `k` starts at.
    #[inline]
    pub fn prefetch(&self, k: u64) {
        if let Some(e) = self.entries.get(mix64(k) as usize & self.mask) {
            crate::sys::prefetch(e);
        }
    }

    /// All `(key, value)` pairs, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.entries
            .iter()
            .copied()
            .filter(|(k, _)| *k != FLAT_EMPTY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_map_finds_what_it_holds() {
        let pairs: Vec<(u64, u32)> = (0..5000u64).map(|i| (i * 7919 + 1, i as u32)).collect();
        let m = FlatMap::new(&pairs);
        assert_eq!(m.len(), 5000);
        for &(k, v) in &pairs {
            assert_eq!(m.get(k), Some(v));
        }
        assert_eq!(m.get(2), None);
        assert_eq!(m.get(FLAT_EMPTY), None);
        assert_eq!(FlatMap::new(&[]).get(1), None);
        assert_eq!(m.iter().count(), 5000);
    }
}
