//! End-to-end: the real `xdpnetd` (one per lab node) forwarding real traffic between network
//! namespaces over AF_XDP, built by the lab library. Needs root, iproute2, ethtool, ping and
//! tcpdump (`make deps`). Each test builds its own lab under its own prefix and removes it
//! whether it passes or fails (the lab's Drop); tests run one at a time (they share the cores).

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};
use xdpnet_bench::lab::{self, Capture, Lab, LabSpec, POD_PORT};
use xdpnet_e2e::{
    SERIAL, Underlay, classify, frames_accounted, fresh_status, prefix, status, with_lab,
    with_lab_spec, xdp_attached,
};

#[test]
fn pod_to_pod_same_node_and_across_nodes_over_vxlan() {
    with_lab("pp", |lab| {
        let (a, b, c) = (
            lab.pods[0].clone(),
            lab.pods[1].clone(),
            lab.pods[2].clone(),
        );
        assert_eq!((a.node, b.node, c.node), (0, 0, 1));
        let cap_file = lab.dir.join("underlay.pcap");
        let cap = Capture::start(&lab.underlay_ns, "br0", &cap_file)?;

        pods_reach_pods(lab)?;

        // The underlay saw VXLAN with our VNI between the node addresses, carrying the pods'
        // packets, and never a pod address in the clear.
        let (frames, lost) = cap.stop_counted()?;
        let (n1, n2) = (lab.nodes[0].ip, lab.nodes[1].ip);
        let mut vxlan = 0usize;
        let mut pairs = BTreeSet::new();
        for f in &frames {
            match classify(f, lab::VXLAN_PORT) {
                Underlay::Vxlan {
                    outer_src,
                    outer_dst,
                    vni,
                    inner_src,
                    inner_dst,
                    ..
                } => {
                    assert_eq!(vni, 1);
                    assert!(
                        (outer_src, outer_dst) == (n1, n2) || (outer_src, outer_dst) == (n2, n1),
                        "VXLAN between {outer_src} and {outer_dst}"
                    );
                    pairs.insert((inner_src, inner_dst));
                    vxlan += 1;
                }
                Underlay::Ipv4 { src, dst } => {
                    let pod_net = |ip: Ipv4Addr| ip.octets()[0] == 10;
                    assert!(
                        !pod_net(src) && !pod_net(dst),
                        "unencapsulated pod traffic {src} -> {dst}"
                    );
                }
                Underlay::Other => {}
            }
        }
        // 8 MiB crossed the underlay (2 x 4 MiB): at least a frame per full-size segment,
        // less what the capture itself lost.
        let segments = 2 * (4 << 20) / 1400;
        assert!(
            vxlan + lost as usize > segments,
            "only {vxlan} VXLAN frames (and {lost} lost by the capture) for 8 MiB"
        );
        assert!(
            pairs.contains(&(a.ip, c.ip)) && pairs.contains(&(c.ip, a.ip)),
            "{pairs:?}"
        );

        let s1 = fresh_status(lab, 0);
        let w = &s1["workers"][0];
        assert!(w["pipeline"]["encap"].as_u64().unwrap_or(0) > 1000, "{w}");
        assert!(w["pipeline"]["decap"].as_u64().unwrap_or(0) > 1000, "{w}");
        for n in 0..2 {
            frames_accounted(&status(lab, n));
        }
        // Each daemon's worker runs on its core alone: the control thread and every thread it
        // started (endpoints, CNI) are on the other cores (this machine has two).
        if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
            for n in 0..2 {
                let pid = status(lab, n)["pid"].as_u64().context("pid")?;
                let core = lab.nodes[n].core.to_string();
                for (comm, cpus) in thread_cores(pid)? {
                    if comm.starts_with("xdpnet-w") {
                        assert_eq!(cpus, core, "worker {comm} of node {n}");
                    } else {
                        assert!(
                            !cpu_list(&cpus).contains(&lab.nodes[n].core),
                            "node {n}: thread {comm} may run on cores {cpus}, the worker's is {core}"
                        );
                    }
                }
            }
        }

        // SIGTERM: the daemon exits and takes its programs with it.
        let n2ns = lab.nodes[1].ns.clone();
        assert!(xdp_attached(&n2ns, "eth0") && xdp_attached(&n2ns, "xnp0"));
        lab.stop_daemon(1, Signal::SIGTERM)?;
        for i in ["eth0", "xdpnet0-dp", "xnp0", "xnp1"] {
            assert!(
                !xdp_attached(&n2ns, i),
                "XDP program left on {i} after SIGTERM"
            );
        }
        Ok(())
    });
}

