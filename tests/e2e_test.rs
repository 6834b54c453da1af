//! The tool end to end on loopback: the real binary as relay and inside agent, a UDP echo service behind the
//! inside agent, clients in front of the relay. Keepalives every second, so each test takes a few seconds.

mod common;

use common::*;
use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// The options both sides share in most tests. Keepalives are 10 s apart: the relay forgets a tunnel it has not
/// heard from for two intervals, and a test that is not about keepalives must not fail because a loaded machine
/// stalled a process for a second or two. Nothing on a correct path waits for the interval: a tunnel's first
/// keepalive goes out at once.
const STEADY: &[&str] = &["-k", KEY, "--keepaliveInterval", "10"];
/// For the tests about keepalives, their loss, and what the relay forgets: one a second.
const FAST: &[&str] = &["-k", KEY, "--keepaliveInterval", "1"];
/// Through the MiniNat, whose thread shares the test process: every 2 s, so that only a 4 s stall of the inside
/// agent or of that thread, not a 2 s one, makes the relay forget a tunnel the test says it keeps.
const BRISK_SECS: u64 = 2;
const BRISK: &[&str] = &["-k", KEY, "--keepaliveInterval", "2"];

fn with<'a>(base: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    [base, more].concat()
}

/// Echo service, relay on 127.0.0.1 and an inside agent with at least one spare registered.
fn tunnel(relay_opts: &[&str], inside_opts: &[&str]) -> (Echo, Agent, SocketAddr, Agent) {
    tunnel_with(STEADY, relay_opts, inside_opts)
}

/// Like `tunnel`, with `base` options (`STEADY`, `FAST`, or a keepalive interval of its own) on both sides.
fn tunnel_with(
    base: &[&str],
    relay_opts: &[&str],
    inside_opts: &[&str],
) -> (Echo, Agent, SocketAddr, Agent) {
    let echo = Echo::v4();
    let (relay, relay_addr) = relay("127.0.0.1", &with(base, relay_opts));
    let inside = inside(echo.addr, relay_addr, &with(base, inside_opts));
    inside.wait_for_log("registered at the relay", SOON);
    (echo, relay, relay_addr, inside)
}

/// Like `tunnel`, with a MiniNat (its `faults` on from the start) between the inside agent and the relay.
fn tunnel_via_nat(
    inside_opts: &[&str],
    faults: Faults,
) -> (Echo, Agent, SocketAddr, MiniNat, Agent) {
    let echo = Echo::v4();
    let (relay, relay_addr) = relay("127.0.0.1", BRISK);
    let nat = MiniNat::new(relay_addr);
    nat.set_faults(faults);
    let inside = inside(echo.addr, nat.addr, &with(BRISK, inside_opts));
    inside.wait_for_log("registered at the relay", SOON);
    (echo, relay, relay_addr, nat, inside)
}

/// The start of the relay's line "client ADDR -> tunnel N at ADDR (K active)" for this client.
fn client_line(c: &Client) -> String {
    format!("client {} -> tunnel", c.addr())
}

