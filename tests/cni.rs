//! The CNI plugin end to end: the real `xdpnet` binary against the real `xdpnetd` of a lab
//! node, wiring pods in namespaces the test makes, and real TCP through the dataplane. Needs
//! root (`make deps` for iproute2 and ethtool). Every namespace carries the lab's prefix, so the
//! lab's teardown removes it whatever happens.

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};
use xdpnet_bench::lab::{self, Lab, POD_PORT};
use xdpnet_e2e::{cni_call, cni_conf, cnitool, fresh_status, status, with_lab_spec};

/// The CNI_* variables of one container.
fn env<'a>(id: &'a str, netns: &'a str, ifname: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=test;K8S_POD_NAME=pod",
        ),
    ]
}

fn netns_add(name: &str) -> Result<String> {
    lab::run("ip", &["netns", "add", name])?;
    lab::run("ip", &["-n", name, "link", "set", "lo", "up"])?;
    Ok(format!("/run/netns/{name}"))
}

fn add(lab: &Lab, id: &str, ns: &str) -> Result<(Value, Ipv4Addr)> {
    let path = format!("/run/netns/{ns}");
    let (rc, out) = cni_call("ADD", &env(id, &path, "eth0"), &cni_conf(lab, 0, "1.0.0"))?;
    ensure!(rc == 0, "ADD {id}: exit {rc}: {out}");
    let ip: Ipv4Addr = out["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("ADD {id}: no address in {out}"))?;
    Ok((out, ip))
}

fn host_links(lab: &Lab) -> Result<BTreeSet<String>> {
    let out = lab::run("ip", &["-n", &lab.nodes[0].ns, "-o", "link", "show"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("xnc"))
        .collect())
}

fn ipam_ips(lab: &Lab) -> Result<Vec<String>> {
    let p = lab.dir().join("node-1-state/ipam.json");
    let v: Value = serde_json::from_slice(&std::fs::read(&p)?)?;
    Ok(v["allocations"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["ip"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// Waits until node 1's status shows `n` local endpoints (the status is written every second).
fn wait_endpoints(lab: &Lab, n: u64) -> Result<()> {
    let t = Instant::now();
    loop {
        let s = status(lab, 0);
        if s["local_endpoints"].as_u64() == Some(n) {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(10) {
            bail!(
                "node 1 has {} local endpoints, not {n}",
                s["local_endpoints"]
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn restart(lab: &mut Lab, sig: Signal) -> Result<()> {
    lab.stop_daemon(0, sig)?;
    lab.start_daemon(0)?;
    lab.wait_ready(Duration::from_secs(20))
}

#[test]
fn plugin_wires_a_pod_that_reaches_pods_and_services_and_keeps_it_across_restarts() {
    with_lab_spec(
        "cni",
        |s| s.pods_per_node = 1,
        |lab| {
            let ns = format!("{}-c0", lab.prefix);
            let path = netns_add(&ns)?;
            // 1.1.0 config: the result carries the MTU on the interfaces.
            let (rc, out) = cni_call("ADD", &env("c0", &path, "eth0"), &cni_conf(lab, 0, "1.1.0"))?;
            ensure!(rc == 0, "ADD: exit {rc}: {out}");
            ensure!(out["cniVersion"] == "1.1.0", "{out}");
            let ifs = out["interfaces"].as_array().context("interfaces")?;
            ensure!(ifs.len() == 2, "{out}");
            let host_if = ifs[0]["name"].as_str().context("host name")?.to_string();
            ensure!(
                host_if.starts_with("xnc") && ifs[0].get("sandbox").is_none(),
                "{out}"
            );
            ensure!(
                ifs[1]["name"] == "eth0" && ifs[1]["sandbox"] == path.as_str(),
                "{out}"
            );
            ensure!(ifs[1]["mtu"] == 1450, "{out}");
            ensure!(out["ips"][0]["interface"] == 1, "{out}");
            ensure!(out["ips"][0]["gateway"] == "10.244.1.1", "{out}");
            ensure!(out["routes"][0]["dst"] == "0.0.0.0/0", "{out}");
            let addr = out["ips"][0]["address"].as_str().context("address")?;
            let ip: Ipv4Addr = addr.trim_end_matches("/24").parse()?;
            ensure!(
                addr.ends_with("/24") && ip.octets()[..3] == [10, 244, 1],
                "{addr}"
            );
            // The lab's hand-wired pod keeps its address: IPAM must not hand it out.
            ensure!(
                ip != lab.pods[0].ip,
                "IPAM gave out the address of an existing pod"
            );
            // What the pod got, as the kernel reports it.
            let link = lab::run("ip", &["-n", &ns, "-d", "link", "show", "eth0"])?;
            ensure!(link.contains("mtu 1450") && link.contains("veth"), "{link}");
            ensure!(
                link.contains(ifs[1]["mac"].as_str().unwrap_or("?")),
                "{link}"
            );
            let neigh = lab::run("ip", &["-n", &ns, "neigh", "show", "10.244.1.1"])?;
            ensure!(
                neigh.contains(lab::GATEWAY_MAC) && neigh.contains("PERMANENT"),
                "{neigh}"
            );
            let route = lab::run("ip", &["-n", &ns, "route", "show", "default"])?;
            ensure!(route.contains("via 10.244.1.1 dev eth0"), "{route}");
            let k = lab::run("ip", &["netns", "exec", &ns, "ethtool", "-k", "eth0"])?;
            ensure!(k.contains("tx-checksumming: off"), "{k}");
            // A queue on the pod's side: a full ring towards the dataplane holds the pod's
            // sender back instead of dropping (BENCHMARKS.md, issue 14).
            let q = lab::run("tc", &["-n", &ns, "qdisc", "show", "dev", "eth0"])?;
            ensure!(q.contains("qdisc pfifo") && q.contains("root"), "{q}");
            let host = lab::run("ip", &["-n", &lab.nodes[0].ns, "link", "show", &host_if])?;
            ensure!(
                host.contains("mtu 1450") && host.contains("prog/xdp"),
                "{host}"
            );

            // Reachable at once: from a pod on node 2, and to a pod on node 2 and a service.
            lab.serve(&ns, "c0", POD_PORT)?;
            let to_c0 = SocketAddrV4::new(ip, POD_PORT);
            let x = lab::tcp_exchange(&lab.pods[1].ns, to_c0, 256 * 1024)?;
            ensure!(x.server == "c0", "reached {}", x.server);
            let x =
                lab::tcp_exchange(&ns, SocketAddrV4::new(lab.pods[1].ip, POD_PORT), 256 * 1024)?;
            ensure!(x.server == lab.pods[1].name, "reached {}", x.server);
            let svc = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
            for _ in 0..4 {
                lab::tcp_exchange(&ns, svc, 64 * 1024)?;
            }

            // CHECK with the runtime's prevResult.
            let mut conf = cni_conf(lab, 0, "1.0.0");
            conf["prevResult"] = out.clone();
            let (rc, o) = cni_call("CHECK", &env("c0", &path, "eth0"), &conf)?;
            ensure!(rc == 0 && o.is_null(), "CHECK: {rc} {o}");
            // A repeated ADD answers the same address without rewiring.
            let (again, ip2) = add(lab, "c0", &ns)?;
            ensure!(
                ip2 == ip && again["interfaces"][1]["mac"] == out["interfaces"][1]["mac"],
                "{again}"
            );

            // Restarts (clean and SIGKILL): the pod keeps its address and its traffic.
            for sig in [Signal::SIGTERM, Signal::SIGKILL] {
                restart(lab, sig)?;
                wait_endpoints(lab, 2)?;
                let x = lab::tcp_exchange(&lab.pods[1].ns, to_c0, 64 * 1024)
                    .with_context(|| format!("after a restart by {sig:?}"))?;
                ensure!(x.server == "c0");
                let (rc, o) = cni_call("CHECK", &env("c0", &path, "eth0"), &conf)?;
                ensure!(rc == 0, "CHECK after {sig:?}: {o}");
                ensure!(ipam_ips(lab)? == vec![ip.to_string()], "IPAM after {sig:?}");
            }
            ensure!(
                lab.log_tail(0, 200).contains("reattaching pod test/pod"),
                "no reattach logged"
            );

            // CHECK notices a pod whose address was removed.
            lab::run("ip", &["-n", &ns, "addr", "flush", "dev", "eth0"])?;
            let (rc, o) = cni_call("CHECK", &env("c0", &path, "eth0"), &conf)?;
            ensure!(
                rc == 1 && o["code"] == 100,
                "CHECK of a broken pod: {rc} {o}"
            );
            // ADD repairs it (same address).
            let (_, ip3) = add(lab, "c0", &ns)?;
            ensure!(ip3 == ip);
            let x = lab::tcp_exchange(&lab.pods[1].ns, to_c0, 64 * 1024)?;
            ensure!(x.server == "c0");

            // DEL: detached, veth gone, address free, table entry gone; twice is fine.
            let (rc, o) = cni_call("DEL", &env("c0", &path, "eth0"), &conf)?;
            ensure!(rc == 0 && o.is_null(), "DEL: {rc} {o}");
            ensure!(
                host_links(lab)?.is_empty(),
                "host ends left: {:?}",
                host_links(lab)?
            );
            let pod_links = lab::run("ip", &["-n", &ns, "-o", "link", "show"])?;
            ensure!(!pod_links.contains("eth0"), "{pod_links}");
            ensure!(ipam_ips(lab)?.is_empty(), "IPAM: {:?}", ipam_ips(lab)?);
            wait_endpoints(lab, 1)?;
            let (rc, _) = cni_call("DEL", &env("c0", &path, "eth0"), &conf)?;
            ensure!(rc == 0, "second DEL");
            // DEL after the namespace is gone (the runtime's retry after a crash).
            let (_, _) = add(lab, "c0", &ns)?;
            lab::run("ip", &["netns", "del", &ns])?;
            let (rc, o) = cni_call("DEL", &env("c0", &path, "eth0"), &conf)?;
            ensure!(rc == 0, "DEL without a netns: {o}");
            ensure!(host_links(lab)?.is_empty() && ipam_ips(lab)?.is_empty());
            Ok(())
        },
    );
}

#[test]
fn in_tap_mode_a_pod_gets_a_tap_that_keeps_its_offloads_and_survives_restarts() {
    with_lab_spec(
        "cnitap",
        |s| {
            s.pods_per_node = 1;
            s.taps = true;
        },
        |lab| {
            let ns = format!("{}-t0", lab.prefix);
            let path = netns_add(&ns)?;
            let (rc, out) = cni_call("ADD", &env("t0", &path, "eth0"), &cni_conf(lab, 0, "1.1.0"))?;
            ensure!(rc == 0, "ADD: exit {rc}: {out}");
            // No host end: the result lists the pod's interface alone, the address on it.
            let ifs = out["interfaces"].as_array().context("interfaces")?;
            ensure!(ifs.len() == 1, "{out}");
            ensure!(
                ifs[0]["name"] == "eth0"
                    && ifs[0]["sandbox"] == path.as_str()
                    && ifs[0]["mtu"] == 1450,
                "{out}"
            );
            ensure!(out["ips"][0]["interface"] == 0, "{out}");
            let ip: Ipv4Addr = out["ips"][0]["address"]
                .as_str()
                .and_then(|a| a.strip_suffix("/24"))
                .context("address")?
                .parse()?;
            let link = lab::run("ip", &["-n", &ns, "-d", "link", "show", "eth0"])?;
            ensure!(
                link.contains("mtu 1450") && link.contains("tun type tap"),
                "{link}"
            );
            ensure!(
                link.contains(ifs[0]["mac"].as_str().unwrap_or("?")),
                "{link}"
            );
            let k = lab::run("ip", &["netns", "exec", &ns, "ethtool", "-k", "eth0"])?;
            ensure!(
                k.contains("tx-checksumming: on") && k.contains("tcp-segmentation-offload: on"),
                "{k}"
            );
            let route = lab::run("ip", &["-n", &ns, "route", "show", "default"])?;
            ensure!(route.contains("via 10.244.1.1 dev eth0"), "{route}");
            ensure!(host_links(lab)?.is_empty(), "a tap pod has no host end");

            // Reachable at once, both ways across nodes, and services.
            lab.serve(&ns, "t0", POD_PORT)?;
            let to_t0 = SocketAddrV4::new(ip, POD_PORT);
            let x = lab::tcp_exchange(&lab.pods[1].ns, to_t0, 1 << 20)?;
            ensure!(x.server == "t0", "reached {}", x.server);
            let x = lab::tcp_exchange(&ns, SocketAddrV4::new(lab.pods[1].ip, POD_PORT), 1 << 20)?;
            ensure!(x.server == lab.pods[1].name, "reached {}", x.server);
            let svc = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
            for _ in 0..4 {
                lab::tcp_exchange(&ns, svc, 256 * 1024)?;
            }
            let mut conf = cni_conf(lab, 0, "1.1.0");
            conf["prevResult"] = out.clone();
            let (rc, o) = cni_call("CHECK", &env("t0", &path, "eth0"), &conf)?;
            ensure!(rc == 0 && o.is_null(), "CHECK: {rc} {o}");
            let (again, ip2) = add(lab, "t0", &ns)?;
            ensure!(
                ip2 == ip && again["interfaces"][0]["mac"] == out["interfaces"][0]["mac"],
                "{again}"
            );

            // Restarts: the tap outlives the daemon, which opens it again.
            for sig in [Signal::SIGTERM, Signal::SIGKILL] {
                restart(lab, sig)?;
                wait_endpoints(lab, 2)?;
                let x = lab::tcp_exchange(&lab.pods[1].ns, to_t0, 256 * 1024)
                    .with_context(|| format!("after a restart by {sig:?}"))?;
                ensure!(x.server == "t0");
                let (rc, o) = cni_call("CHECK", &env("t0", &path, "eth0"), &conf)?;
                ensure!(rc == 0, "CHECK after {sig:?}: {o}");
            }

            // DEL: the tap is gone, the address free; twice is fine.
            let (rc, o) = cni_call("DEL", &env("t0", &path, "eth0"), &conf)?;
            ensure!(rc == 0 && o.is_null(), "DEL: {rc} {o}");
            let pod_links = lab::run("ip", &["-n", &ns, "-o", "link", "show"])?;
            ensure!(!pod_links.contains("eth0"), "{pod_links}");
            ensure!(ipam_ips(lab)?.is_empty(), "IPAM: {:?}", ipam_ips(lab)?);
            wait_endpoints(lab, 1)?;
            let (rc, _) = cni_call("DEL", &env("t0", &path, "eth0"), &conf)?;
            ensure!(rc == 0, "second DEL");

            // An eth0 that is already there (not ours) is refused, and nothing is kept.
            lab::run(
                "ip",
                &[
                    "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
                ],
            )?;
            let (rc, o) = cni_call("ADD", &env("t1", &path, "eth0"), &cni_conf(lab, 0, "1.1.0"))?;
            ensure!(
                rc == 1 && o["msg"] == "interface already exists",
                "{rc} {o}"
            );
            ensure!(ipam_ips(lab)?.is_empty(), "IPAM: {:?}", ipam_ips(lab)?);
            Ok(())
        },
    );
}

#[test]
fn gc_removes_what_is_not_valid_and_bad_requests_get_the_spec_codes() {
    with_lab_spec(
        "cnigc",
        |s| s.pods_per_node = 1,
        |lab| {
            let mut ips = Vec::new();
            for c in ["a", "b", "c"] {
                let ns = format!("{}-{c}", lab.prefix);
                netns_add(&ns)?;
                ips.push(add(lab, c, &ns)?.1);
            }
            let distinct: BTreeSet<_> = ips.iter().collect();
            ensure!(distinct.len() == 3, "{ips:?}");
            wait_endpoints(lab, 4)?;
            // A stray host end of ours that no allocation owns (a crash mid-ADD).
            lab::run(
                "ip",
                &[
                    "-n",
                    &lab.nodes[0].ns,
                    "link",
                    "add",
                    "xnc0000000000aa",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "xtmp",
                ],
            )?;
            let mut gc = cni_conf(lab, 0, "1.1.0");
            gc["cni.dev/valid-attachments"] = json!([{"containerID": "b", "ifname": "eth0"}]);
            let (rc, o) = cni_call("GC", &[], &gc)?;
            ensure!(rc == 0, "GC: {o}");
            let links = host_links(lab)?;
            ensure!(links.len() == 1, "after GC: {links:?}");
            ensure!(
                ipam_ips(lab)? == vec![ips[1].to_string()],
                "{:?}",
                ipam_ips(lab)?
            );
            wait_endpoints(lab, 2)?;
            let b = format!("/run/netns/{}-b", lab.prefix);
            let (rc, o) = cni_call("CHECK", &env("b", &b, "eth0"), &cni_conf(lab, 0, "1.0.0"))?;
            ensure!(rc == 0, "b survives GC: {o}");

            // Bad requests: each gets its code and changes nothing.
            let bad = |cmd: &str, e: &[(&str, &str)], conf: &Value, code: u64| -> Result<()> {
                let (rc, o) = cni_call(cmd, e, conf)?;
                ensure!(
                    rc == 1 && o["code"] == code,
                    "{cmd} {e:?}: want code {code}, got {rc} {o}"
                );
                ensure!(o["msg"].as_str().is_some_and(|m| !m.is_empty()), "{o}");
                Ok(())
            };
            let mut big = cni_conf(lab, 0, "1.0.0");
            big["mtu"] = json!(1500);
            let d = format!("/run/netns/{}-d", lab.prefix);
            netns_add(&format!("{}-d", lab.prefix))?;
            bad("ADD", &env("d", &d, "eth0"), &big, 7)?;
            let gone = format!("/run/netns/{}-nosuch", lab.prefix);
            bad(
                "ADD",
                &env("e", &gone, "eth0"),
                &cni_conf(lab, 0, "1.0.0"),
                3,
            )?;
            bad(
                "CHECK",
                &env("zz", &d, "eth0"),
                &cni_conf(lab, 0, "1.0.0"),
                3,
            )?;
            bad("GC", &[], &cni_conf(lab, 0, "1.1.0"), 7)?;
            let mut v = cni_conf(lab, 0, "1.0.0");
            v["cniVersion"] = json!("2.0.0");
            bad("ADD", &env("d", &d, "eth0"), &v, 1)?;
            bad(
                "ADD",
                &[("CNI_CONTAINERID", "d")],
                &cni_conf(lab, 0, "1.0.0"),
                4,
            )?;
            ensure!(ipam_ips(lab)?.len() == 1, "bad requests changed IPAM");
            // STATUS: ready while the daemon runs; 50 when it is gone; ADD then says 11.
            let (rc, o) = cni_call("STATUS", &[], &cni_conf(lab, 0, "1.1.0"))?;
            ensure!(rc == 0, "STATUS: {o}");
            lab.stop_daemon(0, Signal::SIGTERM)?;
            bad("STATUS", &[], &cni_conf(lab, 0, "1.1.0"), 50)?;
            bad("ADD", &env("d", &d, "eth0"), &cni_conf(lab, 0, "1.0.0"), 11)?;
            // The pods' wiring stays while the daemon is down.
            ensure!(host_links(lab)?.len() == 1);
            lab.start_daemon(0)?;
            lab.wait_ready(Duration::from_secs(20))?;
            let (rc, o) = cni_call("CHECK", &env("b", &b, "eth0"), &cni_conf(lab, 0, "1.0.0"))?;
            ensure!(rc == 0, "b after the restart: {o}");
            Ok(())
        },
    );
}

#[test]
fn two_hundred_pods_added_and_deleted_concurrently_leave_nothing_behind() {
    with_lab_spec(
        "cni200",
        |s| {
            s.nodes = 1;
            s.pods_per_node = 0;
            s.frames = 16_384;
            s.max_pods = 256;
        },
        |lab| {
            const N: usize = 200;
            let names: Vec<String> = (0..N).map(|i| format!("{}-p{i}", lab.prefix)).collect();
            for n in &names {
                netns_add(n)?;
            }
            let pid = status(lab, 0)["pid"].as_u64().context("pid")?;
            let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count());
            let fds_before = fds()?;
            let conf = cni_conf(lab, 0, "1.0.0");
            let run_all = |cmd: &'static str| -> Result<Vec<Value>> {
                std::thread::scope(|s| {
                    let hs: Vec<_> = names
                        .iter()
                        .enumerate()
                        .map(|(i, n)| {
                            let (id, path, conf) =
                                (format!("ctr{i}"), format!("/run/netns/{n}"), &conf);
                            s.spawn(move || -> Result<Value> {
                                let (rc, o) = cni_call(cmd, &env(&id, &path, "eth0"), conf)?;
                                ensure!(rc == 0, "{cmd} {id}: {o}");
                                Ok(o)
                            })
                        })
                        .collect();
                    hs.into_iter()
                        .map(|h| h.join().map_err(|_| anyhow::anyhow!("thread panicked"))?)
                        .collect()
                })
            };
            let t = Instant::now();
            let outs = run_all("ADD")?;
            eprintln!("{N} concurrent ADDs: {:?}", t.elapsed());
            let ips: BTreeSet<String> = outs
                .iter()
                .filter_map(|o| o["ips"][0]["address"].as_str().map(str::to_string))
                .collect();
            ensure!(
                ips.len() == N,
                "{} distinct addresses for {N} pods",
                ips.len()
            );
            ensure!(host_links(lab)?.len() == N);
            ensure!(ipam_ips(lab)?.len() == N);
            wait_endpoints(lab, N as u64)?;
            // A few of them talk to each other through the dataplane.
            let first: Ipv4Addr = outs[0]["ips"][0]["address"]
                .as_str()
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse().ok())
                .context("first address")?;
            lab.serve(&names[0], "p0", POD_PORT)?;
            for n in [&names[N - 1], &names[N / 2]] {
                let x = lab::tcp_exchange(n, SocketAddrV4::new(first, POD_PORT), 16 * 1024)?;
                ensure!(x.server == "p0");
            }
            let t = Instant::now();
            run_all("DEL")?;
            eprintln!("{N} concurrent DELs: {:?}", t.elapsed());
            ensure!(
                host_links(lab)?.is_empty(),
                "host ends left: {}",
                host_links(lab)?.len()
            );
            ensure!(
                ipam_ips(lab)?.is_empty(),
                "addresses left: {}",
                ipam_ips(lab)?.len()
            );
            wait_endpoints(lab, 0)?;
            let s = status(lab, 0);
            let ports = s["ports"].as_array().map_or(0, Vec::len);
            ensure!(ports == 2, "ports left: {}", s["ports"]);
            for n in &names {
                let l = lab::run("ip", &["-n", n, "-o", "link", "show"])?;
                ensure!(!l.contains("eth0"), "{n} still has eth0");
            }
            // Sockets and files of the daemon are back to where they were (one-off fds of
            // the request threads may lag a moment).
            let t = Instant::now();
            while fds()? > fds_before && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(100));
            }
            ensure!(
                fds()? <= fds_before,
                "daemon fds {} -> {}",
                fds_before,
                fds()?
            );
            Ok(())
        },
    );
}

/// Runs the libcni driver in node 1's namespace (portmap's iptables rules and bandwidth's
/// qdiscs land there, as on a node): `cmd` on `conflist` for container `id`.
fn libcni(
    lab: &Lab,
    cmd: &str,
    conflist: &std::path::Path,
    id: &str,
    extra: &str,
) -> Result<(i32, Value)> {
    let tool = cnitool()?;
    let netns = format!("/run/netns/{}-{id}", lab.prefix);
    let cni_path = format!("{}:/usr/lib/cni", lab::bin_dir().display());
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.nodes[0].ns])
        .arg(&tool)
        .args([cmd, &conflist.to_string_lossy(), id, &netns, "eth0", extra])
        .env("CNI_PATH", cni_path)
        .env("CNI_CACHE_DIR", lab.dir().join("cni-cache"))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).with_context(|| format!("{cmd}: {text}"))?
    };
    if !out.status.success() {
        eprintln!(
            "libcni {cmd} {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((out.status.code().unwrap_or(-1), v))
}

fn nat_rules(lab: &Lab) -> Result<String> {
    lab::run(
        "ip",
        &[
            "netns",
            "exec",
            &lab.nodes[0].ns,
            "iptables",
            "-t",
            "nat",
            "-S",
        ],
    )
}

#[test]
fn libcni_chains_the_plugin_with_portmap_and_bandwidth_and_a_host_port_works() {
    with_lab_spec(
        "libcni",
        |s| s.pods_per_node = 1,
        |lab| {
            let plugin = json!({"type": "xdpnet", "socket": lab.cni_socket(0).to_string_lossy(), "mtu": 1450});
            let portmap =
                json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true});
            let bandwidth = json!({"type": "bandwidth", "capabilities": {"bandwidth": true}});
            let full = lab.dir().join("10-xdpnet.conflist");
            std::fs::write(
                &full,
                json!({"cniVersion": "1.0.0", "name": "xdpnet",
                "plugins": [plugin, portmap, bandwidth]})
                .to_string(),
            )?;
            // CHECK goes through a list without portmap: portmap 1.1.1 fails CHECK of any
            // IPv4-only pod (it looks for IPv6 rules; containernetworking/plugins#819).
            let checkable = lab.dir().join("check.conflist");
            std::fs::write(
                &checkable,
                json!({"cniVersion": "1.0.0", "name": "xdpnet",
                "plugins": [plugin, bandwidth]})
                .to_string(),
            )?;
            // c0: hostPort 30600/TCP; c1: 30601/TCP and the same 30600 on UDP (one hostPort
            // on different protocols in different pods).
            let caps = |host_port: u16| {
                let mut maps = vec![
                    json!({"hostPort": host_port, "containerPort": POD_PORT, "protocol": "tcp"}),
                ];
                if host_port == 30601 {
                    maps.push(
                        json!({"hostPort": 30600, "containerPort": POD_PORT, "protocol": "udp"}),
                    );
                }
                json!({
                    "portMappings": maps,
                    "bandwidth": {"ingressRate": 1_000_000_000u64, "ingressBurst": 10_000_000,
                                  "egressRate": 1_000_000_000u64, "egressBurst": 10_000_000},
                })
                .to_string()
            };
            let mut ips = Vec::new();
            for (id, hp) in [("c0", 30600), ("c1", 30601)] {
                netns_add(&format!("{}-{id}", lab.prefix))?;
                let (rc, r) = libcni(lab, "add", &full, id, &caps(hp))?;
                ensure!(rc == 0, "libcni ADD {id}: {r}");
                // Our two interfaces, then bandwidth's ifb; the address on the pod's.
                let names: Vec<&str> = r["interfaces"]
                    .as_array()
                    .context("interfaces")?
                    .iter()
                    .filter_map(|i| i["name"].as_str())
                    .collect();
                ensure!(
                    names.len() == 3 && names[0].starts_with("xnc") && names[1] == "eth0",
                    "{r}"
                );
                ensure!(r["ips"][0]["interface"] == 1, "{r}");
                let ip: Ipv4Addr = r["ips"][0]["address"]
                    .as_str()
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse().ok())
                    .context("ip")?;
                ips.push(ip);
                lab.serve(&format!("{}-{id}", lab.prefix), id, POD_PORT)?;
                let tc = lab::run(
                    "tc",
                    &["-n", &lab.nodes[0].ns, "qdisc", "show", "dev", names[0]],
                )?;
                ensure!(tc.contains("tbf"), "bandwidth's qdisc missing: {tc}");
            }
            ensure!(
                nat_rules(lab)?.contains("--dport 30600"),
                "{}",
                nat_rules(lab)?
            );
            // The hostPort, from a client outside the cluster, through portmap's DNAT and the
            // dataplane to the pod; and pod traffic through the dataplane both ways.
            let node_ip = Ipv4Addr::new(198, 18, 0, 11);
            for (hp, name) in [(30600, "c0"), (30601, "c1")] {
                let x = lab::tcp_exchange(&lab.ext_ns, SocketAddrV4::new(node_ip, hp), 256 * 1024)?;
                ensure!(x.server == name, "hostPort {hp} reached {}", x.server);
            }
            let names = lab::udp_exchange(&lab.ext_ns, SocketAddrV4::new(node_ip, 30600), 5)?;
            ensure!(
                names.iter().all(|n| n == "c1"),
                "hostPort 30600/UDP reached {names:?}"
            );
            let x = lab::tcp_exchange(
                &lab.pods[1].ns,
                SocketAddrV4::new(ips[0], POD_PORT),
                256 * 1024,
            )?;
            ensure!(x.server == "c0");
            let c0 = format!("{}-c0", lab.prefix);
            let x = lab::tcp_exchange(&c0, SocketAddrV4::new(lab.pods[1].ip, POD_PORT), 64 * 1024)?;
            ensure!(x.server == lab.pods[1].name);
            let (rc, r) = libcni(lab, "check", &checkable, "c0", &caps(30600))?;
            ensure!(rc == 0, "libcni CHECK: {r}");

            // GC keeps c0 only: c1's address and veth go (portmap 1.1.1 does not speak GC,
            // so the driver, like libcni 1.2, sends GC only to plugins that support 1.1.0).
            let (rc, r) = libcni(
                lab,
                "gc",
                &full,
                "-",
                &json!([{"containerID": "c0", "ifname": "eth0"}]).to_string(),
            )?;
            ensure!(rc == 0, "libcni GC: {r}");
            ensure!(host_links(lab)?.len() == 1, "{:?}", host_links(lab)?);
            ensure!(
                ipam_ips(lab)? == vec![ips[0].to_string()],
                "{:?}",
                ipam_ips(lab)?
            );
            let x = lab::tcp_exchange(&lab.ext_ns, SocketAddrV4::new(node_ip, 30600), 64 * 1024)?;
            ensure!(x.server == "c0", "c0 after GC");
            // DEL of both through the whole chain: ours is idempotent for c1, portmap and
            // bandwidth clean up their rules, qdiscs and ifb devices.
            for (id, hp) in [("c0", 30600), ("c1", 30601)] {
                let (rc, r) = libcni(lab, "del", &full, id, &caps(hp))?;
                ensure!(rc == 0, "libcni DEL {id}: {r}");
            }
            ensure!(host_links(lab)?.is_empty() && ipam_ips(lab)?.is_empty());
            let nat = nat_rules(lab)?;
            ensure!(!nat.contains("30600") && !nat.contains("30601"), "{nat}");
            let links = lab::run("ip", &["-n", &lab.nodes[0].ns, "-o", "link", "show"])?;
            ensure!(!links.contains("bwp"), "ifb left: {links}");
            wait_endpoints(lab, 1)?;
            Ok(())
        },
    );
}