/// Pod -> pod on a node and across nodes, both ways: ping, UDP, 4 MiB of TCP, each answered
/// by the pod addressed (its own address as the peer: no NAT).
fn pods_reach_pods(lab: &Lab) -> Result<()> {
    let (a, b, c) = (&lab.pods[0], &lab.pods[1], &lab.pods[2]);
    // Same node.
    lab::ping(&a.ns, b.ip, 3)?;
    let names = lab::udp_exchange(&a.ns, SocketAddrV4::new(b.ip, POD_PORT), 5)?;
    assert!(names.iter().all(|n| *n == b.name), "{names:?}");
    let x = lab::tcp_exchange(&a.ns, SocketAddrV4::new(b.ip, POD_PORT), 4 << 20)?;
    assert_eq!(x.server, b.name);
    let x = lab::tcp_exchange(&b.ns, SocketAddrV4::new(a.ip, POD_PORT), 4 << 20)?;
    assert_eq!(x.server, a.name);

    // Across nodes, both directions.
    lab::ping(&a.ns, c.ip, 3)?;
    lab::ping(&c.ns, a.ip, 3)?;
    let names = lab::udp_exchange(&c.ns, SocketAddrV4::new(a.ip, POD_PORT), 5)?;
    assert!(names.iter().all(|n| *n == a.name), "{names:?}");
    let x = lab::tcp_exchange(&a.ns, SocketAddrV4::new(c.ip, POD_PORT), 4 << 20)?;
    assert_eq!(x.server, c.name);
    assert_eq!(
        x.peer,
        std::net::SocketAddr::V4(SocketAddrV4::new(c.ip, POD_PORT))
    );
    let x = lab::tcp_exchange(&c.ns, SocketAddrV4::new(a.ip, POD_PORT), 4 << 20)?;
    assert_eq!(x.server, a.name);
    Ok(())
}

/// A ClusterIP spreads new connections over all four backends (from both nodes), and a UDP
/// ClusterIP answers from the service address.
fn clusterip_spreads(lab: &Lab) -> Result<()> {
    let web = lab.services[0].clone();
    let vip = SocketAddrV4::new(web.cluster_ip, web.port);
    let client = lab.pods[0].ns.clone();
    let seen = spread(&client, vip, 60)?;
    let all: BTreeSet<String> = lab.pods.iter().map(|p| p.name.clone()).collect();
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        all,
        "{seen:?}"
    );
    // From the other node too.
    let seen = spread(&lab.pods[3].ns.clone(), vip, 40)?;
    assert!(seen.len() >= 3, "{seen:?}");

    // UDP service: answers come from the service address (checked in udp_exchange).
    let udp = &lab.services[2];
    let names = lab::udp_exchange(&client, SocketAddrV4::new(udp.cluster_ip, udp.port), 40)?;
    assert!(
        names.iter().collect::<BTreeSet<_>>().len() >= 3,
        "{names:?}"
    );
    Ok(())
}

/// The NodePort on both nodes, from the client that is not a node: 2 MiB of TCP, new
/// connections spread over the backends.
fn nodeport_reaches_backends(lab: &Lab) -> Result<()> {
    let np = lab.services[1].clone();
    let port = np.node_port.context("node port")?;
    let ext = lab.ext_ns.clone();
    for n in 0..2 {
        let to = SocketAddrV4::new(lab.nodes[n].ip, port);
        let x = lab::tcp_exchange(&ext, to, 2 << 20)?;
        assert!(x.server.starts_with("pod-"), "{x:?}");
        let seen = spread(&ext, to, 30)?;
        assert!(
            seen.len() >= 3,
            "NodePort on {} spread {seen:?}",
            lab.nodes[n].name
        );
    }
    Ok(())
}

/// The cores of a kernel CPU list ("0,2-3").
fn cpu_list(s: &str) -> Vec<usize> {
    s.split(',')
        .filter_map(|r| match r.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?..=b.parse().ok()?).collect::<Vec<usize>>()),
            None => r.parse().ok().map(|c| vec![c]),
        })
        .flatten()
        .collect()
}

