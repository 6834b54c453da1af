//! The relay's WireGuard admission, checked against the known-answer vector captured from wireguard-go
//! (crate::wire::wireguard's tests hold it) and against floods, replays and stale cookies.

use super::*;
use crate::wire::wireguard::tests::{unhex, INITIATION1, INITIATION2, PUBLIC_KEY, REPLY};
use crate::wire::wireguard::{client_open_cookie, receiver_index, INITIATION_LEN, LABEL_MAC1};

const SOURCE: &str = "127.0.0.1:51820";
const SEED: [u8; 32] = *b"reverse-udp-tunnel test seed 32b";

fn pk() -> PublicKey {
    PUBLIC_KEY.parse().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn admission(t0: Instant) -> Admission {
    Admission::new(&pk(), SEED, t0)
}

/// An initiation with a valid mac1 and no mac2, as anyone who knows the public key can build: `n` makes it
/// unique.
fn forge(n: u64) -> [u8; INITIATION_LEN] {
    let mut m = [0u8; INITIATION_LEN];
    m[0] = 1;
    m[field::SENDER].copy_from_slice(&(n as u32).to_le_bytes());
    m[8..16].copy_from_slice(&n.to_le_bytes());
    let mac1 = mac(&hash(LABEL_MAC1, &pk().0), &m[field::MAC1_COVERS]);
    m[field::MAC1].copy_from_slice(&mac1);
    m
}

/// What a WireGuard client does with a cookie reply to `initiation`: decrypt the cookie, then key the mac2 of
/// its next initiation `next` with it.
fn client_adds_mac2(reply: &CookieReply, initiation: &[u8], next: &mut [u8; INITIATION_LEN]) {
    assert_eq!(
        reply.0[field::RECEIVER],
        initiation[field::SENDER],
        "the reply names the initiation's sender index"
    );
    let cookie = client_open_cookie(&pk(), &reply.0, initiation)
        .expect("the cookie reply opens under the cookie key with mac1 as associated data");
    let mac2 = mac(&cookie, &next[..field::MAC2.start]);
    next[field::MAC2].copy_from_slice(&mac2);
}

fn reply_of(v: Verdict) -> CookieReply {
    match v {
        Verdict::Reply(r) => r,
        other => panic!("expected a cookie reply, got {other:?}"),
    }
}

#[test]
fn vector_mac1_verifies_and_a_flipped_bit_fails() {
    let t0 = Instant::now();
    for msg in [unhex(INITIATION1), unhex(INITIATION2)] {
        assert_eq!(
            admission(t0).check(t0, addr(SOURCE), &msg, false),
            Verdict::Admit
        );
        for bit in [
            0,
            7 * 8 + 3,
            60 * 8,
            field::MAC1.start * 8 - 1,
            field::MAC1.start * 8,
            field::MAC2.start * 8 - 1,
        ] {
            let mut bad = msg.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let expect = if bit < 8 {
                Reason::NotInitiation
            } else {
                Reason::BadMac1
            };
            assert_eq!(
                admission(t0).check(t0, addr(SOURCE), &bad, false),
                Verdict::Drop(expect),
                "bit {bit}"
            );
        }
    }
    let other = PublicKey::from_base64("HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=").unwrap();
    let v = Admission::new(&other, SEED, t0).check(t0, addr(SOURCE), &unhex(INITIATION1), false);
    assert_eq!(v, Verdict::Drop(Reason::BadMac1));
}

#[test]
fn vector_cookie_reply_is_byte_for_byte_what_wireguard_go_accepted() {
    let t0 = Instant::now();
    let mut a = admission(t0);
    let reply = reply_of(a.check(t0, addr(SOURCE), &unhex(INITIATION1), true));
    assert_eq!(reply.0.to_vec(), unhex(REPLY));
    // Still within the capture's epoch; the client's retry carries mac2 from the decrypted cookie.
    let later = t0 + Duration::from_secs(7);
    assert_eq!(
        a.check(later, addr(SOURCE), &unhex(INITIATION2), true),
        Verdict::Admit
    );
    assert_eq!(
        a.check(later, addr(SOURCE), &unhex(INITIATION2), true),
        Verdict::Drop(Reason::Replayed)
    );
}

#[test]
fn vector_mac2_binds_the_source_address_and_port() {
    let t0 = Instant::now();
    for other in ["127.0.0.2:51820", "127.0.0.1:51821", "[::1]:51820"] {
        let v = admission(t0).check(t0, addr(other), &unhex(INITIATION2), true);
        assert!(matches!(v, Verdict::Reply(_)), "{other}: {v:?}");
    }
    // The same source seen through a dual-stack socket, as an IPv4-mapped address, is the same source.
    let mapped = addr("[::ffff:127.0.0.1]:51820");
    assert_eq!(
        admission(t0).check(t0, mapped, &unhex(INITIATION2), true),
        Verdict::Admit
    );
    // A different seed is a different relay: its cookies differ.
    let mut stranger = Admission::new(&pk(), [0; 32], t0);
    assert!(matches!(
        stranger.check(t0, addr(SOURCE), &unhex(INITIATION2), true),
        Verdict::Reply(_)
    ));
}

#[test]
fn not_under_load_mac2_is_not_needed_and_not_checked() {
    let t0 = Instant::now();
    let mut a = admission(t0);
    let mut m = forge(1);
    m[field::MAC2].fill(0xa5);
    assert_eq!(a.check(t0, addr(SOURCE), &m, false), Verdict::Admit);
    assert_eq!(a.check(t0, addr(SOURCE), &forge(2), false), Verdict::Admit);
}

#[test]
fn replay_from_any_address_is_dropped_also_after_a_cookie_reply() {
    let t0 = Instant::now();
    let mut a = admission(t0);
    let m = forge(1);
    assert_eq!(
        a.check(t0, addr("192.0.2.1:1000"), &m, false),
        Verdict::Admit
    );
    for (src, load) in [
        ("192.0.2.1:1000", false),
        ("198.51.100.7:2000", false),
        ("[2001:db8::1]:3", true),
    ] {
        assert_eq!(
            a.check(t0, addr(src), &m, load),
            Verdict::Drop(Reason::Replayed),
            "{src}"
        );
    }
    let m = forge(2);
    reply_of(a.check(t0, addr("192.0.2.1:1000"), &m, true));
    assert_eq!(
        a.check(t0, addr("192.0.2.2:1000"), &m, false),
        Verdict::Drop(Reason::Replayed)
    );
}

#[test]
fn replay_window_remembers_between_one_and_two_windows() {
    let t0 = Instant::now();
    let mut a = admission(t0);
    let m = forge(1);
    assert_eq!(a.check(t0, addr(SOURCE), &m, false), Verdict::Admit);
    let almost = t0 + REPLAY_WINDOW - Duration::from_millis(1);
    assert_eq!(
        a.check(almost, addr(SOURCE), &m, false),
        Verdict::Drop(Reason::Replayed)
    );
    // A new generation begins; the old one is still remembered.
    assert_eq!(
        a.check(t0 + REPLAY_WINDOW, addr(SOURCE), &forge(2), false),
        Verdict::Admit
    );
    let t = t0 + 2 * REPLAY_WINDOW - Duration::from_millis(1);
    assert_eq!(
        a.check(t, addr(SOURCE), &m, false),
        Verdict::Drop(Reason::Replayed)
    );
    // Quiet for two windows: all forgotten.
    assert_eq!(
        a.check(t0 + 4 * REPLAY_WINDOW, addr(SOURCE), &m, false),
        Verdict::Admit
    );
    assert_eq!(a.remembered(), 1);
}

#[test]
fn replay_filter_stays_bounded_under_100000_distinct_initiations() {
    let t0 = Instant::now();
    let mut a = admission(t0);
    let mut peak = 0;
    for n in 0..100_000u64 {
        // 2000 sources, all within one second: the capacity, not the window, must bound the memory.
        let src = SocketAddr::from(([10, 0, (n % 2000 / 256) as u8, (n % 256) as u8], 40000));
        let now = t0 + Duration::from_micros(n * 10);
        // Those answered with a cookie count as well (a few: replies are slow in debug builds).
        let load = n % 64 == 1;
        let v = a.check(now, src, &forge(n), load);
        assert!(
            matches!(
                (load, v),
                (false, Verdict::Admit) | (true, Verdict::Reply(_))
            ),
            "{n}"
        );
        peak = peak.max(a.remembered());
    }
    assert_eq!(peak, 2 * REPLAY_CAPACITY);
    // The most recent ones are still refused.
    let last = forge(99_999);
    let v = a.check(t0 + Duration::from_secs(1), addr(SOURCE), &last, false);
    assert_eq!(v, Verdict::Drop(Reason::Replayed));
}

#[test]
fn cookie_from_the_previous_epoch_passes_from_two_epochs_ago_fails() {
    let t0 = Instant::now();
    let src = addr("203.0.113.9:4500");
    for (age_epochs, admitted) in [(0, true), (1, true), (2, false), (5, false)] {
        let mut a = admission(t0);
        let first = forge(1);
        let issued = t0 + Duration::from_secs(119); // late in epoch 0
        let reply = reply_of(a.check(issued, src, &first, true));
        let mut retry = forge(2);
        client_adds_mac2(&reply, &first, &mut retry);
        let now = t0 + COOKIE_SECRET_LIFETIME * age_epochs + Duration::from_secs(1);
        let v = a.check(now, src, &retry, true);
        if admitted {
            assert_eq!(v, Verdict::Admit, "{age_epochs} epochs later");
        } else {
            // A stale cookie earns a fresh one, which then works.
            let fresh = reply_of(v);
            let mut again = forge(3);
            client_adds_mac2(&fresh, &retry, &mut again);
            assert_eq!(
                a.check(now, src, &again, true),
                Verdict::Admit,
                "{age_epochs} epochs later"
            );
        }
    }
}

#[test]
fn each_cookie_reply_has_its_own_nonce_and_echoes_the_sender_index() {
    let t0 = Instant::now();
    let mut a = admission(t0);
    let (m1, m2) = (forge(0x0102_0304), forge(0x0a0b_0c0d));
    let r1 = reply_of(a.check(t0, addr(SOURCE), &m1, true));
    let r2 = reply_of(a.check(t0, addr(SOURCE), &m2, true));
    assert_ne!(r1.0[field::NONCE], r2.0[field::NONCE]);
    assert_eq!(kind(&r1.0), Some(MsgType::CookieReply));
    assert_eq!(receiver_index(&r1.0), Some(0x0102_0304));
    assert_eq!(receiver_index(&r2.0), Some(0x0a0b_0c0d));
    // The same cookie in both (same source, same epoch), sealed differently.
    let (mut n1, mut n2) = (forge(5), forge(6));
    client_adds_mac2(&r1, &m1, &mut n1);
    client_adds_mac2(&r2, &m2, &mut n2);
    assert_eq!(
        n1[field::MAC2],
        mac(
            &mac(&a.secret(0), Source::of(addr(SOURCE)).bytes()),
            &n1[..field::MAC2.start]
        )
    );
    assert_eq!(a.check(t0, addr(SOURCE), &n2, true), Verdict::Admit);
}

#[test]
fn anything_but_a_148_byte_initiation_is_not_an_initiation() {
    let t0 = Instant::now();
    let mut a = admission(t0);
    let init = forge(1);
    let mut cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![1],
        init[..147].to_vec(),
        [&init[..], &[0]].concat(),
        unhex(REPLY),
        vec![0; 148],
    ];
    for t in [2u8, 3, 4] {
        let mut m = init.to_vec();
        m[0] = t;
        cases.push(m);
    }
    for r in 1..4 {
        let mut m = init.to_vec();
        m[r] = 1;
        cases.push(m);
    }
    for m in cases {
        for load in [false, true] {
            let v = a.check(t0, addr(SOURCE), &m, load);
            assert_eq!(
                v,
                Verdict::Drop(Reason::NotInitiation),
                "{} bytes {:02x?}",
                m.len(),
                &m[..m.len().min(4)]
            );
        }
    }
    assert_eq!(a.remembered(), 0);
}
