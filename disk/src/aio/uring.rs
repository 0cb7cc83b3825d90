//! The io_uring engine for raw images.
//!
//! One ring per engine (one engine per device queue), the image's file registered as fixed
//! file 0, the engine's eventfd registered for completions. Where the kernel has it the ring
//! is single-issuer with deferred task work ([`RingMode::Deferred`], docs/decisions/0025):
//! completions are posted when the serving thread next enters the ring, not by interrupting
//! it; the ring is bound to the thread that first enters it and rebuilt, while idle, for a
//! thread that takes the engine over. Reads and writes go to the
//! kernel as `READV`/`WRITEV` on the caller's iovecs; flush is `FSYNC(DATASYNC)`; discard
//! and write-zeroes are `FALLOCATE` (punch hole, or zero range without unmap). Short
//! transfers are resubmitted for the rest.
//!
//! O_DIRECT: a request whose offset, length and buffers meet the host's alignment rules goes
//! straight to the caller's buffers; one whose offset and length are aligned but whose
//! buffers are not goes through an aligned bounce buffer, still asynchronously; one whose
//! offset or length is not a multiple of the host block (a guest ignoring `blk_size`) runs
//! synchronously through [`RawDisk`]'s read-modify-write path, inside `submit`.
//!
//! Batches: through the page cache, requests wait in the submission queue for `commit`, and
//! one `io_uring_enter` starts a batch (the copies run inline; the system call is the cost).
//! With O_DIRECT each request enters the kernel inside `submit` (docs/decisions/0026): a
//! batch entered at once is plugged by the block layer, and the device sees none of it until
//! the last request is prepared, so it idles while the batch is built.
//!
//! Unsafe code (this file and `iovec.rs` only): pushing a submission queue entry, which
//! hands the kernel pointers. Every pointer in an entry is either caller memory covered by
//! the [`Request`] contract or memory owned by the request's slot (its iovec array, its
//! bounce buffer), and a slot is freed only after the kernel has posted the entry's
//! completion; `Drop` waits for all of them.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use io_uring::{opcode, squeue, types, IoUring, Probe};

use super::iovec::Iovecs;
use super::{eventfd, validate, Completion, Engine, Op, Request};
use crate::raw::{AlignedBuf, DirectAlign};
use crate::{Capabilities, Error, ErrorKind, RawDisk, Result, SharedDisk};

/// Most iovecs one READV/WRITEV takes (Linux's `UIO_MAXIOV`); more go the synchronous way.
const IOV_MAX: usize = 1024;
/// Largest bounce buffer (O_DIRECT with misaligned buffers); larger requests go the
/// synchronous way, which bounces 1 MiB at a time. Bounds what a guest can make us allocate.
const MAX_BOUNCE: u64 = 1 << 20;

const FALLOC_PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const FALLOC_ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// How a [`UringEngine`]'s ring runs its completions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingMode {
    /// `IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG` (Linux 6.1+): a finished
    /// request's completion waits until the ring's one issuing thread enters the kernel with
    /// GETEVENTS (which every submission does while some wait, see `TASKRUN_FLAG`), instead
    /// of interrupting that thread with task work (an `EINTR` from `epoll_wait`, a wake-up,
    /// a context switch per batch). The eventfd still fires, so a sleeping thread wakes.
    /// The ring belongs to one thread: the engine rebuilds it when another thread takes the
    /// engine over while idle.
    Deferred,
    /// A ring with default flags: completions run as task work on the submitting thread.
    Plain,
}

