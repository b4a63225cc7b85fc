//! The commands: ADD (allocate, wire the veth and the pod side, attach), DEL, CHECK, GC.

use super::request::{Req, err, io_err, ipam_err};
use super::*;
use crate::ipam::Wiring;
use crate::podnet::{PodInterface, Rtnl, in_netns_file};
use std::os::fd::OwnedFd;
use xdpnet_dataplane::sys::tap;

impl CniService {
    pub(super) fn add(&self, r: &Req) -> Result<Outcome, CniError> {
        let _gc = self
            .gc_lock
            .read()
            .map_err(|_| err(code::IO, "internal", "lock poisoned"))?;
        let _k = self.lock_key(r)?;
        let mtu = self.mtu(r)?;
        let netns = r
            .netns
            .clone()
            .ok_or_else(|| err(code::INVALID_ENV, "invalid request", "netns is required"))?;
        let ns = r.netns_file(&netns)?;
        let (ip, had) = {
            let mut ipam = self
                .ipam
                .lock()
                .map_err(|_| err(code::IO, "internal", "lock poisoned"))?;
            let had = ipam.allocation(&r.container_id, &r.ifname).cloned();
            // Pods the control loop wired by other means keep their addresses.
            if let Ok(reserved) = self.view.reserved.lock() {
                ipam.set_reserved(reserved.clone());
            }
            let ip = ipam
                .allocate(&r.container_id, &r.ifname, r.pod.as_deref())
                .map_err(ipam_err)?;
            (ip, had)
        };
        let host_if = host_ifname(&r.container_id, &r.ifname);
        let prefix = self.prefix_len();
        let mut rt = Rtnl::open().map_err(io_err("rtnetlink"))?;
        // A repeated ADD of a complete wiring answers the same; anything half-done is redone.
        let old = had.as_ref().and_then(|a| a.wiring.clone());
        let old_tap = old.as_ref().filter(|w| w.tap).map(|w| TapPlace {
            netns: w.netns.clone().into(),
            ifname: r.ifname.clone(),
        });
        let existing = match &old_tap {
            Some(t) => tap_present(t),
            None => rt.link(&host_if).map_err(io_err("rtnetlink"))?.is_some(),
        };
        let reuse = match &old {
            Some(w) if existing && w.netns == netns => self
                .pod_side_matches(&ns, &r.ifname, ip, prefix)
                .ok()
                .flatten(),
            _ => None,
        };
        let result = match reuse {
            Some(side) => {
                let at = (&host_if[..], &netns[..], old_tap.is_some());
                self.finish(r, &mut rt, at, ip, side.mac, mtu, false, None)
            }
            None => {
                if existing {
                    // The old interface may be attached: detach before it goes.
                    self.ask_loop(PodOp::Detach(host_if.clone()))
                        .map_err(|e| err(code::TRY_AGAIN_LATER, "detaching", e))?;
                    match &old_tap {
                        Some(t) => delete_tap(&t.netns, &t.ifname),
                        None => rt.delete_link(&host_if).map(|_| ()),
                    }
                    .map_err(io_err("deleting a stale pod interface"))?;
                }
                match self.settings.pod_interface {
                    PodInterface::Veth => {
                        self.wire(r, &mut rt, &host_if, (&netns, &ns), ip, prefix, mtu)
                    }
                    PodInterface::Tap => {
                        self.wire_tap(r, &mut rt, &host_if, (&netns, &ns), ip, prefix, mtu)
                    }
                }
            }
        };
        if result.is_err() && had.is_none() {
            if let Ok(mut i) = self.ipam.lock() {
                let _ = i.release(&r.container_id, &r.ifname);
            }
        }
        result
    }

