//! `xdpnet-bench loadgen`: an AF_XDP traffic generator and sink.
//!
//! One pinned thread drives both ends: the generator's socket on one interface (in its network
//! namespace) transmits stamped frames ([`frame`]) at a fixed rate or as fast as it can; the
//! sink's socket on another interface, with an XDP program that hands it every frame, counts
//! them ([`account`]). Both ends in one loop on one core: one clock for the latency, and the
//! generator never competes with its own sink for a core. Every frame the generator's kernel
//! completed is either received, or dropped on the way (counters elsewhere say where), or
//! still in flight when the drain period ends (reported as lost). A sending end without a
//! queueing discipline gets one for the run, so that a full peer ring holds the generator back
//! instead of dropping its frames at its own veth (Linux 6.16 on).
//!
//! Its ceiling — the same loop with the generator's interface straight into the sink's (a veth
//! pair in two namespaces of its own) — bounds anything it can measure, and is reported with
//! every run ([`ceiling`]).
//!
//! Never touches the root namespace: every interface it opens or creates is inside a
//! namespace given to it or made by it (removed on exit and on Ctrl-C, see `lab`).

pub mod account;
pub mod frame;

use crate::lab::{self, run as sh};
use account::{Generator, Pacer, Report, Sink};
use anyhow::{Context, Result, bail};
use frame::{Proto, Template, TrafficSpec, flags};
use std::fs::File;
use std::net::Ipv4Addr;
use std::time::Instant;
use xdpnet_dataplane::steer::{SteerMode, Steering};
use xdpnet_dataplane::sys::netdev::if_mac;
use xdpnet_dataplane::sys::xsk::{
    RingSizes, Umem, XdpDesc, XskError, XskSocket, XskStats, if_index,
};

/// Frames in each end's UMEM.
const FRAMES: u32 = 4096;
const FRAME_SIZE: u32 = 2048;
const RING: u32 = 2048;
/// Descriptors per TX or RX step.
const BATCH: u32 = 64;

/// An interface in a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// Named network namespace (`ip netns`), or this thread's.
    pub ns: Option<String>,
    /// Interface name.
    pub ifname: String,
}

impl Place {
    /// `ifname` in namespace `ns`.
    pub fn new(ns: &str, ifname: &str) -> Self {
        Self {
            ns: Some(ns.to_string()),
            ifname: ifname.to_string(),
        }
    }

    /// The interface's MAC address.
    pub fn mac(&self) -> Result<[u8; 6]> {
        let _g = self.enter()?;
        if_mac(&self.ifname).with_context(|| format!("no MAC for {} in {:?}", self.ifname, self.ns))
    }

    /// `tc` arguments naming this place's namespace.
    fn tc_args<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![];
        if let Some(ns) = &self.ns {
            args.extend(["-n", ns.as_str()]);
        }
        args.extend(rest);
        args
    }

    /// The interface's first IPv4 address.
    pub fn ipv4(&self) -> Result<Ipv4Addr> {
        let mut args = vec![];
        if let Some(ns) = &self.ns {
            args.extend(["-n", ns.as_str()]);
        }
        args.extend(["-4", "-j", "addr", "show", "dev", self.ifname.as_str()]);
        let out = sh("ip", &args)?;
        let v: serde_json::Value = serde_json::from_str(&out).context("ip -j addr")?;
        v[0]["addr_info"][0]["local"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{} in {:?} has no IPv4 address", self.ifname, self.ns))
    }

    fn enter(&self) -> Result<Option<NetnsGuard>> {
        self.ns.as_deref().map(NetnsGuard::enter).transpose()
    }
}

/// This thread inside a named network namespace until dropped (then back where it was).
#[derive(Debug)]
struct NetnsGuard {
    orig: File,
}

