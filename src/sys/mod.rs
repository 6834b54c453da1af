//! Everything that touches libc: batched socket I/O, sockets, signals and logging.

pub mod batch;
pub mod logging;
pub mod mapped;
pub mod random;
pub mod signal;
pub mod socket;
