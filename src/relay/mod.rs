//! The relay's every decision, as a state machine: fed `(now, source, bytes)` and timer ticks, it answers with
//! where the datagram goes and what else to send. No socket, no clock, no thread: `socket.rs` moves the bytes.
//!
//! The data path is [`Relay::on_datagram`] returning `Some(address)`: forward the datagram, unchanged, there.
//! Everything else (control replies, held datagrams released to a new tunnel) is pushed to `out`.
//!
//! One `impl Relay` over several files, by concern: this one has the entry points (datagrams, ticks, status);
//! `admit.rs` whom a tunnel is given to, `control.rs` the control messages of the inside agent, and
//! `inside_run.rs` what the relay knows of the inside agent's run.

#![forbid(unsafe_code)]

pub(crate) mod admission;
mod admit;
mod control;
pub(crate) mod cookies;
mod inside_run;
pub mod remembered;
pub(crate) mod socket;
pub(crate) mod strangers;
pub mod table;

use crate::addr;
use crate::pace::{Every, Once};
use crate::relay::strangers::Strangers;
use crate::relay::table::{Route, Table};
use crate::stats::Drops;
use crate::wire::{self, Instance, Key, Shared};
pub use admission::{Admission, CookieReply, Reason, Verdict};
use cookies::{Cookies, COOKIE_LIFETIME};
use inside_run::InsideRun;
use log::{info, warn};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A new client's held datagrams wait this long for a spare.
pub const WAIT_FOR_SPARE: Duration = Duration::from_secs(10);
/// Runs of the inside agent that a restart replaced: never accepted again.
pub const RETIRED_KEPT: usize = 64;
/// At most one unauthenticated authfail notice this often, in all.
const AUTHFAIL_NOTICE_EVERY: Duration = Duration::from_secs(1);
/// A full relay hands a tunnel whose client never got an answer to a newcomer, but not before the tunnel has
/// carried its client this long: the service's first answer crosses relay → inside → service → inside → relay
/// well within it (the client's own link is not on that path).
pub const GRACE: Duration = Duration::from_secs(1);
/// When the inside agent says more of its tunnels carry clients than the relay knows (the relay restarted, or
/// forgot them while the agent's line was down), new clients wait this long at most for those tunnels to come
/// back before spares are handed out: a returning client then gets its own tunnel again, not a spare.
pub const RECOVERY: Duration = Duration::from_secs(3);
/// New clients waiting this many for spares also count as load (admissions outpace the inside agent).
const WAITING_IS_LOAD: usize = 16;
/// Why a tunnel is dropped when another proves itself where it was.
const DISPLACED: &str = "another tunnel proved itself at its or its client's address";
/// The longest keepalive interval (and the largest -n) an inside agent may say it uses.
const MAX_KEEPALIVE_SECS: u32 = 86_400;
const MAX_TUNNELS_SAID: u32 = 100_000;

/// The relay's settings that decisions depend on.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `-n`: tunnels carrying clients (and clients waiting for one) at most.
    pub max_tunnels: usize,
    /// `--keepaliveInterval`: a tunnel silent for twice this is forgotten.
    pub keepalive: Duration,
}

/// What admission control did, for the status line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Admissions {
    /// Unproven tunnels handed to newcomers.
    pub reclaimed: u64,
    /// Control-shaped datagrams that failed authentication while the inside agent's key works: strangers' noise.
    pub forged: u64,
    /// `--wireguard`: datagrams of unknown sources that are not handshake initiations.
    pub not_initiation: u64,
    /// `--wireguard`: initiations whose mac1 does not verify.
    pub bad_mac1: u64,
    /// `--wireguard`: initiations seen before (replayed).
    pub replayed: u64,
    /// `--wireguard`: cookie replies sent (under load).
    pub cookies: u64,
    /// `--wireguard`: sources admitted without an initiation because they proved themselves before (see
    /// remembered.rs).
    pub remembered: u64,
    /// Tunnels restored with their client from the inside agent's authenticated word.
    pub restored: u64,
}

/// A datagram for the socket loop to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

impl Settings {
    /// The keepalive interval of the inside agent that sent `said`: its tunnels live by it.
    fn keepalive_of(&self, said: &Shared) -> Duration {
        if (1..=MAX_KEEPALIVE_SECS).contains(&said.keepalive) {
            Duration::from_secs(said.keepalive.into())
        } else {
            self.keepalive
        }
    }
}

/// What the relay says once per episode rather than on every occurrence.
#[derive(Default)]
struct Said {
    badauth: Once,
    full: Once,
    waiting: Once,
    expired: Once,
    reclaiming: Once,
    version: Once,
}

pub struct Relay {
    key: Key,
    cookies: Cookies,
    table: Table,
    settings: Settings,
    /// The inside agent's run being served, the runs it replaced, and what it says (see inside_run.rs).
    run: InsideRun,
    drops: Drops,
    admissions: Admissions,
    said: Said,
    authfail_notice: Every,
    strangers: Strangers,
    /// Strangers reclaim tunnels at this pace at most, so the tunnels' ages spread and newcomers find one.
    stranger_pace: Every,
    wireguard: Option<Admission>,
}

