//! The inside coordinator's decisions on its sans-IO core, with simulated time: unit tests of each exchange, and
//! a randomized test that runs it against the real relay core (src/relay/) through simulated NATs, with
//! clients, lost and duplicated messages, failures, relay restarts and clock jumps.

mod sim;

use rut::addr::HostPort;
use rut::inside::{Action, Coordinator, Event, Identity, Input, Name, Settings, MAX_SLEEP};
use rut::stats::Drops;
use rut::wire::{Instance, Key, Kind, Message, LEN};
use sim::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const RELAY: &str = "203.0.113.1:1234";
const SERVICE: &str = "127.0.0.1:51820";

fn settings(max_tunnels: usize, spares: usize, keepalive: u64) -> Settings {
    Settings {
        max_tunnels,
        spares,
        keepalive: Duration::from_secs(keepalive),
        service_name: HostPort {
            host: "localhost".into(),
            port: 51820,
        },
        relay_name: HostPort {
            host: "relay.example".into(),
            port: 1234,
        },
    }
}

struct Inside {
    core: Coordinator,
    now: Instant,
    out: Vec<Action>,
    key: Key,
}

impl Inside {
    fn new(s: Settings) -> Inside {
        let now = Instant::now();
        let identity = Arc::new(Identity::new(KEY, Instance([7; 16]), Default::default()));
        let core = Coordinator::new(identity, s, Arc::new(Drops::default()), now);
        Inside {
            core,
            now,
            out: Vec::new(),
            key: Key::new(KEY),
        }
    }

    fn input(&mut self, i: Input) -> Vec<Action> {
        self.core.handle(self.now, i, &mut self.out);
        std::mem::take(&mut self.out)
    }

    fn tick(&mut self) -> Vec<Action> {
        self.core.on_tick(self.now, &mut self.out);
        std::mem::take(&mut self.out)
    }

    fn resolved(&mut self) -> Vec<Action> {
        let mut a = self.input(Input::Resolved {
            name: Name::Service,
            addr: SERVICE.parse().unwrap(),
        });
        a.extend(self.input(Input::Resolved {
            name: Name::Relay,
            addr: RELAY.parse().unwrap(),
        }));
        a.extend(self.tick());
        a
    }

    fn relay_says(&mut self, id: u32, kind: Kind, counter: u64) -> Vec<Action> {
        let msg = Message::new(kind, Instance([7; 16]), id, counter);
        self.input(Input::Tunnel(id, Event::Control(Box::new(msg))))
    }

    fn sent(&self, actions: &[Action]) -> Vec<(u32, Kind)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { id, msg, .. } => Some((*id, self.key.open(msg).unwrap().kind)),
                _ => None,
            })
            .collect()
    }
}

/// The keepalives among `actions`, opened.
fn keepalives(i: &Inside, actions: &[Action]) -> Vec<(u32, Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { id, msg, .. } => Some((*id, i.key.open(msg).unwrap())),
            _ => None,
        })
        .filter(|(_, m)| m.kind == Kind::Keepalive)
        .collect()
}

