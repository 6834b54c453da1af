//! The relay side of tests/wireguard_vectors.sh, which regenerates the known-answer vector of src/relay/admission/tests.rs
//! with a real wireguard-go. Ignored in ordinary runs: it needs that script's network namespace.
//!
//! Listens on 127.0.0.1:$WG_CAPTURE_PORT (inside the script's namespace), judges every datagram "under load"
//! with the fixed seed of the unit tests, answers the first initiation with this module's cookie reply and stops
//! once an initiation is admitted by its mac2, which proves that wireguard-go accepted the cookie reply. Prints
//! what the unit tests pin, one `name hex` line each.

use rut::relay::{Admission, Verdict};
use rut::wire::wireguard::PublicKey;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

/// The seed the unit tests use for the vector.
const SEED: [u8; 32] = *b"reverse-udp-tunnel test seed 32b";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
#[ignore = "run by tests/wireguard_vectors.sh inside its network namespace"]
fn capture() {
    let pk: PublicKey = std::env::var("WG_CAPTURE_PK")
        .expect("WG_CAPTURE_PK")
        .parse()
        .expect("public key");
    let port: u16 = std::env::var("WG_CAPTURE_PORT")
        .expect("WG_CAPTURE_PORT")
        .parse()
        .expect("port");
    let sock = UdpSocket::bind(("127.0.0.1", port)).expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let start = Instant::now();
    let mut admission = Admission::new(&pk, SEED, start);
    let deadline = start + Duration::from_secs(40);
    let mut replied = false;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        let Ok((n, src)) = sock.recv_from(&mut buf) else {
            continue;
        };
        assert!(
            src.ip().is_loopback(),
            "only the namespace's own wireguard-go talks here"
        );
        let msg = &buf[..n];
        // The unit tests replay everything at `start` (epoch 0): stay far inside the first 2-minute epoch.
        match admission.check(start, src, msg, true) {
            Verdict::Reply(r) if !replied => {
                println!("source {src}");
                println!("initiation1 {}", hex(msg));
                println!("reply {}", hex(&r.0));
                sock.send_to(&r.0, src).expect("send the cookie reply");
                replied = true;
            }
            Verdict::Admit if replied => {
                println!("initiation2 {}", hex(msg));
                return;
            }
            v => eprintln!("ignored {n} bytes from {src}: {v:?}"),
        }
    }
    panic!("no initiation with a valid mac2 within 40 s (cookie reply sent: {replied})");
}
