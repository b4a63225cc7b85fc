//! IPv4 prefixes.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 prefix such as `10.244.1.0/24`. The address is stored masked.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: u32,
    len: u8,
}

/// Why a prefix did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid IPv4 prefix {0:?} (expected a.b.c.d/len with len <= 32)")]
pub struct PrefixError(pub String);

impl Ipv4Net {
    /// A prefix; host bits of `addr` are cleared. Fails when `len > 32`.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, PrefixError> {
        if len > 32 {
            return Err(PrefixError(format!("{addr}/{len}")));
        }
        Ok(Self {
            addr: u32::from(addr) & mask(len),
            len,
        })
    }
    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr.into()
    }
    /// The network address as an integer.
    pub fn addr_u32(&self) -> u32 {
        self.addr
    }
    /// Prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }
    /// True for `/0` (the default route).
    pub fn is_default(&self) -> bool {
        self.len == 0
    }
    /// Netmask as an integer.
    pub fn mask(&self) -> u32 {
        mask(self.len)
    }
    /// True when `ip` is inside the prefix.
    #[inline]
    pub fn contains_u32(&self, ip: u32) -> bool {
        ip & mask(self.len) == self.addr
    }
    /// True when `ip` is inside the prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.contains_u32(ip.into())
    }
    /// The `n`th address in the prefix (`n` = 1 is the usual gateway).
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let size = if self.len == 0 {
            u64::MAX
        } else {
            1u64 << (32 - self.len)
        };
        ((n as u64) < size).then(|| Ipv4Addr::from(self.addr + n))
    }
}

#[inline]
fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.addr), self.len)
    }
}

impl fmt::Debug for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Ipv4Net {
    type Err = PrefixError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PrefixError(s.to_string());
        let (a, l) = s.split_once('/').ok_or_else(err)?;
        let a: Ipv4Addr = a.parse().map_err(|_| err())?;
        let l: u8 = l.parse().map_err(|_| err())?;
        Ipv4Net::new(a, l).map_err(|_| err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_contains() {
        let n: Ipv4Net = "10.244.1.7/24".parse().unwrap();
        assert_eq!(n.to_string(), "10.244.1.0/24");
        assert!(n.contains("10.244.1.255".parse().unwrap()));
        assert!(!n.contains("10.244.2.0".parse().unwrap()));
        assert_eq!(n.nth(1), Some("10.244.1.1".parse().unwrap()));
        assert_eq!(n.nth(256), None);
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("10.0.0/8".parse::<Ipv4Net>().is_err());
        let d: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(d.contains("1.2.3.4".parse().unwrap()));
    }
}
