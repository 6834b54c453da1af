//! The relay core with several homes (`--homes`), with simulated time: control messages find their home by
//! key id, new clients by mac1; one home's attacker loads only that home; an unknown key or an old protocol
//! version is counted and goes nowhere; a reload keeps unchanged homes untouched.

mod sim;

use rut::relay::{HomeSpec, Relay, Settings, Transmit};
use rut::wire::wireguard::{self, PublicKey, INITIATION_LEN};
use rut::wire::{self, Instance, Key, Kind, Message, Shared};
use sim::*;
use std::net::SocketAddr;
use std::time::Duration;

const A: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
const B: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
const NOBODY: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";
const KEY_A: &[u8] = b"home a's key, long enough";
const KEY_B: &[u8] = b"home b's key, long enough";

fn initiation(server: &str, n: u32) -> [u8; INITIATION_LEN] {
    let mut m = [0u8; INITIATION_LEN];
    m[0] = 1;
    m[4..8].copy_from_slice(&n.to_le_bytes());
    m[8..12].copy_from_slice(&n.to_be_bytes());
    let pk: PublicKey = server.parse().unwrap();
    wireguard::client_macs(&pk, &mut m, None);
    m
}

fn spec(name: &str, key: &[u8], server: &str, n: usize) -> HomeSpec {
    HomeSpec {
        name: name.into(),
        key: key.to_vec(),
        server: server.parse().unwrap(),
        max_tunnels: n,
    }
}

fn seeds() -> impl FnMut() -> [u8; 32] {
    let mut n = 0u8;
    move || {
        n += 1;
        [n; 32]
    }
}

/// The kinds of the messages in `out` that open under `key` (only those sent to `to`, if given).
fn kinds(out: &[Transmit], key: &[u8], to: Option<SocketAddr>) -> Vec<Kind> {
    out.iter()
        .filter(|t| to.is_none_or(|a| t.to == a))
        .filter_map(|t| Key::new(key).open(&t.data).ok())
        .map(|m| m.kind)
        .collect()
}

/// A relay of homes a (n_a tunnels) and b (n_b), each with its spares registered: a's at addr(0..), b's at
/// addr(20..).
fn two_homes(n_a: usize, n_b: usize) -> (SimRelay, SimInside, SimInside) {
    let mut r = SimRelay::new(1, 25, 1);
    let settings = Settings {
        max_tunnels: 10,
        keepalive: Duration::from_secs(25),
    };
    let specs = vec![spec("a", KEY_A, A, n_a), spec("b", KEY_B, B, n_b)];
    r.relay = Relay::with_homes(specs, settings, &mut seeds(), r.now);
    let mut a = SimInside::with_key(KEY_A, 1, Shared::default());
    let mut b = SimInside::with_key(KEY_B, 2, Shared::default());
    for i in 0..n_a {
        r.register(&mut a, addr(i));
    }
    for i in 0..n_b {
        r.register(&mut b, addr(20 + i));
    }
    (r, a, b)
}

#[test]
fn each_initiation_takes_a_spare_of_the_home_whose_server_key_it_is_for() {
    let (mut r, _, _) = two_homes(2, 2);
    assert_eq!(r.send(addr(50), &initiation(B, 1)).0, Some(addr(20)));
    assert_eq!(r.send(addr(51), &initiation(A, 2)).0, Some(addr(0)));
    assert_eq!(r.send(addr(52), &initiation(NOBODY, 3)), (None, vec![]));
    assert_eq!(r.send(addr(53), b"garbage"), (None, vec![]));
    assert_eq!(
        r.send(addr(54), &[4u8; 64]),
        (None, vec![]),
        "transport data of a stranger"
    );
    // Transport data follows the client's home; the service's answers go back to that client only.
    assert_eq!(r.send(addr(50), &[4u8; 64]).0, Some(addr(20)));
    assert_eq!(r.send(addr(20), b"answer").0, Some(addr(50)));
    assert_eq!(r.send(addr(0), b"answer").0, Some(addr(51)));
    let u = r.relay.unmatched();
    assert_eq!((u.bad_mac1, u.not_initiation), (1, 2));
    let (ha, hb) = (r.relay.home("a").unwrap(), r.relay.home("b").unwrap());
    assert_eq!((ha.table().active(), hb.table().active()), (1, 1));
    assert_eq!(r.relay.owner(&addr(50)), Some("b"));
    assert_eq!(r.relay.owner(&addr(51)), Some("a"));
    // A copy of an admitted initiation, from elsewhere: replayed, counted by its home, before any mac1.
    assert_eq!(r.send(addr(55), &initiation(B, 1)), (None, vec![]));
    assert_eq!(r.relay.home("b").unwrap().admissions().replayed, 1);
    r.relay.check().unwrap();
}