/// The io_uring engine (see the module documentation).
pub struct UringEngine {
    ring: IoUring,
    mode: RingMode,
    /// Submission queue size (the ring is rebuilt with the same).
    entries: u32,
    /// The thread that may enter the ring ([`RingMode::Deferred`]; None until enabled).
    issuer: Option<u64>,
    disk: SharedDisk,
    caps: Capabilities,
    direct: Option<DirectAlign>,
    flush_syncs: bool,
    fallocate: bool,
    notify: OwnedFd,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Accepted requests waiting for room in the kernel.
    backlog: VecDeque<usize>,
    /// Entries in the submission queue or in the kernel.
    in_kernel: usize,
    limit: usize,
    /// Requests finished without the kernel (immediate results, synchronous fallbacks).
    ready: Vec<Completion>,
    outstanding: usize,
    /// Whether entries were queued since the last `io_uring_enter`.
    unsubmitted: bool,
    cqes: Vec<(u64, i32)>,
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("direct", &self.direct)
            .field("in_kernel", &self.in_kernel)
            .field("outstanding", &self.outstanding)
            .finish_non_exhaustive()
    }
}

/// One request the kernel holds.
struct Slot {
    token: u64,
    op: SlotOp,
}

enum SlotOp {
    /// READV/WRITEV straight on the caller's buffers; `done` bytes finished so far.
    Vectored {
        write: bool,
        offset: u64,
        iov: Iovecs,
        done: u64,
    },
    /// READ/WRITE through an aligned bounce buffer (O_DIRECT, misaligned buffers).
    Bounced {
        write: bool,
        offset: u64,
        iov: Iovecs,
        buf: AlignedBuf,
        done: u64,
    },
    Flush,
    Fallocate {
        offset: u64,
        len: u64,
        mode: i32,
        discard: bool,
    },
}

/// What `submit` does with an accepted request.
enum Plan {
    Kernel(SlotOp),
    Now(Result<()>),
}

fn host_error(raw: &RawDisk, errno: i32, op: &'static str, offset: u64) -> Error {
    raw.err_io(std::io::Error::from_raw_os_error(errno), op, offset)
}

/// io_uring refused by this host (no kernel support, or disabled by policy): `Unsupported`,
/// so the caller can fall back to the synchronous adapter.
fn setup_error(e: std::io::Error, what: &str) -> Error {
    let refused = matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::EPERM | libc::EACCES | libc::EOPNOTSUPP)
    );
    if refused {
        Error::new(
            ErrorKind::Unsupported,
            format!("io_uring unavailable: {what}: {e}"),
        )
    } else {
        Error::io(e, format!("io_uring {what}"))
    }
}

/// A number for the calling thread, unique in the process (cheaper than `gettid`).
fn thread_token() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static TOKEN: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    TOKEN.with(|t| *t)
}

/// A ring of `entries` for `mode` with the image registered as fixed file 0 and `notify` as
/// its completion eventfd. A [`RingMode::Deferred`] ring is created disabled: the thread
/// that enables it becomes its issuer.
fn build_ring(raw: &RawDisk, notify: &OwnedFd, entries: u32, mode: RingMode) -> Result<IoUring> {
    let mut builder = IoUring::builder();
    builder.setup_cqsize(entries * 2);
    if mode == RingMode::Deferred {
        builder
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_r_disabled();
    }
    let ring = builder.build(entries).map_err(|e| match e.raw_os_error() {
        // A kernel older than the mode's flags.
        Some(libc::EINVAL) if mode == RingMode::Deferred => Error::new(
            ErrorKind::Unsupported,
            format!("io_uring without DEFER_TASKRUN: {e}"),
        ),
        _ => setup_error(e, "setup"),
    })?;
    let submitter = ring.submitter();
    submitter
        .register_files(&[raw.file().as_raw_fd()])
        .map_err(|e| setup_error(e, "register file"))?;
    submitter
        .register_eventfd(notify.as_raw_fd())
        .map_err(|e| setup_error(e, "register eventfd"))?;
    Ok(ring)
}

impl UringEngine {
    /// An engine on a shared raw image, sized for `depth` requests in flight (more are
    /// queued inside the engine, not refused). `Unsupported` if `disk` is not raw or this
    /// host refuses io_uring. The ring is [`RingMode::Deferred`] where the kernel has it
    /// (Linux 6.1+), else [`RingMode::Plain`].
    pub fn new(disk: SharedDisk, depth: u32) -> Result<UringEngine> {
        match UringEngine::with_mode(disk.clone(), depth, RingMode::Deferred) {
            Err(e) if e.kind() == ErrorKind::Unsupported && disk.raw().is_some() => {
                UringEngine::with_mode(disk, depth, RingMode::Plain)
            }
            other => other,
        }
    }

