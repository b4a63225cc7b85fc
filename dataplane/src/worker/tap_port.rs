//! A worker's tap ports: pods whose `eth0` is a tap with a virtio-net header per frame.
//!
//! Read: up to [`TAP_BATCH`] frames per turn, each into its own buffer (a frame may be a TCP
//! segment of up to 64 KiB with a partial checksum), then the pipeline over them as one
//! batch. Placement: to a tap on this worker, whole, with a header saying what is still to be
//! done (the receiving kernel finishes or trusts the checksum and segments only if it must);
//! to any other port, cut into segments ([`crate::gso`]) or copied whole, each into a UMEM
//! frame with every checksum finished, then placed like any received frame (a TX ring here, or
//! a copy for the worker owning the port). Frames from AF_XDP sockets reach a tap with a plain
//! header (complete checksums). Every drop on the way is counted (`tap.drops`).

use super::*;
use crate::gso;
use crate::sys::tap::{F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4};

const ETH: usize = crate::wire::ethernet::HEADER_LEN;
/// The largest merge: an IPv4 packet's 64 KiB with its Ethernet header.
const GRO_MAX: usize = 65_535 + ETH;

/// One merge in progress towards a tap: the virtio-net header's room, then the frame (the
/// first segment's headers, every segment's payload).
#[derive(Debug)]
pub(super) struct Gro {
    buf: Box<[u8]>,
    /// The tap it goes to (`NONE`: nothing staged).
    tap: u32,
    len: usize,
    hdr: usize,
    next_seq: u32,
    mss: usize,
    segs: u32,
    psh: bool,
    /// A short segment or PSH ended it: nothing more joins.
    closed: bool,
}

impl Default for Gro {
    fn default() -> Self {
        Self {
            buf: Box::default(),
            tap: NONE,
            len: 0,
            hdr: 0,
            next_seq: 0,
            mss: 0,
            segs: 0,
            psh: false,
            closed: true,
        }
    }
}

impl Gro {
    /// Writes what is staged to its tap (one large segment, or the one segment as it came).
    fn flush(&mut self, taps: &[Option<TapPort>], io: &IoCounters) {
        if self.tap == NONE {
            return;
        }
        let tp = std::mem::replace(&mut self.tap, NONE) as usize;
        let Some(Some(t)) = taps.get(tp) else {
            io.no_socket.inc();
            return;
        };
        let end = VNET_HDR_LEN + self.len;
        let mut h = VnetHdr::default();
        if self.segs > 1 {
            match gso::finish_merge(&mut self.buf[VNET_HDR_LEN..end], self.psh) {
                Some((start, off)) => {
                    h = VnetHdr {
                        flags: F_NEEDS_CSUM,
                        gso_type: GSO_TCPV4,
                        hdr_len: self.hdr as u16,
                        gso_size: self.mss as u16,
                        csum_start: start as u16,
                        csum_offset: off as u16,
                    };
                    io.gro_merged.add(u64::from(self.segs - 1));
                }
                None => {
                    io.tap_drops.inc();
                    return;
                }
            }
        }
        h.write(&mut self.buf[..]);
        match tap::write(&t.fd, &self.buf[..end]) {
            Ok(true) => io.tap_tx.inc(),
            _ => io.tap_drops.inc(),
        }
    }
}