#[test]
fn a_flood_for_one_home_loads_only_that_home() {
    let (mut r, _, _) = two_homes(4, 4);
    // Fresh mac1-valid initiations for a from 1000 sources: a's tunnels fill, then a answers with cookies.
    let mut cookies = 0;
    for i in 0..1000u32 {
        let src = std::net::SocketAddr::from(([198, 18, (i >> 8) as u8, i as u8], 5000));
        let (_, out) = r.send(src, &initiation(A, 1000 + i));
        cookies += out.len();
        assert!(
            out.iter().all(|t| t.to == src && t.data.len() == 64),
            "only cookie replies, to the sender"
        );
    }
    assert!(cookies > 900, "a under load: {cookies} cookie replies");
    let a = r.relay.home("a").unwrap();
    assert_eq!(a.table().active(), 4);
    let b = r.relay.home("b").unwrap();
    assert_eq!(
        (
            b.table().active(),
            b.table().spares(),
            b.admissions().cookies
        ),
        (0, 4, 0)
    );
    // b's new client gets a spare at once, without a cookie round.
    assert_eq!(r.send(addr(60), &initiation(B, 1)).0, Some(addr(20)));
    r.relay.check().unwrap();
}

#[test]
fn an_unknown_key_and_an_old_version_are_counted_and_go_nowhere() {
    let (mut r, _, _) = two_homes(1, 1);
    let stranger = Key::new(b"no home's key");
    let m = Message::new(Kind::Keepalive, Instance([9; 16]), 1, 1);
    let (fwd, out) = r.send(addr(40), &stranger.seal(&m));
    assert_eq!(fwd, None);
    assert_eq!(out.len(), 1, "an authfail notice");
    assert_eq!((out[0].to, out[0].data.len()), (addr(40), wire::LEN));
    // At most one notice a second, in all.
    assert_eq!(r.send(addr(41), &stranger.seal(&m)).1.len(), 0);
    r.advance(Duration::from_millis(1100));
    assert_eq!(r.send(addr(41), &stranger.seal(&m)).1.len(), 1);
    // A notice is never answered (two relays must not keep each other busy).
    assert_eq!(r.send(addr(42), &Key::authfail_notice()), (None, vec![]));
    // Version 3's 124 bytes: refused, not forwarded.
    let mut v3 = vec![0u8; 124];
    v3[..4].copy_from_slice(&wire::MAGIC);
    v3[4] = 3;
    assert_eq!(r.send(addr(43), &v3), (None, vec![]));
    // A's id on a message sealed with another key: A's MAC check refuses it, A counts it.
    let mut forged = stranger.seal(&m);
    forged[92..100].copy_from_slice(&Key::new(KEY_A).id().0);
    assert_eq!(r.send(addr(44), &forged).0, None);
    assert_eq!(r.relay.unmatched().badauth, 4);
    let a = r.relay.home("a").unwrap();
    assert_eq!(a.admissions().forged + a.drops().badauth.get(), 1);
    assert_eq!(
        (
            a.table().spares(),
            r.relay.home("b").unwrap().table().spares()
        ),
        (1, 1)
    );
}

#[test]
fn a_reload_leaves_unchanged_homes_alone_and_tells_removed_homes_agents() {
    let (mut r, _, mut b) = two_homes(2, 2);
    assert_eq!(r.send(addr(50), &initiation(A, 1)).0, Some(addr(0)));
    assert_eq!(r.send(addr(51), &initiation(B, 2)).0, Some(addr(20)));
    // b leaves, c comes, a's -n changes.
    let specs = vec![
        spec("a", KEY_A, A, 3),
        spec("c", b"home c's key, long enough", NOBODY, 1),
    ];
    let mut out = Vec::new();
    let done = r
        .relay
        .reload(r.now, specs, &mut seeds(), &mut out)
        .unwrap();
    assert_eq!((done.added, done.removed, done.changed), (1, 1, 1));
    // b's agent is told, for each of its tunnels, in its own key.
    let drops: Vec<_> = out
        .iter()
        .filter(|t| b.receive(t.to, &t.data).is_none())
        .collect();
    assert_eq!(drops.len(), 2, "two drops for b's two tunnels: {out:?}");
    assert!(b.tunnels.is_empty(), "b's agent closed them");
    // a's client is untouched; b's is gone and its data goes nowhere.
    assert_eq!(r.send(addr(50), &[4u8; 64]).0, Some(addr(0)));
    assert_eq!(r.send(addr(51), &[4u8; 64]).0, None);
    assert_eq!(r.relay.home("a").unwrap().table().active(), 1);
    assert!(r.relay.home("b").is_none());
    assert_eq!(r.relay.owner(&addr(51)), None);
    // a's key changes: its tunnels are dropped (told in the old key) and its agent must come again.
    let mut a_out = Vec::new();
    let specs = vec![spec("a", b"a's new key, long enough", A, 3)];
    let done = r
        .relay
        .reload(r.now, specs, &mut seeds(), &mut a_out)
        .unwrap();
    assert_eq!((done.added, done.removed, done.changed), (0, 1, 1));
    assert_eq!(a_out.len(), 2);
    assert!(a_out.iter().all(|t| Key::new(KEY_A)
        .open(&t.data)
        .is_ok_and(|m| m.kind == Kind::Drop)));
    assert_eq!(r.relay.home("a").unwrap().table().tunnels().count(), 0);
    r.relay.check().unwrap();
    // Without --homes there is nothing to reload.
    let mut one = SimRelay::new(2, 25, 1);
    assert!(one
        .relay
        .reload(one.now, vec![], &mut seeds(), &mut Vec::new())
        .is_none());
}

