//! What real deployments do to a tunnel — the relay restarts, the home line drops and comes back at a new
//! address, the inside agent restarts, datagrams are lost — on the sans-IO relay core with simulated time: the
//! client keeps its tunnel (the service sees the same source), or with `--wireguard` gets a new one at once.

mod sim;

use rut::relay::remembered::REMEMBER_FOR;
use rut::relay::table::{Route, TunnelKey};
use rut::relay::{Admission, RECOVERY};
use rut::wire::wireguard;
use rut::wire::{Key, Kind};
use sim::*;
use std::net::SocketAddr;
use std::time::Duration;

const SERVER_KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn initiation(n: u32) -> [u8; wireguard::INITIATION_LEN] {
    let mut m = [0u8; wireguard::INITIATION_LEN];
    m[0] = 1;
    m[4..8].copy_from_slice(&n.to_le_bytes());
    m[8..12].copy_from_slice(&n.to_be_bytes());
    wireguard::client_macs(&SERVER_KEY.parse().unwrap(), &mut m, None);
    m
}

/// WireGuard transport data (type 4): what a client whose session lives on sends.
const TRANSPORT: [u8; 48] = {
    let mut d = [0u8; 48];
    d[0] = 4;
    d
};

/// A relay, `--wireguard` or not, started at `r`'s time (a restart keeps the clock running).
fn relay(n: usize, keepalive: u64, wg: bool, secret: u8) -> SimRelay {
    let mut r = SimRelay::new(n, keepalive, secret);
    if wg {
        let pk: wireguard::PublicKey = SERVER_KEY.parse().unwrap();
        let core = std::mem::replace(&mut r.relay, SimRelay::new(n, keepalive, secret).relay);
        r.relay = core.with_wireguard(Admission::new(&pk, [secret; 32], r.now));
    }
    r
}

/// The relay restarts: a new process, nothing remembered, the same clock.
fn restart(r: &SimRelay, n: usize, keepalive: u64, wg: bool) -> SimRelay {
    let mut fresh = relay(n, keepalive, wg, 99);
    fresh.now = r.now;
    fresh
}

/// `inside` with `spares` registered spares at addr(0), addr(1), …; client `c` takes the first and the service
/// answers it; the ack of the tunnel's next keepalive tells the inside agent its client. Returns tunnel 1's address.
fn carrying(r: &mut SimRelay, inside: &mut SimInside, spares: usize, c: SocketAddr) -> SocketAddr {
    for i in 0..spares {
        r.register(inside, addr(i));
    }
    let t = addr(0);
    let first = match is_wg(r) {
        true => initiation(1).to_vec(),
        false => b"hello".to_vec(),
    };
    assert_eq!(r.send(c, &first).0, Some(t));
    assert_eq!(r.send(t, b"answer").0, Some(c));
    assert!(r.keepalive(inside, 1).is_empty());
    let tun = inside.tunnel(1).unwrap();
    assert_eq!(
        (tun.active, tun.client, tun.answered),
        (true, Some(c), true)
    );
    t
}

fn is_wg(r: &SimRelay) -> bool {
    r.relay.status().contains(" wireguard ")
}

#[test]
fn a_restarted_relay_restores_the_tunnel_with_its_client_from_the_agents_word() {
    for wg in [false, true] {
        let mut r = relay(4, 2, wg, 1);
        let mut inside = SimInside::new(1);
        let c = addr(20);
        let t = carrying(&mut r, &mut inside, 2, c);
        let mut r = restart(&r, 4, 2, wg);
        // Before the inside agent is heard: plain data is held for a spare, WireGuard transport data is dropped
        // (it is no initiation, and this relay has proven nothing yet).
        assert_eq!(r.send(c, &TRANSPORT).0, None);
        let flushed = r.keepalive(&mut inside, 1);
        let expect: Vec<_> = match wg {
            false => vec![(t, TRANSPORT.to_vec())],
            true => vec![],
        };
        let got: Vec<_> = flushed.into_iter().map(|x| (x.to, x.data)).collect();
        assert_eq!(
            got, expect,
            "held datagrams follow the restored tunnel (wg {wg})"
        );
        assert_eq!(r.relay.table().route(&c), Route::To(t), "the same tunnel");
        assert_eq!(r.send(c, &TRANSPORT).0, Some(t));
        assert_eq!(r.send(t, b"answer").0, Some(c));
        assert_eq!(r.relay.admissions().restored, 1);
        assert_eq!(r.relay.table().active(), 1);
        r.relay.table().check().unwrap();
    }
}

