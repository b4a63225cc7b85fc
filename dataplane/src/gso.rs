//! Segmentation and checksum completion in software, for frames that arrive larger or less
//! finished than the port they leave through can carry.
//!
//! A tap pod port hands the dataplane TCP segments of up to 64 KiB (TSO) whose L4 checksum is
//! partial (the field holds the pseudo header's sum; the rest is to be summed). Between two
//! taps such a frame crosses whole; towards a port without offloads (an AF_XDP socket: the
//! uplink into VXLAN, a veth pod, the host port) it is cut here into segments of the size the
//! sender asked for, each with its own IPv4 length, ID and checksum, TCP sequence number,
//! flags and full checksum (and, inside VXLAN, its own outer lengths and checksum). A frame
//! that is not segmented but has a partial checksum gets it finished.
//!
//! The other way, towards a tap, consecutive segments of one TCP stream that arrive in one
//! batch (from the overlay, the host port, a veth pod) are merged into one large segment with
//! a partial checksum ([`mergeable`], [`same_flow_headers`], [`finish_merge`]): one write to
//! the tap instead of one per segment, as the kernel's GRO does for its own receivers; only
//! segments whose checksum verifies are merged. Pure functions over byte slices: no
//! allocation, no panic on any input (a frame they cannot parse is refused).

use crate::wire::checksum;

const ETH: usize = 14;
const TCP_PROTO: u8 = 6;
const UDP_PROTO: u8 = 17;
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const CWR: u8 = 0x80;

/// Where the TCP segment of a frame lives (offsets from the frame's first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tso {
    /// Outer IPv4 header (VXLAN), if the frame is encapsulated.
    pub outer_l3: Option<usize>,
    /// The IPv4 header carrying the TCP segment.
    pub l3: usize,
    /// The TCP header.
    pub l4: usize,
    /// Headers end (payload starts) here.
    pub hdr: usize,
    /// Payload ends here (the inner IPv4 total length; trailing bytes are not payload).
    pub end: usize,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    if let Some(s) = b.get_mut(at..at + 2) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// The IPv4 header at `l3`: (header length, total length, protocol), if well formed and
/// inside `frame`.
fn ipv4_at(frame: &[u8], l3: usize) -> Option<(usize, usize, u8)> {
    let v = *frame.get(l3)?;
    let ihl = usize::from(v & 0x0f) * 4;
    if v >> 4 != 4 || ihl < 20 {
        return None;
    }
    let total = usize::from(be16(frame, l3 + 2)?);
    if total < ihl || l3 + total > frame.len() {
        return None;
    }
    Some((ihl, total, *frame.get(l3 + 9)?))
}

/// The TCP segment of `frame`, whose inner Ethernet header starts at `inner_eth` (0, or the
/// length of the outer headers of a VXLAN frame, which must then be IPv4 + UDP right after
/// its own Ethernet header). None when it is not IPv4 TCP or its lengths do not hold.
pub fn tso_layout(frame: &[u8], inner_eth: usize) -> Option<Tso> {
    let outer_l3 = if inner_eth > 0 {
        let (ihl, _, p) = ipv4_at(frame, ETH)?;
        if p != UDP_PROTO || ETH + ihl + 8 > inner_eth {
            return None;
        }
        Some(ETH)
    } else {
        None
    };
    let l3 = inner_eth + ETH;
    if be16(frame, l3 - 2)? != 0x0800 {
        return None;
    }
    let (ihl, total, p) = ipv4_at(frame, l3)?;
    if p != TCP_PROTO {
        return None;
    }
    let l4 = l3 + ihl;
    let doff = usize::from(*frame.get(l4 + 12)? >> 4) * 4;
    let hdr = l4 + doff;
    let end = l3 + total;
    if doff < 20 || hdr > end {
        return None;
    }
    Some(Tso {
        outer_l3,
        l3,
        l4,
        hdr,
        end,
    })
}

