//! Kernels no one here wrote, from Debian packages that .ci/run installs: GRUB Invaders
//! (multiboot a.out kludge, VGA text only) and GRUB's i386-xen_pvh image (PVH entry).
//! A missing package fails the test with the package to install; only a missing /dev/kvm skips.

mod common;

use std::path::Path;

use common::{kvm_available, scratch, strata};

fn require(path: &str, package: &str) -> String {
    assert!(
        Path::new(path).is_file(),
        "{path} is missing: install the Debian package {package} (.ci/run does)"
    );
    path.to_string()
}

#[test]
fn test_grub_invaders_draws_the_game_on_vga() {
    if !kvm_available() {
        return;
    }
    let kernel = require("/boot/invaders.exec", "grub-invaders");
    let screen_file = scratch("invaders").join("screen.txt");
    let vga = format!("text,file={}", screen_file.display());
    let run = strata(&["run", "--kernel", &kernel, "--vga", &vga, "--timeout", "3"]);
    assert_eq!(run.status, Some(124), "{run:?}");
    assert!(run.stderr.contains("vCPU 0: 32-bit protected mode, no paging, CPL 0"), "{}", run.stderr);
    let screen = std::fs::read_to_string(&screen_file).expect("VGA text file");
    // The rendering is framed by a header and a footer line around the 25 screen rows.
    let framed: Vec<&str> = screen.lines().collect();
    assert!(framed[0].starts_with("----- VGA text console (80x25)"), "{screen}");
    assert_eq!(framed.len(), 27, "{screen}");
    let rows = &framed[1..26];
    // Five rows of invaders (they march, so their columns vary) on every other line at the
    // top of the screen, and the player's ship at the bottom.
    let invader_lines: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].contains("-*-")).collect();
    assert_eq!(invader_lines, vec![0, 2, 4, 6, 8], "{screen}");
    for &i in &invader_lines {
        assert!(rows[i].matches("-*-").count() >= 4, "row {i}:\n{screen}");
    }
    assert_eq!(rows[24].trim(), "/ \\", "no ship on screen:\n{screen}");
    assert_eq!(rows[23].trim(), "_", "no ship on screen:\n{screen}");
}

/// Builds GRUB's i386-xen_pvh image with scripts/build-grub-pvh.sh into a scratch cache.
fn grub_pvh_image() -> String {
    let cache = scratch("grub-pvh-cache");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/build-grub-pvh.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .env("STRATA_CACHE", &cache)
        .output()
        .expect("run build-grub-pvh.sh");
    assert!(
        out.status.success(),
        "build-grub-pvh.sh failed (needs grub-xen-bin and grub-common, which .ci/run installs): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix("grub_pvh=")).expect("image path");
    line.to_string()
}

#[test]
fn test_grub_xen_pvh_entry_finds_no_xen_and_halts() {
    if !kvm_available() {
        return;
    }
    let image = grub_pvh_image();
    let run = strata(&["run", "--kernel", &image, "--timeout", "3"]);
    // GRUB's PVH entry looks for Xen's CPUID signature, prints on the 0xe9 debug console
    // (which Strata merges into the serial output) and halts with interrupts off.
    assert_eq!(run.stdout, "Found no Xen signature!\nSystem halted!\n", "{run:?}");
    assert_eq!(run.status, Some(124), "{run:?}");
    let summary = run.stderr.lines().next().expect("report");
    assert!(summary.starts_with("vCPU 0: 32-bit protected mode, no paging, CPL 0, RIP 0x1"), "{summary}");
    // Stopped in its `cli; hlt; jmp hlt` loop: the bytes at RIP are the jmp back to the hlt.
    assert!(summary.contains("instruction bytes [eb fd"), "{summary}");
    let rflags = run
        .stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("rip=").and_then(|r| r.split("rflags=").nth(1)))
        .expect("rflags");
    let rflags = u64::from_str_radix(rflags.trim(), 16).expect("hex rflags");
    assert_eq!(rflags & 0x200, 0, "interrupts should be off in the halt loop");
}

#[test]
fn test_vga_text_rendered_on_sigusr1_while_running() {
    if !kvm_available() {
        return;
    }
    let kernel = require("/boot/invaders.exec", "grub-invaders");
    let screen_file = scratch("invaders-usr1").join("screen.txt");
    let vga = format!("text,file={}", screen_file.display());
    let mut child = std::process::Command::new(common::strata_bin())
        .args(["run", "--kernel", &kernel, "--vga", &vga, "--timeout", "60"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn strata");
    // Ask for a rendering until one appears (the game needs a moment to draw).
    let mut screen = String::new();
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let _ = std::process::Command::new("kill")
            .args(["-USR1", &child.id().to_string()])
            .status();
        std::thread::sleep(std::time::Duration::from_millis(200));
        screen = std::fs::read_to_string(&screen_file).unwrap_or_default();
        if screen.contains("-*-") {
            break;
        }
    }
    let still_running = child.try_wait().expect("try_wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(still_running, "strata exited before the rendering was requested");
    assert!(screen.contains("-*-"), "no invaders in the on-demand rendering:\n{screen}");
}
