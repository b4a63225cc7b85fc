//! A lab described by Kubernetes objects (`xdpnet-bench lab up --cluster FILE`) and changed
//! while it runs (`lab apply FILE`, `lab delete FILE`), so that a policy suite can be driven
//! from outside the lab.
//!
//! FILE is a YAML stream of Kubernetes objects (several documents, or `kind: List`):
//! - `Namespace`: name and labels;
//! - `Pod`: name, namespace (default `default`), labels, `spec.nodeName` (`node-1`..,
//!   default `node-1`) and its containers' `ports` (number, protocol TCP or UDP, optional
//!   name): the lab wires the pod (its own network namespace, an address from its node's pod
//!   CIDR) and serves every declared port (TCP: the pod's `namespace/name` as the first line,
//!   then echo; UDP: `namespace/name` and the datagram back);
//! - `Service`: `spec.selector` (equality), `spec.ports` (`port`, `targetPort` number or
//!   name, `protocol`), `spec.clusterIP` (one is given when absent), `type` ClusterIP or
//!   NodePort: the lab writes its EndpointSlice from the pods the selector picks;
//! - anything else (NetworkPolicy, ClusterNetworkPolicy, ...): handed to the daemons as is.
//!
//! `lab apply` upserts each object (a Pod or Namespace again with other labels relabels it; a
//! new Pod is wired and served; a policy is added or replaced); `lab delete` removes them (a
//! Pod's namespace goes with it). Both rewrite the state the daemons follow.

use super::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// A port a pod serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPort {
    /// Its name, if it has one (a named port).
    pub name: Option<String>,
    /// Number.
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: String,
}

/// The objects of a cluster file, sorted by kind.
#[derive(Debug, Default, Clone)]
pub struct ClusterFile {
    /// Namespace -> labels.
    pub namespaces: Vec<(String, BTreeMap<String, String>)>,
    /// Pods: (namespace, name, node index, labels, ports).
    pub pods: Vec<FilePod>,
    /// Service objects.
    pub services: Vec<Value>,
    /// Everything else, one object each.
    pub others: Vec<Value>,
}

