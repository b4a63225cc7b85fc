//! xdpnetd's CNI endpoint: the other side of the `xdpnet` plugin binary.
//!
//! One request per connection on a root-only unix socket: `{command, containerId, netns,
//! ifname, args, config}` in, `{"result": Outcome}` or `{"error": {code, msg, details}}` out.
//!
//! - **ADD**: an address from [`Ipam`] (persisted before anything is wired), a veth pair over
//!   rtnetlink — host end `xnc<12 hex of container+ifname>` here, pod end `CNI_IFNAME` created
//!   straight in the pod's namespace — both with the pod MTU (underlay MTU - 50); in the pod: the
//!   address, link up, a permanent neighbour entry for the gateway (the dataplane answers for
//!   its MAC, there is no ARP responder), the default route via the gateway, TX checksum offload
//!   off (a veth would hand the dataplane partial checksums). The wiring is persisted with the
//!   allocation, then the control loop attaches the host end to a worker and publishes the
//!   endpoint; the answer goes out only after that publish, so the pod is reachable at once.
//!   A repeated ADD of a wired container answers the same result; a half-done one is redone.
//!   Any failure undoes what this ADD made.
//! - **DEL**: detach, delete the host end (the kernel takes the pod end with it), release the
//!   address. Succeeds when any or all of it is already gone.
//! - **CHECK**: allocation, host end, attachment, and inside the pod the interface, address and
//!   default route are as ADD left them (and as the runtime's prevResult says).
//! - **GC**: everything not in `cni.dev/valid-attachments` is DELeted, and so are host ends of
//!   ours that no allocation owns.
//! - **STATUS**: ready when the dataplane forwards with a table built from cluster state.
//!
//! Many requests run at once (one thread each); requests for the same (container, interface)
//! are serialised, GC excludes everything else.

use crate::ipam::{Ipam, IpamError, Wiring};
use crate::podnet::{Rtnl, in_netns_file, is_namespace};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;
use xdpnet_cni::{CniError, Outcome, code};
use xdpnet_dataplane::sys::xsk;
use xdpnet_dataplane::wire::MacAddr;

/// Prefix of the host ends of the veths this endpoint creates.
pub const HOST_PREFIX: &str = "xnc";
/// Plugin-specific error code: the pod's network is not as ADD left it (CHECK).
pub const CHECK_FAILED: u32 = 100;
/// Plugin-specific error code: no address left in the node's pod CIDR.
pub const NO_ADDRESS: u32 = 101;
/// Requests served at once; more wait for the runtime's retry (code 11).
const MAX_INFLIGHT: usize = 512;

/// The host end's name for (container, interface): `xnc` + 12 hex digits of a hash (FNV-1a
/// 64), 15 characters, stable across restarts.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id
        .bytes()
        .chain(std::iter::once(0))
        .chain(ifname.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{HOST_PREFIX}{:012x}", h >> 16)
}

/// A pod as the control loop attaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniPod {
    /// The veth's host end.
    pub host_if: String,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The pod interface's MAC.
    pub mac: MacAddr,
    /// `namespace/name` or the container ID.
    pub key: String,
}

/// What the endpoint asks of the control loop.
#[derive(Debug)]
pub enum PodOp {
    /// Attach (or keep attached) and publish; answered after the publish.
    Attach(CniPod),
    /// Detach and publish; answered once the port is closed.
    Detach(String),
    /// Is this host end attached?
    Check(String),
}

/// A request to the control loop with its answer channel.
#[derive(Debug)]
pub struct PodRequest {
    /// What to do.
    pub op: PodOp,
    /// Where the loop answers (Err: why not).
    pub reply: mpsc::SyncSender<Result<(), String>>,
}

/// Fixed settings of this node's pods.
#[derive(Debug, Clone)]
pub struct CniSettings {
    /// The pods' gateway (first address of the pod CIDR).
    pub gateway: Ipv4Addr,
    /// The MAC the dataplane answers with for the gateway.
    pub gateway_mac: MacAddr,
    /// The largest pod MTU (underlay MTU - 50).
    pub max_mtu: u32,
}

/// Requests served, by outcome (for metrics).
#[derive(Debug, Default)]
pub struct CniCounters {
    /// ADDs that succeeded.
    pub add_ok: AtomicU64,
    /// DELs that succeeded.
    pub del_ok: AtomicU64,
    /// CHECKs that succeeded.
    pub check_ok: AtomicU64,
    /// GCs that succeeded.
    pub gc_ok: AtomicU64,
    /// Requests answered with an error.
    pub errors: AtomicU64,
    /// Attachments removed by GC.
    pub gc_removed: AtomicU64,
}

