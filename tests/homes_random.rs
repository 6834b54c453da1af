//! Randomized invariant test of a relay of several homes (`--homes`): random events from every home's honest
//! inside agent (keepalives delivered late, twice or never; tunnels that rebind to any address of a pool all
//! homes share, so they collide; closes; restarts), clients sending initiations for any home's server key, for
//! none, or garbage, an attacker replaying and forging, clock jumps, and reloads of the homes file (homes
//! removed, added back, a new -n). After every step: no datagram of one home's client reaches another home's
//! tunnel or service; every tunnel of a home is where that home's agent proved it; every client of a home
//! passed that home's admission; each home's bounds hold whatever the others do; the relay's own index of
//! which home knows which address is exact. The seed is printed; `RUT_SEED=N` replays a run.

mod sim;

use rut::relay::table::{Route, TunnelKey};
use rut::relay::{HomeSpec, Relay, Settings, Transmit};
use rut::wire::wireguard::{self, PublicKey};
use rut::wire::{self, Instance, Key, Kind, Message, Shared, LEN};
use sim::*;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const EVENTS: u64 = 1_000_000;
const WORLD_EVENTS: u64 = 15_000;
/// Addresses shared by every home's tunnels, clients and the attacker.
const POOL: usize = 14;
const SERVERS: [&str; 3] = [
    "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
    "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
    "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=",
];
/// A server key no home has.
const STRANGER: &str = "bPfJDxgOB8bH8cK1sJqvKp0KhFyYfyEXjRhpGgZlYmU=";

fn initiation(server: &str, n: u32) -> Vec<u8> {
    let mut m = [0u8; wireguard::INITIATION_LEN];
    m[0] = 1;
    m[4..8].copy_from_slice(&n.to_le_bytes());
    m[8..12].copy_from_slice(&n.to_be_bytes());
    let pk: PublicKey = server.parse().unwrap();
    wireguard::client_macs(&pk, &mut m, None);
    m.to_vec()
}

fn key_of(h: usize) -> Vec<u8> {
    format!("the key of home {h}").into_bytes()
}

struct HomeWorld {
    name: String,
    inside: SimInside,
    next_instance: u8,
    /// Every run its agent has had.
    instances: HashSet<Instance>,
    /// (tunnel, address) pairs where its agent answered a challenge.
    proven: HashSet<(TunnelKey, SocketAddr)>,
    max_tunnels: usize,
    /// The largest -n since the home was last added: a lowered -n leaves tunnels beyond it until they close.
    max_seen: usize,
    /// In the homes file now.
    served: bool,
}

struct World {
    rng: Rng,
    relay: Relay,
    now: Instant,
    homes: Vec<HomeWorld>,
    in_flight: Vec<(SocketAddr, Vec<u8>)>,
    recorded: Vec<Vec<u8>>,
    /// Source → the homes it sent an initiation for.
    initiated: HashMap<SocketAddr, HashSet<usize>>,
    /// (client, home): the service answered the client through one of that home's tunnels.
    answered: HashSet<(SocketAddr, usize)>,
    /// Sources of data (not control-shaped): the only places, besides proven tunnels, data may go.
    data_senders: HashSet<SocketAddr>,
    next_initiation: u32,
    events: u64,
    seeds: u8,
    /// The relay's socket: IPv4, or dual-stack IPv6 (IPv4 sources mapped).
    dual_stack: bool,
    /// Coverage: client datagrams forwarded into a tunnel, per home; tunnels one home's proof took from
    /// another.
    forwarded: [u64; 3],
    displaced: u64,
}

