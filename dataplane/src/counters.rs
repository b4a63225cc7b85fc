//! Every counter of the dataplane, described once.
//!
//! A counter set is declared with [`counter_set!`]: each field with its kind, its key in the
//! status JSON (dots nest), its Prometheus name and its help text. The set's `DESCS` and
//! `for_each` are all a report needs, so Prometheus, the status file and `inspect` are
//! generated from these declarations and none can miss a counter. Drop reasons are one enum
//! ([`DropReason`]) with a name and help each. The sets: [`Counters`] (a worker's pipeline,
//! here), `worker::IoCounters` (a worker's I/O and frame accounting), `steer::SteeringCounters`
//! (the XDP program) and [`ConntrackCounters`].
//!
//! One worker writes its counters; anyone may read them (metrics, inspection). Each counter is
//! an `AtomicU64` updated with a relaxed load and store (no read-modify-write: one writer), so
//! the packet path pays a plain increment.

use std::sync::atomic::{AtomicU64, Ordering};

/// What a counter measures: only grows, or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic (Prometheus `counter`).
    Counter,
    /// A level (Prometheus `gauge`).
    Gauge,
}

impl Kind {
    /// The Prometheus type name.
    pub fn prometheus(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// The description of one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Key in the status JSON; dots nest (`kernel.rx_dropped`).
    pub key: &'static str,
    /// Prometheus metric name.
    pub metric: &'static str,
    /// Help text (Prometheus `# HELP`, documentation).
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
}

/// Declares a set of [`Counter`]s with their descriptions: a struct with one public field per
/// counter, `DESCS` (in field order) and `for_each` (each description with its value).
/// `extra { ... }` adds fields that are not described counters (the drop array).
macro_rules! counter_set {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $field:ident: $kind:ident, $key:literal, $metric:literal, $help:literal; )*
        }
        $( extra { $( $(#[$xmeta:meta])* $xfield:ident: $xty:ty, )* } )?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        $vis struct $name {
            $( #[doc = $help] pub $field: $crate::counters::Counter, )*
            $( $( $(#[$xmeta])* $xfield: $xty, )* )?
        }
        impl $name {
            /// The description of every counter of the set, in field order.
            pub const DESCS: &'static [$crate::counters::Desc] = &[
                $( $crate::counters::Desc {
                    key: $key,
                    metric: $metric,
                    help: $help,
                    kind: $crate::counters::Kind::$kind,
                }, )*
            ];
            /// Calls `f` with each counter's description and current value, in field order.
            pub fn for_each(&self, mut f: impl FnMut(&'static $crate::counters::Desc, u64)) {
                let values = [$( self.$field.get(), )*];
                for (d, v) in Self::DESCS.iter().zip(values) {
                    f(d, v);
                }
            }
        }
    };
}

pub(crate) use counter_set;

macro_rules! reasons {
    ($($name:ident => $text:literal, $help:literal;)*) => {
        /// Why a packet was dropped. Every drop has exactly one.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $(#[doc = $help] $name,)*
        }
        impl DropReason {
            /// All reasons, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// A stable snake_case name (metrics label, status key).
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$name => $text,)* }
            }
            /// What it means.
            pub fn help(self) -> &'static str {
                match self { $(DropReason::$name => $help,)* }
            }
        }
    };
}

reasons! {
    EthMalformed => "eth_malformed", "Frame shorter than an Ethernet header.";
    UnsupportedEthertype => "unsupported_ethertype", "Neither IPv4 nor ARP (IPv6 is not forwarded yet).";
    ArpMalformed => "arp_malformed", "ARP packet too short or not Ethernet/IPv4.";
    ArpIgnored => "arp_ignored", "ARP that needs no answer (a reply, a gratuitous request, a request for someone else's address).";
    Ipv4Malformed => "ipv4_malformed", "IPv4 header truncated or inconsistent.";
    Ipv4Checksum => "ipv4_checksum", "IPv4 header checksum wrong.";
    L4Malformed => "l4_malformed", "TCP, UDP or ICMP header truncated.";
    TtlExceeded => "ttl_exceeded", "TTL would reach zero at this hop.";
    Spoofed => "spoofed", "A pod sent with a source MAC or IP that is not its own.";
    UnknownPort => "unknown_port", "Received on a port the table does not know.";
    VxlanMalformed => "vxlan_malformed", "VXLAN header or inner frame malformed.";
    VxlanWrongVni => "vxlan_wrong_vni", "VXLAN with another VNI.";
    VxlanUnknownNode => "vxlan_unknown_node", "VXLAN from an address that is no node of the cluster.";
    VxlanInnerSpoofed => "vxlan_inner_spoofed", "VXLAN whose inner source is neither the sending node's pods nor its addresses.";
    NotForUs => "not_for_us", "Uplink traffic the dataplane does not own (the XDP program should have passed it).";
    NoBackend => "no_backend", "A service with no ready backend (for this traffic policy).";
    NoRoute => "no_route", "No pod, node or host route for the destination.";
    NatCollision => "nat_collision", "No free conntrack slot or masquerade port for a new flow.";
    FragmentToService => "fragment_to_service", "A non-first IP fragment to a service address (it carries no ports).";
    NoHeadroom => "no_headroom", "No room in front of the frame for the overlay header.";
    MtuExceeded => "mtu_exceeded", "The encapsulated packet would exceed the underlay MTU.";
    PodToOverlay => "pod_to_overlay", "A pod's UDP to a node's VXLAN port (pods never speak the overlay).";
    PolicyIngress => "policy_ingress", "Network policy of the destination pod denies this new flow (ingress).";
    PolicyEgress => "policy_egress", "Network policy of the source pod denies this new flow (egress).";
}

