//! Control messages: the wire format, and the one parser that reads it.
//!
//! Data datagrams travel with no header at all. Control messages share the tunnel sockets with data, so they
//! are recognised by shape *and* authenticity: a datagram is a control message only if it is exactly
//! [`LEN`] bytes, starts with the magic and version, and its HMAC verifies. Every control message has the same
//! size, so the relay never answers with more bytes than it received. A message with the magic and another
//! version (also at the 84 bytes of versions 1 and 2 and the 124 of version 3) is recognised as such (never
//! forwarded as data) and refused, so mixed releases say so.
//!
//! The key id names the key a message is sealed with, so that a relay serving many homes (`--homes`) finds the
//! one key to verify with, not one per home. It is a MAC of a fixed label under the key: it reveals nothing a
//! message's own MAC does not (with a weak key, both let a guess be checked offline).
//!
//! ```text
//! offset size  field
//!  0      4    magic      ff 52 55 54  ("\xffRUT")
//!  4      1    version    4
//!  5      1    kind       1 keepalive  2 challenge  3 response  4 ack  5 close  6 drop  7 authfail
//!  6      1    flags      bit 0: the tunnel carries a client (active); bit 1: the service has answered that
//!                         client through it (proven); other bits 0
//!  7      1    waiting    ack: new clients waiting at the relay for a spare (saturating at 255); 0 otherwise
//!  8     16    instance   random id of one run of the inside agent
//! 24      4    tunnel     tunnel number within that run, big-endian
//! 28      8    counter    big-endian; inside→relay: strictly increasing within a run;
//!                         relay→inside: the counter of the message being answered
//! 36      8    cookie     the relay's stateless challenge (challenge, response); zero otherwise
//! 44      4    keepalive  the sender's --keepaliveInterval in seconds, big-endian (0: not said)
//! 48      4    tunnels    the sender's -n, big-endian (0: not said)
//! 52      4    carrying   inside→relay: how many tunnels of this run carry a client, big-endian; 0 from the relay
//! 56     16    client     the tunnel's client: IPv6 address, IPv4 as ::ffff:a.b.c.d (all zero: none) ...
//! 72      2               ... and its port, big-endian (0: none)
//! 74     16    local      inside→relay: the address the service sees this tunnel at (all zero: not said) ...
//! 90      2               ... and its port
//! 92      8    key id     the first 8 bytes of HMAC-SHA256(key, "reverse-udp-tunnel key id"); zero in authfail
//! 100    32    mac        HMAC-SHA256(key, bytes 0..100); all zero in authfail, which is not authenticated
//! ```
//!
//! docs/PROTOCOL.md explains the exchanges and why they defeat replay, hijacking and restart lock-out.
//!
//! ```
//! use rut::wire::{Instance, Key, Kind, Message};
//! let key = Key::new(b"mysecret");
//! let msg = Message::new(Kind::Keepalive, Instance([7; 16]), 1, 42);
//! let wire = key.seal(&msg);
//! assert_eq!(key.open(&wire), Ok(msg));
//! assert!(Key::new(b"other").open(&wire).is_err());
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Size of every control message.
pub const LEN: usize = 132;
/// Sizes of the control messages of versions 1 and 2, and of version 3: still recognised, so that they are
/// refused, not forwarded.
pub const OLD_LENS: [usize; 2] = [84, 124];
pub const MAGIC: [u8; 4] = [0xff, b'R', b'U', b'T'];
/// The protocol version this release speaks. (Version 1, in release 1.0, had a 16-byte cookie and no settings;
/// version 2 had no client, local address or carrying count; version 3, in release 1.1, no key id.)
pub const VERSION: u8 = 4;
/// The label the key id is a MAC of.
const KEY_ID_LABEL: &[u8] = b"reverse-udp-tunnel key id";