/// N in such a line.
fn tunnel_of(line: &str) -> u32 {
    let after = line.split(" -> tunnel ").nth(1).expect("a client line");
    after.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn one_client_gets_its_datagrams_back_in_order() {
    let (_echo, _relay, relay_addr, _inside) = tunnel(&[], &[]);
    let c = Client::new(relay_addr);
    c.assert_served(b"hello through the tunnel");
    for i in 0..10 {
        c.send(format!("datagram {i}").as_bytes());
    }
    for i in 0..10 {
        let got = c.recv(SOON).expect("echo");
        assert_eq!(String::from_utf8_lossy(&got), format!("datagram {i}"));
    }
}

#[test]
fn twenty_concurrent_clients_each_get_their_own_tunnel_and_replies() {
    let (echo, relay, relay_addr, _inside) = tunnel(&["-n", "25"], &["-n", "25"]);
    let start = Arc::new(Barrier::new(20));
    let threads: Vec<_> = (0..20)
        .map(|k| {
            let start = start.clone();
            thread::spawn(move || {
                let c = Client::new(relay_addr);
                start.wait();
                c.assert_served(format!("client {k} datagram 0").as_bytes());
                for i in 1..20 {
                    c.send(format!("client {k} datagram {i}").as_bytes());
                }
                for i in 1..20 {
                    let got = c.recv(SOON).expect("echo");
                    assert_eq!(
                        String::from_utf8_lossy(&got),
                        format!("client {k} datagram {i}")
                    );
                }
                c.addr()
            })
        })
        .collect();
    let clients: HashSet<SocketAddr> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(clients.len(), 20);
    assert_eq!(
        echo.peers().len(),
        20,
        "one tunnel, so one peer, per client"
    );
    assert_eq!(relay.count("-> tunnel"), 20);
}

#[test]
fn largest_smallest_and_empty_datagrams_pass_unchanged() {
    let (_echo, _relay, relay_addr, _inside) = tunnel(&[], &[]);
    let c = Client::new(relay_addr);
    let big: Vec<u8> = (0..65507u32).map(|i| (i * 7 % 251) as u8).collect();
    c.assert_served(&big);
    c.assert_served(b"x");
    c.assert_served(b"");
}

#[test]
fn ipv6_relay_reaches_an_ipv4_service() {
    let echo = Echo::v4();
    let (_relay, relay_addr) = relay("::1", STEADY);
    assert!(relay_addr.is_ipv6());
    let inside = inside(echo.addr, relay_addr, STEADY);
    inside.wait_for_log("registered at the relay", SOON);
    Client::new(relay_addr).assert_served(b"v6 to v4");
}

#[test]
fn dual_stack_relay_serves_ipv4_and_ipv6_clients() {
    let echo = Echo::v4();
    let (relay, v4) = relay("", STEADY);
    let v6 = SocketAddr::new("::1".parse().unwrap(), v4.port());
    let inside = inside(echo.addr, v4, STEADY);
    inside.wait_for_log("registered at the relay", SOON);
    let (c4, c6) = (Client::new(v4), Client::new(v6));
    c4.assert_served(b"from IPv4");
    c6.assert_served(b"from IPv6");
    assert_eq!(echo.peers().len(), 2);
    // Logged as plain 127.0.0.1:port, not as ::ffff:127.0.0.1.
    relay.wait_for_log(&client_line(&c4), SOON);
    relay.wait_for_log(&client_line(&c6), SOON);
}

#[test]
fn ipv4_relay_reaches_an_ipv6_service() {
    let echo = Echo::v6();
    let (_relay, relay_addr) = relay("127.0.0.1", STEADY);
    let inside = inside(echo.addr, relay_addr, STEADY);
    inside.wait_for_log("registered at the relay", SOON);
    Client::new(relay_addr).assert_served(b"v4 to v6");
    assert!(echo.peers().iter().all(|p| p.is_ipv6()));
}

#[test]
fn tunnel_limit_refuses_the_extra_client_logs_it_once_and_frees_up_on_idle() {
    // Idle after 6 s (less up to 20 % jitter): long enough that no stall before the extra client's datagrams
    // lets client 0's tunnel close and take one of them.
    let (_echo, relay, relay_addr, inside) =
        tunnel(&["-n", "3"], &["-n", "3", "--connectionTimeout", "6"]);
    let c: Vec<Client> = (0..3).map(|_| Client::new(relay_addr)).collect();
    for (i, c) in c.iter().enumerate() {
        c.assert_served(format!("client {i}").as_bytes());
    }
    let extra = Client::new(relay_addr);
    for i in 0..20 {
        extra.send(format!("refused {i}").as_bytes());
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        extra.recv(Duration::from_millis(500)),
        None,
        "4th client served"
    );
    assert_eq!(relay.count("tunnels in use"), 1, "the limit is logged once");
    inside.wait_for_log("all 3 tunnels are active", SOON);

    // Clients 0 and 1 stay busy; client 2 goes idle and its tunnel closes, which frees a place.
    let closed = format!("closed by the inside agent (client {})", c[2].addr());
    let freed = wait_until(Duration::from_secs(15), || {
        c[0].assert_served(b"busy");
        c[1].assert_served(b"busy");
        thread::sleep(Duration::from_millis(200));
        relay.log().contains(&closed).then_some(())
    });
    assert!(
        freed.is_some(),
        "idle tunnel not closed; relay log:\n{}",
        relay.log()
    );
    Client::new(relay_addr).assert_served(b"a new client after one left");
}

#[test]
fn idle_tunnel_closes_and_the_same_client_comes_back_through_a_new_tunnel() {
    let (echo, relay, relay_addr, inside) = tunnel(&[], &["--connectionTimeout", "1"]);
    let c = Client::new(relay_addr);
    c.assert_served(b"before the idle timeout");
    inside.wait_for_log("closed: idle", SOON);
    relay.wait_for_log(
        &format!("closed by the inside agent (client {})", c.addr()),
        SOON,
    );
    c.assert_served(b"after the idle timeout");
    let tunnels: HashSet<u32> = relay
        .lines(&client_line(&c))
        .iter()
        .map(|l| tunnel_of(l))
        .collect();
    assert_eq!(tunnels.len(), 2, "served twice, by two tunnels");
    assert_eq!(echo.peers().len(), 2);
}

#[test]
fn wrong_key_registers_nothing_and_both_sides_say_so_once() {
    let echo = Echo::v4();
    let (relay, relay_addr) = relay("127.0.0.1", &["-k", "right", "--keepaliveInterval", "1"]);
    let inside = inside(
        echo.addr,
        relay_addr,
        &["-k", "wrong", "--keepaliveInterval", "1"],
    );
    inside.wait_for_log("the relay rejects our control messages", SOON);
    relay.wait_for_log("failed authentication", SOON);
    let c = Client::new(relay_addr);
    assert_eq!(c.ask(b"anyone?", Duration::from_millis(1500)), None);
    assert_eq!(relay.count("failed authentication"), 1);
    assert_eq!(inside.count("rejects our control messages"), 1);
    assert_eq!(relay.count("registered"), 0);
    assert_eq!(inside.count("registered"), 0);
}

#[test]
fn empty_key_works_but_warns_that_anyone_can_hijack() {
    let echo = Echo::v4();
    let (relay, relay_addr) = relay("127.0.0.1", &["--keepaliveInterval", "1"]);
    let inside = inside(
        echo.addr,
        relay_addr,
        &["-k", "", "--keepaliveInterval", "1"],
    );
    inside.wait_for_log("registered at the relay", SOON);
    Client::new(relay_addr).assert_served(b"no key");
    relay.wait_for_log("can hijack tunnels", SOON);
    inside.wait_for_log("can hijack tunnels", SOON);
}

#[test]
fn replayed_control_messages_hijack_nothing() {
    let (_echo, relay, relay_addr, nat, _inside) =
        tunnel_via_nat(&["--connectionTimeout", "1"], Faults::default());
    Client::new(relay_addr).assert_served(b"a tunnel that will close");
    relay.wait_for_log("closed by the inside agent", SOON);
    let recorded = nat.recorded_control();
    let kinds: HashSet<u8> = recorded.iter().map(|(_, d)| d[5]).collect();
    for kind in [KEEPALIVE, RESPONSE, CLOSE] {
        assert!(
            kinds.contains(&kind),
            "recorded no control message of kind {kind}"
        );
    }

    // An attacker who captured all of it replays it from its own address.
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let at = attacker.local_addr().unwrap();
    for (_, d) in &recorded {
        attacker.send_to(d, relay_addr).unwrap();
    }
    let c = Client::new(relay_addr);
    c.assert_served(b"after the replay"); // the relay handled the replay before this (one socket, in order)
    assert_eq!(relay.count(&format!("registered from {at}")), 0);
    assert_eq!(
        relay.count(&format!("to {at}")),
        0,
        "a tunnel moved to the attacker"
    );
    attacker.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 65536];
    while let Ok((n, _)) = attacker.recv_from(&mut buf) {
        assert!(
            is_control(&buf[..n]),
            "the attacker received data: {:?}",
            &buf[..n]
        );
    }

    // The same replay from the NAT's own public ports: stale, so nothing moves and nothing breaks. (c pings
    // rather than asks once: its tunnel may close for idleness meanwhile, and a datagram sent as it closes is
    // lost with it.)
    assert!(nat.replay_upstream() > 0);
    c.ping_until(SOON)
        .expect("c not served after the second replay");
    // Not served by a new tunnel because a replay made the relay drop c's (nothing in this test drops one).
    assert_eq!(relay.count(" dropped: "), 0);
    Client::new(relay_addr).assert_served(b"a new client after the second replay");
    assert_eq!(relay.count(" moved from "), 0);
}

