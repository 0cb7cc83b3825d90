//! Image conversion: any supported format to any other, sparse, optionally compressed.
//!
//! A reader thread walks the source in large chunks (2 MiB by default), skipping ranges the
//! metadata says read as zeroes, and hands filled buffers to the writer over a bounded
//! channel; buffers travel back for reuse, so reading, zero detection and writing overlap
//! and nothing is allocated per chunk. The writer drops granules that are all zero (the new
//! image is already zero there) and merges the rest into as few writes as possible.

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

use super::stream::{compress_grain, StreamOut, GRAIN};
use super::{is_zero, Image, Status};
use crate::qcow2::compress_cluster;
use crate::raw::RawDisk;
use crate::vmdk::{self, Subformat, VmdkCreateOptions};
use crate::{CacheMode, CreateOptions, Error, ErrorKind, Format, OpenOptions, Qcow2, Result};

/// Default transfer size.
pub const DEFAULT_CHUNK: u64 = 2 << 20;
/// Buffers in flight between reader and writer.
const BUFFERS: usize = 4;

/// How to convert.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// Source format.
    pub src_format: Format,
    /// How the source is opened (read-only is forced).
    pub src_open: OpenOptions,
    /// Target format.
    pub dst_format: Format,
    /// Options for creating the target (ignored with `existing`).
    pub create: CreateOptions,
    /// Write compressed clusters (qcow2) or require a streamOptimized vmdk.
    pub compress: bool,
    /// Granularity of zero detection in bytes (`-S`); 0 writes every byte.
    pub sparse_size: u64,
    /// Write into an existing image (`-n`) instead of creating one.
    pub existing: bool,
    /// Transfer size.
    pub chunk_size: u64,
    /// Cache mode of the target (`-t`); `Unsafe` by default, as qemu-img convert: nothing is
    /// synced, so an interrupted conversion leaves an image to throw away.
    pub dst_cache: CacheMode,
}

impl Default for ConvertOptions {
    fn default() -> ConvertOptions {
        ConvertOptions {
            src_format: Format::Raw,
            src_open: OpenOptions::default(),
            dst_format: Format::Raw,
            create: CreateOptions::default(),
            compress: false,
            sparse_size: 4096,
            existing: false,
            chunk_size: DEFAULT_CHUNK,
            dst_cache: CacheMode::Unsafe,
        }
    }
}

/// What a conversion did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConvertStats {
    /// Virtual size converted.
    pub total: u64,
    /// Bytes written as data.
    pub written: u64,
    /// Bytes skipped or written as zeroes.
    pub zero: u64,
}

/// Where converted data goes.
enum Out {
    /// An image opened through the library.
    Image(Image),
    /// A new streamOptimized vmdk, written with grains compressed on several threads.
    Stream(StreamOut),
}

/// One chunk from the reader: `None` data means "reads as zeroes".
struct Chunk {
    offset: u64,
    len: u64,
    data: Option<Vec<u8>>,
    /// Ranges (relative to `offset`) the source's metadata says read as zeroes; unless the
    /// reader was asked to fill them, `data` holds stale bytes there.
    zero_runs: Vec<std::ops::Range<usize>>,
}

/// Converts `src` into `dst`, calling `progress(done, total)` after every chunk.
pub fn convert(
    src: &Path,
    dst: &Path,
    o: &ConvertOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ConvertStats> {
    if o.chunk_size == 0 || o.chunk_size > 64 << 20 {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "chunk size must be 1 byte .. 64 MiB",
        ));
    }
    let sopen = OpenOptions {
        read_only: true,
        ..o.src_open.clone()
    };
    let mut source = Image::open(src, o.src_format, &sopen)?;
    let size = source.size();
    check_compress(o)?;
    let stream = !o.existing
        && o.dst_format == Format::Vmdk
        && o.create.vmdk_subformat == Subformat::StreamOptimized;
    let mut target = if stream {
        Out::Stream(StreamOut::create(dst, size).map_err(|e| e.with_path(dst))?)
    } else {
        Out::Image(open_target(dst, size, o)?)
    };
    let granule = granule(o, &target);
    let chunk = match &target {
        // Compressed writes cover whole clusters: chunks must not split one.
        Out::Image(Image::Qcow2 { image, .. }) => {
            o.chunk_size.div_ceil(image.cluster_size()) * image.cluster_size()
        }
        Out::Stream(_) => o.chunk_size.div_ceil(GRAIN) * GRAIN,
        Out::Image(_) => o.chunk_size,
    };
    let mut stats = ConvertStats {
        total: size,
        ..Default::default()
    };
    match &mut target {
        Out::Stream(out) => run_stream(&mut source, out, chunk, &mut stats, progress)?,
        Out::Image(Image::Qcow2 { image, .. }) if o.compress => {
            run_qcow2_compressed(&mut source, image, chunk, &mut stats, progress)?
        }
        Out::Image(image) => {
            let mut w = Writer {
                target: image,
                zero_init: !o.existing,
                granule,
                stats,
            };
            run_image(&mut source, &mut w, chunk, progress)?;
            stats = w.stats;
        }
    }
    if size == 0 {
        progress(0, 0);
    }
    // Flushing writes cached metadata; it syncs unless the cache mode is `Unsafe`.
    match target {
        Out::Stream(s) => s.finish().map_err(|e| e.with_path(dst))?,
        Out::Image(mut i) => i.disk().flush()?,
    }
    Ok(stats)
}

