//! Tap devices with a virtio-net header per frame (`IFF_VNET_HDR`): a pod's `eth0` that keeps
//! its offloads. The kernel hands the dataplane whole TCP segments up to 64 KiB (TSO) with
//! their checksum still to finish (the header says where), and takes them back the same way,
//! so a stream crosses user space in a few large frames instead of one per MSS.
//!
//! A tap lives in the network namespace of the thread that created it; [`open`] attaches to
//! the one named `name` in the calling thread's namespace (creating it if missing). The device
//! is made persistent by [`open_persistent`], so it outlives the daemon's descriptor: a
//! restarted daemon opens it again by name.

#![allow(unsafe_code)] // part of the crate's unsafe boundary (see `sys`)

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Length of the virtio-net header in front of every frame (`struct virtio_net_hdr`).
pub const VNET_HDR_LEN: usize = 10;

/// `virtio_net_hdr.flags`: the L4 checksum is partial (finish it from `csum_start`).
pub const F_NEEDS_CSUM: u8 = 1;
/// `virtio_net_hdr.gso_type`: none.
pub const GSO_NONE: u8 = 0;
/// `virtio_net_hdr.gso_type`: TCP over IPv4.
pub const GSO_TCPV4: u8 = 1;
/// `virtio_net_hdr.gso_type`: ECN bit (CWR set on the first segment).
pub const GSO_ECN: u8 = 0x80;

/// A virtio-net header (little-endian on the wire; this is x86 and arm64 only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// [`F_NEEDS_CSUM`] or 0.
    pub flags: u8,
    /// [`GSO_NONE`], [`GSO_TCPV4`] (| [`GSO_ECN`]), or another the dataplane does not ask for.
    pub gso_type: u8,
    /// Length of the headers through L4 (a hint).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksum starts (from the frame's first byte).
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum field is.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads a header from the first [`VNET_HDR_LEN`] bytes of `b` (zeros if short).
    pub fn parse(b: &[u8]) -> Self {
        let Some(b) = b.get(..VNET_HDR_LEN) else {
            return Self::default();
        };
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        }
    }
    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `b` (nothing if short).
    pub fn write(&self, b: &mut [u8]) {
        let Some(b) = b.get_mut(..VNET_HDR_LEN) else {
            return;
        };
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

fn ifreq(name: &str, flags: libc::c_int) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: an all-zero ifreq is valid (plain integers and arrays).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    Ok(ifr)
}

fn ioctl_int(fd: &OwnedFd, req: libc::Ioctl, v: libc::c_ulong, what: &str) -> io::Result<()> {
    // SAFETY: these tun ioctls take their argument by value (an integer), no memory.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, v) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// Opens (creating if missing) the tap `name` in the calling thread's network namespace:
/// non-blocking, a virtio-net header per frame, checksum and TCPv4 segmentation offload
/// enabled (the kernel may hand over partial checksums and 64 KiB segments). `napi`: frames
/// written to it go through GRO (the pod's stack receives coalesced segments).
pub fn open(name: &str, napi: bool) -> io::Result<OwnedFd> {
    // SAFETY: plain open(2) of a NUL-terminated literal; checked below.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("/dev/net/tun: {e}")));
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if napi {
        flags |= libc::IFF_NAPI;
    }
    let mut ifr = ifreq(name, flags)?;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")));
    }
    let sz: libc::c_int = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &sz) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("TUNSETVNETHDRSZ: {e}")));
    }
    ioctl_int(
        &fd,
        libc::TUNSETOFFLOAD,
        libc::c_ulong::from(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO_ECN),
        "TUNSETOFFLOAD",
    )?;
    Ok(fd)
}

/// [`open`], and makes the tap persistent: the device stays when no descriptor is open (a
/// daemon restarting opens it again), until deleted or its namespace goes.
pub fn open_persistent(name: &str, napi: bool) -> io::Result<OwnedFd> {
    let fd = open(name, napi)?;
    ioctl_int(&fd, libc::TUNSETPERSIST, 1, "TUNSETPERSIST")?;
    Ok(fd)
}

/// One read(2): a frame with its header into `buf`. `Ok(None)` when nothing is waiting.
pub fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: read(2) writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(n as usize))
}

/// One write(2): a header and its frame. Ok(false) when the device would block (its queue
/// full) or is down.
pub fn write(fd: &OwnedFd, buf: &[u8]) -> io::Result<bool> {
    // SAFETY: write(2) reads at most `buf.len()` bytes from `buf`.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(false),
            _ => Err(e),
        };
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1398,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        h.write(&mut b);
        assert_eq!(b, [1, 1, 66, 0, 0x76, 0x05, 34, 0, 16, 0]);
        assert_eq!(VnetHdr::parse(&b), h);
        assert_eq!(VnetHdr::parse(&b[..3]), VnetHdr::default());
    }

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        assert!(open("", false).is_err());
        assert!(open("a-name-far-too-long", false).is_err());
    }
}
