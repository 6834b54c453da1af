//! The relay the socket loop drives: one home (without `--homes`), or several behind one port, and which home
//! each datagram is for. Like [`Home`], a state machine: no socket, no clock, no randomness (the caller passes
//! the seeds).
//!
//! With several homes:
//! - A control message names its key (the key id, wire/control.rs): one lookup finds the one home whose key
//!   verifies it. An unknown id is counted here (`badauth`) and goes no further.
//! - A datagram from an address some home knows goes to that home, by one lookup in `owner`, an exact index of
//!   every home's addresses kept from the tables' journals (table/peers.rs) after each event.
//! - A datagram from an address no home knows is a new client if it is a WireGuard handshake initiation whose
//!   mac1 verifies for one home's server key (the cheap checks first: shape, then every home's replay memory,
//!   then one BLAKE2s per home until one verifies), or a source a home remembers as proven. Anything else is
//!   counted here (`notinit`, `badmac1`).
//! - An address belongs to one home at a time. Only a tunnel that proves itself at an address by the challenge
//!   may take it from another home (its NAT mapping moved there); that home's tunnel there is then dropped, as
//!   within one home. No message of one home's agent claims another home's client.

use super::{
    Admission, Home, Settings, Transmit, ADMISSION, ADMISSION_HELP, DROPPED, DROPPED_HELP,
};
pub use crate::cli::HomeSpec;
use crate::metrics::Metrics;
use crate::pace::{Every, Once};
use crate::wire::wireguard::{self, MsgType};
use crate::wire::{self, KeyId};
use log::{info, warn};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// At most one authfail notice this often for control messages that name no home's key, in all.
const UNKNOWN_KEY_NOTICE_EVERY: Duration = Duration::from_secs(1);

/// What no home took, counted by the relay of several homes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unmatched {
    /// Datagrams of unknown sources that are not handshake initiations.
    pub not_initiation: u64,
    /// Initiations whose mac1 verifies for no home.
    pub bad_mac1: u64,
    /// Control messages that name no home's key (or speak another protocol version).
    pub badauth: u64,
    /// Datagrams the socket loop could not send.
    pub senderr: u64,
}

/// What a reload of the homes file changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub added: usize,
    pub removed: usize,
    /// Homes whose key, server key or -n changed.
    pub changed: usize,
}

/// The state of a relay of several homes beside the homes themselves.
struct Several {
    /// The line each home came from, in the order of `homes`.
    specs: Vec<HomeSpec>,
    settings: Settings,
    by_key: HashMap<KeyId, usize>,
    /// Which home knows each address any home knows: exact, from the tables' journals.
    owner: HashMap<SocketAddr, usize>,
    unmatched: Unmatched,
    unknown_key_notice: Every,
    said_unknown_key: Once,
    said_version: Once,
}

pub struct Relay {
    homes: Vec<Home>,
    several: Option<Box<Several>>,
}

impl Relay {
    /// One home, as without `--homes`. `cookie_secret` must be unpredictable (the OS generator); `now` starts
    /// the cookie epochs.
    pub fn new(key: &[u8], settings: Settings, cookie_secret: [u8; 32], now: Instant) -> Relay {
        Relay {
            homes: vec![Home::new(None, key, settings, cookie_secret, now)],
            several: None,
        }
    }

    /// One home with `--wireguard`: only a WireGuard handshake initiation that passes the server's own checks
    /// (mac1, and mac2 under load) gets a tunnel.
    pub fn with_wireguard(mut self, admission: Admission) -> Relay {
        if let Some(h) = self.homes.pop() {
            self.homes.push(h.with_wireguard(admission));
        }
        self
    }

    /// Several homes behind one port (`--homes`): `settings` are the relay's (-n is each home's default),
    /// `seed` gives the secret seeds (two per home: cookies and WireGuard admission).
    pub fn with_homes(
        specs: Vec<HomeSpec>,
        settings: Settings,
        seed: &mut dyn FnMut() -> [u8; 32],
        now: Instant,
    ) -> Relay {
        let homes = specs
            .iter()
            .map(|s| home_of(s, &settings, seed, now))
            .collect();
        let mut relay = Relay {
            homes,
            several: Some(Box::new(Several {
                specs,
                settings,
                by_key: HashMap::new(),
                owner: HashMap::new(),
                unmatched: Unmatched::default(),
                unknown_key_notice: Every::new(UNKNOWN_KEY_NOTICE_EVERY),
                said_unknown_key: Once::default(),
                said_version: Once::default(),
            })),
        };
        relay.reindex();
        relay
    }

