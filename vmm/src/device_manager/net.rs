//! The network devices' part of device creation: virtio-net on its tap, virtio-vsock on its
//! Unix socket.

use std::net::Ipv4Addr;

use super::{DeviceKind, DeviceManagerError, DeviceRequest, PlannedDevice};
use crate::config::{MacAddr, VmConfig};
use crate::virtio::net::tap::Tap;
use crate::virtio::net::{Net, NetParams};
use crate::virtio::vsock::Vsock;
use crate::virtio::VirtioDevice;

/// The `--net` and `--vsock` devices, after the others.
pub(super) fn requests(config: &VmConfig) -> Vec<DeviceRequest> {
    let mut out = Vec::new();
    for (i, n) in config.net.iter().enumerate() {
        out.push(DeviceRequest {
            id: n.id.clone().unwrap_or_else(|| format!("net{i}")),
            kind: DeviceKind::Net(i),
            transport: n.transport.unwrap_or(config.transport),
        });
    }
    if let Some(v) = &config.vsock {
        out.push(DeviceRequest {
            id: v.id.clone().unwrap_or_else(|| "vsock0".into()),
            kind: DeviceKind::Vsock,
            transport: v.transport.unwrap_or(config.transport),
        });
    }
    out
}

/// The device a planned network entry stands for, with its backend opened.
pub(super) fn virtio_device(
    config: &VmConfig,
    planned: &PlannedDevice,
) -> Result<Box<dyn VirtioDevice>, DeviceManagerError> {
    let missing = || DeviceManagerError::NotConfigured(planned.id.clone());
    match planned.kind {
        DeviceKind::Net(i) => {
            let n = config.net.get(i).ok_or_else(missing)?;
            let tap_err = |source| DeviceManagerError::Tap {
                id: planned.id.clone(),
                source,
            };
            let pairs = usize::from(n.num_queues / 2).max(1);
            let taps = Tap::open_queues(n.tap.as_deref(), pairs).map_err(tap_err)?;
            let ip =
                n.ip.map(|ip| (ip, n.mask.unwrap_or(Ipv4Addr::new(255, 255, 255, 0))));
            if let Some(tap) = taps.first() {
                tap.configure_host(ip, n.mtu).map_err(tap_err)?;
            }
            let params = NetParams {
                mac: n.mac.unwrap_or_else(MacAddr::random).0,
                mtu: n.mtu,
                queue_size: n.queue_size,
                offload_csum: n.offload_csum,
                offload_tso: n.offload_tso,
                mac_configured: n.mac.is_some(),
            };
            Ok(Box::new(Net::new(&planned.id, taps, params)))
        }
        DeviceKind::Vsock => {
            let v = config.vsock.as_ref().ok_or_else(missing)?;
            let dev = Vsock::new(&planned.id, u64::from(v.cid), &v.socket).map_err(|source| {
                DeviceManagerError::VsockSocket {
                    path: v.socket.clone(),
                    source,
                }
            })?;
            Ok(Box::new(dev))
        }
        _ => Err(missing()),
    }
}

/// The Unix socket a planned device listens on, if it is the vsock device.
pub(super) fn socket_of(config: &VmConfig, planned: &PlannedDevice) -> Option<std::path::PathBuf> {
    match (planned.kind, &config.vsock) {
        (DeviceKind::Vsock, Some(v)) => Some(v.socket.clone()),
        _ => None,
    }
}
