//! The inside agent's every decision, as a state machine: which tunnels to open and close, when to send
//! keepalives, how to answer the relay, when to look names up again. It is fed inputs (events of the tunnel
//! threads, resolved names, timer ticks) with the time, and answers with [`Action`]s. No socket, no clock, no
//! thread: `inside.rs` opens the sockets, runs the tunnel threads and performs the actions.

use crate::addr;
use crate::cli::HostPort;
use crate::inside::identity::Identity;
use crate::pace::{self, Once};
use crate::stats::Drops;
use crate::wire::{Claim, Kind, Message, LEN};
use log::{debug, error, info, warn};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest the coordinator sleeps without a timer due: how late a newly resolved name or a status line may be.
pub const MAX_SLEEP: Duration = Duration::from_secs(1);
/// A re-challenged tunnel re-registers every tunnel, at most this often (a replayed challenge must not make every
/// tunnel send).
const REREGISTER_EVERY: Duration = Duration::from_secs(1);

/// What a tunnel thread tells the coordinator (with its tunnel number).
#[derive(Debug)]
pub enum Event {
    /// An authenticated message from the relay.
    Control(Message),
    /// The relay's unauthenticated "your MAC failed" notice.
    AuthFail,
    /// The first datagram of a client arrived: the tunnel is no longer a spare.
    Activated,
    /// An active tunnel carried nothing for its idle timeout; the thread has ended.
    Idle,
    /// The thread could not go on and has ended.
    Failed(Failure),
}

/// Why a tunnel thread ended on its own.
#[derive(Debug)]
pub enum Failure {
    Buffer(std::io::Error),
    Timeout(std::io::Error),
    Receive(std::io::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Failure::Buffer(e) => write!(f, "cannot allocate its receive buffer: {e}"),
            Failure::Timeout(e) => write!(f, "cannot set its receive timeout: {e}"),
            Failure::Receive(e) => write!(f, "receive failed: {e}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Settings {
    /// `-n`: tunnels carrying clients at most.
    pub max_tunnels: usize,
    /// `--spares`: spare tunnels kept registered.
    pub spares: usize,
    /// `--keepaliveInterval`.
    pub keepalive: Duration,
    /// The names as given, for the log.
    pub service_name: HostPort,
    pub relay_name: HostPort,
}

/// What the coordinator asks the socket layer to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Open tunnel `id`: a socket for `relay` and `service` and its thread. If that fails, feed back
    /// [`Input::OpenFailed`].
    Open {
        id: u32,
        relay: SocketAddr,
        service: SocketAddr,
    },
    /// Send a control message from tunnel `id`'s own socket (keepalives must leave through its NAT mapping).
    Send {
        id: u32,
        to: SocketAddr,
        msg: [u8; LEN],
    },
    /// Tell tunnel `id`'s thread the relay's new address.
    SetRelay { id: u32, relay: SocketAddr },
    /// Stop tunnel `id`'s thread.
    Stop { id: u32 },
    /// Look up the relay's (true) or the service's (false) name, and feed back [`Input::Resolved`].
    Resolve { relay: bool },
}

/// What the coordinator is told.
#[derive(Debug)]
pub enum Input {
    Resolved {
        relay: bool,
        addr: SocketAddr,
    },
    /// Tunnel `id` is open; the service sees it at `local`.
    Opened {
        id: u32,
        local: SocketAddr,
    },
    /// Tunnel `id`'s thread reports.
    Tunnel(u32, Event),
    /// Opening tunnel `id` failed.
    OpenFailed(u32, std::io::Error),
}

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
    bound_by: u64,
    /// The address the service sees this tunnel at.
    pub local: Option<SocketAddr>,
    /// When a message last left on this tunnel: the NAT mapping is fresh from then, so the interval counts
    /// from it (not from when the relay's answer arrived, which may be late).
    last_sent: Instant,
    next_keepalive: Instant,
    attempts: u32,
    /// The counter of the oldest keepalive the relay has not acknowledged: until an ack for it (or a later
    /// message) comes, the keepalive is sent again, sooner than the interval.
    unacked: Option<u64>,
}

impl Handle {
    /// What keepalives and responses of this tunnel say about it.
    fn claim(&self) -> Claim {
        Claim {
            active: self.active,
            answered: self.answered,
            client: self.client,
            local: self.local,
        }
    }

