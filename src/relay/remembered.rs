//! Remembered admissions: clients that have proven themselves (the service answered them through their tunnel)
//! and lost their tunnel — the inside agent restarted, the tunnel expired, was closed or dropped. With
//! `--wireguard` such a client's next datagram gets a new tunnel at once, without the handshake initiation a
//! stranger needs, for as long as its WireGuard session can live: [`REMEMBER_FOR`] after the last answer.
//!
//! Only the relay's own table adds entries, for a client whose tunnel carried an answer of the service, so no
//! stranger can add one. At most [`REMEMBERED_MAX`] sources (about 200 KB); at the bound the source answered
//! longest ago is forgotten (it needs a new initiation, as without this memory).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long after the service last answered a client it keeps its admission: WireGuard's REJECT_AFTER_TIME, the
/// longest a session lives without a new handshake.
pub const REMEMBER_FOR: Duration = Duration::from_secs(180);
/// The most sources remembered.
pub const REMEMBERED_MAX: usize = 4096;

#[derive(Default)]
pub struct Remembered {
    /// Source → when the service last answered it.
    last_answer: HashMap<SocketAddr, Instant>,
}

impl Remembered {
    /// `client` lost a tunnel through which the service last answered it at `at`.
    pub fn insert(&mut self, client: SocketAddr, at: Instant) {
        if self.last_answer.len() >= REMEMBERED_MAX && !self.last_answer.contains_key(&client) {
            // At the bound (rare: it takes thousands of proven clients within three minutes): a linear scan.
            let oldest = self
                .last_answer
                .iter()
                .min_by_key(|(a, t)| (**t, **a))
                .map(|(a, _)| *a);
            if let Some(a) = oldest {
                self.last_answer.remove(&a);
            }
        }
        let t = self.last_answer.entry(client).or_insert(at);
        *t = (*t).max(at);
    }

    /// Forget `src` (it has a tunnel again).
    pub fn forget(&mut self, src: &SocketAddr) {
        self.last_answer.remove(src);
    }

    pub fn contains(&self, src: &SocketAddr, now: Instant) -> bool {
        self.last_answer
            .get(src)
            .is_some_and(|t| now.saturating_duration_since(*t) <= REMEMBER_FOR)
    }

    /// Forget what is older than [`REMEMBER_FOR`].
    pub fn expire(&mut self, now: Instant) {
        self.last_answer
            .retain(|_, t| now.saturating_duration_since(*t) <= REMEMBER_FOR);
    }

    pub fn len(&self) -> usize {
        self.last_answer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_answer.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u32) -> SocketAddr {
        SocketAddr::from((std::net::Ipv4Addr::from(0xc000_0200 + i), 1000))
    }

    #[test]
    fn a_source_is_admitted_within_its_session_lifetime_until_it_has_a_tunnel_again() {
        let now = Instant::now();
        let mut r = Remembered::default();
        r.insert(addr(1), now);
        r.insert(addr(2), now);
        assert!(r.contains(&addr(1), now + REMEMBER_FOR));
        r.forget(&addr(1));
        assert!(!r.contains(&addr(1), now), "it got a tunnel");
        assert!(
            !r.contains(&addr(2), now + REMEMBER_FOR + Duration::from_millis(1)),
            "too late"
        );
        assert!(!r.contains(&addr(3), now), "never proven");
        // A later answer extends it; an earlier one does not shorten it.
        r.insert(addr(2), now + Duration::from_secs(10));
        r.insert(addr(2), now);
        assert!(r.contains(&addr(2), now + REMEMBER_FOR + Duration::from_secs(10)));
    }

    #[test]
    fn at_the_bound_the_source_answered_longest_ago_goes() {
        let now = Instant::now();
        let mut r = Remembered::default();
        for i in 0..REMEMBERED_MAX as u32 {
            r.insert(addr(i), now + Duration::from_millis(u64::from(i)));
        }
        r.insert(addr(1_000_000), now + Duration::from_secs(10));
        assert_eq!(r.len(), REMEMBERED_MAX);
        assert!(!r.contains(&addr(0), now), "the oldest is forgotten");
        assert!(r.contains(&addr(1), now) && r.contains(&addr(1_000_000), now));
        r.expire(now + REMEMBER_FOR + Duration::from_secs(5));
        assert_eq!(r.len(), 1);
    }
}
