//! A request as the plugin sends it: parsed and checked once, with the CNI error helpers.

use super::NO_ADDRESS;
use crate::ipam::IpamError;
use crate::podnet::is_namespace;
use serde_json::Value;
use xdpnet_cni::{CniError, code};

#[derive(Debug)]
pub(super) struct Req {
    pub(super) command: String,
    pub(super) container_id: String,
    pub(super) netns: Option<String>,
    pub(super) ifname: String,
    pub(super) pod: Option<String>,
    pub(super) config: Value,
    /// The pod's namespace as the plugin passed it (SCM_RIGHTS).
    pub(super) netns_fd: Option<std::fs::File>,
}

pub(super) fn err(code: u32, msg: &str, details: impl std::fmt::Display) -> CniError {
    CniError::new(code, msg, details.to_string())
}

pub(super) fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> CniError + '_ {
    move |e| err(code::IO, what, e)
}

pub(super) fn ipam_err(e: IpamError) -> CniError {
    match e {
        IpamError::Exhausted(_) => err(NO_ADDRESS, "no pod address left on this node", e),
        e => err(code::IO, "IPAM", e),
    }
}

impl Req {
    pub(super) fn parse(v: &Value) -> Result<Self, CniError> {
        let bad = |m: &str| err(code::INVALID_ENV, "invalid request", m);
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let args = v.get("args");
        let arg = |k: &str| args.and_then(|a| a.get(k)).and_then(Value::as_str);
        let pod = match (arg("K8S_POD_NAMESPACE"), arg("K8S_POD_NAME")) {
            (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
            _ => None,
        };
        let command = s("command").ok_or_else(|| bad("command is missing"))?;
        let needs_container = matches!(command.as_str(), "ADD" | "DEL" | "CHECK");
        let container_id = s("containerId").unwrap_or_default();
        let ifname = s("ifname").unwrap_or_default();
        if needs_container && (container_id.is_empty() || ifname.is_empty()) {
            return Err(bad("containerId and ifname are required"));
        }
        Ok(Self {
            command,
            container_id,
            netns: s("netns").filter(|n| !n.is_empty()),
            ifname,
            pod,
            config: v.get("config").cloned().unwrap_or(Value::Null),
            netns_fd: None,
        })
    }

    /// The pod's network namespace: the descriptor the plugin passed, else the path opened
    /// here; either must be a namespace.
    pub(super) fn netns_file(&self, path: &str) -> Result<std::fs::File, CniError> {
        let f = match &self.netns_fd {
            Some(f) => f
                .try_clone()
                .map_err(io_err("the passed netns descriptor"))?,
            None => std::fs::File::open(path).map_err(|e| {
                err(
                    code::UNKNOWN_CONTAINER,
                    "cannot open the container's network namespace",
                    format!("{path}: {e}"),
                )
            })?,
        };
        if !is_namespace(&f) {
            return Err(err(
                code::INVALID_ENV,
                "CNI_NETNS is not a network namespace",
                format!("{path} is a plain file here (a mount not visible to xdpnetd?)"),
            ));
        }
        Ok(f)
    }

    pub(super) fn key(&self) -> String {
        self.pod
            .clone()
            .unwrap_or_else(|| self.container_id.clone())
    }
}
