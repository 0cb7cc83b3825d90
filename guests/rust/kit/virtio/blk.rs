//! virtio-blk, polled, on queue 0: read, write, flush, get-id, discard and
//! write-zeroes (where offered), one request at a time; and reads and
//! writes with many requests in flight ([`Blk::start`], [`Blk::poll`],
//! [`Blk::kick`]) for benchmarks.
//!
//! A request is three descriptors: the 16-byte header (type, reserved,
//! sector) the device reads, the data, and the status byte it writes.

use super::queue::{Buf, Virtq};
use super::{Device, Transport};
use crate::dma::{Dma, DmaBuf};
use crate::{bail, Error};

/// Feature bits.
pub const F_SIZE_MAX: u64 = 1 << 1;
/// seg_max is valid.
pub const F_SEG_MAX: u64 = 1 << 2;
/// The device is read-only.
pub const F_RO: u64 = 1 << 5;
/// blk_size is valid.
pub const F_BLK_SIZE: u64 = 1 << 6;
/// Flush is supported.
pub const F_FLUSH: u64 = 1 << 9;
/// Topology fields are valid.
pub const F_TOPOLOGY: u64 = 1 << 10;
/// Discard is supported.
pub const F_DISCARD: u64 = 1 << 13;
/// Write-zeroes is supported.
pub const F_WRITE_ZEROES: u64 = 1 << 14;

/// Request types.
pub const T_IN: u32 = 0;
/// Write.
pub const T_OUT: u32 = 1;
/// Flush.
pub const T_FLUSH: u32 = 4;
/// Device ID string (20 bytes).
pub const T_GET_ID: u32 = 8;
/// Discard.
pub const T_DISCARD: u32 = 11;
/// Write zeroes.
pub const T_WRITE_ZEROES: u32 = 13;

/// Status: done.
pub const S_OK: u8 = 0;
/// Status: I/O error.
pub const S_IOERR: u8 = 1;
/// Status: not supported.
pub const S_UNSUPP: u8 = 2;

/// Sector size of the protocol (sector numbers are in these units).
pub const SECTOR: u64 = 512;

/// Features the driver accepts when offered.
const WANTED: u64 =
    F_SIZE_MAX | F_SEG_MAX | F_RO | F_BLK_SIZE | F_FLUSH | F_TOPOLOGY | F_DISCARD | F_WRITE_ZEROES;

// Request buffer layout: header, status, id, discard/write-zeroes segment.
const HDR: usize = 0;
const STATUS: usize = 16;
const ID: usize = 32;
const SEGMENT: usize = 64;
const REQ_LEN: usize = 80;

/// Requests [`Blk::start`] keeps in flight at most (tags 0 to this - 1).
pub const MAX_IN_FLIGHT: usize = 64;
/// Bytes of header and status per in-flight request.
const SLOT: usize = 32;
/// Largest queue whose heads [`Blk::poll`] can map back to tags.
const MAX_QUEUE: usize = 1024;

/// A virtio-blk device.
#[derive(Debug)]
pub struct Blk {
    /// The device (transport and features).
    pub dev: Device,
    /// Request queue 0.
    pub vq: Virtq,
    req: DmaBuf,
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Headers and status bytes of in-flight requests, [`SLOT`] bytes per tag.
    slots: DmaBuf,
    /// The tag of each chain head in flight.
    tags: [u8; MAX_QUEUE],
}

impl Blk {
    /// Negotiates, sets up queue 0 (at most 128 entries), reads the capacity.
    pub fn new(transport: Transport, dma: &mut Dma) -> Result<Self, Error> {
        let mut dev = Device::init(transport, WANTED)?;
        let vq = dev.queue(dma, 0, 128)?;
        let req = dma.alloc(REQ_LEN, 64)?;
        let slots = dma.alloc(MAX_IN_FLIGHT * SLOT, 64)?;
        dev.driver_ok();
        let capacity = dev.config().read64(0);
        Ok(Self {
            dev,
            vq,
            req,
            capacity,
            slots,
            tags: [0; MAX_QUEUE],
        })
    }

    /// Whether `feature` (`F_*`) was negotiated.
    pub fn has(&self, feature: u64) -> bool {
        self.dev.has(feature)
    }

    /// The logical block size (512 unless BLK_SIZE says otherwise).
    pub fn blk_size(&self) -> u32 {
        if self.has(F_BLK_SIZE) {
            self.dev.config().read32(20)
        } else {
            512
        }
    }

    /// One request: header, `data` (if any), status; fails unless the
    /// status is OK.
    fn request(&mut self, kind: u32, sector: u64, data: Option<Buf>) -> Result<(), Error> {
        self.req.write::<u32>(HDR, kind);
        self.req.write::<u32>(HDR + 4, 0);
        self.req.write::<u64>(HDR + 8, sector);
        self.req.write::<u8>(STATUS, 0xff);
        let hdr = Buf::readable(self.req.addr(), 16);
        let status = Buf::writable(self.req.addr() + STATUS as u64, 1);
        match data {
            None => self.vq.submit(&[hdr, status])?,
            Some(data) => self.vq.submit(&[hdr, data, status])?,
        };
        match self.req.read::<u8>(STATUS) {
            S_OK => Ok(()),
            S_IOERR => bail!("blk: request type {kind} at sector {sector}: I/O error"),
            S_UNSUPP => bail!("blk: request type {kind} at sector {sector}: unsupported"),
            s => bail!("blk: request type {kind} at sector {sector}: status {s}"),
        }
    }

