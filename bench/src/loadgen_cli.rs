//! `xdpnet-bench loadgen`: command line of the AF_XDP generator and sink.

use anyhow::{Context, Result, bail};
use xdpnet_bench::compare::{self, Options, Scenario, TcpPath, Variant};
use xdpnet_bench::lab;
use xdpnet_bench::loadgen::frame::{Proto, TrafficSpec};
use xdpnet_bench::loadgen::{self, Outcome, Place, RunSpec, parse_mac};

/// `loadgen` options. Without --from/--to only the ceiling runs.
#[derive(Debug, clap::Args)]
pub struct LoadgenArgs {
    /// The generator's interface, NAMESPACE:INTERFACE (e.g. a pod's eth0).
    #[arg(long, value_parser = place, requires = "to")]
    from: Option<Place>,
    /// The sink's interface, NAMESPACE:INTERFACE (every frame it gets is taken by an XDP
    /// program).
    #[arg(long, value_parser = place, requires = "from")]
    to: Option<Place>,
    /// Destination address (pod, ClusterIP, node address for a NodePort); required with
    /// --from/--to.
    #[arg(long)]
    dst_ip: Option<std::net::Ipv4Addr>,
    /// Destination port.
    #[arg(long, default_value_t = lab::POD_PORT)]
    dst_port: u16,
    /// Next hop MAC.
    #[arg(long, default_value = lab::GATEWAY_MAC, value_parser = mac)]
    dst_mac: [u8; 6],
    /// Source address (default: the --from interface's).
    #[arg(long)]
    src_ip: Option<std::net::Ipv4Addr>,
    /// Source port of flow 0; flow f uses P+f.
    #[arg(long, default_value_t = 10_000)]
    src_port: u16,
    /// Flow f sends from src-ip + f mod N (for clients outside the cluster: pods sending from
    /// other addresses are dropped as spoofed).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    src_addrs: u16,
    /// udp, tcp-syn (SYNs only: new connections) or tcp-handshake (the sink answers SYN-ACK,
    /// the generator ACK then RST).
    #[arg(long, default_value = "udp", value_parser = proto)]
    proto: Proto,
    /// Frame bytes without FCS, 58..1514 (udp) / 82..1514 (tcp).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Flows, 1..65535.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    flows: u16,
    /// Offered packets/s (500k, 1.5M, ...); default: as fast as possible.
    #[arg(long, value_parser = rate)]
    rate: Option<f64>,
    /// Generating time, (0, 3600].
    #[arg(long, default_value_t = 5.0, value_parser = secs3600)]
    seconds: f64,
    /// Stop after N packets.
    #[arg(long)]
    packets: Option<u64>,
    /// Pin the loop to this core.
    #[arg(long)]
    core: Option<usize>,
    /// Write the result (and the ceiling) as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// Skip the ceiling run (generator straight into the sink over a veth pair).
    #[arg(long)]
    no_ceiling: bool,
    /// Namespaces of the ceiling run (default xlg<pid>).
    #[arg(long)]
    prefix: Option<String>,
}

fn mac(s: &str) -> Result<[u8; 6], String> {
    parse_mac(s).map_err(|e| format!("{e:#}"))
}

fn proto(s: &str) -> Result<Proto, String> {
    match s {
        "udp" => Ok(Proto::Udp),
        "tcp-syn" => Ok(Proto::TcpSyn),
        "tcp-handshake" => Ok(Proto::TcpHandshake),
        o => Err(format!("{o:?}: udp, tcp-syn or tcp-handshake")),
    }
}

fn rate(s: &str) -> Result<f64, String> {
    parse_rate(s).map_err(|e| format!("{e:#}"))
}

/// Seconds in (0, `max`].
fn secs_upto(s: &str, max: f64) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= max => Ok(v),
        Ok(_) => Err(format!("must be in (0, {max}]")),
        Err(_) => Err(format!("{s:?} is not a number")),
    }
}

fn secs3600(s: &str) -> Result<f64, String> {
    secs_upto(s, 3600.0)
}

fn secs600(s: &str) -> Result<f64, String> {
    secs_upto(s, 600.0)
}

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

