//! IPAM for this node's pods: addresses from the node's pod CIDR, keyed by (container ID,
//! interface name), persisted crash-safely.
//!
//! Every change is on disk before it is answered: the whole table is written to a temporary
//! file, fsynced, renamed over the old one, and the directory fsynced — so a crash leaves either
//! the old or the new table, never a torn one, and an address handed to a pod is never handed
//! out again after a restart. Allocation is idempotent (the same container and interface get the
//! same address back) and round-robin (a released address is reused last, so stale conntrack
//! entries and caches of the old pod age out first). The network address, the gateway (first
//! address) and the broadcast address are never allocated. One owner (the daemon's CNI endpoint)
//! serialises calls.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use xdpnet_dataplane::fib::Ipv4Net;

/// Why IPAM could not do something.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every address of the CIDR is in use.
    #[error("no free address left in {0}")]
    Exhausted(Ipv4Net),
    /// The CIDR has no room for pods.
    #[error("pod CIDR {0} is too small (needs at least a /30)")]
    TooSmall(Ipv4Net),
    /// Reading or writing the state failed.
    #[error("IPAM state {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The state file is not ours or is damaged.
    #[error("IPAM state {path} is unreadable ({msg}); move it away to start empty")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

/// One allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The address.
    pub ip: Ipv4Addr,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
    /// `namespace/name` of the pod, when the runtime said.
    pub pod: Option<String>,
    /// The wiring, once done: the host end's name, the pod end's MAC, the netns path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wiring: Option<Wiring>,
}

/// How an allocation's pod is wired (what a restarted daemon needs to reattach it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wiring {
    /// The veth's host end (attached to the dataplane); for a tap, the key its port goes by.
    pub host_if: String,
    /// MAC of the pod's interface.
    pub mac: String,
    /// The pod's network namespace path.
    pub netns: String,
    /// The pod's interface is a tap (in `netns`, named as the allocation's interface).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tap: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct OnDisk {
    cidr: String,
    last: Option<Ipv4Addr>,
    allocations: Vec<Allocation>,
}

/// The allocator.
#[derive(Debug)]
pub struct Ipam {
    cidr: Ipv4Net,
    path: PathBuf,
    by_ip: BTreeMap<Ipv4Addr, Allocation>,
    last: Option<Ipv4Addr>,
    reserved: BTreeSet<Ipv4Addr>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IpamError + '_ {
    move |source| IpamError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Ipam {
    /// Opens (or starts) the table at `path` for `cidr`. Allocations outside `cidr` (the node
    /// got another CIDR) are dropped.
    pub fn open(cidr: Ipv4Net, path: &Path) -> Result<Self, IpamError> {
        if cidr.prefix_len() > 30 {
            return Err(IpamError::TooSmall(cidr));
        }
        let mut me = Self {
            cidr,
            path: path.to_path_buf(),
            by_ip: BTreeMap::new(),
            last: None,
            reserved: BTreeSet::new(),
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let d: OnDisk = serde_json::from_slice(&bytes).map_err(|e| IpamError::Corrupt {
                    path: path.to_path_buf(),
                    msg: e.to_string(),
                })?;
                for a in d.allocations {
                    if cidr.contains(a.ip) {
                        me.by_ip.insert(a.ip, a);
                    }
                }
                me.last = d.last.filter(|ip| cidr.contains(*ip));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(path)(e)),
        }
        Ok(me)
    }

    /// The address of (container, interface), if allocated.
    pub fn get(&self, container_id: &str, ifname: &str) -> Option<Ipv4Addr> {
        self.by_ip
            .values()
            .find(|a| a.container_id == container_id && a.ifname == ifname)
            .map(|a| a.ip)
    }

    /// The CIDR allocations come from.
    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// Addresses never to hand out besides the network, gateway and broadcast ones (pods this
    /// node has that were wired by other means).
    pub fn set_reserved(&mut self, ips: BTreeSet<Ipv4Addr>) {
        self.reserved = ips;
    }

    /// Records (persisted before this returns) how (container, interface) is wired; None
    /// clears it. False when there is no such allocation.
    pub fn set_wiring(
        &mut self,
        container_id: &str,
        ifname: &str,
        wiring: Option<Wiring>,
    ) -> Result<bool, IpamError> {
        let Some(ip) = self.get(container_id, ifname) else {
            return Ok(false);
        };
        let Some(a) = self.by_ip.get_mut(&ip) else {
            return Ok(false);
        };
        let old = std::mem::replace(&mut a.wiring, wiring);
        if let Err(e) = self.save() {
            if let Some(a) = self.by_ip.get_mut(&ip) {
                a.wiring = old;
            }
            return Err(e);
        }
        Ok(true)
    }

