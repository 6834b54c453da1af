//! Whom the relay gives a tunnel to: a new client takes a spare (or waits for one, held), a full relay hands an
//! unproven tunnel to a newcomer before a stranger, and with `--wireguard` only a source that passes the
//! server's own checks (or proved itself before) asks at all. The same `impl Relay` as mod.rs, by concern.

use super::{say, Home, Transmit, GRACE, WAITING_IS_LOAD};
use crate::addr;
use crate::relay::admission::{Reason, Verdict};
use crate::relay::table::Slot;
use std::net::SocketAddr;
use std::time::Instant;

impl Home {
    /// The most clients served at once: our -n, or the inside agent's if smaller.
    pub(super) fn limit(&self) -> usize {
        self.run.inside_max.map_or(self.settings.max_tunnels, |n| {
            n.min(self.settings.max_tunnels)
        })
    }

    /// Nearly full, or new clients arriving faster than the inside agent opens tunnels.
    fn under_load(&self) -> bool {
        let busy = self.table.busy();
        (busy > 0 && busy * 8 >= self.limit() * 7) || self.table.waiting() >= WAITING_IS_LOAD
    }

    /// `--wireguard`: the server's own checks before any state: a valid initiation, not seen before, with a
    /// valid mac2 under load (else a cookie reply, smaller than the initiation). Without it, every source may
    /// ask for a tunnel.
    pub(super) fn admit(
        &mut self,
        now: Instant,
        src: SocketAddr,
        data: &[u8],
        out: &mut Vec<Transmit>,
    ) -> bool {
        let under_load = self.under_load();
        let Some(wg) = self.wireguard.as_mut() else {
            return true;
        };
        if self.table.remembered().contains(&src, now) {
            // It proved itself through a tunnel it lost: its WireGuard session lives on, and it would send no
            // new initiation for up to 15 s. (Forgotten once it has a tunnel again.)
            self.admissions.remembered += 1;
            return true;
        }
        let verdict = wg.check(now, src, data, under_load);
        self.count(verdict, src, out)
    }

    /// With `--homes`: an initiation whose mac1 verified for this home's server key (homes.rs checked it): the
    /// rest of this home's admission, then a tunnel.
    pub(super) fn admit_initiation(
        &mut self,
        now: Instant,
        src: SocketAddr,
        data: &[u8],
        out: &mut Vec<Transmit>,
    ) -> Option<SocketAddr> {
        let under_load = self.under_load();
        let verdict = self
            .wireguard
            .as_mut()?
            .check_verified(now, src, data, under_load);
        if !self.count(verdict, src, out) {
            return None;
        }
        self.new_client(now, src, data)
    }

    /// With `--homes`: a source this home remembers as proven (see remembered.rs).
    pub(super) fn admit_remembered(
        &mut self,
        now: Instant,
        src: SocketAddr,
        data: &[u8],
    ) -> Option<SocketAddr> {
        self.admissions.remembered += 1;
        self.new_client(now, src, data)
    }

    /// Whether the mac1 of `initiation` verifies for this home's server key.
    pub(super) fn mac1_verifies(&self, initiation: &[u8]) -> bool {
        self.wireguard
            .as_ref()
            .is_some_and(|w| w.mac1_verifies(initiation))
    }

    /// Whether this home's replay memory holds the mac1 of `initiation`.
    pub(super) fn replayed(&self, initiation: &[u8]) -> bool {
        self.wireguard
            .as_ref()
            .is_some_and(|w| w.replayed(initiation))
    }

    /// Whether this home remembers `src` as proven.
    pub(super) fn remembers(&mut self, src: &SocketAddr, now: Instant) -> bool {
        self.table.remembered().contains(src, now)
    }

    /// Count an admission verdict, send its cookie reply; true if it admits.
    fn count(&mut self, verdict: Verdict, src: SocketAddr, out: &mut Vec<Transmit>) -> bool {
        match verdict {
            Verdict::Admit => true,
            Verdict::Reply(reply) => {
                self.admissions.cookies += 1;
                out.push(Transmit {
                    to: src,
                    data: reply.0.to_vec(),
                });
                false
            }
            Verdict::Drop(reason) => {
                let a = &mut self.admissions;
                match reason {
                    Reason::NotInitiation => a.not_initiation += 1,
                    Reason::BadMac1 => a.bad_mac1 += 1,
                    Reason::Replayed => a.replayed += 1,
                }
                false
            }
        }
    }

