//! The concurrent table itself: buckets of tagged slots, seqlocked reads, per-bucket writer
//! locks, neighbour overflow and eviction (see the module above for the layout). It stores
//! key -> value tuples with flags, a last-seen tick and a MAC index, and knows nothing of what
//! they mean: flows ([`super::flows`]) and affinity records ([`super::affinity`]) are built on
//! top.

use super::*;
use crate::hash::{mix64, random_seed};
use crate::sys::{AtomicArray, MapError};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};

pub(super) const SLOTS: usize = 16;
/// Words per bucket header (one cache line): 4 tag words, lock, overflow count, 2 unused.
pub(super) const BWORDS: usize = 8;
pub(super) const B_LOCK: usize = 4;
/// Entries homed in a bucket but stored in one of the next buckets.
pub(super) const B_OVERFLOW: usize = 5;
/// Words per slot (half a cache line): meta, key addresses, ports, translated addresses.
pub(super) const SWORDS: usize = 4;

/// How many buckets after its home an entry may be stored in.
pub(super) const NEIGHBOURS: usize = 3;

// meta word: seq:16 | proto:8 | flags:8 | last_seen:16 | mac_idx:16
#[inline]
pub(super) fn meta(seq: u16, proto: u8, flags: u8, last: u16, mac: u16) -> u64 {
    ((seq as u64) << 48)
        | ((proto as u64) << 40)
        | ((flags as u64) << 32)
        | ((last as u64) << 16)
        | mac as u64
}
#[inline]
pub(super) fn m_seq(m: u64) -> u16 {
    (m >> 48) as u16
}
#[inline]
pub(super) fn m_proto(m: u64) -> u8 {
    (m >> 40) as u8
}
#[inline]
pub(super) fn m_flags(m: u64) -> u8 {
    (m >> 32) as u8
}
#[inline]
pub(super) fn m_last(m: u64) -> u16 {
    (m >> 16) as u16
}

#[inline]
pub(super) fn pack(key: &Tuple, x: &Tuple) -> [u64; 3] {
    [
        ((key.src as u64) << 32) | key.dst as u64,
        ((key.sport as u64) << 48)
            | ((key.dport as u64) << 32)
            | ((x.sport as u64) << 16)
            | x.dport as u64,
        ((x.src as u64) << 32) | x.dst as u64,
    ]
}

#[inline]
pub(super) fn unpack(m: u64, w: [u64; 3]) -> (Tuple, Tuple) {
    let p = m_proto(m);
    (
        Tuple {
            src: (w[0] >> 32) as u32,
            dst: w[0] as u32,
            sport: (w[1] >> 48) as u16,
            dport: (w[1] >> 32) as u16,
            proto: p,
        },
        Tuple {
            src: (w[2] >> 32) as u32,
            dst: w[2] as u32,
            sport: (w[1] >> 16) as u16,
            dport: w[1] as u16,
            proto: p,
        },
    )
}

/// The entry a slot's meta word and data words describe.
#[inline]
pub(super) fn entry_of(m: u64, w: [u64; 3]) -> Entry {
    let (key, xlate) = unpack(m, w);
    Entry {
        key,
        xlate,
        flags: m_flags(m),
        last_seen: m_last(m),
        mac_idx: m as u16,
    }
}

/// Lanes (0..4) of a tag word that may hold `tag`, as a bit mask (bit 16*lane+15). SWAR:
/// lanes equal to `tag` become zero after the xor; a zero lane sets its top bit. A borrow can
/// flag a lane above a true match as well; callers verify the key, so that is harmless.
#[inline(always)]
pub(super) fn lanes_matching(tags: u64, tag: u16) -> u64 {
    const LO: u64 = 0x0001_0001_0001_0001;
    const HI: u64 = 0x8000_8000_8000_8000;
    let x = tags ^ (LO * tag as u64);
    x.wrapping_sub(LO) & !x & HI
}

/// Lanes of a tag word in use (non-zero tag).
#[inline]
pub(super) fn lanes_used(tags: u64) -> usize {
    (0..4).filter(|l| (tags >> (l * 16)) as u16 != 0).count()
}

/// The tag stored for a hash: never 0 (0 marks a free lane).
#[inline]
pub(super) fn tag_of(h: u64) -> u16 {
    ((h >> 48) as u16) | 1
}

