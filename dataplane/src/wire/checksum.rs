//! Internet checksums (RFC 1071) and incremental updates (RFC 1624).
//!
//! Sums are accumulated in a `u32`/`u64` and folded once at the end. The incremental form
//! `HC' = ~(~HC + ~m + m')` (RFC 1624 eqn. 3) is exact for any change, including the case where
//! the old checksum was 0xffff-equivalent, so a header rewritten field by field verifies the same
//! as one recomputed from scratch.

/// Ones'-complement sum of `data` (big-endian 16-bit words, odd byte padded), not folded.
/// Eight bytes per add with an end-around carry (2^16 = 1 modulo 0xffff, so a 64-bit word
/// folds to the same 16-bit sum as its four 16-bit words).
#[inline]
pub fn sum(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut carry: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let (a, o) = acc.overflowing_add(w);
        acc = a;
        carry += u64::from(o);
    }
    // Fold the 64-bit sum to 33 bits before adding the rest, so nothing can overflow.
    let mut acc = (acc >> 32) + (acc & 0xffff_ffff) + carry;
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u16::from_be_bytes([p[0], p[1]]) as u64;
    }
    if let [last] = pairs.remainder() {
        acc += (*last as u64) << 8;
    }
    acc
}

/// Folds a wide ones'-complement sum to 16 bits (not complemented). Branch-free: 64 -> 33
/// bits, then three 16-bit end-around carries, which always suffice.
#[inline(always)]
pub fn fold(acc: u64) -> u16 {
    let a = (acc & 0xffff_ffff) + (acc >> 32);
    let a = (a & 0xffff) + (a >> 16);
    let a = (a & 0xffff) + (a >> 16);
    let a = (a & 0xffff) + (a >> 16);
    a as u16
}

/// The checksum of `data`: the complement of its folded sum.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// Sum of the IPv4 pseudo header for an L4 checksum.
#[inline]
pub fn pseudo_header_sum(src: u32, dst: u32, proto: u8, l4_len: u16) -> u64 {
    (src >> 16) as u64
        + (src & 0xffff) as u64
        + (dst >> 16) as u64
        + (dst & 0xffff) as u64
        + proto as u64
        + l4_len as u64
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    let acc = (!csum) as u32 + (!old) as u32 + new as u32;
    let acc = (acc & 0xffff) + (acc >> 16);
    !(((acc & 0xffff) + (acc >> 16)) as u16)
}

/// RFC 1624 eqn. 3 for a 32-bit field (an IPv4 address).
#[inline(always)]
pub fn update32(csum: u16, old: u32, new: u32) -> u16 {
    let acc =
        (!csum) as u32 + (!(old >> 16) & 0xffff) + (!old & 0xffff) + (new >> 16) + (new & 0xffff);
    let acc = (acc & 0xffff) + (acc >> 16);
    !(((acc & 0xffff) + (acc >> 16)) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn fold_handles_every_carry() {
        for acc in [
            0u64,
            0xffff,
            0x1_0000,
            0x1_fffe,
            0xffff_ffff,
            u64::MAX,
            0xffff_0001_ffff_ffff,
        ] {
            let mut slow = acc;
            while slow >> 16 != 0 {
                slow = (slow & 0xffff) + (slow >> 16);
            }
            assert_eq!(fold(acc) as u64, slow, "{acc:#x}");
        }
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum(&[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
    }

    proptest! {
        #[test]
        fn wide_sum_folds_like_the_16_bit_words(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let mut naive: u64 = 0;
            for p in data.chunks(2) {
                naive += u64::from(u16::from_be_bytes([p[0], *p.get(1).unwrap_or(&0)]));
            }
            prop_assert_eq!(fold(sum(&data)), fold(naive));
        }

        #[test]
        fn incremental_matches_full(mut data in proptest::collection::vec(any::<u8>(), 4..64),
                                    at in 0usize..30, new16 in any::<u16>(), new32 in any::<u32>()) {
            let len = data.len() & !1;
            data.truncate(len);
            let at = (at % (len / 2)) * 2;
            let before = checksum(&data);
            let old = u16::from_be_bytes([data[at], data[at + 1]]);
            data[at..at + 2].copy_from_slice(&new16.to_be_bytes());
            // Both checksums must verify the data the same way (0x0000 and 0xffff are equal in
            // ones' complement; compare after folding the sum with the checksum).
            let inc = update16(before, old, new16);
            prop_assert_eq!(fold(sum(&data) + inc as u64), 0xffff);
            if len >= 4 {
                let at4 = (at / 4) * 4;
                if at4 + 4 <= len {
                    let before = checksum(&data);
                    let old = u32::from_be_bytes([data[at4], data[at4+1], data[at4+2], data[at4+3]]);
                    data[at4..at4 + 4].copy_from_slice(&new32.to_be_bytes());
                    let inc = update32(before, old, new32);
                    prop_assert_eq!(fold(sum(&data) + inc as u64), 0xffff);
                }
            }
        }
    }
}
