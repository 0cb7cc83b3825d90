//! `strata img convert` and `compare` against qemu-img, in both directions.

mod img_common;

use img_common::*;

#[test]
fn test_img_convert_qemu_chain_to_every_format_matches_qemu() {
    // Arrange
    let dir = scratch("convert-chain");
    let (top, _) = qemu_chain(&dir);
    let targets = [
        ("raw", "out.raw", vec![]),
        ("qcow2", "out.qcow2", vec![]),
        (
            "qcow2",
            "out-v2.qcow2",
            vec!["-o", "compat=0.10,cluster_size=4k"],
        ),
        ("vmdk", "out.vmdk", vec![]),
        (
            "vmdk",
            "out-stream.vmdk",
            vec!["-o", "subformat=streamOptimized"],
        ),
    ];
    for (fmt, out, extra) in &targets {
        // Act
        let mut args = vec!["convert", "-f", "qcow2", "-O", fmt];
        args.extend(extra.iter());
        args.extend([top, out]);
        strata_ok(&dir, &args);

        // Assert
        assert_identical(&dir, "qcow2", top, fmt, out);
        if *fmt != "raw" {
            assert_qemu_check(&dir, fmt, out);
        }
    }
}

#[test]
fn test_img_convert_raw_output_is_sparse() {
    // Arrange
    let dir = scratch("convert-sparse");
    qemu_img_ok(&dir, &["create", "-q", "-f", "qcow2", "in.qcow2", "8M"]);
    qemu_io(&dir, "qcow2", "in.qcow2", &["write -P 7 4M 64k"]);

    // Act
    strata_ok(
        &dir,
        &["convert", "-f", "qcow2", "-O", "raw", "in.qcow2", "out.raw"],
    );

    // Assert
    let meta = std::fs::metadata(dir.join("out.raw")).expect("stat");
    assert_eq!(meta.len(), 8 << 20);
    let allocated = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    assert!(
        allocated <= 1 << 20,
        "zeroes were written: {allocated} bytes allocated"
    );
    assert_identical(&dir, "qcow2", "in.qcow2", "raw", "out.raw");
}

#[test]
fn test_img_convert_compressed_zlib_and_zstd_readable_by_qemu() {
    // Arrange
    let dir = scratch("convert-compressed");
    qemu_img_ok(&dir, &["create", "-q", "-f", "raw", "in.raw", "4M"]);
    qemu_io(
        &dir,
        "raw",
        "in.raw",
        &[
            "write -P 0x5a 0 1M",
            "write -P 0xa5 2M 100k",
            "write -P 1 4000000 4k",
        ],
    );
    for ty in ["zlib", "zstd"] {
        let out = format!("out-{ty}.qcow2");
        let opt = format!("compression_type={ty}");

        // Act
        strata_ok(
            &dir,
            &[
                "convert", "-c", "-o", &opt, "-f", "raw", "-O", "qcow2", "in.raw", &out,
            ],
        );

        // Assert
        assert_identical(&dir, "raw", "in.raw", "qcow2", &out);
        let check = qemu_img_ok(&dir, &["check", "-f", "qcow2", &out]);
        assert!(
            !check.contains(" 0.00% compressed"),
            "nothing was compressed: {check}"
        );
        let info = qemu_img_ok(&dir, &["info", "-f", "qcow2", &out]);
        assert!(info.contains(&format!("compression type: {ty}")), "{info}");
    }
}

#[test]
fn test_img_convert_stream_optimized_readable_by_qemu() {
    // Arrange
    let dir = scratch("convert-stream");
    qemu_img_ok(&dir, &["create", "-q", "-f", "raw", "in.raw", "3M"]);
    qemu_io(
        &dir,
        "raw",
        "in.raw",
        &["write -P 9 100k 300k", "write -P 3 2M 1M"],
    );

    // Act
    strata_ok(
        &dir,
        &[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            "in.raw",
            "out.vmdk",
        ],
    );

    // Assert
    let info = qemu_img_ok(&dir, &["info", "-f", "vmdk", "out.vmdk"]);
    assert!(info.contains("create type: streamOptimized"), "{info}");
    assert_identical(&dir, "raw", "in.raw", "vmdk", "out.vmdk");
    qemu_img_ok(
        &dir,
        &["convert", "-f", "vmdk", "-O", "raw", "out.vmdk", "back.raw"],
    );
    assert_eq!(
        std::fs::read(dir.join("in.raw")).expect("read"),
        std::fs::read(dir.join("back.raw")).expect("read")
    );
}