#[test]
fn a_tunnel_that_proves_itself_at_another_homes_address_takes_it_and_that_home_forgets_its_own() {
    let (mut r, mut a, _) = two_homes(1, 1);
    assert_eq!(r.send(addr(50), &initiation(B, 1)).0, Some(addr(20)));
    // a's NAT hands a's tunnel the address b's tunnel had (b's mapping died): a's keepalive from there is
    // challenged; nothing of b's changes until a's agent answers from that address.
    let id = a.tunnels[0].id;
    a.tunnels[0].addr = addr(20);
    let (_, out) = r.send(addr(20), &a.keepalive(id));
    assert_eq!(r.relay.owner(&addr(20)), Some("b"));
    assert_eq!(r.relay.home("b").unwrap().table().active(), 1);
    let challenge = only(&out, addr(20));
    let (_, response) = a.receive(addr(20), &challenge).expect("a challenge");
    let (_, out) = r.send(addr(20), &response);
    assert_eq!(r.relay.owner(&addr(20)), Some("a"));
    let hb = r.relay.home("b").unwrap();
    assert_eq!((hb.table().active(), hb.table().tunnels().count()), (0, 0));
    // b's tunnel there is forgotten without a drop: the agent at that address is a's now, and a drop in b's key
    // would only be counted there as badauth (b's agent registers again from wherever it now is).
    assert_eq!(kinds(&out, KEY_B, None), vec![]);
    assert_eq!(kinds(&out, KEY_A, None), vec![Kind::Ack]);
    r.relay.check().unwrap();
}

#[test]
fn an_initiation_for_another_home_takes_back_an_address_bound_by_a_spoofed_one() {
    let (mut r, _, _) = two_homes(2, 2);
    // An attacker who knows a's public key binds b's client's address (spoofed) to a spare of a.
    assert_eq!(r.send(addr(50), &initiation(A, 1)).0, Some(addr(0)));
    assert_eq!(r.relay.owner(&addr(50)), Some("a"));
    // b's client, at that address, sends its initiation for b: a lets the address go, b admits it.
    assert_eq!(r.send(addr(50), &initiation(B, 2)).0, Some(addr(20)));
    assert_eq!(r.relay.owner(&addr(50)), Some("b"));
    assert_eq!(r.relay.home("a").unwrap().table().active(), 0);
    // Once b's service has answered it, an initiation for a from that address is data of b's client.
    assert_eq!(r.send(addr(20), b"answer").0, Some(addr(50)));
    assert_eq!(r.send(addr(50), &initiation(A, 3)).0, Some(addr(20)));
    assert_eq!(r.relay.owner(&addr(50)), Some("b"));
    // An initiation for its own home from a bound address is that client's (a new handshake of its session).
    assert_eq!(r.send(addr(50), &initiation(B, 4)).0, Some(addr(20)));
    r.relay.check().unwrap();
}

#[test]
fn an_initiation_for_another_home_takes_back_an_address_held_for_a_replayed_keepalive() {
    let (mut r, mut a, _) = two_homes(1, 1);
    // A keepalive of a's tunnel, replayed from b's client's address (spoofed): a holds that address's data
    // until its challenge is answered, which the attacker cannot do.
    let id = a.tunnels[0].id;
    let keepalive = a.keepalive(id);
    let (_, out) = r.send(addr(50), &keepalive);
    assert_eq!(out.len(), 1, "a challenge to the claimed address");
    assert_eq!(r.relay.owner(&addr(50)), Some("a"));
    // Data from there waits for the challenge's answer.
    assert_eq!(r.send(addr(50), b"held for a").0, None);
    // b's client there is b's at its first initiation, not held for a's tunnel for 10 s; what a held is dropped,
    // and counted.
    assert_eq!(r.send(addr(50), &initiation(B, 1)).0, Some(addr(20)));
    assert_eq!(r.relay.owner(&addr(50)), Some("b"));
    let ha = r.relay.home("a").unwrap();
    assert_eq!((ha.table().active(), ha.drops().unrouted.get()), (0, 1));
    // Data from there is b's client's.
    assert_eq!(r.send(addr(50), b"transport").0, Some(addr(20)));
    // Had a's tunnel really moved there, its answer to the challenge takes the address back (the proof wins).
    a.tunnels[0].addr = addr(50);
    let challenge = only(&out, addr(50));
    let (_, response) = a.receive(addr(50), &challenge).expect("a challenge");
    let (_, out) = r.send(addr(50), &response);
    assert_eq!(r.relay.owner(&addr(50)), Some("a"));
    // b's tunnel that took the spoofed client is dropped (told at its own address, in b's key).
    assert_eq!(r.relay.home("b").unwrap().table().active(), 0);
    assert_eq!(kinds(&out, KEY_B, Some(addr(20))), vec![Kind::Drop]);
    r.relay.check().unwrap();
}