    /// One datagram from `src`. `Some(dst)`: send `data` itself to `dst`. Anything else to send is in `out`.
    #[inline]
    pub fn on_datagram(
        &mut self,
        now: Instant,
        src: SocketAddr,
        data: &[u8],
        out: &mut Vec<Transmit>,
    ) -> Option<SocketAddr> {
        let Some(m) = self.several.as_deref_mut() else {
            return self.homes[0].on_datagram(now, src, data, out);
        };
        if wire::looks_like_control(data) {
            on_control(&mut self.homes, m, now, src, data, out);
            return None;
        }
        if let Some(&h) = m.owner.get(&src) {
            if !yields(&mut self.homes, h, now, src, data, out) {
                let dst = self.homes[h].on_data(now, src, data, out);
                sync(&mut self.homes, m, now, h, out);
                return dst;
            }
            // Its binding in h is gone: the initiation is a new client's, for the home it verifies for.
            sync(&mut self.homes, m, now, h, out);
        }
        let h = pick_home(&mut self.homes, m, now, src, data)?;
        let dst = match wireguard::kind(data) {
            Some(MsgType::Initiation) => self.homes[h].admit_initiation(now, src, data, out),
            _ => self.homes[h].admit_remembered(now, src, data),
        };
        sync(&mut self.homes, m, now, h, out);
        dst
    }

    /// The socket loop could not send a datagram.
    pub fn on_send_error(&mut self) {
        match self.several.as_deref_mut() {
            Some(m) => m.unmatched.senderr += 1,
            None => self.homes[0].on_send_error(),
        }
    }

    /// Expire what timed out, in every home. Call a few times a second.
    pub fn on_tick(&mut self, now: Instant, out: &mut Vec<Transmit>) {
        for h in 0..self.homes.len() {
            self.homes[h].on_tick(now, out);
            if let Some(m) = self.several.as_deref_mut() {
                sync(&mut self.homes, m, now, h, out);
            }
        }
    }

    /// `--homes`, on SIGHUP: serve the homes of `specs` from now on. A home whose name and key are unchanged
    /// keeps its tunnels and clients (a new server key or -n applies in place); a removed home, or one whose
    /// key changed, loses its tunnels and its agent is told. None without `--homes`.
    pub fn reload(
        &mut self,
        now: Instant,
        specs: Vec<HomeSpec>,
        seed: &mut dyn FnMut() -> [u8; 32],
        out: &mut Vec<Transmit>,
    ) -> Option<Reloaded> {
        let m = self.several.as_deref_mut()?;
        let mut done = Reloaded::default();
        let mut old: Vec<Option<(HomeSpec, Home)>> = std::mem::take(&mut m.specs)
            .into_iter()
            .zip(std::mem::take(&mut self.homes))
            .map(Some)
            .collect();
        for spec in &specs {
            let kept = old
                .iter_mut()
                .find(|o| o.as_ref().is_some_and(|(s, _)| s.name == spec.name))
                .and_then(Option::take);
            let home = match kept {
                Some((was, home)) if was.key == spec.key => {
                    let mut home = home;
                    if was.server != spec.server {
                        home.wireguard = Some(Admission::new(&spec.server, seed(), now));
                    }
                    if was.max_tunnels != spec.max_tunnels {
                        home.set_max_tunnels(spec.max_tunnels);
                    }
                    if was != *spec {
                        done.changed += 1;
                        info!("home {}: changed", spec.name);
                    }
                    home
                }
                Some((_, mut home)) => {
                    home.drop_all(now, "its home's key changed", out);
                    done.changed += 1;
                    info!("home {}: key changed, its tunnels dropped", spec.name);
                    home_of(spec, &m.settings, seed, now)
                }
                None => {
                    done.added += 1;
                    info!("home {}: added", spec.name);
                    home_of(spec, &m.settings, seed, now)
                }
            };
            self.homes.push(home);
        }
        for (spec, mut home) in old.into_iter().flatten() {
            home.drop_all(now, "its home is no longer in the homes file", out);
            done.removed += 1;
            info!("home {}: removed, its tunnels dropped", spec.name);
        }
        m.specs = specs;
        self.reindex();
        Some(done)
    }

    /// Rebuild the indexes of several homes from the homes themselves.
    fn reindex(&mut self) {
        let Some(m) = self.several.as_deref_mut() else {
            return;
        };
        m.by_key.clear();
        m.owner.clear();
        for (h, home) in self.homes.iter_mut().enumerate() {
            m.by_key.entry(home.key_id()).or_insert(h);
            home.table.take_changed();
            for a in home.table.addresses() {
                m.owner.entry(*a).or_insert(h);
            }
        }
    }

