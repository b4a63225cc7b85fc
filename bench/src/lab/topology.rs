//! The topology: the underlay, the nodes with their uplinks and host ports, the pods and the
//! external client; taking it down.

use super::*;

impl Lab {
    /// The pod named `name`.
    pub fn pod(&self, name: &str) -> Result<&LabPod> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("{name} in the lab"))
    }

    /// Builds the lab, writes the state (with [`Lab::default_services`]), starts one xdpnetd
    /// per node and waits until every daemon has its pods and peers. On error everything made
    /// so far is removed.
    pub fn up(spec: &LabSpec) -> Result<Lab> {
        if spec.nodes == 0 || spec.nodes > 200 || spec.pods_per_node > 200 {
            bail!("lab size: 1..200 nodes, 0..200 pods per node");
        }
        if !(1280..=9216).contains(&spec.mtu) {
            bail!("lab MTU {}: 1280..9216", spec.mtu);
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
            taps: spec.taps,
            mtu: spec.mtu,
            namespaces: [("lab".to_string(), Default::default())].into(),
            file_services: Vec::new(),
            file_objects: Vec::new(),
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
                    namespace: "lab".into(),
                    labels: [("pod".to_string(), format!("pod-{i}-{j}"))].into(),
                    ports: ["TCP", "UDP"]
                        .map(|p| PodPort {
                            name: None,
                            port: POD_PORT,
                            protocol: p.into(),
                        })
                        .to_vec(),
                });
            }
        }
        lab.services = lab.default_services();
        if let Some(cf) = &spec.cluster {
            if cf.nodes_needed() > spec.nodes {
                bail!(
                    "the cluster file puts pods on {} nodes; the lab has {} (--nodes)",
                    cf.nodes_needed(),
                    spec.nodes
                );
            }
            lab.load_cluster(cf)?;
        }
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

    pub(super) fn wire(&mut self) -> Result<()> {
        let ul = self.underlay_ns.clone();
        ip(&["netns", "add", &ul])?;
        ip(&["-n", &ul, "link", "set", "lo", "up"])?;
        ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &ul, "link", "set", "br0", "up"])?;
        let ext = self.ext_ns.clone();
        ip(&["netns", "add", &ext])?;
        ip(&["-n", &ext, "link", "set", "lo", "up"])?;
        self.uplink(&ext, "ext", self.ext_ip)?;
        let pod_mtu = self.pod_mtu().to_string();
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
                &pod_mtu,
                "up",
            ])?;
            ip(&["-n", &n.ns, "link", "set", "xdpnet0", "mtu", &pod_mtu, "up"])?;
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
            ip(&["netns", "add", &p.ns])?;
            ip(&["-n", &p.ns, "link", "set", "lo", "up"])?;
            self.pod_link(&p)?;
        }
        Ok(())
    }

    /// Pod `p`'s `eth0` (a veth with its host end, or a tap) with its MAC, MTU, address,
    /// queue, gateway neighbour and default route.
    pub(super) fn pod_link(&self, p: &LabPod) -> Result<()> {
        let node = &self.nodes[p.node];
        let mtu = self.pod_mtu().to_string();
        if self.taps {
            // As the CNI endpoint gives a pod in tap mode: a persistent tap with a
            // virtio-net header, offloads left on (the dataplane opens it by name).
            ip(&[
                "-n", &p.ns, "tuntap", "add", "dev", "eth0", "mode", "tap", "vnet_hdr",
            ])?;
        } else {
            ip(&[
                "-n", &node.ns, "link", "add", &p.host_if, "mtu", &mtu, "type", "veth", "peer",
                "name", "eth0", "netns", &p.ns,
            ])?;
        }
        ip(&[
            "-n", &p.ns, "link", "set", "eth0", "address", &p.mac, "mtu", &mtu, "up",
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
        if !self.taps {
            tx_off(&p.ns, "eth0")?;
            // As the CNI plugin gives a pod: a queue, so a full ring towards the
            // dataplane holds the pod's sender back.
            fifo_queue(&p.ns, "eth0")?;
        }
        let gw = node.gateway.to_string();
        permanent_neighbour(&p.ns, "eth0", &gw, GATEWAY_MAC)?;
        ip(&[
            "-n", &p.ns, "route", "add", "default", "via", &gw, "dev", "eth0",
        ])?;
        if !self.taps {
            ip(&["-n", &node.ns, "link", "set", &p.host_if, "up"])?;
        }
        Ok(())
    }

    /// Gives every pod a tap (`taps`) or a veth as its `eth0`, with everything else as
    /// before, and rewrites the cluster state (a tap pod is annotated with its namespace).
    /// The daemons must be stopped first.
    pub fn set_pod_interfaces(&mut self, taps: bool) -> Result<()> {
        if self.taps == taps {
            return Ok(());
        }
        for p in self.pods.clone() {
            if self.taps {
                ip(&["-n", &p.ns, "link", "del", "eth0"])?;
            } else {
                ip(&["-n", &self.nodes[p.node].ns, "link", "del", &p.host_if])?;
            }
        }
        self.taps = taps;
        for p in self.pods.clone() {
            self.pod_link(&p)?;
        }
        self.write_state()
    }

    /// Veth `eth0` in `ns` with `addr`/24, peer `peer` on the underlay bridge.
    pub(super) fn uplink(&self, ns: &str, peer: &str, addr: Ipv4Addr) -> Result<()> {
        let ul = &self.underlay_ns;
        let q = self.uplink_queues.to_string();
        let mtu = self.mtu.to_string();
        ip(&[
            "-n",
            ns,
            "link",
            "add",
            "eth0",
            "mtu",
            &mtu,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "mtu",
            &mtu,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "netns",
            ul,
        ])?;
        ip(&["-n", ul, "link", "set", peer, "master", "br0", "up"])?;
        // The switch's port buffer: a queue on the bridge's side of the link, so that a full
        // ring at the far end (its XDP) holds frames back instead of dropping them (Linux 6.16
        // on), as a switch buffers a burst; what overflows it is counted (`link_drops`).
        fifo_queue(ul, peer)?;
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

    /// Gives node `n` another address (on its `lo`, and as an ExternalIP in its Node object;
    /// call [`Lab::write_state`] after).
    pub fn add_node_address(&mut self, n: usize, addr: Ipv4Addr) -> Result<()> {
        let ns = self.nodes[n].ns.clone();
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/32"), "dev", "lo"])?;
        self.nodes[n].extra_addrs.push(addr);
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

    pub(super) fn teardown(&mut self) {
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

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep {
            self.teardown();
        }
    }
}
