//! A worker: one pinned thread, one UMEM, the AF_XDP sockets of the ports it was given.
//!
//! Loop: reclaim completions -> refill fill rings -> per socket, receive a batch, run the
//! pipeline over it (table snapshot loaded once per batch), place every frame: TX ring of the
//! output socket (same UMEM: no copy), a copy handed to the worker that owns the output port,
//! or back to the free list -> submit TX rings and kick -> take handed-off frames -> take
//! commands. In busy mode it spins; in low-CPU mode it sleeps in poll(2) when idle.
//!
//! Frame ownership is exact: every chunk of the UMEM is, at any time, free, held by the worker,
//! in one socket's fill ring (or its RX path), or in one socket's TX path, recorded per chunk
//! in `owner`. A descriptor the kernel returns for a chunk that is not in the matching state is
//! counted and ignored, never used; closing a socket returns exactly the chunks it still had.
//! So no load, drop pattern or port removal leaks frames (`IoCounters::frames_*` prove it).
//!
//! Never allocates, logs or blocks while forwarding; commands (add/remove a socket) are rare
//! control events handled between batches.

use crate::conntrack::Conntrack;
use crate::fib::PortId;
use crate::packet::{HEADROOM, Packet};
use crate::pipeline::{MAX_BATCH, Pipeline, Verdict};
use crate::rcu::FibCell;
use crate::sys::fd::Notifier;
use crate::sys::tap::{self, VNET_HDR_LEN, VnetHdr};
use crate::sys::xsk::{Poller, RingSizes, Umem, XdpDesc, XskError, XskSocket};
use arrayvec::ArrayVec;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Instant;

mod chain;
mod tap_port;

const FREE: u32 = u32::MAX;
const HELD: u32 = u32::MAX - 1;
const TX_BIT: u32 = 0x8000_0000;
const NONE: u32 = u32::MAX;

crate::counters::counter_set! {
    /// Per-worker I/O counters and frame gauges (single writer: the worker). The kernel's
    /// (XDP_STATISTICS, summed over this worker's open sockets) are refreshed about once a
    /// second.
    pub struct IoCounters {
        rx: Counter, "rx", "xdpnet_worker_rx_packets_total", "Frames received by a worker.";
        tx: Counter, "tx", "xdpnet_worker_tx_packets_total", "Frames a worker queued for transmission.";
        tx_ring_full: Counter, "tx_ring_full", "xdpnet_worker_tx_ring_full_total", "Frames dropped: output TX ring full.";
        handoff_out: Counter, "handoff_out", "xdpnet_worker_handoff_total", "Frames copied to another worker.";
        handoff_in: Counter, "handoff_in", "xdpnet_worker_handoff_in_total", "Frames received from other workers.";
        handoff_drop: Counter, "handoff_drop", "xdpnet_worker_handoff_drops_total", "Frames dropped on the way to another worker.";
        no_socket: Counter, "no_socket", "xdpnet_worker_no_socket_total", "Frames whose output port has no socket (port going away).";
        bad_desc: Counter, "bad_desc", "xdpnet_worker_bad_descriptors_total", "Descriptors from the kernel that did not match the worker's bookkeeping (never expected).";
        batches: Counter, "batches", "xdpnet_worker_batches_total", "Batches processed.";
        xsk_rx_dropped: Counter, "kernel.rx_dropped", "xdpnet_worker_kernel_rx_dropped_total", "Frames the kernel could not hand to a worker's sockets (no fill buffer, ring full).";
        xsk_rx_ring_full: Counter, "kernel.rx_ring_full", "xdpnet_worker_kernel_rx_ring_full_total", "Times the kernel found a worker's RX ring full.";
        xsk_fill_empty: Counter, "kernel.fill_ring_empty", "xdpnet_worker_kernel_fill_ring_empty_total", "Times the kernel found a worker's fill ring empty when a frame arrived.";
        xsk_invalid: Counter, "kernel.invalid_descs", "xdpnet_worker_kernel_invalid_descriptors_total", "RX/TX descriptors the kernel found invalid.";
        tap_rx: Counter, "tap.rx", "xdpnet_worker_tap_rx_frames_total", "Frames read from tap ports (a large TCP segment counts once).";
        tap_tx: Counter, "tap.tx", "xdpnet_worker_tap_tx_frames_total", "Frames written to tap ports (a large TCP segment counts once).";
        tap_segments: Counter, "tap.segments", "xdpnet_worker_gso_segments_total", "Segments cut in software from large tap frames for ports that cannot carry them whole.";
        tap_drops: Counter, "tap.drops", "xdpnet_worker_tap_drops_total", "Frames to or from tap ports dropped: device queue full or gone, a large frame that cannot be cut, or no free frame to cut it into.";
        gro_merged: Counter, "tap.gro_segments", "xdpnet_worker_gro_segments_total", "Segments merged with the one before them on their way to a tap (GRO in user space: one write for many).";
        chains_rx: Counter, "chains.rx", "xdpnet_worker_chain_rx_frames_total", "Frames longer than one UMEM frame received as a chain of them (AF_XDP multi-buffer, jumbo MTU).";
        chains_tx: Counter, "chains.tx", "xdpnet_worker_chain_tx_frames_total", "Frames longer than one UMEM frame sent as a chain of them (AF_XDP multi-buffer, jumbo MTU).";
        congested: Counter, "congested", "xdpnet_worker_congested_total", "Times a socket's RX ring ran three quarters full and the XDP program was told to drop its frames until it is down to a quarter (admission control; the drops are steering.early_drop).";
        frames_total: Gauge, "frames.total", "xdpnet_worker_frames", "Frames of a worker's UMEM.";
        frames_free: Gauge, "frames.free", "xdpnet_worker_frames_free", "Frames free in a worker.";
        frames_fill: Gauge, "frames.fill", "xdpnet_worker_frames_fill", "Frames in fill rings and RX paths.";
        frames_tx: Gauge, "frames.tx", "xdpnet_worker_frames_tx", "Frames in TX paths.";
    }
}

