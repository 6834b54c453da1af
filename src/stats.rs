//! Counters for the status line and `--metrics`. Drops and refusals are rare, so their increments stay off the
//! per-datagram path; what is forwarded is counted by each tunnel thread in plain integers and published once a
//! batch ([`Tally`]).

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

/// What one thread forwarded ([`Traffic`]), published by that thread alone after each batch and read by any
/// thread: no lock and no read-modify-write on the data path. With 64-bit atomics, four relaxed stores; without
/// (MIPS32), a sequence lock over 32-bit halves, which a reader retries while a publish is under way.
#[derive(Default, Debug)]
pub struct Tally {
    #[cfg(target_has_atomic = "64")]
    words: [AtomicU64; 4],
    #[cfg(not(target_has_atomic = "64"))]
    words: [std::sync::atomic::AtomicU32; 8],
    #[cfg(not(target_has_atomic = "64"))]
    seq: std::sync::atomic::AtomicU32,
    /// The writer is done: what [`Tally::read`] returns is final.
    done: std::sync::atomic::AtomicBool,
}

use crate::metrics::Traffic;
use std::sync::atomic::Ordering::{Acquire, Release};

fn words(t: &Traffic) -> [u64; 4] {
    [t.in_datagrams, t.in_bytes, t.out_datagrams, t.out_bytes]
}

fn traffic(w: [u64; 4]) -> Traffic {
    Traffic {
        in_datagrams: w[0],
        in_bytes: w[1],
        out_datagrams: w[2],
        out_bytes: w[3],
    }
}

impl Tally {
    /// The writer's totals so far. Only one thread may publish.
    #[cfg(target_has_atomic = "64")]
    pub fn publish(&self, t: &Traffic) {
        for (a, v) in self.words.iter().zip(words(t)) {
            a.store(v, Relaxed);
        }
    }

    #[cfg(target_has_atomic = "64")]
    pub fn read(&self) -> Traffic {
        traffic([0, 1, 2, 3].map(|i| self.words[i].load(Relaxed)))
    }

    #[cfg(not(target_has_atomic = "64"))]
    pub fn publish(&self, t: &Traffic) {
        use std::sync::atomic::{fence, Ordering::Relaxed};
        let s = self.seq.load(Relaxed);
        self.seq.store(s.wrapping_add(1), Relaxed);
        fence(Release);
        for (i, v) in words(t).into_iter().enumerate() {
            self.words[2 * i].store(v as u32, Relaxed);
            self.words[2 * i + 1].store((v >> 32) as u32, Relaxed);
        }
        self.seq.store(s.wrapping_add(2), Release);
    }

    #[cfg(not(target_has_atomic = "64"))]
    pub fn read(&self) -> Traffic {
        use std::sync::atomic::{fence, Ordering::Relaxed};
        let mut w = [0u64; 4];
        // A publish is a few stores: a reader that keeps meeting one is yielded to the writer, and gives up (with a
        // possibly torn value) only after a million tries, which no scheduler makes happen.
        for attempt in 0..1_000_000u32 {
            let s1 = self.seq.load(Acquire);
            if s1 % 2 == 0 {
                for (i, v) in w.iter_mut().enumerate() {
                    *v = u64::from(self.words[2 * i].load(Relaxed))
                        | u64::from(self.words[2 * i + 1].load(Relaxed)) << 32;
                }
                fence(Acquire);
                if self.seq.load(Relaxed) == s1 {
                    break;
                }
            }
            if attempt % 64 == 63 {
                std::thread::yield_now();
            }
        }
        traffic(w)
    }

    /// The writer publishes no more (its thread ended).
    pub fn finish(&self) {
        self.done.store(true, Release);
    }

    pub fn finished(&self) -> bool {
        self.done.load(Acquire)
    }
}

/// The family of the drop counters, on both agents.
pub const DROPPED: &str = "dropped_total";
pub const DROPPED_HELP: &str = "Datagrams dropped, by the status line's name for the reason.";

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
    /// The `dropped_total` samples, one per counter, each labelled `reason` as the status line names it, after
    /// `labels` (a home's).
    pub fn write(&self, m: &mut crate::metrics::Metrics, labels: &[(&str, &str)]) {
        for (reason, n) in [
            ("refused", self.refused.get()),
            ("foreign", self.foreign.get()),
            ("badauth", self.badauth.get()),
            ("unrouted", self.unrouted.get()),
            ("overflow", self.overflow.get()),
            ("senderr", self.senderr.get()),
        ] {
            let mut l = labels.to_vec();
            l.push(("reason", reason));
            m.counter(DROPPED, DROPPED_HELP, &l, n);
        }
    }

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
    fn a_tally_reads_what_its_writer_published_past_32_bits() {
        let t = std::sync::Arc::new(Tally::default());
        let w = t.clone();
        let writer = std::thread::spawn(move || {
            let mut sent = Traffic::default();
            for i in 0..100_000u64 {
                sent.in_datagrams = (1 << 32) + i;
                sent.in_bytes = 2 * sent.in_datagrams;
                w.publish(&sent);
            }
            w.finish();
        });
        // Values only grow, and none is torn (bytes stay twice the datagrams once both are read in one go on
        // 32-bit; with 64-bit atomics each word is whole).
        let mut last = 0;
        while !t.finished() {
            let r = t.read();
            assert!(r.in_datagrams >= last && (r.in_datagrams == 0 || r.in_datagrams >= 1 << 32));
            last = r.in_datagrams;
        }
        writer.join().unwrap();
        let r = t.read();
        assert_eq!(
            (r.in_datagrams, r.in_bytes),
            ((1 << 32) + 99_999, 2 * ((1 << 32) + 99_999))
        );
    }

    #[test]
    fn counter_counts_past_32_bits() {
        let c = Counter::default();
        c.add(u64::from(u32::MAX));
        c.incr();
        c.incr();
        assert_eq!(c.get(), u64::from(u32::MAX) + 2);
    }
}
