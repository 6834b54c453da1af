//! Lazily touched memory for receive buffers (mmap), so idle tunnels cost no resident memory.

use std::io;

/// Memory that costs nothing resident until it is written: a thousand idle tunnels must not hold a thousand
/// touched 64 KiB receive buffers (fresh anonymous pages are the shared zero page until written).
pub struct Mapped {
    ptr: *mut u8,
    len: usize,
}

// The mapping is plain memory owned by one thread at a time.
unsafe impl Send for Mapped {}

impl Mapped {
    pub fn new(len: usize) -> io::Result<Mapped> {
        // SAFETY: anonymous private mapping, checked for failure, unmapped exactly once in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapped {
            ptr: p.cast(),
            len: len.max(1),
        })
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the mapping is len bytes, zero-filled by the kernel, alive as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for Mapped {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: ptr came from mmap with this length.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::socket::BUF_LEN;

    #[test]
    fn recv_buf_is_zeroed_and_writable() {
        let mut b = Mapped::new(BUF_LEN).unwrap();
        assert_eq!(b.len(), BUF_LEN);
        assert!(b.iter().all(|&x| x == 0));
        b[BUF_LEN - 1] = 1;
        assert_eq!(b[BUF_LEN - 1], 1);
    }
}
