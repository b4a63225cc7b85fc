//! xdpnetd: the per-node daemon.
//!
//! The AF_XDP ports and the cluster-state sources are not built yet, so the daemon refuses to
//! start rather than pretend to forward.

#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("xdpnetd {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    anyhow::bail!(
        "xdpnetd cannot run yet: the AF_XDP ports and cluster-state sources are not implemented \
         in this build (see `xdpnet-bench pipeline` for the in-memory dataplane)"
    )
}
