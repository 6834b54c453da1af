//! The datagrams of one receive: a read-only view of a [`Batch`]'s slots, a GRO train cut back into its
//! datagrams, each datagram's bytes in at most two pieces.

use super::*;

/// The datagrams of the last receive (a read-only view of the batch).
#[derive(Clone, Copy)]
pub struct Received<'a> {
    mem: *const u8,
    over: *const u8,
    shape: Shape,
    rhdr: usize,
    dense: usize,
    filled: usize,
    gro: bool,
    _life: PhantomData<&'a [u8]>,
}

/// One received datagram: its source and where its bytes are.
#[derive(Clone, Copy, Debug)]
pub struct Datagram {
    pub src: SocketAddr,
    slot: usize,
    off: usize,
    pub len: usize,
}

/// A datagram's bytes in at most two pieces (dense area, then overflow).
#[derive(Clone, Copy, Debug)]
pub struct Parts<'a>(pub &'a [u8], pub &'a [u8]);

impl<'a> Parts<'a> {
    pub fn len(&self) -> usize {
        self.0.len() + self.1.len()
    }

    /// The bytes in one piece: borrowed when they are, else copied into `scratch`.
    pub fn contiguous<'s>(&self, scratch: &'s mut Vec<u8>) -> &'s [u8]
    where
        'a: 's,
    {
        if self.1.is_empty() {
            return self.0;
        }
        scratch.clear();
        scratch.extend_from_slice(self.0);
        scratch.extend_from_slice(self.1);
        scratch
    }
}

impl<'a> Received<'a> {
    /// The view of a batch's block (`mem`) and overflow (`over`) after a receive that filled `filled` slots.
    pub(super) fn new(
        mem: *const u8,
        over: *const u8,
        shape: Shape,
        at: &Layout,
        filled: usize,
        gro: bool,
    ) -> Received<'a> {
        Received {
            mem,
            over,
            shape,
            rhdr: at.rhdr,
            dense: at.dense,
            filled,
            gro,
            _life: PhantomData,
        }
    }

    pub(super) fn hdr(&self, slot: usize) -> &'a libc::mmsghdr {
        // SAFETY: a header inside the block, not written while this view lives.
        unsafe {
            &*self
                .mem
                .add(self.rhdr + slot * size_of::<libc::mmsghdr>())
                .cast()
        }
    }

    /// The received datagrams in order; a GRO train is cut into its datagrams.
    pub fn datagrams(&self) -> impl Iterator<Item = Datagram> + 'a {
        let this = *self;
        (0..self.filled).flat_map(move |slot| {
            let h = this.hdr(slot);
            let total = h.msg_len as usize;
            let seg = this.segment_size(slot).filter(|&g| g > 0).unwrap_or(total);
            let src = name_to_addr(h.msg_hdr.msg_name.cast(), h.msg_hdr.msg_namelen);
            let count = if total == 0 { 1 } else { total.div_ceil(seg) };
            (0..count).filter_map(move |k| {
                let off = k * seg;
                Some(Datagram {
                    src: src?,
                    slot,
                    off,
                    len: seg.min(total - off),
                })
            })
        })
    }

    /// The GRO segment size of a slot, if the kernel coalesced a train into it.
    fn segment_size(&self, slot: usize) -> Option<usize> {
        if !self.gro {
            return None;
        }
        let h = &self.hdr(slot).msg_hdr;
        if h.msg_controllen == 0 {
            return None;
        }
        // SAFETY: the kernel filled msg_control (inside the block) with msg_controllen bytes of cmsgs.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                    let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                    return usize::try_from(v).ok();
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        None
    }

    /// A datagram's bytes.
    pub fn parts(&self, d: &Datagram) -> Parts<'a> {
        let (d_len, start, end) = (self.shape.dense, d.off, d.off + d.len);
        // SAFETY: the slot's dense area in the block and its overflow in the mapping.
        let (dense, over) = unsafe {
            (
                self.mem.add(self.dense + d.slot * d_len),
                self.over.add(d.slot * OVERFLOW),
            )
        };
        let piece = |base: *const u8, from: usize, to: usize| -> &'a [u8] {
            if from >= to {
                return &[];
            }
            // SAFETY: within the slot's area, written by the last receive.
            unsafe { std::slice::from_raw_parts(base.add(from), to - from) }
        };
        Parts(
            piece(dense, start.min(d_len), end.min(d_len)),
            piece(over, start.max(d_len) - d_len, end.max(d_len) - d_len),
        )
    }
}
