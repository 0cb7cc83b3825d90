//! The devices beyond the legacy ones: planned before the kernel is loaded ([`plan`]), then
//! created on the buses once guest memory and the irqchip exist: each virtio device behind
//! its transport, with its notify ioeventfds and its irqfds registered.

#![forbid(unsafe_code)]

mod net;
mod persist;
pub mod plan;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::layout::VIRTIO_MMIO_WINDOW;
use crate::config::VmConfig;
use crate::config::{ConsoleMode, DiskFormat};
use crate::counters::Counters;
use crate::devices::reset::ResetControl;
use crate::devices::{Bus, BusError, SharedBusDevice};
use crate::kvm::irq::EventWiring;
use crate::pci::root::{PciConfigIo, PciRootError, PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN};
use crate::pci::PciRoot;
use crate::resources::{ResourceError, SystemResources};
use crate::virtio::block::Block;
use crate::virtio::console::{Console, ConsoleBackend};
use crate::virtio::rng::{EntropySource, Rng};
use crate::virtio::transport::mmio::MmioTransport;
use crate::virtio::transport::pci::{
    transitional_device_id, PciPlacement, VirtioPciDevice, LEGACY_BAR_SIZE, MODERN_BAR_SIZE,
};
use crate::virtio::transport::TransportError;
use crate::virtio::VirtioDevice;
use crate::vm_events::VmEvents;
pub use plan::{DeviceKind, DevicePlan, DeviceRequest, Placement, PlannedDevice};

