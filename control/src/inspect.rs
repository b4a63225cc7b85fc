//! `xdpnetd inspect`: a running daemon's tables, as human tables or JSON.

use anyhow::Context;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::Path;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Renders rows as aligned columns.
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.len());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(head.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
        out.push('\n');
    }
    out
}

/// The human rendering of an inspection dump.
pub fn render(v: &Value, conntrack: usize) -> String {
    let mut out = format!(
        "node {}  table generation {}\n\nSERVICES\n",
        s(&v["node"]),
        v["generation"]
    );
    let arr = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = arr("services")
        .iter()
        .map(|x| {
            vec![
                s(&x["name"]),
                s(&x["protocol"]),
                s(&x["port"]),
                s(&x["backends"]),
            ]
        })
        .collect();
    out += &table(&["NAME", "PROTO", "PORT", "BACKENDS"], &rows);
    out += "\nFRONTENDS\n";
    let rows: Vec<Vec<String>> = arr("frontends")
        .iter()
        .map(|x| {
            vec![
                s(&x["name"]),
                s(&x["cluster_ips"]),
                s(&x["node_ports"]),
                s(&x["load_balancer_ips"]),
                s(&x["external_ips"]),
            ]
        })
        .collect();
    out += &table(
        &[
            "SERVICE",
            "CLUSTER-IPS",
            "NODE-PORTS",
            "LB-IPS",
            "EXTERNAL-IPS",
        ],
        &rows,
    );
    out += "\nENDPOINTS (this node)\n";
    let rows: Vec<Vec<String>> = arr("endpoints")
        .iter()
        .map(|x| vec![s(&x["ip"]), s(&x["mac"]), s(&x["port"])])
        .collect();
    out += &table(&["IP", "MAC", "PORT"], &rows);
    out += "\nROUTES (other nodes)\n";
    let rows: Vec<Vec<String>> = arr("routes")
        .iter()
        .map(|x| {
            vec![
                s(&x["node"]),
                s(&x["pod_cidrs"]),
                s(&x["underlay_ip"]),
                s(&x["addresses"]),
                s(&x["next_hop_mac"]),
            ]
        })
        .collect();
    out += &table(
        &["NODE", "POD-CIDRS", "VTEP", "ADDRESSES", "NEXT-HOP"],
        &rows,
    );
    let ct = &v["conntrack"];
    out += &format!(
        "\nCONNTRACK ({} entries, first {conntrack})\n",
        ct["entries"]
    );
    let rows: Vec<Vec<String>> = ct["shown"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .take(conntrack)
        .map(|x| vec![s(&x["protocol"]), s(&x["from"]), s(&x["to"])])
        .collect();
    out += &table(&["PROTO", "ARRIVES AS", "REWRITTEN TO"], &rows);
    out += "\nCOUNTERS\n";
    let rows: Vec<Vec<String>> = v["counters"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let drops: Vec<String> = w["pipeline"]["drops"]
                .as_object()
                .map(|d| {
                    d.iter()
                        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                        .map(|(k, n)| format!("{k}={n}"))
                        .collect()
                })
                .unwrap_or_default();
            vec![
                i.to_string(),
                s(&w["core"]),
                s(&w["rx"]),
                s(&w["tx"]),
                s(&w["pipeline"]["encap"]),
                s(&w["pipeline"]["decap"]),
                if drops.is_empty() {
                    "-".into()
                } else {
                    drops.join(" ")
                },
            ]
        })
        .collect();
    out += &table(
        &["WORKER", "CORE", "RX", "TX", "ENCAP", "DECAP", "DROPS"],
        &rows,
    );
    out
}

/// Fetches a daemon's dump and prints it.
pub fn print(socket: &Path, json: bool, conntrack: usize) -> anyhow::Result<()> {
    let v = crate::http::fetch_inspect(socket).with_context(|| {
        format!(
            "no xdpnetd answering on {} (is it running? root?)",
            socket.display()
        )
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render(&v, conntrack));
    }
    Ok(())
}

/// Prints the policy rules in force for `pod` (`namespace/name`) as a running daemon has them.
pub fn print_policy(socket: &Path, pod: &str, json: bool) -> anyhow::Result<()> {
    let v = crate::http::fetch_inspect(socket).with_context(|| {
        format!(
            "no xdpnetd answering on {} (is it running? root?)",
            socket.display()
        )
    })?;
    let p = v["policy"]["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["pod"].as_str() == Some(pod))
        .cloned();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"pod": pod, "policy": p, "policies": v["policy"]["policies"]})
            )?
        );
        return Ok(());
    }
    print!(
        "{}",
        render_policy(pod, p.as_ref(), &v["policy"]["policies"])
    );
    Ok(())
}

