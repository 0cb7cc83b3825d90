//! Bad input to `strata run`: every case ends with a one-line error naming the file or option
//! and the reason, a non-zero status, and no panic.

mod common;

use common::{elf64, pseudo_random, scratch, strata};

/// Asserts the run failed cleanly: status 1, one line on stderr containing every `needle`.
fn assert_clean_error(args: &[&str], needles: &[&str]) {
    let run = strata(args);
    assert_eq!(run.status, Some(1), "args {args:?}: {run:?}");
    assert!(
        !run.stderr.contains("panicked"),
        "panic for {args:?}: {}",
        run.stderr
    );
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line for {args:?}, got {:?}",
        run.stderr
    );
    for needle in needles {
        assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
    }
    assert!(lines[0].starts_with("strata: "), "{:?}", lines[0]);
}

fn write(dir: &std::path::Path, name: &str, data: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write");
    p.to_string_lossy().into_owned()
}

#[test]
fn test_run_missing_kernel_file_names_it() {
    assert_clean_error(
        &["run", "--kernel", "/nonexistent/vmlinux"],
        &["/nonexistent/vmlinux", "No such file"],
    );
}

#[test]
fn test_run_no_kernel_option_explains() {
    assert_clean_error(&["run"], &["kernel", "--kernel"]);
}

#[test]
fn test_run_kernel_is_directory_refused() {
    let d = scratch("dir");
    let p = d.to_string_lossy().into_owned();
    assert_clean_error(&["run", "--kernel", &p], &[&p, "not a regular file"]);
}

#[test]
fn test_run_empty_kernel_refused() {
    let d = scratch("empty");
    let p = write(&d, "empty", b"");
    assert_clean_error(&["run", "--kernel", &p], &[&p, "empty"]);
}

#[test]
fn test_run_random_bytes_refused() {
    let d = scratch("random");
    let p = write(&d, "random", &pseudo_random(64 << 10, 7));
    assert_clean_error(&["run", "--kernel", &p], &[&p, "not a kernel image"]);
}

#[test]
fn test_run_truncated_elf_refused() {
    let d = scratch("trunc-elf");
    let full = elf64(0x10_0000, &[0xf4; 64]);
    let p = write(&d, "trunc.elf", &full[..100]);
    assert_clean_error(&["run", "--kernel", &p], &[&p]);
}

#[test]
fn test_run_truncated_bzimage_refused() {
    let d = scratch("trunc-bz");
    let mut img = vec![0u8; 0x400];
    img[0x1f1] = 4; // setup_sects: claims 4 sectors of setup, file has 1.
    img[0x1fe] = 0x55;
    img[0x1ff] = 0xaa;
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020cu16.to_le_bytes());
    let p = write(&d, "trunc.bzImage", &img);
    assert_clean_error(&["run", "--kernel", &p], &[&p]);
}

#[test]
fn test_run_segment_in_mmio_hole_refused() {
    let d = scratch("hole");
    let p = write(&d, "hole.elf", &elf64(0xc000_0000, &[0xf4; 16]));
    assert_clean_error(
        &["run", "--kernel", &p, "--memory", "size=4G"],
        &[&p, "0xc0000000"],
    );
}

#[test]
fn test_run_segment_beyond_ram_refused() {
    let d = scratch("beyond");
    let p = write(&d, "beyond.elf", &elf64(0x1000_0000, &[0xf4; 16]));
    assert_clean_error(
        &["run", "--kernel", &p, "--memory", "size=128M"],
        &[&p, "0x10000000"],
    );
}

#[test]
fn test_run_memory_zero_refused() {
    assert_clean_error(
        &["run", "--kernel", "k", "--memory", "size=0"],
        &["memory", "minimum"],
    );
}

#[test]
fn test_run_memory_more_than_host_refused() {
    assert_clean_error(
        &["run", "--kernel", "k", "--memory", "size=64T"],
        &["memory", "more than this host"],
    );
}

#[test]
fn test_run_cpus_zero_refused() {
    assert_clean_error(
        &["run", "--kernel", "k", "--cpus", "boot=0"],
        &["cpus", "at least 1"],
    );
}

#[test]
fn test_run_cpus_above_kvm_max_refused() {
    if !common::kvm_available() {
        return;
    }
    assert_clean_error(
        &["run", "--kernel", "k", "--cpus", "boot=255"],
        &["cpus", "maximum"],
    );
}

#[test]
fn test_run_cpus_not_a_number_refused() {
    assert_clean_error(
        &["run", "--kernel", "k", "--cpus", "boot=many"],
        &["--cpus", "many"],
    );
}

#[test]
fn test_run_unknown_config_key_refused() {
    let d = scratch("cfg");
    let p = write(
        &d,
        "vm.json",
        br#"{"payload":{"kernel":"k"},"cpus":{"boot_vcpus":1,"turbo":true}}"#,
    );
    assert_clean_error(&["run", "--config", &p], &[&p, "unknown field `turbo`"]);
}

#[test]
fn test_run_unknown_toml_key_refused() {
    let d = scratch("cfg-toml");
    let p = write(
        &d,
        "vm.toml",
        b"[payload]\nkernel = \"k\"\nkernal = \"x\"\n",
    );
    assert_clean_error(&["run", "--config", &p], &[&p, "unknown field `kernal`"]);
}

#[test]
fn test_run_unknown_option_refused() {
    assert_clean_error(
        &["run", "--kernel", "k", "--frobnicate", "1"],
        &["unknown option --frobnicate"],
    );
}

#[test]
fn test_run_missing_initrd_names_it() {
    if !common::kvm_available() {
        return;
    }
    let k = test_guests::pvh().to_string_lossy().into_owned();
    assert_clean_error(
        &["run", "--kernel", &k, "--initrd", "/nonexistent/initrd"],
        &["/nonexistent/initrd"],
    );
}
