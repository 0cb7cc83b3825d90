//! Caller-owned buffers of an asynchronous request, described by raw iovecs.
//!
//! This file and `uring.rs` are the only places in the crate with `unsafe` code
//! (docs/decisions/0007). The contract is made once, by whoever builds a read or write
//! [`crate::aio::Request`] (an `unsafe fn`): the memory the iovecs describe stays valid, and
//! nobody else touches it, until the request's completion has been collected or the engine
//! has been dropped. Everything here relies on that promise and nothing else.
#![allow(unsafe_code)]

use std::io::{IoSlice, IoSliceMut};

use super::{Op, Request};
use crate::{Error, ErrorKind, Result};

/// Largest bounce buffer for a read into overlapping buffers.
pub(crate) const BOUNCE_CHUNK: u64 = 1 << 20;

impl Request {
    /// Reads at disk byte `offset` into the buffers `iovecs` describe (the array itself is
    /// copied; only the buffers must outlive this call). Fails on a null or address-space
    /// wrapping buffer.
    ///
    /// # Safety
    ///
    /// Every buffer must be valid for writes of its length and stay valid, with nobody else
    /// reading or writing it, from now until this request's [`Completion`](super::Completion) has been returned
    /// by [`Engine::completions`](super::Engine::completions), or the engine it was submitted to has been dropped, or
    /// (if it is never accepted by `submit`) the request has been dropped. For guest memory
    /// that is the virtio rule: the driver does not touch a buffer until the device has used
    /// the descriptor, and the device must keep the memory mapped until then.
    pub unsafe fn read(offset: u64, iovecs: &[libc::iovec]) -> Result<Request> {
        // SAFETY: our caller makes exactly the promise `Iovecs::new` requires.
        let iov = unsafe { Iovecs::new(iovecs)? };
        Ok(Request {
            op: Op::Read { offset, iov },
        })
    }

    /// Writes the buffers `iovecs` describe at disk byte `offset`.
    ///
    /// # Safety
    ///
    /// As [`Request::read`], for reads of the buffers: they stay valid and nobody writes them
    /// until the completion has been collected or the engine dropped.
    pub unsafe fn write(offset: u64, iovecs: &[libc::iovec]) -> Result<Request> {
        // SAFETY: our caller makes exactly the promise `Iovecs::new` requires.
        let iov = unsafe { Iovecs::new(iovecs)? };
        Ok(Request {
            op: Op::Write { offset, iov },
        })
    }
}

/// The iovecs of one request, copied from the caller's array (so only the buffers, not the
/// array, must outlive the call that built the request).
#[derive(Debug)]
pub(crate) struct Iovecs {
    iov: Vec<libc::iovec>,
    total: u64,
    /// Whether two iovecs share memory (a hostile guest can post such descriptors); such
    /// reads are never turned into Rust slices, which must not alias.
    overlapping: bool,
}

// SAFETY: an `Iovecs` only exists through `Iovecs::new`, whose caller promised that the
// described memory stays valid and exclusively ours until the request is finished; that
// promise does not depend on which thread uses the pointers, so moving them to an engine's
// worker thread is sound.
unsafe impl Send for Iovecs {}

impl Iovecs {
    /// Copies the caller's iovecs.
    ///
    /// # Safety
    ///
    /// Each iovec must describe memory that is valid for reads and writes of `iov_len` bytes
    /// and stays so, untouched by anyone else, until the request built from these iovecs
    /// has completed and its completion has been collected, or the engine it was submitted
    /// to has been dropped (or, if it is never submitted, until it is dropped).
    pub(crate) unsafe fn new(iov: &[libc::iovec]) -> Result<Iovecs> {
        let mut total = 0u64;
        let mut spans: Vec<(usize, usize)> = Vec::with_capacity(iov.len());
        for v in iov {
            let start = v.iov_base as usize;
            if v.iov_len == 0 {
                continue;
            }
            let end = start.checked_add(v.iov_len).filter(|_| start != 0);
            let Some(end) = end else {
                return Err(Error::new(
                    ErrorKind::OutOfBounds,
                    "a request buffer is null or wraps around the address space",
                ));
            };
            spans.push((start, end));
            total = total
                .checked_add(v.iov_len as u64)
                .ok_or_else(|| Error::new(ErrorKind::OutOfBounds, "request buffers overflow"))?;
        }
        spans.sort_unstable();
        let overlapping = spans.windows(2).any(|w| w[1].0 < w[0].1);
        let iov = iov.iter().copied().filter(|v| v.iov_len > 0).collect();
        Ok(Iovecs {
            iov,
            total,
            overlapping,
        })
    }

