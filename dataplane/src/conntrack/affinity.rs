//! ClientIP session affinity on top of the table: one record per (client, service frontend)
//! naming the backend it was sent to.
//!
//! A record is a table entry in its own key space: [`AffinityKey::tuple`] sets
//! [`AFFINITY_KEY_BIT`] in the protocol byte (no IP protocol a flow carries has it, so a
//! record never matches a flow's packets) and flag [`flags::AFFINITY`] on the entry. Its value
//! ([`AffinityValue`]) holds the backend and the record's timeout, which GC needs and a flow
//! keeps elsewhere. Encoding and decoding live here and nowhere else.

use super::*;
use std::net::SocketAddrV4;

/// Set in the protocol byte of an affinity record's key.
pub const AFFINITY_KEY_BIT: u8 = 0x80;

/// Who an affinity record is for: a client of one service frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AffinityKey {
    /// The client's address.
    pub client: u32,
    /// The service address.
    pub vip: u32,
    /// The service port.
    pub vport: u16,
    /// TCP or UDP.
    pub proto: u8,
}

impl AffinityKey {
    /// The table key of the record.
    #[inline]
    pub fn tuple(&self) -> Tuple {
        Tuple {
            src: self.client,
            dst: self.vip,
            sport: 0,
            dport: self.vport,
            proto: self.proto | AFFINITY_KEY_BIT,
        }
    }
}

/// What an affinity record says: the backend, and for how long the record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AffinityValue {
    /// The backend the client was sent to.
    pub backend: SocketAddrV4,
    /// Seconds the record lives after the client was last seen.
    pub timeout: u32,
}

impl AffinityValue {
    /// As the table stores it (`src` carries the timeout).
    #[inline]
    pub fn tuple(&self, proto: u8) -> Tuple {
        Tuple {
            src: self.timeout,
            dst: u32::from(*self.backend.ip()),
            sport: 0,
            dport: self.backend.port(),
            proto: proto | AFFINITY_KEY_BIT,
        }
    }

    /// Read back from a record's stored value.
    #[inline]
    pub fn of(stored: &Tuple) -> Self {
        Self {
            backend: SocketAddrV4::new(stored.dst.into(), stored.dport),
            timeout: stored.src,
        }
    }
}

impl Conntrack {
    /// ClientIP affinity: the backend `client` was sent to for the service at `vip:vport/proto`,
    /// if that record is younger than `timeout` seconds.
    pub fn affinity_get(
        &self,
        client: u32,
        vip: u32,
        vport: u16,
        proto: u8,
        now: u16,
        timeout: u32,
    ) -> Option<(u32, u16)> {
        let key = AffinityKey {
            client,
            vip,
            vport,
            proto,
        };
        let hit = self.lookup(&key.tuple())?;
        if age_secs(now, hit.entry.last_seen) > timeout {
            return None;
        }
        self.touch(&hit, now, 0);
        let b = AffinityValue::of(&hit.entry.xlate).backend;
        Some((u32::from(*b.ip()), b.port()))
    }

    /// Records (or refreshes) ClientIP affinity; `timeout` is kept with the record for GC.
    #[allow(clippy::too_many_arguments)] // a tuple's fields plus the binding
    pub fn affinity_set(
        &self,
        client: u32,
        vip: u32,
        vport: u16,
        proto: u8,
        backend: (u32, u16),
        now: u16,
        timeout: u32,
    ) {
        let key = AffinityKey {
            client,
            vip,
            vport,
            proto,
        }
        .tuple();
        let val = AffinityValue {
            backend: SocketAddrV4::new(backend.0.into(), backend.1),
            timeout,
        }
        .tuple(proto);
        let (e, new, ev) = self.insert_one(&key, self.hash(&key), &val, flags::AFFINITY, now, 0);
        if let Some(p) = ev {
            self.remove(&p);
        }
        if !new && e.xlate != val {
            self.remove(&key);
            let (_, _, ev) = self.insert_one(&key, self.hash(&key), &val, flags::AFFINITY, now, 0);
            if let Some(p) = ev {
                self.remove(&p);
            }
        }
    }
}
