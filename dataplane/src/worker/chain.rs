//! Frames longer than one UMEM frame (a jumbo MTU): AF_XDP multi-buffer.
//!
//! Copy-mode AF_XDP on this kernel takes chunks of at most a page (4 KiB, huge pages or
//! not), so a 9000-byte frame arrives as a chain of descriptors, each but the last flagged
//! [`PKT_CONTD`]. The worker copies a chain into one buffer and runs the pipeline over it
//! whole, then places it as it places a frame read from a tap: whole to a tap, and to an
//! AF_XDP port in one UMEM frame when it fits, else as a chain again ([`Worker::emit_long`]).
//! Frames on the way to another worker are copied whole (handoff buffers are
//! [`crate::runtime::MAX_CHAIN_FRAME`] bytes when chains are on).

use super::*;
use crate::sys::xsk::PKT_CONTD;

/// One received chain: where its links start in [`Worker::links`] and how many there are.
pub(super) type Chain = (usize, usize);

impl Worker {
    /// Runs each received chain (`chains`, over the held chunks listed in `links`: index,
    /// offset, length) through the pipeline as one frame and places it; every chunk goes
    /// back to the free list.
    pub(super) fn receive_chains(
        &mut self,
        rx_port: PortId,
        links: &[(u32, u32, u32)],
        chains: &[Chain],
    ) {
        let mut buf = std::mem::take(&mut self.long_buf);
        if buf.is_empty() {
            buf = vec![0u8; TAP_BUF].into_boxed_slice();
        }
        let fib = self.shared.fib.load();
        let now = self.shared.now_secs();
        let mtu = usize::from(fib.node().mtu);
        for &(start, count) in chains {
            let mut len = 0usize;
            let mut fits = true;
            for &(idx, off, l) in &links[start..start + count] {
                let (off, l) = (off as usize, l as usize);
                let at = HEADROOM + len;
                match (
                    buf.get_mut(at..at + l),
                    self.umem.chunk_mut(idx).get(off..off + l),
                ) {
                    (Some(dst), Some(src)) if fits => dst.copy_from_slice(src),
                    _ => fits = false,
                }
                len += l;
                self.release(idx);
            }
            self.io.rx.inc();
            self.io.chains_rx.inc();
            if !fits {
                self.io.bad_desc.inc();
                continue;
            }
            let mut verdict = [Verdict::Drop(crate::counters::DropReason::UnknownPort)];
            let placed = {
                let mut pkts: ArrayVec<Packet<'_>, 1> = ArrayVec::new();
                pkts.push(Packet::new(&mut buf, HEADROOM, len));
                if self.io_only {
                    self.pipeline.forward_io_only(&fib, &mut pkts, &mut verdict);
                } else {
                    let ct = &self.shared.ct;
                    self.pipeline
                        .process(&fib, ct, now, rx_port, &mut pkts, &mut verdict);
                }
                (pkts[0].off, pkts[0].len)
            };
            if let Verdict::Tx(port) = verdict[0] {
                self.place_tap_frame(&mut buf, VnetHdr::default(), placed, len, port, mtu);
            }
        }
        self.long_buf = buf;
    }

    /// Places `frame` (complete checksums, longer than one UMEM frame holds) on `port`, a
    /// port that is not a tap of this worker: as a chain of UMEM frames on this worker's TX
    /// ring for it (all or nothing: a ring or free list too short drops it, counted as
    /// `tx_ring_full`), or copied whole to the worker owning the port.
    pub(super) fn emit_long(&mut self, frame: &[u8], port: PortId) {
        let t = self.local_tx.get(port as usize).copied().unwrap_or(NONE);
        if t == NONE {
            let w = self.shared.port_owner(port);
            if w == NONE || w as usize == self.idx {
                self.io.no_socket.inc();
            } else {
                hand_off_to(&self.shared, &self.io, self.idx, w, port, frame);
            }
            return;
        }
        let fs = self.umem.frame_size() as usize;
        let first = fs - HEADROOM;
        let n = 1 + frame.len().saturating_sub(first).div_ceil(fs);
        let Some(sock) = self.socks[t as usize].as_mut() else {
            self.io.no_socket.inc();
            return;
        };
        if sock.xsk.tx.free().saturating_sub(sock.tx_pending) < n as u32 || self.free.len() < n {
            self.io.tx_ring_full.inc();
            return;
        }
        let mut at = 0usize;
        for k in 0..n {
            let Some(idx) = self.free.pop() else { break };
            let off = if k == 0 { HEADROOM } else { 0 };
            let l = (fs - off).min(frame.len() - at);
            self.umem.chunk_mut(idx)[off..off + l].copy_from_slice(&frame[at..at + l]);
            at += l;
            let desc = XdpDesc {
                addr: self.umem.chunk_addr(idx) + off as u64,
                len: l as u32,
                options: if k + 1 < n { PKT_CONTD } else { 0 },
            };
            // Room for all `n` was checked above.
            if sock.xsk.tx.set(sock.tx_pending, desc) {
                sock.tx_pending += 1;
                self.owner[idx as usize] = t | TX_BIT;
            } else {
                self.owner[idx as usize] = FREE;
                self.free.push(idx);
            }
        }
        self.io.tx.inc();
        self.io.chains_tx.inc();
    }
}

/// Copies `frame` to worker `w` for its port `port` (waking it when it sleeps); counted as
/// `handoff_drop` when its queue is full or the frame too long for its buffers. `me` is the
/// sending worker (never `w`).
pub(super) fn hand_off_to(
    shared: &WorkerShared,
    io: &IoCounters,
    me: usize,
    w: u32,
    port: PortId,
    frame: &[u8],
) {
    debug_assert_ne!(me, w as usize);
    let q = &shared.handoff[w as usize];
    match q.spare.pop() {
        Some(mut h) if frame.len() <= h.data.len() => {
            h.data[..frame.len()].copy_from_slice(frame);
            h.port = port;
            h.len = frame.len() as u16;
            match q.inbox.push(h) {
                Ok(()) => {
                    io.handoff_out.inc();
                    if shared.sleeping[w as usize].load(Ordering::SeqCst) {
                        shared.wakers[w as usize].notify();
                    }
                }
                Err(h) => {
                    let _ = q.spare.push(h);
                    io.handoff_drop.inc();
                }
            }
        }
        Some(h) => {
            let _ = q.spare.push(h);
            io.handoff_drop.inc();
        }
        None => io.handoff_drop.inc(),
    }
}