/// Where each field starts (the layout above): encode, decode and the layout test read them from here.
mod field {
    pub const VERSION: usize = 4;
    pub const KIND: usize = 5;
    pub const FLAGS: usize = 6;
    pub const WAITING: usize = 7;
    pub const INSTANCE: usize = 8;
    pub const TUNNEL: usize = 24;
    pub const COUNTER: usize = 28;
    pub const COOKIE: usize = 36;
    pub const KEEPALIVE: usize = 44;
    pub const TUNNELS: usize = 48;
    pub const CARRYING: usize = 52;
    pub const CLIENT: usize = 56;
    pub const LOCAL: usize = 74;
    pub const KEY_ID: usize = 92;
    pub const MAC: usize = 100;
    /// An address field: 16 bytes of IPv6 address, 2 of port.
    pub const ADDR_LEN: usize = 18;
}
const MAC_AT: usize = field::MAC;
const ACTIVE: u8 = 1;
const ANSWERED: u8 = 2;

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

/// Random id of one run of the inside agent: a restarted agent is a new instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Instance(pub [u8; 16]);

impl std::fmt::Display for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        self.0[..4].iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub active: bool,
    /// The service has answered the tunnel's client through it: the client proved itself (see the relay's
    /// admission). Said by the relay in acks and repeated by the inside agent in its claims.
    pub answered: bool,
    /// Ack only: how many new clients wait for a spare, so the inside agent can open that many at once.
    pub waiting: u8,
    pub instance: Instance,
    pub tunnel: u32,
    pub counter: u64,
    pub cookie: [u8; 8],
    /// The sender's settings that must agree on both sides.
    pub shared: Shared,
    /// Inside→relay: how many tunnels of the run carry a client (the relay waits for the missing ones to come
    /// back before it gives their clients' addresses new tunnels).
    pub carrying: u32,
    /// The tunnel's client. Relay→inside (ack): whom the relay routes through it. Inside→relay (keepalive,
    /// response): the binding the inside agent was told, from which a relay that lost it restores it.
    pub client: Option<SocketAddr>,
    /// Inside→relay: the address the service sees this tunnel at (for the relay's table).
    pub local: Option<SocketAddr>,
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
            answered: false,
            carrying: 0,
            client: None,
            local: None,
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
        use field::*;
        let mut b = [0u8; LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[VERSION] = self::VERSION;
        b[KIND] = self.kind as u8;
        b[FLAGS] = if self.active { ACTIVE } else { 0 } | if self.answered { ANSWERED } else { 0 };
        b[WAITING] = self.waiting;
        b[INSTANCE..TUNNEL].copy_from_slice(&self.instance.0);
        b[TUNNEL..COUNTER].copy_from_slice(&self.tunnel.to_be_bytes());
        b[COUNTER..COOKIE].copy_from_slice(&self.counter.to_be_bytes());
        b[COOKIE..KEEPALIVE].copy_from_slice(&self.cookie);
        b[KEEPALIVE..TUNNELS].copy_from_slice(&self.shared.keepalive.to_be_bytes());
        b[TUNNELS..CARRYING].copy_from_slice(&self.shared.max_tunnels.to_be_bytes());
        b[CARRYING..CLIENT].copy_from_slice(&self.carrying.to_be_bytes());
        put_addr(&mut b[CLIENT..CLIENT + ADDR_LEN], self.client);
        put_addr(&mut b[LOCAL..LOCAL + ADDR_LEN], self.local);
        b
    }

    fn decode(b: &[u8; LEN]) -> Result<Message, Error> {
        use field::*;
        let kind = Kind::from_u8(b[KIND]).ok_or(Error::Malformed)?;
        if b[FLAGS] & !(ACTIVE | ANSWERED) != 0 || (b[WAITING] != 0 && kind != Kind::Ack) {
            return Err(Error::Malformed);
        }
        let u32_at = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
        Ok(Message {
            kind,
            active: b[FLAGS] & ACTIVE != 0,
            answered: b[FLAGS] & ANSWERED != 0,
            waiting: b[WAITING],
            instance: Instance(b[INSTANCE..TUNNEL].try_into().unwrap()),
            tunnel: u32_at(TUNNEL),
            counter: u64::from_be_bytes(b[COUNTER..COOKIE].try_into().unwrap()),
            cookie: b[COOKIE..KEEPALIVE].try_into().unwrap(),
            shared: Shared {
                keepalive: u32_at(KEEPALIVE),
                max_tunnels: u32_at(TUNNELS),
            },
            carrying: u32_at(CARRYING),
            client: get_addr(&b[CLIENT..CLIENT + ADDR_LEN])?,
            local: get_addr(&b[LOCAL..LOCAL + ADDR_LEN])?,
        })
    }
}

