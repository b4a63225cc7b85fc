//! The lab: a whole cluster in network namespaces on this machine.
//!
//! Layout for prefix `P` (every name carries it; nothing is created outside these namespaces):
//! - `P-ul`: the underlay, a bridge `br0` (no address) joining the nodes and the client;
//! - `P-ext`: a client that is not a node, `eth0` 198.18.0.100/24 on the underlay;
//! - `P-n<i>` (node i = 1..N): uplink `eth0` 198.18.0.(10+i)/24; host port: veth `xdpnet0`
//!   (kernel end, MTU 1450, the gateway 10.244.i.1/32, routes to the pod and service CIDRs) <->
//!   `xdpnet0-dp` (dataplane end); pod host ends `xnp<j>`; one `xdpnetd` (its log, status and
//!   state files in the lab directory);
//! - `P-n<i>p<j>`: pod j of node i: `eth0` 10.244.i.(10+j)/24, MTU 1450, default route via the
//!   gateway with a permanent neighbour entry for it, TX checksum offload off — the wiring the
//!   CNI gives a pod.
//!
//! Every kernel-stack interface that sends into the dataplane has TX checksum offload off, as
//! a NIC would deliver complete checksums (veth otherwise hands over CHECKSUM_PARTIAL frames).
//!
//! [`Lab`] tears everything down on drop (also on panic); `xdpnet-bench lab down` removes a
//! lab left running by `lab up`, found by its prefix.

use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The gateway MAC every node's dataplane answers with (the daemon's default).
pub const GATEWAY_MAC: &str = "02:fe:78:64:70:01";
/// VXLAN port used in the lab.
pub const VXLAN_PORT: u16 = 4789;
/// Port the lab's pods serve TCP and UDP on.
pub const POD_PORT: u16 = 8080;

/// Runs a command; an error carries its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    run_stdin(cmd, args, "")
}

/// Turns IPv6 off in namespace `ns` (no autoconfiguration or MLD frames: a benchmark's
/// interfaces then carry only its own traffic).
pub fn no_ipv6(ns: &str) -> Result<()> {
    run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
    )
    .map(|_| ())
}

fn ip(args: &[&str]) -> Result<()> {
    run("ip", args).map(|_| ())
}

/// Runs `f` on a thread inside network namespace `ns` (sockets it makes stay in `ns`).
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> Result<T> {
        let fd = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns into {path}"))?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
}

