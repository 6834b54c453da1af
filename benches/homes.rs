//! `--homes`: how many handshake initiations per second one core checks, with 1, 16 and 64 homes behind one
//! port. The relay core alone (no sockets): a new client's initiation costs one BLAKE2s mac1 check per home
//! until one verifies, so a flood costs most when it is for no home (every home is checked) or for the home
//! checked last. Medians of 5 runs; the ratios against one home, measured in the same run, are what carries
//! over to another machine.
//!
//! Floods measured:
//! - `no home`: fresh initiations whose mac1 verifies for no home, from 2000 sources (dropped, `badmac1`);
//! - `last home, loaded`: fresh mac1-valid initiations for the last home from 2000 sources, that home under
//!   load (all its tunnels taken), so each is answered with a cookie reply, as a flood for home A is;
//! - `replayed`: copies of one admitted initiation (stopped by the replay memory, before any BLAKE2s);
//! - `garbage`: 148 random bytes that are not an initiation (stopped by their shape).

use rut::relay::{HomeSpec, Relay, Settings};
use rut::wire::wireguard::{self, PublicKey, INITIATION_LEN};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const HOMES: [usize; 3] = [1, 16, 64];
const RUNS: usize = 5;
const PER_RUN: usize = 20_000;
const SOURCES: u32 = 2000;

/// The public key of home `i` (any 32 bytes are a key as far as mac1 is concerned).
fn server(i: usize) -> PublicKey {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    PublicKey(k)
}

fn initiation(server: &PublicKey, n: u32) -> [u8; INITIATION_LEN] {
    let mut m = [0u8; INITIATION_LEN];
    m[0] = 1;
    m[4..8].copy_from_slice(&n.to_le_bytes());
    m[8..12].copy_from_slice(&n.to_be_bytes());
    wireguard::client_macs(server, &mut m, None);
    m
}

fn source(n: u32) -> SocketAddr {
    let n = n % SOURCES;
    SocketAddr::from(([198, 18, (n >> 8) as u8, n as u8], 40_000))
}

/// A relay of `homes` homes with `-n 1` each.
fn relay(homes: usize, now: Instant) -> Relay {
    let specs = (0..homes)
        .map(|i| HomeSpec {
            name: format!("h{i}"),
            key: format!("key of home {i}").into_bytes(),
            server: server(i),
            max_tunnels: 1,
        })
        .collect();
    let settings = Settings {
        max_tunnels: 1,
        keepalive: Duration::from_secs(25),
    };
    let mut n = 0u8;
    Relay::with_homes(
        specs,
        settings,
        &mut || {
            n = n.wrapping_add(1);
            [n; 32]
        },
        now,
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Flood {
    NoHome,
    LastHome,
    Replayed,
    Garbage,
}

impl Flood {
    fn name(self) -> &'static str {
        match self {
            Flood::NoHome => "no home",
            Flood::LastHome => "last home, loaded",
            Flood::Replayed => "replayed",
            Flood::Garbage => "garbage",
        }
    }
}

/// Initiations per second, over one run.
fn run(homes: usize, flood: Flood, run: u32) -> f64 {
    let now = Instant::now();
    let mut r = relay(homes, now);
    let last = server(homes - 1);
    let stranger = server(1000);
    // Made before the clock starts: building an initiation costs a mac1 too.
    let msgs: Vec<[u8; INITIATION_LEN]> = (0..PER_RUN as u32)
        .map(|i| {
            let n = run * PER_RUN as u32 + i;
            match flood {
                Flood::NoHome => initiation(&stranger, n),
                Flood::LastHome => initiation(&last, n),
                Flood::Replayed => initiation(&last, 0),
                Flood::Garbage => {
                    let mut m = initiation(&stranger, n);
                    m[1] = 1;
                    m
                }
            }
        })
        .collect();
    let mut out = Vec::new();
    // The last home's one tunnel is taken (by a client waiting for a spare): that home is under load.
    // (From an address outside the flood's.)
    let waiting = SocketAddr::from(([198, 19, 0, 1], 40_000));
    r.on_datagram(now, waiting, &initiation(&last, u32::MAX), &mut out);
    let start = Instant::now();
    for (i, m) in msgs.iter().enumerate() {
        out.clear();
        std::hint::black_box(r.on_datagram(now, source(i as u32), m, &mut out));
    }
    let secs = start.elapsed().as_secs_f64();
    let cookies: u64 = r.homes().iter().map(|h| h.admissions().cookies).sum();
    if flood == Flood::LastHome {
        assert!(
            cookies as usize == PER_RUN,
            "the last home was not under load: {cookies} cookies, {:?}, {:?}",
            r.homes()[homes - 1].admissions(),
            r.unmatched()
        );
    }
    PER_RUN as f64 / secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    println!(
        "initiations checked per second by one core (relay core, no sockets; median of {RUNS} runs of {PER_RUN})"
    );
    println!(
        "{:20} {}",
        "flood",
        HOMES
            .map(|h| format!("{h:>3} homes (ratio)        "))
            .join("")
    );
    for flood in [
        Flood::NoHome,
        Flood::LastHome,
        Flood::Replayed,
        Flood::Garbage,
    ] {
        let rates: Vec<f64> = HOMES
            .iter()
            .map(|&h| median((0..RUNS as u32).map(|k| run(h, flood, k)).collect()))
            .collect();
        let cells: Vec<String> = rates
            .iter()
            .map(|r| format!("{:>10.0}/s ({:>5.3})      ", r, r / rates[0]))
            .collect();
        println!("{:20} {}", flood.name(), cells.join(""));
    }
}
