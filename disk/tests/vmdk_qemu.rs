//! Interop with QEMU: images made by `qemu-img`/`qemu-io` are read byte-exact, and images we
//! write pass `qemu-img check` and `qemu-img compare`. qemu-img must be installed: the tests
//! fail (never skip) without it.

use std::path::{Path, PathBuf};
use std::process::Command;

use disk::vmdk::{self, Subformat, VmdkCreateOptions};
use disk::{Discard, DiskSize, ErrorKind, OpenOptions, ReadAt, WriteAt};

const MIB: u64 = 1 << 20;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("strata-vmdk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a qemu tool and returns its exit code and output; panics if it cannot be started.
fn run(tool: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} (install qemu-utils): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn run_ok(tool: &str, args: &[&str]) -> String {
    let (code, text) = run(tool, args);
    assert_eq!(code, 0, "{tool} {args:?} failed: {text}");
    text
}

/// The writes every test applies: (offset, length, byte). They cross grain (64 KiB) and
/// grain-table (32 MiB) boundaries and include unaligned ones.
fn pattern(size: u64) -> Vec<(u64, u64, u8)> {
    vec![
        (0, 64 * 1024, 0xab),
        (65536 - 512, 1024, 0x11),
        (200_000 - 200_000 % 512, 3 * 512, 0x22),
        (MIB + 4096, 128 * 1024, 0x33),
        (size - 512, 512, 0x44),
        (size / 2, 4096, 0x55),
    ]
}

fn expected(size: u64, writes: &[(u64, u64, u8)]) -> Vec<u8> {
    let mut v = vec![0u8; size as usize];
    for &(off, len, byte) in writes {
        v[off as usize..(off + len) as usize].fill(byte);
    }
    v
}

fn qemu_io_writes(image: &str, writes: &[(u64, u64, u8)]) {
    let mut args = vec!["-f".to_string(), "vmdk".to_string()];
    for &(off, len, byte) in writes {
        args.push("-c".into());
        args.push(format!("write -P {byte:#x} {off} {len}"));
    }
    args.push(image.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok("qemu-io", &args);
}

fn read_all(img: &mut vmdk::Vmdk) -> Vec<u8> {
    let mut buf = vec![0u8; img.size() as usize];
    // Odd-sized chunks exercise requests that straddle grains.
    let chunk = 12_345usize;
    for (i, piece) in buf.chunks_mut(chunk).enumerate() {
        img.read_at(piece, (i * chunk) as u64).unwrap();
    }
    buf
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Creates an image with qemu-img, writes the pattern with qemu-io, reads it back with us and
/// compares against both the model and `qemu-img convert -O raw`.
fn check_qemu_image_reads(subformat: &str) {
    let dir = Scratch::new(subformat);
    let img = dir.path("disk.vmdk");
    let size = 3 * MIB;
    run_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            &format!("subformat={subformat}"),
            s(&img),
            "3M",
        ],
    );
    let writes = pattern(size);
    if subformat == "streamOptimized" {
        // qemu-io can only fill whole, never-written grains of a stream; streams are made by
        // conversion in practice, so convert the pattern from raw.
        let src = dir.path("src.raw");
        std::fs::write(&src, expected(size, &writes)).unwrap();
        let opt = format!("subformat={subformat}");
        run_ok(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                &opt,
                s(&src),
                s(&img),
            ],
        );
    } else {
        qemu_io_writes(s(&img), &writes);
    }
    let raw = dir.path("ref.raw");
    run_ok(
        "qemu-img",
        &["convert", "-f", "vmdk", "-O", "raw", s(&img), s(&raw)],
    );
    let reference = std::fs::read(&raw).unwrap();

    let mut ours = vmdk::open(
        &img,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let data = read_all(&mut ours);

    assert_eq!(ours.size(), size);
    assert_eq!(
        reference,
        expected(size, &writes),
        "qemu's own view differs from the model"
    );
    assert!(
        data == reference,
        "{subformat}: our read differs from qemu-img convert"
    );
}

#[test]
fn test_vmdk_qemu_monolithic_sparse_reads_byte_exact() {
    check_qemu_image_reads("monolithicSparse");
}

#[test]
fn test_vmdk_qemu_stream_optimized_reads_byte_exact() {
    check_qemu_image_reads("streamOptimized");
}

#[test]
fn test_vmdk_qemu_monolithic_flat_reads_byte_exact() {
    check_qemu_image_reads("monolithicFlat");
}

#[test]
fn test_vmdk_qemu_two_gb_sparse_reads_byte_exact() {
    check_qemu_image_reads("twoGbMaxExtentSparse");
}

#[test]
fn test_vmdk_qemu_two_gb_flat_reads_byte_exact() {
    check_qemu_image_reads("twoGbMaxExtentFlat");
}

/// A 2.5 GiB split image has two extents; reads across the 2 GiB boundary are exact.
fn check_multi_extent(subformat: &str) {
    let dir = Scratch::new(&format!("multi-{subformat}"));
    let img = dir.path("big.vmdk");
    run_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            &format!("subformat={subformat}"),
            s(&img),
            "2560M",
        ],
    );
    let boundary = 2048 * MIB;
    let writes = vec![(boundary - 1024, 4096, 0x5a_u8), (10 * MIB, 512, 0x77)];
    qemu_io_writes(s(&img), &writes);

    let mut ours = vmdk::open(&img, &OpenOptions::default()).unwrap();
    let mut got = vec![0u8; 3 * 65536];
    let base = boundary - 65536;
    ours.read_at(&mut got, base).unwrap();
    let mut small = [0u8; 1024];
    ours.read_at(&mut small, 10 * MIB - 256).unwrap();

    assert_eq!(
        ours.extent_count(),
        2,
        "{subformat} should have two extents"
    );
    assert_eq!(ours.size(), 2560 * MIB);
    for (i, b) in got.iter().enumerate() {
        let pos = base + i as u64;
        let want = writes
            .iter()
            .rev()
            .find(|w| pos >= w.0 && pos < w.0 + w.1)
            .map_or(0, |w| w.2);
        assert_eq!(*b, want, "byte at {pos:#x}");
    }
    assert_eq!(&small[..256], &[0u8; 256][..]);
    assert_eq!(&small[256..768], &[0x77u8; 512][..]);
    assert_eq!(&small[768..], &[0u8; 256][..]);
}

