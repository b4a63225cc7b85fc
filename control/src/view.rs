//! What the control loop publishes for other threads to read, and nothing else: the metrics
//! text and inspection JSON it renders every second, its heartbeat, readiness, and the pod
//! addresses IPAM must not hand out. The loop is the one writer; the HTTP and inspect
//! endpoints and the CNI endpoint only read (they never call into the loop through this, and
//! the loop never calls into them).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64};

/// The control loop's published view.
#[derive(Debug, Default)]
pub struct LoopView {
    /// Prometheus text.
    pub metrics: Mutex<String>,
    /// Inspection JSON.
    pub inspect: Mutex<String>,
    /// Seconds since the epoch of the control loop's last turn (liveness).
    pub heartbeat: AtomicU64,
    /// The dataplane forwards with a table built from cluster state (readiness).
    pub ready: AtomicBool,
    /// Addresses of pods wired by other means (annotations): IPAM skips them.
    pub reserved: Mutex<BTreeSet<Ipv4Addr>>,
}
