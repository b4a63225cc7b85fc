//! Network policy in the lab, as the upstream NetworkPolicy e2e suite probes it: namespaces
//! x, y, z; pods a, b, c in each (spread over two nodes); every pod serving TCP and UDP on
//! ports 80 and 81 (each port named); every pair probed over each port and protocol, by pod
//! IP and through a ClusterIP per pod; the observed matrix compared with the one the API
//! semantics give (`xdpnet_control::policy_ref`, a direct reading of the objects), case by
//! case as policies are applied, changed and deleted on the running lab.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::Duration;
use xdpnet_bench::lab::{self, ClusterFile, Lab};
use xdpnet_control::policy_ref;
use xdpnet_control::state::ClusterState;
use xdpnet_e2e::with_lab_spec;

const NSS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const PORTS: [(u16, u8); 4] = [(80, 6), (81, 6), (80, 17), (81, 17)];

fn cluster() -> String {
    let mut y = String::new();
    for ns in NSS {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n"
        ));
    }
    for (ni, ns) in NSS.iter().enumerate() {
        for (pi, p) in PODS.iter().enumerate() {
            let k = ni * 3 + pi;
            y.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {p}, namespace: {ns}, labels: {{pod: {p}}}}}\nspec:\n  nodeName: node-{}\n  containers:\n  - name: serve\n    ports:\n    - {{name: serve-80-tcp, containerPort: 80, protocol: TCP}}\n    - {{name: serve-81-tcp, containerPort: 81, protocol: TCP}}\n    - {{name: serve-80-udp, containerPort: 80, protocol: UDP}}\n    - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}\n",
                1 + k % 2
            ));
            y.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s-{p}, namespace: {ns}}}\nspec:\n  clusterIP: 10.96.2.{}\n  selector: {{pod: {p}}}\n  ports:\n  - {{name: t80, port: 80, targetPort: 80, protocol: TCP}}\n  - {{name: t81, port: 81, targetPort: 81, protocol: TCP}}\n  - {{name: u80, port: 80, targetPort: 80, protocol: UDP}}\n  - {{name: u81, port: 81, targetPort: 81, protocol: UDP}}\n",
                10 + k
            ));
        }
    }
    y
}

/// One probe: does `to` answer as `who` from inside `ns`?
fn probe(ns: &str, to: SocketAddrV4, proto: u8, who: &str) -> bool {
    let who = who.to_string();
    lab::in_ns(ns, move || -> bool {
        if proto == 6 {
            let Ok(mut c) = TcpStream::connect_timeout(&to.into(), Duration::from_millis(1500))
            else {
                return false;
            };
            let _ = c.set_read_timeout(Some(Duration::from_millis(1500)));
            let mut line = String::new();
            let mut r = std::io::BufReader::new(&mut c);
            std::io::BufRead::read_line(&mut r, &mut line).is_ok() && line.trim() == who
        } else {
            let Ok(s) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(400)));
            let mut buf = [0u8; 512];
            for _ in 0..3 {
                if s.send_to(b"probe", to).is_err() {
                    return false;
                }
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    return String::from_utf8_lossy(&buf[..n]).starts_with(&format!("{who} "));
                }
            }
            false
        }
    })
    .unwrap_or(false)
}