    pub(super) fn new_client(
        &mut self,
        now: Instant,
        src: SocketAddr,
        data: &[u8],
    ) -> Option<SocketAddr> {
        let limit = self.limit();
        if self.table.busy() >= limit {
            if let Some(dst) = self.reclaim(now, src) {
                self.forwarded_in(data.len());
                return Some(dst);
            }
            self.drops.refused.incr();
            self.strangers.insert(src);
            if self.said.full.first() {
                say!(
                    self.tag,
                    warn,
                    "all {limit} tunnels in use: refusing new clients (first: {})",
                    addr::shown(src)
                );
            }
            return None;
        }
        // While tunnels that carried clients may still come back, a new client waits (held) rather than take a
        // spare: it may be one of their clients.
        let spare = match self.run.recovering(now, self.table.active()) {
            true => None,
            false => self.table.take_spare(),
        };
        match spare {
            Some(t) => {
                let dst = self.assign(now, src, t);
                if dst.is_some() {
                    self.forwarded_in(data.len());
                }
                dst
            }
            None => {
                if !self.table.hold(src, data, now) {
                    self.drops.overflow.incr();
                } else if self.said.waiting.first() {
                    say!(
                        self.tag,
                        info,
                        "no spare tunnel ready: holding new clients' datagrams until one registers"
                    );
                }
                None
            }
        }
    }

    /// A full relay: hand the unproven tunnel that has waited longest for an answer to `src`. A newcomer may take
    /// one past the grace; a source turned away before (a stranger) only one past twice the grace, and only at a
    /// pace, so that newcomers always find one while strangers flood. A proven tunnel is never taken.
    fn reclaim(&mut self, now: Instant, src: SocketAddr) -> Option<SocketAddr> {
        let newcomer = !self.strangers.contains(&src);
        let min_age = if newcomer { GRACE } else { 2 * GRACE };
        let t = self.table.oldest_unproven(now, min_age)?;
        if !newcomer && !self.stranger_pace.due(now) {
            return None;
        }
        let old = self.table.reassign(t, src, now)?;
        self.strangers.insert(old);
        self.admissions.reclaimed += 1;
        let tun = self.table.get(t)?;
        if self.said.reclaiming.first() {
            say!(
                self.tag,
                warn,
                "all {} tunnels in use: handing tunnels whose client never got an answer to new clients \
                 (first: tunnel {} from {} to {}); counted as reclaimed",
                self.limit(),
                tun.key.id,
                addr::shown(old),
                addr::shown(src)
            );
        }
        say!(
            self.tag,
            debug,
            "tunnel {} reclaimed from {} for {}",
            tun.key.id,
            addr::shown(old),
            addr::shown(src)
        );
        Some(tun.addr)
    }

    /// Give tunnel `t` to `client`; the tunnel's address, where the client's datagrams now go.
    fn assign(&mut self, now: Instant, client: SocketAddr, t: Slot) -> Option<SocketAddr> {
        self.table.assign(client, t, now);
        let tun = self.table.get(t)?;
        say!(
            self.tag,
            info,
            "client {} -> tunnel {} at {} ({} active)",
            addr::shown(client),
            tun.key.id,
            addr::shown(tun.addr),
            self.table.active()
        );
        Some(tun.addr)
    }

    /// Hand spares to waiting clients, oldest first, unless tunnels that carried clients may still come back.
    pub(super) fn serve_waiting(&mut self, now: Instant, out: &mut Vec<Transmit>) {
        if self.run.recovering(now, self.table.active()) {
            return;
        }
        while self.table.spares() > 0 {
            let Some((client, held)) = self.table.next_waiting() else {
                return;
            };
            if let Some(dst) = self
                .table
                .take_spare()
                .and_then(|s| self.assign(now, client, s))
            {
                held.iter().for_each(|d| self.forwarded_in(d.len()));
                out.extend(held.into_iter().map(|data| Transmit { to: dst, data }));
            }
        }
    }
}
