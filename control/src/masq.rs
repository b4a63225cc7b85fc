//! Egress masquerade: pod traffic to addresses outside the cluster leaves with the node's
//! address, as Flannel's `ipMasq`, Calico's `natOutgoing` and ip-masq-agent do.
//!
//! Where: in the node's kernel. The dataplane hands such traffic to the host port (it is not
//! for a pod, a node or a service); the kernel forwards it out of the node and an nftables rule
//! masquerades it. Replies come back to the node's address, the kernel's connection tracking
//! translates them (TCP, UDP, ICMP echo and the ICMP errors quoting them) and routes them to
//! the pod through the host port. Nothing is steered from the uplink for it, so the uplink's
//! XDP program stays as small as it is, and established flows live in the kernel's conntrack:
//! they survive a restart of the daemon. The table stays when the daemon exits (its successor
//! replaces it at start; removing it would take the netns' last conntrack user away and, with
//! it, the bindings of established flows); a start with masquerade off removes it, and so does
//! `xdpnetd cleanup`.
//!
//! Owns: the nftables table `ip xdpnet` (one chain, `postrouting`, and one set,
//! `no-masquerade`), nothing else; installing it replaces the whole table in one transaction
//! and removing it deletes only that table. Masqueraded source ports are kept in
//! 32768..60999 (Linux's ephemeral range), clear of NodePorts (30000..32767) and the VXLAN
//! port, which the uplink steers to the dataplane.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use xdpnet_dataplane::fib::Ipv4Net;

/// The nftables table this module owns.
pub const TABLE: &str = "xdpnet";

/// Source ports masqueraded TCP and UDP may get.
pub const PORTS: (u16, u16) = (32_768, 60_999);

/// What to masquerade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqConfig {
    /// The cluster's pod CIDR: sources masqueraded, and never a destination that is.
    pub cluster_cidr: Ipv4Net,
    /// The service CIDR: never masqueraded to.
    pub service_cidr: Ipv4Net,
    /// More destinations not to masquerade to (ip-masq-agent's `nonMasqueradeCIDRs`): a
    /// routed fabric that knows the pod addresses, a peered network.
    pub non_masquerade: Vec<Ipv4Net>,
    /// The kernel's end of the host port (traffic into it is for pods: never masqueraded).
    pub host_if: String,
}

/// Why the rule could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    /// `nft` is not there or could not run.
    #[error(
        "running nft (install nftables, or turn egress masquerade off with masquerade: false / --no-masquerade): {0}"
    )]
    Spawn(#[source] std::io::Error),
    /// `nft` refused the rules.
    #[error("nft refused the {what} of table ip {TABLE}: {stderr}")]
    Refused {
        /// Install or removal.
        what: &'static str,
        /// What nft said.
        stderr: String,
    },
}

impl MasqConfig {
    /// Destinations never masqueraded to, in order: cluster, services, the configured ones.
    pub fn exempt(&self) -> Vec<Ipv4Net> {
        let mut v = vec![self.cluster_cidr, self.service_cidr];
        for c in &self.non_masquerade {
            if !v.contains(c) {
                v.push(*c);
            }
        }
        v
    }

    /// The nft script that replaces table `ip xdpnet` with this configuration (one
    /// transaction: `add` makes the `delete` valid when the table is not there yet).
    pub fn script(&self) -> String {
        let exempt: Vec<String> = self.exempt().iter().map(|c| c.to_string()).collect();
        let mut s = String::new();
        let _ = writeln!(s, "add table ip {TABLE}");
        let _ = writeln!(s, "delete table ip {TABLE}");
        let _ = writeln!(s, "table ip {TABLE} {{");
        let _ = writeln!(s, "  set no-masquerade {{");
        let _ = writeln!(s, "    type ipv4_addr; flags interval; auto-merge;");
        let _ = writeln!(s, "    elements = {{ {} }}", exempt.join(", "));
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "  chain postrouting {{");
        let _ = writeln!(
            s,
            "    type nat hook postrouting priority srcnat; policy accept;"
        );
        let m = format!(
            "ip saddr {} ip daddr != @no-masquerade oifname != \"{}\"",
            self.cluster_cidr, self.host_if
        );
        let _ = writeln!(
            s,
            "    {m} meta l4proto {{ tcp, udp }} counter masquerade to :{}-{}",
            PORTS.0, PORTS.1
        );
        let _ = writeln!(s, "    {m} counter masquerade");
        let _ = writeln!(s, "  }}");
        let _ = writeln!(s, "}}");
        s
    }
}

fn nft(what: &'static str, script: &str) -> Result<(), MasqError> {
    let mut c = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(MasqError::Spawn)?;
    if let Some(mut i) = c.stdin.take() {
        i.write_all(script.as_bytes()).map_err(MasqError::Spawn)?;
    }
    let out = c.wait_with_output().map_err(MasqError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(MasqError::Refused {
            what,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Installs (or replaces) the masquerade rules.
pub fn install(cfg: &MasqConfig) -> Result<(), MasqError> {
    nft("installation", &cfg.script())
}

/// Removes table `ip xdpnet` if it is there.
pub fn remove() -> Result<(), MasqError> {
    nft(
        "removal",
        &format!("add table ip {TABLE}\ndelete table ip {TABLE}\n"),
    )
}

/// True when table `ip xdpnet` exists.
pub fn installed() -> bool {
    Command::new("nft")
        .args(["list", "table", "ip", TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MasqConfig {
        MasqConfig {
            cluster_cidr: "10.244.0.0/16".parse().expect("cidr"),
            service_cidr: "10.96.0.0/12".parse().expect("cidr"),
            non_masquerade: vec![
                "192.168.0.0/16".parse().expect("cidr"),
                "10.244.0.0/16".parse().expect("cidr"),
            ],
            host_if: "xdpnet0".into(),
        }
    }

    #[test]
    fn script_exempts_cluster_services_and_the_configured_cidrs_once() {
        let c = cfg();
        assert_eq!(c.exempt().len(), 3);
        let s = c.script();
        assert!(s.starts_with("add table ip xdpnet\ndelete table ip xdpnet\n"));
        assert!(
            s.contains("elements = { 10.244.0.0/16, 10.96.0.0/12, 192.168.0.0/16 }"),
            "{s}"
        );
        assert!(s.contains(
            "ip saddr 10.244.0.0/16 ip daddr != @no-masquerade oifname != \"xdpnet0\" meta l4proto { tcp, udp } counter masquerade to :32768-60999"
        ));
        assert_eq!(s.matches("masquerade").count(), 5, "{s}");
    }
}
