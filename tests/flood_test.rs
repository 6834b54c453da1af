//! Strangers who take every tunnel slot (the seed README's open problem), with the real binaries on loopback:
//! relay and inside agent at `-n 100`, 2000 flooding source addresses, and a service that answers only valid
//! requests (as WireGuard answers only what it can verify). A newcomer must still be served, an established
//! client must keep its tunnel, and neither agent may grow without bound.

mod common;

use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const N: &str = "100";
const SOURCES: usize = 2000;
/// Valid requests start with this; the service ignores anything else.
const VALID: &[u8] = b"VALID";
/// The flood runs this long before the newcomer arrives: every flooding source has been seen and turned away.
const SETTLE: Duration = Duration::from_secs(3);
/// No flood outlives this, whatever happens to the test.
const FLOOD_LIMIT: Duration = Duration::from_secs(30);

fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < 8192 {
            r.rlim_cur = r.rlim_max.min(8192);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// 2000 sockets on 127.0.0.2–41 (50 ports each), each sending one garbage datagram to the relay every `period`.
struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Flood {
    fn start(relay: SocketAddr, period: Duration) -> Flood {
        raise_nofile();
        let socks: Vec<UdpSocket> = (0..SOURCES)
            .map(|i| {
                let s = UdpSocket::bind((format!("127.0.0.{}", 2 + i / 50).as_str(), 0)).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (st, se) = (stop.clone(), sent.clone());
        let thread = thread::spawn(move || {
            let start = Instant::now();
            let slices = 20;
            let mut garbage = [0u8; 148];
            let mut buf = [0u8; 2048];
            'flood: loop {
                for chunk in socks.chunks(SOURCES / slices) {
                    if st.load(SeqCst) || start.elapsed() > FLOOD_LIMIT {
                        break 'flood;
                    }
                    for s in chunk {
                        noise(&mut garbage);
                        garbage[0] = b'x'; // never VALID
                        if s.send_to(&garbage, relay).is_ok() {
                            se.fetch_add(1, SeqCst);
                        }
                        while s.recv_from(&mut buf).is_ok() {}
                    }
                    thread::sleep(period / slices as u32);
                }
            }
        });
        Flood {
            stop,
            sent,
            thread: Some(thread),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn proc_status(pid: i32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn descriptors(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Ping with valid requests every `every` until the first answer; how long that took from the first ping.
fn served_after(c: &Client, every: Duration, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < limit {
        n += 1;
        c.send(format!("VALID newcomer {n}").as_bytes());
        let deadline = Instant::now() + every;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match c.recv(left) {
                Some(reply) if reply.starts_with(b"VALID newcomer") => {
                    return Some(start.elapsed())
                }
                Some(_) => {}
                None => break,
            }
        }
    }
    None
}

fn flood_scenario(period: Duration, newcomer_limit: Duration) {
    let echo = Echo::answering_only(VALID);
    let (relay, relay_addr) = relay("127.0.0.1", &["-n", N, "--statusInterval", "1"]);
    let inside = inside(echo.addr, relay_addr, &["-n", N]);
    let established = Client::new(relay_addr);
    established.assert_served(b"VALID established before the flood");
    let rss_before = proc_status(relay.pid(), "VmRSS:");

    let flood = Flood::start(relay_addr, period);
    thread::sleep(SETTLE);

    // A newcomer retrying every 200 ms is served within the limit.
    let newcomer = Client::new(relay_addr);
    let took = served_after(&newcomer, Duration::from_millis(200), 3 * newcomer_limit);
    let took = took.unwrap_or_else(|| panic!("newcomer never served; relay log:\n{}", relay.log()));
    assert!(
        took <= newcomer_limit,
        "newcomer served after {took:?}, limit {newcomer_limit:?}"
    );

    // The established client keeps at least 90 % of its echoes while the flood goes on.
    let mut answered = 0;
    for i in 0..100 {
        let payload = format!("VALID established {i}");
        if established
            .ask(payload.as_bytes(), Duration::from_millis(300))
            .as_deref()
            == Some(payload.as_bytes())
        {
            answered += 1;
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        answered >= 90,
        "established client got {answered} of 100 echoes"
    );

    // Bounded: the inside agent's sockets, the relay's memory.
    let fds = descriptors(inside.pid());
    assert!(fds <= 2 * 100 + 20, "inside agent holds {fds} descriptors");
    let rss_after = proc_status(relay.pid(), "VmRSS:");
    assert!(
        rss_after <= rss_before + 32 * 1024,
        "relay grew from {rss_before} to {rss_after} KiB"
    );
    let sent = flood.sent.load(SeqCst);
    drop(flood);
    let status = relay.wait_for_line("status:", SOON, |l| status_field(l, "reclaimed") > 0);
    println!(
        "flood every {period:?} from {SOURCES} sources ({sent} datagrams): newcomer served after {took:?}, \
         established client {answered}/100, inside {fds} descriptors, relay {rss_before} -> {rss_after} KiB\n{status}"
    );
    assert_eq!(
        relay.count("handing tunnels whose client never got an answer"),
        1,
        "said once"
    );
}

#[test]
fn a_flood_from_2000_sources_each_second_takes_no_tunnel_from_a_newcomer_for_more_than_1_s() {
    flood_scenario(Duration::from_secs(1), Duration::from_secs(1));
}

#[test]
fn a_flood_from_2000_sources_every_200_ms_takes_no_tunnel_from_a_newcomer_for_more_than_2_s() {
    flood_scenario(Duration::from_millis(200), Duration::from_secs(2));
}