/// Runs a command with `input` on its stdin (closed after it); an error carries its stderr.
pub fn run_stdin(cmd: &str, args: &[&str], input: &str) -> Result<String> {
    let mut c = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd} (is it installed? make deps)"))?;
    if let Some(mut i) = c.stdin.take() {
        i.write_all(input.as_bytes())
            .with_context(|| format!("writing to {cmd}"))?;
    }
    let out = c.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Packets the interfaces of namespace `ns` dropped (receive + transmit, as `ip -s link`
/// shows them: a veth counts a frame its peer had no room for).
pub fn link_drops(ns: &str) -> Result<u64> {
    let out = run("ip", &["-n", ns, "-s", "-j", "link", "show"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -s -j link")?;
    Ok(v.as_array()
        .map(|links| {
            links
                .iter()
                .map(|l| {
                    l["stats64"]["rx"]["dropped"].as_u64().unwrap_or(0)
                        + l["stats64"]["tx"]["dropped"].as_u64().unwrap_or(0)
                })
                .sum()
        })
        .unwrap_or(0))
}

/// Namespaces whose names start with `prefix-`.
pub fn namespaces(prefix: &str) -> Vec<String> {
    run("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_string)
        .collect()
}

/// Kills every process in the lab's namespaces and deletes the namespaces.
pub fn teardown(prefix: &str) -> usize {
    let nss = namespaces(prefix);
    for ns in &nss {
        for sig in [libc_sig::TERM, libc_sig::KILL] {
            let pids = run("ip", &["netns", "pids", ns]).unwrap_or_default();
            let pids: Vec<i32> = pids.lines().filter_map(|p| p.trim().parse().ok()).collect();
            if pids.is_empty() {
                break;
            }
            for p in &pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), sig);
            }
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(3)
                && !run("ip", &["netns", "pids", ns])
                    .unwrap_or_default()
                    .trim()
                    .is_empty()
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    for ns in &nss {
        let _ = ip(&["netns", "del", ns]);
    }
    nss.len()
}

mod libc_sig {
    pub use nix::sys::signal::Signal::{SIGKILL as KILL, SIGTERM as TERM};
}

/// A Service in the lab's state.
#[derive(Debug, Clone)]
pub struct LabService {
    /// Name (namespace `lab`).
    pub name: String,
    /// ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// Service port.
    pub port: u16,
    /// "TCP" or "UDP".
    pub protocol: &'static str,
    /// NodePort (makes it `type: NodePort`).
    pub node_port: Option<u16>,
    /// Backends: indexes into [`Lab::pods`].
    pub backends: Vec<usize>,
}

/// One node.
#[derive(Debug, Clone)]
pub struct LabNode {
    /// Node name (`node-<i>`).
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Underlay address.
    pub ip: Ipv4Addr,
    /// Gateway (first address of its pod CIDR).
    pub gateway: Ipv4Addr,
    /// Status file xdpnetd writes.
    pub status: PathBuf,
    /// Log file.
    pub log: PathBuf,
    /// Core its worker is pinned to.
    pub core: usize,
    /// More addresses (on its `lo`, and ExternalIPs in its Node status).
    pub extra_addrs: Vec<Ipv4Addr>,
}

/// One pod.
#[derive(Debug, Clone)]
pub struct LabPod {
    /// Pod name (`pod-<i>-<j>`).
    pub name: String,
    /// Index of its node in [`Lab::nodes`].
    pub node: usize,
    /// Its namespace.
    pub ns: String,
    /// Its IP.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: String,
    /// Host-side interface in the node namespace.
    pub host_if: String,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Name prefix of everything.
    pub prefix: String,
    /// Nodes.
    pub nodes: usize,
    /// Pods per node.
    pub pods_per_node: usize,
    /// Directory holding `xdpnetd`.
    pub bin_dir: PathBuf,
    /// Extra xdpnetd arguments.
    pub daemon_args: Vec<String>,
    /// Workers (cores) per daemon.
    pub workers: usize,
    /// RX/TX queues of each node's uplink veth.
    pub uplink_queues: usize,
    /// UMEM frames per daemon worker.
    pub frames: u32,
    /// Pods each daemon is sized for (`--max-pods`).
    pub max_pods: usize,
    /// Serve the cluster state from a test double of the Kubernetes API server (one listener
    /// at 127.0.0.1:6443 inside every node namespace, one shared set of objects) instead of
    /// the state file.
    pub kube_api: bool,
}

impl LabSpec {
    /// `nodes` x `pods` with the binaries next to the running executable.
    pub fn new(prefix: &str, nodes: usize, pods_per_node: usize) -> Self {
        Self {
            prefix: prefix.to_string(),
            nodes,
            pods_per_node,
            bin_dir: bin_dir(),
            daemon_args: Vec::new(),
            workers: 1,
            uplink_queues: 1,
            frames: 4096,
            max_pods: 8,
            kube_api: false,
        }
    }
}

/// Where the workspace's binaries are: `XDPNET_BIN_DIR`, else the running executable's
/// directory (or its parent, for test executables in `deps/`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDPNET_BIN_DIR") {
        return d.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.join("xdpnetd").exists() {
        dir
    } else {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    }
}

/// A running lab. Dropping it tears it down.
#[derive(Debug)]
pub struct Lab {
    /// Prefix.
    pub prefix: String,
    /// Lab directory (state, logs, status files).
    pub dir: PathBuf,
    /// Underlay namespace.
    pub underlay_ns: String,
    /// External client namespace.
    pub ext_ns: String,
    /// External client address.
    pub ext_ip: Ipv4Addr,
    /// Nodes.
    pub nodes: Vec<LabNode>,
    /// Pods.
    pub pods: Vec<LabPod>,
    /// Services in the state file.
    pub services: Vec<LabService>,
    /// Pods left out of the state file (as if deleted from the cluster; their namespaces stay).
    pub absent: std::collections::BTreeSet<usize>,
    /// More objects for the state file, each one YAML document (Services, EndpointSlices,
    /// NetworkPolicies... as `kubectl get -o yaml` prints them), written after the lab's own.
    pub extra_objects: Vec<String>,
    daemons: Vec<Option<Child>>,
    servers: Vec<Server>,
    bin_dir: PathBuf,
    daemon_args: Vec<String>,
    workers: usize,
    uplink_queues: usize,
    frames: u32,
    max_pods: usize,
    /// The API server double (and its listeners in the other node namespaces).
    api: Vec<xdpnet_control::api_double::ApiDouble>,
    /// (kind, key) of the objects given to the API double.
    api_objects: std::collections::BTreeSet<(String, String)>,
    keep: bool,
}

/// The lab directory for a prefix.
pub fn lab_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("xdpnet-lab-{prefix}"))
}

