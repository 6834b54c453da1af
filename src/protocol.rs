//! Control messages: the wire format, and the one parser that reads it.
//!
//! Data datagrams travel with no header at all. Control messages share the tunnel sockets with data, so they
//! are recognised by shape *and* authenticity: a datagram is a control message only if it is exactly
//! [`LEN`] bytes, starts with the magic and version, and its HMAC verifies. Every control message has the same
//! size, so the relay never answers with more bytes than it received. A message with the magic and another
//! version is recognised as such (never forwarded as data) and refused, so mixed releases say so.
//!
//! ```text
//! offset size  field
//!  0      4    magic      ff 52 55 54  ("\xffRUT")
//!  4      1    version    2
//!  5      1    kind       1 keepalive  2 challenge  3 response  4 ack  5 close  6 drop  7 authfail
//!  6      1    flags      bit 0: the tunnel carries a client (active); other bits 0
//!  7      1    waiting    ack: new clients waiting at the relay for a spare (saturating at 255); 0 otherwise
//!  8     16    instance   random id of one run of the inside agent
//! 24      4    tunnel     tunnel number within that run, big-endian
//! 28      8    counter    big-endian; inside→relay: strictly increasing within a run;
//!                         relay→inside: the counter of the message being answered
//! 36      8    cookie     the relay's stateless challenge (challenge, response); zero otherwise
//! 44      4    keepalive  the sender's --keepaliveInterval in seconds, big-endian (0: not said)
//! 48      4    tunnels    the sender's -n, big-endian (0: not said)
//! 52     32    mac        HMAC-SHA256(key, bytes 0..52); all zero in authfail, which is not authenticated
//! ```
//!
//! docs/PROTOCOL.md explains the exchanges and why they defeat replay, hijacking and restart lock-out.
//!
//! ```
//! use rut::protocol::{Key, Kind, Message, Instance};
//! let key = Key::new(b"mysecret");
//! let msg = Message::new(Kind::Keepalive, Instance([7; 16]), 1, 42);
//! let wire = key.seal(&msg);
//! assert_eq!(key.open(&wire), Ok(msg));
//! assert!(Key::new(b"other").open(&wire).is_err());
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::SocketAddr;
use std::time::Instant;

/// Size of every control message.
pub const LEN: usize = 84;
pub const MAGIC: [u8; 4] = [0xff, b'R', b'U', b'T'];
/// The protocol version this release speaks. (Version 1, in release 1.0, had a 16-byte cookie and no settings.)
pub const VERSION: u8 = 2;
const MAC_AT: usize = 52;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// inside→relay: "tunnel N of run I is alive at this address"
    Keepalive = 1,
    /// relay→inside: "prove you are at this address": carries a cookie
    Challenge = 2,
    /// inside→relay: a keepalive that echoes the cookie
    Response = 3,
    /// relay→inside: keepalive accepted
    Ack = 4,
    /// inside→relay: the tunnel is closed, forget it now
    Close = 5,
    /// relay→inside: the relay will not route this tunnel; close it
    Drop = 6,
    /// relay→inside, unauthenticated: "your message failed authentication" (a hint for the log only)
    AuthFail = 7,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Keepalive,
            2 => Kind::Challenge,
            3 => Kind::Response,
            4 => Kind::Ack,
            5 => Kind::Close,
            6 => Kind::Drop,
            7 => Kind::AuthFail,
            _ => return None,
        })
    }
}

/// Bytes from the operating system's generator (getrandom).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::TryRngCore;
    let mut b = [0u8; N];
    rand::rngs::OsRng
        .try_fill_bytes(&mut b)
        .expect("the OS random generator works");
    b
}

/// Random id of one run of the inside agent: a restarted agent is a new instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Instance(pub [u8; 16]);

impl Instance {
    pub fn random() -> Instance {
        Instance(random_bytes())
    }
}

impl std::fmt::Display for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        self.0[..4].iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub active: bool,
    /// Ack only: how many new clients wait for a spare, so the inside agent can open that many at once.
    pub waiting: u8,
    pub instance: Instance,
    pub tunnel: u32,
    pub counter: u64,
    pub cookie: [u8; 8],
    /// The sender's settings that must agree on both sides.
    pub shared: Shared,
}

/// Settings that both sides must share, said in every message so a mismatch is noticed, not suffered: the
/// relay follows the inside agent's keepalive interval for its tunnels and the smaller `-n`, and warns once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shared {
    /// `--keepaliveInterval` in seconds; 0 when not said.
    pub keepalive: u32,
    /// `-n`; 0 when not said.
    pub max_tunnels: u32,
}

impl Message {
    pub fn new(kind: Kind, instance: Instance, tunnel: u32, counter: u64) -> Message {
        Message {
            kind,
            active: false,
            waiting: 0,
            instance,
            tunnel,
            counter,
            cookie: [0; 8],
            shared: Shared::default(),
        }
    }

