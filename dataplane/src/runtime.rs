//! The running dataplane: workers on their cores, the steering program, the ports.
//!
//! Owns: the worker threads (each with its UMEM and sockets), the shared table cell and
//! conntrack, the XSKMAP slot allocator and the [`Steering`] program. The control thread holds
//! the one [`Dataplane`] value and drives it: add/remove ports, publish tables, set steered
//! frontends, read counters, shut down. Promises: a port is fully wired (socket bound, XSKMAP
//! and port map filled, program attached) before `add_port` returns, and fully gone after
//! `remove_port`; `shutdown` (and drop) stops the workers, closes every socket and detaches
//! every program.

use crate::conntrack::{Conntrack, Timeouts};
use crate::counters::Counters;
use crate::fib::{Fib, PortId};
use crate::pipeline::Pipeline;
use crate::rcu::{FibCell, Published};
use crate::steer::{Frontend, SteerError, SteerMode, Steering};
use crate::sys::fd::Notifier;
use crate::sys::xsk::{RingSizes, Umem, XskError, if_index};
use crate::worker::{Command, HandoffQueues, IoCounters, Worker, WorkerShared};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use crate::fib::MAX_PORTS;
const NONE: u32 = u32::MAX;

/// What a port is for (decides steering, ring sizes and worker placement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRole {
    /// The node's NIC: one socket per RX queue, steered.
    Uplink,
    /// The host port into the node's kernel.
    Host,
    /// A pod's host-side veth.
    Pod,
}

/// Most frames a pod's fill ring holds at rest.
pub const POD_FILL_BASE_MAX: u32 = 256;
/// A pod fill ring's size: the most it holds while the pod bursts (a TCP window of
/// full-size segments arrives as one burst on a veth).
pub const POD_FILL_MAX: u32 = 2048;

/// The longest frame a chain of chunks carries through the dataplane: a 9216-byte MTU (the
/// largest jumbo frame NICs commonly take) with its Ethernet header and room for the VXLAN
/// headers added in front.
pub const MAX_CHAIN_FRAME: usize = 9216 + 14 + 128;

/// How the dataplane runs.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// Cores to pin workers to, one worker per entry.
    pub cores: Vec<usize>,
    /// Spin when idle (lowest latency, a full core per worker) instead of sleeping in poll(2).
    pub busy_poll: bool,
    /// Run the workers SCHED_FIFO at this priority: a worker with frames to move then always
    /// runs before the NAPI threads that feed it on its core, so its rings stay drained and a
    /// sender meets a full veth ring (backpressure through a qdisc, dropped before any copy
    /// without one) instead of the socket's drops after the copy. Pair with threaded NAPI on
    /// the worker's core and never with `busy_poll` (a spinning FIFO thread starves its core
    /// down to RT throttling).
    pub worker_rt_priority: Option<u8>,
    /// UMEM chunks per worker.
    pub frames_per_worker: u32,
    /// Chunk size (2048 or 4096).
    pub frame_size: u32,
    /// Frames longer than a chunk (a jumbo MTU) travel as chains of chunks (AF_XDP
    /// multi-buffer): every socket is bound for them; the pipeline sees each such frame
    /// whole, copied out of its chain, and frames up to [`MAX_CHAIN_FRAME`] bytes pass
    /// between workers.
    pub multi_buffer: bool,
    /// Rings of uplink and host sockets.
    pub rings: RingSizes,
    /// Rings of pod sockets. A pod's fill ring holds its share of the frames at rest
    /// ([`Self::pod_fill`]) and grows towards `pod_rings.fill` while the pod sends in bursts.
    pub pod_rings: RingSizes,
    /// Conntrack capacity (entries).
    pub conntrack_capacity: usize,
    /// Frames each worker can have queued from other workers.
    pub handoff_depth: usize,
    /// Pods a node is sized for: each pod socket's fill ring gets its share of three quarters
    /// of the UMEM (after the uplink's and host port's rings; the last quarter is for frames
    /// in flight), so the last pod attached is not starved of frames by the first ones.
    pub max_pods: usize,
    /// Admission control: a worker whose socket's RX ring is more than three quarters full
    /// tells the XDP program, which then drops that socket's frames before any copy (counted
    /// as `steering.early_drop`) until the ring is down to a quarter.
    pub early_drop: bool,
    /// I/O-only mode (benchmarks): forward by destination address without the pipeline
    /// ([`Pipeline::forward_io_only`]) and steer everything from the uplink to the dataplane.
    /// The node's own uplink traffic stops reaching its kernel: never for a real node.
    pub io_only: bool,
}