    /// Checks the relay's own promises from scratch: each home's table, and with several homes that every
    /// address is known by one home at most and `owner` says which, exactly. Linear in the tables: for
    /// randomized tests, after every event.
    pub fn check(&self) -> Result<(), String> {
        for h in &self.homes {
            h.table.check().map_err(|e| format!("{}{e}", h.tag))?;
        }
        let Some(m) = self.several.as_deref() else {
            return Ok(());
        };
        let mut known = 0;
        for (i, h) in self.homes.iter().enumerate() {
            for a in h.table.addresses() {
                known += 1;
                if m.owner.get(a) != Some(&i) {
                    return Err(format!(
                        "{}address {a} is indexed as home {:?}'s",
                        h.tag,
                        m.owner.get(a).map(|&o| &m.specs[o].name)
                    ));
                }
            }
        }
        if known != m.owner.len() {
            return Err(format!(
                "{} addresses indexed, {known} known by the homes",
                m.owner.len()
            ));
        }
        Ok(())
    }

    /// Every home, in the order of the homes file (one without `--homes`).
    pub fn homes(&self) -> &[Home] {
        &self.homes
    }

    /// The home of that name in the homes file.
    pub fn home(&self, name: &str) -> Option<&Home> {
        let m = self.several.as_deref()?;
        let h = m.specs.iter().position(|s| s.name == name)?;
        self.homes.get(h)
    }

    /// Which home knows `addr`, with several homes.
    pub fn owner(&self, addr: &SocketAddr) -> Option<&str> {
        let m = self.several.as_deref()?;
        Some(&m.specs.get(*m.owner.get(addr)?)?.name)
    }

    /// What no home took (zero without `--homes`, where the home counts it all).
    pub fn unmatched(&self) -> Unmatched {
        self.several
            .as_deref()
            .map(|m| m.unmatched.clone())
            .unwrap_or_default()
    }

    /// The one home's table (without `--homes`; the first home's with it). So are the next five.
    pub fn table(&self) -> &crate::relay::table::Table {
        &self.homes[0].table
    }

    pub fn current(&self) -> Option<crate::wire::Instance> {
        self.homes[0].current()
    }

    pub fn retired(&self) -> usize {
        self.homes[0].retired()
    }

    pub fn drops(&self) -> &crate::stats::Drops {
        self.homes[0].drops()
    }

    pub fn admissions(&self) -> &super::Admissions {
        self.homes[0].admissions()
    }

    pub fn status(&self) -> String {
        self.homes[0].status()
    }

    /// The status lines: one per home, and with several homes one for what none of them took.
    pub fn status_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.homes.iter().map(Home::status).collect();
        if let Some(m) = self.several.as_deref() {
            let u = &m.unmatched;
            lines.push(format!(
                "status: homes={} notinit={} badmac1={} badauth={} senderr={}",
                self.homes.len(),
                u.not_initiation,
                u.bad_mac1,
                u.badauth,
                u.senderr
            ));
        }
        lines
    }

    /// The samples of `--metrics`: every home's (labelled `home` with several), and with several what no home took
    /// (`home=""`).
    pub fn metrics(&self, m: &mut Metrics) {
        let Some(s) = self.several.as_deref() else {
            return self.homes[0].metrics(m, None);
        };
        for (home, spec) in self.homes.iter().zip(&s.specs) {
            home.metrics(m, Some(&spec.name));
        }
        let u = &s.unmatched;
        for (reason, n) in [("badauth", u.badauth), ("senderr", u.senderr)] {
            m.counter(
                DROPPED,
                DROPPED_HELP,
                &[("home", ""), ("reason", reason)],
                n,
            );
        }
        for (verdict, n) in [("notinit", u.not_initiation), ("badmac1", u.bad_mac1)] {
            m.counter(
                ADMISSION,
                ADMISSION_HELP,
                &[("home", ""), ("verdict", verdict)],
                n,
            );
        }
    }

    /// The tunnel tables of every home, a line per tunnel (for SIGUSR1).
    pub fn table_lines(&self, now: Instant) -> Vec<String> {
        self.homes.iter().flat_map(|h| h.table_lines(now)).collect()
    }
}

/// One home's machine for a line of the homes file: always with WireGuard admission, and with the table's
/// journal kept.
fn home_of(
    spec: &HomeSpec,
    settings: &Settings,
    seed: &mut dyn FnMut() -> [u8; 32],
    now: Instant,
) -> Home {
    let settings = Settings {
        max_tunnels: spec.max_tunnels,
        ..settings.clone()
    };
    let mut home = Home::new(Some(&spec.name), &spec.key, settings, seed(), now)
        .with_wireguard(Admission::new(&spec.server, seed(), now));
    home.table.keep_changes();
    home
}

