//! `strata img` info, map, create, check, resize, snapshot and bench against qemu-img.

mod img_common;

use img_common::*;
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("bad JSON ({e}): {text}"))
}

/// Every field qemu-img reports is reported by strata img with the same value.
fn assert_same_fields(qemu: &Value, ours: &Value, at: &str) {
    match (qemu, ours) {
        (Value::Object(q), Value::Object(o)) => {
            for (k, v) in q {
                let Some(ov) = o.get(k) else {
                    panic!("{at}.{k} missing from strata's output: {ours}");
                };
                assert_same_fields(v, ov, &format!("{at}.{k}"));
            }
        }
        (Value::Array(q), Value::Array(o)) => {
            assert_eq!(q.len(), o.len(), "{at}: array lengths differ");
            for (i, (a, b)) in q.iter().zip(o).enumerate() {
                assert_same_fields(a, b, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(qemu, ours, "{at} differs"),
    }
}

#[test]
fn test_img_info_json_fields_equal_qemu_img() {
    // Arrange
    let dir = scratch("info-json");
    let (top, base) = qemu_chain(&dir);
    qemu_img_ok(&dir, &["snapshot", "-c", "snap one", base]);
    qemu_img_ok(
        &dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            "v2.qcow2",
            "1G",
        ],
    );
    qemu_img_ok(
        &dir,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compression_type=zstd,lazy_refcounts=on,refcount_bits=4,cluster_size=4k",
            "z.qcow2",
            "5M",
        ],
    );
    qemu_img_ok(&dir, &["create", "-q", "-f", "raw", "r.raw", "3M"]);
    let cases = [
        ("qcow2", top),
        ("qcow2", base),
        ("qcow2", "v2.qcow2"),
        ("qcow2", "z.qcow2"),
        ("raw", "r.raw"),
    ];
    for (fmt, img) in cases {
        // Act
        let ours = json(&strata_ok(
            &dir,
            &["info", "-f", fmt, "--output", "json", img],
        ));
        let qemu = json(&qemu_img_ok(
            &dir,
            &["info", "-f", fmt, "--output=json", img],
        ));

        // Assert
        assert_same_fields(&qemu, &ours, img);
    }
}

#[test]
fn test_img_info_human_matches_qemu_img() {
    // Arrange
    let dir = scratch("info-human");
    let (top, base) = qemu_chain(&dir);
    qemu_img_ok(&dir, &["snapshot", "-c", "s1", base]);
    for img in [top, base] {
        // Act
        let ours = strata_ok(&dir, &["info", "-f", "qcow2", img]);
        let qemu = qemu_img_ok(&dir, &["info", "-f", "qcow2", img]);

        // Assert
        assert_eq!(ours.trim_end(), qemu.trim_end());
    }
}

#[test]
fn test_img_info_backing_chain_lists_both_images() {
    // Arrange
    let dir = scratch("info-chain");
    let (top, _) = qemu_chain(&dir);

    // Act
    let ours = json(&strata_ok(
        &dir,
        &[
            "info",
            "-f",
            "qcow2",
            "--backing-chain",
            "--output=json",
            top,
        ],
    ));
    let qemu = json(&qemu_img_ok(
        &dir,
        &[
            "info",
            "-f",
            "qcow2",
            "--backing-chain",
            "--output=json",
            top,
        ],
    ));

    // Assert
    assert_same_fields(&qemu, &ours, "chain");
}

#[test]
fn test_img_info_vmdk_sizes_equal_qemu_img() {
    // Arrange
    let dir = scratch("info-vmdk");
    qemu_img_ok(&dir, &["create", "-q", "-f", "vmdk", "q.vmdk", "5M"]);

    // Act
    let ours = json(&strata_ok(
        &dir,
        &["info", "-f", "vmdk", "--output", "json", "q.vmdk"],
    ));
    let qemu = json(&qemu_img_ok(
        &dir,
        &["info", "-f", "vmdk", "--output=json", "q.vmdk"],
    ));

    // Assert
    for k in [
        "virtual-size",
        "actual-size",
        "cluster-size",
        "format",
        "filename",
    ] {
        assert_eq!(ours[k], qemu[k], "{k}");
    }
    assert_eq!(
        ours["format-specific"]["data"]["create-type"],
        "monolithicSparse"
    );
}

#[test]
fn test_img_map_json_equals_qemu_img() {
    // Arrange
    let dir = scratch("map");
    let (top, base) = qemu_chain(&dir);
    qemu_img_ok(
        &dir,
        &["convert", "-f", "qcow2", "-O", "raw", top, "flat.raw"],
    );
    for (fmt, img) in [("qcow2", top), ("qcow2", base), ("raw", "flat.raw")] {
        // Act
        let ours = json(&strata_ok(
            &dir,
            &["map", "-f", fmt, "--output", "json", img],
        ));
        let qemu = json(&qemu_img_ok(
            &dir,
            &["map", "-f", fmt, "--output=json", img],
        ));

        // Assert
        assert_eq!(ours, qemu, "{img}");
    }
}

#[test]
fn test_img_map_human_equals_qemu_img_for_uncompressed() {
    // Arrange
    let dir = scratch("map-human");
    qemu_img_ok(&dir, &["create", "-q", "-f", "qcow2", "b.qcow2", "4M"]);
    qemu_io(
        &dir,
        "qcow2",
        "b.qcow2",
        &["write -P 1 0 128k", "write -P 2 3M 64k"],
    );
    qemu_img_ok(
        &dir,
        &[
            "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2",
        ],
    );
    qemu_io(&dir, "qcow2", "t.qcow2", &["write -P 3 64k 64k"]);

    // Act
    let ours = strata_ok(&dir, &["map", "-f", "qcow2", "t.qcow2"]);
    let qemu = qemu_img_ok(&dir, &["map", "-f", "qcow2", "t.qcow2"]);

    // Assert
    assert_eq!(ours, qemu);
}

#[test]
fn test_img_create_qcow2_options_pass_qemu_check_and_info() {
    // Arrange
    let dir = scratch("create");
    qemu_img_ok(&dir, &["create", "-q", "-f", "raw", "base.raw", "3M"]);
    qemu_io(&dir, "raw", "base.raw", &["write -P 4 0 1M"]);

    // Act
    strata_ok(
        &dir,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=16k,refcount_bits=8,lazy_refcounts=on",
            "a.qcow2",
            "10M",
        ],
    );
    strata_ok(
        &dir,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            "v2.qcow2",
            "1G",
        ],
    );
    strata_ok(
        &dir,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "top.qcow2",
        ],
    );
    strata_ok(&dir, &["create", "-f", "raw", "r.raw", "64k"]);
    strata_ok(&dir, &["create", "-f", "vmdk", "v.vmdk", "2M"]);
    strata_ok(
        &dir,
        &[
            "create",
            "-f",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            "s.vmdk",
            "2M",
        ],
    );

    // Assert
    let a = json(&qemu_img_ok(
        &dir,
        &["info", "-f", "qcow2", "--output=json", "a.qcow2"],
    ));
    assert_eq!(a["cluster-size"], 16384);
    assert_eq!(a["virtual-size"], 10 << 20);
    assert_eq!(a["format-specific"]["data"]["refcount-bits"], 8);
    assert_eq!(a["format-specific"]["data"]["lazy-refcounts"], true);
    let v2 = json(&qemu_img_ok(
        &dir,
        &["info", "-f", "qcow2", "--output=json", "v2.qcow2"],
    ));
    assert_eq!(v2["format-specific"]["data"]["compat"], "0.10");
    let top = json(&qemu_img_ok(
        &dir,
        &["info", "-f", "qcow2", "--output=json", "top.qcow2"],
    ));
    assert_eq!(top["virtual-size"], 3 << 20);
    assert_eq!(top["backing-filename-format"], "raw");
    assert_identical(&dir, "raw", "base.raw", "qcow2", "top.qcow2");
    for (fmt, img) in [
        ("qcow2", "a.qcow2"),
        ("qcow2", "v2.qcow2"),
        ("qcow2", "top.qcow2"),
        ("vmdk", "v.vmdk"),
        ("vmdk", "s.vmdk"),
    ] {
        assert_qemu_check(&dir, fmt, img);
    }
    assert_eq!(
        std::fs::metadata(dir.join("r.raw")).expect("stat").len(),
        65536
    );
    let s = qemu_img_ok(&dir, &["info", "-f", "vmdk", "s.vmdk"]);
    assert!(s.contains("create type: streamOptimized"), "{s}");
}