fn place(s: &str) -> Result<Place, String> {
    match s.split_once(':') {
        Some((ns, ifname)) if !ns.is_empty() && !ifname.is_empty() => Ok(Place::new(ns, ifname)),
        _ => Err(format!("{s:?}: want NAMESPACE:INTERFACE")),
    }
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

pub fn loadgen(a: LoadgenArgs) -> Result<()> {
    lab::cleanup_on_signal()?;
    let LoadgenArgs {
        from,
        to,
        dst_ip,
        dst_port,
        dst_mac,
        src_ip,
        src_port,
        src_addrs,
        proto,
        size,
        flows,
        rate,
        seconds,
        packets,
        core,
        json,
        no_ceiling,
        prefix,
    } = a;
    let ceiling = !no_ceiling;
    let prefix = prefix.unwrap_or_else(|| format!("xlg{}", std::process::id()));
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

/// `compare` options.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Seconds per saturation run.
    #[arg(long, value_parser = secs600)]
    seconds: Option<f64>,
    /// Seconds per fixed-rate run.
    #[arg(long, value_parser = secs600)]
    latency_seconds: Option<f64>,
    /// Frame bytes.
    #[arg(long)]
    size: Option<usize>,
    /// Flows.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    flows: Option<u16>,
    /// Service counts of the scale runs, comma-separated (2..60000 each), or `none`.
    #[arg(long, value_name = "A,B,C|none")]
    scale: Option<String>,
    /// Variants, comma-separated: kernel, io-only, full, tap.
    #[arg(long, value_delimiter = ',', value_parser = variant)]
    variants: Option<Vec<Variant>>,
    /// Scenarios, comma-separated: pod-pod-same-node, pod-pod-cross-node, pod-clusterip,
    /// external-nodeport, pod-clusterip-tcp-handshake.
    #[arg(long, value_delimiter = ',', value_parser = scenario)]
    scenarios: Option<Vec<Scenario>>,
    /// Rate-search runs per saturation cell (0..20).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=20))]
    probes: Option<u8>,
    /// Extra xdpnetd argument for both xdpnet variants (repeatable), e.g.
    /// --xdpnet-arg=--busy-poll.
    #[arg(long, allow_hyphen_values = true)]
    xdpnet_arg: Vec<String>,
    /// xdpnet's NAPI threads SCHED_FIFO at this priority (1..99: they preempt a busy-polling
    /// worker at once, as softirqs would).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=99))]
    napi_fifo: Option<u8>,
    /// TCP rows (iperf3), comma-separated: tcp-pod-pod-same-node, tcp-pod-pod-cross-node,
    /// tcp-pod-clusterip, tcp-external-nodeport; or `none`.
    #[arg(long, value_delimiter = ',', value_parser = tcp_path)]
    tcp: Option<Vec<Option<TcpPath>>>,
    /// Parallel streams of each TCP row, comma-separated (1..128).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=128))]
    tcp_streams: Option<Vec<u32>>,
    /// Seconds per TCP run (1..600).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=600))]
    tcp_seconds: Option<u32>,
    /// Overload sweep: offered at these multiples of each cell's most delivered rate,
    /// comma-separated (1.1..1000), or `none` [default: 2,5,10].
    #[arg(long, value_name = "A,B,C|none")]
    overload: Option<String>,
    /// Latency curve: fixed-rate runs at these percentages of the kernel path's most
    /// delivered rate, comma-separated (1..100) [default: 10,50,90]; 50 is always run.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u8).range(1..=100))]
    latency_points: Option<Vec<u8>>,
    /// Table churn: endpoint changes a second (1..100000) pushed through the lab's API server
    /// double during a cross-node run of the full variant at its most delivered rate, against
    /// the same run without; the daemons then watch the double for every run [default: none].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    churn: Option<u32>,
    /// The lab's underlay MTU for every run (pods and host ports 50 less, on both paths) [default: 1500].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1280..=9216))]
    mtu: Option<u16>,
    /// Output directory (default target/compare).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Lab prefix.
    #[arg(long)]
    prefix: Option<String>,
    /// Redraw the chart of a saved result instead of measuring: RESULT.json OUT.svg.
    #[arg(long, num_args = 2, value_names = ["RESULT.json", "OUT.svg"])]
    plot: Option<Vec<std::path::PathBuf>>,
}

fn variant(s: &str) -> Result<Variant, String> {
    Variant::ALL
        .into_iter()
        .find(|k| k.name() == s)
        .ok_or_else(|| format!("variant {s:?}: kernel, io-only, full, tap"))
}

fn tcp_path(s: &str) -> Result<Option<TcpPath>, String> {
    if s == "none" {
        return Ok(None);
    }
    TcpPath::ALL
        .into_iter()
        .find(|k| k.name() == s)
        .map(Some)
        .ok_or_else(|| format!("TCP row {s:?}"))
}

fn scenario(s: &str) -> Result<Scenario, String> {
    Scenario::ALL
        .into_iter()
        .find(|k| k.name() == s)
        .ok_or_else(|| format!("scenario {s:?}"))
}

/// A comma-separated list of values `ok` accepts, or `none` (empty); `None` when not given.
fn list_or_none<T: std::str::FromStr>(
    v: Option<&str>,
    flag: &str,
    what: &str,
    ok: impl Fn(&T) -> bool,
) -> Result<Option<Vec<T>>> {
    match v {
        None => Ok(None),
        Some("none") => Ok(Some(Vec::new())),
        Some(v) => v
            .split(',')
            .map(|x| {
                x.parse::<T>()
                    .ok()
                    .filter(&ok)
                    .with_context(|| format!("{flag} {x:?}: {what}"))
            })
            .collect::<Result<_>>()
            .map(Some),
    }
}

pub fn compare(a: CompareArgs) -> Result<()> {
    lab::cleanup_on_signal()?;
    if let Some(p) = &a.plot {
        let (json, svg) = (&p[0], &p[1]);
        let text =
            std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", json.display()))?;
        if !v["results"].is_array() {
            bail!(
                "{} is not a compare result (no \"results\")",
                json.display()
            );
        }
        std::fs::write(svg, compare::svg(&v))
            .with_context(|| format!("writing {}", svg.display()))?;
        println!("wrote {}", svg.display());
        return Ok(());
    }
    let mut o = Options::default();
    if let Some(v) = a.seconds {
        o.seconds = v;
    }
    if let Some(v) = a.latency_seconds {
        o.latency_seconds = v;
    }
    if let Some(v) = a.size {
        o.size = v;
    }
    if let Some(v) = a.flows {
        o.flows = v;
    }
    if let Some(v) = list_or_none(a.scale.as_deref(), "--scale", "2..60000 services", |n| {
        (2..=60_000).contains(n)
    })? {
        o.scale = v;
    }
    if let Some(v) = list_or_none(
        a.overload.as_deref(),
        "--overload",
        "a multiple, 1.1..1000",
        |k| (1.1..=1000.0).contains(k),
    )? {
        o.overload = v;
    }
    if let Some(v) = a.churn {
        o.churn = v;
    }
    if let Some(v) = a.mtu {
        o.mtu = v;
    }
    if let Some(v) = a.latency_points {
        o.latency_points = v.into_iter().map(|p| f64::from(p) / 100.0).collect();
    }
    if let Some(v) = a.variants {
        o.variants = v;
    }
    if let Some(v) = a.scenarios {
        o.scenarios = v;
    }
    if let Some(v) = a.probes {
        o.probes = v.into();
    }
    o.xdpnet_args.extend(a.xdpnet_arg);
    if let Some(v) = a.napi_fifo {
        o.napi_fifo = Some(v);
    }
    if let Some(v) = a.tcp {
        o.tcp_paths = v.into_iter().flatten().collect();
    }
    if let Some(v) = a.tcp_streams {
        o.tcp_streams = v;
    }
    if let Some(v) = a.tcp_seconds {
        o.tcp_seconds = v;
    }
    if let Some(v) = a.out {
        o.out = v;
    }
    if let Some(v) = a.prefix {
        o.prefix = v;
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
