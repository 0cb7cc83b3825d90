//! The synchronous adapter: the [`Engine`] interface over any image (qcow2, vmdk, or raw
//! where io_uring is unavailable). Each request runs through [`SharedDisk`], on a worker
//! thread (the submitter never blocks on the image) or inline in `submit`, and then the
//! eventfd is signalled.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{eventfd, validate, Completion, Engine, Op, Request};
use crate::{Capabilities, Error, ErrorKind, Result, SharedDisk};

/// Where a [`SyncEngine`] runs requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// On the engine's own worker thread, in submission order.
    Worker,
    /// Inside [`Engine::submit`], on the caller's thread.
    Inline,
}

/// Completions shared with the worker.
type Done = Arc<Mutex<Vec<Completion>>>;
/// The worker's request channel and thread.
type Worker = (Sender<(Request, u64)>, JoinHandle<()>);

/// The synchronous adapter (see the module documentation).
pub struct SyncEngine {
    disk: SharedDisk,
    caps: Capabilities,
    notify: Arc<OwnedFd>,
    done: Done,
    worker: Option<Worker>,
    outstanding: usize,
}

impl std::fmt::Debug for SyncEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncEngine")
            .field("worker", &self.worker.is_some())
            .field("outstanding", &self.outstanding)
            .finish_non_exhaustive()
    }
}

impl SyncEngine {
    /// An adapter over `disk`, running requests as `mode` says.
    pub fn new(disk: SharedDisk, mode: SyncMode) -> Result<SyncEngine> {
        let notify = Arc::new(eventfd::new()?);
        let done: Done = Arc::default();
        let worker = match mode {
            SyncMode::Inline => None,
            SyncMode::Worker => {
                let (tx, rx) = channel::<(Request, u64)>();
                let (d, n, q) = (disk.clone(), notify.clone(), done.clone());
                let handle = std::thread::Builder::new()
                    .name("disk-sync-aio".into())
                    .spawn(move || {
                        for (request, token) in rx {
                            let result = execute(&d, request);
                            finish(&q, &n, Completion { token, result });
                        }
                    })
                    .map_err(|e| Error::io(e, "cannot start the disk worker thread"))?;
                Some((tx, handle))
            }
        };
        Ok(SyncEngine {
            caps: disk.capabilities(),
            disk,
            notify,
            done,
            worker,
            outstanding: 0,
        })
    }
}

/// Runs one request to the end.
pub(crate) fn execute(disk: &SharedDisk, request: Request) -> Result<()> {
    match request.op {
        Op::Read { offset, mut iov } => {
            iov.read_with(|bufs, pos| disk.read_vectored_at(bufs, offset + pos))
        }
        Op::Write { offset, iov } => iov.write_with(|bufs| disk.write_vectored_at(bufs, offset)),
        Op::Flush => disk.flush(),
        Op::Discard { offset, len } => disk.discard(offset, len),
        Op::WriteZeroes { offset, len, unmap } => disk.write_zeroes_unmap(offset, len, unmap),
    }
}

fn finish(done: &Done, notify: &OwnedFd, c: Completion) {
    // A poisoned list only means another thread panicked while pushing; the list is fine.
    done.lock().unwrap_or_else(|p| p.into_inner()).push(c);
    eventfd::signal(notify.as_fd());
}

impl Engine for SyncEngine {
    fn name(&self) -> &'static str {
        match self.worker {
            Some(_) => "sync-worker",
            None => "sync-inline",
        }
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn notifier(&self) -> BorrowedFd<'_> {
        self.notify.as_fd()
    }

    fn submit(&mut self, request: Request, token: u64) -> Result<()> {
        validate(&self.caps, self.disk.size(), &request)?;
        match &self.worker {
            Some((tx, _)) => tx
                .send((request, token))
                .map_err(|_| Error::new(ErrorKind::Io, "the disk worker thread has stopped"))?,
            None => {
                let result = execute(&self.disk, request);
                finish(&self.done, &self.notify, Completion { token, result });
            }
        }
        self.outstanding += 1;
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        Ok(())
    }

    fn completions(&mut self, out: &mut Vec<Completion>) {
        eventfd::drain(self.notify.as_fd());
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        self.outstanding -= done.len().min(self.outstanding);
        out.append(&mut done);
    }

    fn in_flight(&self) -> usize {
        self.outstanding
    }

    fn has_completions(&mut self) -> bool {
        !self
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

impl Drop for SyncEngine {
    /// Waits for the worker to finish every request it holds (their buffers are in use
    /// until then).
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.worker.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}
