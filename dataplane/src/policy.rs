//! Network policy as the pipeline judges it.
//!
//! The control plane compiles NetworkPolicies and ClusterNetworkPolicies into one
//! [`PolicyTable`] per published table: for each local pod that any policy applies to, and for
//! each direction, the rules in force in their three tiers — ClusterNetworkPolicy `Admin`
//! (ordered: the first rule that matches decides, `Pass` hands over to the next tier),
//! NetworkPolicy (an isolated pod is allowed exactly what some rule allows; a pod no policy
//! isolates in that direction goes on to the last tier), ClusterNetworkPolicy `Baseline`
//! (ordered), and allow when nothing decided. Peers are address sets (pods, namespaces,
//! ipBlocks, networks and nodes resolved to addresses), ports are ranges per protocol with
//! named ports already resolved (on each destination pod), so nothing is kept per pod pair.
//!
//! The pipeline judges once per new flow, after DNAT: egress at the source pod's node against
//! the destination (the backend), ingress at the destination pod's node against the source as
//! the pod sees it. The verdict lives with the flow: an allowed flow gets a conntrack entry
//! whose replies pass, a denied one gets none (and is judged again on its next packet).
//! Established flows pay nothing; a policy change applies to new flows and keeps established
//! ones (as Calico and Antrea do).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A set of IPv4 addresses: sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrSet {
    ranges: Box<[(u32, u32)]>,
}

impl AddrSet {
    /// The set of the inclusive ranges `v` (any order, overlaps allowed).
    pub fn from_ranges(mut v: Vec<(u32, u32)>) -> Self {
        v.retain(|(lo, hi)| lo <= hi);
        v.sort_unstable();
        let mut out: Vec<(u32, u32)> = Vec::with_capacity(v.len());
        for (lo, hi) in v {
            match out.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        Self {
            ranges: out.into_boxed_slice(),
        }
    }

    /// Every address.
    pub fn all() -> Self {
        Self::from_ranges(vec![(0, u32::MAX)])
    }

    /// The addresses of `prefix/len` less those of each `except` prefix.
    pub fn cidr_except(prefix: u32, len: u8, except: &[(u32, u8)]) -> Self {
        let range = |p: u32, l: u8| -> (u32, u32) {
            let l = l.min(32);
            let mask = if l == 0 { 0 } else { u32::MAX << (32 - l) };
            (p & mask, (p & mask) | !mask)
        };
        let (lo, hi) = range(prefix, len);
        let mut cuts: Vec<(u32, u32)> = except.iter().map(|&(p, l)| range(p, l)).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut at = lo as u64;
        for (clo, chi) in cuts {
            if (chi as u64) < at || clo > hi {
                continue;
            }
            if (clo as u64) > at {
                out.push((at as u32, clo - 1));
            }
            at = at.max(chi as u64 + 1);
        }
        if at <= hi as u64 {
            out.push((at as u32, hi));
        }
        Self::from_ranges(out)
    }

    /// True when `ip` is in the set.
    #[inline]
    pub fn contains(&self, ip: u32) -> bool {
        let i = self.ranges.partition_point(|&(lo, _)| lo <= ip);
        i > 0 && self.ranges[i - 1].1 >= ip
    }

    /// True when the set holds no address.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges.
    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.ranges
    }
}

/// Ports of one protocol, inclusive (`lo..=hi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    /// IP protocol number (TCP, UDP, SCTP).
    pub proto: u8,
    /// First port.
    pub lo: u16,
    /// Last port.
    pub hi: u16,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Allow the flow (NetworkPolicy rules; ClusterNetworkPolicy `Accept`).
    Allow,
    /// Deny it (ClusterNetworkPolicy `Deny`).
    Deny,
    /// Hand it to the next tier (ClusterNetworkPolicy `Pass`, Admin tier only).
    Pass,
}

/// Peers and ports that go together: the flow matches when its peer address is in `peers`
/// and its protocol and destination port are in one of `ports` (no ports: any protocol, any
/// port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// Peer addresses.
    pub peers: Arc<AddrSet>,
    /// Ports; empty = all.
    pub ports: Arc<[PortRange]>,
}

impl Clause {
    /// True when a flow with peer `peer`, protocol `proto` and destination port `port`
    /// matches (`port` is 0 for protocols without ports: only a rule without ports matches).
    #[inline]
    pub fn matches(&self, peer: u32, proto: u8, port: u16, has_ports: bool) -> bool {
        self.peers.contains(peer)
            && (self.ports.is_empty()
                || (has_ports
                    && self
                        .ports
                        .iter()
                        .any(|r| r.proto == proto && r.lo <= port && port <= r.hi)))
    }
}

/// One rule: it matches when any of its clauses does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The clauses.
    pub clauses: Box<[Clause]>,
    /// What it does.
    pub action: Action,
    /// The policy it comes from (index into [`PolicyTable::origins`]).
    pub origin: u32,
    /// Its position in that policy's rules of this direction (for `explain`).
    pub index: u16,
}

