//! The kernel path, made by hand the way Flannel (VXLAN backend) and kube-proxy (iptables
//! mode) make it: the VXLAN device, routes, neighbour and FDB entries, the nat table.

use super::*;

impl Bed {
    /// Flannel's VXLAN device, routes, neighbours and FDB entries; pods routed over their
    /// veths; forwarding on; RPS to the dataplane core on every interface of the lab.
    pub(super) fn kernel_path(&mut self) -> Result<()> {
        let nodes = self.lab.nodes.clone();
        let vtep_mac = |i: usize| format!("0e:f1:a0:00:00:{:02x}", i + 1);
        let mtu = self.lab.pod_mtu().to_string();
        for (i, n) in nodes.iter().enumerate() {
            let ns = n.ns.as_str();
            sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                ],
            )?;
            let local = n.ip.to_string();
            sh(
                "ip",
                &[
                    "-n",
                    ns,
                    "link",
                    "add",
                    "flannel.1",
                    "type",
                    "vxlan",
                    "id",
                    "1",
                    "local",
                    &local,
                    "dev",
                    "eth0",
                    "dstport",
                    "8472",
                    "nolearning",
                ],
            )?;
            sh(
                "ip",
                &[
                    "-n",
                    ns,
                    "link",
                    "set",
                    "flannel.1",
                    "address",
                    &vtep_mac(i),
                    "mtu",
                    &mtu,
                    "up",
                ],
            )?;
            let own = format!("10.244.{}.0/32", i + 1);
            sh("ip", &["-n", ns, "addr", "add", &own, "dev", "flannel.1"])?;
            for (j, m) in nodes.iter().enumerate() {
                if i == j {
                    continue;
                }
                let gw = format!("10.244.{}.0", j + 1);
                let cidr = format!("10.244.{}.0/24", j + 1);
                sh(
                    "ip",
                    &[
                        "-n",
                        ns,
                        "route",
                        "add",
                        &cidr,
                        "via",
                        &gw,
                        "dev",
                        "flannel.1",
                        "onlink",
                    ],
                )?;
                lab::permanent_neighbour(ns, "flannel.1", &gw, &vtep_mac(j))?;
                let dst = m.ip.to_string();
                sh(
                    "bridge",
                    &[
                        "-n",
                        ns,
                        "fdb",
                        "append",
                        &vtep_mac(j),
                        "dev",
                        "flannel.1",
                        "dst",
                        &dst,
                    ],
                )?;
            }
        }
        for p in self.lab.pods.clone() {
            let ns = self.lab.nodes[p.node].ns.clone();
            let host = p.host_if.as_str();
            sh(
                "ip",
                &["-n", &ns, "link", "set", host, "address", GATEWAY_MAC],
            )?;
            let dst = format!("{}/32", p.ip);
            sh("ip", &["-n", &ns, "route", "add", &dst, "dev", host])?;
            lab::permanent_neighbour(&ns, host, &p.ip.to_string(), &p.mac)?;
        }
        // RPS: the nodes' receive processing on the dataplane core; the network's (the
        // underlay bridge standing in for the switch, the external client) on the generator
        // core, for every variant: a switch's forwarding is not a node's work, and under a
        // flood it would otherwise take the dataplane core from whichever variant runs.
        let on = |core: usize| format!("{:x}", 1u64 << core);
        let mut nss: Vec<(String, String)> = nodes
            .iter()
            .map(|n| (n.ns.clone(), on(self.opts.dp_core)))
            .collect();
        nss.push((self.lab.underlay_ns.clone(), on(self.opts.gen_core)));
        nss.push((self.lab.ext_ns.clone(), on(self.opts.gen_core)));
        for (ns, mask) in nss {
            let script = format!(
                "for q in /sys/class/net/*/queues/rx-*/rps_cpus; do echo {mask} > $q; done"
            );
            sh("ip", &["netns", "exec", &ns, "sh", "-c", &script])?;
        }
        Ok(())
    }

    /// Turns IPv6 off in every namespace of the lab: no autoconfiguration or MLD chatter
    /// among the generator's frames (each such frame would be dropped and counted).
    pub fn quiet_ipv6(&self) -> Result<()> {
        let mut nss: Vec<&str> = self.lab.nodes.iter().map(|n| n.ns.as_str()).collect();
        nss.extend(self.lab.pods.iter().map(|p| p.ns.as_str()));
        nss.push(&self.lab.underlay_ns);
        nss.push(&self.lab.ext_ns);
        for ns in nss {
            lab::no_ipv6(ns)?;
        }
        Ok(())
    }
}

