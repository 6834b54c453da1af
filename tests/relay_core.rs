//! The relay's decisions, exchange by exchange (docs/PROTOCOL.md), on the sans-IO core with simulated time.

mod sim;

use rut::relay::table::Route;
use rut::relay::Admission;
use rut::wire::wireguard;
use rut::wire::{Key, Kind, Shared, LEN};
use sim::*;
use std::time::Duration;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn keepalive_challenge_response_ack_registers_a_spare_and_nothing_is_stored_before() {
    let mut r = SimRelay::new(4, 25, 1);
    let mut inside = SimInside::new(1);
    let a = addr(0);
    let (_, ka) = inside.open(a);
    let (fwd, out) = r.send(a, &ka);
    assert_eq!(fwd, None);
    let challenge = only(&out, a);
    assert_eq!(kind_of(&challenge), Some(Kind::Challenge));
    assert_eq!(challenge.len(), LEN, "no bigger than the keepalive");
    assert_eq!(
        r.relay.table().spares(),
        0,
        "nothing stored before the response"
    );
    let (_, response) = inside.receive(a, &challenge).unwrap();
    let (_, out) = r.send(a, &response);
    assert_eq!(kind_of(&only(&out, a)), Some(Kind::Ack));
    assert_eq!(r.relay.table().spares(), 1);
    // The next keepalive from the same address is acked at once, without a challenge.
    let (_, out) = r.send(a, &inside.keepalive(1));
    assert_eq!(kind_of(&only(&out, a)), Some(Kind::Ack));
    r.relay.table().check().unwrap();
}

#[test]
fn a_new_client_takes_the_spare_and_traffic_flows_both_ways() {
    let mut r = SimRelay::new(4, 25, 1);
    let mut inside = SimInside::new(1);
    let (t, c) = (addr(0), addr(1));
    r.register(&mut inside, t);
    assert_eq!(r.send(c, b"hello").0, Some(t));
    assert_eq!(r.send(t, b"reply").0, Some(c));
    assert_eq!(r.relay.table().active(), 1);
    assert_eq!(r.relay.table().route(&c), Route::To(t));
    r.relay.table().check().unwrap();
}

#[test]
fn a_client_without_spare_is_held_and_gets_the_next_spare_with_its_datagrams_in_order() {
    let mut r = SimRelay::new(4, 25, 1);
    let mut inside = SimInside::new(1);
    let (t, c) = (addr(0), addr(1));
    for d in [&b"one"[..], b"two", b"three"] {
        assert_eq!(r.send(c, d), (None, vec![]));
    }
    assert_eq!(r.relay.table().waiting(), 1);
    let (id, ka) = inside.open(t);
    let (_, out) = r.send(t, &ka);
    let (_, response) = inside.receive(t, &only(&out, t)).unwrap();
    let (_, out) = r.send(t, &response);
    let sent: Vec<(_, &[u8])> = out.iter().map(|x| (x.to, &x.data[..])).collect();
    assert_eq!(&sent[..3], &[(t, &b"one"[..]), (t, b"two"), (t, b"three")]);
    let ack = Key::new(KEY).open(&out[3].data).unwrap();
    assert_eq!((ack.kind, ack.tunnel, ack.active), (Kind::Ack, id, true));
    assert_eq!(r.relay.table().waiting(), 0);
}

#[test]
fn acks_tell_the_inside_how_many_clients_wait() {
    let mut r = SimRelay::new(8, 25, 1);
    let mut inside = SimInside::new(1);
    for i in 1..=3 {
        r.send(addr(i), b"first");
    }
    let t = addr(0);
    let (_, ka) = inside.open(t);
    let (_, out) = r.send(t, &ka);
    let (_, response) = inside.receive(t, &only(&out, t)).unwrap();
    let (_, out) = r.send(t, &response);
    let ack = Key::new(KEY).open(&out.last().unwrap().data).unwrap();
    assert_eq!(ack.waiting, 2, "one of three got the spare");
}

