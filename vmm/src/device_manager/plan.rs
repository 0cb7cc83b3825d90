//! Device planning: every configured device gets its place (a virtio-mmio window and IRQ, or
//! a PCI device number and INTx line) from [`SystemResources`] before the kernel is loaded, so
//! the command line can announce the virtio-mmio devices and the MP table can route the IRQs.

use vm_memory::GuestAddress;

use crate::arch::x86_64::layout::VIRTIO_MMIO_WINDOW;
use crate::arch::x86_64::mptable::{MpConfig, PciIntx};
use crate::config::Transport;
use crate::resources::{ResourceError, SystemResources};

/// The kinds of virtio device a configuration can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// virtio-rng (`rng`).
    Rng,
    /// virtio-console (`console`).
    Console,
    /// virtio-blk on `disks[n]`.
    Block(usize),
    /// virtio-net on `net[n]`.
    Net(usize),
    /// virtio-vsock (`vsock`).
    Vsock,
}

/// A device the configuration asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRequest {
    /// Its name (`rng0`, `console0`), also its worker thread's suffix.
    pub id: String,
    /// What it is.
    pub kind: DeviceKind,
    /// How it is attached.
    pub transport: Transport,
}

/// Where a device sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// A virtio-mmio window of [`VIRTIO_MMIO_WINDOW`] bytes and its edge-triggered IRQ.
    Mmio {
        /// First byte of the register window.
        base: GuestAddress,
        /// IOAPIC pin.
        irq: u32,
    },
    /// A function on PCI bus 0; its BARs and MSI GSIs are allocated when it is created.
    Pci {
        /// Device number (1..=31).
        device: u8,
        /// The IOAPIC pin of its INTA# line.
        intx_gsi: u32,
    },
}

/// A device with its place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedDevice {
    /// Its name.
    pub id: String,
    /// What it is.
    pub kind: DeviceKind,
    /// Its place.
    pub placement: Placement,
}

/// Every device's place, in configuration order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DevicePlan {
    /// The devices.
    pub devices: Vec<PlannedDevice>,
}

impl DevicePlan {
    /// Places each requested device.
    pub fn new(
        requests: &[DeviceRequest],
        res: &mut SystemResources,
    ) -> Result<DevicePlan, ResourceError> {
        let mut devices = Vec::with_capacity(requests.len());
        for req in requests {
            let placement = match req.transport {
                Transport::Mmio => {
                    let (base, irq) = res.allocate_virtio_mmio()?;
                    Placement::Mmio { base, irq }
                }
                Transport::Pci => {
                    let device = res.pci_slots.allocate()? as u8;
                    let intx_gsi = res.irqs.allocate()?;
                    Placement::Pci { device, intx_gsi }
                }
            };
            devices.push(PlannedDevice {
                id: req.id.clone(),
                kind: req.kind,
                placement,
            });
        }
        Ok(DevicePlan { devices })
    }

    /// Whether any device sits on PCI (then the machine has a PCI host bridge).
    pub fn has_pci(&self) -> bool {
        self.devices
            .iter()
            .any(|d| matches!(d.placement, Placement::Pci { .. }))
    }

    /// `virtio_mmio.device=4K@0xADDR:IRQ` for each virtio-mmio device, space separated.
    pub fn virtio_mmio_cmdline(&self) -> String {
        let words: Vec<String> = self
            .devices
            .iter()
            .filter_map(|d| match d.placement {
                Placement::Mmio { base, irq } => Some(format!(
                    "virtio_mmio.device={}K@{:#x}:{irq}",
                    VIRTIO_MMIO_WINDOW >> 10,
                    base.0
                )),
                Placement::Pci { .. } => None,
            })
            .collect();
        words.join(" ")
    }

