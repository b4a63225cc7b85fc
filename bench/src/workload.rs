//! A large synthetic cluster and traffic pools for measuring the pipeline in memory.
//!
//! The cluster is the one the benchmarks are specified on: 10,000 services x 10 endpoints,
//! 1,000 nodes, and 1,000,000 tracked connections (2,000,000 conntrack entries: both
//! directions). Packets of the "established" scenario walk all tracked flows in a random order,
//! so lookups hit the whole conntrack table rather than a hot few entries in cache.
//!
//! Every frame is copied from a pre-built pool into a frame buffer before processing (what a
//! NIC's DMA would have done); `copy_only` measures that cost alone so it can be subtracted.

use std::hint::black_box;
use std::time::{Duration, Instant};
use xdpnet_dataplane::conntrack::{Conntrack, Timeouts, Tuple};
use xdpnet_dataplane::counters::DropReason;
use xdpnet_dataplane::fib::{Fib, FibBuilder, PortId};
use xdpnet_dataplane::packet::{HEADROOM, Packet};
use xdpnet_dataplane::pipeline::{Pipeline, Verdict};
use xdpnet_dataplane::rcu::FibCell;
use xdpnet_dataplane::testutil::{self, ClusterShape, FrameSpec, UPLINK};
use xdpnet_dataplane::wire::tcp;

/// Frames per batch (a typical AF_XDP RX batch).
pub const BATCH: usize = 32;
const FRAME_SLOT: usize = 128;

/// Size of the synthetic cluster and its traffic.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// Cluster shape.
    pub shape: ClusterShape,
    /// Tracked connections before measuring.
    pub flows: u32,
}

impl Size {
    /// The size the benchmarks are specified on.
    pub const FULL: Size = Size {
        shape: ClusterShape {
            nodes: 1000,
            pods_per_node: 100,
            services: 10_000,
            backends: 10,
        },
        flows: 1_000_000,
    };
    /// A small one for quick runs and tests.
    pub const SMALL: Size = Size {
        shape: ClusterShape {
            nodes: 10,
            pods_per_node: 20,
            services: 100,
            backends: 10,
        },
        flows: 10_000,
    };
}

/// A scenario of the pipeline benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Copy the frame in, no pipeline (the baseline subtracted from the others).
    CopyOnly,
    /// Pod to pod on this node.
    PodToPodLocal,
    /// Pod to a pod on another node: VXLAN encap.
    PodToPodRemote,
    /// VXLAN from another node to a pod here: decap.
    VxlanDecap,
    /// An established service flow: conntrack hit, DNAT, encap to the backend's node.
    ServiceEstablished,
    /// The first packet of a service flow: Maglev pick and conntrack insert.
    ServiceFirstPacket,
}

impl Scenario {
    /// All scenarios.
    pub const ALL: [Scenario; 6] = [
        Scenario::CopyOnly,
        Scenario::PodToPodLocal,
        Scenario::PodToPodRemote,
        Scenario::VxlanDecap,
        Scenario::ServiceEstablished,
        Scenario::ServiceFirstPacket,
    ];
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::CopyOnly => "copy_only",
            Scenario::PodToPodLocal => "pod_to_pod_local",
            Scenario::PodToPodRemote => "pod_to_pod_remote_encap",
            Scenario::VxlanDecap => "vxlan_decap",
            Scenario::ServiceEstablished => "service_established_encap",
            Scenario::ServiceFirstPacket => "service_first_packet",
        }
    }
}

/// A pool of frames, each in a fixed-size slot, and the port they arrive on.
#[derive(Default)]
struct Pool {
    data: Vec<u8>,
    lens: Vec<u16>,
    port: PortId,
}

impl Pool {
    fn new(port: PortId, frames: impl Iterator<Item = Vec<u8>>) -> Self {
        let mut data = Vec::new();
        let mut lens = Vec::new();
        for f in frames {
            let mut slot = [0u8; FRAME_SLOT];
            slot[..f.len()].copy_from_slice(&f);
            data.extend_from_slice(&slot);
            lens.push(f.len() as u16);
        }
        Self { data, lens, port }
    }
    fn len(&self) -> usize {
        self.lens.len()
    }
    fn frame(&self, i: usize) -> &[u8] {
        &self.data[i * FRAME_SLOT..i * FRAME_SLOT + self.lens[i] as usize]
    }
}