fn opened(actions: &[Action]) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Open { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

#[test]
fn it_resolves_both_names_then_opens_the_spare_pool_each_with_a_keepalive() {
    let mut i = Inside::new(settings(10, 3, 25));
    let mut first = Vec::new();
    i.core.start(i.now, &mut first);
    assert_eq!(
        first,
        vec![Action::Resolve(Name::Service), Action::Resolve(Name::Relay)]
    );
    assert!(
        i.tick().is_empty(),
        "nothing to open before the names resolve"
    );
    let a = i.resolved();
    assert_eq!(opened(&a), vec![1, 2, 3]);
    assert_eq!(
        i.sent(&a),
        vec![
            (1, Kind::Keepalive),
            (2, Kind::Keepalive),
            (3, Kind::Keepalive)
        ]
    );
    assert!(
        i.core.status().contains("active=0 spare=0 pending=3"),
        "{}",
        i.core.status()
    );
}

#[test]
fn a_challenge_is_answered_with_its_cookie_and_an_ack_registers_the_spare() {
    let mut i = Inside::new(settings(10, 1, 25));
    i.resolved();
    let mut challenge = Message::new(Kind::Challenge, Instance([7; 16]), 1, 1);
    challenge.cookie = [9; 8];
    let a = i.input(Input::Tunnel(1, Event::Control(Box::new(challenge))));
    let Action::Send { msg, to, .. } = &a[0] else {
        panic!("{a:?}")
    };
    let response = i.key.open(msg).unwrap();
    assert_eq!(
        (response.kind, response.cookie, *to),
        (Kind::Response, [9; 8], RELAY.parse().unwrap())
    );
    i.relay_says(1, Kind::Ack, 2);
    assert!(
        i.core.status().contains("active=0 spare=1 pending=0"),
        "{}",
        i.core.status()
    );
    assert!(i.core.tunnels()[&1].registered);
}

#[test]
fn an_unanswered_keepalive_is_retried_after_1_2_4_s_then_every_interval() {
    let mut i = Inside::new(settings(10, 1, 10));
    i.resolved();
    let mut at = Vec::new();
    for _ in 0..300 {
        i.now += Duration::from_millis(100);
        let a = i.tick();
        if !i.sent(&a).is_empty() {
            at.push(i.now);
        }
    }
    let start = at[0] - Duration::from_secs(1);
    let gaps: Vec<u64> = at.iter().map(|t| (*t - start).as_secs()).collect();
    assert_eq!(gaps, vec![1, 3, 7, 15, 25]);
}

#[test]
fn a_registered_tunnels_unacknowledged_keepalive_is_retried_within_the_interval_until_acked() {
    // Interval 2 s: retried every 0.5 s (a quarter), so the relay, which forgets a tunnel after 4 s of silence,
    // sees eight tries first. One ack — of the first try or a later one — ends the retries.
    let mut i = Inside::new(settings(10, 1, 2));
    i.resolved();
    i.relay_says(1, Kind::Ack, 1);
    let mut at = Vec::new();
    for _ in 0..50 {
        i.now += Duration::from_millis(100);
        let a = i.tick();
        for (_, msg) in keepalives(&i, &a) {
            at.push((i.now, msg.counter));
        }
    }
    let start = at[0].0;
    let gaps: Vec<u128> = at.iter().map(|(t, _)| (*t - start).as_millis()).collect();
    assert_eq!(gaps, vec![0, 500, 1000, 1500, 2000, 2500, 3000]);
    // A (late) ack of the second try stops them: the next keepalive is an interval after the last one sent.
    i.relay_says(1, Kind::Ack, at[1].1);
    let mut next = None;
    for _ in 0..40 {
        i.now += Duration::from_millis(100);
        let a = i.tick();
        if !keepalives(&i, &a).is_empty() {
            next = Some(i.now);
            break;
        }
    }
    assert_eq!(next.map(|t| (t - at[6].0).as_millis()), Some(2000));
    // With the default 25 s: after 1, 2, 4 s, then every 6.25 s.
    let tries: Vec<Duration> = (0..6)
        .map(|n| rut::inside::retry_after(n, Duration::from_secs(25)))
        .collect();
    assert_eq!(
        tries,
        [1000, 2000, 4000, 6250, 6250, 6250].map(Duration::from_millis)
    );
}

#[test]
fn the_client_an_ack_names_is_said_in_keepalives_and_responses_and_only_a_fresher_ack_changes_it() {
    let mut i = Inside::new(settings(10, 2, 25));
    i.resolved();
    i.input(Input::Opened {
        id: 1,
        local: "127.0.0.1:48606".parse().unwrap(),
    });
    let a = i.input(Input::Tunnel(1, Event::Activated));
    let (_, ka) = keepalives(&i, &a)[0];
    assert_eq!(ka.client, None, "not known before the relay says it");
    let client: SocketAddr = "198.51.100.7:51820".parse().unwrap();
    let mut ack = Message::new(Kind::Ack, Instance([7; 16]), 1, ka.counter);
    ack.active = true;
    ack.client = Some(client);
    ack.answered = true;
    i.input(Input::Tunnel(1, Event::Control(Box::new(ack))));
    // A replayed older ack that says another client (or none) changes nothing.
    let mut old = ack;
    old.counter = ka.counter - 1;
    old.client = Some("203.0.113.66:1".parse().unwrap());
    i.input(Input::Tunnel(1, Event::Control(Box::new(old))));
    let mut challenge = Message::new(Kind::Challenge, Instance([7; 16]), 1, 1);
    challenge.cookie = [3; 8];
    let a = i.input(Input::Tunnel(1, Event::Control(Box::new(challenge))));
    let Action::Send { msg, .. } = &a[0] else {
        panic!("{a:?}")
    };
    let response = i.key.open(msg).unwrap();
    assert_eq!(
        (response.active, response.client, response.answered),
        (true, Some(client), true)
    );
    assert_eq!(response.local, Some("127.0.0.1:48606".parse().unwrap()));
    // Who is who: the table line shows the client beside the address the service sees.
    let lines = i.core.table_lines(i.now);
    assert!(
        lines[0]
            .contains("tunnel 1: active client 198.51.100.7:51820, service sees 127.0.0.1:48606"),
        "{lines:?}"
    );
}

#[test]
fn the_first_datagram_of_a_client_opens_the_next_spare() {
    let mut i = Inside::new(settings(10, 2, 25));
    i.resolved();
    let a = i.input(Input::Tunnel(1, Event::Activated));
    assert_eq!(
        i.sent(&a),
        vec![(1, Kind::Keepalive)],
        "at once: its ack says the client"
    );
    assert_eq!(opened(&i.tick()), vec![3]);
}

#[test]
fn waiting_clients_at_the_relay_make_it_open_that_many_spares_at_once_within_n() {
    let mut i = Inside::new(settings(6, 1, 25));
    i.resolved();
    let mut ack = Message::new(Kind::Ack, Instance([7; 16]), 1, 1);
    ack.waiting = 9;
    let a = i.input(Input::Tunnel(1, Event::Control(Box::new(ack))));
    assert_eq!(opened(&a), vec![2, 3, 4, 5, 6], "-n 6 in all");
}

#[test]
fn idle_and_failed_tunnels_are_closed_with_two_closes_and_a_stop() {
    let mut i = Inside::new(settings(10, 2, 25));
    i.resolved();
    i.input(Input::Tunnel(1, Event::Activated));
    let a = i.input(Input::Tunnel(1, Event::Idle));
    assert_eq!(i.sent(&a), vec![(1, Kind::Close), (1, Kind::Close)]);
    assert!(a.contains(&Action::Stop { id: 1 }));
    let e = std::io::Error::other("boom");
    let a = i.input(Input::Tunnel(
        2,
        Event::Failed(rut::inside::Failure::Receive(e)),
    ));
    assert!(a.contains(&Action::Stop { id: 2 }));
    // A drop from the relay closes without telling it.
    let a = i.relay_says(3, Kind::Drop, 1);
    assert_eq!(i.sent(&a), vec![]);
}

#[test]
fn a_registered_tunnel_challenged_again_re_registers_every_tunnel_once_a_second_at_most() {
    let mut i = Inside::new(settings(10, 3, 25));
    i.resolved();
    for id in 1..=3 {
        i.relay_says(id, Kind::Ack, 1);
    }
    assert!(i.tick().is_empty());
    i.relay_says(1, Kind::Challenge, 5);
    let a = i.tick();
    assert_eq!(i.sent(&a).len(), 3, "every tunnel sends a keepalive now");
    for id in 1..=3 {
        i.relay_says(id, Kind::Ack, 6);
    }
    i.relay_says(2, Kind::Challenge, 7);
    assert!(i.tick().is_empty(), "not again within a second");
}

#[test]
fn a_relay_that_moves_gets_every_tunnel_at_its_new_address() {
    let mut i = Inside::new(settings(10, 2, 25));
    i.resolved();
    let new: SocketAddr = "203.0.113.2:1234".parse().unwrap();
    let a = i.input(Input::Resolved {
        name: Name::Relay,
        addr: new,
    });
    assert!(a.contains(&Action::SetRelay { id: 1, relay: new }));
    let sends = i.tick();
    assert!(sends
        .iter()
        .all(|s| matches!(s, Action::Send { to, .. } if *to == new)));
    // An IPv6 relay cannot be reached from IPv4-only sockets: those tunnels close and new ones open.
    let v6: SocketAddr = "[2001:db8::1]:1234".parse().unwrap();
    let a = i.input(Input::Resolved {
        name: Name::Relay,
        addr: v6,
    });
    assert!(a.contains(&Action::Stop { id: 1 }));
    assert_eq!(opened(&i.tick()).len(), 2);
}

#[test]
fn a_silent_relay_is_warned_about_and_its_name_looked_up_again() {
    let mut i = Inside::new(settings(10, 1, 5));
    i.resolved();
    i.now += Duration::from_secs(12);
    let a = i.tick();
    assert!(a.contains(&Action::Resolve(Name::Relay)));
    i.now += Duration::from_secs(1);
    assert!(
        !i.tick().contains(&Action::Resolve(Name::Relay)),
        "one lookup at a time"
    );
}

#[test]
fn an_authfail_notice_is_believed_only_while_the_relay_is_silent() {
    // (Logged, not returned: this checks it is harmless either way.)
    let mut i = Inside::new(settings(10, 1, 25));
    i.resolved();
    assert!(i.input(Input::Tunnel(1, Event::AuthFail)).is_empty());
}

#[test]
fn a_failed_open_is_forgotten_and_retried_at_the_next_tick() {
    let mut i = Inside::new(settings(10, 1, 25));
    i.resolved();
    let a = i.input(Input::OpenFailed(1, std::io::Error::other("EMFILE")));
    assert!(a.is_empty());
    assert!(i.core.tunnels().is_empty());
    assert_eq!(opened(&i.tick()), vec![2]);
}

#[test]
fn shutdown_closes_every_tunnel() {
    let mut i = Inside::new(settings(10, 3, 25));
    i.resolved();
    i.core.shutdown("SIGTERM", &mut i.out);
    let a = std::mem::take(&mut i.out);
    assert_eq!(i.sent(&a).len(), 6);
    assert_eq!(
        a.iter()
            .filter(|x| matches!(x, Action::Stop { .. }))
            .count(),
        3
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Randomized: the coordinator against the real relay core.

const INSIDE_EVENTS: u64 = 250_000;
const WORLD_EVENTS: u64 = 5_000;

struct World {
    rng: Rng,
    inside: Inside,
    relay: SimRelay,
    max_tunnels: usize,
    keepalive: Duration,
    /// Tunnel id → its public address (its NAT mapping).
    nat: BTreeMap<u32, SocketAddr>,
    next_port: u16,
    stopped: HashSet<u32>,
    last_counter: u64,
    /// When each open tunnel last sent a keepalive or response (or was opened): its NAT mapping is fresh then.
    last_keepalive: HashMap<u32, Instant>,
    /// Messages from the relay on their way to a tunnel: (tunnel, event).
    to_inside: Vec<(u32, Event)>,
    events: u64,
    opens_failing: bool,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng::new(seed);
        let max_tunnels = 1 + rng.below(12);
        let spares = 1 + rng.below(5);
        let keepalive = 1 + rng.below(30) as u64;
        let mut inside = Inside::new(settings(max_tunnels, spares, keepalive));
        let relay = SimRelay::new(max_tunnels, keepalive, 3);
        inside.now = relay.now;
        let mut w = World {
            rng,
            inside,
            relay,
            max_tunnels,
            keepalive: Duration::from_secs(keepalive),
            nat: BTreeMap::new(),
            next_port: 10_000,
            stopped: HashSet::new(),
            last_counter: 0,
            last_keepalive: HashMap::new(),
            to_inside: Vec::new(),
            events: 0,
            opens_failing: false,
        };
        let a = w.inside.resolved();
        w.perform(a).unwrap();
        w
    }

    fn public_addr(&mut self) -> SocketAddr {
        self.next_port = self.next_port.wrapping_add(1).max(10_000);
        SocketAddr::from(([192, 0, 2, 9], self.next_port))
    }

    /// Carry out the coordinator's actions, checking each.
    fn perform(&mut self, actions: Vec<Action>) -> Result<(), String> {
        let relay: SocketAddr = RELAY.parse().unwrap();
        let mut queue = actions;
        while !queue.is_empty() {
            for a in std::mem::take(&mut queue) {
                match a {
                    Action::Open { id, .. } => {
                        if self.nat.contains_key(&id) || self.stopped.contains(&id) {
                            return Err(format!("tunnel {id} opened twice"));
                        }
                        if self.opens_failing {
                            let e = std::io::Error::other("EMFILE");
                            queue.extend(self.inside.input(Input::OpenFailed(id, e)));
                            self.stopped.insert(id);
                            continue;
                        }
                        let p = self.public_addr();
                        self.nat.insert(id, p);
                        self.last_keepalive.insert(id, self.inside.now);
                    }
                    Action::Send { id, to, msg } => {
                        if to != relay {
                            return Err(format!("tunnel {id} sent to {to}, not the relay"));
                        }
                        let m = self
                            .inside
                            .key
                            .open(&msg)
                            .map_err(|e| format!("unsealed: {e}"))?;
                        if m.counter <= self.last_counter {
                            return Err(format!(
                                "counter {} after {}",
                                m.counter, self.last_counter
                            ));
                        }
                        self.last_counter = m.counter;
                        let Some(&from) = self.nat.get(&id) else {
                            if self.stopped.contains(&id) {
                                continue; // an open that failed: nothing to send from
                            }
                            return Err(format!("send from tunnel {id}, which was never opened"));
                        };
                        if matches!(m.kind, Kind::Keepalive | Kind::Response) {
                            self.last_keepalive.insert(id, self.inside.now);
                        }
                        if self.rng.chance(30) {
                            continue; // lost on the way
                        }
                        let (_, out) = self.relay.send(from, &msg);
                        self.deliver_to_tunnels(out);
                    }
                    Action::SetRelay { .. } => {}
                    Action::Stop { id } => {
                        if self.nat.remove(&id).is_none() {
                            return Err(format!("tunnel {id} stopped but not open"));
                        }
                        self.last_keepalive.remove(&id);
                        self.stopped.insert(id);
                    }
                    Action::Resolve { .. } => {}
                }
            }
        }
        self.check()
    }

    /// The relay's datagrams reach the tunnel whose public address they were sent to.
    fn deliver_to_tunnels(&mut self, out: Vec<rut::relay::Transmit>) {
        for t in out {
            let Some((&id, _)) = self.nat.iter().find(|(_, a)| **a == t.to) else {
                continue;
            };
            let ev = if t.data.len() == LEN && t.data[5] == Kind::AuthFail as u8 {
                Event::AuthFail
            } else if let Ok(m) = self.inside.key.open(&t.data) {
                Event::Control(Box::new(m))
            } else {
                Event::Activated // data: a client's first datagram (or a later one, the same to the coordinator)
            };
            self.to_inside.push((id, ev));
        }
    }

    fn step(&mut self) -> Result<(), String> {
        self.events += 1;
        match self.rng.below(100) {
            // A message from the relay (or a tunnel thread's event) reaches the coordinator, in any order.
            0..=39 => {
                if self.to_inside.is_empty() {
                    return Ok(());
                }
                let i = self.rng.below(self.to_inside.len());
                let (id, ev) = self.to_inside.swap_remove(i);
                let a = self.inside.input(Input::Tunnel(id, ev));
                self.perform(a)
            }
            // Time passes to the next wake-up (or a little less), and the coordinator's timers run.
            40..=69 => {
                let wake = self.inside.core.next_wake(self.inside.now);
                let d = wake.saturating_duration_since(self.inside.now);
                let d = if self.rng.chance(300) { d / 2 } else { d };
                self.advance(d);
                let a = self.inside.tick();
                self.perform(a)?;
                self.check_keepalives()
            }
            // A client's first datagram through the relay.
            70..=79 => {
                let c = addr(self.rng.below(40));
                let (fwd, out) = self.relay.send(c, b"client data");
                if let Some(dst) = fwd {
                    self.deliver_to_tunnels(vec![rut::relay::Transmit {
                        to: dst,
                        data: b"x".to_vec(),
                    }]);
                }
                self.deliver_to_tunnels(out);
                Ok(())
            }
            // An active tunnel goes idle, or a tunnel thread fails.
            80..=84 => {
                let ids: Vec<u32> = self.nat.keys().copied().collect();
                match self.rng.pick(&ids) {
                    Some(&id) => {
                        let ev = if self.rng.chance(800) {
                            Event::Idle
                        } else {
                            Event::Failed(rut::inside::Failure::Receive(std::io::Error::other("x")))
                        };
                        let a = self.inside.input(Input::Tunnel(id, ev));
                        self.perform(a)
                    }
                    None => Ok(()),
                }
            }
            // A NAT rebinds a tunnel.
            85..=87 => {
                let ids: Vec<u32> = self.nat.keys().copied().collect();
                if let Some(&id) = self.rng.pick(&ids) {
                    let p = self.public_addr();
                    self.nat.insert(id, p);
                }
                Ok(())
            }
            // The relay restarts, or the relay's name resolves (maybe to the same address).
            88..=89 => {
                if self.rng.chance(500) {
                    let now = self.relay.now;
                    self.relay = SimRelay::new(
                        self.max_tunnels,
                        self.keepalive.as_secs(),
                        self.rng.next() as u8,
                    );
                    self.relay.now = now;
                    Ok(())
                } else {
                    let a = self.inside.input(Input::Resolved {
                        name: Name::Relay,
                        addr: RELAY.parse().unwrap(),
                    });
                    self.perform(a)
                }
            }
            // Sockets run out for a while, or come back.
            90..=91 => {
                self.opens_failing = self.rng.chance(300);
                Ok(())
            }
            // Forged or foreign messages reach a tunnel: another run's, another tunnel's.
            92..=95 => {
                let ids: Vec<u32> = self.nat.keys().copied().collect();
                if let Some(&id) = self.rng.pick(&ids) {
                    let other = if self.rng.chance(500) {
                        Instance([8; 16])
                    } else {
                        Instance([7; 16])
                    };
                    let kinds = [Kind::Challenge, Kind::Ack, Kind::Drop, Kind::Keepalive];
                    let kind = kinds[self.rng.below(kinds.len())];
                    let mut m =
                        Message::new(kind, other, id + self.rng.below(2) as u32, self.rng.next());
                    m.waiting = self.rng.below(256) as u8;
                    if kind != Kind::Ack {
                        m.waiting = 0;
                    }
                    let a = self
                        .inside
                        .input(Input::Tunnel(id, Event::Control(Box::new(m))));
                    self.perform(a)
                } else {
                    Ok(())
                }
            }
            // A clock jump forward (suspend, outage).
            _ => {
                let d = Duration::from_millis(self.rng.below(120_000) as u64);
                self.advance(d);
                let a = self.inside.tick();
                self.perform(a)?;
                // Keepalives are late after a jump: start the clocks again.
                for t in self.last_keepalive.values_mut() {
                    *t = self.inside.now;
                }
                Ok(())
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        self.inside.now += d;
        self.relay.advance(d);
    }

    fn check(&self) -> Result<(), String> {
        let n = self.inside.core.tunnels().len();
        if n > self.max_tunnels {
            return Err(format!("{n} tunnels open with -n {}", self.max_tunnels));
        }
        if n != self.nat.len() {
            return Err(format!(
                "the coordinator has {n} tunnels, the sockets {}",
                self.nat.len()
            ));
        }
        self.relay.relay.table().check()
    }

    /// Every tunnel sends a keepalive at least once per interval (plus the coordinator's longest sleep).
    fn check_keepalives(&self) -> Result<(), String> {
        for (id, at) in &self.last_keepalive {
            let late = self.inside.now.saturating_duration_since(*at);
            if late > self.keepalive + MAX_SLEEP {
                return Err(format!(
                    "tunnel {id} sent no keepalive for {late:?} (interval {:?})",
                    self.keepalive
                ));
            }
        }
        Ok(())
    }
}

#[test]
fn random_events_keep_every_coordinator_invariant_against_the_real_relay_core() {
    let seed = seed();
    println!("inside random test: seed {seed} (replay with RUT_SEED={seed})");
    let mut rng = Rng::new(seed);
    let mut done = 0;
    let mut served = 0;
    while done < INSIDE_EVENTS {
        let world_seed = rng.next();
        let mut w = World::new(world_seed);
        while w.events < WORLD_EVENTS {
            if let Err(e) = w.step() {
                panic!(
                    "seed {seed}: world {world_seed} failed after {} events (-n {}): {e}",
                    w.events, w.max_tunnels
                );
            }
        }
        served += w.relay.relay.table().active();
        done += w.events;
    }
    println!("inside random test: {done} events, seed {seed}, every invariant held ({served} tunnels active at the ends)");
    assert!(served > 0, "the simulation must actually carry clients");
}
