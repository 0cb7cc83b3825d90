//! One worker thread per active virtio device: an `EventManager` over the device's queue
//! ioeventfds, its backend fds, its interrupt's resample eventfd and a control eventfd.
//!
//! A device's `activate` hands its queues (inside its event handler, the device folder's
//! `event_handler.rs`) to [`Worker::spawn`]; `reset` calls [`Worker::stop`], which returns the
//! handler, queues included, once the thread has stopped touching guest memory. A worker that
//! is dropped is stopped and joined: no thread outlives its device.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, VirtioInterrupt};

/// What the VMM asks of a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerCommand {
    /// Stop and hand the event handler back.
    Stop,
}

/// The subscriber the worker's `EventManager` runs: the control eventfd, the interrupt's
/// resample eventfd, and the device's own handler for everything else.
struct WorkerLoop<H> {
    handler: H,
    control: EventFd,
    commands: mpsc::Receiver<WorkerCommand>,
    interrupt: Arc<dyn VirtioInterrupt>,
    stop: bool,
}

impl<H> WorkerLoop<H> {
    fn resample_fd(&self) -> Option<RawFd> {
        self.interrupt.resample_eventfd().map(|fd| fd.as_raw_fd())
    }
}

impl<H: MutEventSubscriber> MutEventSubscriber for WorkerLoop<H> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.control.as_raw_fd() {
            let _ = self.control.read();
            for cmd in self.commands.try_iter() {
                match cmd {
                    WorkerCommand::Stop => self.stop = true,
                }
            }
        } else if Some(fd) == self.resample_fd() {
            if let Some(r) = self.interrupt.resample_eventfd() {
                let _ = r.read();
            }
            self.interrupt.resample();
        } else {
            self.handler.process(events, ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // Adding a fresh eventfd to a fresh epoll fails only when the process is out of
        // memory or file descriptors; the worker then cannot be stopped by its control fd,
        // so it stops right away instead.
        if ops.add(Events::new(&self.control, EventSet::IN)).is_err() {
            self.stop = true;
        }
        if let Some(fd) = self.resample_fd() {
            if ops.add(Events::new_raw(fd, EventSet::IN)).is_err() {
                self.stop = true;
            }
        }
        self.handler.init(ops);
    }
}

/// A running worker thread and its event handler `H`.
pub struct Worker<H: Send + 'static> {
    control: EventFd,
    commands: mpsc::Sender<WorkerCommand>,
    thread: Option<JoinHandle<Option<H>>>,
}

impl<H: MutEventSubscriber + Send + 'static> Worker<H> {
    /// Starts thread `name` running `handler` until [`Worker::stop`].
    pub fn spawn(
        name: String,
        handler: H,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<Worker<H>, ActivateError> {
        Worker::spawn_with_exit(name, handler, interrupt, |_| {})
    }

    /// [`Worker::spawn`], and `on_exit` runs on the worker thread with the handler after the
    /// loop stops, before the handler is handed back (virtio-blk settles its io_uring ring
    /// there: only the thread that used the ring may wait on it).
    pub fn spawn_with_exit(
        name: String,
        handler: H,
        interrupt: Arc<dyn VirtioInterrupt>,
        on_exit: impl FnOnce(&mut H) + Send + 'static,
    ) -> Result<Worker<H>, ActivateError> {
        let spawn_err = |source| ActivateError::SpawnWorker {
            name: name.clone(),
            source,
        };
        let control = EventFd::new(libc::EFD_NONBLOCK).map_err(spawn_err)?;
        let worker_control = control.try_clone().map_err(spawn_err)?;
        let (commands, rx) = mpsc::channel();
        let mut manager = EventManager::<WorkerLoop<H>>::new()
            .map_err(|e| spawn_err(std::io::Error::other(e.to_string())))?;
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let id = manager.add_subscriber(WorkerLoop {
                    handler,
                    control: worker_control,
                    commands: rx,
                    interrupt,
                    stop: false,
                });
                loop {
                    let stopped = manager.subscriber_mut(id).map_or(true, |w| w.stop);
                    if stopped || manager.run().is_err() {
                        break;
                    }
                }
                let mut handler = manager.remove_subscriber(id).ok().map(|w| w.handler);
                if let Some(h) = handler.as_mut() {
                    on_exit(h);
                }
                handler
            })
            .map_err(spawn_err)?;
        Ok(Worker {
            control,
            commands,
            thread: Some(thread),
        })
    }
}