/// What all workers share.
#[derive(Debug)]
pub(crate) struct WorkerShared {
    pub fib: FibCell,
    pub ct: Conntrack,
    pub stop: AtomicBool,
    pub owners: Box<[AtomicU32]>,
    pub handoff: Vec<Arc<HandoffQueues>>,
    pub wakers: Vec<Notifier>,
    pub sleeping: Vec<AtomicBool>,
    /// The XDP program's per-slot congestion flags (admission control), when on.
    pub congestion: Option<crate::sys::SharedWords>,
    pub start: Instant,
}

impl WorkerShared {
    /// Seconds since start (conntrack's clock).
    pub fn now_secs(&self) -> u32 {
        self.start.elapsed().as_secs() as u32
    }
    /// Tells the XDP program whether to drop frames for XSKMAP `slot` (admission control).
    pub fn set_congested(&self, slot: u32, on: bool) {
        if let Some(w) = self.congestion.as_ref().and_then(|c| c.get(slot as usize)) {
            w.store(u64::from(on), Ordering::Relaxed);
        }
    }
    /// The worker owning `port`'s TX, or `u32::MAX`.
    pub fn port_owner(&self, port: PortId) -> u32 {
        self.owners
            .get(port as usize)
            .map_or(NONE, |a| a.load(Ordering::Acquire))
    }
}

/// A frame copied to another worker (its output port lives there).
#[derive(Debug)]
pub(crate) struct Handoff {
    pub port: PortId,
    pub len: u16,
    pub data: Box<[u8]>,
}

