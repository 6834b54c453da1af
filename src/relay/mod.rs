//! The relay's every decision, as a state machine: fed `(now, source, bytes)` and timer ticks, it answers with
//! where the datagram goes and what else to send. No socket, no clock, no thread: `outside.rs` moves the bytes.
//!
//! The data path is [`Relay::on_datagram`] returning `Some(address)`: forward the datagram, unchanged, there.
//! Everything else (control replies, held datagrams released to a new tunnel) is pushed to `out`.

pub mod admission;
pub mod cookies;
pub mod remembered;
pub mod socket;
pub mod strangers;
pub mod table;

use crate::addr;
use crate::pace::{Every, Once};
use crate::relay::strangers::Strangers;
use crate::relay::table::{Restored, Route, Slot, Table, TunnelKey};
use crate::stats::Drops;
use crate::wire::{self as protocol, Instance, Key, Kind, Message, Shared};
pub use admission::{Admission, CookieReply, Reason, Verdict};
use cookies::{Cookies, COOKIE_LIFETIME};
use log::{debug, info, warn};
use std::collections::VecDeque;
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

/// What the relay says once per episode rather than on every occurrence.
#[derive(Default)]
struct Said {
    badauth: Once,
    full: Once,
    waiting: Once,
    expired: Once,
    reclaiming: Once,
    version: Once,
    keepalive_differs: Once,
    tunnels_differ: Once,
}

pub struct Relay {
    key: Key,
    cookies: Cookies,
    table: Table,
    settings: Settings,
    /// The run of the inside agent being served; a newer one that proves itself replaces it.
    current: Option<Instance>,
    retired: VecDeque<Instance>,
    drops: Drops,
    admissions: Admissions,
    said: Said,
    authfail_notice: Every,
    /// The last time an authenticated, fresh message of the inside agent arrived: while it works, a bad MAC is
    /// a stranger's, not a sign that the keys differ.
    heard: Option<Instant>,
    /// The inside agent's -n, when it says one smaller than ours.
    inside_max: Option<usize>,
    strangers: Strangers,
    /// Strangers reclaim tunnels at this pace at most, so the tunnels' ages spread and newcomers find one.
    stranger_pace: Every,
    wireguard: Option<Admission>,
    /// How many tunnels carry a client, as the current inside run last said in a fresh message.
    carrying: usize,
    /// Since when the relay knows fewer such tunnels than the inside agent says (see [`RECOVERY`]).
    recovering_since: Option<Instant>,
}

