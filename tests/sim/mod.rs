//! A simulated world around the relay core (src/relay.rs): simulated time, an honest inside agent that answers
//! challenges as the real one does, clients, and a seeded random generator. No sockets, no sleeps.
#![allow(dead_code)] // each test binary uses its own part

use rut::protocol::{Identity, Instance, Key, Kind, Message, Shared, LEN};
use rut::relay::{Relay, Settings, Transmit};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const KEY: &[u8] = b"simulated shared key";

/// SplitMix64: tiny, seedable, good enough to pick events.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `per_mille`/1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        (!v.is_empty()).then(|| &v[self.below(v.len())])
    }
}

/// The seed, printed by the caller. `RUT_SEED=N` replays run N; `RUT_SEED=clock` explores a new one (`make
/// explore` runs many). Unset, as in CI, a fixed seed: the same events every run, so a test fails because the
/// code changed, never by the luck of the draw; new ground is for exploration, whose finds go to REGRESSIONS.
pub fn seed() -> u64 {
    const FIXED: u64 = 20_261_130;
    match std::env::var("RUT_SEED").as_deref() {
        Err(_) => FIXED,
        Ok("clock") => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
        Ok(s) => s.trim().parse().expect("RUT_SEED is a number or \"clock\""),
    }
}

pub fn addr(i: usize) -> SocketAddr {
    if i % 5 == 4 {
        SocketAddr::new(
            format!("2001:db8::{}", i + 1).parse().unwrap(),
            4000 + i as u16,
        )
    } else {
        SocketAddr::from(([198, 51, 100, 1 + i as u8], 4000 + i as u16))
    }
}

/// One honest inside tunnel, as the relay should see it.
#[derive(Clone, Debug)]
pub struct SimTunnel {
    pub id: u32,
    pub addr: SocketAddr,
    pub active: bool,
}

/// An honest run of the inside agent: seals with the shared key, answers challenges for its own tunnels at
/// their own addresses, closes what the relay drops.
pub struct SimInside {
    pub identity: Arc<Identity>,
    pub tunnels: Vec<SimTunnel>,
    next_id: u32,
}

impl SimInside {
    /// An agent that says no settings (the relay then uses its own).
    pub fn new(instance: u8) -> SimInside {
        SimInside::saying(instance, Shared::default())
    }

    /// An agent that says `shared` in every message.
    pub fn saying(instance: u8, shared: Shared) -> SimInside {
        SimInside {
            identity: Arc::new(Identity::new(KEY, Instance([instance; 16]), shared)),
            tunnels: Vec::new(),
            next_id: 1,
        }
    }

    pub fn instance(&self) -> Instance {
        self.identity.instance
    }

    /// A new tunnel at `addr`; its first keepalive.
    pub fn open(&mut self, addr: SocketAddr) -> (u32, [u8; LEN]) {
        let id = self.next_id;
        self.next_id += 1;
        self.tunnels.push(SimTunnel {
            id,
            addr,
            active: false,
        });
        (id, self.keepalive(id))
    }

    pub fn tunnel(&self, id: u32) -> Option<&SimTunnel> {
        self.tunnels.iter().find(|t| t.id == id)
    }

    pub fn keepalive(&self, id: u32) -> [u8; LEN] {
        let active = self.tunnel(id).is_some_and(|t| t.active);
        self.identity.seal(Kind::Keepalive, id, active, [0; 8])
    }

    pub fn close(&mut self, id: u32) -> Option<(SocketAddr, [u8; LEN])> {
        let i = self.tunnels.iter().position(|t| t.id == id)?;
        let t = self.tunnels.remove(i);
        Some((
            t.addr,
            self.identity.seal(Kind::Close, id, t.active, [0; 8]),
        ))
    }

    /// What the honest agent does with a relay message that reached `to`: a response to send from `to`, if any.
    /// Drops close the tunnel; acks mark it active if the relay says so.
    pub fn receive(&mut self, to: SocketAddr, data: &[u8]) -> Option<(u32, [u8; LEN])> {
        let key = Key::new(KEY);
        let msg = key.open(data).ok()?;
        if msg.instance != self.instance() {
            return None;
        }
        let t = self
            .tunnels
            .iter()
            .position(|t| t.id == msg.tunnel && t.addr == to)?;
        match msg.kind {
            Kind::Challenge => {
                let active = self.tunnels[t].active;
                Some((
                    msg.tunnel,
                    self.identity
                        .seal(Kind::Response, msg.tunnel, active, msg.cookie),
                ))
            }
            Kind::Drop => {
                self.tunnels.remove(t);
                None
            }
            _ => None,
        }
    }
}

/// The relay core with simulated time.
pub struct SimRelay {
    pub relay: Relay,
    pub now: Instant,
    pub out: Vec<Transmit>,
}

impl SimRelay {
    pub fn new(max_tunnels: usize, keepalive_secs: u64, secret: u8) -> SimRelay {
        let now = Instant::now();
        let settings = Settings {
            max_tunnels,
            keepalive: Duration::from_secs(keepalive_secs),
        };
        SimRelay {
            relay: Relay::new(KEY, settings, [secret; 32], now),
            now,
            out: Vec::new(),
        }
    }

    /// Deliver one datagram; returns the forward destination (if any) and everything else sent.
    pub fn send(&mut self, src: SocketAddr, data: &[u8]) -> (Option<SocketAddr>, Vec<Transmit>) {
        self.out.clear();
        let fwd = self.relay.on_datagram(self.now, src, data, &mut self.out);
        (fwd, std::mem::take(&mut self.out))
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.relay.on_tick(self.now);
    }

    /// Register a spare of `inside` at `addr` through the whole exchange; panics if the relay does not ack.
    pub fn register(&mut self, inside: &mut SimInside, addr: SocketAddr) -> u32 {
        let (id, ka) = inside.open(addr);
        let (_, out) = self.send(addr, &ka);
        let challenge = only(&out, addr);
        let (_, response) = inside.receive(addr, &challenge).expect("a challenge");
        let (_, out) = self.send(addr, &response);
        assert_eq!(kind_of(&only(&out, addr)), Some(Kind::Ack), "registered");
        id
    }
}

/// The one datagram in `out`, which must go to `to`.
pub fn only(out: &[Transmit], to: SocketAddr) -> Vec<u8> {
    assert_eq!(out.len(), 1, "one datagram expected: {out:?}");
    assert_eq!(out[0].to, to);
    out[0].data.clone()
}

pub fn kind_of(data: &[u8]) -> Option<Kind> {
    Key::new(KEY).open(data).ok().map(|m: Message| m.kind)
}