/// Control -> worker.
#[derive(Debug)]
pub(crate) enum Command {
    /// Bind a socket on (ifindex, queue) for port `port`; reply with a duplicate of its fd
    /// (for the XSKMAP).
    AddSocket {
        port: PortId,
        ifindex: u32,
        queue: u32,
        slot: u32,
        /// Ring sizes; `rings.fill` is the most frames the fill ring may hold.
        rings: RingSizes,
        /// Frames the fill ring holds at rest (its guaranteed share of the UMEM); a socket
        /// that drains it in bursts gets more, up to `rings.fill` (see [`Sock::fill_target`]).
        fill_base: u32,
        reply: Sender<Result<OwnedFd, XskError>>,
    },
    /// Close the socket in XSKMAP slot `slot`, reclaiming its frames.
    RemoveSocket { slot: u32, reply: Sender<()> },
    /// Poll the tap open on `fd` as port `port`.
    AddTap {
        port: PortId,
        fd: OwnedFd,
        reply: Sender<Result<(), XskError>>,
    },
    /// Close port `port`'s tap descriptor (the device stays: it is persistent).
    RemoveTap { port: PortId, reply: Sender<()> },
}

/// Frames read from one tap per turn.
const TAP_BATCH: usize = 8;
/// A tap read buffer: headroom (the virtio-net header goes right before the data), the
/// largest frame a tap hands over (64 KiB IPv4 + Ethernet), slack.
const TAP_BUF: usize = HEADROOM + 65_536 + 512;

#[derive(Debug)]
struct TapPort {
    fd: OwnedFd,
    port: PortId,
}

#[derive(Debug)]
struct Sock {
    xsk: XskSocket,
    port: PortId,
    slot: u32,
    /// Frames kept in the fill ring now: `fill_base` at rest, doubled (up to `fill_cap`) when
    /// a receive finds less than half of it left (a burst: a TCP window, a flood), halved back
    /// when the socket has been quiet for a stats period. Frames already in a fill ring stay
    /// there until the kernel uses them; growth only draws on the free list above a reserve.
    fill_target: u32,
    fill_base: u32,
    fill_cap: u32,
    /// Frames received since the last stats period (for shrinking `fill_target`).
    rx_period: u32,
    fill_out: u32,
    tx_out: u32,
    tx_pending: u32,
    /// RX ring size.
    rx_size: u32,
    /// Admission control: the XDP program drops this socket's frames (see `receive`).
    congested: bool,
}

/// One worker's state (lives on its thread).
pub(crate) struct Worker {
    idx: usize,
    umem: Umem,
    owner: Box<[u32]>,
    free: Vec<u32>,
    /// Free frames a fill target never grows into: a quarter of the UMEM, for frames in flight
    /// and for the base fill of sockets still to come.
    reserve: usize,
    socks: Vec<Option<Sock>>,
    /// Port id -> index in `socks` of a socket that can transmit on it.
    local_tx: Vec<u32>,
    taps: Vec<Option<TapPort>>,
    /// Port id -> index in `taps`.
    local_tap: Vec<u32>,
    /// Read buffers for taps (allocated with the first tap).
    tap_bufs: Vec<Box<[u8]>>,
    tap_hdrs: [VnetHdr; TAP_BATCH],
    /// Segments towards a tap being merged (see [`crate::gso::mergeable`]).
    gro: tap_port::Gro,
    shared: Arc<WorkerShared>,
    pipeline: Pipeline,
    io: Arc<IoCounters>,
    cmds: Receiver<Command>,
    poller: Poller,
    poller_dirty: bool,
    busy: bool,
    io_only: bool,
    /// A frame copied out of a received chain, or a segment too long for one UMEM frame
    /// (allocated with the first).
    long_buf: Box<[u8]>,
    /// Held chunks of the chains of the current RX batch (index, offset, length), and the
    /// chains over them.
    links: Vec<(u32, u32, u32)>,
    chains: Vec<chain::Chain>,
    // Scratch, reused every batch.
    idx_buf: [u32; MAX_BATCH],
    off_len: [(u32, u32); MAX_BATCH],
    verdicts: [Verdict; MAX_BATCH],
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("idx", &self.idx)
            .finish_non_exhaustive()
    }
}