#[test]
fn test_img_check_clean_image_exit_zero_and_json_fields() {
    // Arrange
    let dir = scratch("check");
    let (top, _) = qemu_chain(&dir);

    // Act
    let human = strata(&dir, &["check", "-f", "qcow2", top]);
    let ours = json(&strata_ok(
        &dir,
        &["check", "-f", "qcow2", "--output", "json", top],
    ));
    let qemu = json(&qemu_img_ok(
        &dir,
        &["check", "-f", "qcow2", "--output=json", top],
    ));

    // Assert
    assert_eq!(human.status, 0, "{}{}", human.stdout, human.stderr);
    let qemu_human = qemu_img_ok(&dir, &["check", "-f", "qcow2", top]);
    assert_eq!(human.stdout, qemu_human);
    for k in [
        "image-end-offset",
        "total-clusters",
        "check-errors",
        "allocated-clusters",
        "fragmented-clusters",
        "filename",
        "format",
    ] {
        assert_eq!(ours[k], qemu[k], "{k}");
    }
}

#[test]
fn test_img_check_leaked_cluster_exit_three_and_repair() {
    // Arrange: bump a free cluster's refcount with a raw write to the refcount block.
    let dir = scratch("check-leak");
    qemu_img_ok(&dir, &["create", "-q", "-f", "qcow2", "l.qcow2", "1M"]);
    qemu_io(&dir, "qcow2", "l.qcow2", &["write -P 1 0 64k"]);
    let qemu_before = qemu_img(&dir, &["check", "-f", "qcow2", "l.qcow2"]);
    assert_eq!(qemu_before.status, 0);
    let info = json(&qemu_img_ok(
        &dir,
        &["check", "-f", "qcow2", "--output=json", "l.qcow2"],
    ));
    let end = info["image-end-offset"].as_u64().expect("end offset");
    let refblock = 0x20000u64; // qemu-img's layout: header, reftable, refblock, L1...
    let entry = refblock + (end / 65536) * 2;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("l.qcow2"))
            .expect("open");
        f.set_len(end + 65536)
            .expect("grow: an unreferenced cluster inside the file");
        f.write_all_at(&[0, 1], entry).expect("refcount 1");
    }
    let qemu_leak = qemu_img(&dir, &["check", "-f", "qcow2", "l.qcow2"]);
    assert_eq!(qemu_leak.status, 3, "setup must leak: {}", qemu_leak.stdout);

    // Act
    let found = strata(&dir, &["check", "-f", "qcow2", "l.qcow2"]);
    let fixed = strata(&dir, &["check", "-f", "qcow2", "-r", "leaks", "l.qcow2"]);

    // Assert
    assert_eq!(found.status, 3, "{}{}", found.stdout, found.stderr);
    assert!(
        found.stdout.contains("1 leaked clusters were found"),
        "{}",
        found.stdout
    );
    assert_eq!(fixed.status, 0, "{}{}", fixed.stdout, fixed.stderr);
    assert_qemu_check(&dir, "qcow2", "l.qcow2");
}