/// Image output: reader thread -> this thread, which detects zeroes and writes.
fn run_image(
    source: &mut Image,
    w: &mut Writer,
    chunk: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let size = source.size();
    let (tx, rx) = sync_channel::<Result<Chunk>>(BUFFERS);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(BUFFERS + 2);
    // -S 0 writes zeroes as data: they must be in the buffer.
    let fill = w.granule == 0;
    std::thread::scope(|s| -> Result<()> {
        s.spawn(move || read_all(source, chunk, &tx, &free_rx, BUFFERS, fill));
        let mut done = 0u64;
        for msg in rx.iter() {
            let c = msg?;
            w.put(&c)?;
            done = c.offset + c.len;
            progress(done, size);
            if let Some(buf) = c.data {
                let _ = free_tx.try_send(buf);
            }
        }
        if done < size {
            return Err(Error::new(ErrorKind::Io, "the reader stopped early"));
        }
        Ok(())
    })
}

fn check_compress(o: &ConvertOptions) -> Result<()> {
    if !o.compress {
        return Ok(());
    }
    match o.dst_format {
        Format::Qcow2 if !o.existing => Ok(()),
        Format::Vmdk if o.create.vmdk_subformat == Subformat::StreamOptimized => Ok(()),
        Format::Qcow2 => Err(Error::new(
            ErrorKind::Unsupported,
            "compressed output needs a new image (not -n)",
        )),
        f => Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "compression is not supported for {} output (use qcow2, or vmdk with \
                 subformat=streamOptimized)",
                f.name()
            ),
        )),
    }
}

/// Zero-detection granularity: whole clusters/grains for formats that allocate in them.
fn granule(o: &ConvertOptions, target: &Out) -> u64 {
    if o.sparse_size == 0 {
        return 0;
    }
    match target {
        Out::Image(Image::Raw(_)) => o.sparse_size,
        Out::Image(Image::Qcow2 { image, .. }) => o.sparse_size.max(image.cluster_size()),
        Out::Image(Image::Vmdk(_)) | Out::Stream(_) => o.sparse_size.max(GRAIN),
    }
}

fn open_target(dst: &Path, size: u64, o: &ConvertOptions) -> Result<Image> {
    let rw = OpenOptions {
        cache: o.dst_cache,
        ..Default::default()
    };
    if o.existing {
        let t = Image::open(dst, o.dst_format, &rw)?;
        if t.size() < size {
            return Err(Error::new(
                ErrorKind::OutOfBounds,
                format!(
                    "the target is smaller ({}) than the source ({size})",
                    t.size()
                ),
            )
            .with_path(dst));
        }
        return Ok(t);
    }
    if o.create.backing_file.is_some() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "convert does not create targets with a backing file",
        ));
    }
    match o.dst_format {
        Format::Raw => {
            RawDisk::create_cached(dst, size, o.dst_cache)?;
            Ok(Image::Raw(RawDisk::open(dst, &rw)?))
        }
        Format::Qcow2 => {
            crate::qcow2::create_cached(dst, size, &o.create, o.dst_cache)
                .map_err(|e| e.with_path(dst))?;
            Ok(Image::Qcow2 {
                image: Box::new(Qcow2::open(dst, &rw)?),
                has_backing: false,
                host: None,
            })
        }
        Format::Vmdk => {
            let vo = VmdkCreateOptions {
                subformat: o.create.vmdk_subformat,
            };
            Ok(Image::Vmdk(Box::new(vmdk::create(dst, size, &vo)?)))
        }
    }
}

