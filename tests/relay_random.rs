//! Randomized invariant test of the relay core: over a million random events per run — client data, an honest
//! inside agent (keepalives, responses delivered late, twice or never, tunnels that rebind to any address,
//! closes, restarts), and an attacker who replays anything recorded from any source, forges control messages,
//! truncates them, uses the wrong key — with clock jumps and ticks, for random `-n` and keepalive intervals.
//! After every step the invariants that keep users safe are checked. The seed is printed and fixed unless
//! `RUT_SEED=N` replays a run or `RUT_SEED=clock` draws one (`make explore`); worlds that once failed are kept
//! in `REGRESSIONS`.

mod sim;

use rut::relay::table::{Route, TunnelKey};
use rut::relay::{Admission, Transmit};
use rut::wire::wireguard;
use rut::wire::{self, Instance, Key, Kind, Message, Shared, LEN};
use sim::*;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

/// Events per run (all worlds together).
const EVENTS: u64 = 1_000_000;
/// Events per world: each world has its own `-n`, keepalive interval and address pool.
const WORLD_EVENTS: u64 = 20_000;
/// Worlds that once found a bug, each run whole first (the message of a failure names its world's seed).
const REGRESSIONS: &[u64] = &[
    // A response refused for want of room, copied later from the same address, registered its tunnel (and
    // displaced the one whose client had that address). Found by seeds 123733954, 125420701, 125555324.
    57_911_146_262_232_753,
    11_548_655_726_710_898_483,
    12_825_908_617_701_071_921,
];
const SERVER_KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

/// A handshake initiation with a valid mac1 for SERVER_KEY; `n` makes it unique.
fn initiation(n: u32) -> [u8; wireguard::INITIATION_LEN] {
    let mut m = [0u8; wireguard::INITIATION_LEN];
    m[0] = 1;
    m[4..8].copy_from_slice(&n.to_le_bytes());
    m[8..12].copy_from_slice(&n.to_be_bytes());
    wireguard::client_macs(&SERVER_KEY.parse().unwrap(), &mut m, None);
    m
}

/// Addresses shared by clients, inside tunnels and the attacker, so that they collide.
const POOL: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// From the honest inside agent or a client.
    Honest,
    /// Forged, replayed, mangled: must change no tunnel.
    Attacker,
}

struct World {
    rng: Rng,
    relay: SimRelay,
    inside: SimInside,
    next_instance: u8,
    max_tunnels: usize,
    /// The relay's socket: IPv4, or dual-stack IPv6 (every source IPv6, IPv4 ones mapped).
    dual_stack: bool,
    /// Honest control messages on their way to the relay: (from, bytes). Delivered in any order, sometimes
    /// twice, sometimes never.
    in_flight: Vec<(SocketAddr, Vec<u8>)>,
    /// Everything the relay has received, for replays.
    recorded: Vec<Vec<u8>>,
    /// (tunnel, address) pairs the honest inside has answered a challenge from: the only places a tunnel may be.
    proven: HashSet<(TunnelKey, SocketAddr)>,
    /// Addresses that have sent data: the only places client traffic may go back to.
    data_senders: HashSet<SocketAddr>,
    /// `--wireguard`: then a client must have sent a fresh initiation, or have been answered through a tunnel.
    wg: bool,
    /// Sources that sent an initiation (mac1 is keyed by the server's public key: anyone can make one, and a
    /// copy of one that was never used is as good as the original) …
    initiators: HashSet<SocketAddr>,
    /// … and the initiations that admitted a client: one initiation, one admission.
    admitted_by: HashSet<Vec<u8>>,
    /// Clients that the service answered through a tunnel (the only ones a remembered admission may admit).
    answered: HashSet<SocketAddr>,
    next_initiation: u32,
    /// Every instance the honest agent has run as.
    instances: HashSet<Instance>,
    events: u64,
    /// `RUT_TRACE=1`: print every delivery (to read how a failing seed gets there).
    trace: bool,
}

/// Tunnels as the relay has them: key → (address, client, proven).
fn snapshot(w: &World) -> HashMap<TunnelKey, (SocketAddr, Option<SocketAddr>, bool)> {
    let t = w.relay.relay.table();
    t.tunnels()
        .map(|tun| (tun.key, (tun.addr, tun.client, tun.answered)))
        .collect()
}

