//! The relay's tunnel/client table. One hash lookup on the source address routes every datagram; the rest
//! (spares, waiting clients, roaming) changes only on control messages and new clients.

use crate::relay::remembered::Remembered;
use crate::wire::{Instance, Message};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A tunnel is named by the inside agent's run and its number within that run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TunnelKey {
    pub run: Instance,
    pub id: u32,
}

impl TunnelKey {
    /// The tunnel a control message is about.
    pub fn of(msg: &Message) -> TunnelKey {
        TunnelKey {
            run: msg.instance,
            id: msg.tunnel,
        }
    }
}

/// Where a tunnel sits in the table, while it is live: the index the table hands out and takes back. A slot
/// of a removed tunnel is reused, so a slot held across a removal may name another tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(usize);

/// The index, as the table's own checks name a tunnel.
impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The relay's record of one tunnel; named apart from the inside agent's tunnel thread, which is another thing.
pub struct RelayTunnel {
    pub key: TunnelKey,
    /// The inside tunnel socket's public address, as the relay sees it (after every NAT).
    pub addr: SocketAddr,
    pub client: Option<SocketAddr>,
    /// Highest authenticated counter seen: anything not above it is a replay or a late duplicate.
    pub counter: u64,
    pub last_keepalive: Instant,
    /// The keepalive interval of the inside agent that runs it (it says so in every message): the tunnel is
    /// forgotten after twice this without a keepalive.
    pub keepalive: Duration,
    /// When its client was given it.
    pub since: Instant,
    /// Its client has received a datagram from the service through it: the tunnel is *proven*, and no one's
    /// one-way traffic can take it. An unproven tunnel of a full relay may be handed to a newcomer.
    pub answered: bool,
    /// When the service last answered its client through it (meaningful once `answered`).
    pub last_answer: Instant,
    /// The address the service sees it at, as the inside agent says (for the table of SIGUSR1).
    pub local: Option<SocketAddr>,
}

/// A tunnel restored with its client ([`Table::restore`]).
pub struct Restored {
    pub tunnel: Slot,
    /// A tunnel displaced from the restored one's address: the caller drops it.
    pub displaced: Option<Slot>,
    /// The client's datagrams held while it waited: they go into the tunnel, in order.
    pub held: Vec<Vec<u8>>,
}

/// What the source address of a datagram is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    Tunnel(Slot),
    Client(Slot),
    /// Its datagrams are held: a new client waiting for a spare, or a tunnel's possible new address.
    Held,
}

/// Where a data datagram goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// A client's datagram: to its tunnel's address.
    To(SocketAddr),
    /// A datagram of the service to the client of tunnel `.1`, whose address is `.0`: it proves the tunnel (see
    /// [`RelayTunnel::answered`]).
    Answer(SocketAddr, Slot),
    Hold,
    /// From a tunnel that has no client (yet).
    Unrouted,
    /// Never seen: a new client.
    New,
}

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

#[derive(Default)]
pub struct Table {
    peers: HashMap<SocketAddr, Peer>,
    slots: Vec<Option<RelayTunnel>>,
    free: Vec<Slot>,
    by_key: HashMap<TunnelKey, Slot>,
    spares: VecDeque<Slot>,
    /// New clients in arrival order: the first gets the next spare.
    waiting: VecDeque<SocketAddr>,
    held: HashMap<SocketAddr, Held>,
    held_bytes: usize,
    active: usize,
    /// Tunnels removed (or whose response was refused) within the last cookie lifetime. A response captured from a
    /// tunnel before it went carries a cookie that stays valid for a few seconds; replayed from the tunnel's old
    /// address, it must not register a dead spare. Only tunnels that once authenticated enter, and each leaves
    /// after the cookie lifetime.
    gone: HashMap<TunnelKey, Gone>,
    /// Tunnels with a client and no answer yet, oldest first, with the time they were given it (stale entries
    /// are skipped lazily).
    unproven: VecDeque<(Slot, Instant)>,
    /// Clients that proved themselves and lost their tunnel (see remembered.rs).
    remembered: Remembered,
}

/// How a tunnel left the table (or was kept out of it), for as long as a captured cookie of it could be replayed.
#[derive(Clone, Copy, Debug)]
struct Gone {
    at: Instant,
    /// `None`: closed by the inside or dropped by the relay, dead for certain: it never comes back.
    /// `Some(c)`: expired (no keepalive for a while), or its response `c` was refused for want of room; it may
    /// register later, but only with a counter above `c`, which a replay or a late copy cannot have.
    last_counter: Option<u64>,
}