    /// The allocation of (container, interface).
    pub fn allocation(&self, container_id: &str, ifname: &str) -> Option<&Allocation> {
        self.by_ip
            .values()
            .find(|a| a.container_id == container_id && a.ifname == ifname)
    }

    /// Every allocation.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.by_ip.values()
    }

    /// The address for (container, interface): the one it has, or the next free one (persisted
    /// before this returns).
    pub fn allocate(
        &mut self,
        container_id: &str,
        ifname: &str,
        pod: Option<&str>,
    ) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = self.get(container_id, ifname) {
            return Ok(ip);
        }
        let base = self.cidr.addr_u32();
        let size = 1u64 << (32 - self.cidr.prefix_len());
        // Usable: base+2 (after the gateway) .. base+size-2 (before broadcast).
        let (first, last) = (base as u64 + 2, base as u64 + size - 2);
        let start = self
            .last
            .map_or(first, |l| u32::from(l) as u64 + 1)
            .clamp(first, last + 1);
        let n = last - first + 1;
        let ip = (0..n)
            .map(|i| {
                let x = start + i;
                let x = if x > last { x - n } else { x };
                Ipv4Addr::from(x as u32)
            })
            .find(|ip| !self.by_ip.contains_key(ip) && !self.reserved.contains(ip))
            .ok_or(IpamError::Exhausted(self.cidr))?;
        self.by_ip.insert(
            ip,
            Allocation {
                ip,
                container_id: container_id.to_string(),
                ifname: ifname.to_string(),
                pod: pod.map(str::to_string),
                wiring: None,
            },
        );
        let prev = self.last.replace(ip);
        if let Err(e) = self.save() {
            self.by_ip.remove(&ip);
            self.last = prev;
            return Err(e);
        }
        Ok(ip)
    }

    /// Releases (container, interface); `Ok(None)` when it had nothing (DEL is idempotent).
    pub fn release(
        &mut self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Ipv4Addr>, IpamError> {
        let Some(ip) = self.get(container_id, ifname) else {
            return Ok(None);
        };
        let a = self.by_ip.remove(&ip);
        if let Err(e) = self.save() {
            if let Some(a) = a {
                self.by_ip.insert(ip, a);
            }
            return Err(e);
        }
        Ok(Some(ip))
    }

    /// Releases every allocation whose (container, interface) is not in `valid` (CNI GC's
    /// `cni.dev/valid-attachments`); returns what was released.
    pub fn gc(&mut self, valid: &BTreeSet<(String, String)>) -> Result<Vec<Allocation>, IpamError> {
        let gone: Vec<Ipv4Addr> = self
            .by_ip
            .values()
            .filter(|a| !valid.contains(&(a.container_id.clone(), a.ifname.clone())))
            .map(|a| a.ip)
            .collect();
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        let removed: Vec<Allocation> = gone.iter().filter_map(|ip| self.by_ip.remove(ip)).collect();
        if let Err(e) = self.save() {
            for a in removed {
                self.by_ip.insert(a.ip, a);
            }
            return Err(e);
        }
        Ok(removed)
    }

    fn save(&self) -> Result<(), IpamError> {
        let d = OnDisk {
            cidr: self.cidr.to_string(),
            last: self.last,
            allocations: self.by_ip.values().cloned().collect(),
        };
        let body = serde_json::to_vec_pretty(&d).map_err(|e| IpamError::Corrupt {
            path: self.path.clone(),
            msg: e.to_string(),
        })?;
        crate::files::write_atomic(&self.path, &body).map_err(io(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xdpnet-ipam-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("ipam.json")
    }

    #[test]
    fn allocates_idempotently_skips_reserved_and_survives_a_restart() {
        let p = tmp("basic");
        let cidr: Ipv4Net = "10.244.1.0/29".parse().expect("cidr");
        let mut a = Ipam::open(cidr, &p).expect("open");
        let ip1 = a.allocate("c1", "eth0", Some("demo/a")).expect("ip");
        assert_eq!(ip1, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(a.allocate("c1", "eth0", None).expect("same"), ip1);
        let ip2 = a.allocate("c2", "eth0", None).expect("ip");
        assert_eq!(ip2, Ipv4Addr::new(10, 244, 1, 3));
        // Reopened (as after a crash or restart): same table.
        let mut b = Ipam::open(cidr, &p).expect("reopen");
        assert_eq!(b.get("c1", "eth0"), Some(ip1));
        assert_eq!(b.allocations().count(), 2);
        // Round-robin: a released address is reused last.
        assert_eq!(b.release("c1", "eth0").expect("release"), Some(ip1));
        assert_eq!(b.release("c1", "eth0").expect("idempotent"), None);
        let ip3 = b.allocate("c3", "eth0", None).expect("ip");
        assert_eq!(ip3, Ipv4Addr::new(10, 244, 1, 4));
        // .2 .. .6 usable (/29: .0 network, .1 gateway, .7 broadcast): fill it.
        b.allocate("c4", "eth0", None).expect("ip");
        b.allocate("c5", "eth0", None).expect("ip");
        assert_eq!(
            b.allocate("c6", "eth0", None)
                .expect("wraps to the released"),
            ip1
        );
        assert!(matches!(
            b.allocate("c7", "eth0", None),
            Err(IpamError::Exhausted(_))
        ));
        let ips: BTreeSet<Ipv4Addr> = b.allocations().map(|a| a.ip).collect();
        assert_eq!(ips.len(), 5);
        // Wiring is kept with the allocation across a reopen.
        let w = Wiring {
            host_if: "xnc0123456789ab".into(),
            mac: "02:00:00:00:00:01".into(),
            netns: "/run/netns/x".into(),
            tap: true,
        };
        assert!(b.set_wiring("c3", "eth0", Some(w.clone())).expect("wire"));
        assert!(!b.set_wiring("nope", "eth0", None).expect("none"));
        let c = Ipam::open(cidr, &p).expect("reopen");
        assert_eq!(
            c.allocation("c3", "eth0").and_then(|a| a.wiring.clone()),
            Some(w)
        );
        assert!(
            !ips.contains(&Ipv4Addr::new(10, 244, 1, 1))
                && !ips.contains(&Ipv4Addr::new(10, 244, 1, 7))
        );
        let _ = std::fs::remove_dir_all(p.parent().expect("dir"));
    }

    #[test]
    fn reserved_addresses_are_skipped() {
        let p = tmp("reserved");
        let cidr: Ipv4Net = "10.244.3.0/29".parse().expect("cidr");
        let mut a = Ipam::open(cidr, &p).expect("open");
        a.set_reserved([Ipv4Addr::new(10, 244, 3, 2), Ipv4Addr::new(10, 244, 3, 3)].into());
        assert_eq!(
            a.allocate("c1", "eth0", None).expect("ip"),
            Ipv4Addr::new(10, 244, 3, 4)
        );
        let _ = std::fs::remove_dir_all(p.parent().expect("dir"));
    }

    #[test]
    fn gc_keeps_only_valid_attachments_and_bad_files_are_errors() {
        let p = tmp("gc");
        let cidr: Ipv4Net = "10.244.2.0/24".parse().expect("cidr");
        let mut a = Ipam::open(cidr, &p).expect("open");
        for c in ["a", "b", "c"] {
            a.allocate(c, "eth0", None).expect("ip");
        }
        let valid: BTreeSet<(String, String)> = [("b".to_string(), "eth0".to_string())].into();
        let gone = a.gc(&valid).expect("gc");
        assert_eq!(gone.len(), 2);
        assert_eq!(
            Ipam::open(cidr, &p).expect("reopen").allocations().count(),
            1
        );
        std::fs::write(&p, b"{ not json").expect("write");
        let e = Ipam::open(cidr, &p).expect_err("corrupt");
        assert!(e.to_string().contains("unreadable"), "{e}");
        assert!(matches!(
            Ipam::open("10.0.0.0/31".parse().expect("c"), &tmp("small")),
            Err(IpamError::TooSmall(_))
        ));
        // A node whose CIDR changed drops the old allocations.
        std::fs::remove_file(&p).expect("rm");
        let mut a = Ipam::open(cidr, &p).expect("open");
        a.allocate("x", "eth0", None).expect("ip");
        let other = Ipam::open("10.244.9.0/24".parse().expect("c"), &p).expect("open");
        assert_eq!(other.allocations().count(), 0);
        let _ = std::fs::remove_dir_all(p.parent().expect("dir"));
    }
}