/// Segments `t` makes at `mss` payload bytes each (at least one).
pub fn segments(t: &Tso, mss: usize) -> usize {
    let payload = t.end - t.hdr;
    if mss == 0 || payload == 0 {
        1
    } else {
        payload.div_ceil(mss)
    }
}

/// Recomputes the IPv4 header checksum at `l3`.
fn ipv4_checksum(b: &mut [u8], l3: usize) {
    let ihl = usize::from(b.get(l3).map_or(5, |v| v & 0x0f)) * 4;
    put16(b, l3 + 10, 0);
    if let Some(h) = b.get(l3..l3 + ihl) {
        let c = checksum::checksum(h);
        put16(b, l3 + 10, c);
    }
}

/// Writes segment `i` (of [`segments`]) of `frame` into `out`: the headers, its share of
/// the payload, every length, ID, sequence number, flag and checksum its own. Returns its
/// length, or None when `out` is too short or `i` is past the last segment.
pub fn write_segment(frame: &[u8], t: &Tso, mss: usize, i: usize, out: &mut [u8]) -> Option<usize> {
    let n = segments(t, mss);
    if i >= n || t.end > frame.len() {
        return None;
    }
    let mss = if mss == 0 { t.end - t.hdr } else { mss };
    let from = t.hdr + i * mss;
    let to = (from + mss).min(t.end);
    let len = t.hdr + (to - from);
    if len > out.len() {
        return None;
    }
    out[..t.hdr].copy_from_slice(&frame[..t.hdr]);
    out[t.hdr..len].copy_from_slice(&frame[from..to]);
    let last = i + 1 == n;
    // Inner IPv4: length, ID, checksum.
    let ip_len = (len - t.l3) as u16;
    put16(out, t.l3 + 2, ip_len);
    let id = be16(frame, t.l3 + 4)?.wrapping_add(i as u16);
    put16(out, t.l3 + 4, id);
    ipv4_checksum(out, t.l3);
    // TCP: sequence, flags, full checksum.
    let seq = be32(frame, t.l4 + 4)?.wrapping_add((i * mss) as u32);
    out[t.l4 + 4..t.l4 + 8].copy_from_slice(&seq.to_be_bytes());
    let mut flags = out[t.l4 + 13];
    if !last {
        flags &= !(FIN | PSH);
    }
    if i > 0 {
        flags &= !CWR;
    }
    out[t.l4 + 13] = flags;
    put16(out, t.l4 + 16, 0);
    let (src, dst) = (be32(out, t.l3 + 12)?, be32(out, t.l3 + 16)?);
    let l4_len = (len - t.l4) as u16;
    let sum =
        checksum::pseudo_header_sum(src, dst, TCP_PROTO, l4_len) + checksum::sum(&out[t.l4..len]);
    put16(out, t.l4 + 16, !checksum::fold(sum));
    // Outer IPv4 and UDP (VXLAN): lengths, ID, checksum; the UDP checksum stays zero.
    if let Some(o) = t.outer_l3 {
        put16(out, o + 2, (len - o) as u16);
        let oid = be16(frame, o + 4)?.wrapping_add(i as u16);
        put16(out, o + 4, oid);
        ipv4_checksum(out, o);
        let ihl = usize::from(out[o] & 0x0f) * 4;
        let udp = o + ihl;
        put16(out, udp + 4, (len - udp) as u16);
        put16(out, udp + 6, 0);
    }
    Some(len)
}

/// The L4 checksum field's place for the IPv4 TCP or UDP packet at `l3`: (csum_start,
/// csum_offset) as a virtio-net header gives them. None for anything else.
pub fn l4_checksum_at(frame: &[u8], l3: usize) -> Option<(usize, usize)> {
    let (ihl, _, p) = ipv4_at(frame, l3)?;
    let off = match p {
        TCP_PROTO => 16,
        UDP_PROTO => 6,
        _ => return None,
    };
    Some((l3 + ihl, off))
}