    /// The user's command line with the virtio-mmio announcements added: before ` -- ` (what
    /// follows goes to init), else at the end.
    pub fn kernel_cmdline(&self, user: &str) -> String {
        let add = self.virtio_mmio_cmdline();
        if add.is_empty() {
            return user.to_string();
        }
        if user.trim().is_empty() {
            return add;
        }
        let init_args = if user.starts_with("-- ") || user == "--" {
            Some(0)
        } else {
            user.find(" -- ")
                .or_else(|| user.ends_with(" --").then(|| user.len() - 3))
        };
        match init_args {
            Some(0) => format!("{add} {user}"),
            Some(at) => format!("{} {add}{}", &user[..at], &user[at..]),
            None => format!("{user} {add}"),
        }
    }

    /// The MP table's view: a PCI bus when there is one, and every PCI device's INTA# line.
    pub fn mp_config(&self) -> MpConfig {
        MpConfig {
            pci_bus: self.has_pci(),
            pci_intx: self
                .devices
                .iter()
                .filter_map(|d| match d.placement {
                    Placement::Pci { device, intx_gsi } => Some(PciIntx {
                        device,
                        pin: 0,
                        gsi: intx_gsi as u8,
                    }),
                    Placement::Mmio { .. } => None,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(transports: &[Transport]) -> Vec<DeviceRequest> {
        transports
            .iter()
            .enumerate()
            .map(|(i, &transport)| DeviceRequest {
                id: format!("dev{i}"),
                kind: DeviceKind::Rng,
                transport,
            })
            .collect()
    }

    fn plan(transports: &[Transport]) -> DevicePlan {
        DevicePlan::new(&requests(transports), &mut SystemResources::new(128 << 20)).unwrap()
    }

    #[test]
    fn test_device_plan_mixed_transports_share_irqs_in_order() {
        let p = plan(&[Transport::Mmio, Transport::Pci, Transport::Mmio]);

        assert_eq!(
            p.devices[0].placement,
            Placement::Mmio {
                base: GuestAddress(0xd000_0000),
                irq: 5
            }
        );
        assert_eq!(
            p.devices[1].placement,
            Placement::Pci {
                device: 1,
                intx_gsi: 6
            }
        );
        assert_eq!(
            p.devices[2].placement,
            Placement::Mmio {
                base: GuestAddress(0xd000_1000),
                irq: 7
            }
        );
        assert!(p.has_pci());
    }

    #[test]
    fn test_device_plan_cmdline_announces_mmio_devices_firecracker_style() {
        let p = plan(&[Transport::Mmio, Transport::Pci, Transport::Mmio]);

        assert_eq!(
            p.virtio_mmio_cmdline(),
            "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:7"
        );
    }

    #[test]
    fn test_device_plan_kernel_cmdline_inserts_before_init_args() {
        let p = plan(&[Transport::Mmio]);
        let dev = "virtio_mmio.device=4K@0xd0000000:5";

        assert_eq!(
            p.kernel_cmdline("console=ttyS0"),
            format!("console=ttyS0 {dev}")
        );
        assert_eq!(p.kernel_cmdline(""), dev);
        assert_eq!(
            p.kernel_cmdline("quiet -- init arg"),
            format!("quiet {dev} -- init arg")
        );
        assert_eq!(p.kernel_cmdline("-- x"), format!("{dev} -- x"));
        assert_eq!(p.kernel_cmdline("a --"), format!("a {dev} --"));
    }

    #[test]
    fn test_device_plan_without_mmio_devices_keeps_cmdline() {
        let p = plan(&[Transport::Pci]);

        assert_eq!(p.kernel_cmdline("a b"), "a b");
        assert_eq!(
            p.mp_config(),
            MpConfig {
                pci_bus: true,
                pci_intx: vec![PciIntx {
                    device: 1,
                    pin: 0,
                    gsi: 5
                }]
            }
        );
    }

    #[test]
    fn test_device_plan_too_many_devices_fails() {
        let many = vec![Transport::Mmio; 20];

        let err = DevicePlan::new(&requests(&many), &mut SystemResources::new(128 << 20));

        assert_eq!(err, Err(ResourceError::Exhausted("legacy IRQs")));
    }
}