/// A control message: to the home whose key it names.
fn on_control(
    homes: &mut [Home],
    m: &mut Several,
    now: Instant,
    src: SocketAddr,
    data: &[u8],
    out: &mut Vec<Transmit>,
) {
    let id = KeyId::of(data);
    if let Some(&h) = id.and_then(|id| m.by_key.get(&id)) {
        let owner = &m.owner;
        let elsewhere = |a: &SocketAddr| owner.get(a).is_some_and(|&g| g != h);
        homes[h].on_control(now, src, data, out, &elsewhere);
        return sync(homes, m, now, h, out);
    }
    // An authfail notice (another relay's?) gets no answer: two relays must not keep each other busy.
    if data.get(5) == Some(&(wire::Kind::AuthFail as u8)) {
        return;
    }
    m.unmatched.badauth += 1;
    if id.is_none() {
        if m.said_version.first() {
            warn!(
                "control message of another protocol version from {}: this relay speaks version {}; run the same \
                 release on both sides",
                crate::addr::shown(src),
                wire::VERSION
            );
        }
        return;
    }
    if m.said_unknown_key.first() {
        warn!(
            "control message from {} names a key no home has: its inside agent's key is not in the homes file \
             (counted as badauth)",
            crate::addr::shown(src)
        );
    }
    // As within one home: the sender's log then says why, with as many bytes as it sent.
    if m.unknown_key_notice.due(now) {
        out.push(Transmit {
            to: src,
            data: wire::Key::authfail_notice().to_vec(),
        });
    }
}

/// An initiation from an address home `h` binds to a client that never got an answer (or holds for one that waits
/// for a spare), whose mac1 verifies not for `h` but for another home: the binding in `h` came from an initiation for
/// `h` from that address, which anyone who knows `h`'s public key can make with a spoofed source. So `h` lets the
/// address go (its tunnel there is dropped, as one reclaimed), and the initiation is admitted as new. The same for
/// an address `h` holds as its tunnel's possible new address (a keepalive of `h`'s agent seen there, unproven: a
/// replay from a spoofed source makes one); should `h`'s tunnel be there after all, its answer to the challenge
/// takes the address back. A client `h`'s service answered keeps its binding. One BLAKE2s for `h`, and only for
/// initiations from such addresses.
fn yields(
    homes: &mut [Home],
    h: usize,
    now: Instant,
    src: SocketAddr,
    data: &[u8],
    out: &mut Vec<Transmit>,
) -> bool {
    if wireguard::kind(data) != Some(MsgType::Initiation)
        || !homes[h].may_yield(&src)
        || homes[h].mac1_verifies(data)
        || !homes.iter().any(|g| g.mac1_verifies(data))
    {
        return false;
    }
    homes[h].release(now, src, out);
    true
}

/// The home a new client is for: the one whose server key verifies its initiation, or the one that remembers
/// it. None (counted) if no home takes it.
fn pick_home(
    homes: &mut [Home],
    m: &mut Several,
    now: Instant,
    src: SocketAddr,
    data: &[u8],
) -> Option<usize> {
    match wireguard::kind(data) {
        Some(MsgType::Initiation) => {
            // Cheap before dear: a hash lookup per home before a BLAKE2s per home.
            if let Some(h) = homes.iter().position(|h| h.replayed(data)) {
                homes[h].admissions.replayed += 1;
                return None;
            }
            let h = homes.iter().position(|h| h.mac1_verifies(data));
            if h.is_none() {
                m.unmatched.bad_mac1 += 1;
            }
            h
        }
        // A proven client whose tunnel is gone sends transport data, not a new initiation (remembered.rs).
        Some(MsgType::Transport) => {
            let h = homes.iter_mut().position(|h| h.remembers(&src, now));
            if h.is_none() {
                m.unmatched.not_initiation += 1;
            }
            h
        }
        _ => {
            m.unmatched.not_initiation += 1;
            None
        }
    }
}

/// After an event in home `h`: bring `owner` up to date with what its table now knows, and free an address it
/// took from another home (only a tunnel's proof takes one, see the module doc) there.
fn sync(homes: &mut [Home], m: &mut Several, now: Instant, h: usize, out: &mut Vec<Transmit>) {
    for a in homes[h].table.take_changed() {
        if !homes[h].table.knows(&a) {
            if m.owner.get(&a) == Some(&h) {
                m.owner.remove(&a);
            }
            continue;
        }
        // A proven client of another home that now has a tunnel here is no longer that home's to remember.
        for (g, home) in homes.iter_mut().enumerate() {
            if g != h {
                home.table.remembered().forget(&a);
            }
        }
        if let Some(g) = m.owner.insert(a, h).filter(|&g| g != h) {
            homes[g].release(now, a, out);
            // What the release dropped in `g` are removals only: bring them in too.
            for b in homes[g].table.take_changed() {
                if !homes[g].table.knows(&b) && m.owner.get(&b) == Some(&g) {
                    m.owner.remove(&b);
                }
            }
        }
    }
}
