//! The devices beyond the legacy ones: planned before the kernel is loaded ([`plan`]), then
//! created on the buses once guest memory and the irqchip exist.

pub mod plan;

use crate::config::VmConfig;
pub use plan::{DevicePlan, DeviceRequest, Placement, PlannedDevice};

/// The virtio devices `config` asks for, in a fixed order, each with its transport.
pub fn requests(config: &VmConfig) -> Vec<DeviceRequest> {
    let _ = config;
    Vec::new()
}
