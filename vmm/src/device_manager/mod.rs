//! The devices beyond the legacy ones: planned before the kernel is loaded ([`plan`]), then
//! created on the buses once guest memory and the irqchip exist: each virtio device behind
//! its transport, with its notify ioeventfds and its irqfds registered.

pub mod plan;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::layout::VIRTIO_MMIO_WINDOW;
use crate::config::ConsoleMode;
use crate::config::VmConfig;
use crate::counters::Counters;
use crate::devices::{Bus, BusError};
use crate::kvm::irq::EventWiring;
use crate::virtio::console::{Console, ConsoleBackend};
use crate::virtio::rng::{EntropySource, Rng};
use crate::virtio::transport::mmio::MmioTransport;
use crate::virtio::transport::TransportError;
use crate::virtio::VirtioDevice;
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
    /// The virtio-pci transport does not exist yet.
    #[error("{0}: the virtio-pci transport is not built yet (use transport=mmio)")]
    PciNotBuilt(String),
    /// The plan names a device the configuration does not have.
    #[error("the device plan names {0}, which the configuration does not have")]
    NotConfigured(String),
}

/// The virtio devices `config` asks for, in a fixed order, each with its transport.
pub fn requests(config: &VmConfig) -> Vec<DeviceRequest> {
    let mut out = Vec::new();
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
    out
}

/// What creating devices needs from the VM.
pub struct DeviceContext<'a> {
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// ioeventfds, irqfds and GSI routes.
    pub wiring: &'a dyn EventWiring,
    /// The MMIO bus.
    pub mmio: &'a Bus,
}

/// The created devices, kept so the VMM can stop their workers and read their counters.
#[derive(Default)]
pub struct DeviceManager {
    mmio: Vec<(String, Arc<Mutex<MmioTransport>>)>,
    console_pty: Option<PathBuf>,
}

impl DeviceManager {
    /// Creates every planned device behind its transport.
    pub fn create(
        config: &VmConfig,
        plan: &DevicePlan,
        ctx: &DeviceContext<'_>,
    ) -> Result<DeviceManager, DeviceManagerError> {
        let mut dm = DeviceManager::default();
        for planned in &plan.devices {
            let device = match planned.kind {
                DeviceKind::Console => {
                    let console = console_device(config, &planned.id)?;
                    dm.console_pty = console.pty_path().map(Into::into);
                    Box::new(console)
                }
                _ => virtio_device(config, planned)?,
            };
            match planned.placement {
                Placement::Mmio { base, irq } => {
                    let transport_err = |source| DeviceManagerError::Transport {
                        id: planned.id.clone(),
                        source,
                    };
                    let t = MmioTransport::new(device, ctx.mem.clone(), ctx.wiring, base, irq)
                        .map_err(transport_err)?;
                    let t = Arc::new(Mutex::new(t));
                    ctx.mmio
                        .insert(t.clone(), base.0, VIRTIO_MMIO_WINDOW)
                        .map_err(|source| DeviceManagerError::Bus {
                            id: planned.id.clone(),
                            source,
                        })?;
                    dm.mmio.push((planned.id.clone(), t));
                }
                Placement::Pci { .. } => {
                    return Err(DeviceManagerError::PciNotBuilt(planned.id.clone()));
                }
            }
        }
        Ok(dm)
    }

    /// The pseudo-terminal of a `--console pty` device.
    pub fn console_pty(&self) -> Option<&std::path::Path> {
        self.console_pty.as_deref()
    }

    /// Every device's name and counters.
    pub fn counters(&self) -> Vec<(String, Arc<Counters>)> {
        self.mmio
            .iter()
            .map(|(id, t)| (id.clone(), lock(t).counters()))
            .collect()
    }

    /// Stops every device's worker thread (the VM is ending).
    pub fn shutdown(&self) {
        for (_, t) in &self.mmio {
            lock(t).shutdown();
        }
    }
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