#[test]
fn held_datagrams_wait_ten_seconds_then_are_dropped() {
    let mut r = SimRelay::new(4, 25, 1);
    r.send(addr(1), b"anyone?");
    r.advance(secs(5));
    assert_eq!(r.relay.table().waiting(), 1);
    r.advance(secs(6));
    assert_eq!(r.relay.table().waiting(), 0);
    assert_eq!(r.relay.drops().unrouted.get(), 1);
}

#[test]
fn the_tunnel_limit_refuses_further_clients() {
    let mut r = SimRelay::new(1, 25, 1);
    let mut inside = SimInside::new(1);
    r.register(&mut inside, addr(0));
    assert_eq!(r.send(addr(1), b"x").0, Some(addr(0)));
    assert_eq!(r.send(addr(3), b"y"), (None, vec![]));
    assert_eq!(r.relay.drops().refused.get(), 1);
}

#[test]
fn a_roaming_tunnel_is_challenged_at_its_new_address_and_keeps_its_client() {
    let mut r = SimRelay::new(4, 25, 1);
    let mut inside = SimInside::new(1);
    let (old, c, new) = (addr(0), addr(1), addr(2));
    let id = r.register(&mut inside, old);
    r.send(c, b"hello");
    inside.tunnels[0].addr = new;
    let (_, out) = r.send(new, &inside.keepalive(id));
    let challenge = only(&out, new);
    // Until the challenge is answered, the new address's data is held, not taken for a new client.
    assert_eq!(r.send(new, b"early reply"), (None, vec![]));
    assert_eq!(r.relay.table().spares(), 0);
    let (_, response) = inside.receive(new, &challenge).unwrap();
    let (_, out) = r.send(new, &response);
    assert_eq!(out[0].to, c);
    assert_eq!(out[0].data, b"early reply");
    assert_eq!(kind_of(&out[1].data), Some(Kind::Ack));
    assert_eq!(r.send(c, b"more").0, Some(new));
    assert_eq!(
        r.send(old, b"stale"),
        (None, vec![]),
        "the old address is a stranger now"
    );
    r.relay.table().check().unwrap();
}

/// Regression: a tunnel that proves itself at the address of its own client used to abort the relay
/// (`move_to` handed back the tunnel itself as displaced, it was dropped, and then looked up).
#[test]
fn a_tunnel_roaming_to_its_own_clients_address_is_dropped_without_a_crash() {
    let mut r = SimRelay::new(4, 25, 1);
    let mut inside = SimInside::new(1);
    let (t, c) = (addr(0), addr(1));
    let id = r.register(&mut inside, t);
    r.send(c, b"hello");
    inside.tunnels[0].addr = c;
    let (_, out) = r.send(c, &inside.keepalive(id));
    let challenge = only(&out, c);
    let (_, response) = inside.receive(c, &challenge).unwrap();
    let (_, out) = r.send(c, &response);
    assert_eq!(kind_of(&only(&out, c)), Some(Kind::Drop));
    assert_eq!(r.relay.table().active(), 0);
    r.relay.table().check().unwrap();
}

#[test]
fn registering_at_a_clients_address_drops_the_tunnel_that_client_had() {
    let mut r = SimRelay::new(4, 25, 1);
    let mut inside = SimInside::new(1);
    let (t, c) = (addr(0), addr(1));
    r.register(&mut inside, t);
    r.send(c, b"taken for a client");
    // A new tunnel of the inside registers from c (a NAT reused the port).
    let (_, ka) = inside.open(c);
    let (_, out) = r.send(c, &ka);
    let (_, response) = inside.receive(c, &only(&out, c)).unwrap();
    let (_, out) = r.send(c, &response);
    let kinds: Vec<_> = out.iter().map(|x| (x.to, kind_of(&x.data))).collect();
    assert_eq!(kinds, vec![(t, Some(Kind::Drop)), (c, Some(Kind::Ack))]);
    r.relay.table().check().unwrap();
}