/// A pod of a cluster file.
#[derive(Debug, Clone)]
pub struct FilePod {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Node index (0-based).
    pub node: usize,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Ports it serves.
    pub ports: Vec<PodPort>,
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The key of an object: kind, namespace (empty for cluster-scoped), name.
pub fn object_key(v: &Value) -> (String, String, String) {
    (
        v["kind"].as_str().unwrap_or_default().to_string(),
        v["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

impl ClusterFile {
    /// Reads FILE.
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("cluster file {}", path.display()))
    }

    /// Parses a YAML stream of objects.
    pub fn parse(text: &str) -> Result<Self> {
        let mut out = ClusterFile::default();
        let mut input = text.as_bytes();
        for (i, doc) in serde_saphyr::read_with_options::<_, Value>(
            &mut input,
            // As Kubernetes reads YAML: only true/false are booleans (a namespace `y` stays a
            // name, not YAML 1.1's yes).
            serde_saphyr::options! { strict_booleans: true },
        )
        .enumerate()
        {
            let v = doc.map_err(|e| anyhow::anyhow!("document {}: {e}", i + 1))?;
            if v.is_null() {
                continue;
            }
            out.add(v).with_context(|| format!("document {}", i + 1))?;
        }
        Ok(out)
    }

    fn add(&mut self, v: Value) -> Result<()> {
        let kind = v["kind"].as_str().context("no kind")?.to_string();
        if kind == "List" || kind.ends_with("List") {
            for it in v["items"].as_array().cloned().unwrap_or_default() {
                self.add(it)?;
            }
            return Ok(());
        }
        let name = v["metadata"]["name"]
            .as_str()
            .with_context(|| format!("{kind} without metadata.name"))?
            .to_string();
        match kind.as_str() {
            "Namespace" => self.namespaces.push((name, labels_of(&v))),
            "Pod" => {
                let node = match v["spec"]["nodeName"].as_str() {
                    None => 0,
                    Some(n) => {
                        n.strip_prefix("node-")
                            .and_then(|i| i.parse::<usize>().ok())
                            .filter(|i| *i >= 1)
                            .with_context(|| {
                                format!("pod {name}: nodeName {n:?} is not node-1, node-2, ...")
                            })?
                            - 1
                    }
                };
                let mut ports = Vec::new();
                for c in v["spec"]["containers"].as_array().into_iter().flatten() {
                    for p in c["ports"].as_array().into_iter().flatten() {
                        let port = p["containerPort"]
                            .as_u64()
                            .and_then(|n| u16::try_from(n).ok())
                            .filter(|n| *n > 0)
                            .with_context(|| {
                                format!("pod {name}: a port without a valid containerPort")
                            })?;
                        let protocol = p["protocol"].as_str().unwrap_or("TCP").to_string();
                        if protocol != "TCP" && protocol != "UDP" {
                            bail!("pod {name}: the lab serves TCP and UDP, not {protocol}");
                        }
                        ports.push(PodPort {
                            name: p["name"].as_str().map(String::from),
                            port,
                            protocol,
                        });
                    }
                }
                self.pods.push(FilePod {
                    namespace: v["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("default")
                        .to_string(),
                    name,
                    node,
                    labels: labels_of(&v),
                    ports,
                });
            }
            "Service" => self.services.push(v),
            _ => self.others.push(v),
        }
        Ok(())
    }

    /// The number of nodes the pods need.
    pub fn nodes_needed(&self) -> usize {
        self.pods.iter().map(|p| p.node + 1).max().unwrap_or(1)
    }
}

impl LabPod {
    /// What its servers answer with: its name, or `namespace/name` outside namespace `lab`.
    pub fn who(&self) -> String {
        if self.namespace == "lab" {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}

impl Lab {
    /// The pod `namespace/name`.
    pub fn pod_in(&self, namespace: &str, name: &str) -> Option<usize> {
        self.pods
            .iter()
            .position(|p| p.namespace == namespace && p.name == name)
    }

    /// A new pod on node `node` (its namespace and link made when `wire`).
    pub(super) fn new_pod(&mut self, fp: &FilePod) -> LabPod {
        let i = fp.node + 1;
        // The next free host number on that node.
        let used: std::collections::BTreeSet<u8> = self
            .pods
            .iter()
            .filter(|p| p.node == fp.node)
            .map(|p| p.ip.octets()[3])
            .collect();
        let host = (10u8..250).find(|h| !used.contains(h)).unwrap_or(250);
        let j = host - 10;
        LabPod {
            name: fp.name.clone(),
            node: fp.node,
            ns: format!("{}-n{i}p{j}", self.prefix),
            ip: Ipv4Addr::new(10, 244, i as u8, host),
            mac: format!("02:00:0a:f4:{i:02x}:{host:02x}"),
            host_if: format!("xnp{j}"),
            namespace: fp.namespace.clone(),
            labels: fp.labels.clone(),
            ports: fp.ports.clone(),
        }
    }

    fn check_node(&self, fp: &FilePod) -> Result<()> {
        if fp.node >= self.nodes.len() {
            bail!(
                "pod {}/{} is on node-{}: the lab has {} nodes",
                fp.namespace,
                fp.name,
                fp.node + 1,
                self.nodes.len()
            );
        }
        Ok(())
    }

    /// Takes a cluster file's objects as the lab's cluster (before it is wired).
    pub(super) fn load_cluster(&mut self, cf: &ClusterFile) -> Result<()> {
        self.pods.clear();
        self.services.clear();
        self.namespaces.clear();
        for (n, l) in &cf.namespaces {
            self.namespaces.insert(n.clone(), l.clone());
        }
        for fp in &cf.pods {
            self.check_node(fp)?;
            if self.pod_in(&fp.namespace, &fp.name).is_some() {
                bail!("pod {}/{} twice", fp.namespace, fp.name);
            }
            self.namespaces.entry(fp.namespace.clone()).or_default();
            let p = self.new_pod(fp);
            self.pods.push(p);
        }
        for s in &cf.services {
            self.put_file_service(s.clone());
        }
        for o in &cf.others {
            self.put_other(o.clone());
        }
        Ok(())
    }

    fn put_file_service(&mut self, mut s: Value) {
        if s["spec"]["clusterIP"].as_str().is_none() {
            let k = 100 + self.file_services.len() as u8;
            s["spec"]["clusterIP"] = json!(format!("10.96.1.{k}"));
        }
        let key = object_key(&s);
        self.file_services.retain(|o| object_key(o) != key);
        self.file_services.push(s);
    }

    fn put_other(&mut self, o: Value) {
        let key = object_key(&o);
        self.file_objects.retain(|x| object_key(x) != key);
        self.file_objects.push(o);
    }

    /// The EndpointSlice of a cluster-file Service: the pods its selector picks, each port's
    /// target resolved on them (by number, or by name on each pod).
    pub(super) fn file_slice(&self, s: &Value) -> Value {
        let ns = s["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = s["metadata"]["name"].as_str().unwrap_or_default();
        let sel: BTreeMap<String, String> = s["spec"]["selector"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let picked: Vec<&LabPod> = self
            .pods
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                !self.absent.contains(i)
                    && p.namespace == ns
                    && !sel.is_empty()
                    && sel.iter().all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .map(|(_, p)| p)
            .collect();
        // One port per service port; a named target resolves to the first pod's number (the
        // lab's pods of one service declare the same numbers).
        let mut ports = Vec::new();
        for (k, sp) in s["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let proto = sp["protocol"].as_str().unwrap_or("TCP");
            let target = match &sp["targetPort"] {
                Value::Number(n) => n.as_u64().map(|n| n as u16),
                Value::String(t) => picked.iter().find_map(|p| {
                    p.ports
                        .iter()
                        .find(|pp| pp.name.as_deref() == Some(t.as_str()) && pp.protocol == proto)
                        .map(|pp| pp.port)
                }),
                _ => sp["port"].as_u64().map(|n| n as u16),
            };
            if let Some(t) = target {
                let pname = sp["name"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or(format!("p{k}"));
                ports.push(json!({"name": pname, "port": t, "protocol": proto}));
            }
        }
        let eps: Vec<Value> = picked
            .iter()
            .map(|p| json!({"addresses": [p.ip.to_string()], "conditions": {"ready": true}, "nodeName": self.nodes[p.node].name}))
            .collect();
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": format!("{name}-1"), "namespace": ns,
                            "labels": {"kubernetes.io/service-name": name}},
               "addressType": "IPv4", "ports": ports, "endpoints": eps})
    }

    /// Serves every port pod `i` declares, in this process.
    pub fn serve_pod(&mut self, i: usize) -> Result<()> {
        let p = self.pods[i].clone();
        for (port, tcp, udp) in served(&p.ports) {
            self.servers
                .push(Server::start_on(&p.ns, &p.who(), port, tcp, udp)?);
        }
        Ok(())
    }

    /// Serves every port pod `i` declares from a process of its own inside the pod's
    /// namespace (it outlives this process; `lab down` ends it with the namespace).
    pub fn serve_pod_detached(&self, i: usize) -> Result<()> {
        let p = &self.pods[i];
        let exe = std::env::current_exe().context("this executable")?;
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            p.ns.clone(),
            exe.to_string_lossy().into_owned(),
            "lab".into(),
            "serve-pod".into(),
            "--name".into(),
            p.who(),
        ];
        for (port, tcp, udp) in served(&p.ports) {
            if tcp {
                args.push("--tcp".into());
                args.push(port.to_string());
            }
            if udp {
                args.push("--udp".into());
                args.push(port.to_string());
            }
        }
        use std::os::unix::process::CommandExt;
        Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting the servers of pod {}", p.who()))?;
        Ok(())
    }

    /// Applies a cluster file's objects to the running lab: namespaces and pods relabelled,
    /// new pods wired and served (detached when `detached`), services and other objects
    /// added or replaced. Rewrites the state.
    pub fn apply_cluster(&mut self, cf: &ClusterFile, detached: bool) -> Result<()> {
        for (n, l) in &cf.namespaces {
            self.namespaces.insert(n.clone(), l.clone());
        }
        for fp in &cf.pods {
            match self.pod_in(&fp.namespace, &fp.name) {
                Some(i) => {
                    self.pods[i].labels = fp.labels.clone();
                    self.absent.remove(&i);
                }
                None => {
                    self.check_node(fp)?;
                    self.namespaces.entry(fp.namespace.clone()).or_default();
                    let p = self.new_pod(fp);
                    ip(&["netns", "add", &p.ns])?;
                    ip(&["-n", &p.ns, "link", "set", "lo", "up"])?;
                    self.pod_link(&p)?;
                    self.pods.push(p);
                    let i = self.pods.len() - 1;
                    if detached {
                        self.serve_pod_detached(i)?;
                    } else {
                        self.serve_pod(i)?;
                    }
                }
            }
        }
        for s in &cf.services {
            self.put_file_service(s.clone());
        }
        for o in &cf.others {
            self.put_other(o.clone());
        }
        self.write_state()
    }

    /// Removes a cluster file's objects from the running lab (a pod leaves the state and its
    /// namespace is deleted; a namespace's labels are dropped). Rewrites the state.
    pub fn delete_cluster(&mut self, cf: &ClusterFile) -> Result<()> {
        let mut gone_ns = Vec::new();
        for fp in &cf.pods {
            if let Some(i) = self.pod_in(&fp.namespace, &fp.name) {
                self.absent.insert(i);
                gone_ns.push(self.pods[i].ns.clone());
            }
        }
        for (n, _) in &cf.namespaces {
            if let Some(l) = self.namespaces.get_mut(n) {
                l.clear();
            }
        }
        let keys: Vec<_> = cf
            .services
            .iter()
            .chain(&cf.others)
            .map(object_key)
            .collect();
        self.file_services
            .retain(|o| !keys.contains(&object_key(o)));
        self.file_objects.retain(|o| !keys.contains(&object_key(o)));
        self.write_state()?;
        for ns in gone_ns {
            // Its servers and the namespace go; the daemon detaches the port when its link
            // disappears or the state no longer lists the pod.
            super::netns::stop_processes(&ns);
            let _ = ip(&["netns", "del", &ns]);
        }
        Ok(())
    }
}

/// (port, TCP, UDP) for every port number a pod declares.
fn served(ports: &[PodPort]) -> Vec<(u16, bool, bool)> {
    let mut m: BTreeMap<u16, (bool, bool)> = BTreeMap::new();
    for p in ports {
        let e = m.entry(p.port).or_default();
        if p.protocol == "TCP" {
            e.0 = true;
        } else {
            e.1 = true;
        }
    }
    m.into_iter().map(|(p, (t, u))| (p, t, u)).collect()
}

/// `lab serve-pod`: serves TCP and UDP ports as `name` until killed.
pub fn serve_forever(name: &str, tcp: &[u16], udp: &[u16]) -> Result<()> {
    let mut all: BTreeMap<u16, (bool, bool)> = BTreeMap::new();
    for &p in tcp {
        all.entry(p).or_default().0 = true;
    }
    for &p in udp {
        all.entry(p).or_default().1 = true;
    }
    let ns = ""; // already inside the pod's namespace (ip netns exec)
    let mut servers = Vec::new();
    for (p, (t, u)) in all {
        servers.push(Server::start_on(ns, name, p, t, u)?);
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The file in a lab's directory that describes it for `lab apply` and `lab delete`.
const DESCRIPTION: &str = "lab.json";

impl Lab {
    /// Writes what another process needs to change this lab ([`Lab::attach`]).
    pub fn save_description(&self) -> Result<()> {
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|n| {
                json!({"name": n.name, "ns": n.ns, "ip": n.ip.to_string(), "gateway": n.gateway.to_string(),
                       "core": n.core, "extra_addrs": n.extra_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>()})
            })
            .collect();
        let pods: Vec<Value> = self
            .pods
            .iter()
            .map(|p| {
                json!({"name": p.name, "node": p.node, "ns": p.ns, "ip": p.ip.to_string(), "mac": p.mac,
                       "host_if": p.host_if, "namespace": p.namespace, "labels": p.labels,
                       "ports": p.ports.iter().map(|pp| json!({"name": pp.name, "port": pp.port, "protocol": pp.protocol})).collect::<Vec<_>>()})
            })
            .collect();
        let services: Vec<Value> = self
            .services
            .iter()
            .map(|s| {
                json!({"name": s.name, "cluster_ip": s.cluster_ip.to_string(), "port": s.port,
                       "protocol": s.protocol, "node_port": s.node_port, "backends": s.backends})
            })
            .collect();
        let d = json!({"nodes": nodes, "pods": pods, "services": services,
            "absent": self.absent, "extra_objects": self.extra_objects, "namespaces": self.namespaces,
            "file_services": self.file_services, "file_objects": self.file_objects,
            "taps": self.taps, "mtu": self.mtu, "has_api": !self.api.is_empty()});
        std::fs::write(self.dir.join(DESCRIPTION), d.to_string())
            .context("writing the lab's description")
    }

    /// The lab with `prefix` that `lab up` left running, to change its cluster state (the
    /// daemons follow the state file). Dropping it leaves the lab as it is.
    pub fn attach(prefix: &str) -> Result<Lab> {
        let dir = lab_dir(prefix);
        let path = dir.join(DESCRIPTION);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("no running lab {prefix:?} ({} missing: start one with xdpnet-bench lab up --prefix {prefix})", path.display())
        })?;
        let d: Value = serde_json::from_str(&text).context("the lab's description")?;
        if d["has_api"].as_bool() == Some(true) {
            bail!(
                "lab {prefix} serves its state from the API server double of the process that started it; apply is for labs that follow their state file"
            );
        }
        let ip = |v: &Value| -> Result<Ipv4Addr> {
            v.as_str().context("address")?.parse().context("address")
        };
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let mut nodes = Vec::new();
        for n in d["nodes"].as_array().into_iter().flatten() {
            let name = s(&n["name"]);
            nodes.push(LabNode {
                ns: s(&n["ns"]),
                ip: ip(&n["ip"])?,
                gateway: ip(&n["gateway"])?,
                status: dir.join(format!("{name}.status.json")),
                log: dir.join(format!("{name}.log")),
                core: n["core"].as_u64().unwrap_or(0) as usize,
                extra_addrs: n["extra_addrs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str()?.parse().ok())
                    .collect(),
                name,
            });
        }
        let mut pods = Vec::new();
        for p in d["pods"].as_array().into_iter().flatten() {
            pods.push(LabPod {
                name: s(&p["name"]),
                node: p["node"].as_u64().unwrap_or(0) as usize,
                ns: s(&p["ns"]),
                ip: ip(&p["ip"])?,
                mac: s(&p["mac"]),
                host_if: s(&p["host_if"]),
                namespace: s(&p["namespace"]),
                labels: serde_json::from_value(p["labels"].clone()).unwrap_or_default(),
                ports: p["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|pp| PodPort {
                        name: pp["name"].as_str().map(String::from),
                        port: pp["port"].as_u64().unwrap_or(0) as u16,
                        protocol: s(&pp["protocol"]),
                    })
                    .collect(),
            });
        }
        let mut services = Vec::new();
        for v in d["services"].as_array().into_iter().flatten() {
            services.push(LabService {
                name: s(&v["name"]),
                cluster_ip: ip(&v["cluster_ip"])?,
                port: v["port"].as_u64().unwrap_or(0) as u16,
                protocol: if v["protocol"] == "UDP" { "UDP" } else { "TCP" },
                node_port: v["node_port"].as_u64().map(|p| p as u16),
                backends: serde_json::from_value(v["backends"].clone()).unwrap_or_default(),
            });
        }
        let list = |k: &str| -> Vec<Value> { d[k].as_array().cloned().unwrap_or_default() };
        Ok(Lab {
            prefix: prefix.to_string(),
            dir: dir.clone(),
            underlay_ns: format!("{prefix}-ul"),
            ext_ns: format!("{prefix}-ext"),
            ext_ip: Ipv4Addr::new(198, 18, 0, 100),
            nodes,
            pods,
            services,
            absent: serde_json::from_value(d["absent"].clone()).unwrap_or_default(),
            extra_objects: serde_json::from_value(d["extra_objects"].clone()).unwrap_or_default(),
            daemons: Vec::new(),
            servers: Vec::new(),
            bin_dir: bin_dir(),
            daemon_args: Vec::new(),
            workers: 1,
            uplink_queues: 1,
            frames: 0,
            max_pods: 0,
            taps: d["taps"].as_bool().unwrap_or(false),
            mtu: d["mtu"].as_u64().unwrap_or(1500) as u16,
            namespaces: serde_json::from_value(d["namespaces"].clone()).unwrap_or_default(),
            file_services: list("file_services"),
            file_objects: list("file_objects"),
            api: Vec::new(),
            api_objects: Default::default(),
            keep: true,
        })
    }
}