    /// Total bytes described.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// The (non-empty) iovecs, for the kernel.
    pub(crate) fn as_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }

    /// How many iovecs there are.
    pub(crate) fn count(&self) -> usize {
        self.iov.len()
    }

    /// Whether every buffer starts at a multiple of `mem` and is a multiple of `block` long.
    pub(crate) fn aligned(&self, mem: u32, block: u32) -> bool {
        self.iov.iter().all(|v| {
            (v.iov_base as usize).is_multiple_of(mem as usize)
                && v.iov_len.is_multiple_of(block as usize)
        })
    }

    /// Splits off the first `n` bytes (all if fewer) as iovecs of their own, leaving the rest
    /// here: the pieces of one request that go to different places.
    pub(crate) fn split_front(&mut self, n: u64) -> Iovecs {
        let mut left = n.min(self.total) as usize;
        let total = left as u64;
        let mut front = Vec::new();
        for v in &self.iov {
            if left == 0 {
                break;
            }
            let take = v.iov_len.min(left);
            front.push(libc::iovec {
                iov_base: v.iov_base,
                iov_len: take,
            });
            left -= take;
        }
        self.advance(total);
        Iovecs {
            iov: front,
            total,
            overlapping: self.overlapping,
        }
    }

    /// Drops the first `n` bytes (after a short transfer, before resubmitting the rest).
    pub(crate) fn advance(&mut self, n: u64) {
        let mut left = n as usize;
        let mut first = 0;
        while first < self.iov.len() && left >= self.iov[first].iov_len {
            left -= self.iov[first].iov_len;
            first += 1;
        }
        self.iov.drain(..first);
        if let Some(v) = self.iov.first_mut() {
            v.iov_base = (v.iov_base as *mut u8).wrapping_add(left).cast();
            v.iov_len -= left;
        }
        self.total = self.total.saturating_sub(n);
    }

    /// Runs `f(buffers, position)` to fill the buffers (a read's destination), where
    /// `position` is the byte of the request the buffers start at. Normally `f` runs once on
    /// the caller's buffers as Rust slices; overlapping buffers instead go through a bounce
    /// buffer of at most [`BOUNCE_CHUNK`] bytes, one chunk per call, so no two `&mut` slices
    /// alias and a hostile request cannot make the bounce buffer large.
    pub(crate) fn read_with(
        &mut self,
        mut f: impl FnMut(&mut [IoSliceMut<'_>], u64) -> Result<()>,
    ) -> Result<()> {
        if self.overlapping {
            let mut bounce = vec![0u8; self.total.min(BOUNCE_CHUNK) as usize];
            let mut pos = 0u64;
            while pos < self.total {
                let n = (self.total - pos).min(BOUNCE_CHUNK) as usize;
                f(&mut [IoSliceMut::new(&mut bounce[..n])], pos)?;
                self.copy_from_at(&bounce[..n], pos);
                pos += n as u64;
            }
            return Ok(());
        }
        let mut slices: Vec<IoSliceMut<'_>> = self
            .iov
            .iter()
            .map(|v| {
                // SAFETY: `new`'s caller promised each iovec is valid for writes of
                // `iov_len` bytes and untouched by others until completion; `iov_base` is
                // non-null (checked in `new`); the buffers do not overlap (checked there
                // too), so these `&mut` slices do not alias; they live only for this call.
                let s = unsafe { std::slice::from_raw_parts_mut(v.iov_base.cast(), v.iov_len) };
                IoSliceMut::new(s)
            })
            .collect();
        f(&mut slices, 0)
    }

    /// Runs `f` on the buffers as Rust slices (a write's source).
    pub(crate) fn write_with<R>(&self, f: impl FnOnce(&[IoSlice<'_>]) -> Result<R>) -> Result<R> {
        let slices: Vec<IoSlice<'_>> = self
            .iov
            .iter()
            .map(|v| {
                // SAFETY: `new`'s caller promised each iovec is valid for reads of `iov_len`
                // bytes and not written by others until completion; `iov_base` is non-null;
                // shared slices may overlap; they live only for this call.
                let s = unsafe { std::slice::from_raw_parts(v.iov_base.cast(), v.iov_len) };
                IoSlice::new(s)
            })
            .collect();
        f(&slices)
    }

    /// Copies `src` into the buffers, front to back (up to the shorter of the two).
    pub(crate) fn copy_from(&mut self, src: &[u8]) {
        self.copy_from_at(src, 0);
    }

    /// Copies `src` into the buffers starting `skip` bytes into them.
    fn copy_from_at(&mut self, src: &[u8], skip: u64) {
        let mut skip = skip as usize;
        let mut pos = 0usize;
        for v in &self.iov {
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            let n = (v.iov_len - skip).min(src.len() - pos);
            let dst = (v.iov_base as *mut u8).wrapping_add(skip);
            // SAFETY: `dst..dst + n` lies inside this iovec (`skip + n <= iov_len`), valid
            // for writes by the `new` contract; `src` is memory of ours, so the ranges are
            // disjoint; raw copies make no aliasing claims even if two iovecs overlap.
            unsafe { std::ptr::copy_nonoverlapping(src[pos..].as_ptr(), dst, n) };
            pos += n;
            skip = 0;
            if pos == src.len() {
                return;
            }
        }
    }

    /// Copies the buffers into `dst`, front to back (up to the shorter of the two).
    pub(crate) fn copy_to(&self, dst: &mut [u8]) {
        let mut pos = 0usize;
        for v in &self.iov {
            let n = v.iov_len.min(dst.len() - pos);
            // SAFETY: the source is valid for `iov_len >= n` bytes of reads (the `new`
            // contract); `dst` is memory of ours, disjoint from it.
            unsafe {
                std::ptr::copy_nonoverlapping(v.iov_base.cast::<u8>(), dst[pos..].as_mut_ptr(), n)
            };
            pos += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(buf: &mut [u8]) -> libc::iovec {
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    #[test]
    fn test_iovecs_advance_partial_then_whole_drops_consumed_bytes() {
        let (mut a, mut b) = ([1u8; 4], [2u8; 4]);
        // SAFETY: a and b outlive v and nothing else touches them meanwhile.
        let mut v = unsafe { Iovecs::new(&[iov(&mut a), iov(&mut b)]) }.expect("iovecs");

        v.advance(6);
        let mut out = [0u8; 2];
        v.copy_to(&mut out);

        assert_eq!((v.count(), v.total()), (1, 2));
        assert_eq!(out, [2, 2]);
    }

    #[test]
    fn test_iovecs_split_front_inside_and_across_buffers_keeps_order() {
        let mut a = [0u8; 10];
        let mut b = [0u8; 6];
        let (pa, pb) = (a.as_mut_ptr() as usize, b.as_mut_ptr() as usize);
        // SAFETY: `a` and `b` outlive the iovecs, which are never used for I/O.
        let mut v = unsafe { Iovecs::new(&[iov(&mut a), iov(&mut b)]) }.unwrap();

        let first = v.split_front(4);
        let second = v.split_front(8);
        let rest = v.split_front(100);

        let spans = |x: &Iovecs| -> Vec<(usize, usize)> {
            x.iov
                .iter()
                .map(|i| (i.iov_base as usize, i.iov_len))
                .collect()
        };
        assert_eq!(spans(&first), [(pa, 4)]);
        assert_eq!(spans(&second), [(pa + 4, 6), (pb, 2)]);
        assert_eq!(spans(&rest), [(pb + 2, 4)]);
        assert_eq!((first.total(), second.total(), rest.total()), (4, 8, 4));
        assert_eq!(v.total(), 0);
    }

    #[test]
    fn test_iovecs_overlapping_read_goes_through_bounce() {
        let mut a = [0u8; 8];
        let whole = iov(&mut a);
        let tail = libc::iovec {
            iov_base: whole.iov_base.cast::<u8>().wrapping_add(4).cast(),
            iov_len: 4,
        };
        // SAFETY: a outlives v; the two iovecs overlap on purpose.
        let mut v = unsafe { Iovecs::new(&[whole, tail]) }.expect("iovecs");

        let mut calls = Vec::new();
        v.read_with(|bufs, pos| {
            assert_eq!(bufs.len(), 1, "overlapping buffers must not become slices");
            calls.push((pos, bufs[0].len()));
            bufs[0].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
            Ok(())
        })
        .expect("read");

        // The request's 12 bytes land in order: the tail iovec (bytes 8..12) is written last.
        assert_eq!(calls, vec![(0, 12)]);
        assert_eq!(a, [1, 2, 3, 4, 9, 10, 11, 12]);
    }

    #[test]
    fn test_iovecs_overlapping_large_read_bounces_in_bounded_chunks() {
        let mut a = vec![0u8; 3 << 20];
        let whole = iov(&mut a);
        // SAFETY: a outlives v; the same buffer is listed twice on purpose.
        let mut v = unsafe { Iovecs::new(&[whole, whole]) }.expect("iovecs");

        let mut calls = Vec::new();
        v.read_with(|bufs, pos| {
            calls.push((pos, bufs[0].len() as u64));
            bufs[0].fill((pos >> 20) as u8);
            Ok(())
        })
        .expect("read");

        assert_eq!(calls.len(), 6);
        assert!(calls.iter().all(|&(_, n)| n <= BOUNCE_CHUNK));
        assert_eq!(calls.last(), Some(&(5 << 20, 1 << 20)));
        // The second listing (request bytes 3..6 MiB) is copied last.
        assert_eq!((a[0], a[(1 << 20) + 5], a[(3 << 20) - 1]), (3, 4, 5));
    }

    #[test]
    fn test_iovecs_null_buffer_refused() {
        let bad = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 16,
        };

        // SAFETY: a null iovec is refused before anything uses it.
        let err = unsafe { Iovecs::new(&[bad]) }.expect_err("null");

        assert_eq!(err.kind(), ErrorKind::OutOfBounds);
    }
}