impl DataplaneConfig {
    /// The frames a pod socket's fill ring holds at rest: three quarters of the UMEM minus the
    /// uplink's and host port's rings, shared by `max_pods`, as a power of two between 16 and
    /// [`POD_FILL_BASE_MAX`] (and never above `pod_rings.fill`).
    pub fn pod_fill(&self) -> u32 {
        let budget = (self.frames_per_worker / 4 * 3).saturating_sub(2 * self.rings.fill);
        let per = budget / (self.max_pods.max(1) as u32);
        let p = if per < 16 {
            16
        } else {
            1 << (31 - per.leading_zeros())
        };
        p.min(POD_FILL_BASE_MAX)
            .min(self.pod_rings.fill)
            .max(16.min(self.pod_rings.fill))
    }
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            cores: vec![0],
            busy_poll: false,
            worker_rt_priority: None,
            frames_per_worker: 16_384,
            frame_size: 2048,
            multi_buffer: false,
            rings: RingSizes::default(),
            pod_rings: RingSizes {
                rx: 1024,
                tx: 1024,
                fill: POD_FILL_MAX,
                comp: 1024,
            },
            conntrack_capacity: 262_144,
            handoff_depth: 1024,
            max_pods: 110,
            early_drop: true,
            io_only: false,
        }
    }
}

