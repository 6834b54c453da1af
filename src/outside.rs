//! The outside relay's socket loop: one socket, one thread. Every decision is made by the state machine in
//! relay.rs; this file only receives, asks it, sends, and keeps time. The relay owns its table outright, so the
//! data path takes no lock: receive, one hash lookup on the source address, send.

use crate::cli::Config;
use crate::logging;
use crate::net::{self, RecvBuf};
use crate::pace::Every;
use crate::protocol::random_bytes;
use crate::relay::{Relay, Settings, Transmit};
use crate::signal::{self, Signal};
use crate::wireguard::Admission;
use log::{debug, info, warn};
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
}

/// Serve on `sock` until `flags.stop` is set (by a signal).
pub fn serve(
    relay: &mut Relay,
    sock: &UdpSocket,
    status_every: Option<Duration>,
    flags: &Flags,
) -> std::io::Result<()> {
    let mut buf = RecvBuf::new()?;
    let mut out: Vec<Transmit> = Vec::new();
    sock.set_read_timeout(Some(TICK))?;
    let mut tick = Every::new(TICK);
    let mut status = status_every.map(Every::new);
    let start = Instant::now();
    tick.start(start);
    if let Some(s) = status.as_mut() {
        s.start(start);
    }
    while !flags.stop.load(Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((n, src)) => {
                let now = Instant::now();
                if let Some(dst) = relay.on_datagram(now, src, &buf[..n], &mut out) {
                    send(relay, sock, &buf[..n], dst);
                }
                for t in out.drain(..) {
                    send(relay, sock, &t.data, t.to);
                }
            }
            Err(e) if net::is_timeout(&e) => {}
            Err(e) => debug!("receive failed: {e}"),
        }
        let now = Instant::now();
        if tick.due(now) {
            relay.on_tick(now);
            if flags.status.swap(false, Relaxed) {
                logging::status(&relay.status());
                relay
                    .table_lines(now)
                    .iter()
                    .for_each(|l| logging::status(l));
            }
        }
        if status.as_mut().is_some_and(|s| s.due(now)) {
            logging::status(&relay.status());
        }
    }
    logging::status(&relay.status());
    Ok(())
}

fn send(relay: &mut Relay, sock: &UdpSocket, data: &[u8], dst: SocketAddr) {
    if let Err(e) = sock.send_to(data, dst) {
        relay.on_send_error();
        debug!(
            "send of {} bytes to {} failed: {e}",
            data.len(),
            net::shown(dst)
        );
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
    let flags = Arc::new(Flags::default());
    let f = flags.clone();
    signal::watch(move |sig| match sig {
        Signal::Terminate(name) => {
            info!("{name}: exiting");
            f.stop.store(true, Relaxed);
        }
        Signal::Status => f.status.store(true, Relaxed),
        Signal::Reload => warn!("{}", signal::RELOAD_IGNORED),
    });
    let settings = Settings {
        max_tunnels: cfg.max_tunnels,
        keepalive: cfg.keepalive,
    };
    let now = Instant::now();
    let mut relay = Relay::new(&cfg.key, settings, random_bytes(), now);
    if let Some(pk) = &cfg.wireguard {
        info!("admitting only WireGuard handshakes for server key {pk}");
        relay = relay.with_wireguard(Admission::new(pk, random_bytes(), now));
    }
    serve(&mut relay, &sock, cfg.status_interval, &flags).map_err(|e| format!("relay failed: {e}"))
}
