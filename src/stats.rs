//! Counters for the status line. Only drops and refusals are counted: they are rare, so the increments stay
//! off the per-datagram path.

#![forbid(unsafe_code)]

#[cfg(target_has_atomic = "64")]
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
#[cfg(not(target_has_atomic = "64"))]
use std::sync::Mutex;

/// A 64-bit event counter shared between threads. MIPS32 and other 32-bit routers have no 64-bit atomics;
/// there a mutex guards it (drops are rare, and a 32-bit counter could wrap within a long flood).
#[derive(Default, Debug)]
pub struct Counter {
    #[cfg(target_has_atomic = "64")]
    n: AtomicU64,
    #[cfg(not(target_has_atomic = "64"))]
    n: Mutex<u64>,
}

impl Counter {
    #[cfg(target_has_atomic = "64")]
    pub fn add(&self, k: u64) {
        self.n.fetch_add(k, Relaxed);
    }

    #[cfg(target_has_atomic = "64")]
    pub fn get(&self) -> u64 {
        self.n.load(Relaxed)
    }

    #[cfg(not(target_has_atomic = "64"))]
    pub fn add(&self, k: u64) {
        let mut n = self.n.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.wrapping_add(k);
    }

    #[cfg(not(target_has_atomic = "64"))]
    pub fn get(&self) -> u64 {
        *self.n.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count one more.
    pub fn incr(&self) {
        self.add(1)
    }
}

#[derive(Default, Debug)]
pub struct Drops {
    /// Inside: datagrams from neither the relay nor the service.
    pub foreign: Counter,
    /// Control-shaped datagrams whose MAC failed (wrong key, forgery, corruption).
    pub badauth: Counter,
    /// Relay: datagrams from a tunnel that has no client; inside: service datagrams on a spare.
    pub unrouted: Counter,
    /// Relay: datagrams of waiting clients beyond what may be held.
    pub overflow: Counter,
    /// Relay: datagrams of new clients refused because the -n limit was reached.
    pub refused: Counter,
    /// Sends the kernel rejected (unreachable, too big, no buffer).
    pub senderr: Counter,
}

impl Drops {
    /// The tail of a status line: `refused=R dropped foreign=F badauth=B unrouted=U overflow=O senderr=E`.
    pub fn summary(&self) -> String {
        format!(
            "refused={} dropped foreign={} badauth={} unrouted={} overflow={} senderr={}",
            self.refused.get(),
            self.foreign.get(),
            self.badauth.get(),
            self.unrouted.get(),
            self.overflow.get(),
            self.senderr.get()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_counts_past_32_bits() {
        let c = Counter::default();
        c.add(u64::from(u32::MAX));
        c.incr();
        c.incr();
        assert_eq!(c.get(), u64::from(u32::MAX) + 2);
    }
}
