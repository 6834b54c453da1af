//! One inside tunnel: one UDP socket, one thread, the whole inside data path.
//!
//! The same socket talks to the relay (through the NAT hole its keepalives keep open) and to the service (which
//! so sees one distinct peer per client). A receive takes every datagram already queued (sys/batch) and their
//! forwards leave together, in order; control messages from the relay go to the coordinator, which owns all
//! decisions.

use crate::inside::coordinator::{Event, Failure};
use crate::inside::identity::Identity;
use crate::metrics::Traffic;
use crate::stats::{Drops, Tally};
use crate::sys::batch::{Batch, Shape, Tx};
use crate::sys::socket as net;
use crate::wire::{self, Kind};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the coordinator tells a tunnel thread: only ever "stop" or "the relay's address is now X", where the
/// latest value wins, so a flag and a slot rather than a queue. The tunnel checks one atomic per datagram.
#[derive(Default)]
pub struct Mailbox {
    stop: AtomicBool,
    relay_changed: AtomicBool,
    relay: Mutex<Option<SocketAddr>>,
}

impl Mailbox {
    pub fn set_relay(&self, addr: SocketAddr) {
        *self.relay.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
        self.relay_changed.store(true, Release);
    }

    /// The new relay address, if it changed since the last call.
    pub fn new_relay(&self) -> Option<SocketAddr> {
        // A plain load first: the swap (a locked instruction) only when something changed.
        if self.relay_changed.load(Relaxed) && self.relay_changed.swap(false, Acquire) {
            *self.relay.lock().unwrap_or_else(|e| e.into_inner())
        } else {
            None
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Relaxed)
    }
}

/// Small stacks: a thousand tunnels are a thousand threads. The receive buffer is not on the stack.
const STACK: usize = 128 * 1024;

/// Service data leaving for the relay is preceded by a keepalive at most this often. If a NAT on the way has
/// given the tunnel a new public port, the relay can only tell the tunnel's data from a new client's by an
/// authenticated message from the new address: this bounds how long it can be fooled to about a second, at the
/// cost of one 84-byte datagram a second on a busy tunnel.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// One tunnel's thread and everything it owns; `spawn` moves it onto the thread.
pub struct TunnelThread {
    pub id: u32,
    /// Shared with the coordinator, which sends this tunnel's keepalives through it (one descriptor, not two).
    pub sock: Arc<UdpSocket>,
    /// Both as this socket reports sources (IPv4-mapped on a dual-stack socket).
    pub relay: SocketAddr,
    pub service: SocketAddr,
    pub identity: Arc<Identity>,
    /// This tunnel's share of --connectionTimeout, jitter included.
    pub idle_timeout: Duration,
    /// Tells the coordinator what happened on this tunnel.
    pub report: Box<dyn Fn(Event) + Send>,
    pub mailbox: Arc<Mailbox>,
    pub drops: Arc<Drops>,
    /// What this tunnel forwarded, published after each batch for `--metrics` (the shell sums the tunnels').
    pub tally: Arc<Tally>,
}

impl TunnelThread {
    pub fn spawn(self) -> std::io::Result<()> {
        let tally = self.tally.clone();
        std::thread::Builder::new()
            .name(format!("tunnel-{}", self.id))
            .stack_size(STACK)
            .spawn(move || {
                self.run();
                // Whatever way the thread ends, its counts are final now.
                tally.finish();
            })?;
        Ok(())
    }

    fn run(mut self) {
        let mut batch = match Batch::new(&self.sock, Shape::TUNNEL) {
            Ok(b) => b,
            Err(e) => return self.report(Event::Failed(Failure::Buffer(e))),
        };
        let tick =
            (self.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        if let Err(e) = self.sock.set_read_timeout(Some(tick)) {
            return self.report(Event::Failed(Failure::Timeout(e)));
        }
        let mut active = false;
        let mut last_traffic = Instant::now();
        let mut last_probe = last_traffic;
        let mut scratch = Vec::new();
        // Counted here in plain integers, published once a batch: no lock, no atomic read-modify-write.
        let mut traffic = Traffic::default();
        loop {
            if self.mailbox.stopped() {
                return;
            }
            match batch.recv(&self.sock) {
                // After the receive: the datagram that woke us may come from a relay address set meanwhile.
                Ok(_) => {
                    if let Some(addr) = self.mailbox.new_relay() {
                        self.relay = addr;
                    }
                }
                Err(e) if net::is_timeout(&e) => {
                    if active && last_traffic.elapsed() >= self.idle_timeout {
                        return self.report(Event::Idle);
                    }
                    batch.release_overflow();
                    continue;
                }
                Err(e) => return self.report(Event::Failed(Failure::Receive(e))),
            }
            let now = Instant::now();
            let (rx, mut tx) = batch.split(&self.sock);
            for d in rx.datagrams() {
                let parts = rx.parts(&d);
                if d.src == self.relay {
                    // Control messages (132 bytes) always fit the dense area: never copied.
                    let data = parts.contiguous(&mut scratch);
                    if wire::looks_like_control(data) {
                        self.on_control(data);
                        continue;
                    }
                    if !active {
                        active = true;
                        self.report(Event::Activated);
                    }
                    last_traffic = now;
                    traffic.in_datagrams += 1;
                    traffic.in_bytes += d.len as u64;
                    tx.push(self.service, parts);
                } else if d.src == self.service && active {
                    if now.duration_since(last_probe) >= PROBE_EVERY {
                        last_probe = now;
                        self.probe(&mut tx);
                    }
                    last_traffic = now;
                    traffic.out_datagrams += 1;
                    traffic.out_bytes += d.len as u64;
                    tx.push(self.relay, parts);
                } else if d.src == self.service {
                    self.drops.unrouted.incr();
                } else {
                    self.drops.foreign.incr();
                }
            }
            let failed = tx.finish();
            if failed > 0 {
                self.drops.senderr.add(failed as u64);
            }
            self.tally.publish(&traffic);
        }
    }

    /// A keepalive ahead of service data, queued in order with it.
    ///
    /// The deepest call an active tunnel's thread makes (HMAC-SHA256 under `run`'s frame), so what it takes
    /// decides whether each of 1000 threads holds two stack pages or three (4 MiB in all; docs/BENCHMARKS.md,
    /// memory). Hence the sealing inlined here, one frame instead of three, and the cold paths (`on_control`)
    /// kept out of `run`'s frame.
    #[inline(never)]
    fn probe(&self, tx: &mut Tx) {
        let msg = self.identity.seal(Kind::Keepalive, self.id, true, [0; 8]);
        tx.push_owned(self.relay, msg.to_vec());
    }

    #[inline(never)] // see `probe`
    fn on_control(&self, data: &[u8]) {
        match self.identity.key.open(data) {
            Ok(msg) => self.report(Event::Control(Box::new(msg))),
            Err(wire::Error::AuthFailNotice) => self.report(Event::AuthFail),
            Err(_) => self.drops.badauth.incr(),
        }
    }

    fn report(&self, event: Event) {
        (self.report)(event);
    }
}
