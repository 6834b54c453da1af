//! Counters for the status line. Only drops and refusals are counted: they are rare, so the relaxed atomic
//! increments stay off the per-datagram path.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default, Debug)]
pub struct Drops {
    /// Inside: datagrams from neither the relay nor the service.
    pub foreign: AtomicU64,
    /// Control-shaped datagrams whose MAC failed (wrong key, forgery, corruption).
    pub badauth: AtomicU64,
    /// Relay: datagrams from a tunnel that has no client; inside: service datagrams on a spare.
    pub unrouted: AtomicU64,
    /// Relay: datagrams of waiting clients beyond what may be held.
    pub overflow: AtomicU64,
    /// Relay: datagrams of new clients refused because the -n limit was reached.
    pub refused: AtomicU64,
    /// Sends the kernel rejected (unreachable, too big, no buffer).
    pub senderr: AtomicU64,
}

impl Drops {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// The tail of a status line: `refused=R dropped foreign=F badauth=B unrouted=U overflow=O senderr=E`.
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Relaxed);
        format!(
            "refused={} dropped foreign={} badauth={} unrouted={} overflow={} senderr={}",
            g(&self.refused),
            g(&self.foreign),
            g(&self.badauth),
            g(&self.unrouted),
            g(&self.overflow),
            g(&self.senderr)
        )
    }
}
