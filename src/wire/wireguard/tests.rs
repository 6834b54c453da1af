//! WireGuard's message formats and keys: shapes, indexes and the strict base64 of public keys, checked against
//! messages captured from wireguard-go.

use super::*;

// The known-answer vector, captured from wireguard-go 0.0.20220316 by tests/wireguard_vectors.sh: the client
// sent INITIATION1 (no cookie yet), got REPLY from the relay's admission under load (seed SEED of
// relay/admission/tests.rs, epoch 0), accepted it and sent INITIATION2 on its retry, with mac2 computed from the
// cookie it decrypted. The relay's admission tests read them from here.
pub(crate) const PUBLIC_KEY: &str = "x9dE+9IYq9RQviZB2NDdW8okuo5HGMkOEC38lkRTFkw=";
pub(crate) const INITIATION1: &str = "01000000d2ce8ab0e51e0259bf374c1dad140cedb6ab94f8c12a52eb430bbecccebe291c1412d123ab11\
    4f4e176f75a506cd391d2c036abf9f00b936b6af3d8a6664726288b176d87932b62bf8c4c339514645712932e37e39f29f53d87221f0\
    5735307bc60dd27e2798989b802edd58fd57335eaeefc200c88c62d22a1767785e86a9b100000000000000000000000000000000";
pub(crate) const REPLY: &str =
    "03000000d2ce8ab073dfdf0749cf5556a8ddf063cfe230b05c1ee9c5befe5ca2013bbc671c70c665944cbb03\
    ae85bed35aa137246d837fe0d5b0c31f3ede1bbf";
pub(crate) const INITIATION2: &str = "01000000a61fc18933d59cd2d87a4b6773eecfcecc2e606859b28e2ff2104705d7015f74f229f34ebd42fa\
    2024525ca4fbafa5bf7f135a051b92427d233fbd92f43c8a615ff91efa923e86cf6a5b860b1ab563a8336a9ab88ce45affc73d435ca1\
    a4e301e8883c7bc47eb4ef53c892e5bc7ee23dd18a32b0f8f961f2cbb5bdf3b2ff17bda9ceebf66bb52c74ecc8ccefaab5a2e6";

pub(crate) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn kinds_and_indexes_by_shape() {
    let mut resp = [0u8; RESPONSE_LEN];
    resp[0] = 2;
    resp[field::SENDER].copy_from_slice(&7u32.to_le_bytes());
    resp[field::RESPONSE_RECEIVER].copy_from_slice(&9u32.to_le_bytes());
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

#[test]
fn the_prekeyed_mac1_check_agrees_with_the_plain_keyed_hash() {
    let pk = PublicKey::from_base64("HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=").unwrap();
    let other = PublicKey::from_base64("xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=").unwrap();
    let check = Mac1Check::new(&pk);
    for n in 0..64u8 {
        let mut m = [n; INITIATION_LEN];
        m[0] = 1;
        m[1..4].copy_from_slice(&[0, 0, 0]);
        client_macs(&pk, &mut m, None);
        assert!(check.verifies(&m), "message {n}");
        assert_eq!(
            mac(&hash(LABEL_MAC1, &pk.0), &m[field::MAC1_COVERS]),
            m[field::MAC1]
        );
        assert!(!Mac1Check::new(&other).verifies(&m));
        let mut flipped = m;
        flipped[usize::from(n) % 132] ^= 1;
        assert!(!check.verifies(&flipped), "flipped byte {}", n % 132);
    }
}