#[test]
fn replayed_response_of_a_closed_tunnel_registers_no_dead_spare() {
    let (_echo, relay, relay_addr, nat, _inside) = tunnel_via_nat(
        &["--spares", "1", "--connectionTimeout", "1"],
        Faults::default(),
    );
    let a = Client::new(relay_addr);
    a.assert_served(b"a tunnel that will close");
    let line = relay.wait_for_log(&client_line(&a), SOON);
    let n = tunnel_of(&line);
    relay.wait_for_log(&format!("tunnel {n} closed by the inside agent"), SOON);
    // Someone who can send from the NAT's public address replays that tunnel's old response (seconds later).
    let replayed = nat.replay_upstream_where(|d| d[5] == RESPONSE && d[24..28] == n.to_be_bytes());
    assert!(replayed > 0);
    // Refused as the response of a removed tunnel, not merely for an expired cookie. (The cookie, issued in the
    // relay's first seconds, is good until 10 s after its start: this comes well before.)
    relay.wait_for_log(
        &format!("replayed response of removed or refused tunnel {n} "),
        SOON,
    );
    // New clients take the oldest spare first: within two clients one would get the replayed tunnel.
    for i in 0..3 {
        Client::new(relay_addr).assert_served(format!("new client {i}").as_bytes());
    }
    assert_eq!(
        relay.count(&format!("spare tunnel {n} registered from")),
        1,
        "registered again"
    );
}