#[test]
fn test_vmdk_qemu_two_gb_sparse_two_extents_read_across_boundary() {
    check_multi_extent("twoGbMaxExtentSparse");
}

#[test]
fn test_vmdk_qemu_two_gb_flat_two_extents_read_across_boundary() {
    check_multi_extent("twoGbMaxExtentFlat");
}

/// Applies the pattern through our writer, then asks qemu-img to check and compare.
fn write_pattern(img: &mut vmdk::Vmdk, writes: &[(u64, u64, u8)]) {
    for &(off, len, byte) in writes {
        img.write_at(&vec![byte; len as usize], off).unwrap();
    }
    img.flush().unwrap();
}

fn assert_qemu_agrees(dir: &Scratch, img: &Path, size: u64, writes: &[(u64, u64, u8)]) {
    let raw = dir.path("expected.raw");
    std::fs::write(&raw, expected(size, writes)).unwrap();
    let check = run("qemu-img", &["check", "-f", "vmdk", s(img)]);
    let compare = run(
        "qemu-img",
        &["compare", "-f", "vmdk", "-F", "raw", s(img), s(&raw)],
    );
    assert_eq!(check.0, 0, "qemu-img check: {}", check.1);
    assert_eq!(compare.0, 0, "qemu-img compare: {}", compare.1);
}

#[test]
fn test_vmdk_create_monolithic_sparse_qemu_check_and_compare_pass() {
    let dir = Scratch::new("create-sparse");
    let img = dir.path("ours.vmdk");
    let size = 3 * MIB;
    let mut writes = pattern(size);
    writes.push((70_000 / 512 * 512, 512, 0x66)); // rewrite inside an allocated grain

    let mut ours = vmdk::create(&img, size, &VmdkCreateOptions::default()).unwrap();
    write_pattern(&mut ours, &writes);
    drop(ours);

    assert_qemu_agrees(&dir, &img, size, &writes);
    let mut back = vmdk::open(&img, &OpenOptions::default()).unwrap();
    assert_eq!(back.create_type(), "monolithicSparse");
    assert!(read_all(&mut back) == expected(size, &writes));
}

