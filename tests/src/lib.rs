//! Helpers of the end-to-end tests: reading captured underlay frames, and the lab scaffolding
//! every test file uses (one lab at a time, nothing left behind).

#![forbid(unsafe_code)]

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use std::net::Ipv4Addr;

/// What one captured underlay frame is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Underlay {
    /// VXLAN: outer addresses, VNI, inner IPv4 source and destination.
    Vxlan {
        /// Outer source.
        outer_src: Ipv4Addr,
        /// Outer destination.
        outer_dst: Ipv4Addr,
        /// UDP destination port.
        port: u16,
        /// VNI.
        vni: u32,
        /// Inner IPv4 source.
        inner_src: Ipv4Addr,
        /// Inner IPv4 destination.
        inner_dst: Ipv4Addr,
    },
    /// Plain IPv4 (not VXLAN on `vxlan_port`).
    Ipv4 {
        /// Source.
        src: Ipv4Addr,
        /// Destination.
        dst: Ipv4Addr,
    },
    /// Anything else (ARP, IPv6, ...).
    Other,
}

/// Classifies an Ethernet frame seen on the underlay.
pub fn classify(frame: &[u8], vxlan_port: u16) -> Underlay {
    let Ok(p) = SlicedPacket::from_ethernet(frame) else {
        return Underlay::Other;
    };
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        return Underlay::Other;
    };
    let (src, dst) = (ip.header().source_addr(), ip.header().destination_addr());
    if let Some(TransportSlice::Udp(u)) = &p.transport {
        if u.destination_port() == vxlan_port {
            let pl = u.payload();
            if pl.len() >= 8 {
                let vni = u32::from_be_bytes([0, pl[4], pl[5], pl[6]]);
                if let Ok(inner) = SlicedPacket::from_ethernet(&pl[8..]) {
                    if let Some(NetSlice::Ipv4(iip)) = &inner.net {
                        return Underlay::Vxlan {
                            outer_src: src,
                            outer_dst: dst,
                            port: vxlan_port,
                            vni,
                            inner_src: iip.header().source_addr(),
                            inner_dst: iip.header().destination_addr(),
                        };
                    }
                }
            }
        }
    }
    Underlay::Ipv4 { src, dst }
}

// ---- lab scaffolding shared by the test files ----

use anyhow::Result;
use std::sync::Mutex;
use std::time::Duration;
use xdpnet_bench::lab::{self, Lab, LabSpec};

/// One lab at a time (they share the cores).
pub static SERIAL: Mutex<()> = Mutex::new(());

/// A per-run lab prefix for test `name`.
pub fn prefix(name: &str) -> String {
    format!("e{}{name}", std::process::id() % 10_000)
}

/// Runs `f` on a fresh 2 x 2 lab with servers in every pod; checks afterwards that nothing of
/// the lab is left, whatever `f` did.
pub fn with_lab(name: &str, f: impl FnOnce(&mut Lab) -> Result<()>) {
    with_lab_spec(name, |_| {}, f)
}

/// [`with_lab`] with changes to the spec.
pub fn with_lab_spec(
    name: &str,
    spec: impl FnOnce(&mut LabSpec),
    f: impl FnOnce(&mut Lab) -> Result<()>,
) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    lab::cleanup_on_signal().expect("signal handler");
    assert!(
        nix::unistd::geteuid().is_root(),
        "the end-to-end tests need root (namespaces, XDP)"
    );
    let p = prefix(name);
    let mut ls = LabSpec::new(&p, 2, 2);
    spec(&mut ls);
    let r = (|| -> Result<()> {
        let mut lab = Lab::up(&ls)?;
        lab.serve_all()?;
        let r = f(&mut lab);
        if r.is_err() {
            for n in 0..lab.nodes.len() {
                eprintln!("--- {} ---\n{}", lab.nodes[n].name, lab.log_tail(n, 40));
            }
        }
        lab.down()?;
        r
    })();
    assert!(
        lab::namespaces(&p).is_empty(),
        "namespaces of {p} left behind"
    );
    assert!(
        !lab::lab_dir(&p).exists(),
        "lab directory of {p} left behind"
    );
    if let Err(e) = r {
        panic!("{name}: {e:#}");
    }
}

