//! AF_XDP sockets and their UMEM, straight over the kernel ABI (`linux/if_xdp.h`).
//!
//! Owns: the UMEM mapping, each socket's fd and its four mapped rings (RX, TX, fill,
//! completion). Promises: every slice it hands out lies inside the UMEM and inside one chunk;
//! [`Umem::chunks_mut`] refuses to hand out the same chunk twice at once, so the safe API
//! cannot alias. It never decides which frames are free: that bookkeeping is the worker's
//! (`crate::worker`), which only ever gives a chunk to the kernel that it owns.
//!
//! Why not xsk-rs: its frame descriptors keep the address private, so the dataplane could not
//! move a frame's start into the headroom (VXLAN encapsulation in place) nor transmit a frame
//! received on another socket without a copy. Rings here are the plain single-producer /
//! single-consumer protocol: acquire-load the other side's index, release-store ours.
//!
//! Sockets sharing one UMEM across devices (`XDP_SHARED_UMEM`) each get their own fill and
//! completion rings, as the kernel requires for a different (device, queue).

#![allow(unsafe_code)] // the AF_XDP/UMEM layer: raw mappings and socket options

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// Why an AF_XDP operation failed; names the call.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// A system call failed.
    #[error("{call} failed: {source}")]
    Sys {
        /// The call (and what for).
        call: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A configuration value the kernel would refuse.
    #[error("invalid AF_XDP configuration: {0}")]
    Config(String),
}

fn sys(call: &'static str) -> XskError {
    XskError::Sys {
        call,
        source: io::Error::last_os_error(),
    }
}

/// The packet memory of one worker: `frames` chunks of `frame_size` bytes in one mapping.
#[derive(Debug)]
pub struct Umem {
    ptr: NonNull<u8>,
    bytes: usize,
    frame_size: u32,
    frames: u32,
    /// Sockets bound on it take frames longer than a chunk as chains of chunks (AF_XDP
    /// multi-buffer, `XDP_USE_SG`).
    multi_buffer: bool,
    /// Per chunk: the batch stamp of its last loan in [`Umem::chunks_mut`].
    stamp: Box<[u32]>,
    epoch: u32,
}

// SAFETY: the mapping is owned exclusively by this value; access goes through `&self`/`&mut
// self` methods, so moving it to another thread moves the only handle.
unsafe impl Send for Umem {}

impl Umem {
    /// Maps `frames` chunks of `frame_size` bytes (2048 or 4096), zeroed, advised to use huge
    /// pages.
    pub fn new(frames: u32, frame_size: u32) -> Result<Self, XskError> {
        if frame_size != 2048 && frame_size != 4096 {
            return Err(XskError::Config(format!(
                "frame size {frame_size} (2048 or 4096)"
            )));
        }
        if frames == 0 {
            return Err(XskError::Config("zero frames".into()));
        }
        let bytes = frames as usize * frame_size as usize;
        let ptr = super::mem::anon_map(bytes).map_err(|source| XskError::Sys {
            call: "mmap (UMEM)",
            source,
        })?;
        Ok(Self {
            ptr,
            bytes,
            frame_size,
            frames,
            multi_buffer: false,
            stamp: vec![0; frames as usize].into_boxed_slice(),
            epoch: 0,
        })
    }

    /// Binds its sockets with `XDP_USE_SG` (call before the first bind): a frame longer than
    /// a chunk then arrives as several descriptors, each but the last flagged
    /// [`PKT_CONTD`], and may be sent that way. Sockets sharing the UMEM inherit it.
    pub fn set_multi_buffer(&mut self, on: bool) {
        self.multi_buffer = on;
    }

    /// Whether sockets on it are bound for multi-buffer frames.
    pub fn multi_buffer(&self) -> bool {
        self.multi_buffer
    }

    /// The chunk size that carries a frame for an interface MTU of `mtu` in one chunk (2048
    /// up to 1500), else 4096: the largest copy-mode AF_XDP takes (the kernel refuses chunks
    /// above a page, huge pages or not, as of 6.18), with longer frames carried as chains
    /// ([`Umem::set_multi_buffer`]).
    pub fn frame_size_for(mtu: u32) -> u32 {
        if mtu + 14 + 256 <= 2048 { 2048 } else { 4096 }
    }

    /// The longest frame one chunk of this UMEM takes in copy mode (the kernel keeps 256
    /// bytes of headroom in each).
    pub fn frame_capacity(&self) -> u32 {
        self.frame_size - 256
    }

    /// Chunk size in bytes.
    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    /// Number of chunks.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Address (UMEM offset) of chunk `idx`.
    pub fn chunk_addr(&self, idx: u32) -> u64 {
        idx as u64 * self.frame_size as u64
    }

