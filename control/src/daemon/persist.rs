//! Everything of a node that must outlive one xdpnetd process, in one place: the last cluster
//! state (so a restart while the API server is down forwards with what it knew) and the IPAM
//! allocations of the CNI endpoint. Files are written whole and atomically
//! ([`crate::state::write_atomic`]: write, fsync, rename). The hitless-upgrade work adds the
//! AF_XDP sockets, UMEM and conntrack here.

use crate::ipam::{Ipam, IpamError};
use crate::state::ClusterState;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use xdpnet_dataplane::fib::Ipv4Net;

/// File of the last cluster state, in the state directory.
const STATE_FILE: &str = "cluster-state.yaml";
/// File of the IPAM allocations, in the state directory.
const IPAM_FILE: &str = "ipam.json";
/// Where IPAM keeps its file when no state directory is configured.
const DEFAULT_IPAM_DIR: &str = "/var/lib/xdpnet";
/// The cluster state is saved at most this often (and at exit).
const SAVE_EVERY: Duration = Duration::from_secs(5);

/// The daemon's persistent state.
#[derive(Debug)]
pub(super) struct Persist {
    dir: Option<PathBuf>,
    saved_at: Option<Instant>,
    due: bool,
}

impl Persist {
    /// Persistence in `dir` (None: the cluster state is not kept; IPAM uses its default).
    pub(super) fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            saved_at: None,
            due: false,
        }
    }

    /// The state a previous run saved, if any (a file that does not load is logged and
    /// ignored).
    pub(super) fn load_state(&self, node: &str) -> Option<ClusterState> {
        let path = self.dir.as_ref()?.join(STATE_FILE);
        if !path.exists() {
            return None;
        }
        match ClusterState::load(&path) {
            Ok(st) => Some(st),
            Err(e) => {
                super::log!(node, "ignoring persisted state: {e}");
                None
            }
        }
    }

    /// The cluster state changed: save it at the next chance.
    pub(super) fn mark_due(&mut self) {
        self.due = true;
    }

    /// Saves `st` if it changed since the last save, at most every 5 s unless `force`.
    pub(super) fn save_state(&mut self, st: &ClusterState, force: bool, node: &str) {
        let Some(dir) = &self.dir else {
            return;
        };
        let recent = self.saved_at.is_some_and(|t| t.elapsed() < SAVE_EVERY);
        if !self.due || (!force && recent) {
            return;
        }
        match crate::state::save(st, &dir.join(STATE_FILE)) {
            Ok(()) => {
                self.due = false;
                self.saved_at = Some(Instant::now());
            }
            Err(e) => super::log!(node, "cannot persist the cluster state: {e:#}"),
        }
    }

    /// The IPAM of `cidr`, with the allocations a previous run made.
    pub(super) fn open_ipam(&self, cidr: Ipv4Net) -> Result<Ipam, IpamError> {
        let dir = self.dir.as_deref().unwrap_or(Path::new(DEFAULT_IPAM_DIR));
        Ipam::open(cidr, &dir.join(IPAM_FILE))
    }
}