/// containerd (Debian's, with runc) serving the CRI inside node 1's network namespace, with
/// its own root, state, sockets and CNI directories under the lab directory. Dropping it
/// removes every pod it still has, stops it and its shims, and unmounts what it left.
struct Containerd {
    dir: std::path::PathBuf,
    sock: std::path::PathBuf,
    child: std::process::Child,
    /// `/run/containerd` (where containerd 1.6 always puts shim sockets) did not exist before.
    made_run_dir: bool,
}

const IMAGE: &str = "docker.io/library/xdpnet-busybox:1";

fn cri_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cri/cri.py")
}

impl Containerd {
    fn start(lab: &Lab) -> Result<Self> {
        let dir = lab.dir().join("containerd");
        let (bin, conf) = (dir.join("cni-bin"), dir.join("cni-conf"));
        std::fs::create_dir_all(&bin)?;
        std::fs::create_dir_all(&conf)?;
        // The runtime's CNI directory: our plugin next to the reference ones (loopback,
        // portmap), and the conflist the DaemonSet would install, pointed at node 1.
        for e in std::fs::read_dir("/usr/lib/cni")? {
            let e = e?;
            std::os::unix::fs::symlink(e.path(), bin.join(e.file_name()))?;
        }
        std::os::unix::fs::symlink(lab::bin_dir().join("xdpnet"), bin.join("xdpnet"))?;
        std::fs::write(
            conf.join("10-xdpnet.conflist"),
            json!({"cniVersion": "1.0.0", "name": "xdpnet", "plugins": [
                {"type": "xdpnet", "socket": lab.cni_socket(0).to_string_lossy(), "mtu": 1450},
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            ]})
            .to_string(),
        )?;
        let d = dir.display();
        let sock = dir.join("containerd.sock");
        std::fs::write(
            dir.join("config.toml"),
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni-conf"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d}/runc"
"#
            ),
        )?;
        let made_run_dir = !std::path::Path::new("/run/containerd").exists();
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        // nsenter, not `ip netns exec`: the latter remounts /sys, which breaks runc's cgroups.
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.nodes[0].ns))
            .arg("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        let me = Self {
            dir,
            sock,
            child,
            made_run_dir,
        };
        let t = Instant::now();
        while me.cri(&["pods"]).is_err() {
            if t.elapsed() > Duration::from_secs(30) {
                bail!(
                    "containerd did not serve the CRI within 30 s:\n{}",
                    me.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // The sandbox and container image, built from Debian's busybox-static.
        let tar = me.dir.join("busybox.tar");
        lab::run(
            "python3",
            &[
                &cri_script().to_string_lossy(),
                "image",
                &tar.to_string_lossy(),
                IMAGE,
            ],
        )?;
        lab::run(
            "ctr",
            &[
                "-a",
                &me.sock.to_string_lossy(),
                "-n",
                "k8s.io",
                "images",
                "import",
                &tar.to_string_lossy(),
            ],
        )?;
        Ok(me)
    }

    fn log(&self) -> String {
        let t = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// One CRI call through the Python client; its JSON answer.
    fn cri(&self, args: &[&str]) -> Result<Value> {
        let out = std::process::Command::new("python3")
            .arg(cri_script())
            .arg(&self.sock)
            .args(args)
            .output()?;
        let v: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("CRI {args:?}: {}", String::from_utf8_lossy(&out.stderr)))?;
        if let Some(e) = v.get("error") {
            bail!("CRI {args:?}: {e}");
        }
        Ok(v)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Ok(v) = self.cri(&["pods"]) {
            for p in v["pods"].as_array().cloned().unwrap_or_default() {
                if let Some(p) = p.as_str() {
                    let _ = self.cri(&["stopp", p]);
                }
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGTERM,
        );
        let t = Instant::now();
        while self.child.try_wait().ok().flatten().is_none()
            && t.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims of this containerd (they outlive it by design).
        let _ = std::process::Command::new("pkill")
            .args([
                "-KILL",
                "-f",
                &format!("containerd-shim.*{}", self.sock.display()),
            ])
            .status();
        // Whatever it left mounted under its directory, innermost first.
        let dir = self.dir.to_string_lossy().into_owned();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = std::process::Command::new("umount")
                .args(["-l", &m])
                .status();
        }
        if self.made_run_dir {
            // Only if empty: nothing else's sockets are ever removed.
            let _ = std::fs::remove_dir("/run/containerd/s");
            let _ = std::fs::remove_dir("/run/containerd");
        }
    }
}

#[test]
fn containerd_cri_pod_on_node_1_reaches_a_pod_on_node_2_and_a_clusterip_service() {
    with_lab_spec(
        "cri",
        |s| s.pods_per_node = 1,
        |lab| {
            let ctd = Containerd::start(lab)?;
            let run = ctd.cri(&["runp", "web-0", "uid-web-0", IMAGE])?;
            let ip: Ipv4Addr = run["ip"].as_str().context("pod IP")?.parse()?;
            let container = run["container"].as_str().context("container")?.to_string();
            let pod = run["pod"].as_str().context("pod")?.to_string();
            ensure!(
                ip.octets()[..3] == [10, 244, 1] && ip != lab.pods[0].ip,
                "{run}"
            );
            // RunPodSandbox called our plugin: node 1's IPAM and its host end know the pod.
            ensure!(
                ipam_ips(lab)? == vec![ip.to_string()],
                "{:?}",
                ipam_ips(lab)?
            );
            ensure!(host_links(lab)?.len() == 1);
            wait_endpoints(lab, 2)?;
            let exec = |cmd: &[&str]| -> Result<Value> {
                let mut a = vec!["exec", container.as_str()];
                a.extend_from_slice(cmd);
                ctd.cri(&a)
            };
            let addr = exec(&["ip", "-4", "addr", "show", "eth0"])?;
            ensure!(
                addr["stdout"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&format!("{ip}/24")),
                "{addr}"
            );
            // TCP from inside the container (busybox nc) to the pod on node 2 — across the
            // underlay in VXLAN — and to the ClusterIP service, all through xdpnet.
            let remote = lab.pods[1].clone();
            for (to, want) in [
                (format!("{}", remote.ip), Some(remote.name.clone())),
                ("10.96.0.10".to_string(), None),
            ] {
                let port = if want.is_some() {
                    POD_PORT.to_string()
                } else {
                    "80".to_string()
                };
                let r = exec(&[
                    "sh",
                    "-c",
                    &format!("echo hello-from-cri | nc -w 2 {to} {port}"),
                ])?;
                let out = r["stdout"].as_str().unwrap_or("");
                let mut lines = out.lines();
                let server = lines.next().unwrap_or("");
                ensure!(lines.next() == Some("hello-from-cri"), "{to}:{port}: {r}");
                match &want {
                    Some(w) => ensure!(server == w, "{to}: reached {server:?}"),
                    None => ensure!(
                        lab.pods.iter().any(|p| p.name == server),
                        "service reached {server:?}"
                    ),
                }
            }
            // The dataplane carried it: node 1 encapsulated towards node 2.
            let s = fresh_status(lab, 0);
            let encap: u64 = s["workers"]
                .as_array()
                .map(|w| {
                    w.iter()
                        .filter_map(|w| w["pipeline"]["encap"].as_u64())
                        .sum()
                })
                .unwrap_or(0);
            ensure!(encap > 0, "no VXLAN encapsulation counted on node 1");
            // Stop + remove: containerd calls DEL; everything is freed.
            ctd.cri(&["stopp", &pod])?;
            ensure!(host_links(lab)?.is_empty(), "{:?}", host_links(lab)?);
            ensure!(ipam_ips(lab)?.is_empty(), "{:?}", ipam_ips(lab)?);
            wait_endpoints(lab, 1)?;
            drop(ctd);
            Ok(())
        },
    );
}