/// An honest agent that says settings like the relay's, or different ones, or none.
fn inside_agent(rng: &mut Rng, instance: u8) -> SimInside {
    let shared = match rng.below(3) {
        0 => Shared::default(),
        _ => Shared {
            keepalive: rng.below(40) as u32,
            max_tunnels: rng.below(8) as u32,
        },
    };
    SimInside::saying(instance, shared)
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng::new(seed);
        let max_tunnels = 1 + rng.below(6);
        let keepalive = 1 + rng.below(30) as u64;
        let dual_stack = rng.chance(500);
        let wg = rng.chance(330);
        let mut relay = SimRelay::new(max_tunnels, keepalive, rng.next() as u8);
        if wg {
            let pk: wireguard::PublicKey = SERVER_KEY.parse().unwrap();
            let core = std::mem::replace(&mut relay.relay, SimRelay::new(1, 1, 0).relay);
            relay.relay = core.with_wireguard(Admission::new(&pk, [7; 32], relay.now));
        }
        let inside = inside_agent(&mut rng, 1);
        let instances = HashSet::from([inside.instance()]);
        World {
            rng,
            relay,
            inside,
            next_instance: 2,
            max_tunnels,
            dual_stack,
            wg,
            initiators: HashSet::new(),
            admitted_by: HashSet::new(),
            answered: HashSet::new(),
            next_initiation: 0,
            in_flight: Vec::new(),
            recorded: Vec::new(),
            proven: HashSet::new(),
            data_senders: HashSet::new(),
            instances,
            events: 0,
            trace: std::env::var_os("RUT_TRACE").is_some(),
        }
    }

    fn any_addr(&mut self) -> SocketAddr {
        addr_seen(self.dual_stack, self.rng.below(POOL))
    }

    fn step(&mut self) -> Result<(), String> {
        self.events += 1;
        let r = self.rng.below(1000);
        match r {
            // A client (any address, some of them also tunnels' addresses) sends data.
            // (With --wireguard, a third of them are handshake initiations with a valid mac1.)
            0..=249 => {
                let src = self.any_addr();
                let data = if self.wg && self.rng.chance(330) {
                    self.next_initiation += 1;
                    initiation(self.next_initiation).to_vec()
                } else {
                    let len = self.rng.below(40);
                    self.rng.bytes(len)
                };
                self.deliver(src, data, Origin::Honest)
            }
            // An honest tunnel sends service data.
            250..=349 => match self.rng.pick(&self.inside.tunnels).cloned() {
                Some(t) => {
                    let len = 1 + self.rng.below(30);
                    let data = self.rng.bytes(len);
                    self.deliver(t.addr, data, Origin::Honest)
                }
                None => Ok(()),
            },
            // An honest tunnel's keepalive leaves (and may arrive later).
            350..=449 => {
                if let Some(t) = self.rng.pick(&self.inside.tunnels).cloned() {
                    let ka = self.inside.keepalive(t.id);
                    self.in_flight.push((t.addr, ka.to_vec()));
                }
                Ok(())
            }
            // An honest message in flight arrives: any of them (reordering), sometimes twice or lost.
            450..=599 => {
                if self.in_flight.is_empty() {
                    return Ok(());
                }
                let i = self.rng.below(self.in_flight.len());
                let (src, data) = if self.rng.chance(100) {
                    self.in_flight[i].clone()
                } else {
                    self.in_flight.swap_remove(i)
                };
                if self.rng.chance(50) {
                    return Ok(()); // lost
                }
                self.deliver(src, data, Origin::Honest)
            }
            // The inside opens a tunnel at some address (its NAT's choice).
            600..=639 => {
                if self.inside.tunnels.len() < 2 * self.max_tunnels + 2 {
                    let a = self.any_addr();
                    let (_, ka) = self.inside.open(a);
                    self.in_flight.push((a, ka.to_vec()));
                }
                Ok(())
            }
            // A NAT gives a tunnel a new public address (possibly a client's, or another tunnel's).
            640..=669 => {
                let n = self.inside.tunnels.len();
                if n > 0 {
                    let i = self.rng.below(n);
                    let a = self.any_addr();
                    self.inside.tunnels[i].addr = a;
                    let ka = self.inside.keepalive(self.inside.tunnels[i].id);
                    self.in_flight.push((a, ka.to_vec()));
                }
                Ok(())
            }
            // The inside closes a tunnel.
            670..=694 => {
                if let Some(t) = self.rng.pick(&self.inside.tunnels).cloned() {
                    if let Some((a, close)) = self.inside.close(t.id) {
                        self.in_flight.push((a, close.to_vec()));
                    }
                }
                Ok(())
            }
            // The inside agent restarts: a new run, counters from 1 again.
            695..=699 => {
                if self.rng.chance(200) {
                    self.inside = inside_agent(&mut self.rng, self.next_instance);
                    self.instances.insert(self.inside.instance());
                    self.next_instance = self.next_instance.wrapping_add(1).max(2);
                }
                Ok(())
            }
            // The attacker replays anything recorded, from any address.
            700..=799 => match self.rng.pick(&self.recorded).cloned() {
                Some(data) => {
                    let src = self.any_addr();
                    let origin = if wire::looks_like_control(&data) {
                        Origin::Attacker
                    } else {
                        Origin::Honest // replayed data is just data from that address
                    };
                    self.deliver(src, data, origin)
                }
                None => Ok(()),
            },
            // The attacker forges: control shape with a wrong MAC, the wrong key, a flipped byte, truncation.
            800..=879 => {
                let src = self.any_addr();
                let forged = self.forge();
                let origin = if wire::looks_like_control(&forged) {
                    Origin::Attacker
                } else {
                    Origin::Honest
                };
                self.deliver(src, forged, origin)
            }
            // Time passes: a little, or a lot (a suspended VM, an outage).
            880..=989 => {
                let ms = self.rng.below(700) as u64;
                self.relay.advance(Duration::from_millis(ms));
                self.check_bounds()
            }
            _ => {
                let ms = self.rng.below(70_000) as u64;
                self.relay.advance(Duration::from_millis(ms));
                self.check_bounds()
            }
        }
    }

    fn forge(&mut self) -> Vec<u8> {
        match self.rng.below(4) {
            0 => {
                let mut b = self.rng.bytes(LEN);
                b[..4].copy_from_slice(&wire::MAGIC);
                b[4] = if self.rng.chance(900) {
                    wire::VERSION
                } else {
                    1
                };
                b[5] = 1 + self.rng.below(7) as u8;
                b
            }
            1 => {
                let instance = *self.instances.iter().next().unwrap();
                let kind = [Kind::Keepalive, Kind::Response, Kind::Close][self.rng.below(3)];
                let mut m = Message::new(
                    kind,
                    instance,
                    1 + self.rng.below(8) as u32,
                    self.rng.next(),
                );
                m.active = self.rng.chance(500);
                Key::new(b"not the key").seal(&m).to_vec()
            }
            2 => match self.rng.pick(&self.recorded).cloned() {
                Some(mut b) if !b.is_empty() => {
                    let i = self.rng.below(b.len());
                    b[i] ^= 1 << self.rng.below(8);
                    b
                }
                _ => Vec::new(),
            },
            _ => match self.rng.pick(&self.recorded).cloned() {
                Some(b) => {
                    let n = self.rng.below(b.len() + 1);
                    b[..n].to_vec()
                }
                None => Vec::new(),
            },
        }
    }

    /// Deliver `data` from `src` to the relay; route what it sends; check every invariant.
    fn deliver(&mut self, src: SocketAddr, data: Vec<u8>, origin: Origin) -> Result<(), String> {
        let before = snapshot(self);
        let current_before = self.relay.relay.current();
        if self.recorded.len() < 512 {
            self.recorded.push(data.clone());
        } else {
            let i = self.rng.below(512);
            self.recorded[i] = data.clone();
        }
        let control = wire::looks_like_control(&data);
        if !control {
            self.data_senders.insert(src);
        }
        let initiation = wireguard::kind(&data) == Some(wireguard::MsgType::Initiation);
        if initiation {
            self.initiators.insert(src);
        }
        let (fwd, out) = self.relay.send(src, &data);
        let after = snapshot(self);
        if self.trace {
            let what = match Key::new(KEY).open(&data) {
                Ok(m) => format!("{:?} of {}/{} #{}", m.kind, m.instance, m.tunnel, m.counter),
                Err(e) => format!("{} bytes ({e})", data.len()),
            };
            let sent: Vec<String> = out
                .iter()
                .map(|t| match Key::new(KEY).open(&t.data) {
                    Ok(m) => format!("{:?} {}/{} to {}", m.kind, m.instance, m.tunnel, t.to),
                    Err(_) => format!("{} bytes to {}", t.data.len(), t.to),
                })
                .collect();
            println!(
                "{} {src} {origin:?} {what} -> {fwd:?} {sent:?}\n   {after:?}",
                self.events
            );
        }

        // Routing: a forwarded datagram goes exactly where the table now routes its source.
        if let Some(dst) = fwd {
            if control {
                return Err(format!(
                    "a control-shaped datagram from {src} was forwarded to {dst}"
                ));
            }
            let leads = match self.relay.relay.table().route(&src) {
                Route::To(d) | Route::Answer(d, _) => d == dst,
                _ => false,
            };
            if !leads {
                return Err(format!(
                    "{src}'s datagram went to {dst}, not where its route leads"
                ));
            }
            self.check_destination(dst)?;
        }
        let authenticated = control && Key::new(KEY).open(&data).is_ok();
        for t in &out {
            self.check_destination_or_sender(t, src)?;
            if t.to == src && !authenticated && t.data.len() > data.len() {
                return Err(format!(
                    "{} bytes answered with {} to {src}",
                    data.len(),
                    t.data.len()
                ));
            }
        }
        if !authenticated && out.iter().filter(|t| t.to == src).count() > 1 {
            return Err(format!(
                "an unauthenticated datagram got {} answers",
                out.len()
            ));
        }

        // Nothing unauthenticated or replayed registers, moves or closes a tunnel, or replaces the inside run.
        // (One exception, by design: a close delivered late — it arrived before the tunnel's reordered
        // registration, so it was not applied then — closes a tunnel the agent really closed: a close proves
        // itself by its fresh counter, and routes nothing anywhere.)
        let closed_by_agent = |key: &TunnelKey| {
            key.run != self.inside.instance() || self.inside.tunnel(key.id).is_none()
        };
        let mut kept = before.clone();
        kept.retain(|key, _| after.contains_key(key) || !closed_by_agent(key));
        if origin == Origin::Attacker
            && (kept != after || self.relay.relay.current() != current_before)
        {
            return Err(format!(
                "an attacker's datagram from {src} changed the tunnels:\n before {before:?}\n after  {after:?}"
            ));
        }

        // A tunnel changes hands only while unproven: nobody's one-way traffic takes a proven tunnel.
        for (key, (_, client, _)) in &after {
            if let (Some((_, Some(was), proven)), Some(now)) = (before.get(key), client) {
                if was != now && *proven {
                    return Err(format!("proven tunnel {key:?} taken from {was} by {now}"));
                }
            }
        }

        // Every tunnel sits at an address where the honest agent proved it, for a run it really had.
        for (key, (a, client, _)) in &after {
            if !self.instances.contains(&key.run) || !self.proven.contains(&(*key, *a)) {
                return Err(format!(
                    "tunnel {key:?} at {a}, where it never proved itself"
                ));
            }
            if let Some(c) = client {
                if !self.data_senders.contains(c) {
                    return Err(format!("tunnel {key:?}'s client {c} never sent data"));
                }
                let passed = self.initiators.contains(c) || self.answered.contains(c);
                if self.wg && !passed {
                    return Err(format!(
                        "tunnel {key:?}'s client {c} sent no fresh initiation and was never answered"
                    ));
                }
            }
        }
        // With --wireguard, an initiation admits once (a remembered client needs none).
        let new_client = |m: &HashMap<TunnelKey, (SocketAddr, Option<SocketAddr>, bool)>| {
            m.values().any(|(_, c, _)| *c == Some(src))
        };
        if self.wg
            && initiation
            && new_client(&after)
            && !new_client(&before)
            && !self.answered.contains(&src)
            && !self.admitted_by.insert(data.clone())
        {
            return Err(format!(
                "an initiation that admitted a client before admitted {src}"
            ));
        }
        // One client, one tunnel.
        let mut clients = HashSet::new();
        for (key, (_, client, _)) in &after {
            if let Some(c) = client {
                if !clients.insert(*c) {
                    return Err(format!("client {c} routed to two tunnels (one is {key:?})"));
                }
            }
        }
        for (_, client, answered) in after.values() {
            if let (Some(c), true) = (client, answered) {
                self.answered.insert(*c);
            }
        }

        // What reaches the honest agent's tunnels: challenges are answered (later), drops close.
        for t in out {
            if let Some((id, response)) = self.inside.receive(t.to, &t.data) {
                self.proven.insert((
                    TunnelKey {
                        run: self.inside.instance(),
                        id,
                    },
                    t.to,
                ));
                self.in_flight.push((t.to, response.to_vec()));
            }
        }
        self.check_bounds()
    }

    /// Data may only go to an address that proved itself as a tunnel or sent data itself.
    fn check_destination(&self, dst: SocketAddr) -> Result<(), String> {
        let proven = self.proven.iter().any(|(_, a)| *a == dst);
        if proven || self.data_senders.contains(&dst) {
            Ok(())
        } else {
            Err(format!(
                "a datagram left toward {dst}, which never proved itself"
            ))
        }
    }

    fn check_destination_or_sender(&self, t: &Transmit, src: SocketAddr) -> Result<(), String> {
        if t.to == src {
            return Ok(());
        }
        self.check_destination(t.to)
    }

    fn check_bounds(&self) -> Result<(), String> {
        let table = self.relay.relay.table();
        table.check()?;
        if table.active() > self.max_tunnels || table.spares() > self.max_tunnels {
            return Err(format!(
                "{} active and {} spare tunnels with -n {}",
                table.active(),
                table.spares(),
                self.max_tunnels
            ));
        }
        if table.waiting() > self.max_tunnels {
            return Err(format!(
                "{} waiting clients with -n {}",
                table.waiting(),
                self.max_tunnels
            ));
        }
        if self.relay.relay.retired() > rut::relay::RETIRED_KEPT {
            return Err("too many replaced runs remembered".into());
        }
        Ok(())
    }
}