impl Table {
    /// The per-datagram lookup.
    #[inline]
    pub fn route(&self, src: &SocketAddr) -> Route {
        match self.peers.get(src) {
            // A stale index would be a bug; it routes nowhere rather than aborting.
            Some(Peer::Client(t)) => match self.get(*t) {
                Some(tun) => Route::To(tun.addr),
                None => Route::Unrouted,
            },
            Some(Peer::Tunnel(t)) => match self.get(*t) {
                Some(RelayTunnel {
                    client: Some(c), ..
                }) => Route::Answer(*c, *t),
                _ => Route::Unrouted,
            },
            Some(Peer::Held) => Route::Hold,
            None => Route::New,
        }
    }

    /// Every live tunnel, in slot order.
    pub fn tunnels(&self) -> impl Iterator<Item = &RelayTunnel> {
        self.slots.iter().flatten()
    }

    /// The tunnel at slot `t`, if it is live.
    pub fn get(&self, t: Slot) -> Option<&RelayTunnel> {
        self.slots.get(t.0)?.as_ref()
    }

    fn get_mut(&mut self, t: Slot) -> Option<&mut RelayTunnel> {
        self.slots.get_mut(t.0)?.as_mut()
    }

    pub fn find(&self, key: &TunnelKey) -> Option<Slot> {
        self.by_key.get(key).copied()
    }

    pub fn active(&self) -> usize {
        self.active
    }