/// (thread name, `Cpus_allowed_list`) of every thread of process `pid`.
fn thread_cores(pid: u64) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = t?.path();
        let comm = std::fs::read_to_string(dir.join("comm"))?
            .trim()
            .to_string();
        let status = std::fs::read_to_string(dir.join("status"))?;
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .context("Cpus_allowed_list")?
            .trim()
            .to_string();
        out.push((comm, cpus));
    }
    Ok(out)
}

fn spread(ns: &str, to: SocketAddrV4, n: usize) -> Result<BTreeMap<String, usize>> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let x = lab::tcp_exchange(ns, to, 2000)?;
        assert_eq!(
            x.peer,
            std::net::SocketAddr::V4(to),
            "reply not from the service address"
        );
        *seen.entry(x.server).or_insert(0) += 1;
    }
    Ok(seen)
}

#[test]
fn clusterip_spreads_over_all_backends_and_follows_the_state_file() {
    with_lab("svc", |lab| {
        clusterip_spreads(lab)?;
        let web = lab.services[0].clone();
        let vip = SocketAddrV4::new(web.cluster_ip, web.port);
        let client = lab.pods[0].ns.clone();

        // Remove pod-2-1 from the service: no new flow goes to it.
        let gone = lab
            .pods
            .iter()
            .position(|p| p.name == "pod-2-1")
            .context("pod-2-1")?;
        let g: Vec<u64> = (0..2)
            .map(|n| status(lab, n)["generation"].as_u64().unwrap_or(0))
            .collect();
        lab.services[0].backends.retain(|&b| b != gone);
        lab.write_state()?;
        for (n, &g) in g.iter().enumerate() {
            lab.wait_generation(n, g, Duration::from_secs(10))?;
        }
        let seen = spread(&client, vip, 60)?;
        assert!(
            !seen.contains_key("pod-2-1"),
            "removed backend still chosen: {seen:?}"
        );
        assert_eq!(seen.len(), 3, "{seen:?}");
        Ok(())
    });
}

#[test]
fn nodeport_from_a_client_that_is_not_a_node() {
    with_lab("np", |lab| {
        nodeport_reaches_backends(lab)?;
        let s = fresh_status(lab, 0);
        assert!(
            s["frontends"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "198.18.0.11:30080/6")),
            "{}",
            s["frontends"]
        );
        assert!(s["steering"]["to_socket"].as_u64().unwrap_or(0) > 0);
        Ok(())
    });
}

#[test]
fn host_reaches_pods_and_services_and_pods_reach_the_host() {
    with_lab("host", |lab| {
        let node = lab.nodes[0].clone();
        // A host-network server (kubelet-like) in the node's namespace.
        lab.serve(&node.ns, "host-1", 9100)?;
        for p in lab.pods.clone() {
            // Pod -> its own node's host through the gateway address; pods on node 2 reach
            // node 1's host port address across the overlay.
            let x = lab::tcp_exchange(&p.ns, SocketAddrV4::new(node.gateway, 9100), 256 << 10)?;
            assert_eq!(x.server, "host-1", "from {}", p.name);
            // Host -> pod (probes), local and remote.
            let x = lab::tcp_exchange(&node.ns, SocketAddrV4::new(p.ip, POD_PORT), 256 << 10)?;
            assert_eq!(x.server, p.name);
        }
        lab::ping(&node.ns, lab.pods[0].ip, 2)?;
        lab::ping(&lab.pods[0].ns, node.gateway, 2)?;
        // Host -> ClusterIP.
        let web = &lab.services[0];
        let seen = spread(&node.ns, SocketAddrV4::new(web.cluster_ip, web.port), 30)?;
        assert!(seen.len() >= 3, "{seen:?}");
        Ok(())
    });
}