#[test]
fn after_a_restart_a_returning_client_waits_for_its_own_tunnel_rather_than_take_a_spare() {
    let mut r = relay(4, 2, false, 1);
    let mut inside = SimInside::new(1);
    let c = addr(20);
    let t = carrying(&mut r, &mut inside, 2, c);
    let mut r = restart(&r, 4, 2, false);
    // The spare comes back first; it says one of the run's tunnels carries a client.
    assert!(r.keepalive(&mut inside, 2).is_empty());
    assert_eq!(r.relay.table().spares(), 1);
    // The client's datagram is held (it might be that tunnel's client) …
    assert_eq!(r.send(c, b"one").0, None);
    assert_eq!(r.relay.table().waiting(), 1);
    r.advance(RECOVERY / 2);
    // … and goes through its own tunnel when that comes back.
    let flushed = r.keepalive(&mut inside, 1);
    assert_eq!(flushed.len(), 1);
    assert_eq!((flushed[0].to, &flushed[0].data[..]), (t, &b"one"[..]));
    assert_eq!(r.relay.table().route(&c), Route::To(t));
    assert_eq!(r.relay.table().spares(), 1, "the spare stays a spare");
}

#[test]
fn a_recovery_ends_after_at_most_three_seconds_and_waiting_clients_get_spares() {
    let mut r = relay(8, 2, false, 1);
    let mut inside = SimInside::new(1);
    let (c1, c2) = (addr(20), addr(21));
    carrying(&mut r, &mut inside, 4, c1);
    assert_eq!(r.send(c2, b"two").0, Some(addr(1)));
    r.keepalive(&mut inside, 2);
    let mut r = restart(&r, 8, 2, false);
    // Only spare 3 comes back; tunnels 1 and 2 (with clients) do not.
    assert!(r.keepalive(&mut inside, 3).is_empty());
    // A new client waits while they may come back, but no longer than RECOVERY.
    let n1 = addr(22);
    assert_eq!(r.send(n1, b"new").0, None);
    assert!(r.advance(RECOVERY - Duration::from_millis(100)).is_empty());
    let out = r.advance(Duration::from_millis(200));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].to, &out[0].data[..]), (addr(2), &b"new"[..]));
    assert_eq!(r.relay.table().route(&n1), Route::To(addr(2)));
    // While the counts still disagree, later new clients do not wait again.
    assert!(r.keepalive(&mut inside, 4).is_empty());
    assert_eq!(r.send(addr(23), b"x").0, Some(addr(3)));
}

#[test]
fn a_tunnel_whose_client_meanwhile_has_another_is_dropped_not_restored() {
    let mut r = relay(4, 2, false, 1);
    let mut inside = SimInside::new(1);
    let c = addr(20);
    carrying(&mut r, &mut inside, 2, c);
    // Tunnel 1's keepalives are lost for more than two intervals, tunnel 2's get through: 1 is forgotten …
    for _ in 0..5 {
        r.advance(secs(1));
        r.keepalive(&mut inside, 2);
    }
    assert!(r
        .relay
        .table()
        .find(&TunnelKey {
            run: inside.instance(),
            id: 1
        })
        .is_none());
    // … the client's next datagram waits for it (the agent says it still carries a client) up to RECOVERY,
    // then takes the spare …
    assert_eq!(r.send(c, b"next").0, None);
    let out = r.advance(RECOVERY);
    assert_eq!((out[0].to, &out[0].data[..]), (addr(1), &b"next"[..]));
    // … and tunnel 1, back, is told to close rather than route the client two ways.
    let (_, out) = r.send(addr(0), &inside.keepalive(1));
    let challenge = only(&out, addr(0));
    let (_, response) = inside.receive(addr(0), &challenge).unwrap();
    let (_, out) = r.send(addr(0), &response);
    assert_eq!(kind_of(&only(&out, addr(0))), Some(Kind::Drop));
    assert_eq!(r.relay.table().route(&c), Route::To(addr(1)));
    // A late copy of that response restores nothing either.
    let (_, out) = r.send(addr(0), &response);
    assert!(out.iter().all(|x| kind_of(&x.data) != Some(Kind::Ack)));
    assert_eq!(r.relay.table().route(&c), Route::To(addr(1)));
    assert_eq!(r.relay.admissions().restored, 0);
}

#[test]
fn a_restore_that_would_exceed_n_is_dropped() {
    // -n 1 on the restarted relay: the first tunnel back keeps its client, the second is dropped.
    let mut r = relay(2, 2, false, 1);
    let mut inside = SimInside::new(1);
    let (c1, c2) = (addr(20), addr(21));
    carrying(&mut r, &mut inside, 2, c1);
    assert_eq!(r.send(c2, b"two").0, Some(addr(1)));
    r.keepalive(&mut inside, 2);
    assert_eq!(inside.tunnel(2).unwrap().client, Some(c2));
    let mut r = restart(&r, 1, 2, false);
    assert!(r.keepalive(&mut inside, 1).is_empty());
    r.keepalive(&mut inside, 2);
    assert!(inside.tunnel(2).is_none(), "tunnel 2 was dropped");
    assert_eq!(r.relay.table().active(), 1);
    assert_eq!(r.relay.table().route(&c1), Route::To(addr(0)));
    assert_eq!(r.relay.table().route(&c2), Route::New);
}