#[test]
fn test_img_convert_qemu_vmdk_stream_to_qcow2_byte_exact() {
    // Arrange
    let dir = scratch("convert-from-vmdk");
    qemu_img_ok(&dir, &["create", "-q", "-f", "raw", "in.raw", "2M"]);
    qemu_io(&dir, "raw", "in.raw", &["write -P 0x77 512 70000"]);
    qemu_img_ok(
        &dir,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            "in.raw",
            "q.vmdk",
        ],
    );

    // Act
    strata_ok(
        &dir,
        &[
            "convert",
            "-f",
            "vmdk",
            "-O",
            "qcow2",
            "q.vmdk",
            "out.qcow2",
        ],
    );

    // Assert
    assert_identical(&dir, "raw", "in.raw", "qcow2", "out.qcow2");
    assert_qemu_check(&dir, "qcow2", "out.qcow2");
}

#[test]
fn test_img_convert_existing_target_overwrites_with_zeroes() {
    // Arrange
    let dir = scratch("convert-existing");
    qemu_img_ok(&dir, &["create", "-q", "-f", "raw", "in.raw", "1M"]);
    qemu_io(&dir, "raw", "in.raw", &["write -P 1 0 64k"]);
    qemu_img_ok(&dir, &["create", "-q", "-f", "qcow2", "old.qcow2", "1M"]);
    qemu_io(&dir, "qcow2", "old.qcow2", &["write -P 0xee 0 1M"]);

    // Act
    strata_ok(
        &dir,
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "in.raw",
            "old.qcow2",
        ],
    );

    // Assert
    assert_identical(&dir, "raw", "in.raw", "qcow2", "old.qcow2");
    assert_qemu_check(&dir, "qcow2", "old.qcow2");
}

#[test]
fn test_img_convert_progress_prints_lines_when_not_a_terminal() {
    // Arrange
    let dir = scratch("convert-progress");
    qemu_img_ok(&dir, &["create", "-q", "-f", "raw", "in.raw", "6M"]);

    // Act
    let out = strata_ok(
        &dir,
        &[
            "convert", "-p", "-f", "raw", "-O", "qcow2", "in.raw", "o.qcow2",
        ],
    );

    // Assert
    assert!(out.lines().any(|l| l == "progress: 0%"), "{out}");
    assert!(out.lines().any(|l| l == "progress: 100%"), "{out}");
}

#[test]
fn test_img_compare_different_images_reports_qemu_offset() {
    // Arrange
    let dir = scratch("compare");
    qemu_img_ok(&dir, &["create", "-q", "-f", "raw", "a.raw", "1M"]);
    qemu_img_ok(&dir, &["create", "-q", "-f", "qcow2", "b.qcow2", "2M"]);
    qemu_io(&dir, "qcow2", "b.qcow2", &["write -P 5 70000 1"]);
    qemu_img_ok(&dir, &["create", "-q", "-f", "qcow2", "c.qcow2", "2M"]);
    qemu_io(&dir, "qcow2", "c.qcow2", &["write -P 5 1500000 1"]);

    // Act
    let s1 = strata(
        &dir,
        &["compare", "-f", "raw", "-F", "qcow2", "a.raw", "b.qcow2"],
    );
    let q1 = qemu_img(
        &dir,
        &["compare", "-f", "raw", "-F", "qcow2", "a.raw", "b.qcow2"],
    );
    let s2 = strata(
        &dir,
        &["compare", "-f", "raw", "-F", "qcow2", "a.raw", "c.qcow2"],
    );
    let q2 = qemu_img(
        &dir,
        &["compare", "-f", "raw", "-F", "qcow2", "a.raw", "c.qcow2"],
    );
    let s3 = strata(
        &dir,
        &[
            "compare", "-s", "-f", "raw", "-F", "qcow2", "a.raw", "c.qcow2",
        ],
    );

    // Assert
    assert_eq!(
        (s1.status, s1.stdout.as_str()),
        (q1.status, q1.stdout.as_str())
    );
    assert!(
        s1.stdout.contains("Content mismatch at offset 69632!"),
        "{}",
        s1.stdout
    );
    assert_eq!(
        (s2.status, s2.stdout.as_str()),
        (q2.status, q2.stdout.as_str())
    );
    assert_eq!(s3.status, 1);
}

