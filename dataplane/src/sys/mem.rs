//! Memory: big zeroed tables in their own (huge-page) mappings, and CPU prefetch hints.

#![allow(unsafe_code)] // part of the crate's unsafe boundary (see `sys`)

use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// A fixed-size, zero-initialised array of `[AtomicU64; W]` records in its own anonymous
/// mapping, advised to use transparent huge pages. Big lookup tables (conntrack) touched at
/// random take a TLB miss on nearly every access with 4 KiB pages; with 2 MiB pages the whole
/// table fits the TLB.
#[derive(Debug)]
pub struct AtomicArray<const W: usize> {
    ptr: NonNull<[AtomicU64; W]>,
    len: usize,
    bytes: usize,
}

// SAFETY: the array owns its mapping exclusively and only hands out `&[AtomicU64]`; atomics are
// safe to share and send between threads.
unsafe impl<const W: usize> Send for AtomicArray<W> {}
// SAFETY: as above: shared access is only through atomics.
unsafe impl<const W: usize> Sync for AtomicArray<W> {}

/// Why a table's memory could not be had.
#[derive(Debug, thiserror::Error)]
#[error("mmap of {bytes} bytes for a table failed: {source}")]
pub struct MapError {
    /// Requested size.
    pub bytes: usize,
    /// The OS error.
    pub source: std::io::Error,
}

impl<const W: usize> AtomicArray<W> {
    /// `len` zeroed records (at least one).
    pub fn zeroed(len: usize) -> Result<Self, MapError> {
        let len = len.max(1);
        let bytes = len.checked_mul(8 * W.max(1)).ok_or(MapError {
            bytes: usize::MAX,
            source: std::io::Error::from(std::io::ErrorKind::OutOfMemory),
        })?;
        let p = anon_map(bytes).map_err(|source| MapError { bytes, source })?;
        Ok(Self {
            ptr: p.cast::<[AtomicU64; W]>(),
            len,
            bytes,
        })
    }
}

impl<const W: usize> std::ops::Deref for AtomicArray<W> {
    type Target = [[AtomicU64; W]];
    #[inline(always)]
    fn deref(&self) -> &[[AtomicU64; W]] {
        // SAFETY: `ptr` points to a live mapping of `len * W * 8` bytes, page aligned (so
        // aligned for AtomicU64), zero-filled by the kernel (a valid AtomicU64 is any bit
        // pattern) and only ever accessed through atomics; it lives until `drop`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<const W: usize> Drop for AtomicArray<W> {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `zeroed` with exactly this address and length and
        // no reference into it outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

/// A private anonymous read-write mapping of `bytes` (zeroed by the kernel), advised to use
/// transparent huge pages when it is at least 2 MiB. Unmapped by its owner with `munmap`.
pub(crate) fn anon_map(bytes: usize) -> std::io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
    // result is checked for MAP_FAILED below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    if bytes >= 2 << 20 {
        // SAFETY: `p..p+bytes` is the mapping just created. The advice only changes how the
        // kernel backs it; failure (THP disabled) is harmless and ignored.
        unsafe { libc::madvise(p, bytes, libc::MADV_HUGEPAGE) };
    }
    NonNull::new(p.cast::<u8>())
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::OutOfMemory))
}

/// Hints the CPU to bring the cache line holding `r` into L1 ahead of use. Never faults and
/// has no effect on program semantics; a no-op on targets without a prefetch instruction.
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has (it is part of the
        // x86_64 baseline the compiler already assumes). A prefetch is only a hint: it never
        // faults, never writes, and the pointer comes from a live reference.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((r as *const T).cast::<i8>()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = r;
    }
}

/// A shared read-write mapping of a BPF array map created with `BPF_F_MMAPABLE` whose values
/// are 8 bytes (an array map's values are laid out every `round_up(value_size, 8)` bytes
/// from offset 0): the program reads what user space stores, without a syscall. Entries are
/// only touched through atomics (the program reads them concurrently).
#[derive(Debug)]
pub struct SharedWords {
    ptr: NonNull<AtomicU64>,
    len: usize,
    bytes: usize,
}

// SAFETY: the mapping is owned by this value and only reached through atomics.
unsafe impl Send for SharedWords {}
// SAFETY: as above.
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// Maps the `len` 8-byte values of the mmap-able array map `fd`.
    pub fn map(fd: std::os::fd::BorrowedFd<'_>, len: usize) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let page = 4096usize;
        let bytes = (len.max(1) * 8).div_ceil(page) * page;
        // SAFETY: a shared mapping of a file descriptor with no address hint has no
        // preconditions; the kernel refuses (EINVAL/EPERM) a map that is not mmap-able or a
        // length beyond its size, and the result is checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<AtomicU64>())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
        Ok(Self { ptr, len, bytes })
    }
}

impl std::ops::Deref for SharedWords {
    type Target = [AtomicU64];
    fn deref(&self) -> &[AtomicU64] {
        // SAFETY: `ptr` is a live, page-aligned shared mapping of at least `len * 8` bytes
        // (checked by the kernel at mmap), any bit pattern is a valid AtomicU64, and every
        // access goes through atomics; it lives until `drop`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `map` with this address and length, and no
        // reference into it outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}