#[test]
fn forged_control_datagrams_change_nothing_and_get_no_bigger_answer() {
    let (_echo, relay, relay_addr, _inside) = tunnel(&["--statusInterval", "1"], &[]);
    let before = relay.wait_for_line("status:", SOON, |l| status_field(l, "spare") == 4);
    let socks: Vec<UdpSocket> = (0..50)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut bad_mac = 0;
    for i in 0..1000 {
        let mut d = [0u8; CONTROL_LEN];
        d[..5].copy_from_slice(&MAGIC);
        noise(&mut d[5..]);
        // Kind 7 is the unauthenticated authfail notice: ignored without a MAC check, so not counted.
        bad_mac += usize::from(d[5] != 7);
        socks[i % 50].send_to(&d, relay_addr).unwrap();
    }
    let c = Client::new(relay_addr);
    c.assert_served(b"legit client during a forgery flood");
    // The inside agent's key works, so these are strangers' forgeries: counted as forged, the key not blamed.
    // The client's tunnel was a spare: until its replacement registers, a status line says spare=3, so wait for
    // the pool to be whole (a forgery that registered a spare would make it larger).
    let after = relay.wait_for_line("status:", SOON, |l| {
        status_field(l, "forged") >= bad_mac as u64
            && status_field(l, "active") == 1
            && status_field(l, "spare") >= status_field(&before, "spare")
    });
    assert_eq!(status_field(&after, "forged"), bad_mac as u64, "{after}");
    assert_eq!(status_field(&after, "badauth"), 0, "{after}");
    assert_eq!(
        relay.count("key differs"),
        0,
        "a stranger's forgery blamed on the key"
    );
    assert_eq!(
        status_field(&after, "active"),
        1,
        "only the legit client: {after}"
    );
    assert_eq!(status_field(&after, "waiting"), 0, "{after}");
    assert_eq!(
        status_field(&after, "spare"),
        status_field(&before, "spare"),
        "{after}"
    );
    let mut answers = 0;
    let mut buf = [0u8; 65536];
    for s in &socks {
        s.set_nonblocking(true).unwrap();
        while let Ok((n, _)) = s.recv_from(&mut buf) {
            assert!(n <= CONTROL_LEN, "answered {n} bytes to {CONTROL_LEN}");
            answers += 1;
        }
    }
    assert_eq!(answers, 0, "forgeries answered while the key works");
}

#[test]
fn duplicated_and_reordered_keepalives_never_drop_a_live_tunnel() {
    let faults = Faults {
        duplicate: true,
        reorder: true,
        ..Faults::default()
    };
    let (_echo, relay, relay_addr, _nat, inside) = tunnel_via_nat(&[], faults);
    let c = Client::new(relay_addr);
    c.assert_served(b"first");
    let start = Instant::now();
    let mut n = 0;
    // Three and a half keepalive intervals of traffic: three rounds of duplicated and reordered keepalives.
    while start.elapsed() < Duration::from_millis(3500 * BRISK_SECS) {
        n += 1;
        let p = format!("keep going {n}");
        assert_eq!(c.ask(p.as_bytes(), SOON).as_deref(), Some(p.as_bytes()));
        thread::sleep(Duration::from_millis(100));
    }
    relay.wait_for_log("stale or repeated keepalive", SOON);
    for bad in ["forgotten", " dropped:", " moved from "] {
        assert_eq!(relay.count(bad), 0, "relay log says {bad:?}");
    }
    assert_eq!(inside.count("closed"), 0);
}