counter_set! {
    /// Counters of one worker's pipeline, and its drops by reason.
    pub struct Counters {
        rx: Counter, "pipeline.rx", "xdpnet_pipeline_rx_packets_total", "Packets the pipeline received.";
        tx: Counter, "pipeline.tx", "xdpnet_pipeline_tx_packets_total", "Packets the pipeline sent (including replies it generated).";
        encap: Counter, "pipeline.encap", "xdpnet_pipeline_encap_packets_total", "Packets sent to other nodes through the overlay.";
        decap: Counter, "pipeline.decap", "xdpnet_pipeline_decap_packets_total", "Overlay packets from other nodes accepted.";
        new_flows: Counter, "pipeline.new_flows", "xdpnet_pipeline_new_flows_total", "New service flows (DNAT, maybe SNAT) recorded in conntrack.";
        policy_flows: Counter, "pipeline.policy_flows", "xdpnet_pipeline_policy_flows_total", "New flows without NAT tracked because network policy applies to one of their pods (their replies then pass).";
        nat: Counter, "pipeline.nat", "xdpnet_pipeline_nat_packets_total", "Packets translated by conntrack (either direction).";
        arp_replies: Counter, "pipeline.arp_replies", "xdpnet_pipeline_arp_replies_total", "ARP replies sent for the gateway.";
        icmp_echo_replies: Counter, "pipeline.icmp_echo_replies", "xdpnet_pipeline_icmp_echo_replies_total", "ICMP echo replies sent for service addresses.";
        icmp_related: Counter, "pipeline.icmp_related", "xdpnet_pipeline_icmp_related_total", "ICMP errors about NAT'd flows translated back.";
    }
    extra {
        drops: [Counter; N_REASONS],
    }
}

counter_set! {
    /// Counters of the connection-tracking table (shared by the workers).
    pub struct ConntrackCounters {
        entries: Gauge, "conntrack_entries", "xdpnet_conntrack_entries", "Connection-tracking entries (two per flow).";
        evictions: Counter, "conntrack_evictions", "xdpnet_conntrack_evictions_total", "Entries evicted to make room for new flows.";
    }
}

/// Number of drop reasons.
pub const N_REASONS: usize = DropReason::ALL.len();

/// Prometheus name of the drop counters (label `reason`: [`DropReason::name`]).
pub const DROPS_METRIC: &str = "xdpnet_worker_drops_total";
/// Help of the drop counters.
pub const DROPS_HELP: &str = "Frames dropped by the pipeline, per reason.";
/// Status key of the drop counters (an object by reason name).
pub const DROPS_KEY: &str = "pipeline.drops";

/// One single-writer counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` (only the owning worker calls this).
    #[inline(always)]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    /// Adds one.
    #[inline(always)]
    pub fn inc(&self) {
        self.add(1)
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Sets the value (a gauge, or a copy of a counter kept elsewhere, e.g. by the kernel).
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed)
    }
}

impl Counters {
    /// Counts a drop.
    #[inline(always)]
    pub fn count_drop(&self, r: DropReason) {
        self.drops[r as usize].inc();
    }
    /// Drops counted for `r`.
    pub fn drops(&self, r: DropReason) -> u64 {
        self.drops[r as usize].get()
    }
    /// All drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(Counter::get).sum()
    }
    /// `(reason, count)` for every reason with a non-zero count.
    pub fn nonzero_drops(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL
            .iter()
            .map(|&r| (r, self.drops(r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}
