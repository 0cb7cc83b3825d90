//! Asynchronous disk I/O for device queues: submit requests with a token, collect
//! completions when an eventfd says they are ready.
//!
//! Three engines implement [`Engine`]: [`UringEngine`] (io_uring, raw images, with or
//! without O_DIRECT), [`MappedEngine`] (qcow2: reads of allocated clusters through io_uring
//! on the image file, the rest inline) and [`SyncEngine`] (any image: each request runs on a
//! worker thread, or inline, through [`SharedDisk`], then the eventfd is signalled).
//! [`SharedDisk::engine`] and [`SharedDisk::engine_inline`] pick one.
//!
//! The contract every engine keeps: [`Engine::submit`] either refuses a request (an `Err`,
//! e.g. [`ErrorKind::OutOfBounds`] for a range past the end of the disk or
//! [`ErrorKind::Unsupported`] for a write to a read-only image; nothing was queued and no
//! completion will come) or accepts it, and then exactly one [`Completion`] with its token
//! comes back from [`Engine::completions`]. Requests start at the latest at the next
//! [`Engine::commit`]; they complete in any order, so a flush covers the writes that had
//! completed before it was submitted (virtio-blk's rule), not the ones still in flight.
//! Dropping an engine waits for the requests the kernel or worker still holds.
//!
//! Read and write requests carry the caller's buffers as raw iovecs; building one is
//! `unsafe` because the buffers must stay valid until the completion is collected (see
//! [`Request::read`]). The unsafe code is confined to `iovec.rs` and `uring.rs`
//! (docs/decisions/0007).

mod eventfd;
mod iovec;
mod mapped;
mod sync;
mod uring;

pub use mapped::MappedEngine;
pub use sync::{SyncEngine, SyncMode};
pub use uring::{RingMode, UringEngine};

use std::os::fd::BorrowedFd;

use iovec::Iovecs;

use crate::{Capabilities, Error, ErrorKind, Result, SharedDisk};

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Read into the request's buffers.
    Read,
    /// Write from the request's buffers.
    Write,
    /// Make completed writes durable.
    Flush,
    /// Deallocate a range (its contents become unspecified).
    Discard,
    /// Make a range read as zeroes.
    WriteZeroes,
}

/// One request for an [`Engine`].
#[derive(Debug)]
pub struct Request {
    op: Op,
}

#[derive(Debug)]
enum Op {
    Read { offset: u64, iov: Iovecs },
    Write { offset: u64, iov: Iovecs },
    Flush,
    Discard { offset: u64, len: u64 },
    WriteZeroes { offset: u64, len: u64, unmap: bool },
}

/// [`Request::read`] and [`Request::write`], the two `unsafe` constructors, live in
/// `iovec.rs` with the rest of the code that trusts their contract.
impl Request {
    /// Makes every write that completed before this request was submitted durable.
    pub fn flush() -> Request {
        Request { op: Op::Flush }
    }

    /// Deallocates `len` bytes at `offset`; they may read back as anything.
    pub fn discard(offset: u64, len: u64) -> Request {
        Request {
            op: Op::Discard { offset, len },
        }
    }

    /// Makes `len` bytes at `offset` read as zeroes; `unmap` allows deallocating them.
    pub fn write_zeroes(offset: u64, len: u64, unmap: bool) -> Request {
        Request {
            op: Op::WriteZeroes { offset, len, unmap },
        }
    }

    /// What the request asks for.
    pub fn kind(&self) -> RequestKind {
        match self.op {
            Op::Read { .. } => RequestKind::Read,
            Op::Write { .. } => RequestKind::Write,
            Op::Flush => RequestKind::Flush,
            Op::Discard { .. } => RequestKind::Discard,
            Op::WriteZeroes { .. } => RequestKind::WriteZeroes,
        }
    }

    /// The disk range the request covers (offset, length); (0, 0) for a flush.
    pub fn range(&self) -> (u64, u64) {
        match &self.op {
            Op::Read { offset, iov } | Op::Write { offset, iov } => (*offset, iov.total()),
            Op::Flush => (0, 0),
            Op::Discard { offset, len } | Op::WriteZeroes { offset, len, .. } => (*offset, *len),
        }
    }
}

/// A finished request.
#[derive(Debug)]
pub struct Completion {
    /// The token given to [`Engine::submit`].
    pub token: u64,
    /// `Ok` when the whole request was done (reads and writes transfer every byte or fail).
    pub result: Result<()>,
}

/// An asynchronous I/O engine serving one device queue (see the module documentation).
pub trait Engine: Send {
    /// The engine's name for logs and metrics: `io_uring`, `sync-worker` or `sync-inline`.
    fn name(&self) -> &'static str;

    /// What the image behind this engine supports.
    fn capabilities(&self) -> Capabilities;

    /// An eventfd that becomes readable when completions are ready; add it to an epoll set.
    /// [`Engine::completions`] resets it.
    fn notifier(&self) -> BorrowedFd<'_>;

    /// Accepts a request (it starts at the latest at the next [`Engine::commit`]) or refuses
    /// it with an error, in which case no completion will come.
    fn submit(&mut self, request: Request, token: u64) -> Result<()>;