#[test]
fn roaming_tunnel_follows_its_new_nat_mapping_and_keeps_its_client() {
    let (echo, relay, relay_addr, nat, _inside) = tunnel_via_nat(&[], Faults::default());
    let c = Client::new(relay_addr);
    c.assert_served(b"before the NAT forgets us");
    let peers = echo.peers();
    nat.rebind();
    // Traffic resumes at the tunnel's next keepalive from the new mapping. No bound on how soon: the checks
    // below fail if the relay only forgot the old tunnel (after two intervals) and the client got a new one.
    c.ping_until(SOON).expect("traffic never resumed");
    relay.wait_for_log("moved from", SOON);
    assert_eq!(
        echo.peers(),
        peers,
        "the service saw a new peer: the client got a new tunnel"
    );
    assert_eq!(relay.count(&client_line(&c)), 1);
}

/// "At once": keepalives are 10 s apart, so a takeover that waited for one, or for the relay to forget the old
/// run's tunnels, would take 10 s or more; a correct one takes milliseconds. The 5 s bound sits between, with
/// seconds to spare for a loaded machine either way.
const AT_ONCE: Duration = Duration::from_secs(5);

fn restarted_inside_takes_over(restart: impl FnOnce(&[String]) -> Agent) {
    let echo = Echo::v4();
    let (relay, relay_addr) = relay("127.0.0.1", STEADY);
    let mut first = inside(echo.addr, relay_addr, STEADY);
    first.wait_for_log("registered at the relay", SOON);
    let c = Client::new(relay_addr);
    c.assert_served(b"before the crash");
    first.kill9();
    let second = restart(&inside_args(echo.addr, relay_addr, STEADY));
    let served = c
        .ping_until(2 * AT_ONCE)
        .expect("not served after the restart");
    let took = served - second.started;
    assert!(took <= AT_ONCE, "served {took:?} after the restart");
    relay.wait_for_log("inside agent restarted", SOON);
}

#[test]
fn restarted_inside_agent_takes_over_at_once() {
    restarted_inside_takes_over(|args| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Agent::spawn("inside-restarted", &args)
    });
}

#[test]
fn restarted_inside_agent_with_its_clock_set_back_a_day_takes_over_at_once() {
    if std::process::Command::new("faketime")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "faketime is missing (CI is set)"
        );
        eprintln!("SKIP: faketime is not installed");
        return;
    }
    restarted_inside_takes_over(|args| {
        let mut cmd = std::process::Command::new("faketime");
        cmd.args(["-f", "-1d", BIN])
            // The wall clock goes back a day, as on a router without a clock; the monotonic clock cannot go
            // back in reality (faking it too hangs every Rust timed wait: futex deadlines use the real clock).
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let yesterday = || {
            let t = std::time::SystemTime::now() - Duration::from_secs(86_400);
            rut::sys::logging::rfc3339(t)[..10].to_string()
        };
        // Yesterday's date before the start and after the first line: one of them, if midnight fell between.
        let before = yesterday();
        let agent = Agent::spawn_command("inside-faketime", cmd, &args);
        agent.wait_for_log("inside agent run", SOON);
        let stamp = agent.log().lines().next().unwrap_or_default().to_string();
        let after = yesterday();
        // The log's RFC 3339 date must be yesterday's: the fake clock is really in effect.
        assert!(
            stamp.starts_with(&before) || stamp.starts_with(&after),
            "clock not set back: {stamp:?} (want {before} or {after})"
        );
        agent
    });
}

#[test]
fn relay_restart_on_the_same_port_resumes_traffic() {
    // Every tunnel comes back at its next keepalive. 2 s apart here: a bound of one interval plus 2.5 s for a
    // loaded machine.
    let secs = 2;
    let every = Duration::from_secs(secs);
    let interval = secs.to_string();
    let base = &["-k", KEY, "--keepaliveInterval", interval.as_str()];
    let (_echo, mut relay, relay_addr, inside) = tunnel_with(base, &[], &[]);
    let c = Client::new(relay_addr);
    c.assert_served(b"before the relay restart");
    inside.wait_for_count("registered at the relay", 4 + 1, SOON); // the client's tunnel was replaced
    relay.kill9();
    let again =
        wait_until(SOON, || relay_on("127.0.0.1", relay_addr.port(), base)).expect("port taken");
    let served = c
        .ping_until(2 * every + SOON)
        .expect("not served after the relay restart");
    let took = served - again.started;
    let bound = every + Duration::from_millis(2500);
    assert!(took <= bound, "served {took:?} after the relay restart");
    // The four spares too.
    again.wait_for_count("registered from", 4, bound);
}

