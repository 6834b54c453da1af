//! Datagrams the relay keeps for an address that has nowhere to go yet: a new client waiting for a spare, or an
//! address being challenged as a known tunnel's new one. This part of the table decides what is kept, in which
//! order waiting clients are served, and when held datagrams are given up; it stays within fixed bounds per
//! address, in bytes and in addresses, so that a burst of new clients is held and a flood is not.

use super::{Peer, Table};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Datagrams kept for an address until it has somewhere to go.
pub struct Held {
    pub datagrams: Vec<Vec<u8>>,
    pub since: Instant,
    /// The address claimed to be a known tunnel (authenticated keepalive) and is being challenged; otherwise
    /// it is a new client waiting for a spare.
    pub roam: bool,
}

/// Per waiting client and in all: a burst of new clients is held, a flood is not.
pub const HOLD_PER_ADDR: usize = 16;
pub const HOLD_TOTAL_BYTES: usize = 4 << 20;
/// Addresses held at once (waiting clients are also bounded by -n; roaming claims only by this).
pub const HOLD_ADDRS: usize = 4096;

/// Every address with held datagrams. Its addresses are the table's `Peer::Held` peers; the table's methods
/// below keep the two in step.
#[derive(Default)]
pub(super) struct HeldDatagrams {
    pub(super) by_addr: HashMap<SocketAddr, Held>,
    /// The bytes of all held datagrams.
    pub(super) bytes: usize,
    /// New clients in arrival order: the first gets the next spare.
    pub(super) waiting: VecDeque<SocketAddr>,
}

impl HeldDatagrams {
    /// `addr` is a new client waiting for a spare.
    pub(super) fn is_waiting(&self, addr: &SocketAddr) -> bool {
        self.by_addr.get(addr).is_some_and(|h| !h.roam)
    }

    /// Start holding for `addr` as a new client, queued for the next spare, unless something is already held
    /// for it. True if it is new.
    fn wait(&mut self, addr: SocketAddr, now: Instant) -> bool {
        if self.by_addr.contains_key(&addr) {
            return false;
        }
        self.waiting.push_back(addr);
        self.by_addr.insert(
            addr,
            Held {
                datagrams: Vec::new(),
                since: now,
                roam: false,
            },
        );
        true
    }

    /// Keep `data` for `addr`, which is held; false if its share is used up.
    fn push(&mut self, addr: &SocketAddr, data: &[u8]) -> bool {
        let Some(h) = self.by_addr.get_mut(addr) else {
            return false;
        };
        if h.datagrams.len() >= HOLD_PER_ADDR {
            return false;
        }
        h.datagrams.push(data.to_vec());
        self.bytes += data.len();
        true
    }

    /// Start holding for `addr` as a possible new address of a known tunnel; false if too many are held.
    fn expect_roam(&mut self, addr: SocketAddr, now: Instant) -> bool {
        if self.by_addr.len() >= HOLD_ADDRS {
            return false;
        }
        self.by_addr.insert(
            addr,
            Held {
                datagrams: Vec::new(),
                since: now,
                roam: true,
            },
        );
        true
    }

    fn take(&mut self, addr: &SocketAddr) -> Option<Held> {
        let h = self.by_addr.remove(addr)?;
        self.bytes -= h.datagrams.iter().map(Vec::len).sum::<usize>();
        if !h.roam {
            self.waiting.retain(|a| a != addr);
        }
        Some(h)
    }

    /// The addresses held for longer than `max_age`.
    fn older_than(&self, now: Instant, max_age: Duration) -> Vec<SocketAddr> {
        self.by_addr
            .iter()
            .filter(|(_, h)| now.duration_since(h.since) > max_age)
            .map(|(a, _)| *a)
            .collect()
    }
}

impl Table {
    /// Hold a datagram for `addr`: an address already held (a waiting client, or one being challenged as a
    /// tunnel's new address), or else a new client, queued for the next spare. False if the bounds say drop it.
    pub fn hold(&mut self, addr: SocketAddr, data: &[u8], now: Instant) -> bool {
        if self.held.bytes + data.len() > HOLD_TOTAL_BYTES {
            return false;
        }
        if self.held.wait(addr, now) {
            self.peers.insert(addr, Peer::Held);
        }
        self.held.push(&addr, data)
    }

    /// Mark `addr` as possibly a known tunnel's new address, so its data waits for the challenge's answer.
    pub fn expect_roam(&mut self, addr: SocketAddr, now: Instant) {
        if !self.peers.contains_key(&addr) && self.held.expect_roam(addr, now) {
            self.peers.insert(addr, Peer::Held);
        }
    }

    /// `addr` is a new client waiting for a spare.
    pub fn is_waiting(&self, addr: &SocketAddr) -> bool {
        self.held.is_waiting(addr)
    }

    /// Something is held for `addr`: a new client waiting for a spare, or a tunnel's possible new address.
    pub fn is_held(&self, addr: &SocketAddr) -> bool {
        self.held.by_addr.contains_key(addr)
    }

    /// How many datagrams are held for `addr`.
    pub fn held_datagrams(&self, addr: &SocketAddr) -> usize {
        self.held.by_addr.get(addr).map_or(0, |h| h.datagrams.len())
    }

    pub fn waiting(&self) -> usize {
        self.held.waiting.len()
    }

    /// The next waiting client and its held datagrams.
    pub fn next_waiting(&mut self) -> Option<(SocketAddr, Vec<Vec<u8>>)> {
        let addr = self.held.waiting.pop_front()?;
        let held = self.take_held(&addr)?;
        Some((addr, held.datagrams))
    }

    pub(super) fn take_held(&mut self, addr: &SocketAddr) -> Option<Held> {
        let h = self.held.take(addr)?;
        if self.peers.get(addr) == Some(&Peer::Held) {
            self.peers.remove(addr);
        }
        Some(h)
    }

    /// Held datagrams older than `max_age`; returns how many datagrams were dropped.
    pub fn expire_held(&mut self, now: Instant, max_age: Duration) -> usize {
        let old = self.held.older_than(now, max_age);
        old.iter()
            .filter_map(|a| self.take_held(a))
            .map(|h| h.datagrams.len())
            .sum()
    }
}
