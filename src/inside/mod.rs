//! The inside agent's socket layer: the coordinator thread runs the state machine in coordinator.rs and performs
//! what it asks — opening tunnel sockets and their threads (tunnel.rs), sending control messages through them,
//! looking names up on helper threads. All decisions are the coordinator's.

pub mod coordinator;
pub mod identity;
pub mod tunnel;

use crate::addr::{self, HostPort};
use crate::cli::Config;
use crate::inside::coordinator::Event;
use crate::inside::coordinator::{Action, Coordinator, Input, Settings};
use crate::inside::tunnel::{Control, Tunnel};
use crate::pace::{self, Every};
use crate::stats::Drops;
use crate::sys::logging;
use crate::sys::random::random_bytes;
use crate::sys::signal::{self, Signal as Sig};
use crate::sys::socket as net;
use crate::wire::Instance;
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use identity::Identity;
use log::{debug, error, info, warn};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A name that still does not resolve is warned about again this often (at debug level in between).
const REWARN_UNRESOLVED: Duration = Duration::from_secs(300);

/// Everything that wakes the coordinator, on one channel: tunnel threads' events and resolved names (inputs of
/// the state machine), and signals.
pub enum Wake {
    Input(Input),
    Shutdown(&'static str),
    /// SIGUSR1: log the status line and the tunnel table.
    Status,
}

/// The socket layer's side of one tunnel.
struct Open {
    /// The tunnel's socket, shared with its thread: control messages must leave through its own NAT mapping.
    sock: Arc<UdpSocket>,
    v6: bool,
    ctl: Arc<Control>,
}

struct Shell {
    cfg: Config,
    identity: Arc<Identity>,
    drops: Arc<Drops>,
    names: (HostPort, HostPort),
    wake: Sender<Wake>,
    open: HashMap<u32, Open>,
}

impl Shell {
    /// Perform the coordinator's actions; failures to open are fed back at once.
    fn perform(&mut self, core: &mut Coordinator, now: Instant, actions: &mut Vec<Action>) {
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
                        o.ctl.set_relay(addr::as_seen_by(o.v6, *relay));
                    }
                }
                Action::Stop { id } => {
                    if let Some(o) = self.open.remove(id) {
                        o.ctl.stop();
                    }
                }
                Action::Resolve { relay } => self.resolve(*relay),
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
        let ctl = Arc::new(Control::default());
        let jitter =
            0.8 + 0.4 * f64::from(u32::from_le_bytes(random_bytes())) / f64::from(u32::MAX);
        Tunnel {
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
            ctl: ctl.clone(),
            drops: self.drops.clone(),
        }
        .spawn()?;
        debug!("tunnel {id} opened on port {}", bound.port());
        self.open.insert(id, Open { sock, v6, ctl });
        Ok(local)
    }

    /// Resolve a name on a helper thread (getaddrinfo blocks), retrying with backoff: a daemon may start
    /// before DNS works.
    fn resolve(&self, relay: bool) {
        let name = if relay {
            self.names.1.clone()
        } else {
            self.names.0.clone()
        };
        let tx = self.wake.clone();
        let spawned = std::thread::Builder::new()
            .name("resolve".into())
            .spawn(move || {
                let mut retries = pace::Retries::new(REWARN_UNRESOLVED);
                loop {
                    match net::resolve(&name) {
                        Ok(addr) => {
                            let _ = tx.send(Wake::Input(Input::Resolved { relay, addr }));
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

/// Run the coordinator until a shutdown arrives on `wakes` (`wake` is its sender, for the threads it starts).
fn coordinate(
    cfg: Config,
    service: HostPort,
    relay: HostPort,
    wake: Sender<Wake>,
    wakes: Receiver<Wake>,
) {
    let identity = Arc::new(Identity::new(
        &cfg.key,
        Instance(random_bytes()),
        cfg.shared(),
    ));
    let drops = Arc::new(Drops::default());
    info!(
        "inside agent run {} for service {service} via relay {relay}",
        identity.instance
    );
    let now = Instant::now();
    let settings = Settings {
        max_tunnels: cfg.max_tunnels,
        spares: cfg.spares,
        keepalive: cfg.keepalive,
        service_name: service.clone(),
        relay_name: relay.clone(),
    };
    let mut core = Coordinator::new(identity.clone(), settings, drops.clone(), now);
    let mut status = cfg.status_interval.map(Every::new);
    if let Some(s) = status.as_mut() {
        s.start(now);
    }
    let mut shell = Shell {
        cfg,
        identity,
        drops,
        names: (service, relay),
        wake,
        open: HashMap::new(),
    };
    let mut actions = Vec::new();
    core.start(now, &mut actions);
    shell.perform(&mut core, now, &mut actions);
    loop {
        let now = Instant::now();
        core.on_tick(now, &mut actions);
        shell.perform(&mut core, now, &mut actions);
        if status.as_mut().is_some_and(|s| s.due(now)) {
            logging::status(&core.status());
        }
        let wait = core.next_wake(now).saturating_duration_since(now);
        let input = match wakes.recv_timeout(wait) {
            Ok(Wake::Input(input)) => Some(input),
            Ok(Wake::Status) => {
                logging::status(&core.status());
                core.table_lines(Instant::now())
                    .iter()
                    .for_each(|l| logging::status(l));
                None
            }
            Ok(Wake::Shutdown(sig)) => {
                logging::status(&core.status());
                core.shutdown(sig, &mut actions);
                shell.perform(&mut core, Instant::now(), &mut actions);
                return;
            }
            // (Never disconnected: the shell holds a sender.)
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        };
        if let Some(input) = input {
            let now = Instant::now();
            core.handle(now, input, &mut actions);
            shell.perform(&mut core, now, &mut actions);
        }
    }
}

pub fn run(cfg: Config, service: HostPort, relay: HostPort) {
    net::raise_fd_limit();
    let (tx, rx) = unbounded();
    let signals = tx.clone();
    signal::watch(move |sig| {
        let _ = match sig {
            Sig::Terminate(name) => signals.send(Wake::Shutdown(name)),
            Sig::Status => signals.send(Wake::Status),
            Sig::Reload => return warn!("{}", signal::RELOAD_IGNORED),
        };
    });
    coordinate(cfg, service, relay, tx, rx);
}
