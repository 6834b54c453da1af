//! The control message: round trips, the documented layout, and what authentication refuses.

use super::*;

fn sample() -> Message {
    let mut m = Message::new(Kind::Response, Instance([9; 16]), 0xdead_beef, u64::MAX - 1);
    m.active = true;
    m.cookie = [3; 8];
    m.shared = Shared {
        keepalive: 25,
        max_tunnels: 0x0102_0304,
    };
    m.answered = true;
    m.carrying = 0x0a0b_0c0d;
    m.client = Some("[2001:db8::7]:51820".parse().unwrap());
    m.local = Some("127.0.0.1:48606".parse().unwrap());
    m
}

#[test]
fn round_trip_every_kind() {
    let key = Key::new(b"k");
    for kind in [
        Kind::Keepalive,
        Kind::Challenge,
        Kind::Response,
        Kind::Ack,
        Kind::Close,
        Kind::Drop,
    ] {
        let m = Message { kind, ..sample() };
        assert_eq!(key.open(&key.seal(&m)), Ok(m));
    }
}

#[test]
fn ack_carries_the_waiting_count() {
    let key = Key::new(b"k");
    let mut ack = sample().reply(Kind::Ack);
    ack.waiting = 200;
    let b = key.seal(&ack);
    assert_eq!(b[7], 200);
    assert_eq!(key.open(&b), Ok(ack));
}