    /// The chunk holding `addr` and the offset inside it, when `addr..addr+len` lies inside one
    /// chunk of this UMEM.
    pub fn locate(&self, addr: u64, len: u32) -> Option<(u32, u32)> {
        let fs = self.frame_size as u64;
        let idx = addr / fs;
        let off = addr % fs;
        (idx < self.frames as u64 && off + len as u64 <= fs).then_some((idx as u32, off as u32))
    }

    /// Chunk `idx`, mutable (panics when out of range: a bookkeeping bug, not input).
    pub fn chunk_mut(&mut self, idx: u32) -> &mut [u8] {
        assert!(idx < self.frames, "chunk {idx} outside the UMEM");
        let fs = self.frame_size as usize;
        // SAFETY: `idx < frames`, so `idx*fs .. idx*fs+fs` lies inside the live mapping; the
        // `&mut self` borrow makes this the only reference into the UMEM while it lives.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(idx as usize * fs), fs) }
    }

    /// Mutable chunks for `idx` (all in range, all distinct), in order, passed to `f`.
    /// Returns `None` (and calls nothing) when an index repeats or is out of range.
    pub fn chunks_mut<R>(
        &mut self,
        idx: &[u32],
        f: impl FnOnce(&mut dyn Iterator<Item = &mut [u8]>) -> R,
    ) -> Option<R> {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.stamp.fill(0);
            self.epoch = 1;
        }
        for &i in idx {
            let s = self.stamp.get_mut(i as usize)?;
            if *s == self.epoch {
                return None;
            }
            *s = self.epoch;
        }
        let base = self.ptr.as_ptr();
        let fs = self.frame_size as usize;
        let mut it = idx.iter().map(|&i| {
            // SAFETY: every index was checked above to be in range and distinct from every
            // other index of this call, so the slices are disjoint parts of the live mapping;
            // they borrow `self` mutably for the duration of `f`, so nothing else aliases them.
            unsafe { std::slice::from_raw_parts_mut(base.add(i as usize * fs), fs) }
        });
        Some(f(&mut it))
    }

    fn region(&self) -> (u64, u64) {
        (self.ptr.as_ptr() as u64, self.bytes as u64)
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this address and length; no slice into it
        // outlives `self`. Sockets registered on it keep their own pinned pages until closed.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

/// Bind flag: frames longer than a chunk as chains of descriptors (linux/if_xdp.h).
const XDP_USE_SG: u16 = 1 << 4;

/// Descriptor option: the frame continues in the next descriptor (linux/if_xdp.h).
pub const PKT_CONTD: u32 = 1;

/// A TX/RX descriptor as the kernel lays it out.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpDesc {
    /// UMEM offset of the data.
    pub addr: u64,
    /// Data length.
    pub len: u32,
    /// Options: [`PKT_CONTD`] on every descriptor of a chain but its last, else 0.
    pub options: u32,
}

/// Element types a ring can carry.
pub trait RingItem: Copy + Default {}
impl RingItem for u64 {}
impl RingItem for XdpDesc {}

/// One mapped ring. As producer (fill, TX): `free` / `set` / `submit`. As consumer (RX,
/// completion): `available` / `get` / `release`.
#[derive(Debug)]
pub struct Ring<T: RingItem> {
    map: NonNull<u8>,
    map_len: usize,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<T>,
    size: u32,
    cached_prod: u32,
    cached_cons: u32,
}

// SAFETY: a ring is a single-producer/single-consumer endpoint; this value is the user side's
// only handle, so moving it between threads keeps one user-side party.
unsafe impl<T: RingItem> Send for Ring<T> {}

