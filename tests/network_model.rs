//! End-to-end: the Kubernetes network model beyond pod to pod, in the lab with real kernels on
//! both ends. Pods <-> node addresses (InternalIP and ExternalIP) and host-network servers;
//! Services whose endpoints are node addresses (the `kubernetes` Service's shape, no nodeName)
//! from pods and hosts, on the same node and across nodes; NodePort on any node's address from
//! a pod; egress to the outside client (which has no route to pods) masqueraded, for TCP, UDP,
//! ICMP and ICMP errors, across a daemon restart, with nonMasqueradeCIDRs and switched off; no
//! overlay injection from pods. Then the behaviours of upstream `[sig-network]` Conformance
//! tests that need no kubelet (tests/README.md maps them to their upstream names).

use anyhow::{Context, Result, ensure};
use nix::sys::signal::Signal;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::Duration;
use xdpnet_bench::lab::{self, Lab, POD_PORT, UdpSink};
use xdpnet_e2e::{fresh_status, status, with_lab};

/// A drop counter of node `n`, summed over its workers.
fn drops(lab: &Lab, n: usize, reason: &str) -> u64 {
    let s = fresh_status(lab, n);
    s["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| w["pipeline"]["drops"][reason].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// Writes the state and waits until every daemon has published it.
fn publish(lab: &mut Lab) -> Result<()> {
    let g: Vec<u64> = (0..lab.nodes.len())
        .map(|n| status(lab, n)["generation"].as_u64().unwrap_or(0))
        .collect();
    lab.write_state()?;
    for (n, &g) in g.iter().enumerate() {
        lab.wait_generation(n, g, Duration::from_secs(10))?;
    }
    Ok(())
}

/// One port of a test Service: (name, port, targetPort, protocol, nodePort).
type Port<'a> = (&'a str, u16, u16, &'a str, Option<u16>);

/// A Service in namespace `lab` and its EndpointSlice: `endpoints` are (address, nodeName).
fn service(
    name: &str,
    ty: &str,
    cluster_ip: Ipv4Addr,
    ports: &[Port<'_>],
    endpoints: &[(Ipv4Addr, Option<&str>)],
    affinity: bool,
) -> Vec<String> {
    let sp: Vec<String> = ports
        .iter()
        .map(|(n, p, t, pr, np)| {
            let np = np.map(|v| format!(", nodePort: {v}")).unwrap_or_default();
            format!("  - {{name: {n}, port: {p}, targetPort: {t}, protocol: {pr}{np}}}")
        })
        .collect();
    let aff = if affinity {
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n"
    } else {
        "  sessionAffinity: None\n"
    };
    let svc = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: lab}}\nspec:\n  type: {ty}\n  clusterIP: {cluster_ip}\n{aff}  ports:\n{}\n",
        sp.join("\n")
    );
    let ep: Vec<String> = ports
        .iter()
        .map(|(n, _, t, pr, _)| format!("{{name: {n}, port: {t}, protocol: {pr}}}"))
        .collect();
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(a, node)| {
            let node = node.map(|n| format!(", nodeName: {n}")).unwrap_or_default();
            format!("- {{addresses: [{a}], conditions: {{ready: true}}{node}}}")
        })
        .collect();
    let slice = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: lab\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{}]\nendpoints:\n{}\n",
        ep.join(", "),
        eps.join("\n")
    );
    vec![svc, slice]
}