impl NetnsGuard {
    fn enter(ns: &str) -> Result<Self> {
        let orig = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
        let path = format!("/run/netns/{ns}");
        let f = File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns into {path}"))?;
        Ok(Self { orig })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // Back to the namespace this thread came from; failing leaves a thread that is about
        // to end anyway (each run has its own).
        let _ = nix::sched::setns(&self.orig, nix::sched::CloneFlags::CLONE_NEWNET);
    }
}

/// One end: a socket on queue 0 of an interface, its UMEM, and (for receiving) the XDP
/// program that gives it every frame.
struct End {
    // Drop order: program detached, then the socket, then the UMEM, then the queue.
    _steer: Option<Steering>,
    xsk: XskSocket,
    umem: Umem,
    _queue: Option<Backpressure>,
}

/// A queueing discipline on a sending veth that had none (`noqueue`, a veth's default), for
/// the time of a run. With one (Linux 6.16 on), a veth whose peer's ring is full stops its
/// queue instead of dropping the frame: AF_XDP copy-mode TX then leaves the descriptor in the
/// ring (`sendto` says EAGAIN) and the generator sends it once the peer has drained. Without
/// it the generator loses frames at its own veth whenever the peer's NAPI is late (it runs
/// on the generator's core, beside it), which is the lab's cost, not the path's. The qdisc
/// itself is bypassed by AF_XDP (direct transmit); only its presence matters.
struct Backpressure {
    at: Place,
}

impl Backpressure {
    /// Adds `pfifo` as the root qdisc of `at` when it has none; `None` when it already had one.
    fn add(at: &Place) -> Result<Option<Self>> {
        let out = sh(
            "tc",
            &at.tc_args(&["-j", "qdisc", "show", "dev", &at.ifname]),
        )?;
        let v: serde_json::Value = serde_json::from_str(&out).context("tc -j qdisc show")?;
        let noqueue = v
            .as_array()
            .into_iter()
            .flatten()
            .any(|q| q["kind"] == "noqueue" && q["root"] == true);
        if !noqueue {
            return Ok(None);
        }
        sh(
            "tc",
            &at.tc_args(&["qdisc", "replace", "dev", &at.ifname, "root", "pfifo"]),
        )
        .with_context(|| format!("a qdisc on {} in {:?}", at.ifname, at.ns))?;
        Ok(Some(Self { at: at.clone() }))
    }
}

impl Drop for Backpressure {
    fn drop(&mut self) {
        // Back to the veth's default (noqueue); an interface gone meanwhile has nothing left.
        let _ = sh(
            "tc",
            &self
                .at
                .tc_args(&["qdisc", "del", "dev", &self.at.ifname, "root"]),
        );
    }
}

impl std::fmt::Debug for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("End")
            .field("ifindex", &self.xsk.ifindex())
            .finish()
    }
}

impl End {
    fn open(at: &Place, receive: bool, transmit: bool) -> Result<Self> {
        let queue = if transmit {
            Backpressure::add(at)?
        } else {
            None
        };
        let _g = at.enter()?;
        let ifindex = if_index(&at.ifname)
            .with_context(|| format!("interface {} in {:?}", at.ifname, at.ns))?;
        let umem = Umem::new(FRAMES, FRAME_SIZE)?;
        let rings = RingSizes {
            rx: RING,
            tx: RING,
            fill: RING,
            comp: RING,
        };
        // The kernel releases a closed socket's hold on its queue from a work queue: a run
        // right after another on the same interface may see EBUSY for a moment.
        let mut tries = 0;
        let xsk = loop {
            match XskSocket::bind(&umem, None, ifindex, 0, rings) {
                Err(XskError::Sys { source, .. })
                    if source.raw_os_error() == Some(libc_ebusy()) && tries < 100 =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => {
                    break r.with_context(|| {
                        format!("AF_XDP socket on {} in {:?}", at.ifname, at.ns)
                    })?;
                }
            }
        };
        let steer = if receive {
            let mut s = Steering::load().context("loading the XDP program")?;
            s.set_port(ifindex, 0, 0, SteerMode::All)?;
            s.set_socket(0, xsk.fd())?;
            s.attach(ifindex)
                .with_context(|| format!("attaching XDP to {} in {:?}", at.ifname, at.ns))?;
            Some(s)
        } else {
            None
        };
        Ok(Self {
            _steer: steer,
            xsk,
            umem,
            _queue: queue,
        })
    }
}

