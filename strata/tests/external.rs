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
