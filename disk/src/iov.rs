//! Scatter-gather helpers: a request's buffers handed out piece by piece (so each format can
//! split a request at cluster or grain boundaries and read or write every piece straight into
//! the caller's memory), and positioned vectored host I/O (`preadv`/`pwritev`) that finishes
//! short transfers.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};

/// Most iovecs one `preadv`/`pwritev` takes (Linux's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// A request's destination buffers, handed out front to back.
pub(crate) struct SegsMut<'a> {
    segs: VecDeque<&'a mut [u8]>,
    len: usize,
}

impl<'a> SegsMut<'a> {
    /// The caller's buffers, in order.
    pub(crate) fn new(bufs: &'a mut [IoSliceMut<'_>]) -> SegsMut<'a> {
        SegsMut::from_vec(bufs.iter_mut().map(|b| &mut **b).collect())
    }

    /// Buffers already split off another request.
    pub(crate) fn from_vec(v: Vec<&'a mut [u8]>) -> SegsMut<'a> {
        let segs: VecDeque<&'a mut [u8]> = v.into_iter().filter(|s| !s.is_empty()).collect();
        let len = segs.iter().map(|s| s.len()).sum();
        SegsMut { segs, len }
    }

    /// Bytes not handed out yet.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The next `n` bytes of buffer (fewer only if the buffers run out).
    pub(crate) fn take(&mut self, n: usize) -> Vec<&'a mut [u8]> {
        let mut out = Vec::new();
        let mut want = n;
        while want > 0 {
            let Some(s) = self.segs.pop_front() else {
                break;
            };
            if s.len() <= want {
                want -= s.len();
                out.push(s);
            } else {
                let (a, b) = s.split_at_mut(want);
                out.push(a);
                self.segs.push_front(b);
                want = 0;
            }
        }
        self.len -= n - want;
        out
    }
}

/// A request's source buffers, handed out front to back.
pub(crate) struct Segs<'a> {
    segs: VecDeque<&'a [u8]>,
    len: usize,
}

impl<'a> Segs<'a> {
    /// The caller's buffers, in order.
    pub(crate) fn new(bufs: &'a [IoSlice<'_>]) -> Segs<'a> {
        Segs::from_vec(bufs.iter().map(|b| &**b).collect())
    }

    /// Buffers already split off another request.
    pub(crate) fn from_vec(v: Vec<&'a [u8]>) -> Segs<'a> {
        let segs: VecDeque<&'a [u8]> = v.into_iter().filter(|s| !s.is_empty()).collect();
        let len = segs.iter().map(|s| s.len()).sum();
        Segs { segs, len }
    }

    /// Bytes not handed out yet.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The next `n` bytes of buffer (fewer only if the buffers run out).
    pub(crate) fn take(&mut self, n: usize) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut want = n;
        while want > 0 {
            let Some(s) = self.segs.pop_front() else {
                break;
            };
            if s.len() <= want {
                want -= s.len();
                out.push(s);
            } else {
                let (a, b) = s.split_at(want);
                out.push(a);
                self.segs.push_front(b);
                want = 0;
            }
        }
        self.len -= n - want;
        out
    }
}

