//! A simulated world around the relay core (src/relay/): simulated time, an honest inside agent that answers
//! challenges as the real one does, clients, and a seeded random generator. No sockets, no sleeps.
#![allow(dead_code)] // each test binary uses its own part

use rut::inside::Identity;
use rut::relay::{Relay, Settings, Transmit};
use rut::wire::{Claim, Instance, Key, Kind, Message, Shared, LEN};
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

/// Address `i` as a relay socket of one family sees it: an IPv4 socket sees IPv4 only; a dual-stack IPv6 socket
/// sees IPv6, IPv4 as IPv4-mapped (as the relay's does: a client said in a control message is read back so).
pub fn addr_seen(dual_stack: bool, i: usize) -> SocketAddr {
    match dual_stack {
        false => SocketAddr::from(([198, 51, 100, 1 + i as u8], 4000 + i as u16)),
        true => rut::addr::as_seen_by(true, addr(i)),
    }
}

/// One honest inside tunnel, as the relay should see it.
#[derive(Clone, Debug)]
pub struct SimTunnel {
    pub id: u32,
    pub addr: SocketAddr,
    pub active: bool,
    /// The client the relay said it routes through this tunnel, and whether the service answered it; the
    /// counter of the ack that said so (only a fresher ack changes it, as in the coordinator).
    pub client: Option<SocketAddr>,
    pub answered: bool,
    pub bound_by: u64,
}

impl SimTunnel {
    fn claim(&self) -> Claim {
        Claim {
            active: self.active,
            answered: self.answered,
            client: self.client,
            local: None,
        }
    }
}

/// An honest run of the inside agent: seals with the shared key, answers challenges for its own tunnels at
/// their own addresses, closes what the relay drops.
pub struct SimInside {
    pub identity: Arc<Identity>,
    pub tunnels: Vec<SimTunnel>,
    next_id: u32,
    key: Key,
}

impl SimInside {
    /// An agent that says no settings (the relay then uses its own).
    pub fn new(instance: u8) -> SimInside {
        SimInside::saying(instance, Shared::default())
    }

    /// An agent that says `shared` in every message.
    pub fn saying(instance: u8, shared: Shared) -> SimInside {
        SimInside::with_key(KEY, instance, shared)
    }

    /// An agent with its own key (one home of several).
    pub fn with_key(key: &[u8], instance: u8, shared: Shared) -> SimInside {
        SimInside {
            identity: Arc::new(Identity::new(key, Instance([instance; 16]), shared)),
            tunnels: Vec::new(),
            next_id: 1,
            key: Key::new(key),
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
            client: None,
            answered: false,
            bound_by: 0,
        });
        (id, self.keepalive(id))
    }

    pub fn tunnel(&self, id: u32) -> Option<&SimTunnel> {
        self.tunnels.iter().find(|t| t.id == id)
    }

    /// A keepalive of tunnel `id` that says what the tunnel carries.
    pub fn keepalive(&self, id: u32) -> [u8; LEN] {
        let claim = self.tunnel(id).map(SimTunnel::claim).unwrap_or_default();
        self.identity
            .seal_claim(Kind::Keepalive, id, &claim, [0; 8])
            .1
    }

    fn note_carrying(&self) {
        let n = self.tunnels.iter().filter(|t| t.active).count();
        self.identity.set_carrying(n);
    }

    pub fn close(&mut self, id: u32) -> Option<(SocketAddr, [u8; LEN])> {
        let i = self.tunnels.iter().position(|t| t.id == id)?;
        let t = self.tunnels.remove(i);
        self.note_carrying();
        Some((
            t.addr,
            self.identity.seal(Kind::Close, id, t.active, [0; 8]),
        ))
    }

    /// What the honest agent does with a relay message that reached `to`: a response to send from `to`, if any.
    /// Drops close the tunnel; a fresh ack says whether it carries a client and which (the agent does not
    /// learn it from anything else here, so its claims are only what the relay said).
    pub fn receive(&mut self, to: SocketAddr, data: &[u8]) -> Option<(u32, [u8; LEN])> {
        let msg = self.key.open(data).ok()?;
        if msg.instance != self.instance() {
            return None;
        }
        let t = self
            .tunnels
            .iter()
            .position(|t| t.id == msg.tunnel && t.addr == to)?;
        match msg.kind {
            Kind::Challenge => {
                let claim = self.tunnels[t].claim();
                Some((
                    msg.tunnel,
                    self.identity
                        .seal_claim(Kind::Response, msg.tunnel, &claim, msg.cookie)
                        .1,
                ))
            }
            Kind::Drop => {
                self.tunnels.remove(t);
                self.note_carrying();
                None
            }
            Kind::Ack => {
                let tun = &mut self.tunnels[t];
                if msg.counter > tun.bound_by {
                    tun.bound_by = msg.counter;
                    tun.active = msg.client.is_some();
                    tun.client = msg.client;
                    tun.answered = tun.active && msg.answered;
                }
                self.note_carrying();
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

    /// Let time pass; what the tick sends (held datagrams released after a recovery).
    pub fn advance(&mut self, d: Duration) -> Vec<Transmit> {
        self.now += d;
        let mut out = Vec::new();
        self.relay.on_tick(self.now, &mut out);
        out
    }

    /// Register a spare of `inside` at `addr` through the whole exchange; panics if the relay does not ack.
    pub fn register(&mut self, inside: &mut SimInside, addr: SocketAddr) -> u32 {
        let (id, ka) = inside.open(addr);
        let (_, out) = self.send(addr, &ka);
        let challenge = only(&out, addr);
        let (_, response) = inside.receive(addr, &challenge).expect("a challenge");
        let (_, out) = self.send(addr, &response);
        let ack = only(&out, addr);
        assert_eq!(
            inside.key.open(&ack).ok().map(|m| m.kind),
            Some(Kind::Ack),
            "registered"
        );
        id
    }
}

impl SimRelay {
    /// Tunnel `id` of `inside` sends a keepalive; the relay's answers reach it, challenges are answered, until
    /// the exchange ends. Returns the datagrams that are not control messages (forwarded client data).
    pub fn keepalive(&mut self, inside: &mut SimInside, id: u32) -> Vec<Transmit> {
        let Some(at) = inside.tunnel(id).map(|t| t.addr) else {
            return Vec::new();
        };
        let (_, out) = self.send(at, &inside.keepalive(id));
        self.exchange(inside, out)
    }

    /// What the relay sent reaches `inside` (responses go back to the relay, and so on); returns the rest.
    pub fn exchange(&mut self, inside: &mut SimInside, out: Vec<Transmit>) -> Vec<Transmit> {
        let mut rest = Vec::new();
        let mut queue = out;
        for _ in 0..16 {
            if queue.is_empty() {
                break;
            }
            for t in std::mem::take(&mut queue) {
                if !rut::wire::looks_like_control(&t.data) {
                    rest.push(t);
                } else if let Some((_, response)) = inside.receive(t.to, &t.data) {
                    queue.extend(self.send(t.to, &response).1);
                }
            }
        }
        rest
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