/// Sets the partial L4 checksum of the IPv4 TCP/UDP packet at `l3` to its pseudo header's
/// folded sum (not complemented, as a sender offloading its checksum leaves it), from the
/// addresses the packet carries now (after NAT rewrote them). Returns (csum_start,
/// csum_offset, end of the L4 data), or None for a packet that is not IPv4 TCP/UDP.
pub fn set_partial(frame: &mut [u8], l3: usize) -> Option<(usize, usize, usize)> {
    let (ihl, total, p) = ipv4_at(frame, l3)?;
    let (start, off) = l4_checksum_at(frame, l3)?;
    if start + off + 2 > l3 + total {
        return None;
    }
    let (src, dst) = (be32(frame, l3 + 12)?, be32(frame, l3 + 16)?);
    let s = checksum::pseudo_header_sum(src, dst, p, (total - ihl) as u16);
    put16(frame, start + off, checksum::fold(s));
    Some((start, off, l3 + total))
}

/// Finishes a partial checksum: the ones' complement sum of `frame[start..end]` (whose field
/// at `start + offset` holds the pseudo header's sum) goes, complemented, into that field (a
/// UDP result of zero is sent as 0xffff). False when the places are outside the frame.
pub fn finish_checksum(frame: &mut [u8], start: usize, offset: usize, end: usize) -> bool {
    if start + offset + 2 > end || end > frame.len() {
        return false;
    }
    let udp = offset == 6;
    let mut c = !checksum::fold(checksum::sum(&frame[start..end]));
    if udp && c == 0 {
        c = 0xffff;
    }
    put16(frame, start + offset, c);
    true
}

/// A TCP segment that may be merged with its neighbours (GRO in user space, towards a tap):
/// where its parts are, its sequence number, its payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mergeable {
    /// The TCP header.
    pub l4: usize,
    /// Headers end (payload starts) here.
    pub hdr: usize,
    /// Sequence number.
    pub seq: u32,
    /// Payload bytes.
    pub payload: usize,
    /// PSH set (the merge ends with it).
    pub psh: bool,
}

/// Whether `frame` is a plain TCP data segment that coalescing may take: IPv4 without
/// options or fragmentation, TCP with ACK (and maybe PSH) only, payload present, no trailing
/// bytes, and a TCP checksum that verifies (a corrupt segment is passed on alone, for the
/// receiver to drop).
pub fn mergeable(frame: &[u8]) -> Option<Mergeable> {
    const ACK: u8 = 0x10;
    if be16(frame, 12)? != 0x0800 || *frame.get(ETH)? != 0x45 {
        return None;
    }
    let (_, total, p) = ipv4_at(frame, ETH)?;
    if p != TCP_PROTO || ETH + total != frame.len() || be16(frame, ETH + 6)? & 0x3fff != 0 {
        return None;
    }
    let l4 = ETH + 20;
    let flags = *frame.get(l4 + 13)?;
    if flags & !PSH != ACK {
        return None;
    }
    let doff = usize::from(*frame.get(l4 + 12)? >> 4) * 4;
    let hdr = l4 + doff;
    if doff < 20 || hdr >= frame.len() {
        return None;
    }
    let (src, dst) = (be32(frame, ETH + 12)?, be32(frame, ETH + 16)?);
    let l4_len = (frame.len() - l4) as u16;
    let sum =
        checksum::pseudo_header_sum(src, dst, TCP_PROTO, l4_len) + checksum::sum(&frame[l4..]);
    if checksum::fold(sum) != 0xffff {
        return None;
    }
    Some(Mergeable {
        l4,
        hdr,
        seq: be32(frame, l4 + 4)?,
        payload: frame.len() - hdr,
        psh: flags & PSH != 0,
    })
}