/// Node `n`'s last status JSON.
pub fn status(lab: &Lab, n: usize) -> serde_json::Value {
    lab.status(n).unwrap_or_default()
}

/// Waits for the next status write (once a second) so counters are current.
pub fn fresh_status(lab: &Lab, n: usize) -> serde_json::Value {
    std::thread::sleep(Duration::from_millis(1200));
    status(lab, n)
}

/// Every UMEM frame is accounted for: free + fill + TX = total, and no bad descriptors.
pub fn frames_accounted(s: &serde_json::Value) {
    for w in s["workers"].as_array().expect("workers") {
        let f = &w["frames"];
        let total = f["total"].as_u64().expect("total");
        let sum = f["free"].as_u64().unwrap_or(0)
            + f["fill"].as_u64().unwrap_or(0)
            + f["tx"].as_u64().unwrap_or(0);
        assert_eq!(sum, total, "frames not accounted for: {f}");
        assert_eq!(w["bad_desc"], 0, "bad descriptors: {w}");
    }
}

/// Whether `ifname` in `ns` has an XDP program.
pub fn xdp_attached(ns: &str, ifname: &str) -> bool {
    lab::run("ip", &["-n", ns, "link", "show", ifname])
        .map(|o| o.contains("prog/xdp"))
        .unwrap_or(false)
}

/// One call of the real `xdpnet` CNI plugin binary: `command` with the CNI_* variables in
/// `env` (nothing else of the test's environment) and `conf` on stdin. Returns the exit code
/// and stdout parsed as JSON (`Null` when empty).
pub fn cni_call(
    command: &str,
    env: &[(&str, &str)],
    conf: &serde_json::Value,
) -> Result<(i32, serde_json::Value)> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let bin = lab::bin_dir().join("xdpnet");
    let mut c = Command::new(&bin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", "/usr/lib/cni")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("running {}: {e}", bin.display()))?;
    if let Some(mut i) = c.stdin.take() {
        i.write_all(conf.to_string().as_bytes())?;
    }
    let out = c.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{command}: stdout is not JSON ({e}): {text}"))?
    };
    Ok((out.status.code().unwrap_or(-1), v))
}

/// The conflist entry for node `n` of `lab` (talks to that node's daemon).
pub fn cni_conf(lab: &Lab, n: usize, version: &str) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": version, "name": "xdpnet", "type": "xdpnet",
        "socket": lab.cni_socket(n).to_string_lossy(), "mtu": 1450,
    })
}

/// The libcni driver (`tests/cnitool`, Go), built once per test binary with Debian's golang-go
/// against Debian's golang-github-appc-cni-dev, offline.
pub fn cnitool() -> Result<std::path::PathBuf> {
    static BUILT: std::sync::OnceLock<std::result::Result<std::path::PathBuf, String>> =
        std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cnitool");
            let out = lab::bin_dir().join("xdpnet-cnitool");
            let cache = std::env::temp_dir().join("xdpnet-go-cache");
            let o = std::process::Command::new("go")
                .args(["build", "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(&src)
                .env("GO111MODULE", "off")
                .env("GOPATH", "/usr/share/gocode")
                .env("GOPROXY", "off")
                .env("GOFLAGS", "")
                .env("GOCACHE", &cache)
                .output()
                .map_err(|e| format!("running go (make deps installs golang-go): {e}"))?;
            if !o.status.success() {
                return Err(format!(
                    "building the libcni driver: {}",
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
            Ok(out)
        })
        .clone()
        .map_err(anyhow::Error::msg)
}