    /// Send a keepalive from the start, as for a new tunnel (the relay may not know it).
    fn reregister(&mut self, now: Instant) {
        self.registered = false;
        self.attempts = 0;
        self.unacked = None;
        self.next_keepalive = now;
    }
}

/// How soon an unacknowledged keepalive of a registered tunnel is sent again: after 1 s, then 2, 4 … s, but
/// never more than a quarter of the interval apart, so that the relay (which forgets a tunnel silent for two
/// intervals) sees several tries before it would: with a 2 s interval every 0.5 s, with 25 s after 1, 2, 4, 6.25 s.
pub fn retry_after(attempt: u32, keepalive: Duration) -> Duration {
    pace::backoff(attempt, keepalive).min(keepalive / 4)
}

#[derive(Default)]
struct Said {
    authfail: Once,
    silent: Once,
    full: Once,
    open_failed: Once,
}

pub struct Coordinator {
    identity: Arc<Identity>,
    settings: Settings,
    drops: Arc<Drops>,
    relay: Option<SocketAddr>,
    service: Option<SocketAddr>,
    tunnels: BTreeMap<u32, Handle>,
    next_id: u32,
    started: Instant,
    /// The last authenticated message from the relay.
    heard: Option<Instant>,
    /// When the relay's name was last sent for lookup, while the lookup is under way.
    resolving_relay: Option<Instant>,
    reregistered: Option<Instant>,
    said: Said,
}

impl Coordinator {
    pub fn new(
        identity: Arc<Identity>,
        settings: Settings,
        drops: Arc<Drops>,
        now: Instant,
    ) -> Coordinator {
        Coordinator {
            identity,
            settings,
            drops,
            relay: None,
            service: None,
            tunnels: BTreeMap::new(),
            next_id: 1,
            started: now,
            heard: None,
            resolving_relay: None,
            reregistered: None,
            said: Said::default(),
        }
    }