#[test]
fn test_vmdk_write_into_qemu_monolithic_sparse_qemu_compare_passes() {
    let dir = Scratch::new("write-qemu-sparse");
    let img = dir.path("q.vmdk");
    let size = 3 * MIB;
    run_ok("qemu-img", &["create", "-q", "-f", "vmdk", s(&img), "3M"]);
    let first = vec![(0, 4096, 0x10_u8), (2 * MIB, 65536, 0x20)];
    qemu_io_writes(s(&img), &first);
    let ours_writes = vec![
        (2048, 8192, 0x30_u8),
        (MIB + 512, 512, 0x40),
        (size - 4096, 4096, 0x50),
    ];

    let mut ours = vmdk::open(&img, &OpenOptions::default()).unwrap();
    write_pattern(&mut ours, &ours_writes);
    drop(ours);

    let all: Vec<_> = first.iter().chain(&ours_writes).copied().collect();
    assert_qemu_agrees(&dir, &img, size, &all);
}

#[test]
fn test_vmdk_create_stream_optimized_qemu_check_and_compare_pass() {
    let dir = Scratch::new("create-stream");
    let img = dir.path("stream.vmdk");
    // Not a multiple of the grain: the last grain is partial.
    let size = 3 * MIB + 7 * 512;
    let mut writes = pattern(size);
    writes.sort_by_key(|w| w.0);
    // The pattern's second write overlaps the first; keep it sequential by merging order.

    let mut ours = vmdk::create(
        &img,
        size,
        &VmdkCreateOptions {
            subformat: Subformat::StreamOptimized,
        },
    )
    .unwrap();
    write_pattern(&mut ours, &writes);
    drop(ours);

    assert_qemu_agrees(&dir, &img, size, &writes);
    let mut back = vmdk::open(
        &img,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(back.create_type(), "streamOptimized");
    assert!(read_all(&mut back) == expected(size, &writes));
}

#[test]
fn test_vmdk_stream_flush_then_continue_qemu_compare_passes() {
    let dir = Scratch::new("stream-resume");
    let img = dir.path("stream.vmdk");
    let size = 40 * MIB; // two grain tables
    let part1 = vec![(0, 100_000 / 512 * 512, 0x61_u8), (300 * 512, 512, 0x62)];
    let part2 = vec![
        (33 * MIB, 70_000 / 512 * 512, 0x63_u8),
        (size - 512, 512, 0x64),
    ];
    let mut ours = vmdk::create(
        &img,
        size,
        &VmdkCreateOptions {
            subformat: Subformat::StreamOptimized,
        },
    )
    .unwrap();

    write_pattern(&mut ours, &part1);
    let (mid_check, _) = run("qemu-img", &["check", "-f", "vmdk", s(&img)]);
    write_pattern(&mut ours, &part2);
    drop(ours);

    assert_eq!(
        mid_check, 0,
        "the stream is a valid image after every flush"
    );
    let all: Vec<_> = part1.iter().chain(&part2).copied().collect();
    assert_qemu_agrees(&dir, &img, size, &all);
}

#[test]
fn test_vmdk_stream_rewrite_of_sealed_grain_unsupported() {
    let dir = Scratch::new("stream-rewrite");
    let img = dir.path("stream.vmdk");
    let mut ours = vmdk::create(
        &img,
        MIB,
        &VmdkCreateOptions {
            subformat: Subformat::StreamOptimized,
        },
    )
    .unwrap();
    ours.write_at(&[1u8; 512], 4 * 65536).unwrap();

    let err = ours.write_at(&[2u8; 512], 0).unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Unsupported);
}

#[test]
fn test_vmdk_qemu_stream_optimized_write_unsupported() {
    let dir = Scratch::new("qemu-stream-write");
    let img = dir.path("s.vmdk");
    run_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            s(&img),
            "1M",
        ],
    );
    let mut ours = vmdk::open(&img, &OpenOptions::default()).unwrap();

    let err = ours.write_at(&[9u8; 512], 0).unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Unsupported);
}