/// Service flow `f`: (client pod index, source port, service index).
fn service_flow(f: u32, shape: &ClusterShape) -> (u32, u16, u32) {
    let pod = f % shape.pods_per_node;
    let sport = 1024 + (f / shape.pods_per_node) as u16;
    let k = (xdpnet_dataplane::hash::mix64(f as u64 ^ 0xfeed) % shape.services as u64) as u32;
    (pod, sport, k)
}

fn service_frame(f: u32, shape: &ClusterShape, flags: u8) -> Vec<u8> {
    let (pod, sport, k) = service_flow(f, shape);
    FrameSpec::tcp(
        testutil::pod_ip(0, pod),
        sport,
        testutil::service_ip(k),
        80,
        flags,
    )
    .macs(
        testutil::pod_mac(0, pod),
        testutil::node_facts(0).gateway_mac,
    )
    .to_vec()
}

/// Every flow once, in batches of [`BATCH`] flows of one client pod (one RX port), the
/// batches cycling over the pods and each pod's flows in a random order.
fn established_order(flows: u32, pods: u32) -> Vec<u32> {
    let per_pod: Vec<Vec<u32>> = (0..pods)
        .map(|p| {
            let n = (flows + pods - 1 - p) / pods; // flows f < `flows` with f % pods == p
            permutation(n, 7 + p as u64)
                .into_iter()
                .map(|m| p + m * pods)
                .collect()
        })
        .collect();
    let mut out = Vec::with_capacity(flows as usize);
    let mut at = vec![0usize; pods as usize];
    while out.len() < flows as usize {
        for p in 0..pods as usize {
            let take = BATCH.min(per_pod[p].len() - at[p]);
            out.extend_from_slice(&per_pod[p][at[p]..at[p] + take]);
            at[p] += take;
        }
    }
    out
}

/// New-flow frame `i`: batches of one pod, unique (pod, port) pairs, random services.
fn first_frame(i: u32, shape: &ClusterShape) -> Vec<u8> {
    let (b, l) = (i / BATCH as u32, i % BATCH as u32);
    let pod = b % shape.pods_per_node;
    let sport = 40_000 + ((b / shape.pods_per_node) * BATCH as u32 + l) as u16;
    let k = (xdpnet_dataplane::hash::mix64(i as u64 ^ 0xf00d) % shape.services as u64) as u32;
    FrameSpec::tcp(
        testutil::pod_ip(0, pod),
        sport,
        testutil::service_ip(k),
        80,
        tcp::SYN,
    )
    .macs(
        testutil::pod_mac(0, pod),
        testutil::node_facts(0).gateway_mac,
    )
    .to_vec()
}

/// A random permutation of 0..n (xorshift Fisher-Yates; deterministic).
fn permutation(n: u32, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n).collect();
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

/// The node under test (node 0 of the cluster), its tables and traffic pools.
pub struct Bench {
    /// Size it was built with.
    pub size: Size,
    /// The builder (kept for change benchmarks).
    pub builder: FibBuilder,
    /// Published table.
    pub cell: FibCell,
    /// Conntrack, pre-filled with `size.flows` connections.
    pub ct: Conntrack,
    pipe: Pipeline,
    chunks: Vec<Vec<u8>>,
    pools: Vec<(Scenario, Pool)>,
    first_next: u32,
    first_pool: Pool,
    /// Time it took to build the table from scratch.
    pub build_time: Duration,
    /// Time it took to establish the flows.
    pub fill_time: Duration,
}

impl std::fmt::Debug for Bench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bench")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Frames in the pools of the cheap scenarios.
const SMALL_POOL: u32 = 65_536;
/// New flows per first-packet pass (then removed again, untimed).
const FIRST_POOL: u32 = 262_144;

