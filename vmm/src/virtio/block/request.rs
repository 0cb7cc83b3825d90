//! A descriptor chain as a virtio-blk request (virtio 1.2, 5.2.6): a 16-byte header (type,
//! reserved, sector) in the readable buffers, the data, and the status byte, the last byte of
//! the writable buffers.
//!
//! The driver may split the header and the data across descriptors any way it likes, so the
//! chain is read as two byte streams (readable, writable) of guest segments. Nothing here
//! touches guest memory except the header and discard/write-zeroes segment reads; a request
//! that does not make sense becomes [`Op::Invalid`] (answered VIRTIO_BLK_S_IOERR) or
//! [`Op::Unsupported`], never a panic.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::{kind, SECTOR_SIZE};
use crate::virtio::queue::Chain;

/// A run of guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// First byte.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u64,
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    /// Read `offset..` into `data`.
    Read {
        /// Disk byte offset.
        offset: u64,
        /// Where the bytes go.
        data: Vec<Segment>,
    },
    /// Write `data` at `offset`.
    Write {
        /// Disk byte offset.
        offset: u64,
        /// Where the bytes come from.
        data: Vec<Segment>,
    },
    /// Flush the image.
    Flush,
    /// Write the device ID into `data`.
    GetId {
        /// Where the ID goes.
        data: Vec<Segment>,
    },
    /// Deallocate a range.
    Discard {
        /// Disk byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Zero a range.
    WriteZeroes {
        /// Disk byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// The driver allows deallocating it.
        unmap: bool,
    },
    /// A type this device does not know (VIRTIO_BLK_S_UNSUPP).
    Unsupported,
    /// A malformed request (VIRTIO_BLK_S_IOERR).
    Invalid,
}

/// A parsed request.
#[derive(Debug)]
pub struct BlkRequest {
    /// The chain's head, for the used ring.
    pub head: u16,
    /// Where the status byte goes.
    pub status: GuestAddress,
    /// What to do.
    pub op: Op,
}

/// Splits off the first `n` bytes of `segs`; returns them and the rest.
fn split(segs: &[Segment], mut n: u64) -> (Vec<Segment>, Vec<Segment>) {
    let mut front = Vec::new();
    let mut back = Vec::new();
    for s in segs {
        if n >= s.len {
            n -= s.len;
            front.push(*s);
        } else if n > 0 {
            front.push(Segment {
                addr: s.addr,
                len: n,
            });
            back.push(Segment {
                addr: s.addr.unchecked_add(n),
                len: s.len - n,
            });
            n = 0;
        } else {
            back.push(*s);
        }
    }
    (front, back)
}

/// Total length of `segs`.
pub fn total(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| s.len).sum()
}

/// Reads `buf.len()` bytes from the start of `segs`; false if they are shorter or not RAM.
fn gather(mem: &GuestMemoryMmap, segs: &[Segment], buf: &mut [u8]) -> bool {
    let mut done = 0;
    for s in segs {
        if done == buf.len() {
            break;
        }
        let n = (buf.len() - done).min(s.len as usize);
        if mem.read_slice(&mut buf[done..done + n], s.addr).is_err() {
            return false;
        }
        done += n;
    }
    done == buf.len()
}

/// The chain as a request; `Err(head)` for a chain that cannot be answered, only returned
/// (with nothing written): one without a device-writable last descriptor for the status byte,
/// or one virtio-queue's iterator cut short (a loop, a `next` or an indirect table it could
/// not follow, an indirect table inside another), whose last byte is no status byte the
/// driver meant. A chain of more than `max_descs` descriptors (the queue size, which the spec
/// forbids drivers to exceed, indirect tables included) is answered IOERR.
pub fn parse(chain: Chain<'_>, mem: &GuestMemoryMmap, max_descs: u16) -> Result<BlkRequest, u16> {
    let head = chain.head_index();
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut count = 0usize;
    let mut cut = false;
    let mut last_writable = false;
    for d in chain {
        count += 1;
        cut = d.has_next();
        if d.len() == 0 {
            continue;
        }
        last_writable = d.is_write_only();
        let seg = Segment {
            addr: d.addr(),
            len: u64::from(d.len()),
        };
        if d.addr().checked_add(seg.len).is_none() {
            return Err(head);
        }
        if d.is_write_only() {
            writable.push(seg);
        } else {
            readable.push(seg);
        }
    }
    if cut || !last_writable {
        return Err(head);
    }
    let Some(last) = writable.pop() else {
        return Err(head);
    };
    let status = last.addr.unchecked_add(last.len - 1);
    if last.len > 1 {
        writable.push(Segment {
            addr: last.addr,
            len: last.len - 1,
        });
    }
    let mut header = [0u8; 16];
    let op = if count > usize::from(max_descs) {
        Op::Invalid
    } else if gather(mem, &readable, &mut header) {
        let (_, data_out) = split(&readable, 16);
        decode(&header, data_out, writable, mem)
    } else {
        Op::Invalid
    };
    Ok(BlkRequest { head, status, op })
}

