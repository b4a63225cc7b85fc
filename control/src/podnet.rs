//! Pod interfaces over rtnetlink (no `ip` commands): the veth pair of a pod, its address,
//! default route, gateway neighbour and queue inside the pod's network namespace.
//!
//! [`Rtnl`] is one synchronous rtnetlink socket bound to the network namespace of the thread
//! that opened it; every request asks for an acknowledgement and returns the kernel's errno as
//! an `io::Error`. [`in_netns`] runs a closure on a short-lived thread that has entered another
//! namespace (a thread's namespace is never switched back, so no worker or control thread is
//! ever left in a pod's namespace).

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use xdpnet_dataplane::wire::MacAddr;

/// What a pod's interface is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodInterface {
    /// A veth pair: the host end in the node's namespace, an AF_XDP socket on it.
    #[default]
    Veth,
    /// A persistent tap in the pod's namespace, read and written through its descriptor with
    /// a virtio-net header per frame: the pod keeps its checksum and segmentation offloads.
    Tap,
}

impl std::str::FromStr for PodInterface {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "veth" => Ok(Self::Veth),
            "tap" => Ok(Self::Tap),
            _ => Err(format!("pod interface {s:?}: veth or tap")),
        }
    }
}

/// Where a tap pod interface lives: its namespace and its name there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapPlace {
    /// The pod's network namespace (a netns bind mount or `/proc/<pid>/ns/net`).
    pub netns: std::path::PathBuf,
    /// The tap's name in it.
    pub ifname: String,
}

impl TapPlace {
    /// Opens the tap's descriptor for a worker (entering the namespace on a short-lived
    /// thread).
    pub fn open(&self) -> io::Result<std::os::fd::OwnedFd> {
        let name = self.ifname.clone();
        in_netns(&self.netns, move || {
            xdpnet_dataplane::sys::tap::open(&name, true)
        })
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("tap {} in {}: {e}", self.ifname, self.netns.display()),
            )
        })
    }
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC address.
    pub mac: Option<MacAddr>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Administratively up.
    pub up: bool,
}