impl Worker {
    #[allow(clippy::too_many_arguments)] // constructed once, by the runtime
    pub(crate) fn new(
        idx: usize,
        umem: Umem,
        shared: Arc<WorkerShared>,
        pipeline: Pipeline,
        io: Arc<IoCounters>,
        cmds: Receiver<Command>,
        busy: bool,
        io_only: bool,
    ) -> Self {
        let n = umem.frames();
        io.frames_total.set(n as u64);
        Self {
            idx,
            owner: vec![FREE; n as usize].into_boxed_slice(),
            free: (0..n).rev().collect(),
            reserve: n as usize / 4,
            umem,
            socks: Vec::new(),
            local_tx: vec![NONE; crate::fib::MAX_PORTS],
            taps: Vec::new(),
            local_tap: vec![NONE; crate::fib::MAX_PORTS],
            tap_bufs: Vec::new(),
            tap_hdrs: [VnetHdr::default(); TAP_BATCH],
            gro: tap_port::Gro::default(),
            long_buf: Box::default(),
            links: Vec::new(),
            chains: Vec::new(),
            shared,
            pipeline,
            io,
            cmds,
            poller: Poller::default(),
            poller_dirty: true,
            busy,
            io_only,
            idx_buf: [0; MAX_BATCH],
            off_len: [(0, 0); MAX_BATCH],
            verdicts: [Verdict::Drop(crate::counters::DropReason::UnknownPort); MAX_BATCH],
        }
    }

    /// Runs until the runtime's stop flag is set; then closes every socket.
    pub(crate) fn run(mut self) {
        let mut idle = 0u32;
        let mut stats_at = std::time::Instant::now();
        while !self.shared.stop.load(Ordering::Relaxed) {
            if stats_at.elapsed() >= std::time::Duration::from_millis(500) {
                stats_at = std::time::Instant::now();
                self.kernel_stats();
                self.shrink_fill_targets();
            }
            let mut work = 0usize;
            for s in 0..self.socks.len() {
                if self.socks[s].is_some() {
                    work += self.reclaim(s);
                    self.refill(s);
                    work += self.receive(s);
                }
            }
            for t in 0..self.taps.len() {
                work += self.receive_tap(t);
            }
            work += self.take_handoffs();
            self.flush_gro();
            self.flush();
            self.commands();
            self.gauges();
            if work > 0 {
                idle = 0;
                continue;
            }
            idle = idle.saturating_add(1);
            if self.busy || idle < 64 {
                std::hint::spin_loop();
                continue;
            }
            if self.poller_dirty {
                let wake = self.shared.wakers[self.idx].fd();
                let taps = self.taps.iter().flatten().map(|t| t.fd.as_fd());
                self.poller.set(
                    std::iter::once(wake)
                        .chain(self.socks.iter().flatten().map(|s| s.xsk.fd()))
                        .chain(taps),
                );
                self.poller_dirty = false;
            }
            let tx_out: u32 = self.socks.iter().flatten().map(|s| s.tx_out).sum();
            self.shared.sleeping[self.idx].store(true, Ordering::SeqCst);
            if self.shared.handoff[self.idx].inbox.is_empty() {
                self.poller.wait(if tx_out > 0 { 1 } else { 100 });
            }
            self.shared.sleeping[self.idx].store(false, Ordering::SeqCst);
            self.shared.wakers[self.idx].drain();
        }
        let slots: Vec<u32> = self.socks.iter().flatten().map(|s| s.slot).collect();
        for slot in slots {
            self.remove_socket(slot);
        }
        self.taps.clear();
        self.gauges();
    }

    /// Once a stats period: a socket that received less than a quarter of its fill target
    /// goes back towards its base (frames already in its ring stay until used).
    fn shrink_fill_targets(&mut self) {
        for s in self.socks.iter_mut().flatten() {
            if s.rx_period < s.fill_target / 4 {
                s.fill_target = (s.fill_target / 2).max(s.fill_base);
            }
            s.rx_period = 0;
        }
    }

