//! The table's own rules, one event at a time: spares handed out and routed both ways, waiting clients served in
//! order, holding and roaming bounded, and removed tunnels kept out for as long as a replay could bring them back.

use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], port))
}

const KA: Duration = Duration::from_secs(1);

fn key(n: u32) -> TunnelKey {
    TunnelKey {
        run: Instance([1; 16]),
        id: n,
    }
}

#[test]
fn spare_is_handed_to_a_new_client_and_routes_both_ways() {
    let mut tb = Table::default();
    let now = Instant::now();
    let (t, _) = tb.register(key(1), addr(1000), 1, KA, now);
    assert_eq!(tb.route(&addr(1000)), Route::Unrouted);
    assert_eq!(tb.route(&addr(5)), Route::New);
    assert_eq!(tb.take_spare(), Some(t));
    tb.assign(addr(5), t, now);
    assert_eq!(tb.route(&addr(5)), Route::To(addr(1000)));
    assert_eq!(tb.route(&addr(1000)), Route::Answer(addr(5), t));
    assert_eq!((tb.active(), tb.spares()), (1, 0));
    tb.remove(t);
    assert_eq!(tb.route(&addr(5)), Route::New);
    assert_eq!(tb.route(&addr(1000)), Route::New);
    assert_eq!(tb.active(), 0);
}

#[test]
fn waiting_clients_are_served_in_order_with_their_datagrams() {
    let mut tb = Table::default();
    let now = Instant::now();
    assert!(tb.hold(addr(5), b"a", now));
    assert!(tb.hold(addr(6), b"x", now));
    assert!(tb.hold(addr(5), b"b", now));
    assert_eq!(tb.route(&addr(5)), Route::Hold);
    assert_eq!(tb.waiting(), 2);
    let (a, d) = tb.next_waiting().unwrap();
    assert_eq!((a, d), (addr(5), vec![b"a".to_vec(), b"b".to_vec()]));
    assert_eq!(tb.route(&addr(5)), Route::New);
    assert_eq!(tb.next_waiting().unwrap().0, addr(6));
    assert!(tb.next_waiting().is_none());
    assert_eq!(tb.held.bytes, 0);
}

#[test]
fn holding_is_bounded() {
    let mut tb = Table::default();
    let now = Instant::now();
    for _ in 0..HOLD_PER_ADDR {
        assert!(tb.hold(addr(5), b"a", now));
    }
    assert!(!tb.hold(addr(5), b"a", now));
    let big = vec![0u8; 60_000];
    let mut port = 100;
    while tb.hold(addr(port), &big, now) {
        port += 1;
    }
    assert!(tb.held.bytes <= HOLD_TOTAL_BYTES);
    assert_eq!(
        tb.expire_held(now + Duration::from_secs(60), Duration::from_secs(1)),
        HOLD_PER_ADDR + (port - 100) as usize
    );
    assert_eq!((tb.waiting(), tb.held.bytes), (0, 0));
}

#[test]
fn roaming_tunnel_keeps_its_client_and_reclaims_a_mistaken_client_address() {
    let mut tb = Table::default();
    let now = Instant::now();
    let (t, _) = tb.register(key(1), addr(1000), 1, KA, now);
    tb.take_spare();
    tb.assign(addr(5), t, now);
    // The tunnel's data arrived from its new address before its keepalive: taken for a new client.
    let (s, _) = tb.register(key(2), addr(2000), 1, KA, now);
    tb.take_spare();
    tb.assign(addr(1001), s, now);
    let (displaced, held) = tb.move_to(t, addr(1001));
    assert_eq!((displaced, held.len()), (Some(s), 0));
    assert_eq!(tb.route(&addr(1001)), Route::Answer(addr(5), t));
    assert_eq!(tb.route(&addr(5)), Route::To(addr(1001)));
    assert_eq!(tb.route(&addr(1000)), Route::New);
    assert_eq!(tb.get(s).unwrap().client, None);
    assert_eq!(tb.active(), 1);
}

