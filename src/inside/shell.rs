//! The inside agent's hands: performs the coordinator's actions — opens a tunnel's socket and starts its thread,
//! sends control messages through a tunnel's own socket, passes a new relay address or a stop to a thread, looks
//! names up on helper threads — and feeds back what came of them. It decides nothing.

use crate::addr::{self, HostPort};
use crate::cli::Config;
use crate::inside::coordinator::Event;
use crate::inside::coordinator::{Action, Coordinator, Input, Name};
use crate::inside::identity::Identity;
use crate::inside::tunnel::{Mailbox, TunnelThread};
use crate::inside::Wake;
use crate::metrics::Traffic;
use crate::pace;
use crate::stats::{Drops, Tally};
use crate::sys::random::random_bytes;
use crate::sys::socket as net;
use crossbeam_channel::Sender;
use log::{debug, error};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A name that still does not resolve is warned about again this often (at debug level in between).
const REWARN_UNRESOLVED: Duration = Duration::from_secs(300);

/// The socket layer's side of one tunnel.
struct OpenTunnel {
    /// The tunnel's socket, shared with its thread: control messages must leave through its own NAT mapping.
    sock: Arc<UdpSocket>,
    v6: bool,
    mailbox: Arc<Mailbox>,
    tally: Arc<Tally>,
}

pub(super) struct Shell {
    cfg: Config,
    identity: Arc<Identity>,
    drops: Arc<Drops>,
    /// The names as given, looked up (again) when the coordinator asks.
    service_name: HostPort,
    relay_name: HostPort,
    wake: Sender<Wake>,
    open: HashMap<u32, OpenTunnel>,
    /// Tallies of stopped tunnels whose thread may still be ending its last batch, and the sum of those that
    /// ended: every datagram counted once, however its tunnel ends.
    draining: Vec<Arc<Tally>>,
    ended: Traffic,
}

impl Shell {
    pub(super) fn new(
        cfg: Config,
        identity: Arc<Identity>,
        drops: Arc<Drops>,
        service_name: HostPort,
        relay_name: HostPort,
        wake: Sender<Wake>,
    ) -> Shell {
        Shell {
            cfg,
            identity,
            drops,
            service_name,
            relay_name,
            wake,
            open: HashMap::new(),
            draining: Vec::new(),
            ended: Traffic::default(),
        }
    }

    /// What every tunnel forwarded so far (for `--metrics`).
    pub(super) fn traffic(&mut self) -> Traffic {
        self.fold_ended();
        let mut sum = self.ended;
        for t in self
            .draining
            .iter()
            .chain(self.open.values().map(|o| &o.tally))
        {
            sum.add(&t.read());
        }
        sum
    }

    /// Add the tallies of tunnel threads that have ended to `ended`: `draining` then holds only threads still
    /// finishing their last batch, a handful, whether or not anyone scrapes.
    fn fold_ended(&mut self) {
        let ended = &mut self.ended;
        self.draining.retain(|t| {
            // Finished first, then read: the read sees the thread's last publish.
            let done = t.finished();
            if done {
                ended.add(&t.read());
            }
            !done
        });
    }

    /// Perform the coordinator's actions; failures to open are fed back at once.
    pub(super) fn perform(
        &mut self,
        core: &mut Coordinator,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let mut i = 0;
        while i < actions.len() {
            match &actions[i] {
                Action::Open { id, relay, service } => {
                    let input = match self.open(*id, *relay, *service) {
                        Ok(local) => Input::Opened { id: *id, local },
                        Err(e) => Input::OpenFailed(*id, e),
                    };
                    let mut more = Vec::new();
                    core.handle(now, input, &mut more);
                    actions.extend(more);
                }
                Action::Send { id, to, msg } => {
                    if let Some(o) = self.open.get(id) {
                        if let Err(e) = o.sock.send_to(msg, addr::as_seen_by(o.v6, *to)) {
                            debug!("control send to {to} failed: {e}");
                        }
                    }
                }
                Action::SetRelay { id, relay } => {
                    if let Some(o) = self.open.get(id) {
                        o.mailbox.set_relay(addr::as_seen_by(o.v6, *relay));
                    }
                }
                Action::Stop { id } => {
                    if let Some(o) = self.open.remove(id) {
                        o.mailbox.stop();
                        self.draining.push(o.tally);
                        self.fold_ended();
                    }
                }
                Action::Resolve(name) => self.resolve(*name),
            }
            i += 1;
        }
        actions.clear();
    }

    /// Open tunnel `id`; the address the service sees it at.
    fn open(
        &mut self,
        id: u32,
        relay: SocketAddr,
        service: SocketAddr,
    ) -> std::io::Result<SocketAddr> {
        let sock = Arc::new(net::bind_for(relay, service)?);
        let bound = sock.local_addr()?;
        let v6 = bound.is_ipv6();
        let local = net::source_toward(service, bound.port());
        let mailbox = Arc::new(Mailbox::default());
        let tally = Arc::new(Tally::default());
        let jitter =
            0.8 + 0.4 * f64::from(u32::from_le_bytes(random_bytes())) / f64::from(u32::MAX);
        TunnelThread {
            id,
            sock: sock.clone(),
            relay: addr::as_seen_by(v6, relay),
            service: addr::as_seen_by(v6, service),
            identity: self.identity.clone(),
            idle_timeout: self.cfg.idle_timeout.mul_f64(jitter),
            report: {
                let wake = self.wake.clone();
                // The coordinator outlives every tunnel thread; if it is gone, the process is exiting anyway.
                Box::new(move |event: Event| {
                    let _ = wake.send(Wake::Input(Input::Tunnel(id, event)));
                })
            },
            mailbox: mailbox.clone(),
            drops: self.drops.clone(),
            tally: tally.clone(),
        }
        .spawn()?;
        debug!("tunnel {id} opened on port {}", bound.port());
        self.open.insert(
            id,
            OpenTunnel {
                sock,
                v6,
                mailbox,
                tally,
            },
        );
        Ok(local)
    }

    /// Resolve a name on a helper thread (getaddrinfo blocks), retrying with backoff: a daemon may start
    /// before DNS works.
    fn resolve(&self, which: Name) {
        let name = match which {
            Name::Service => self.service_name.clone(),
            Name::Relay => self.relay_name.clone(),
        };
        let tx = self.wake.clone();
        let spawned = std::thread::Builder::new()
            .name("resolve".into())
            .spawn(move || {
                let mut retries = pace::Retries::new(REWARN_UNRESOLVED);
                loop {
                    match net::resolve(&name) {
                        Ok(addr) => {
                            let _ = tx.send(Wake::Input(Input::Resolved { name: which, addr }));
                            return;
                        }
                        Err(e) => {
                            let (level, wait) = retries.failed(Instant::now());
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
}