    fn kernel_stats(&self) {
        let (mut d, mut full, mut empty, mut inv) = (0, 0, 0, 0);
        for s in self.socks.iter().flatten() {
            if let Ok(st) = s.xsk.stats() {
                d += st.rx_dropped;
                full += st.rx_ring_full;
                empty += st.rx_fill_ring_empty_descs;
                inv += st.rx_invalid_descs + st.tx_invalid_descs;
            }
        }
        self.io.xsk_rx_dropped.set(d);
        self.io.xsk_rx_ring_full.set(full);
        self.io.xsk_fill_empty.set(empty);
        self.io.xsk_invalid.set(inv);
    }

    fn gauges(&self) {
        let (mut fill, mut tx) = (0u64, 0u64);
        for s in self.socks.iter().flatten() {
            fill += s.fill_out as u64;
            tx += s.tx_out as u64;
        }
        self.io.frames_free.set(self.free.len() as u64);
        self.io.frames_fill.set(fill);
        self.io.frames_tx.set(tx);
    }

    /// Completion ring -> free list.
    fn reclaim(&mut self, s: usize) -> usize {
        let Some(sock) = self.socks[s].as_mut() else {
            return 0;
        };
        let n = sock.xsk.comp.available();
        for i in 0..n {
            let Some(addr) = sock.xsk.comp.get(i) else {
                break;
            };
            match self.umem.locate(addr, 0) {
                Some((idx, _)) if self.owner[idx as usize] == s as u32 | TX_BIT => {
                    self.owner[idx as usize] = FREE;
                    self.free.push(idx);
                    sock.tx_out -= 1;
                }
                _ => self.io.bad_desc.inc(),
            }
        }
        sock.xsk.comp.release(n);
        n as usize
    }

    /// Free list -> fill ring, up to the socket's target.
    fn refill(&mut self, s: usize) {
        let Some(sock) = self.socks[s].as_mut() else {
            return;
        };
        let want = sock.fill_target.saturating_sub(sock.fill_out);
        if want < 16.min(sock.fill_target) {
            return;
        }
        let n = want.min(self.free.len() as u32).min(sock.xsk.fill.free());
        let mut placed = 0;
        while placed < n {
            let Some(idx) = self.free.pop() else {
                break;
            };
            if !sock.xsk.fill.set(placed, self.umem.chunk_addr(idx)) {
                self.free.push(idx);
                break;
            }
            self.owner[idx as usize] = s as u32;
            placed += 1;
        }
        let n = placed;
        if n > 0 {
            sock.xsk.fill.submit(n);
            sock.fill_out += n;
            if sock.xsk.fill.needs_wakeup() {
                sock.xsk.wake_rx();
            }
        }
    }