#[test]
fn layout_is_as_documented() {
    let b = Key::new(b"k").seal(&sample());
    assert_eq!(b.len(), LEN);
    assert_eq!(&b[..8], &[0xff, b'R', b'U', b'T', 4, 3, 3, 0]);
    assert_eq!(&b[field::INSTANCE..field::TUNNEL], &[9; 16]);
    assert_eq!(&b[24..28], &[0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(&b[28..36], &(u64::MAX - 1).to_be_bytes());
    assert_eq!(&b[36..44], &[3; 8]);
    assert_eq!(&b[44..48], &[0, 0, 0, 25]);
    assert_eq!(&b[48..52], &[1, 2, 3, 4]);
    assert_eq!(&b[52..56], &[10, 11, 12, 13]);
    let mut v6 = [0u8; 16];
    v6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    v6[15] = 7;
    assert_eq!(&b[56..72], &v6);
    assert_eq!(&b[72..74], &51820u16.to_be_bytes());
    assert_eq!(
        &b[74..90],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]
    );
    assert_eq!(&b[90..92], &48606u16.to_be_bytes());
    assert_eq!(&b[92..100], &Key::new(b"k").id().0);
    assert_eq!(KeyId::of(&b), Some(Key::new(b"k").id()));
    assert_eq!(field::MAC + 32, LEN);
    let none = Key::new(b"k").seal(&Message::new(Kind::Ack, Instance([1; 16]), 1, 1));
    assert_eq!(&none[56..92], &[0; 36], "no address: all zero");
}

#[test]
fn addresses_round_trip_and_half_addresses_are_malformed() {
    let key = Key::new(b"k");
    for a in ["192.0.2.1:1", "[::1]:65535", "[2001:db8::1]:51820"] {
        let m = Message {
            client: Some(a.parse().unwrap()),
            ..sample()
        };
        assert_eq!(key.open(&key.seal(&m)), Ok(m), "{a}");
    }
    for (at, port) in [(field::CLIENT, [0, 0]), (field::LOCAL, [0, 0])] {
        let mut b = key.seal(&sample());
        b[at + 16..at + 18].copy_from_slice(&port);
        reseal(&key, &mut b);
        assert_eq!(
            key.open(&b),
            Err(Error::Malformed),
            "address without port at {at}"
        );
        b[at..at + 16].fill(0);
        b[at + 16] = 1;
        reseal(&key, &mut b);
        assert_eq!(
            key.open(&b),
            Err(Error::Malformed),
            "port without address at {at}"
        );
    }
}

fn reseal(key: &Key, b: &mut [u8; LEN]) {
    let mut m = key.mac.clone();
    m.update(&b[..MAC_AT]);
    b[MAC_AT..].copy_from_slice(&m.finalize().into_bytes());
}

#[test]
fn truncated_extended_and_garbage_are_data() {
    let key = Key::new(b"k");
    let b = key.seal(&sample());
    for n in (0..LEN).filter(|n| !OLD_LENS.contains(n)) {
        assert_eq!(
            key.open(&b[..n]),
            Err(Error::NotControl),
            "truncated to {n}"
        );
    }
    let mut long = b.to_vec();
    long.push(0);
    assert_eq!(key.open(&long), Err(Error::NotControl));
    assert_eq!(key.open(&[0x55; LEN]), Err(Error::NotControl));
    let mut wrong_version = b;
    wrong_version[4] = 1;
    assert_eq!(
        key.open(&wrong_version),
        Err(Error::Version(1)),
        "recognised, refused"
    );
    for (len, version) in OLD_LENS.into_iter().zip([2, 3]) {
        let mut old = vec![0u8; len];
        old[..4].copy_from_slice(&MAGIC);
        old[4] = version;
        assert!(
            looks_like_control(&old),
            "version {version}'s length: never data"
        );
        assert_eq!(key.open(&old), Err(Error::Version(version)));
        assert_eq!(KeyId::of(&old), None);
    }
}

#[test]
fn the_key_id_names_the_key_without_being_it() {
    let (a, b) = (Key::new(b"a"), Key::new(b"b"));
    assert_ne!(a.id(), b.id());
    assert_eq!(a.id(), Key::new(b"a").id(), "a function of the key alone");
    // A message that names another key fails before its MAC is computed; one whose id was changed to ours
    // still fails at the MAC.
    let mut m = b.seal(&sample());
    assert_eq!(a.open(&m), Err(Error::BadMac));
    m[92..100].copy_from_slice(&a.id().0);
    assert_eq!(KeyId::of(&m), Some(a.id()));
    assert_eq!(a.open(&m), Err(Error::BadMac));
    assert_eq!(KeyId::of(&Key::authfail_notice()), Some(KeyId([0; 8])));
    assert_eq!(KeyId::of(b"data"), None);
}

#[test]
fn any_flipped_bit_fails_authentication() {
    let key = Key::new(b"k");
    let b = key.seal(&sample());
    for i in 4..LEN {
        for bit in 0..8 {
            let mut c = b;
            c[i] ^= 1 << bit;
            let r = key.open(&c);
            assert!(
                r == Err(Error::BadMac)
                    || (i == 4 && matches!(r, Err(Error::Version(_))))
                    || (i == 5 && r == Err(Error::AuthFailNotice)),
                "byte {i}"
            );
        }
    }
}

#[test]
fn wrong_key_and_empty_key() {
    let b = Key::new(b"a").seal(&sample());
    assert_eq!(Key::new(b"b").open(&b), Err(Error::BadMac));
    let empty = Key::new(b"");
    assert_eq!(empty.open(&empty.seal(&sample())), Ok(sample()));
    assert_eq!(empty.open(&b), Err(Error::BadMac));
}

#[test]
fn unknown_kind_or_flags_are_malformed_even_when_authentic() {
    let key = Key::new(b"k");
    for (at, val) in [(5, 0u8), (5, 8), (6, 4), (6, 0x80), (7, 1)] {
        let mut b = key.seal(&sample());
        b[at] = val;
        reseal(&key, &mut b);
        assert_eq!(key.open(&b), Err(Error::Malformed), "byte {at} = {val}");
    }
}

#[test]
fn authfail_notice_is_recognised_but_never_trusted() {
    let n = Key::authfail_notice();
    assert!(looks_like_control(&n));
    assert_eq!(Key::new(b"k").open(&n), Err(Error::AuthFailNotice));
}