    pub fn spares(&self) -> usize {
        self.spares.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Frees `addr` for a tunnel that just proved itself there, and returns the tunnel it displaces, which the
    /// caller must drop: the tunnel a client at `addr` had been given (a tunnel whose NAT mapping changed and
    /// whose data arrived before its keepalive), or another tunnel that was at `addr` (a NAT handed a dead
    /// mapping's port to a new socket). Either is left without its address or client, so it is routed nowhere.
    fn claim(&mut self, addr: SocketAddr) -> Option<Slot> {
        match self.peers.remove(&addr) {
            Some(Peer::Client(x)) => {
                let tun = self.get_mut(x)?;
                tun.client = None;
                self.active -= 1;
                Some(x)
            }
            Some(Peer::Tunnel(x)) => Some(x),
            Some(Peer::Held) => {
                self.take_held(&addr);
                None
            }
            None => None,
        }
    }

    /// A new spare, verified by challenge. Returns its index and a tunnel displaced from `addr`, if any.
    pub fn register(
        &mut self,
        key: TunnelKey,
        addr: SocketAddr,
        counter: u64,
        keepalive: Duration,
        now: Instant,
    ) -> (Slot, Option<Slot>) {
        let displaced = self.claim(addr);
        let tunnel = RelayTunnel {
            key,
            addr,
            client: None,
            counter,
            last_keepalive: now,
            keepalive,
            since: now,
            answered: false,
            last_answer: now,
            local: None,
        };
        let t = match self.free.pop() {
            Some(t) => {
                self.slots[t.0] = Some(tunnel);
                t
            }
            None => {
                self.slots.push(Some(tunnel));
                Slot(self.slots.len() - 1)
            }
        };
        self.by_key.insert(key, t);
        self.peers.insert(addr, Peer::Tunnel(t));
        self.spares.push_back(t);
        (t, displaced)
    }

    pub fn refresh(&mut self, t: Slot, counter: u64, keepalive: Duration, now: Instant) {
        if let Some(tun) = self.get_mut(t) {
            tun.counter = counter;
            tun.last_keepalive = now;
            tun.keepalive = keepalive;
        }
    }

    /// The service answered through tunnel `t`.
    #[inline]
    pub fn answered(&mut self, t: Slot, now: Instant) {
        if let Some(tun) = self.get_mut(t) {
            tun.answered = true;
            tun.last_answer = now;
        }
    }

    /// The inside agent says the service sees tunnel `t` at `local`.
    pub fn set_local(&mut self, t: Slot, local: Option<SocketAddr>) {
        if let (Some(tun), Some(l)) = (self.get_mut(t), local) {
            tun.local = Some(l);
        }
    }

    /// Clients that proved themselves and lost their tunnel.
    pub fn remembered(&mut self) -> &mut Remembered {
        &mut self.remembered
    }

    /// A verified response of a tunnel the relay does not know, which says it carries `client` (the relay
    /// restarted, or forgot the tunnel while its line was down): register it at `addr` with that client again, so
    /// the client's datagrams take the same tunnel and the service sees the same source. Refused (with the
    /// reason, for the log) if the client's address is meanwhile anything but new or waiting: one client is
    /// never routed two ways.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        &mut self,
        key: TunnelKey,
        addr: SocketAddr,
        client: SocketAddr,
        counter: u64,
        keepalive: Duration,
        answered: bool,
        now: Instant,
    ) -> Result<Restored, &'static str> {
        if client == addr {
            return Err("its client's address is its own");
        }
        let held = match self.peers.get(&client) {
            None => Vec::new(),
            Some(Peer::Held) if self.held.get(&client).is_some_and(|h| !h.roam) => self
                .take_held(&client)
                .map(|h| h.datagrams)
                .unwrap_or_default(),
            Some(Peer::Held) => return Err("its client's address claims to be a tunnel's"),
            Some(Peer::Client(_)) => return Err("its client has another tunnel"),
            Some(Peer::Tunnel(_)) => return Err("its client's address is another tunnel's"),
        };
        let (t, displaced) = self.register(key, addr, counter, keepalive, now);
        self.spares.retain(|&s| s != t);
        self.assign(client, t, now);
        if answered {
            self.answered(t, now);
        }
        self.remembered.forget(&client);
        Ok(Restored {
            tunnel: t,
            displaced,
            held,
        })
    }

    /// The unproven tunnel that has carried its client longest, if that is at least `min_age`.
    pub fn oldest_unproven(&mut self, now: Instant, min_age: Duration) -> Option<Slot> {
        while let Some(&(t, since)) = self.unproven.front() {
            let live = self
                .get(t)
                .is_some_and(|tun| tun.client.is_some() && !tun.answered && tun.since == since);
            if live {
                return (now.saturating_duration_since(since) >= min_age).then_some(t);
            }
            self.unproven.pop_front();
        }
        None
    }

    /// Hand unproven tunnel `t` to `client`; returns the client it had.
    pub fn reassign(&mut self, t: Slot, client: SocketAddr, now: Instant) -> Option<SocketAddr> {
        let tun = self.get_mut(t)?;
        let old = tun.client.replace(client)?;
        tun.since = now;
        tun.answered = false;
        self.peers.remove(&old);
        self.peers.insert(client, Peer::Client(t));
        self.note_unproven(t, now);
        Some(old)
    }

    /// Queue `t` as unproven since `now` (oldest first). Entries that went stale (proven, reassigned, gone) are
    /// skipped when they reach the front, and the queue is compacted so it never holds more than about twice
    /// the tunnels.
    fn note_unproven(&mut self, t: Slot, now: Instant) {
        self.unproven.push_back((t, now));
        if self.unproven.len() > 2 * self.slots.len() + 16 {
            let slots = &self.slots;
            self.unproven.retain(|&(t, since)| {
                matches!(slots.get(t.0), Some(Some(tun)) if tun.client.is_some() && !tun.answered && tun.since == since)
            });
        }
    }

    /// A known tunnel proved it is now at `addr`. Returns the tunnel displaced from `addr`, if any, and the
    /// datagrams that arrived from `addr` while it was being challenged.
    pub fn move_to(&mut self, t: Slot, addr: SocketAddr) -> (Option<Slot>, Vec<Vec<u8>>) {
        let held = self
            .take_held(&addr)
            .map(|h| h.datagrams)
            .unwrap_or_default();
        let displaced = self.claim(addr);
        if let Some(tun) = self.get_mut(t) {
            let old = std::mem::replace(&mut tun.addr, addr);
            self.peers.remove(&old);
            self.peers.insert(addr, Peer::Tunnel(t));
        }
        (displaced, held)
    }

    /// Whether a response with `counter` may register tunnel `key`: not if it was closed or dropped recently, nor
    /// if it expired or was refused recently and the counter is not fresher than its last one (a replay).
    pub fn may_register(&self, key: &TunnelKey, counter: u64) -> bool {
        match self.gone.get(key) {
            None => true,
            Some(Gone {
                last_counter: Some(c),
                ..
            }) => counter > *c,
            Some(_) => false,
        }
    }

    /// Forget removals older than `max_age` (the longest a captured cookie stays valid).
    pub fn expire_gone(&mut self, now: Instant, max_age: Duration) {
        self.gone
            .retain(|_, g| now.saturating_duration_since(g.at) <= max_age);
    }

    /// How many removed (or refused) tunnels are remembered.
    pub fn gone(&self) -> usize {
        self.gone.len()
    }

    /// Remove a tunnel that is dead for certain (closed by the inside agent, or dropped by the relay), and
    /// remember it so that a replay cannot bring it back.
    pub fn close(&mut self, t: Slot, now: Instant) -> Option<RelayTunnel> {
        let tun = self.remove(t)?;
        let gone = Gone {
            at: now,
            last_counter: None,
        };
        self.gone.insert(tun.key, gone);
        Some(tun)
    }

    /// A verified response of an unknown tunnel, refused (no room for another spare): no copy of it, late or
    /// replayed, may register the tunnel later when there is room. Its agent retries with a fresh one. Only the
    /// inside agent can add these (the response verified), and only for the cookie's lifetime.
    pub fn refuse(&mut self, key: TunnelKey, counter: u64, now: Instant) {
        let g = self.gone.entry(key).or_insert(Gone {
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
        self.gone.insert(
            key,
            Gone {
                at: now,
                last_counter: None,
            },
        );
    }

    /// `addr` is a new client waiting for a spare.
    pub fn is_waiting(&self, addr: &SocketAddr) -> bool {
        self.held.get(addr).is_some_and(|h| !h.roam)
    }

    pub fn take_spare(&mut self) -> Option<Slot> {
        self.spares.pop_front()
    }

    pub fn assign(&mut self, client: SocketAddr, t: Slot, now: Instant) {
        if let Some(tun) = self.get_mut(t) {
            tun.client = Some(client);
            tun.since = now;
            tun.answered = false;
            self.peers.insert(client, Peer::Client(t));
            self.active += 1;
            self.note_unproven(t, now);
            self.remembered.forget(&client);
        }
    }

    /// Remove tunnel `t`; a client it carried that the service answered is remembered as proven.
    pub fn remove(&mut self, t: Slot) -> Option<RelayTunnel> {
        let tun = self.slots.get_mut(t.0)?.take()?;
        self.free.push(t);
        self.by_key.remove(&tun.key);
        if self.peers.get(&tun.addr) == Some(&Peer::Tunnel(t)) {
            self.peers.remove(&tun.addr);
        }
        if let Some(c) = tun.client {
            self.peers.remove(&c);
            self.active -= 1;
            if tun.answered {
                self.remembered.insert(c, tun.last_answer);
            }
        } else {
            self.spares.retain(|&s| s != t);
        }
        Some(tun)
    }

    /// Every tunnel of a run of the inside agent, e.g. one that has been replaced by a restart.
    pub fn remove_instance(&mut self, instance: Instance) -> Vec<RelayTunnel> {
        let mut ts: Vec<Slot> = self
            .by_key
            .iter()
            .filter(|(k, _)| k.run == instance)
            .map(|(_, &t)| t)
            .collect();
        // In slot order, not the map's (randomly seeded) order: the free list, and so which slot the next
        // tunnel gets, must not vary from run to run, or a seeded random test would not replay.
        ts.sort_unstable();
        ts.into_iter().filter_map(|t| self.remove(t)).collect()
    }

    /// Tunnels with no keepalive within twice their interval, remembered with their last counter.
    pub fn expire(&mut self, now: Instant) -> Vec<RelayTunnel> {
        let old: Vec<Slot> = (0..self.slots.len())
            .filter(|&t| matches!(&self.slots[t], Some(tun) if now.saturating_duration_since(tun.last_keepalive) > 2 * tun.keepalive))
            .map(Slot)
            .collect();
        let gone: Vec<RelayTunnel> = old.into_iter().filter_map(|t| self.remove(t)).collect();
        for tun in &gone {
            let g = Gone {
                at: now,
                last_counter: Some(tun.counter),
            };
            self.gone.insert(tun.key, g);
        }
        gone
    }

    /// Hold a datagram for `addr`: an address already held (a waiting client, or one being challenged as a
    /// tunnel's new address), or else a new client, queued for the next spare. False if the bounds say drop it.
    pub fn hold(&mut self, addr: SocketAddr, data: &[u8], now: Instant) -> bool {
        if self.held_bytes + data.len() > HOLD_TOTAL_BYTES {
            return false;
        }
        let h = match self.held.entry(addr) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                self.waiting.push_back(addr);
                self.peers.insert(addr, Peer::Held);
                e.insert(Held {
                    datagrams: Vec::new(),
                    since: now,
                    roam: false,
                })
            }
        };
        if h.datagrams.len() >= HOLD_PER_ADDR {
            return false;
        }
        h.datagrams.push(data.to_vec());
        self.held_bytes += data.len();
        true
    }

    /// Mark `addr` as possibly a known tunnel's new address, so its data waits for the challenge's answer.
    pub fn expect_roam(&mut self, addr: SocketAddr, now: Instant) {
        if !self.peers.contains_key(&addr) && self.held.len() < HOLD_ADDRS {
            self.held.insert(
                addr,
                Held {
                    datagrams: Vec::new(),
                    since: now,
                    roam: true,
                },
            );
            self.peers.insert(addr, Peer::Held);
        }
    }

    /// The next waiting client and its held datagrams.
    pub fn next_waiting(&mut self) -> Option<(SocketAddr, Vec<Vec<u8>>)> {
        let addr = self.waiting.pop_front()?;
        let held = self.take_held(&addr)?;
        Some((addr, held.datagrams))
    }

    fn take_held(&mut self, addr: &SocketAddr) -> Option<Held> {
        let h = self.held.remove(addr)?;
        self.held_bytes -= h.datagrams.iter().map(Vec::len).sum::<usize>();
        if self.peers.get(addr) == Some(&Peer::Held) {
            self.peers.remove(addr);
        }
        if !h.roam {
            self.waiting.retain(|a| a != addr);
        }
        Some(h)
    }

    /// Held datagrams older than `max_age`; returns how many datagrams were dropped.
    pub fn expire_held(&mut self, now: Instant, max_age: Duration) -> usize {
        let old: Vec<SocketAddr> = self
            .held
            .iter()
            .filter(|(_, h)| now.duration_since(h.since) > max_age)
            .map(|(a, _)| *a)
            .collect();
        old.iter()
            .filter_map(|a| self.take_held(a))
            .map(|h| h.datagrams.len())
            .sum()
    }
}