/// The endpoint's state.
pub struct CniService {
    settings: CniSettings,
    ipam: Mutex<Ipam>,
    gc_lock: RwLock<()>,
    busy: Mutex<BTreeSet<(String, String)>>,
    idle: Condvar,
    to_loop: Mutex<mpsc::Sender<PodRequest>>,
    ready: Box<dyn Fn() -> bool + Send + Sync>,
    /// Counters.
    pub counters: CniCounters,
}

/// A parsed request.
impl std::fmt::Debug for CniService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CniService")
            .field("settings", &self.settings)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Req {
    command: String,
    container_id: String,
    netns: Option<String>,
    ifname: String,
    pod: Option<String>,
    config: Value,
    /// The pod's namespace as the plugin passed it (SCM_RIGHTS).
    netns_fd: Option<std::fs::File>,
}

fn err(code: u32, msg: &str, details: impl std::fmt::Display) -> CniError {
    CniError::new(code, msg, details.to_string())
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> CniError + '_ {
    move |e| err(code::IO, what, e)
}

fn ipam_err(e: IpamError) -> CniError {
    match e {
        IpamError::Exhausted(_) => err(NO_ADDRESS, "no pod address left on this node", e),
        e => err(code::IO, "IPAM", e),
    }
}

impl Req {
    fn parse(v: &Value) -> Result<Self, CniError> {
        let bad = |m: &str| err(code::INVALID_ENV, "invalid request", m);
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let args = v.get("args");
        let arg = |k: &str| args.and_then(|a| a.get(k)).and_then(Value::as_str);
        let pod = match (arg("K8S_POD_NAMESPACE"), arg("K8S_POD_NAME")) {
            (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
            _ => None,
        };
        let command = s("command").ok_or_else(|| bad("command is missing"))?;
        let needs_container = matches!(command.as_str(), "ADD" | "DEL" | "CHECK");
        let container_id = s("containerId").unwrap_or_default();
        let ifname = s("ifname").unwrap_or_default();
        if needs_container && (container_id.is_empty() || ifname.is_empty()) {
            return Err(bad("containerId and ifname are required"));
        }
        Ok(Self {
            command,
            container_id,
            netns: s("netns").filter(|n| !n.is_empty()),
            ifname,
            pod,
            config: v.get("config").cloned().unwrap_or(Value::Null),
            netns_fd: None,
        })
    }

    /// The pod's network namespace: the descriptor the plugin passed, else the path opened
    /// here; either must be a namespace.
    fn netns_file(&self, path: &str) -> Result<std::fs::File, CniError> {
        let f = match &self.netns_fd {
            Some(f) => f
                .try_clone()
                .map_err(io_err("the passed netns descriptor"))?,
            None => std::fs::File::open(path).map_err(|e| {
                err(
                    code::UNKNOWN_CONTAINER,
                    "cannot open the container's network namespace",
                    format!("{path}: {e}"),
                )
            })?,
        };
        if !is_namespace(&f) {
            return Err(err(
                code::INVALID_ENV,
                "CNI_NETNS is not a network namespace",
                format!("{path} is a plain file here (a mount not visible to xdpnetd?)"),
            ));
        }
        Ok(f)
    }

    fn key(&self) -> String {
        self.pod
            .clone()
            .unwrap_or_else(|| self.container_id.clone())
    }
}

/// Holds (container, interface) exclusively while alive.
struct KeyGuard<'a> {
    svc: &'a CniService,
    key: (String, String),
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut b) = self.svc.busy.lock() {
            b.remove(&self.key);
        }
        self.svc.idle.notify_all();
    }
}

/// What ADD finds inside the pod.
struct PodSide {
    mac: MacAddr,
}

impl CniService {
    /// The endpoint over `ipam`, asking the control loop through `to_loop`; `ready` is the
    /// daemon's readiness (a table from cluster state is live).
    pub fn new(
        settings: CniSettings,
        ipam: Ipam,
        to_loop: mpsc::Sender<PodRequest>,
        ready: Box<dyn Fn() -> bool + Send + Sync>,
    ) -> Self {
        Self {
            settings,
            ipam: Mutex::new(ipam),
            gc_lock: RwLock::new(()),
            busy: Mutex::new(BTreeSet::new()),
            idle: Condvar::new(),
            to_loop: Mutex::new(to_loop),
            ready,
            counters: CniCounters::default(),
        }
    }

    /// Addresses IPAM must not hand out (pods wired by other means).
    pub fn set_reserved(&self, ips: BTreeSet<Ipv4Addr>) {
        if let Ok(mut i) = self.ipam.lock() {
            i.set_reserved(ips);
        }
    }