/// Every pair (not a pod to itself), port and protocol, by pod IP and by the destination's
/// ClusterIP: observed against expected; the mismatches, as lines.
fn check(lab: &Lab, case: &str) -> Result<Vec<String>> {
    let st = ClusterState::load(&lab.state_path()).context("the lab's state")?;
    // (who, netns, pod IP, its service's ClusterIP)
    let pods: Vec<(String, String, Ipv4Addr, Ipv4Addr)> = lab
        .pods
        .iter()
        .map(|p| {
            let ni = NSS.iter().position(|n| *n == p.namespace).unwrap_or(0);
            let pi = PODS.iter().position(|n| *n == p.name).unwrap_or(0);
            let vip = Ipv4Addr::new(10, 96, 2, 10 + (ni * 3 + pi) as u8);
            (p.who(), p.ns.clone(), p.ip, vip)
        })
        .collect();
    let mut jobs = Vec::new();
    for (sw, sns, sip, _) in &pods {
        for (dw, _, dip, vip) in &pods {
            if sw == dw {
                continue;
            }
            for (port, proto) in PORTS {
                let want = policy_ref::allowed(&st, *sip, *dip, proto, port);
                for (how, addr) in [("pod", *dip), ("svc", *vip)] {
                    jobs.push((
                        sw.clone(),
                        sns.clone(),
                        dw.clone(),
                        how,
                        addr,
                        port,
                        proto,
                        want,
                    ));
                }
            }
        }
    }
    let mut bad = Vec::new();
    for chunk in jobs.chunks(96) {
        let results: Vec<bool> = std::thread::scope(|sc| {
            let hs: Vec<_> = chunk
                .iter()
                .map(|(_, sns, dw, _, addr, port, proto, _)| {
                    sc.spawn(move || probe(sns, SocketAddrV4::new(*addr, *port), *proto, dw))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(false)).collect()
        });
        for ((sw, _, dw, how, _, port, proto, want), got) in chunk.iter().zip(results) {
            if got != *want {
                bad.push(format!(
                    "{case}: {sw} -> {dw} {} {port} by {how}: expected {}, observed {}",
                    if *proto == 6 { "TCP" } else { "UDP" },
                    if *want { "allowed" } else { "denied" },
                    if got { "allowed" } else { "denied" }
                ));
            }
        }
    }
    Ok(bad)
}

/// Applies (or deletes) the objects of `yaml` on the running lab.
fn apply(lab: &mut Lab, yaml: &str, delete: bool) -> Result<()> {
    let cf = ClusterFile::parse(yaml)?;
    if delete {
        lab.delete_cluster(&cf)
    } else {
        lab.apply_cluster(&cf, false)
    }
}

/// [`check`] until it finds no mismatch, for up to three rounds half a second apart (the
/// daemons follow the state file within a fraction of a second; a node whose pods a change
/// does not concern publishes nothing, so there is no table generation to wait for).
fn settled(lab: &Lab, case: &str) -> Result<Vec<String>> {
    let mut bad = Vec::new();
    for round in 0..3 {
        if round > 0 {
            std::thread::sleep(Duration::from_millis(500));
        }
        bad = check(lab, case)?;
        if bad.is_empty() {
            break;
        }
    }
    Ok(bad)
}

/// The daemon of node `n`'s metrics text.
fn metrics(lab: &Lab, n: usize) -> String {
    lab::http_get(
        &lab.nodes[n].ns,
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9460),
        "/metrics",
    )
    .map(|(_, b)| b)
    .unwrap_or_default()
}

fn np(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{}",
        spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
    )
}

fn cnp(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n{}",
        spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
    )
}