type Snapshot = HashMap<(String, TunnelKey), (SocketAddr, Option<SocketAddr>)>;

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng::new(seed);
        let n = 2 + rng.below(2);
        let homes: Vec<HomeWorld> = (0..n)
            .map(|h| {
                let inside = SimInside::with_key(&key_of(h), 1, Shared::default());
                HomeWorld {
                    name: format!("h{h}"),
                    instances: HashSet::from([inside.instance()]),
                    inside,
                    next_instance: 2,
                    proven: HashSet::new(),
                    max_tunnels: 0,
                    max_seen: 0,
                    served: true,
                }
            })
            .collect();
        let mut homes = homes;
        for h in homes.iter_mut() {
            h.max_tunnels = 1 + rng.below(4);
            h.max_seen = h.max_tunnels;
        }
        let now = Instant::now();
        let settings = Settings {
            max_tunnels: 3,
            keepalive: Duration::from_secs(1 + rng.below(20) as u64),
        };
        let mut w = World {
            rng,
            relay: Relay::new(b"unused", settings.clone(), [0; 32], now),
            now,
            homes,
            in_flight: Vec::new(),
            recorded: Vec::new(),
            initiated: HashMap::new(),
            answered: HashSet::new(),
            data_senders: HashSet::new(),
            next_initiation: 0,
            events: 0,
            seeds: 0,
            dual_stack: false,
            forwarded: [0; 3],
            displaced: 0,
        };
        w.dual_stack = w.rng.chance(500);
        let specs = w.specs();
        let mut seeds = 0u8;
        w.relay = Relay::with_homes(
            specs,
            settings,
            &mut || {
                seeds = seeds.wrapping_add(1);
                [seeds; 32]
            },
            now,
        );
        w.seeds = seeds;
        w
    }

    fn specs(&self) -> Vec<HomeSpec> {
        self.homes
            .iter()
            .enumerate()
            .filter(|(_, h)| h.served)
            .map(|(i, h)| HomeSpec {
                name: h.name.clone(),
                key: key_of(i),
                server: SERVERS[i].parse().unwrap(),
                max_tunnels: h.max_tunnels,
            })
            .collect()
    }

    fn any_addr(&mut self) -> SocketAddr {
        addr_seen(self.dual_stack, self.rng.below(POOL))
    }

    fn any_home(&mut self) -> usize {
        self.rng.below(self.homes.len())
    }

    fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::new();
        for h in &self.homes {
            if let Some(home) = self.relay.home(&h.name) {
                for t in home.table().tunnels() {
                    s.insert((h.name.clone(), t.key), (t.addr, t.client));
                }
            }
        }
        s
    }

    fn step(&mut self) -> Result<(), String> {
        self.events += 1;
        match self.rng.below(1000) {
            // A client sends: an initiation for a home, for no home, or anything else.
            0..=249 => {
                let src = self.any_addr();
                let data = match self.rng.below(10) {
                    0..=3 => {
                        let h = self.any_home();
                        self.next_initiation += 1;
                        initiation(SERVERS[h], self.next_initiation)
                    }
                    4 => {
                        self.next_initiation += 1;
                        initiation(STRANGER, self.next_initiation)
                    }
                    5..=6 => {
                        let len = 32 + self.rng.below(20);
                        let mut t = self.rng.bytes(len);
                        t[..4].copy_from_slice(&[4, 0, 0, 0]);
                        t
                    }
                    _ => {
                        let len = self.rng.below(40);
                        self.rng.bytes(len)
                    }
                };
                self.deliver(src, data, false)
            }
            // A tunnel of a home sends service data.
            250..=349 => {
                let h = self.any_home();
                match self.rng.pick(&self.homes[h].inside.tunnels).cloned() {
                    Some(t) => {
                        let len = 1 + self.rng.below(30);
                        let data = self.rng.bytes(len);
                        self.deliver(t.addr, data, false)
                    }
                    None => Ok(()),
                }
            }
            // A keepalive of a home's tunnel leaves.
            350..=449 => {
                let h = self.any_home();
                if let Some(t) = self.rng.pick(&self.homes[h].inside.tunnels).cloned() {
                    let ka = self.homes[h].inside.keepalive(t.id);
                    self.in_flight.push((t.addr, ka.to_vec()));
                }
                Ok(())
            }
            // An honest message in flight arrives, in any order, sometimes twice or never.
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
                    return Ok(());
                }
                self.deliver(src, data, false)
            }
            // A home's agent opens a tunnel at an address of the shared pool.
            600..=639 => {
                let h = self.any_home();
                if self.homes[h].inside.tunnels.len() < 2 * self.homes[h].max_tunnels + 2 {
                    let a = self.any_addr();
                    let (_, ka) = self.homes[h].inside.open(a);
                    self.in_flight.push((a, ka.to_vec()));
                }
                Ok(())
            }
            // A NAT moves a home's tunnel, maybe onto another home's tunnel's or client's address.
            640..=669 => {
                let h = self.any_home();
                let n = self.homes[h].inside.tunnels.len();
                if n > 0 {
                    let i = self.rng.below(n);
                    let a = self.any_addr();
                    self.homes[h].inside.tunnels[i].addr = a;
                    let id = self.homes[h].inside.tunnels[i].id;
                    let ka = self.homes[h].inside.keepalive(id);
                    self.in_flight.push((a, ka.to_vec()));
                }
                Ok(())
            }
            670..=694 => {
                let h = self.any_home();
                if let Some(t) = self.rng.pick(&self.homes[h].inside.tunnels).cloned() {
                    if let Some((a, close)) = self.homes[h].inside.close(t.id) {
                        self.in_flight.push((a, close.to_vec()));
                    }
                }
                Ok(())
            }
            // A home's agent restarts.
            695..=699 => {
                let h = self.any_home();
                let home = &mut self.homes[h];
                home.inside =
                    SimInside::with_key(&key_of(h), home.next_instance, Shared::default());
                home.instances.insert(home.inside.instance());
                home.next_instance = home.next_instance.wrapping_add(1).max(2);
                Ok(())
            }
            // The attacker replays anything recorded, from any address.
            700..=799 => match self.rng.pick(&self.recorded).cloned() {
                Some(data) => {
                    let src = self.any_addr();
                    let attack = wire::looks_like_control(&data);
                    self.deliver(src, data, attack)
                }
                None => Ok(()),
            },
            // The attacker forges control messages: random bytes, another key, flipped bits.
            800..=869 => {
                let src = self.any_addr();
                let forged = self.forge();
                let attack = wire::looks_like_control(&forged);
                self.deliver(src, forged, attack)
            }
            // The homes file changes: a home leaves or comes back, a home's -n changes.
            870 => self.reload(),
            871..=989 => {
                let ms = self.rng.below(700) as u64;
                self.advance(Duration::from_millis(ms))
            }
            _ => {
                let ms = self.rng.below(60_000) as u64;
                self.advance(Duration::from_millis(ms))
            }
        }
    }

    fn forge(&mut self) -> Vec<u8> {
        match self.rng.below(3) {
            0 => {
                let mut b = self.rng.bytes(LEN);
                b[..4].copy_from_slice(&wire::MAGIC);
                b[4] = wire::VERSION;
                b[5] = 1 + self.rng.below(7) as u8;
                // Sometimes the id of a real home's key: its MAC still fails.
                if self.rng.chance(500) {
                    let h = self.any_home();
                    b[92..100].copy_from_slice(&Key::new(&key_of(h)).id().0);
                }
                b
            }
            1 => {
                let h = self.any_home();
                let instance = self.homes[h].inside.instance();
                let m = Message::new(
                    Kind::Keepalive,
                    instance,
                    1 + self.rng.below(8) as u32,
                    self.rng.next(),
                );
                Key::new(b"not any home's key").seal(&m).to_vec()
            }
            _ => match self.rng.pick(&self.recorded).cloned() {
                Some(mut b) if !b.is_empty() => {
                    let i = self.rng.below(b.len());
                    b[i] ^= 1 << self.rng.below(8);
                    b
                }
                _ => Vec::new(),
            },
        }
    }

    fn reload(&mut self) -> Result<(), String> {
        let h = self.any_home();
        let home = &mut self.homes[h];
        let was_seen = home.max_seen;
        match self.rng.below(3) {
            0 => {
                home.served = !home.served;
                home.max_seen = home.max_tunnels;
            }
            _ => {
                home.max_tunnels = 1 + self.rng.below(4);
                home.max_seen = home.max_seen.max(home.max_tunnels);
            }
        }
        if self.homes.iter().all(|h| !h.served) {
            // Not the last home: it stays as it was.
            self.homes[h].served = true;
            self.homes[h].max_seen = was_seen;
        }
        let specs = self.specs();
        let mut seeds = self.seeds;
        let mut out = Vec::new();
        self.relay
            .reload(
                self.now,
                specs,
                &mut || {
                    seeds = seeds.wrapping_add(1);
                    [seeds; 32]
                },
                &mut out,
            )
            .ok_or("reload refused")?;
        self.seeds = seeds;
        self.relay.check()?;
        self.reach_agents(out);
        self.check_bounds()
    }

    fn advance(&mut self, d: Duration) -> Result<(), String> {
        self.now += d;
        let mut out = Vec::new();
        self.relay.on_tick(self.now, &mut out);
        for t in &out {
            if !wire::looks_like_control(&t.data) {
                self.check_destination(t.to)?;
            }
        }
        self.reach_agents(out);
        self.relay.check()?;
        self.check_bounds()
    }

    /// What the relay sent reaches whichever home's agent has a tunnel there and can open it.
    fn reach_agents(&mut self, out: Vec<Transmit>) {
        for t in out {
            for home in self.homes.iter_mut() {
                if let Some((id, response)) = home.inside.receive(t.to, &t.data) {
                    home.proven.insert((
                        TunnelKey {
                            run: home.inside.instance(),
                            id,
                        },
                        t.to,
                    ));
                    self.in_flight.push((t.to, response.to_vec()));
                }
            }
        }
    }

    /// Which home's agent `data` is sealed by, if it verifies for one.
    fn sealed_by(&self, data: &[u8]) -> Option<usize> {
        (0..self.homes.len()).find(|&h| Key::new(&key_of(h)).open(data).is_ok())
    }

    fn deliver(&mut self, src: SocketAddr, data: Vec<u8>, attack: bool) -> Result<(), String> {
        let before = self.snapshot();
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
        // Whoever sends an initiation for a home's server key (made or copied: anyone can make one) may be
        // admitted to that home.
        if wireguard::kind(&data) == Some(wireguard::MsgType::Initiation) {
            for (h, server) in SERVERS.iter().enumerate().take(self.homes.len()) {
                let pk: PublicKey = server.parse().unwrap();
                let mut probe = [0u8; wireguard::INITIATION_LEN];
                probe.copy_from_slice(&data);
                wireguard::client_macs(&pk, &mut probe, None);
                if probe[116..132] == data[116..132] {
                    self.initiated.entry(src).or_default().insert(h);
                }
            }
        }
        let mut out = Vec::new();
        let fwd = self.relay.on_datagram(self.now, src, &data, &mut out);
        let after = self.snapshot();
        if std::env::var_os("RUT_TRACE").is_some() {
            let what = match self.sealed_by(&data) {
                Some(h) => {
                    let m = Key::new(&key_of(h)).open(&data).unwrap();
                    format!(
                        "h{h} {:?} {}/{} #{} client {:?}",
                        m.kind, m.instance, m.tunnel, m.counter, m.client
                    )
                }
                None => format!("{} bytes type {:?}", data.len(), data.first()),
            };
            println!(
                "{} {src} {what} attack={attack} -> {fwd:?} out {}\n   {after:?}",
                self.events,
                out.len()
            );
        }
        self.relay.check()?;

        if let Some(dst) = fwd {
            if control {
                return Err(format!(
                    "control-shaped datagram from {src} forwarded to {dst}"
                ));
            }
            // It went where the route of the one home that knows its source leads, within that home.
            let name = self
                .relay
                .owner(&src)
                .ok_or_else(|| format!("{src}'s datagram went to {dst}, but no home knows {src}"))?
                .to_string();
            let home = self
                .relay
                .home(&name)
                .ok_or("an indexed home that is not served")?;
            let leads = match home.table().route(&src) {
                Route::To(d) | Route::Answer(d, _) => d == dst,
                _ => false,
            };
            if !leads {
                return Err(format!(
                    "{src}'s datagram went to {dst}, not where home {name}'s route leads"
                ));
            }
            if let Route::To(_) = home.table().route(&src) {
                if let Some(h) = self.homes.iter().position(|h| h.name == name) {
                    self.forwarded[h] += 1;
                }
            }
            if self.relay.owner(&dst).is_some_and(|o| o != name) {
                return Err(format!(
                    "{src}'s datagram (home {name}) reached {dst}, another home's"
                ));
            }
            self.check_destination(dst)?;
        }
        let authenticated = control && self.sealed_by(&data).is_some();
        for t in &out {
            if t.to == src && !authenticated && t.data.len() > data.len() {
                return Err(format!(
                    "{} bytes answered with {} to {src}",
                    data.len(),
                    t.data.len()
                ));
            }
            if t.to != src && !wire::looks_like_control(&t.data) {
                self.check_destination(t.to)?;
            }
        }
        if !authenticated && out.iter().filter(|t| t.to == src).count() > 1 {
            return Err("an unauthenticated datagram got several answers".into());
        }

        // Nothing forged or replayed changes any home's tunnels (a late close by the agent excepted, as in
        // relay_random.rs).
        if attack {
            let mut kept = before.clone();
            kept.retain(|(name, key), _| {
                after.contains_key(&(name.clone(), *key)) || {
                    let h = self.homes.iter().find(|h| &h.name == name);
                    h.is_some_and(|h| {
                        key.run == h.inside.instance() && h.inside.tunnel(key.id).is_some()
                    })
                }
            });
            if kept != after {
                return Err(format!(
                    "an attacker's datagram from {src} changed the tunnels:\n before {before:?}\n after  {after:?}"
                ));
            }
        }

        // One home's agent disturbs another home only where one of its tunnels proved itself: at that address.
        if let Some(h) = self.sealed_by(&data) {
            let name = &self.homes[h].name;
            for ((n, k), (a, c)) in before.iter().filter(|((n, _), _)| n != name) {
                if after.get(&(n.clone(), *k)) == Some(&(*a, *c)) {
                    continue;
                }
                if *a != src && *c != Some(src) {
                    return Err(format!(
                        "home {name}'s message from {src} changed home {n}'s tunnel {k:?} at {a} (client {c:?})"
                    ));
                }
                self.displaced += 1;
            }
        }

        // Every tunnel of a home sits where that home's agent proved it; every client passed that home's
        // admission: an initiation for its server key, or an answer through one of its tunnels before.
        for ((name, key), (a, client)) in &after {
            let (h, home) = self
                .homes
                .iter()
                .enumerate()
                .find(|(_, h)| &h.name == name)
                .ok_or("a tunnel of an unknown home")?;
            if !home.served {
                return Err(format!("home {name}, removed, still has tunnel {key:?}"));
            }
            if !home.instances.contains(&key.run) || !home.proven.contains(&(*key, *a)) {
                return Err(format!(
                    "home {name}'s tunnel {key:?} at {a}, where its agent never proved it"
                ));
            }
            if let Some(c) = client {
                let passed = self.initiated.get(c).is_some_and(|hs| hs.contains(&h))
                    || self.answered.contains(&(*c, h));
                if !passed {
                    return Err(format!(
                        "home {name}'s client {c} never passed home {name}'s admission"
                    ));
                }
            }
        }
        for (h, hw) in self.homes.iter().enumerate() {
            if let Some(home) = self.relay.home(&hw.name) {
                for t in home.table().tunnels() {
                    if let (Some(c), true) = (t.client, t.answered) {
                        self.answered.insert((c, h));
                    }
                }
            }
        }
        self.reach_agents(out);
        self.check_bounds()
    }

    /// Data goes only to an address that proved itself as some home's tunnel, or that sent data itself.
    fn check_destination(&self, dst: SocketAddr) -> Result<(), String> {
        let proven = self
            .homes
            .iter()
            .any(|h| h.proven.iter().any(|(_, a)| *a == dst));
        if proven || self.data_senders.contains(&dst) {
            Ok(())
        } else {
            Err(format!(
                "a datagram left toward {dst}, which never proved itself"
            ))
        }
    }

    /// Each home within its own bounds, whatever the others do.
    fn check_bounds(&self) -> Result<(), String> {
        for h in &self.homes {
            let Some(home) = self.relay.home(&h.name) else {
                if h.served {
                    return Err(format!("home {} is in the file but not served", h.name));
                }
                continue;
            };
            let t = home.table();
            let n = h.max_seen;
            if t.spares() > n || t.waiting() > n || t.active() > n {
                return Err(format!(
                    "home {}: {} active, {} spare, {} waiting with -n {n}",
                    h.name,
                    t.active(),
                    t.spares(),
                    t.waiting()
                ));
            }
            if home.retired() > rut::relay::RETIRED_KEPT {
                return Err(format!("home {}: too many replaced runs", h.name));
            }
        }
        Ok(())
    }
}