/// Errors creating the planned devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    /// The rng's entropy source could not be opened.
    #[error("unable to open the rng source {path}: {source}")]
    OpenRngSource {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A disk image could not be opened.
    #[error("unable to open disk {path}")]
    OpenDisk {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: disk::Error,
    },
    /// The console's backend could not be opened.
    #[error("unable to open the virtio console's {what}: {source}")]
    OpenConsole {
        /// What: a file, the terminal, a pseudo-terminal.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A transport could not be set up.
    #[error("unable to set up the transport of {id}")]
    Transport {
        /// The device.
        id: String,
        /// The cause.
        #[source]
        source: TransportError,
    },
    /// A device could not be placed on its bus.
    #[error("unable to register {id} on the bus")]
    Bus {
        /// The device.
        id: String,
        /// The cause.
        #[source]
        source: BusError,
    },
    /// A PCI device's BARs or MSI GSIs do not fit.
    #[error("unable to allocate the resources of {id}")]
    Resources {
        /// The device.
        id: String,
        /// The cause.
        #[source]
        source: ResourceError,
    },
    /// A function could not be added to the PCI bus.
    #[error("unable to add {id} to the PCI bus")]
    PciRoot {
        /// The device.
        id: String,
        /// The cause.
        #[source]
        source: PciRootError,
    },
    /// A network device's tap could not be set up.
    #[error("unable to set up the tap of {id} (--net)")]
    Tap {
        /// The device.
        id: String,
        /// The cause.
        #[source]
        source: crate::virtio::net::tap::TapError,
    },
    /// The vsock device's Unix socket could not be set up.
    #[error("unable to listen on the vsock socket {path} (--vsock)")]
    VsockSocket {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The plan names a device the configuration does not have.
    #[error("the device plan names {0}, which the configuration does not have")]
    NotConfigured(String),
}

/// The virtio devices `config` asks for, in a fixed order, each with its transport.
pub fn requests(config: &VmConfig) -> Vec<DeviceRequest> {
    let mut out = Vec::new();
    for (i, d) in config.disks.iter().enumerate() {
        out.push(DeviceRequest {
            id: d.id.clone().unwrap_or_else(|| format!("blk{i}")),
            kind: DeviceKind::Block(i),
            transport: d.transport.unwrap_or(config.transport),
        });
    }
    if let Some(rng) = &config.rng {
        out.push(DeviceRequest {
            id: "rng0".into(),
            kind: DeviceKind::Rng,
            transport: rng.transport.unwrap_or(config.transport),
        });
    }
    if config.console.mode != ConsoleMode::Off {
        out.push(DeviceRequest {
            id: "console0".into(),
            kind: DeviceKind::Console,
            transport: config.console.transport.unwrap_or(config.transport),
        });
    }
    out.extend(net::requests(config));
    out
}

/// What creating devices needs from the VM.
pub struct DeviceContext<'a> {
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// ioeventfds, irqfds and GSI routes.
    pub wiring: Arc<dyn EventWiring>,
    /// The port-I/O bus (PCI configuration, I/O BARs).
    pub pio: &'a Bus,
    /// The MMIO bus.
    pub mmio: &'a Bus,
    /// Where PCI BARs and MSI GSIs come from.
    pub resources: &'a mut SystemResources,
    /// Where the reset control port (0xcf9, inside the PCI configuration ports) sends resets.
    pub events: &'a VmEvents,
}

/// A device behind its transport.
enum Attached {
    Mmio(Arc<Mutex<MmioTransport>>),
    Pci(Arc<Mutex<VirtioPciDevice>>),
}

/// The created devices, kept so the VMM can stop their workers and read their counters.
#[derive(Default)]
pub struct DeviceManager {
    devices: Vec<(String, Attached)>,
    pci: Option<Arc<Mutex<PciRoot>>>,
    console_pty: Option<PathBuf>,
    /// Unix sockets the devices listen on, removed when the VM ends.
    sockets: Vec<PathBuf>,
}

impl DeviceManager {
    /// Creates every planned device behind its transport; with any PCI device, the PCI root
    /// (host bridge, configuration ports 0xCF8-0xCFF) first.
    pub fn create(
        config: &VmConfig,
        plan: &DevicePlan,
        ctx: &mut DeviceContext<'_>,
    ) -> Result<DeviceManager, DeviceManagerError> {
        let mut dm = DeviceManager::default();
        if plan.has_pci() {
            dm.pci = Some(create_pci_root(ctx)?);
        }
        for planned in &plan.devices {
            let device: Box<dyn VirtioDevice> = match planned.kind {
                DeviceKind::Console => {
                    let console = console_device(config, &planned.id)?;
                    dm.console_pty = console.pty_path().map(Into::into);
                    Box::new(console)
                }
                _ => virtio_device(config, planned)?,
            };
            let attached = match (planned.placement, &dm.pci) {
                (Placement::Mmio { base, irq }, _) => {
                    let t =
                        MmioTransport::new(device, ctx.mem.clone(), ctx.wiring.as_ref(), base, irq)
                            .map_err(transport_err(&planned.id))?;
                    let t = Arc::new(Mutex::new(t));
                    ctx.mmio
                        .insert(t.clone(), base.0, VIRTIO_MMIO_WINDOW)
                        .map_err(|source| DeviceManagerError::Bus {
                            id: planned.id.clone(),
                            source,
                        })?;
                    Attached::Mmio(t)
                }
                (
                    Placement::Pci {
                        device: slot,
                        intx_gsi,
                    },
                    Some(root),
                ) => {
                    let dev = create_pci_device(device, &planned.id, intx_gsi, ctx)?;
                    let bars = dev.bars();
                    let dev = Arc::new(Mutex::new(dev));
                    lock(root)
                        .add_device(slot, dev.clone(), &bars)
                        .map_err(|source| DeviceManagerError::PciRoot {
                            id: planned.id.clone(),
                            source,
                        })?;
                    Attached::Pci(dev)
                }
                (Placement::Pci { .. }, None) => {
                    return Err(DeviceManagerError::NotConfigured(planned.id.clone()));
                }
            };
            dm.devices.push((planned.id.clone(), attached));
            dm.sockets.extend(net::socket_of(config, planned));
        }
        Ok(dm)
    }

    /// The pseudo-terminal of a `--console pty` device.
    pub fn console_pty(&self) -> Option<&std::path::Path> {
        self.console_pty.as_deref()
    }

    /// The PCI root, if the machine has a PCI bus (for its ECAM window).
    pub fn pci_root(&self) -> Option<Arc<Mutex<PciRoot>>> {
        self.pci.clone()
    }

    /// Every device's name and counters.
    pub fn counters(&self) -> Vec<(String, Arc<Counters>)> {
        self.devices
            .iter()
            .map(|(id, a)| {
                let c = match a {
                    Attached::Mmio(t) => lock(t).counters(),
                    Attached::Pci(t) => lock(t).counters(),
                };
                (id.clone(), c)
            })
            .collect()
    }

    /// Stops every device's worker thread (the VM is ending).
    pub fn shutdown(&self) {
        for (_, a) in &self.devices {
            match a {
                Attached::Mmio(t) => lock(t).shutdown(),
                Attached::Pci(t) => lock(t).shutdown(),
            }
        }
        for path in &self.sockets {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn transport_err(id: &str) -> impl Fn(TransportError) -> DeviceManagerError + '_ {
    move |source| DeviceManagerError::Transport {
        id: id.to_string(),
        source,
    }
}

/// The PCI root with its configuration ports on the port-I/O bus; the reset control register
/// at 0xcf9 is reached through them.
fn create_pci_root(ctx: &DeviceContext<'_>) -> Result<Arc<Mutex<PciRoot>>, DeviceManagerError> {
    let root = Arc::new(Mutex::new(PciRoot::new(ctx.pio.clone(), ctx.mmio.clone())));
    let reset: SharedBusDevice = Arc::new(Mutex::new(
        ResetControl::default().with_vm_events(ctx.events.clone()),
    ));
    let io = PciConfigIo::new(root.clone(), Some(reset));
    ctx.pio
        .insert(
            Arc::new(Mutex::new(io)),
            PCI_CONFIG_IO_BASE,
            PCI_CONFIG_IO_LEN,
        )
        .map_err(|source| DeviceManagerError::Bus {
            id: "PCI configuration ports".into(),
            source,
        })?;
    Ok(root)
}

/// `device` as a virtio-pci function: its modern BAR (below 4 GiB if there is room), a legacy
/// I/O BAR if its type has a transitional ID, one MSI GSI per queue plus one for
/// configuration changes.
fn create_pci_device(
    device: Box<dyn VirtioDevice>,
    id: &str,
    intx_gsi: u32,
    ctx: &mut DeviceContext<'_>,
) -> Result<VirtioPciDevice, DeviceManagerError> {
    let res_err = |source| DeviceManagerError::Resources {
        id: id.to_string(),
        source,
    };
    let r = &mut *ctx.resources;
    let modern_bar = r
        .allocate_pci_mmio(MODERN_BAR_SIZE, true)
        .map_err(res_err)?
        .0;
    let legacy_bar = match transitional_device_id(device.device_type()) {
        Some(_) => Some(
            r.pci_io
                .allocate(LEGACY_BAR_SIZE, LEGACY_BAR_SIZE)
                .map_err(res_err)?,
        ),
        None => None,
    };
    let vectors = device.queue_max_sizes().len() + 1;
    let msi_gsis = (0..vectors)
        .map(|_| r.msi_gsis.allocate())
        .collect::<Result<Vec<_>, _>>()
        .map_err(res_err)?;
    let place = PciPlacement {
        modern_bar,
        legacy_bar,
        msi_gsis,
        intx_gsi,
    };
    VirtioPciDevice::new(device, ctx.mem.clone(), ctx.wiring.clone(), &place)
        .map_err(transport_err(id))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The virtio device a planned entry stands for, with its backend opened.
fn virtio_device(
    config: &VmConfig,
    planned: &PlannedDevice,
) -> Result<Box<dyn VirtioDevice>, DeviceManagerError> {
    match planned.kind {
        DeviceKind::Rng => {
            let rng = config
                .rng
                .as_ref()
                .ok_or_else(|| DeviceManagerError::NotConfigured(planned.id.clone()))?;
            let source = EntropySource::open(&rng.src).map_err(|source| {
                DeviceManagerError::OpenRngSource {
                    path: rng.src.clone(),
                    source,
                }
            })?;
            Ok(Box::new(Rng::new(&planned.id, source)))
        }
        DeviceKind::Console => Ok(Box::new(console_device(config, &planned.id)?)),
        DeviceKind::Net(_) | DeviceKind::Vsock => net::virtio_device(config, planned),
        DeviceKind::Block(i) => {
            let d = config
                .disks
                .get(i)
                .ok_or_else(|| DeviceManagerError::NotConfigured(planned.id.clone()))?;
            let format = match d.format {
                DiskFormat::Raw => disk::Format::Raw,
                DiskFormat::Qcow2 => disk::Format::Qcow2,
                DiskFormat::Vmdk => disk::Format::Vmdk,
            };
            let options = disk::OpenOptions {
                read_only: d.readonly,
                direct: d.direct,
                allow_backing: d.backing,
                ..Default::default()
            };
            let image = disk::SharedDisk::open(&d.path, format, &options).map_err(|source| {
                DeviceManagerError::OpenDisk {
                    path: d.path.clone(),
                    source,
                }
            })?;
            let serial = d.serial.clone().unwrap_or_default();
            let poll_max = match d.poll_queue {
                true => crate::virtio::poll::DEFAULT_MAX,
                false => std::time::Duration::ZERO,
            };
            Ok(Box::new(
                Block::new(&planned.id, image, &serial).with_polling(poll_max),
            ))
        }
    }
}

/// The virtio console with the backend `--console` names.
fn console_device(config: &VmConfig, id: &str) -> Result<Console, DeviceManagerError> {
    let c = &config.console;
    let open_err = |what: String| move |source| DeviceManagerError::OpenConsole { what, source };
    let backend = match c.mode {
        ConsoleMode::Off | ConsoleMode::Null => ConsoleBackend::null(),
        ConsoleMode::Stdio => ConsoleBackend::tty().map_err(open_err("standard input".into()))?,
        ConsoleMode::File => {
            let path = c.file.clone().unwrap_or_default();
            ConsoleBackend::file(&path).map_err(open_err(format!("file {}", path.display())))?
        }
        ConsoleMode::Pty => ConsoleBackend::pty().map_err(open_err("pseudo-terminal".into()))?,
    };
    Ok(Console::new(id, backend))
}
