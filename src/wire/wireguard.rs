//! WireGuard's own admission checks, done by the relay before it spends a tunnel on a stranger.
//!
//! With `--wireguard PUBLIC_KEY` the relay does for the WireGuard server behind it what that server does for
//! itself before any work (WireGuard paper §5.4.4 and §5.4.7): a new client gets a tunnel only with a handshake
//! initiation whose **mac1** proves that the sender knows the server's public key; each initiation is admitted
//! once; and under load only an initiation whose **mac2** proves that the sender receives at its source address.
//! None of this needs the server's private key. This module is pure computation: no sockets, no clock (the
//! caller passes `now`), no randomness (the caller passes a secret seed from the operating system).
//!
//! Wire formats (WireGuard paper §5.4; integers little-endian; "reserved" bytes are zero):
//!
//! ```text
//! handshake initiation, type 1, exactly 148 bytes
//! offset size  field
//!   0     1    type                 1
//!   1     3    reserved             0 0 0
//!   4     4    sender index         chosen by the initiator; a cookie reply echoes it
//!   8    32    ephemeral            the initiator's ephemeral public key, in clear
//!  40    48    encrypted static     the initiator's static public key (32) + AEAD tag (16)
//!  88    28    encrypted timestamp  TAI64N (12) + AEAD tag (16)
//! 116    16    mac1                 MAC(mac1 key, bytes 0..116)
//! 132    16    mac2                 MAC(cookie, bytes 0..132), or all zero without a cookie
//!
//! handshake response, type 2, exactly 92 bytes
//!   0     1    type                 2
//!   1     3    reserved             0 0 0
//!   4     4    sender index         chosen by the responder
//!   8     4    receiver index       the initiation's sender index
//!  12    32    ephemeral            the responder's ephemeral public key
//!  44    16    encrypted nothing    AEAD tag only
//!  60    16    mac1                 MAC(mac1 key of the initiator, bytes 0..60)
//!  76    16    mac2                 MAC(cookie, bytes 0..76), or all zero
//!
//! cookie reply, type 3, exactly 64 bytes
//!   0     1    type                 3
//!   1     3    reserved             0 0 0
//!   4     4    receiver index       the initiation's sender index
//!   8    24    nonce                unique per reply
//!  32    32    encrypted cookie     XChaCha20-Poly1305(cookie key, nonce, cookie (16), AAD = the initiation's mac1)
//!                                   = 16 bytes of ciphertext + 16 bytes of tag
//!
//! transport data, type 4, at least 32 bytes
//!   0     1    type                 4
//!   1     3    reserved             0 0 0
//!   4     4    receiver index       the index the receiving side chose during the handshake
//!   8     8    counter              nonce of the packet
//!  16   >=16   encrypted packet     ChaCha20-Poly1305; an empty packet (keepalive) is the tag alone
//! ```
//!
//! The keys and MACs:
//!
//! ```text
//! HASH(x)      = BLAKE2s-256(x)
//! MAC(key, x)  = keyed BLAKE2s (RFC 7693) with a 16-byte output
//! mac1 key     = HASH("mac1----" || server public key)
//! cookie key   = HASH("cookie--" || server public key)
//! cookie       = MAC(Rm, source address || source port)   Rm: a secret of the relay, one per 2-minute epoch
//! ```
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
//! use rut::wireguard::{Admission, PublicKey, Reason, Verdict};
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

use blake2::digest::consts::{U16, U32};
use blake2::digest::Mac;
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit as _, XChaCha20Poly1305};
use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Size of a handshake initiation.
pub const INITIATION_LEN: usize = 148;
/// Size of a handshake response.
pub const RESPONSE_LEN: usize = 92;
/// Size of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Smallest transport data message: a keepalive (header and tag, no payload).
pub const TRANSPORT_MIN_LEN: usize = 32;

/// Where mac1 and mac2 sit in an initiation.
const MAC1_AT: usize = 116;
const MAC2_AT: usize = 132;

const LABEL_MAC1: &[u8] = b"mac1----";
const LABEL_COOKIE: &[u8] = b"cookie--";
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

/// A WireGuard (Curve25519) public key: the string a client has as `[Peer] PublicKey`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

/// Why a public key did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// A character outside the standard base64 alphabet, misplaced padding, or a truncated group.
    NotBase64,
    /// Valid base64 of this many bytes.
    Not32Bytes(usize),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            KeyError::NotBase64 => write!(f, "not base64"),
            KeyError::Not32Bytes(n) => write!(f, "not 32 bytes (it decodes to {n})"),
        }
    }
}

impl std::error::Error for KeyError {}

impl PublicKey {
    /// Parse the 44-character base64 form that `wg pubkey` prints.
    pub fn from_base64(s: &str) -> Result<PublicKey, KeyError> {
        let bytes = decode_base64(s).ok_or(KeyError::NotBase64)?;
        let key = <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| KeyError::Not32Bytes(bytes.len()))?;
        Ok(PublicKey(key))
    }
}