    /// The relay's answer to `self`: same instance, tunnel and counter.
    pub fn reply(&self, kind: Kind) -> Message {
        Message {
            kind,
            ..Message::new(kind, self.instance, self.tunnel, self.counter)
        }
    }

    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.kind as u8;
        b[6] = self.active as u8;
        b[7] = self.waiting;
        b[8..24].copy_from_slice(&self.instance.0);
        b[24..28].copy_from_slice(&self.tunnel.to_be_bytes());
        b[28..36].copy_from_slice(&self.counter.to_be_bytes());
        b[36..44].copy_from_slice(&self.cookie);
        b[44..48].copy_from_slice(&self.shared.keepalive.to_be_bytes());
        b[48..52].copy_from_slice(&self.shared.max_tunnels.to_be_bytes());
        b
    }

    fn decode(b: &[u8; LEN]) -> Result<Message, Error> {
        let kind = Kind::from_u8(b[5]).ok_or(Error::Malformed)?;
        if b[6] > 1 || (b[7] != 0 && kind != Kind::Ack) {
            return Err(Error::Malformed);
        }
        Ok(Message {
            kind,
            active: b[6] == 1,
            waiting: b[7],
            instance: Instance(b[8..24].try_into().unwrap()),
            tunnel: u32::from_be_bytes(b[24..28].try_into().unwrap()),
            counter: u64::from_be_bytes(b[28..36].try_into().unwrap()),
            cookie: b[36..44].try_into().unwrap(),
            shared: Shared {
                keepalive: u32::from_be_bytes(b[44..48].try_into().unwrap()),
                max_tunnels: u32::from_be_bytes(b[48..52].try_into().unwrap()),
            },
        })
    }
}

/// Why a datagram is not an acceptable control message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Not shaped like a control message: it is data.
    NotControl,
    /// Shaped like one but the MAC does not verify (wrong key, forgery or corruption).
    BadMac,
    /// An authfail notice: unauthenticated by design, never acted upon beyond a log line.
    AuthFailNotice,
    /// The MAC verifies but a field holds a value this version does not know.
    Malformed,
    /// The magic, but another protocol version: the other side runs another release.
    Version(u8),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Error::NotControl => "not a control message",
            Error::BadMac => "failed authentication",
            Error::AuthFailNotice => "an authfail notice",
            Error::Malformed => "authentic but malformed",
            Error::Version(_) => "of another protocol version",
        })
    }
}

impl std::error::Error for Error {}

/// Cheap test run on every datagram: length and magic (any version). Only a match costs an HMAC.
#[inline]
pub fn looks_like_control(buf: &[u8]) -> bool {
    buf.len() == LEN && buf[..4] == MAGIC
}

/// The shared secret, with the HMAC key schedule done once.
#[derive(Clone)]
pub struct Key {
    mac: Hmac<Sha256>,
}

impl Key {
    pub fn new(secret: &[u8]) -> Key {
        Key {
            mac: Hmac::new_from_slice(secret).expect("HMAC takes keys of any length"),
        }
    }

    /// Encode and authenticate a message.
    pub fn seal(&self, msg: &Message) -> [u8; LEN] {
        let mut b = msg.encode();
        let mut m = self.mac.clone();
        m.update(&b[..MAC_AT]);
        b[MAC_AT..].copy_from_slice(&m.finalize().into_bytes());
        b
    }

    /// Parse and verify a datagram; the MAC is compared in constant time before any field is trusted.
    pub fn open(&self, buf: &[u8]) -> Result<Message, Error> {
        if !looks_like_control(buf) {
            return Err(Error::NotControl);
        }
        let b: &[u8; LEN] = buf.try_into().unwrap();
        if b[4] != VERSION {
            return Err(Error::Version(b[4]));
        }
        if b[5] == Kind::AuthFail as u8 {
            return Err(Error::AuthFailNotice);
        }
        let mut m = self.mac.clone();
        m.update(&b[..MAC_AT]);
        m.verify_slice(&b[MAC_AT..]).map_err(|_| Error::BadMac)?;
        Message::decode(b)
    }

    /// Unauthenticated "your MAC failed" notice: same size as what it answers, carries nothing secret.
    pub fn authfail_notice() -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = Kind::AuthFail as u8;
        b
    }
}

/// Who one run of the inside agent is: the key, the run's random instance id and its message counter. Shared by
/// the coordinator and the tunnel threads, which all seal messages.
pub struct Identity {
    pub key: Key,
    pub instance: Instance,
    /// One counter for the whole run, so messages of every tunnel are fresh whatever the clock says. A mutex,
    /// not an AtomicU64: MIPS32 has no 64-bit atomics, and a control message costs an HMAC anyway.
    counter: std::sync::Mutex<u64>,
    /// This agent's settings, said in every message.
    shared: Shared,
}

impl Identity {
    pub fn new(key: &[u8], instance: Instance, shared: Shared) -> Identity {
        Identity {
            key: Key::new(key),
            instance,
            counter: std::sync::Mutex::new(0),
            shared,
        }
    }

