//! CPUID set-up: the host's KVM-supported CPUID, adjusted per vCPU as Firecracker and Cloud
//! Hypervisor do (APIC IDs, topology, hypervisor bit).

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_AMD_ADDR_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;
const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;

/// How many low APIC ID bits number `cpu_count` cores: ceil(log2(cpu_count)).
fn apic_id_bits(cpu_count: u8) -> u32 {
    32 - u32::from(cpu_count.max(1) - 1).leading_zeros()
}

/// Adjusts `cpuid` for vCPU `cpu_id` of `cpu_count`.
pub fn adjust_cpuid(cpuid: &mut CpuId, cpu_id: u8, cpu_count: u8) {
    for entry in cpuid.as_mut_slice().iter_mut() {
        match entry.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC ID, EBX[23:16] logical processors per package.
                entry.ebx = (entry.ebx & 0x0000_ffff)
                    | (u32::from(cpu_id) << 24)
                    | (u32::from(cpu_count) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                // The in-kernel LAPIC emulates the TSC deadline timer.
                entry.ecx |= ECX_TSC_DEADLINE;
                if cpu_count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1.
                entry.eax = (entry.eax & 0x03ff_ffff) | (u32::from(cpu_count - 1) << 26);
            }
            LEAF_EXT_TOPOLOGY => {
                // One thread per core, `cpu_count` cores per package; EDX is the x2APIC ID.
                entry.edx = u32::from(cpu_id);
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = 1 << 8;
                    }
                    1 => {
                        entry.eax = apic_id_bits(cpu_count);
                        entry.ebx = u32::from(cpu_count);
                        entry.ecx = (2 << 8) | 1;
                    }
                    _ => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = entry.index;
                    }
                }
            }
            LEAF_AMD_ADDR_SIZES => {
                // AMD: ECX[7:0] cores per package - 1, ECX[15:12] APIC ID bits for the core ID.
                entry.ecx = (entry.ecx & !0xf0ff)
                    | (apic_id_bits(cpu_count) << 12)
                    | u32::from(cpu_count - 1);
            }
            LEAF_AMD_EXT_APIC_ID => {
                // AMD: EAX extended APIC ID, EBX[7:0] core ID with one thread per core
                // (EBX[15:8] = 0), ECX one node.
                entry.eax = u32::from(cpu_id);
                entry.ebx = u32::from(cpu_id);
                entry.ecx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn test_adjust_cpuid_sets_apic_id_and_hypervisor_bit() {
        let mut c = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: 1,
            ebx: 0xffff_ffff,
            ..Default::default()
        }])
        .unwrap();
        adjust_cpuid(&mut c, 3, 4);
        let e = c.as_slice()[0];
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
    }

    #[test]
    fn test_apic_id_bits_is_ceil_log2() {
        let bits: Vec<u32> = [1u8, 2, 3, 4, 5, 8, 9, 254].map(apic_id_bits).to_vec();

        assert_eq!(bits, vec![0, 1, 2, 2, 3, 3, 4, 8]);
    }

    #[test]
    fn test_adjust_cpuid_leaf_b_core_level_shift() {
        let mut c = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: LEAF_EXT_TOPOLOGY,
            index: 1,
            ..Default::default()
        }])
        .unwrap();

        adjust_cpuid(&mut c, 1, 4);

        assert_eq!(c.as_slice()[0].eax, 2);
        assert_eq!(c.as_slice()[0].ebx, 4);
    }

    #[test]
    fn test_adjust_cpuid_amd_leaves_report_cores_and_core_id() {
        let mut c = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: LEAF_AMD_ADDR_SIZES,
                ecx: 0x0000_7007, // the host's 8 cores
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_AMD_EXT_APIC_ID,
                ebx: 0x0000_0105, // host: core 5, two threads per core
                ..Default::default()
            },
        ])
        .unwrap();

        adjust_cpuid(&mut c, 2, 3);

        let e = c.as_slice();
        assert_eq!(e[0].ecx, (2 << 12) | 2);
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx), (2, 2, 0));
    }
}
