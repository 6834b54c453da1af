//! Many datagrams per system call: `recvmmsg`/`sendmmsg`, and UDP GSO/GRO where the kernel offers them.
//!
//! A receive blocks for the first datagram and takes, in the same call, whatever else is already queued
//! (`MSG_WAITFORONE`): nothing waits for a batch to fill, a lone datagram is handled at once. Sends are queued in
//! order and go out in one `sendmmsg` when the caller is done with what it received; consecutive datagrams of one
//! size for one destination become one GSO message (`UDP_SEGMENT`), which the kernel (or the receiver's GRO)
//! cuts back at exactly the same boundaries. With `UDP_GRO` on, one receive may return such a train; the
//! `UDP_GRO` control message says where its datagrams end, and [`Received::datagrams`] yields them one by one.
//!
//! What the kernel offers is found once per process by trying each facility on loopback ([`offload`]); whatever
//! fails there (an old kernel, qemu-user) is not used, and `RUT_PLAIN_IO=1` forces one datagram per call.
//!
//! Memory: a heap block per [`Batch`] holds the message headers and a small dense area per slot that takes
//! ordinary datagrams; a lazily touched mapping holds a 64 KiB overflow per slot (scattered into by the kernel)
//! that is only touched by big datagrams or GRO trains. A tunnel thread's block is 3.3 KiB, packed on the heap
//! with the others instead of taking a page of its own (about 0.7 MiB less at 1000 tunnels).
//!
//! Here: the memory layout and the receive. `batch/received.rs` reads what a receive returned, `batch/send.rs`
//! queues and sends, `batch/probe.rs` finds what the kernel offers.

// msghdr and cmsghdr field types differ between glibc and musl (size_t against int/socklen_t): the casts that
// are no-ops on one are needed on the other.
#![allow(clippy::unnecessary_cast)]

use crate::sys::socket::{self as net, Mapped};
use std::io;
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::time::Duration;

mod probe;
mod received;
mod send;

pub use received::{Datagram, Parts, Received};
use send::SendState;
pub use send::Tx;

// Not in the libc crate for every target; the values are the kernel's (include/uapi/linux/udp.h).
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Segments in one GSO send: the kernel's UDP_MAX_SEGMENTS was 64 until 6.x raised it; 64 works everywhere.
const MAX_SEGMENTS: usize = 64;
/// Payload bytes in one GSO send: the IP length field (65535) less the IPv6 and UDP headers, rounded down.
const MAX_GSO_BYTES: usize = 65_000;
/// Each slot can take any datagram (or GRO train) in its dense area plus this overflow.
const OVERFLOW: usize = net::BUF_LEN;

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

/// How many datagrams one batch moves, and how much of each is kept in the dense area.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Datagrams (or GRO trains) per receive.
    pub slots: usize,
    /// Bytes of each slot in the dense area; the rest of a bigger datagram goes to the slot's overflow.
    pub dense: usize,
    /// Messages per `sendmmsg` (a GSO train is one message); more queued sends flush early.
    pub msgs: usize,
    /// Pieces of datagrams per `sendmmsg` (a datagram is one, or two when it is bigger than `dense`).
    pub iovs: usize,
    /// Queue up to `msgs` datagrams and group them by destination before sending (order per destination kept),
    /// so that interleaved flows still make GSO trains. Needs `iovs >= 2 * msgs`.
    pub group: bool,
}

impl Shape {
    /// The relay: one thread for every client and tunnel, so deep batches; memory is not the concern there.
    pub const RELAY: Shape = Shape {
        slots: 64,
        dense: 2048,
        msgs: 64,
        iovs: 256,
        group: true,
    };
    /// An inside tunnel thread: a thousand of them, so headers and dense area are small (3.3 KiB on 64 bits).
    /// 512 bytes per slot take what is not bulk data (WireGuard's handshakes and keepalives, control messages)
    /// and a GRO train of eight 64-byte datagrams from the relay; a 1400-byte datagram spills a page of the
    /// overflow. 16 iovecs: a train from the relay is forwarded as one piece per datagram. Tried
    /// (docs/BENCHMARKS.md): 256 bytes per slot made the relay's trains spill (4.4 MiB more at 1000 busy
    /// tunnels), two slots cost the inside 15-25 % more CPU per datagram.
    pub const TUNNEL: Shape = Shape {
        slots: 4,
        dense: 512,
        msgs: 4,
        iovs: 16,
        group: false,
    };
}

