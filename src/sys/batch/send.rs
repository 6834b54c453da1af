//! The send queue of one round: datagrams queued in order, consecutive ones of one size for one destination made
//! into a GSO message, all sent in one `sendmmsg` (a refused message is counted and skipped).

use super::*;

/// The queued messages: the last one is still open to more segments.
#[derive(Default)]
pub(super) struct SendState {
    msgs: usize,
    iovs: usize,
    /// Of the open message: destination, segment size, segments, bytes, and whether a short last segment closed it.
    to: Option<SocketAddr>,
    seg: usize,
    segs: usize,
    bytes: usize,
    closed: bool,
    /// Segment size of each queued message (0: a single datagram).
    gso: Vec<u16>,
    /// Bytes owned by the queue until it is flushed (control messages built for this round).
    owned: Vec<Vec<u8>>,
    /// Datagrams queued for grouping (Shape::group), as raw pieces that live for the Tx's lifetime.
    items: Vec<Item>,
}

impl SendState {
    pub(super) fn new(shape: Shape) -> SendState {
        SendState {
            gso: Vec::with_capacity(shape.msgs),
            items: Vec::with_capacity(if shape.group { shape.msgs } else { 0 }),
            ..SendState::default()
        }
    }
}

#[derive(Clone, Copy)]
struct Item {
    to: SocketAddr,
    pieces: [(*const u8, usize); 2],
}

/// The send queue of one round. Queued bytes must live as long as the batch borrow (`'a`): received datagrams
/// and the caller's own buffers do; built messages are handed over with [`Tx::push_owned`].
pub struct Tx<'a> {
    base: *mut u8,
    shape: Shape,
    shdr: usize,
    siov: usize,
    sname: usize,
    sctrl: usize,
    /// Read by the probe after a flush: what the kernel turned out to offer, and what it refused.
    pub(super) offload: &'a mut Offload,
    st: &'a mut SendState,
    sock: &'a UdpSocket,
    pub(super) errors: usize,
    _life: PhantomData<&'a [u8]>,
}