#[test]
fn after_a_line_outage_the_tunnel_comes_back_at_its_new_address_with_its_client() {
    for wg in [false, true] {
        let mut r = relay(4, 2, wg, 1);
        let mut inside = SimInside::new(1);
        let c = addr(20);
        carrying(&mut r, &mut inside, 2, c);
        // The line is down for 6 s (three intervals): the relay forgets both tunnels.
        r.advance(secs(6));
        assert_eq!(r.relay.table().active() + r.relay.table().spares(), 0);
        // The client keeps sending meanwhile: with --wireguard it is remembered (it proved itself), so it is
        // held for a spare like a plain relay's client instead of dropped.
        assert_eq!(r.send(c, &TRANSPORT).0, None);
        // Back with a new public address: both tunnels' NAT mappings are new.
        inside.tunnels[0].addr = addr(10);
        inside.tunnels[1].addr = addr(11);
        let flushed = r.keepalive(&mut inside, 1);
        assert_eq!(flushed.len(), 1, "the held datagram (wg {wg})");
        assert_eq!(flushed[0].to, addr(10));
        assert_eq!(r.relay.table().route(&c), Route::To(addr(10)));
        r.keepalive(&mut inside, 2);
        assert_eq!(r.relay.table().spares(), 1);
        assert_eq!(r.relay.admissions().restored, 1);
        r.relay.table().check().unwrap();
    }
}

#[test]
fn with_wireguard_a_proven_client_gets_the_new_runs_tunnel_at_its_next_datagram() {
    let mut r = relay(4, 2, true, 1);
    let mut inside = SimInside::new(1);
    let (proven, unanswered) = (addr(20), addr(21));
    carrying(&mut r, &mut inside, 3, proven);
    assert_eq!(r.send(unanswered, &initiation(2)).0, Some(addr(1)));
    // The inside agent restarts: a new run, whose first spare replaces the old run's tunnels.
    let mut new_run = SimInside::new(2);
    r.register(&mut new_run, addr(5));
    r.register(&mut new_run, addr(6));
    assert_eq!(r.relay.table().active(), 0);
    // The proven client's transport data (no initiation) gets a tunnel at once.
    assert_eq!(r.send(proven, &TRANSPORT).0, Some(addr(5)));
    assert_eq!(r.relay.admissions().remembered, 1);
    // One the service never answered proved nothing: it needs an initiation.
    assert_eq!(r.send(unanswered, &TRANSPORT).0, None);
    assert_eq!(r.relay.table().route(&unanswered), Route::New);
    assert_eq!(r.send(unanswered, &initiation(3)).0, Some(addr(6)));
}

#[test]
fn with_wireguard_a_remembered_admission_lasts_180_s_after_the_last_answer() {
    let mut r = relay(4, 2, true, 1);
    let mut inside = SimInside::new(1);
    let c = addr(20);
    carrying(&mut r, &mut inside, 2, c);
    let mut new_run = SimInside::new(2);
    r.register(&mut new_run, addr(5));
    r.advance(REMEMBER_FOR + secs(1));
    r.keepalive(&mut new_run, 1);
    assert_eq!(r.send(c, &TRANSPORT).0, None, "its session has expired");
    assert_eq!(r.relay.admissions().remembered, 0);
    assert_eq!(r.relay.table().route(&c), Route::New);
}

#[test]
fn with_wireguard_a_client_whose_tunnel_expired_and_is_not_restored_gets_a_spare_at_once() {
    let mut r = relay(4, 2, true, 1);
    let mut inside = SimInside::new(1);
    let c = addr(20);
    carrying(&mut r, &mut inside, 2, c);
    // Tunnel 1 goes silent (its keepalives are lost) and is forgotten; the spare stays.
    for _ in 0..5 {
        r.advance(secs(1));
        r.keepalive(&mut inside, 2);
    }
    // Held while tunnel 1 may still come back (the agent says it carries a client), then given the spare: no
    // new handshake needed.
    assert_eq!(r.send(c, &TRANSPORT).0, None);
    let out = r.advance(RECOVERY);
    assert_eq!((out[0].to, &out[0].data[..]), (addr(1), &TRANSPORT[..]));
    assert_eq!(r.relay.admissions().remembered, 1);
}

#[test]
fn acks_say_the_client_and_a_forged_claim_binds_nothing() {
    let mut r = relay(4, 2, false, 1);
    let mut inside = SimInside::new(1);
    let c = addr(20);
    carrying(&mut r, &mut inside, 2, c);
    let mut r = restart(&r, 4, 2, false);
    // Someone with the wrong key claims tunnel 1 carries another client: not even challenged.
    let mut liar = SimInside::new(1);
    liar.identity = std::sync::Arc::new(rut::inside::Identity::new(
        b"wrong key",
        inside.instance(),
        Default::default(),
    ));
    let (_, ka) = liar.open(addr(0));
    let (_, out) = r.send(addr(0), &ka);
    assert!(out.iter().all(|x| Key::new(KEY).open(&x.data).is_err()));
    assert_eq!(r.relay.table().active(), 0);
    // The honest agent's claim, replayed from another address, is challenged there and goes no further.
    let (_, out) = r.send(addr(9), &inside.keepalive(1));
    let challenge = only(&out, addr(9));
    assert_eq!(kind_of(&challenge), Some(Kind::Challenge));
    assert!(
        inside.receive(addr(9), &challenge).is_none(),
        "not its address"
    );
    assert_eq!(r.relay.table().active(), 0);
}
