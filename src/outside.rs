//! The outside relay: one socket, one thread. It owns the table outright, so the data path takes no lock:
//! receive, one hash lookup on the source address, send.

use crate::cli::Config;
use crate::net::{self, RecvBuf};
use crate::protocol::{self, Cookies, Instance, Key, Kind, Message};
use crate::signal::Signal;
use crate::stats::Drops;
use crate::table::{Route, Table};
use log::{debug, info, warn};
use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Housekeeping period, and how long a signal may wait to be noticed.
const TICK: Duration = Duration::from_millis(200);
/// A new client's held datagrams wait this long for a spare.
const WAIT_FOR_SPARE: Duration = Duration::from_secs(10);
/// Runs of the inside agent that a restart replaced: never accepted again.
const RETIRED_KEPT: usize = 64;

pub struct Relay {
    sock: UdpSocket,
    key: Key,
    cookies: Cookies,
    table: Table,
    max_tunnels: usize,
    keepalive: Duration,
    status_interval: Option<Duration>,
    /// The run of the inside agent being served; a newer one that proves itself replaces it.
    current: Option<Instance>,
    retired: VecDeque<Instance>,
    drops: Drops,
    said_badauth: bool,
    said_full: bool,
    said_waiting: bool,
    said_expired: bool,
    last_authfail_notice: Option<Instant>,
}

impl Relay {
    pub fn new(cfg: &Config, sock: UdpSocket) -> Relay {
        Relay {
            sock,
            key: Key::new(&cfg.key),
            cookies: Cookies::new(),
            table: Table::default(),
            max_tunnels: cfg.max_tunnels,
            keepalive: cfg.keepalive,
            status_interval: cfg.status_interval,
            current: None,
            retired: VecDeque::new(),
            drops: Drops::default(),
            said_badauth: false,
            said_full: false,
            said_waiting: false,
            said_expired: false,
            last_authfail_notice: None,
        }
    }

    /// Serve until `stop` is set (by a signal); log the status line when `status` is set (SIGUSR1).
    pub fn serve(&mut self, stop: &AtomicBool, status: &AtomicBool) -> std::io::Result<()> {
        let mut buf = RecvBuf::new()?;
        self.sock.set_read_timeout(Some(TICK))?;
        let mut next_tick = Instant::now() + TICK;
        let mut next_status = self.status_interval.map(|i| Instant::now() + i);
        while !stop.load(Relaxed) {
            match self.sock.recv_from(&mut buf) {
                Ok((n, src)) => self.on_datagram(src, &buf[..n]),
                Err(e) if net::is_timeout(&e) => {}
                Err(e) => debug!("receive failed: {e}"),
            }
            let now = Instant::now();
            if now >= next_tick {
                if status.swap(false, Relaxed) {
                    crate::logging::status(&self.status());
                }
                self.housekeeping(now);
                next_tick = now + TICK;
            }
            if let (Some(at), Some(every)) = (next_status, self.status_interval) {
                if now >= at {
                    crate::logging::status(&self.status());
                    next_status = Some(now + every);
                }
            }
        }
        crate::logging::status(&self.status());
        Ok(())
    }

    /// The data path, top to bottom.
    fn on_datagram(&mut self, src: SocketAddr, data: &[u8]) {
        if protocol::looks_like_control(data) {
            return self.on_control(src, data);
        }
        match self.table.route(&src) {
            Route::To(dst) => self.send(data, dst),
            Route::Hold => {
                if !self.table.hold(src, data, Instant::now()) {
                    self.drops.overflow.incr();
                }
            }
            Route::Unrouted => self.drops.unrouted.incr(),
            Route::New => self.new_client(src, data),
        }
    }

    fn send(&self, data: &[u8], dst: SocketAddr) {
        if let Err(e) = self.sock.send_to(data, dst) {
            self.drops.senderr.incr();
            debug!(
                "send of {} bytes to {} failed: {e}",
                data.len(),
                net::shown(dst)
            );
        }
    }

    fn new_client(&mut self, src: SocketAddr, data: &[u8]) {
        if self.table.active() + self.table.waiting() >= self.max_tunnels {
            self.drops.refused.incr();
            if !self.said_full {
                warn!(
                    "all {} tunnels in use: refusing new clients (first: {})",
                    self.max_tunnels,
                    net::shown(src)
                );
                self.said_full = true;
            }
            return;
        }
        match self.table.take_spare() {
            Some(t) => {
                self.assign(src, t);
                self.send(data, self.table.get(t).addr);
            }
            None => {
                if !self.table.hold(src, data, Instant::now()) {
                    self.drops.overflow.incr();
                } else if !self.said_waiting {
                    info!(
                        "no spare tunnel ready: holding new clients' datagrams until one registers"
                    );
                    self.said_waiting = true;
                }
            }
        }
    }

    fn assign(&mut self, client: SocketAddr, t: usize) {
        self.table.assign(client, t);
        let tun = self.table.get(t);
        info!(
            "client {} -> tunnel {} at {} ({} active)",
            net::shown(client),
            tun.key.1,
            net::shown(tun.addr),
            self.table.active()
        );
    }