impl Lab {
    /// Builds the lab, writes the state (with [`Lab::default_services`]), starts one xdpnetd
    /// per node and waits until every daemon has its pods and peers. On error everything made
    /// so far is removed.
    pub fn up(spec: &LabSpec) -> Result<Lab> {
        if spec.nodes == 0 || spec.nodes > 200 || spec.pods_per_node > 200 {
            bail!("lab size: 1..200 nodes, 0..200 pods per node");
        }
        if !namespaces(&spec.prefix).is_empty() {
            bail!(
                "a lab with prefix {:?} exists already (xdpnet-bench lab down --prefix {})",
                spec.prefix,
                spec.prefix
            );
        }
        let xdpnetd = spec.bin_dir.join("xdpnetd");
        if !xdpnetd.exists() {
            bail!(
                "{} not found (build it: cargo build --bins, or set XDPNET_BIN_DIR)",
                xdpnetd.display()
            );
        }
        let dir = lab_dir(&spec.prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        let p = &spec.prefix;
        let mut lab = Lab {
            prefix: p.clone(),
            dir: dir.clone(),
            underlay_ns: format!("{p}-ul"),
            ext_ns: format!("{p}-ext"),
            ext_ip: Ipv4Addr::new(198, 18, 0, 100),
            nodes: Vec::new(),
            pods: Vec::new(),
            services: Vec::new(),
            absent: Default::default(),
            extra_objects: Vec::new(),
            daemons: Vec::new(),
            servers: Vec::new(),
            bin_dir: spec.bin_dir.clone(),
            daemon_args: spec.daemon_args.clone(),
            workers: spec.workers.clamp(1, ncpu),
            uplink_queues: spec.uplink_queues.clamp(1, 16),
            frames: spec.frames,
            max_pods: spec.max_pods,
            api: Vec::new(),
            api_objects: Default::default(),
            keep: false,
        };
        register(&spec.prefix);
        for i in 1..=spec.nodes {
            let name = format!("node-{i}");
            lab.nodes.push(LabNode {
                ns: format!("{p}-n{i}"),
                ip: Ipv4Addr::new(198, 18, 0, 10 + i as u8),
                gateway: Ipv4Addr::new(10, 244, i as u8, 1),
                status: dir.join(format!("{name}.status.json")),
                log: dir.join(format!("{name}.log")),
                core: (i - 1) % ncpu,
                extra_addrs: Vec::new(),
                name,
            });
            for j in 0..spec.pods_per_node {
                lab.pods.push(LabPod {
                    name: format!("pod-{i}-{j}"),
                    node: i - 1,
                    ns: format!("{p}-n{i}p{j}"),
                    ip: Ipv4Addr::new(10, 244, i as u8, 10 + j as u8),
                    mac: format!("02:00:0a:f4:{i:02x}:{:02x}", 10 + j),
                    host_if: format!("xnp{j}"),
                });
            }
        }
        lab.services = lab.default_services();
        lab.wire()?;
        if spec.kube_api {
            for n in lab.nodes.clone() {
                let l = in_ns(&n.ns, || std::net::TcpListener::bind("127.0.0.1:6443"))?
                    .context("binding the API server double")?;
                let d = match lab.api.first() {
                    None => xdpnet_control::api_double::ApiDouble::serve(l)?,
                    Some(a) => a.mirror(l)?,
                };
                lab.api.push(d);
            }
        }
        lab.write_state()?;
        for n in 0..lab.nodes.len() {
            lab.start_daemon(n)?;
        }
        lab.wait_ready(Duration::from_secs(30))?;
        Ok(lab)
    }

    /// A ClusterIP service `web` (10.96.0.10:80/TCP) and a NodePort service `web-np`
    /// (10.96.0.11:80, nodePort 30080) over every pod's port 8080, and a UDP service `echo-udp`
    /// (10.96.0.12:53/UDP) over every pod's UDP 8080.
    pub fn default_services(&self) -> Vec<LabService> {
        let all: Vec<usize> = (0..self.pods.len()).collect();
        vec![
            LabService {
                name: "web".into(),
                cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
                port: 80,
                protocol: "TCP",
                node_port: None,
                backends: all.clone(),
            },
            LabService {
                name: "web-np".into(),
                cluster_ip: Ipv4Addr::new(10, 96, 0, 11),
                port: 80,
                protocol: "TCP",
                node_port: Some(30080),
                backends: all.clone(),
            },
            LabService {
                name: "echo-udp".into(),
                cluster_ip: Ipv4Addr::new(10, 96, 0, 12),
                port: 53,
                protocol: "UDP",
                node_port: None,
                backends: all,
            },
        ]
    }

    fn wire(&mut self) -> Result<()> {
        let ul = self.underlay_ns.clone();
        ip(&["netns", "add", &ul])?;
        ip(&["-n", &ul, "link", "set", "lo", "up"])?;
        ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &ul, "link", "set", "br0", "up"])?;
        let ext = self.ext_ns.clone();
        ip(&["netns", "add", &ext])?;
        ip(&["-n", &ext, "link", "set", "lo", "up"])?;
        self.uplink(&ext, "ext", self.ext_ip)?;
        for n in self.nodes.clone() {
            let i = n.name.trim_start_matches("node-").to_string();
            ip(&["netns", "add", &n.ns])?;
            ip(&["-n", &n.ns, "link", "set", "lo", "up"])?;
            self.uplink(&n.ns, &format!("n{i}"), n.ip)?;
            ip(&[
                "-n",
                &n.ns,
                "link",
                "add",
                "xdpnet0",
                "type",
                "veth",
                "peer",
                "name",
                "xdpnet0-dp",
            ])?;
            ip(&[
                "-n",
                &n.ns,
                "addr",
                "add",
                &format!("{}/32", n.gateway),
                "dev",
                "xdpnet0",
            ])?;
            // The host port carries the overlay's MTU (underlay - 50), as pods do: the node's
            // kernel then offers a TCP MSS that still fits once encapsulated.
            ip(&[
                "-n",
                &n.ns,
                "link",
                "set",
                "xdpnet0-dp",
                "mtu",
                "1450",
                "up",
            ])?;
            ip(&["-n", &n.ns, "link", "set", "xdpnet0", "mtu", "1450", "up"])?;
            tx_off(&n.ns, "xdpnet0")?;
            let src = n.gateway.to_string();
            ip(&[
                "-n",
                &n.ns,
                "route",
                "add",
                "10.244.0.0/16",
                "dev",
                "xdpnet0",
                "src",
                &src,
            ])?;
            ip(&[
                "-n",
                &n.ns,
                "route",
                "add",
                "10.96.0.0/12",
                "dev",
                "xdpnet0",
                "src",
                &src,
            ])?;
        }
        for p in self.pods.clone() {
            let node = &self.nodes[p.node];
            ip(&["netns", "add", &p.ns])?;
            ip(&["-n", &p.ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &node.ns, "link", "add", &p.host_if, "mtu", "1450", "type", "veth", "peer",
                "name", "eth0", "netns", &p.ns,
            ])?;
            ip(&[
                "-n", &p.ns, "link", "set", "eth0", "address", &p.mac, "mtu", "1450", "up",
            ])?;
            ip(&[
                "-n",
                &p.ns,
                "addr",
                "add",
                &format!("{}/24", p.ip),
                "dev",
                "eth0",
            ])?;
            tx_off(&p.ns, "eth0")?;
            let gw = node.gateway.to_string();
            ip(&[
                "-n",
                &p.ns,
                "neigh",
                "replace",
                &gw,
                "lladdr",
                GATEWAY_MAC,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
            ip(&[
                "-n", &p.ns, "route", "add", "default", "via", &gw, "dev", "eth0",
            ])?;
            ip(&["-n", &node.ns, "link", "set", &p.host_if, "up"])?;
        }
        Ok(())
    }

    /// Veth `eth0` in `ns` with `addr`/24, peer `peer` on the underlay bridge.
    fn uplink(&self, ns: &str, peer: &str, addr: Ipv4Addr) -> Result<()> {
        let ul = &self.underlay_ns;
        let q = self.uplink_queues.to_string();
        ip(&[
            "-n",
            ns,
            "link",
            "add",
            "eth0",
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "netns",
            ul,
        ])?;
        ip(&["-n", ul, "link", "set", peer, "master", "br0", "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        tx_off(ns, "eth0")
    }

    /// Writes the cluster-state file the daemons read (they reload it on change).
    pub fn write_state(&mut self) -> Result<()> {
        let mut y = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {}\nspec:\n  podCIDR: 10.244.{}.0/24\nstatus:\n  addresses:\n  - {{type: InternalIP, address: {}}}\n",
                n.name,
                i + 1,
                n.ip
            );
            for a in &n.extra_addrs {
                let _ = writeln!(y, "  - {{type: ExternalIP, address: {a}}}");
            }
        }
        for (i, p) in self.pods.iter().enumerate() {
            if self.absent.contains(&i) {
                continue;
            }
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: lab\n  annotations:\n    xdpnet.io/interface: {}\n    xdpnet.io/mac: \"{}\"\nspec:\n  nodeName: {}\n  containers: []\nstatus:\n  phase: Running\n  podIP: {}\n",
                p.name, p.host_if, p.mac, self.nodes[p.node].name, p.ip
            );
        }
        for s in &self.services {
            let ty = if s.node_port.is_some() {
                "NodePort"
            } else {
                "ClusterIP"
            };
            let np = s
                .node_port
                .map(|p| format!(", nodePort: {p}"))
                .unwrap_or_default();
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: lab\nspec:\n  type: {ty}\n  clusterIP: {}\n  ports:\n  - {{name: p, port: {}, targetPort: {POD_PORT}, protocol: {}{np}}}\n",
                s.name, s.cluster_ip, s.port, s.protocol
            );
            let _ = write!(
                y,
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {}-1\n  namespace: lab\n  labels: {{kubernetes.io/service-name: {}}}\naddressType: IPv4\nports: [{{name: p, port: {POD_PORT}, protocol: {}}}]\nendpoints:\n",
                s.name, s.name, s.protocol
            );
            for &b in s.backends.iter().filter(|b| !self.absent.contains(b)) {
                let p = &self.pods[b];
                let _ = writeln!(
                    y,
                    "- {{addresses: [{}], conditions: {{ready: true}}, nodeName: {}}}",
                    p.ip, self.nodes[p.node].name
                );
            }
        }
        for doc in &self.extra_objects {
            let _ = write!(y, "---\n{}\n", doc.trim_end());
        }
        if let Some(api) = self.api.first() {
            let mut now = std::collections::BTreeSet::new();
            for doc in y.split("---\n").filter(|d| !d.trim().is_empty()) {
                let v: serde_json::Value = serde_yaml::from_str(doc).context("lab object")?;
                let kind = v["kind"].as_str().unwrap_or_default().to_string();
                let name = v["metadata"]["name"].as_str().unwrap_or_default();
                let key = match v["metadata"]["namespace"].as_str() {
                    Some(ns) => format!("{ns}/{name}"),
                    None => name.to_string(),
                };
                now.insert((kind, key));
                api.upsert(v);
            }
            for (kind, key) in self.api_objects.difference(&now) {
                api.delete(kind, key);
            }
            self.api_objects = now;
        }
        let path = self.state_path();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, y)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Gives node `n` another address (on its `lo`, and as an ExternalIP in its Node object;
    /// call [`Lab::write_state`] after).
    pub fn add_node_address(&mut self, n: usize, addr: Ipv4Addr) -> Result<()> {
        let ns = self.nodes[n].ns.clone();
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/32"), "dev", "lo"])?;
        self.nodes[n].extra_addrs.push(addr);
        Ok(())
    }

    /// The API server double, when the lab has one.
    pub fn api(&self) -> Option<&xdpnet_control::api_double::ApiDouble> {
        self.api.first()
    }

    /// Replaces the extra arguments every daemon gets (from the next start on).
    pub fn set_daemon_args(&mut self, args: Vec<String>) {
        self.daemon_args = args;
    }

    /// The process id of node `n`'s daemon (`ip netns exec` execs it: the same process).
    pub fn daemon_pid(&self, n: usize) -> Option<u32> {
        self.daemons.get(n)?.as_ref().map(Child::id)
    }

    /// Whether node `n`'s daemon is running (started by this lab and not stopped).
    pub fn daemon_running(&self, n: usize) -> bool {
        self.daemons.get(n).is_some_and(Option::is_some)
    }

    /// The CNI socket of node `n`'s daemon (what a conflist's `socket` names).
    pub fn cni_socket(&self, n: usize) -> PathBuf {
        self.dir.join(format!("{}-cni.sock", self.nodes[n].name))
    }

    /// The lab's directory (logs, state, sockets).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster-state file.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("cluster.yaml")
    }

    /// Starts (or restarts) node `n`'s daemon.
    pub fn start_daemon(&mut self, n: usize) -> Result<()> {
        let node = self.nodes[n].clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let xdpnetd = self.bin_dir.join("xdpnetd");
        let state = self.state_path();
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            node.ns.clone(),
            xdpnetd.to_string_lossy().into_owned(),
            "--node-name".into(),
            node.name.clone(),
            if self.api.is_empty() {
                "--state"
            } else {
                "--api-server"
            }
            .into(),
            if self.api.is_empty() {
                state.to_string_lossy().into_owned()
            } else {
                "http://127.0.0.1:6443".into()
            },
            "--uplink".into(),
            "eth0".into(),
            "--cores".into(),
            (0..self.workers)
                .map(|k| ((node.core + k) % ncpu).to_string())
                .collect::<Vec<_>>()
                .join(","),
            "--status-file".into(),
            node.status.to_string_lossy().into_owned(),
            "--frames".into(),
            self.frames.to_string(),
            "--max-pods".into(),
            self.max_pods.to_string(),
            "--inspect-socket".into(),
            self.dir
                .join(format!("{}.sock", node.name))
                .to_string_lossy()
                .into_owned(),
            "--metrics-addr".into(),
            "127.0.0.1:9460".into(),
            "--state-dir".into(),
            self.dir
                .join(format!("{}-state", node.name))
                .to_string_lossy()
                .into_owned(),
            "--cni-socket".into(),
            self.cni_socket(n).to_string_lossy().into_owned(),
        ];
        args.extend(self.daemon_args.iter().cloned());
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting xdpnetd")?;
        if self.daemons.len() <= n {
            self.daemons.resize_with(n + 1, || None);
        }
        self.daemons[n] = Some(child);
        Ok(())
    }

    /// Sends `sig` to node `n`'s daemon and waits for it to exit.
    pub fn stop_daemon(&mut self, n: usize, sig: nix::sys::signal::Signal) -> Result<()> {
        if let Some(mut c) = self.daemons.get_mut(n).and_then(Option::take) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
            let t = Instant::now();
            loop {
                if c.try_wait()?.is_some() {
                    break;
                }
                if t.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                    let _ = c.wait();
                    bail!("xdpnetd of {} did not exit on {sig:?}", self.nodes[n].name);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Node `n`'s daemon status (None when it has not written one).
    pub fn status(&self, n: usize) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(&self.nodes[n].status).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The tail of node `n`'s log.
    pub fn log_tail(&self, n: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[n].log).unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    fn ready(&self, n: usize) -> bool {
        let pods = self
            .pods
            .iter()
            .enumerate()
            .filter(|(i, p)| p.node == n && !self.absent.contains(i))
            .count() as u64;
        self.status(n).is_some_and(|s| {
            // At least the lab's pods (pods wired through the CNI plugin come on top).
            s["local_endpoints"].as_u64().is_some_and(|e| e >= pods)
                && s["remote_nodes"].as_array().map(Vec::len) == Some(self.nodes.len() - 1)
        })
    }

    /// Waits until every daemon reports its pods and peers.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let t = Instant::now();
        for n in 0..self.nodes.len() {
            while !self.ready(n) {
                if t.elapsed() > timeout {
                    bail!(
                        "{} not ready after {timeout:?}; log:\n{}",
                        self.nodes[n].name,
                        self.log_tail(n, 30)
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Waits until node `n`'s daemon publishes a table generation above `after`.
    pub fn wait_generation(&self, n: usize, after: u64, timeout: Duration) -> Result<u64> {
        let t = Instant::now();
        loop {
            let g = self
                .status(n)
                .and_then(|s| s["generation"].as_u64())
                .unwrap_or(0);
            if g > after {
                return Ok(g);
            }
            if t.elapsed() > timeout {
                bail!("{}: no table after generation {after}", self.nodes[n].name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the pod servers: in every pod, TCP and UDP on [`POD_PORT`].
    pub fn serve_all(&mut self) -> Result<()> {
        for p in self.pods.clone() {
            self.servers.push(Server::start(&p.ns, &p.name, POD_PORT)?);
        }
        Ok(())
    }

    /// Starts a server in namespace `ns` answering as `name` on `port` (TCP and UDP).
    pub fn serve(&mut self, ns: &str, name: &str, port: u16) -> Result<()> {
        self.servers.push(Server::start(ns, name, port)?);
        Ok(())
    }

    /// Starts an HTTP server in `ns` answering `name` to every request on `port`.
    pub fn serve_http(&mut self, ns: &str, name: &str, port: u16) -> Result<()> {
        self.servers.push(Server::start_http(ns, name, port)?);
        Ok(())
    }

    /// Keeps the lab running after this value drops (for `lab up`).
    pub fn keep(mut self) {
        self.keep = true;
        // Dropping a Child neither kills nor waits: the daemons outlive this process and
        // `lab down` stops them.
        self.daemons.clear();
        unregister(&self.prefix);
    }

    /// Stops servers and daemons, deletes every namespace and the lab directory.
    pub fn down(mut self) -> Result<()> {
        self.teardown();
        if !namespaces(&self.prefix).is_empty() {
            bail!("namespaces of {} left behind", self.prefix);
        }
        Ok(())
    }

    fn teardown(&mut self) {
        for s in &mut self.servers {
            s.stop();
        }
        self.servers.clear();
        self.api.clear();
        for n in 0..self.daemons.len() {
            let _ = self.stop_daemon(n, nix::sys::signal::Signal::SIGTERM);
        }
        teardown(&self.prefix);
        let _ = std::fs::remove_dir_all(&self.dir);
        unregister(&self.prefix);
    }
}

/// Prefixes of the labs this process has up (for cleanup on a signal).
static LIVE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Records `prefix` as a lab of this process ([`cleanup_on_signal`] removes it).
pub fn register(prefix: &str) {
    if let Ok(mut l) = LIVE.lock() {
        l.push(prefix.to_string());
    }
}

/// Forgets `prefix` (its lab is gone).
pub fn unregister(prefix: &str) {
    if let Ok(mut l) = LIVE.lock() {
        l.retain(|p| p != prefix);
    }
}

/// On SIGINT, SIGTERM or SIGHUP, tears down every lab this process has up, then exits with
/// 128 + the signal. Call once, early (the demo, `lab up` and the tests do).
pub fn cleanup_on_signal() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    static ONCE: std::sync::Once = std::sync::Once::new();
    let mut r = Ok(());
    ONCE.call_once(
        || match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(mut sigs) => {
                std::thread::spawn(move || {
                    if let Some(sig) = sigs.forever().next() {
                        let live: Vec<String> = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
                        for p in live {
                            eprintln!("signal {sig}: removing lab {p}");
                            teardown(&p);
                            let _ = std::fs::remove_dir_all(lab_dir(&p));
                        }
                        std::process::exit(128 + sig);
                    }
                });
            }
            Err(e) => r = Err(anyhow::anyhow!("installing signal handlers: {e}")),
        },
    );
    r
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep {
            self.teardown();
        }
    }
}

/// Turns TX checksum offload off on `ifname` in `ns`.
fn tx_off(ns: &str, ifname: &str) -> Result<()> {
    run(
        "ip",
        &["netns", "exec", ns, "ethtool", "-K", ifname, "tx", "off"],
    )
    .map(|_| ())
}

/// A pod's server: TCP (first line = its name, then echoes until EOF; a connection whose first
/// bytes are `WHOAMI\n` gets the client address it saw as a second line) and UDP (answers every datagram
/// with its name, a space, and the datagram; `WHOAMI` gets `name WHOAMI client-address`).
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts serving in `ns` on `port`.
    pub fn start(ns: &str, name: &str, port: u16) -> Result<Server> {
        let (tcp, udp) = in_ns(ns, move || -> std::io::Result<(TcpListener, UdpSocket)> {
            Ok((
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?,
                UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?,
            ))
        })?
        .with_context(|| format!("binding port {port} in {ns}"))?;
        tcp.set_nonblocking(true)?;
        udp.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (st, n) = (stop.clone(), name.to_string());
        threads.push(std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut c, peer)) => {
                        let n = n.clone();
                        std::thread::spawn(move || {
                            let _ = c.set_nonblocking(false);
                            let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
                            if c.write_all(format!("{n}\n").as_bytes()).is_err() {
                                return;
                            }
                            let mut buf = vec![0u8; 65536];
                            let mut first = true;
                            while let Ok(k) = c.read(&mut buf) {
                                if first && buf[..k] == *WHOAMI {
                                    let _ = c.write_all(format!("{peer}\n").as_bytes());
                                    break;
                                }
                                first = false;
                                if k == 0 || c.write_all(&buf[..k]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
        let (st, n) = (stop.clone(), name.to_string());
        // Answers leave from the address the datagram was sent to (IP_PKTINFO), as DNS
        // servers do: a socket on 0.0.0.0 would otherwise answer from the route's preferred
        // source (for pods: the host port's gateway address).
        let _ =
            nix::sys::socket::setsockopt(&udp, nix::sys::socket::sockopt::Ipv4PacketInfo, &true);
        threads.push(std::thread::spawn(move || {
            use nix::sys::socket::{self as so, ControlMessage, ControlMessageOwned, MsgFlags};
            use std::io::{IoSlice, IoSliceMut};
            use std::os::fd::AsRawFd;
            let mut buf = vec![0u8; 65536];
            let fd = udp.as_raw_fd();
            while !st.load(Ordering::Relaxed) {
                let mut space = nix::cmsg_space!(nix::libc::in_pktinfo);
                let (k, from, to) = {
                    let mut iov = [IoSliceMut::new(&mut buf)];
                    let Ok(m) = so::recvmsg::<so::SockaddrIn>(
                        fd,
                        &mut iov,
                        Some(&mut space),
                        MsgFlags::empty(),
                    ) else {
                        continue;
                    };
                    let to = m.cmsgs().ok().and_then(|mut c| {
                        c.find_map(|c| match c {
                            ControlMessageOwned::Ipv4PacketInfo(i) => Some(i.ipi_addr),
                            _ => None,
                        })
                    });
                    (m.bytes, m.address, to)
                };
                let Some(from) = from else { continue };
                let mut out = format!("{n} ").into_bytes();
                out.extend_from_slice(&buf[..k]);
                if buf[..k] == WHOAMI[..6] {
                    out.extend_from_slice(format!(" {}", SocketAddrV4::from(from)).as_bytes());
                }
                let info = to.map(|a| nix::libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: a,
                    ipi_addr: a,
                });
                let cm: Vec<ControlMessage<'_>> =
                    info.iter().map(ControlMessage::Ipv4PacketInfo).collect();
                let _ = so::sendmsg(
                    fd,
                    &[IoSlice::new(&out)],
                    &cm,
                    MsgFlags::empty(),
                    Some(&from),
                );
            }
        }));
        Ok(Server { stop, threads })
    }

    /// Starts an HTTP server in `ns` on `port`: every request gets `200 OK` with `name` as
    /// the body (agnhost's `/hostName`).
    pub fn start_http(ns: &str, name: &str, port: u16) -> Result<Server> {
        let tcp = in_ns(ns, move || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))?
            .with_context(|| format!("binding port {port} in {ns}"))?;
        tcp.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (st, n) = (stop.clone(), name.to_string());
        let t = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut buf = [0u8; 4096];
                        let mut req = Vec::new();
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                            match c.read(&mut buf) {
                                Ok(k) if k > 0 => req.extend_from_slice(&buf[..k]),
                                _ => break,
                            }
                        }
                        let _ = write!(
                            c,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{n}",
                            n.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Server {
            stop,
            threads: vec![t],
        })
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a client sends a lab server to learn the address the server saw it come from.
const WHOAMI: &[u8; 7] = b"WHOAMI\n";

/// From `ns`: asks the TCP server at `to` who it is and where it saw this connection come
/// from: (server name, client address as the server saw it).
pub fn tcp_whoami(ns: &str, to: SocketAddrV4) -> Result<(String, SocketAddrV4)> {
    in_ns(ns, move || -> Result<(String, SocketAddrV4)> {
        let s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))
            .with_context(|| format!("connect to {to}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut r = std::io::BufReader::new(s.try_clone()?);
        let mut name = String::new();
        std::io::BufRead::read_line(&mut r, &mut name)?;
        (&s).write_all(WHOAMI)?;
        let mut seen = String::new();
        std::io::BufRead::read_line(&mut r, &mut seen)?;
        let seen = seen
            .trim()
            .parse()
            .with_context(|| format!("{to}: no client address in {seen:?}"))?;
        Ok((name.trim().to_string(), seen))
    })?
}

/// From `ns`: asks the UDP server at `to` who it is and where the datagram came from (the
/// answer must come from `to`).
pub fn udp_whoami(ns: &str, to: SocketAddrV4) -> Result<(String, SocketAddrV4)> {
    in_ns(ns, move || -> Result<(String, SocketAddrV4)> {
        let text = udp_ask(to, &WHOAMI[..6])?;
        let mut w = text.split(' ');
        let (name, seen) = (w.next().unwrap_or(""), w.nth(1).unwrap_or(""));
        let seen = seen
            .parse()
            .with_context(|| format!("{to}: no client address in {text:?}"))?;
        Ok((name.to_string(), seen))
    })?
}

/// Result of one TCP exchange with a lab server.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The server's name (who answered).
    pub server: String,
    /// The address connected to, as the client saw it.
    pub peer: SocketAddr,
    /// Bytes sent and verified echoed back.
    pub bytes: usize,
    /// Wall time of the transfer.
    pub elapsed: Duration,
}

/// Deterministic payload: byte i of stream `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// From namespace `ns`: connects to `to`, reads the server's name, sends `bytes` bytes of a
/// pattern while reading them back, and checks every byte. Fails on any mismatch or timeout.
pub fn tcp_exchange(ns: &str, to: SocketAddrV4, bytes: usize) -> Result<Exchange> {
    in_ns(ns, move || -> Result<Exchange> {
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))
            .with_context(|| format!("connect to {to}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let peer = s.peer_addr()?;
        let mut name = Vec::new();
        let mut b = [0u8; 1];
        loop {
            s.read_exact(&mut b)
                .with_context(|| format!("reading the server name from {to}"))?;
            if b[0] == b'\n' {
                break;
            }
            name.push(b[0]);
            if name.len() > 64 {
                bail!("{to}: no name line");
            }
        }
        let data = pattern(t.elapsed().as_nanos() as u64 ^ bytes as u64, bytes);
        let mut w = s.try_clone()?;
        let tx = data.clone();
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            for c in tx.chunks(16 * 1024) {
                w.write_all(c)?;
            }
            w.shutdown(std::net::Shutdown::Write)
        });
        let mut got = Vec::with_capacity(bytes);
        s.read_to_end(&mut got)
            .with_context(|| format!("reading the echo from {to}"))?;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))?
            .with_context(|| format!("sending to {to}"))?;
        if got.len() != data.len() {
            bail!("{to}: echoed {} of {} bytes", got.len(), data.len());
        }
        if let Some(i) = got.iter().zip(&data).position(|(a, b)| a != b) {
            bail!("{to}: echoed byte {i} differs");
        }
        Ok(Exchange {
            server: String::from_utf8_lossy(&name).into_owned(),
            peer,
            bytes,
            elapsed: t.elapsed(),
        })
    })?
}

/// From namespace `ns`: sends `n` datagrams to `to` and returns the names of the answerers
/// (the reply's source must be `to`; every payload is checked).
pub fn udp_exchange(ns: &str, to: SocketAddrV4, n: usize) -> Result<Vec<String>> {
    in_ns(ns, move || -> Result<Vec<String>> {
        let mut names = Vec::new();
        for i in 0..n {
            let msg = format!("xdpnet-udp-{i}");
            let text = udp_ask(to, msg.as_bytes()).with_context(|| format!("datagram {i}"))?;
            let (name, echo) = text.split_once(' ').unwrap_or(("", ""));
            if echo != msg {
                bail!("UDP echo {echo:?} != {msg:?}");
            }
            names.push(name.to_string());
        }
        Ok(names)
    })?
}

/// Sends `msg` from a fresh socket (in the calling thread's namespace) and returns the one
/// answer, which must come from `to`.
fn udp_ask(to: SocketAddrV4, msg: &[u8]) -> Result<String> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.send_to(msg, to)?;
    let mut buf = [0u8; 256];
    let (k, from) = s
        .recv_from(&mut buf)
        .with_context(|| format!("no UDP answer from {to}"))?;
    if from != SocketAddr::V4(to) {
        bail!("UDP answer from {from}, expected {to}");
    }
    Ok(String::from_utf8_lossy(&buf[..k]).into_owned())
}

/// `ping -c count` from `ns`.
pub fn ping(ns: &str, to: Ipv4Addr, count: u32) -> Result<()> {
    run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            &to.to_string(),
        ],
    )
    .map(|_| ())
}

