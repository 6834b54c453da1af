//! The inside agent's every decision, as a state machine: which tunnels to open and close, when to send
//! keepalives, how to answer the relay, when to look names up again. It is fed inputs (events of the tunnel
//! threads, resolved names, timer ticks) with the time, and answers with [`Action`]s. No socket, no clock, no
//! thread: the shell (`inside/shell.rs`) opens the sockets, runs the tunnel threads and performs the actions.
//!
//! One `Coordinator`, its `impl` over several files: here what it is told and how it answers the relay;
//! `pool.rs` its tunnels, the spare pool, opening and closing; `timers.rs` keepalives, retries and the relay
//! watch; `status.rs` the status line and tunnel table.
#![forbid(unsafe_code)]

mod pool;
mod status;
mod timers;

pub use pool::Handle;
use pool::Tell;
pub use timers::{retry_after, MAX_SLEEP};

use crate::addr;
use crate::addr::HostPort;
use crate::inside::identity::Identity;
use crate::pace::Once;
use crate::stats::Drops;
use crate::wire::{Kind, Message, LEN};
use log::{debug, error, info, warn};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A re-challenged tunnel re-registers every tunnel, at most this often (a replayed challenge must not make every
/// tunnel send).
const REREGISTER_EVERY: Duration = Duration::from_secs(1);

/// What a tunnel thread tells the coordinator (with its tunnel number).
#[derive(Debug)]
pub enum Event {
    /// An authenticated message from the relay. Boxed: an event crosses the tunnel thread's stack and the
    /// coordinator's channel by value, and a 120-byte message in every event was part of what cost each tunnel
    /// thread a third stack page (docs/BENCHMARKS.md, memory).
    Control(Box<Message>),
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

/// Which of the two names on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name {
    /// The service's, `-s`.
    Service,
    /// The relay's, `-r`.
    Relay,
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
    /// Look up a name, and feed back [`Input::Resolved`].
    Resolve(Name),
}

/// What the coordinator is told.
#[derive(Debug)]
pub enum Input {
    Resolved {
        name: Name,
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
        out.push(Action::Resolve(Name::Service));
        out.push(Action::Resolve(Name::Relay));
        self.resolving_relay = Some(now);
    }

    pub fn tunnels(&self) -> &BTreeMap<u32, Handle> {
        &self.tunnels
    }

    pub fn handle(&mut self, now: Instant, input: Input, out: &mut Vec<Action>) {
        match input {
            Input::Resolved {
                name: Name::Service,
                addr,
            } => {
                if self.service != Some(addr) {
                    info!("service {} is {addr}", self.settings.service_name);
                }
                self.service = Some(addr);
            }
            Input::Resolved {
                name: Name::Relay,
                addr,
            } => self.relay_resolved(now, addr, out),
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
            Event::Control(msg) => self.on_control(now, id, *msg, out),
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
            Event::Idle => self.close(id, "idle", Tell::Relay, out),
            Event::Failed(e) => {
                error!("tunnel {id} failed: {e}");
                self.close(id, "failed", Tell::Relay, out);
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
                self.close(id, "the relay's address family changed", Tell::Nobody, out);
            }
        }
    }

    fn on_control(&mut self, now: Instant, id: u32, msg: Message, out: &mut Vec<Action>) {
        if msg.instance != self.identity.instance || msg.tunnel != id {
            debug!("tunnel {id}: ignored a relay message for another tunnel");
            return;
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
            Kind::Drop => self.close(id, "dropped by the relay", Tell::Nobody, out),
            _ => debug!("tunnel {id}: ignored {:?} from the relay", msg.kind),
        }
    }

    /// Close every tunnel, telling the relay.
    pub fn shutdown(&mut self, sig: &str, out: &mut Vec<Action>) {
        info!("{sig}: closing {} tunnels and exiting", self.tunnels.len());
        let ids: Vec<u32> = self.tunnels.keys().copied().collect();
        for id in ids {
            self.close(id, sig, Tell::Relay, out);
        }
    }
}
