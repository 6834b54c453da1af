//! The relay's every decision, as a state machine: fed `(now, source, bytes)` and timer ticks, it answers with
//! where the datagram goes and what else to send. No socket, no clock, no thread: `outside.rs` moves the bytes.
//!
//! The data path is [`Relay::on_datagram`] returning `Some(address)`: forward the datagram, unchanged, there.
//! Everything else (control replies, held datagrams released to a new tunnel) is pushed to `out`.

use crate::net;
use crate::pace::{Every, Once};
use crate::protocol::{self, Cookies, Instance, Key, Kind, Message};
use crate::stats::Drops;
use crate::table::{Route, Table};
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

/// The relay's settings that decisions depend on.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `-n`: tunnels carrying clients (and clients waiting for one) at most.
    pub max_tunnels: usize,
    /// `--keepaliveInterval`: a tunnel silent for twice this is forgotten.
    pub keepalive: Duration,
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
    said: Said,
    authfail_notice: Every,
}

impl Relay {
    /// `cookie_secret` must be unpredictable (the OS generator); `now` starts the cookie epochs.
    pub fn new(key: &[u8], settings: Settings, cookie_secret: [u8; 32], now: Instant) -> Relay {
        Relay {
            key: Key::new(key),
            cookies: Cookies::new(cookie_secret, now),
            table: Table::default(),
            settings,
            current: None,
            retired: VecDeque::new(),
            drops: Drops::default(),
            said: Said::default(),
            authfail_notice: Every::new(AUTHFAIL_NOTICE_EVERY),
        }
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
            Route::New => self.new_client(now, src, data),
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
        if self.table.active() + self.table.waiting() >= self.settings.max_tunnels {
            self.drops.refused.incr();
            if self.said.full.first() {
                warn!(
                    "all {} tunnels in use: refusing new clients (first: {})",
                    self.settings.max_tunnels,
                    net::shown(src)
                );
            }
            return None;
        }
        match self.table.take_spare() {
            Some(t) => self.assign(src, t),
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

    /// Give tunnel `t` to `client`; the tunnel's address, where the client's datagrams now go.
    fn assign(&mut self, client: SocketAddr, t: usize) -> Option<SocketAddr> {
        self.table.assign(client, t);
        let tun = self.table.get(t)?;
        info!(
            "client {} -> tunnel {} at {} ({} active)",
            net::shown(client),
            tun.key.1,
            net::shown(tun.addr),
            self.table.active()
        );
        Some(tun.addr)
    }

    fn on_control(&mut self, now: Instant, src: SocketAddr, data: &[u8], out: &mut Vec<Transmit>) {
        let msg = match self.key.open(data) {
            Ok(msg) => msg,
            Err(protocol::Error::BadMac) => return self.on_badauth(now, src, out),
            Err(e) => {
                return debug!(
                    "ignored control-shaped datagram from {}: {e}",
                    net::shown(src)
                )
            }
        };
        if self.retired.contains(&msg.instance) {
            return debug!(
                "ignored message of replaced inside run {} from {}",
                msg.instance,
                net::shown(src)
            );
        }
        match msg.kind {
            Kind::Keepalive => self.on_keepalive(now, src, &msg, out),
            Kind::Response => self.on_response(now, src, &msg, out),
            Kind::Close => self.on_close(now, &msg),
            // Relay-to-inside kinds sent back at us: nothing to do.
            _ => debug!("ignored {:?} from {}", msg.kind, net::shown(src)),
        }
    }

    fn on_badauth(&mut self, now: Instant, src: SocketAddr, out: &mut Vec<Transmit>) {
        self.drops.badauth.incr();
        if self.said.badauth.first() {
            warn!(
                "control message from {} failed authentication: the inside agent's key differs from ours (-k)",
                net::shown(src)
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

    fn reply(&self, to: SocketAddr, msg: &Message, out: &mut Vec<Transmit>) {
        out.push(Transmit {
            to,
            data: self.key.seal(msg).to_vec(),
        });
    }

    fn on_keepalive(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: &Message,
        out: &mut Vec<Transmit>,
    ) {
        let found = self.table.find(&(msg.instance, msg.tunnel));
        let Some((t, tun)) = found.and_then(|t| Some((t, self.table.get(t)?))) else {
            // Unknown tunnel: challenge it, and remember nothing until the answer proves it.
            return self.challenge(now, src, msg, out);
        };
        if msg.counter <= tun.counter {
            return debug!(
                "stale or repeated keepalive of tunnel {} from {}",
                msg.tunnel,
                net::shown(src)
            );
        }
        if tun.addr == src {
            self.table.refresh(t, msg.counter, now);
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
            return debug!(
                "response with a stale or foreign cookie from {}",
                net::shown(src)
            );
        }
        // The key works again (or at last): a later mismatch is news worth a line.
        self.said.badauth.rearm();
        self.adopt_instance(msg.instance, src);
        let found = self.table.find(&(msg.instance, msg.tunnel));
        match found.and_then(|t| Some((t, self.table.get(t)?))) {
            Some((t, tun)) => {
                if msg.counter <= tun.counter {
                    return;
                }
                if tun.addr != src && !self.roam(now, t, src, out) {
                    return;
                }
                self.table.refresh(t, msg.counter, now);
                self.ack(src, msg, t, out);
            }
            None if msg.active => {
                // It carried a client before this relay started; that mapping is gone, so the tunnel is useless.
                info!("tunnel {} from {} had a client before this relay started: asking the inside agent to close it", msg.tunnel, net::shown(src));
                self.reply(src, &msg.reply(Kind::Drop), out);
            }
            None => self.register_spare(now, src, msg, out),
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
                net::shown(src)
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
        if !self
            .table
            .may_register(&(msg.instance, msg.tunnel), msg.counter)
        {
            return debug!(
                "replayed response of removed tunnel {} from {}: ignored",
                msg.tunnel,
                net::shown(src)
            );
        }
        if self.table.spares() >= self.settings.max_tunnels {
            return debug!(
                "spare tunnel {} refused: already {} spares",
                msg.tunnel,
                self.table.spares()
            );
        }
        let (t, displaced) = self
            .table
            .register((msg.instance, msg.tunnel), src, msg.counter, now);
        if let Some(x) = displaced {
            self.drop_tunnel(
                now,
                x,
                "another tunnel proved itself at its or its client's address",
                out,
            );
        }
        // Spares again: a later shortage is news worth a line.
        self.said.waiting.rearm();
        self.said.expired.rearm();
        info!(
            "spare tunnel {} registered from {} ({} spare)",
            msg.tunnel,
            net::shown(src),
            self.table.spares()
        );
        if let Some((client, held)) = self.table.next_waiting() {
            // Clients only wait while there is no spare, so the oldest spare is the one just registered.
            if let Some(dst) = self.table.take_spare().and_then(|s| self.assign(client, s)) {
                out.extend(held.into_iter().map(|data| Transmit { to: dst, data }));
            }
        }
        self.ack(src, msg, t, out);
    }

    /// Accept a keepalive or response. The ack also says how many new clients still wait for a spare, so
    /// the inside agent opens that many at once instead of one behind each spare taken.
    fn ack(&self, to: SocketAddr, msg: &Message, t: usize, out: &mut Vec<Transmit>) {
        let mut ack = msg.reply(Kind::Ack);
        ack.active = self.table.get(t).is_some_and(|tun| tun.client.is_some());
        ack.waiting = self.table.waiting().min(255) as u8;
        self.reply(to, &ack, out);
    }

    /// Move tunnel `t` to `src`, which it proved it receives at. False if the tunnel is gone as a result (its
    /// new address was its own client's: a loop, so it is dropped).
    fn roam(&mut self, now: Instant, t: usize, src: SocketAddr, out: &mut Vec<Transmit>) -> bool {
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
            tun.key.1,
            net::shown(from),
            net::shown(src)
        );
        match tun.client {
            Some(c) => out.extend(held.into_iter().map(|data| Transmit { to: c, data })),
            None => self.drops.unrouted.add(held.len() as u64),
        }
        if let Some(x) = displaced {
            self.drop_tunnel(
                now,
                x,
                "another tunnel proved itself at its or its client's address",
                out,
            );
        }
        true
    }

    /// Forget a tunnel and tell the inside agent to close it.
    fn drop_tunnel(&mut self, now: Instant, t: usize, why: &str, out: &mut Vec<Transmit>) {
        let Some(tun) = self.table.close(t, now) else {
            return;
        };
        info!("tunnel {} dropped: {why}", tun.key.1);
        let mut m = Message::new(Kind::Drop, tun.key.0, tun.key.1, tun.counter);
        m.active = tun.client.is_some();
        self.reply(tun.addr, &m, out);
    }

    fn on_close(&mut self, now: Instant, msg: &Message) {
        // A close needs no challenge: a fresh counter proves it is no replay, and a close routes nothing anywhere.
        let Some(t) = self.table.find(&(msg.instance, msg.tunnel)) else {
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
                net::shown(c)
            ),
            None => info!("spare tunnel {} closed by the inside agent", msg.tunnel),
        }
    }

    /// Expire what timed out. Call a few times a second; nothing depends on the exact period.
    pub fn on_tick(&mut self, now: Instant) {
        self.table.expire_gone(now, protocol::COOKIE_LIFETIME);
        for tun in self.table.expire(now, 2 * self.settings.keepalive) {
            let who = tun
                .client
                .map(|c| format!(" (client {})", net::shown(c)))
                .unwrap_or_default();
            info!(
                "tunnel {} sent no keepalive for {}s: forgotten{who}",
                tun.key.1,
                2 * self.settings.keepalive.as_secs()
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
        if self.table.active() + self.table.waiting() < self.settings.max_tunnels {
            self.said.full.rearm();
        }
    }

    /// The tunnel table, a line per tunnel (for SIGUSR1).
    pub fn table_lines(&self, now: Instant) -> Vec<String> {
        let t = &self.table;
        (0..t.slots())
            .filter_map(|i| t.get(i))
            .map(|tun| {
                let client = tun
                    .client
                    .map_or("spare".to_string(), |c| format!("client {}", net::shown(c)));
                format!(
                    "tunnel {} of run {} at {}: {client}, last keepalive {}s ago",
                    tun.key.1,
                    tun.key.0,
                    net::shown(tun.addr),
                    now.saturating_duration_since(tun.last_keepalive).as_secs()
                )
            })
            .collect()
    }

    pub fn status(&self) -> String {
        format!(
            "status: tunnels active={} spare={} waiting={} {}",
            self.table.active(),
            self.table.spares(),
            self.table.waiting(),
            self.drops.summary()
        )
    }
}