/// An address field: IPv6 address (IPv4 as IPv4-mapped) and port; all zero for none.
fn put_addr(b: &mut [u8], addr: Option<SocketAddr>) {
    let Some(a) = addr else { return };
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    b[..16].copy_from_slice(&ip.octets());
    b[16..18].copy_from_slice(&a.port().to_be_bytes());
}

/// The address field's value: IPv4-mapped addresses come back as IPv4. A port of 0 with an address, or an
/// address of :: with a port, is malformed.
fn get_addr(b: &[u8]) -> Result<Option<SocketAddr>, Error> {
    let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&b[..16]).unwrap());
    let port = u16::from_be_bytes([b[16], b[17]]);
    match (ip.is_unspecified(), port) {
        (true, 0) => Ok(None),
        (true, _) | (false, 0) => Err(Error::Malformed),
        (false, _) => Ok(Some(match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
            None => SocketAddr::new(IpAddr::V6(ip), port),
        })),
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

/// Cheap test run on every datagram: length and magic (any version, at this version's length or the old one).
/// Only a match costs an HMAC.
#[inline]
pub fn looks_like_control(buf: &[u8]) -> bool {
    (buf.len() == LEN || OLD_LENS.contains(&buf.len())) && buf[..4] == MAGIC
}

/// Which key a message says it is sealed with (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The key id a control-shaped datagram of this version carries; None for any other datagram.
    pub fn of(buf: &[u8]) -> Option<KeyId> {
        let b = <&[u8; LEN]>::try_from(buf).ok()?;
        (b[..4] == MAGIC && b[field::VERSION] == VERSION)
            .then(|| KeyId(b[field::KEY_ID..MAC_AT].try_into().expect("8 bytes")))
    }
}

/// The shared secret, with the HMAC key schedule done once.
#[derive(Clone)]
pub struct Key {
    mac: Hmac<Sha256>,
    id: KeyId,
}

impl Key {
    pub fn new(secret: &[u8]) -> Key {
        let mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
        let mut m = mac.clone();
        m.update(KEY_ID_LABEL);
        let id = KeyId(m.finalize().into_bytes()[..8].try_into().expect("8 bytes"));
        Key { mac, id }
    }

    /// The id messages sealed with this key carry.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Encode and authenticate a message.
    pub fn seal(&self, msg: &Message) -> [u8; LEN] {
        let mut b = msg.encode();
        b[field::KEY_ID..MAC_AT].copy_from_slice(&self.id.0);
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
        let Ok(b) = <&[u8; LEN]>::try_from(buf) else {
            // The old length: an older release (whatever its version byte says, it is not ours).
            return Err(Error::Version(buf[field::VERSION].min(VERSION - 1)));
        };
        if b[field::VERSION] != VERSION {
            return Err(Error::Version(b[field::VERSION]));
        }
        if b[field::KIND] == Kind::AuthFail as u8 {
            return Err(Error::AuthFailNotice);
        }
        // Another key's id: no MAC to compute, it cannot verify (a forged id only fails at the MAC below).
        if b[field::KEY_ID..MAC_AT] != self.id.0 {
            return Err(Error::BadMac);
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
        b[field::VERSION] = VERSION;
        b[field::KIND] = Kind::AuthFail as u8;
        b
    }
}

/// What the inside agent says about one of its tunnels in a keepalive or response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    /// The tunnel carries a client.
    pub active: bool,
    /// The relay said the service has answered that client through it.
    pub answered: bool,
    /// Whom the relay said it routes through the tunnel.
    pub client: Option<SocketAddr>,
    /// The address the service sees the tunnel at.
    pub local: Option<SocketAddr>,
}

impl Claim {
    /// A claim that only says whether the tunnel is active.
    pub fn active(active: bool) -> Claim {
        Claim {
            active,
            ..Claim::default()
        }
    }
}

#[cfg(test)]
mod tests;