/// The connection tracking table.
#[derive(Debug)]
pub struct Conntrack {
    /// Bucket headers: tag words 0..4, lock, overflow count.
    pub(super) buckets: AtomicArray<BWORDS>,
    /// Slots: meta, key addresses, ports, translated addresses.
    pub(super) slots: AtomicArray<SWORDS>,
    pub(super) n_buckets: usize,
    pub(super) mask: u64,
    pub(super) seed: u64,
    pub(super) evictions: AtomicU64,
    pub(super) gc_cursor: AtomicUsize,
    pub(super) timeouts: Timeouts,
    pub(super) macs: MacTable,
}

struct BucketLock<'a>(&'a AtomicU64);

impl Drop for BucketLock<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

impl Conntrack {
    /// A table for at least `capacity` entries (two per flow), rounded up to a power of two of
    /// buckets; sized so that the expected load stays at or below one half. Memory: 64 bytes
    /// per entry of capacity (slots at half load plus headers), in huge pages where available.
    pub fn new(capacity: usize, timeouts: Timeouts) -> Result<Self, MapError> {
        let buckets = (capacity.max(SLOTS) * 2)
            .div_ceil(SLOTS)
            .next_power_of_two();
        Ok(Self {
            buckets: AtomicArray::zeroed(buckets)?,
            slots: AtomicArray::zeroed(buckets * SLOTS)?,
            n_buckets: buckets,
            mask: buckets as u64 - 1,
            seed: random_seed(),
            evictions: AtomicU64::new(0),
            gc_cursor: AtomicUsize::new(0),
            timeouts,
            macs: MacTable::new(),
        })
    }

    #[inline(always)]
    pub(super) fn tags(&self, b: usize) -> &[AtomicU64] {
        &self.buckets[b][..4]
    }

    #[inline(always)]
    pub(super) fn slot(&self, i: usize) -> &[AtomicU64; SWORDS] {
        &self.slots[i]
    }

    #[inline(always)]
    pub(super) fn overflow(&self, b: usize) -> &AtomicU64 {
        &self.buckets[b][B_OVERFLOW]
    }