    /// An engine whose ring is set up as `mode` says, with no fallback: `Unsupported` if
    /// this kernel lacks the mode's flags (or refuses io_uring).
    pub fn with_mode(disk: SharedDisk, depth: u32, mode: RingMode) -> Result<UringEngine> {
        let raw = disk.raw().ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                "the io_uring engine serves raw images",
            )
        })?;
        let entries = depth.clamp(1, 4096).next_power_of_two();
        let notify = eventfd::new()?;
        let ring = build_ring(raw, &notify, entries, mode)?;
        let mut probe = Probe::new();
        let fallocate = ring.submitter().register_probe(&mut probe).is_ok()
            && probe.is_supported(opcode::Fallocate::CODE);
        let limit = ring.params().cq_entries() as usize;
        Ok(UringEngine {
            caps: raw.capabilities(),
            direct: raw.direct_align(),
            flush_syncs: raw.flush_syncs(),
            fallocate,
            ring,
            mode,
            entries,
            issuer: None,
            notify,
            slots: Vec::new(),
            free: Vec::new(),
            backlog: VecDeque::new(),
            in_kernel: 0,
            limit,
            ready: Vec::new(),
            outstanding: 0,
            unsubmitted: false,
            cqes: Vec::new(),
            disk,
        })
    }

    /// How this engine's ring runs completions.
    pub fn mode(&self) -> RingMode {
        self.mode
    }

    /// Makes the calling thread the ring's issuer before the engine enters the kernel
    /// ([`RingMode::Deferred`] only; a no-op otherwise). The first caller enables the ring
    /// (it is created disabled, so that whichever thread serves the queue becomes its
    /// issuer); a later caller on another thread gets a new ring, built while the engine
    /// holds no request in the kernel. With requests still in the kernel the old ring stays
    /// (its issuer must reap them; [`Engine::settle`] on that thread does).
    fn bind(&mut self) {
        if self.mode != RingMode::Deferred {
            return;
        }
        let me = thread_token();
        match self.issuer {
            Some(t) if t == me => {}
            None => {
                if self.ring.submitter().register_enable_rings().is_ok() {
                    self.issuer = Some(me);
                }
            }
            Some(_) if self.in_kernel == 0 => {
                let Ok(raw) = self.raw() else { return };
                let Ok(ring) = build_ring(raw, &self.notify, self.entries, self.mode) else {
                    return;
                };
                if ring.submitter().register_enable_rings().is_ok() {
                    self.ring = ring;
                    self.issuer = Some(me);
                }
            }
            Some(_) => {}
        }
    }

    /// Moves every completion queue entry into `ready` (or back into the kernel for the rest
    /// of a short transfer).
    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(user_data, res) in &cqes {
            self.in_kernel = self.in_kernel.saturating_sub(1);
            self.finish(user_data as usize, res);
        }
        cqes.clear();
        self.cqes = cqes;
    }

    /// Whether the kernel holds completions it has not posted yet ([`RingMode::Deferred`]:
    /// they are posted by the issuer's next `io_uring_enter` with GETEVENTS).
    fn deferred_pending(&mut self) -> bool {
        self.mode == RingMode::Deferred && self.ring.submission().taskrun()
    }

    fn raw(&self) -> Result<&RawDisk> {
        self.disk
            .raw()
            .ok_or_else(|| Error::new(ErrorKind::Unsupported, "not a raw image"))
    }

    /// Decides how a validated request runs.
    fn plan(&self, op: Op) -> Result<Plan> {
        let raw = self.raw()?;
        Ok(match op {
            Op::Flush if !self.flush_syncs => Plan::Now(Ok(())),
            Op::Flush => Plan::Kernel(SlotOp::Flush),
            Op::Read { offset, iov } => self.plan_rw(raw, false, offset, iov),
            Op::Write { offset, iov } => self.plan_rw(raw, true, offset, iov),
            Op::Discard { len: 0, .. } | Op::WriteZeroes { len: 0, .. } => Plan::Now(Ok(())),
            Op::Discard { offset, len } if self.fallocate => Plan::Kernel(SlotOp::Fallocate {
                offset,
                len,
                mode: FALLOC_PUNCH,
                discard: true,
            }),
            Op::WriteZeroes { offset, len, unmap } if self.fallocate => {
                Plan::Kernel(SlotOp::Fallocate {
                    offset,
                    len,
                    mode: if unmap { FALLOC_PUNCH } else { FALLOC_ZERO },
                    discard: false,
                })
            }
            Op::Discard { offset, len } => Plan::Now(raw.discard(offset, len)),
            Op::WriteZeroes { offset, len, unmap } => {
                Plan::Now(raw.write_zeroes_unmap(offset, len, unmap))
            }
        })
    }

    fn plan_rw(&self, raw: &RawDisk, write: bool, offset: u64, mut iov: Iovecs) -> Plan {
        let total = iov.total();
        if total == 0 {
            return Plan::Now(Ok(()));
        }
        let fits_ring = iov.count() <= IOV_MAX;
        let Some(a) = self.direct else {
            return match fits_ring {
                true => Plan::Kernel(SlotOp::Vectored {
                    write,
                    offset,
                    iov,
                    done: 0,
                }),
                false => Plan::Now(sync_rw(raw, write, offset, &mut iov)),
            };
        };
        let block = u64::from(a.offset);
        if !offset.is_multiple_of(block) || !total.is_multiple_of(block) {
            return Plan::Now(sync_rw(raw, write, offset, &mut iov));
        }
        if fits_ring && iov.aligned(a.mem, a.offset) {
            return Plan::Kernel(SlotOp::Vectored {
                write,
                offset,
                iov,
                done: 0,
            });
        }
        if total > MAX_BOUNCE {
            return Plan::Now(sync_rw(raw, write, offset, &mut iov));
        }
        let mut buf = AlignedBuf::new(total as usize, a.bounce() as usize);
        if write {
            iov.copy_to(buf.as_mut_slice());
        }
        Plan::Kernel(SlotOp::Bounced {
            write,
            offset,
            iov,
            buf,
            done: 0,
        })
    }

    /// The submission queue entry for a slot's next (or remaining) transfer.
    fn entry(slot: &mut Slot, index: usize) -> squeue::Entry {
        let fd = types::Fixed(0);
        let e = match &mut slot.op {
            SlotOp::Vectored {
                write: false,
                offset,
                iov,
                done,
            } => opcode::Readv::new(fd, iov.as_ptr(), iov.count() as u32)
                .offset(*offset + *done)
                .build(),
            SlotOp::Vectored {
                write: true,
                offset,
                iov,
                done,
            } => opcode::Writev::new(fd, iov.as_ptr(), iov.count() as u32)
                .offset(*offset + *done)
                .build(),
            SlotOp::Bounced {
                write,
                offset,
                buf,
                done,
                ..
            } => {
                let rest = &mut buf.as_mut_slice()[*done as usize..];
                let len = rest.len() as u32;
                match write {
                    false => opcode::Read::new(fd, rest.as_mut_ptr(), len)
                        .offset(*offset + *done)
                        .build(),
                    true => opcode::Write::new(fd, rest.as_ptr(), len)
                        .offset(*offset + *done)
                        .build(),
                }
            }
            SlotOp::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            SlotOp::Fallocate {
                offset, len, mode, ..
            } => opcode::Fallocate::new(fd, *len)
                .offset(*offset)
                .mode(*mode)
                .build(),
        };
        e.user_data(index as u64)
    }

    /// Puts a slot's entry in the submission queue, or in the backlog if the kernel holds
    /// as many requests as the completion queue has room for.
    fn push(&mut self, index: usize) {
        if self.in_kernel >= self.limit {
            self.backlog.push_back(index);
            return;
        }
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        let entry = Self::entry(slot, index);
        for attempt in 0..2 {
            // SAFETY: the entry's pointers are the slot's iovec array or bounce buffer (heap
            // memory owned by the slot, which stays in `self.slots` untouched until this
            // entry's completion is reaped in `completions` or `drop`) and the caller's
            // buffers, valid until that completion by the `Request::read`/`write`
            // contract. The fixed file 0 is the registered image file, kept open by
            // `self.disk` for the ring's lifetime.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                self.in_kernel += 1;
                self.unsubmitted = true;
                return;
            }
            if attempt == 0 {
                // Submission queue full: hand it to the kernel and try again.
                let _ = self.ring.submit();
            }
        }
        self.backlog.push_back(index);
    }

    /// Moves backlogged requests into the submission queue while there is room.
    fn refill(&mut self) {
        while self.in_kernel < self.limit {
            let Some(index) = self.backlog.pop_front() else {
                return;
            };
            let before = self.backlog.len();
            self.push(index);
            if self.backlog.len() > before {
                return;
            }
        }
    }

    fn complete(&mut self, token: u64, result: Result<()>) {
        self.ready.push(Completion { token, result });
    }

    /// Handles one completion queue entry.
    fn finish(&mut self, index: usize, res: i32) {
        let Some(mut slot) = self.slots.get_mut(index).and_then(Option::take) else {
            return;
        };
        let token = slot.token;
        let result = match self.outcome(&mut slot, res) {
            Some(r) => r,
            None => {
                // A short transfer: resubmit the rest.
                self.slots[index] = Some(slot);
                self.push(index);
                return;
            }
        };
        self.free.push(index);
        self.complete(token, result);
    }

    /// The result of a slot after a completion, or `None` if it must continue.
    fn outcome(&self, slot: &mut Slot, res: i32) -> Option<Result<()>> {
        let raw = match self.raw() {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        match &mut slot.op {
            SlotOp::Vectored {
                write,
                offset,
                iov,
                done,
            } => {
                let op = if *write { "write" } else { "read" };
                let n = match transferred(raw, res, op, *offset + *done) {
                    Ok(n) => n,
                    Err(e) => return Some(Err(e)),
                };
                if n < iov.total() {
                    iov.advance(n);
                    *done += n;
                    return None;
                }
                Some(Ok(()))
            }
            SlotOp::Bounced {
                write,
                offset,
                iov,
                buf,
                done,
            } => {
                let op = if *write { "write" } else { "read" };
                let n = match transferred(raw, res, op, *offset + *done) {
                    Ok(n) => n,
                    Err(e) => return Some(Err(e)),
                };
                if *done + n < iov.total() {
                    *done += n;
                    return None;
                }
                if !*write {
                    iov.copy_from(buf.as_slice());
                }
                Some(Ok(()))
            }
            SlotOp::Flush if res < 0 => Some(Err(host_error(raw, -res, "flush", 0))),
            SlotOp::Flush => Some(Ok(())),
            SlotOp::Fallocate { .. } if res >= 0 => Some(Ok(())),
            SlotOp::Fallocate {
                offset,
                len,
                mode,
                discard,
            } => {
                let unsupported = -res == libc::EOPNOTSUPP || -res == libc::EINVAL;
                Some(match (*discard, unsupported) {
                    // Discard is advisory: a file system that cannot punch keeps the data.
                    (true, true) => Ok(()),
                    (true, false) => Err(host_error(raw, -res, "discard", *offset)),
                    // Write-zeroes falls back to the synchronous path (zero range, then
                    // writing zeroes).
                    (false, true) => raw.write_zeroes_unmap(*offset, *len, *mode == FALLOC_PUNCH),
                    (false, false) => Err(host_error(raw, -res, "write_zeroes", *offset)),
                })
            }
        }
    }
}

