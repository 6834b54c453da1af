//! The table's invariant checker: everything the table promises about itself, checked from scratch, so that a
//! randomized test can call it after every event and name the first promise broken.

use super::{Peer, Slot, Table, HOLD_ADDRS, HOLD_PER_ADDR, HOLD_TOTAL_BYTES};
use crate::relay::remembered::REMEMBERED_MAX;

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
        for (addr, peer) in self.peers.iter() {
            let ok = match peer {
                Peer::Tunnel(t) => self.get(*t).is_some_and(|tun| tun.addr == *addr),
                Peer::Client(t) => self.get(*t).is_some_and(|tun| tun.client == Some(*addr)),
                Peer::Held => self.held.by_addr.contains_key(addr),
            };
            if !ok {
                return Err(format!("{addr} is a stale {peer:?}"));
            }
        }
        let bytes: usize = self
            .held
            .by_addr
            .values()
            .flat_map(|h| &h.datagrams)
            .map(Vec::len)
            .sum();
        if bytes != self.held.bytes || bytes > HOLD_TOTAL_BYTES {
            return Err(format!("held {bytes} bytes, counted {}", self.held.bytes));
        }
        if self
            .held
            .by_addr
            .values()
            .any(|h| h.datagrams.len() > HOLD_PER_ADDR)
        {
            return Err("more datagrams held for one address than allowed".into());
        }
        if self.remembered.len() > REMEMBERED_MAX {
            return Err(format!("{} remembered admissions", self.remembered.len()));
        }
        let waiting = self.held.by_addr.values().filter(|h| !h.roam).count();
        let roaming = self.held.by_addr.len() - waiting;
        if waiting != self.held.waiting.len() || roaming > HOLD_ADDRS {
            return Err(format!(
                "{waiting} waiting held, {} queued, {roaming} roaming",
                self.held.waiting.len()
            ));
        }
        Ok(())
    }
}
