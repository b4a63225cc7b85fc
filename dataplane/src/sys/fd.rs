//! File descriptors the dataplane passes or waits on: receiving a descriptor over a unix
//! socket (SCM_RIGHTS, the CNI endpoint's pod netns) and the eventfd that wakes a sleeping
//! worker.

#![allow(unsafe_code)] // part of the crate's unsafe boundary (see `sys`)

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Receives bytes into `buf` and at most one file descriptor passed with them (SCM_RIGHTS) from
/// a unix stream socket; any further descriptors in the same message are closed.
pub fn recv_with_fd(
    s: &std::os::unix::net::UnixStream,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<std::os::fd::OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg = recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel installed this descriptor in our table for this message;
                // nothing else knows it, so taking ownership (and closing it on drop) is sound.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    let n = msg.bytes;
    Ok((n, fds.into_iter().next()))
}

/// An eventfd: how the control thread and other workers wake a worker sleeping in
/// [`super::xsk::Poller::wait`] (commands and handed-off frames have no socket to be readable on).
#[derive(Debug)]
pub struct Notifier {
    fd: OwnedFd,
}

impl Notifier {
    /// A non-blocking eventfd.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: plain eventfd(2); the result is checked before being owned.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd })
    }

    /// Makes the fd readable (wakes a poller).
    pub fn notify(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd; failure (counter full) still
        // leaves it readable, which is all we need.
        unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Clears readability.
    pub fn drain(&self) {
        let mut b = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live 8-byte buffer; EAGAIN when not readable.
        unsafe { libc::read(self.fd.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
    }

    /// The fd, for a poller.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