/// A ring whose completions the kernel may hold back until its issuer enters it
/// ([`RingMode::Deferred`]), with the eventfd that says so.
trait DeferredRing {
    /// The ring's `IORING_SQ_TASKRUN` flag: completions are (or were) waiting to be posted.
    fn taskrun(&mut self) -> bool;
    /// `io_uring_enter` with GETEVENTS: posts what waits (and submits what is queued).
    fn enter(&mut self);
    /// Resets the engine's eventfd.
    fn drain(&mut self);
}

impl DeferredRing for UringEngine {
    fn taskrun(&mut self) -> bool {
        self.deferred_pending()
    }

    fn enter(&mut self) {
        // A failure leaves the completions for the next pass.
        if self.ring.submit().is_ok() {
            self.unsubmitted = false;
        }
    }

    fn drain(&mut self) {
        eventfd::drain(self.notify.as_fd());
    }
}

/// Posts the completions a deferred ring holds and resets its eventfd, in at most two
/// enters.
///
/// The eventfd is reset after the first enter, since posting may signal it again. Work that
/// the kernel queues after the reset finds its list empty and signals anew; work queued
/// between the enter and the reset had its signal consumed, so a flag still set after the
/// reset costs one more enter, which posts it. The flag is only a hint: the kernel sets it
/// after queuing the work, so a pass that ran the work just before it was set leaves it
/// set over an empty list until the next completion clears it. Entering until it clears
/// would then spin forever once nothing is in flight (seen on Linux 6.18: the worker spun
/// and the VMM hung at shutdown waiting for it).
fn post_deferred(ring: &mut impl DeferredRing) {
    if ring.taskrun() {
        ring.enter();
    }
    ring.drain();
    if ring.taskrun() {
        ring.enter();
    }
}