/// Total length of the caller's vectored buffers, `None` on overflow.
pub(crate) fn total_len(bufs: &[IoSlice<'_>]) -> Option<u64> {
    bufs.iter()
        .try_fold(0u64, |acc, b| acc.checked_add(b.len() as u64))
}

/// Total length of the caller's vectored buffers, `None` on overflow.
pub(crate) fn total_len_mut(bufs: &[IoSliceMut<'_>]) -> Option<u64> {
    bufs.iter()
        .try_fold(0u64, |acc, b| acc.checked_add(b.len() as u64))
}

/// Fills buffers with zeroes.
pub(crate) fn fill_zero(segs: &mut [&mut [u8]]) {
    for s in segs {
        s.fill(0);
    }
}

/// Copies `src` into the buffers, front to back (up to the shorter of the two).
pub(crate) fn scatter(segs: &mut [&mut [u8]], src: &[u8]) {
    let mut pos = 0;
    for s in segs {
        let n = s.len().min(src.len() - pos);
        s[..n].copy_from_slice(&src[pos..pos + n]);
        pos += n;
    }
}

/// The buffers' bytes in one vector (for data that must pass through a format's own buffer).
pub(crate) fn gather(segs: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(segs.iter().map(|s| s.len()).sum());
    for s in segs {
        out.extend_from_slice(s);
    }
    out
}

/// Moves (`idx`, `skip`) forward by `n` bytes over buffers of the given lengths, stepping past
/// empty and finished buffers.
fn advance(
    lens: impl Fn(usize) -> usize,
    count: usize,
    idx: &mut usize,
    skip: &mut usize,
    n: usize,
) {
    let mut left = n;
    while *idx < count {
        let room = lens(*idx) - *skip;
        if left < room {
            *skip += left;
            return;
        }
        left -= room;
        *idx += 1;
        *skip = 0;
        if left == 0 {
            // Step over empty buffers so the next call starts on data.
            while *idx < count && lens(*idx) == 0 {
                *idx += 1;
            }
            return;
        }
    }
}

/// Reads exactly the buffers' length at `offset` with `preadv`, retrying short reads. At the
/// end of the file the rest is zero-filled if `zero_past_eof`, else it is an error.
pub(crate) fn preadv_exact(
    file: &File,
    segs: &mut [&mut [u8]],
    mut offset: u64,
    zero_past_eof: bool,
) -> io::Result<()> {
    let count = segs.len();
    let (mut idx, mut skip) = (0usize, 0usize);
    while idx < count && segs[idx].is_empty() {
        idx += 1;
    }
    while idx < count {
        let n = {
            let mut iov: Vec<IoSliceMut<'_>> = Vec::with_capacity((count - idx).min(IOV_MAX));
            for (i, s) in segs[idx..].iter_mut().take(IOV_MAX).enumerate() {
                let from = if i == 0 { skip } else { 0 };
                iov.push(IoSliceMut::new(&mut s[from..]));
            }
            match rustix::io::preadv(file, &mut iov, offset) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            if !zero_past_eof {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            segs[idx][skip..].fill(0);
            fill_zero(&mut segs[idx + 1..]);
            return Ok(());
        }
        offset += n as u64;
        let lens: Vec<usize> = segs.iter().map(|s| s.len()).collect();
        advance(|i| lens[i], count, &mut idx, &mut skip, n);
    }
    Ok(())
}

/// Writes all of the buffers at `offset` with `pwritev`, retrying short writes.
pub(crate) fn pwritev_all(file: &File, segs: &[&[u8]], mut offset: u64) -> io::Result<()> {
    let count = segs.len();
    let (mut idx, mut skip) = (0usize, 0usize);
    while idx < count && segs[idx].is_empty() {
        idx += 1;
    }
    while idx < count {
        let iov: Vec<IoSlice<'_>> = segs[idx..]
            .iter()
            .take(IOV_MAX)
            .enumerate()
            .map(|(i, s)| IoSlice::new(if i == 0 { &s[skip..] } else { s }))
            .collect();
        let n = match rustix::io::pwritev(file, &iov, offset) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        offset += n as u64;
        advance(|i| segs[i].len(), count, &mut idx, &mut skip, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_segs_mut_take_splits_across_buffers() {
        let (mut a, mut b) = ([1u8; 3], [2u8; 5]);
        let mut bufs = [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)];
        let mut s = SegsMut::new(&mut bufs);

        let first = s.take(4);
        let lens: Vec<usize> = first.iter().map(|x| x.len()).collect();
        let rest = s.take(10);

        assert_eq!(lens, vec![3, 1]);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].len(), 4);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn test_segs_take_skips_empty_buffers() {
        let (a, b, c) = ([1u8; 2], [0u8; 0], [3u8; 2]);
        let bufs = [IoSlice::new(&a), IoSlice::new(&b), IoSlice::new(&c)];
        let mut s = Segs::new(&bufs);

        let got = gather(&s.take(4));

        assert_eq!(got, vec![1, 1, 3, 3]);
    }

    #[test]
    fn test_advance_across_empty_buffers_lands_on_data() {
        let lens = [2usize, 0, 0, 3];
        let (mut idx, mut skip) = (0, 0);

        advance(|i| lens[i], 4, &mut idx, &mut skip, 2);

        assert_eq!((idx, skip), (3, 0));
    }

    #[test]
    fn test_preadv_exact_past_eof_zero_fills_or_fails() {
        let dir = std::env::temp_dir().join(format!("disk-iov-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("f");
        std::fs::write(&p, [7u8; 5]).expect("write");
        let f = File::open(&p).expect("open");
        let (mut a, mut b) = ([9u8; 3], [9u8; 4]);

        preadv_exact(&f, &mut [&mut a[..], &mut b[..]], 0, true).expect("read");
        let err = preadv_exact(&f, &mut [&mut [0u8; 8][..]], 0, false).expect_err("eof");

        assert_eq!(a, [7, 7, 7]);
        assert_eq!(b, [7, 7, 0, 0]);
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
