//! The inside agent's socket layer: the coordinator thread runs the state machine in coordinator/ and performs
//! what it asks (shell.rs) — opening tunnel sockets and their threads (tunnel.rs), sending control messages through
//! them, looking names up on helper threads. All decisions are the coordinator's.

mod coordinator;
mod identity;
mod shell;
mod tunnel;

// What lib.rs and tests/ use; the rest of inside/ is private to it.
pub use coordinator::{
    retry_after, Action, Coordinator, Event, Failure, Handle, Input, Name, Settings, MAX_SLEEP,
};
pub use identity::Identity;

use crate::addr::HostPort;
use crate::cli::Config;
use crate::metrics::{self, Metrics};
use crate::pace::Every;
use crate::stats::Drops;
use crate::sys::http::{self, Scrape};
use crate::sys::logging;
use crate::sys::random::random_bytes;
use crate::sys::signal::{self, Signal as Sig};
use crate::sys::socket as net;
use crate::wire::Instance;
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use log::{info, warn};
use shell::Shell;
use std::sync::Arc;
use std::time::Instant;

/// Everything that wakes the coordinator, on one channel: tunnel threads' events and resolved names (inputs of
/// the state machine), and signals.
enum Wake {
    Input(Input),
    Shutdown(&'static str),
    /// SIGUSR1: log the status line and the tunnel table.
    Status,
    /// A scrape of `--metrics` waits for its answer.
    Metrics,
}

/// Run the coordinator until a shutdown arrives on `wakes` (`wake` is its sender, for the threads it starts).
fn coordinate(
    cfg: Config,
    service: HostPort,
    relay: HostPort,
    wake: Sender<Wake>,
    wakes: Receiver<Wake>,
    scrape: Option<Arc<Scrape>>,
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
    let start = metrics::unix_now();
    let mut shell = Shell::new(cfg, identity, drops, service, relay, wake);
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
            Ok(Wake::Metrics) => {
                if let Some(scrape) = scrape.as_ref().filter(|s| s.wanted()) {
                    let mut m = Metrics::default();
                    shell.traffic().write(&mut m, &[]);
                    core.metrics(&mut m);
                    metrics::process(&mut m, start);
                    scrape.answer(m.render());
                }
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

/// Run the inside agent until a signal stops it; the error (`--metrics` cannot listen) is one line for the log.
pub fn run(cfg: Config, service: HostPort, relay: HostPort) -> Result<(), String> {
    net::raise_fd_limit();
    let (tx, rx) = unbounded();
    let mut scrape = None;
    if let Some(at) = &cfg.metrics {
        let wake = tx.clone();
        let (bound, s) = http::serve_metrics(
            at,
            Box::new(move || {
                let _ = wake.send(Wake::Metrics);
            }),
        )?;
        info!("metrics at http://{bound}/metrics");
        scrape = Some(s);
    }
    let signals = tx.clone();
    signal::watch(move |sig| {
        let _ = match sig {
            Sig::Terminate(name) => signals.send(Wake::Shutdown(name)),
            Sig::Status => signals.send(Wake::Status),
            Sig::Reload => {
                warn!("{}", signal::RELOAD_IGNORED);
                return;
            }
        };
    });
    coordinate(cfg, service, relay, tx, rx, scrape);
    Ok(())
}