impl Relay {
    /// `cookie_secret` must be unpredictable (the OS generator); `now` starts the cookie epochs.
    pub fn new(key: &[u8], settings: Settings, cookie_secret: [u8; 32], now: Instant) -> Relay {
        Relay {
            key: Key::new(key),
            cookies: Cookies::new(cookie_secret, now),
            table: Table::default(),
            run: InsideRun::default(),
            drops: Drops::default(),
            admissions: Admissions::default(),
            said: Said::default(),
            authfail_notice: Every::new(AUTHFAIL_NOTICE_EVERY),
            strangers: Strangers::default(),
            stranger_pace: Every::new(2 * GRACE / settings.max_tunnels.clamp(1, 1 << 20) as u32),
            wireguard: None,
            settings,
        }
    }

    /// With `--wireguard`: only a WireGuard handshake initiation that passes the server's own checks (mac1, and
    /// mac2 under load) gets a tunnel.
    pub fn with_wireguard(mut self, admission: Admission) -> Relay {
        self.wireguard = Some(admission);
        self
    }

    pub fn admissions(&self) -> &Admissions {
        &self.admissions
    }

    /// One datagram from `src`. `Some(dst)`: send `data` itself to `dst`. Anything else to send is in `out`.
    #[inline]
    pub fn on_datagram(
        &mut self,
        now: Instant,
        src: SocketAddr,
        data: &[u8],
        out: &mut Vec<Transmit>,
    ) -> Option<SocketAddr> {
        if wire::looks_like_control(data) {
            self.on_control(now, src, data, out);
            return None;
        }
        match self.table.route(&src) {
            Route::To(dst) => Some(dst),
            Route::Answer(dst, t) => {
                self.table.answered(t, now);
                Some(dst)
            }
            Route::Hold => {
                if !self.table.hold(src, data, now) {
                    self.drops.overflow.incr();
                }
                None
            }
            Route::Unrouted => {
                self.drops.unrouted.incr();
                None
            }
            Route::New => {
                if !self.admit(now, src, data, out) {
                    return None;
                }
                self.new_client(now, src, data)
            }
        }
    }

    /// The socket loop could not send a datagram.
    pub fn on_send_error(&mut self) {
        self.drops.senderr.incr();
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The run of the inside agent being served.
    pub fn current(&self) -> Option<Instance> {
        self.run.current
    }

    /// How many replaced runs are remembered (at most [`RETIRED_KEPT`]).
    pub fn retired(&self) -> usize {
        self.run.retired.len()
    }

    pub fn drops(&self) -> &Drops {
        &self.drops
    }

    /// Expire what timed out, and hand spares to clients that waited out a recovery. Call a few times a second;
    /// nothing depends on the exact period.
    pub fn on_tick(&mut self, now: Instant, out: &mut Vec<Transmit>) {
        self.table.expire_gone(now, COOKIE_LIFETIME);
        self.table.remembered().expire(now);
        for tun in self.table.expire(now) {
            let who = tun
                .client
                .map(|c| format!(" (client {})", addr::shown(c)))
                .unwrap_or_default();
            info!(
                "tunnel {} sent no keepalive for {}s: forgotten{who}",
                tun.key.id,
                2 * tun.keepalive.as_secs()
            );
        }
        let dropped = self.table.expire_held(now, WAIT_FOR_SPARE);
        if dropped > 0 {
            self.drops.unrouted.add(dropped as u64);
            // Once per episode without spares (as when no inside agent is connected), then only counted:
            // a client retrying for hours must not fill the log.
            if self.said.expired.first() {
                warn!(
                    "no spare tunnel came within {}s: dropping held datagrams (counted as unrouted) until one does",
                    WAIT_FOR_SPARE.as_secs()
                );
            }
        }
        if self.table.busy() < self.limit() {
            self.said.full.rearm();
            self.said.reclaiming.rearm();
        }
        self.run.check_recovery_end(self.table.active());
        self.serve_waiting(now, out);
    }

    /// The tunnel table, a line per tunnel (for SIGUSR1).
    pub fn table_lines(&self, now: Instant) -> Vec<String> {
        self.table
            .tunnels()
            .map(|tun| {
                let client = tun.client.map_or("spare".to_string(), |c| {
                    format!("client {}", addr::shown(c))
                });
                // Only a tunnel with a client has a pair worth showing: the client and how the service sees it.
                let local = match (tun.client, tun.local) {
                    (Some(_), Some(l)) => format!(", service sees {}", addr::shown(l)),
                    _ => String::new(),
                };
                format!(
                    "tunnel {} of run {} at {}: {client}{local}, last keepalive {}s ago",
                    tun.key.id,
                    tun.key.run,
                    addr::shown(tun.addr),
                    now.saturating_duration_since(tun.last_keepalive).as_secs()
                )
            })
            .collect()
    }

    pub fn status(&self) -> String {
        let a = &self.admissions;
        let wireguard = match self.wireguard {
            Some(_) => format!(
                " wireguard notinit={} badmac1={} replayed={} cookies={} remembered={}",
                a.not_initiation, a.bad_mac1, a.replayed, a.cookies, a.remembered
            ),
            None => String::new(),
        };
        format!(
            "status: tunnels active={} spare={} waiting={} reclaimed={} restored={} {} forged={}{wireguard}",
            self.table.active(),
            self.table.spares(),
            self.table.waiting(),
            a.reclaimed,
            a.restored,
            self.drops.summary(),
            a.forged,
        )
    }
}
