//! The CNI front end (spec 1.1.0): environment and configuration checks, version negotiation,
//! results and errors in the version the runtime asked for, and the request to xdpnetd.
//!
//! Everything a runtime can send is validated here and answered with the spec's error codes;
//! nothing panics on any input. The work itself (IPAM, veth, attaching the port) is xdpnetd's:
//! the binary forwards one request per invocation over a root-only unix socket with a timeout,
//! and a daemon that does not answer is "try again later" (code 11).

#![forbid(unsafe_code)]

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// Versions this plugin speaks (configs and results).
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest version (VERSION answers with it when asked without a config).
pub const LATEST: &str = "1.1.0";
/// Default daemon socket.
pub const DEFAULT_SOCKET: &str = "/run/xdpnet/cni.sock";

/// CNI error codes (spec section "Error").
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin is not available (cannot serve ADDs).
    pub const NOT_AVAILABLE: u32 = 50;
}

/// A CNI error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// Spec error code.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Details.
    pub details: String,
}

impl CniError {
    /// An error.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The JSON the runtime reads, in `version`.
    pub fn to_json(&self, version: &str) -> Value {
        json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

/// The command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// ADD.
    Add,
    /// DEL.
    Del,
    /// CHECK.
    Check,
    /// GC.
    Gc,
    /// STATUS.
    Status,
    /// VERSION.
    Version,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            "VERSION" => Self::Version,
            _ => return None,
        })
    }
    /// Its name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Gc => "GC",
            Self::Status => "STATUS",
            Self::Version => "VERSION",
        }
    }
}

/// The CNI_* environment of one invocation, checked for its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// CNI_COMMAND.
    pub command: Command,
    /// CNI_CONTAINERID.
    pub container_id: Option<String>,
    /// CNI_NETNS.
    pub netns: Option<String>,
    /// CNI_IFNAME.
    pub ifname: Option<String>,
    /// CNI_ARGS, parsed (K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID, ...).
    pub args: BTreeMap<String, String>,
}

const KNOWN_ARGS: [&str; 5] = [
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_UID",
    "K8S_POD_INFRA_CONTAINER_ID",
    "IgnoreUnknown",
];

fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 16
        && s != "."
        && s != ".."
        && !s.contains(['/', ':'])
        && !s.chars().any(char::is_whitespace)
}

impl Env {
    /// Reads and checks the environment through `get` (the process environment in the
    /// binary).
    pub fn from(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let invalid = |m: String| CniError::new(code::INVALID_ENV, "invalid CNI environment", m);
        let cmd = get("CNI_COMMAND").ok_or_else(|| invalid("CNI_COMMAND is not set".into()))?;
        let command = Command::parse(&cmd)
            .ok_or_else(|| invalid(format!("CNI_COMMAND {cmd:?} is not a CNI command")))?;
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let env = Self {
            command,
            container_id: nonempty("CNI_CONTAINERID"),
            netns: nonempty("CNI_NETNS"),
            ifname: nonempty("CNI_IFNAME"),
            args: Self::parse_args(&get("CNI_ARGS").unwrap_or_default()).map_err(invalid)?,
        };
        let need = |present: bool, k: &str| -> Result<(), CniError> {
            if present {
                Ok(())
            } else {
                Err(invalid(format!("{k} is required for {}", command.name())))
            }
        };
        match command {
            Command::Add | Command::Check => {
                need(env.container_id.is_some(), "CNI_CONTAINERID")?;
                need(env.netns.is_some(), "CNI_NETNS")?;
                need(env.ifname.is_some(), "CNI_IFNAME")?;
            }
            Command::Del => {
                need(env.container_id.is_some(), "CNI_CONTAINERID")?;
                need(env.ifname.is_some(), "CNI_IFNAME")?;
            }
            Command::Gc | Command::Status | Command::Version => {}
        }
        if let Some(i) = &env.ifname {
            if !valid_ifname(i) {
                return Err(invalid(format!(
                    "CNI_IFNAME {i:?} is not a valid interface name"
                )));
            }
        }
        if let Some(c) = &env.container_id {
            if !c
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch))
            {
                return Err(invalid(format!(
                    "CNI_CONTAINERID {c:?} has characters outside [A-Za-z0-9_.-]"
                )));
            }
        }
        Ok(env)
    }

    /// `K=V;K=V`; unknown keys are an error unless `IgnoreUnknown` is 1/true.
    pub fn parse_args(s: &str) -> Result<BTreeMap<String, String>, String> {
        let mut out = BTreeMap::new();
        for kv in s.split(';').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("CNI_ARGS: {kv:?} is not KEY=VALUE"))?;
            out.insert(k.to_string(), v.to_string());
        }
        let ignore = matches!(
            out.get("IgnoreUnknown")
                .map(|v| v.to_ascii_lowercase())
                .as_deref(),
            Some("1" | "true")
        );
        if !ignore {
            if let Some(k) = out.keys().find(|k| !KNOWN_ARGS.contains(&k.as_str())) {
                return Err(format!(
                    "CNI_ARGS: unknown argument {k:?} (set IgnoreUnknown=1 to allow)"
                ));
            }
        }
        Ok(out)
    }
}