impl<'a> Tx<'a> {
    /// The send queue over a batch's block (`base`), whose send headers `at` places.
    pub(super) fn new(
        base: *mut u8,
        shape: Shape,
        at: &Layout,
        offload: &'a mut Offload,
        st: &'a mut SendState,
        sock: &'a UdpSocket,
    ) -> Tx<'a> {
        Tx {
            base,
            shape,
            shdr: at.shdr,
            siov: at.siov,
            sname: at.sname,
            sctrl: at.sctrl,
            offload,
            st,
            sock,
            errors: 0,
            _life: PhantomData,
        }
    }

    fn hdr(&self, m: usize) -> *mut libc::mmsghdr {
        // SAFETY: m < shape.msgs, inside the block.
        unsafe {
            self.base
                .add(self.shdr + m * size_of::<libc::mmsghdr>())
                .cast()
        }
    }

    fn iov(&self, i: usize) -> *mut libc::iovec {
        // SAFETY: i < send_iovs, inside the block.
        unsafe {
            self.base
                .add(self.siov + i * size_of::<libc::iovec>())
                .cast()
        }
    }

    /// Queue one datagram to `to`.
    pub fn push(&mut self, to: SocketAddr, data: Parts<'a>) {
        if self.shape.group && self.offload.gso {
            if self.st.items.len() == self.shape.msgs {
                self.flush();
            }
            let piece = |p: &[u8]| (p.as_ptr(), p.len());
            self.st.items.push(Item {
                to,
                pieces: [piece(data.0), piece(data.1)],
            });
        } else {
            self.build(to, data);
        }
    }

    /// Add a datagram to the messages: to the last one as a GSO segment where it fits, else as a new one.
    fn build(&mut self, to: SocketAddr, data: Parts<'a>) {
        let len = data.len();
        // An empty datagram is one empty iovec: qemu-user silently sends nothing for a message without any.
        let pieces = (!data.0.is_empty() as usize + !data.1.is_empty() as usize).max(1);
        let most = Layout::send_iovs(self.shape);
        let st = &*self.st;
        let joins = self.offload.gso
            && st.to == Some(to)
            && !st.closed
            && len > 0
            && len <= st.seg
            && st.segs < MAX_SEGMENTS
            && st.bytes + len <= MAX_GSO_BYTES
            && st.iovs + pieces <= most;
        if !joins {
            if st.msgs == self.shape.msgs || st.iovs + pieces > most {
                self.flush();
            }
            self.open(to, len);
        }
        let empty = len == 0;
        for piece in [data.0, data.1]
            .into_iter()
            .filter(|p| empty || !p.is_empty())
            .take(pieces)
        {
            // SAFETY: st.iovs < send_iovs (checked above); the bytes live for 'a.
            unsafe {
                *self.iov(self.st.iovs) = libc::iovec {
                    iov_base: piece.as_ptr().cast_mut().cast(),
                    iov_len: piece.len(),
                };
            }
            self.st.iovs += 1;
        }
        let m = self.st.msgs - 1;
        // SAFETY: the open message's header.
        unsafe {
            let h = &mut (*self.hdr(m)).msg_hdr;
            h.msg_iovlen = (h.msg_iovlen as usize + pieces) as _;
        }
        if joins {
            let st = &mut *self.st;
            st.segs += 1;
            st.bytes += len;
            st.closed = len < st.seg;
            st.gso[m] = st.seg as u16;
        }
    }

    /// Queue bytes that the queue keeps until they are sent.
    pub fn push_owned(&mut self, to: SocketAddr, data: Vec<u8>) {
        // SAFETY: the Vec's heap buffer is kept in `owned` right after (it does not move when `owned` grows) and
        // dropped only by the flush that sent it; a flush inside push happens before this datagram is queued.
        let bytes: &'a [u8] = unsafe { std::slice::from_raw_parts(data.as_ptr(), data.len()) };
        self.push(to, Parts(bytes, &[]));
        self.st.owned.push(data);
    }

    fn open(&mut self, to: SocketAddr, len: usize) {
        let m = self.st.msgs;
        let name = self.base.wrapping_add(self.sname + m * size_of::<Name>());
        let namelen = addr_to_name(to, name.cast());
        let iov = self.iov(self.st.iovs);
        // SAFETY: header m < shape.msgs, inside the block.
        unsafe {
            let h = &mut *self.hdr(m);
            h.msg_hdr = std::mem::zeroed();
            h.msg_hdr.msg_name = name.cast();
            h.msg_hdr.msg_namelen = namelen;
            h.msg_hdr.msg_iov = iov;
            h.msg_len = 0;
        }
        let st = &mut *self.st;
        st.msgs += 1;
        st.gso.push(0);
        st.to = Some(to);
        st.seg = len.min(u16::MAX as usize);
        st.segs = 1;
        st.bytes = len;
        st.closed = false;
    }

    /// Send everything queued. Partial sends continue with the rest; a message the kernel refuses is
    /// counted (per datagram) and skipped, the others still go.
    pub(super) fn flush(&mut self) {
        self.build_grouped();
        let n = self.st.msgs;
        if n == 0 {
            return;
        }
        for m in 0..n {
            let seg = self.st.gso[m];
            if seg > 0 {
                self.set_segment(m, seg);
            }
        }
        let fd = self.sock.as_raw_fd();
        let mut i = 0;
        let mut interrupted = 0;
        while i < n {
            let r = if self.offload.mmsg {
                // SAFETY: headers i..n are built and point at live bytes.
                unsafe {
                    libc::syscall(
                        libc::SYS_sendmmsg,
                        fd,
                        self.hdr(i),
                        (n - i) as libc::c_uint,
                        0,
                    ) as isize
                }
            } else {
                // SAFETY: as above, one header.
                let r = unsafe { libc::sendmsg(fd, &(*self.hdr(i)).msg_hdr, 0) };
                if r >= 0 {
                    1
                } else {
                    -1
                }
            };
            if r > 0 {
                i += r as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOSYS) if self.offload.mmsg => self.offload.mmsg = false,
                Some(libc::EINTR) if interrupted < 8 => interrupted += 1,
                _ => {
                    self.refused(i, &e);
                    i += 1;
                }
            }
        }
        let st = &mut *self.st;
        st.msgs = 0;
        st.iovs = 0;
        st.to = None;
        st.gso.clear();
        st.owned.clear();
    }

    /// Build the queued items, grouped by destination. A stable sort keeps each destination's order; no message
    /// limit can be reached here (at most `msgs` items, two iovecs each), so building never flushes.
    fn build_grouped(&mut self) {
        let n = self.st.items.len();
        if n == 0 {
            return;
        }
        let items = std::mem::take(&mut self.st.items);
        let mut order = [0u8; 256];
        debug_assert!(n <= order.len() && 2 * n <= Layout::send_iovs(self.shape));
        for (i, o) in order.iter_mut().enumerate().take(n) {
            *o = i as u8;
        }
        // Insertion sort: stable, at most 64 small items, and far smaller code than the std sort (the static
        // router binaries have a size budget).
        for k in 1..n {
            let mut j = k;
            while j > 0 && items[order[j - 1] as usize].to > items[order[j] as usize].to {
                order.swap(j - 1, j);
                j -= 1;
            }
        }
        for &i in &order[..n] {
            let it = items[i as usize];
            // SAFETY: the pieces were borrowed for 'a when pushed.
            let piece = |(p, l): (*const u8, usize)| -> &'a [u8] {
                if l == 0 {
                    &[]
                } else {
                    unsafe { std::slice::from_raw_parts(p, l) }
                }
            };
            self.build(it.to, Parts(piece(it.pieces[0]), piece(it.pieces[1])));
        }
        let mut items = items;
        items.clear();
        self.st.items = items;
    }

    fn set_segment(&mut self, m: usize, seg: u16) {
        let ctrl = self.base.wrapping_add(self.sctrl + m * size_of::<Ctrl>());
        // SAFETY: header m and its control buffer are inside the block; CMSG_* walk that buffer.
        unsafe {
            let h = &mut (*self.hdr(m)).msg_hdr;
            h.msg_control = ctrl.cast();
            h.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
            let c = libc::CMSG_FIRSTHDR(h);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
        }
    }

    /// Message `m` was refused. A GSO train is retried datagram by datagram (the kernel may refuse GSO for this
    /// route, e.g. a segment above its MTU, or no checksum offload), so one bad datagram never takes the others.
    fn refused(&mut self, m: usize, e: &io::Error) {
        let seg = self.st.gso[m] as usize;
        if seg == 0 {
            self.errors += 1;
            log::trace!("send failed: {e}");
            return;
        }
        if e.raw_os_error() == Some(libc::EIO) {
            // No checksum offload on this path: GSO will not work for this socket.
            self.offload.gso = false;
        }
        // SAFETY: header m and its iovecs are built; each datagram of the train is seg bytes (the last maybe
        // fewer) in one or two consecutive iovecs.
        unsafe {
            let h = (*self.hdr(m)).msg_hdr;
            let iovs = std::slice::from_raw_parts(h.msg_iov, h.msg_iovlen as usize);
            let mut k = 0;
            while k < iovs.len() {
                let mut take = 1;
                let mut len = iovs[k].iov_len;
                while len < seg && k + take < iovs.len() {
                    len += iovs[k + take].iov_len;
                    take += 1;
                }
                let mut one: libc::msghdr = std::mem::zeroed();
                one.msg_name = h.msg_name;
                one.msg_namelen = h.msg_namelen;
                one.msg_iov = h.msg_iov.add(k);
                one.msg_iovlen = take as _;
                if libc::sendmsg(self.sock.as_raw_fd(), &one, 0) < 0 {
                    self.errors += 1;
                }
                k += take;
            }
        }
    }

    /// Send what is queued; the number of datagrams the kernel refused.
    pub fn finish(mut self) -> usize {
        self.flush();
        self.errors
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        // Queued datagrams never stay behind (a caller that returns early still sends them); errors counted
        // by `finish` only.
        self.flush();
    }
}
