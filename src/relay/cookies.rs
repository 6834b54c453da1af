//! The relay's stateless challenge of a tunnel's address.

use crate::wire::Message;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::SocketAddr;
use std::time::Instant;

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
    use crate::wire::{Instance, Kind};

    fn sample() -> Message {
        let mut m = Message::new(Kind::Response, Instance([9; 16]), 0xdead_beef, u64::MAX - 1);
        m.cookie = [3; 8];
        m
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
