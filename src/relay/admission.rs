//! WireGuard's own admission checks, done by the relay before it spends a tunnel on a stranger.
//!
//! With `--wireguard PUBLIC_KEY` the relay does for the WireGuard server behind it what that server does for
//! itself before any work (WireGuard paper §5.4.4 and §5.4.7): a new client gets a tunnel only with a handshake
//! initiation whose **mac1** proves that the sender knows the server's public key; each initiation is admitted
//! once; and under load only an initiation whose **mac2** proves that the sender receives at its source address.
//! None of this needs the server's private key. This module decides it, as pure computation: no sockets, no
//! clock (the caller passes `now`), no randomness (the caller passes a secret seed from the operating system).
//!
//! The message formats, offsets and keyed hashes it reads are WireGuard's own, in `wire/wireguard.rs`.
//!
//! The cookie is opaque to the client (it only stores it and keys mac2 with it), so what goes into it is the
//! relay's choice. This module hashes the source as the Linux kernel does: the IPv4 address as 4 bytes or the
//! IPv6 address as 16, then the port big-endian. An IPv4-mapped IPv6 source (`::ffff:a.b.c.d`, as a dual-stack
//! socket reports IPv4 peers) is first turned back into IPv4, so the caller need not normalise. (wireguard-go
//! hashes its `netip.AddrPort.MarshalBinary()`, which puts the port little-endian; either is fine.)
//!
//! Rm for epoch `e` (epochs of [`COOKIE_SECRET_LIFETIME`] counted from the `start` given to [`Admission::new`])
//! and the nonce of the `n`-th cookie reply are derived from the seed by keyed BLAKE2s over a label and `e` or
//! `n`: reproducible in tests, unpredictable to anyone without the seed, and no nonce repeats within a run (a
//! new run has a new seed).
//!
//! ```
//! use rut::relay::{Admission, Reason, Verdict};
//! use rut::wire::wireguard::PublicKey;
//! use std::time::Instant;
//! let pk = PublicKey::from_base64("HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=").unwrap();
//! let now = Instant::now();
//! let mut admission = Admission::new(&pk, [7; 32], now);
//! let src = "192.0.2.1:51820".parse().unwrap();
//! assert_eq!(admission.check(now, src, b"garbage", false), Verdict::Drop(Reason::NotInitiation));
//! assert_eq!(admission.check(now, src, &[1; 148], false), Verdict::Drop(Reason::NotInitiation));
//! let mut forged = [0u8; 148];
//! forged[0] = 1;
//! assert_eq!(admission.check(now, src, &forged, false), Verdict::Drop(Reason::BadMac1));
//! ```

use crate::wire::wireguard::{
    field, hash, kind, mac, mac_verifies, Mac1Check, MsgType, PublicKey, COOKIE_REPLY_LEN,
    LABEL_COOKIE,
};
use blake2::digest::consts::U32;
use blake2::digest::Mac;
use blake2::Blake2sMac;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit as _, XChaCha20Poly1305};
use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Domain separation of what the relay derives from its seed (the two labels differ in length, so no input to
/// one derivation equals an input to the other).
const LABEL_SECRET: &[u8] = b"reverse-udp-tunnel wireguard Rm";
const LABEL_NONCE: &[u8] = b"reverse-udp-tunnel wireguard nonce";

/// How long one cookie secret Rm is used for new cookies; a cookie stays valid for mac2 one epoch longer.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);

/// Every initiation's mac1 is remembered at least this long (unless the capacity below is reached first).
pub const REPLAY_WINDOW: Duration = Duration::from_secs(60);
/// The replay filter holds at most 2 × this many mac1 values (16 bytes each): about 600 KB when full.
pub const REPLAY_CAPACITY: usize = 8192;

/// What the relay does with a datagram from an address that has no tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Give it a tunnel and forward it.
    Admit,
    /// Send this cookie reply back to the source, spend nothing else.
    Reply(CookieReply),
    /// Drop it and count the reason.
    Drop(Reason),
}

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not shaped like a handshake initiation: only an initiation may open a tunnel.
    NotInitiation,
    /// Shaped like one, but mac1 does not verify: the sender does not know the server's public key.
    BadMac1,
    /// These exact bytes were seen recently: a replay (a real client builds a new initiation for every retry).
    /// A copy that overtakes the original takes its place, as at a WireGuard server (whose timestamp check then
    /// rejects the original); the client retries with a new initiation 5 seconds later.
    Replayed,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Reason::NotInitiation => "not a handshake initiation",
            Reason::BadMac1 => "bad mac1",
            Reason::Replayed => "replayed initiation",
        })
    }
}