impl<T: RingItem> Ring<T> {
    fn map(
        fd: BorrowedFd<'_>,
        off: &libc::xdp_ring_offset,
        size: u32,
        pgoff: u64,
    ) -> Result<Self, XskError> {
        let map_len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        // SAFETY: mapping a socket's ring at the kernel's documented page offset; the length is
        // what the kernel reported plus the ring entries; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                pgoff as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(sys("mmap (AF_XDP ring)"));
        }
        let base = p.cast::<u8>();
        // SAFETY: the offsets come from XDP_MMAP_OFFSETS for this ring and lie inside the
        // mapping; the kernel aligns them for their types (u32 indices, 8-byte descriptors).
        let at = |o: u64| unsafe { NonNull::new_unchecked(base.add(o as usize)) };
        let producer = at(off.producer).cast::<AtomicU32>();
        let consumer = at(off.consumer).cast::<AtomicU32>();
        let mut r = Self {
            map: at(0),
            map_len,
            producer,
            consumer,
            flags: at(off.flags).cast::<AtomicU32>(),
            descs: at(off.desc).cast::<T>(),
            size,
            cached_prod: 0,
            cached_cons: 0,
        };
        r.cached_prod = r.prod().load(Ordering::Acquire);
        r.cached_cons = r.cons().load(Ordering::Acquire);
        Ok(r)
    }

    fn prod(&self) -> &AtomicU32 {
        // SAFETY: points into the live ring mapping (see `map`); the kernel and we only touch it
        // atomically.
        unsafe { self.producer.as_ref() }
    }
    fn cons(&self) -> &AtomicU32 {
        // SAFETY: as `prod`.
        unsafe { self.consumer.as_ref() }
    }

    /// Ring size (entries).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// True when the kernel asked to be woken (`XDP_RING_NEED_WAKEUP`).
    pub fn needs_wakeup(&self) -> bool {
        // SAFETY: the flags word lies in the live mapping and is only accessed atomically.
        let f = unsafe { self.flags.as_ref() };
        f.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// Producer side: entries free as of the last read of the kernel's index (a lower bound).
    #[inline]
    fn free_cached(&self) -> u32 {
        self.size - self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Producer side: entries that may be written now.
    pub fn free(&mut self) -> u32 {
        self.cached_cons = self.cons().load(Ordering::Acquire);
        self.size - self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Producer side: writes entry `i` past the last submitted one. Refused (false, nothing
    /// written) unless `i < free()`: slots past that may still be the kernel's.
    pub fn set(&mut self, i: u32, v: T) -> bool {
        if i >= self.free_cached() && i >= self.free() {
            return false;
        }
        let slot = self.cached_prod.wrapping_add(i) & (self.size - 1);
        // SAFETY: `slot < size` (mask of a power of two), inside the descriptor array of the
        // live mapping; `i` is below the free count checked above, so the slot is past the
        // producer index and before the kernel's consumer index: ours until `submit`.
        unsafe { self.descs.as_ptr().add(slot as usize).write_volatile(v) }
        true
    }

    /// Producer side: publishes `n` entries written with `set` (at most the free count).
    pub fn submit(&mut self, n: u32) {
        let n = if n <= self.free_cached() {
            n
        } else {
            n.min(self.free())
        };
        self.cached_prod = self.cached_prod.wrapping_add(n);
        self.prod().store(self.cached_prod, Ordering::Release);
    }

    /// Consumer side: entries ready to read.
    pub fn available(&mut self) -> u32 {
        self.cached_prod = self.prod().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Consumer side: entry `i` past the last released one; None unless `i < available()` as
    /// last called (later slots were not seen published).
    pub fn get(&self, i: u32) -> Option<T> {
        if i >= self.cached_prod.wrapping_sub(self.cached_cons) {
            return None;
        }
        let slot = self.cached_cons.wrapping_add(i) & (self.size - 1);
        // SAFETY: `slot < size`, inside the live mapping; `i` is below the count the kernel
        // published before the producer index we acquired, and it will not touch the slot
        // before we release it.
        Some(unsafe { self.descs.as_ptr().add(slot as usize).read_volatile() })
    }

    /// Consumer side: hands `n` read entries back (at most the available count).
    pub fn release(&mut self, n: u32) {
        let n = n.min(self.cached_prod.wrapping_sub(self.cached_cons));
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.cons().store(self.cached_cons, Ordering::Release);
    }

    /// Producer side: entries submitted but not yet consumed by the kernel, oldest first (a
    /// closed socket's fill ring gives its frames back through this).
    pub fn pending(&mut self) -> impl Iterator<Item = T> + '_ {
        let cons = self.cons().load(Ordering::Acquire);
        let n = self.cached_prod.wrapping_sub(cons);
        (0..n).map(move |i| {
            let slot = cons.wrapping_add(i) & (self.size - 1);
            // SAFETY: as `get`: slot in range of the live mapping.
            unsafe { self.descs.as_ptr().add(slot as usize).read_volatile() }
        })
    }
}

impl<T: RingItem> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no reference into it survives.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

/// Ring sizes of one socket (powers of two).
#[derive(Debug, Clone, Copy)]
pub struct RingSizes {
    /// RX ring.
    pub rx: u32,
    /// TX ring.
    pub tx: u32,
    /// Fill ring.
    pub fill: u32,
    /// Completion ring.
    pub comp: u32,
}

impl Default for RingSizes {
    fn default() -> Self {
        Self {
            rx: 1024,
            tx: 1024,
            fill: 1024,
            comp: 1024,
        }
    }
}

/// Kernel counters of one socket (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Dropped for reasons other than invalid descriptors (no room, too big).
    pub rx_dropped: u64,
    /// Invalid RX descriptors.
    pub rx_invalid_descs: u64,
    /// Invalid TX descriptors.
    pub tx_invalid_descs: u64,
    /// RX ring full.
    pub rx_ring_full: u64,
    /// Fill ring was empty when a frame arrived.
    pub rx_fill_ring_empty_descs: u64,
    /// TX ring was empty on a wakeup.
    pub tx_ring_empty_descs: u64,
}

/// One AF_XDP socket bound to (interface, queue), with its four rings.
#[derive(Debug)]
pub struct XskSocket {
    // Rings drop (unmap) before the fd closes: fields drop in declaration order.
    /// RX ring (consumer).
    pub rx: Ring<XdpDesc>,
    /// TX ring (producer).
    pub tx: Ring<XdpDesc>,
    /// Fill ring (producer).
    pub fill: Ring<u64>,
    /// Completion ring (consumer).
    pub comp: Ring<u64>,
    fd: OwnedFd,
    ifindex: u32,
    queue: u32,
}

fn setsockopt<T>(
    fd: BorrowedFd<'_>,
    opt: libc::c_int,
    v: &T,
    call: &'static str,
) -> Result<(), XskError> {
    // SAFETY: `v` is a live value of the type this option takes, passed with its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 { Err(sys(call)) } else { Ok(()) }
}

impl XskSocket {
    /// A socket on `ifindex`/`queue` over `umem`. With `shared` = a bound socket already using
    /// this UMEM, binds with `XDP_SHARED_UMEM` (inheriting its copy/need-wakeup mode);
    /// otherwise registers the UMEM on this socket and binds in copy mode with need_wakeup.
    pub fn bind(
        umem: &Umem,
        shared: Option<BorrowedFd<'_>>,
        ifindex: u32,
        queue: u32,
        sizes: RingSizes,
    ) -> Result<Self, XskError> {
        for (n, what) in [
            (sizes.rx, "rx"),
            (sizes.tx, "tx"),
            (sizes.fill, "fill"),
            (sizes.comp, "completion"),
        ] {
            if !n.is_power_of_two() {
                return Err(XskError::Config(format!(
                    "{what} ring size {n} is not a power of two"
                )));
            }
        }
        // SAFETY: plain socket(2) call; the result is checked before being owned.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(sys("socket(AF_XDP)"));
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if shared.is_none() {
            let (addr, len) = umem.region();
            let reg = libc::xdp_umem_reg {
                addr,
                len,
                chunk_size: umem.frame_size,
                headroom: 0,
                flags: 0,
                tx_metadata_len: 0,
            };
            setsockopt(
                fd.as_fd(),
                libc::XDP_UMEM_REG,
                &reg,
                "setsockopt(XDP_UMEM_REG)",
            )?;
        }
        setsockopt(
            fd.as_fd(),
            libc::XDP_UMEM_FILL_RING,
            &sizes.fill,
            "setsockopt(XDP_UMEM_FILL_RING)",
        )?;
        setsockopt(
            fd.as_fd(),
            libc::XDP_UMEM_COMPLETION_RING,
            &sizes.comp,
            "setsockopt(XDP_UMEM_COMPLETION_RING)",
        )?;
        setsockopt(
            fd.as_fd(),
            libc::XDP_RX_RING,
            &sizes.rx,
            "setsockopt(XDP_RX_RING)",
        )?;
        setsockopt(
            fd.as_fd(),
            libc::XDP_TX_RING,
            &sizes.tx,
            "setsockopt(XDP_TX_RING)",
        )?;

        let mut off = std::mem::MaybeUninit::<libc::xdp_mmap_offsets>::zeroed();
        let mut optlen = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `off` has room for the struct; the kernel writes at most `optlen` bytes.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                off.as_mut_ptr().cast(),
                &mut optlen,
            )
        };
        if r != 0 {
            return Err(sys("getsockopt(XDP_MMAP_OFFSETS)"));
        }
        if optlen as usize != std::mem::size_of::<libc::xdp_mmap_offsets>() {
            return Err(XskError::Config(
                "kernel without ring flags (needs Linux 5.4+)".into(),
            ));
        }
        // SAFETY: zero-initialised and filled by the kernel; every bit pattern is valid u64s.
        let off = unsafe { off.assume_init() };
        let rx = Ring::map(
            fd.as_fd(),
            &off.rx,
            sizes.rx,
            libc::XDP_PGOFF_RX_RING as u64,
        )?;
        let tx = Ring::map(
            fd.as_fd(),
            &off.tx,
            sizes.tx,
            libc::XDP_PGOFF_TX_RING as u64,
        )?;
        let fill = Ring::map(
            fd.as_fd(),
            &off.fr,
            sizes.fill,
            libc::XDP_UMEM_PGOFF_FILL_RING,
        )?;
        let comp = Ring::map(
            fd.as_fd(),
            &off.cr,
            sizes.comp,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
        )?;

        let (flags, shared_fd) = match shared {
            Some(s) => (libc::XDP_SHARED_UMEM, s.as_raw_fd() as u32),
            None if umem.multi_buffer => {
                (libc::XDP_COPY | libc::XDP_USE_NEED_WAKEUP | XDP_USE_SG, 0)
            }
            None => (libc::XDP_COPY | libc::XDP_USE_NEED_WAKEUP, 0),
        };
        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: shared_fd,
        };
        // SAFETY: `sa` is a complete sockaddr_xdp passed with its size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(sys("bind(AF_XDP)"));
        }
        Ok(Self {
            rx,
            tx,
            fill,
            comp,
            fd,
            ifindex,
            queue,
        })
    }

    /// The socket's fd (for the XSKMAP and poll).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Interface index it is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Queue it is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Asks the kernel to process the TX ring. True when it stopped early (more to send).
    pub fn kick_tx(&self) -> bool {
        // SAFETY: sendto with no buffer and no address is the AF_XDP TX wakeup; nothing is read
        // from or written to user memory.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        r < 0
            && matches!(
                io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN) | Some(libc::EBUSY)
            )
    }

    /// Wakes the kernel's RX side (after refilling when the fill ring asks for it).
    pub fn wake_rx(&self) {
        // SAFETY: recvfrom with no buffer is the AF_XDP RX wakeup; nothing is written.
        unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }

    /// Raises how many TX descriptors one wakeup (`sendto`) may send in copy mode, from the
    /// kernel's 32 (`XDP_MAX_TX_SKB_BUDGET`, Linux 6.17; between 32 and the TX ring's size).
    /// False where the kernel does not have it (the default stays). Not used by the workers:
    /// measured, 256 per wakeup overran the receiving veth's backlog (BENCHMARKS.md, issue 14).
    pub fn set_tx_budget(&self, budget: u32) -> bool {
        const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
        let v: u32 = budget;
        // SAFETY: the kernel reads one u32 through the pointer, which outlives the call.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                XDP_MAX_TX_SKB_BUDGET,
                (&v as *const u32).cast(),
                std::mem::size_of::<u32>() as libc::socklen_t,
            )
        };
        r == 0
    }

    /// The kernel's counters for this socket.
    pub fn stats(&self) -> Result<XskStats, XskError> {
        let mut s = std::mem::MaybeUninit::<libc::xdp_statistics>::zeroed();
        let mut optlen = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `s` has room for the struct; the kernel writes at most `optlen` bytes.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                s.as_mut_ptr().cast(),
                &mut optlen,
            )
        };
        if r != 0 {
            return Err(sys("getsockopt(XDP_STATISTICS)"));
        }
        // SAFETY: zero-initialised, partly or wholly filled by the kernel: all u64s are valid.
        let s = unsafe { s.assume_init() };
        Ok(XskStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }
}