/// The network configuration on stdin, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// cniVersion.
    pub version: String,
    /// name.
    pub name: String,
    /// The daemon socket (`socket`, default [`DEFAULT_SOCKET`]).
    pub socket: String,
    /// The whole configuration as given.
    pub raw: Value,
}

impl NetConf {
    /// Parses stdin's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                code::DECODE,
                "network configuration is not JSON",
                e.to_string(),
            )
        })?;
        let bad = |m: &str| CniError::new(code::INVALID_CONFIG, "invalid network configuration", m);
        let obj = raw.as_object().ok_or_else(|| bad("not a JSON object"))?;
        let version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("cniVersion (a string) is required"))?
            .to_string();
        if !SUPPORTED.contains(&version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                "incompatible CNI version",
                format!(
                    "cniVersion {version:?}; this plugin supports {}",
                    SUPPORTED.join(", ")
                ),
            ));
        }
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("name (a non-empty string) is required"))?
            .to_string();
        match obj.get("type").and_then(Value::as_str) {
            Some("xdpnet") => {}
            Some(t) => return Err(bad(&format!("type is {t:?}, this plugin is \"xdpnet\""))),
            None => return Err(bad("type is required")),
        }
        let socket = match obj.get("socket") {
            None => DEFAULT_SOCKET.to_string(),
            Some(Value::String(s)) if s.starts_with('/') => s.clone(),
            Some(_) => return Err(bad("socket must be an absolute path")),
        };
        if let Some(m) = obj.get("mtu") {
            match m.as_u64() {
                Some(576..=9000) => {}
                _ => return Err(bad("mtu must be a number between 576 and 9000")),
            }
        }
        Ok(Self {
            version,
            name,
            socket,
            raw,
        })
    }
}

/// A result as xdpnetd returns it (version-neutral).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Outcome {
    /// The pod interface's name and MAC, and the sandbox path.
    pub interface: String,
    /// MAC of the pod interface.
    pub mac: String,
    /// Netns path.
    pub sandbox: String,
    /// Address with prefix, e.g. "10.244.1.10/24".
    pub address: String,
    /// Gateway.
    pub gateway: String,
    /// Pod MTU.
    pub mtu: u32,
    /// The veth's host end (listed first, without a sandbox, for chained plugins such as
    /// `bandwidth` that work on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_interface: Option<String>,
    /// MAC of the host end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_mac: Option<String>,
}

/// The result JSON in `version` (0.3.x/0.4.0 carry `"version": "4"` on IPs; 1.1.0 adds `mtu`).
/// With a host interface: `interfaces` = [host end, pod end] and the IP is on interface 1.
pub fn result_json(o: &Outcome, version: &str) -> Value {
    let mut iface = json!({"name": o.interface, "mac": o.mac, "sandbox": o.sandbox});
    let mut host = o
        .host_interface
        .as_ref()
        .map(|h| json!({"name": h, "mac": o.host_mac.clone().unwrap_or_default()}));
    if version == "1.1.0" {
        iface["mtu"] = json!(o.mtu);
        if let Some(h) = host.as_mut() {
            h["mtu"] = json!(o.mtu);
        }
    }
    let idx = usize::from(host.is_some());
    let interfaces: Vec<Value> = host.into_iter().chain([iface]).collect();
    let mut ip = json!({"address": o.address, "gateway": o.gateway, "interface": idx});
    if version.starts_with("0.") {
        ip["version"] = json!("4");
    }
    json!({
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": o.gateway}],
        "dns": {},
    })
}

