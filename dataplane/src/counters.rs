//! Per-worker counters: packets in and out, and every drop by reason.
//!
//! One worker writes its counters; anyone may read them (metrics, inspection). Each counter is
//! an `AtomicU64` updated with a relaxed load and store (no read-modify-write: one writer), so
//! the packet path pays a plain increment.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! reasons {
    ($($name:ident => $text:literal,)*) => {
        /// Why a packet was dropped. Every drop has exactly one.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $(#[doc = $text] $name,)*
        }
        impl DropReason {
            /// All reasons, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// A stable snake_case name (metrics label).
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$name => $text,)* }
            }
        }
    };
}

reasons! {
    EthMalformed => "eth_malformed",
    UnsupportedEthertype => "unsupported_ethertype",
    ArpMalformed => "arp_malformed",
    ArpIgnored => "arp_ignored",
    Ipv4Malformed => "ipv4_malformed",
    Ipv4Checksum => "ipv4_checksum",
    L4Malformed => "l4_malformed",
    TtlExceeded => "ttl_exceeded",
    Spoofed => "spoofed",
    UnknownPort => "unknown_port",
    VxlanMalformed => "vxlan_malformed",
    VxlanWrongVni => "vxlan_wrong_vni",
    VxlanUnknownNode => "vxlan_unknown_node",
    VxlanInnerSpoofed => "vxlan_inner_spoofed",
    NotForUs => "not_for_us",
    NoBackend => "no_backend",
    NoRoute => "no_route",
    NatCollision => "nat_collision",
    FragmentToService => "fragment_to_service",
    NoHeadroom => "no_headroom",
    MtuExceeded => "mtu_exceeded",
    PodToOverlay => "pod_to_overlay",
}

/// Number of drop reasons.
pub const N_REASONS: usize = DropReason::ALL.len();

/// Counters of one worker.
#[derive(Debug, Default)]
pub struct Counters {
    /// Packets received.
    pub rx: Counter,
    /// Packets transmitted (including replies the dataplane generated).
    pub tx: Counter,
    /// VXLAN packets sent.
    pub encap: Counter,
    /// VXLAN packets accepted.
    pub decap: Counter,
    /// New NAT flows created.
    pub new_flows: Counter,
    /// Packets translated by conntrack (either direction).
    pub nat: Counter,
    /// ARP replies sent.
    pub arp_replies: Counter,
    /// ICMP echo replies sent for service addresses.
    pub icmp_echo_replies: Counter,
    /// ICMP errors translated for NAT'd flows.
    pub icmp_related: Counter,
    drops: [Counter; N_REASONS],
}

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