/// Whether segment `b` (headers `b[..m.hdr]`) continues the merge whose first headers are
/// `a[..hdr]`: same Ethernet header, same IPv4 header but for length, ID and checksum, same
/// TCP header but for sequence number, PSH and checksum.
pub fn same_flow_headers(a: &[u8], b: &[u8], hdr: usize) -> bool {
    let (Some(a), Some(b)) = (a.get(..hdr), b.get(..hdr)) else {
        return false;
    };
    let l3 = ETH;
    let l4 = ETH + 20;
    a[..l3 + 2] == b[..l3 + 2]
        && a[l3 + 6..l3 + 10] == b[l3 + 6..l3 + 10]
        && a[l3 + 12..l4 + 4] == b[l3 + 12..l4 + 4]
        && a[l4 + 8..l4 + 13] == b[l4 + 8..l4 + 13]
        && a[l4 + 13] & !PSH == b[l4 + 13] & !PSH
        && a[l4 + 14..l4 + 16] == b[l4 + 14..l4 + 16]
        && a[l4 + 18..hdr] == b[l4 + 18..hdr]
}

/// Turns the merged frame `frame` (headers of its first segment, payload of all) into one
/// large segment: IPv4 length and checksum, PSH if `psh`, the TCP checksum partial (pseudo
/// header sum over the whole length). Returns (csum_start, csum_offset).
pub fn finish_merge(frame: &mut [u8], psh: bool) -> Option<(usize, usize)> {
    let total = frame.len().checked_sub(ETH)?;
    put16(frame, ETH + 2, u16::try_from(total).ok()?);
    ipv4_checksum(frame, ETH);
    let l4 = ETH + 20;
    if psh {
        *frame.get_mut(l4 + 13)? |= PSH;
    }
    let (start, off, _) = set_partial(frame, ETH)?;
    Some((start, off))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    fn big_tcp(payload: usize, flags_fin: bool) -> Vec<u8> {
        let data: Vec<u8> = (0..payload).map(|i| (i * 7 + 3) as u8).collect();
        let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 244, 1, 10], [10, 244, 1, 11], 64)
            .tcp(40000, 5201, 1_000_000, 64000)
            .psh()
            .ack(77);
        if flags_fin {
            b = b.fin();
        }
        let mut v = Vec::new();
        b.write(&mut v, &data).unwrap();
        v
    }

    fn valid_tcp(seg: &[u8]) -> (u32, Vec<u8>, bool, bool) {
        let s = SlicedPacket::from_ethernet(seg).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = s.net else {
            panic!("not ipv4")
        };
        let h = ip.header();
        assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
        let Some(TransportSlice::Tcp(t)) = s.transport else {
            panic!("not tcp")
        };
        let want = t
            .to_header()
            .calc_checksum_ipv4_raw(h.source(), h.destination(), t.payload())
            .unwrap();
        assert_eq!(want, t.checksum(), "tcp checksum");
        (t.sequence_number(), t.payload().to_vec(), t.fin(), t.psh())
    }

    #[test]
    fn a_64k_segment_becomes_mss_segments_that_verify_and_carry_the_stream() {
        let f = big_tcp(60_000, true);
        let t = tso_layout(&f, 0).unwrap();
        assert_eq!((t.l3, t.l4, t.hdr, t.end), (14, 34, 54, f.len()));
        let mss = 1398;
        let n = segments(&t, mss);
        assert_eq!(n, 60_000usize.div_ceil(mss));
        let mut stream = Vec::new();
        let mut out = vec![0u8; 2048];
        for i in 0..n {
            let len = write_segment(&f, &t, mss, i, &mut out).unwrap();
            let (seq, pay, fin, psh) = valid_tcp(&out[..len]);
            assert_eq!(seq, 1_000_000 + (i * mss) as u32);
            assert_eq!((fin, psh), (i + 1 == n, i + 1 == n));
            stream.extend(pay);
        }
        assert_eq!(stream, f[54..].to_vec());
        assert!(write_segment(&f, &t, mss, n, &mut out).is_none());
        assert!(write_segment(&f, &t, mss, 0, &mut out[..100]).is_none());
    }

    #[test]
    fn vxlan_wrapped_segments_get_their_outer_lengths_and_checksum() {
        let inner = big_tcp(5000, false);
        let mut outer = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 1, 2])
            .ipv4([192, 168, 0, 1], [192, 168, 0, 2], 64)
            .udp(50000, 8472)
            .write(&mut outer, &[0u8; 8])
            .unwrap();
        let encap = outer.len();
        outer.extend_from_slice(&inner);
        let t = tso_layout(&outer, encap).unwrap();
        assert_eq!(t.outer_l3, Some(14));
        let mut out = vec![0u8; 2048];
        for i in 0..segments(&t, 1400) {
            let len = write_segment(&outer, &t, 1400, i, &mut out).unwrap();
            let s = SlicedPacket::from_ethernet(&out[..len]).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = s.net else {
                panic!()
            };
            assert_eq!(usize::from(ip.header().total_len()), len - 14);
            assert_eq!(
                ip.header().to_header().calc_header_checksum(),
                ip.header().header_checksum()
            );
            let Some(TransportSlice::Udp(u)) = s.transport else {
                panic!()
            };
            assert_eq!(usize::from(u.length()), len - 34);
            valid_tcp(&out[encap..len]);
        }
    }

    #[test]
    fn partial_checksums_are_set_from_the_addresses_and_finished_exactly() {
        let mut f = big_tcp(3000, false);
        let want = u16::from_be_bytes([f[50], f[51]]);
        let (start, off, end) = set_partial(&mut f, 14).unwrap();
        assert_eq!((start, off, end), (34, 16, f.len()));
        assert_ne!(u16::from_be_bytes([f[50], f[51]]), want);
        assert!(finish_checksum(&mut f, start, off, end));
        assert_eq!(u16::from_be_bytes([f[50], f[51]]), want);
        assert!(!finish_checksum(&mut f, start, off, end + 1));
    }

    #[test]
    fn segments_merge_back_into_the_segment_they_were_cut_from() {
        let f = big_tcp(20_000, false);
        let t = tso_layout(&f, 0).unwrap();
        let mss = 1448;
        let mut merged: Vec<u8> = Vec::new();
        let mut hdr = 0;
        let mut psh = false;
        for i in 0..segments(&t, mss) {
            let mut out = vec![0u8; 2048];
            let len = write_segment(&f, &t, mss, i, &mut out).unwrap();
            let seg = &out[..len];
            let m = mergeable(seg).expect("a data segment merges");
            assert_eq!(m.seq, 1_000_000 + (i * mss) as u32);
            psh |= m.psh;
            if i == 0 {
                hdr = m.hdr;
                merged.extend_from_slice(seg);
            } else {
                assert!(same_flow_headers(&merged, seg, hdr));
                merged.extend_from_slice(&seg[m.hdr..]);
            }
        }
        let (start, off) = finish_merge(&mut merged, psh).unwrap();
        assert_eq!((start, off), (34, 16));
        let end = merged.len();
        assert!(finish_checksum(&mut merged, start, off, end));
        assert_eq!(
            merged, f,
            "the merge is the original segment, byte for byte"
        );
    }

    #[test]
    fn only_plain_verified_data_segments_merge() {
        let f = big_tcp(1000, false);
        assert!(mergeable(&f).is_some());
        let mut bad = f.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(mergeable(&bad).is_none(), "a corrupt segment is not merged");
        assert!(
            mergeable(&big_tcp(1000, true)).is_none(),
            "FIN ends a stream"
        );
        assert!(mergeable(&big_tcp(0, false)).is_none(), "no payload");
        let mut other = big_tcp(1000, false);
        other[14 + 20 + 1] ^= 1; // source port
        assert!(!same_flow_headers(&f, &other, 54));
        assert!(mergeable(&f[..40]).is_none());
    }

    #[test]
    fn garbage_is_refused_not_segmented() {
        assert!(tso_layout(&[], 0).is_none());
        assert!(tso_layout(&[0u8; 60], 0).is_none());
        let mut f = big_tcp(100, false);
        f[16] = 0xff; // total length beyond the frame
        assert!(tso_layout(&f, 0).is_none());
        let f = big_tcp(100, false);
        assert!(tso_layout(&f, 8).is_none());
        assert!(set_partial(&mut [0u8; 10], 0).is_none());
    }
}