/// Waits on many sockets at once (the low-CPU mode of a worker). Keeps its array between waits.
#[derive(Debug, Default)]
pub struct Poller {
    fds: Vec<libc::pollfd>,
}

impl Poller {
    /// Replaces the set of sockets waited on.
    pub fn set<'a>(&mut self, fds: impl Iterator<Item = BorrowedFd<'a>>) {
        self.fds.clear();
        self.fds.extend(fds.map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
    }

    /// Waits until a socket is readable or `timeout_ms` passes (signals end it early too).
    pub fn wait(&mut self, timeout_ms: i32) {
        // SAFETY: `fds` is a live array of `len` pollfd records; the fds are owned by sockets
        // the caller keeps open (a closed one only yields POLLNVAL).
        unsafe {
            libc::poll(
                self.fds.as_mut_ptr(),
                self.fds.len() as libc::nfds_t,
                timeout_ms,
            )
        };
    }
}

/// The index of interface `name` in this network namespace.
pub fn if_index(name: &str) -> Result<u32, XskError> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| XskError::Config(format!("interface name {name:?}")))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(XskError::Sys {
            call: "if_nametoindex",
            source: io::Error::new(io::ErrorKind::NotFound, format!("no interface {name:?}")),
        });
    }
    Ok(i)
}
