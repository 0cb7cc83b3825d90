//! Where an image's data lives, layer by layer, as `qemu-img map` reports it.

use std::path::{Path, PathBuf};

use super::Image;
use crate::qcow2::Mapping;
use crate::{DiskSize, Error, ErrorKind, Format, OpenOptions, Result};

/// Longest backing chain walked.
const MAX_DEPTH: usize = 256;

/// One run of the map (qemu-img's JSON fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// Guest offset.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Layer of the backing chain that provides the run (0: the image itself).
    pub depth: usize,
    /// Some layer allocates the run (false: reads as zeroes, nothing allocated).
    pub present: bool,
    /// The run reads as zeroes.
    pub zero: bool,
    /// The run has data stored.
    pub data: bool,
    /// Host offset of the data in the layer's file, where it is stored uncompressed.
    pub offset: Option<u64>,
    /// The file of the layer that provides the run.
    pub filename: PathBuf,
}

/// One layer of a chain.
struct Layer {
    image: Image,
    path: PathBuf,
}

/// Opens the image and every layer of its backing chain (read-only).
fn open_chain(path: &Path, format: Format, open: &OpenOptions) -> Result<Vec<Layer>> {
    let o = OpenOptions {
        read_only: true,
        allow_backing: true,
        ..open.clone()
    };
    let mut layers = Vec::new();
    let mut next = Some((path.to_path_buf(), format));
    while let Some((p, f)) = next.take() {
        if layers.len() >= MAX_DEPTH {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "backing chain too deep (a loop?)",
            ));
        }
        let image = Image::open(&p, f, &o)?;
        if f == Format::Qcow2 {
            let info = crate::info(&p, f)?;
            if let Some(name) = info.backing_file {
                let bf = match info.backing_format {
                    Some(s) => s.parse()?,
                    None if layers.is_empty() => open.backing_format.ok_or_else(|| {
                        Error::new(ErrorKind::Unsupported, "backing file format unknown")
                    })?,
                    None => {
                        return Err(Error::new(
                            ErrorKind::Unsupported,
                            "backing file format unknown",
                        ))
                    }
                };
                let bp = match Path::new(&name) {
                    n if n.is_absolute() => n.to_path_buf(),
                    n => p.parent().unwrap_or(Path::new(".")).join(n),
                };
                next = Some((bp, bf));
            }
        }
        layers.push(Layer { image, path: p });
    }
    Ok(layers)
}

/// The map of `path` (format `format`) and its backing chain.
pub fn map(path: &Path, format: Format, open: &OpenOptions) -> Result<Vec<MapEntry>> {
    let mut layers = open_chain(path, format, open)?;
    let size = layers.first().map_or(0, |l| l.image.size());
    let mut out: Vec<MapEntry> = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let e = resolve(&mut layers, 0, pos, size - pos)?;
        pos += e.length;
        merge(&mut out, e);
    }
    Ok(out)
}

fn merge(out: &mut Vec<MapEntry>, e: MapEntry) {
    if let Some(last) = out.last_mut() {
        let offsets_follow = match (last.offset, e.offset) {
            (Some(a), Some(b)) => a + last.length == b,
            (None, None) => true,
            _ => false,
        };
        if offsets_follow
            && (
                last.depth,
                last.present,
                last.zero,
                last.data,
                &last.filename,
            ) == (e.depth, e.present, e.zero, e.data, &e.filename)
        {
            last.length += e.length;
            return;
        }
    }
    out.push(e);
}

/// The run starting at `pos` (at most `max` bytes) as seen from layer `depth` down.
fn resolve(layers: &mut [Layer], depth: usize, pos: u64, max: u64) -> Result<MapEntry> {
    let last = depth + 1 >= layers.len();
    let filename = layers[depth].path.clone();
    let entry = |length, present, zero, data, offset| MapEntry {
        start: pos,
        length,
        depth,
        present,
        zero,
        data,
        offset,
        filename: filename.clone(),
    };
    let image = &mut layers[depth].image;
    if pos >= image.size() {
        return Ok(entry(max, false, true, false, None));
    }
    let max = max.min(image.size() - pos);
    let (mut len, in_off, m) = match image {
        Image::Raw(r) => {
            let ext = r.allocation_map(pos, max)?;
            let (len, alloc) = ext.first().map_or((max, false), |e| (e.len, e.allocated));
            return Ok(entry(len, true, !alloc, alloc, Some(pos)));
        }
        Image::Vmdk(_) => return Ok(entry(max, true, false, true, None)),
        Image::Qcow2 { image, .. } => {
            let cs = image.cluster_size();
            let len = ((pos / cs + 1) * cs - pos).min(max);
            (len, pos % cs, image.lookup(pos / cs)?)
        }
    };
    Ok(match m {
        Mapping::Unallocated if last => entry(len, false, true, false, None),
        Mapping::Unallocated => {
            // Beyond the end of the backing file nothing can come from it.
            let below = layers[depth + 1].image.size();
            if pos >= below {
                entry(len, false, true, false, None)
            } else {
                return resolve(layers, depth + 1, pos, len.min(below - pos));
            }
        }
        Mapping::Zero { .. } => entry(len, true, true, false, None),
        Mapping::Normal { host, .. } => {
            let host = host + in_off;
            let mut data = true;
            if let Image::Qcow2 { image, .. } = &layers[depth].image {
                (len, data) = image.host_extent(host, len)?;
            }
            entry(len, true, !data, true, Some(host))
        }
        Mapping::Compressed { .. } => entry(len, true, false, true, None),
    })
}

/// Allocation statistics of a qcow2 image's active L1 table, as `qemu-img check` counts
/// them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragInfo {
    /// Guest clusters in the virtual disk.
    pub total_clusters: u64,
    /// Guest clusters with a host cluster (data, compressed or preallocated zero).
    pub allocated_clusters: u64,
    /// Allocated clusters not following the previous one on the host (compressed always).
    pub fragmented_clusters: u64,
    /// Compressed clusters.
    pub compressed_clusters: u64,
}

/// Counts a qcow2 image's allocated, fragmented and compressed clusters.
pub fn frag_info(path: &Path, open: &OpenOptions) -> Result<FragInfo> {
    let o = OpenOptions {
        read_only: true,
        allow_backing: true,
        ..open.clone()
    };
    let Image::Qcow2 { image, .. } = &mut Image::open(path, Format::Qcow2, &o)? else {
        return Err(Error::new(ErrorKind::Unsupported, "not a qcow2 image"));
    };
    let cs = image.cluster_size();
    let mut f = FragInfo {
        total_clusters: image.size().div_ceil(cs),
        ..Default::default()
    };
    let mut next = 0u64;
    for vc in 0..f.total_clusters {
        let host = match image.lookup(vc)? {
            Mapping::Normal { host, .. }
            | Mapping::Zero {
                host: Some(host), ..
            } => host,
            Mapping::Compressed { .. } => {
                f.allocated_clusters += 1;
                f.compressed_clusters += 1;
                f.fragmented_clusters += 1;
                continue;
            }
            Mapping::Unallocated | Mapping::Zero { host: None, .. } => continue,
        };
        f.allocated_clusters += 1;
        if next != 0 && host != next {
            f.fragmented_clusters += 1;
        }
        next = host + cs;
    }
    Ok(f)
}
