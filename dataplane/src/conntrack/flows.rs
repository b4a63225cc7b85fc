//! Flows on top of the table: two entries per flow (original and reply direction), their
//! binding on insert, their timeouts by protocol and state, ageing (GC) and purges.

use super::*;
use crate::wire::proto;
use std::sync::atomic::Ordering;

impl Conntrack {
    /// Records a new NAT flow: `orig` (as the client sent it) is rewritten to `xlate`, and
    /// replies (the reverse of `xlate`) to the reverse of `orig`. If another worker recorded
    /// the same flow first, its binding wins and is returned. Fails when the reply tuple is
    /// taken by a different flow.
    pub fn insert_flow(
        &self,
        orig: &Tuple,
        xlate: &Tuple,
        now: u16,
        mac_idx: u16,
        extra: u8,
        orig_flags: u8,
    ) -> Result<Tuple, InsertError> {
        let reply_hash = self.hash(&xlate.reverse());
        self.insert_flow_hashed(
            orig,
            self.hash(orig),
            xlate,
            reply_hash,
            now,
            mac_idx,
            extra,
            orig_flags,
        )
    }

    /// [`Conntrack::insert_flow`] with the hashes of the original tuple and of the reply tuple
    /// (`xlate` reversed) already computed.
    #[allow(clippy::too_many_arguments)] // the flow and its binding
    pub fn insert_flow_hashed(
        &self,
        orig: &Tuple,
        orig_hash: u64,
        xlate: &Tuple,
        reply_hash: u64,
        now: u16,
        mac_idx: u16,
        extra: u8,
        orig_flags: u8,
    ) -> Result<Tuple, InsertError> {
        let rkey = xlate.reverse();
        let rval = orig.reverse();
        let (r, r_new, ev1) =
            self.insert_one(&rkey, reply_hash, &rval, flags::REPLY | extra, now, mac_idx);
        if let Some(p) = ev1 {
            self.remove(&p);
        }
        if !r_new && r.xlate != rval {
            return Err(InsertError::ReplyCollision);
        }
        let (o, o_new, ev2) =
            self.insert_one(orig, orig_hash, xlate, extra | orig_flags, now, mac_idx);
        if let Some(p) = ev2 {
            self.remove(&p);
        }
        if !o_new && o.xlate != *xlate && r_new {
            // Lost a race: another worker bound this flow differently; drop our reply entry.
            self.remove(&rkey);
        }
        Ok(o.xlate)
    }

    /// Removes a flow given either of its entries.
    pub fn remove_flow(&self, e: &Entry) {
        self.remove(&e.key);
        self.remove(&e.xlate.reverse());
    }

    /// The timeout of an entry given its flags and its partner's flags.
    pub(super) fn timeout_of(&self, proto_n: u8, f: u8, partner: u8) -> u32 {
        let t = &self.timeouts;
        let both = f | partner;
        let replied = (if f & flags::REPLY != 0 { f } else { partner }) & flags::SEEN != 0;
        match proto_n {
            proto::TCP => {
                if both & flags::RST != 0 || (f & flags::FIN != 0 && partner & flags::FIN != 0) {
                    t.tcp_closing
                } else if replied {
                    t.tcp_established
                } else {
                    t.tcp_syn
                }
            }
            _ if replied => t.udp_stream,
            _ => t.udp,
        }
    }

    /// One GC step over up to `max_buckets` buckets from the cursor: removes flows whose both
    /// entries are past their timeout, and expired affinity records.
    pub fn gc(&self, now_secs: u32, max_buckets: usize) -> GcStats {
        let now = tick(now_secs);
        let n = self.n_buckets;
        let mut st = GcStats::default();
        for _ in 0..max_buckets.min(n) {
            let b = self.gc_cursor.fetch_add(1, Ordering::Relaxed) % n;
            st.buckets += 1;
            for e in self.bucket_entries(b).iter().flatten() {
                let expired = if e.flags & flags::AFFINITY != 0 {
                    age_secs(now, e.last_seen)
                        > super::affinity::AffinityValue::of(&e.xlate).timeout
                } else {
                    // A flow lives as long as its more recently seen direction.
                    let partner = self.lookup(&e.xlate.reverse()).map(|h| h.entry);
                    let pf = partner.map_or(0, |p| p.flags);
                    let age = partner.map_or(age_secs(now, e.last_seen), |p| {
                        age_secs(now, p.last_seen).min(age_secs(now, e.last_seen))
                    });
                    age > self.timeout_of(e.key.proto, e.flags, pf)
                };
                if !expired {
                    continue;
                }
                st.removed += self.remove(&e.key) as usize;
                if e.flags & flags::AFFINITY == 0 {
                    st.removed += self.remove(&e.xlate.reverse()) as usize;
                }
            }
        }
        st
    }

    /// Removes every flow (both entries) for which `pred` holds on the original-direction entry.
    /// Walks the whole table one bucket lock at a time. Returns the entries removed.
    pub fn purge(&self, mut pred: impl FnMut(&Entry) -> bool) -> usize {
        let mut removed = 0;
        for b in 0..self.n_buckets {
            for e in self.bucket_entries(b).iter().flatten() {
                if e.flags & (flags::REPLY | flags::AFFINITY) == 0 && pred(e) {
                    removed +=
                        self.remove(&e.key) as usize + self.remove(&e.xlate.reverse()) as usize;
                }
            }
        }
        removed
    }

    /// Expires UDP flows whose backend is no longer a backend of the service they were sent to
    /// in `fib` (the table just published, after [`crate::rcu::Published::wait_for_readers`]).
    /// Stale UDP entries would otherwise keep sending a client's datagrams to a dead backend
    /// for as long as the client keeps talking (Kubernetes issue 125467). TCP flows are kept:
    /// they end by themselves (FIN/RST) like kube-proxy's graceful termination.
    pub fn expire_removed_udp_backends(&self, fib: &crate::fib::Fib) -> usize {
        self.purge(|e| {
            if e.key.proto != proto::UDP {
                return false;
            }
            let backend = std::net::SocketAddrV4::new(e.xlate.dst.into(), e.xlate.dport);
            match fib.service(e.key.dst, e.key.dport, e.key.proto) {
                Some(svc) => !svc.lb.has_backend(backend),
                None => true,
            }
        })
    }
}
