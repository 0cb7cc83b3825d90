//! How a virtio-pci device interrupts: the queue's (or the configuration's) MSI-X vector when
//! the guest enabled MSI-X, else the ISR plus INTA#, a level-triggered line through an irqfd
//! with a resample eventfd (the worker asserts the line again after the guest's EOI while the
//! ISR still has bits set).

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

use crate::pci::msix::MsixConfig;
use crate::virtio::transport::NO_VECTOR;
use crate::virtio::{status, VirtioInterrupt, VirtioInterruptType};

/// ISR bit: a queue has used buffers.
pub const ISR_QUEUE: u8 = 1;
/// ISR bit: the configuration changed.
pub const ISR_CONFIG: u8 = 2;

/// The interrupt state of one virtio-pci function.
pub struct PciInterrupt {
    isr: AtomicU8,
    config_generation: AtomicU8,
    device_status: Arc<AtomicU8>,
    msix: Arc<Mutex<MsixConfig>>,
    queue_vectors: Vec<AtomicU16>,
    config_vector: AtomicU16,
    intx: EventFd,
    resample: EventFd,
    /// The command register's INTx disable bit.
    intx_disabled: AtomicBool,
}

impl PciInterrupt {
    /// The interrupt of a function with `queues` queues.
    pub fn new(
        queues: usize,
        device_status: Arc<AtomicU8>,
        msix: Arc<Mutex<MsixConfig>>,
        intx: EventFd,
        resample: EventFd,
    ) -> PciInterrupt {
        PciInterrupt {
            isr: AtomicU8::new(0),
            config_generation: AtomicU8::new(0),
            device_status,
            msix,
            queue_vectors: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            config_vector: AtomicU16::new(NO_VECTOR),
            intx,
            resample,
            intx_disabled: AtomicBool::new(false),
        }
    }

    /// The guest set or cleared INTx disable (command register bit 10); clearing it with an
    /// interrupt pending asserts the line.
    pub fn set_intx_disabled(&self, disabled: bool) {
        let was = self.intx_disabled.swap(disabled, Ordering::AcqRel);
        if was && !disabled {
            self.resample();
        }
    }

    fn assert_intx(&self) -> std::io::Result<()> {
        if self.intx_disabled.load(Ordering::Acquire) {
            return Ok(());
        }
        self.intx.write(1)
    }

    /// The MSI-X state.
    pub fn msix(&self) -> MutexGuard<'_, MsixConfig> {
        self.msix.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads and clears the ISR (a guest read of the ISR register).
    pub fn take_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::AcqRel)
    }

    /// The configuration generation.
    pub fn config_generation(&self) -> u8 {
        self.config_generation.load(Ordering::Acquire)
    }

    /// Queue `q`'s MSI-X vector.
    pub fn queue_vector(&self, q: u16) -> u16 {
        self.queue_vectors
            .get(usize::from(q))
            .map_or(NO_VECTOR, |v| v.load(Ordering::Acquire))
    }

    /// Sets queue `q`'s vector; a vector past the table becomes NO_VECTOR (what the driver
    /// reads back to learn the mapping failed).
    pub fn set_queue_vector(&self, q: u16, vector: u16) {
        let v = self.checked_vector(vector);
        if let Some(slot) = self.queue_vectors.get(usize::from(q)) {
            slot.store(v, Ordering::Release);
        }
    }

    /// The configuration-change vector.
    pub fn config_vector(&self) -> u16 {
        self.config_vector.load(Ordering::Acquire)
    }

    /// Sets the configuration-change vector (NO_VECTOR if past the table).
    pub fn set_config_vector(&self, vector: u16) {
        self.config_vector
            .store(self.checked_vector(vector), Ordering::Release);
    }

    fn checked_vector(&self, vector: u16) -> u16 {
        if usize::from(vector) < self.msix().len() {
            vector
        } else {
            NO_VECTOR
        }
    }

    /// Back to the state after a device reset: no vectors, ISR clear.
    pub fn reset(&self) {
        self.isr.store(0, Ordering::Release);
        for v in &self.queue_vectors {
            v.store(NO_VECTOR, Ordering::Release);
        }
        self.config_vector.store(NO_VECTOR, Ordering::Release);
    }

    /// The snapshot's view: (ISR, configuration generation, INTx disabled).
    pub fn saved_flags(&self) -> (u8, u8, bool) {
        (
            self.isr.load(Ordering::Acquire),
            self.config_generation.load(Ordering::Acquire),
            self.intx_disabled.load(Ordering::Acquire),
        )
    }

    /// Restores what [`PciInterrupt::saved_flags`] returned; with MSI-X off and the ISR set,
    /// INTA# is asserted again (the level the guest had not yet acknowledged).
    pub fn restore_flags(&self, isr: u8, config_generation: u8, intx_disabled: bool) {
        self.isr.store(isr, Ordering::Release);
        self.config_generation
            .store(config_generation, Ordering::Release);
        self.intx_disabled.store(intx_disabled, Ordering::Release);
        self.resample();
    }

    fn raise(&self, isr_bit: u8, vector: u16) -> std::io::Result<()> {
        let mut msix = self.msix();
        if msix.enabled() {
            if isr_bit == ISR_CONFIG {
                self.isr.fetch_or(isr_bit, Ordering::AcqRel);
            }
            if vector == NO_VECTOR {
                return Ok(());
            }
            return msix.trigger(vector);
        }
        drop(msix);
        self.isr.fetch_or(isr_bit, Ordering::AcqRel);
        self.assert_intx()
    }
}

