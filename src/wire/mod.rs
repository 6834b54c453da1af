//! What travels on the wire: the control messages both agents seal and open, and WireGuard's message formats.

#![forbid(unsafe_code)]

pub mod control;
pub mod wireguard;

pub use control::*;
