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

use crate::sys::mapped::Mapped;
use crate::sys::socket as net;
use std::io;
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::time::Duration;

mod memory;
mod probe;
mod received;
mod send;

use memory::{addr_to_name, name_to_addr, Block, Ctrl, Layout, Name};
pub use probe::{offload, Offload};

pub use received::{Parts, Received};
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

#[cfg(test)]
mod tests;