impl VirtioInterrupt for PciInterrupt {
    fn trigger(&self, kind: VirtioInterruptType) -> std::io::Result<()> {
        match kind {
            VirtioInterruptType::Queue(q) => self.raise(ISR_QUEUE, self.queue_vector(q)),
            VirtioInterruptType::Config => {
                self.config_generation.fetch_add(1, Ordering::AcqRel);
                self.raise(ISR_CONFIG, self.config_vector())
            }
        }
    }

    fn set_needs_reset(&self) {
        let old = self
            .device_status
            .fetch_or(status::DEVICE_NEEDS_RESET, Ordering::AcqRel);
        if old & status::DRIVER_OK != 0 {
            let _ = self.raise(ISR_CONFIG, self.config_vector());
        }
    }

    fn resample_eventfd(&self) -> Option<&EventFd> {
        Some(&self.resample)
    }

    fn resample(&self) {
        if !self.msix().enabled() && self.isr.load(Ordering::Acquire) != 0 {
            let _ = self.assert_intx();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvm::irq::mock::RecordingWiring;
    use crate::pci::msix::MSIX_ENABLE;

    fn interrupt() -> PciInterrupt {
        let msix = MsixConfig::new(vec![24, 25, 26], Arc::new(RecordingWiring::default())).unwrap();
        PciInterrupt::new(
            2,
            Arc::new(AtomicU8::new(status::DRIVER_OK)),
            Arc::new(Mutex::new(msix)),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        )
    }

    #[test]
    fn test_pci_interrupt_intx_sets_isr_and_resample_reasserts_while_pending() {
        let irq = interrupt();

        irq.trigger(VirtioInterruptType::Queue(1)).unwrap();
        let first = irq.intx.read().unwrap();
        irq.resample();
        let again = irq.intx.read().unwrap();
        let isr = irq.take_isr();
        irq.resample();

        assert_eq!((first, again, isr), (1, 1, ISR_QUEUE));
        assert!(irq.intx.read().is_err(), "asserted with an empty ISR");
    }

    #[test]
    fn test_pci_interrupt_intx_disable_holds_line_until_cleared() {
        let irq = interrupt();
        irq.set_intx_disabled(true);

        irq.trigger(VirtioInterruptType::Queue(0)).unwrap();
        let while_disabled = irq.intx.read().is_ok();
        irq.set_intx_disabled(false);

        assert!(!while_disabled);
        assert_eq!(irq.intx.read().unwrap(), 1);
        assert_eq!(irq.take_isr(), ISR_QUEUE);
    }

    #[test]
    fn test_pci_interrupt_msix_uses_queue_vector_not_intx() {
        let irq = interrupt();
        irq.msix().set_control(MSIX_ENABLE);
        irq.msix()
            .write_table(16 + 12, &0u32.to_le_bytes())
            .unwrap();
        irq.set_queue_vector(0, 1);

        irq.trigger(VirtioInterruptType::Queue(0)).unwrap();
        irq.trigger(VirtioInterruptType::Queue(1)).unwrap();

        assert!(irq.intx.read().is_err());
        assert_eq!(irq.take_isr(), 0);
        let mut pba = [0u8; 1];
        irq.msix().read_pba(0, &mut pba);
        assert_eq!(pba[0], 0, "vector 1 was unmasked: delivered, not pending");
    }

    #[test]
    fn test_pci_interrupt_vector_past_table_reads_no_vector() {
        let irq = interrupt();

        irq.set_queue_vector(0, 3);
        irq.set_config_vector(2);
        irq.set_queue_vector(9, 0);

        assert_eq!(irq.queue_vector(0), NO_VECTOR);
        assert_eq!(irq.config_vector(), 2);
        assert_eq!(irq.queue_vector(9), NO_VECTOR);
    }

    #[test]
    fn test_pci_interrupt_needs_reset_raises_config_change() {
        let irq = interrupt();

        irq.set_needs_reset();

        assert_ne!(
            irq.device_status.load(Ordering::SeqCst) & status::DEVICE_NEEDS_RESET,
            0
        );
        assert_eq!(irq.take_isr(), ISR_CONFIG);
        assert_eq!(irq.config_generation(), 0);
    }
}
