//! `xdpnet-bench loadgen`: command line of the AF_XDP generator and sink.

use anyhow::{Context, Result, bail};
use xdpnet_bench::lab;
use xdpnet_bench::loadgen::frame::{Proto, TrafficSpec};
use xdpnet_bench::loadgen::{self, Outcome, Place, RunSpec, parse_mac};

pub const USAGE: &str = "  loadgen    AF_XDP traffic generator and sink (root; in lab namespaces)
    --from NS:IF     the generator's interface (e.g. a pod's eth0)
    --to NS:IF       the sink's interface (every frame it gets is taken by an XDP program)
    --dst-ip A       destination address (pod, ClusterIP, node address for a NodePort)
    --dst-port P     destination port (default 8080)
    --dst-mac M      next hop MAC (default: the xdpnet gateway MAC 02:fe:78:64:70:01)
    --src-ip A       source address (default: the --from interface's)
    --src-port P     source port of flow 0; flow f uses P+f (default 10000)
    --src-addrs N    flow f sends from src-ip + f mod N (default 1; for clients outside the
                     cluster: pods sending from other addresses are dropped as spoofed)
    --proto udp|tcp-syn|tcp-handshake   (default udp); tcp-syn: SYNs only (new connections);
                     tcp-handshake: the sink answers SYN-ACK, the generator ACK then RST
    --size N         frame bytes without FCS, 58..1514 (udp) / 82..1514 (tcp) (default 64)
    --flows N        flows, 1..65535 (default 1)
    --rate R         offered packets/s (500k, 1.5M, ...) (default: as fast as possible)
    --seconds S      generating time (default 5)
    --packets N      stop after N packets
    --core C         pin the loop to core C
    --json FILE      write the result (and the ceiling) as JSON
    --no-ceiling     skip the ceiling run (generator straight into the sink over a veth pair)
    --prefix P       namespaces of the ceiling run (default xlg<pid>)
    Without --from/--to only the ceiling runs.";

/// Parses `1.5M`, `500k`, `2000`.
pub fn parse_rate(s: &str) -> Result<f64> {
    let (num, mul) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .with_context(|| format!("rate {s:?}: want a number, optionally with k or M"))?;
    if !(v > 0.0 && v * mul <= 1e9) {
        bail!("rate {s:?} must be above 0 and at most 1G packets/s");
    }
    Ok(v * mul)
}

fn place(s: &str) -> Result<Place> {
    let (ns, ifname) = s
        .split_once(':')
        .with_context(|| format!("{s:?}: want NAMESPACE:INTERFACE"))?;
    if ns.is_empty() || ifname.is_empty() {
        bail!("{s:?}: want NAMESPACE:INTERFACE");
    }
    Ok(Place::new(ns, ifname))
}

/// One line of a result.
pub fn summary(name: &str, o: &Outcome) -> String {
    let r = &o.report;
    format!(
        "{name:<10} sent {:>9.3} Mpps  received {:>9.3} Mpps  lost {:>6.2}%  reordered {}  latency p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1} us",
        r.tx_pps() / 1e6,
        r.rx_pps() / 1e6,
        if r.sent == 0 {
            0.0
        } else {
            r.lost as f64 * 100.0 / r.sent as f64
        },
        r.reordered,
        r.latency.p50 as f64 / 1e3,
        r.latency.p90 as f64 / 1e3,
        r.latency.p99 as f64 / 1e3,
        r.latency.p999 as f64 / 1e3,
        r.latency.max as f64 / 1e3,
    )
}

pub fn loadgen(args: &[String]) -> Result<()> {
    lab::cleanup_on_signal()?;
    let mut from = None;
    let mut to = None;
    let mut dst_ip = None;
    let mut src_ip = None;
    let mut dst_mac = parse_mac(lab::GATEWAY_MAC)?;
    let mut dst_port = lab::POD_PORT;
    let mut src_port = 10_000u16;
    let mut src_addrs = 1u16;
    let mut proto = Proto::Udp;
    let mut size = 64usize;
    let mut flows = 1u16;
    let mut rate = None;
    let mut seconds = 5.0f64;
    let mut packets = None;
    let mut core = None;
    let mut json = None;
    let mut ceiling = true;
    let mut prefix = format!("xlg{}", std::process::id());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--no-ceiling" {
            ceiling = false;
            continue;
        }
        let v = it
            .next()
            .with_context(|| format!("{a} needs a value\n{USAGE}"))?;
        let num = |what: &str| -> Result<u64> {
            v.parse()
                .with_context(|| format!("{what} {v:?} is not a number"))
        };
        match a.as_str() {
            "--from" => from = Some(place(v)?),
            "--to" => to = Some(place(v)?),
            "--dst-ip" => dst_ip = Some(v.parse().with_context(|| format!("--dst-ip {v:?}"))?),
            "--src-ip" => src_ip = Some(v.parse().with_context(|| format!("--src-ip {v:?}"))?),
            "--dst-mac" => dst_mac = parse_mac(v)?,
            "--dst-port" => dst_port = u16::try_from(num("--dst-port")?).context("port")?,
            "--src-port" => src_port = u16::try_from(num("--src-port")?).context("port")?,
            "--src-addrs" => {
                src_addrs = u16::try_from(num("--src-addrs")?)
                    .ok()
                    .filter(|n| *n > 0)
                    .context("--src-addrs must be 1..65535")?
            }
            "--proto" => {
                proto = match v.as_str() {
                    "udp" => Proto::Udp,
                    "tcp-syn" => Proto::TcpSyn,
                    "tcp-handshake" => Proto::TcpHandshake,
                    o => bail!("--proto {o:?}: udp, tcp-syn or tcp-handshake"),
                }
            }
            "--size" => size = num("--size")? as usize,
            "--flows" => {
                flows = u16::try_from(num("--flows")?)
                    .ok()
                    .filter(|f| *f > 0)
                    .context("--flows must be 1..65535")?
            }
            "--rate" => rate = Some(parse_rate(v)?),
            "--seconds" => {
                seconds = v
                    .parse()
                    .with_context(|| format!("--seconds {v:?} is not a number"))?
            }
            "--packets" => packets = Some(num("--packets")?),
            "--core" => core = Some(num("--core")? as usize),
            "--json" => json = Some(std::path::PathBuf::from(v)),
            "--prefix" => prefix = v.clone(),
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    if !(seconds > 0.0 && seconds <= 3600.0) {
        bail!("--seconds must be in (0, 3600]");
    }
    if from.is_some() != to.is_some() {
        bail!("--from and --to go together");
    }
    let from_mac;
    let src_ip = match (&from, src_ip) {
        (Some(f), None) => {
            from_mac = f.mac()?;
            f.ipv4()?
        }
        (Some(f), Some(a)) => {
            from_mac = f.mac()?;
            a
        }
        (None, a) => {
            from_mac = [2, 0, 0, 0, 0, 1];
            a.unwrap_or(std::net::Ipv4Addr::new(198, 18, 1, 1))
        }
    };
    let spec = RunSpec {
        frame: TrafficSpec {
            src_mac: from_mac,
            dst_mac,
            src_ip,
            dst_ip: dst_ip.unwrap_or(std::net::Ipv4Addr::new(198, 18, 1, 2)),
            dst_port,
            src_port,
            src_addrs,
            proto,
            size,
        },
        flows,
        rate,
        seconds,
        packets,
        from: from.clone().unwrap_or(Place::new("-", "-")),
        to: to.clone().unwrap_or(Place::new("-", "-")),
        core,
        progress: true,
    };
    if from.is_some() && dst_ip.is_none() {
        bail!("--dst-ip is required with --from/--to");
    }
    println!(
        "loadgen: {} {} bytes, {} flow(s), {}, {} s{}",
        proto.name(),
        size,
        flows,
        rate.map_or("as fast as possible".to_string(), |r| format!(
            "{:.3} Mpps offered",
            r / 1e6
        )),
        seconds,
        core.map_or(String::new(), |c| format!(", core {c}"))
    );
    let mut out = serde_json::json!({
        "proto": proto.name(), "size": size, "flows": flows, "rate_pps": rate,
        "seconds": seconds, "core": core,
    });
    if let Some(f) = &from {
        let o = loadgen::run(&spec)?;
        println!("{}", summary("result", &o));
        if let Some(h) = &o.handshakes {
            println!(
                "           handshakes: {} SYN-ACKs, {} completed ({:.0}/s), {} resets; SYN -> SYN-ACK p50 {:.1} p99 {:.1} us",
                h.syn_acks,
                h.established,
                h.established as f64 / o.report.seconds.max(1e-9),
                h.resets,
                h.latency.p50 as f64 / 1e3,
                h.latency.p99 as f64 / 1e3
            );
        }
        println!(
            "           sink socket drops {}, generator frames unsent {}",
            o.sink_drops(),
            o.unsent
        );
        out["from"] = format!("{}:{}", f.ns.as_deref().unwrap_or(""), f.ifname).into();
        out["result"] = o.json();
    }
    if ceiling {
        let o = loadgen::ceiling(&spec, &prefix)?;
        println!("{}", summary("ceiling", &o));
        println!(
            "           sink socket drops {}, veth drops {}, generator frames unsent {}",
            o.sink_drops(),
            o.link_drops,
            o.unsent
        );
        out["ceiling"] = o.json();
    }
    if let Some(p) = json {
        std::fs::write(&p, serde_json::to_string_pretty(&out)?)
            .with_context(|| format!("writing {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

pub const COMPARE_USAGE: &str =
    "  compare    xdpnet against the kernel path (Flannel VXLAN + kube-proxy iptables) on one lab:
             kernel, xdpnetd --io-only and xdpnetd, each scenario at saturation and at half the
             kernel path's rate (latency), then scale runs; writes compare.json and compare.svg
    --seconds S          per saturation run (default 3)
    --latency-seconds S  per fixed-rate run (default 2)
    --size N --flows N   frames (default 64 bytes, 64 flows)
    --scale A,B,C|none   service counts of the scale runs (default 100,1000,10000)
    --variants LIST      of kernel,io-only,full (default all)
    --scenarios LIST     of pod-pod-same-node,pod-pod-cross-node,pod-clusterip,external-nodeport,
                         pod-clusterip-tcp-handshake
    --probes N           rate-search runs per saturation cell (default 6)
    --xdpnet-arg ARG     extra xdpnetd argument for both xdpnet variants (repeatable),
                         e.g. --xdpnet-arg --busy-poll
    --napi-fifo PRIO     xdpnet's NAPI threads SCHED_FIFO at PRIO (they preempt a
                         busy-polling worker at once, as softirqs would)
    --out DIR            (default target/compare)   --prefix P   lab prefix
  compare --plot RESULT.json OUT.svg   redraw the chart of a saved result";

pub fn compare(args: &[String]) -> Result<()> {
    use xdpnet_bench::compare::{self, Options, Scenario, Variant};
    lab::cleanup_on_signal()?;
    if args.first().map(String::as_str) == Some("--plot") {
        let (Some(json), Some(svg)) = (args.get(1), args.get(2)) else {
            bail!("--plot RESULT.json OUT.svg");
        };
        let text = std::fs::read_to_string(json).with_context(|| format!("reading {json}"))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{json} is not JSON"))?;
        if !v["results"].is_array() {
            bail!("{json} is not a compare result (no \"results\")");
        }
        std::fs::write(svg, compare::svg(&v)).with_context(|| format!("writing {svg}"))?;
        println!("wrote {svg}");
        return Ok(());
    }
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it
            .next()
            .with_context(|| format!("{a} needs a value\n{COMPARE_USAGE}"))?;
        let float = || -> Result<f64> {
            let x: f64 = v
                .parse()
                .with_context(|| format!("{a} {v:?} is not a number"))?;
            if !(x > 0.0 && x <= 600.0) {
                bail!("{a} must be in (0, 600]");
            }
            Ok(x)
        };
        match a.as_str() {
            "--seconds" => o.seconds = float()?,
            "--latency-seconds" => o.latency_seconds = float()?,
            "--size" => o.size = v.parse().with_context(|| format!("--size {v:?}"))?,
            "--flows" => {
                o.flows = v
                    .parse()
                    .ok()
                    .filter(|f| *f > 0)
                    .context("--flows must be 1..65535")?
            }
            "--scale" if v == "none" => o.scale.clear(),
            "--scale" => {
                o.scale = v
                    .split(',')
                    .map(|x| {
                        x.parse::<usize>()
                            .ok()
                            .filter(|n| (2..=60_000).contains(n))
                            .with_context(|| format!("--scale {x:?}: 2..60000 services"))
                    })
                    .collect::<Result<_>>()?
            }
            "--variants" => {
                o.variants = v
                    .split(',')
                    .map(|x| {
                        Variant::ALL
                            .into_iter()
                            .find(|k| k.name() == x)
                            .with_context(|| format!("variant {x:?}: kernel, io-only, full"))
                    })
                    .collect::<Result<_>>()?
            }
            "--scenarios" => {
                o.scenarios = v
                    .split(',')
                    .map(|x| {
                        Scenario::ALL
                            .into_iter()
                            .find(|k| k.name() == x)
                            .with_context(|| format!("scenario {x:?}"))
                    })
                    .collect::<Result<_>>()?
            }
            "--out" => o.out = v.into(),
            "--xdpnet-arg" => o.xdpnet_args.push(v.clone()),
            "--napi-fifo" => {
                o.napi_fifo = Some(
                    v.parse()
                        .ok()
                        .filter(|p| (1..=99).contains(p))
                        .context("--napi-fifo: a SCHED_FIFO priority 1..99")?,
                )
            }
            "--probes" => {
                o.probes = v
                    .parse()
                    .ok()
                    .filter(|p| *p <= 20)
                    .context("--probes must be 0..20")?
            }
            "--prefix" => o.prefix = v.clone(),
            other => bail!("unknown option {other:?}\n{COMPARE_USAGE}"),
        }
    }
    compare::run(&o).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("500k").expect("ok"), 500_000.0);
        assert_eq!(parse_rate("1.5M").expect("ok"), 1_500_000.0);
        assert_eq!(parse_rate("2000").expect("ok"), 2000.0);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-5k").is_err());
        assert!(place("ns:eth0").is_ok());
        assert!(place("eth0").is_err());
        assert!(place(":eth0").is_err());
    }
}