    /// One RX batch from socket `s` through the pipeline.
    fn receive(&mut self, s: usize) -> usize {
        let Some(sock) = self.socks[s].as_mut() else {
            return 0;
        };
        let ready = sock.xsk.rx.available();
        let avail = ready.min(MAX_BATCH as u32);
        // Admission control with hysteresis. The frames a socket can hold are its fill
        // target (or its RX ring, when smaller). When three quarters of them wait in the RX
        // ring the worker is behind: a burst if the fill target can still grow (it doubles,
        // drawing on free frames above the reserve), an overload if not: then the XDP
        // program drops this socket's frames (before the kernel touches the socket's rings)
        // until a quarter wait, which still keeps the worker busy while the fill ring fills
        // up again.
        let left = ready - avail;
        let holds = sock.rx_size.min(sock.fill_target);
        let flip = if sock.congested {
            left <= holds / 4
        } else if left >= holds / 4 * 3 {
            if sock.fill_target < sock.fill_cap && self.free.len() > self.reserve {
                sock.fill_target = (sock.fill_target * 2).min(sock.fill_cap);
                false
            } else {
                true
            }
        } else {
            false
        };
        if flip {
            sock.congested = !sock.congested;
            self.shared.set_congested(sock.slot, sock.congested);
            if sock.congested {
                self.io.congested.inc();
            }
        }
        if avail == 0 {
            return 0;
        }
        let rx_port = sock.port;
        let mut n = 0usize;
        let mut links = std::mem::take(&mut self.links);
        let mut chains = std::mem::take(&mut self.chains);
        links.clear();
        chains.clear();
        // A chain (a frame longer than a chunk) is read to its end even past the batch: the
        // kernel publishes a frame's descriptors together.
        let mut take = avail;
        let mut open: Option<(usize, bool)> = None;
        let mut i = 0;
        while i < take {
            let Some(d): Option<XdpDesc> = sock.xsk.rx.get(i) else {
                break;
            };
            i += 1;
            let mine = match self.umem.locate(d.addr, d.len) {
                Some((idx, off)) if self.owner[idx as usize] == s as u32 => {
                    self.owner[idx as usize] = HELD;
                    sock.fill_out -= 1;
                    Some((idx, off))
                }
                _ => {
                    self.io.bad_desc.inc();
                    None
                }
            };
            let contd = d.options & crate::sys::xsk::PKT_CONTD != 0;
            if open.is_none() && !contd {
                if let Some((idx, off)) = mine {
                    self.idx_buf[n] = idx;
                    self.off_len[n] = (off, d.len);
                    n += 1;
                }
                continue;
            }
            let (start, ok) = open.get_or_insert((links.len(), true));
            match mine {
                Some((idx, off)) => links.push((idx, off, d.len)),
                None => *ok = false,
            }
            if contd {
                if i == take && take < ready {
                    take += 1;
                }
                continue;
            }
            let (start, ok) = (*start, *ok);
            open = None;
            if ok {
                chains.push((start, links.len() - start));
            } else {
                for &(idx, _, _) in &links[start..] {
                    self.owner[idx as usize] = FREE;
                    self.free.push(idx);
                }
                links.truncate(start);
            }
        }
        if let Some((start, _)) = open {
            // Never expected: a chain cut off at the end of the ring.
            self.io.bad_desc.inc();
            for &(idx, _, _) in &links[start..] {
                self.owner[idx as usize] = FREE;
                self.free.push(idx);
            }
            links.truncate(start);
        }
        sock.xsk.rx.release(take);
        sock.rx_period = sock.rx_period.saturating_add(n as u32);
        if sock.fill_out < sock.fill_target / 2
            && sock.fill_target < sock.fill_cap
            && self.free.len() > self.reserve
        {
            sock.fill_target = (sock.fill_target * 2).min(sock.fill_cap);
        }
        self.io.rx.add(n as u64);
        self.io.batches.inc();

        let fib = self.shared.fib.load();
        let now = self.shared.now_secs();
        let (pipeline, off_len, verdicts, ct, io_only) = (
            &mut self.pipeline,
            &mut self.off_len,
            &mut self.verdicts,
            &self.shared.ct,
            self.io_only,
        );
        let done = self.umem.chunks_mut(&self.idx_buf[..n], |chunks| {
            let mut pkts: ArrayVec<Packet<'_>, MAX_BATCH> = ArrayVec::new();
            for (c, &(off, len)) in chunks.zip(off_len.iter()) {
                pkts.push(Packet::new(c, off as usize, len as usize));
            }
            if io_only {
                pipeline.forward_io_only(&fib, &mut pkts, &mut verdicts[..n]);
            } else {
                pipeline.process(&fib, ct, now, rx_port, &mut pkts, &mut verdicts[..n]);
            }
            for (p, ol) in pkts.iter().zip(off_len.iter_mut()) {
                *ol = (p.off as u32, p.len as u32);
            }
        });
        if done.is_none() {
            // Cannot happen: `owner` admitted each chunk once. Count and recycle.
            self.io.bad_desc.add(n as u64);
            for i in 0..n {
                self.release(self.idx_buf[i]);
            }
        } else {
            for i in 0..n {
                let idx = self.idx_buf[i];
                match self.verdicts[i] {
                    Verdict::Tx(port) => {
                        let (off, len) = self.off_len[i];
                        self.output(idx, off, len, port);
                    }
                    Verdict::Drop(_) => self.release(idx),
                }
            }
        }
        let c = chains.len();
        if c > 0 {
            self.receive_chains(rx_port, &links, &chains);
        }
        self.links = links;
        self.chains = chains;
        n + c
    }