impl<H: Send + 'static> Worker<H> {
    /// Stops the thread and returns its handler (None if the thread ended by panicking or
    /// could not set up its event loop).
    pub fn stop(mut self) -> Option<H> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Option<H> {
        let thread = self.thread.take()?;
        let _ = self.commands.send(WorkerCommand::Stop);
        let _ = self.control.write(1);
        thread.join().ok().flatten()
    }
}

impl<H: Send + 'static> Drop for Worker<H> {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::virtio::VirtioInterruptType;

    /// Counts the events of one eventfd.
    struct Counter {
        fd: EventFd,
        seen: Arc<AtomicUsize>,
    }

    impl Counter {
        /// A counter of `fd`'s events, and the count.
        fn new(fd: EventFd) -> (Counter, Arc<AtomicUsize>) {
            let seen = Arc::new(AtomicUsize::new(0));
            let counter = Counter {
                fd,
                seen: Arc::clone(&seen),
            };
            (counter, seen)
        }
    }

    impl MutEventSubscriber for Counter {
        fn process(&mut self, _events: Events, _ops: &mut EventOps) {
            let n = self.fd.read().unwrap_or(0);
            self.seen.fetch_add(n as usize, Ordering::SeqCst);
        }
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.fd, EventSet::IN)).unwrap();
        }
    }

    /// An interrupt with a resample eventfd that counts resamples.
    struct Level {
        resample: EventFd,
        resampled: AtomicUsize,
    }

    impl Level {
        fn new() -> Arc<Level> {
            Arc::new(Level {
                resample: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                resampled: AtomicUsize::new(0),
            })
        }
    }

    impl VirtioInterrupt for Level {
        fn trigger(&self, _kind: VirtioInterruptType) -> std::io::Result<()> {
            Ok(())
        }
        fn set_needs_reset(&self) {}
        fn resample_eventfd(&self) -> Option<&EventFd> {
            Some(&self.resample)
        }
        fn resample(&self) {
            self.resampled.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn wait_for(cond: impl Fn() -> bool) {
        for _ in 0..5000 {
            if cond() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("condition not reached");
    }

    #[test]
    fn test_worker_handles_events_and_stop_returns_handler() {
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let notify = fd.try_clone().unwrap();
        let irq = Level::new();
        let (handler, seen) = Counter::new(fd);
        let worker = Worker::spawn("test-worker".into(), handler, irq.clone()).unwrap();

        notify.write(3).unwrap();
        wait_for(|| seen.load(Ordering::SeqCst) == 3);
        irq.resample.write(1).unwrap();
        wait_for(|| irq.resampled.load(Ordering::SeqCst) == 1);
        let back = worker.stop();

        assert_eq!(back.map(|h| h.seen.load(Ordering::SeqCst)), Some(3));
    }

    #[test]
    fn test_worker_on_exit_runs_on_worker_thread_before_handback() {
        let (handler, _seen) = Counter::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let irq = Level::new();
        let worker = Worker::spawn_with_exit("test-exit".into(), handler, irq, |h| {
            let here = std::thread::current().name() == Some("test-exit");
            h.seen
                .fetch_add(if here { 7 } else { 1000 }, Ordering::SeqCst);
        })
        .unwrap();

        let back = worker.stop();

        assert_eq!(back.map(|h| h.seen.load(Ordering::SeqCst)), Some(7));
    }

    #[test]
    fn test_worker_dropped_joins_thread() {
        let (handler, seen) = Counter::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let irq = Level::new();
        let worker = Worker::spawn("test-drop".into(), handler, irq).unwrap();

        drop(worker);

        // The thread held the only other clone of `seen`: joined means released.
        assert_eq!(Arc::strong_count(&seen), 1);
    }
}