#[test]
fn a_restarted_relay_drops_tunnels_that_carried_clients_and_takes_spares_back() {
    let mut r = SimRelay::new(4, 25, 1);
    let mut inside = SimInside::new(1);
    let (t, s, c) = (addr(0), addr(2), addr(1));
    let active = r.register(&mut inside, t);
    let spare = r.register(&mut inside, s);
    r.send(c, b"x");
    inside.tunnels[0].active = true;
    let mut fresh = SimRelay::new(4, 25, 2);
    let (_, out) = fresh.send(t, &inside.keepalive(active));
    let (_, response) = inside.receive(t, &only(&out, t)).unwrap();
    let (_, out) = fresh.send(t, &response);
    assert_eq!(kind_of(&only(&out, t)), Some(Kind::Drop));
    let (_, out) = fresh.send(s, &inside.keepalive(spare));
    let (_, response) = inside.receive(s, &only(&out, s)).unwrap();
    let (_, out) = fresh.send(s, &response);
    assert_eq!(kind_of(&only(&out, s)), Some(Kind::Ack));
    assert_eq!(fresh.relay.table().spares(), 1);
}

/// The restarted agent's counters start again at 1, whatever its clock says (a router without RTC, or the
/// clock set back a day): the new instance is adopted and the old one's tunnels are gone at once.
#[test]
fn a_restarted_inside_agent_takes_over_at_once_with_fresh_counters() {
    let mut r = SimRelay::new(4, 25, 1);
    let mut old = SimInside::new(1);
    let (t, c) = (addr(0), addr(1));
    for _ in 0..100 {
        old.keepalive(0); // advance the old run's counter far ahead
    }
    let old_id = r.register(&mut old, t);
    r.send(c, b"x");
    let mut new = SimInside::new(2);
    r.register(&mut new, addr(2));
    assert_eq!(
        r.relay.table().active(),
        0,
        "the old run's tunnels are gone"
    );
    assert_eq!(
        r.send(c, b"again").0,
        Some(addr(2)),
        "the client gets the new spare"
    );
    // The old run is never accepted again, even with fresh counters.
    let (_, out) = r.send(t, &old.keepalive(old_id));
    assert!(out.is_empty());
}

#[test]
fn a_close_removes_the_tunnel_and_neither_it_nor_its_responses_can_be_replayed() {
    let mut r = SimRelay::new(4, 25, 1);
    let mut inside = SimInside::new(1);
    let t = addr(0);
    let (id, ka) = inside.open(t);
    let (_, out) = r.send(t, &ka);
    let (_, response) = inside.receive(t, &only(&out, t)).unwrap();
    r.send(t, &response);
    let (_, close) = inside.close(id).unwrap();
    assert_eq!(r.send(t, &close), (None, vec![]));
    assert_eq!(r.relay.table().spares(), 0);
    // Replayed within the cookie's lifetime, from the very address: nothing comes back.
    r.send(t, &response);
    r.send(t, &close);
    assert_eq!(r.relay.table().spares(), 0);
}

#[test]
fn an_expired_tunnel_comes_back_only_with_a_fresh_response_not_a_replayed_one() {
    let mut r = SimRelay::new(4, 2, 1);
    let mut inside = SimInside::new(1);
    let t = addr(0);
    let (id, ka) = inside.open(t);
    let (_, out) = r.send(t, &ka);
    let (_, response) = inside.receive(t, &only(&out, t)).unwrap();
    r.send(t, &response);
    r.advance(secs(5));
    assert_eq!(r.relay.table().spares(), 0, "forgotten after 2 x keepalive");
    r.send(t, &response);
    assert_eq!(
        r.relay.table().spares(),
        0,
        "a replayed response registers nothing"
    );
    let (_, out) = r.send(t, &inside.keepalive(id));
    let (_, fresh) = inside.receive(t, &only(&out, t)).unwrap();
    r.send(t, &fresh);
    assert_eq!(
        r.relay.table().spares(),
        1,
        "the live tunnel is back at once"
    );
}