/// The VERSION answer.
pub fn version_json(asked: Option<&str>) -> Value {
    let v = asked.filter(|v| SUPPORTED.contains(v)).unwrap_or(LATEST);
    json!({"cniVersion": v, "supportedVersions": SUPPORTED})
}

/// Sends one request to xdpnetd and reads its answer (`{"result": ...}` or `{"error":
/// {code, msg, details}}`), within `timeout`. A daemon that is not there or does not answer is
/// code 11 (try again later).
pub fn ask_daemon(socket: &Path, request: &Value, timeout: Duration) -> Result<Value, CniError> {
    let later = |m: String| CniError::new(code::TRY_AGAIN_LATER, "xdpnetd is not answering", m);
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| later(format!("{}: {e}", socket.display())))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| later(e.to_string()))?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| later(e.to_string()))?;
    // The pod's network namespace travels as a descriptor (SCM_RIGHTS) with the first bytes:
    // the daemon may not see the runtime's mounts (its own mount namespace, a container), and
    // the namespace cannot be swapped under the request. Without one (DEL after the namespace
    // is gone) the daemon works from the path.
    let body = request.to_string();
    let ns = request["netns"]
        .as_str()
        .and_then(|p| std::fs::File::open(p).ok());
    let sent = match &ns {
        Some(f) => {
            use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
            use std::os::fd::AsRawFd;
            let fds = [f.as_raw_fd()];
            sendmsg::<()>(
                s.as_raw_fd(),
                &[std::io::IoSlice::new(body.as_bytes())],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .map_err(|e| later(format!("sending: {e}")))?
        }
        None => 0,
    };
    s.write_all(&body.as_bytes()[sent..])
        .and_then(|()| s.shutdown(std::net::Shutdown::Write))
        .map_err(|e| later(format!("sending: {e}")))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| later(format!("reading: {e}")))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| CniError::new(code::IO, "xdpnetd answered garbage", e.to_string()))?;
    if let Some(e) = v.get("error") {
        return Err(CniError::new(
            e["code"].as_u64().map_or(code::IO, |c| c as u32),
            e["msg"].as_str().unwrap_or("xdpnetd failed"),
            e["details"].as_str().unwrap_or(""),
        ));
    }
    v.get("result")
        .cloned()
        .ok_or_else(|| CniError::new(code::IO, "xdpnetd answered without a result", text))
}

/// One invocation: environment + stdin in, (stdout JSON or nothing, exit code) out.
pub fn run(
    get: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    timeout: Duration,
) -> (Option<Value>, i32) {
    let env = match Env::from(&get) {
        Ok(e) => e,
        Err(e) => {
            let v = NetConf::parse(stdin).map_or(LATEST.to_string(), |c| c.version);
            return (Some(e.to_json(&v)), 1);
        }
    };
    if env.command == Command::Version {
        let asked: Option<String> = serde_json::from_slice::<Value>(stdin).ok().and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        return (Some(version_json(asked.as_deref())), 0);
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return (Some(e.to_json(LATEST)), 1),
    };
    let request = json!({
        "command": env.command.name(),
        "containerId": env.container_id,
        "netns": env.netns,
        "ifname": env.ifname,
        "args": env.args,
        "config": conf.raw,
    });
    match ask_daemon(Path::new(&conf.socket), &request, timeout) {
        Ok(r) => match env.command {
            Command::Add => match serde_json::from_value::<Outcome>(r) {
                Ok(o) => (Some(result_json(&o, &conf.version)), 0),
                Err(e) => (
                    Some(
                        CniError::new(
                            code::IO,
                            "xdpnetd answered an unusable result",
                            e.to_string(),
                        )
                        .to_json(&conf.version),
                    ),
                    1,
                ),
            },
            // DEL, CHECK, GC, STATUS succeed with no output.
            _ => (None, 0),
        },
        Err(mut e) => {
            if env.command == Command::Status && e.code == code::TRY_AGAIN_LATER {
                e.code = code::NOT_AVAILABLE;
            }
            (Some(e.to_json(&conf.version)), 1)
        }
    }
}