/// Bytes a read or write completion moved (none at all is an error: the file ended).
fn transferred(raw: &RawDisk, res: i32, op: &'static str, offset: u64) -> Result<u64> {
    match res {
        r if r < 0 => Err(host_error(raw, -r, op, offset)),
        0 => Err(Error::new(
            ErrorKind::Io,
            format!("the host {op} stopped early (file shortened under the image?)"),
        )
        .with_path(raw.path())
        .with_operation(op)
        .with_offset(offset)),
        r => Ok(r as u64),
    }
}

/// Runs a read or write synchronously on the caller's buffers.
fn sync_rw(raw: &RawDisk, write: bool, offset: u64, iov: &mut Iovecs) -> Result<()> {
    match write {
        true => iov.write_with(|bufs| raw.write_vectored_at(bufs, offset)),
        false => iov.read_with(|bufs, pos| raw.read_vectored_at(bufs, offset + pos)),
    }
}

impl Engine for UringEngine {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn notifier(&self) -> BorrowedFd<'_> {
        self.notify.as_fd()
    }

    fn submit(&mut self, request: Request, token: u64) -> Result<()> {
        self.bind();
        let size = self.raw()?.size();
        validate(&self.caps, size, &request)?;
        match self.plan(request.op)? {
            Plan::Now(result) => {
                self.complete(token, result);
                eventfd::signal(self.notify.as_fd());
            }
            Plan::Kernel(op) => {
                let slot = Slot { token, op };
                let index = match self.free.pop() {
                    Some(i) => {
                        self.slots[i] = Some(slot);
                        i
                    }
                    None => {
                        self.slots.push(Some(slot));
                        self.slots.len() - 1
                    }
                };
                self.push(index);
                if self.direct.is_some() {
                    // O_DIRECT: the request goes to the device now, not with the batch
                    // (docs/decisions/0026). A failed enter leaves it queued for `commit`.
                    let _ = self.commit();
                }
            }
        }
        self.outstanding += 1;
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        self.bind();
        self.refill();
        if self.ring.submission().is_empty() && !self.deferred_pending() {
            // Nothing queued since the last `io_uring_enter`: a poll pass or a notify that
            // found the ring empty costs no system call.
            self.unsubmitted = false;
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(_) => {
                    self.unsubmitted = false;
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The kernel is busy with completions: the entries stay queued and go with
                // the next commit or completion pass.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY)) => {
                    return Ok(())
                }
                Err(e) => return Err(Error::io(e, "io_uring submit failed")),
            }
        }
    }

    fn completions(&mut self, out: &mut Vec<Completion>) {
        self.bind();
        post_deferred(self);
        self.reap();
        self.refill();
        if self.unsubmitted {
            // Resubmitted short transfers and backlogged requests; a failure here leaves
            // them queued for the next commit.
            let _ = self.commit();
        }
        self.outstanding -= self.ready.len().min(self.outstanding);
        out.append(&mut self.ready);
    }

    fn in_flight(&self) -> usize {
        self.outstanding
    }

    fn has_completions(&mut self) -> bool {
        !self.ready.is_empty() || !self.ring.completion().is_empty() || self.deferred_pending()
    }

    fn wait(&mut self) -> Result<()> {
        self.commit()?;
        eventfd::wait_readable(self.notify.as_fd())
    }

    fn settle(&mut self) -> Result<()> {
        self.bind();
        while self.in_kernel > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => self.unsubmitted = false,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => return Err(Error::io(e, "io_uring wait failed")),
            }
            self.reap();
        }
        Ok(())
    }
}