/// The reader thread: sends chunks in order until the end or the first error. With
/// `fill_zeroes`, ranges that read as zeroes are zeroed in the buffer (else left stale and
/// only listed in `Chunk::zero_runs`).
fn read_all(
    source: &mut Image,
    chunk: u64,
    tx: &SyncSender<Result<Chunk>>,
    free: &Receiver<Vec<u8>>,
    buffers: usize,
    fill_zeroes: bool,
) {
    let size = source.size();
    let mut allocated = 0usize;
    let mut offset = 0u64;
    while offset < size {
        let len = chunk.min(size - offset);
        let pool = Pool {
            allocated: &mut allocated,
            buffers,
            free,
        };
        let msg = read_chunk(source, offset, len, pool, fill_zeroes);
        let failed = msg.is_err();
        if tx.send(msg).is_err() || failed {
            return;
        }
        offset += len;
    }
}

/// The reader's buffers: up to `buffers` are allocated, then they come back on `free`.
struct Pool<'a> {
    allocated: &'a mut usize,
    buffers: usize,
    free: &'a Receiver<Vec<u8>>,
}

fn read_chunk(
    source: &mut Image,
    offset: u64,
    len: u64,
    pool: Pool,
    fill_zeroes: bool,
) -> Result<Chunk> {
    let runs = source.status(offset, len)?;
    if runs.iter().all(|r| r.2 == Status::Zero) {
        return Ok(Chunk {
            offset,
            len,
            data: None,
            zero_runs: Vec::new(),
        });
    }
    let mut buf = if *pool.allocated < pool.buffers {
        *pool.allocated += 1;
        Vec::new()
    } else {
        pool.free
            .recv()
            .map_err(|_| Error::new(ErrorKind::Io, "the writer stopped"))?
    };
    buf.resize(len as usize, 0);
    let mut zero_runs = Vec::new();
    for (at, n, s) in runs {
        let range = (at - offset) as usize..(at - offset + n) as usize;
        match s {
            Status::Zero if fill_zeroes => buf[range].fill(0),
            Status::Zero => zero_runs.push(range),
            Status::Data => source.read(&mut buf[range], at)?,
        }
    }
    Ok(Chunk {
        offset,
        len,
        data: Some(buf),
        zero_runs,
    })
}

/// The writing side of a conversion.
struct Writer<'a> {
    target: &'a mut Image,
    zero_init: bool,
    granule: u64,
    stats: ConvertStats,
}

impl Writer<'_> {
    fn put(&mut self, c: &Chunk) -> Result<()> {
        let Some(data) = &c.data else {
            return self.zero(c.offset, c.len);
        };
        // Known zero runs are not scanned (their bytes are stale); data between them is.
        let mut pos = 0usize;
        for z in &c.zero_runs {
            self.put_data(c.offset + pos as u64, &data[pos..z.start])?;
            self.zero(c.offset + z.start as u64, z.len() as u64)?;
            pos = z.end;
        }
        self.put_data(c.offset + pos as u64, &data[pos..])
    }

    /// Writes `data` at `offset`, leaving out granules that are all zero.
    fn put_data(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.granule == 0 {
            return self.data(offset, data);
        }
        let g = self.granule as usize;
        let mut run_start = 0usize;
        let mut run_zero = None;
        let mut pos = 0usize;
        while pos < data.len() {
            // Granules are aligned to the disk, not to the chunk.
            let abs = offset + pos as u64;
            let next = (abs / self.granule + 1) * self.granule - offset;
            let end = (next as usize).min(data.len()).min(pos + g);
            let z = is_zero(&data[pos..end]);
            if run_zero != Some(z) {
                self.flush_run(offset, data, run_start, pos, run_zero)?;
                run_start = pos;
                run_zero = Some(z);
            }
            pos = end;
        }
        self.flush_run(offset, data, run_start, data.len(), run_zero)
    }

    fn flush_run(
        &mut self,
        base: u64,
        data: &[u8],
        a: usize,
        b: usize,
        zero: Option<bool>,
    ) -> Result<()> {
        match zero {
            None => Ok(()),
            Some(true) => self.zero(base + a as u64, (b - a) as u64),
            Some(false) => self.data(base + a as u64, &data[a..b]),
        }
    }

    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        self.stats.zero += len;
        if self.zero_init || len == 0 {
            return Ok(());
        }
        self.target.disk().write_zeroes(offset, len)
    }

    fn data(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.stats.written += data.len() as u64;
        self.target.disk().write_at(data, offset)
    }
}

/// Compression threads for compressed output.
fn compress_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// A chunk whose non-zero units (grains or clusters) are compressed.
struct Packed<T> {
    offset: u64,
    len: u64,
    items: Vec<T>,
    zero: u64,
    buf: Option<Vec<u8>>,
}