impl Rule {
    /// True when the flow matches.
    #[inline]
    pub fn matches(&self, peer: u32, proto: u8, port: u16, has_ports: bool) -> bool {
        self.clauses
            .iter()
            .any(|c| c.matches(peer, proto, port, has_ports))
    }
}

/// The tiers of one direction of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirPolicy {
    /// ClusterNetworkPolicy Admin tier, in order (priority, then rule order).
    pub admin: Box<[Rule]>,
    /// Some NetworkPolicy selects the pod for this direction (its allow rules are `allow`).
    pub isolated: bool,
    /// NetworkPolicy allow rules (their union).
    pub allow: Box<[Rule]>,
    /// ClusterNetworkPolicy Baseline tier, in order.
    pub baseline: Box<[Rule]>,
}

/// The tier that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// ClusterNetworkPolicy, Admin.
    Admin,
    /// NetworkPolicy.
    NetworkPolicy,
    /// ClusterNetworkPolicy, Baseline.
    Baseline,
}

/// A direction's verdict and what decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// A rule decided: its tier, policy and position, and its action (never `Pass`).
    Rule {
        /// The tier.
        tier: Tier,
        /// [`Rule::origin`].
        origin: u32,
        /// [`Rule::index`].
        index: u16,
        /// Allowed.
        allow: bool,
    },
    /// NetworkPolicies isolate the pod in this direction and none allows the flow.
    Isolated,
    /// No rule applies: allowed.
    Default,
}

impl Judgement {
    /// The flow may pass in this direction.
    pub fn allows(self) -> bool {
        match self {
            Judgement::Rule { allow, .. } => allow,
            Judgement::Isolated => false,
            Judgement::Default => true,
        }
    }

    /// The policy to count it against, if a rule decided (or the isolating policies: none).
    pub fn origin(self) -> Option<u32> {
        match self {
            Judgement::Rule { origin, .. } => Some(origin),
            _ => None,
        }
    }
}

impl DirPolicy {
    /// True when nothing applies in this direction (no tier has a rule, not isolated).
    pub fn is_empty(&self) -> bool {
        !self.isolated && self.admin.is_empty() && self.allow.is_empty() && self.baseline.is_empty()
    }

    /// Judges a flow whose peer is `peer` (its source for ingress, its destination for
    /// egress) to destination port `port` over `proto` (`has_ports`: TCP, UDP or SCTP).
    pub fn judge(&self, peer: u32, proto: u8, port: u16, has_ports: bool) -> Judgement {
        let first = |rules: &[Rule], tier: Tier| -> Option<Judgement> {
            let r = rules
                .iter()
                .find(|r| r.matches(peer, proto, port, has_ports))?;
            Some(match r.action {
                Action::Pass => return None,
                a => Judgement::Rule {
                    tier,
                    origin: r.origin,
                    index: r.index,
                    allow: a == Action::Allow,
                },
            })
        };
        // Admin: the first match decides; Pass (or no match) goes on.
        if let Some(j) = first(&self.admin, Tier::Admin) {
            return j;
        }
        if self.isolated {
            return match self
                .allow
                .iter()
                .find(|r| r.matches(peer, proto, port, has_ports))
            {
                Some(r) => Judgement::Rule {
                    tier: Tier::NetworkPolicy,
                    origin: r.origin,
                    index: r.index,
                    allow: true,
                },
                None => Judgement::Isolated,
            };
        }
        first(&self.baseline, Tier::Baseline).unwrap_or(Judgement::Default)
    }
}

/// Both directions of one local pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodPolicy {
    /// Traffic to the pod.
    pub ingress: DirPolicy,
    /// Traffic from the pod.
    pub egress: DirPolicy,
}

impl PodPolicy {
    /// True when no policy applies to the pod in either direction (its flows need no
    /// tracking for policy's sake).
    pub fn is_empty(&self) -> bool {
        self.ingress.is_empty() && self.egress.is_empty()
    }
}

/// A policy's name and its counters of new flows judged by one of its rules. The control
/// plane keeps one per policy across tables, so the counts go on through republishing.
#[derive(Debug, Default)]
pub struct Origin {
    /// `NetworkPolicy namespace/name` or `ClusterNetworkPolicy name`.
    pub name: String,
    allowed: AtomicU64,
    denied: AtomicU64,
}

impl Origin {
    /// A policy named `name`, counters at zero.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }
    /// Counts a new flow one of its rules allowed (`true`) or denied.
    #[inline]
    pub fn count(&self, allowed: bool) {
        let c = if allowed { &self.allowed } else { &self.denied };
        c.fetch_add(1, Ordering::Relaxed);
    }
    /// New flows its rules allowed.
    pub fn allowed(&self) -> u64 {
        self.allowed.load(Ordering::Relaxed)
    }
    /// New flows its rules denied.
    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }
}

/// Every local pod's policy, indexed by [`crate::fib::Endpoint::policy_id`] (id `k` is
/// `pods[k - 1]`; 0 is "no policy applies").
#[derive(Debug, Default)]
pub struct PolicyTable {
    /// Per policy id.
    pub pods: Box<[PodPolicy]>,
    /// The policies rules come from.
    pub origins: Box<[Arc<Origin>]>,
}