/// A raw VXLAN payload (header + inner Ethernet frame) carrying a UDP datagram `src` -> `dst`
/// port `dport` with valid checksums: what a node would send for one of its pods.
fn vxlan_payload(src: Ipv4Addr, src_mac: [u8; 6], dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let gw_mac = [0x02, 0xfe, 0x78, 0x64, 0x70, 0x01];
    let b = etherparse::PacketBuilder::ethernet2(src_mac, gw_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(5000, dport);
    let body = b"forged inner packet";
    let mut inner = Vec::with_capacity(b.size(body.len()));
    b.write(&mut inner, body).expect("frame");
    let mut v = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    v.extend_from_slice(&inner);
    v
}

fn send_udp(ns: &str, to: SocketAddrV4, payload: Vec<u8>, n: usize) -> Result<()> {
    lab::in_ns(ns, move || -> Result<()> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        for _ in 0..n {
            s.send_to(&payload, to)?;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    })?
}

/// True when a TCP connection from `ns` to `to` fails within a second (refused or silent).
fn unreachable(ns: &str, to: SocketAddrV4) -> Result<bool> {
    lab::in_ns(ns, move || {
        TcpStream::connect_timeout(&to.into(), Duration::from_secs(1)).is_err()
    })
}

#[test]
fn pods_and_hosts_reach_node_addresses_and_host_network_endpoints() {
    with_lab("nmnode", |lab| {
        let (n1, n2) = (lab.nodes[0].clone(), lab.nodes[1].clone());
        let ext2 = Ipv4Addr::new(198, 19, 0, 12);
        lab.add_node_address(1, ext2)?;
        // Host-network servers (kubelet / node exporter on 9100, an API server on 6443).
        lab.serve(&n1.ns, "node-1-host", 9100)?;
        lab.serve(&n2.ns, "node-2-host", 9100)?;
        lab.serve(&n1.ns, "apiserver-1", 6443)?;
        lab.serve(&n2.ns, "apiserver-2", 6443)?;
        let api = Ipv4Addr::new(10, 96, 0, 1);
        let dns2 = Ipv4Addr::new(10, 96, 0, 2);
        let local = Ipv4Addr::new(10, 96, 0, 3);
        // The `kubernetes` Service's shape: endpoint = node 2's address, no nodeName.
        let mut objs = service(
            "kubernetes",
            "ClusterIP",
            api,
            &[("https", 443, 6443, "TCP", None)],
            &[(n2.ip, None)],
            false,
        );
        objs.extend(service(
            "hostnet-udp",
            "ClusterIP",
            dns2,
            &[("dns", 53, 9100, "UDP", None)],
            &[(n2.ip, Some("node-2"))],
            false,
        ));
        objs.extend(service(
            "hostnet-1",
            "ClusterIP",
            local,
            &[
                ("https", 443, 6443, "TCP", None),
                ("dns", 53, 9100, "UDP", None),
            ],
            &[(n1.ip, Some("node-1"))],
            false,
        ));
        lab.extra_objects = objs;
        publish(lab)?;

        // Pods -> every node's addresses (TCP, UDP, ICMP), without NAT either way.
        for p in lab.pods.clone() {
            for (addr, name) in [
                (n1.ip, "node-1-host"),
                (n2.ip, "node-2-host"),
                (ext2, "node-2-host"),
            ] {
                let to = SocketAddrV4::new(addr, 9100);
                let x = lab::tcp_exchange(&p.ns, to, 256 << 10)
                    .with_context(|| format!("{} -> {to}", p.name))?;
                ensure!(x.server == name, "{} -> {to}: {}", p.name, x.server);
                let names = lab::udp_exchange(&p.ns, to, 3)?;
                ensure!(names.iter().all(|n| n == name), "{names:?}");
                let (_, seen) = lab::tcp_whoami(&p.ns, to)?;
                ensure!(*seen.ip() == p.ip, "{to} saw {} as {seen}", p.name);
                let (_, seen) = lab::udp_whoami(&p.ns, to)?;
                ensure!(*seen.ip() == p.ip, "{to} saw {} as {seen} (UDP)", p.name);
            }
            lab::ping(&p.ns, n2.ip, 2)?;
            lab::ping(&p.ns, ext2, 2)?;
            lab::ping(&p.ns, n1.ip, 2)?;
            // Both hosts -> the pod.
            for n in [&n1, &n2] {
                let x = lab::tcp_exchange(&n.ns, SocketAddrV4::new(p.ip, POD_PORT), 64 << 10)?;
                ensure!(x.server == p.name);
                lab::ping(&n.ns, p.ip, 1)?;
            }
        }

        // Services whose endpoints are node addresses, from every pod and both hosts.
        let clients: Vec<(String, String)> = lab
            .pods
            .iter()
            .map(|p| (p.name.clone(), p.ns.clone()))
            .chain([n1.clone(), n2.clone()].map(|n| (n.name.clone(), n.ns.clone())))
            .collect();
        for (who, ns) in &clients {
            for (vip, tcp_name, udp_name) in [
                (api, Some("apiserver-2"), None),
                (dns2, None, Some("node-2-host")),
                (local, Some("apiserver-1"), Some("node-1-host")),
            ] {
                if let Some(name) = tcp_name {
                    let to = SocketAddrV4::new(vip, 443);
                    let x = lab::tcp_exchange(ns, to, 256 << 10)
                        .with_context(|| format!("{who} -> {to}"))?;
                    ensure!(x.server == name, "{who} -> {to}: {}", x.server);
                    ensure!(
                        x.peer == std::net::SocketAddr::V4(to),
                        "reply source {}",
                        x.peer
                    );
                }
                if let Some(name) = udp_name {
                    let to = SocketAddrV4::new(vip, 53);
                    let names =
                        lab::udp_exchange(ns, to, 3).with_context(|| format!("{who} -> {to}"))?;
                    ensure!(names.iter().all(|n| n == name), "{who}: {names:?}");
                }
            }
        }
        // Pods keep their address through a Service to a host-network endpoint.
        let p = lab.pods[0].clone();
        let (_, seen) = lab::tcp_whoami(&p.ns, SocketAddrV4::new(api, 443))?;
        ensure!(*seen.ip() == p.ip, "apiserver saw {seen}");

        // NodePort on any node's address from a pod (web-np: nodePort 30080).
        for addr in [n1.ip, n2.ip, ext2] {
            let x = lab::tcp_exchange(&p.ns, SocketAddrV4::new(addr, 30080), 64 << 10)?;
            ensure!(
                x.server.starts_with("pod-"),
                "NodePort on {addr}: {}",
                x.server
            );
        }
        for n in 0..2 {
            ensure!(
                drops(lab, n, "vxlan_inner_spoofed") == 0,
                "node {n} dropped a node's own traffic as spoofed"
            );
        }

        // No overlay from pods: a crafted VXLAN datagram from pod-1-0 to a node's VXLAN port,
        // carrying a packet "from" pod-1-1 to pod-2-0, is dropped and counted; the same bytes
        // sent by node 1 itself do arrive (so it is the check that stops them).
        let (a, b, c) = (
            lab.pods[0].clone(),
            lab.pods[1].clone(),
            lab.pods[2].clone(),
        );
        let mac: Vec<u8> = b
            .mac
            .split(':')
            .map(|h| u8::from_str_radix(h, 16))
            .collect::<std::result::Result<_, _>>()?;
        let mac: [u8; 6] = mac.try_into().map_err(|_| anyhow::anyhow!("mac"))?;
        let forged = vxlan_payload(b.ip, mac, c.ip, 7777);
        let sink = UdpSink::start(&c.ns, 7777)?;
        let before = drops(lab, 0, "pod_to_overlay");
        for to in [n2.ip, ext2, n1.ip] {
            send_udp(&a.ns, SocketAddrV4::new(to, 4789), forged.clone(), 10)?;
        }
        std::thread::sleep(Duration::from_millis(300));
        let after = drops(lab, 0, "pod_to_overlay");
        let (got, _) = sink.finish();
        ensure!(got == 0, "{got} forged packets reached {}", c.name);
        ensure!(after >= before + 30, "pod_to_overlay {before} -> {after}");
        let sink = UdpSink::start(&c.ns, 7777)?;
        send_udp(&n1.ns, SocketAddrV4::new(n2.ip, 4789), forged, 10)?;
        std::thread::sleep(Duration::from_millis(300));
        let (got, _) = sink.finish();
        ensure!(got >= 8, "the node's own VXLAN delivered {got} of 10");
        Ok(())
    });
}

#[test]
fn pods_reach_the_world_outside_masqueraded_across_a_restart() {
    with_lab("nmout", |lab| {
        let ext = lab.ext_ns.clone();
        let to = SocketAddrV4::new(lab.ext_ip, 8080);
        lab.serve(&ext, "outside", 8080)?;
        for n in &lab.nodes {
            let t = lab::run(
                "ip",
                &[
                    "netns", "exec", &n.ns, "nft", "list", "table", "ip", "xdpnet",
                ],
            )?;
            ensure!(t.contains("masquerade to :32768-60999"), "{}: {t}", n.name);
        }
        for p in lab.pods.clone() {
            let node_ip = lab.nodes[p.node].ip;
            let x = lab::tcp_exchange(&p.ns, to, 1 << 20).with_context(|| p.name.clone())?;
            ensure!(x.server == "outside");
            let names = lab::udp_exchange(&p.ns, to, 3)?;
            ensure!(names.iter().all(|n| n == "outside"));
            let (_, seen) = lab::tcp_whoami(&p.ns, to)?;
            ensure!(*seen.ip() == node_ip, "outside saw {} as {seen}", p.name);
            let (_, seen) = lab::udp_whoami(&p.ns, to)?;
            ensure!(
                *seen.ip() == node_ip,
                "outside saw {} as {seen} (UDP)",
                p.name
            );
            lab::ping(&p.ns, lab.ext_ip, 2)?;
        }
        // ICMP errors come back through the masquerade: UDP to a closed port is refused, and so
        // is TCP (a RST).
        let a = lab.pods[0].clone();
        let closed = SocketAddrV4::new(lab.ext_ip, 9999);
        let refused = lab::in_ns(&a.ns, move || -> Result<bool> {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            s.connect(closed)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut buf = [0u8; 64];
            for _ in 0..3 {
                s.send(b"anyone?")?;
                match s.recv(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(true),
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            }
            Ok(false)
        })??;
        ensure!(refused, "no port unreachable back through the masquerade");
        let e = lab::in_ns(&a.ns, move || {
            TcpStream::connect_timeout(&closed.into(), Duration::from_secs(2))
                .err()
                .map(|e| e.kind())
        })?;
        ensure!(
            e == Some(std::io::ErrorKind::ConnectionRefused),
            "TCP to a closed port: {e:?}"
        );

        // An established connection survives a restart of the daemon.
        let mut conn = lab::in_ns(&a.ns, move || -> Result<TcpStream> {
            let s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            Ok(s)
        })??;
        let mut name = [0u8; 8];
        conn.read_exact(&mut name)?;
        ensure!(&name == b"outside\n");
        let echo = |c: &mut TcpStream, tag: u8| -> Result<()> {
            let msg = vec![tag; 1000];
            c.write_all(&msg)?;
            let mut got = vec![0u8; 1000];
            c.read_exact(&mut got)?;
            ensure!(got == msg, "echo differs");
            Ok(())
        };
        echo(&mut conn, b'a')?;
        lab.stop_daemon(0, Signal::SIGTERM)?;
        lab.start_daemon(0)?;
        lab.wait_ready(Duration::from_secs(30))?;
        echo(&mut conn, b'b').context("the connection after the restart")?;
        drop(conn);

        // A routed fabric that knows the pods: the outside client gets routes to them, node 1
        // stops masquerading to it (nonMasqueradeCIDRs), node 2 still does.
        for (i, n) in lab.nodes.iter().enumerate() {
            lab::run(
                "ip",
                &[
                    "-n",
                    &ext,
                    "route",
                    "add",
                    &format!("10.244.{}.0/24", i + 1),
                    "via",
                    &n.ip.to_string(),
                ],
            )?;
        }
        let restart = |lab: &mut Lab, args: &[&str]| -> Result<()> {
            lab.stop_daemon(0, Signal::SIGTERM)?;
            lab.set_daemon_args(args.iter().map(|s| s.to_string()).collect());
            lab.start_daemon(0)?;
            lab.wait_ready(Duration::from_secs(30))
        };
        restart(lab, &["--non-masquerade-cidr", "198.18.0.100/32"])?;
        let t = lab::run(
            "ip",
            &[
                "netns",
                "exec",
                &lab.nodes[0].ns,
                "nft",
                "list",
                "table",
                "ip",
                "xdpnet",
            ],
        )?;
        ensure!(t.contains("198.18.0.100"), "{t}");
        let (a, c) = (lab.pods[0].clone(), lab.pods[2].clone());
        let (_, seen) = lab::tcp_whoami(&a.ns, to)?;
        ensure!(*seen.ip() == a.ip, "not masqueraded: outside saw {seen}");
        let (_, seen) = lab::udp_whoami(&a.ns, to)?;
        ensure!(
            *seen.ip() == a.ip,
            "not masqueraded (UDP): outside saw {seen}"
        );
        let (_, seen) = lab::tcp_whoami(&c.ns, to)?;
        ensure!(*seen.ip() == lab.nodes[1].ip, "node 2 masquerades: {seen}");
        // Switched off: no table at all, pods keep their address.
        restart(lab, &["--no-masquerade"])?;
        let t = lab::run(
            "ip",
            &["netns", "exec", &lab.nodes[0].ns, "nft", "list", "tables"],
        )?;
        ensure!(!t.contains("xdpnet"), "table with masquerade off: {t}");
        let (_, seen) = lab::tcp_whoami(&a.ns, to)?;
        ensure!(*seen.ip() == a.ip, "masquerade off: outside saw {seen}");
        Ok(())
    });
}

/// Connections from `ns` to `to`: the set of servers that answered.
fn servers(ns: &str, to: SocketAddrV4, n: usize) -> Result<BTreeSet<String>> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        seen.insert(lab::tcp_exchange(ns, to, 100)?.server);
    }
    Ok(seen)
}

