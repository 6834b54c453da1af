//! The inside agent's coordinator: one thread that owns the tunnel table and the keepalive timer, keeps the
//! spare pool full, and answers the relay. Tunnel threads (tunnel.rs) move the data and report events here.

use crate::cli::{Config, HostPort};
use crate::net;
use crate::protocol::{Instance, Key, Kind, Message, LEN};
use crate::signal::Signal;
use crate::stats::Drops;
use crate::tunnel::Tunnel;
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use log::{debug, error, info, warn};
use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Who this run of the inside agent is, shared with the tunnel threads.
pub struct Identity {
    pub key: Key,
    pub instance: Instance,
    /// One counter for the whole run, so messages of every tunnel are fresh whatever the clock says. A mutex,
    /// not an AtomicU64: MIPS32 has no 64-bit atomics, and a control message costs an HMAC anyway.
    counter: Mutex<u64>,
}

impl Identity {
    pub fn new(key: &[u8]) -> Identity {
        Identity {
            key: Key::new(key),
            instance: Instance::random(),
            counter: Mutex::new(0),
        }
    }

    pub fn seal(&self, kind: Kind, tunnel: u32, active: bool, cookie: [u8; 16]) -> [u8; LEN] {
        let counter = {
            let mut c = self.counter.lock().unwrap_or_else(|e| e.into_inner());
            *c += 1;
            *c
        };
        let mut m = Message::new(kind, self.instance, tunnel, counter);
        m.active = active;
        m.cookie = cookie;
        self.key.seal(&m)
    }
}

/// What tunnel threads, resolvers and the signal thread tell the coordinator.
pub enum Event {
    Resolved {
        relay: bool,
        addr: SocketAddr,
    },
    Control(u32, Message),
    AuthFail,
    Activated(u32),
    Idle(u32),
    Failed(u32, String),
    Shutdown(&'static str),
    /// SIGUSR1: log the status line.
    Status,
}

/// What the coordinator tells a tunnel thread: only ever "stop" or "the relay's address is now X", where the
/// latest value wins, so a flag and a slot rather than a queue. The tunnel checks one atomic per datagram.
pub struct Control {
    stop: AtomicBool,
    relay_changed: AtomicBool,
    relay: Mutex<Option<SocketAddr>>,
}

impl Control {
    fn new() -> Control {
        Control {
            stop: AtomicBool::new(false),
            relay_changed: AtomicBool::new(false),
            relay: Mutex::new(None),
        }
    }

    fn set_relay(&self, addr: SocketAddr) {
        *self.relay.lock().unwrap() = Some(addr);
        self.relay_changed.store(true, Release);
    }

    /// The new relay address, if it changed since the last call.
    pub fn new_relay(&self) -> Option<SocketAddr> {
        // A plain load first: the swap (a locked instruction) only when something changed.
        if self.relay_changed.load(Relaxed) && self.relay_changed.swap(false, Acquire) {
            *self.relay.lock().unwrap()
        } else {
            None
        }
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Relaxed)
    }
}

struct Handle {
    /// A clone of the tunnel's socket: keepalives must leave through the tunnel's own NAT mapping.
    sock: UdpSocket,
    v6: bool,
    ctl: Arc<Control>,
    active: bool,
    registered: bool,
    next_keepalive: Instant,
    attempts: u32,
}

pub struct Agent {
    cfg: Config,
    service_name: HostPort,
    relay_name: HostPort,
    identity: Arc<Identity>,
    drops: Arc<Drops>,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    relay: Option<SocketAddr>,
    service: Option<SocketAddr>,
    tunnels: BTreeMap<u32, Handle>,
    next_id: u32,
    started: Instant,
    heard: Option<Instant>,
    resolving_relay: Option<Instant>,
    reregistered: Option<Instant>,
    said_authfail: bool,
    said_silent: bool,
    said_full: bool,
    said_open_failed: bool,
}

impl Agent {
    pub fn new(cfg: Config, service_name: HostPort, relay_name: HostPort) -> Agent {
        let (tx, rx) = unbounded();
        Agent {
            identity: Arc::new(Identity::new(&cfg.key)),
            cfg,
            service_name,
            relay_name,
            drops: Arc::default(),
            tx,
            rx,
            relay: None,
            service: None,
            tunnels: BTreeMap::new(),
            next_id: 1,
            started: Instant::now(),
            heard: None,
            resolving_relay: None,
            reregistered: None,
            said_authfail: false,
            said_silent: false,
            said_full: false,
            said_open_failed: false,
        }
    }

    /// A sender for events from outside the agent (the signal thread).
    pub fn events(&self) -> Sender<Event> {
        self.tx.clone()
    }

