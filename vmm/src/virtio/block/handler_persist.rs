//! Quiescing the virtio-blk worker's handler for a snapshot: take every available request,
//! wait for the engine to finish every one, answer them all.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::BlockHandler;
use crate::virtio::persist::QueuePosition;
use crate::virtio::{QueueT, VirtioInterrupt};

/// How long one wait for the engine may take before the quiesce gives up.
const ENGINE_WAIT_MS: i32 = 30_000;

impl BlockHandler {
    /// Takes every available request and answers all of them (the worker is stopped). Fails
    /// if the engine does not finish a request within 30 seconds.
    pub fn drain(&mut self) -> Result<(), String> {
        self.process_queue();
        while self.slots.iter().any(Option::is_some) && !self.broken {
            let mut pfd = libc::pollfd {
                fd: self.engine.notifier().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is one valid pollfd for the duration of the call.
            let rc = unsafe { libc::poll(&mut pfd, 1, ENGINE_WAIT_MS) };
            if rc == 0 {
                return Err("the disk did not finish its requests within 30 s".into());
            }
            if rc < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return Err(format!(
                    "waiting for the disk failed: {}",
                    std::io::Error::last_os_error()
                ));
            }
            self.process_completions();
        }
        Ok(())
    }

    /// Waits, on the worker thread as it stops, until the engine holds no request in the
    /// kernel, so that the VMM thread (reset, snapshot) and a later worker can use the
    /// engine (its io_uring ring has a single issuer; docs/decisions/0025). The finished
    /// requests are answered later by [`BlockHandler::drain`] or dropped with the handler.
    pub fn settle(&mut self) {
        if self.engine.settle().is_err() {
            // The ring could not be waited on: the engine's drop leaks the buffers the kernel
            // may still hold rather than freeing them.
            self.counters.inc(super::metrics::IO_ERRORS);
        }
    }

    /// Where the request queue is.
    pub fn position(&self) -> QueuePosition {
        QueuePosition {
            index: self.queue.index,
            next_avail: self.queue.queue.next_avail(),
            next_used: self.queue.queue.next_used(),
        }
    }

    /// The interrupt the worker raises (to start it again).
    pub fn interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        Arc::clone(&self.interrupt)
    }
}
