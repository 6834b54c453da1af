//! The coordinator's tunnels: what it knows of each ([`Handle`]), how many spares it keeps, and how it opens and
//! closes one. Another `impl Coordinator`.
#![forbid(unsafe_code)]

use super::{Action, Coordinator};
use crate::addr;
use crate::pace;
use crate::wire::{Claim, Kind};
use log::{info, warn};
use std::net::SocketAddr;
use std::time::Instant;

/// The coordinator's view of one tunnel.
#[derive(Debug)]
pub struct Handle {
    /// Its socket is IPv6 (dual stack), so IPv4 addresses are IPv4-mapped for it.
    pub v6: bool,
    /// It carries a client.
    pub active: bool,
    /// The relay has acknowledged it.
    pub registered: bool,
    /// Whom the relay says it routes through this tunnel (its public address), and whether the service has
    /// answered that client: said back in keepalives and responses, so a relay that lost the tunnel restores it.
    pub client: Option<SocketAddr>,
    pub answered: bool,
    /// The counter of the ack that said `client`: only a later ack changes it (a replayed one cannot).
    pub(super) bound_by: u64,
    /// The address the service sees this tunnel at.
    pub local: Option<SocketAddr>,
    /// When a message last left on this tunnel: the NAT mapping is fresh from then, so the interval counts
    /// from it (not from when the relay's answer arrived, which may be late).
    pub(super) last_sent: Instant,
    pub(super) next_keepalive: Instant,
    pub(super) attempts: u32,
    /// The counter of the oldest keepalive the relay has not acknowledged: until an ack for it (or a later
    /// message) comes, the keepalive is sent again, sooner than the interval.
    pub(super) unacked: Option<u64>,
}

impl Handle {
    /// What keepalives and responses of this tunnel say about it.
    pub(super) fn claim(&self) -> Claim {
        Claim {
            active: self.active,
            answered: self.answered,
            client: self.client,
            local: self.local,
        }
    }

    /// Send a keepalive from the start, as for a new tunnel (the relay may not know it).
    pub(super) fn reregister(&mut self, now: Instant) {
        self.registered = false;
        self.attempts = 0;
        self.unacked = None;
        self.next_keepalive = now;
    }
}

/// Whom closing a tunnel tells: the relay, unless the relay itself asked for it (or can no longer be reached
/// from the tunnel's socket).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tell {
    Relay,
    Nobody,
}

impl Coordinator {
    pub(super) fn active(&self) -> usize {
        self.tunnels.values().filter(|h| h.active).count()
    }

    /// Keep `--spares` spare tunnels while fewer than `-n` are active.
    pub(super) fn fill_spares(&mut self, now: Instant, out: &mut Vec<Action>) {
        let active = self.active();
        if active >= self.settings.max_tunnels {
            if self.said.full.first() {
                warn!(
                    "all {} tunnels are active: no spare until one closes",
                    self.settings.max_tunnels
                );
            }
        } else {
            self.said.full.rearm();
        }
        let spare = self.tunnels.len() - active;
        let want = self
            .settings
            .spares
            .min(self.settings.max_tunnels.saturating_sub(active));
        for _ in spare..want {
            if !self.open(now, out) {
                return;
            }
        }
    }

    /// The relay says `waiting` new clients wait for a spare: open that many now, less those already being
    /// registered, within -n, rather than one behind each spare as it is taken.
    pub(super) fn open_for_waiting(&mut self, now: Instant, waiting: usize, out: &mut Vec<Action>) {
        let pending = self
            .tunnels
            .values()
            .filter(|h| !h.active && !h.registered)
            .count();
        let room = self.settings.max_tunnels.saturating_sub(self.tunnels.len());
        let extra = waiting.saturating_sub(pending).min(room);
        if extra > 0 {
            info!("{waiting} new clients wait at the relay: opening {extra} more spare tunnels");
        }
        for _ in 0..extra {
            if !self.open(now, out) {
                return;
            }
        }
    }

    /// Open a tunnel (the socket layer reports failure back) and send its first keepalive. False if the names
    /// are not resolved yet.
    fn open(&mut self, now: Instant, out: &mut Vec<Action>) -> bool {
        let (Some(relay), Some(service)) = (self.relay, self.service) else {
            return false;
        };
        let id = self.next_id;
        self.next_id += 1;
        // As net::bind_for: a dual-stack IPv6 socket unless both ends are IPv4.
        let v6 = !(relay.is_ipv4() && service.is_ipv4());
        out.push(Action::Open { id, relay, service });
        let (counter, msg) =
            self.identity
                .seal_claim(Kind::Keepalive, id, &Claim::default(), [0; 8]);
        out.push(Action::Send { id, to: relay, msg });
        self.tunnels.insert(
            id,
            Handle {
                v6,
                active: false,
                registered: false,
                client: None,
                answered: false,
                bound_by: 0,
                local: None,
                last_sent: now,
                next_keepalive: now + pace::backoff(0, self.settings.keepalive),
                attempts: 1,
                unacked: Some(counter),
            },
        );
        true
    }

    /// Close a tunnel; unless the relay asked for it, tell the relay at once so no client is routed into it.
    /// The close is sent twice: a lost one would leave the relay routing into a dead tunnel until it expires.
    pub(super) fn close(&mut self, id: u32, why: &str, tell: Tell, out: &mut Vec<Action>) {
        let Some(h) = self.tunnels.remove(&id) else {
            return;
        };
        if let (Tell::Relay, Some(relay)) = (tell, self.relay) {
            for _ in 0..2 {
                out.push(Action::Send {
                    id,
                    to: relay,
                    msg: self.identity.seal(Kind::Close, id, h.active, [0; 8]),
                });
            }
        }
        out.push(Action::Stop { id });
        self.identity.set_carrying(self.active());
        match (h.active, h.client) {
            (true, Some(c)) => info!("tunnel {id} closed: {why} (client {})", addr::shown(c)),
            (true, None) => info!("tunnel {id} closed: {why}"),
            (false, _) => info!("spare tunnel {id} closed: {why}"),
        }
    }
}
