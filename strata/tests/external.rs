//! Kernels no one here wrote, from Debian packages that .ci/run installs: GRUB Invaders
//! (multiboot a.out kludge, VGA text only) and GRUB's i386-xen_pvh image (PVH entry).
//! A missing package fails the test with the package to install; only a missing /dev/kvm skips.

mod common;

use common::{kvm_available, require, scratch, strata_until};
use testkit::{signal_usr1, terminate};

/// The rows of a `--vga text` rendering (a header line, 25 rows, a footer line).
fn vga_rows(screen: &str) -> Vec<&str> {
    let framed: Vec<&str> = screen.lines().collect();
    assert_eq!(framed.len(), 27, "{screen}");
    assert!(
        framed[0].starts_with("----- VGA text console (80x25)"),
        "{screen}"
    );
    assert_eq!(
        framed[26], "----- end of VGA text console -----",
        "{screen}"
    );
    framed[1..26].to_vec()
}

/// What holds on GRUB Invaders' screen whenever it is sampled once the game has drawn: the
/// invaders (`-*-`) march left, right and down over the top rows, so their rows and columns
/// depend on when the screen is read, but they stay above the player's ship, which nobody
/// moves and which sits at the bottom centre.
fn assert_invaders_screen(screen: &str) {
    let rows = vga_rows(screen);
    let invader_rows: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].contains("-*-"))
        .collect();
    assert!(!invader_rows.is_empty(), "no invaders:\n{screen}");
    assert!(
        invader_rows.iter().all(|&i| i < 23),
        "invaders on the ship's rows:\n{screen}"
    );
    assert_eq!(rows[23].trim(), "_", "no ship on screen:\n{screen}");
    assert_eq!(rows[24].trim(), "/ \\", "no ship on screen:\n{screen}");
}

#[test]
fn test_grub_invaders_draws_the_game_on_vga() {
    if !kvm_available() {
        return;
    }
    let kernel = require("/boot/invaders.exec", "grub-invaders");
    let screen_file = scratch("invaders").join("screen.txt");
    let vga = format!("text,file={}", screen_file.display());
    // --timeout only guards against a hang: the test waits for the game to draw.
    let mut child = std::process::Command::new(common::strata_bin())
        .args([
            "run",
            "--kernel",
            &kernel,
            "--vga",
            &vga,
            "--timeout",
            "600",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn strata");

    // SIGUSR1 renders the screen while the game runs; ask until the game has drawn invaders
    // and the ship (a guest-side event), or until strata ends on its own.
    let mut screen = String::new();
    while signal_usr1(&mut child) {
        std::thread::sleep(std::time::Duration::from_millis(100));
        screen = std::fs::read_to_string(&screen_file).unwrap_or_default();
        let complete = screen.ends_with("----- end of VGA text console -----\n");
        if complete && screen.contains("-*-") && screen.contains("/ \\") {
            break;
        }
    }
    terminate(&child);
    let out = child.wait_with_output().expect("wait for strata");
    let stderr = String::from_utf8_lossy(&out.stderr);

    assert_invaders_screen(&screen);
    // SIGTERM stops the VM as the timeout does: registers reported, the screen rendered once
    // more (its contents are wherever the game was: only the frame is certain), status 143.
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains("vCPU 0: 32-bit protected mode, no paging, CPL 0"),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("strata: stopped the guest on signal SIGTERM\n"),
        "{stderr}"
    );
    vga_rows(&std::fs::read_to_string(&screen_file).expect("VGA text file"));
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
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("grub_pvh="))
        .expect("image path");
    line.to_string()
}

#[test]
fn test_grub_xen_pvh_entry_finds_no_xen_and_halts() {
    if !kvm_available() {
        return;
    }
    let image = grub_pvh_image();
    // --timeout only guards against a hang: the test stops the guest once it has halted.
    let run = strata_until(
        &["run", "--kernel", &image, "--timeout", "600"],
        &["System halted!\n"],
    );
    // GRUB's PVH entry looks for Xen's CPUID signature, prints on the 0xe9 debug console
    // (which Strata merges into the serial output) and halts with interrupts off.
    assert_eq!(
        run.stdout, "Found no Xen signature!\nSystem halted!\n",
        "{run:?}"
    );
    assert_eq!(run.status, Some(143), "{run:?}");
    let summary = run.stderr.lines().next().expect("report");
    assert!(
        summary.starts_with("vCPU 0: 32-bit protected mode, no paging, CPL 0, RIP 0x1"),
        "{summary}"
    );
    // Stopped once the last line is out: GRUB is on its way to, or in, its `cli; hlt; jmp`
    // loop, so the exact instruction is not asserted (only what holds at any such moment).
    let rflags = run
        .stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("rip=")
                .and_then(|r| r.split("rflags=").nth(1))
        })
        .expect("rflags");
    let rflags = u64::from_str_radix(rflags.trim(), 16).expect("hex rflags");
    assert_eq!(
        rflags & 0x200,
        0,
        "interrupts should be off in the halt loop"
    );
}
