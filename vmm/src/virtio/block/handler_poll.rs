//! The virtio-blk worker's polling phase (docs/decisions/0016): after a batch, keep serving
//! the available ring and the engine's completions without notifications until nothing new
//! has turned up for the adaptive window ([`crate::virtio::poll`]), then ask the driver to
//! notify again and go back to sleep.

use std::time::Instant;

use super::{metrics, BlockHandler};
use crate::virtio::poll::MAX_PHASE;
use crate::virtio::QueueT;

impl BlockHandler {
    /// Polls for at most the current window after the last work found (and at most
    /// [`MAX_PHASE`] in all); does nothing while the window is zero.
    pub(super) fn poll_phase(&mut self) {
        let window = self.poll.window();
        if window.is_zero() || self.broken {
            return;
        }
        let mem = self.mem.clone();
        if let Err(e) = self.queue.queue.disable_notification(&mem) {
            return self.fail(self.queue.broken(e));
        }
        let start = Instant::now();
        let mut last_work = start;
        loop {
            let mut work = false;
            // A completion pass that finds nothing (the kernel's task-run flag is only a
            // hint) is no work: it neither extends the window nor skips the yield.
            if self.engine.in_flight() > 0
                && self.engine.has_completions()
                && self.process_completions() > 0
            {
                work = true;
            }
            if self.queue.has_available(&self.mem).unwrap_or(false) {
                self.counters.inc(metrics::POLLED_BATCHES);
                self.serve(false);
                work = true;
            }
            if self.broken {
                return;
            }
            let now = Instant::now();
            if work {
                last_work = now;
            }
            if now.duration_since(last_work) >= window || now.duration_since(start) >= MAX_PHASE {
                break;
            }
            if !work {
                // Let a thread that shares this CPU run: io_uring's io-wq workers (buffered
                // reads that cannot complete at once) finish the very requests polled for.
                std::thread::yield_now();
            }
        }
        match self.queue.rearm(&mem) {
            // Requests arrived after the last look: come back for them at once.
            Ok(true) => {
                let _ = self.queue.notify.write(1);
            }
            Ok(false) => {}
            Err(e) => self.fail(e),
        }
    }
}
