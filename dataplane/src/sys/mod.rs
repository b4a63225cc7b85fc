//! The one place in the dataplane allowed to use `unsafe`, and only what needs it, by subject:
//! the AF_XDP rings, sockets and UMEM ([`xsk`]), network-device ioctls ([`netdev`]),
//! descriptor passing and the eventfd ([`fd`]), table memory, the shared mapping of a BPF
//! array and CPU prefetch hints
//! ([`mem`]), a worker's scheduling class ([`sched`]). Every `unsafe` block says why it is
//! sound (`// SAFETY:`), every `unsafe fn` has a `# Safety` section; the safe API each module exposes cannot be misused into undefined
//! behaviour (ring accessors check their index bound). Nothing here decides policy: frame
//! ownership is the worker's, addresses and routes are the control plane's.

#![allow(unsafe_code)] // this module is the crate's designated unsafe boundary

pub mod fd;
pub mod mem;
pub mod netdev;
pub mod sched;
pub mod tap;
pub mod xsk;

pub use mem::{AtomicArray, MapError, SharedWords, prefetch};
