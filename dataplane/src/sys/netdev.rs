//! Network device facts and settings over ioctls in the caller's network namespace: MAC,
//! MTU, RX queue count (ETHTOOL_GCHANNELS), TX checksum offload (ETHTOOL_[GS]TXCSUM).

#![allow(unsafe_code)] // part of the crate's unsafe boundary (see `sys`)

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// RX queues of interface `name` (ETHTOOL_GCHANNELS: rx + combined); 1 when the driver does
/// not say. Asks the kernel through a socket of the caller's network namespace (sysfs may show
/// another namespace's devices).
pub fn rx_queues(name: &str) -> u32 {
    #[repr(C)]
    struct EthtoolChannels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    if name.len() >= libc::IFNAMSIZ {
        return 1;
    }
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        max_rx: 0,
        max_tx: 0,
        max_other: 0,
        max_combined: 0,
        rx_count: 0,
        tx_count: 0,
        other_count: 0,
        combined_count: 0,
    };
    // SAFETY: an all-zero ifreq is valid (plain integers and arrays).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut ch as *mut EthtoolChannels).cast();
    // SAFETY: plain socket(2); checked below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return 1;
    }
    // SAFETY: `s` is a fresh fd nothing else owns.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: SIOCETHTOOL reads the NUL-terminated name in `ifr` and writes at most one
    // ethtool_channels into `ch`, which outlives the call.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
    if r != 0 {
        return 1;
    }
    (ch.rx_count + ch.combined_count).max(1)
}

/// An ethtool "value" request (`struct ethtool_value`) on interface `name` in the caller's
/// network namespace; returns the value the kernel left in it.
fn ethtool_value(name: &str, cmd: u32, data: u32) -> std::io::Result<u32> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut v = EthtoolValue { cmd, data };
    // SAFETY: an all-zero ifreq is valid (plain integers and arrays).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut v as *mut EthtoolValue).cast();
    // SAFETY: plain socket(2); checked below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `s` is a fresh fd nothing else owns.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: SIOCETHTOOL reads the NUL-terminated name in `ifr` and reads/writes one
    // ethtool_value in `v`, which outlives the call.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v.data)
}

/// Turns TX checksum offload of `name` on or off (ETHTOOL_STXCSUM; the kernel drops the
/// offloads that depend on it, TSO among them). Off on every kernel-stack interface that sends
/// into the dataplane: a veth otherwise hands over frames with partial checksums.
pub fn set_tx_checksum(name: &str, on: bool) -> std::io::Result<()> {
    const ETHTOOL_STXCSUM: u32 = 0x17;
    ethtool_value(name, ETHTOOL_STXCSUM, u32::from(on)).map(|_| ())
}

/// Whether TX checksum offload of `name` is on (ETHTOOL_GTXCSUM).
pub fn tx_checksum(name: &str) -> std::io::Result<bool> {
    const ETHTOOL_GTXCSUM: u32 = 0x16;
    ethtool_value(name, ETHTOOL_GTXCSUM, 0).map(|d| d != 0)
}

fn ifreq_ioctl(name: &str, req: libc::c_ulong) -> Option<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: an all-zero ifreq is valid (plain integers and arrays).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: plain socket(2); checked below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return None;
    }
    // SAFETY: `s` is a fresh fd nothing else owns.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: the SIOCGIF* requests used here read the NUL-terminated name and write only
    // inside the ifreq union, which lives on our stack for the call.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), req, &mut ifr) };
    (r == 0).then_some(ifr)
}

/// MAC address of interface `name` in the caller's network namespace.
pub fn if_mac(name: &str) -> Option<[u8; 6]> {
    let ifr = ifreq_ioctl(name, libc::SIOCGIFHWADDR)?;
    // SAFETY: SIOCGIFHWADDR filled the `ifru_hwaddr` member of the union.
    let sa = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    let mut m = [0u8; 6];
    for (d, s) in m.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Some(m)
}

/// MTU of interface `name` in the caller's network namespace.
pub fn if_mtu(name: &str) -> Option<u32> {
    let ifr = ifreq_ioctl(name, libc::SIOCGIFMTU)?;
    // SAFETY: SIOCGIFMTU filled the `ifru_mtu` member of the union.
    let mtu = unsafe { ifr.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).ok()
}
