//! Counters of a VM, read without taking any device lock, and their two renderings: the
//! `vm.counters` JSON (Cloud Hypervisor's shape: group -> counter -> value) and the
//! Prometheus text exposition format (`GET /metrics`). Both come from one [`VmCounters`]
//! snapshot, so they show the same figures.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

use crate::counters::Counters;
use crate::emulate::EmulationStats;

/// Where a VM's counters live: each vCPU's exit counters and emulation counts, each device's
/// counters. Cheap to clone; kept after the VM stops so its last figures stay readable.
#[derive(Clone, Default)]
pub struct CounterSources {
    /// Per vCPU: index, exit counters, emulated instructions by mnemonic.
    pub vcpus: Vec<(u8, Arc<Counters>, Arc<Mutex<EmulationStats>>)>,
    /// Per device: name (`serial0`, `virtio-blk0`, ...) and counters.
    pub devices: Vec<(String, Arc<Counters>)>,
}

/// One vCPU's counters at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuCounters {
    /// vCPU index.
    pub id: u8,
    /// Exits by kind, kicks.
    pub values: Vec<(String, u64)>,
    /// Instructions the fallback emulator ran, by mnemonic.
    pub emulated: Vec<(String, u64)>,
}

/// One device's counters at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCounters {
    /// The device's name.
    pub name: String,
    /// Its counters.
    pub values: Vec<(String, u64)>,
}

/// Every counter of a VM at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmCounters {
    /// Per vCPU, in vCPU order.
    pub vcpus: Vec<VcpuCounters>,
    /// Per device, in registration order.
    pub devices: Vec<DeviceCounters>,
}

fn owned(values: Vec<(&'static str, u64)>) -> Vec<(String, u64)> {
    values
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect()
}

impl CounterSources {
    /// Reads every counter now.
    pub fn snapshot(&self) -> VmCounters {
        let vcpus = self
            .vcpus
            .iter()
            .map(|(id, counters, stats)| {
                let stats = stats.lock().unwrap_or_else(|e| e.into_inner());
                VcpuCounters {
                    id: *id,
                    values: owned(counters.snapshot()),
                    emulated: stats.iter().map(|(m, n)| (m.to_string(), n)).collect(),
                }
            })
            .collect();
        let devices = self
            .devices
            .iter()
            .map(|(name, counters)| DeviceCounters {
                name: name.clone(),
                values: owned(counters.snapshot()),
            })
            .collect();
        VmCounters { vcpus, devices }
    }
}

/// Replaces what a Prometheus label value cannot hold as is.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A metric-name fragment: ASCII letters, digits and underscores only.
fn name_part(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

impl VmCounters {
    /// Cloud Hypervisor's `vm.counters` shape: `vcpuN` and device names to counter names to
    /// values; a vCPU's emulated instructions appear as `emulated_<mnemonic>`.
    pub fn to_map(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let mut map = BTreeMap::new();
        for v in &self.vcpus {
            let mut group: BTreeMap<String, u64> = v.values.iter().cloned().collect();
            for (mnemonic, n) in &v.emulated {
                group.insert(format!("emulated_{mnemonic}"), *n);
            }
            map.insert(format!("vcpu{}", v.id), group);
        }
        for d in &self.devices {
            map.insert(d.name.clone(), d.values.iter().cloned().collect());
        }
        map
    }

    /// The Prometheus text exposition format (version 0.0.4): every counter a `_total`
    /// counter, samples of one metric together under one `# TYPE` line.
    pub fn to_prometheus(&self) -> String {
        let mut metrics: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for v in &self.vcpus {
            for (name, n) in &v.values {
                metrics
                    .entry(format!("strata_vcpu_{}_total", name_part(name)))
                    .or_default()
                    .push((format!("vcpu=\"{}\"", v.id), *n));
            }
            for (mnemonic, n) in &v.emulated {
                metrics
                    .entry("strata_vcpu_emulated_instructions_total".into())
                    .or_default()
                    .push((
                        format!("vcpu=\"{}\",mnemonic=\"{}\"", v.id, label(mnemonic)),
                        *n,
                    ));
            }
        }
        for d in &self.devices {
            for (name, n) in &d.values {
                metrics
                    .entry(format!("strata_device_{}_total", name_part(name)))
                    .or_default()
                    .push((format!("device=\"{}\"", label(&d.name)), *n));
            }
        }
        let mut out = String::new();
        for (metric, samples) in metrics {
            let _ = writeln!(out, "# TYPE {metric} counter");
            for (labels, n) in samples {
                let _ = writeln!(out, "{metric}{{{labels}}} {n}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmCounters {
        let vcpu = Counters::new(&["exits_io_out", "kicks"]);
        vcpu.add(0, 5);
        let mut stats = EmulationStats::default();
        stats.record("popcnt");
        let serial = Counters::new(&["tx_bytes"]);
        serial.add(0, 12);
        CounterSources {
            vcpus: vec![(0, vcpu, Arc::new(Mutex::new(stats)))],
            devices: vec![("serial0".into(), serial)],
        }
        .snapshot()
    }

    #[test]
    fn test_vm_counters_map_has_cloud_hypervisor_shape() {
        let map = sample().to_map();

        assert_eq!(map["vcpu0"]["exits_io_out"], 5);
        assert_eq!(map["vcpu0"]["kicks"], 0);
        assert_eq!(map["vcpu0"]["emulated_popcnt"], 1);
        assert_eq!(map["serial0"]["tx_bytes"], 12);
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn test_vm_counters_prometheus_text_same_figures() {
        let text = sample().to_prometheus();

        assert_eq!(
            text,
            "# TYPE strata_device_tx_bytes_total counter\n\
             strata_device_tx_bytes_total{device=\"serial0\"} 12\n\
             # TYPE strata_vcpu_emulated_instructions_total counter\n\
             strata_vcpu_emulated_instructions_total{vcpu=\"0\",mnemonic=\"popcnt\"} 1\n\
             # TYPE strata_vcpu_exits_io_out_total counter\n\
             strata_vcpu_exits_io_out_total{vcpu=\"0\"} 5\n\
             # TYPE strata_vcpu_kicks_total counter\n\
             strata_vcpu_kicks_total{vcpu=\"0\"} 0\n"
        );
    }

    #[test]
    fn test_prometheus_label_escapes_quotes() {
        assert_eq!(label("a\"b\\c\n"), "a\\\"b\\\\c\\n");
        assert_eq!(name_part("rx-bytes"), "rx_bytes");
    }
}