#[test]
fn test_img_convert_stream_optimized_many_grain_tables_and_partial_last_grain() {
    // Arrange: 100 MiB + 4.5 KiB spans four grain tables and ends inside a grain.
    let dir = scratch("convert-stream-big");
    let size = (100 << 20) + 4608;
    qemu_img_ok(
        &dir,
        &["create", "-q", "-f", "raw", "in.raw", &size.to_string()],
    );
    let last = format!("write -P 0x42 {} 4608", 100 << 20);
    qemu_io(
        &dir,
        "raw",
        "in.raw",
        &["write -P 1 0 64k", "write -P 2 40M 3M", &last],
    );

    // Act
    strata_ok(
        &dir,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            "in.raw",
            "out.vmdk",
        ],
    );

    // Assert
    assert_qemu_check(&dir, "vmdk", "out.vmdk");
    assert_identical(&dir, "raw", "in.raw", "vmdk", "out.vmdk");
    let info = qemu_img_ok(&dir, &["info", "-f", "vmdk", "--output=json", "out.vmdk"]);
    assert!(
        info.contains(&format!("\"virtual-size\": {size}")),
        "{info}"
    );
}

#[test]
fn test_img_convert_qemu_sparse_vmdk_written_by_qemu_io_byte_exact() {
    // Arrange
    let dir = scratch("convert-sparse-vmdk");
    qemu_img_ok(&dir, &["create", "-q", "-f", "vmdk", "q.vmdk", "5M"]);
    qemu_io(
        &dir,
        "vmdk",
        "q.vmdk",
        &[
            "write -P 0x31 0 4k",
            "write -P 0x32 1M 200k",
            "write -P 0x33 5177344 65536",
        ],
    );

    // Act
    strata_ok(
        &dir,
        &["convert", "-f", "vmdk", "-O", "raw", "q.vmdk", "out.raw"],
    );
    strata_ok(
        &dir,
        &[
            "convert",
            "-f",
            "vmdk",
            "-O",
            "qcow2",
            "q.vmdk",
            "out.qcow2",
        ],
    );

    // Assert
    assert_identical(&dir, "vmdk", "q.vmdk", "raw", "out.raw");
    assert_identical(&dir, "vmdk", "q.vmdk", "qcow2", "out.qcow2");
    assert_qemu_check(&dir, "qcow2", "out.qcow2");
}

#[test]
fn test_img_convert_every_cache_mode_output_passes_qemu_check_and_compare() {
    // Arrange
    let dir = scratch("convert-cache");
    qemu_img_ok(&dir, &["create", "-q", "-f", "raw", "in.raw", "4M"]);
    qemu_io(
        &dir,
        "raw",
        "in.raw",
        &["write -P 0x33 64k 1M", "write -P 9 3M 8k"],
    );
    for t in ["unsafe", "writeback", "none", "directsync", "writethrough"] {
        for fmt in ["qcow2", "raw"] {
            let out = format!("out-{t}.{fmt}");

            // Act
            strata_ok(
                &dir,
                &[
                    "convert", "-t", t, "-T", "none", "-f", "raw", "-O", fmt, "in.raw", &out,
                ],
            );

            // Assert
            assert_identical(&dir, "raw", "in.raw", fmt, &out);
            if fmt == "qcow2" {
                assert_qemu_check(&dir, fmt, &out);
            }
        }
    }
}