    fn on_control(&mut self, src: SocketAddr, data: &[u8]) {
        let msg = match self.key.open(data) {
            Ok(msg) => msg,
            Err(protocol::Error::BadMac) => return self.on_badauth(src),
            Err(e) => {
                return debug!(
                    "ignored control-shaped datagram from {}: {e:?}",
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
        let now = Instant::now();
        match msg.kind {
            Kind::Keepalive => self.on_keepalive(src, &msg, now),
            Kind::Response => self.on_response(src, &msg, now),
            Kind::Close => self.on_close(&msg),
            // Relay-to-inside kinds sent back at us: nothing to do.
            _ => debug!("ignored {:?} from {}", msg.kind, net::shown(src)),
        }
    }

    fn on_badauth(&mut self, src: SocketAddr) {
        self.drops.badauth.incr();
        if !self.said_badauth {
            warn!(
                "control message from {} failed authentication: the inside agent's key differs from ours (-k)",
                net::shown(src)
            );
            self.said_badauth = true;
        }
        // Tell the sender, at most once a second in all, with as many bytes as it sent: its log then says why.
        let now = Instant::now();
        if self
            .last_authfail_notice
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_authfail_notice = Some(now);
            self.send(&Key::authfail_notice(), src);
        }
    }

    fn reply(&self, to: SocketAddr, msg: &Message) {
        self.send(&self.key.seal(msg), to);
    }

    fn on_keepalive(&mut self, src: SocketAddr, msg: &Message, now: Instant) {
        let Some(t) = self.table.find(&(msg.instance, msg.tunnel)) else {
            // Unknown tunnel: challenge it, and remember nothing until the answer proves it.
            return self.challenge(src, msg, now);
        };
        let tun = self.table.get(t);
        if msg.counter <= tun.counter {
            return debug!(
                "stale or repeated keepalive of tunnel {} from {}",
                msg.tunnel,
                net::shown(src)
            );
        }
        if tun.addr == src {
            self.table.refresh(t, msg.counter, now);
            return self.ack(src, msg, t);
        }
        // A known tunnel at a new address: its NAT mapping changed, or someone replays its keepalive. Hold the
        // address's data until the challenge is answered, so the tunnel is never taken for a new client.
        self.table.expect_roam(src, now);
        self.challenge(src, msg, now);
    }

    fn challenge(&self, src: SocketAddr, msg: &Message, now: Instant) {
        let mut c = msg.reply(Kind::Challenge);
        c.cookie = self.cookies.issue(now, src, msg);
        self.reply(src, &c);
    }

    fn on_response(&mut self, src: SocketAddr, msg: &Message, now: Instant) {
        if !self.cookies.check(now, src, msg) {
            return debug!(
                "response with a stale or foreign cookie from {}",
                net::shown(src)
            );
        }
        // The key works again (or at last): a later mismatch is news worth a line.
        self.said_badauth = false;
        self.adopt_instance(msg.instance, src);
        match self.table.find(&(msg.instance, msg.tunnel)) {
            Some(t) => {
                if msg.counter <= self.table.get(t).counter {
                    return;
                }
                if self.table.get(t).addr != src {
                    self.roam(t, src);
                }
                self.table.refresh(t, msg.counter, now);
                self.ack(src, msg, t);
            }
            None if msg.active => {
                // It carried a client before this relay started; that mapping is gone, so the tunnel is useless.
                info!("tunnel {} from {} had a client before this relay started: asking the inside agent to close it", msg.tunnel, net::shown(src));
                self.reply(src, &msg.reply(Kind::Drop));
            }
            None => self.register_spare(src, msg, now),
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

    fn register_spare(&mut self, src: SocketAddr, msg: &Message, now: Instant) {
        if self.table.was_closed(&(msg.instance, msg.tunnel)) {
            return debug!(
                "response of closed tunnel {} from {}: ignored",
                msg.tunnel,
                net::shown(src)
            );
        }
        if self.table.spares() >= self.max_tunnels {
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
            self.drop_tunnel(x, "its client's address now belongs to a tunnel");
        }
        // Spares again: a later shortage is news worth a line.
        self.said_waiting = false;
        self.said_expired = false;
        info!(
            "spare tunnel {} registered from {} ({} spare)",
            msg.tunnel,
            net::shown(src),
            self.table.spares()
        );
        if let Some((client, held)) = self.table.next_waiting() {
            // Clients only wait while there is no spare, so this is the one just registered.
            let spare = self
                .table
                .take_spare()
                .expect("a spare was just registered");
            self.assign(client, spare);
            let dst = self.table.get(spare).addr;
            held.iter().for_each(|d| self.send(d, dst));
        }
        self.ack(src, msg, t);
    }

    /// Accept a keepalive or response. The ack also says how many new clients still wait for a spare, so
    /// the inside agent opens that many at once instead of one behind each spare taken.
    fn ack(&self, to: SocketAddr, msg: &Message, t: usize) {
        let mut ack = msg.reply(Kind::Ack);
        ack.active = self.table.get(t).client.is_some();
        ack.waiting = self.table.waiting().min(255) as u8;
        self.reply(to, &ack);
    }

    fn roam(&mut self, t: usize, src: SocketAddr) {
        let from = self.table.get(t).addr;
        let (displaced, held) = self.table.move_to(t, src);
        info!(
            "tunnel {} moved from {} to {}",
            self.table.get(t).key.1,
            net::shown(from),
            net::shown(src)
        );
        if let Some(x) = displaced {
            self.drop_tunnel(x, "its client was a moved tunnel");
        }
        match self.table.get(t).client {
            Some(c) => held.iter().for_each(|d| self.send(d, c)),
            None => {
                self.drops.unrouted.add(held.len() as u64);
            }
        }
    }

    /// Forget a tunnel and tell the inside agent to close it.
    fn drop_tunnel(&mut self, t: usize, why: &str) {
        let tun = self.table.close(t);
        info!("tunnel {} dropped: {why}", tun.key.1);
        let mut m = Message::new(Kind::Drop, tun.key.0, tun.key.1, tun.counter);
        m.active = tun.client.is_some();
        self.reply(tun.addr, &m);
    }

    fn on_close(&mut self, msg: &Message) {
        // A close needs no challenge: a fresh counter proves it is no replay, and a close routes nothing anywhere.
        let Some(t) = self.table.find(&(msg.instance, msg.tunnel)) else {
            return;
        };
        if msg.counter <= self.table.get(t).counter {
            return;
        }
        let tun = self.table.close(t);
        match tun.client {
            Some(c) => info!(
                "tunnel {} closed by the inside agent (client {})",
                msg.tunnel,
                net::shown(c)
            ),
            None => info!("spare tunnel {} closed by the inside agent", msg.tunnel),
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        self.table.expire_closed(now, protocol::COOKIE_LIFETIME);
        for tun in self.table.expire(now, 2 * self.keepalive) {
            let who = tun
                .client
                .map(|c| format!(" (client {})", net::shown(c)))
                .unwrap_or_default();
            info!(
                "tunnel {} sent no keepalive for {}s: forgotten{who}",
                tun.key.1,
                2 * self.keepalive.as_secs()
            );
        }
        let dropped = self.table.expire_held(now, WAIT_FOR_SPARE);
        if dropped > 0 {
            self.drops.unrouted.add(dropped as u64);
            // Once per episode without spares (as when no inside agent is connected), then only counted:
            // a client retrying for hours must not fill the log.
            if !self.said_expired {
                warn!(
                    "no spare tunnel came within {}s: dropping held datagrams (counted as unrouted) until one does",
                    WAIT_FOR_SPARE.as_secs()
                );
                self.said_expired = true;
            }
        }
        if self.table.active() + self.table.waiting() < self.max_tunnels {
            self.said_full = false;
        }
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

/// Bind the listening socket: a bare port means every address, IPv6 and IPv4 (falling back to IPv4 alone on a
/// host without IPv6).
pub fn bind(host: Option<&str>, port: u16) -> Result<UdpSocket, String> {
    let sock = match host {
        // No IPv6 on this host: IPv4 alone; if IPv4 fails the same way (port in use), say that.
        None => {
            net::bind(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))).or_else(|e6| {
                UdpSocket::bind(("0.0.0.0", port)).map_err(|e4| {
                    if e4.kind() == e6.kind() {
                        e4
                    } else {
                        e6
                    }
                })
            })
        }
        Some(h) => {
            let hp = crate::cli::HostPort {
                host: h.to_string(),
                port,
            };
            let addr = net::resolve(&hp).map_err(|e| format!("cannot listen on {hp}: {e}"))?;
            net::bind(addr)
        }
    };
    let shown_addr = match host {
        Some(h) => crate::cli::HostPort {
            host: h.to_string(),
            port,
        }
        .to_string(),
        None => format!("port {port}"),
    };
    sock.map_err(|e| format!("cannot listen on {shown_addr}: {e}"))
}

pub fn run(cfg: &Config, host: Option<&str>, port: u16) -> Result<(), String> {
    let sock = bind(host, port)?;
    net::grow_receive_buffer(&sock);
    info!(
        "relay listening on {}",
        sock.local_addr().map(|a| a.to_string()).unwrap_or_default()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let status = Arc::new(AtomicBool::new(false));
    let (stop_flag, status_flag) = (stop.clone(), status.clone());
    crate::signal::watch(move |signal| match signal {
        Signal::Terminate(sig) => {
            info!("{sig}: exiting");
            stop_flag.store(true, Relaxed);
        }
        Signal::Status => status_flag.store(true, Relaxed),
        Signal::Reload => warn!("{}", crate::signal::RELOAD_IGNORED),
    });
    Relay::new(cfg, sock)
        .serve(&stop, &status)
        .map_err(|e| format!("relay failed: {e}"))
}