#[test]
fn node_traffic_keeps_working_with_the_daemon_running_and_after_sigkill() {
    with_lab("kill", |lab| {
        let node = lab.nodes[0].clone();
        lab.serve(&node.ns, "node-1-sshd", 2222)?;
        let ext = lab.ext_ns.clone();
        let to = SocketAddrV4::new(node.ip, 2222);
        assert!(xdp_attached(&node.ns, "eth0"));
        let x = lab::tcp_exchange(&ext, to, 1 << 20)?;
        assert_eq!(x.server, "node-1-sshd");
        lab::ping(&ext, node.ip, 2)?;
        let passed = fresh_status(lab, 0)["steering"]["passed"]
            .as_u64()
            .unwrap_or(0);
        assert!(passed > 0, "node traffic did not go through XDP_PASS");

        lab.stop_daemon(0, Signal::SIGKILL)?;
        // The link-based attachment died with the process: nothing is left on the NIC, and the
        // node's own traffic works.
        let t = Instant::now();
        while xdp_attached(&node.ns, "eth0") && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            !xdp_attached(&node.ns, "eth0"),
            "XDP program left after SIGKILL"
        );
        let x = lab::tcp_exchange(&ext, to, 1 << 20)?;
        assert_eq!(x.server, "node-1-sshd");

        // A restarted daemon picks everything up again.
        lab.start_daemon(0)?;
        lab.wait_ready(Duration::from_secs(20))?;
        let c = lab.pods[2].clone();
        let x = lab::tcp_exchange(&lab.pods[0].ns, SocketAddrV4::new(c.ip, POD_PORT), 1 << 20)?;
        assert_eq!(x.server, c.name);
        let x = lab::tcp_exchange(&ext, to, 64 << 10)?;
        assert_eq!(x.server, "node-1-sshd");
        Ok(())
    });
}

#[test]
fn a_failing_test_still_leaves_nothing_behind() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = prefix("fail");
    let p2 = p.clone();
    let r = std::thread::spawn(move || {
        let mut lab = Lab::up(&LabSpec::new(&p2, 1, 1)).expect("lab");
        lab.serve_all().expect("servers");
        panic!("deliberate failure inside a lab");
    })
    .join();
    assert!(r.is_err());
    assert!(
        lab::namespaces(&p).is_empty(),
        "namespaces left after a panic"
    );
    assert!(!lab::lab_dir(&p).exists());
    let ps = lab::run("ps", &["-eo", "args"]).unwrap_or_default();
    assert!(
        !ps.contains(&format!("xdpnet-lab-{p}/")),
        "a daemon of the failed lab is still running"
    );
}