/// One rtnetlink socket (in the namespace of the thread that opened it).
#[derive(Debug)]
pub struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn link_of(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: m.header.flags.contains(LinkFlags::Up),
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Mtu(v) => l.mtu = Some(*v),
            LinkAttribute::Address(b) if b.len() == 6 => {
                let mut m6 = [0u8; 6];
                m6.copy_from_slice(b);
                l.mac = Some(MacAddr(m6));
            }
            _ => {}
        }
    }
    l
}

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            sock,
            seq: 0,
            buf: vec![0; 1 << 16],
        })
    }

    /// Sends `msg` with `flags` (plus REQUEST) and collects the answers until the ACK / DONE;
    /// a NACK is the kernel's errno.
    pub(crate) fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | flags;
        hdr.sequence_number = seq;
        let mut req = NetlinkMessage::new(hdr, NetlinkPayload::from(msg));
        req.finalize();
        let mut out = vec![0; req.header.length as usize];
        req.serialize(&mut out);
        self.sock.send(&out, 0)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut got = Vec::new();
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0;
            while off < n {
                let msg: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&self.buf[off..n])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == seq {
                    match msg.payload {
                        NetlinkPayload::Done(_) => return Ok(got),
                        NetlinkPayload::Error(e) => {
                            if e.code.is_none() {
                                return Ok(got);
                            }
                            return Err(io::Error::from_raw_os_error(-e.raw_code()));
                        }
                        NetlinkPayload::InnerMessage(m) => {
                            got.push(m);
                            if !dump && flags & NLM_F_ACK == 0 {
                                return Ok(got);
                            }
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }

    fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.exchange(msg, NLM_F_ACK | flags).map(|_| ())
    }

    /// The link named `name`, None when there is none.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.exchange(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(v) => Ok(v.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let v = self.exchange(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(v.iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })
            .collect())
    }

    /// Creates veth `host` here (down) with peer `peer` placed directly into the namespace of
    /// `peer_ns` (an open `/proc/.../ns/net` or bind mount), both with `mtu`. Fails with EEXIST
    /// when either name is taken.
    pub fn create_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_ns: &std::fs::File,
        mtu: u32,
    ) -> io::Result<()> {
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        p.attributes.push(LinkAttribute::Mtu(mtu));
        p.attributes
            .push(LinkAttribute::NetNsFd(peer_ns.as_raw_fd()));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(host.to_string()));
        m.attributes.push(LinkAttribute::Mtu(mtu));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Deletes link `name` (a veth takes its peer with it); false when there was none.
    pub fn delete_link(&mut self, name: &str) -> io::Result<bool> {
        let Some(l) = self.link(name)? else {
            return Ok(false);
        };
        let mut m = LinkMessage::default();
        m.header.index = l.index;
        match self.ack(RouteNetlinkMessage::DelLink(m), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets link `index`'s MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.ack(RouteNetlinkMessage::SetLink(m), 0)
    }

    /// Sets link `index` up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.ack(RouteNetlinkMessage::SetLink(m), 0)
    }

    /// Gives link `index` a `pfifo` root queue (its length the link's txqueuelen), replacing
    /// whatever was there. On a veth (noqueue by default) this is what lets a full peer ring
    /// push back on the sender (Linux 6.16 on) instead of dropping the frame: a pod's TCP
    /// then waits for xdpnet's worker rather than retransmitting.
    pub fn set_root_fifo(&mut self, index: u32) -> io::Result<()> {
        let mut m = TcMessage::with_index(index as i32);
        m.header.parent = TcHandle::ROOT;
        m.attributes.push(TcAttribute::Kind("pfifo".into()));
        self.ack(
            RouteNetlinkMessage::NewQueueDiscipline(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// Adds `ip/prefix` to link `index` (already there: fine).
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
        m.attributes.push(AddressAttribute::Address(IpAddr::V4(ip)));
        match self.ack(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// The IPv4 addresses (with prefix) of link `index`.
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        let mut q = AddressMessage::default();
        q.header.family = AddressFamily::Inet;
        let v = self.exchange(RouteNetlinkMessage::GetAddress(q), NLM_F_DUMP)?;
        Ok(v.iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Local(IpAddr::V4(ip)) => Some((*ip, a.header.prefix_len)),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Sets (creates or replaces) the default route via `gw` on link `index`.
    pub fn set_default_route(&mut self, gw: Ipv4Addr, index: u32) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = 0;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        m.attributes.push(RouteAttribute::Oif(index));
        self.ack(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }

    /// The gateway of the IPv4 default route, if any.
    pub fn default_gateway(&mut self) -> io::Result<Option<Ipv4Addr>> {
        let mut q = RouteMessage::default();
        q.header.address_family = AddressFamily::Inet;
        let v = self.exchange(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)?;
        Ok(v.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r)
                if r.header.destination_prefix_length == 0
                    && r.header.table == RouteHeader::RT_TABLE_MAIN =>
            {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                    _ => None,
                })
            }
            _ => None,
        }))
    }

    /// Sets a permanent neighbour entry `ip` -> `mac` on link `index`.
    pub fn set_permanent_neighbour(
        &mut self,
        index: u32,
        ip: Ipv4Addr,
        mac: MacAddr,
    ) -> io::Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        self.ack(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }
}

/// Runs `f` on a new thread inside the network namespace at `path` (a netns bind mount or
/// `/proc/<pid>/ns/net`). The thread ends with `f`, so no thread stays in that namespace.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    in_netns_file(&std::fs::File::open(path)?, f)
}

/// [`in_netns`] with the namespace already open (a netns file or a descriptor received from
/// the CNI plugin).
pub fn in_netns_file<T: Send>(
    ns: &std::fs::File,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("thread in the pod namespace panicked")))
    })
}

/// Whether `f` is a namespace (nsfs) file, not a plain file where a mount was expected.
pub fn is_namespace(f: &std::fs::File) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    nix::sys::statfs::fstatfs(f).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_loopback_and_reports_missing_links() {
        let mut r = Rtnl::open().expect("rtnetlink");
        let lo = r.link("lo").expect("query").expect("lo exists");
        assert_eq!(lo.name, "lo");
        assert!(lo.index > 0);
        assert_eq!(r.link("xnc-nosuchlink").expect("query"), None);
        assert!(!r.delete_link("xnc-nosuchlink").expect("delete"));
        assert!(r.links().expect("dump").iter().any(|l| l.name == "lo"));
        let own = std::fs::File::open("/proc/self/ns/net").expect("own netns");
        assert!(is_namespace(&own));
        let plain = std::fs::File::open("/proc/self/status").expect("a plain file");
        assert!(!is_namespace(&plain));
    }
}