#[test]
fn a_response_refused_for_want_of_room_registers_nothing_later_a_fresh_one_does() {
    // -n 1: one spare at most. The second tunnel's response is refused; once a client has taken the spare there
    // is room, but a late copy of that response (or its replay from the same address) must not fill it.
    let mut r = SimRelay::new(1, 25, 1);
    let mut inside = SimInside::new(1);
    r.register(&mut inside, addr(0));
    let t = addr(1);
    let (id, ka) = inside.open(t);
    let (_, out) = r.send(t, &ka);
    let (_, response) = inside.receive(t, &only(&out, t)).unwrap();
    assert_eq!(r.send(t, &response), (None, vec![]), "refused: no room");
    assert_eq!(r.send(addr(5), b"a client").0, Some(addr(0)));
    assert_eq!(r.relay.table().spares(), 0);
    assert_eq!(r.send(t, &response), (None, vec![]));
    assert_eq!(r.relay.table().spares(), 0, "a late copy registered");
    // The agent's retry: keepalive, challenge, a fresh response.
    let (_, out) = r.send(t, &inside.keepalive(id));
    let (_, fresh) = inside.receive(t, &only(&out, t)).unwrap();
    let (_, out) = r.send(t, &fresh);
    assert_eq!(kind_of(&only(&out, t)), Some(Kind::Ack));
    assert_eq!(r.relay.table().spares(), 1);
    r.relay.table().check().unwrap();
}

#[test]
fn a_response_replayed_from_another_address_registers_and_moves_nothing() {
    let mut r = SimRelay::new(4, 25, 1);
    let mut inside = SimInside::new(1);
    let (t, attacker) = (addr(0), addr(3));
    let (_, ka) = inside.open(t);
    let (_, out) = r.send(t, &ka);
    let (_, response) = inside.receive(t, &only(&out, t)).unwrap();
    assert_eq!(r.send(attacker, &response), (None, vec![]));
    assert_eq!(r.relay.table().spares(), 0);
    r.send(t, &response);
    assert_eq!(r.send(attacker, &response), (None, vec![]));
    assert_eq!(r.relay.table().route(&t), Route::Unrouted, "still at t");
}

#[test]
fn a_bad_mac_gets_one_same_sized_notice_a_second_at_most() {
    let mut r = SimRelay::new(4, 25, 1);
    let other = SimInside::new(1);
    let wrong = Key::new(b"another key");
    let msg = rut::wire::Message::new(Kind::Keepalive, other.instance(), 1, 1);
    let forged = wrong.seal(&msg);
    let (_, out) = r.send(addr(0), &forged);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].data.len(), forged.len());
    assert_eq!(r.send(addr(1), &forged), (None, vec![]), "rate-limited");
    r.advance(secs(1));
    assert_eq!(r.send(addr(1), &forged).1.len(), 1);
    assert_eq!(r.relay.drops().badauth.get(), 3);
}

// ---- A full relay: unproven tunnels go to newcomers (issue: strangers must not take every tunnel) ----------

/// A relay with `n` tunnels all given to `clients` (addresses 100..), none answered.
fn full(n: usize) -> (SimRelay, SimInside) {
    let mut r = SimRelay::new(n, 25, 1);
    let mut inside = SimInside::new(1);
    for i in 0..n {
        r.register(&mut inside, addr(i));
        assert_eq!(r.send(addr(100 + i), b"garbage").0, Some(addr(i)));
    }
    (r, inside)
}

#[test]
fn a_newcomer_takes_the_oldest_unproven_tunnel_once_it_is_past_the_grace() {
    let (mut r, _) = full(3);
    let newcomer = addr(50);
    assert_eq!(
        r.send(newcomer, b"hello"),
        (None, vec![]),
        "within the grace: refused"
    );
    r.advance(rut::relay::GRACE);
    // (The refused newcomer is a stranger now; a fresh newcomer takes the oldest tunnel at once.)
    let fresh = addr(51);
    assert_eq!(
        r.send(fresh, b"hello").0,
        Some(addr(0)),
        "the oldest unproven tunnel"
    );
    assert_eq!(r.relay.admissions().reclaimed, 1);
    assert_eq!(
        r.send(addr(100), b"more garbage").0,
        None,
        "the old client lost it"
    );
    assert_eq!(
        r.send(addr(0), b"answer").0,
        Some(fresh),
        "replies go to the newcomer"
    );
    r.relay.table().check().unwrap();
}