fn ports_of(s: &serde_json::Value) -> Vec<String> {
    s["ports"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["ifname"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pods_leave_and_return_with_the_state_file_in_busy_poll_mode() {
    with_lab_spec(
        "churn",
        |s| s.daemon_args.push("--busy-poll".into()),
        |lab| {
            let (a, b) = (lab.pods[0].clone(), lab.pods[1].clone());
            let node_ns = lab.nodes[0].ns.clone();
            lab::tcp_exchange(&a.ns, SocketAddrV4::new(b.ip, POD_PORT), 1 << 20)?;
            assert!(xdp_attached(&node_ns, &b.host_if));

            // Pod b is deleted from the cluster: its port is unwired and its frames come back.
            let g = status(lab, 0)["generation"].as_u64().unwrap_or(0);
            lab.absent.insert(1);
            lab.write_state()?;
            lab.wait_generation(0, g, Duration::from_secs(10))?;
            let t = Instant::now();
            while ports_of(&status(lab, 0)).contains(&b.host_if)
                && t.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let s = fresh_status(lab, 0);
            assert_eq!(s["local_endpoints"], 1, "{s}");
            assert!(!ports_of(&s).contains(&b.host_if), "{:?}", ports_of(&s));
            assert!(
                !xdp_attached(&node_ns, &b.host_if),
                "program left on a removed pod port"
            );
            frames_accounted(&s);
            assert!(
                lab::ping(&a.ns, b.ip, 2).is_err(),
                "a removed pod is still reachable"
            );
            // The service no longer uses it.
            let web = &lab.services[0];
            let seen = spread(&a.ns, SocketAddrV4::new(web.cluster_ip, web.port), 30)?;
            assert!(!seen.contains_key(&b.name), "{seen:?}");

            // It comes back.
            let g = status(lab, 0)["generation"].as_u64().unwrap_or(0);
            lab.absent.clear();
            lab.write_state()?;
            lab.wait_generation(0, g, Duration::from_secs(10))?;
            lab.wait_ready(Duration::from_secs(10))?;
            let x = lab::tcp_exchange(&a.ns, SocketAddrV4::new(b.ip, POD_PORT), 1 << 20)?;
            assert_eq!(x.server, b.name);
            let x = lab::tcp_exchange(&lab.pods[2].ns, SocketAddrV4::new(b.ip, POD_PORT), 1 << 20)?;
            assert_eq!(x.server, b.name);
            frames_accounted(&fresh_status(lab, 0));
            Ok(())
        },
    );
}

#[test]
fn two_workers_per_node_and_a_two_queue_uplink() {
    with_lab_spec(
        "mq",
        |s| {
            s.workers = 2;
            s.uplink_queues = 2;
        },
        |lab| {
            let s = status(lab, 0);
            let up = s["ports"]
                .as_array()
                .and_then(|a| a.iter().find(|p| p["ifname"] == "eth0").cloned())
                .context("uplink port")?;
            assert_eq!(up["queues"], serde_json::json!([[0, 0], [1, 1]]), "{up}");
            let (a, b, c) = (
                lab.pods[0].clone(),
                lab.pods[1].clone(),
                lab.pods[2].clone(),
            );
            for _ in 0..3 {
                lab::tcp_exchange(&a.ns, SocketAddrV4::new(b.ip, POD_PORT), 1 << 20)?;
                lab::tcp_exchange(&a.ns, SocketAddrV4::new(c.ip, POD_PORT), 1 << 20)?;
                lab::tcp_exchange(&c.ns, SocketAddrV4::new(b.ip, POD_PORT), 1 << 20)?;
            }
            let web = &lab.services[0];
            let seen = spread(&a.ns, SocketAddrV4::new(web.cluster_ip, web.port), 60)?;
            assert!(seen.len() >= 3, "{seen:?}");
            let s = fresh_status(lab, 0);
            let workers = s["workers"].as_array().context("workers")?;
            assert_eq!(workers.len(), 2);
            // Both workers forwarded, and frames crossed between them (pods of one node sit on
            // different workers), each copy accounted for.
            let handoff: u64 = workers
                .iter()
                .map(|w| w["handoff_out"].as_u64().unwrap_or(0))
                .sum();
            assert!(handoff > 0, "{s}");
            for w in workers {
                assert!(w["tx"].as_u64().unwrap_or(0) > 0, "{w}");
                assert_eq!(w["handoff_drop"], 0, "{w}");
            }
            frames_accounted(&s);
            Ok(())
        },
    );
}

fn metric(lab: &Lab, n: usize, name: &str) -> Option<f64> {
    let (code, body) = lab::http_get(
        &lab.nodes[n].ns,
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9460),
        "/metrics",
    )
    .ok()?;
    if code != 200 {
        return None;
    }
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn wait_metric(lab: &Lab, n: usize, name: &str, want: f64) -> Result<()> {
    let t = Instant::now();
    while metric(lab, n, name) != Some(want) {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(20),
            "{name} on {} is {:?}, want {want}",
            lab.nodes[n].name,
            metric(lab, n, name)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[test]
fn kubernetes_source_drives_the_dataplane_and_rides_out_an_api_outage() {
    with_lab_spec(
        "kube",
        |s| s.kube_api = true,
        |lab| {
            let web = lab.services[0].clone();
            let vip = SocketAddrV4::new(web.cluster_ip, web.port);
            let client = lab.pods[0].ns.clone();
            let all: BTreeSet<String> = lab.pods.iter().map(|p| p.name.clone()).collect();
            let seen = spread(&client, vip, 60)?;
            assert_eq!(
                seen.keys().cloned().collect::<BTreeSet<_>>(),
                all,
                "{seen:?}"
            );
            for n in 0..2 {
                let hp = |p: &str| {
                    lab::http_get(
                        &lab.nodes[n].ns,
                        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9460),
                        p,
                    )
                };
                assert_eq!(hp("/readyz")?.0, 200);
                assert_eq!(hp("/healthz")?.0, 200);
                wait_metric(lab, n, "xdpnet_source_degraded", 0.0)?;
                assert!(metric(lab, n, "xdpnet_table_publishes_total").unwrap_or(0.0) >= 1.0);
            }
            // The inspect CLI against node 1's daemon (its dump is at most a second old).
            std::thread::sleep(Duration::from_millis(1200));
            let sock = lab.dir.join("node-1.sock");
            let bin = lab::bin_dir().join("xdpnetd");
            let out = lab::run(
                &bin.to_string_lossy(),
                &["inspect", "--socket", &sock.to_string_lossy()],
            )?;
            assert!(
                out.contains("lab/web:80/tcp") && out.contains("10.244.2.10:8080"),
                "{out}"
            );
            assert!(
                out.contains("node-2") && out.contains("198.18.0.12"),
                "{out}"
            );
            let json = lab::run(
                &bin.to_string_lossy(),
                &["inspect", "--json", "--socket", &sock.to_string_lossy()],
            )?;
            let v: serde_json::Value = serde_json::from_str(&json)?;
            assert_eq!(v["endpoints"].as_array().map(Vec::len), Some(2));
            assert!(v["conntrack"]["entries"].as_u64().unwrap_or(0) > 0);

            // An EndpointSlice change through the API reaches both nodes.
            let gone = lab
                .pods
                .iter()
                .position(|p| p.name == "pod-2-1")
                .context("pod")?;
            lab.services[0].backends.retain(|&b| b != gone);
            let g: Vec<u64> = (0..2)
                .map(|n| status(lab, n)["generation"].as_u64().unwrap_or(0))
                .collect();
            lab.write_state()?;
            for (n, &g) in g.iter().enumerate() {
                lab.wait_generation(n, g, Duration::from_secs(10))?;
            }
            let seen = spread(&client, vip, 40)?;
            assert!(!seen.contains_key("pod-2-1"), "{seen:?}");
            for n in 0..2 {
                assert!(
                    metric(lab, n, "xdpnet_event_to_publish_seconds_count").unwrap_or(0.0) >= 1.0
                );
            }

            // The API server goes away: both daemons say so and keep forwarding.
            let api_down = |lab: &Lab, down: bool| {
                if let Some(a) = lab.api() {
                    a.set_down(down);
                }
            };
            api_down(lab, true);
            for n in 0..2 {
                wait_metric(lab, n, "xdpnet_source_degraded", 1.0)?;
            }
            let seen = spread(&client, vip, 30)?;
            assert_eq!(seen.len(), 3, "{seen:?}");
            // A daemon restarted while the API is down starts from the state it persisted.
            lab.stop_daemon(0, Signal::SIGTERM)?;
            lab.start_daemon(0)?;
            lab.wait_ready(Duration::from_secs(20))?;
            assert!(
                lab.log_tail(0, 20).contains("persisted"),
                "{}",
                lab.log_tail(0, 20)
            );
            let c = lab.pods[2].clone();
            let x = lab::tcp_exchange(&client, SocketAddrV4::new(c.ip, POD_PORT), 1 << 20)?;
            assert_eq!(x.server, c.name);
            let seen = spread(&client, vip, 30)?;
            assert_eq!(seen.len(), 3, "{seen:?}");

            // The API comes back: healthy again, and changes flow.
            api_down(lab, false);
            for n in 0..2 {
                wait_metric(lab, n, "xdpnet_source_degraded", 0.0)?;
            }
            let g: Vec<u64> = (0..2)
                .map(|n| status(lab, n)["generation"].as_u64().unwrap_or(0))
                .collect();
            lab.services[0].backends.push(gone);
            lab.write_state()?;
            for (n, &g) in g.iter().enumerate() {
                lab.wait_generation(n, g, Duration::from_secs(20))?;
            }
            let seen = spread(&client, vip, 60)?;
            assert_eq!(seen.len(), 4, "{seen:?}");
            Ok(())
        },
    );
}

/// Counter `key` of node `n`'s first worker's tap I/O.
fn tap_counter(lab: &Lab, n: usize, key: &str) -> u64 {
    fresh_status(lab, n)["workers"][0]["tap"][key]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn tap_pods_keep_their_offloads_and_reach_everything_with_segments_cut_and_merged() {
    with_lab_spec(
        "tap",
        |s| s.taps = true,
        |lab| {
            let (a, b, c) = (
                lab.pods[0].clone(),
                lab.pods[1].clone(),
                lab.pods[2].clone(),
            );
            assert_eq!((a.node, b.node, c.node), (0, 0, 1));
            // The pod's eth0 is a tap with checksum and segmentation offload on.
            let link = lab::run("ip", &["-n", &a.ns, "-d", "-j", "link", "show", "eth0"])?;
            let link: serde_json::Value = serde_json::from_str(&link)?;
            assert_eq!(link[0]["linkinfo"]["info_kind"], "tun", "{link}");
            let k = lab::run("ip", &["netns", "exec", &a.ns, "ethtool", "-k", "eth0"])?;
            for f in ["tx-checksumming: on", "tcp-segmentation-offload: on"] {
                assert!(k.contains(f), "{f} not in {k}");
            }
            let cap_file = lab.dir.join("underlay.pcap");
            let cap = Capture::start(&lab.underlay_ns, "br0", &cap_file)?;

            // Same node: large segments cross whole, tap to tap.
            let x = lab::tcp_exchange(&a.ns, SocketAddrV4::new(b.ip, POD_PORT), 8 << 20)?;
            assert_eq!(x.server, b.name);
            let rx = tap_counter(lab, 0, "rx");
            assert!(
                rx > 0 && rx < (8 << 20) / 1448,
                "{rx} tap frames for 8 MiB: segments did not cross whole"
            );
            let names = lab::udp_exchange(&a.ns, SocketAddrV4::new(b.ip, POD_PORT), 5)?;
            assert!(names.iter().all(|n| *n == b.name), "{names:?}");

            // Across nodes, both ways: cut into segments for the overlay on the sending node,
            // merged again on the receiving node.
            let cut = tap_counter(lab, 0, "segments");
            let x = lab::tcp_exchange(&a.ns, SocketAddrV4::new(c.ip, POD_PORT), 8 << 20)?;
            assert_eq!(x.server, c.name);
            let x = lab::tcp_exchange(&c.ns, SocketAddrV4::new(a.ip, POD_PORT), 8 << 20)?;
            assert_eq!(x.server, a.name);
            assert!(
                tap_counter(lab, 0, "segments") > cut + (8 << 20) / 1448 / 2,
                "node 1 did not cut large segments for the overlay"
            );
            assert!(
                tap_counter(lab, 1, "gro_segments") > 0 && tap_counter(lab, 0, "gro_segments") > 0,
                "no segments merged towards a tap"
            );
            lab::ping(&a.ns, c.ip, 2)?;

            // Every VXLAN frame fits the underlay, and each carries a complete segment whose
            // checksums hold (the pods left them partial).
            let frames = cap.stop()?;
            let mut checked = 0;
            for f in &frames {
                if let Underlay::Vxlan { .. } = classify(f, lab::VXLAN_PORT) {
                    assert!(
                        f.len() <= 14 + 1500,
                        "{}-byte frame on the underlay",
                        f.len()
                    );
                    let inner = &f[50..];
                    let s = etherparse::SlicedPacket::from_ethernet(inner)?;
                    if let (
                        Some(etherparse::NetSlice::Ipv4(ip)),
                        Some(etherparse::TransportSlice::Tcp(t)),
                    ) = (&s.net, &s.transport)
                    {
                        let h = ip.header();
                        let want = t.to_header().calc_checksum_ipv4_raw(
                            h.source(),
                            h.destination(),
                            t.payload(),
                        )?;
                        assert_eq!(want, t.checksum(), "inner TCP checksum");
                        checked += 1;
                    }
                }
            }
            assert!(checked > 1000, "only {checked} TCP segments seen in VXLAN");

            // Services: NAT rewrites addresses under partial checksums (ClusterIP: on this node,
            // across nodes, back to the client itself), UDP too; NodePort from outside.
            let web = lab.services[0].clone();
            let vip = SocketAddrV4::new(web.cluster_ip, web.port);
            let mut servers = BTreeSet::new();
            for _ in 0..12 {
                servers.insert(lab::tcp_exchange(&a.ns, vip, 1 << 20)?.server);
            }
            assert!(servers.len() >= 3, "{servers:?}");
            let udp = lab.services[2].clone();
            let names = lab::udp_exchange(&a.ns, SocketAddrV4::new(udp.cluster_ip, udp.port), 20)?;
            assert!(names.len() == 20, "{names:?}");
            let np = lab.services[1].clone();
            let node_port = np.node_port.context("web-np has a node port")?;
            let x = lab::tcp_exchange(
                &lab.ext_ns,
                SocketAddrV4::new(lab.nodes[1].ip, node_port),
                2 << 20,
            )?;
            assert!(lab.pods.iter().any(|p| p.name == x.server), "{}", x.server);

            // Nothing dropped on the way, no frame lost track of.
            for n in 0..2 {
                let s = fresh_status(lab, n);
                assert_eq!(s["workers"][0]["tap"]["drops"], 0, "{}", s["workers"][0]);
                frames_accounted(&s);
            }
            Ok(())
        },
    );
}

/// The workers' chain counters (frames carried in several UMEM frames), summed.
fn chains(s: &serde_json::Value) -> (u64, u64) {
    let ws = s["workers"].as_array().cloned().unwrap_or_default();
    let sum = |k: &str| {
        ws.iter()
            .map(|w| w["chains"][k].as_u64().unwrap_or(0))
            .sum()
    };
    (sum("rx"), sum("tx"))
}

#[test]
fn a_jumbo_mtu_lab_carries_whole_9000_byte_frames_for_pods_and_services() {
    with_lab_spec(
        "jumbo",
        |s| s.mtu = 9000,
        |lab| {
            assert_eq!(lab.pod_mtu(), 8950);
            for veth_then_tap in [false, true] {
                if veth_then_tap {
                    // The same checks with tap pods (offloads on: TSO segments of up to 64 KiB
                    // leave them, cut to the jumbo MTU for the underlay).
                    for n in 0..2 {
                        lab.stop_daemon(n, Signal::SIGTERM)?;
                    }
                    lab.set_pod_interfaces(true)?;
                    for n in 0..2 {
                        lab.start_daemon(n)?;
                    }
                    lab.wait_ready(Duration::from_secs(30))?;
                }
                let what = if veth_then_tap { "tap" } else { "veth" };
                let link = lab::run("ip", &["-n", &lab.pods[0].ns, "link", "show", "eth0"])?;
                assert!(link.contains("mtu 8950"), "{what}: {link}");
                let cap_file = lab.dir.join(format!("jumbo-{what}.pcap"));
                let cap = Capture::start(&lab.underlay_ns, "br0", &cap_file)?;
                // Whole frames of the pods' MTU (8922 bytes of ICMP payload + 28 of headers)
                // on a node and across nodes; one byte more does not leave the pod whole.
                let (a, b, c) = (
                    lab.pods[0].clone(),
                    lab.pods[1].clone(),
                    lab.pods[2].clone(),
                );
                lab::ping_whole(&a.ns, b.ip, 8922)?;
                lab::ping_whole(&a.ns, c.ip, 8922)?;
                lab::ping_whole(&c.ns, a.ip, 8922)?;
                assert!(
                    lab::ping_whole(&a.ns, c.ip, 8923).is_err(),
                    "{what}: 8951-byte packet"
                );
                pods_reach_pods(lab).with_context(|| format!("{what} pods"))?;
                clusterip_spreads(lab).with_context(|| format!("{what} ClusterIP"))?;
                nodeport_reaches_backends(lab).with_context(|| format!("{what} NodePort"))?;
                let (frames, _) = cap.stop_counted()?;
                // The underlay carried VXLAN frames of the full 9000-byte MTU (9014 with the
                // Ethernet header): pod TCP crossed in jumbo segments.
                let big = frames
                    .iter()
                    .filter(|f| {
                        f.len() > 4000
                            && matches!(classify(f, lab::VXLAN_PORT), Underlay::Vxlan { .. })
                    })
                    .count();
                let longest = frames.iter().map(Vec::len).max().unwrap_or(0);
                assert!(big > 500, "{what}: {big} VXLAN frames above 4000 bytes");
                assert_eq!(longest, 9014, "{what}: longest frame on the underlay");
                for n in 0..2 {
                    let s = fresh_status(lab, n);
                    frames_accounted(&s);
                    let (rx, tx) = chains(&s);
                    assert!(
                        rx > 100 && tx > 100,
                        "{what} node {n}: chains rx {rx} tx {tx}"
                    );
                }
            }
            Ok(())
        },
    );
}
