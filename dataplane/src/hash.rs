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