/// A cookie reply (type 3), ready to send.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CookieReply(pub [u8; COOKIE_REPLY_LEN]);

impl fmt::Debug for CookieReply {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "CookieReply(")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, ")")
    }
}

/// The relay's admission checker for one WireGuard server public key.
pub struct Admission {
    mac1: Mac1Check,
    cookie_cipher: XChaCha20Poly1305,
    seed: [u8; 32],
    start: Instant,
    /// Cookie replies sent so far: the input of the next reply's nonce.
    replies: u64,
    /// Rm of the two most recent epochs used, indexed by epoch parity: the current and the previous epoch always
    /// sit in different slots.
    secrets: [Option<(u64, [u8; 32])>; 2],
    seen: Seen,
}

impl Admission {
    /// `seed`: 32 secret random bytes (from the operating system in the relay; fixed in tests). `start`: the
    /// instant at which cookie epochs begin.
    pub fn new(pk: &PublicKey, seed: [u8; 32], start: Instant) -> Admission {
        let cookie_key = hash(LABEL_COOKIE, &pk.0);
        Admission {
            mac1: Mac1Check::new(pk),
            cookie_cipher: XChaCha20Poly1305::new(&cookie_key.into()),
            seed,
            start,
            replies: 0,
            secrets: [None, None],
            seen: Seen::new(),
        }
    }

    /// Decide about `msg`, received at `now` from `src` by an address that has no tunnel. `under_load` is the
    /// relay's judgement (slots nearly full, or admissions outpacing the inside agent): then only a valid mac2
    /// admits, and an initiation without one is answered with a cookie reply, as a WireGuard server under load
    /// does. A wrong or stale mac2 also gets a (fresh) cookie reply, never a silent drop, so that a client whose
    /// cookie expired recovers on its next retry.
    ///
    /// Garbage costs a length and type test; an initiation costs one BLAKE2s of 116 bytes before anything else.
    pub fn check(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: &[u8],
        under_load: bool,
    ) -> Verdict {
        if kind(msg) != Some(MsgType::Initiation) {
            return Verdict::Drop(Reason::NotInitiation);
        }
        if !self.mac1_verifies(msg) {
            return Verdict::Drop(Reason::BadMac1);
        }
        self.check_verified(now, src, msg, under_load)
    }

    /// Whether the mac1 of `initiation` (a datagram [`kind`] says is one) verifies for this server key: one
    /// BLAKE2s of 116 bytes. With `--homes`, this says which home a new client is for.
    pub fn mac1_verifies(&self, initiation: &[u8]) -> bool {
        self.mac1.verifies(initiation)
    }

    /// Whether the replay filter holds the mac1 of `initiation`: a hash lookup, checked before any BLAKE2s when
    /// several homes would each cost one.
    pub fn replayed(&self, initiation: &[u8]) -> bool {
        let mac1: [u8; 16] = initiation[field::MAC1].try_into().expect("16 bytes");
        self.seen.contains(&mac1)
    }

    /// [`Admission::check`] for an initiation whose mac1 verified: replays, then mac2 under load. (Not inlined:
    /// one copy for both callers, in the static binaries' size budget.)
    #[inline(never)]
    pub fn check_verified(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: &[u8],
        under_load: bool,
    ) -> Verdict {
        let mac1: [u8; 16] = msg[field::MAC1].try_into().expect("16 bytes");
        // Counted as seen even when answered with a cookie: the client's retry is a new initiation.
        if !self.seen.insert(now, mac1) {
            return Verdict::Drop(Reason::Replayed);
        }
        if !under_load {
            return Verdict::Admit;
        }
        let epoch = self.epoch(now);
        let source = Source::of(src);
        for e in [Some(epoch), epoch.checked_sub(1)].into_iter().flatten() {
            let cookie = mac(&self.secret(e), source.bytes());
            if mac_verifies(&cookie, &msg[..field::MAC2.start], &msg[field::MAC2]) {
                return Verdict::Admit;
            }
        }
        let cookie = mac(&self.secret(epoch), source.bytes());
        Verdict::Reply(self.cookie_reply(msg, &mac1, &cookie))
    }

