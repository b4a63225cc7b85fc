//! The bed: one lab with the benchmark's services, switched between the variants (daemons
//! stopped or started, NAPI threads pinned), and the generator run of each scenario.

use super::*;

/// The lab, the kernel path and the daemons, switched between variants.
#[derive(Debug)]
pub struct Bed {
    /// The lab.
    pub lab: Lab,
    pub(super) opts: Options,
    pub(super) variant: Option<Variant>,
    /// node-1's uplink MAC (the NodePort's next hop from the external client).
    node1_mac: [u8; 6],
    pub(super) fillers: usize,
}

impl Bed {
    /// Builds the lab (daemons stopped), the services and the kernel path.
    pub fn up(opts: &Options) -> Result<Bed> {
        let mut spec = LabSpec::new(&opts.prefix, 2, 2);
        spec.workers = 1;
        spec.kube_api = opts.churn > 0;
        spec.mtu = opts.mtu;
        // The API server double's threads (started with the lab, when churn runs) serve the
        // watches from the generator's core, as the churn thread does: the forwarding core
        // carries only the variant under test.
        let all = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
            .context("reading this thread's cores")?;
        if spec.kube_api {
            crate::loadgen::pin_to_core(opts.gen_core)?;
        }
        let lab = Lab::up(&spec);
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &all)
            .context("restoring this thread's cores")?;
        let mut lab = lab?;
        for n in 0..lab.nodes.len() {
            lab.stop_daemon(n, nix::sys::signal::Signal::SIGTERM)?;
            lab.nodes[n].core = opts.dp_core;
        }
        let node1_mac = Place::new(&lab.nodes[0].ns, "eth0").mac()?;
        let mut bed = Bed {
            lab,
            opts: opts.clone(),
            variant: None,
            node1_mac,
            fillers: 0,
        };
        let first = opts.scale.first().copied().unwrap_or(2);
        bed.set_services(first)?;
        bed.kernel_path()?;
        bed.quiet_ipv6()?;
        bed.pod_neighbours()?;
        Ok(bed)
    }

    /// Makes the table (and iptables) hold `total` services: the benchmark's own
    /// ([`BENCH_SERVICES`]) and fillers for the rest (TCP 80, two backends each).
    pub fn set_services(&mut self, total: usize) -> Result<()> {
        let fillers = total.saturating_sub(BENCH_SERVICES);
        let pod = |name: &str| self.lab.pods.iter().position(|p| p.name == name);
        let sink = pod("pod-2-0").context("pod-2-0")?;
        let (f1, f2) = (
            pod("pod-1-1").context("pod-1-1")?,
            pod("pod-2-1").context("pod-2-1")?,
        );
        let mut services = Vec::with_capacity(total);
        // The benchmark's services sit in the middle of the list: kube-proxy writes services
        // in map order, so a service's rule is on average half way down KUBE-SERVICES.
        for k in 0..fillers {
            if k == fillers / 2 {
                services.extend(bench_services(sink));
            }
            let ip = u32::from(Ipv4Addr::new(10, 100, 0, 0)) + k as u32;
            services.push(LabService {
                name: format!("fill-{k}"),
                cluster_ip: Ipv4Addr::from(ip),
                port: 80,
                protocol: "TCP",
                node_port: None,
                backends: vec![f1, f2],
            });
        }
        if fillers == 0 {
            services.extend(bench_services(sink));
        }
        self.lab.services = services;
        self.fillers = fillers;
        self.lab.write_state()?;
        let rules = kube_proxy_rules(&self.lab);
        for n in &self.lab.nodes {
            run_stdin("ip", &["netns", "exec", &n.ns, "iptables-restore"], &rules)
                .with_context(|| format!("iptables-restore in {}", n.ns))?;
        }
        if matches!(
            self.variant,
            Some(Variant::Full | Variant::IoOnly | Variant::Tap)
        ) {
            self.wait_services(self.lab.services.len())?;
        }
        Ok(())
    }

    pub(super) fn wait_services(&self, want: usize) -> Result<()> {
        let t = std::time::Instant::now();
        for n in 0..self.lab.nodes.len() {
            while self.lab.status(n).and_then(|s| s["services"].as_u64()) != Some(want as u64) {
                if t.elapsed() > Duration::from_secs(60) {
                    bail!(
                        "{} did not load {want} services; log:\n{}",
                        self.lab.nodes[n].name,
                        self.lab.log_tail(n, 20)
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Each pod's kernel sends to the other pods of its /24 through the gateway MAC (a
    /// permanent neighbour entry each): the same hop for every variant, whether the node
    /// answers ARP for them (xdpnet's pipeline) or not (the kernel path, `--io-only`).
    fn pod_neighbours(&self) -> Result<()> {
        for p in &self.lab.pods {
            for q in self
                .lab
                .pods
                .iter()
                .filter(|q| q.node == p.node && q.name != p.name)
            {
                lab::permanent_neighbour(&p.ns, "eth0", &q.ip.to_string(), GATEWAY_MAC)?;
            }
        }
        Ok(())
    }

    /// Switches to `v`: stops or (re)starts the daemons.
    pub fn use_variant(&mut self, v: Variant) -> Result<()> {
        if self.variant == Some(v) {
            return Ok(());
        }
        for n in 0..self.lab.nodes.len() {
            if self.lab.daemon_running(n) {
                self.lab.stop_daemon(n, nix::sys::signal::Signal::SIGTERM)?;
            }
            let _ = std::fs::remove_file(&self.lab.nodes[n].status);
        }
        // Pods' offloads: as a distro leaves a veth for the kernel path; TX checksum off for
        // xdpnet, which an AF_XDP port needs (it carries no partial-checksum metadata). And
        // for xdpnet a queueing discipline on the pods' side: a full veth ring then holds the
        // pod's sender back (Linux 6.16 on) rather than dropping what it sent.
        // The tap variant gives the pods taps instead (offloads on: the tap carries them).
        if (v == Variant::Tap) != self.lab.taps {
            self.lab.set_pod_interfaces(v == Variant::Tap)?;
            self.pod_neighbours()?;
        }
        for p in &self.lab.pods {
            match v {
                Variant::Tap => {}
                Variant::Kernel => {
                    lab::tx_on(&p.ns, "eth0")?;
                    let _ = sh("tc", &["-n", &p.ns, "qdisc", "del", "dev", "eth0", "root"]);
                }
                _ => {
                    lab::tx_off(&p.ns, "eth0")?;
                    lab::fifo_queue(&p.ns, "eth0")?;
                }
            }
        }
        if v != Variant::Kernel {
            let mut args = self.opts.xdpnet_args.clone();
            if v == Variant::IoOnly {
                args.push("--io-only".into());
            }
            self.lab.set_daemon_args(args);
            for n in 0..self.lab.nodes.len() {
                self.lab.start_daemon(n)?;
            }
            self.lab.wait_ready(Duration::from_secs(60))?;
            self.variant = Some(v);
            self.wait_services(self.lab.services.len())?;
            self.pin_napi()?;
        }
        self.variant = Some(v);
        Ok(())
    }

    /// Threaded NAPI on every XDP interface of the nodes, the threads on the dataplane core;
    /// the daemons' other threads (control loop, status, metrics) on the generator core: the
    /// dataplane core forwards and nothing else, as kube-proxy's and Flannel's daemons are
    /// idle while the kernel path forwards.
    pub(super) fn pin_napi(&self) -> Result<()> {
        for n in 0..self.lab.nodes.len() {
            let Some(pid) = self.lab.daemon_pid(n) else {
                continue;
            };
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
                .with_context(|| format!("threads of xdpnetd {pid}"))?;
            for t in tasks.flatten() {
                let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                if !comm.starts_with("xdpnet-w") {
                    let tid = t.file_name().to_string_lossy().into_owned();
                    let _ = sh(
                        "taskset",
                        &["-p", "-c", &self.opts.gen_core.to_string(), &tid],
                    );
                }
            }
        }
        for n in &self.lab.nodes {
            let script = "for d in /sys/class/net/*; do \
                 if ip link show $(basename $d) | grep -q 'prog/xdp'; then echo 1 > $d/threaded; fi; done";
            sh("ip", &["netns", "exec", &n.ns, "sh", "-c", script])?;
        }
        let ps = sh("ps", &["-e", "-o", "pid=,comm="])?;
        for l in ps.lines() {
            let mut it = l.split_whitespace();
            if let (Some(pid), Some(comm)) = (it.next(), it.next())
                && comm.starts_with("napi/")
            {
                let _ = sh(
                    "taskset",
                    &["-p", "-c", &self.opts.dp_core.to_string(), pid],
                );
                if let Some(prio) = self.opts.napi_fifo {
                    let _ = sh("chrt", &["-f", "-p", &prio.to_string(), pid]);
                }
            }
        }
        Ok(())
    }

    /// The generator run for `scenario` under the current variant.
    pub fn spec(&self, s: Scenario, rate: Option<f64>, seconds: f64) -> Result<RunSpec> {
        let pod = |name: &str| self.lab.pod(name);
        let (src, dst) = (pod("pod-1-0")?, pod("pod-2-0")?);
        let io = self.variant == Some(Variant::IoOnly);
        let gw = parse_mac(GATEWAY_MAC)?;
        // The generator's (namespace, MAC, address), the sink pod, next hop, destination.
        let from_pod = (src.ns.as_str(), parse_mac(&src.mac)?, src.ip);
        let (from, to, dst_mac, dst_ip, dst_port) = match s {
            Scenario::SameNode => {
                let d = pod("pod-1-1")?;
                (from_pod, d, gw, d.ip, POD_PORT)
            }
            Scenario::CrossNode => (from_pod, dst, gw, dst.ip, POD_PORT),
            // I/O-only has no services: the same hops, addressed to the backend.
            Scenario::ClusterIp | Scenario::ClusterIpTcp if io => {
                (from_pod, dst, gw, dst.ip, POD_PORT)
            }
            Scenario::ClusterIp => (from_pod, dst, gw, BENCH_CLUSTER_IP, 53),
            Scenario::ClusterIpTcp => (from_pod, dst, gw, BENCH_TCP_IP, 80),
            Scenario::NodePort => {
                let ext = Place::new(&self.lab.ext_ns, "eth0");
                let client = (self.lab.ext_ns.as_str(), ext.mac()?, self.lab.ext_ip);
                if io {
                    (client, dst, self.node1_mac, dst.ip, POD_PORT)
                } else {
                    let node1 = self.lab.nodes[0].ip;
                    (client, dst, self.node1_mac, node1, BENCH_NODE_PORT)
                }
            }
        };
        let tcp = s == Scenario::ClusterIpTcp;
        let proto = if tcp { Proto::TcpHandshake } else { Proto::Udp };
        Ok(RunSpec {
            frame: TrafficSpec {
                src_mac: from.1,
                dst_mac,
                src_ip: from.2,
                dst_ip,
                dst_port,
                src_port: 10_000,
                src_addrs: 1,
                proto,
                size: self.opts.size.max(proto.min_frame()),
            },
            flows: if tcp {
                HANDSHAKE_FLOWS
            } else {
                self.opts.flows
            },
            rate,
            seconds,
            packets: None,
            from: Place::new(from.0, "eth0"),
            to: Place::new(&to.ns, "eth0"),
            core: Some(self.opts.gen_core),
            progress: false,
        })
    }
}