#[test]
fn test_img_resize_grow_and_relative_sizes() {
    // Arrange
    let dir = scratch("resize");
    qemu_img_ok(&dir, &["create", "-q", "-f", "qcow2", "q.qcow2", "1M"]);
    qemu_img_ok(&dir, &["create", "-q", "-f", "raw", "r.raw", "1M"]);

    // Act
    strata_ok(&dir, &["resize", "-f", "qcow2", "q.qcow2", "+1G"]);
    strata_ok(&dir, &["resize", "-f", "raw", "r.raw", "3M"]);
    let refused = strata(&dir, &["resize", "-f", "raw", "r.raw", "-1M"]);
    strata_ok(&dir, &["resize", "-f", "raw", "--shrink", "r.raw", "-1M"]);

    // Assert
    let q = json(&qemu_img_ok(
        &dir,
        &["info", "-f", "qcow2", "--output=json", "q.qcow2"],
    ));
    assert_eq!(q["virtual-size"], (1u64 << 30) + (1 << 20));
    assert_qemu_check(&dir, "qcow2", "q.qcow2");
    assert_ne!(refused.status, 0);
    assert_eq!(
        std::fs::metadata(dir.join("r.raw")).expect("stat").len(),
        2 << 20
    );
}

#[test]
fn test_img_snapshot_create_list_apply_delete_seen_by_qemu() {
    // Arrange
    let dir = scratch("snapshot");
    qemu_img_ok(&dir, &["create", "-q", "-f", "qcow2", "s.qcow2", "2M"]);
    qemu_io(&dir, "qcow2", "s.qcow2", &["write -P 1 0 64k"]);

    // Act
    strata_ok(&dir, &["snapshot", "-f", "qcow2", "-c", "first", "s.qcow2"]);
    qemu_io(&dir, "qcow2", "s.qcow2", &["write -P 2 0 64k"]);
    let listed = strata_ok(&dir, &["snapshot", "-f", "qcow2", "-l", "s.qcow2"]);
    let qemu_listed = qemu_img_ok(&dir, &["snapshot", "-l", "s.qcow2"]);
    strata_ok(&dir, &["snapshot", "-f", "qcow2", "-a", "first", "s.qcow2"]);

    // Assert
    assert_eq!(listed, qemu_listed);
    assert!(listed.contains("first"));
    qemu_io(&dir, "qcow2", "s.qcow2", &["read -P 1 0 64k"]);
    assert_qemu_check(&dir, "qcow2", "s.qcow2");
    strata_ok(&dir, &["snapshot", "-f", "qcow2", "-d", "first", "s.qcow2"]);
    assert!(!qemu_img_ok(&dir, &["snapshot", "-l", "s.qcow2"]).contains("first"));
    assert_qemu_check(&dir, "qcow2", "s.qcow2");
}