fn decode(
    header: &[u8; 16],
    data_out: Vec<Segment>,
    data_in: Vec<Segment>,
    mem: &GuestMemoryMmap,
) -> Op {
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);
    let Some(offset) = sector.checked_mul(SECTOR_SIZE) else {
        return Op::Invalid;
    };
    let whole_sectors = |segs: &[Segment]| total(segs).is_multiple_of(SECTOR_SIZE);
    match kind {
        // Data in the wrong direction (a read's buffer the device may only read, a write's
        // buffer it may only write) makes the request malformed (the last arm).
        kind::IN if whole_sectors(&data_in) && data_out.is_empty() => Op::Read {
            offset,
            data: data_in,
        },
        kind::OUT if whole_sectors(&data_out) && data_in.is_empty() => Op::Write {
            offset,
            data: data_out,
        },
        kind::IN | kind::OUT => Op::Invalid,
        kind::FLUSH => Op::Flush,
        kind::GET_ID => Op::GetId { data: data_in },
        kind::DISCARD | kind::WRITE_ZEROES => range_op(kind, &data_out, mem),
        _ => Op::Unsupported,
    }
}

/// Discard and write-zeroes carry one 16-byte segment descriptor in the data (the device
/// offers `max_discard_seg` = `max_write_zeroes_seg` = 1): sector, number of sectors, flags.
fn range_op(kind: u32, data: &[Segment], mem: &GuestMemoryMmap) -> Op {
    let mut seg = [0u8; 16];
    if total(data) != 16 || !gather(mem, data, &mut seg) {
        return Op::Invalid;
    }
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&seg[0..8]);
    let sectors = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
    let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
    let Some(offset) = u64::from_le_bytes(sector).checked_mul(SECTOR_SIZE) else {
        return Op::Invalid;
    };
    let len = u64::from(sectors) * SECTOR_SIZE;
    match (kind, flags) {
        (kind::DISCARD, 0) => Op::Discard { offset, len },
        (kind::WRITE_ZEROES, 0 | 1) => Op::WriteZeroes {
            offset,
            len,
            unmap: flags == 1,
        },
        // Reserved flag bits (and unmap on a discard).
        _ => Op::Unsupported,
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueOwnedT;

    use super::*;
    use crate::virtio::Queue;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn d(addr: u64, len: u32, write: bool, next: Option<u16>) -> RawDescriptor {
        let mut flags = 0;
        if write {
            flags |= VRING_DESC_F_WRITE;
        }
        if next.is_some() {
            flags |= VRING_DESC_F_NEXT;
        }
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next.unwrap_or(0)))
    }

    fn header(m: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        m.write_obj(kind, GuestAddress(at)).unwrap();
        m.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        m.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    fn parse_chain(m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Result<BlkRequest, u16> {
        let vq = MockSplitQueue::create(m, GuestAddress(0x40000), 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(m).unwrap().next().unwrap();
        parse(chain, m, 16)
    }

    #[test]
    fn test_parse_read_with_header_data_and_status_in_one_writable_buffer() {
        let m = mem();
        header(&m, 0x1000, kind::IN, 3);

        let r = parse_chain(
            &m,
            &[d(0x1000, 16, false, Some(1)), d(0x2000, 1025, true, None)],
        )
        .unwrap();

        assert_eq!(r.status, GuestAddress(0x2400));
        assert_eq!(
            r.op,
            Op::Read {
                offset: 3 * 512,
                data: vec![Segment {
                    addr: GuestAddress(0x2000),
                    len: 1024
                }]
            }
        );
    }

    #[test]
    fn test_parse_write_with_header_split_across_descriptors() {
        let m = mem();
        header(&m, 0x1000, kind::OUT, 1);
        m.write_obj(0u64, GuestAddress(0x1010)).unwrap();

        let r = parse_chain(
            &m,
            &[
                d(0x1000, 10, false, Some(1)),
                d(0x100a, 6 + 512, false, Some(2)),
                d(0x3000, 1, true, None),
            ],
        )
        .unwrap();

        assert_eq!(
            r.op,
            Op::Write {
                offset: 512,
                data: vec![Segment {
                    addr: GuestAddress(0x1010),
                    len: 512
                }]
            }
        );
    }

    #[test]
    fn test_parse_partial_sector_short_header_unknown_type() {
        let m = mem();
        header(&m, 0x1000, kind::IN, 0);
        header(&m, 0x5000, 99, 0);

        let partial = parse_chain(
            &m,
            &[d(0x1000, 16, false, Some(1)), d(0x2000, 101, true, None)],
        );
        let short = parse_chain(
            &m,
            &[d(0x1000, 8, false, Some(1)), d(0x2000, 1, true, None)],
        );
        let unknown = parse_chain(
            &m,
            &[d(0x5000, 16, false, Some(1)), d(0x2000, 1, true, None)],
        );

        assert_eq!(partial.unwrap().op, Op::Invalid);
        assert_eq!(short.unwrap().op, Op::Invalid);
        assert_eq!(unknown.unwrap().op, Op::Unsupported);
    }

    #[test]
    fn test_parse_no_writable_byte_is_bad_chain() {
        let m = mem();
        header(&m, 0x1000, kind::FLUSH, 0);

        let r = parse_chain(&m, &[d(0x1000, 16, false, None)]);

        assert_eq!(r.unwrap_err(), 0);
    }

    #[test]
    fn test_parse_sector_overflow_and_header_outside_ram_invalid() {
        let m = mem();
        header(&m, 0x1000, kind::IN, u64::MAX / 256);

        let overflow = parse_chain(
            &m,
            &[d(0x1000, 16, false, Some(1)), d(0x2000, 513, true, None)],
        );
        let outside = parse_chain(
            &m,
            &[d(0xfff0_0000, 16, false, Some(1)), d(0x2000, 1, true, None)],
        );

        assert_eq!(overflow.unwrap().op, Op::Invalid);
        assert_eq!(outside.unwrap().op, Op::Invalid);
    }

    #[test]
    fn test_parse_write_zeroes_segment_and_reserved_flags() {
        let m = mem();
        header(&m, 0x1000, kind::WRITE_ZEROES, 0);
        m.write_obj(8u64, GuestAddress(0x1010)).unwrap();
        m.write_obj(4u32, GuestAddress(0x1018)).unwrap();
        m.write_obj(1u32, GuestAddress(0x101c)).unwrap();
        header(&m, 0x5000, kind::DISCARD, 0);
        m.write_obj(8u64, GuestAddress(0x5010)).unwrap();
        m.write_obj(4u32, GuestAddress(0x5018)).unwrap();
        m.write_obj(1u32, GuestAddress(0x501c)).unwrap();

        let wz = parse_chain(
            &m,
            &[d(0x1000, 32, false, Some(1)), d(0x2000, 1, true, None)],
        );
        let discard_unmap = parse_chain(
            &m,
            &[d(0x5000, 32, false, Some(1)), d(0x2000, 1, true, None)],
        );

        assert_eq!(
            wz.unwrap().op,
            Op::WriteZeroes {
                offset: 4096,
                len: 2048,
                unmap: true
            }
        );
        assert_eq!(discard_unmap.unwrap().op, Op::Unsupported);
    }

    #[test]
    fn test_parse_looping_chain_and_readable_last_descriptor_are_bad_chains() {
        let m = mem();
        header(&m, 0x1000, kind::IN, 0);

        let looping = parse_chain(
            &m,
            &[
                d(0x1000, 16, false, Some(1)),
                d(0x2000, 512, true, Some(2)),
                d(0x3000, 1, true, Some(0)),
            ],
        );
        let next_beyond_queue = parse_chain(
            &m,
            &[
                d(0x1000, 16, false, Some(1)),
                d(0x2000, 513, true, Some(40)),
            ],
        );
        let readable_last = parse_chain(
            &m,
            &[
                d(0x1000, 16, false, Some(1)),
                d(0x2000, 512, true, Some(2)),
                d(0x3000, 1, false, None),
            ],
        );

        assert_eq!(looping.unwrap_err(), 0);
        assert_eq!(next_beyond_queue.unwrap_err(), 0);
        assert_eq!(readable_last.unwrap_err(), 0);
    }

    #[test]
    fn test_parse_data_in_wrong_direction_invalid() {
        let m = mem();
        header(&m, 0x1000, kind::IN, 0);
        header(&m, 0x5000, kind::OUT, 0);

        let read_into_readable = parse_chain(
            &m,
            &[
                d(0x1000, 16, false, Some(1)),
                d(0x2000, 512, false, Some(2)),
                d(0x3000, 1, true, None),
            ],
        );
        let write_from_writable = parse_chain(
            &m,
            &[
                d(0x5000, 16, false, Some(1)),
                d(0x2000, 512, true, Some(2)),
                d(0x3000, 1, true, None),
            ],
        );

        assert_eq!(read_into_readable.unwrap().op, Op::Invalid);
        assert_eq!(write_from_writable.unwrap().op, Op::Invalid);
    }

    #[test]
    fn test_parse_more_descriptors_than_queue_size_invalid() {
        let m = mem();
        header(&m, 0x1000, kind::IN, 0);
        let vq = MockSplitQueue::create(&m, GuestAddress(0x40000), 16);
        vq.add_desc_chains(
            &[
                d(0x1000, 16, false, Some(1)),
                d(0x2000, 512, true, Some(2)),
                d(0x3000, 1, true, None),
            ],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(&m).unwrap().next().unwrap();

        let r = parse(chain, &m, 2).unwrap();

        assert_eq!(r.op, Op::Invalid);
        assert_eq!(r.status, GuestAddress(0x3000));
    }

    #[test]
    fn test_split_segments_at_byte_offsets() {
        let segs = [
            Segment {
                addr: GuestAddress(0x1000),
                len: 10,
            },
            Segment {
                addr: GuestAddress(0x2000),
                len: 10,
            },
        ];

        let (front, back) = split(&segs, 15);

        assert_eq!(total(&front), 15);
        assert_eq!(
            back,
            vec![Segment {
                addr: GuestAddress(0x2005),
                len: 5
            }]
        );
    }
}
