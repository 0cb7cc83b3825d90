//! How long the kernel takes to destroy a KVM VM, by interrupt-controller set-up
//! (docs/decisions/0014). For each variant: create a VM with 128 MiB of RAM and one vCPU,
//! optionally let it exist for `--run-ms` (as a guest would run), then time the close of the
//! vCPU and VM descriptors; ten times, medians.
//!
//! Variants: `none` (no irqchip), `split` (KVM_CAP_SPLIT_IRQCHIP: LAPIC only, as Cloud
//! Hypervisor), `irqchip` (in-kernel PIC/IOAPIC/LAPIC), `irqchip+pit` (plus the in-kernel PIT,
//! as Strata and Firecracker), `irqchip+pit+noreinject` (plus KVM_REINJECT_CONTROL off, timed
//! separately).

use kvm_bindings::{
    kvm_enable_cap, kvm_pit_config, kvm_userspace_memory_region, KVM_CAP_SPLIT_IRQCHIP,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const KVM_REINJECT_CONTROL: libc::c_ulong = 0xae71;

#[repr(C)]
struct ReinjectControl {
    pit_reinject: u8,
    reserved: [u8; 31],
}

fn irqchip_and_pit(vm: &VmFd) {
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).expect("KVM_CREATE_PIT2");
}

/// One VM: (set-up ms, extra ms spent in a variant's own ioctl, teardown ms).
fn one(variant: &str, run: Duration) -> (f64, f64, f64) {
    let kvm = Kvm::new().expect("/dev/kvm");
    let t0 = Instant::now();
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let size = 128usize << 20;
    // SAFETY: a fresh anonymous mapping, unmapped below after the VM is gone.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED);
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: size as u64,
        userspace_addr: mem as u64,
        flags: 0,
    };
    // SAFETY: the mapping outlives the VM (unmapped after the VM fd is closed).
    unsafe { vm.set_user_memory_region(region) }.expect("memslot");
    vm.set_tss_address(0xfffb_d000).expect("TSS");
    let mut extra = 0.0;
    match variant {
        "none" => {}
        "split" => {
            let mut cap = kvm_enable_cap {
                cap: KVM_CAP_SPLIT_IRQCHIP,
                ..Default::default()
            };
            cap.args[0] = 24;
            vm.enable_cap(&cap).expect("split irqchip");
        }
        "irqchip" => vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP"),
        "irqchip+pit" => irqchip_and_pit(&vm),
        "irqchip+pit+noreinject" => {
            irqchip_and_pit(&vm);
            let r = ReinjectControl {
                pit_reinject: 0,
                reserved: [0; 31],
            };
            let t = Instant::now();
            // SAFETY: KVM_REINJECT_CONTROL reads one struct kvm_reinject_control.
            let ret = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_REINJECT_CONTROL, &r) };
            assert_eq!(ret, 0, "KVM_REINJECT_CONTROL");
            extra = t.elapsed().as_secs_f64() * 1e3;
        }
        other => panic!("unknown variant {other}"),
    }
    let vcpu = vm.create_vcpu(0).expect("vCPU");
    let setup = t0.elapsed().as_secs_f64() * 1e3;
    std::thread::sleep(run);
    let t = Instant::now();
    drop(vcpu);
    drop(vm);
    let teardown = t.elapsed().as_secs_f64() * 1e3;
    // SAFETY: the mapping made above; the VM that used it is gone.
    unsafe { libc::munmap(mem, size) };
    (setup, extra, teardown)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut run = Duration::ZERO;
    if let Some(i) = args.iter().position(|a| a == "--run-ms") {
        let ms: u64 = args[i + 1].parse().expect("--run-ms N");
        run = Duration::from_millis(ms);
        args.drain(i..i + 2);
    }
    println!("| variant | set-up (ms) | reinject-off ioctl (ms) | teardown (ms) |");
    println!("|---|---|---|---|");
    for v in &args {
        let runs: Vec<_> = (0..10).map(|_| one(v, run)).collect();
        let setup = median(runs.iter().map(|r| r.0).collect());
        let extra = median(runs.iter().map(|r| r.1).collect());
        let teardown = median(runs.iter().map(|r| r.2).collect());
        println!("| {v} | {setup:.2} | {extra:.2} | {teardown:.2} |");
    }
}