/// Writes the pattern into a qemu-made image of `subformat` and lets qemu compare.
fn check_write_into_qemu_image(subformat: &str) {
    let dir = Scratch::new(&format!("write-{subformat}"));
    let img = dir.path("f.vmdk");
    let size = 3 * MIB;
    let opt = format!("subformat={subformat}");
    run_ok(
        "qemu-img",
        &["create", "-q", "-f", "vmdk", "-o", &opt, s(&img), "3M"],
    );
    let writes = pattern(size);

    let mut ours = vmdk::open(&img, &OpenOptions::default()).unwrap();
    write_pattern(&mut ours, &writes);
    drop(ours);

    assert_qemu_agrees(&dir, &img, size, &writes);
}

#[test]
fn test_vmdk_write_monolithic_flat_qemu_compare_passes() {
    check_write_into_qemu_image("monolithicFlat");
}

#[test]
fn test_vmdk_write_two_gb_sparse_qemu_compare_passes() {
    check_write_into_qemu_image("twoGbMaxExtentSparse");
}

#[test]
fn test_vmdk_write_two_gb_flat_qemu_compare_passes() {
    check_write_into_qemu_image("twoGbMaxExtentFlat");
}

/// With every grain directory entry cleared, writes must allocate new grain tables (and
/// redundant ones) at the end of the file and link them into both directories.
#[test]
fn test_vmdk_sparse_write_allocates_grain_tables_qemu_compare_passes() {
    use std::os::unix::fs::FileExt;
    let dir = Scratch::new("alloc-gt");
    let img = dir.path("a.vmdk");
    let size = 40 * MIB; // two grain tables
    drop(vmdk::create(&img, size, &VmdkCreateOptions::default()).unwrap());
    let head = std::fs::read(&img).unwrap();
    let rgd = u64::from_le_bytes(head[48..56].try_into().unwrap()) * 512;
    let gd = u64::from_le_bytes(head[56..64].try_into().unwrap()) * 512;
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&[0u8; 8], rgd).unwrap();
    f.write_all_at(&[0u8; 8], gd).unwrap();
    drop(f);
    let writes = vec![(4096, 4096, 0x41_u8), (33 * MIB, 70_000 / 512 * 512, 0x42)];

    let mut ours = vmdk::open(&img, &OpenOptions::default()).unwrap();
    write_pattern(&mut ours, &writes);
    drop(ours);

    assert_qemu_agrees(&dir, &img, size, &writes);
    let after = std::fs::read(&img).unwrap();
    let entry =
        |at: u64| u32::from_le_bytes(after[at as usize..at as usize + 4].try_into().unwrap());
    assert!(
        entry(gd) != 0 && entry(gd + 4) != 0,
        "directory entries were linked"
    );
    assert!(
        entry(rgd) != 0 && entry(rgd + 4) != 0,
        "redundant entries were linked"
    );
    assert!(
        entry(gd) != entry(rgd),
        "redundant table is a separate copy"
    );
}