#[test]
fn roaming_claims_are_bounded() {
    let mut tb = Table::default();
    let now = Instant::now();
    for port in 0..(HOLD_ADDRS + 100) as u16 {
        tb.expect_roam(addr(port), now);
    }
    assert_eq!(tb.held.by_addr.len(), HOLD_ADDRS);
    assert_eq!(tb.route(&addr(HOLD_ADDRS as u16 + 50)), Route::New);
}

#[test]
fn roam_hold_is_flushed_on_move() {
    let mut tb = Table::default();
    let now = Instant::now();
    let (t, _) = tb.register(key(1), addr(1000), 1, KA, now);
    tb.expect_roam(addr(1001), now);
    assert!(tb.hold(addr(1001), b"d", now));
    assert_eq!(tb.waiting(), 0, "a roam hold is not a waiting client");
    let (_, held) = tb.move_to(t, addr(1001));
    assert_eq!(held, vec![b"d".to_vec()]);
}

#[test]
fn a_refused_response_never_registers_later_a_fresher_one_does() {
    let mut tb = Table::default();
    let now = Instant::now();
    tb.refuse(key(1), 9, now);
    tb.refuse(key(1), 4, now); // an older copy, later: the bar stays at 9
    assert!(
        !tb.may_register(&key(1), 9),
        "a late copy of the refused one"
    );
    assert!(!tb.may_register(&key(1), 4));
    assert!(tb.may_register(&key(1), 10), "the agent's retry");
    let (t, _) = tb.register(key(2), addr(1000), 5, KA, now);
    tb.close(t, now);
    tb.refuse(key(2), 6, now);
    assert!(!tb.may_register(&key(2), 100), "closed stays closed");
    tb.expire_gone(now + Duration::from_secs(11), Duration::from_secs(10));
    assert_eq!(
        tb.gone.len(),
        0,
        "remembered for the cookie's lifetime only"
    );
}

#[test]
fn closed_tunnels_never_come_back_expired_ones_only_with_a_fresher_counter() {
    let mut tb = Table::default();
    let now = Instant::now();
    let (t, _) = tb.register(key(1), addr(1000), 5, KA, now);
    tb.register(key(2), addr(1001), 7, KA, now);
    assert!(tb.may_register(&key(1), 1));
    tb.close(t, now);
    assert_eq!(tb.expire(now + Duration::from_secs(3)).len(), 1);
    assert!(!tb.may_register(&key(1), 100), "closed: never again");
    assert!(
        !tb.may_register(&key(2), 7),
        "expired: a replay of its last response"
    );
    assert!(
        tb.may_register(&key(2), 8),
        "expired: a fresh response after an outage"
    );
    tb.expire_gone(now + Duration::from_secs(10), Duration::from_secs(10));
    assert_eq!(tb.gone.len(), 2);
    tb.expire_gone(now + Duration::from_secs(14), Duration::from_secs(10));
    assert_eq!(tb.gone.len(), 0);
    assert!(tb.may_register(&key(1), 1));
}

#[test]
fn expiry_and_instance_removal() {
    let mut tb = Table::default();
    let now = Instant::now();
    tb.register(key(1), addr(1000), 1, KA, now);
    let (t2, _) = tb.register(
        TunnelKey {
            run: Instance([2; 16]),
            id: 1,
        },
        addr(1001),
        1,
        KA,
        now + Duration::from_secs(5),
    );
    assert_eq!(tb.remove_instance(Instance([1; 16])).len(), 1);
    assert_eq!(tb.find(&key(1)), None);
    assert_eq!(tb.expire(now + Duration::from_secs(6)).len(), 0);
    assert_eq!(tb.expire(now + Duration::from_secs(8))[0].addr, addr(1001));
    assert_eq!(
        (
            tb.spares(),
            tb.find(&TunnelKey {
                run: Instance([2; 16]),
                id: 1
            })
        ),
        (0, None)
    );
    let _ = t2;
}