impl Relay {
    /// `cookie_secret` must be unpredictable (the OS generator); `now` starts the cookie epochs.
    pub fn new(key: &[u8], settings: Settings, cookie_secret: [u8; 32], now: Instant) -> Relay {
        Relay {
            key: Key::new(key),
            cookies: Cookies::new(cookie_secret, now),
            table: Table::default(),
            current: None,
            retired: VecDeque::new(),
            drops: Drops::default(),
            admissions: Admissions::default(),
            said: Said::default(),
            authfail_notice: Every::new(AUTHFAIL_NOTICE_EVERY),
            heard: None,
            inside_max: None,
            strangers: Strangers::default(),
            stranger_pace: Every::new(2 * GRACE / settings.max_tunnels.clamp(1, 1 << 20) as u32),
            wireguard: None,
            carrying: 0,
            recovering_since: None,
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

    /// The most clients served at once: our -n, or the inside agent's if smaller.
    fn limit(&self) -> usize {
        self.inside_max.map_or(self.settings.max_tunnels, |n| {
            n.min(self.settings.max_tunnels)
        })
    }

    /// Nearly full, or new clients arriving faster than the inside agent opens tunnels.
    fn under_load(&self) -> bool {
        let busy = self.table.active() + self.table.waiting();
        (busy > 0 && busy * 8 >= self.limit() * 7) || self.table.waiting() >= WAITING_IS_LOAD
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
        if protocol::looks_like_control(data) {
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

    /// `--wireguard`: the server's own checks before any state: a valid initiation, not seen before, with a
    /// valid mac2 under load (else a cookie reply, smaller than the initiation). Without it, every source may
    /// ask for a tunnel.
    fn admit(
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
        match wg.check(now, src, data, under_load) {
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

    /// The socket loop could not send a datagram.
    pub fn on_send_error(&mut self) {
        self.drops.senderr.incr();
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The run of the inside agent being served.
    pub fn current(&self) -> Option<Instance> {
        self.current
    }

    /// How many replaced runs are remembered (at most [`RETIRED_KEPT`]).
    pub fn retired(&self) -> usize {
        self.retired.len()
    }

    pub fn drops(&self) -> &Drops {
        &self.drops
    }

    fn new_client(&mut self, now: Instant, src: SocketAddr, data: &[u8]) -> Option<SocketAddr> {
        let limit = self.limit();
        if self.table.active() + self.table.waiting() >= limit {
            if let Some(dst) = self.reclaim(now, src) {
                return Some(dst);
            }
            self.drops.refused.incr();
            self.strangers.insert(src);
            if self.said.full.first() {
                warn!(
                    "all {limit} tunnels in use: refusing new clients (first: {})",
                    addr::shown(src)
                );
            }
            return None;
        }
        // While tunnels that carried clients may still come back, a new client waits (held) rather than take a
        // spare: it may be one of their clients.
        let spare = match self.recovering(now) {
            true => None,
            false => self.table.take_spare(),
        };
        match spare {
            Some(t) => self.assign(now, src, t),
            None => {
                if !self.table.hold(src, data, now) {
                    self.drops.overflow.incr();
                } else if self.said.waiting.first() {
                    info!(
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
            warn!(
                "all {} tunnels in use: handing tunnels whose client never got an answer to new clients \
                 (first: tunnel {} from {} to {}); counted as reclaimed",
                self.limit(),
                tun.key.id,
                addr::shown(old),
                addr::shown(src)
            );
        }
        debug!(
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
        info!(
            "client {} -> tunnel {} at {} ({} active)",
            addr::shown(client),
            tun.key.id,
            addr::shown(tun.addr),
            self.table.active()
        );
        Some(tun.addr)
    }

    fn on_control(&mut self, now: Instant, src: SocketAddr, data: &[u8], out: &mut Vec<Transmit>) {
        let msg = match self.key.open(data) {
            Ok(msg) => msg,
            Err(protocol::Error::BadMac) => return self.on_badauth(now, src, out),
            Err(protocol::Error::Version(v)) => {
                self.drops.badauth.incr();
                if self.said.version.first() {
                    warn!(
                        "control message of protocol version {v} from {}: this relay speaks version {}; \
                         run the same release on both sides",
                        addr::shown(src),
                        protocol::VERSION
                    );
                }
                return;
            }
            Err(e) => {
                debug!(
                    "ignored control-shaped datagram from {}: {e}",
                    addr::shown(src)
                );
                return;
            }
        };
        if self.retired.contains(&msg.instance) {
            debug!(
                "ignored message of replaced inside run {} from {}",
                msg.instance,
                addr::shown(src)
            );
            return;
        }
        match msg.kind {
            Kind::Keepalive => self.on_keepalive(now, src, &msg, out),
            Kind::Response => self.on_response(now, src, &msg, out),
            Kind::Close => self.on_close(now, &msg),
            // Relay-to-inside kinds sent back at us: nothing to do.
            _ => debug!("ignored {:?} from {}", msg.kind, addr::shown(src)),
        }
    }

    fn on_badauth(&mut self, now: Instant, src: SocketAddr, out: &mut Vec<Transmit>) {
        // While the inside agent's messages verify, the key is not the problem: this is a stranger's datagram.
        let working = self
            .heard
            .is_some_and(|t| now.saturating_duration_since(t) < 2 * self.settings.keepalive);
        if working {
            self.admissions.forged += 1;
            return;
        }
        self.drops.badauth.incr();
        if self.said.badauth.first() {
            warn!(
                "control message from {} failed authentication: the inside agent's key differs from ours (-k)",
                addr::shown(src)
            );
        }
        // Tell the sender, at most once a second in all, with as many bytes as it sent: its log then says why.
        if self.authfail_notice.due(now) {
            out.push(Transmit {
                to: src,
                data: Key::authfail_notice().to_vec(),
            });
        }
    }

    /// Seal and send a message, saying our settings in it.
    fn reply(&self, to: SocketAddr, msg: &Message, out: &mut Vec<Transmit>) {
        let mut msg = *msg;
        msg.shared = Shared {
            keepalive: self
                .settings
                .keepalive
                .as_secs()
                .try_into()
                .unwrap_or(u32::MAX),
            max_tunnels: self.settings.max_tunnels.try_into().unwrap_or(u32::MAX),
        };
        out.push(Transmit {
            to,
            data: self.key.seal(&msg).to_vec(),
        });
    }

    /// The keepalive interval of the inside agent that sent `said`: its tunnels live by it.
    fn keepalive_of(&self, said: &Shared) -> Duration {
        if (1..=MAX_KEEPALIVE_SECS).contains(&said.keepalive) {
            Duration::from_secs(said.keepalive.into())
        } else {
            self.settings.keepalive
        }
    }

    /// The inside agent's settings and its count of tunnels with clients, from a fresh authenticated message:
    /// follow the settings where ours would drop its tunnels, and say once that the two sides differ.
    fn note_settings(&mut self, now: Instant, msg: &Message) {
        let said = &msg.shared;
        self.heard = Some(now);
        self.carrying = msg.carrying as usize;
        self.check_recovery(now);
        let ours = self.settings.keepalive;
        let theirs = self.keepalive_of(said);
        if theirs != ours && self.said.keepalive_differs.first() {
            warn!(
                "the inside agent's keepalive interval is {}s, ours {}s: its tunnels are kept for twice its \
                 interval; give --keepaliveInterval the same value on both sides",
                theirs.as_secs(),
                ours.as_secs()
            );
        }
        if (1..=MAX_TUNNELS_SAID).contains(&said.max_tunnels) {
            let n = said.max_tunnels as usize;
            if n != self.settings.max_tunnels && self.said.tunnels_differ.first() {
                warn!(
                    "the inside agent's -n is {n}, ours {}: serving at most {} clients; give -n the same value \
                     on both sides",
                    self.settings.max_tunnels,
                    n.min(self.settings.max_tunnels)
                );
            }
            self.inside_max = Some(n);
        }
    }

    fn on_keepalive(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: &Message,
        out: &mut Vec<Transmit>,
    ) {
        let found = self.table.find(&TunnelKey::of(msg));
        let Some((t, tun)) = found.and_then(|t| Some((t, self.table.get(t)?))) else {
            // Unknown tunnel: challenge it, and remember nothing until the answer proves it.
            return self.challenge(now, src, msg, out);
        };
        if msg.counter <= tun.counter {
            debug!(
                "stale or repeated keepalive of tunnel {} from {}",
                msg.tunnel,
                addr::shown(src)
            );
            return;
        }
        if tun.addr == src {
            self.note_settings(now, msg);
            self.table
                .refresh(t, msg.counter, self.keepalive_of(&msg.shared), now);
            self.table.set_local(t, msg.local);
            return self.ack(src, msg, t, out);
        }
        // A known tunnel at a new address: its NAT mapping changed, or someone replays its keepalive. Hold the
        // address's data until the challenge is answered, so the tunnel is never taken for a new client.
        self.table.expect_roam(src, now);
        self.challenge(now, src, msg, out);
    }

    fn challenge(&self, now: Instant, src: SocketAddr, msg: &Message, out: &mut Vec<Transmit>) {
        let mut c = msg.reply(Kind::Challenge);
        c.cookie = self.cookies.issue(now, src, msg);
        self.reply(src, &c, out);
    }

    fn on_response(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: &Message,
        out: &mut Vec<Transmit>,
    ) {
        if !self.cookies.check(now, src, msg) {
            debug!(
                "response with a stale or foreign cookie from {}",
                addr::shown(src)
            );
            return;
        }
        // The key works again (or at last): a later mismatch is news worth a line.
        self.said.badauth.rearm();
        self.adopt_instance(msg.instance, src);
        let found = self.table.find(&TunnelKey::of(msg));
        match found.and_then(|t| Some((t, self.table.get(t)?))) {
            Some((t, tun)) => {
                if msg.counter <= tun.counter {
                    return;
                }
                if tun.addr != src && !self.roam(now, t, src, out) {
                    return;
                }
                self.note_settings(now, msg);
                self.table
                    .refresh(t, msg.counter, self.keepalive_of(&msg.shared), now);
                self.table.set_local(t, msg.local);
                self.ack(src, msg, t, out);
            }
            None if msg.active => self.restore(now, src, msg, out),
            None => self.register_spare(now, src, msg, out),
        }
    }

    /// Whether tunnels the inside agent says carry clients are still missing here, within [`RECOVERY`] of noticing.
    fn recovering(&self, now: Instant) -> bool {
        self.table.active() < self.carrying
            && self
                .recovering_since
                .is_some_and(|t| now.saturating_duration_since(t) < RECOVERY)
    }

    /// Start the recovery when the inside agent says more tunnels carry clients than the relay knows; end it when
    /// they are all back. (Timed out, it stays ended until the counts agree again, so a count that stays off
    /// cannot hold new clients back time after time.)
    fn check_recovery(&mut self, now: Instant) {
        if self.table.active() >= self.carrying {
            self.recovering_since = None;
        } else if self.recovering_since.is_none() {
            self.recovering_since = Some(now);
            info!(
                "the inside agent says {} tunnels carry clients, {} known here: new clients wait up to {}s for \
                 the others to come back",
                self.carrying,
                self.table.active(),
                RECOVERY.as_secs()
            );
        }
    }

    /// A verified response of a tunnel unknown here that says it carries a client: this relay restarted, or
    /// forgot the tunnel while its line was down. Restore the tunnel with the client the inside agent was told,
    /// so the client's datagrams take the same tunnel and the service sees the same source; unless the client
    /// meanwhile has another tunnel, the inside says no client, or it would exceed -n: then drop it.
    fn restore(&mut self, now: Instant, src: SocketAddr, msg: &Message, out: &mut Vec<Transmit>) {
        let key = TunnelKey::of(msg);
        if !self.table.may_register(&key, msg.counter) {
            debug!(
                "replayed response of removed or refused tunnel {} from {}: ignored",
                msg.tunnel,
                addr::shown(src)
            );
            return;
        }
        self.note_settings(now, msg);
        // The client as this socket reports it (IPv4-mapped on a dual-stack socket, as the tunnel's own source).
        let client = msg.client.map(|c| addr::as_seen_by(src.is_ipv6(), c));
        let waiting_here = client.is_some_and(|c| self.table.is_waiting(&c));
        let busy = self.table.active() + self.table.waiting() - usize::from(waiting_here);
        let refused = match client {
            None => Err("it had a client before this relay knew it, and does not say which"),
            Some(c) if c.is_ipv6() != src.is_ipv6() => {
                Err("its client's address family is not this socket's")
            }
            Some(_) if busy >= self.limit() => Err("all tunnels are in use"),
            Some(c) => self.table.restore(
                key,
                src,
                c,
                msg.counter,
                self.keepalive_of(&msg.shared),
                msg.answered,
                now,
            ),
        };
        let Restored {
            tunnel: t,
            displaced,
            held,
        } = match refused {
            Ok(r) => r,
            Err(why) => {
                info!(
                    "tunnel {} from {} carried client {}: {why}; asking the inside agent to close it",
                    msg.tunnel,
                    addr::shown(src),
                    client.map_or("?".to_string(), |c| addr::shown(c).to_string())
                );
                // Like a drop: a late copy of this response must not restore it later.
                self.table.refuse_for_good(key, now);
                return self.reply(src, &msg.reply(Kind::Drop), out);
            }
        };
        self.admissions.restored += 1;
        self.table.set_local(t, msg.local);
        if let Some(x) = displaced {
            self.drop_tunnel(now, x, DISPLACED, out);
        }
        let c = client.unwrap_or(src);
        info!(
            "tunnel {} restored at {} with its client {} ({} active)",
            msg.tunnel,
            addr::shown(src),
            addr::shown(c),
            self.table.active()
        );
        out.extend(held.into_iter().map(|data| Transmit { to: src, data }));
        self.check_recovery(now);
        self.ack(src, msg, t, out);
        self.serve_waiting(now, out);
    }

    /// Hand spares to waiting clients, oldest first, unless tunnels that carried clients may still come back.
    fn serve_waiting(&mut self, now: Instant, out: &mut Vec<Transmit>) {
        if self.recovering(now) {
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
                out.extend(held.into_iter().map(|data| Transmit { to: dst, data }));
            }
        }
    }

    /// A verified run of the inside agent that is not the current one is a restart: the old run's tunnels are
    /// dead, so forget them at once, and never accept the old run again.
    fn adopt_instance(&mut self, instance: Instance, src: SocketAddr) {
        if self.current == Some(instance) {
            return;
        }
        match self.current.replace(instance) {
            Some(old) => {
                let gone = self.table.remove_instance(old);
                info!(
                    "inside agent restarted (run {instance} replaces run {old}): dropped {} tunnels of the old run",
                    gone.len()
                );
                self.retired.push_back(old);
                if self.retired.len() > RETIRED_KEPT {
                    self.retired.pop_front();
                }
            }
            None => info!(
                "inside agent (run {instance}) connected from {}",
                addr::shown(src)
            ),
        }
    }

    fn register_spare(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: &Message,
        out: &mut Vec<Transmit>,
    ) {
        if !self.table.may_register(&TunnelKey::of(msg), msg.counter) {
            debug!(
                "replayed response of removed or refused tunnel {} from {}: ignored",
                msg.tunnel,
                addr::shown(src)
            );
            return;
        }
        if self.table.spares() >= self.settings.max_tunnels {
            self.table.refuse(TunnelKey::of(msg), msg.counter, now);
            debug!(
                "spare tunnel {} refused: already {} spares",
                msg.tunnel,
                self.table.spares()
            );
            return;
        }
        self.note_settings(now, msg);
        let keepalive = self.keepalive_of(&msg.shared);
        let (t, displaced) =
            self.table
                .register(TunnelKey::of(msg), src, msg.counter, keepalive, now);
        self.table.set_local(t, msg.local);
        if let Some(x) = displaced {
            self.drop_tunnel(now, x, DISPLACED, out);
        }
        // Spares again: a later shortage is news worth a line.
        self.said.waiting.rearm();
        self.said.expired.rearm();
        info!(
            "spare tunnel {} registered from {} ({} spare)",
            msg.tunnel,
            addr::shown(src),
            self.table.spares()
        );
        self.serve_waiting(now, out);
        self.ack(src, msg, t, out);
    }

    /// Accept a keepalive or response. The ack also says how many new clients still wait for a spare, so
    /// the inside agent opens that many at once instead of one behind each spare taken.
    /// It also says whom the tunnel carries, so that the inside agent can say it back to a relay that lost it.
    fn ack(&self, to: SocketAddr, msg: &Message, t: Slot, out: &mut Vec<Transmit>) {
        let mut ack = msg.reply(Kind::Ack);
        let tun = self.table.get(t);
        ack.client = tun.and_then(|tun| tun.client);
        ack.active = ack.client.is_some();
        ack.answered = ack.active && tun.is_some_and(|tun| tun.answered);
        ack.waiting = self.table.waiting().min(255) as u8;
        self.reply(to, &ack, out);
    }

    /// Move tunnel `t` to `src`, which it proved it receives at. False if the tunnel is gone as a result (its
    /// new address was its own client's: a loop, so it is dropped).
    fn roam(&mut self, now: Instant, t: Slot, src: SocketAddr, out: &mut Vec<Transmit>) -> bool {
        let Some(from) = self.table.get(t).map(|tun| tun.addr) else {
            return false;
        };
        let (displaced, held) = self.table.move_to(t, src);
        if displaced == Some(t) {
            // The tunnel now receives at the address of the very client it carried: forwarding would loop.
            self.drops.unrouted.add(held.len() as u64);
            self.drop_tunnel(now, t, "it moved to its own client's address", out);
            return false;
        }
        let Some(tun) = self.table.get(t) else {
            return false;
        };
        info!(
            "tunnel {} moved from {} to {}",
            tun.key.id,
            addr::shown(from),
            addr::shown(src)
        );
        match tun.client {
            Some(c) => out.extend(held.into_iter().map(|data| Transmit { to: c, data })),
            None => self.drops.unrouted.add(held.len() as u64),
        }
        if let Some(x) = displaced {
            self.drop_tunnel(now, x, DISPLACED, out);
        }
        true
    }

    /// Forget a tunnel and tell the inside agent to close it.
    fn drop_tunnel(&mut self, now: Instant, t: Slot, why: &str, out: &mut Vec<Transmit>) {
        let Some(tun) = self.table.close(t, now) else {
            return;
        };
        info!("tunnel {} dropped: {why}", tun.key.id);
        let mut m = Message::new(Kind::Drop, tun.key.run, tun.key.id, tun.counter);
        m.active = tun.client.is_some();
        self.reply(tun.addr, &m, out);
    }

    fn on_close(&mut self, now: Instant, msg: &Message) {
        // A close needs no challenge: a fresh counter proves it is no replay, and a close routes nothing anywhere.
        let Some(t) = self.table.find(&TunnelKey::of(msg)) else {
            return;
        };
        if self
            .table
            .get(t)
            .is_none_or(|tun| msg.counter <= tun.counter)
        {
            return;
        }
        let Some(tun) = self.table.close(t, now) else {
            return;
        };
        match tun.client {
            Some(c) => info!(
                "tunnel {} closed by the inside agent (client {})",
                msg.tunnel,
                addr::shown(c)
            ),
            None => info!("spare tunnel {} closed by the inside agent", msg.tunnel),
        }
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
        if self.table.active() + self.table.waiting() < self.limit() {
            self.said.full.rearm();
            self.said.reclaiming.rearm();
        }
        self.check_recovery_end();
        self.serve_waiting(now, out);
    }

    /// The counts agree again (tunnels came back, or the agent closed them): the recovery is over.
    fn check_recovery_end(&mut self) {
        if self.table.active() >= self.carrying {
            self.recovering_since = None;
        }
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