    fn check_range(&self, sector: u64, sectors: u64) -> Result<(), Error> {
        match sector.checked_add(sectors) {
            Some(end) if end <= self.capacity => Ok(()),
            _ => bail!(
                "blk: sectors {sector}+{sectors} beyond the capacity {}",
                self.capacity
            ),
        }
    }

    /// Reads `len` bytes (a multiple of 512, at most `buf.len()`) from
    /// `sector` into `buf`.
    pub fn read(&mut self, sector: u64, buf: &mut DmaBuf, len: usize) -> Result<(), Error> {
        assert!(
            len <= buf.len() && (len as u64).is_multiple_of(SECTOR),
            "blk: bad read length"
        );
        self.check_range(sector, len as u64 / SECTOR)?;
        self.request(T_IN, sector, Some(Buf::writable(buf.addr(), len)))
    }

    /// Writes `len` bytes of `buf` at `sector`.
    pub fn write(&mut self, sector: u64, buf: &DmaBuf, len: usize) -> Result<(), Error> {
        assert!(
            len <= buf.len() && (len as u64).is_multiple_of(SECTOR),
            "blk: bad write length"
        );
        self.check_range(sector, len as u64 / SECTOR)?;
        self.request(T_OUT, sector, Some(Buf::readable(buf.addr(), len)))
    }

    /// Flushes the device's write cache.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.request(T_FLUSH, 0, None)
    }

    /// The device ID string (up to 20 bytes; empty if the device has none).
    pub fn id(&mut self) -> Result<([u8; 20], usize), Error> {
        self.request(
            T_GET_ID,
            0,
            Some(Buf::writable(self.req.addr() + ID as u64, 20)),
        )?;
        let mut id = [0u8; 20];
        id.copy_from_slice(&self.req.as_slice()[ID..ID + 20]);
        let len = id.iter().position(|&b| b == 0).unwrap_or(20);
        Ok((id, len))
    }

    /// Starts request `tag` (below [`MAX_IN_FLIGHT`], not already in
    /// flight): a read (`T_IN`) or write (`T_OUT`) of `len` bytes (a
    /// multiple of 512) at physical address `addr`, at `sector`. The device
    /// hears of it at the next [`Blk::kick`].
    pub fn start(
        &mut self,
        tag: usize,
        kind: u32,
        sector: u64,
        addr: u64,
        len: usize,
    ) -> Result<(), Error> {
        if tag >= MAX_IN_FLIGHT || usize::from(self.vq.size()) > MAX_QUEUE {
            bail!("blk: tag {tag} or queue size {} too large", self.vq.size());
        }
        self.check_range(sector, len as u64 / SECTOR)?;
        let at = tag * SLOT;
        self.slots.write::<u32>(at, kind);
        self.slots.write::<u32>(at + 4, 0);
        self.slots.write::<u64>(at + 8, sector);
        self.slots.write::<u8>(at + 16, 0xff);
        let base = self.slots.addr() + at as u64;
        let data = Buf {
            addr,
            len: len as u32,
            device_writes: kind == T_IN,
        };
        let head = self
            .vq
            .add(&[Buf::readable(base, 16), data, Buf::writable(base + 16, 1)])?;
        self.tags[usize::from(head)] = tag as u8;
        Ok(())
    }

    /// Tells the device about started requests, unless it said it is still
    /// looking at the queue.
    pub fn kick(&self) {
        self.vq.kick_if_needed();
    }

    /// The tag of a finished request, if one finished; an error if it did
    /// not end with status OK.
    pub fn poll(&mut self) -> Result<Option<usize>, Error> {
        let Some(used) = self.vq.pop_used()? else {
            return Ok(None);
        };
        let tag = usize::from(self.tags[used.id as usize % MAX_QUEUE]);
        match self.slots.read::<u8>(tag * SLOT + 16) {
            S_OK => Ok(Some(tag)),
            s => bail!("blk: request {tag}: status {s}"),
        }
    }

    /// Discards (`T_DISCARD`) or zeroes (`T_WRITE_ZEROES`, `unmap` allowed
    /// or not) `sectors` sectors at `sector`, as one segment.
    pub fn discard_or_zero(
        &mut self,
        kind: u32,
        sector: u64,
        sectors: u32,
        unmap: bool,
    ) -> Result<(), Error> {
        self.check_range(sector, u64::from(sectors))?;
        self.req.write::<u64>(SEGMENT, sector);
        self.req.write::<u32>(SEGMENT + 8, sectors);
        self.req.write::<u32>(SEGMENT + 12, u32::from(unmap));
        let segment = Buf::readable(self.req.addr() + SEGMENT as u64, 16);
        self.request(kind, 0, Some(segment))
    }
}
