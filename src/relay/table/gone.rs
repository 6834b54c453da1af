//! The table's memory of tunnels that left it (or were kept out of it), for as long as a captured cookie of
//! theirs stays valid. It decides whether a verified response may register a tunnel: never one closed or
//! dropped for certain, and one that expired or was refused only with a counter fresher than its last, which
//! a replay or a late copy cannot have.

use super::{Table, TunnelKey};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Tunnels removed (or whose response was refused) within the last cookie lifetime. A response captured from a
/// tunnel before it went carries a cookie that stays valid for a few seconds; replayed from the tunnel's old
/// address, it must not register a dead spare. Only tunnels that once authenticated enter, and each leaves
/// after the cookie lifetime.
#[derive(Default)]
pub(super) struct Gone {
    tunnels: HashMap<TunnelKey, Left>,
}

/// How a tunnel left the table (or was kept out of it), for as long as a captured cookie of it could be replayed.
#[derive(Clone, Copy, Debug)]
struct Left {
    at: Instant,
    /// `None`: closed by the inside or dropped by the relay, dead for certain: it never comes back.
    /// `Some(c)`: expired (no keepalive for a while), or its response `c` was refused for want of room; it may
    /// register later, but only with a counter above `c`, which a replay or a late copy cannot have.
    last_counter: Option<u64>,
}

impl Gone {
    /// Tunnel `key` is dead for certain (closed, dropped, or its restore refused): it never comes back.
    pub(super) fn for_good(&mut self, key: TunnelKey, now: Instant) {
        let left = Left {
            at: now,
            last_counter: None,
        };
        self.tunnels.insert(key, left);
    }

    /// Tunnel `key` expired with its last counter: only a fresher one may register it again.
    pub(super) fn expired(&mut self, key: TunnelKey, counter: u64, now: Instant) {
        let left = Left {
            at: now,
            last_counter: Some(counter),
        };
        self.tunnels.insert(key, left);
    }

    /// How many removed (or refused) tunnels are remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.tunnels.len()
    }
}

impl Table {
    /// Whether a response with `counter` may register tunnel `key`: not if it was closed or dropped recently, nor
    /// if it expired or was refused recently and the counter is not fresher than its last one (a replay).
    pub fn may_register(&self, key: &TunnelKey, counter: u64) -> bool {
        match self.gone.tunnels.get(key) {
            None => true,
            Some(Left {
                last_counter: Some(c),
                ..
            }) => counter > *c,
            Some(_) => false,
        }
    }

    /// Forget removals older than `max_age` (the longest a captured cookie stays valid).
    pub fn expire_gone(&mut self, now: Instant, max_age: Duration) {
        self.gone
            .tunnels
            .retain(|_, g| now.saturating_duration_since(g.at) <= max_age);
    }

    /// A verified response of an unknown tunnel, refused (no room for another spare): no copy of it, late or
    /// replayed, may register the tunnel later when there is room. Its agent retries with a fresh one. Only the
    /// inside agent can add these (the response verified), and only for the cookie's lifetime.
    pub fn refuse(&mut self, key: TunnelKey, counter: u64, now: Instant) {
        let g = self.gone.tunnels.entry(key).or_insert(Left {
            at: now,
            last_counter: Some(counter),
        });
        // The relay refuses only what `may_register` let through, so `counter` is the larger; the max guards the
        // table's own promise, whoever calls it.
        if let Some(c) = &mut g.last_counter {
            *c = (*c).max(counter);
            g.at = now;
        }
    }

    /// A restore this relay refused (it answered with drop): no copy of that response may restore it later.
    pub fn refuse_for_good(&mut self, key: TunnelKey, now: Instant) {
        self.gone.for_good(key, now);
    }
}