#[test]
fn test_img_bench_reads_and_writes_report_completion() {
    // Arrange
    let dir = scratch("bench");
    qemu_img_ok(&dir, &["create", "-q", "-f", "qcow2", "b.qcow2", "4M"]);
    qemu_img_ok(&dir, &["create", "-q", "-f", "raw", "b.raw", "4M"]);

    // Act
    let w = strata_ok(
        &dir,
        &[
            "bench",
            "-f",
            "qcow2",
            "-w",
            "-c",
            "300",
            "-S",
            "12288",
            "--pattern",
            "7",
            "b.qcow2",
        ],
    );
    let r = strata_ok(&dir, &["bench", "-f", "qcow2", "-c", "300", "b.qcow2"]);
    let d = strata_ok(
        &dir,
        &["bench", "-f", "raw", "-t", "none", "-c", "50", "b.raw"],
    );

    // Assert
    assert!(w.starts_with("Sending 300 write requests, 4096 bytes each, 64 in parallel (starting at offset 0, step size 12288)"), "{w}");
    for out in [&w, &r, &d] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("Run completed in ") && l.ends_with(" seconds.")),
            "{out}"
        );
    }
    qemu_io(
        &dir,
        "qcow2",
        "b.qcow2",
        &["read -P 7 12288 4k", "read -P 0 4096 4k"],
    );
    assert_qemu_check(&dir, "qcow2", "b.qcow2");
}
