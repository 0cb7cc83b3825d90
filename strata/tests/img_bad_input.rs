//! Bad `strata img` invocations: one-line errors, non-zero status, never a panic.

mod img_common;

use img_common::*;

fn assert_one_line_error(r: &Run, needle: &str) {
    assert_ne!(r.status, 0, "must fail: {}", r.stderr);
    assert_ne!(r.status, 101, "panicked: {}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert_eq!(
        r.stderr.trim_end().lines().count(),
        1,
        "not one line: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains(needle),
        "expected '{needle}' in: {}",
        r.stderr
    );
}

#[test]
fn test_img_missing_format_fails_saying_never_guessed() {
    // Arrange
    let dir = scratch("bad-nofmt");
    qemu_img_ok(&dir, &["create", "-q", "-f", "qcow2", "a.qcow2", "1M"]);
    let cases: [&[&str]; 6] = [
        &["info", "a.qcow2"],
        &["check", "a.qcow2"],
        &["map", "a.qcow2"],
        &["convert", "-O", "raw", "a.qcow2", "b.raw"],
        &["compare", "-F", "qcow2", "a.qcow2", "a.qcow2"],
        &["bench", "a.qcow2"],
    ];
    for args in cases {
        // Act
        let r = strata(&dir, args);

        // Assert
        assert_one_line_error(&r, "Strata never guesses it");
    }
    let info = strata(&dir, &["info", "a.qcow2"]);
    assert_eq!(
        info.stderr.trim_end(),
        "strata img info: give the image format with -f raw|qcow2|vmdk; Strata never guesses it"
    );
}

#[test]
fn test_img_unknown_format_and_option_fail() {
    // Arrange
    let dir = scratch("bad-fmt");

    // Act
    let fmt = strata(&dir, &["info", "-f", "vdi", "a.img"]);
    let opt = strata(&dir, &["info", "-f", "raw", "--frobnicate", "a.img"]);
    let verb = strata(&dir, &["amend", "-f", "raw", "a.img"]);
    let size = strata(&dir, &["create", "-f", "raw", "a.img", "12Q"]);
    let o = strata(
        &dir,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=3k",
            "a.img",
            "1M",
        ],
    );

    // Assert
    assert_one_line_error(&fmt, "unknown image format 'vdi'");
    assert_one_line_error(&opt, "unknown option '--frobnicate'");
    assert_one_line_error(&verb, "unknown command 'amend'");
    assert_one_line_error(&size, "invalid size '12Q'");
    assert_one_line_error(&o, "cluster size");
}

#[test]
fn test_img_nonexistent_file_fails() {
    // Arrange
    let dir = scratch("bad-missing");
    let verbs: [&[&str]; 5] = [
        &["info", "-f", "qcow2", "nope.qcow2"],
        &["check", "-f", "qcow2", "nope.qcow2"],
        &["map", "-f", "raw", "nope.raw"],
        &["convert", "-f", "vmdk", "-O", "raw", "nope.vmdk", "x.raw"],
        &["compare", "-f", "raw", "-F", "raw", "nope.raw", "nope.raw"],
    ];
    for args in verbs {
        // Act
        let r = strata(&dir, args);

        // Assert
        assert_one_line_error(&r, "nope");
    }
}

#[test]
fn test_img_garbage_image_fails_cleanly() {
    // Arrange
    let dir = scratch("bad-garbage");
    let mut junk = vec![0u8; 1 << 16];
    for (i, b) in junk.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2654435761) >> 7) as u8;
    }
    std::fs::write(dir.join("junk.img"), &junk).expect("write");
    let mut fake = junk.clone();
    fake[..4].copy_from_slice(b"QFI\xfb");
    std::fs::write(dir.join("fake.qcow2"), &fake).expect("write");
    let mut fake_vmdk = junk;
    fake_vmdk[..4].copy_from_slice(b"KDMV");
    std::fs::write(dir.join("fake.vmdk"), &fake_vmdk).expect("write");
    let cases: [&[&str]; 7] = [
        &["info", "-f", "qcow2", "junk.img"],
        &["info", "-f", "qcow2", "fake.qcow2"],
        &["map", "-f", "qcow2", "fake.qcow2"],
        &["check", "-f", "qcow2", "fake.qcow2"],
        &["convert", "-f", "qcow2", "-O", "raw", "fake.qcow2", "o.raw"],
        &["info", "-f", "vmdk", "junk.img"],
        &["convert", "-f", "vmdk", "-O", "raw", "fake.vmdk", "o.raw"],
    ];
    for args in cases {
        // Act
        let r = strata(&dir, args);

        // Assert
        assert_one_line_error(&r, "strata img");
    }
}

#[test]
fn test_img_help_for_tool_and_every_verb() {
    // Arrange
    let dir = scratch("help");
    let verbs = [
        "create", "info", "convert", "check", "resize", "snapshot", "compare", "map", "bench",
    ];

    // Act
    let top = strata_ok(&dir, &["--help"]);

    // Assert
    for v in verbs {
        assert!(top.contains(v), "{v} missing from: {top}");
        let h = strata_ok(&dir, &[v, "--help"]);
        assert!(h.starts_with(&format!("usage: strata img {v}")), "{h}");
    }
}