fn libc_ebusy() -> i32 {
    nix::errno::Errno::EBUSY as i32
}

/// One run of the generator into the sink.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The frames.
    pub frame: TrafficSpec,
    /// Flows (source ports `frame.src_port ..`).
    pub flows: u16,
    /// Offered packets per second; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Generating time.
    pub seconds: f64,
    /// Stop after this many packets (also bounded by `seconds`).
    pub packets: Option<u64>,
    /// The generator's interface.
    pub from: Place,
    /// The sink's interface.
    pub to: Place,
    /// Core to pin the loop to.
    pub core: Option<usize>,
    /// Print a progress line every second (stderr).
    pub progress: bool,
}

/// One second of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tick {
    /// Seconds since the start.
    pub t: f64,
    /// Sent in this second, packets/s.
    pub tx_pps: f64,
    /// Received in this second, packets/s.
    pub rx_pps: f64,
}

/// What a run measured, with the sockets' own kernel counters.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Generator and sink joined.
    pub report: Report,
    /// The sink socket's kernel counters (its drops are the sink's, not the path's).
    pub sink_xsk: XskStats,
    /// The generator socket's kernel counters.
    pub gen_xsk: XskStats,
    /// Descriptors still in the generator's TX ring at the end (never sent).
    pub unsent: u64,
    /// Drops counted by the interfaces of the ceiling's own namespaces (0 for other runs:
    /// the caller knows which namespaces its path crosses). On veth these include the sink
    /// socket's drops: a failed XDP redirect is also an `rx_dropped` of the interface.
    pub link_drops: u64,
    /// Full handshakes (`tcp-handshake` only).
    pub handshakes: Option<HandshakeReport>,
    /// Per second.
    pub ticks: Vec<Tick>,
}

impl Outcome {
    /// Frames the sink's socket dropped (no fill buffer, ring full; its interface counts them
    /// as well).
    pub fn sink_drops(&self) -> u64 {
        self.sink_xsk.rx_dropped + self.sink_xsk.rx_ring_full
    }

    /// As JSON.
    pub fn json(&self) -> serde_json::Value {
        let mut v = self.report.json();
        v["sink_socket_drops"] = self.sink_drops().into();
        v["link_drops"] = self.link_drops.into();
        v["generator_unsent"] = self.unsent.into();
        v["generator_invalid_descs"] = self.gen_xsk.tx_invalid_descs.into();
        if let Some(h) = &self.handshakes {
            v["handshakes"] = serde_json::json!({
                "syn_acks": h.syn_acks, "established": h.established, "resets": h.resets,
                "answers_dropped": h.answers_dropped, "client_foreign": h.client_foreign,
                "per_second": h.established as f64 / self.report.seconds.max(1e-9),
                "latency": h.latency.json(),
            });
        }
        v["per_second"] = self
            .ticks
            .iter()
            .map(|t| serde_json::json!({"t": t.t, "tx_pps": t.tx_pps.round(), "rx_pps": t.rx_pps.round()}))
            .collect::<Vec<_>>()
            .into();
        v
    }
}

/// Runs `spec` on a thread of its own (pinned when asked) and returns what it measured.
pub fn run(spec: &RunSpec) -> Result<Outcome> {
    let spec = spec.clone();
    std::thread::Builder::new()
        .name("xdpnet-loadgen".into())
        .spawn(move || {
            if let Some(c) = spec.core {
                let _ = pin_to_core(c);
            }
            run_here(&spec)
        })
        .context("spawning the loadgen thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the loadgen thread panicked"))?
}