/// Splits a chunk into `unit`-sized pieces (chunks start on a unit boundary) and compresses
/// the non-zero ones with `f(guest_offset, piece)`.
fn pack<T>(
    c: Chunk,
    unit: u64,
    f: &(impl Fn(u64, &[u8]) -> Result<T> + Sync),
) -> Result<Packed<T>> {
    let mut p = Packed {
        offset: c.offset,
        len: c.len,
        items: Vec::new(),
        zero: 0,
        buf: None,
    };
    let Some(data) = c.data else {
        p.zero = c.len;
        return Ok(p);
    };
    for (i, g) in data.chunks(unit as usize).enumerate() {
        if is_zero(g) {
            p.zero += g.len() as u64;
        } else {
            p.items.push(f(c.offset + i as u64 * unit, g)?);
        }
    }
    p.buf = Some(data);
    Ok(p)
}

/// A compression thread: takes chunks from the shared queue until it is closed.
fn compress_worker<T>(
    rx: &Mutex<Receiver<Result<Chunk>>>,
    tx: &SyncSender<Result<Packed<T>>>,
    unit: u64,
    f: &(impl Fn(u64, &[u8]) -> Result<T> + Sync),
) {
    loop {
        let msg = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok(msg) = msg else { return };
        let packed = msg.and_then(|c| pack(c, unit, f));
        let failed = packed.is_err();
        if tx.send(packed).is_err() || failed {
            return;
        }
    }
}

/// Reader -> compression threads -> this thread, which hands chunks to `put` in order.
/// No thread waits for another unless a queue is empty or full.
fn run_pipeline<T: Send>(
    source: &mut Image,
    chunk: u64,
    unit: u64,
    f: &(impl Fn(u64, &[u8]) -> Result<T> + Sync),
    put: &mut dyn FnMut(&Packed<T>) -> Result<()>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let size = source.size();
    let threads = compress_threads();
    let (tx, rx) = sync_channel::<Result<Chunk>>(BUFFERS);
    let rx = Mutex::new(rx);
    let (ptx, prx) = sync_channel::<Result<Packed<T>>>(BUFFERS);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(BUFFERS * 2 + threads);
    std::thread::scope(|s| -> Result<()> {
        s.spawn(move || read_all(source, chunk, &tx, &free_rx, BUFFERS + threads, true));
        for _ in 0..threads {
            let ptx = ptx.clone();
            let rx = &rx;
            s.spawn(move || compress_worker(rx, &ptx, unit, f));
        }
        drop(ptx);
        let mut waiting = std::collections::BTreeMap::new();
        let mut next = 0u64;
        for msg in prx.iter() {
            let p = msg?;
            waiting.insert(p.offset, p);
            while let Some(p) = waiting.remove(&next) {
                put(&p)?;
                next = p.offset + p.len;
                progress(next, size);
                if let Some(buf) = p.buf {
                    let _ = free_tx.try_send(buf);
                }
            }
        }
        if next < size {
            return Err(Error::new(ErrorKind::Io, "the reader stopped early"));
        }
        Ok(())
    })
}

/// Stream output: grains compressed on several threads, put in order.
fn run_stream(
    source: &mut Image,
    out: &mut StreamOut,
    chunk: u64,
    stats: &mut ConvertStats,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let size = source.size();
    let capacity = out.capacity();
    let f = |at: u64, g: &[u8]| -> Result<(u64, Vec<u8>)> {
        let grain = at / GRAIN;
        Ok((grain, compress_grain(capacity, grain, g)?))
    };
    let mut put = |p: &Packed<(u64, Vec<u8>)>| -> Result<()> {
        for (g, data) in &p.items {
            out.put_grain(*g, data)?;
            stats.written += GRAIN.min(size - g * GRAIN);
        }
        stats.zero += p.zero;
        Ok(())
    };
    run_pipeline(source, chunk, GRAIN, &f, &mut put, progress)
}

/// Compressed qcow2 output: clusters compressed on several threads, written in order
/// (uncompressible ones as normal clusters). The target is new, so zero clusters are skipped.
fn run_qcow2_compressed(
    source: &mut Image,
    image: &mut Qcow2,
    chunk: u64,
    stats: &mut ConvertStats,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let (ty, cs) = (image.compression_type(), image.cluster_size());
    let f = |at: u64, g: &[u8]| -> Result<(u64, Option<Vec<u8>>)> {
        Ok((at, compress_cluster(ty, cs, g)))
    };
    let mut put = |p: &Packed<(u64, Option<Vec<u8>>)>| -> Result<()> {
        let Some(buf) = &p.buf else {
            stats.zero += p.zero;
            return Ok(());
        };
        for (at, c) in &p.items {
            let start = (at - p.offset) as usize;
            let piece = &buf[start..(start + cs as usize).min(buf.len())];
            image.write_precompressed(*at, piece, c.as_deref())?;
            stats.written += piece.len() as u64;
        }
        stats.zero += p.zero;
        Ok(())
    };
    run_pipeline(source, chunk, cs, &f, &mut put, progress)
}