#[test]
fn sig_network_conformance_behaviours_without_a_kubelet() {
    with_lab("nmconf", |lab| {
        let pods = lab.pods.clone();
        let (n1, n2) = (lab.nodes[0].clone(), lab.nodes[1].clone());
        let ext = lab.ext_ns.clone();
        // Networking granular checks: node -> pod and pod -> pod over HTTP and UDP, across
        // nodes (and on the node).
        for p in &pods {
            lab.serve_http(&p.ns, &p.name, 8081)?;
        }
        let clients: Vec<(String, String)> = [&n1, &n2]
            .iter()
            .map(|n| (n.name.clone(), n.ns.clone()))
            .chain(pods.iter().map(|q| (q.name.clone(), q.ns.clone())))
            .collect();
        for p in &pods {
            for (who, ns) in &clients {
                let (code, body) = lab::http_get(ns, SocketAddrV4::new(p.ip, 8081), "/hostName")?;
                ensure!(
                    (code, body.as_str()) == (200, p.name.as_str()),
                    "{who} -> {}: {code} {body}",
                    p.name
                );
                let names = lab::udp_exchange(ns, SocketAddrV4::new(p.ip, POD_PORT), 2)?;
                ensure!(names.iter().all(|x| *x == p.name), "{who}: {names:?}");
            }
        }

        // A basic endpoint, then multiport endpoints (the second port served on 9090).
        for p in &pods {
            lab.serve(&p.ns, &format!("{}-9090", p.name), 9090)?;
        }
        let vip = Ipv4Addr::new(10, 96, 1, 10);
        let on = |i: usize| {
            (
                pods[i].ip,
                Some(if pods[i].node == 0 {
                    "node-1"
                } else {
                    "node-2"
                }),
            )
        };
        lab.extra_objects = service(
            "conf",
            "ClusterIP",
            vip,
            &[("a", 80, POD_PORT, "TCP", None)],
            &[on(2)],
            false,
        );
        publish(lab)?;
        ensure!(
            servers(&pods[0].ns, SocketAddrV4::new(vip, 80), 5)?
                == BTreeSet::from([pods[2].name.clone()])
        );
        let multiport = service(
            "conf",
            "ClusterIP",
            vip,
            &[
                ("a", 80, POD_PORT, "TCP", None),
                ("b", 81, 9090, "TCP", None),
            ],
            &[on(1), on(2)],
            false,
        );
        lab.extra_objects = multiport.clone();
        publish(lab)?;
        let a = servers(&pods[0].ns, SocketAddrV4::new(vip, 80), 30)?;
        let b = servers(&pods[0].ns, SocketAddrV4::new(vip, 81), 30)?;
        ensure!(
            a == BTreeSet::from([pods[1].name.clone(), pods[2].name.clone()]),
            "port 80: {a:?}"
        );
        ensure!(
            b == BTreeSet::from([
                format!("{}-9090", pods[1].name),
                format!("{}-9090", pods[2].name)
            ]),
            "port 81: {b:?}"
        );
        // One port number on two protocols.
        let dual = Ipv4Addr::new(10, 96, 1, 11);
        let mut objs = multiport;
        objs.extend(service(
            "dual",
            "ClusterIP",
            dual,
            &[
                ("t", 80, POD_PORT, "TCP", None),
                ("u", 80, POD_PORT, "UDP", None),
            ],
            &[on(0), on(3)],
            false,
        ));
        lab.extra_objects = objs;
        publish(lab)?;
        let want = BTreeSet::from([pods[0].name.clone(), pods[3].name.clone()]);
        let t = servers(&pods[1].ns, SocketAddrV4::new(dual, 80), 20)?;
        ensure!(t == want, "TCP 80: {t:?}");
        let u: BTreeSet<String> = lab::udp_exchange(&pods[1].ns, SocketAddrV4::new(dual, 80), 20)?
            .into_iter()
            .collect();
        ensure!(u == want, "UDP 80: {u:?}");
        // The client pod's address is preserved through a ClusterIP.
        let (_, seen) = lab::tcp_whoami(&pods[3].ns, SocketAddrV4::new(vip, 80))?;
        ensure!(*seen.ip() == pods[3].ip, "backend saw {seen}");

        // ClientIP session affinity on ClusterIP and NodePort; switched off and on again.
        let all: Vec<_> = (0..pods.len()).map(on).collect();
        let np = SocketAddrV4::new(n1.ip, 30090);
        let cip = SocketAddrV4::new(vip, 80);
        for affinity in [true, false, true] {
            lab.extra_objects = service(
                "conf",
                "NodePort",
                vip,
                &[("a", 80, POD_PORT, "TCP", Some(30090))],
                &all,
                affinity,
            );
            publish(lab)?;
            let c = servers(&pods[0].ns, cip, 24)?;
            let e = servers(&ext, np, 24)?;
            if affinity {
                ensure!(
                    c.len() == 1 && e.len() == 1,
                    "affinity: ClusterIP {c:?}, NodePort {e:?}"
                );
            } else {
                ensure!(
                    c.len() > 1 && e.len() > 1,
                    "no affinity: ClusterIP {c:?}, NodePort {e:?}"
                );
            }
        }

        // Type ClusterIP -> NodePort -> ClusterIP; then deleted and recreated.
        let plain = |ty: &str, np: Option<u16>| {
            service(
                "conf",
                ty,
                vip,
                &[("a", 80, POD_PORT, "TCP", np)],
                &all,
                false,
            )
        };
        let via_cluster_ip = |ns: &str| -> Result<()> {
            let x = lab::tcp_exchange(ns, cip, 100)?;
            ensure!(x.server.starts_with("pod-"), "{}", x.server);
            Ok(())
        };
        for (ty, np_port) in [
            ("ClusterIP", None),
            ("NodePort", Some(30091)),
            ("ClusterIP", None),
        ] {
            lab.extra_objects = plain(ty, np_port);
            publish(lab)?;
            via_cluster_ip(&pods[0].ns)?;
            for n in [&n1, &n2] {
                let to = SocketAddrV4::new(n.ip, 30091);
                if np_port.is_some() {
                    let x =
                        lab::tcp_exchange(&ext, to, 100).with_context(|| format!("{ty}: {to}"))?;
                    ensure!(x.server.starts_with("pod-"));
                } else {
                    ensure!(unreachable(&ext, to)?, "{to} answers as {ty}");
                }
            }
        }

        lab.extra_objects.clear();
        publish(lab)?;
        ensure!(unreachable(&pods[0].ns, cip)?, "deleted service answers");
        lab.extra_objects = plain("ClusterIP", None);
        publish(lab)?;
        via_cluster_ip(&pods[0].ns)?;
        via_cluster_ip(&pods[3].ns).context("recreated service from the other node")?;
        Ok(())
    });
}