impl PolicyTable {
    /// The policy of id `id` (None for 0 or an id past the table).
    #[inline]
    pub fn get(&self, id: u32) -> Option<&PodPolicy> {
        self.pods.get((id as usize).checked_sub(1)?)
    }

    /// The policy rules of origin `o` come from.
    pub fn origin(&self, o: u32) -> Option<&Origin> {
        self.origins.get(o as usize).map(|a| &**a)
    }

    /// Counts a judgement against the policy that decided it.
    #[inline]
    pub fn count(&self, j: Judgement) {
        if let Some(o) = j.origin().and_then(|o| self.origins.get(o as usize)) {
            o.count(j.allows());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(a: u8, b: u8, c: u8, d: u8) -> u32 {
        u32::from_be_bytes([a, b, c, d])
    }

    #[test]
    fn cidr_except_cuts_only_its_own_block() {
        let s = AddrSet::cidr_except(ip(10, 0, 0, 0), 8, &[(ip(10, 1, 0, 0), 16)]);
        assert!(s.contains(ip(10, 0, 255, 255)));
        assert!(!s.contains(ip(10, 1, 0, 0)));
        assert!(!s.contains(ip(10, 1, 255, 255)));
        assert!(s.contains(ip(10, 2, 0, 0)));
        assert!(!s.contains(ip(11, 0, 0, 0)));
        let all = AddrSet::cidr_except(0, 0, &[]);
        assert!(all.contains(0) && all.contains(u32::MAX));
        // An except outside the block changes nothing; one covering it empties it.
        let s = AddrSet::cidr_except(ip(10, 0, 0, 0), 24, &[(ip(192, 168, 0, 0), 16)]);
        assert_eq!(s.ranges(), &[(ip(10, 0, 0, 0), ip(10, 0, 0, 255))]);
        assert!(AddrSet::cidr_except(ip(10, 0, 0, 0), 24, &[(ip(10, 0, 0, 0), 16)]).is_empty());
    }

    fn rule(peers: AddrSet, ports: &[PortRange], action: Action, origin: u32) -> Rule {
        Rule {
            clauses: vec![Clause {
                peers: Arc::new(peers),
                ports: ports.to_vec().into(),
            }]
            .into(),
            action,
            origin,
            index: 0,
        }
    }

    #[test]
    fn tiers_decide_in_order() {
        let tcp80 = [PortRange {
            proto: 6,
            lo: 80,
            hi: 80,
        }];
        let a = ip(10, 0, 0, 1);
        let mut d = DirPolicy::default();
        assert_eq!(d.judge(a, 6, 80, true), Judgement::Default);
        d.baseline = vec![rule(AddrSet::all(), &[], Action::Deny, 2)].into();
        assert!(!d.judge(a, 6, 80, true).allows());
        d.isolated = true;
        assert_eq!(d.judge(a, 6, 80, true), Judgement::Isolated);
        d.allow = vec![rule(
            AddrSet::from_ranges(vec![(a, a)]),
            &tcp80,
            Action::Allow,
            1,
        )]
        .into();
        assert!(d.judge(a, 6, 80, true).allows());
        assert!(!d.judge(a, 17, 80, true).allows(), "UDP 80 is not TCP 80");
        assert!(!d.judge(a, 1, 0, false).allows(), "no ports: no port rule");
        d.admin = vec![
            rule(AddrSet::from_ranges(vec![(a, a)]), &tcp80, Action::Pass, 3),
            rule(AddrSet::all(), &[], Action::Deny, 4),
        ]
        .into();
        // Pass skips the rest of the admin tier: the NetworkPolicy allows.
        assert!(d.judge(a, 6, 80, true).allows());
        // Anything else meets the admin deny.
        assert_eq!(
            d.judge(ip(10, 0, 0, 2), 6, 80, true),
            Judgement::Rule {
                tier: Tier::Admin,
                origin: 4,
                index: 0,
                allow: false
            }
        );
    }

    proptest! {
        #[test]
        fn addr_sets_are_the_union_of_their_ranges(
            v in proptest::collection::vec((any::<u32>(), 0u32..5000), 0..20),
            probes in proptest::collection::vec(any::<u32>(), 50),
        ) {
            let ranges: Vec<(u32, u32)> = v.iter().map(|&(lo, w)| (lo, lo.saturating_add(w))).collect();
            let s = AddrSet::from_ranges(ranges.clone());
            for w in s.ranges().windows(2) {
                prop_assert!(w[0].1 < w[1].0 && w[0].1 + 1 < w[1].0);
            }
            let near: Vec<u32> = ranges.iter().flat_map(|&(lo, hi)| [lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)]).collect();
            for p in probes.into_iter().chain(near) {
                let slow = ranges.iter().any(|&(lo, hi)| lo <= p && p <= hi);
                prop_assert_eq!(s.contains(p), slow, "{}", p);
            }
        }
    }
}