    /// Starts every accepted request (one system call for a batch).
    fn commit(&mut self) -> Result<()>;

    /// Resets the notifier and appends every finished request to `out`. Never blocks.
    fn completions(&mut self, out: &mut Vec<Completion>);

    /// Accepted requests whose completion has not been returned yet.
    fn in_flight(&self) -> usize;

    /// Whether [`Engine::completions`] would return something now, found without a system
    /// call where the engine can (io_uring's completion ring is shared memory): what a caller
    /// that polls asks between batches. True when unsure.
    fn has_completions(&mut self) -> bool {
        true
    }

    /// Waits until the kernel holds none of this engine's requests, so that another thread
    /// may take the engine over (an io_uring ring with a single issuer is entered only by
    /// the thread that used it last; docs/decisions/0025). Their completions stay in the
    /// engine for [`Engine::completions`]; requests not yet started stay queued. Call it on
    /// the thread that served the engine before handing it on. Nothing to do for most
    /// engines.
    fn settle(&mut self) -> Result<()> {
        Ok(())
    }

    /// Blocks until the notifier is readable (for callers without an event loop: tools,
    /// tests and benchmarks). Returns at once if completions are waiting.
    fn wait(&mut self) -> Result<()> {
        eventfd::wait_readable(self.notifier())
    }
}

/// The engine [`SharedDisk::engine`] returns.
pub(crate) fn engine(disk: &SharedDisk, depth: u32) -> Result<Box<dyn Engine>> {
    engine_with(disk, depth, SyncMode::Worker)
}

/// An engine for `disk`: io_uring for raw images, otherwise (or where io_uring is refused)
/// the synchronous adapter running requests as `mode` says.
pub(crate) fn engine_with(
    disk: &SharedDisk,
    depth: u32,
    mode: SyncMode,
) -> Result<Box<dyn Engine>> {
    if disk.raw().is_some() {
        match UringEngine::new(disk.clone(), depth) {
            Ok(e) => return Ok(Box::new(e)),
            Err(e) if e.kind() == ErrorKind::Unsupported => {}
            Err(e) => return Err(e),
        }
    } else if mode == SyncMode::Inline {
        // qcow2 for a caller with a thread of its own: mapped reads through io_uring, the
        // rest inline; any failure to set that up leaves the plain inline adapter.
        if let Ok(e) = MappedEngine::new(disk.clone(), depth) {
            return Ok(Box::new(e));
        }
    }
    Ok(Box::new(SyncEngine::new(disk.clone(), mode)?))
}

/// Refuses a request the image cannot take: out of range, a write to a read-only image, an
/// operation the image does not offer.
pub(crate) fn validate(caps: &Capabilities, size: u64, request: &Request) -> Result<()> {
    let kind = request.kind();
    let op = match kind {
        RequestKind::Read => "read",
        RequestKind::Write => "write",
        RequestKind::Flush => return Ok(()),
        RequestKind::Discard => "discard",
        RequestKind::WriteZeroes => "write_zeroes",
    };
    let offered = match kind {
        RequestKind::Discard => caps.discard,
        RequestKind::WriteZeroes => caps.write_zeroes,
        _ => true,
    };
    if kind != RequestKind::Read && caps.read_only {
        return Err(Error::new(ErrorKind::Unsupported, "image is read-only").with_operation(op));
    }
    if !offered {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("{} images do not support {op}", caps.format.name()),
        )
        .with_operation(op));
    }
    let (offset, len) = request.range();
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::new(
            ErrorKind::OutOfBounds,
            format!("{len} bytes at {offset:#x} exceed the disk size {size:#x}"),
        )
        .with_operation(op)
        .with_offset(offset)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Format;

    fn caps(read_only: bool, discard: bool) -> Capabilities {
        Capabilities {
            format: Format::Vmdk,
            read_only,
            flush: !read_only,
            discard,
            write_zeroes: !read_only,
            write_zeroes_may_unmap: false,
            resize: false,
            logical_block_size: 512,
            physical_block_size: 4096,
            discard_alignment: 0,
            direct: false,
            buffer_alignment: 1,
        }
    }

    #[test]
    fn test_validate_past_end_out_of_bounds() {
        let r = Request::write_zeroes(4096, 1, true);
        let wrap = Request::write_zeroes(u64::MAX, 2, true);

        let e = validate(&caps(false, false), 4096, &r).expect_err("past end");
        let w = validate(&caps(false, false), 4096, &wrap).expect_err("wraps");

        assert_eq!(e.kind(), ErrorKind::OutOfBounds);
        assert_eq!(w.kind(), ErrorKind::OutOfBounds);
    }

    #[test]
    fn test_validate_unoffered_or_read_only_unsupported() {
        let d = Request::discard(0, 512);
        let z = Request::write_zeroes(0, 512, false);

        let no_discard = validate(&caps(false, false), 4096, &d).expect_err("no discard");
        let ro = validate(&caps(true, false), 4096, &z).expect_err("read-only");
        let flush_ro = validate(&caps(true, false), 4096, &Request::flush());

        assert_eq!(no_discard.kind(), ErrorKind::Unsupported);
        assert_eq!(ro.kind(), ErrorKind::Unsupported);
        assert!(flush_ro.is_ok());
    }
}
