//! xdpnetd's CNI endpoint: the other side of the `xdpnet` plugin binary.
//!
//! One request per connection on a root-only unix socket: `{command, containerId, netns,
//! ifname, args, config}` in, `{"result": Outcome}` or `{"error": {code, msg, details}}` out.
//!
//! - **ADD**: an address from [`Ipam`] (persisted before anything is wired), a veth pair over
//!   rtnetlink — host end `xnc<12 hex of container+ifname>` here, pod end `CNI_IFNAME` created
//!   straight in the pod's namespace — both with the pod MTU (underlay MTU - 50); in the pod: the
//!   address, link up, a permanent neighbour entry for the gateway (so the pod need not ask; the
//!   dataplane also answers its ARP for any address), the default route via the gateway, TX checksum offload
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

mod commands;
mod request;
mod server;

pub use server::{CniServer, serve};

use crate::ipam::Ipam;
use crate::podnet::{Rtnl, TapPlace, in_netns};
use crate::view::LoopView;
use request::{Req, err};
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
use xdpnet_dataplane::sys::netdev;
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

/// Whether the tap `t` still exists (its namespace open and the device in it).
fn tap_present(t: &TapPlace) -> bool {
    let name = t.ifname.clone();
    in_netns(&t.netns, move || Ok(Rtnl::open()?.link(&name)?.is_some())).unwrap_or(false)
}

/// Deletes the tap `ifname` in the namespace at `netns` (gone already, or its namespace: fine).
fn delete_tap(netns: &Path, ifname: &str) -> std::io::Result<()> {
    let name = ifname.to_string();
    match in_netns(netns, move || Rtnl::open()?.delete_link(&name)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
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
    /// The pod's interface is a tap there (`host_if` is then only its key).
    pub tap: Option<crate::podnet::TapPlace>,
}

/// What the endpoint asks of the control loop.
#[derive(Debug)]
pub enum PodOp {
    /// Attach (or keep attached) and publish; answered after the publish. A tap pod's
    /// descriptor, opened while wiring it, comes along (else the loop opens it).
    Attach(CniPod, Option<std::os::fd::OwnedFd>),
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
    pub reply: mpsc::SyncSender<Result<(), LoopError>>,
}

/// Why the control loop could not do what the endpoint asked (or did not answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoopError {
    /// The host end is not attached to the dataplane.
    #[error("{0} is not attached")]
    NotAttached(String),
    /// Attached, but the published table does not have the pod.
    #[error("{host_if} is attached but {ip} is not in the table")]
    NotInTable {
        /// The host end.
        host_if: String,
        /// The pod's address.
        ip: Ipv4Addr,
    },
    /// The dataplane could not bind a socket to the host end.
    #[error("attaching {host_if}: {reason}")]
    AttachFailed {
        /// The host end.
        host_if: String,
        /// What the dataplane said.
        reason: String,
    },
    /// Every port id is taken.
    #[error("{0}: no free port id")]
    NoPortId(String),
    /// The table refused the pod's endpoint.
    #[error("{host_if}: the table refused the endpoint: {error}")]
    Refused {
        /// The host end.
        host_if: String,
        /// Why.
        error: xdpnet_dataplane::fib::BuildError,
    },
    /// A detach did not take.
    #[error("{0} is still attached")]
    StillAttached(String),
    /// The control loop is gone.
    #[error("the control loop is not running")]
    Gone,
    /// The control loop did not answer in time.
    #[error("the control loop did not answer within 30 s")]
    Timeout,
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
    /// What a new pod's interface is.
    pub pod_interface: crate::podnet::PodInterface,
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
    view: Arc<LoopView>,
    /// Counters.
    pub counters: CniCounters,
}

impl std::fmt::Debug for CniService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CniService")
            .field("settings", &self.settings)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
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
    /// The endpoint over `ipam`, asking the control loop through `to_loop`; `view` is what the
    /// loop publishes (its readiness, the addresses of pods it wired by other means).
    pub fn new(
        settings: CniSettings,
        ipam: Ipam,
        to_loop: mpsc::Sender<PodRequest>,
        view: Arc<LoopView>,
    ) -> Self {
        Self {
            settings,
            ipam: Mutex::new(ipam),
            gc_lock: RwLock::new(()),
            busy: Mutex::new(BTreeSet::new()),
            idle: Condvar::new(),
            to_loop: Mutex::new(to_loop),
            view,
            counters: CniCounters::default(),
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
            let tap = a.wiring.as_ref().filter(|w| w.tap).map(|w| TapPlace {
                netns: w.netns.clone().into(),
                ifname: a.ifname.clone(),
            });
            let present = |w: &crate::ipam::Wiring| match &tap {
                Some(t) => tap_present(t),
                None => links.contains(&w.host_if),
            };
            match &a.wiring {
                Some(w) if present(w) => match w.mac.parse() {
                    Ok(mac) => found.push(CniPod {
                        host_if: w.host_if.clone(),
                        ip: a.ip,
                        mac,
                        key,
                        tap,
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

    fn ask_loop(&self, op: PodOp) -> Result<(), LoopError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.to_loop
            .lock()
            .map_err(|_| LoopError::Gone)?
            .send(PodRequest { op, reply: tx })
            .map_err(|_| LoopError::Gone)?;
        rx.recv_timeout(Duration::from_secs(30))
            .map_err(|_| LoopError::Timeout)?
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
                if self.view.ready.load(Ordering::Relaxed) {
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