#[test]
fn a_proven_tunnel_is_never_reclaimed() {
    let (mut r, _) = full(2);
    r.send(addr(0), b"answer"); // the service answered client 100: tunnel 0 is proven
    r.send(addr(1), b"answer");
    r.advance(Duration::from_secs(40));
    assert_eq!(r.send(addr(51), b"hello"), (None, vec![]));
    assert_eq!(r.relay.admissions().reclaimed, 0);
    assert_eq!(r.relay.drops().refused.get(), 1);
}

#[test]
fn sources_turned_away_wait_behind_newcomers_and_are_paced() {
    let (mut r, _) = full(2);
    let stranger = addr(60);
    r.send(stranger, b"x"); // refused: now a stranger
    r.advance(rut::relay::GRACE);
    assert_eq!(
        r.send(stranger, b"x").0,
        None,
        "a stranger waits for twice the grace"
    );
    assert_eq!(
        r.send(addr(61), b"x").0,
        Some(addr(0)),
        "a newcomer does not"
    );
    r.advance(rut::relay::GRACE);
    assert_eq!(
        r.send(stranger, b"x").0,
        Some(addr(1)),
        "past twice the grace"
    );
    // The old client of a reclaimed tunnel is a stranger too.
    assert_eq!(r.send(addr(100), b"x").0, None);
}

// ---- Settings both sides must share ------------------------------------------------------------------------

#[test]
fn the_relay_keeps_tunnels_by_the_inside_agents_keepalive_interval() {
    let mut r = SimRelay::new(4, 2, 1);
    let mut inside = SimInside::saying(
        1,
        Shared {
            keepalive: 10,
            max_tunnels: 4,
        },
    );
    r.register(&mut inside, addr(0));
    r.send(addr(1), b"client");
    r.advance(secs(15));
    assert_eq!(
        r.relay.table().active(),
        1,
        "not forgotten after 2 x our 2 s"
    );
    r.advance(secs(6));
    assert_eq!(r.relay.table().active(), 0, "forgotten after 2 x its 10 s");
}

#[test]
fn the_relay_serves_no_more_clients_than_the_inside_agent_can_take() {
    let mut r = SimRelay::new(4, 25, 1);
    let mut inside = SimInside::saying(
        1,
        Shared {
            keepalive: 25,
            max_tunnels: 1,
        },
    );
    r.register(&mut inside, addr(0));
    r.send(addr(1), b"first");
    assert_eq!(
        r.send(addr(2), b"second"),
        (None, vec![]),
        "refused, not held for a spare that never comes"
    );
    assert_eq!(r.relay.table().waiting(), 0);
}

#[test]
fn a_message_of_another_protocol_version_is_refused_not_forwarded() {
    let mut r = SimRelay::new(4, 25, 1);
    let mut inside = SimInside::new(1);
    let (_, mut ka) = inside.open(addr(0));
    ka[4] = 1;
    assert_eq!(r.send(addr(0), &ka), (None, vec![]));
    assert_eq!(r.relay.table().waiting(), 0, "not taken for a client");
    assert_eq!(r.relay.drops().badauth.get(), 1);
}

#[test]
fn a_bad_mac_while_the_inside_agent_works_is_counted_as_forged_and_unanswered() {
    let mut r = SimRelay::new(4, 25, 1);
    let mut inside = SimInside::new(1);
    r.register(&mut inside, addr(0));
    let forged = Key::new(b"guess").seal(&rut::wire::Message::new(
        Kind::Keepalive,
        inside.instance(),
        9,
        1,
    ));
    assert_eq!(r.send(addr(5), &forged), (None, vec![]));
    assert_eq!(
        (r.relay.admissions().forged, r.relay.drops().badauth.get()),
        (1, 0)
    );
    // Once the agent has been silent for two intervals, a bad MAC points at its key again.
    r.advance(secs(51));
    assert_eq!(r.send(addr(5), &forged).1.len(), 1, "authfail notice");
    assert_eq!(r.relay.drops().badauth.get(), 1);
}

// ---- --wireguard: WireGuard's own admission checks ---------------------------------------------------------