    /// The first actions: look both names up.
    pub fn start(&mut self, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::Resolve { relay: false });
        out.push(Action::Resolve { relay: true });
        self.resolving_relay = Some(now);
    }

    pub fn tunnels(&self) -> &BTreeMap<u32, Handle> {
        &self.tunnels
    }

    pub fn relay(&self) -> Option<SocketAddr> {
        self.relay
    }

    pub fn handle(&mut self, now: Instant, input: Input, out: &mut Vec<Action>) {
        match input {
            Input::Resolved { relay: false, addr } => {
                if self.service != Some(addr) {
                    info!("service {} is {addr}", self.settings.service_name);
                }
                self.service = Some(addr);
            }
            Input::Resolved { relay: true, addr } => self.relay_resolved(now, addr, out),
            Input::Opened { id, local } => {
                if let Some(h) = self.tunnels.get_mut(&id) {
                    h.local = Some(local);
                }
            }
            Input::OpenFailed(id, e) => {
                self.tunnels.remove(&id);
                if self.said.open_failed.first() {
                    error!("cannot open a tunnel socket: {e}");
                }
            }
            Input::Tunnel(id, event) => self.on_tunnel(now, id, event, out),
        }
    }

    fn on_tunnel(&mut self, now: Instant, id: u32, event: Event, out: &mut Vec<Action>) {
        match event {
            Event::Control(msg) => self.on_control(now, id, msg, out),
            Event::AuthFail => {
                // The notice is unauthenticated: believed only while the relay has not answered us lately,
                // so nobody can make a working agent log that its key is wrong.
                let answering = self
                    .heard
                    .is_some_and(|t| now.saturating_duration_since(t) < self.settings.keepalive);
                if !answering && self.said.authfail.first() {
                    warn!("the relay rejects our control messages: its key differs from ours (-k, --keyFile)");
                }
            }
            Event::Activated => {
                let Some(h) = self.tunnels.get_mut(&id) else {
                    return;
                };
                h.active = true;
                // At once, not at the next interval: the ack says which client the relay gave the tunnel, the
                // binding a relay that loses it needs back.
                h.next_keepalive = now;
                h.attempts = 0;
                h.unacked = None;
                self.identity.set_carrying(self.active());
                info!(
                    "tunnel {id} carries a new client ({} active)",
                    self.active()
                );
                self.send_keepalives(now, out);
            }
            Event::Idle => self.close(id, "idle", true, out),
            Event::Failed(e) => {
                error!("tunnel {id} failed: {e}");
                self.close(id, "failed", true, out);
            }
        }
    }

    fn relay_resolved(&mut self, now: Instant, addr: SocketAddr, out: &mut Vec<Action>) {
        self.resolving_relay = None;
        match self.relay.replace(addr) {
            None => info!("relay {} is {addr}", self.settings.relay_name),
            Some(old) if old == addr => return,
            Some(old) => info!(
                "relay {} moved from {old} to {addr}: registering again",
                self.settings.relay_name
            ),
        }
        let ids: Vec<u32> = self.tunnels.keys().copied().collect();
        for id in ids {
            let Some(h) = self.tunnels.get_mut(&id) else {
                continue;
            };
            if h.v6 || addr.is_ipv4() {
                out.push(Action::SetRelay { id, relay: addr });
                h.reregister(now);
            } else {
                self.close(id, "the relay's address family changed", false, out);
            }
        }
    }

    fn on_control(&mut self, now: Instant, id: u32, msg: Message, out: &mut Vec<Action>) {
        if msg.instance != self.identity.instance || msg.tunnel != id {
            return debug!("tunnel {id}: ignored a relay message for another tunnel");
        }
        self.heard = Some(now);
        self.said.authfail.rearm();
        if self.said.silent.said() {
            info!("the relay answers again");
            self.said.silent.rearm();
        }
        let (Some(relay), Some(h)) = (self.relay, self.tunnels.get_mut(&id)) else {
            return;
        };
        match msg.kind {
            Kind::Challenge => {
                let (_, response) =
                    self.identity
                        .seal_claim(Kind::Response, id, &h.claim(), msg.cookie);
                h.last_sent = now;
                out.push(Action::Send {
                    id,
                    to: relay,
                    msg: response,
                });
                let recently = self
                    .reregistered
                    .is_some_and(|t| now.saturating_duration_since(t) < REREGISTER_EVERY);
                if h.registered && !recently {
                    // The relay knew this tunnel and challenges it again: it restarted, or a NAT gave the
                    // tunnel a new public port. Either way every tunnel is likely affected: re-register all
                    // now rather than each at its next keepalive, so waiting clients get spares at once.
                    debug!("tunnel {id} challenged again: re-registering every tunnel");
                    self.reregistered = Some(now);
                    for h in self.tunnels.values_mut() {
                        h.reregister(now);
                    }
                }
            }
            Kind::Ack => {
                let answered = h.unacked.is_none_or(|c| msg.counter >= c);
                if !h.registered || answered {
                    h.attempts = 0;
                    h.unacked = None;
                    h.next_keepalive = h.last_sent + self.settings.keepalive;
                }
                if !h.registered {
                    h.registered = true;
                    if !h.active {
                        info!("spare tunnel {id} registered at the relay");
                    }
                }
                if msg.counter > h.bound_by {
                    h.bound_by = msg.counter;
                    let client = msg.client.filter(|_| h.active);
                    if client != h.client {
                        if let Some(c) = client {
                            let seen = h
                                .local
                                .map_or("?".to_string(), |l| addr::shown(l).to_string());
                            info!(
                                "tunnel {id}: client {} is {seen} to the service",
                                addr::shown(c)
                            );
                        }
                    }
                    h.client = client;
                    h.answered = client.is_some() && msg.answered;
                }
                if msg.waiting > 0 {
                    self.open_for_waiting(now, usize::from(msg.waiting), out);
                }
            }
            Kind::Drop => self.close(id, "dropped by the relay", false, out),
            _ => debug!("tunnel {id}: ignored {:?} from the relay", msg.kind),
        }
    }

    /// Timers: keepalives, the spare pool, a silent relay. Call at [`Coordinator::next_wake`] at the latest.
    pub fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.send_keepalives(now, out);
        self.fill_spares(now, out);
        self.watch_relay(now, out);
    }

    /// When `on_tick` must run next.
    pub fn next_wake(&self, now: Instant) -> Instant {
        let soonest = self.tunnels.values().map(|h| h.next_keepalive).min();
        soonest.unwrap_or(now + MAX_SLEEP).min(now + MAX_SLEEP)
    }

    /// Keepalives on every tunnel, spare and active, keep the NAT mappings open. One the relay does not
    /// acknowledge is sent again: a registration after 1, 2, 4 … s up to the interval, a registered tunnel's
    /// keepalive sooner ([`retry_after`]), so that lost datagrams do not make the relay forget a tunnel.
    fn send_keepalives(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(relay) = self.relay else { return };
        let keepalive = self.settings.keepalive;
        for (&id, h) in self
            .tunnels
            .iter_mut()
            .filter(|(_, h)| h.next_keepalive <= now)
        {
            let (counter, msg) = self
                .identity
                .seal_claim(Kind::Keepalive, id, &h.claim(), [0; 8]);
            out.push(Action::Send { id, to: relay, msg });
            h.last_sent = now;
            h.unacked.get_or_insert(counter);
            h.attempts += 1;
            h.next_keepalive = now
                + if h.registered {
                    retry_after(h.attempts - 1, keepalive)
                } else {
                    pace::backoff(h.attempts - 1, keepalive)
                };
        }
    }

    fn active(&self) -> usize {
        self.tunnels.values().filter(|h| h.active).count()
    }

    /// Keep `--spares` spare tunnels while fewer than `-n` are active.
    fn fill_spares(&mut self, now: Instant, out: &mut Vec<Action>) {
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
    fn open_for_waiting(&mut self, now: Instant, waiting: usize, out: &mut Vec<Action>) {
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
    fn close(&mut self, id: u32, why: &str, tell_relay: bool, out: &mut Vec<Action>) {
        let Some(h) = self.tunnels.remove(&id) else {
            return;
        };
        if let (true, Some(relay)) = (tell_relay, self.relay) {
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

    /// No authenticated word from the relay for two keepalive intervals: say so once, and look its name up
    /// again (dynamic DNS may have moved it).
    fn watch_relay(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.tunnels.is_empty() || self.relay.is_none() {
            return;
        }
        let limit = 2 * self.settings.keepalive + Duration::from_secs(1);
        let since = self.heard.unwrap_or(self.started);
        let silent_for = now.saturating_duration_since(since);
        if silent_for < limit {
            return;
        }
        if self.said.silent.first() {
            warn!(
                "no answer from the relay {} for {}s: is it running, and does it use the same key?",
                self.settings.relay_name,
                silent_for.as_secs()
            );
        }
        let numeric = self
            .settings
            .relay_name
            .host
            .parse::<std::net::IpAddr>()
            .is_ok();
        if !numeric
            && self
                .resolving_relay
                .is_none_or(|t| now.saturating_duration_since(t) >= limit)
        {
            self.resolving_relay = Some(now);
            out.push(Action::Resolve { relay: true });
        }
    }

    /// Close every tunnel, telling the relay.
    pub fn shutdown(&mut self, sig: &str, out: &mut Vec<Action>) {
        info!("{sig}: closing {} tunnels and exiting", self.tunnels.len());
        let ids: Vec<u32> = self.tunnels.keys().copied().collect();
        for id in ids {
            self.close(id, sig, true, out);
        }
    }

    /// The tunnel table, a line per tunnel (for SIGUSR1).
    pub fn table_lines(&self, now: Instant) -> Vec<String> {
        self.tunnels
            .iter()
            .map(|(id, h)| {
                let state = match (h.active, h.registered) {
                    (true, _) => "active",
                    (false, true) => "spare",
                    (false, false) => "registering",
                };
                let next = h.next_keepalive.saturating_duration_since(now);
                let who = match (h.active, h.client) {
                    (true, Some(c)) => format!(" client {}", addr::shown(c)),
                    (true, None) => " client not yet said by the relay".to_string(),
                    (false, _) => String::new(),
                };
                // The pair an admin needs (issue "who is who"): the service's view of the tunnel beside the client.
                let local = match (h.active, h.local) {
                    (true, Some(l)) => format!(", service sees {}", addr::shown(l)),
                    _ => String::new(),
                };
                format!(
                    "tunnel {id}: {state}{who}{local}, next keepalive in {}s",
                    next.as_secs()
                )
            })
            .collect()
    }

    /// `spare` counts only tunnels the relay has acknowledged; `pending` those still registering.
    pub fn status(&self) -> String {
        let active = self.active();
        let spare = self
            .tunnels
            .values()
            .filter(|h| !h.active && h.registered)
            .count();
        format!(
            "status: tunnels active={active} spare={spare} pending={} {}",
            self.tunnels.len() - active - spare,
            self.drops.summary()
        )
    }
}
