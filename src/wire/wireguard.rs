//! WireGuard's message formats, as far as the relay needs them: what a datagram is by its shape, where its
//! fields sit, the server's public key in the strict base64 `wg` prints, and the keyed hashes behind mac1, mac2
//! and the cookie reply. What the relay decides about them (admission, cookies, replays) is in
//! `relay/admission.rs`; this module only says what the bytes are.
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

use blake2::digest::consts::U16;
use blake2::digest::core_api::{Block, Buffer, UpdateCore, VariableOutputCore};
use blake2::digest::Mac;
use blake2::{Blake2s256, Blake2sMac, Blake2sVarCore, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit as _, XChaCha20Poly1305};
use std::fmt;
use std::str::FromStr;

/// Size of a handshake initiation.
pub const INITIATION_LEN: usize = 148;
/// Size of a handshake response.
pub const RESPONSE_LEN: usize = 92;
/// Size of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Smallest transport data message: a keepalive (header and tag, no payload).
pub const TRANSPORT_MIN_LEN: usize = 32;

/// Where each field sits, as in the table above: named once for whoever builds, reads or tests a message.
pub(crate) mod field {
    use std::ops::Range;

    pub const TYPE: usize = 0;
    /// Zero in every message type.
    pub const RESERVED: Range<usize> = 1..4;
    /// Initiation and response: the index the sender chose.
    pub const SENDER: Range<usize> = 4..8;
    /// Response: the initiation's sender index.
    #[cfg(test)]
    pub const RESPONSE_RECEIVER: Range<usize> = 8..12;
    /// Cookie reply and transport data: the index the receiving side chose.
    pub const RECEIVER: Range<usize> = 4..8;
    /// Initiation: what mac1 covers, then mac1 and mac2 (which covers everything before it).
    pub const MAC1_COVERS: Range<usize> = 0..116;
    pub const MAC1: Range<usize> = 116..132;
    pub const MAC2: Range<usize> = 132..148;
    /// Cookie reply: the nonce, the sealed cookie and its tag.
    pub const NONCE: Range<usize> = 8..32;
    pub const COOKIE: Range<usize> = 32..48;
    pub const COOKIE_TAG: Range<usize> = 48..64;
}

pub(crate) const LABEL_MAC1: &[u8] = b"mac1----";
pub(crate) const LABEL_COOKIE: &[u8] = b"cookie--";

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
    if msg.len() < field::RESERVED.end || msg[field::RESERVED] != [0, 0, 0] {
        return None;
    }
    match (msg[field::TYPE], msg.len()) {
        (1, INITIATION_LEN) => Some(MsgType::Initiation),
        (2, RESPONSE_LEN) => Some(MsgType::Response),
        (3, COOKIE_REPLY_LEN) => Some(MsgType::CookieReply),
        (4, n) if n >= TRANSPORT_MIN_LEN => Some(MsgType::Transport),
        _ => None,
    }
}

/// The sender index of an initiation or a response. The relay routes by address, never by index: only the
/// tests read indexes, to check the formats and the cookie reply.
#[cfg(test)]
pub(crate) fn sender_index(msg: &[u8]) -> Option<u32> {
    match kind(msg)? {
        MsgType::Initiation | MsgType::Response => Some(le32(msg, field::SENDER.start)),
        _ => None,
    }
}

/// The receiver index of a response, a cookie reply or transport data.
#[cfg(test)]
pub(crate) fn receiver_index(msg: &[u8]) -> Option<u32> {
    match kind(msg)? {
        MsgType::Response => Some(le32(msg, field::RESPONSE_RECEIVER.start)),
        MsgType::CookieReply | MsgType::Transport => Some(le32(msg, field::RECEIVER.start)),
        MsgType::Initiation => None,
    }
}

#[cfg(test)]
fn le32(msg: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([msg[at], msg[at + 1], msg[at + 2], msg[at + 3]])
}

/// What a WireGuard client does to an initiation for `server` before sending it: mac1, and mac2 when it holds a
/// cookie from a cookie reply. The relay never needs this; tests build initiations with it.
pub fn client_macs(server: &PublicKey, msg: &mut [u8; INITIATION_LEN], cookie: Option<&[u8; 16]>) {
    let mac1 = mac(&hash(LABEL_MAC1, &server.0), &msg[field::MAC1_COVERS]);
    msg[field::MAC1].copy_from_slice(&mac1);
    let mac2 = cookie.map_or([0; 16], |c| mac(c, &msg[..field::MAC2.start]));
    msg[field::MAC2].copy_from_slice(&mac2);
}

/// What a WireGuard client does with a cookie reply to its `initiation`: the cookie, if the reply opens.
pub fn client_open_cookie(server: &PublicKey, reply: &[u8], initiation: &[u8]) -> Option<[u8; 16]> {
    if reply.len() != COOKIE_REPLY_LEN
        || initiation.len() != INITIATION_LEN
        || reply[field::RECEIVER] != initiation[field::SENDER]
    {
        return None;
    }
    let cipher = XChaCha20Poly1305::new(&hash(LABEL_COOKIE, &server.0).into());
    let mut cookie: [u8; 16] = reply[field::COOKIE].try_into().ok()?;
    let nonce: [u8; 24] = reply[field::NONCE].try_into().ok()?;
    cipher
        .decrypt_in_place_detached(
            &nonce.into(),
            &initiation[field::MAC1],
            &mut cookie,
            reply[field::COOKIE_TAG].into(),
        )
        .ok()?;
    Some(cookie)
}

/// HASH(label || key).
pub(crate) fn hash(label: &[u8], key: &[u8; 32]) -> [u8; 32] {
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
pub(crate) fn mac(key: &[u8], data: &[u8]) -> [u8; 16] {
    keyed_mac(key)
        .chain_update(data)
        .finalize()
        .into_bytes()
        .into()
}

/// MAC(mac1 key, initiation[0..116]) == initiation's mac1, for one server key, with BLAKE2s's key block done once:
/// two compressions a check instead of three. A relay of N homes checks an unknown source's initiation against up
/// to N of these, so this is what a flood costs.
#[derive(Clone)]
pub(crate) struct Mac1Check {
    /// The keyed state after the key block.
    keyed: Blake2sVarCore,
}

impl Mac1Check {
    pub(crate) fn new(server: &PublicKey) -> Mac1Check {
        let key = hash(LABEL_MAC1, &server.0);
        let mut keyed = Blake2sVarCore::new_with_params(&[], &[], key.len(), 16);
        let mut block = Block::<Blake2sVarCore>::default();
        block[..key.len()].copy_from_slice(&key);
        keyed.update_blocks(&[block]);
        Mac1Check { keyed }
    }

    /// `initiation`: a datagram [`kind`] says is one.
    pub(crate) fn verifies(&self, initiation: &[u8]) -> bool {
        let covered = &initiation[field::MAC1_COVERS];
        let (first, rest) = covered.split_at(64);
        let mut core = self.keyed.clone();
        core.update_blocks(&[*Block::<Blake2sVarCore>::from_slice(first)]);
        let mut out = Default::default();
        core.finalize_variable_core(&mut Buffer::<Blake2sVarCore>::new(rest), &mut out);
        // Constant time, as a MAC comparison should be (though anyone with the public key can make a mac1).
        out[..16]
            .iter()
            .zip(&initiation[field::MAC1])
            .fold(0u8, |d, (a, b)| d | (a ^ b))
            == 0
    }
}

/// MAC(key, data) == tag, in constant time.
pub(crate) fn mac_verifies(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
    keyed_mac(key).chain_update(data).verify_slice(tag).is_ok()
}

#[cfg(test)]
pub(crate) mod tests;