    /// Pods IPAM knows as wired whose host end exists in this namespace (to reattach at
    /// start), and the allocations whose host end is gone (the runtime's DEL or GC will
    /// release them).
    pub fn existing(&self) -> std::io::Result<(Vec<CniPod>, Vec<String>)> {
        let mut rt = Rtnl::open()?;
        let links: BTreeSet<String> = rt.links()?.into_iter().map(|l| l.name).collect();
        let ipam = self
            .ipam
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        let (mut found, mut missing) = (Vec::new(), Vec::new());
        for a in ipam.allocations() {
            let key = a.pod.clone().unwrap_or_else(|| a.container_id.clone());
            match &a.wiring {
                Some(w) if links.contains(&w.host_if) => match w.mac.parse() {
                    Ok(mac) => found.push(CniPod {
                        host_if: w.host_if.clone(),
                        ip: a.ip,
                        mac,
                        key,
                    }),
                    Err(_) => missing.push(key),
                },
                _ => missing.push(key),
            }
        }
        Ok((found, missing))
    }

    fn lock_key(&self, r: &Req) -> Result<KeyGuard<'_>, CniError> {
        let key = (r.container_id.clone(), r.ifname.clone());
        let mut b = self
            .busy
            .lock()
            .map_err(|_| err(code::IO, "internal", "lock poisoned"))?;
        while b.contains(&key) {
            b = self
                .idle
                .wait(b)
                .map_err(|_| err(code::IO, "internal", "lock poisoned"))?;
        }
        b.insert(key.clone());
        Ok(KeyGuard { svc: self, key })
    }

    fn ask_loop(&self, op: PodOp) -> Result<(), String> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.to_loop
            .lock()
            .map_err(|_| "control loop gone".to_string())?
            .send(PodRequest { op, reply: tx })
            .map_err(|_| "the control loop is not running".to_string())?;
        rx.recv_timeout(Duration::from_secs(30))
            .map_err(|_| "the control loop did not answer within 30 s".to_string())?
    }

    /// Answers one request (the JSON the plugin reads); `netns` is the namespace descriptor
    /// the plugin passed with it, if any.
    pub fn handle(&self, v: &Value, netns: Option<std::fs::File>) -> Value {
        let mut r = match Req::parse(v) {
            Ok(r) => r,
            Err(e) => return self.error(e),
        };
        r.netns_fd = netns;
        let out = match r.command.as_str() {
            "ADD" => self.add(&r).map(|o| {
                self.counters.add_ok.fetch_add(1, Ordering::Relaxed);
                json!({ "result": o })
            }),
            "DEL" => self.del(&r).map(|()| {
                self.counters.del_ok.fetch_add(1, Ordering::Relaxed);
                json!({ "result": {} })
            }),
            "CHECK" => self.check(&r).map(|()| {
                self.counters.check_ok.fetch_add(1, Ordering::Relaxed);
                json!({ "result": {} })
            }),
            "GC" => self.gc(&r).map(|()| {
                self.counters.gc_ok.fetch_add(1, Ordering::Relaxed);
                json!({ "result": {} })
            }),
            "STATUS" => {
                if (self.ready)() {
                    Ok(json!({ "result": {} }))
                } else {
                    Err(err(
                        code::NOT_AVAILABLE,
                        "xdpnet is not ready",
                        "the dataplane has no table built from cluster state yet",
                    ))
                }
            }
            c => Err(err(
                code::INVALID_ENV,
                "invalid request",
                format!("unknown command {c:?}"),
            )),
        };
        out.unwrap_or_else(|e| self.error(e))
    }

    fn error(&self, e: CniError) -> Value {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        json!({"error": {"code": e.code, "msg": e.msg, "details": e.details}})
    }

    fn mtu(&self, r: &Req) -> Result<u32, CniError> {
        match r.config.get("mtu").and_then(Value::as_u64) {
            None => Ok(self.settings.max_mtu),
            Some(m) if m <= u64::from(self.settings.max_mtu) => Ok(m as u32),
            Some(m) => Err(err(
                code::INVALID_CONFIG,
                "invalid network configuration",
                format!(
                    "mtu {m} is larger than the underlay allows for VXLAN ({}: underlay MTU - 50)",
                    self.settings.max_mtu
                ),
            )),
        }
    }

    fn prefix_len(&self) -> u8 {
        self.ipam.lock().map_or(24, |i| i.cidr().prefix_len())
    }

    fn add(&self, r: &Req) -> Result<Outcome, CniError> {
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
            let ip = ipam
                .allocate(&r.container_id, &r.ifname, r.pod.as_deref())
                .map_err(ipam_err)?;
            (ip, had)
        };
        let host_if = host_ifname(&r.container_id, &r.ifname);
        let prefix = self.prefix_len();
        let mut rt = Rtnl::open().map_err(io_err("rtnetlink"))?;
        // A repeated ADD of a complete wiring answers the same; anything half-done is redone.
        let existing = rt.link(&host_if).map_err(io_err("rtnetlink"))?;
        let reuse = match (&existing, had.as_ref().and_then(|a| a.wiring.as_ref())) {
            (Some(_), Some(w)) if w.netns == netns => self
                .pod_side_matches(&ns, &r.ifname, ip, prefix)
                .ok()
                .flatten(),
            _ => None,
        };
        let result = match reuse {
            Some(side) => self.finish(r, &mut rt, &host_if, &netns, ip, side.mac, mtu, false),
            None => {
                if existing.is_some() {
                    // The old host end may be attached: detach before it goes.
                    self.ask_loop(PodOp::Detach(host_if.clone()))
                        .map_err(|e| err(code::TRY_AGAIN_LATER, "detaching", e))?;
                    rt.delete_link(&host_if)
                        .map_err(io_err("deleting a stale host interface"))?;
                }
                self.wire(r, &mut rt, &host_if, (&netns, &ns), ip, prefix, mtu)
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
    fn wire(
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
            let l = p
                .link(&ifname)?
                .ok_or_else(|| std::io::Error::other(format!("{ifname} vanished")))?;
            xsk::set_tx_checksum(&ifname, false)?;
            p.add_address(l.index, ip, prefix)?;
            p.set_up(l.index)?;
            p.set_permanent_neighbour(l.index, gw, gw_mac)?;
            p.set_default_route(gw, l.index)?;
            let mac = l
                .mac
                .ok_or_else(|| std::io::Error::other(format!("{ifname} has no MAC")))?;
            Ok(PodSide { mac })
        });
        let side = match side {
            Ok(s) => s,
            Err(e) => {
                undo(rt);
                return Err(err(code::IO, "setting up the pod's interface", e));
            }
        };
        match self.finish(r, rt, host_if, netns, ip, side.mac, mtu, true) {
            Ok(o) => Ok(o),
            Err(e) => {
                let _ = self.ask_loop(PodOp::Detach(host_if.to_string()));
                undo(rt);
                if let Ok(mut i) = self.ipam.lock() {
                    let _ = i.set_wiring(&r.container_id, &r.ifname, None);
                }
                Err(e)
            }
        }
    }

    /// Host end up, wiring persisted, attached and published.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        r: &Req,
        rt: &mut Rtnl,
        host_if: &str,
        netns: &str,
        ip: Ipv4Addr,
        mac: MacAddr,
        mtu: u32,
        record: bool,
    ) -> Result<Outcome, CniError> {
        let host = rt
            .link(host_if)
            .map_err(io_err("rtnetlink"))?
            .ok_or_else(|| err(code::IO, "host interface vanished", host_if))?;
        if !host.up {
            rt.set_up(host.index)
                .map_err(io_err("setting the host interface up"))?;
        }
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
                    }),
                )
                .map_err(ipam_err)?;
        }
        self.ask_loop(PodOp::Attach(CniPod {
            host_if: host_if.to_string(),
            ip,
            mac,
            key: r.key(),
        }))
        .map_err(|e| err(code::IO, "attaching the pod to the dataplane", e))?;
        Ok(Outcome {
            interface: r.ifname.clone(),
            mac: mac.to_string(),
            sandbox: netns.to_string(),
            address: format!("{ip}/{}", self.prefix_len()),
            gateway: self.settings.gateway.to_string(),
            mtu,
            host_interface: Some(host_if.to_string()),
            host_mac: host.mac.map(|m| m.to_string()),
        })
    }

    /// Inside the pod: the interface with `ip/prefix` and the default route via the gateway.
    /// Ok(None) when something differs (the reason is in the Err of [`Self::pod_side`]).
    fn pod_side_matches(
        &self,
        netns: &std::fs::File,
        ifname: &str,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> std::io::Result<Option<PodSide>> {
        Ok(self.pod_side(netns, ifname, ip, prefix)?.ok())
    }

    fn pod_side(
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

    /// Detaches, deletes the host end, releases the address. Idempotent.
    fn remove(&self, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let host_if = host_ifname(container_id, ifname);
        self.ask_loop(PodOp::Detach(host_if.clone()))
            .map_err(|e| err(code::TRY_AGAIN_LATER, "detaching from the dataplane", e))?;
        Rtnl::open()
            .and_then(|mut rt| rt.delete_link(&host_if))
            .map_err(io_err("deleting the host interface"))?;
        self.ipam
            .lock()
            .map_err(|_| err(code::IO, "internal", "lock poisoned"))?
            .release(container_id, ifname)
            .map_err(ipam_err)?;
        Ok(())
    }

    fn del(&self, r: &Req) -> Result<(), CniError> {
        let _gc = self
            .gc_lock
            .read()
            .map_err(|_| err(code::IO, "internal", "lock poisoned"))?;
        let _k = self.lock_key(r)?;
        self.remove(&r.container_id, &r.ifname)
    }

    fn check(&self, r: &Req) -> Result<(), CniError> {
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
        match rt.link(&w.host_if).map_err(io_err("rtnetlink"))? {
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

    fn gc(&self, r: &Req) -> Result<(), CniError> {
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

/// The endpoint's socket server; stops accepting when dropped.
#[derive(Debug)]
pub struct CniServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for CniServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves `svc` on a root-only unix socket at `path`, one thread per request.
pub fn serve(path: &Path, svc: Arc<CniService>) -> std::io::Result<CniServer> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let inflight = Arc::new(AtomicUsize::new(0));
    let thread = std::thread::Builder::new()
        .name("xdpnet-cni".into())
        .spawn(move || {
            for c in l.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut c) = c else { continue };
                if inflight.fetch_add(1, Ordering::Relaxed) >= MAX_INFLIGHT {
                    inflight.fetch_sub(1, Ordering::Relaxed);
                    let e = json!({"error": {"code": code::TRY_AGAIN_LATER,
                        "msg": "xdpnetd is busy", "details": format!("{MAX_INFLIGHT} requests in flight")}});
                    let _ = c.write_all(e.to_string().as_bytes());
                    continue;
                }
                let (svc, inflight) = (svc.clone(), inflight.clone());
                let spawned = std::thread::Builder::new()
                    .name("xdpnet-cni-req".into())
                    .spawn(move || {
                        serve_one(&svc, &mut c);
                        inflight.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    eprintln!("xdpnetd: cannot start a CNI request thread");
                }
            }
        })?;
    Ok(CniServer {
        path: path.to_path_buf(),
        stop,
        thread: Some(thread),
    })
}

fn serve_one(svc: &CniService, c: &mut UnixStream) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = c.set_write_timeout(Some(Duration::from_secs(10)));
    // The first bytes may carry the pod's netns descriptor.
    let mut first = vec![0u8; 64 * 1024];
    let (mut buf, fd) = match xdpnet_dataplane::sys::recv_with_fd(c, &mut first) {
        Ok((n, fd)) => {
            first.truncate(n);
            (first, fd.map(std::fs::File::from))
        }
        Err(e) => {
            let answer = svc.error(err(code::IO, "reading the request", e));
            let _ = c.write_all(answer.to_string().as_bytes());
            return;
        }
    };
    let answer = match (&*c).take(1 << 20).read_to_end(&mut buf) {
        Ok(_) => match serde_json::from_slice::<Value>(&buf) {
            Ok(v) => svc.handle(&v, fd),
            Err(e) => svc.error(err(code::DECODE, "request is not JSON", e)),
        },
        Err(e) => svc.error(err(code::IO, "reading the request", e)),
    };
    let _ = c.write_all(answer.to_string().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_distinct_and_valid() {
        let a = host_ifname("0123abcd", "eth0");
        assert_eq!(a, host_ifname("0123abcd", "eth0"));
        assert_ne!(a, host_ifname("0123abcd", "eth1"));
        assert_ne!(a, host_ifname("0123abce", "eth0"));
        // "ab" + "c" vs "a" + "bc" must differ (separator).
        assert_ne!(host_ifname("ab", "c"), host_ifname("a", "bc"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with(HOST_PREFIX));
        assert!(a[3..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn requests_without_what_a_command_needs_are_invalid() {
        assert!(Req::parse(&json!({"command": "ADD", "ifname": "eth0"})).is_err());
        assert!(Req::parse(&json!({"containerId": "c", "ifname": "eth0"})).is_err());
        let r = Req::parse(
            &json!({"command": "DEL", "containerId": "c", "ifname": "eth0",
            "args": {"K8S_POD_NAMESPACE": "ns", "K8S_POD_NAME": "p"}}),
        )
        .expect("valid");
        assert_eq!(r.key(), "ns/p");
        assert!(Req::parse(&json!({"command": "GC"})).is_ok());
    }
}
