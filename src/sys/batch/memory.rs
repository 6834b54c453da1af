//! The memory a batch works in: one zeroed heap block holding the message headers, iovecs, socket addresses
//! and control messages of every slot, where each array sits in it, and the sockaddr conversions.

use super::*;

/// A socket address as the kernel reads and writes it.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) union Name {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

/// Room for one `UDP_SEGMENT`/`UDP_GRO` control message (an int; the kernel writes a u16 for GSO).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(super) struct Ctrl([u8; 32]);

/// Where each array lives in the block.
pub(super) struct Layout {
    pub(super) rhdr: usize,
    pub(super) riov: usize,
    pub(super) rname: usize,
    pub(super) rctrl: usize,
    pub(super) shdr: usize,
    pub(super) siov: usize,
    pub(super) sname: usize,
    pub(super) sctrl: usize,
    pub(super) dense: usize,
    pub(super) len: usize,
}

impl Layout {
    pub(super) fn of(s: Shape) -> Layout {
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
    pub(super) fn send_iovs(s: Shape) -> usize {
        s.iovs.max(2)
    }
}

/// Zeroed heap memory with the alignment every header type needs.
pub(super) struct Block {
    pub(super) ptr: std::ptr::NonNull<u8>,
    pub(super) layout: std::alloc::Layout,
}

// Plain memory owned by one thread at a time, like Mapped.
unsafe impl Send for Block {}

impl Block {
    pub(super) const ALIGN: usize = 16;

    pub(super) fn zeroed(len: usize) -> io::Result<Block> {
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

/// Write `addr` as a sockaddr at `name`; its length.
pub(super) fn addr_to_name(addr: SocketAddr, name: *mut Name) -> libc::socklen_t {
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
pub(super) fn name_to_addr(name: *const Name, len: libc::socklen_t) -> Option<SocketAddr> {
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