impl Table {
    /// Checks that the table agrees with itself and stays within its bounds; the first problem, if any. Cheap
    /// enough (linear in the table) to run after every event of a randomized test.
    pub fn check(&self) -> Result<(), String> {
        let live: Vec<Slot> = (0..self.slots.len())
            .filter(|&t| self.slots[t].is_some())
            .map(Slot)
            .collect();
        if live.len() + self.free.len() != self.slots.len() {
            return Err(format!(
                "{} live + {} free != {} slots",
                live.len(),
                self.free.len(),
                self.slots.len()
            ));
        }
        if self.by_key.len() != live.len() {
            return Err(format!(
                "{} keys for {} live tunnels",
                self.by_key.len(),
                live.len()
            ));
        }
        let mut active = 0;
        for &t in &live {
            let tun = self.get(t).ok_or("live slot vanished")?;
            if self.by_key.get(&tun.key) != Some(&t) {
                return Err(format!("tunnel {t} not found by its key"));
            }
            if self.peers.get(&tun.addr) != Some(&Peer::Tunnel(t)) {
                return Err(format!(
                    "tunnel {t}'s address {} does not lead to it",
                    tun.addr
                ));
            }
            let spare = self.spares.contains(&t);
            match tun.client {
                Some(c) => {
                    active += 1;
                    if self.peers.get(&c) != Some(&Peer::Client(t)) {
                        return Err(format!("tunnel {t}'s client {c} does not lead to it"));
                    }
                    if spare {
                        return Err(format!("tunnel {t} has a client and is a spare"));
                    }
                    if c == tun.addr {
                        return Err(format!("tunnel {t} is its own client"));
                    }
                }
                None if !spare => return Err(format!("tunnel {t} has no client and is no spare")),
                None => {}
            }
        }
        if active != self.active {
            return Err(format!(
                "{active} tunnels with clients, counted {}",
                self.active
            ));
        }
        for (addr, peer) in &self.peers {
            let ok = match peer {
                Peer::Tunnel(t) => self.get(*t).is_some_and(|tun| tun.addr == *addr),
                Peer::Client(t) => self.get(*t).is_some_and(|tun| tun.client == Some(*addr)),
                Peer::Held => self.held.contains_key(addr),
            };
            if !ok {
                return Err(format!("{addr} is a stale {peer:?}"));
            }
        }
        let bytes: usize = self
            .held
            .values()
            .flat_map(|h| &h.datagrams)
            .map(Vec::len)
            .sum();
        if bytes != self.held_bytes || bytes > HOLD_TOTAL_BYTES {
            return Err(format!("held {bytes} bytes, counted {}", self.held_bytes));
        }
        if self
            .held
            .values()
            .any(|h| h.datagrams.len() > HOLD_PER_ADDR)
        {
            return Err("more datagrams held for one address than allowed".into());
        }
        if self.remembered.len() > crate::relay::remembered::REMEMBERED_MAX {
            return Err(format!("{} remembered admissions", self.remembered.len()));
        }
        let waiting = self.held.values().filter(|h| !h.roam).count();
        let roaming = self.held.len() - waiting;
        if waiting != self.waiting.len() || roaming > HOLD_ADDRS {
            return Err(format!(
                "{waiting} waiting held, {} queued, {roaming} roaming",
                self.waiting.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    const KA: Duration = Duration::from_secs(1);

    fn key(n: u32) -> TunnelKey {
        TunnelKey {
            run: Instance([1; 16]),
            id: n,
        }
    }

    #[test]
    fn spare_is_handed_to_a_new_client_and_routes_both_ways() {
        let mut tb = Table::default();
        let now = Instant::now();
        let (t, _) = tb.register(key(1), addr(1000), 1, KA, now);
        assert_eq!(tb.route(&addr(1000)), Route::Unrouted);
        assert_eq!(tb.route(&addr(5)), Route::New);
        assert_eq!(tb.take_spare(), Some(t));
        tb.assign(addr(5), t, now);
        assert_eq!(tb.route(&addr(5)), Route::To(addr(1000)));
        assert_eq!(tb.route(&addr(1000)), Route::Answer(addr(5), t));
        assert_eq!((tb.active(), tb.spares()), (1, 0));
        tb.remove(t);
        assert_eq!(tb.route(&addr(5)), Route::New);
        assert_eq!(tb.route(&addr(1000)), Route::New);
        assert_eq!(tb.active(), 0);
    }

    #[test]
    fn waiting_clients_are_served_in_order_with_their_datagrams() {
        let mut tb = Table::default();
        let now = Instant::now();
        assert!(tb.hold(addr(5), b"a", now));
        assert!(tb.hold(addr(6), b"x", now));
        assert!(tb.hold(addr(5), b"b", now));
        assert_eq!(tb.route(&addr(5)), Route::Hold);
        assert_eq!(tb.waiting(), 2);
        let (a, d) = tb.next_waiting().unwrap();
        assert_eq!((a, d), (addr(5), vec![b"a".to_vec(), b"b".to_vec()]));
        assert_eq!(tb.route(&addr(5)), Route::New);
        assert_eq!(tb.next_waiting().unwrap().0, addr(6));
        assert!(tb.next_waiting().is_none());
        assert_eq!(tb.held_bytes, 0);
    }

    #[test]
    fn holding_is_bounded() {
        let mut tb = Table::default();
        let now = Instant::now();
        for _ in 0..HOLD_PER_ADDR {
            assert!(tb.hold(addr(5), b"a", now));
        }
        assert!(!tb.hold(addr(5), b"a", now));
        let big = vec![0u8; 60_000];
        let mut port = 100;
        while tb.hold(addr(port), &big, now) {
            port += 1;
        }
        assert!(tb.held_bytes <= HOLD_TOTAL_BYTES);
        assert_eq!(
            tb.expire_held(now + Duration::from_secs(60), Duration::from_secs(1)),
            HOLD_PER_ADDR + (port - 100) as usize
        );
        assert_eq!((tb.waiting(), tb.held_bytes), (0, 0));
    }

    #[test]
    fn roaming_tunnel_keeps_its_client_and_reclaims_a_mistaken_client_address() {
        let mut tb = Table::default();
        let now = Instant::now();
        let (t, _) = tb.register(key(1), addr(1000), 1, KA, now);
        tb.take_spare();
        tb.assign(addr(5), t, now);
        // The tunnel's data arrived from its new address before its keepalive: taken for a new client.
        let (s, _) = tb.register(key(2), addr(2000), 1, KA, now);
        tb.take_spare();
        tb.assign(addr(1001), s, now);
        let (displaced, held) = tb.move_to(t, addr(1001));
        assert_eq!((displaced, held.len()), (Some(s), 0));
        assert_eq!(tb.route(&addr(1001)), Route::Answer(addr(5), t));
        assert_eq!(tb.route(&addr(5)), Route::To(addr(1001)));
        assert_eq!(tb.route(&addr(1000)), Route::New);
        assert_eq!(tb.get(s).unwrap().client, None);
        assert_eq!(tb.active(), 1);
    }

    #[test]
    fn roaming_claims_are_bounded() {
        let mut tb = Table::default();
        let now = Instant::now();
        for port in 0..(HOLD_ADDRS + 100) as u16 {
            tb.expect_roam(addr(port), now);
        }
        assert_eq!(tb.held.len(), HOLD_ADDRS);
        assert_eq!(tb.route(&addr(HOLD_ADDRS as u16 + 50)), Route::New);
    }

    #[test]
    fn roam_hold_is_flushed_on_move() {
        let mut tb = Table::default();
        let now = Instant::now();
        let (t, _) = tb.register(key(1), addr(1000), 1, KA, now);
        tb.expect_roam(addr(1001), now);
        assert!(tb.hold(addr(1001), b"d", now));
        assert_eq!(tb.waiting(), 0, "a roam hold is not a waiting client");
        let (_, held) = tb.move_to(t, addr(1001));
        assert_eq!(held, vec![b"d".to_vec()]);
    }

    #[test]
    fn a_refused_response_never_registers_later_a_fresher_one_does() {
        let mut tb = Table::default();
        let now = Instant::now();
        tb.refuse(key(1), 9, now);
        tb.refuse(key(1), 4, now); // an older copy, later: the bar stays at 9
        assert!(
            !tb.may_register(&key(1), 9),
            "a late copy of the refused one"
        );
        assert!(!tb.may_register(&key(1), 4));
        assert!(tb.may_register(&key(1), 10), "the agent's retry");
        let (t, _) = tb.register(key(2), addr(1000), 5, KA, now);
        tb.close(t, now);
        tb.refuse(key(2), 6, now);
        assert!(!tb.may_register(&key(2), 100), "closed stays closed");
        tb.expire_gone(now + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!(tb.gone(), 0, "remembered for the cookie's lifetime only");
    }

    #[test]
    fn closed_tunnels_never_come_back_expired_ones_only_with_a_fresher_counter() {
        let mut tb = Table::default();
        let now = Instant::now();
        let (t, _) = tb.register(key(1), addr(1000), 5, KA, now);
        tb.register(key(2), addr(1001), 7, KA, now);
        assert!(tb.may_register(&key(1), 1));
        tb.close(t, now);
        assert_eq!(tb.expire(now + Duration::from_secs(3)).len(), 1);
        assert!(!tb.may_register(&key(1), 100), "closed: never again");
        assert!(
            !tb.may_register(&key(2), 7),
            "expired: a replay of its last response"
        );
        assert!(
            tb.may_register(&key(2), 8),
            "expired: a fresh response after an outage"
        );
        tb.expire_gone(now + Duration::from_secs(10), Duration::from_secs(10));
        assert_eq!(tb.gone(), 2);
        tb.expire_gone(now + Duration::from_secs(14), Duration::from_secs(10));
        assert_eq!(tb.gone(), 0);
        assert!(tb.may_register(&key(1), 1));
    }

    #[test]
    fn expiry_and_instance_removal() {
        let mut tb = Table::default();
        let now = Instant::now();
        tb.register(key(1), addr(1000), 1, KA, now);
        let (t2, _) = tb.register(
            TunnelKey {
                run: Instance([2; 16]),
                id: 1,
            },
            addr(1001),
            1,
            KA,
            now + Duration::from_secs(5),
        );
        assert_eq!(tb.remove_instance(Instance([1; 16])).len(), 1);
        assert_eq!(tb.find(&key(1)), None);
        assert_eq!(tb.expire(now + Duration::from_secs(6)).len(), 0);
        assert_eq!(tb.expire(now + Duration::from_secs(8))[0].addr, addr(1001));
        assert_eq!(
            (
                tb.spares(),
                tb.find(&TunnelKey {
                    run: Instance([2; 16]),
                    id: 1
                })
            ),
            (0, None)
        );
        let _ = t2;
    }
}