const SERVER_KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

fn initiation(n: u32, cookie: Option<&[u8; 16]>) -> [u8; wireguard::INITIATION_LEN] {
    let mut m = [0u8; wireguard::INITIATION_LEN];
    m[0] = 1;
    m[4..8].copy_from_slice(&n.to_le_bytes());
    m[8..12].copy_from_slice(&n.to_be_bytes());
    wireguard::client_macs(&SERVER_KEY.parse().unwrap(), &mut m, cookie);
    m
}

fn wg_relay(n: usize) -> (SimRelay, SimInside) {
    let mut r = SimRelay::new(n, 25, 1);
    let pk: wireguard::PublicKey = SERVER_KEY.parse().unwrap();
    let relay = std::mem::replace(&mut r.relay, SimRelay::new(n, 25, 1).relay);
    r.relay = relay.with_wireguard(Admission::new(&pk, [5; 32], r.now));
    let mut inside = SimInside::new(1);
    for i in 0..n {
        r.register(&mut inside, addr(i));
    }
    (r, inside)
}

#[test]
fn with_wireguard_only_an_initiation_with_a_valid_mac1_gets_a_tunnel() {
    let (mut r, _) = wg_relay(4);
    assert_eq!(r.send(addr(50), b"garbage"), (None, vec![]));
    let mut bad = initiation(1, None);
    bad[20] ^= 1;
    assert_eq!(r.send(addr(51), &bad), (None, vec![]));
    let good = initiation(2, None);
    assert_eq!(r.send(addr(52), &good).0, Some(addr(0)));
    assert_eq!(
        r.send(addr(53), &good),
        (None, vec![]),
        "replayed from elsewhere"
    );
    let a = r.relay.admissions();
    assert_eq!((a.not_initiation, a.bad_mac1, a.replayed), (1, 1, 1));
    assert_eq!(r.relay.table().active(), 1);
    // The admitted client's later datagrams (transport data) flow as usual.
    assert_eq!(r.send(addr(52), &[4u8; 64]).0, Some(addr(0)));
}

#[test]
fn with_wireguard_under_load_a_source_must_answer_a_cookie_reply_at_its_address() {
    let (mut r, _) = wg_relay(8);
    for i in 0..7 {
        assert_eq!(
            r.send(addr(50 + i), &initiation(i as u32, None)).0,
            Some(addr(i))
        );
    }
    // Seven of eight tunnels in use: under load. The next initiation gets a cookie reply, smaller than it.
    let first = initiation(10, None);
    let (fwd, out) = r.send(addr(60), &first);
    assert_eq!(fwd, None);
    let reply = only(&out, addr(60));
    assert!(reply.len() < first.len());
    let pk = SERVER_KEY.parse().unwrap();
    let cookie = wireguard::client_open_cookie(&pk, &reply, &first).expect("a real cookie reply");
    // A retry with mac2 from another address does not verify there; from the address it does.
    let (fwd, _) = r.send(addr(61), &initiation(11, Some(&cookie)));
    assert_eq!(fwd, None);
    assert_eq!(
        r.send(addr(60), &initiation(12, Some(&cookie))).0,
        Some(addr(7))
    );
    assert_eq!(r.relay.admissions().cookies, 2);
}

/// A WireGuard client that roams (its NAT gives it a new address) sends transport data from an address the relay
/// does not know: dropped, no state. WireGuard recovers on its own: a client that hears nothing back for 15 s
/// (keepalive timeout + rekey timeout) sends a new handshake initiation, which gets a tunnel at the new address.
#[test]
fn with_wireguard_a_roaming_clients_transport_data_is_dropped_until_its_next_handshake() {
    let (mut r, _) = wg_relay(4);
    assert_eq!(r.send(addr(50), &initiation(1, None)).0, Some(addr(0)));
    assert_eq!(r.send(addr(51), &[4u8; 96]), (None, vec![]));
    assert_eq!(r.relay.admissions().not_initiation, 1);
    assert_eq!(r.send(addr(51), &initiation(2, None)).0, Some(addr(1)));
}