#[test]
fn no_datagram_crosses_homes_and_every_home_keeps_its_bounds() {
    let seed = seed();
    println!("seed {seed} (replay: RUT_SEED={seed})");
    let mut rng = Rng::new(seed);
    let mut done = 0;
    let mut seen = [0u64; 4];
    while done < EVENTS {
        let world_seed = rng.next();
        if let Some(only) = std::env::var("RUT_WORLD")
            .ok()
            .and_then(|w| w.parse::<u64>().ok())
        {
            if world_seed != only {
                done += WORLD_EVENTS;
                continue;
            }
        }
        let mut w = World::new(world_seed);
        while w.events < WORLD_EVENTS {
            if let Err(e) = w.step() {
                panic!(
                    "world {world_seed} failed after {} events: {e}\nreplay: RUT_SEED={seed} RUT_WORLD={world_seed} \
                     (RUT_TRACE=1 prints every delivery)",
                    w.events
                );
            }
        }
        done += w.events;
        if std::env::var_os("RUT_STATS").is_some() {
            println!("{:?}", w.relay.status_lines());
        }
        seen[0] += w.relay.unmatched().bad_mac1;
        seen[1] += w.forwarded.iter().filter(|&&f| f > 0).count() as u64;
        seen[2] += w
            .relay
            .homes()
            .iter()
            .map(|h| h.admissions().restored)
            .sum::<u64>();
        seen[3] += w.displaced;
    }
    println!(
        "{done} events; initiations for no home {}, homes that forwarded client data (over all worlds) {}, \
         tunnels restored {}, tunnels one home's proof took from another {}",
        seen[0], seen[1], seen[2], seen[3]
    );
    // A run that never reaches the paths under test is seen to.
    assert!(seen.iter().all(|&c| c > 0), "{seen:?}");
}
