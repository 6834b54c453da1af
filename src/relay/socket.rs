//! The outside relay's socket loop: one socket, one thread. Every decision is made by the state machine in
//! relay.rs; this file only receives, asks it, sends, and keeps time. The relay owns its table outright, so the
//! data path takes no lock: receive, one hash lookup on the source address, send.

use crate::addr::HostPort;
use crate::cli::Config;
use crate::metrics::{self, Metrics};
use crate::pace::Every;
use crate::relay::Admission;
use crate::relay::{Relay, Settings, Transmit};
use crate::sys::batch::{Batch, Shape};
use crate::sys::http::{self, Scrape};
use crate::sys::logging;
use crate::sys::random::random_bytes;
use crate::sys::signal::{self, Signal};
use crate::sys::socket as net;
use log::{debug, error, info, warn};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Housekeeping period, and how long a signal may wait to be noticed.
const TICK: Duration = Duration::from_millis(200);

/// Signals, as flags the loop looks at every tick.
#[derive(Default)]
pub struct Flags {
    pub stop: AtomicBool,
    /// SIGUSR1: log the status line and the tunnel table.
    pub status: AtomicBool,
    /// SIGHUP with `--homes`: re-read the homes file.
    pub reload: AtomicBool,
}

/// What the loop serves besides datagrams: the homes file to re-read on SIGHUP, scrapes of `--metrics`.
#[derive(Default)]
pub struct Extras<'a> {
    /// `--homes`: the file and the relay's -n.
    pub homes: Option<(&'a str, usize)>,
    /// `--metrics`: the scrape to answer; and when the process started (Unix seconds).
    pub metrics: Option<(Arc<Scrape>, u64)>,
}

/// Serve on `sock` until `flags.stop` is set (by a signal).
pub fn serve(
    relay: &mut Relay,
    sock: &UdpSocket,
    status_every: Option<Duration>,
    flags: &Flags,
    extras: Extras,
) -> std::io::Result<()> {
    let mut batch = Batch::new(sock, Shape::RELAY)?;
    debug!("relay socket: {}", batch.offload());
    let mut out: Vec<Transmit> = Vec::new();
    let mut scratch = Vec::new();
    sock.set_read_timeout(Some(TICK))?;
    let mut tick = Every::new(TICK);
    let mut status = status_every.map(Every::new);
    let start = Instant::now();
    tick.start(start);
    if let Some(s) = status.as_mut() {
        s.start(start);
    }
    while !flags.stop.load(Relaxed) {
        match batch.recv(sock) {
            Ok(_) => {
                let now = Instant::now();
                // Every datagram in arrival order; forwards and replies are queued in that order too, and go out
                // together (one sendmmsg) before the next receive.
                let (rx, mut tx) = batch.split(sock);
                for d in rx.datagrams() {
                    let parts = rx.parts(&d);
                    let bytes = parts.contiguous(&mut scratch);
                    if let Some(dst) = relay.on_datagram(now, d.src, bytes, &mut out) {
                        tx.push(dst, parts);
                    }
                    for t in out.drain(..) {
                        tx.push_owned(t.to, t.data);
                    }
                }
                for _ in 0..tx.finish() {
                    relay.on_send_error();
                }
            }
            Err(e) if net::is_timeout(&e) => {}
            Err(e) => debug!("receive failed: {e}"),
        }
        // A scrape: one atomic load when there is none, here and not per datagram.
        if let Some((scrape, start)) = &extras.metrics {
            if scrape.wanted() {
                let mut m = Metrics::default();
                relay.metrics(&mut m);
                metrics::process(&mut m, *start);
                scrape.answer(m.render());
            }
        }
        let now = Instant::now();
        if tick.due(now) {
            if flags.reload.swap(false, Relaxed) {
                if let Some((path, n)) = extras.homes {
                    reload(relay, path, n, now, &mut out);
                }
            }
            relay.on_tick(now, &mut out);
            // Held datagrams of clients that waited out a recovery: rare, so one send each.
            for t in out.drain(..) {
                if sock.send_to(&t.data, t.to).is_err() {
                    relay.on_send_error();
                }
            }
            if flags.status.swap(false, Relaxed) {
                relay.status_lines().iter().for_each(|l| logging::status(l));
                relay
                    .table_lines(now)
                    .iter()
                    .for_each(|l| logging::status(l));
            }
        }
        if status.as_mut().is_some_and(|s| s.due(now)) {
            relay.status_lines().iter().for_each(|l| logging::status(l));
        }
    }
    relay.status_lines().iter().for_each(|l| logging::status(l));
    Ok(())
}