impl Worker {
    pub(super) fn add_tap(&mut self, port: PortId, fd: OwnedFd) -> Result<(), XskError> {
        if port as usize >= self.local_tap.len() {
            return Err(XskError::Config(format!("port id {port} too large")));
        }
        if self.tap_bufs.is_empty() {
            self.tap_bufs = (0..TAP_BATCH)
                .map(|_| vec![0u8; TAP_BUF].into_boxed_slice())
                .collect();
            self.gro.buf = vec![0u8; VNET_HDR_LEN + GRO_MAX].into_boxed_slice();
        }
        let t = match self.taps.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.taps.push(None);
                self.taps.len() - 1
            }
        };
        self.taps[t] = Some(TapPort { fd, port });
        self.local_tap[port as usize] = t as u32;
        self.poller_dirty = true;
        Ok(())
    }

    /// Writes the merge in progress, if any, to its tap.
    pub(super) fn flush_gro(&mut self) {
        self.gro.flush(&self.taps, &self.io);
    }

    /// Held chunk `idx`'s frame towards tap `tp`: joins the merge in progress when it
    /// continues it, else ends that merge and starts one (a TCP data segment) or is written
    /// as it is. The caller releases the chunk.
    pub(super) fn send_to_tap(&mut self, tp: u32, idx: u32, off: usize, len: usize) {
        let chunk = self.umem.chunk_mut(idx);
        let Some(frame) = chunk.get(off..off + len) else {
            self.io.tap_drops.inc();
            return;
        };
        let m = if self.gro.buf.is_empty() {
            None
        } else {
            gso::mergeable(frame)
        };
        let Some(m) = m else {
            self.gro.flush(&self.taps, &self.io);
            self.write_tap_frame(tp as usize, idx, off, len);
            return;
        };
        let g = &mut self.gro;
        if g.tap == tp
            && !g.closed
            && g.next_seq == m.seq
            && m.hdr == g.hdr
            && m.payload <= g.mss
            && g.len + m.payload <= GRO_MAX
            && gso::same_flow_headers(&g.buf[VNET_HDR_LEN..], frame, m.hdr)
        {
            let at = VNET_HDR_LEN + g.len;
            g.buf[at..at + m.payload].copy_from_slice(&frame[m.hdr..]);
            g.len += m.payload;
            g.next_seq = m.seq.wrapping_add(m.payload as u32);
            g.segs += 1;
            g.psh |= m.psh;
            g.closed = m.psh || m.payload < g.mss;
            return;
        }
        g.flush(&self.taps, &self.io);
        g.buf[VNET_HDR_LEN..VNET_HDR_LEN + len].copy_from_slice(frame);
        g.tap = tp;
        g.len = len;
        g.hdr = m.hdr;
        g.next_seq = m.seq.wrapping_add(m.payload as u32);
        g.mss = m.payload;
        g.segs = 1;
        g.psh = m.psh;
        g.closed = m.psh;
    }

    pub(super) fn remove_tap(&mut self, port: PortId) {
        self.gro.flush(&self.taps, &self.io);
        if let Some(t) = self
            .taps
            .iter()
            .position(|x| x.as_ref().is_some_and(|x| x.port == port))
        {
            self.taps[t] = None;
        }
        if let Some(l) = self.local_tap.get_mut(port as usize) {
            *l = NONE;
        }
        self.poller_dirty = true;
    }

    /// Writes held chunk `idx`'s frame (complete checksums) to tap `tp`; the caller releases
    /// the chunk.
    pub(super) fn write_tap_frame(&mut self, tp: usize, idx: u32, off: usize, len: usize) {
        let Some(Some(t)) = self.taps.get(tp) else {
            self.io.no_socket.inc();
            return;
        };
        if off < VNET_HDR_LEN {
            self.io.tap_drops.inc();
            return;
        }
        let chunk = self.umem.chunk_mut(idx);
        let Some(f) = chunk.get_mut(off - VNET_HDR_LEN..off + len) else {
            self.io.tap_drops.inc();
            return;
        };
        VnetHdr::default().write(f);
        match tap::write(&t.fd, f) {
            Ok(true) => self.io.tap_tx.inc(),
            _ => self.io.tap_drops.inc(),
        }
    }

    /// One batch from tap `t` through the pipeline.
    pub(super) fn receive_tap(&mut self, t: usize) -> usize {
        let Some(Some(tp)) = self.taps.get(t) else {
            return 0;
        };
        let rx_port = tp.port;
        let mut lens = [0usize; TAP_BATCH];
        let mut n = 0;
        while n < TAP_BATCH {
            let buf = &mut self.tap_bufs[n][HEADROOM - VNET_HDR_LEN..];
            match tap::read(&tp.fd, buf) {
                Ok(Some(len)) if len >= VNET_HDR_LEN + ETH => {
                    let h = VnetHdr::parse(buf);
                    if h.gso_type != GSO_NONE && h.gso_type & !GSO_ECN != GSO_TCPV4 {
                        // Never offered (TUNSETOFFLOAD asks for TCPv4 only).
                        self.io.tap_drops.inc();
                        continue;
                    }
                    self.tap_hdrs[n] = h;
                    lens[n] = len - VNET_HDR_LEN;
                    n += 1;
                }
                Ok(Some(_)) => self.io.tap_drops.inc(),
                Ok(None) => break,
                Err(_) => {
                    // The device went away under us (its namespace deleted): the control
                    // thread removes the port.
                    self.io.tap_drops.inc();
                    break;
                }
            }
        }
        if n == 0 {
            return 0;
        }
        self.io.tap_rx.add(n as u64);
        self.io.batches.inc();
        let fib = self.shared.fib.load();
        let now = self.shared.now_secs();
        let mut verdicts = [Verdict::Drop(crate::counters::DropReason::UnknownPort); TAP_BATCH];
        let mut placed = [(0usize, 0usize); TAP_BATCH];
        {
            let mut pkts: ArrayVec<Packet<'_>, TAP_BATCH> = ArrayVec::new();
            for (i, b) in self.tap_bufs.iter_mut().take(n).enumerate() {
                let mut p = Packet::new(b, HEADROOM, lens[i]);
                let h = self.tap_hdrs[i];
                if h.gso_type != GSO_NONE {
                    p.gso = h.gso_size;
                }
                pkts.push(p);
            }
            if self.io_only {
                self.pipeline
                    .forward_io_only(&fib, &mut pkts, &mut verdicts[..n]);
            } else {
                let ct = &self.shared.ct;
                self.pipeline
                    .process(&fib, ct, now, rx_port, &mut pkts, &mut verdicts[..n]);
            }
            for (pl, p) in placed.iter_mut().zip(pkts.iter()) {
                *pl = (p.off, p.len);
            }
        }
        let mtu = usize::from(fib.node().mtu);
        for i in 0..n {
            if let Verdict::Tx(port) = verdicts[i] {
                let mut buf = std::mem::take(&mut self.tap_bufs[i]);
                let h = self.tap_hdrs[i];
                self.place_tap_frame(&mut buf, h, placed[i], lens[i], port, mtu);
                self.tap_bufs[i] = buf;
            }
        }
        n
    }

    /// Before `n` segments go to `port`: when its TX ring here has less room than that, sends
    /// what is queued on every socket and takes back completions, so a large segment does not
    /// meet a ring still full of the previous ones (what is still short is dropped, counted
    /// as `tx_ring_full`).
    fn make_tx_room(&mut self, port: PortId, n: u32) {
        let t = self.local_tx.get(port as usize).copied().unwrap_or(NONE);
        let short = self
            .socks
            .get_mut(t as usize)
            .and_then(Option::as_mut)
            .is_some_and(|s| s.xsk.tx.free().saturating_sub(s.tx_pending) < n);
        if !short {
            return;
        }
        self.flush();
        self.reclaim(t as usize);
    }

    /// Places a frame read from a tap (`buf[off..off + len]`, `orig_len` bytes as read: the
    /// pipeline may have put outer headers in front) on `port`.
    pub(super) fn place_tap_frame(
        &mut self,
        buf: &mut [u8],
        mut h: VnetHdr,
        (off, len): (usize, usize),
        orig_len: usize,
        port: PortId,
        mtu: usize,
    ) {
        let inner = len.saturating_sub(orig_len);
        let Some(frame) = buf.get_mut(off..off + len) else {
            self.io.tap_drops.inc();
            return;
        };
        let mut l4_end = len;
        if h.flags & F_NEEDS_CSUM != 0 {
            // NAT may have rewritten the addresses the partial sum covers: set it afresh.
            match gso::set_partial(frame, inner + ETH) {
                Some((start, o, end)) => {
                    h.csum_start = start as u16;
                    h.csum_offset = o as u16;
                    l4_end = end;
                }
                None => {
                    self.io.tap_drops.inc();
                    return;
                }
            }
        }
        let tp = self.local_tap.get(port as usize).copied().unwrap_or(NONE);
        if tp != NONE && inner == 0 && off >= VNET_HDR_LEN {
            self.gro.flush(&self.taps, &self.io);
            let Some(Some(t)) = self.taps.get(tp as usize) else {
                self.io.no_socket.inc();
                return;
            };
            let f = &mut buf[off - VNET_HDR_LEN..off + len];
            h.write(f);
            match tap::write(&t.fd, f) {
                Ok(true) => self.io.tap_tx.inc(),
                _ => self.io.tap_drops.inc(),
            }
            return;
        }
        let frame = &buf[off..off + len];
        let mss = usize::from(h.gso_size);
        if h.gso_type != GSO_NONE && mss > 0 {
            let Some(t) = gso::tso_layout(frame, inner) else {
                self.io.tap_drops.inc();
                return;
            };
            if t.end - t.hdr > mss {
                // Each segment must fit the link it leaves on (outer packet for VXLAN).
                if t.hdr - t.outer_l3.unwrap_or(t.l3) + mss > mtu {
                    self.io.tap_drops.inc();
                    return;
                }
                let n = gso::segments(&t, mss);
                if HEADROOM + t.hdr + mss > self.umem.frame_size() as usize {
                    // Segments longer than a UMEM frame (a jumbo MTU): each cut into
                    // scratch, then sent as a chain.
                    let mut seg = std::mem::take(&mut self.long_buf);
                    if seg.is_empty() {
                        seg = vec![0u8; TAP_BUF].into_boxed_slice();
                    }
                    for k in 0..n {
                        match gso::write_segment(frame, &t, mss, k, &mut seg[..]) {
                            Some(l) => {
                                self.io.tap_segments.inc();
                                self.emit_long(&seg[..l], port);
                            }
                            None => {
                                self.io.tap_drops.inc();
                                break;
                            }
                        }
                    }
                    self.long_buf = seg;
                    return;
                }
                self.make_tx_room(port, n as u32);
                for k in 0..n {
                    let Some(idx) = self.free.pop() else {
                        self.io.tap_drops.inc();
                        return;
                    };
                    self.owner[idx as usize] = HELD;
                    let chunk = self.umem.chunk_mut(idx);
                    match gso::write_segment(frame, &t, mss, k, &mut chunk[HEADROOM..]) {
                        Some(l) => {
                            self.io.tap_segments.inc();
                            self.output(idx, HEADROOM as u32, l as u32, port);
                        }
                        None => {
                            self.release(idx);
                            self.io.tap_drops.inc();
                            return;
                        }
                    }
                }
                return;
            }
        }
        if HEADROOM + len > self.umem.frame_size() as usize {
            // Longer than a UMEM frame (a jumbo MTU): its checksum finished here, then sent
            // as a chain.
            let frame = &mut buf[off..off + len];
            if h.flags & F_NEEDS_CSUM != 0
                && !gso::finish_checksum(
                    frame,
                    usize::from(h.csum_start),
                    usize::from(h.csum_offset),
                    l4_end,
                )
            {
                self.io.tap_drops.inc();
                return;
            }
            self.emit_long(&buf[off..off + len], port);
            return;
        }
        // One frame: copied into a UMEM frame, its checksum finished.
        let Some(idx) = self.free.pop() else {
            self.io.tap_drops.inc();
            return;
        };
        self.owner[idx as usize] = HELD;
        let chunk = self.umem.chunk_mut(idx);
        let Some(dst) = chunk.get_mut(HEADROOM..HEADROOM + len) else {
            self.release(idx);
            self.io.tap_drops.inc();
            return;
        };
        dst.copy_from_slice(frame);
        if h.flags & F_NEEDS_CSUM != 0
            && !gso::finish_checksum(
                dst,
                usize::from(h.csum_start),
                usize::from(h.csum_offset),
                l4_end,
            )
        {
            self.release(idx);
            self.io.tap_drops.inc();
            return;
        }
        self.output(idx, HEADROOM as u32, len as u32, port);
    }
}