    /// How many mac1 values the replay filter holds now (at most 2 × [`REPLAY_CAPACITY`]).
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    fn epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs() / COOKIE_SECRET_LIFETIME.as_secs()
    }

    /// Rm of `epoch`.
    fn secret(&mut self, epoch: u64) -> [u8; 32] {
        let slot = &mut self.secrets[(epoch % 2) as usize];
        match slot {
            Some((e, rm)) if *e == epoch => *rm,
            _ => {
                let rm = prf(&self.seed, LABEL_SECRET, epoch);
                *slot = Some((epoch, rm));
                rm
            }
        }
    }

    fn cookie_reply(
        &mut self,
        initiation: &[u8],
        mac1: &[u8; 16],
        cookie: &[u8; 16],
    ) -> CookieReply {
        let nonce: [u8; 24] = prf(&self.seed, LABEL_NONCE, self.replies)[..24]
            .try_into()
            .expect("24 bytes");
        self.replies += 1;
        let mut r = [0u8; COOKIE_REPLY_LEN];
        r[field::TYPE] = MsgType::CookieReply as u8;
        r[field::RECEIVER].copy_from_slice(&initiation[field::SENDER]);
        r[field::NONCE].copy_from_slice(&nonce);
        r[field::COOKIE].copy_from_slice(cookie);
        let tag = self
            .cookie_cipher
            .encrypt_in_place_detached(&nonce.into(), mac1, &mut r[field::COOKIE])
            .expect("XChaCha20-Poly1305 fails only for messages of 256 GiB");
        r[field::COOKIE_TAG].copy_from_slice(&tag);
        CookieReply(r)
    }
}

/// The UDP source as hashed into a cookie: address (4 or 16 bytes) then port, big-endian.
struct Source {
    buf: [u8; 18],
    len: usize,
}

impl Source {
    fn of(src: SocketAddr) -> Source {
        let mut buf = [0u8; 18];
        let len = match src.ip().to_canonical() {
            IpAddr::V4(a) => {
                buf[..4].copy_from_slice(&a.octets());
                4
            }
            IpAddr::V6(a) => {
                buf[..16].copy_from_slice(&a.octets());
                16
            }
        };
        buf[len..len + 2].copy_from_slice(&src.port().to_be_bytes());
        Source { buf, len: len + 2 }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The mac1 values of recent initiations, in two generations: an initiation is remembered from when it is seen
/// until the generation after its own ends, that is for at least [`REPLAY_WINDOW`] and at most twice that.
/// A generation also ends when it holds [`REPLAY_CAPACITY`] values, so memory stays bounded whatever the rate;
/// only a sender of fresh mac1-valid initiations (who knows the public key, and so has no need to replay) can
/// make it end early.
struct Seen {
    current: HashSet<[u8; 16]>,
    previous: HashSet<[u8; 16]>,
    /// When `current` began; None before the first insertion.
    since: Option<Instant>,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            current: HashSet::new(),
            previous: HashSet::new(),
            since: None,
        }
    }

    /// Remember `mac1`; false if it was already remembered.
    fn insert(&mut self, now: Instant, mac1: [u8; 16]) -> bool {
        let age = self
            .since
            .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
        if age >= 2 * REPLAY_WINDOW {
            // Both generations ended more than a window ago: forget them.
            self.current.clear();
            self.previous.clear();
            self.since = Some(now);
        } else if age >= REPLAY_WINDOW {
            self.rotate(now);
        }
        if self.current.contains(&mac1) || self.previous.contains(&mac1) {
            return false;
        }
        if self.current.len() >= REPLAY_CAPACITY {
            self.rotate(now);
        }
        self.current.insert(mac1);
        true
    }

    fn rotate(&mut self, now: Instant) {
        std::mem::swap(&mut self.current, &mut self.previous);
        self.current.clear(); // keeps its allocation: no churn under a steady flood
        self.since = Some(now);
    }

    fn contains(&self, mac1: &[u8; 16]) -> bool {
        self.current.contains(mac1) || self.previous.contains(mac1)
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// 32 pseudo-random bytes for (label, n), keyed by the seed.
fn prf(seed: &[u8; 32], label: &[u8], n: u64) -> [u8; 32] {
    <Blake2sMac<U32> as Mac>::new_from_slice(seed)
        .expect("BLAKE2s takes keys of up to 32 bytes")
        .chain_update(label)
        .chain_update(n.to_le_bytes())
        .finalize()
        .into_bytes()
        .into()
}

#[cfg(test)]
mod tests;
