//! Sockets, addresses and the few OS facilities std lacks (libc).

use crate::addr::HostPort;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};

/// Takes any UDP payload: 65507 bytes over IPv4, a little more over IPv6.
pub const BUF_LEN: usize = 65536;

/// Resolve a name once. Several results: IPv4 first (a relay name with both records most often works on v4
/// from behind a CG-NAT), unless the name itself is a bracketed IPv6 literal.
pub fn resolve(hp: &HostPort) -> io::Result<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = (hp.host.as_str(), hp.port).to_socket_addrs()?.collect();
    addrs.sort_by_key(|a| a.is_ipv6());
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no addresses"))
}

/// A socket on an ephemeral port that can talk to both `a` and `b`: a dual-stack IPv6 socket when the
/// families differ.
pub fn bind_for(a: SocketAddr, b: SocketAddr) -> io::Result<UdpSocket> {
    if a.is_ipv4() && b.is_ipv4() {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        bind((Ipv6Addr::UNSPECIFIED, 0).into())
    }
}

/// Bind a UDP socket; `[::]` is made dual stack (IPV6_V6ONLY off) whatever net.ipv6.bindv6only says, so
/// `-l PORT` and `-l [::]:PORT` take IPv4 clients too. std binds in one step, hence the few lines of libc.
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V6(v6) = addr else {
        return UdpSocket::bind(addr);
    };
    if !v6.ip().is_unspecified() {
        return UdpSocket::bind(addr);
    }
    // SAFETY: a fresh socket fd, owned by the UdpSocket (which closes it) from right after creation.
    let sock = unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        UdpSocket::from_raw_fd(fd)
    };
    set_int_option(&sock, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = v6.port().to_be();
    // SAFETY: sa is a valid sockaddr_in6 (the unspecified address) of the length given.
    let rc = unsafe {
        use std::os::fd::AsRawFd;
        libc::bind(
            sock.as_raw_fd(),
            (&sa as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

pub(crate) fn set_int_option(
    sock: &UdpSocket,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt with a valid fd and a c_int option value of the right length.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The address a socket bound to `port` on every address is seen at by `peer`: the source address the kernel
/// picks toward `peer` (a connected scratch socket says which; no datagram is sent), with that port. Where that
/// cannot be found out, the unspecified address of `peer`'s family.
pub fn source_toward(peer: SocketAddr, port: u16) -> SocketAddr {
    let any: SocketAddr = match peer {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let ip = UdpSocket::bind(any)
        .and_then(|s| s.connect(peer).and_then(|()| s.local_addr()))
        .map_or(any.ip(), |a| a.ip());
    SocketAddr::new(ip, port)
}

/// Raise the soft open-file limit to the hard one: each inside tunnel is a socket, and init systems often
/// start daemons with a soft limit of 1024.
pub fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// A relay receives every client and tunnel on one socket: a burst (1000 clients with 8 datagrams each in flight
/// overflowed 8 MiB in the benchmark) must not overflow its receive queue. The memory is only used while datagrams
/// wait. SO_RCVBUFFORCE passes net.core.rmem_max when we may; otherwise the capped request.
pub fn grow_receive_buffer(sock: &UdpSocket) {
    let size = 16 << 20;
    let _ = set_int_option(sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size)
        .or_else(|_| set_int_option(sock, libc::SOL_SOCKET, libc::SO_RCVBUF, size));
}

/// Whether an error from a socket with a read timeout is just the timeout.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}