#[test]
fn test_img_convert_unknown_cache_mode_is_error() {
    // Arrange
    let dir = scratch("convert-cache-bad");
    qemu_img_ok(&dir, &["create", "-q", "-f", "raw", "in.raw", "1M"]);

    // Act
    let run = strata(
        &dir,
        &[
            "convert", "-t", "fast", "-f", "raw", "-O", "qcow2", "in.raw", "o.qcow2",
        ],
    );

    // Assert
    assert_ne!(run.status, 0);
    assert!(run.stderr.contains("cache mode"), "{}", run.stderr);
}

#[test]
fn test_img_convert_compressed_many_chunks_mixed_data_matches_qemu() {
    // Arrange: 4k clusters, many 2 MiB chunks in flight on the compression threads,
    // incompressible and compressible clusters, zero chunks and a partial last cluster.
    let dir = scratch("convert-compressed-mixed");
    let size = (9 << 20) + 1536;
    let mut data = vec![0u8; size];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for (i, b) in data.iter_mut().enumerate() {
        let region = i >> 20;
        *b = match region % 3 {
            0 => {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
            1 => (i / 1000) as u8,
            _ => 0,
        };
    }
    data[size - 100..].fill(0x77);
    std::fs::write(dir.join("in.raw"), &data).expect("write input");
    // 64k clusters of random data are recognised as incompressible and stored plainly.
    for (ty, cs) in [
        ("zlib", "4k"),
        ("zstd", "4k"),
        ("zlib", "64k"),
        ("zstd", "64k"),
    ] {
        let out = format!("mixed-{ty}-{cs}.qcow2");
        let opt = format!("compression_type={ty},cluster_size={cs}");

        // Act
        strata_ok(
            &dir,
            &[
                "convert", "-c", "-o", &opt, "-f", "raw", "-O", "qcow2", "in.raw", &out,
            ],
        );

        // Assert
        assert_identical(&dir, "raw", "in.raw", "qcow2", &out);
        assert_qemu_check(&dir, "qcow2", &out);
        let check = qemu_img_ok(&dir, &["check", "-f", "qcow2", &out]);
        assert!(!check.contains(" 0.00% compressed"), "{check}");
    }
}

#[test]
fn test_img_convert_zero_runs_inside_chunks_with_reused_buffers_match_qemu() {
    // Arrange: every 2 MiB chunk mixes data and unallocated clusters, and there are more
    // chunks than reader buffers, so buffers are reused and hold stale bytes in zero runs.
    let dir = scratch("convert-zero-runs");
    qemu_img_ok(&dir, &["create", "-q", "-f", "qcow2", "in.qcow2", "24M"]);
    let cmds: Vec<String> = (0..24)
        .map(|i| format!("write -P {} {} 256k", i + 1, (i << 20) + (512 << 10)))
        .collect();
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(&dir, "qcow2", "in.qcow2", &cmds);
    qemu_img_ok(&dir, &["create", "-q", "-f", "raw", "old.raw", "24M"]);
    qemu_io(&dir, "raw", "old.raw", &["write -P 0xee 0 24M"]);

    // Act
    strata_ok(
        &dir,
        &["convert", "-f", "qcow2", "-O", "raw", "in.qcow2", "out.raw"],
    );
    strata_ok(
        &dir,
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "qcow2",
            "in.qcow2",
            "out.qcow2",
        ],
    );
    strata_ok(
        &dir,
        &[
            "convert", "-n", "-f", "qcow2", "-O", "raw", "in.qcow2", "old.raw",
        ],
    );
    strata_ok(
        &dir,
        &[
            "convert", "-S", "0", "-f", "qcow2", "-O", "raw", "in.qcow2", "full.raw",
        ],
    );

    // Assert
    for out in ["out.raw", "old.raw", "full.raw"] {
        assert_identical(&dir, "qcow2", "in.qcow2", "raw", out);
    }
    assert_identical(&dir, "qcow2", "in.qcow2", "qcow2", "out.qcow2");
    assert_qemu_check(&dir, "qcow2", "out.qcow2");
    let full = std::fs::metadata(dir.join("full.raw")).expect("stat");
    assert_eq!(
        std::os::unix::fs::MetadataExt::blocks(&full) * 512,
        24 << 20,
        "-S 0 must allocate every byte"
    );
}
