//! TCP bulk transfer with iperf3 (Debian's, as every CNI benchmark uses it): server in the
//! sink pod, client in a pod or the external client, both pinned to the generator core, the
//! variant forwarding on the dataplane core; default options, `-P` streams, JSON output.
//! Throughput is what the receiver got; retransmits are the sender's, as a share of the
//! segments sent (bytes over the connection's MSS).

use super::measure::{busy, cpu_times};
use super::{BENCH_NODE_PORT_TCP, BENCH_TCP_IP, Bed, Variant};
use crate::lab::{POD_PORT, run as sh};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Which path a TCP run crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpPath {
    /// pod-1-0 -> pod-1-1.
    SameNode,
    /// pod-1-0 -> pod-2-0.
    CrossNode,
    /// pod-1-0 -> TCP ClusterIP, backend pod-2-0.
    ClusterIp,
    /// external client -> node-1's TCP NodePort, backend pod-2-0.
    NodePort,
}

impl TcpPath {
    /// All, in run order.
    pub const ALL: [TcpPath; 4] = [
        TcpPath::SameNode,
        TcpPath::CrossNode,
        TcpPath::ClusterIp,
        TcpPath::NodePort,
    ];

    /// Name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            TcpPath::SameNode => "tcp-pod-pod-same-node",
            TcpPath::CrossNode => "tcp-pod-pod-cross-node",
            TcpPath::ClusterIp => "tcp-pod-clusterip",
            TcpPath::NodePort => "tcp-external-nodeport",
        }
    }
}

/// One iperf3 run.
#[derive(Debug, Clone)]
pub struct TcpRun {
    /// Variant.
    pub variant: Variant,
    /// Path.
    pub path: TcpPath,
    /// Parallel streams.
    pub streams: u32,
    /// Received, bit/s.
    pub bits_per_second: f64,
    /// The sender's retransmitted segments.
    pub retransmits: u64,
    /// Segments sent (bytes / MSS).
    pub segments: u64,
    /// Busy fraction of the dataplane core.
    pub cpu_dp: f64,
    /// Busy fraction of the generator core (client and server).
    pub cpu_gen: f64,
}

impl TcpRun {
    /// Retransmits per segment sent.
    pub fn retransmit_ratio(&self) -> f64 {
        self.retransmits as f64 / self.segments.max(1) as f64
    }

    /// The run as JSON.
    pub fn json(&self) -> Value {
        json!({
            "variant": self.variant.name(), "path": self.path.name(), "streams": self.streams,
            "gbit_s": self.bits_per_second / 1e9, "retransmits": self.retransmits,
            "segments": self.segments, "retransmit_ratio": self.retransmit_ratio(),
            "cpu_dataplane_core": self.cpu_dp, "cpu_generator_core": self.cpu_gen,
        })
    }
}

/// An iperf3 server that is killed when dropped.
struct Server(Child);

impl Server {
    /// Starts a one-off server in `ns` on `core` and waits until it listens.
    fn start(ns: &str, core: &str, port: &str) -> Result<Self> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "taskset", "-c", core])
            .args(["iperf3", "-s", "-1", "--forceflush", "-p", port])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the iperf3 server")?;
        let out = child.stdout.take().context("iperf3 server stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.contains("listening") {
                    let _ = tx.send(());
                }
            }
        });
        let server = Server(child);
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            let mut server = server;
            let _ = server.0.kill();
            let mut err = String::new();
            if let Some(mut e) = server.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            bail!(
                "the iperf3 server in {ns} did not listen on {port}: {}",
                err.trim()
            );
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fails with how to get iperf3 when it is missing.
pub fn check_iperf3() -> Result<()> {
    sh("iperf3", &["--version"]).map(|_| ()).context(
        "iperf3 is needed for the TCP rows (apt-get install iperf3; scripts/deps.sh installs it)",
    )
}

impl Bed {
    /// One iperf3 run of `seconds` over `path` with `streams` streams under the current
    /// variant.
    pub fn iperf(&self, path: TcpPath, streams: u32, seconds: u32) -> Result<TcpRun> {
        let variant = self.variant.context("no variant running")?;
        let pod = |name: &str| self.lab.pod(name);
        let (src, sink) = (pod("pod-1-0")?, pod("pod-2-0")?);
        let io = variant == Variant::IoOnly;
        // (client namespace, server namespace, address, port)
        let (cns, sns, addr, port): (&str, &str, Ipv4Addr, u16) = match path {
            TcpPath::SameNode => {
                let d = pod("pod-1-1")?;
                (&src.ns, &d.ns, d.ip, POD_PORT)
            }
            TcpPath::CrossNode => (&src.ns, &sink.ns, sink.ip, POD_PORT),
            // I/O-only has no services: the same hops, addressed to the backend.
            TcpPath::ClusterIp | TcpPath::NodePort if io => {
                let c = if path == TcpPath::NodePort {
                    &self.lab.ext_ns
                } else {
                    &src.ns
                };
                (c, &sink.ns, sink.ip, POD_PORT)
            }
            TcpPath::ClusterIp => (&src.ns, &sink.ns, BENCH_TCP_IP, 80),
            TcpPath::NodePort => (
                &self.lab.ext_ns,
                &sink.ns,
                self.lab.nodes[0].ip,
                BENCH_NODE_PORT_TCP,
            ),
        };
        let core = self.opts.gen_core.to_string();
        let port_s = POD_PORT.to_string();
        let server = Server::start(sns, &core, &port_s)?;
        let c0 = cpu_times();
        let out = self.iperf_client(cns, &core, addr, port, streams, seconds)?;
        let c1 = cpu_times();
        drop(server);
        let v: Value = serde_json::from_str(&out).context("iperf3 -J output")?;
        if let Some(e) = v["error"].as_str() {
            bail!("iperf3 {} ({}): {e}", path.name(), variant.name());
        }
        let end = &v["end"];
        let mss = v["start"]["tcp_mss_default"]
            .as_u64()
            .unwrap_or(1448)
            .max(1);
        let sent_bytes = end["sum_sent"]["bytes"].as_u64().unwrap_or(0);
        Ok(TcpRun {
            variant,
            path,
            streams,
            bits_per_second: end["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or(0.0),
            retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
            segments: sent_bytes / mss,
            cpu_dp: busy(&c0, &c1, self.opts.dp_core),
            cpu_gen: busy(&c0, &c1, self.opts.gen_core),
        })
    }

    /// Runs the client until it reports, retrying while the server is not yet listening.
    fn iperf_client(
        &self,
        ns: &str,
        core: &str,
        addr: Ipv4Addr,
        port: u16,
        streams: u32,
        seconds: u32,
    ) -> Result<String> {
        let (addr, port, streams, secs) = (
            addr.to_string(),
            port.to_string(),
            streams.to_string(),
            seconds.to_string(),
        );
        let mut last = String::new();
        for _ in 0..20 {
            let o = Command::new("ip")
                .args(["netns", "exec", ns, "taskset", "-c", core, "iperf3"])
                .args(["-c", &addr, "-p", &port, "-P", &streams, "-t", &secs, "-J"])
                .output()
                .context("running the iperf3 client")?;
            last = String::from_utf8_lossy(&o.stdout).into_owned();
            let refused = last.contains("Connection refused") || last.contains("unable to connect");
            if o.status.success() || !refused {
                return Ok(last);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(last)
    }
}