impl Drop for UringEngine {
    /// Waits for every entry the kernel holds: their buffers must stay valid until then.
    fn drop(&mut self) {
        self.backlog.clear();
        if self.in_kernel > 0 {
            self.bind();
        }
        while self.in_kernel > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(_) => {
                    // Cannot wait: leak the slots rather than free memory the kernel may
                    // still write.
                    std::mem::forget(std::mem::take(&mut self.slots));
                    return;
                }
            }
            let n = self.ring.completion().count();
            self.in_kernel = self.in_kernel.saturating_sub(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring whose flag reads from a script, one value per look (the last one repeating);
    /// counts enters and resets.
    struct Scripted {
        flags: Vec<bool>,
        looks: usize,
        enters: usize,
        drains: usize,
    }

    impl Scripted {
        fn new(flags: &[bool]) -> Scripted {
            Scripted {
                flags: flags.to_vec(),
                looks: 0,
                enters: 0,
                drains: 0,
            }
        }
    }

    impl DeferredRing for Scripted {
        fn taskrun(&mut self) -> bool {
            let f = self.flags[self.looks.min(self.flags.len() - 1)];
            self.looks += 1;
            f
        }
        fn enter(&mut self) {
            self.enters += 1;
            // The old loop entered until the flag cleared: a stale flag made it spin.
            assert!(self.enters <= 2, "entered {} times", self.enters);
        }
        fn drain(&mut self) {
            self.drains += 1;
        }
    }

    #[test]
    fn test_post_deferred_nothing_waiting_costs_no_enter() {
        let mut r = Scripted::new(&[false]);
        post_deferred(&mut r);
        assert_eq!((r.enters, r.drains), (0, 1));
    }

    #[test]
    fn test_post_deferred_one_enter_when_flag_clears() {
        let mut r = Scripted::new(&[true, false]);
        post_deferred(&mut r);
        assert_eq!((r.enters, r.drains), (1, 1));
    }

    #[test]
    fn test_post_deferred_work_between_enter_and_reset_is_posted() {
        // Set, cleared by the enter, set again by work queued before the reset.
        let mut r = Scripted::new(&[true, true, false]);
        post_deferred(&mut r);
        assert_eq!((r.enters, r.drains), (2, 1));
    }

    #[test]
    fn test_post_deferred_stale_flag_does_not_spin() {
        // The flag stays set over an empty list (nothing in flight clears it).
        let mut r = Scripted::new(&[true]);
        post_deferred(&mut r);
        assert_eq!((r.enters, r.drains), (2, 1));
    }
}
