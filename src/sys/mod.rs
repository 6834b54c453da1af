//! Everything that touches libc: batched socket I/O, sockets, mapped buffers, signals, logging, the OS random
//! generator, the `--metrics` HTTP endpoint. The only place `unsafe` is allowed: lib.rs denies it everywhere else, and the decision modules
//! forbid it outright.

#![allow(unsafe_code)]

pub(crate) mod batch;
pub(crate) mod http;
pub mod logging;
pub(crate) mod mapped;
pub(crate) mod random;
pub mod signal;
pub(crate) mod socket;

/// For the tests' roomy loopback sockets: the same buffer the relay asks for.
pub use socket::grow_receive_buffer;