/// A socket address as the kernel reads and writes it.
#[repr(C)]
#[derive(Clone, Copy)]
union Name {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

/// Room for one `UDP_SEGMENT`/`UDP_GRO` control message (an int; the kernel writes a u16 for GSO).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Ctrl([u8; 32]);

/// Where each array lives in the block.
struct Layout {
    rhdr: usize,
    riov: usize,
    rname: usize,
    rctrl: usize,
    shdr: usize,
    siov: usize,
    sname: usize,
    sctrl: usize,
    dense: usize,
    len: usize,
}

impl Layout {
    fn of(s: Shape) -> Layout {
        fn put<T>(at: &mut usize, n: usize) -> usize {
            let start = at.next_multiple_of(align_of::<T>());
            *at = start + n * size_of::<T>();
            start
        }
        let mut at = 0;
        let rhdr = put::<libc::mmsghdr>(&mut at, s.slots);
        let riov = put::<libc::iovec>(&mut at, 2 * s.slots);
        let rname = put::<Name>(&mut at, s.slots);
        let rctrl = put::<Ctrl>(&mut at, s.slots);
        let shdr = put::<libc::mmsghdr>(&mut at, s.msgs);
        let siov = put::<libc::iovec>(&mut at, Self::send_iovs(s));
        let sname = put::<Name>(&mut at, s.msgs);
        let sctrl = put::<Ctrl>(&mut at, s.msgs);
        let dense = put::<u8>(&mut at, s.slots * s.dense);
        Layout {
            rhdr,
            riov,
            rname,
            rctrl,
            shdr,
            siov,
            sname,
            sctrl,
            dense,
            len: at,
        }
    }

    /// A datagram is at most two pieces (dense part, overflow part).
    fn send_iovs(s: Shape) -> usize {
        s.iovs.max(2)
    }
}

/// Zeroed heap memory with the alignment every header type needs.
struct Block {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

// Plain memory owned by one thread at a time, like Mapped.
unsafe impl Send for Block {}

impl Block {
    const ALIGN: usize = 16;

