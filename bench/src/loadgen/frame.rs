//! The generator's frames and the stamp the sink reads back.
//!
//! A [`Template`] is one complete frame (Ethernet, IPv4, UDP or TCP SYN, payload) built once;
//! per packet only the source port, the 16-byte stamp at the start of the payload and the L4
//! checksum change, and the checksum is finished from a sum precomputed over everything else,
//! so a 1,500-byte frame costs the generator what a 64-byte one does. Frame sizes are Ethernet
//! frames without the FCS.
//!
//! Stamp (network order): magic `0x5844` (u16), flow (u16), sequence in the flow (u32),
//! send time in nanoseconds of the run's clock (u64). [`parse`] never panics on any input.

use std::net::Ipv4Addr;

/// Bytes of the stamp at the start of every payload.
pub const STAMP_LEN: usize = 16;
/// First two bytes of every stamp.
pub const MAGIC: u16 = 0x5844;
/// Largest frame (1,500-byte IP packet in Ethernet, no FCS).
pub const MAX_FRAME: usize = 1514;
const ETH: usize = 14;
const IP: usize = 20;
/// TCP header with NOP, NOP, timestamps (TSval = send time in µs, echoed in the SYN-ACK).
const TCP_HDR: usize = 32;
/// TCP flags.
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// What the generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// UDP datagrams.
    Udp,
    /// TCP SYNs (each one opens a connection through a service: the first-packet path).
    TcpSyn,
    /// Full TCP handshakes: SYN from the generator, SYN-ACK from the sink (acting as the
    /// server), ACK and then RST (closing at once, as a client with `SO_LINGER` 0 does) from
    /// the generator; the handshake time is from the SYN to the SYN-ACK's arrival.
    TcpHandshake,
}

impl Proto {
    /// Name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::TcpSyn => "tcp-syn",
            Proto::TcpHandshake => "tcp-handshake",
        }
    }
    /// TCP (SYN-only or handshakes).
    pub fn is_tcp(self) -> bool {
        self != Proto::Udp
    }
    fn header(self) -> usize {
        if self.is_tcp() { TCP_HDR } else { 8 }
    }
    /// The smallest frame of this protocol that has room for the stamp.
    pub fn min_frame(self) -> usize {
        ETH + IP + self.header() + STAMP_LEN
    }
}

/// Addresses and shape of the generated frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficSpec {
    /// Source MAC (the sending interface's).
    pub src_mac: [u8; 6],
    /// Destination MAC (the next hop: gateway or node).
    pub dst_mac: [u8; 6],
    /// Source address.
    pub src_ip: Ipv4Addr,
    /// Destination address (a pod, a ClusterIP, a node for a NodePort).
    pub dst_ip: Ipv4Addr,
    /// Destination port.
    pub dst_port: u16,
    /// Source port of flow 0; flow `f` uses `src_port + f`.
    pub src_port: u16,
    /// Source addresses: flow `f` uses `src_ip + f % src_addrs` (1: every flow from
    /// `src_ip`; more than one only where the path accepts them, e.g. clients outside the
    /// cluster: a pod sending from another address is dropped as spoofed).
    pub src_addrs: u16,
    /// UDP or TCP SYN.
    pub proto: Proto,
    /// Frame length in bytes (no FCS).
    pub size: usize,
}

/// A frame built once, stamped per packet.
#[derive(Debug, Clone)]
pub struct Template {
    bytes: Vec<u8>,
    proto: Proto,
    csum_off: usize,
    payload: usize,
    /// Ones'-complement sum of the pseudo-header without the source address, the L4 header
    /// with source port and checksum zero, and the payload with a zero stamp.
    base: u32,
    src_ip: u32,
    src_addrs: u32,
}

