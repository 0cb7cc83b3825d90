//! The io_uring engine for qcow2 images: reads of data stored plainly in the image file go
//! to the kernel through a [`UringEngine`] on that file, everything else runs inline.
//!
//! A read is translated first ([`crate::Disk::data_map`], under the image's lock, from the
//! L2 cache): when every cluster it touches is a normal allocated cluster inside the file
//! as it was when the engine started, the request becomes one io_uring read per
//! host-contiguous run, straight into the caller's buffers, and completes when all of them
//! have. Reads touching unallocated (backing file, zeroes), zero or compressed clusters, and
//! every other request, run synchronously inside `submit` through [`SharedDisk`], as the
//! inline adapter does. Writes, discards and write-zeroes first wait for the reads in the
//! kernel (a write may free or reuse a cluster an earlier read is still reading); so do
//! flushes not, which concern writes only, all of them done by then. One engine per image:
//! another handle writing the same image could move a cluster under an in-flight read.
//! (docs/decisions/0025.)

use std::os::fd::BorrowedFd;

use super::{eventfd, sync, validate, Completion, Engine, Op, Request, UringEngine};
use crate::{Capabilities, Error, ErrorKind, Result, SharedDisk};

/// A read split over several kernel requests.
struct Parent {
    token: u64,
    left: usize,
    result: Result<()>,
}

/// The qcow2 io_uring engine (see the module documentation).
pub struct MappedEngine {
    disk: SharedDisk,
    caps: Capabilities,
    ring: UringEngine,
    /// The image file's size when the ring was set up: runs past it (clusters allocated
    /// later) are read the synchronous way.
    view_size: u64,
    parents: Vec<Option<Parent>>,
    free: Vec<usize>,
    ready: Vec<Completion>,
    scratch: Vec<Completion>,
    outstanding: usize,
}

impl std::fmt::Debug for MappedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedEngine")
            .field("ring", &self.ring)
            .field("outstanding", &self.outstanding)
            .finish_non_exhaustive()
    }
}

impl MappedEngine {
    /// An engine on a shared image whose format maps reads to its file (qcow2), sized for
    /// `depth` requests in flight. `Unsupported` if the format maps nothing or this host
    /// refuses io_uring.
    pub fn new(disk: SharedDisk, depth: u32) -> Result<MappedEngine> {
        let view = disk.data_view().ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                "this image format has no data file to read through io_uring",
            )
        })?;
        let view_size = view.size();
        let ring = UringEngine::new(SharedDisk::from_raw(view), depth)?;
        Ok(MappedEngine {
            caps: disk.capabilities(),
            disk,
            ring,
            view_size,
            parents: Vec::new(),
            free: Vec::new(),
            ready: Vec::new(),
            scratch: Vec::new(),
            outstanding: 0,
        })
    }

    /// The host runs of a read, when it can go to the kernel.
    fn runs(&self, offset: u64, len: u64) -> Option<Vec<(u64, u64)>> {
        let runs = self.disk.data_map(offset, len).ok()??;
        let inside = runs
            .iter()
            .all(|&(h, n)| h.checked_add(n).is_some_and(|end| end <= self.view_size));
        (inside && !runs.is_empty()).then_some(runs)
    }

    /// Sends a mapped read's pieces to the ring as one parent request.
    fn submit_mapped(&mut self, mut iov: super::iovec::Iovecs, runs: &[(u64, u64)], token: u64) {
        let parent = Parent {
            token,
            left: 0,
            result: Ok(()),
        };
        let index = match self.free.pop() {
            Some(i) => {
                self.parents[i] = Some(parent);
                i
            }
            None => {
                self.parents.push(Some(parent));
                self.parents.len() - 1
            }
        };
        for &(host, n) in runs {
            let piece = iov.split_front(n);
            let request = Request {
                op: Op::Read {
                    offset: host,
                    iov: piece,
                },
            };
            let sent = self.ring.submit(request, index as u64);
            let Some(p) = self.parents[index].as_mut() else {
                return;
            };
            match sent {
                Ok(()) => p.left += 1,
                Err(e) => {
                    p.result = Err(e);
                    break;
                }
            }
        }
        if self.parents[index].as_ref().is_some_and(|p| p.left == 0) {
            // Nothing reached the kernel: the completion is ready now, so say so.
            self.settle_parent(index);
            eventfd::signal(self.ring.notifier());
        }
    }

    /// Moves a parent whose pieces have all finished to `ready`. It does not signal the
    /// notifier: `completions` hands `ready` out in the same call, and the other callers
    /// signal once for what they settled (a signal per read cost a system call and a
    /// spurious wake-up of the worker per request).
    fn settle_parent(&mut self, index: usize) {
        if let Some(p) = self.parents.get_mut(index).and_then(Option::take) {
            self.free.push(index);
            self.ready.push(Completion {
                token: p.token,
                result: p.result,
            });
        }
    }

    /// Collects the ring's finished pieces (those complete go to `ready`).
    fn absorb(&mut self) {
        let mut done = std::mem::take(&mut self.scratch);
        self.ring.completions(&mut done);
        for c in done.drain(..) {
            let index = c.token as usize;
            let Some(p) = self.parents.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            p.left = p.left.saturating_sub(1);
            if let Err(e) = c.result {
                if p.result.is_ok() {
                    p.result = Err(e);
                }
            }
            if p.left == 0 {
                self.settle_parent(index);
            }
        }
        self.scratch = done;
    }

    /// Waits until no read is in the kernel (before a request that may move clusters).
    fn barrier(&mut self) -> Result<()> {
        let before = self.ready.len();
        let mut result = Ok(());
        while self.ring.in_flight() > 0 {
            if let Err(e) = self.ring.wait() {
                result = Err(e);
                break;
            }
            self.absorb();
        }
        if self.ready.len() > before {
            // Reads settled here, outside `completions`: wake the owner for them.
            eventfd::signal(self.ring.notifier());
        }
        result
    }
}

impl Engine for MappedEngine {
    fn name(&self) -> &'static str {
        "qcow2-io_uring"
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn notifier(&self) -> BorrowedFd<'_> {
        self.ring.notifier()
    }

    fn submit(&mut self, request: Request, token: u64) -> Result<()> {
        validate(&self.caps, self.disk.size(), &request)?;
        let request = match request.op {
            Op::Read { offset, iov } => match self.runs(offset, iov.total()) {
                Some(runs) => {
                    self.submit_mapped(iov, &runs, token);
                    self.outstanding += 1;
                    return Ok(());
                }
                None => Request {
                    op: Op::Read { offset, iov },
                },
            },
            Op::Flush => request,
            _ => {
                self.barrier()?;
                request
            }
        };
        let result = sync::execute(&self.disk, request);
        self.ready.push(Completion { token, result });
        eventfd::signal(self.ring.notifier());
        self.outstanding += 1;
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        self.ring.commit()
    }

    fn completions(&mut self, out: &mut Vec<Completion>) {
        self.absorb();
        self.outstanding -= self.ready.len().min(self.outstanding);
        out.append(&mut self.ready);
    }

    fn in_flight(&self) -> usize {
        self.outstanding
    }

    fn has_completions(&mut self) -> bool {
        !self.ready.is_empty() || self.ring.has_completions()
    }

    fn settle(&mut self) -> Result<()> {
        self.ring.settle()
    }

    fn wait(&mut self) -> Result<()> {
        self.ring.commit()?;
        if !self.ready.is_empty() {
            return Ok(());
        }
        eventfd::wait_readable(self.ring.notifier())
    }
}
