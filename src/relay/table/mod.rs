//! The relay's tunnel/client table. One hash lookup on the source address routes every datagram; the rest
//! (spares, waiting clients, roaming) changes only on control messages and new clients.

mod check;
mod gone;
mod held;
mod peers;
#[cfg(test)]
mod tests;

pub use held::{Held, HOLD_ADDRS, HOLD_PER_ADDR, HOLD_TOTAL_BYTES};

use crate::relay::remembered::Remembered;
use crate::wire::{Instance, Message};
use gone::Gone;
use held::HeldDatagrams;
use peers::Peers;
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

#[derive(Default)]
pub struct Table {
    peers: Peers,
    slots: Vec<Option<RelayTunnel>>,
    free: Vec<Slot>,
    by_key: HashMap<TunnelKey, Slot>,
    spares: VecDeque<Slot>,
    /// Datagrams of new clients waiting for a spare, and of addresses being challenged as a tunnel's new one.
    held: HeldDatagrams,
    active: usize,
    /// Tunnels removed or refused recently, which a replay must not bring back (see gone.rs).
    gone: Gone,
    /// Tunnels with a client and no answer yet, oldest first, with the time they were given it (stale entries
    /// are skipped lazily).
    unproven: VecDeque<(Slot, Instant)>,
    /// Clients that proved themselves and lost their tunnel (see remembered.rs).
    remembered: Remembered,
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

    /// Whether `addr` is anything to this table (a tunnel's, a client's, held): [`Route::New`] if not.
    pub fn knows(&self, addr: &SocketAddr) -> bool {
        self.peers.contains_key(addr)
    }

    /// The tunnel `addr` is the client of.
    pub fn client_tunnel(&self, addr: &SocketAddr) -> Option<&RelayTunnel> {
        match self.peers.get(addr) {
            Some(Peer::Client(t)) => self.get(*t),
            _ => None,
        }
    }

    /// Every address this table knows.
    pub fn addresses(&self) -> impl Iterator<Item = &SocketAddr> {
        self.peers.keys()
    }

    /// Keep a journal of the addresses that become known or unknown (a relay of several homes reads it).
    pub fn keep_changes(&mut self) {
        self.peers.keep_changes();
    }

    /// The addresses that became known or unknown since the last call (with [`Table::keep_changes`]).
    pub fn take_changed(&mut self) -> Vec<SocketAddr> {
        self.peers.take_changed()
    }

    /// Free `addr`, which a tunnel of another home proved itself at: returns the tunnel of this table it
    /// displaces, which the caller drops (as [`Table::register`] does within one table).
    pub fn release(&mut self, addr: SocketAddr) -> Option<Slot> {
        self.claim(addr)
    }

    /// The slots of every live tunnel, in order.
    pub fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        (0..self.slots.len())
            .filter(|&t| self.slots[t].is_some())
            .map(Slot)
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

    /// The live tunnel named `key`, and its slot.
    pub fn find_tunnel(&self, key: &TunnelKey) -> Option<(Slot, &RelayTunnel)> {
        let t = self.find(key)?;
        Some((t, self.get(t)?))
    }

    pub fn active(&self) -> usize {
        self.active
    }

    /// Clients served or waiting to be: what -n bounds.
    pub fn busy(&self) -> usize {
        self.active + self.waiting()
    }

    pub fn spares(&self) -> usize {
        self.spares.len()
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
            Some(Peer::Held) if self.held.is_waiting(&client) => self
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

    /// Remove a tunnel that is dead for certain (closed by the inside agent, or dropped by the relay), and
    /// remember it so that a replay cannot bring it back.
    pub fn close(&mut self, t: Slot, now: Instant) -> Option<RelayTunnel> {
        let tun = self.remove(t)?;
        self.gone.for_good(tun.key, now);
        Some(tun)
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
            self.gone.expired(tun.key, tun.counter, now);
        }
        gone
    }
}