#[test]
fn sigterm_stops_the_inside_agent_cleanly_and_a_new_one_takes_over_at_once() {
    let (echo, relay, relay_addr, mut first) = tunnel(&[], &[]);
    let c = Client::new(relay_addr);
    c.assert_served(b"before SIGTERM");
    first.wait_for_count("registered at the relay", 4 + 1, SOON); // the client's tunnel was replaced
    assert_eq!(first.count("status:"), 0);
    let (status, took) = first.terminate(libc::SIGTERM);
    assert_eq!(status.code(), Some(0), "{status}");
    // The man page says within a second; 3 s here for a loaded machine, still far from the next keepalive (10 s)
    // that a stop noticed late would wait for.
    assert!(took <= Duration::from_secs(3), "took {took:?}");
    assert_eq!(
        first.count("status: tunnels active=1 spare=4"),
        1,
        "exit status line"
    );
    relay.wait_for_log(
        &format!("closed by the inside agent (client {})", c.addr()),
        SOON,
    );
    relay.wait_for_count("closed by the inside agent", 5, SOON);
    assert_eq!(
        relay.count("closed by the inside agent"),
        5,
        "1 active + 4 spares, each once"
    );
    let second = inside(echo.addr, relay_addr, STEADY);
    let served = c
        .ping_until(2 * AT_ONCE)
        .expect("not served by the new agent");
    let took = served - second.started;
    assert!(took <= AT_ONCE, "served {took:?} after the new start");
}

#[test]
fn sigint_stops_the_relay_cleanly_with_a_last_status_line() {
    let (_echo, mut relay, relay_addr, _inside) = tunnel(&[], &[]);
    Client::new(relay_addr).assert_served(b"before SIGINT");
    assert_eq!(relay.count("status:"), 0);
    let (status, took) = relay.terminate(libc::SIGINT);
    assert_eq!(status.code(), Some(0), "{status}");
    // The man page says within a second (its receive loops look at the stop flag every 200 ms); 3 s here for a
    // loaded machine.
    assert!(took <= Duration::from_secs(3), "took {took:?}");
    assert_eq!(
        relay.count("status: tunnels active=1"),
        1,
        "exit status line"
    );
}