/// The base64 form, as `wg pubkey` prints it.
impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for group in self.0.chunks(3) {
            let n = group
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..4 {
                let c = if i <= group.len() {
                    ALPHABET[(n >> (18 - 6 * i) & 63) as usize]
                } else {
                    b'='
                };
                write!(f, "{}", c as char)?;
            }
        }
        Ok(())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<PublicKey, KeyError> {
        PublicKey::from_base64(s)
    }
}

/// Standard base64 (RFC 4648 §4) with optional padding. Strict like `wg`: the unused low bits of the last
/// character must be zero, so each key has exactly one spelling.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    let body = s
        .strip_suffix(b"==")
        .or_else(|| s.strip_suffix(b"="))
        .unwrap_or(s);
    if body.len() != s.len() && s.len() % 4 != 0 {
        return None; // padding that does not complete a group of four
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in body {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // 6 leftover bits: one lone character, which carries no whole byte. Otherwise the leftover must be zero.
    if bits >= 6 || acc != 0 {
        return None;
    }
    Some(out)
}

/// The four WireGuard message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgType {
    Initiation = 1,
    Response = 2,
    CookieReply = 3,
    Transport = 4,
}

/// What a datagram is by shape (type byte, zero reserved bytes, size). Authenticity is another matter.
pub fn kind(msg: &[u8]) -> Option<MsgType> {
    if msg.len() < 4 || msg[1..4] != [0, 0, 0] {
        return None;
    }
    match (msg[0], msg.len()) {
        (1, INITIATION_LEN) => Some(MsgType::Initiation),
        (2, RESPONSE_LEN) => Some(MsgType::Response),
        (3, COOKIE_REPLY_LEN) => Some(MsgType::CookieReply),
        (4, n) if n >= TRANSPORT_MIN_LEN => Some(MsgType::Transport),
        _ => None,
    }
}

/// The sender index of an initiation or a response.
pub fn sender_index(msg: &[u8]) -> Option<u32> {
    match kind(msg)? {
        MsgType::Initiation | MsgType::Response => Some(le32(msg, 4)),
        _ => None,
    }
}

/// The receiver index of a response, a cookie reply or transport data.
pub fn receiver_index(msg: &[u8]) -> Option<u32> {
    match kind(msg)? {
        MsgType::Response => Some(le32(msg, 8)),
        MsgType::CookieReply | MsgType::Transport => Some(le32(msg, 4)),
        MsgType::Initiation => None,
    }
}

fn le32(msg: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([msg[at], msg[at + 1], msg[at + 2], msg[at + 3]])
}

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
    mac1_key: [u8; 32],
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
            mac1_key: hash(LABEL_MAC1, &pk.0),
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
        let mac1: [u8; 16] = msg[MAC1_AT..MAC2_AT].try_into().expect("16 bytes");
        if !mac_verifies(&self.mac1_key, &msg[..MAC1_AT], &mac1) {
            return Verdict::Drop(Reason::BadMac1);
        }
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
            if mac_verifies(&cookie, &msg[..MAC2_AT], &msg[MAC2_AT..]) {
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
        r[0] = MsgType::CookieReply as u8;
        r[4..8].copy_from_slice(&initiation[4..8]);
        r[8..32].copy_from_slice(&nonce);
        r[32..48].copy_from_slice(cookie);
        let tag = self
            .cookie_cipher
            .encrypt_in_place_detached(&nonce.into(), mac1, &mut r[32..48])
            .expect("XChaCha20-Poly1305 fails only for messages of 256 GiB");
        r[48..64].copy_from_slice(&tag);
        CookieReply(r)
    }
}

/// What a WireGuard client does to an initiation for `server` before sending it: mac1, and mac2 when it holds a
/// cookie from a cookie reply. The relay never needs this; tests and the benchmark build initiations with it.
pub fn client_macs(server: &PublicKey, msg: &mut [u8; INITIATION_LEN], cookie: Option<&[u8; 16]>) {
    let mac1 = mac(&hash(LABEL_MAC1, &server.0), &msg[..MAC1_AT]);
    msg[MAC1_AT..MAC2_AT].copy_from_slice(&mac1);
    let mac2 = cookie.map_or([0; 16], |c| mac(c, &msg[..MAC2_AT]));
    msg[MAC2_AT..].copy_from_slice(&mac2);
}