impl Bench {
    /// Builds the cluster, fills conntrack with `size.flows` connections (by running their SYNs
    /// through the pipeline) and prepares the traffic pools.
    pub fn new(size: Size) -> anyhow::Result<Self> {
        let shape = size.shape;
        let t = Instant::now();
        let mut builder = testutil::cluster_builder(&shape);
        let fib = builder.build();
        let build_time = t.elapsed();
        let ct = Conntrack::new(
            (size.flows as usize + FIRST_POOL as usize) * 2,
            Timeouts::default(),
        )?;
        let cell = FibCell::new(fib);
        let pods = shape.pods_per_node;
        // Frames from one pod port each: the pool's port is where they arrive; anti-spoofing
        // needs the source pod to match it, so these scenarios use pod 0 as the sender.
        let local = Pool::new(
            testutil::FIRST_POD_PORT,
            (0..SMALL_POOL).map(|i| {
                let b = 1 + i % (pods - 1);
                FrameSpec::udp(
                    testutil::pod_ip(0, 0),
                    1000 + (i % 50_000) as u16,
                    testutil::pod_ip(0, b),
                    53,
                )
                .macs(testutil::pod_mac(0, 0), testutil::node_facts(0).gateway_mac)
                .to_vec()
            }),
        );
        let remote = Pool::new(
            testutil::FIRST_POD_PORT,
            (0..SMALL_POOL).map(|i| {
                let n = 1 + i % (shape.nodes - 1);
                FrameSpec::udp(
                    testutil::pod_ip(0, 0),
                    1000 + (i % 50_000) as u16,
                    testutil::pod_ip(n, i % pods),
                    53,
                )
                .macs(testutil::pod_mac(0, 0), testutil::node_facts(0).gateway_mac)
                .to_vec()
            }),
        );
        let decap = Pool::new(
            UPLINK,
            (0..SMALL_POOL).map(|i| {
                let n = 1 + i % (shape.nodes - 1);
                let inner = FrameSpec::udp(
                    testutil::pod_ip(n, i % pods),
                    1000 + (i % 50_000) as u16,
                    testutil::pod_ip(0, i % pods),
                    53,
                )
                .to_vec();
                testutil::vxlan_wrap(&inner, n, 0, 1)
            }),
        );
        // Established flows: every tracked connection once, in a random order. All come from
        // pod ports; the pool records one port per frame via the client pod index.
        let established = Pool::new(
            testutil::FIRST_POD_PORT,
            established_order(size.flows, pods)
                .into_iter()
                .map(|f| service_frame(f, &shape, tcp::ACK)),
        );
        let first_pool = Pool::new(
            testutil::FIRST_POD_PORT,
            (0..FIRST_POOL).map(|i| first_frame(i, &shape)),
        );
        let mut b = Bench {
            size,
            builder,
            cell,
            ct,
            pipe: Pipeline::new(),
            chunks: (0..BATCH).map(|_| vec![0u8; HEADROOM + 2048]).collect(),
            pools: vec![
                (Scenario::PodToPodLocal, local),
                (Scenario::PodToPodRemote, remote),
                (Scenario::VxlanDecap, decap),
                (Scenario::ServiceEstablished, established),
            ],
            first_next: 0,
            first_pool,
            build_time,
            fill_time: Duration::ZERO,
        };
        // Establish the flows: SYNs in flow order.
        let t = Instant::now();
        let syns = Pool::new(
            testutil::FIRST_POD_PORT,
            established_order(size.flows, pods)
                .into_iter()
                .map(|f| service_frame(f, &shape, tcp::SYN)),
        );
        let mut i = 0;
        while i < syns.len() {
            i += b.run_batch(&syns, i, BATCH.min(syns.len() - i), true).0;
        }
        b.fill_time = t.elapsed();
        Ok(b)
    }

    /// Conntrack entries in use.
    pub fn conntrack_entries(&self) -> usize {
        self.ct.len()
    }

