//! virtio-rng (entropy device), polled: queue 0 takes device-writable
//! buffers and returns them filled (possibly partly).

use super::queue::{Buf, Virtq};
use super::{Device, Transport};
use crate::dma::{Dma, DmaBuf};
use crate::{bail, Error};

/// A virtio-rng device.
#[derive(Debug)]
pub struct Rng {
    /// The device.
    pub dev: Device,
    /// Request queue 0.
    pub vq: Virtq,
}

impl Rng {
    /// Negotiates (no features) and sets up queue 0.
    pub fn new(transport: Transport, dma: &mut Dma) -> Result<Self, Error> {
        let mut dev = Device::init(transport, 0)?;
        let vq = dev.queue(dma, 0, 64)?;
        dev.driver_ok();
        Ok(Self { dev, vq })
    }

    /// Fills the first `len` bytes of `buf`, asking again while the device
    /// returns less; returns the number of requests it took.
    pub fn fill(&mut self, buf: &mut DmaBuf, len: usize) -> Result<u32, Error> {
        assert!(len <= buf.len(), "rng: buffer too small");
        let (mut got, mut requests) = (0usize, 0u32);
        while got < len {
            let n = self
                .vq
                .submit(&[Buf::writable(buf.addr() + got as u64, len - got)])?;
            requests += 1;
            if n == 0 && requests > 1000 {
                bail!("rng: the device returns no bytes");
            }
            got += (n as usize).min(len - got);
        }
        Ok(requests)
    }
}