/// What a WireGuard client does with a cookie reply to its `initiation`: the cookie, if the reply opens.
pub fn client_open_cookie(server: &PublicKey, reply: &[u8], initiation: &[u8]) -> Option<[u8; 16]> {
    if reply.len() != COOKIE_REPLY_LEN
        || initiation.len() != INITIATION_LEN
        || reply[4..8] != initiation[4..8]
    {
        return None;
    }
    let cipher = XChaCha20Poly1305::new(&hash(LABEL_COOKIE, &server.0).into());
    let mut cookie: [u8; 16] = reply[32..48].try_into().ok()?;
    let nonce: [u8; 24] = reply[8..32].try_into().ok()?;
    cipher
        .decrypt_in_place_detached(
            &nonce.into(),
            &initiation[MAC1_AT..MAC2_AT],
            &mut cookie,
            reply[48..64].into(),
        )
        .ok()?;
    Some(cookie)
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

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// HASH(label || key).
fn hash(label: &[u8], key: &[u8; 32]) -> [u8; 32] {
    Blake2s256::new()
        .chain_update(label)
        .chain_update(key)
        .finalize()
        .into()
}

fn keyed_mac(key: &[u8]) -> Blake2sMac<U16> {
    <Blake2sMac<U16> as Mac>::new_from_slice(key).expect("BLAKE2s takes keys of up to 32 bytes")
}

/// MAC(key, data): keyed BLAKE2s-128.
fn mac(key: &[u8], data: &[u8]) -> [u8; 16] {
    keyed_mac(key)
        .chain_update(data)
        .finalize()
        .into_bytes()
        .into()
}

/// MAC(key, data) == tag, in constant time.
fn mac_verifies(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
    keyed_mac(key).chain_update(data).verify_slice(tag).is_ok()
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
mod tests {
    use super::*;

    // The known-answer vector, captured from wireguard-go 0.0.20220316 by tests/wireguard_vectors.sh: the client
    // sent INITIATION1 (no cookie yet), got REPLY from this module under load (seed SEED, epoch 0), accepted it and
    // sent INITIATION2 on its retry, with mac2 computed from the cookie it decrypted.
    const PUBLIC_KEY: &str = "x9dE+9IYq9RQviZB2NDdW8okuo5HGMkOEC38lkRTFkw=";
    const SOURCE: &str = "127.0.0.1:51820";
    const SEED: [u8; 32] = *b"reverse-udp-tunnel test seed 32b";
    const INITIATION1: &str = "01000000d2ce8ab0e51e0259bf374c1dad140cedb6ab94f8c12a52eb430bbecccebe291c1412d123ab11\
        4f4e176f75a506cd391d2c036abf9f00b936b6af3d8a6664726288b176d87932b62bf8c4c339514645712932e37e39f29f53d87221f0\
        5735307bc60dd27e2798989b802edd58fd57335eaeefc200c88c62d22a1767785e86a9b100000000000000000000000000000000";
    const REPLY: &str =
        "03000000d2ce8ab073dfdf0749cf5556a8ddf063cfe230b05c1ee9c5befe5ca2013bbc671c70c665944cbb03\
        ae85bed35aa137246d837fe0d5b0c31f3ede1bbf";
    const INITIATION2: &str = "01000000a61fc18933d59cd2d87a4b6773eecfcecc2e606859b28e2ff2104705d7015f74f229f34ebd42fa\
        2024525ca4fbafa5bf7f135a051b92427d233fbd92f43c8a615ff91efa923e86cf6a5b860b1ab563a8336a9ab88ce45affc73d435ca1\
        a4e301e8883c7bc47eb4ef53c892e5bc7ee23dd18a32b0f8f961f2cbb5bdf3b2ff17bda9ceebf66bb52c74ecc8ccefaab5a2e6";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

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
        m[4..8].copy_from_slice(&(n as u32).to_le_bytes());
        m[8..16].copy_from_slice(&n.to_le_bytes());
        let mac1 = mac(&hash(LABEL_MAC1, &pk().0), &m[..MAC1_AT]);
        m[MAC1_AT..MAC2_AT].copy_from_slice(&mac1);
        m
    }

    /// What a WireGuard client does with a cookie reply to `initiation`: decrypt the cookie, then key the mac2 of
    /// its next initiation `next` with it.
    fn client_adds_mac2(reply: &CookieReply, initiation: &[u8], next: &mut [u8; INITIATION_LEN]) {
        assert_eq!(
            reply.0[4..8],
            initiation[4..8],
            "the reply names the initiation's sender index"
        );
        let cookie = client_open_cookie(&pk(), &reply.0, initiation)
            .expect("the cookie reply opens under the cookie key with mac1 as associated data");
        let mac2 = mac(&cookie, &next[..MAC2_AT]);
        next[MAC2_AT..].copy_from_slice(&mac2);
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
                MAC1_AT * 8 - 1,
                MAC1_AT * 8,
                MAC2_AT * 8 - 1,
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
        let v =
            Admission::new(&other, SEED, t0).check(t0, addr(SOURCE), &unhex(INITIATION1), false);
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
        m[MAC2_AT..].fill(0xa5);
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
        assert_ne!(r1.0[8..32], r2.0[8..32]);
        assert_eq!(kind(&r1.0), Some(MsgType::CookieReply));
        assert_eq!(receiver_index(&r1.0), Some(0x0102_0304));
        assert_eq!(receiver_index(&r2.0), Some(0x0a0b_0c0d));
        // The same cookie in both (same source, same epoch), sealed differently.
        let (mut n1, mut n2) = (forge(5), forge(6));
        client_adds_mac2(&r1, &m1, &mut n1);
        client_adds_mac2(&r2, &m2, &mut n2);
        assert_eq!(
            n1[MAC2_AT..],
            mac(
                &mac(&a.secret(0), Source::of(addr(SOURCE)).bytes()),
                &n1[..MAC2_AT]
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

    #[test]
    fn kinds_and_indexes_by_shape() {
        let mut resp = [0u8; RESPONSE_LEN];
        resp[0] = 2;
        resp[4..8].copy_from_slice(&7u32.to_le_bytes());
        resp[8..12].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(kind(&resp), Some(MsgType::Response));
        assert_eq!(
            (sender_index(&resp), receiver_index(&resp)),
            (Some(7), Some(9))
        );
        let mut data = vec![4u8, 0, 0, 0, 5, 0, 0, 0];
        data.resize(TRANSPORT_MIN_LEN - 1, 0);
        assert_eq!(kind(&data), None);
        data.push(0);
        assert_eq!(kind(&data), Some(MsgType::Transport));
        assert_eq!(
            (sender_index(&data), receiver_index(&data)),
            (None, Some(5))
        );
        data.resize(1500, 0);
        assert_eq!(kind(&data), Some(MsgType::Transport));
        let init = unhex(INITIATION1);
        assert_eq!(kind(&init), Some(MsgType::Initiation));
        assert_eq!(
            (sender_index(&init), receiver_index(&init)),
            (Some(0xb08a_ced2), None)
        );
        assert_eq!(kind(&unhex(REPLY)), Some(MsgType::CookieReply));
        assert_eq!(kind(&[5, 0, 0, 0]), None);
        assert_eq!(kind(&resp[..91]), None);
    }

    #[test]
    fn public_key_base64() {
        let k = PublicKey::from_base64(PUBLIC_KEY).unwrap();
        assert_eq!(k.0[..3], [0xc7, 0xd7, 0x44]);
        assert_eq!(
            PublicKey::from_base64(&PUBLIC_KEY[..43]),
            Ok(k),
            "padding is optional"
        );
        let all_ones = "//////////////////////////////////////////8=";
        assert_eq!(PublicKey::from_base64(all_ones).map(|k| k.0[31]), Ok(0xff));
        let bad = [
            (
                "x9dE+9IYq9RQviZB2NDdW8okuo5HGMkOEC38lkRTFk!=",
                KeyError::NotBase64,
            ),
            (
                "x9dE-9IYq9RQviZB2NDdW8okuo5HGMkOEC38lkRTFkw=",
                KeyError::NotBase64,
            ), // URL-safe alphabet
            (
                "x9dE+9IYq9RQviZB2NDdW8okuo5HGMkOEC38lkRTFkx=",
                KeyError::NotBase64,
            ), // low bits set
            (
                "x9dE+9IYq9RQviZB2NDdW8okuo5HGMkOEC38lkRTFkw==",
                KeyError::NotBase64,
            ), // padding beyond the group
            (
                " x9dE+9IYq9RQviZB2NDdW8okuo5HGMkOEC38lkRTFkw=",
                KeyError::NotBase64,
            ),
            (
                "x9dE+9IYq9RQviZB2NDdW8okuo5HGMkOEC38lkRTFkw=\n",
                KeyError::NotBase64,
            ),
            ("=", KeyError::NotBase64),
            ("A", KeyError::NotBase64),
            ("", KeyError::Not32Bytes(0)),
            ("AAAA", KeyError::Not32Bytes(3)),
            (
                "x9dE+9IYq9RQviZB2NDdW8okuo5HGMkOEC38lkRTFkw=AAAA",
                KeyError::NotBase64,
            ),
            (
                "x9dE+9IYq9RQviZB2NDdW8okuo5HGMkOEC38lkRTFkwAAAA=",
                KeyError::Not32Bytes(35),
            ),
        ];
        for (s, e) in bad {
            assert_eq!(PublicKey::from_base64(s), Err(e), "{s:?}");
        }
        assert_eq!(k.to_string(), PUBLIC_KEY);
        assert_eq!(PublicKey([0xff; 32]).to_string(), all_ones);
        assert_eq!(KeyError::NotBase64.to_string(), "not base64");
        assert_eq!(
            KeyError::Not32Bytes(3).to_string(),
            "not 32 bytes (it decodes to 3)"
        );
    }
}