/// SIGHUP: the homes file again. A file that does not parse changes nothing.
fn reload(
    relay: &mut Relay,
    path: &str,
    max_tunnels: usize,
    now: Instant,
    out: &mut Vec<Transmit>,
) {
    match crate::cli::homes::read(path, max_tunnels) {
        Err(e) => error!("{e}; keeping the {} running homes", relay.homes().len()),
        Ok((specs, warnings)) => {
            warnings.iter().for_each(|w| warn!("{w}"));
            let n = specs.len();
            if let Some(r) = relay.reload(now, specs, &mut random_bytes, out) {
                info!(
                    "homes reloaded from {path}: {n} homes (added {}, removed {}, changed {})",
                    r.added, r.removed, r.changed
                );
            }
        }
    }
}

/// Bind the listening socket: a bare port means every address, IPv6 and IPv4 (falling back to IPv4 alone on a
/// host without IPv6).
pub fn bind(host: Option<&str>, port: u16) -> Result<UdpSocket, String> {
    match host {
        // No IPv6 on this host: IPv4 alone; if IPv4 fails the same way (port in use), say that.
        None => net::bind(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)))
            .or_else(|e6| {
                UdpSocket::bind(("0.0.0.0", port)).map_err(|e4| {
                    if e4.kind() == e6.kind() {
                        e4
                    } else {
                        e6
                    }
                })
            })
            .map_err(|e| format!("cannot listen on port {port}: {e}")),
        Some(h) => {
            let hp = HostPort {
                host: h.to_string(),
                port,
            };
            let addr = net::resolve(&hp).map_err(|e| format!("cannot listen on {hp}: {e}"))?;
            net::bind(addr).map_err(|e| format!("cannot listen on {hp}: {e}"))
        }
    }
}

pub fn run(cfg: &Config, host: Option<&str>, port: u16) -> Result<(), String> {
    let sock = bind(host, port)?;
    net::grow_receive_buffer(&sock);
    info!(
        "relay listening on {}",
        sock.local_addr().map(|a| a.to_string()).unwrap_or_default()
    );
    let flags = Arc::new(Flags::default());
    let reloads = cfg.homes.is_some();
    let f = flags.clone();
    signal::watch(move |sig| match sig {
        Signal::Terminate(name) => {
            info!("{name}: exiting");
            f.stop.store(true, Relaxed);
        }
        Signal::Status => f.status.store(true, Relaxed),
        Signal::Reload if reloads => f.reload.store(true, Relaxed),
        Signal::Reload => warn!("{}", signal::RELOAD_IGNORED),
    });
    let settings = Settings {
        max_tunnels: cfg.max_tunnels,
        keepalive: cfg.keepalive,
    };
    let now = Instant::now();
    let mut relay = match &cfg.homes {
        Some((path, specs)) => {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            info!(
                "serving {} homes from {path}: {}",
                specs.len(),
                names.join(", ")
            );
            Relay::with_homes(specs.clone(), settings, &mut random_bytes, now)
        }
        None => Relay::new(&cfg.key, settings, random_bytes(), now),
    };
    if let Some(pk) = &cfg.wireguard {
        info!("admitting only WireGuard handshakes for server key {pk}");
        relay = relay.with_wireguard(Admission::new(pk, random_bytes(), now));
    }
    let mut extras = Extras {
        homes: cfg
            .homes
            .as_ref()
            .map(|(p, _)| (p.as_str(), cfg.max_tunnels)),
        metrics: None,
    };
    if let Some(at) = &cfg.metrics {
        // No wake: the loop looks between batches, and at least every TICK.
        let (bound, scrape) = http::serve_metrics(at, Box::new(|| ()))?;
        info!("metrics at http://{bound}/metrics");
        extras.metrics = Some((scrape, metrics::unix_now()));
    }
    serve(&mut relay, &sock, cfg.status_interval, &flags, extras)
        .map_err(|e| format!("relay failed: {e}"))
}