    /// Creates the veth and sets the pod side up, then [`Self::finish`]; undoes the veth on
    /// failure.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn wire(
        &self,
        r: &Req,
        rt: &mut Rtnl,
        host_if: &str,
        (netns, ns): (&str, &std::fs::File),
        ip: Ipv4Addr,
        prefix: u8,
        mtu: u32,
    ) -> Result<Outcome, CniError> {
        rt.create_veth(host_if, &r.ifname, ns, mtu).map_err(|e| {
            if e.raw_os_error() == Some(libc::EEXIST) {
                err(
                    code::IO,
                    "interface already exists",
                    format!(
                        "{} in {netns} or {host_if} here already exists: {e}",
                        r.ifname
                    ),
                )
            } else {
                err(code::IO, "creating the veth pair", e)
            }
        })?;
        let undo = |rt: &mut Rtnl| {
            let _ = rt.delete_link(host_if);
        };
        let (gw, gw_mac) = (self.settings.gateway, self.settings.gateway_mac);
        let ifname = r.ifname.clone();
        let side = in_netns_file(ns, move || {
            let mut p = Rtnl::open()?;
            set_up_pod_side(&mut p, &ifname, (ip, prefix), (gw, gw_mac), |p, index| {
                netdev::set_tx_checksum(&ifname, false)?;
                p.set_root_fifo(index)
            })
        });
        let side = match side {
            Ok(s) => s,
            Err(e) => {
                undo(rt);
                return Err(err(code::IO, "setting up the pod's interface", e));
            }
        };
        let at = (host_if, netns, false);
        self.finish_or_undo(r, rt, at, ip, side.mac, mtu, None, undo)
    }

    /// [`Self::finish`] for a new wiring; on failure detaches, runs `undo` (deletes what was
    /// made) and forgets the wiring.
    #[allow(clippy::too_many_arguments)]
    fn finish_or_undo(
        &self,
        r: &Req,
        rt: &mut Rtnl,
        at: (&str, &str, bool),
        ip: Ipv4Addr,
        mac: MacAddr,
        mtu: u32,
        tap_fd: Option<OwnedFd>,
        undo: impl FnOnce(&mut Rtnl),
    ) -> Result<Outcome, CniError> {
        let host_if = at.0;
        self.finish(r, rt, at, ip, mac, mtu, true, tap_fd)
            .inspect_err(|_| {
                let _ = self.ask_loop(PodOp::Detach(host_if.to_string()));
                undo(rt);
                if let Ok(mut i) = self.ipam.lock() {
                    let _ = i.set_wiring(&r.container_id, &r.ifname, None);
                }
            })
    }

    /// Creates the pod's persistent tap in its namespace and sets it up (offloads kept: the
    /// dataplane reads whole segments with partial checksums), then [`Self::finish`] with the
    /// tap's descriptor; deletes the tap on failure.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn wire_tap(
        &self,
        r: &Req,
        rt: &mut Rtnl,
        host_if: &str,
        (netns, ns): (&str, &std::fs::File),
        ip: Ipv4Addr,
        prefix: u8,
        mtu: u32,
    ) -> Result<Outcome, CniError> {
        let (gw, gw_mac) = (self.settings.gateway, self.settings.gateway_mac);
        let ifname = r.ifname.clone();
        let made = in_netns_file(ns, move || {
            let mut p = Rtnl::open()?;
            if p.link(&ifname)?.is_some() {
                return Err(std::io::Error::from_raw_os_error(libc::EEXIST));
            }
            let fd = tap::open_persistent(&ifname, false)?;
            let side = set_up_pod_side(&mut p, &ifname, (ip, prefix), (gw, gw_mac), |p, index| {
                p.set_mtu(index, mtu)
            });
            match side {
                Ok(side) => Ok((side, fd)),
                Err(e) => {
                    drop(fd);
                    let _ = p.delete_link(&ifname);
                    Err(e)
                }
            }
        });
        let (side, fd) = made.map_err(|e| {
            if e.raw_os_error() == Some(libc::EEXIST) {
                err(
                    code::IO,
                    "interface already exists",
                    format!("{} in {netns} already exists", r.ifname),
                )
            } else {
                err(code::IO, "setting up the pod's tap", e)
            }
        })?;
        let at = (host_if, netns, true);
        self.finish_or_undo(r, rt, at, ip, side.mac, mtu, Some(fd), |_| {
            let _ = delete_tap(std::path::Path::new(netns), &r.ifname);
        })
    }

    /// Host end up (a veth), wiring persisted, attached and published. `(host_if, netns,
    /// tap)`: the interface's key, the pod's namespace, whether it is a tap (then `tap_fd` is
    /// its descriptor, or None for the loop to open).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish(
        &self,
        r: &Req,
        rt: &mut Rtnl,
        (host_if, netns, is_tap): (&str, &str, bool),
        ip: Ipv4Addr,
        mac: MacAddr,
        mtu: u32,
        record: bool,
        tap_fd: Option<OwnedFd>,
    ) -> Result<Outcome, CniError> {
        let host = if is_tap {
            None
        } else {
            let host = rt
                .link(host_if)
                .map_err(io_err("rtnetlink"))?
                .ok_or_else(|| err(code::IO, "host interface vanished", host_if))?;
            if !host.up {
                rt.set_up(host.index)
                    .map_err(io_err("setting the host interface up"))?;
            }
            Some(host)
        };
        if record {
            self.ipam
                .lock()
                .map_err(|_| err(code::IO, "internal", "lock poisoned"))?
                .set_wiring(
                    &r.container_id,
                    &r.ifname,
                    Some(Wiring {
                        host_if: host_if.to_string(),
                        mac: mac.to_string(),
                        netns: netns.to_string(),
                        tap: is_tap,
                    }),
                )
                .map_err(ipam_err)?;
        }
        let tap = is_tap.then(|| TapPlace {
            netns: netns.into(),
            ifname: r.ifname.clone(),
        });
        let pod = CniPod {
            host_if: host_if.to_string(),
            ip,
            mac,
            key: r.key(),
            tap,
        };
        self.ask_loop(PodOp::Attach(pod, tap_fd))
            .map_err(|e| err(code::IO, "attaching the pod to the dataplane", e))?;
        Ok(Outcome {
            interface: r.ifname.clone(),
            mac: mac.to_string(),
            sandbox: netns.to_string(),
            address: format!("{ip}/{}", self.prefix_len()),
            gateway: self.settings.gateway.to_string(),
            mtu,
            host_interface: host.as_ref().map(|_| host_if.to_string()),
            host_mac: host.and_then(|h| h.mac).map(|m| m.to_string()),
        })
    }

    /// Inside the pod: the interface with `ip/prefix` and the default route via the gateway.
    /// Ok(None) when something differs (the reason is in the Err of [`Self::pod_side`]).
    pub(super) fn pod_side_matches(
        &self,
        netns: &std::fs::File,
        ifname: &str,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> std::io::Result<Option<PodSide>> {
        Ok(self.pod_side(netns, ifname, ip, prefix)?.ok())
    }

    pub(super) fn pod_side(
        &self,
        netns: &std::fs::File,
        ifname: &str,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> std::io::Result<Result<PodSide, String>> {
        let gw = self.settings.gateway;
        let ifname = ifname.to_string();
        in_netns_file(netns, move || {
            let mut p = Rtnl::open()?;
            let Some(l) = p.link(&ifname)? else {
                return Ok(Err(format!("{ifname} does not exist")));
            };
            if !l.up {
                return Ok(Err(format!("{ifname} is down")));
            }
            let addrs = p.addresses(l.index)?;
            if !addrs.contains(&(ip, prefix)) {
                return Ok(Err(format!("{ifname} has {addrs:?}, not {ip}/{prefix}")));
            }
            match p.default_gateway()? {
                Some(g) if g == gw => {}
                g => return Ok(Err(format!("default route via {g:?}, not {gw}"))),
            }
            Ok(l.mac
                .map(|mac| PodSide { mac })
                .ok_or_else(|| format!("{ifname} has no MAC")))
        })
    }

    /// Detaches, deletes the host end (or the tap in the pod's namespace), releases the
    /// address. Idempotent.
    pub(super) fn remove(&self, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let host_if = host_ifname(container_id, ifname);
        let wiring = self
            .ipam
            .lock()
            .map_err(|_| err(code::IO, "internal", "lock poisoned"))?
            .allocation(container_id, ifname)
            .and_then(|a| a.wiring.clone());
        self.ask_loop(PodOp::Detach(host_if.clone()))
            .map_err(|e| err(code::TRY_AGAIN_LATER, "detaching from the dataplane", e))?;
        match wiring.filter(|w| w.tap) {
            Some(w) => delete_tap(std::path::Path::new(&w.netns), ifname)
                .map_err(io_err("deleting the pod's tap"))?,
            None => {
                Rtnl::open()
                    .and_then(|mut rt| rt.delete_link(&host_if))
                    .map_err(io_err("deleting the host interface"))?;
            }
        }
        self.ipam
            .lock()
            .map_err(|_| err(code::IO, "internal", "lock poisoned"))?
            .release(container_id, ifname)
            .map_err(ipam_err)?;
        Ok(())
    }

    pub(super) fn del(&self, r: &Req) -> Result<(), CniError> {
        let _gc = self
            .gc_lock
            .read()
            .map_err(|_| err(code::IO, "internal", "lock poisoned"))?;
        let _k = self.lock_key(r)?;
        self.remove(&r.container_id, &r.ifname)
    }

    pub(super) fn check(&self, r: &Req) -> Result<(), CniError> {
        let _gc = self
            .gc_lock
            .read()
            .map_err(|_| err(code::IO, "internal", "lock poisoned"))?;
        let _k = self.lock_key(r)?;
        let fail = |m: String| err(CHECK_FAILED, "the pod's network is not as set up", m);
        let a = self
            .ipam
            .lock()
            .map_err(|_| err(code::IO, "internal", "lock poisoned"))?
            .allocation(&r.container_id, &r.ifname)
            .cloned()
            .ok_or_else(|| {
                err(
                    code::UNKNOWN_CONTAINER,
                    "unknown container",
                    format!("no address for {} {}", r.container_id, r.ifname),
                )
            })?;
        let prefix = self.prefix_len();
        // The runtime's prevResult must carry our address.
        if let Some(ips) = r
            .config
            .pointer("/prevResult/ips")
            .and_then(Value::as_array)
        {
            let want = format!("{}/{prefix}", a.ip);
            if !ips.iter().any(|i| i["address"].as_str() == Some(&want)) {
                return Err(fail(format!("prevResult does not list {want}")));
            }
        }
        let w = a
            .wiring
            .ok_or_else(|| fail("the pod was never wired".into()))?;
        let mut rt = Rtnl::open().map_err(io_err("rtnetlink"))?;
        // A tap has no host end: the pod side below covers it.
        match rt.link(&w.host_if).map_err(io_err("rtnetlink"))? {
            _ if w.tap => {}
            Some(l) if l.up => {}
            Some(_) => return Err(fail(format!("{} is down", w.host_if))),
            None => return Err(fail(format!("{} does not exist", w.host_if))),
        }
        self.ask_loop(PodOp::Check(w.host_if.clone()))
            .map_err(|e| fail(format!("{}: {e}", w.host_if)))?;
        let netns = r.netns.clone().unwrap_or(w.netns);
        let ns = r.netns_file(&netns)?;
        self.pod_side(&ns, &r.ifname, a.ip, prefix)
            .map_err(|e| fail(format!("{netns}: {e}")))?
            .map_err(fail)?;
        Ok(())
    }

    pub(super) fn gc(&self, r: &Req) -> Result<(), CniError> {
        let _gc = self
            .gc_lock
            .write()
            .map_err(|_| err(code::IO, "internal", "lock poisoned"))?;
        let list = r
            .config
            .get("cni.dev/valid-attachments")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                err(
                    code::INVALID_CONFIG,
                    "invalid network configuration",
                    "GC needs cni.dev/valid-attachments (a list, possibly empty)",
                )
            })?;
        let mut valid = BTreeSet::new();
        for a in list {
            match (a["containerID"].as_str(), a["ifname"].as_str()) {
                (Some(c), Some(i)) => {
                    valid.insert((c.to_string(), i.to_string()));
                }
                _ => {
                    return Err(err(
                        code::INVALID_CONFIG,
                        "invalid network configuration",
                        format!("valid attachment {a} needs containerID and ifname"),
                    ));
                }
            }
        }
        let stale: Vec<(String, String)> = self
            .ipam
            .lock()
            .map_err(|_| err(code::IO, "internal", "lock poisoned"))?
            .allocations()
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .filter(|k| !valid.contains(k))
            .collect();
        for (c, i) in &stale {
            self.remove(c, i)?;
            self.counters.gc_removed.fetch_add(1, Ordering::Relaxed);
        }
        // Host ends of ours no allocation owns (a crash between creating and recording).
        let owned: BTreeSet<String> = valid.iter().map(|(c, i)| host_ifname(c, i)).collect();
        let mut rt = Rtnl::open().map_err(io_err("rtnetlink"))?;
        for l in rt.links().map_err(io_err("rtnetlink"))? {
            if l.name.starts_with(HOST_PREFIX) && l.name.len() == 15 && !owned.contains(&l.name) {
                self.ask_loop(PodOp::Detach(l.name.clone()))
                    .map_err(|e| err(code::TRY_AGAIN_LATER, "detaching", e))?;
                rt.delete_link(&l.name)
                    .map_err(io_err("deleting a stray host interface"))?;
                self.counters.gc_removed.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// Inside the pod (the calling thread's namespace): `prepare` on link `ifname` (a veth's
/// offload and queue, a tap's MTU), then its address, link up, the gateway's permanent
/// neighbour entry and the default route via it.
fn set_up_pod_side(
    p: &mut Rtnl,
    ifname: &str,
    (ip, prefix): (Ipv4Addr, u8),
    (gw, gw_mac): (Ipv4Addr, MacAddr),
    prepare: impl FnOnce(&mut Rtnl, u32) -> std::io::Result<()>,
) -> std::io::Result<PodSide> {
    let l = p
        .link(ifname)?
        .ok_or_else(|| std::io::Error::other(format!("{ifname} vanished")))?;
    prepare(p, l.index)?;
    p.add_address(l.index, ip, prefix)?;
    p.set_up(l.index)?;
    p.set_permanent_neighbour(l.index, gw, gw_mac)?;
    p.set_default_route(gw, l.index)?;
    let mac = l
        .mac
        .ok_or_else(|| std::io::Error::other(format!("{ifname} has no MAC")))?;
    Ok(PodSide { mac })
}
