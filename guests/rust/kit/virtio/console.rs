//! virtio-console, port 0 only (MULTIPORT not negotiated), polled:
//! queue 0 receives, queue 1 transmits.

use super::queue::{Buf, Virtq};
use super::{Device, Transport};
use crate::dma::{Dma, DmaBuf};
use crate::{bail, Error};

/// Bytes per receive or transmit buffer.
const BUF_LEN: usize = 4096;

/// A virtio-console device.
#[derive(Debug)]
pub struct Console {
    /// The device.
    pub dev: Device,
    /// receiveq of port 0.
    pub rx: Virtq,
    /// transmitq of port 0.
    pub tx: Virtq,
    rx_buf: DmaBuf,
    tx_buf: DmaBuf,
    rx_posted: bool,
}

impl Console {
    /// Negotiates (no features) and sets up queues 0 and 1.
    pub fn new(transport: Transport, dma: &mut Dma) -> Result<Self, Error> {
        let mut dev = Device::init(transport, 0)?;
        let rx = dev.queue(dma, 0, 16)?;
        let tx = dev.queue(dma, 1, 16)?;
        let rx_buf = dma.alloc(BUF_LEN, 64)?;
        let tx_buf = dma.alloc(BUF_LEN, 64)?;
        dev.driver_ok();
        Ok(Self {
            dev,
            rx,
            tx,
            rx_buf,
            tx_buf,
            rx_posted: false,
        })
    }

    /// Sends `bytes` (at most 4096 per call).
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if bytes.len() > BUF_LEN {
            bail!("console: {} bytes in one write", bytes.len());
        }
        self.tx_buf.as_mut_slice()[..bytes.len()].copy_from_slice(bytes);
        self.tx
            .submit(&[Buf::readable(self.tx_buf.addr(), bytes.len())])?;
        Ok(())
    }

    /// Waits for input and copies what arrived (at most `out.len()` bytes,
    /// the rest is dropped) into `out`; returns the count.
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, Error> {
        if !self.rx_posted {
            self.rx.add(&[Buf::writable(self.rx_buf.addr(), BUF_LEN)])?;
            self.rx.kick();
            self.rx_posted = true;
        }
        let used = self.rx.wait_used()?;
        self.rx_posted = false;
        let n = (used.len as usize).min(BUF_LEN).min(out.len());
        out[..n].copy_from_slice(&self.rx_buf.as_slice()[..n]);
        Ok(n)
    }
}