fn sum16(data: &[u8]) -> u32 {
    let mut s = 0u32;
    let mut c = data.chunks_exact(2);
    for w in &mut c {
        s += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    if let [b] = c.remainder() {
        s += (*b as u32) << 8;
    }
    s
}

fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

impl Template {
    /// Builds the frame; errors on a size outside `proto.min_frame()..=MAX_FRAME`.
    pub fn new(spec: &TrafficSpec) -> Result<Self, String> {
        let min = spec.proto.min_frame();
        if spec.size < min || spec.size > MAX_FRAME {
            return Err(format!(
                "frame size {} outside {min}..={MAX_FRAME} for {}",
                spec.size,
                spec.proto.name()
            ));
        }
        let mut b = vec![0u8; spec.size];
        b[0..6].copy_from_slice(&spec.dst_mac);
        b[6..12].copy_from_slice(&spec.src_mac);
        b[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip_len = (spec.size - ETH) as u16;
        let l4_len = ip_len - IP as u16;
        let proto_num = if spec.proto.is_tcp() { 6u8 } else { 17u8 };
        {
            let ip = &mut b[ETH..ETH + IP];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
            ip[6] = 0x40; // DF
            ip[8] = 64;
            ip[9] = proto_num;
            ip[12..16].copy_from_slice(&spec.src_ip.octets());
            ip[16..20].copy_from_slice(&spec.dst_ip.octets());
            let c = !fold(sum16(ip) as u64);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let l4 = ETH + IP;
        let csum_off;
        match spec.proto {
            Proto::Udp => {
                b[l4 + 2..l4 + 4].copy_from_slice(&spec.dst_port.to_be_bytes());
                b[l4 + 4..l4 + 6].copy_from_slice(&l4_len.to_be_bytes());
                csum_off = l4 + 6;
            }
            Proto::TcpSyn | Proto::TcpHandshake => {
                b[l4 + 2..l4 + 4].copy_from_slice(&spec.dst_port.to_be_bytes());
                b[l4 + 4..l4 + 8].copy_from_slice(&1u32.to_be_bytes()); // sequence number
                b[l4 + 12] = ((TCP_HDR / 4) as u8) << 4;
                b[l4 + 13] = flags::SYN;
                b[l4 + 14..l4 + 16].copy_from_slice(&64240u16.to_be_bytes());
                // NOP, NOP, timestamps (TSval per packet, TSecr 0).
                b[l4 + 20..l4 + 24].copy_from_slice(&[1, 1, 8, 10]);
                csum_off = l4 + 16;
            }
        }
        let payload = l4 + spec.proto.header();
        // The rest of the payload: a recognisable pattern (never all zero).
        for (i, x) in b[payload + STAMP_LEN..].iter_mut().enumerate() {
            *x = (i as u8) ^ 0xa5;
        }
        // The source address is added per packet (it varies with the flow).
        let mut pseudo = [0u8; 12];
        pseudo[4..8].copy_from_slice(&spec.dst_ip.octets());
        pseudo[9] = proto_num;
        pseudo[10..12].copy_from_slice(&l4_len.to_be_bytes());
        let base = sum16(&pseudo) + sum16(&b[l4..]);
        let mut t = Self {
            bytes: b,
            proto: spec.proto,
            csum_off,
            payload,
            base,
            src_ip: u32::from(spec.src_ip),
            src_addrs: spec.src_addrs.max(1) as u32,
        };
        // A valid frame even before the first stamp.
        let mut copy = t.bytes.clone();
        t.stamp(&mut copy, 0, spec.src_port, 0, 0);
        t.bytes = copy;
        Ok(t)
    }

    /// The frame's length.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false (a template has at least its headers).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The protocol.
    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// Copies the whole frame into `buf` (once per buffer; later packets only [`stamp`]).
    ///
    /// [`stamp`]: Template::stamp
    pub fn write(&self, buf: &mut [u8]) -> usize {
        let n = self.bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        n
    }

    /// Makes `buf` (holding a [`write`](Template::write) of this template) packet `seq` of flow
    /// `flow` from source port `sport`, sent at `ts_ns`: writes the port, the stamp and the
    /// checksum.
    pub fn stamp(&self, buf: &mut [u8], flow: u16, sport: u16, seq: u32, ts_ns: u64) {
        let l4 = ETH + IP;
        if buf.len() < self.payload + STAMP_LEN {
            return;
        }
        buf[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
        let src = self.src_ip.wrapping_add(flow as u32 % self.src_addrs);
        let mut extra = (src >> 16) as u64 + (src & 0xffff) as u64;
        if self.src_addrs > 1 {
            let ip = &mut buf[ETH..ETH + IP];
            ip[12..16].copy_from_slice(&src.to_be_bytes());
            ip[10..12].copy_from_slice(&[0, 0]);
            let c = !fold(sum16(ip) as u64);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        }
        if self.proto.is_tcp() {
            let tsval = (ts_ns / 1_000) as u32;
            buf[l4 + 24..l4 + 28].copy_from_slice(&tsval.to_be_bytes());
            extra += (tsval >> 16) as u64 + (tsval & 0xffff) as u64;
        }
        let s = &mut buf[self.payload..self.payload + STAMP_LEN];
        s[0..2].copy_from_slice(&MAGIC.to_be_bytes());
        s[2..4].copy_from_slice(&flow.to_be_bytes());
        s[4..8].copy_from_slice(&seq.to_be_bytes());
        s[8..16].copy_from_slice(&ts_ns.to_be_bytes());
        // `base` summed the port, stamp and checksum bytes as zero: add what they are now.
        let total = self.base as u64
            + sport as u64
            + extra
            + sum16(&buf[self.payload..self.payload + STAMP_LEN]) as u64;
        let mut c = !fold(total);
        if c == 0 && self.proto == Proto::Udp {
            c = 0xffff;
        }
        buf[self.csum_off..self.csum_off + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// What the sink reads back from a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Flow index.
    pub flow: u16,
    /// Sequence number in the flow.
    pub seq: u32,
    /// Send time, ns of the run's clock.
    pub ts_ns: u64,
}

/// The stamp of `frame` when it is one of ours (IPv4, UDP or TCP, magic in place).
pub fn parse(frame: &[u8]) -> Option<Stamp> {
    if frame.len() < ETH + IP || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ihl = ((frame[ETH] & 0x0f) as usize) * 4;
    if ihl < IP || frame[ETH] >> 4 != 4 {
        return None;
    }
    let l4 = ETH + ihl;
    let payload = match frame[ETH + 9] {
        17 => l4 + 8,
        6 => l4 + ((*frame.get(l4 + 12)? >> 4) as usize) * 4,
        _ => return None,
    };
    let s = frame.get(payload..payload + STAMP_LEN)?;
    if u16::from_be_bytes([s[0], s[1]]) != MAGIC {
        return None;
    }
    Some(Stamp {
        flow: u16::from_be_bytes([s[2], s[3]]),
        seq: u32::from_be_bytes([s[4], s[5], s[6], s[7]]),
        ts_ns: u64::from_be_bytes([s[8], s[9], s[10], s[11], s[12], s[13], s[14], s[15]]),
    })
}

/// A TCP segment's fields the handshake needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Flags.
    pub flags: u8,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// TSval of the timestamp option (0 without one).
    pub tsval: u32,
    /// TSecr of the timestamp option (0 without one).
    pub tsecr: u32,
    /// Payload bytes.
    pub payload: usize,
}

/// The TCP segment in `frame` (IPv4 without options as the generator sends, or any IHL).
pub fn segment(frame: &[u8]) -> Option<Segment> {
    if frame.len() < ETH + IP || frame[12..14] != [0x08, 0x00] || frame[ETH + 9] != 6 {
        return None;
    }
    let ihl = ((frame[ETH] & 0x0f) as usize) * 4;
    let ip_len = u16::from_be_bytes([frame[ETH + 2], frame[ETH + 3]]) as usize;
    let l4 = ETH + ihl;
    let t = frame.get(l4..l4 + 20)?;
    let doff = ((t[12] >> 4) as usize) * 4;
    if doff < 20 || ip_len < ihl + doff || frame.len() < ETH + ip_len {
        return None;
    }
    let opts = frame.get(l4 + 20..l4 + doff)?;
    let (mut tsval, mut tsecr) = (0, 0);
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => break,
            1 => i += 1,
            k => {
                let len = *opts.get(i + 1)? as usize;
                if len < 2 || i + len > opts.len() {
                    break;
                }
                if k == 8 && len == 10 {
                    tsval = u32::from_be_bytes(opts[i + 2..i + 6].try_into().ok()?);
                    tsecr = u32::from_be_bytes(opts[i + 6..i + 10].try_into().ok()?);
                }
                i += len;
            }
        }
    }
    Some(Segment {
        flags: t[13],
        sport: u16::from_be_bytes([t[0], t[1]]),
        dport: u16::from_be_bytes([t[2], t[3]]),
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        tsval,
        tsecr,
        payload: ip_len - ihl - doff,
    })
}

/// Writes into `buf` the answer to the segment in `frame` (addresses and ports swapped):
/// flags `flags`, sequence `seq`, acknowledgement `ack`, and a timestamp option (TSval
/// `tsval`, TSecr = the segment's TSval) unless the answer is a RST. No payload. Returns
/// the frame length (0 when `frame` is not IPv4/TCP or `buf` is short).
pub fn answer(frame: &[u8], buf: &mut [u8], flags: u8, seq: u32, ack: u32, tsval: u32) -> usize {
    let Some(seg) = segment(frame) else {
        return 0;
    };
    let with_ts = flags & self::flags::RST == 0;
    let thl = if with_ts { TCP_HDR } else { 20 };
    let len = ETH + IP + thl;
    if buf.len() < len {
        return 0;
    }
    let ihl = ((frame[ETH] & 0x0f) as usize) * 4;
    let (mut src, mut dst) = ([0u8; 4], [0u8; 4]);
    src.copy_from_slice(&frame[ETH + 16..ETH + 20]);
    dst.copy_from_slice(&frame[ETH + 12..ETH + 16]);
    let (mut smac, mut dmac) = ([0u8; 6], [0u8; 6]);
    smac.copy_from_slice(&frame[0..6]);
    dmac.copy_from_slice(&frame[6..12]);
    let _ = ihl;
    let b = &mut buf[..len];
    b.fill(0);
    b[0..6].copy_from_slice(&dmac);
    b[6..12].copy_from_slice(&smac);
    b[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    {
        let ip = &mut b[ETH..ETH + IP];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((IP + thl) as u16).to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let c = !fold(sum16(ip) as u64);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let l4 = ETH + IP;
    {
        let t = &mut b[l4..];
        t[0..2].copy_from_slice(&seg.dport.to_be_bytes());
        t[2..4].copy_from_slice(&seg.sport.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&ack.to_be_bytes());
        t[12] = ((thl / 4) as u8) << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&64240u16.to_be_bytes());
        if with_ts {
            t[20..24].copy_from_slice(&[1, 1, 8, 10]);
            t[24..28].copy_from_slice(&tsval.to_be_bytes());
            t[28..32].copy_from_slice(&seg.tsval.to_be_bytes());
        }
    }
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src);
    pseudo[4..8].copy_from_slice(&dst);
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&(thl as u16).to_be_bytes());
    let c = !fold(sum16(&pseudo) as u64 + sum16(&b[l4..]) as u64);
    b[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    use proptest::prelude::*;

    fn spec(proto: Proto, size: usize) -> TrafficSpec {
        TrafficSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: Ipv4Addr::new(10, 244, 1, 10),
            dst_ip: Ipv4Addr::new(10, 96, 0, 12),
            dst_port: 53,
            src_port: 10_000,
            src_addrs: 1,
            proto,
            size,
        }
    }

    /// Every stamped frame is valid (etherparse checks the IPv4 and L4 checksums against
    /// the pseudo-header) and the stamp reads back.
    fn check(proto: Proto, size: usize, flow: u16, sport: u16, seq: u32, ts: u64) {
        let t = Template::new(&spec(proto, size)).expect("valid size");
        let mut buf = vec![0u8; 2048];
        let n = t.write(&mut buf);
        assert_eq!(n, size);
        t.stamp(&mut buf, flow, sport, seq, ts);
        let f = &buf[..n];
        let p = SlicedPacket::from_ethernet(f).expect("parses");
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not IPv4")
        };
        let h = ip.header();
        assert_eq!(h.total_len() as usize, size - 14);
        let ok_ip = h.to_header().calc_header_checksum() == h.header_checksum();
        assert!(ok_ip, "IPv4 header checksum");
        let payload = match &p.transport {
            Some(TransportSlice::Udp(u)) => {
                assert_eq!(proto, Proto::Udp);
                assert_eq!(u.source_port(), sport);
                let want = u
                    .to_header()
                    .calc_checksum_ipv4(&h.to_header(), u.payload())
                    .expect("checksum");
                assert_eq!(u.checksum(), want, "UDP checksum");
                u.payload().to_vec()
            }
            Some(TransportSlice::Tcp(t)) => {
                assert_eq!(proto, Proto::TcpSyn);
                assert!(t.syn() && !t.ack());
                assert_eq!(segment(f).map(|s| s.tsval), Some((ts / 1_000) as u32));
                assert_eq!(t.source_port(), sport);
                let want = t
                    .to_header()
                    .calc_checksum_ipv4(&h.to_header(), t.payload())
                    .expect("checksum");
                assert_eq!(t.checksum(), want, "TCP checksum");
                t.payload().to_vec()
            }
            other => panic!("transport {other:?}"),
        };
        assert_eq!(payload.len(), size - proto.min_frame() + STAMP_LEN);
        assert_eq!(
            parse(f),
            Some(Stamp {
                flow,
                seq,
                ts_ns: ts
            })
        );
    }

    #[test]
    fn sizes_and_protocols() {
        for proto in [Proto::Udp, Proto::TcpSyn] {
            for size in [proto.min_frame(), 64, 65, 128, 1024, 1500, MAX_FRAME] {
                if size >= proto.min_frame() {
                    check(proto, size, 3, 10_003, 77, 123_456_789);
                }
            }
        }
        assert!(Template::new(&spec(Proto::Udp, 57)).is_err());
        assert!(Template::new(&spec(Proto::TcpSyn, 69)).is_err());
        assert!(Template::new(&spec(Proto::Udp, 1515)).is_err());
    }

    /// Flows over several source addresses: flow f from src_ip + f % n, checksums valid.
    #[test]
    fn source_addresses_per_flow() {
        for proto in [Proto::Udp, Proto::TcpHandshake] {
            let mut sp = spec(proto, 100);
            sp.src_addrs = 3;
            let t = Template::new(&sp).expect("valid");
            for flow in 0..7u16 {
                let mut b = vec![0u8; 100];
                t.write(&mut b);
                t.stamp(&mut b, flow, 10_000 + flow, 1, 5_000);
                let p = SlicedPacket::from_ethernet(&b).expect("parses");
                let Some(NetSlice::Ipv4(ip)) = &p.net else {
                    panic!("not IPv4")
                };
                let h = ip.header().to_header();
                assert_eq!(h.source, [10, 244, 1, 10 + (flow % 3) as u8]);
                assert_eq!(h.calc_header_checksum(), h.header_checksum);
                let ok = match &p.transport {
                    Some(TransportSlice::Udp(u)) => {
                        u.checksum()
                            == u.to_header()
                                .calc_checksum_ipv4(&h, u.payload())
                                .expect("sum")
                    }
                    Some(TransportSlice::Tcp(tc)) => {
                        tc.checksum()
                            == tc
                                .to_header()
                                .calc_checksum_ipv4(&h, tc.payload())
                                .expect("sum")
                    }
                    _ => false,
                };
                assert!(ok, "{proto:?} flow {flow}: L4 checksum");
            }
        }
    }

    #[test]
    fn foreign_frames_are_not_ours() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[0u8; 100]), None);
        let t = Template::new(&spec(Proto::Udp, 64)).expect("valid");
        let mut buf = vec![0u8; 64];
        t.write(&mut buf);
        buf[42] ^= 1; // magic broken
        assert_eq!(parse(&buf), None);
        assert_eq!(parse(&buf[..50]), None, "truncated before the stamp");
    }

    /// SYN -> SYN-ACK -> ACK and RST: valid checksums, ports and addresses swapped, sequence
    /// numbers and timestamps echoed.
    #[test]
    fn handshake_answers() {
        let t = Template::new(&spec(Proto::TcpHandshake, 100)).expect("valid");
        let mut syn = vec![0u8; 100];
        t.write(&mut syn);
        t.stamp(&mut syn, 5, 10_005, 9, 7_000_000);
        let s = segment(&syn).expect("tcp");
        assert_eq!(
            (s.flags, s.sport, s.dport, s.seq),
            (flags::SYN, 10_005, 53, 1)
        );
        assert_eq!((s.tsval, s.tsecr, s.payload), (7_000, 0, 100 - 66));
        let mut synack = vec![0u8; 100];
        let n = answer(
            &syn,
            &mut synack,
            flags::SYN | flags::ACK,
            77,
            s.seq + 1,
            8_000,
        );
        assert_eq!(n, 66);
        let p = SlicedPacket::from_ethernet(&synack[..n]).expect("parses");
        let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(tcp))) = (&p.net, &p.transport)
        else {
            panic!("not TCP/IPv4")
        };
        let h = ip.header().to_header();
        assert_eq!(h.calc_header_checksum(), h.header_checksum);
        assert_eq!(
            tcp.checksum(),
            tcp.to_header().calc_checksum_ipv4(&h, &[]).expect("sum")
        );
        assert_eq!(h.source, [10, 96, 0, 12]);
        assert_eq!(h.destination, [10, 244, 1, 10]);
        assert_eq!(synack[0..6], [2, 0, 0, 0, 0, 1]);
        let a = segment(&synack[..n]).expect("tcp");
        assert_eq!(
            (
                a.flags, a.sport, a.dport, a.seq, a.ack, a.tsval, a.tsecr, a.payload
            ),
            (flags::SYN | flags::ACK, 53, 10_005, 77, 2, 8_000, 7_000, 0)
        );
        let mut rst = vec![0u8; 100];
        let n = answer(&synack[..66], &mut rst, flags::RST, a.ack, 0, 0);
        assert_eq!(n, 54);
        let r = segment(&rst[..n]).expect("tcp");
        assert_eq!(
            (r.flags, r.sport, r.dport, r.seq),
            (flags::RST, 10_005, 53, 2)
        );
        assert_eq!(answer(&[0u8; 60], &mut rst, flags::ACK, 0, 0, 0), 0);
    }

    proptest! {
        #[test]
        fn segment_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = segment(&bytes);
            let mut buf = [0u8; 128];
            let _ = answer(&bytes, &mut buf, flags::ACK, 1, 2, 3);
        }

        #[test]
        fn any_stamp_checksums(size in 82usize..=MAX_FRAME, flow: u16, sport: u16, seq: u32, ts: u64, udp: bool) {
            check(if udp { Proto::Udp } else { Proto::TcpSyn }, size, flow, sport, seq, ts);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }
    }
}
