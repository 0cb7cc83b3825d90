//! The control queue (virtio 1.2, 5.1.6.5): each chain is a command (`class`, `command`,
//! data: device-readable) followed by one device-writable status byte, answered
//! VIRTIO_NET_OK or VIRTIO_NET_ERR.
//!
//! Only VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET is offered (VIRTIO_NET_F_MQ). Every other class (RX
//! mode, MAC table and address, VLAN, announce, guest offloads: their feature bits are not
//! offered, so a conforming driver does not send them) is answered ERR, as is a pair count
//! outside 1..=max. A chain without a status byte is used with 0 bytes and counted: a driver
//! waiting on its command is never left hanging by the device.

use virtio_bindings::virtio_net as vn;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::virtio::queue::Chain;

/// The status the device writes.
pub const OK: u8 = vn::VIRTIO_NET_OK as u8;
/// The status for a refused command.
pub const ERR: u8 = vn::VIRTIO_NET_ERR as u8;

/// What a command asks, once parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET with this many pairs.
    PairsSet(u16),
    /// Anything else (class, command).
    Other(u8, u8),
}

/// One control chain as read from guest memory.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// The command, or None when the readable part is shorter than its header (or than the
    /// data its command needs).
    pub command: Option<Command>,
    /// Where the status byte goes (None: the chain has no writable byte).
    pub status: Option<GuestAddress>,
}

/// Reads a control chain: its first readable bytes (class, command, a pair count) and where
/// its status byte is.
pub fn parse(chain: Chain<'_>, mem: &GuestMemoryMmap) -> Request {
    let mut head = [0u8; 4];
    let mut got = 0usize;
    let mut status = None;
    let mut unreadable = false;
    for d in chain {
        if d.is_write_only() {
            if status.is_none() && d.len() > 0 {
                status = Some(d.addr());
            }
            continue;
        }
        let n = (d.len() as usize).min(head.len() - got);
        if n > 0 && mem.read_slice(&mut head[got..got + n], d.addr()).is_err() {
            unreadable = true;
        }
        got += n;
    }
    let command = match (unreadable, got) {
        (true, _) | (_, 0..=1) => None,
        _ if u32::from(head[0]) == vn::VIRTIO_NET_CTRL_MQ
            && u32::from(head[1]) == vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET =>
        {
            (got >= 4).then(|| Command::PairsSet(u16::from_le_bytes([head[2], head[3]])))
        }
        _ => Some(Command::Other(head[0], head[1])),
    };
    Request { command, status }
}

/// The answer to `command` on a device with `max_pairs` pairs (`mq`: VIRTIO_NET_F_MQ was
/// negotiated): Ok with the new pair count for a valid PAIRS_SET, Err for everything else.
pub fn decide(command: Option<Command>, mq: bool, max_pairs: usize) -> Result<usize, ()> {
    match command {
        Some(Command::PairsSet(n)) if mq && n >= 1 && usize::from(n) <= max_pairs => {
            Ok(usize::from(n))
        }
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;

    use super::*;
    use crate::virtio::Queue;

    fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
    }

    fn parse_one(descs: &[RawDescriptor], data: &[(u64, &[u8])]) -> Request {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        for (addr, bytes) in data {
            m.write_slice(bytes, GuestAddress(*addr)).unwrap();
        }
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(&m).unwrap();
        parse(chain, &m)
    }

    #[test]
    fn test_ctrl_parse_pairs_set_and_status_address() {
        let r = parse_one(
            &[
                desc(0x1000, 2, VRING_DESC_F_NEXT, 1),
                desc(0x2000, 2, VRING_DESC_F_NEXT, 2),
                desc(0x3000, 1, VRING_DESC_F_WRITE, 0),
            ],
            &[(0x1000, &[4, 0]), (0x2000, &[3, 0])],
        );

        assert_eq!(r.command, Some(Command::PairsSet(3)));
        assert_eq!(r.status, Some(GuestAddress(0x3000)));
    }

    #[test]
    fn test_ctrl_parse_short_or_unreadable_command_is_none() {
        let short = parse_one(
            &[
                desc(0x1000, 1, VRING_DESC_F_NEXT, 1),
                desc(0x3000, 1, VRING_DESC_F_WRITE, 0),
            ],
            &[(0x1000, &[4])],
        );
        let pairs_without_count = parse_one(
            &[
                desc(0x1000, 2, VRING_DESC_F_NEXT, 1),
                desc(0x3000, 1, VRING_DESC_F_WRITE, 0),
            ],
            &[(0x1000, &[4, 0])],
        );
        let outside = parse_one(
            &[
                desc(0xfff0_0000, 4, VRING_DESC_F_NEXT, 1),
                desc(0x3000, 1, VRING_DESC_F_WRITE, 0),
            ],
            &[],
        );
        let no_status = parse_one(&[desc(0x1000, 4, 0, 0)], &[(0x1000, &[0, 1, 1, 0])]);

        assert_eq!(short.command, None);
        assert_eq!(pairs_without_count.command, None);
        assert_eq!(outside.command, None);
        assert_eq!(no_status.command, Some(Command::Other(0, 1)));
        assert_eq!(no_status.status, None);
    }

    #[test]
    fn test_ctrl_decide_only_valid_pairs_set_is_ok() {
        assert_eq!(decide(Some(Command::PairsSet(2)), true, 2), Ok(2));
        assert_eq!(decide(Some(Command::PairsSet(1)), true, 2), Ok(1));
        assert_eq!(decide(Some(Command::PairsSet(0)), true, 2), Err(()));
        assert_eq!(decide(Some(Command::PairsSet(3)), true, 2), Err(()));
        assert_eq!(decide(Some(Command::PairsSet(2)), false, 2), Err(()));
        // RX mode (promiscuous on), MAC table set: not offered.
        assert_eq!(decide(Some(Command::Other(0, 0)), true, 2), Err(()));
        assert_eq!(decide(Some(Command::Other(1, 0)), true, 2), Err(()));
        assert_eq!(decide(None, true, 2), Err(()));
    }
}