    fn release(&mut self, idx: u32) {
        self.owner[idx as usize] = FREE;
        self.free.push(idx);
    }

    /// Places held chunk `idx` (data at `off`, `len` bytes) on `port`.
    fn output(&mut self, idx: u32, off: u32, len: u32, port: PortId) {
        let tp = self.local_tap.get(port as usize).copied().unwrap_or(NONE);
        if tp != NONE {
            self.send_to_tap(tp, idx, off as usize, len as usize);
            self.release(idx);
            return;
        }
        let t = self.local_tx.get(port as usize).copied().unwrap_or(NONE);
        if t != NONE {
            if let Some(sock) = self.socks[t as usize].as_mut() {
                let addr = self.umem.chunk_addr(idx) + off as u64;
                let desc = XdpDesc {
                    addr,
                    len,
                    options: 0,
                };
                if sock.tx_pending < sock.xsk.tx.free() && sock.xsk.tx.set(sock.tx_pending, desc) {
                    sock.tx_pending += 1;
                    self.owner[idx as usize] = t | TX_BIT;
                    self.io.tx.inc();
                    return;
                }
                self.io.tx_ring_full.inc();
                self.release(idx);
                return;
            }
        }
        let w = self.shared.port_owner(port);
        if w == NONE || w as usize == self.idx {
            self.io.no_socket.inc();
            self.release(idx);
            return;
        }
        let chunk = self.umem.chunk_mut(idx);
        if let Some(frame) = chunk.get(off as usize..off as usize + len as usize) {
            chain::hand_off_to(&self.shared, &self.io, self.idx, w, port, frame);
        }
        self.release(idx);
    }

    /// Frames other workers copied for our ports -> our TX rings.
    fn take_handoffs(&mut self) -> usize {
        if self.shared.handoff[self.idx].inbox.is_empty() {
            return 0;
        }
        let q = self.shared.handoff[self.idx].clone();
        let mut n = 0;
        while n < MAX_BATCH {
            let Some(h) = q.inbox.pop() else { break };
            n += 1;
            self.io.handoff_in.inc();
            let len = h.len as usize;
            if HEADROOM + len > self.umem.frame_size() as usize {
                self.emit_long(&h.data[..len], h.port);
                let _ = q.spare.push(h);
                continue;
            }
            match self.free.pop() {
                Some(idx) => {
                    self.owner[idx as usize] = HELD;
                    let chunk = self.umem.chunk_mut(idx);
                    chunk[HEADROOM..HEADROOM + len].copy_from_slice(&h.data[..len]);
                    self.output(idx, HEADROOM as u32, len as u32, h.port);
                }
                None => self.io.handoff_drop.inc(),
            }
            let _ = q.spare.push(h);
        }
        n
    }

    /// Publishes written TX descriptors and kicks the kernel where it asks for it.
    fn flush(&mut self) {
        for sock in self.socks.iter_mut().flatten() {
            if sock.tx_pending > 0 {
                sock.xsk.tx.submit(sock.tx_pending);
                sock.tx_out += sock.tx_pending;
                sock.tx_pending = 0;
            }
            if sock.tx_out > 0 && sock.xsk.tx.needs_wakeup() {
                // Copy mode sends at most a few dozen frames per kick.
                for _ in 0..8 {
                    if !sock.xsk.kick_tx() {
                        break;
                    }
                }
            }
        }
    }