/// Runs `events` events; returns how many ran, and how many tunnels were reclaimed, restored from the inside
/// agent's word, and admitted by memory (so that a run that never reaches these paths is seen to).
fn run(seed: u64, events: u64) -> (u64, [u64; 3]) {
    let mut rng = Rng::new(seed);
    let mut done = 0;
    let mut counts = [0; 3];
    while done < events {
        let w = run_world(Some(seed), rng.next(), WORLD_EVENTS.min(events - done));
        done += w.events;
        let a = w.relay.relay.admissions();
        counts[0] += a.reclaimed;
        counts[1] += a.restored;
        counts[2] += a.remembered;
    }
    (done, counts)
}

/// One world, for `events` events: of the run with `seed`, or (None) a regression.
fn run_world(seed: Option<u64>, world_seed: u64, events: u64) -> World {
    let mut w = World::new(world_seed);
    while w.events < events {
        if let Err(e) = w.step() {
            let replay = match seed {
                Some(seed) => format!(
                    "seed {seed}: replay with RUT_SEED={seed}; keep the world's seed in REGRESSIONS once fixed"
                ),
                None => "a regression world (REGRESSIONS)".to_string(),
            };
            panic!(
                "world {world_seed} failed after {} events (-n {}): {e}\n{replay}",
                w.events, w.max_tunnels
            );
        }
    }
    w
}

#[test]
fn a_million_random_events_keep_every_relay_invariant() {
    for &world in REGRESSIONS {
        run_world(None, world, WORLD_EVENTS);
    }
    let seed = seed();
    println!("relay random test: seed {seed} (replay with RUT_SEED={seed})");
    let (n, [reclaimed, restored, remembered]) = run(seed, EVENTS);
    println!(
        "relay random test: {n} events, seed {seed}, every invariant held ({reclaimed} tunnels reclaimed, \
         {restored} restored, {remembered} clients admitted by memory)"
    );
    assert!(n >= EVENTS);
    assert!(reclaimed > 0, "the run must reach reclamation");
    assert!(
        restored > 0,
        "the run must restore tunnels from the agent's word"
    );
    assert!(remembered > 0, "the run must admit remembered clients");
}