    pub fn run(mut self) {
        info!(
            "inside agent run {} for service {} via relay {}",
            self.identity.instance, self.service_name, self.relay_name
        );
        self.resolve(false);
        self.resolve(true);
        let mut next_status = self.cfg.status_interval.map(|i| Instant::now() + i);
        loop {
            let now = Instant::now();
            self.send_keepalives(now);
            self.fill_spares(now);
            self.watch_relay(now);
            if let (Some(at), Some(every)) = (next_status, self.cfg.status_interval) {
                if now >= at {
                    crate::logging::status(&self.status());
                    next_status = Some(now + every);
                }
            }
            let wake = self
                .tunnels
                .values()
                .map(|h| h.next_keepalive)
                .min()
                .unwrap_or(now + Duration::from_secs(1));
            let wait = wake
                .min(now + Duration::from_secs(1))
                .saturating_duration_since(now);
            match self.rx.recv_timeout(wait) {
                Ok(Event::Shutdown(sig)) => return self.shutdown(sig),
                Ok(ev) => self.on_event(ev),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => unreachable!("the agent holds a sender"),
            }
        }
    }

    /// Resolve a name on a helper thread (getaddrinfo blocks), retrying with backoff: a daemon may start
    /// before DNS works.
    fn resolve(&mut self, relay: bool) {
        let name = if relay {
            self.relay_name.clone()
        } else {
            self.service_name.clone()
        };
        if relay {
            self.resolving_relay = Some(Instant::now());
        }
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new()
            .name("resolve".into())
            .spawn(move || {
                for attempt in 0.. {
                    match net::resolve(&name) {
                        Ok(addr) => {
                            let _ = tx.send(Event::Resolved { relay, addr });
                            return;
                        }
                        Err(e) => {
                            let wait = net::backoff(attempt, Duration::from_secs(30));
                            // Said once; the retries (every 30 s at most) only at debug level.
                            let level = if attempt == 0 {
                                log::Level::Warn
                            } else {
                                log::Level::Debug
                            };
                            log::log!(
                                level,
                                "cannot resolve {name}: {e}; retrying after 1, 2, 4 … 30 s"
                            );
                            std::thread::sleep(wait);
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            error!("cannot start a resolver thread: {e}");
        }
    }

    fn on_event(&mut self, ev: Event) {
        let now = Instant::now();
        match ev {
            Event::Resolved { relay: false, addr } => {
                info!("service {} is {addr}", self.service_name);
                self.service = Some(addr);
            }
            Event::Resolved { relay: true, addr } => self.relay_resolved(addr, now),
            Event::Control(id, msg) => self.on_control(id, msg, now),
            Event::AuthFail => {
                // The notice is unauthenticated: believed only while the relay has not answered us lately,
                // so nobody can make a working agent log that its key is wrong.
                let answering = self
                    .heard
                    .is_some_and(|t| now.duration_since(t) < self.cfg.keepalive);
                if !self.said_authfail && !answering {
                    warn!("the relay rejects our control messages: its key differs from ours (-k, --keyFile)");
                    self.said_authfail = true;
                }
            }
            Event::Activated(id) => {
                if let Some(h) = self.tunnels.get_mut(&id) {
                    h.active = true;
                }
                let active = self.tunnels.values().filter(|h| h.active).count();
                info!("tunnel {id} carries a new client ({active} active)");
            }
            Event::Idle(id) => self.close(id, "idle", true),
            Event::Failed(id, e) => {
                error!("tunnel {id} failed: {e}");
                self.close(id, "failed", true);
            }
            Event::Status => crate::logging::status(&self.status()),
            Event::Shutdown(_) => unreachable!("handled by run"),
        }
    }

    fn relay_resolved(&mut self, addr: SocketAddr, now: Instant) {
        self.resolving_relay = None;
        match self.relay.replace(addr) {
            None => info!("relay {} is {addr}", self.relay_name),
            Some(old) if old == addr => return,
            Some(old) => info!(
                "relay {} moved from {old} to {addr}: registering again",
                self.relay_name
            ),
        }
        let ids: Vec<u32> = self.tunnels.keys().copied().collect();
        for id in ids {
            let h = &self.tunnels[&id];
            if h.v6 || addr.is_ipv4() {
                h.ctl.set_relay(net::as_seen_by(h.v6, addr));
                let h = self.tunnels.get_mut(&id).unwrap();
                h.registered = false;
                h.attempts = 0;
                h.next_keepalive = now;
            } else {
                self.close(id, "the relay's address family changed", false);
            }
        }
    }

    fn on_control(&mut self, id: u32, msg: Message, now: Instant) {
        if msg.instance != self.identity.instance || msg.tunnel != id {
            return debug!("tunnel {id}: ignored a relay message for another tunnel");
        }
        self.heard = Some(now);
        self.said_authfail = false;
        if self.said_silent {
            info!("the relay answers again");
            self.said_silent = false;
        }
        let Some(h) = self.tunnels.get_mut(&id) else {
            return;
        };
        match msg.kind {
            Kind::Challenge => {
                let response = self.identity.seal(Kind::Response, id, h.active, msg.cookie);
                h.send(
                    &response,
                    self.relay
                        .expect("a tunnel exists only once the relay resolved"),
                );
                let recently = self
                    .reregistered
                    .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1));
                if h.registered && !recently {
                    // (At most once a second: a replayed challenge must not make every tunnel send.)
                    // The relay knew this tunnel and challenges it again: it restarted, or a NAT gave the
                    // tunnel a new public port. Either way every tunnel is likely affected: re-register all
                    // now rather than each at its next keepalive, so waiting clients get spares at once.
                    debug!("tunnel {id} challenged again: re-registering every tunnel");
                    self.reregistered = Some(now);
                    for h in self.tunnels.values_mut() {
                        h.registered = false;
                        h.attempts = 0;
                        h.next_keepalive = now;
                    }
                }
            }
            Kind::Ack => {
                if !h.registered {
                    h.registered = true;
                    h.attempts = 0;
                    h.next_keepalive = now + self.cfg.keepalive;
                    if !h.active {
                        info!("spare tunnel {id} registered at the relay");
                    }
                }
                if msg.waiting > 0 {
                    self.open_for_waiting(usize::from(msg.waiting), now);
                }
            }
            Kind::Drop => self.close(id, "dropped by the relay", false),
            _ => debug!("tunnel {id}: ignored {:?} from the relay", msg.kind),
        }
    }

    /// Keepalives on every tunnel, spare and active, keep the NAT mappings open; an unanswered registration is
    /// retried sooner (1 s, 2 s, 4 s … up to the interval), so a lost datagram does not cost a whole interval.
    fn send_keepalives(&mut self, now: Instant) {
        let Some(relay) = self.relay else { return };
        for (&id, h) in self
            .tunnels
            .iter_mut()
            .filter(|(_, h)| h.next_keepalive <= now)
        {
            h.send(
                &self.identity.seal(Kind::Keepalive, id, h.active, [0; 16]),
                relay,
            );
            h.next_keepalive = if h.registered {
                now + self.cfg.keepalive
            } else {
                h.attempts += 1;
                now + net::backoff(h.attempts - 1, self.cfg.keepalive)
            };
        }
    }

    /// Keep `--spares` spare tunnels while fewer than `-n` are active.
    fn fill_spares(&mut self, now: Instant) {
        let (Some(relay), Some(service)) = (self.relay, self.service) else {
            return;
        };
        let active = self.tunnels.values().filter(|h| h.active).count();
        let mut spare = self.tunnels.len() - active;
        let want = self
            .cfg
            .spares
            .min(self.cfg.max_tunnels.saturating_sub(active));
        if active >= self.cfg.max_tunnels && !self.said_full {
            warn!(
                "all {} tunnels are active: no spare until one closes",
                self.cfg.max_tunnels
            );
        }
        self.said_full = active >= self.cfg.max_tunnels;
        while spare < want {
            match self.open(relay, service, now) {
                Ok(()) => {
                    spare += 1;
                    self.said_open_failed = false;
                }
                Err(e) => {
                    if !self.said_open_failed {
                        error!("cannot open a tunnel socket: {e}");
                        self.said_open_failed = true;
                    }
                    return;
                }
            }
        }
    }

    /// The relay says `waiting` new clients wait for a spare: open that many now, less those already being
    /// registered, within -n, rather than one behind each spare as it is taken.
    fn open_for_waiting(&mut self, waiting: usize, now: Instant) {
        let (Some(relay), Some(service)) = (self.relay, self.service) else {
            return;
        };
        let pending = self
            .tunnels
            .values()
            .filter(|h| !h.active && !h.registered)
            .count();
        let room = self.cfg.max_tunnels.saturating_sub(self.tunnels.len());
        let extra = waiting.saturating_sub(pending).min(room);
        if extra > 0 {
            info!("{waiting} new clients wait at the relay: opening {extra} more spare tunnels");
        }
        for _ in 0..extra {
            if let Err(e) = self.open(relay, service, now) {
                return error!("cannot open a tunnel socket: {e}");
            }
        }
    }

    fn open(
        &mut self,
        relay: SocketAddr,
        service: SocketAddr,
        now: Instant,
    ) -> std::io::Result<()> {
        let sock = net::bind_for(relay, service)?;
        let v6 = sock.local_addr()?.is_ipv6();
        let (relay, service) = (net::as_seen_by(v6, relay), net::as_seen_by(v6, service));
        let clone = sock.try_clone()?;
        let ctl = Arc::new(Control::new());
        let id = self.next_id;
        let jitter = 0.8
            + 0.4 * f64::from(u32::from_le_bytes(crate::protocol::random_bytes()))
                / f64::from(u32::MAX);
        Tunnel {
            id,
            sock,
            relay,
            service,
            identity: self.identity.clone(),
            idle_timeout: self.cfg.idle_timeout.mul_f64(jitter),
            events: self.tx.clone(),
            ctl: ctl.clone(),
            drops: self.drops.clone(),
        }
        .spawn()?;
        self.next_id += 1;
        debug!(
            "tunnel {id} opened on port {}",
            clone.local_addr().map(|a| a.port()).unwrap_or(0)
        );
        let next_keepalive = now + net::backoff(0, self.cfg.keepalive);
        let h = Handle {
            sock: clone,
            v6,
            ctl,
            active: false,
            registered: false,
            next_keepalive,
            attempts: 1,
        };
        h.send(
            &self.identity.seal(Kind::Keepalive, id, false, [0; 16]),
            relay,
        );
        self.tunnels.insert(id, h);
        Ok(())
    }

    /// Close a tunnel; unless the relay asked for it, tell the relay at once so no client is routed into it.
    /// The close is sent twice: a lost one would leave the relay routing into a dead tunnel until it expires.
    fn close(&mut self, id: u32, why: &str, tell_relay: bool) {
        let Some(h) = self.tunnels.remove(&id) else {
            return;
        };
        if let (true, Some(relay)) = (tell_relay, self.relay) {
            for _ in 0..2 {
                h.send(
                    &self.identity.seal(Kind::Close, id, h.active, [0; 16]),
                    relay,
                );
            }
        }
        h.ctl.stop.store(true, Relaxed);
        let kind = if h.active { "tunnel" } else { "spare tunnel" };
        info!("{kind} {id} closed: {why}");
    }

    /// No authenticated word from the relay for two keepalive intervals: say so once, and look its name up
    /// again (dynamic DNS may have moved it).
    fn watch_relay(&mut self, now: Instant) {
        if self.tunnels.is_empty() || self.relay.is_none() {
            return;
        }
        let limit = 2 * self.cfg.keepalive + Duration::from_secs(1);
        let since = self.heard.unwrap_or(self.started);
        if now.duration_since(since) < limit {
            return;
        }
        if !self.said_silent {
            warn!(
                "no answer from the relay {} for {}s: is it running, and does it use the same key?",
                self.relay_name,
                now.duration_since(since).as_secs()
            );
            self.said_silent = true;
        }
        let numeric = self.relay_name.host.parse::<std::net::IpAddr>().is_ok();
        if !numeric
            && self
                .resolving_relay
                .is_none_or(|t| now.duration_since(t) >= limit)
        {
            self.resolve(true);
        }
    }

    fn shutdown(mut self, sig: &str) {
        crate::logging::status(&self.status());
        info!("{sig}: closing {} tunnels and exiting", self.tunnels.len());
        let ids: Vec<u32> = self.tunnels.keys().copied().collect();
        for id in ids {
            self.close(id, sig, true);
        }
    }

    fn status(&self) -> String {
        let active = self.tunnels.values().filter(|h| h.active).count();
        format!(
            "status: tunnels active={active} spare={} {}",
            self.tunnels.len() - active,
            self.drops.summary()
        )
    }
}

impl Handle {
    fn send(&self, msg: &[u8], relay: SocketAddr) {
        if let Err(e) = self.sock.send_to(msg, net::as_seen_by(self.v6, relay)) {
            debug!("control send to {relay} failed: {e}");
        }
    }
}

pub fn run(cfg: Config, service: HostPort, relay: HostPort) {
    net::raise_fd_limit();
    let agent = Agent::new(cfg, service, relay);
    let events = agent.events();
    crate::signal::watch(move |signal| match signal {
        Signal::Terminate(sig) => {
            let _ = events.send(Event::Shutdown(sig));
        }
        Signal::Status => {
            let _ = events.send(Event::Status);
        }
        Signal::Reload => warn!("{}", crate::signal::RELOAD_IGNORED),
    });
    agent.run();
}
