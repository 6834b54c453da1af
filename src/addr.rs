//! Addresses as the command line gives them and as the agents compare and show them: no socket, no libc.

#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};

/// HOST:PORT as given; resolved later (and again when the relay stops answering).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `addr` as a socket of the given family sees it: IPv4 becomes IPv4-mapped IPv6 on an IPv6 socket, so
/// comparisons with `recv_from` results are plain equality.
pub fn as_seen_by(sock_v6: bool, addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if sock_v6 => {
            SocketAddr::new(IpAddr::V6(a.ip().to_ipv6_mapped()), a.port())
        }
        _ => addr,
    }
}

/// For logs: `::ffff:192.0.2.1` is shown as `192.0.2.1`.
pub fn shown(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => addr,
        },
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_round_trips() {
        let v4: SocketAddr = "192.0.2.7:99".parse().unwrap();
        let mapped = as_seen_by(true, v4);
        assert_eq!(mapped.to_string(), "[::ffff:192.0.2.7]:99");
        assert_eq!(shown(mapped), v4);
        assert_eq!(as_seen_by(false, v4), v4);
        let v6: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
        assert_eq!(as_seen_by(true, v6), v6);
        assert_eq!(shown(v6), v6);
    }
}