/// `n` new clients, each on its own thread, send their first datagram at the same instant; each must get
/// exactly that datagram back (its first datagram is never dropped), then be served once more.
fn clients_at_once(relay_addr: SocketAddr, n: usize) {
    let start = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|k| {
            let start = start.clone();
            thread::spawn(move || {
                let c = Client::new(relay_addr);
                let p = format!("first datagram of client {k}");
                start.wait();
                c.send(p.as_bytes());
                assert_eq!(c.recv(SOON).as_deref(), Some(p.as_bytes()), "client {k}");
                c.assert_served(format!("client {k} again").as_bytes());
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
}

#[test]
fn first_datagrams_of_simultaneous_new_clients_wait_for_a_spare() {
    let (_echo, relay, relay_addr, _inside) = tunnel(&[], &["--spares", "1"]);
    clients_at_once(relay_addr, 10);
    assert_eq!(relay.count("-> tunnel"), 10);
    relay.wait_for_log("no spare tunnel ready: holding", SOON);
}

#[test]
fn fifty_clients_arriving_at_once_are_all_served_with_the_default_spare_pool() {
    // The original C program crashed on this; with the default four spares, clients beyond the pool wait
    // for the spares opened behind them, their first datagram held, not dropped.
    let (echo, relay, relay_addr, _inside) = tunnel(&["-n", "100"], &["-n", "100"]);
    clients_at_once(relay_addr, 50);
    assert_eq!(relay.count("-> tunnel"), 50);
    assert_eq!(
        echo.peers().len(),
        50,
        "one tunnel, so one distinct peer, per client"
    );
    relay.wait_for_log("no spare tunnel ready: holding", SOON);
}

#[test]
fn a_burst_beyond_the_spare_pool_makes_the_inside_open_spares_for_all_waiting_clients_at_once() {
    // Forty clients wait at the relay before the inside agent starts with one spare: the relay's answer to that
    // spare says 39 more wait, and the inside opens spares for all of them together instead of one behind each
    // spare taken. The clients come first so that how many wait is not a race: clients arriving while the agent
    // runs would meet acks that each find however many happened to have arrived (one CI run saw 2).
    let echo = Echo::v4();
    let (relay, relay_addr) = relay(
        "127.0.0.1",
        &with(STEADY, &["-n", "100", "--statusInterval", "1"]),
    );
    let clients: Vec<Client> = (0..40).map(|_| Client::new(relay_addr)).collect();
    for (k, c) in clients.iter().enumerate() {
        c.send(format!("first datagram of client {k}").as_bytes());
    }
    relay.wait_for_log("waiting=40 ", SOON);
    let inside = inside(
        echo.addr,
        relay_addr,
        &with(STEADY, &["-n", "100", "--spares", "1"]),
    );
    let line = inside.wait_for_log("wait at the relay: opening", SOON);
    let opened: usize = line
        .split("opening ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // 39 wait; the one spare the agent keeps may already be on its way and count against them.
    assert!(opened >= 38, "spares not opened for all waiting: {line}");
    for (k, c) in clients.iter().enumerate() {
        let first = format!("first datagram of client {k}");
        assert_eq!(
            c.recv(SOON).as_deref(),
            Some(first.as_bytes()),
            "client {k}"
        );
        c.assert_served(format!("client {k} again").as_bytes());
    }
    assert_eq!(relay.count("-> tunnel"), 40);
}

#[test]
fn many_spares_registering_at_once_do_not_trip_the_replay_protection() {
    // 64 tunnels send their keepalives in the same instant, all counters from one run's counter, interleaved.
    // Agents run at debug level here: the relay says "stale or repeated keepalive" when it rejects one.
    let (_echo, relay, relay_addr, inside) = tunnel_with(
        FAST,
        &["-n", "100", "--statusInterval", "1"],
        &["-n", "100", "--spares", "64"],
    );
    inside.wait_for_count("registered at the relay", 64, SOON);
    relay.wait_for_count("registered from", 64, SOON);
    // Registration itself is challenged, not counted: the counters are checked on the keepalives after it,
    // the first of which comes an interval later. Three status lines a second apart cover two of them.
    let seen = relay.count("status:");
    relay.wait_for_count("status:", seen + 3, SOON);
    assert_eq!(relay.count("stale or repeated keepalive"), 0);
    Client::new(relay_addr).assert_served(b"served by one of 64 spares");
}

#[test]
fn status_lines_report_tunnels_on_both_sides() {
    let (_echo, relay, relay_addr, inside) =
        tunnel(&["--statusInterval", "1"], &["--statusInterval", "1"]);
    Client::new(relay_addr).assert_served(b"one active tunnel");
    relay.wait_for_log("status: tunnels active=1 spare=4 waiting=0", SOON);
    inside.wait_for_log("status: tunnels active=1 spare=4", SOON);
    relay.wait_for_count("status: tunnels", 2, SOON);
    inside.wait_for_count("status: tunnels", 2, SOON);
}

/// The inside agent in a private mount namespace whose /etc/hosts is `hosts` and whose name service reads only
/// files: names resolve exactly as the test says, and no query ever leaves the machine.
fn inside_with_hosts_file(
    dir: &std::path::Path,
    hosts: &std::path::Path,
    args: &[&str],
) -> Option<Agent> {
    let root = unsafe { libc::geteuid() } == 0;
    let unshare = std::process::Command::new("unshare")
        .arg("--version")
        .output()
        .is_ok();
    if !root || !unshare {
        assert!(
            std::env::var_os("CI").is_none(),
            "needs root and unshare(1) (CI is set)"
        );
        eprintln!("SKIP: needs root and unshare(1) for a private /etc/hosts");
        return None;
    }
    let nss = dir.join("nsswitch.conf");
    std::fs::write(&nss, "hosts: files\n").unwrap();
    let script = format!(
        "mount --bind {} /etc/hosts && mount --bind {} /etc/nsswitch.conf && exec \"$0\" \"$@\"",
        hosts.display(),
        nss.display()
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "sh", "-c", &script, BIN]);
    Some(Agent::spawn_command("inside-names", cmd, args))
}

#[test]
fn relay_name_is_retried_until_it_resolves_and_looked_up_again_when_the_relay_goes_silent() {
    let dir = std::env::temp_dir().join(format!("rut-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let echo = Echo::v4();
    let (relay_a, a) = relay("127.0.0.1", FAST);
    let (service, name) = (
        echo.addr.to_string(),
        format!("relay.rut.test:{}", a.port()),
    );
    let Some(inside) =
        inside_with_hosts_file(&dir, &hosts, &with(FAST, &["-s", &service, "-o", &name]))
    else {
        return;
    };
    // At boot, before DNS works: the name does not resolve. Not an error: it is retried.
    inside.wait_for_log("cannot resolve relay.rut.test", SOON);
    std::fs::write(&hosts, "127.0.0.1 relay.rut.test\n").unwrap();
    inside.wait_for_log("registered at the relay", Duration::from_secs(10));
    Client::new(a).assert_served(b"through the relay found by name");

    // Dynamic DNS: the relay comes back on another address and the name follows it; the old one goes silent.
    let relay_b = relay_on("127.0.0.2", a.port(), FAST).expect("the port is free on 127.0.0.2");
    std::fs::write(&hosts, "127.0.0.2 relay.rut.test\n").unwrap();
    drop(relay_a);
    inside.wait_for_log("moved from 127.0.0.1", Duration::from_secs(10));
    relay_b.wait_for_log("registered from", SOON);
    Client::new(SocketAddr::from(([127, 0, 0, 2], a.port())))
        .assert_served(b"through the relay's new address");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_relay_without_inside_agent_says_so_once_however_long_a_client_retries() {
    // prof7bit/udp-reverse-tunnel issue #3: the relay flooded its log when no inside agent was connected.
    let echo = Echo::v4();
    let (relay, relay_addr) = relay("127.0.0.1", FAST);
    let c = Client::new(relay_addr);
    let end = Instant::now() + Duration::from_millis(10_800); // past the 10 s a held datagram may wait
    let mut sent = 0;
    while Instant::now() < end {
        c.send(format!("retry {sent}").as_bytes());
        sent += 1;
        thread::sleep(Duration::from_millis(300));
    }
    relay.wait_for_log("no spare tunnel came within", SOON);
    assert!(sent > 30);
    assert_eq!(relay.count("no spare tunnel ready"), 1);
    assert_eq!(relay.count("no spare tunnel came within"), 1);
    // The inside agent arrives: the same client is served (its datagrams still held come first, in order).
    let _inside = inside(echo.addr, relay_addr, FAST);
    let served = wait_until(SOON, || {
        c.send(b"after the inside agent came");
        let reply = c.recv(Duration::from_millis(100))?;
        assert!(
            reply.starts_with(b"retry ") || reply.starts_with(b"after "),
            "{reply:?}"
        );
        Some(())
    });
    assert!(
        served.is_some(),
        "client not served once the inside agent registered"
    );
}

#[test]
fn after_an_outage_longer_than_two_keepalive_intervals_spares_register_again_at_once() {
    // The relay forgets spares it has not heard from for 2 × keepaliveInterval; once the path is back they must
    // register again at their next keepalive, not be kept out as if they had closed.
    let (_echo, relay, relay_addr, nat, _inside) = tunnel_via_nat(&[], Faults::default());
    relay.wait_for_count("registered from", 4, SOON);
    nat.set_faults(Faults {
        drop: true,
        ..Faults::default()
    });
    // Forgotten after 2 intervals without a keepalive, so within 3 of the outage's start.
    relay.wait_for_count(
        &format!("sent no keepalive for {}s: forgotten", 2 * BRISK_SECS),
        4,
        Duration::from_secs(3 * BRISK_SECS) + SOON,
    );
    nat.set_faults(Faults::default());
    relay.wait_for_count("registered from", 8, SOON);
    Client::new(relay_addr).assert_served(b"served after the outage");
}

/// Issue: relay `--keepaliveInterval 2`, inside 10 — the relay forgot tunnels carrying clients every few seconds
/// and only INFO lines said so. Now both sides say their settings in every message: the relay keeps the inside
/// agent's tunnels by its interval, and warns once that they differ. (Here 1 s against 3 s, to keep it short.)
#[test]
fn a_relay_with_a_shorter_keepalive_interval_follows_the_inside_agents_and_warns_once() {
    let echo = Echo::v4();
    let (relay, relay_addr) = relay("127.0.0.1", &["--keepaliveInterval", "1", "-n", "5"]);
    let inside = inside(
        echo.addr,
        relay_addr,
        &["--keepaliveInterval", "3", "-n", "3"],
    );
    inside.wait_for_log("registered at the relay", SOON);
    let c = Client::new(relay_addr);
    c.assert_served(b"first");
    let line = relay.lines(&client_line(&c)).pop().expect("a client line");
    // Idle 2.5 s at a time: longer than the relay's own 2 x 1 s (an active tunnel's data would refresh it).
    for i in 0..3 {
        std::thread::sleep(Duration::from_millis(2500));
        c.assert_served(format!("still here {i}").as_bytes());
    }
    assert_eq!(relay.count("forgotten"), 0, "{}", relay.log());
    assert_eq!(
        relay.lines(&client_line(&c)),
        vec![line],
        "the same tunnel all along"
    );
    assert_eq!(relay.count("keepalive interval is 3s, ours 1s"), 1);
    assert_eq!(relay.count("-n is 3, ours 5: serving at most 3 clients"), 1);
}