/// The text form of one pod's policy.
pub fn render_policy(pod: &str, p: Option<&Value>, policies: &Value) -> String {
    let Some(p) = p else {
        return format!("{pod}: no network policy applies (all traffic allowed)\n");
    };
    let mut out = format!("{pod} ({})\n", s(&p["ip"]));
    for dir in ["ingress", "egress"] {
        let d = &p[dir];
        let _ = writeln!(
            out,
            "{dir}: {}",
            if d["isolated"].as_bool() == Some(true) {
                "isolated by NetworkPolicies"
            } else {
                "not isolated by NetworkPolicies"
            }
        );
        let mut rows = Vec::new();
        for (tier, key) in [
            ("Admin", "admin"),
            ("NetworkPolicy", "network_policy"),
            ("Baseline", "baseline"),
        ] {
            for r in d[key].as_array().into_iter().flatten() {
                for c in r["clauses"].as_array().into_iter().flatten() {
                    let peers: Vec<String> =
                        c["peers"].as_array().into_iter().flatten().map(s).collect();
                    let ports: Vec<String> = c["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| {
                            let (a, b) = (s(&p["from"]), s(&p["to"]));
                            let range = if a == b {
                                a
                            } else if a == "0" && b == "65535" {
                                "all".into()
                            } else {
                                format!("{a}-{b}")
                            };
                            format!("{}/{range}", s(&p["protocol"]))
                        })
                        .collect();
                    rows.push(vec![
                        tier.to_string(),
                        s(&r["policy"]),
                        s(&r["rule"]),
                        s(&r["action"]),
                        if peers.is_empty() {
                            "none".into()
                        } else {
                            peers.join(",")
                        },
                        if ports.is_empty() {
                            "all".into()
                        } else {
                            ports.join(",")
                        },
                    ]);
                }
            }
        }
        if rows.is_empty() {
            out.push_str("  (no rules)\n");
        } else {
            out.push_str(&table(
                &["TIER", "POLICY", "RULE", "ACTION", "PEERS", "PORTS"],
                &rows,
            ));
        }
    }
    let rows: Vec<Vec<String>> = policies
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| vec![s(&o["name"]), s(&o["allowed"]), s(&o["denied"])])
        .collect();
    if !rows.is_empty() {
        out.push_str("new flows judged, per policy (this node):\n");
        out.push_str(&table(&["POLICY", "ALLOWED", "DENIED"], &rows));
    }
    out
}

/// Prints the verdict on `flow` by a running daemon's policy.
pub fn print_explain(socket: &Path, flow: crate::policy::Flow, json: bool) -> anyhow::Result<()> {
    let v = crate::http::fetch_inspect(socket).with_context(|| {
        format!(
            "no xdpnetd answering on {} (is it running? root?)",
            socket.display()
        )
    })?;
    let e = crate::policy::explain(&v["policy"], flow);
    if json {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(());
    }
    let f = &e["flow"];
    println!(
        "{} -> {} {}/{}: {}",
        s(&f["src"]),
        s(&f["dst"]),
        s(&f["protocol"]),
        s(&f["port"]),
        if e["allowed"].as_bool() == Some(true) {
            "allowed"
        } else {
            "denied"
        }
    );
    let steps = e["steps"].as_array().cloned().unwrap_or_default();
    if steps.is_empty() {
        println!("  neither end is a pod of this node with network policy: allowed here");
    }
    for st in steps {
        let rule = if st["rule"].is_null() {
            String::new()
        } else {
            format!(" rule {}", s(&st["rule"]))
        };
        let verdict = if st["allowed"].as_bool() == Some(true) {
            "allowed"
        } else {
            "denied"
        };
        // A rule decided: "denied by POLICY (tier rule N)"; else the reason as it is.
        let how = if st["rule"].is_null() {
            format!("{verdict}: {}", s(&st["by"]))
        } else {
            format!("{verdict} by {} ({}{rule})", s(&st["by"]), s(&st["tier"]))
        };
        println!("  {} of {}: {how}", s(&st["direction"]), s(&st["pod"]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_section_with_aligned_columns() {
        let v = serde_json::json!({
            "node": "node-1", "generation": 7,
            "services": [{"name": "lab/web:80/TCP", "protocol": "TCP", "port": 80, "backends": ["10.244.1.10:8080", "10.244.2.10:8080"]}],
            "frontends": [{"name": "lab/web", "cluster_ips": ["10.96.0.10"], "node_ports": [30080], "load_balancer_ips": [], "external_ips": []}],
            "endpoints": [{"ip": "10.244.1.10", "mac": "02:00:0a:f4:01:0a", "port": 2}],
            "routes": [{"node": "node-2", "pod_cidrs": ["10.244.2.0/24"], "underlay_ip": "198.18.0.12", "addresses": ["198.18.0.12", "198.19.0.12"], "next_hop_mac": "aa:bb:cc:dd:ee:ff"}],
            "conntrack": {"entries": 2, "shown": [{"protocol": "TCP", "from": "a", "to": "b"}]},
            "counters": [{"core": 0, "rx": 5, "tx": 4, "pipeline": {"encap": 1, "decap": 2, "drops": {"no_route": 1, "spoofed": 0}}}],
        });
        let t = render(&v, 20);
        for want in [
            "node node-1  table generation 7",
            "lab/web:80/TCP  TCP    80    10.244.1.10:8080,10.244.2.10:8080",
            "10.244.1.10  02:00:0a:f4:01:0a  2",
            "node-2  10.244.2.0/24  198.18.0.12  198.18.0.12,198.19.0.12  aa:bb:cc:dd:ee:ff",
            "CONNTRACK (2 entries, first 20)",
            "no_route=1",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        assert!(!t.contains("spoofed"));
    }
}