/// Why the dataplane could not do something.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// AF_XDP socket / UMEM.
    #[error(transparent)]
    Xsk(#[from] XskError),
    /// The XDP program.
    #[error(transparent)]
    Steer(#[from] SteerError),
    /// Conntrack memory.
    #[error(transparent)]
    Map(#[from] crate::sys::MapError),
    /// Bad request.
    #[error("{0}")]
    Invalid(String),
    /// A worker did not answer (stuck or gone).
    #[error("worker {0} did not answer")]
    WorkerGone(usize),
    /// Thread creation failed.
    #[error("spawning worker thread: {0}")]
    Spawn(std::io::Error),
    /// A worker's wake-up eventfd could not be made.
    #[error("eventfd for a worker: {0}")]
    Eventfd(std::io::Error),
}

struct WorkerHandle {
    thread: Option<JoinHandle<()>>,
    cmds: Sender<Command>,
    io: Arc<IoCounters>,
    counters: Arc<Counters>,
    sockets: usize,
}

#[derive(Debug, Clone)]
struct PortState {
    ifname: String,
    ifindex: u32,
    role: PortRole,
    /// A tap polled through its descriptor (no socket, no steering program).
    tap: bool,
    /// (queue, worker, XSKMAP slot)
    queues: Vec<(u32, usize, u32)>,
}

/// One worker's counters.
#[derive(Debug, Clone)]
pub struct WorkerStats {
    /// Core it is pinned to.
    pub core: usize,
    /// I/O counters.
    pub io: Arc<IoCounters>,
    /// Pipeline counters.
    pub pipeline: Arc<Counters>,
}

/// A port as the dataplane has it wired.
#[derive(Debug, Clone)]
pub struct PortInfo {
    /// Port id.
    pub id: PortId,
    /// Interface name.
    pub ifname: String,
    /// Role.
    pub role: PortRole,
    /// (queue, worker) pairs.
    pub queues: Vec<(u32, usize)>,
}

/// The running dataplane.
pub struct Dataplane {
    cfg: DataplaneConfig,
    shared: Arc<WorkerShared>,
    workers: Vec<WorkerHandle>,
    steering: Steering,
    ports: BTreeMap<PortId, PortState>,
    free_slots: Vec<u32>,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("cores", &self.cfg.cores)
            .field("ports", &self.ports.len())
            .finish_non_exhaustive()
    }
}

impl Dataplane {
    /// Loads the steering program and starts one pinned worker per configured core, forwarding
    /// with `fib` (no ports yet).
    pub fn start(cfg: DataplaneConfig, fib: Fib) -> Result<Self, DataplaneError> {
        if cfg.cores.is_empty() {
            return Err(DataplaneError::Invalid("no worker cores configured".into()));
        }
        let steering = Steering::load()?;
        let congestion = if cfg.early_drop {
            Some(steering.congestion()?)
        } else {
            None
        };
        let n = cfg.cores.len();
        let mut wakers = Vec::with_capacity(n);
        for _ in 0..n {
            wakers.push(Notifier::new().map_err(DataplaneError::Eventfd)?);
        }
        let shared = Arc::new(WorkerShared {
            fib: FibCell::new(fib),
            ct: Conntrack::new(cfg.conntrack_capacity, Timeouts::default())?,
            stop: AtomicBool::new(false),
            owners: (0..MAX_PORTS).map(|_| AtomicU32::new(NONE)).collect(),
            handoff: (0..n)
                .map(|_| {
                    Arc::new(HandoffQueues::new(
                        cfg.handoff_depth,
                        if cfg.multi_buffer {
                            MAX_CHAIN_FRAME
                        } else {
                            cfg.frame_size as usize
                        },
                    ))
                })
                .collect(),
            wakers,
            sleeping: (0..n).map(|_| AtomicBool::new(false)).collect(),
            congestion,
            start: Instant::now(),
        });
        let mut dp = Self {
            cfg: cfg.clone(),
            shared: shared.clone(),
            workers: Vec::new(),
            steering,
            ports: BTreeMap::new(),
            free_slots: (0..crate::steer::XSKMAP_SLOTS as u32).rev().collect(),
        };
        for (i, &core) in cfg.cores.iter().enumerate() {
            let mut umem = Umem::new(cfg.frames_per_worker, cfg.frame_size)?;
            umem.set_multi_buffer(cfg.multi_buffer);
            let (tx, rx) = mpsc::channel();
            let io = Arc::new(IoCounters::default());
            let pipeline = Pipeline::new();
            let counters = pipeline.counters().clone();
            let worker = Worker::new(
                i,
                umem,
                shared.clone(),
                pipeline,
                io.clone(),
                rx,
                cfg.busy_poll,
                cfg.io_only,
            );
            let rt = cfg.worker_rt_priority;
            let (started_tx, started_rx) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("xdpnet-w{i}"))
                .spawn(move || {
                    // Pinning fails only for a core this process may not use; the worker then
                    // runs unpinned (the daemon checked the core list at start).
                    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: core });
                    let _ = started_tx.send(rt.map(crate::sys::sched::set_fifo).transpose());
                    worker.run();
                })
                .map_err(DataplaneError::Spawn)?;
            dp.workers.push(WorkerHandle {
                thread: Some(thread),
                cmds: tx,
                io,
                counters,
                sockets: 0,
            });
            // A worker that could not take its scheduling class stops with the others when
            // `dp` drops here.
            if let Ok(Err(e)) = started_rx.recv() {
                return Err(DataplaneError::Invalid(format!(
                    "worker {i}: SCHED_FIFO priority {}: {e}",
                    rt.unwrap_or(0)
                )));
            }
        }
        Ok(dp)
    }

    fn ask<T>(
        &self,
        w: usize,
        make: impl FnOnce(Sender<T>) -> Command,
    ) -> Result<T, DataplaneError> {
        let (tx, rx) = mpsc::channel();
        self.workers[w]
            .cmds
            .send(make(tx))
            .map_err(|_| DataplaneError::WorkerGone(w))?;
        self.shared.wakers[w].notify();
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| DataplaneError::WorkerGone(w))
    }

    /// Wires interface `ifname` as port `id`: binds its socket(s) on worker(s), fills the
    /// program's maps and attaches the program. The table must give `id` its kind before
    /// traffic is expected on it.
    pub fn add_port(
        &mut self,
        id: PortId,
        ifname: &str,
        role: PortRole,
    ) -> Result<(), DataplaneError> {
        self.check_new_port(id, ifname)?;
        let ifindex = if_index(ifname)?;
        let queues = match role {
            PortRole::Uplink => crate::sys::netdev::rx_queues(ifname),
            _ => 1,
        };
        let (rings, fill_base) = match role {
            PortRole::Pod => (self.cfg.pod_rings, self.cfg.pod_fill()),
            _ => (self.cfg.rings, self.cfg.rings.fill),
        };
        let mode = match role {
            PortRole::Uplink if !self.cfg.io_only => SteerMode::Uplink,
            _ => SteerMode::All,
        };
        let mut st = PortState {
            ifname: ifname.to_string(),
            ifindex,
            role,
            tap: false,
            queues: Vec::new(),
        };
        let r = (|| {
            for q in 0..queues {
                let w = match role {
                    PortRole::Uplink => q as usize % self.workers.len(),
                    _ => (0..self.workers.len())
                        .min_by_key(|&w| self.workers[w].sockets)
                        .unwrap_or(0),
                };
                let slot = self.free_slots.pop().ok_or_else(|| {
                    DataplaneError::Invalid("all 4096 XSKMAP slots in use".into())
                })?;
                let fd = match self.ask(w, |reply| Command::AddSocket {
                    port: id,
                    ifindex,
                    queue: q,
                    slot,
                    rings,
                    fill_base,
                    reply,
                }) {
                    Ok(Ok(fd)) => fd,
                    Ok(Err(e)) => {
                        self.free_slots.push(slot);
                        return Err(e.into());
                    }
                    Err(e) => {
                        self.free_slots.push(slot);
                        return Err(e);
                    }
                };
                st.queues.push((q, w, slot));
                self.workers[w].sockets += 1;
                self.steering.set_socket(slot, fd.as_fd())?;
                self.steering.set_port(ifindex, q, slot, mode)?;
            }
            self.steering.attach(ifindex)?;
            Ok(())
        })();
        if let Err(e) = r {
            self.unwire(&st);
            return Err(e);
        }
        if let Some(&(_, w, _)) = st.queues.first() {
            self.shared.owners[id as usize].store(w as u32, Ordering::Release);
        }
        self.ports.insert(id, st);
        Ok(())
    }

    /// A new port needs a free id below [`MAX_PORTS`] and a name no port has.
    fn check_new_port(&self, id: PortId, name: &str) -> Result<(), DataplaneError> {
        if id as usize >= MAX_PORTS {
            return Err(DataplaneError::Invalid(format!(
                "port id {id} >= {MAX_PORTS}"
            )));
        }
        if self.ports.contains_key(&id) {
            return Err(DataplaneError::Invalid(format!(
                "port id {id} already in use"
            )));
        }
        if let Some((pid, _)) = self.ports.iter().find(|(_, p)| p.ifname == name) {
            return Err(DataplaneError::Invalid(format!(
                "{name} is already port {pid}"
            )));
        }
        Ok(())
    }

    fn unwire(&mut self, st: &PortState) {
        self.steering.detach(st.ifindex);
        for &(q, w, slot) in &st.queues {
            self.steering.clear_port(st.ifindex, q);
            self.steering.clear_socket(slot);
            let _ = self.ask(w, |reply| Command::RemoveSocket { slot, reply });
            self.workers[w].sockets = self.workers[w].sockets.saturating_sub(1);
            self.free_slots.push(slot);
        }
    }

    /// Wires the tap open on `fd` (see [`crate::sys::tap::open`]) as pod port `id`, named
    /// `label` (the pod's interface key; the device itself is in the pod's namespace). The
    /// worker with the fewest ports polls it.
    pub fn add_tap_port(
        &mut self,
        id: PortId,
        label: &str,
        fd: std::os::fd::OwnedFd,
    ) -> Result<(), DataplaneError> {
        self.check_new_port(id, label)?;
        let w = (0..self.workers.len())
            .min_by_key(|&w| self.workers[w].sockets)
            .unwrap_or(0);
        match self.ask(w, |reply| Command::AddTap {
            port: id,
            fd,
            reply,
        })? {
            Ok(()) => {}
            Err(e) => return Err(e.into()),
        }
        self.workers[w].sockets += 1;
        self.shared.owners[id as usize].store(w as u32, Ordering::Release);
        self.ports.insert(
            id,
            PortState {
                ifname: label.to_string(),
                // The device is in the pod's namespace: no index here.
                ifindex: 0,
                role: PortRole::Pod,
                tap: true,
                queues: vec![(0, w, NONE)],
            },
        );
        Ok(())
    }

    /// Unwires port `id` (program detached, sockets closed, frames reclaimed). The table should
    /// stop using it first. False when there was no such port.
    pub fn remove_port(&mut self, id: PortId) -> bool {
        let Some(st) = self.ports.remove(&id) else {
            return false;
        };
        self.shared.owners[id as usize].store(NONE, Ordering::Release);
        if st.tap {
            for &(_, w, _) in &st.queues {
                let _ = self.ask(w, |reply| Command::RemoveTap { port: id, reply });
                self.workers[w].sockets = self.workers[w].sockets.saturating_sub(1);
            }
        } else {
            self.unwire(&st);
        }
        true
    }

    /// Ports wired now.
    pub fn ports(&self) -> Vec<PortInfo> {
        self.ports
            .iter()
            .map(|(&id, p)| PortInfo {
                id,
                ifname: p.ifname.clone(),
                role: p.role,
                queues: p.queues.iter().map(|&(q, w, _)| (q, w)).collect(),
            })
            .collect()
    }

    /// Port id of interface `ifname`, if wired.
    pub fn port_of(&self, ifname: &str) -> Option<PortId> {
        self.ports
            .iter()
            .find(|(_, p)| p.ifname == ifname)
            .map(|(&id, _)| id)
    }

    /// Publishes a new table to the workers.
    pub fn publish(&self, fib: Fib) -> Published {
        self.shared.fib.publish(fib)
    }

    /// The table the workers use now.
    pub fn fib(&self) -> Arc<Fib> {
        self.shared.fib.load_full()
    }

    /// Conntrack (for GC and inspection).
    pub fn conntrack(&self) -> &Conntrack {
        &self.shared.ct
    }

    /// Conntrack's clock (seconds since start).
    pub fn now_secs(&self) -> u32 {
        self.shared.now_secs()
    }

    /// Sets this node's VTEP for the uplink steering.
    pub fn set_vtep(&self, addr: Ipv4Addr, port: u16) -> Result<(), DataplaneError> {
        Ok(self.steering.set_vtep(addr, port)?)
    }

    /// Makes the uplink steer exactly these service frontends.
    pub fn set_frontends(&mut self, f: BTreeSet<Frontend>) -> Result<(), DataplaneError> {
        Ok(self.steering.sync_frontends(f)?)
    }

    /// The frontends the uplink steers now.
    pub fn frontends(&self) -> &BTreeSet<Frontend> {
        self.steering.frontends()
    }

    /// The steering program's counters, read now.
    pub fn steering_counters(&self) -> crate::steer::SteeringCounters {
        self.steering.counters()
    }

    /// Per-worker counters.
    pub fn workers(&self) -> Vec<WorkerStats> {
        self.workers
            .iter()
            .zip(&self.cfg.cores)
            .map(|(w, &core)| WorkerStats {
                core,
                io: w.io.clone(),
                pipeline: w.counters.clone(),
            })
            .collect()
    }

    /// Stops the workers, closes every socket, detaches every program.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for w in &self.shared.wakers {
            w.notify();
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
        let ifs: Vec<u32> = self.steering.attached().collect();
        for i in ifs {
            self.steering.detach(i);
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod sizing_tests {
    use super::*;

    #[test]
    fn pod_fill_rings_share_the_umem() {
        let mut c = DataplaneConfig::default();
        // 16384 frames: 12288 - 2048 for uplink + host = 10240 / 110 pods = 93 -> 64.
        assert_eq!(c.pod_fill(), 64);
        c.max_pods = 8;
        assert_eq!(c.pod_fill(), 256, "never above the configured ring");
        c.frames_per_worker = 4096;
        c.max_pods = 256;
        assert_eq!(c.pod_fill(), 16, "never below 16");
        c.max_pods = 0;
        assert_eq!(c.pod_fill(), 256);
        // Every pod ring times max_pods fits next to the uplink and host rings.
        for frames in [4096u32, 8192, 16384, 65536] {
            for pods in [1usize, 8, 110, 250] {
                c.frames_per_worker = frames;
                c.max_pods = pods;
                let f = c.pod_fill();
                assert!(f.is_power_of_two() && (16..=256).contains(&f));
                if f > 16 {
                    assert!(f as usize * pods + 2048 <= frames as usize * 3 / 4);
                }
            }
        }
    }
}