#[test]
fn test_vmdk_qemu_geometry_parsed_from_descriptor() {
    let dir = Scratch::new("geometry");
    let img = dir.path("g.vmdk");
    run_ok("qemu-img", &["create", "-q", "-f", "vmdk", s(&img), "100M"]);

    let ours = vmdk::open(
        &img,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();

    let g = ours.geometry().expect("qemu writes ddb.geometry");
    assert_eq!((g.cylinders, g.heads, g.sectors), (203, 16, 63));
}

#[test]
fn test_vmdk_stream_write_zeroes_skips_grains_qemu_compare_passes() {
    let dir = Scratch::new("stream-zeroes");
    let img = dir.path("z.vmdk");
    let size = 40 * MIB;
    let mut ours = vmdk::create(
        &img,
        size,
        &VmdkCreateOptions {
            subformat: Subformat::StreamOptimized,
        },
    )
    .unwrap();

    ours.write_at(&[0x11; 8192], 0).unwrap();
    ours.write_zeroes(4096, 34 * MIB).unwrap(); // ends mid-grain, in the second grain table
    ours.write_at(&[0x22; 1000], 34 * MIB + 4096 + 24).unwrap();
    ours.write_zeroes(36 * MIB, 4 * MIB - 512).unwrap();
    ours.write_at(&[0x33; 512], size - 512).unwrap();
    ours.flush().unwrap();
    let file_len = std::fs::metadata(&img).unwrap().len();
    drop(ours);

    let writes = [
        (0, 4096, 0x11_u8),
        (34 * MIB + 4096 + 24, 1000, 0x22),
        (size - 512, 512, 0x33),
    ];
    assert_qemu_agrees(&dir, &img, size, &writes);
    assert!(
        file_len < 64 * 1024,
        "zero grains must not be stored ({file_len} bytes)"
    );
}

#[test]
fn test_vmdk_sparse_write_zeroes_qemu_compare_passes() {
    let dir = Scratch::new("sparse-zeroes");
    let img = dir.path("z.vmdk");
    let size = 3 * MIB;
    let mut ours = vmdk::create(&img, size, &VmdkCreateOptions::default()).unwrap();
    ours.write_at(&vec![0x77; 200_000], 1000).unwrap();

    ours.write_zeroes(4096, 70_000).unwrap();
    ours.write_zeroes(2 * MIB, MIB).unwrap(); // unallocated: stays unallocated
    ours.discard(0, 512).unwrap();
    ours.flush().unwrap();
    drop(ours);

    let writes = [(1000, 3096, 0x77_u8), (74_096, 201_000 - 74_096, 0x77)];
    assert_qemu_agrees(&dir, &img, size, &writes);
}

/// QEMU's `zeroed_grain` images mark zeroed grains with table entry 1: they read as zeroes, and
/// writing into one allocates a fresh grain.
#[test]
fn test_vmdk_qemu_zeroed_grain_reads_zero_and_rewrites() {
    let dir = Scratch::new("zeroed-grain");
    let img = dir.path("zg.vmdk");
    let size = MIB;
    run_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "zeroed_grain=on",
            s(&img),
            "1M",
        ],
    );
    run_ok(
        "qemu-io",
        &[
            "-f",
            "vmdk",
            "-c",
            "write -P 0xab 0 192k",
            "-c",
            "write -z 64k 64k",
            s(&img),
        ],
    );
    let mut ours = vmdk::open(&img, &OpenOptions::default()).unwrap();

    let before = read_all(&mut ours);
    ours.write_at(&[0x5c; 512], 65536 + 1024).unwrap();
    ours.flush().unwrap();
    drop(ours);

    let model = [(0, 65536, 0xab_u8), (131072, 65536, 0xab)];
    assert!(
        before == expected(size, &model),
        "zeroed grain must read as zeroes"
    );
    let after = [
        (0, 65536, 0xab_u8),
        (131072, 65536, 0xab),
        (65536 + 1024, 512, 0x5c),
    ];
    assert_qemu_agrees(&dir, &img, size, &after);
}

/// An extent file of a split image has no embedded descriptor; opened on its own it is a
/// plain sparse disk (regression: a missing descriptor was taken for parentCID=0).
#[test]
fn test_vmdk_qemu_split_extent_file_opens_alone() {
    let dir = Scratch::new("extent-alone");
    let img = dir.path("t.vmdk");
    let opt = "subformat=twoGbMaxExtentSparse";
    run_ok(
        "qemu-img",
        &["create", "-q", "-f", "vmdk", "-o", opt, s(&img), "1M"],
    );
    run_ok(
        "qemu-io",
        &["-f", "vmdk", "-c", "write -P 0x3c 4096 512", s(&img)],
    );

    let mut ours = vmdk::open(&dir.path("t-s001.vmdk"), &OpenOptions::default()).unwrap();
    let mut buf = [0u8; 1024];
    ours.read_at(&mut buf, 4096 - 512).unwrap();

    assert_eq!(ours.size(), MIB);
    assert_eq!(&buf[..512], &[0u8; 512][..]);
    assert_eq!(&buf[512..], &[0x3cu8; 512][..]);
}