    /// Seal a fresh inside→relay message: the counter strictly increases across all tunnels of the run.
    pub fn seal(&self, kind: Kind, tunnel: u32, active: bool, cookie: [u8; 8]) -> [u8; LEN] {
        let counter = {
            let mut c = self.counter.lock().unwrap_or_else(|e| e.into_inner());
            *c += 1;
            *c
        };
        let mut m = Message::new(kind, self.instance, tunnel, counter);
        m.active = active;
        m.cookie = cookie;
        m.shared = self.shared;
        self.key.seal(&m)
    }
}

/// The relay's stateless challenge, as DTLS's HelloVerifyRequest: a MAC (64 bits of HMAC-SHA256), under a secret
/// that lives only in this relay process, of the claimed tunnel, the address it came from and a coarse clock.
/// Guessing one for an address the guesser does not receive at takes about 2^63 tries within its 10 s life. Answering it proves
/// the sender receives at that address and holds the shared key, so a replayed keepalive from anywhere else
/// registers nothing, and the relay stores nothing until the answer arrives.
pub struct Cookies {
    mac: Hmac<Sha256>,
    start: Instant,
}

/// A cookie is valid for between one and two of these periods.
const COOKIE_PERIOD_SECS: u64 = 5;
/// The longest a cookie stays valid.
pub const COOKIE_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(2 * COOKIE_PERIOD_SECS);

impl Cookies {
    /// `secret` lives only in this relay process (the OS generator gives it); epochs count from `start`.
    pub fn new(secret: [u8; 32], start: Instant) -> Cookies {
        Cookies {
            mac: Hmac::new_from_slice(&secret).expect("HMAC takes keys of any length"),
            start,
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs() / COOKIE_PERIOD_SECS
    }

    fn compute(&self, epoch: u64, from: SocketAddr, msg: &Message) -> [u8; 8] {
        let mut m = self.mac.clone();
        m.update(&epoch.to_be_bytes());
        match from {
            SocketAddr::V4(a) => m.update(&a.ip().to_ipv6_mapped().octets()),
            SocketAddr::V6(a) => m.update(&a.ip().octets()),
        }
        m.update(&from.port().to_be_bytes());
        m.update(&msg.instance.0);
        m.update(&msg.tunnel.to_be_bytes());
        m.finalize().into_bytes()[..8].try_into().unwrap()
    }

    pub fn issue(&self, now: Instant, from: SocketAddr, msg: &Message) -> [u8; 8] {
        self.compute(self.epoch(now), from, msg)
    }

    /// Checks `msg.cookie` for `from`, in constant time.
    pub fn check(&self, now: Instant, from: SocketAddr, msg: &Message) -> bool {
        let e = self.epoch(now);
        let ok = |epoch| {
            let want = self.compute(epoch, from, msg);
            want.iter()
                .zip(msg.cookie.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
        };
        ok(e) | (e > 0 && ok(e - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        let mut m = Message::new(Kind::Response, Instance([9; 16]), 0xdead_beef, u64::MAX - 1);
        m.active = true;
        m.cookie = [3; 8];
        m.shared = Shared {
            keepalive: 25,
            max_tunnels: 0x0102_0304,
        };
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
        assert_eq!(&b[..8], &[0xff, b'R', b'U', b'T', 2, 3, 1, 0]);
        assert_eq!(&b[8..24], &[9; 16]);
        assert_eq!(&b[24..28], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&b[28..36], &(u64::MAX - 1).to_be_bytes());
        assert_eq!(&b[36..44], &[3; 8]);
        assert_eq!(&b[44..48], &[0, 0, 0, 25]);
        assert_eq!(&b[48..52], &[1, 2, 3, 4]);
    }

    #[test]
    fn truncated_extended_and_garbage_are_data() {
        let key = Key::new(b"k");
        let b = key.seal(&sample());
        for n in 0..LEN {
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
        for (at, val) in [(5, 0u8), (5, 8), (6, 2), (7, 1)] {
            let mut b = key.seal(&sample());
            b[at] = val;
            let mut m = key.mac.clone();
            m.update(&b[..MAC_AT]);
            b[MAC_AT..].copy_from_slice(&m.finalize().into_bytes());
            assert_eq!(key.open(&b), Err(Error::Malformed), "byte {at} = {val}");
        }
    }

    #[test]
    fn authfail_notice_is_recognised_but_never_trusted() {
        let n = Key::authfail_notice();
        assert!(looks_like_control(&n));
        assert_eq!(Key::new(b"k").open(&n), Err(Error::AuthFailNotice));
    }

    #[test]
    fn cookie_binds_address_tunnel_and_time() {
        let now = Instant::now();
        let c = Cookies::new([1; 32], now);
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:1001".parse().unwrap();
        let mut m = sample();
        m.cookie = c.issue(now, a, &m);
        assert!(c.check(now, a, &m));
        assert!(!c.check(now, b, &m), "another address");
        let other_tunnel = Message { tunnel: 1, ..m };
        assert!(!c.check(now, a, &other_tunnel));
        let later = now + std::time::Duration::from_secs(3 * COOKIE_PERIOD_SECS);
        assert!(!c.check(later, a, &m), "expired");
        assert!(
            !Cookies::new([2; 32], now).check(now, a, &m),
            "another relay process"
        );
    }
}