/// Pins the calling thread to `core`.
pub(crate) fn pin_to_core(core: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(core).context("core number")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pinning to core {core}"))
}

/// Frames of the generator's UMEM kept in its fill ring when it receives (handshakes).
const GEN_FILL: u32 = 512;
/// Server ISN of the sink's SYN-ACKs.
const SERVER_ISN: u32 = 0x1000_0000;

fn run_here(spec: &RunSpec) -> Result<Outcome> {
    let tpl = Template::new(&spec.frame).map_err(anyhow::Error::msg)?;
    if spec.flows == 0 {
        bail!("flows must be at least 1");
    }
    if !(spec.seconds > 0.0 && spec.seconds <= 3600.0) {
        bail!("seconds must be in (0, 3600]");
    }
    let handshake = spec.frame.proto == Proto::TcpHandshake;
    let mut sink_end = End::open(&spec.to, true, handshake)?;
    let mut gen_end = End::open(&spec.from, handshake, true)?;

    // Sink: its fill ring full; frames it answers with come back through its completions.
    let n = sink_end.xsk.fill.free().min(FRAMES);
    for i in 0..n {
        sink_end.xsk.fill.set(i, sink_end.umem.chunk_addr(i));
    }
    sink_end.xsk.fill.submit(n);
    sink_end.xsk.wake_rx();
    // Generator: every chunk holds the template; per packet only the stamp changes (chunks
    // that carried an answer get the template again before their next packet).
    // Per chunk: last sent as a generated packet (not an ACK/RST), so its completion counts.
    let mut is_packet = vec![false; FRAMES as usize];
    let mut free: Vec<u32> = (0..FRAMES).rev().collect();
    for i in 0..FRAMES {
        tpl.write(gen_end.umem.chunk_mut(i));
    }
    let mut dirty = vec![false; FRAMES as usize];
    let mut gen_fill_out = 0u32;

    let mut genr = Generator::new(spec.flows, spec.frame.src_port, spec.packets);
    let pacer = Pacer::new(spec.rate);
    let mut sink = Sink::new(spec.flows);
    let mut hs = Handshakes::new();
    let clock = Instant::now();
    let now_ns = || clock.elapsed().as_nanos() as u64;
    let gen_ns = (spec.seconds * 1e9) as u64;
    let (mut completed, mut outstanding, mut sink_out) = (0u64, 0u64, 0u64);
    let mut ticks = Vec::new();
    let (mut tick_at, mut tick_tx, mut tick_rx) = (1_000_000_000u64, 0u64, 0u64);
    let mut gen_end_ns = None;
    let mut last_rx = 0u64;
    let len = tpl.len() as u32;
    let (mut scratch_a, mut scratch_b) = ([0u8; 128], [0u8; 128]);
    let sport_lo = spec.frame.src_port;
    loop {
        let now = now_ns();
        if gen_end_ns.is_none() && (now >= gen_ns || genr.done()) {
            gen_end_ns = Some(now);
        }
        // Generator completions back to the free list.
        let c = gen_end.xsk.comp.available();
        for i in 0..c {
            let Some(addr) = gen_end.xsk.comp.get(i) else {
                break;
            };
            let idx = (addr / FRAME_SIZE as u64) as u32;
            if let Some(p) = is_packet.get_mut(idx as usize) {
                completed += *p as u64;
                *p = false;
                free.push(idx);
            }
        }
        gen_end.xsk.comp.release(c);
        outstanding -= c as u64;
        // Handshakes, client side: SYN-ACK in -> ACK and RST out.
        if handshake {
            let want = GEN_FILL
                .saturating_sub(gen_fill_out)
                .min(free.len() as u32)
                .min(gen_end.xsk.fill.free());
            for i in 0..want {
                let idx = free.pop().unwrap_or(0);
                gen_end.xsk.fill.set(i, gen_end.umem.chunk_addr(idx));
            }
            if want > 0 {
                gen_fill_out += want;
                gen_end.xsk.fill.submit(want);
                if gen_end.xsk.fill.needs_wakeup() {
                    gen_end.xsk.wake_rx();
                }
            }
            let r = gen_end.xsk.rx.available().min(BATCH);
            let mut k = 0u32;
            let now_us = (now_ns() / 1_000) as u32;
            for i in 0..r {
                let Some(d) = gen_end.xsk.rx.get(i) else {
                    break;
                };
                let Some((idx, off)) = gen_end.umem.locate(d.addr, d.len) else {
                    continue;
                };
                let frame = &gen_end.umem.chunk_mut(idx)[off as usize..(off + d.len) as usize];
                let seg = frame::segment(frame).filter(|s| {
                    s.flags & (flags::SYN | flags::ACK | flags::RST) == flags::SYN | flags::ACK
                        && s.dport.wrapping_sub(sport_lo) < spec.flows
                });
                let (Some(seg), true) = (seg, gen_end.xsk.tx.free() >= k + 2 && !free.is_empty())
                else {
                    if seg.is_none() {
                        hs.client_foreign += 1;
                    } else {
                        hs.answers_dropped += 1;
                    }
                    free.push(idx);
                    continue;
                };
                hs.syn_acks += 1;
                let lat_us = now_us.wrapping_sub(seg.tsecr) as u64;
                hs.record(lat_us * 1_000);
                let ack = seg.seq.wrapping_add(1);
                let na = frame::answer(frame, &mut scratch_a, flags::ACK, seg.ack, ack, now_us);
                let nr = frame::answer(frame, &mut scratch_b, flags::RST, seg.ack, 0, 0);
                let idx2 = free.pop().unwrap_or(idx);
                for (chunk, buf, n) in [(idx, &scratch_a, na), (idx2, &scratch_b, nr)] {
                    gen_end.umem.chunk_mut(chunk)[..n].copy_from_slice(&buf[..n]);
                    dirty[chunk as usize] = true;
                    gen_end.xsk.tx.set(
                        k,
                        XdpDesc {
                            addr: gen_end.umem.chunk_addr(chunk),
                            len: n as u32,
                            options: 0,
                        },
                    );
                    k += 1;
                }
            }
            gen_end.xsk.rx.release(r);
            gen_fill_out -= r;
            if k > 0 {
                gen_end.xsk.tx.submit(k);
                outstanding += k as u64;
            }
        }
        // Generate.
        if gen_end_ns.is_none() {
            let k = pacer
                .allowed(now, genr.sent, BATCH as u64)
                .min(genr.remaining())
                .min(free.len() as u64)
                .min(gen_end.xsk.tx.free() as u64) as u32;
            for i in 0..k {
                let idx = free.pop().unwrap_or(0);
                let (flow, sport, seq) = genr.next_packet();
                let chunk = gen_end.umem.chunk_mut(idx);
                if dirty[idx as usize] {
                    tpl.write(chunk);
                    dirty[idx as usize] = false;
                }
                tpl.stamp(chunk, flow, sport, seq, now);
                is_packet[idx as usize] = true;
                gen_end.xsk.tx.set(
                    i,
                    XdpDesc {
                        addr: gen_end.umem.chunk_addr(idx),
                        len,
                        options: 0,
                    },
                );
            }
            if k > 0 {
                gen_end.xsk.tx.submit(k);
                outstanding += k as u64;
            }
        }
        // Copy mode transmits only inside sendto (up to 32 frames per call).
        let mut kicks = 0;
        while kicks < 4 && gen_end.xsk.tx.free() < RING {
            gen_end.xsk.kick_tx();
            kicks += 1;
        }
        // Sink completions (SYN-ACKs sent) back to its fill ring.
        let c = sink_end.xsk.comp.available();
        for i in 0..c {
            let Some(addr) = sink_end.xsk.comp.get(i) else {
                break;
            };
            sink_end.xsk.fill.set(i, addr - addr % FRAME_SIZE as u64);
        }
        sink_end.xsk.comp.release(c);
        if c > 0 {
            sink_end.xsk.fill.submit(c);
            sink_out -= c as u64;
        }
        // Receive everything there is (the sink must never be the bottleneck).
        let mut got = 0;
        loop {
            let r = sink_end.xsk.rx.available().min(BATCH);
            if r == 0 || got >= RING {
                break;
            }
            let now = now_ns();
            let (mut nf, mut nt) = (0u32, 0u32);
            for i in 0..r {
                let Some(d) = sink_end.xsk.rx.get(i) else {
                    break;
                };
                let Some((idx, off)) = sink_end.umem.locate(d.addr, d.len) else {
                    continue;
                };
                let chunk = sink_end.umem.chunk_mut(idx);
                let frame = &chunk[off as usize..(off + d.len) as usize];
                let mut answered = false;
                if handshake {
                    match frame::segment(frame) {
                        Some(s) if s.flags & (flags::SYN | flags::ACK) == flags::SYN => {
                            sink.record(frame, now);
                            if sink_end.xsk.tx.free() > nt {
                                let n = frame::answer(
                                    frame,
                                    &mut scratch_a,
                                    flags::SYN | flags::ACK,
                                    SERVER_ISN,
                                    s.seq.wrapping_add(1),
                                    (now / 1_000) as u32,
                                );
                                chunk[..n].copy_from_slice(&scratch_a[..n]);
                                sink_end.xsk.tx.set(
                                    nt,
                                    XdpDesc {
                                        addr: sink_end.umem.chunk_addr(idx),
                                        len: n as u32,
                                        options: 0,
                                    },
                                );
                                nt += 1;
                                answered = true;
                            } else {
                                hs.answers_dropped += 1;
                            }
                        }
                        Some(s) if s.flags & flags::RST != 0 => hs.resets += 1,
                        Some(s) if s.flags & (flags::SYN | flags::ACK) == flags::ACK => {
                            hs.established += 1
                        }
                        _ => sink.record(frame, now),
                    }
                } else {
                    sink.record(frame, now);
                }
                if !answered {
                    sink_end.xsk.fill.set(nf, sink_end.umem.chunk_addr(idx));
                    nf += 1;
                }
            }
            sink_end.xsk.rx.release(r);
            sink_end.xsk.fill.submit(nf);
            if nt > 0 {
                sink_end.xsk.tx.submit(nt);
                sink_out += nt as u64;
            }
            got += r;
            last_rx = now;
        }
        if sink_out > 0 {
            sink_end.xsk.kick_tx();
        }
        if sink_end.xsk.fill.needs_wakeup() {
            sink_end.xsk.wake_rx();
        }
        if now >= tick_at && gen_end_ns.is_none() {
            let t = Tick {
                t: tick_at as f64 / 1e9,
                tx_pps: (completed - tick_tx) as f64,
                rx_pps: (sink.received - tick_rx) as f64,
            };
            if spec.progress {
                eprintln!(
                    "  {:>5.1} s  sent {:>10.0} pps  received {:>10.0} pps  p99 {:>8.1} us",
                    t.t,
                    t.tx_pps,
                    t.rx_pps,
                    sink.latency.value_at_quantile(0.99) as f64 / 1e3
                );
            }
            ticks.push(t);
            tick_tx = completed;
            tick_rx = sink.received;
            tick_at += 1_000_000_000;
        }
        if let Some(end) = gen_end_ns {
            // Drain: every completion back, then 100 ms without a frame (2 s at most).
            let quiet = now.saturating_sub(last_rx.max(end)) > 100_000_000;
            if (outstanding == 0 && sink_out == 0 && quiet) || now - end > 2_000_000_000 {
                break;
            }
        }
    }
    let seconds = gen_end_ns.unwrap_or(gen_ns) as f64 / 1e9;
    Ok(Outcome {
        report: Report::new(completed, &sink, seconds),
        sink_xsk: sink_end.xsk.stats().unwrap_or_default(),
        gen_xsk: gen_end.xsk.stats().unwrap_or_default(),
        unsent: outstanding,
        link_drops: 0,
        handshakes: handshake.then(|| hs.report()),
        ticks,
    })
}

