//! Maglev consistent hashing (Eisenbud et al., NSDI 2016).
//!
//! The lookup table has a prime size `M` of 100 to 200 entries per backend (the paper's bound for
//! near-even spread), so small services get small tables and the whole table for 10,000 services
//! stays in tens of MiB. `M` comes from a fixed ladder of primes (about doubling) rather than
//! the exact next prime, so adding or removing a few backends keeps `M` and with it Maglev's
//! minimal-disruption property. A flow hash picks `table[reduce(hash, M)]` with a multiply-shift range
//! reduction (no division on the packet path).
//!
//! Given the same backend set, every node builds the identical table (backends are identified by
//! address, not by input order), so a flow that moves between nodes picks the same backend.

use std::net::SocketAddrV4;

/// Entries per backend the table aims for.
pub const ENTRIES_PER_BACKEND: usize = 100;
/// Most backends one table can address (entries are `u16`).
pub const MAX_BACKENDS: usize = u16::MAX as usize;

/// A built Maglev lookup table: indexes into the service's backend list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maglev {
    /// Shared: ports of one service with the same backends share one table.
    table: std::sync::Arc<[u16]>,
}

/// Primes just below powers of two, from 2^7 to 2^23 (the last covers 65,535 backends x 100).
const SIZES: [usize; 17] = [
    127, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071, 262139, 524287, 1048573,
    2097143, 4194301, 8388593,
];

/// The table size for `n` backends: the smallest prime of the ladder >= 100 * n.
pub fn table_size(n: usize) -> usize {
    let want = n.min(MAX_BACKENDS) * ENTRIES_PER_BACKEND;
    SIZES
        .iter()
        .copied()
        .find(|&m| m >= want)
        .unwrap_or(SIZES[SIZES.len() - 1])
}

fn backend_hash(b: &SocketAddrV4, seed: u64) -> u64 {
    let k = ((u32::from(*b.ip()) as u64) << 16) | b.port() as u64;
    crate::hash::mix64(k ^ seed)
}

impl Maglev {
    /// Builds the table for `backends` (at most [`MAX_BACKENDS`]; empty gives an empty table).
    pub fn new(backends: &[SocketAddrV4]) -> Self {
        let n = backends.len().min(MAX_BACKENDS);
        if n == 0 {
            return Self {
                table: std::sync::Arc::new([]),
            };
        }
        let m = table_size(n);
        // Fill in address order, whatever the input order, so every node builds the same table.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| backends[i]);
        // Each backend walks its permutation offset, offset + skip, ... (mod m); `pos` is where
        // it stands, advanced by one addition and a conditional subtraction (no division).
        // u32 arithmetic (M < 2^24): half the register and cache footprint of usize.
        let m32 = m as u32;
        let mut pos: Vec<u32> = Vec::with_capacity(n);
        let mut skip: Vec<u32> = Vec::with_capacity(n);
        for b in order.iter().map(|&i| &backends[i]) {
            pos.push((backend_hash(b, 0x6d61_676c_6576_3031) % m as u64) as u32);
            skip.push((backend_hash(b, 0x736b_6970_7365_6564) % (m as u64 - 1)) as u32 + 1);
        }
        let mut table = vec![u16::MAX; m];
        let mut filled = 0;
        'fill: loop {
            for (i, (p, &s)) in pos.iter_mut().zip(&skip).enumerate() {
                let mut c = *p;
                while table[c as usize] != u16::MAX {
                    c += s;
                    if c >= m32 {
                        c -= m32;
                    }
                }
                table[c as usize] = order[i] as u16;
                c += s;
                if c >= m32 {
                    c -= m32;
                }
                *p = c;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Self {
            table: table.into(),
        }
    }

    /// Table size (0 when there are no backends).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// The lookup table: backend index per entry.
    pub fn entries(&self) -> &[u16] {
        &self.table
    }

    /// True when there are no backends.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Prefetches the table entry `pick(hash)` will read.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        let m = self.table.len() as u64;
        if let Some(e) = self.table.get((((hash >> 32) * m) >> 32) as usize) {
            crate::sys::prefetch(e);
        }
    }

    /// The backend index for a flow hash, or `None` when there are no backends.
    #[inline]
    pub fn pick(&self, hash: u64) -> Option<usize> {
        let m = self.table.len() as u64;
        let i = (((hash >> 32) * m) >> 32) as usize;
        self.table.get(i).map(|&b| b as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: usize) -> Vec<SocketAddrV4> {
        (0..n)
            .map(|i| {
                SocketAddrV4::new([10, 244, (i / 250) as u8, (i % 250) as u8 + 2].into(), 8080)
            })
            .collect()
    }

    fn is_prime(n: usize) -> bool {
        n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
    }

    #[test]
    fn sizes_are_primes_of_100_to_200x() {
        assert!(SIZES.iter().all(|&m| is_prime(m)));
        for n in [1, 2, 10, 99, 100, 1000, 65_535] {
            let m = table_size(n);
            assert!(m >= n * 100 && m <= (n * 200).max(127), "n={n} m={m}");
        }
        assert_eq!(Maglev::new(&backends(10)).len(), 1021);
    }

    #[test]
    fn spread_is_even() {
        let m = Maglev::new(&backends(10));
        let mut counts = [0usize; 10];
        for h in 0..m.len() {
            counts[m.table[h] as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*max - *min <= 2, "{counts:?}");
    }

    #[test]
    fn order_independent_and_minimal_disruption() {
        let mut b = backends(10);
        let a = Maglev::new(&b);
        b.reverse();
        let r = Maglev::new(&b);
        // Same backend for every slot, after mapping indexes back to addresses.
        let fwd = backends(10);
        for i in 0..a.len() {
            assert_eq!(fwd[a.table[i] as usize], b[r.table[i] as usize]);
        }
        // Remove one backend of 100 (same table size): only about the removed backend's share
        // of flows should move; Maglev's bound is loose, so allow a few percent more.
        let big = backends(100);
        let t1 = Maglev::new(&big);
        let t2 = Maglev::new(&big[..99]);
        let mut kept = 0;
        let samples = 100_000u64;
        for i in 0..samples {
            let h = crate::hash::mix64(i);
            if big[t1.pick(h).unwrap()] == big[t2.pick(h).unwrap()] {
                kept += 1;
            }
        }
        assert!(kept > samples * 95 / 100, "kept {kept}");
    }

    #[test]
    fn empty_has_no_pick() {
        assert_eq!(Maglev::new(&[]).pick(42), None);
    }
}