    /// Counters of the pipeline.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipe
    }

    /// Runs `n` frames of `pool` from index `start` (wrapping) as one batch. Pools are laid
    /// out so that every batch comes from one port, as an RX batch does.
    /// Returns (frames taken, frames transmitted); a batch ends early where the port changes.
    fn run_batch(&mut self, pool: &Pool, start: usize, n: usize, process: bool) -> (usize, usize) {
        let port = port_of(pool, pool.frame(start % pool.len()));
        let mut lens = [0usize; BATCH];
        let mut n_same = 0;
        for (k, len) in lens.iter_mut().enumerate().take(n) {
            let f = pool.frame((start + k) % pool.len());
            if port_of(pool, f) != port {
                break;
            }
            self.chunks[k][HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
            *len = f.len();
            n_same += 1;
        }
        let n = n_same;
        if !process {
            return (n, black_box(lens[0]));
        }
        let fib = self.cell.load();
        let mut it = self.chunks.iter_mut().zip(lens);
        let mut pkts: [Packet<'_>; BATCH] = std::array::from_fn(|_| match it.next() {
            Some((c, len)) => Packet::new(c, HEADROOM, len),
            None => Packet::new(&mut [], 0, 0),
        });
        let mut out = [Verdict::Drop(DropReason::NoRoute); BATCH];
        self.pipe
            .process(&fib, &self.ct, 100, port, &mut pkts[..n], &mut out[..n]);
        (
            n,
            black_box(
                out[..n]
                    .iter()
                    .filter(|v| matches!(v, Verdict::Tx(_)))
                    .count(),
            ),
        )
    }

    /// Runs `packets` packets of `s`; returns the elapsed time and how many were transmitted.
    pub fn run(&mut self, s: Scenario, packets: u64) -> (Duration, u64) {
        if s == Scenario::ServiceFirstPacket {
            return self.run_first(packets);
        }
        let pi = match s {
            Scenario::CopyOnly | Scenario::ServiceEstablished => 3,
            Scenario::PodToPodLocal => 0,
            Scenario::PodToPodRemote => 1,
            Scenario::VxlanDecap => 2,
            Scenario::ServiceFirstPacket => unreachable!("handled above"),
        };
        // Taken out for the run (`run_batch` borrows `self` mutably), put back after.
        let pool = std::mem::take(&mut self.pools[pi].1);
        let mut done = 0u64;
        let mut tx = 0u64;
        let mut pos = 0usize;
        let t = Instant::now();
        while done < packets {
            let (n, t) = self.run_batch(
                &pool,
                pos,
                BATCH.min((packets - done) as usize),
                s != Scenario::CopyOnly,
            );
            tx += t as u64;
            pos = (pos + n) % pool.len();
            done += n as u64;
        }
        let el = t.elapsed();
        self.pools[pi].1 = pool;
        (el, tx)
    }

    fn run_first(&mut self, packets: u64) -> (Duration, u64) {
        let pool = std::mem::take(&mut self.first_pool);
        let mut el = Duration::ZERO;
        let mut tx = 0u64;
        let mut done = 0u64;
        while done < packets {
            if self.first_next as usize >= pool.len() {
                self.forget_first(&pool);
            }
            let n = BATCH
                .min((packets - done) as usize)
                .min(pool.len() - self.first_next as usize);
            let t = Instant::now();
            let (n, sent) = self.run_batch(&pool, self.first_next as usize, n, true);
            el += t.elapsed();
            tx += sent as u64;
            self.first_next += n as u32;
            done += n as u64;
        }
        self.first_pool = pool;
        (el, tx)
    }

    /// Removes the flows the first-packet pool created, so the next pass is new again.
    fn forget_first(&mut self, pool: &Pool) {
        for i in 0..pool.len() {
            let f = pool.frame(i);
            let t = tuple_of(f);
            if let Some(h) = self.ct.lookup(&t) {
                self.ct.remove_flow(&h.entry);
            }
        }
        self.first_next = 0;
    }

    /// One endpoint change (a backend of one service replaced) built and published; returns
    /// the time from the change to the new table being current.
    pub fn endpoint_change(&mut self, i: u32) -> Duration {
        let shape = self.size.shape;
        let k = i % shape.services;
        let mut spec = testutil::service_spec(&shape, k);
        for p in spec.ports.iter_mut() {
            if let Some(b) = p.backends.first_mut() {
                *b = std::net::SocketAddrV4::new(
                    testutil::pod_ip(i % shape.nodes, (i / 7) % shape.pods_per_node),
                    1024 + (i % 60_000) as u16,
                );
            }
        }
        let t = Instant::now();
        self.builder.upsert_service(spec).expect("valid");
        let fib = self.builder.build();
        let old = self.cell.publish(fib);
        let el = t.elapsed();
        drop(old);
        el
    }

    /// Builds the whole table from scratch (a fresh builder) and returns the time.
    pub fn full_build(&self) -> (Duration, Fib) {
        let t = Instant::now();
        let mut b = testutil::cluster_builder(&self.size.shape);
        let f = b.build();
        (t.elapsed(), f)
    }
}

fn port_of(pool: &Pool, f: &[u8]) -> PortId {
    if pool.port == UPLINK {
        return UPLINK;
    }
    // Pod frames: the source MAC's last two bytes are the pod index.
    testutil::FIRST_POD_PORT + u16::from_be_bytes([f[10], f[11]])
}

fn tuple_of(f: &[u8]) -> Tuple {
    Tuple {
        src: u32::from_be_bytes([f[26], f[27], f[28], f[29]]),
        dst: u32::from_be_bytes([f[30], f[31], f[32], f[33]]),
        sport: u16::from_be_bytes([f[34], f[35]]),
        dport: u16::from_be_bytes([f[36], f[37]]),
        proto: f[23],
    }
}

/// Builds a builder for `size` without anything else (the table benchmarks).
pub fn builder(size: &Size) -> FibBuilder {
    testutil::cluster_builder(&size.shape)
}