    /// Entries in use (two per flow). Counts the occupied lanes of every bucket (milliseconds
    /// for millions of entries: for metrics and inspection, not the packet path, which keeps
    /// no shared counter to update).
    pub fn len(&self) -> usize {
        self.buckets
            .iter()
            .map(|b| {
                b[..4]
                    .iter()
                    .map(|w| lanes_used(w.load(Ordering::Relaxed)))
                    .sum::<usize>()
            })
            .sum()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Slots in total.
    pub fn capacity(&self) -> usize {
        self.n_buckets * SLOTS
    }
    /// The table's counters, read now.
    pub fn counters(&self) -> crate::counters::ConntrackCounters {
        let c = crate::counters::ConntrackCounters::default();
        c.entries.set(self.len() as u64);
        c.evictions.set(self.evictions());
        c
    }

    /// Entries evicted so far to make room.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
    /// The timeouts in force.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }
    /// The MAC table for uplink flows.
    pub fn macs(&self) -> &MacTable {
        &self.macs
    }

    /// The hash the table uses for `t` (compute once per packet, pass to `lookup_hashed`).
    #[inline]
    pub fn hash(&self, t: &Tuple) -> u64 {
        t.hash(self.seed)
    }

    /// Prefetches the bucket header for `hash` (stage one of a batched lookup).
    #[inline]
    pub fn prefetch_bucket(&self, hash: u64) {
        crate::sys::prefetch(&self.buckets[(hash & self.mask) as usize]);
    }

    /// Prefetches the slot whose tag matches `hash` in its home bucket, if any (stage two,
    /// after the header is in cache). A tag match is only a hint; the lookup verifies the key.
    #[inline]
    pub fn prefetch_slot(&self, hash: u64) {
        let b = (hash & self.mask) as usize;
        let tag = tag_of(hash);
        for (w, word) in self.tags(b).iter().enumerate() {
            let m = lanes_matching(word.load(Ordering::Relaxed), tag);
            if m != 0 {
                let lane = m.trailing_zeros() as usize / 16;
                crate::sys::prefetch(&self.slots[b * SLOTS + w * 4 + lane]);
                return;
            }
        }
    }

    /// Prefetches the first free slot of the home bucket of `hash` (where an insert of that
    /// key will write), once the bucket header is in cache.
    #[inline]
    pub fn prefetch_free_slot(&self, hash: u64) {
        let b = (hash & self.mask) as usize;
        for (w, word) in self.tags(b).iter().enumerate() {
            // A free lane has tag 0: reuse the SWAR match with tag 0.
            let m = lanes_matching(word.load(Ordering::Relaxed), 0);
            if m != 0 {
                let lane = m.trailing_zeros() as usize / 16;
                crate::sys::prefetch(&self.slots[b * SLOTS + w * 4 + lane]);
                return;
            }
        }
    }

    #[inline(always)]
    pub(super) fn read_slot(&self, i: usize) -> Option<(u64, [u64; 3])> {
        let s = self.slot(i);
        for _ in 0..64 {
            let m0 = s[0].load(Ordering::Acquire);
            if m_seq(m0) & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let w = [
                s[1].load(Ordering::Relaxed),
                s[2].load(Ordering::Relaxed),
                s[3].load(Ordering::Relaxed),
            ];
            fence(Ordering::Acquire);
            let m1 = s[0].load(Ordering::Relaxed);
            if m_seq(m1) == m_seq(m0) {
                return Some((m1, w));
            }
        }
        None
    }

    /// Looks for `key` in bucket `b` only (lock-free).
    #[inline(always)]
    pub(super) fn find_in(
        &self,
        b: usize,
        key: &Tuple,
        tag: u16,
    ) -> Option<(usize, u64, [u64; 3])> {
        let t = &self.buckets[b];
        let ms = [
            lanes_matching(t[0].load(Ordering::Acquire), tag),
            lanes_matching(t[1].load(Ordering::Acquire), tag),
            lanes_matching(t[2].load(Ordering::Acquire), tag),
            lanes_matching(t[3].load(Ordering::Acquire), tag),
        ];
        if ms[0] | ms[1] | ms[2] | ms[3] == 0 {
            return None;
        }
        let k0 = ((key.src as u64) << 32) | key.dst as u64;
        let k1 = ((key.sport as u64) << 16) | key.dport as u64;
        for (w, &mask) in ms.iter().enumerate() {
            let mut m = mask;
            while m != 0 {
                let l = w * 4 + m.trailing_zeros() as usize / 16;
                m &= m - 1;
                let Some((meta, ws)) = self.read_slot(b * SLOTS + l) else {
                    continue;
                };
                if ws[0] == k0
                    && ws[1] >> 32 == k1
                    && m_proto(meta) == key.proto
                    && m_flags(meta) & flags::USED != 0
                {
                    return Some((l, meta, ws));
                }
            }
        }
        None
    }

    /// Looks for `key` in its home bucket and, if the home has overflowed, its neighbours.
    #[inline(always)]
    pub(super) fn locate(
        &self,
        home: usize,
        key: &Tuple,
        tag: u16,
    ) -> Option<(usize, usize, u64, [u64; 3])> {
        if let Some((l, m, w)) = self.find_in(home, key, tag) {
            return Some((home, l, m, w));
        }
        if self.overflow(home).load(Ordering::Acquire) == 0 {
            return None;
        }
        (1..=NEIGHBOURS).find_map(|d| {
            let b = (home + d) & self.mask as usize;
            self.find_in(b, key, tag).map(|(l, m, w)| (b, l, m, w))
        })
    }

    /// Looks up `key` (with `hash` from [`Conntrack::hash`]).
    #[inline(always)]
    pub fn lookup_hashed(&self, key: &Tuple, hash: u64) -> Option<Hit> {
        let (b, l, m, ws) = self.locate((hash & self.mask) as usize, key, tag_of(hash))?;
        Some(Hit {
            entry: entry_of(m, ws),
            slot: (b * SLOTS + l) as u32,
            seq: m_seq(m),
        })
    }

    /// Looks up `key`.
    pub fn lookup(&self, key: &Tuple) -> Option<Hit> {
        self.lookup_hashed(key, self.hash(key))
    }

    /// Marks a hit: sets `add_flags | SEEN` and last seen = `now` if either changes. Lock-free;
    /// does nothing if the slot was rewritten since the lookup.
    #[inline]
    pub fn touch(&self, hit: &Hit, now: u16, add_flags: u8) {
        let want = add_flags | flags::SEEN;
        if hit.entry.last_seen == now && hit.entry.flags & want == want {
            return;
        }
        let w0 = &self.slot(hit.slot as usize)[0];
        let _ = w0.fetch_update(Ordering::Release, Ordering::Relaxed, |m| {
            if m_seq(m) != hit.seq {
                return None;
            }
            let f = m_flags(m) | want;
            Some(meta(m_seq(m), m_proto(m), f, now, m as u16))
        });
    }

    fn lock(&self, b: usize) -> BucketLock<'_> {
        let l = &self.buckets[b][B_LOCK];
        while l
            .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while l.load(Ordering::Relaxed) != 0 {
                std::hint::spin_loop();
            }
        }
        BucketLock(l)
    }

    fn try_lock(&self, b: usize) -> Option<BucketLock<'_>> {
        let l = &self.buckets[b][B_LOCK];
        l.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| BucketLock(l))
    }

    pub(super) fn write_slot(&self, i: usize, m_new_without_seq: u64, w: [u64; 3]) {
        let s = self.slot(i);
        let mut m = s[0].load(Ordering::Relaxed);
        loop {
            let odd = (m & !(0xffff << 48)) | ((m_seq(m).wrapping_add(1) as u64) << 48);
            match s[0].compare_exchange_weak(m, odd, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => break,
                Err(cur) => m = cur,
            }
        }
        fence(Ordering::Release);
        s[1].store(w[0], Ordering::Relaxed);
        s[2].store(w[1], Ordering::Relaxed);
        s[3].store(w[2], Ordering::Relaxed);
        let seq = m_seq(m).wrapping_add(2);
        s[0].store(
            (m_new_without_seq & !(0xffff << 48)) | ((seq as u64) << 48),
            Ordering::Release,
        );
    }

    /// [`Conntrack::write_slot`] for a free slot (caller holds the bucket lock): no hit can
    /// refer to it (a hit is only taken on a slot in use, with a sequence number the clear
    /// already moved past), so plain stores suffice where an occupied slot needs a CAS.
    pub(super) fn write_free_slot(&self, i: usize, m_new_without_seq: u64, w: [u64; 3]) {
        let s = self.slot(i);
        let seq = m_seq(s[0].load(Ordering::Relaxed));
        s[0].store((seq.wrapping_add(1) as u64) << 48, Ordering::Relaxed);
        fence(Ordering::Release);
        s[1].store(w[0], Ordering::Relaxed);
        s[2].store(w[1], Ordering::Relaxed);
        s[3].store(w[2], Ordering::Relaxed);
        s[0].store(
            (m_new_without_seq & !(0xffff << 48)) | ((seq.wrapping_add(2) as u64) << 48),
            Ordering::Release,
        );
    }

    pub(super) fn set_tag(&self, b: usize, lane: usize, tag: u16) {
        let word = &self.tags(b)[lane / 4];
        let shift = (lane % 4) * 16;
        let v = word.load(Ordering::Relaxed);
        word.store(
            (v & !(0xffff << shift)) | ((tag as u64) << shift),
            Ordering::Release,
        );
    }

    pub(super) fn lane_tag(&self, b: usize, lane: usize) -> u16 {
        (self.tags(b)[lane / 4].load(Ordering::Relaxed) >> ((lane % 4) * 16)) as u16
    }

    /// Frees a lane (caller holds bucket `b`'s lock), fixing its home's overflow count.
    pub(super) fn clear_lane(&self, b: usize, lane: usize) {
        if let Some((m, w)) = self.read_slot(b * SLOTS + lane) {
            let (k, _) = unpack(m, w);
            let home = (self.hash(&k) & self.mask) as usize;
            if home != b {
                self.overflow(home).fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.set_tag(b, lane, 0);
        self.write_slot(b * SLOTS + lane, 0, [0; 3]);
    }

    pub(super) fn free_lane(&self, b: usize) -> Option<usize> {
        (0..SLOTS).find(|&l| self.lane_tag(b, l) == 0)
    }

    #[allow(clippy::too_many_arguments)] // an entry's fields
    pub(super) fn place(
        &self,
        b: usize,
        lane: usize,
        key: &Tuple,
        xlate: &Tuple,
        fl: u8,
        now: u16,
        mac: u16,
        tag: u16,
    ) {
        self.write_free_slot(
            b * SLOTS + lane,
            meta(0, key.proto, fl | flags::USED, now, mac),
            pack(key, xlate),
        );
        self.set_tag(b, lane, tag);
    }

    /// Inserts `key -> xlate` unless `key` is present. Returns the entry now in the table and
    /// whether it was inserted by this call, and the partner key of an entry evicted to make
    /// room (the caller removes it after the lock is released).
    pub(super) fn insert_one(
        &self,
        key: &Tuple,
        h: u64,
        xlate: &Tuple,
        fl: u8,
        now: u16,
        mac: u16,
    ) -> (Entry, bool, Option<Tuple>) {
        let home = (h & self.mask) as usize;
        let tag = tag_of(h);
        let new_entry = Entry {
            key: *key,
            xlate: *xlate,
            flags: fl | flags::USED,
            last_seen: now,
            mac_idx: mac,
        };
        let _g = self.lock(home);
        if let Some((_, _, m, w)) = self.locate(home, key, tag) {
            return (entry_of(m, w), false, None);
        }
        if let Some(lane) = self.free_lane(home) {
            self.place(home, lane, key, xlate, fl, now, mac, tag);
            return (new_entry, true, None);
        }
        for d in 1..=NEIGHBOURS {
            let nb = (home + d) & self.mask as usize;
            if nb == home {
                break;
            }
            // try_lock only: waiting while holding `home` could deadlock with a neighbour's
            // writer; a busy neighbour is skipped.
            let Some(_g2) = self.try_lock(nb) else {
                continue;
            };
            if let Some(lane) = self.free_lane(nb) {
                self.overflow(home).fetch_add(1, Ordering::AcqRel);
                self.place(nb, lane, key, xlate, fl, now, mac, tag);
                return (new_entry, true, None);
            }
        }
        // Everything near is full: evict an expired entry of the home bucket, else the least
        // recently seen one.
        let mut victim = 0;
        let mut best = 0u32;
        for l in 0..SLOTS {
            if let Some((m, _)) = self.read_slot(home * SLOTS + l) {
                let age = age_secs(now, m_last(m));
                let score = if age > self.timeout_of(m_proto(m), m_flags(m), 0) {
                    u32::MAX
                } else {
                    age
                };
                if score >= best {
                    best = score;
                    victim = l;
                }
            }
        }
        let mut evicted_partner = None;
        if let Some((m, w)) = self.read_slot(home * SLOTS + victim) {
            let (_, x) = unpack(m, w);
            if m_flags(m) & flags::AFFINITY == 0 {
                evicted_partner = Some(x.reverse());
            }
        }
        if best != u32::MAX {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        self.clear_lane(home, victim);
        self.place(home, victim, key, xlate, fl, now, mac, tag);
        (new_entry, true, evicted_partner)
    }

    /// Removes `key`; true when it was present.
    pub fn remove(&self, key: &Tuple) -> bool {
        let h = self.hash(key);
        let home = (h & self.mask) as usize;
        let tag = tag_of(h);
        loop {
            let _g = self.lock(home);
            let Some((b, lane, _, _)) = self.locate(home, key, tag) else {
                return false;
            };
            if b == home {
                self.clear_lane(b, lane);
                return true;
            }
            if let Some(_g2) = self.try_lock(b) {
                // Re-check under the neighbour's lock (its own inserts may evict).
                if let Some((lane, _, _)) = self.find_in(b, key, tag) {
                    self.clear_lane(b, lane);
                    return true;
                }
                return false;
            }
            drop(_g);
            std::hint::spin_loop();
        }
    }

    /// Consistent copies of the entries in use in bucket `b` (lock-free).
    pub(super) fn bucket_entries(&self, b: usize) -> [Option<Entry>; SLOTS] {
        let mut out = [None; SLOTS];
        for (lane, e) in out.iter_mut().enumerate() {
            if self.lane_tag(b, lane) == 0 {
                continue;
            }
            if let Some((m, w)) = self.read_slot(b * SLOTS + lane) {
                if m_flags(m) & flags::USED != 0 {
                    *e = Some(entry_of(m, w));
                }
            }
        }
        out
    }

    /// Calls `f` with every entry (a consistent copy of each; the table may change meanwhile).
    pub fn for_each(&self, mut f: impl FnMut(&Entry)) {
        for b in 0..self.n_buckets {
            self.bucket_entries(b).iter().flatten().for_each(&mut f);
        }
    }
}

/// MAC addresses that flows from the uplink came from (routers, clients on the underlay), so
/// replies can go back to them. Append-only, lock-free, fixed size; index 0 means "none".
#[derive(Debug)]
pub struct MacTable {
    slots: Box<[AtomicU64]>,
}

pub(super) const MAC_SLOTS: usize = 4096;
pub(super) const MAC_VALID: u64 = 1 << 63;

impl MacTable {
    pub(super) fn new() -> Self {
        Self {
            slots: (0..MAC_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The index for `mac`, adding it if new. `None` when the table is full.
    pub fn intern(&self, mac: crate::wire::MacAddr) -> Option<u16> {
        let v = mac.to_u64() | MAC_VALID;
        let start = (mix64(v) as usize) % (MAC_SLOTS - 1);
        for k in 0..MAC_SLOTS - 1 {
            let i = 1 + (start + k) % (MAC_SLOTS - 1);
            match self.slots[i].compare_exchange(0, v, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(i as u16),
                Err(cur) if cur == v => return Some(i as u16),
                Err(_) => {}
            }
        }
        None
    }

    /// The MAC at `idx`.
    #[inline]
    pub fn get(&self, idx: u16) -> Option<crate::wire::MacAddr> {
        let v = self.slots.get(idx as usize)?.load(Ordering::Acquire);
        (v & MAC_VALID != 0).then(|| crate::wire::MacAddr::from_u64(v))
    }
}