/// Handshake counters while running.
#[derive(Debug)]
struct Handshakes {
    syn_acks: u64,
    established: u64,
    resets: u64,
    answers_dropped: u64,
    client_foreign: u64,
    latency: hdrhistogram::Histogram<u64>,
}

impl Handshakes {
    fn new() -> Self {
        Self {
            syn_acks: 0,
            established: 0,
            resets: 0,
            answers_dropped: 0,
            client_foreign: 0,
            latency: account::latency_histogram(),
        }
    }
    fn record(&mut self, ns: u64) {
        account::record_latency(&mut self.latency, ns);
    }
    fn report(&self) -> HandshakeReport {
        HandshakeReport {
            syn_acks: self.syn_acks,
            established: self.established,
            resets: self.resets,
            answers_dropped: self.answers_dropped,
            client_foreign: self.client_foreign,
            latency: account::Latency::of(&self.latency),
        }
    }
}

/// Full handshakes (`tcp-handshake`): SYNs are the report's packets; this is the rest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HandshakeReport {
    /// SYN-ACKs the generator received (handshakes whose first two legs worked).
    pub syn_acks: u64,
    /// ACKs the sink received: completed handshakes.
    pub established: u64,
    /// RSTs the sink received (one per completed handshake: the client closes at once).
    pub resets: u64,
    /// Answers not sent for lack of ring room (either side).
    pub answers_dropped: u64,
    /// Frames the generator received that were not SYN-ACKs of its flows.
    pub client_foreign: u64,
    /// SYN sent -> SYN-ACK received, µs resolution.
    pub latency: account::Latency,
}