#[test]
fn network_policy_truth_tables_match_the_api_semantics() {
    let file = ClusterFile::parse(&cluster()).expect("cluster file");
    with_lab_spec(
        "netpol",
        |s| {
            s.nodes = 2;
            s.pods_per_node = 0;
            s.max_pods = 16;
            s.cluster = Some(file);
        },
        |lab| {
            let mut bad = Vec::new();
            let mut ran: BTreeMap<&str, usize> = BTreeMap::new();
            let mut case =
                |lab: &mut Lab, name: &'static str, yaml: Option<(&str, bool)>| -> Result<()> {
                    if let Some((y, del)) = yaml {
                        apply(lab, y, del).with_context(|| format!("case {name}"))?;
                    }
                    let b = settled(lab, name)?;
                    ran.insert(name, b.len());
                    bad.extend(b);
                    Ok(())
                };
            case(lab, "no policy", None)?;
            // Default deny of ingress in x; the lab's probes from y and z and within x stop.
            let deny_x = np("x", "deny-all", "podSelector: {}\npolicyTypes: [Ingress]");
            case(lab, "default deny ingress in x", Some((&deny_x, false)))?;
            // Union: from pods b of x (podSelector only: the policy's namespace) to x/a on TCP 80;
            // from namespace y, any pod, to x/a on the named port serve-81-udp.
            let allow = np(
                "x",
                "allow-a",
                "podSelector: {matchLabels: {pod: a}}\ningress:\n- from: [{podSelector: {matchLabels: {pod: b}}}]\n  ports: [{protocol: TCP, port: 80}]\n- from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n  ports: [{protocol: UDP, port: serve-81-udp}]",
            );
            case(
                lab,
                "union, own namespace, named port",
                Some((&allow, false)),
            )?;
            // namespaceSelector AND podSelector in one peer; an ipBlock with except; endPort.
            let and = np(
                "x",
                "allow-b",
                "podSelector: {matchLabels: {pod: b}}\ningress:\n- from:\n  - {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchExpressions: [{key: pod, operator: In, values: [c]}]}}\n  - ipBlock: {cidr: 10.244.0.0/16, except: [10.244.2.0/24]}\n  ports: [{protocol: TCP, port: 80, endPort: 81}]",
            );
            case(
                lab,
                "AND peer, ipBlock except, endPort",
                Some((&and, false)),
            )?;
            // Egress: y isolated for egress, allowed only to z on TCP 80 (replies of inbound flows
            // to y still leave: the probes from x and z to y keep working).
            let eg = np(
                "y",
                "egress-z",
                "podSelector: {}\npolicyTypes: [Egress]\negress:\n- to: [{namespaceSelector: {matchLabels: {ns: z}}}]\n  ports: [{protocol: TCP, port: 80}]",
            );
            case(
                lab,
                "egress isolation, stateful replies",
                Some((&eg, false)),
            )?;
            // A relabelled pod: z/c gains role=web, which a deny-all policy of z selects; the
            // policies follow the labels at once.
            let relabel = format!(
                "{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: c, namespace: z, labels: {{pod: c, role: web}}}}\nspec:\n  nodeName: node-1\n",
                np(
                    "z",
                    "deny-web",
                    "podSelector: {matchLabels: {role: web}}\npolicyTypes: [Ingress]"
                )
            );
            case(lab, "pod relabelled into a policy", Some((&relabel, false)))?;
            // ClusterNetworkPolicy: Admin denies y -> x/a whatever NetworkPolicies say; Admin
            // passes z to the NetworkPolicy tier; Baseline denies everything to z that no
            // NetworkPolicy isolates.
            let admin = cnp(
                "admin",
                "tier: Admin\npriority: 10\nsubject: {pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}}\ningress:\n- {action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}\n- {action: Pass, from: [{namespaces: {matchLabels: {ns: z}}}]}\n- {action: Accept, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 81}}}]}",
            );
            case(lab, "admin tier: deny, pass, accept", Some((&admin, false)))?;
            let base = cnp(
                "baseline",
                "tier: Baseline\npriority: 5\nsubject: {namespaces: {matchLabels: {ns: z}}}\ningress:\n- {action: Deny, from: [{namespaces: {}}], protocols: [{udp: {}}]}",
            );
            case(lab, "baseline tier", Some((&base, false)))?;
            // Deleting policies restores what they took away.
            case(
                lab,
                "policies deleted",
                Some((&format!("{deny_x}---\n{admin}"), true)),
            )?;
            assert!(
                bad.is_empty(),
                "{} mismatches:\n{}",
                bad.len(),
                bad.join("\n")
            );
            assert_eq!(ran.len(), 9, "{ran:?}");
            // The daemons counted judged flows against the policies (the egress one at least).
            let m = metrics(lab, 0) + &metrics(lab, 1);
            assert!(
                m.contains("xdpnet_policy_flows_total{policy=\"NetworkPolicy y/egress-z\""),
                "{m}"
            );
            Ok(())
        },
    );
}