    fn commands(&mut self) {
        while let Ok(c) = self.cmds.try_recv() {
            match c {
                Command::AddSocket {
                    port,
                    ifindex,
                    queue,
                    slot,
                    rings,
                    fill_base,
                    reply,
                } => {
                    let r = self.add_socket(port, ifindex, queue, slot, rings, fill_base);
                    let _ = reply.send(r);
                }
                Command::RemoveSocket { slot, reply } => {
                    self.remove_socket(slot);
                    let _ = reply.send(());
                }
                Command::AddTap { port, fd, reply } => {
                    let _ = reply.send(self.add_tap(port, fd));
                }
                Command::RemoveTap { port, reply } => {
                    self.remove_tap(port);
                    let _ = reply.send(());
                }
            }
        }
    }

    fn add_socket(
        &mut self,
        port: PortId,
        ifindex: u32,
        queue: u32,
        slot: u32,
        rings: RingSizes,
        fill_base: u32,
    ) -> Result<OwnedFd, XskError> {
        if port as usize >= self.local_tx.len() {
            return Err(XskError::Config(format!("port id {port} too large")));
        }
        let shared = self.socks.iter().flatten().next().map(|s| s.xsk.fd());
        let xsk = match XskSocket::bind(&self.umem, shared, ifindex, queue, rings) {
            Ok(x) => x,
            // The sharing socket's device may be going away: register the UMEM afresh.
            Err(_) if shared.is_some() => XskSocket::bind(&self.umem, None, ifindex, queue, rings)?,
            Err(e) => return Err(e),
        };
        let fd = xsk.fd().try_clone_to_owned().map_err(|e| XskError::Sys {
            call: "dup (socket fd for the XSKMAP)",
            source: e,
        })?;
        let s = match self.socks.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.socks.push(None);
                self.socks.len() - 1
            }
        };
        let fill_base = fill_base.min(rings.fill);
        self.socks[s] = Some(Sock {
            xsk,
            port,
            slot,
            fill_target: fill_base,
            fill_base,
            fill_cap: rings.fill,
            rx_period: 0,
            fill_out: 0,
            tx_out: 0,
            tx_pending: 0,
            rx_size: rings.rx,
            congested: false,
        });
        self.shared.set_congested(slot, false);
        if self.local_tx[port as usize] == NONE {
            self.local_tx[port as usize] = s as u32;
        }
        self.refill(s);
        self.poller_dirty = true;
        Ok(fd)
    }

    fn remove_socket(&mut self, slot: u32) {
        let Some(s) = self
            .socks
            .iter()
            .position(|x| x.as_ref().is_some_and(|x| x.slot == slot))
        else {
            return;
        };
        // Frames still queued towards this socket's TX are abandoned below with the socket;
        // first publish nothing new to it.
        let Some(sock) = self.socks[s].take() else {
            return;
        };
        let port = sock.port;
        self.shared.set_congested(slot, false);
        drop(sock); // closes the socket: the kernel lets go of every frame it held for it
        let tag_fill = s as u32;
        let tag_tx = s as u32 | TX_BIT;
        for (i, o) in self.owner.iter_mut().enumerate() {
            if *o == tag_fill || *o == tag_tx {
                *o = FREE;
                self.free.push(i as u32);
            }
        }
        if self.local_tx[port as usize] == s as u32 {
            self.local_tx[port as usize] = self
                .socks
                .iter()
                .position(|x| x.as_ref().is_some_and(|x| x.port == port))
                .map_or(NONE, |i| i as u32);
        }
        self.poller_dirty = true;
    }
}

/// A worker's queues for frames from other workers.
#[derive(Debug)]
pub(crate) struct HandoffQueues {
    pub inbox: crossbeam_queue::ArrayQueue<Handoff>,
    pub spare: crossbeam_queue::ArrayQueue<Handoff>,
}

impl HandoffQueues {
    pub(crate) fn new(n: usize, frame: usize) -> Self {
        let spare = crossbeam_queue::ArrayQueue::new(n);
        for _ in 0..n {
            let _ = spare.push(Handoff {
                port: 0,
                len: 0,
                data: vec![0u8; frame].into_boxed_slice(),
            });
        }
        Self {
            inbox: crossbeam_queue::ArrayQueue::new(n),
            spare,
        }
    }
}
