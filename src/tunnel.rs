//! One inside tunnel: one UDP socket, one thread, the whole inside data path.
//!
//! The same socket talks to the relay (through the NAT hole its keepalives keep open) and to the service (which
//! so sees one distinct peer per client). Every datagram is one receive and one send; control messages from the
//! relay go to the coordinator, which owns all decisions.

use crate::inside::{Control, Event, Identity};
use crate::net::{self, RecvBuf};
use crate::protocol::{self, Kind};
use crate::stats::Drops;
use crossbeam_channel::Sender;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Small stacks: a thousand tunnels are a thousand threads. The receive buffer is not on the stack.
const STACK: usize = 128 * 1024;

/// Service data leaving for the relay is preceded by a keepalive at most this often. If a NAT on the way has
/// given the tunnel a new public port, the relay can only tell the tunnel's data from a new client's by an
/// authenticated message from the new address: this bounds how long it can be fooled to about a second, at the
/// cost of one 84-byte datagram a second on a busy tunnel.
const PROBE_EVERY: Duration = Duration::from_secs(1);

pub struct Tunnel {
    pub id: u32,
    pub sock: UdpSocket,
    /// Both as this socket reports sources (IPv4-mapped on a dual-stack socket).
    pub relay: SocketAddr,
    pub service: SocketAddr,
    pub identity: Arc<Identity>,
    /// This tunnel's share of --connectionTimeout, jitter included.
    pub idle_timeout: Duration,
    pub events: Sender<Event>,
    pub ctl: Arc<Control>,
    pub drops: Arc<Drops>,
}

impl Tunnel {
    pub fn spawn(self) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name(format!("tunnel-{}", self.id))
            .stack_size(STACK)
            .spawn(move || self.run())?;
        Ok(())
    }

    fn run(mut self) {
        let mut buf = match RecvBuf::new() {
            Ok(b) => b,
            Err(e) => return self.fail(e),
        };
        let tick =
            (self.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        if let Err(e) = self.sock.set_read_timeout(Some(tick)) {
            return self.fail(e);
        }
        let mut active = false;
        let mut last_traffic = Instant::now();
        let mut last_probe = last_traffic;
        loop {
            if self.ctl.stopped() {
                return;
            }
            if let Some(addr) = self.ctl.new_relay() {
                self.relay = addr;
            }
            let (n, src) = match self.sock.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if net::is_timeout(&e) => {
                    if active && last_traffic.elapsed() >= self.idle_timeout {
                        let _ = self.events.send(Event::Idle(self.id));
                        return;
                    }
                    continue;
                }
                Err(e) => return self.fail(e),
            };
            let data = &buf[..n];
            let now = Instant::now();
            if src == self.relay {
                if protocol::looks_like_control(data) {
                    self.on_control(data);
                    continue;
                }
                if !active {
                    active = true;
                    let _ = self.events.send(Event::Activated(self.id));
                }
                last_traffic = now;
                self.forward(data, self.service);
            } else if src == self.service && active {
                if now.duration_since(last_probe) >= PROBE_EVERY {
                    last_probe = now;
                    self.forward(
                        &self.identity.seal(Kind::Keepalive, self.id, true, [0; 16]),
                        self.relay,
                    );
                }
                last_traffic = now;
                self.forward(data, self.relay);
            } else if src == self.service {
                self.drops.unrouted.incr();
            } else {
                self.drops.foreign.incr();
            }
        }
    }

    fn forward(&self, data: &[u8], to: SocketAddr) {
        if self.sock.send_to(data, to).is_err() {
            self.drops.senderr.incr();
        }
    }

    fn on_control(&self, data: &[u8]) {
        match self.identity.key.open(data) {
            Ok(msg) => {
                let _ = self.events.send(Event::Control(self.id, msg));
            }
            Err(protocol::Error::AuthFailNotice) => {
                let _ = self.events.send(Event::AuthFail);
            }
            Err(_) => self.drops.badauth.incr(),
        }
    }

    fn fail(&self, e: std::io::Error) {
        let _ = self.events.send(Event::Failed(self.id, e.to_string()));
    }
}