/// The loadgen's ceiling: `spec` (its frame shape, flows, rate, core) from one end of a veth
/// pair straight into the other, in two namespaces `<prefix>-lg0` / `<prefix>-lg1` made for it
/// and removed afterwards.
pub fn ceiling(spec: &RunSpec, prefix: &str) -> Result<Outcome> {
    let (a, b) = (format!("{prefix}-lg0"), format!("{prefix}-lg1"));
    lab::register(prefix);
    let made = (|| -> Result<()> {
        sh("ip", &["netns", "add", &a])?;
        sh("ip", &["netns", "add", &b])?;
        // No IPv6 autoconfiguration chatter on the pair: every frame is the generator's.
        for ns in [&a, &b] {
            lab::no_ipv6(ns)?;
        }
        sh(
            "ip",
            &[
                "-n", &a, "link", "add", "lg0", "type", "veth", "peer", "name", "lg1", "netns", &b,
            ],
        )?;
        sh("ip", &["-n", &a, "link", "set", "lg0", "up"])?;
        sh("ip", &["-n", &b, "link", "set", "lg1", "up"])?;
        Ok(())
    })();
    let r = made.and_then(|()| {
        let mut s = spec.clone();
        s.from = Place::new(&a, "lg0");
        s.to = Place::new(&b, "lg1");
        s.progress = false;
        let before = lab::link_drops(&a)? + lab::link_drops(&b)?;
        let mut o = run(&s)?;
        o.link_drops = (lab::link_drops(&a)? + lab::link_drops(&b)?).saturating_sub(before);
        Ok(o)
    });
    for ns in [&a, &b] {
        let _ = sh("ip", &["netns", "del", ns]);
    }
    lab::unregister(prefix);
    r
}

/// Parses a MAC address `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut m = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("MAC address {s:?}: want six hex bytes separated by ':'");
    }
    for (o, p) in m.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16).with_context(|| format!("MAC address {s:?}"))?;
    }
    Ok(m)
}