    fn zeroed(len: usize) -> io::Result<Block> {
        let layout = std::alloc::Layout::from_size_align(len.max(1), Self::ALIGN)
            .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // SAFETY: a non-zero size; the result is checked for null and freed with the same layout in Drop.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        std::ptr::NonNull::new(ptr)
            .map(|ptr| Block { ptr, layout })
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: allocated in Block::zeroed with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// One socket's receive slots and send queue: headers and dense area in a heap block, overflow in a mapping.
pub struct Batch {
    mem: Block,
    over: Mapped,
    shape: Shape,
    at: Layout,
    offload: Offload,
    /// Slots filled by the last receive.
    filled: usize,
    gro_on: bool,
    send: SendState,
    /// Overflow pages written since they were last given back, and receives since one was last needed.
    overflow_dirty: bool,
    quiet: u32,
}

/// Receives without a big datagram after which the overflow pages go back to the kernel: a tunnel that carried a
/// burst of big datagrams, or GRO trains, then only small ones, returns to one resident page. Once per this many
/// receives at most, so mixed traffic does not pay a page fault per datagram.
const QUIET_BEFORE_RELEASE: u32 = 64;

impl Batch {
    /// A batch for `sock` with what [`offload`] found; turns GRO on for the socket where offered.
    pub fn new(sock: &UdpSocket, shape: Shape) -> io::Result<Batch> {
        Batch::with_offload(sock, shape, offload())
    }

    /// As [`Batch::new`], with chosen facilities (tests force the plain path with [`Offload::PLAIN`]).
    pub fn with_offload(sock: &UdpSocket, shape: Shape, offload: Offload) -> io::Result<Batch> {
        let shape = if offload.mmsg {
            shape
        } else {
            Shape {
                slots: 1,
                msgs: 1,
                ..shape
            }
        };
        let at = Layout::of(shape);
        const _: () = assert!(
            align_of::<libc::mmsghdr>() <= Block::ALIGN && align_of::<Ctrl>() <= Block::ALIGN
        );
        let mem = Block::zeroed(at.len)?;
        let over = Mapped::new(shape.slots * OVERFLOW)?;
        let gro_on = offload.gro && net::set_int_option(sock, libc::SOL_UDP, UDP_GRO, 1).is_ok();
        let mut b = Batch {
            mem,
            over,
            shape,
            at,
            offload,
            filled: 0,
            gro_on,
            overflow_dirty: false,
            quiet: 0,
            send: SendState::new(shape),
        };
        b.wire_receive();
        Ok(b)
    }

    pub fn offload(&self) -> Offload {
        Offload {
            gro: self.gro_on,
            ..self.offload
        }
    }

    fn ptr<T>(&self, offset: usize) -> *mut T {
        // SAFETY: every offset comes from Layout::of, within the block and aligned for T.
        unsafe { self.mem.ptr.as_ptr().add(offset).cast() }
    }

    /// Point every receive header at its iovecs, name and control buffer, once.
    fn wire_receive(&mut self) {
        for i in 0..self.shape.slots {
            let dense = self.ptr::<u8>(self.at.dense + i * self.shape.dense);
            // SAFETY: slot i's overflow is inside the overflow mapping.
            let over = unsafe { self.over.as_mut_ptr().add(i * OVERFLOW) };
            let iov = self.ptr::<libc::iovec>(self.at.riov + 2 * i * size_of::<libc::iovec>());
            let hdr = self.ptr::<libc::mmsghdr>(self.at.rhdr + i * size_of::<libc::mmsghdr>());
            // SAFETY: all pointers are inside the block (Layout) or the overflow, aligned, and owned by self.
            unsafe {
                *iov = libc::iovec {
                    iov_base: dense.cast(),
                    iov_len: self.shape.dense,
                };
                *iov.add(1) = libc::iovec {
                    iov_base: over.cast(),
                    iov_len: OVERFLOW,
                };
                let h = &mut (*hdr).msg_hdr;
                h.msg_iov = iov;
                h.msg_iovlen = 2;
                h.msg_name = self
                    .ptr::<Name>(self.at.rname + i * size_of::<Name>())
                    .cast();
                h.msg_control = self
                    .ptr::<Ctrl>(self.at.rctrl + i * size_of::<Ctrl>())
                    .cast();
            }
        }
    }

    /// Block (up to the socket's read timeout) for one datagram, and take what else is queued. Then look at
    /// them with [`Batch::split`].
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.filled = 0;
        for i in 0..self.shape.slots {
            let hdr = self.ptr::<libc::mmsghdr>(self.at.rhdr + i * size_of::<libc::mmsghdr>());
            // SAFETY: a header inside the block.
            unsafe {
                let h = &mut (*hdr).msg_hdr;
                h.msg_namelen = size_of::<Name>() as libc::socklen_t;
                h.msg_controllen = if self.gro_on {
                    size_of::<Ctrl>() as _
                } else {
                    0
                };
                h.msg_flags = 0;
                (*hdr).msg_len = 0;
            }
        }
        let fd = sock.as_raw_fd();
        let hdrs = self.ptr::<libc::mmsghdr>(self.at.rhdr);
        loop {
            let n = if self.offload.mmsg {
                // SAFETY: `slots` wired headers; a null timeout (the socket's SO_RCVTIMEO applies).
                unsafe {
                    libc::syscall(
                        libc::SYS_recvmmsg,
                        fd,
                        hdrs,
                        self.shape.slots as libc::c_uint,
                        libc::MSG_WAITFORONE,
                        std::ptr::null_mut::<libc::timespec>(),
                    ) as isize
                }
            } else {
                // SAFETY: the first wired header.
                let r = unsafe { libc::recvmsg(fd, &mut (*hdrs).msg_hdr, 0) };
                if r >= 0 {
                    // SAFETY: as above.
                    unsafe { (*hdrs).msg_len = r as libc::c_uint };
                    1
                } else {
                    -1
                }
            };
            if n >= 0 {
                self.filled = n as usize;
                self.note_overflow();
                return Ok(self.filled);
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOSYS) && self.offload.mmsg {
                // Not offered after all (seccomp, an emulator): one at a time from now on.
                self.offload.mmsg = false;
                continue;
            }
            return Err(e);
        }
    }

    /// Track the overflow's use; give its pages back after enough receives without a big datagram.
    fn note_overflow(&mut self) {
        let dense = self.shape.dense;
        let big = (0..self.filled).any(|i| {
            let hdr = self.ptr::<libc::mmsghdr>(self.at.rhdr + i * size_of::<libc::mmsghdr>());
            // SAFETY: a header inside the block, just filled by the kernel.
            unsafe { (*hdr).msg_len as usize > dense }
        });
        if big {
            self.overflow_dirty = true;
            self.quiet = 0;
        } else if self.overflow_dirty {
            self.quiet += 1;
            if self.quiet >= QUIET_BEFORE_RELEASE {
                self.release_overflow();
            }
        }
    }

    /// Give the overflow pages back (they read as zeros and cost nothing until written again). Also for an idle
    /// tunnel, from its timeout tick.
    pub fn release_overflow(&mut self) {
        if !self.overflow_dirty {
            return;
        }
        // SAFETY: our own overflow mapping, whole; nothing borrows it (&mut self).
        unsafe {
            libc::madvise(
                self.over.as_mut_ptr().cast(),
                self.over.len(),
                libc::MADV_DONTNEED,
            );
        }
        self.overflow_dirty = false;
        self.quiet = 0;
    }

    /// What the last receive returned, and a send queue, usable together: datagrams can be forwarded without
    /// a copy. The queue is sent when the returned [`Tx`] is finished or dropped.
    pub fn split<'a>(&'a mut self, sock: &'a UdpSocket) -> (Received<'a>, Tx<'a>) {
        let base = self.mem.ptr.as_ptr();
        let rx = Received::new(
            base,
            self.over.as_ptr(),
            self.shape,
            &self.at,
            self.filled,
            self.gro_on,
        );
        let tx = Tx::new(
            base,
            self.shape,
            &self.at,
            &mut self.offload,
            &mut self.send,
            sock,
        );
        (rx, tx)
    }
}

/// Write `addr` as a sockaddr at `name`; its length.
fn addr_to_name(addr: SocketAddr, name: *mut Name) -> libc::socklen_t {
    // SAFETY: name points at a Name inside the block; fully written before use.
    unsafe {
        match addr {
            SocketAddr::V4(a) => {
                let mut s: libc::sockaddr_in = std::mem::zeroed();
                s.sin_family = libc::AF_INET as libc::sa_family_t;
                s.sin_port = a.port().to_be();
                s.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                (*name).v4 = s;
                size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                let mut s: libc::sockaddr_in6 = std::mem::zeroed();
                s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                s.sin6_port = a.port().to_be();
                s.sin6_addr.s6_addr = a.ip().octets();
                s.sin6_flowinfo = a.flowinfo();
                s.sin6_scope_id = a.scope_id();
                (*name).v6 = s;
                size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }
}

/// The address the kernel wrote at `name`, as std's `recv_from` would report it.
fn name_to_addr(name: *const Name, len: libc::socklen_t) -> Option<SocketAddr> {
    if (len as usize) < size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: the kernel wrote `len` bytes of a sockaddr of the socket's family.
    unsafe {
        match (*name).v4.sin_family as libc::c_int {
            libc::AF_INET => {
                let s = (*name).v4;
                let ip = Ipv4Addr::from(s.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(s.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let s = (*name).v6;
                let ip = Ipv6Addr::from(s.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(s.sin6_port),
                    s.sin6_flowinfo,
                    s.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn socket() -> UdpSocket {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        net::grow_receive_buffer(&s);
        s
    }

    /// Both the facilities this kernel offers and the plain path.
    fn modes() -> [Offload; 2] {
        [offload(), Offload::PLAIN]
    }

    /// Receive with a batch until `n` datagrams came (each receive waits at most 5 s).
    fn take(b: &mut Batch, s: &UdpSocket, n: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut got = Vec::new();
        let mut scratch = Vec::new();
        while got.len() < n {
            b.recv(s).expect("datagram within 5 s");
            let (rx, _tx) = b.split(s);
            for d in rx.datagrams() {
                got.push((d.src, rx.parts(&d).contiguous(&mut scratch).to_vec()));
            }
        }
        got
    }

    fn payload(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|k| (i * 31 + k * 7) as u8).collect()
    }

    const SIZES: [usize; 9] = [0, 1, 64, 191, 192, 193, 1400, 9000, 65507];

    #[test]
    fn offload_is_found_without_failing() {
        // Whatever this kernel offers; what matters is that finding out neither fails nor hangs.
        println!("{}", offload());
    }

    #[test]
    fn receive_keeps_order_and_boundaries() {
        for mode in modes() {
            let (a, b) = (socket(), socket());
            let to = b.local_addr().unwrap();
            let sent: Vec<Vec<u8>> = (0..300)
                .map(|i| payload(i, SIZES[i % SIZES.len()]))
                .collect();
            for p in &sent {
                a.send_to(p, to).unwrap();
            }
            let mut batch = Batch::with_offload(&b, Shape::TUNNEL, mode).unwrap();
            let got = take(&mut batch, &b, sent.len());
            assert_eq!(got.len(), sent.len(), "{mode}");
            for (i, (src, data)) in got.iter().enumerate() {
                assert_eq!(*src, a.local_addr().unwrap());
                assert_eq!(data, &sent[i], "datagram {i} ({mode})");
            }
        }
    }

    #[test]
    fn a_lone_datagram_is_not_held_back() {
        for mode in modes() {
            let (a, b) = (socket(), socket());
            let mut batch = Batch::with_offload(&b, Shape::RELAY, mode).unwrap();
            let to = b.local_addr().unwrap();
            let sender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                a.send_to(b"alone", to).unwrap();
            });
            let t = Instant::now();
            let got = take(&mut batch, &b, 1);
            // The socket timeout is 5 s: a receive that waited for more would take that long.
            assert!(t.elapsed() < Duration::from_secs(2), "{mode}");
            assert_eq!(got[0].1, b"alone");
            sender.join().unwrap();
        }
    }

    /// Two destinations interleaved, runs of equal sizes (GSO trains where offered), odd sizes between.
    #[test]
    fn sends_keep_order_and_boundaries_per_destination() {
        for mode in modes() {
            let a = socket();
            let (b, c) = (socket(), socket());
            let (tb, tc) = (b.local_addr().unwrap(), c.local_addr().unwrap());
            let mut plan: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
            for i in 0..200 {
                let len = match i % 50 {
                    0..20 => 1400,
                    20 => 700,
                    21..30 => 64,
                    30 => 0,
                    _ => SIZES[i % SIZES.len()],
                };
                let to = if i % 7 == 3 { tc } else { tb };
                plan.push((to, payload(i, len)));
            }
            let mut batch = Batch::with_offload(&a, Shape::RELAY, mode).unwrap();
            let (_, mut tx) = batch.split(&a);
            for (to, p) in &plan {
                tx.push(*to, Parts(p, &[]));
            }
            assert_eq!(tx.finish(), 0, "{mode}");
            for (sock, to) in [(&b, tb), (&c, tc)] {
                let want: Vec<&Vec<u8>> = plan.iter().filter(|p| p.0 == to).map(|p| &p.1).collect();
                let mut buf = vec![0; 70000];
                for (i, w) in want.iter().enumerate() {
                    let n = sock.recv(&mut buf).expect("sent datagram arrives");
                    assert_eq!(&buf[..n], &w[..], "datagram {i} to {to} ({mode})");
                }
            }
        }
    }

    /// Trains sent with GSO, received with GRO where offered: cut back into the same datagrams; split ones
    /// (dense + overflow) forwarded without a copy arrive whole.
    #[test]
    fn trains_survive_a_batch_to_batch_hop() {
        for mode in modes() {
            let (a, b, c) = (socket(), socket(), socket());
            let sent: Vec<Vec<u8>> = (0..120)
                .map(|i| payload(i, if i % 40 == 39 { 300 } else { 1400 }))
                .collect();
            let mut ab = Batch::with_offload(&a, Shape::RELAY, mode).unwrap();
            let (_, mut tx) = ab.split(&a);
            for p in &sent {
                tx.push(b.local_addr().unwrap(), Parts(p, &[]));
            }
            assert_eq!(tx.finish(), 0);
            // b forwards everything to c, as a tunnel does.
            let mut bb = Batch::with_offload(&b, Shape::TUNNEL, mode).unwrap();
            let mut forwarded = 0;
            while forwarded < sent.len() {
                bb.recv(&b).expect("datagram within 5 s");
                let (rx, mut tx) = bb.split(&b);
                for d in rx.datagrams() {
                    tx.push(c.local_addr().unwrap(), rx.parts(&d));
                    forwarded += 1;
                }
                assert_eq!(tx.finish(), 0);
            }
            let mut cb = Batch::with_offload(&c, Shape::TUNNEL, mode).unwrap();
            let got = take(&mut cb, &c, sent.len());
            let got: Vec<Vec<u8>> = got.into_iter().map(|g| g.1).collect();
            assert_eq!(got, sent, "{mode}");
        }
    }

    /// A datagram the kernel refuses (here: an IPv6 destination on an IPv4 socket, sent nowhere) is counted
    /// and skipped; the ones after it still go, in order (sendmmsg stops at the refused one: a partial send).
    #[test]
    fn a_refused_datagram_does_not_take_the_others() {
        for mode in modes() {
            let (a, b) = (socket(), socket());
            let to = b.local_addr().unwrap();
            let bad: SocketAddr = "[::1]:9".parse().unwrap();
            let msgs: Vec<Vec<u8>> = (0..12).map(|i| payload(i, 100)).collect();
            let mut batch = Batch::with_offload(&a, Shape::RELAY, mode).unwrap();
            let (_, mut tx) = batch.split(&a);
            for (i, m) in msgs.iter().enumerate() {
                let dst = if i == 4 || i == 5 || i == 9 { bad } else { to };
                tx.push(dst, Parts(m, &[]));
            }
            assert_eq!(tx.finish(), 3, "{mode}");
            let mut buf = [0u8; 200];
            for (i, m) in msgs.iter().enumerate() {
                if i == 4 || i == 5 || i == 9 {
                    continue;
                }
                let n = b.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &m[..], "{mode}");
            }
        }
    }

    /// Big datagrams touch the overflow; after enough small ones its pages are given back, and it still works.
    #[test]
    fn overflow_pages_are_given_back_after_small_traffic() {
        let (a, b) = (socket(), socket());
        let to = b.local_addr().unwrap();
        let mut batch = Batch::new(&b, Shape::TUNNEL).unwrap();
        a.send_to(&payload(1, 9000), to).unwrap();
        assert_eq!(take(&mut batch, &b, 1)[0].1, payload(1, 9000));
        assert!(batch.overflow_dirty);
        for i in 0..QUIET_BEFORE_RELEASE as usize {
            a.send_to(&payload(i, 10), to).unwrap();
            take(&mut batch, &b, 1);
        }
        assert!(!batch.overflow_dirty);
        a.send_to(&payload(2, 20000), to).unwrap();
        assert_eq!(take(&mut batch, &b, 1)[0].1, payload(2, 20000));
    }

    /// A thousand tunnels: each tunnel's block of headers and dense area stays well under the page it took as a
    /// mapping of its own (blocks are packed on the heap), which is what a thousand tunnels' memory is made of.
    #[test]
    fn a_tunnel_block_is_well_under_a_page() {
        let len = Layout::of(Shape::TUNNEL).len;
        assert!(len <= 3500, "{len} bytes");
    }

    #[test]
    fn more_than_a_batch_of_sends_flushes_early_and_keeps_order() {
        let (a, b) = (socket(), socket());
        let to = b.local_addr().unwrap();
        let msgs: Vec<Vec<u8>> = (0..100).map(|i| payload(i, 10 + i)).collect();
        let mut batch = Batch::new(&a, Shape::TUNNEL).unwrap();
        let (_, mut tx) = batch.split(&a);
        for m in &msgs {
            tx.push(to, Parts(m, &[]));
        }
        tx.push_owned(to, b"owned".to_vec());
        assert_eq!(tx.finish(), 0);
        let mut buf = [0u8; 200];
        for m in msgs.iter().map(|m| &m[..]).chain([&b"owned"[..]]) {
            let n = b.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], m);
        }
    }
}