pub(super) fn bench_services(sink: usize) -> Vec<LabService> {
    vec![
        LabService {
            name: "bench-udp".into(),
            cluster_ip: BENCH_CLUSTER_IP,
            port: 53,
            protocol: "UDP",
            node_port: None,
            backends: vec![sink],
        },
        LabService {
            name: "bench-tcp".into(),
            cluster_ip: BENCH_TCP_IP,
            port: 80,
            protocol: "TCP",
            node_port: None,
            backends: vec![sink],
        },
        LabService {
            name: "bench-np".into(),
            cluster_ip: BENCH_NP_IP,
            port: 53,
            protocol: "UDP",
            node_port: Some(BENCH_NODE_PORT),
            backends: vec![sink],
        },
        LabService {
            name: "bench-np-tcp".into(),
            cluster_ip: BENCH_NP_TCP_IP,
            port: 80,
            protocol: "TCP",
            node_port: Some(BENCH_NODE_PORT_TCP),
            backends: vec![sink],
        },
    ]
}

pub(super) fn chain(kind: &str, key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    format!("{kind}-{:016X}", h)
}

/// The nat table kube-proxy (iptables mode) writes for the lab's services (the same on every
/// node).
pub fn kube_proxy_rules(lab: &Lab) -> String {
    let mut r = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let mut body = String::new();
    let mut nodeports = String::new();
    for s in &lab.services {
        let proto = s.protocol.to_ascii_lowercase();
        let svc = chain("KUBE-SVC", &s.name);
        let _ = writeln!(r, ":{svc} - [0:0]");
        let _ = writeln!(
            body,
            "-A KUBE-SERVICES -d {}/32 -p {proto} -m {proto} --dport {} -j {svc}",
            s.cluster_ip, s.port
        );
        let _ = writeln!(
            body,
            "-A {svc} ! -s 10.244.0.0/16 -d {}/32 -p {proto} -m {proto} --dport {} -j KUBE-MARK-MASQ",
            s.cluster_ip, s.port
        );
        if let Some(np) = s.node_port {
            let ext = chain("KUBE-EXT", &s.name);
            let _ = writeln!(r, ":{ext} - [0:0]");
            let _ = writeln!(
                nodeports,
                "-A KUBE-NODEPORTS -p {proto} -m {proto} --dport {np} -j {ext}"
            );
            let _ = writeln!(body, "-A {ext} -j KUBE-MARK-MASQ");
            let _ = writeln!(body, "-A {ext} -j {svc}");
        }
        let k = s.backends.len();
        for (i, &b) in s.backends.iter().enumerate() {
            let p = &lab.pods[b];
            let sep = chain("KUBE-SEP", &format!("{}/{}", s.name, p.ip));
            let _ = writeln!(r, ":{sep} - [0:0]");
            let left = k - i;
            if left > 1 {
                let _ = writeln!(
                    body,
                    "-A {svc} -m statistic --mode random --probability {:.11} -j {sep}",
                    1.0 / left as f64
                );
            } else {
                let _ = writeln!(body, "-A {svc} -j {sep}");
            }
            let _ = writeln!(body, "-A {sep} -s {}/32 -j KUBE-MARK-MASQ", p.ip);
            let _ = writeln!(
                body,
                "-A {sep} -p {proto} -m {proto} -j DNAT --to-destination {}:{POD_PORT}",
                p.ip
            );
        }
    }
    r.push_str(
        "-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n-A POSTROUTING -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -j MASQUERADE --random-fully\n",
    );
    r.push_str(&body);
    r.push_str(&nodeports);
    r.push_str("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n");
    r
}
