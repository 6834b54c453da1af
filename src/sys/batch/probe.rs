//! Finding out, on loopback, what works: each facility is used only if a datagram sent with it arrives exactly
//! as sent (an emulator may accept a control message and ignore it, which would merge datagrams).

use super::*;

/// What this kernel offers, as found by [`offload`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offload {
    /// `recvmmsg` and `sendmmsg`.
    pub mmsg: bool,
    /// `UDP_SEGMENT` on send.
    pub gso: bool,
    /// `UDP_GRO` on receive, with its control message.
    pub gro: bool,
}

impl Offload {
    /// One datagram per system call: the path every kernel has.
    pub const PLAIN: Offload = Offload {
        mmsg: false,
        gso: false,
        gro: false,
    };
}

impl std::fmt::Display for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let on = |b: bool| if b { "on" } else { "off" };
        write!(
            f,
            "recvmmsg/sendmmsg {}, GSO {}, GRO {}",
            on(self.mmsg),
            on(self.gso),
            on(self.gro)
        )
    }
}

/// What the kernel offers, tried once per process on a pair of loopback sockets. `RUT_PLAIN_IO` set (to
/// anything but 0) forces the plain path.
pub fn offload() -> Offload {
    static FOUND: OnceLock<Offload> = OnceLock::new();
    *FOUND.get_or_init(|| {
        if std::env::var_os("RUT_PLAIN_IO").is_some_and(|v| v != "0") {
            Offload::PLAIN
        } else {
            probe::run()
        }
    })
}

pub fn run() -> Offload {
    let Ok((a, b)) = pair() else {
        return Offload::PLAIN;
    };
    let mmsg = mmsg(&a, &b);
    let gso = mmsg && gso(&a, &b);
    let gro = gso && gro(&a);
    Offload { mmsg, gso, gro }
}

fn pair() -> io::Result<(UdpSocket, UdpSocket)> {
    let a = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let b = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    b.set_read_timeout(Some(Duration::from_millis(500)))?;
    a.connect(b.local_addr()?)?;
    Ok((a, b))
}

/// Everything `to` receives until `want` datagrams came or a receive times out.
fn collect(to: &UdpSocket, shape: Shape, offload: Offload, want: usize) -> Option<Vec<Vec<u8>>> {
    let mut rx = Batch::with_offload(to, shape, offload).ok()?;
    let mut got = Vec::new();
    let mut scratch = Vec::new();
    for _ in 0..want {
        rx.recv(to).ok()?;
        let (r, _tx) = rx.split(to);
        for d in r.datagrams() {
            got.push(r.parts(&d).contiguous(&mut scratch).to_vec());
        }
        if got.len() >= want {
            break;
        }
    }
    Some(got)
}

fn send(from: &UdpSocket, to: SocketAddr, offload: Offload, data: &[&[u8]]) -> bool {
    let Ok(mut b) = Batch::with_offload(from, Shape::TUNNEL, offload) else {
        return false;
    };
    let (_, mut tx) = b.split(from);
    for d in data {
        tx.push(to, Parts(d, &[]));
    }
    tx.finish() == 0
}

fn mmsg(a: &UdpSocket, b: &UdpSocket) -> bool {
    let on = Offload {
        mmsg: true,
        ..Offload::PLAIN
    };
    let Ok(to) = b.local_addr() else { return false };
    let Ok(mut t) = Batch::with_offload(a, Shape::TUNNEL, on) else {
        return false;
    };
    let (_, mut tx) = t.split(a);
    tx.push(to, Parts(&[1, 2, 3], &[]));
    tx.push(to, Parts(&[4, 5], &[]));
    tx.flush();
    let sent = tx.errors == 0 && tx.offload.mmsg;
    drop(tx);
    sent && collect(b, Shape::TUNNEL, on, 2) == Some(vec![vec![1, 2, 3], vec![4, 5]])
        && t.offload.mmsg
}

fn gso(a: &UdpSocket, b: &UdpSocket) -> bool {
    let on = Offload {
        mmsg: true,
        gso: true,
        gro: false,
    };
    let Ok(to) = b.local_addr() else { return false };
    if net::set_int_option(a, libc::SOL_UDP, UDP_SEGMENT, 0).is_err() {
        return false;
    }
    send(a, to, on, &[&[1, 2, 3], &[4, 5, 6], &[7]])
        && collect(b, Shape::TUNNEL, Offload { gso: false, ..on }, 3)
            == Some(vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]])
}

/// GRO on a fresh receiver: a GSO train must arrive as one buffer with its segment size, or not coalesced.
fn gro(a: &UdpSocket) -> bool {
    let Ok(c) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
        return false;
    };
    let Ok(to) = c.local_addr() else { return false };
    if c.set_read_timeout(Some(Duration::from_millis(500)))
        .is_err()
    {
        return false;
    }
    let on = Offload {
        mmsg: true,
        gso: true,
        gro: true,
    };
    let Ok(mut rx) = Batch::with_offload(&c, Shape::TUNNEL, on) else {
        return false;
    };
    if !rx.gro_on || !send(a, to, on, &[&[1, 2, 3], &[4, 5, 6], &[7]]) {
        return false;
    }
    if rx.recv(&c).is_err() {
        return false;
    }
    let (r, _tx) = rx.split(&c);
    let first = r.hdr(0).msg_len;
    let got: Vec<Vec<u8>> = r
        .datagrams()
        .map(|d| r.parts(&d).contiguous(&mut Vec::new()).to_vec())
        .collect();
    // Coalesced (7 bytes in the first slot) and cut back correctly: GRO works.
    first == 7 && got == vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]]
}