/// A packet capture (tcpdump) on an interface of a lab namespace.
#[derive(Debug)]
pub struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    /// Starts capturing on `ifname` in `ns` into `file`.
    pub fn start(ns: &str, ifname: &str, file: &Path) -> Result<Capture> {
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "tcpdump", "-i", ifname, "-n", "-U", "-s", "0", "-w",
            ])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump (make deps installs it)")?;
        let mut c = Capture {
            child,
            file: file.to_path_buf(),
        };
        // tcpdump says "listening on" once the capture is live.
        let mut err = c.child.stderr.take().context("tcpdump stderr")?;
        let mut seen = Vec::new();
        let t = Instant::now();
        let mut b = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            if t.elapsed() > Duration::from_secs(5) {
                bail!("tcpdump did not start: {}", String::from_utf8_lossy(&seen));
            }
            let k = err.read(&mut b)?;
            if k == 0 {
                bail!("tcpdump exited: {}", String::from_utf8_lossy(&seen));
            }
            seen.extend_from_slice(&b[..k]);
        }
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = err.read_to_end(&mut sink);
        });
        Ok(c)
    }

    /// Stops the capture and returns the frames (whole Ethernet frames).
    pub fn stop(mut self) -> Result<Vec<Vec<u8>>> {
        std::thread::sleep(Duration::from_millis(200));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
        let data = std::fs::read(&self.file)?;
        parse_pcap(&data)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Frames of a classic pcap file (either byte order).
pub fn parse_pcap(data: &[u8]) -> Result<Vec<Vec<u8>>> {
    if data.len() < 24 {
        bail!("pcap too short");
    }
    let magic = u32::from_le_bytes(data[0..4].try_into()?);
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        _ => bail!("not a pcap file"),
    };
    let rd = |b: &[u8]| {
        let a: [u8; 4] = b.try_into().unwrap_or([0; 4]);
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= data.len() {
        let incl = rd(&data[off + 8..off + 12]) as usize;
        off += 16;
        if off + incl > data.len() {
            break;
        }
        out.push(data[off..off + incl].to_vec());
        off += incl;
    }
    Ok(out)
}

/// A UDP sink in a lab namespace: counts datagrams and bytes.
#[derive(Debug)]
pub struct UdpSink {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(u64, u64)>>,
}

impl UdpSink {
    /// Starts counting what arrives on `port` in `ns`.
    pub fn start(ns: &str, port: u16) -> Result<UdpSink> {
        let s = in_ns(ns, move || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))?
            .with_context(|| format!("binding UDP {port} in {ns}"))?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut n, mut bytes) = (0u64, 0u64);
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if let Ok(k) = s.recv(&mut buf) {
                    n += 1;
                    bytes += k as u64;
                }
            }
            (n, bytes)
        });
        Ok(UdpSink {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and returns (datagrams, bytes).
    pub fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or((0, 0))
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// From `ns`, sends `payload`-byte datagrams to `to` as fast as one socket can for `secs`;
/// returns how many were sent.
pub fn udp_blast(ns: &str, to: SocketAddrV4, payload: usize, secs: f64) -> Result<u64> {
    in_ns(ns, move || -> Result<u64> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect(to)?;
        let buf = vec![0x5au8; payload];
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed().as_secs_f64() < secs {
            for _ in 0..64 {
                if s.send(&buf).is_ok() {
                    n += 1;
                }
            }
        }
        Ok(n)
    })?
}

/// `GET path` from namespace `ns` to `addr`: (status code, body).
pub fn http_get(ns: &str, addr: SocketAddrV4, path: &str) -> Result<(u16, String)> {
    let path = path.to_string();
    in_ns(ns, move || -> Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("HTTP status")?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    })?
}
