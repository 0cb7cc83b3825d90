//! Hostile and malformed vmdk input: every case is a clear error, never a panic or a host file
//! outside the descriptor's directory.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use disk::vmdk::header::{SparseHeader, FLAG_NEWLINE_TEST, FLAG_RGD};
use disk::vmdk::{self, VmdkCreateOptions};
use disk::{ErrorKind, OpenOptions, ReadAt, WriteAt};

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("strata-vmdkh-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    /// Writes a descriptor with the given extent lines and returns its path.
    fn descriptor(&self, create_type: &str, extents: &str) -> PathBuf {
        let text = format!(
            "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n\
             createType=\"{create_type}\"\n{extents}\n"
        );
        let p = self.path("d.vmdk");
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rw() -> OpenOptions {
    OpenOptions::default()
}

fn open_err(p: &std::path::Path, o: &OpenOptions) -> disk::Error {
    vmdk::open(p, o).expect_err("open must fail")
}

#[test]
fn test_vmdk_absolute_extent_path_refused() {
    let dir = Scratch::new("abs");
    let outside = Scratch::new("abs-out");
    std::fs::write(outside.path("x.img"), vec![0u8; 4096]).unwrap();
    let line = format!("RW 8 FLAT \"{}\" 0", outside.path("x.img").display());
    let d = dir.descriptor("monolithicFlat", &line);

    let err = open_err(&d, &rw());

    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("allow_outside_extents"), "{err}");
}

#[test]
fn test_vmdk_absolute_extent_path_allowed_with_option() {
    let dir = Scratch::new("abs-ok");
    let outside = Scratch::new("abs-ok-out");
    std::fs::write(outside.path("x.img"), vec![0x5au8; 4096]).unwrap();
    let line = format!("RW 8 FLAT \"{}\" 0", outside.path("x.img").display());
    let d = dir.descriptor("monolithicFlat", &line);
    let opts = OpenOptions {
        allow_outside_extents: true,
        ..Default::default()
    };

    let mut img = vmdk::open(&d, &opts).unwrap();
    let mut buf = [0u8; 16];
    img.read_at(&mut buf, 100).unwrap();

    assert_eq!(buf, [0x5a; 16]);
}

#[test]
fn test_vmdk_dotdot_extent_path_refused() {
    let dir = Scratch::new("dotdot");
    let d = dir.descriptor("monolithicFlat", "RW 8 FLAT \"../etc/passwd\" 0");

    let err = open_err(&d, &rw());

    assert_eq!(err.kind(), ErrorKind::Unsupported);
}

#[test]
fn test_vmdk_symlink_escaping_directory_refused() {
    let dir = Scratch::new("symlink");
    let outside = Scratch::new("symlink-out");
    std::fs::write(outside.path("x.img"), vec![0u8; 4096]).unwrap();
    std::os::unix::fs::symlink(outside.path("x.img"), dir.path("link.img")).unwrap();
    let d = dir.descriptor("monolithicFlat", "RW 8 FLAT \"link.img\" 0");

    let err = open_err(&d, &rw());

    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("outside"), "{err}");
}

#[test]
fn test_vmdk_parent_cid_unsupported() {
    let dir = Scratch::new("parent");
    std::fs::write(dir.path("f.img"), vec![0u8; 4096]).unwrap();
    let text = "version=1\nCID=2\nparentCID=12345678\ncreateType=\"monolithicFlat\"\n\
                parentFileNameHint=\"base.vmdk\"\nRW 8 FLAT \"f.img\" 0\n";
    std::fs::write(dir.path("d.vmdk"), text).unwrap();

    let err = open_err(&dir.path("d.vmdk"), &rw());

    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("parent"), "{err}");
}

#[test]
fn test_vmdk_device_create_type_unsupported() {
    let dir = Scratch::new("device");
    let d = dir.descriptor("fullDevice", "RW 8 FLAT \"/dev/sda\" 0");

    let err = open_err(&d, &rw());

    assert_eq!(err.kind(), ErrorKind::Unsupported);
}

#[test]
fn test_vmdk_garbage_text_invalid_format() {
    let dir = Scratch::new("garbage");
    std::fs::write(dir.path("g.vmdk"), b"this is not a disk\n").unwrap();

    let err = open_err(&dir.path("g.vmdk"), &rw());

    assert_eq!(err.kind(), ErrorKind::InvalidFormat);
}

#[test]
fn test_vmdk_missing_create_type_invalid_format() {
    let dir = Scratch::new("notype");
    std::fs::write(dir.path("n.vmdk"), b"version=1\nCID=1\n").unwrap();

    let err = open_err(&dir.path("n.vmdk"), &rw());

    assert_eq!(err.kind(), ErrorKind::InvalidFormat);
}

#[test]
fn test_vmdk_short_flat_extent_corrupt() {
    let dir = Scratch::new("shortflat");
    std::fs::write(dir.path("f.img"), vec![0u8; 1024]).unwrap();
    let d = dir.descriptor("monolithicFlat", "RW 8 FLAT \"f.img\" 0");

    let err = open_err(&d, &rw());

    assert_eq!(err.kind(), ErrorKind::Corrupt);
}

#[test]
fn test_vmdk_access_modes_enforced() {
    let dir = Scratch::new("access");
    std::fs::write(dir.path("a.img"), vec![1u8; 4096]).unwrap();
    std::fs::write(dir.path("b.img"), vec![2u8; 4096]).unwrap();
    let d = dir.descriptor(
        "twoGbMaxExtentFlat",
        "RDONLY 8 FLAT \"a.img\" 0\nNOACCESS 8 FLAT \"b.img\" 0\nRW 8 ZERO",
    );
    let mut img = vmdk::open(&d, &rw()).unwrap();
    let mut buf = [0xffu8; 512];

    img.read_at(&mut buf, 0).unwrap();
    let ro_write = img.write_at(&[0u8; 512], 0).unwrap_err();
    let noaccess = img.read_at(&mut [0u8; 512], 4096).unwrap_err();
    let mut zero = [0xffu8; 512];
    img.read_at(&mut zero, 8192).unwrap();

    assert_eq!(buf, [1u8; 512]);
    assert_eq!(ro_write.kind(), ErrorKind::Unsupported);
    assert_eq!(noaccess.kind(), ErrorKind::Unsupported);
    assert_eq!(zero, [0u8; 512]);
}

#[test]
fn test_vmdk_read_past_end_out_of_bounds() {
    let dir = Scratch::new("oob");
    let p = dir.path("s.vmdk");
    drop(vmdk::create(&p, 1 << 20, &VmdkCreateOptions::default()).unwrap());
    let mut img = vmdk::open(&p, &rw()).unwrap();

    let err = img.read_at(&mut [0u8; 1024], (1 << 20) - 512).unwrap_err();

    assert_eq!(err.kind(), ErrorKind::OutOfBounds);
}

#[test]
fn test_vmdk_read_only_open_refuses_writes() {
    let dir = Scratch::new("ro");
    let p = dir.path("s.vmdk");
    drop(vmdk::create(&p, 1 << 20, &VmdkCreateOptions::default()).unwrap());
    let mut img = vmdk::open(
        &p,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();

    let err = img.write_at(&[1u8; 512], 0).unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Unsupported);
}

/// A 1 KiB file whose header claims 2^40 sectors: the directory cannot fit and the error names
/// the field and its header offset.
#[test]
fn test_vmdk_tiny_file_huge_directory_refused_naming_field() {
    let dir = Scratch::new("hugegd");
    let h = SparseHeader {
        version: 1,
        flags: FLAG_NEWLINE_TEST | FLAG_RGD,
        capacity: 1 << 40,
        grain_size: 128,
        descriptor_offset: 0,
        descriptor_size: 0,
        num_gtes_per_gt: 512,
        rgd_offset: 1,
        gd_offset: 1,
        overhead: 1,
        unclean_shutdown: false,
        compress_algorithm: 0,
    };
    let mut bytes = h.to_bytes().to_vec();
    bytes.resize(1024, 0);
    std::fs::write(dir.path("t.vmdk"), &bytes).unwrap();

    let err = open_err(&dir.path("t.vmdk"), &rw());

    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("gdOffset"), "{err}");
    assert_eq!(err.offset(), Some(56));
}

/// Patches a u32 in a file.
fn poke(p: &std::path::Path, at: u64, v: u32) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(&v.to_le_bytes(), at).unwrap();
}

/// The byte offset of the grain directory of an image made by our `create`.
fn gd_offset(p: &std::path::Path) -> u64 {
    let bytes = std::fs::read(p).unwrap();
    u64::from_le_bytes(bytes[56..64].try_into().unwrap()) * 512
}

#[test]
fn test_vmdk_grain_directory_entry_beyond_file_corrupt() {
    let dir = Scratch::new("badgde");
    let p = dir.path("s.vmdk");
    drop(vmdk::create(&p, 1 << 20, &VmdkCreateOptions::default()).unwrap());
    poke(&p, gd_offset(&p), 0x7fff_0000);
    let mut img = vmdk::open(
        &p,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();

    let err = img.read_at(&mut [0u8; 512], 0).unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("grain directory entry 0"), "{err}");
}

#[test]
fn test_vmdk_grain_table_entry_beyond_file_corrupt() {
    let dir = Scratch::new("badgte");
    let p = dir.path("s.vmdk");
    drop(vmdk::create(&p, 1 << 20, &VmdkCreateOptions::default()).unwrap());
    let bytes = std::fs::read(&p).unwrap();
    let gt = u32::from_le_bytes(bytes[gd_offset(&p) as usize..][..4].try_into().unwrap());
    poke(&p, u64::from(gt) * 512 + 4, 0x00ff_ffff);
    let mut img = vmdk::open(&p, &rw()).unwrap();

    let read = img.read_at(&mut [0u8; 512], 65536).unwrap_err();
    let write = img.write_at(&[1u8; 512], 65536).unwrap_err();

    assert_eq!(read.kind(), ErrorKind::Corrupt);
    assert_eq!(write.kind(), ErrorKind::Corrupt);
}

#[test]
fn test_vmdk_grain_table_entry_into_metadata_write_refused() {
    let dir = Scratch::new("metagte");
    let p = dir.path("s.vmdk");
    drop(vmdk::create(&p, 1 << 20, &VmdkCreateOptions::default()).unwrap());
    let bytes = std::fs::read(&p).unwrap();
    let gt = u32::from_le_bytes(bytes[gd_offset(&p) as usize..][..4].try_into().unwrap());
    let mut grow = vmdk::open(&p, &rw()).unwrap();
    grow.write_at(&[1u8; 512], 5 * 65536).unwrap();
    drop(grow);
    poke(&p, u64::from(gt) * 512, 2); // grain 0 "lives" on the descriptor
    let mut img = vmdk::open(&p, &rw()).unwrap();

    let err = img.write_at(&[1u8; 512], 0).unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("metadata"), "{err}");
}

#[test]
fn test_vmdk_stream_bad_grain_marker_corrupt() {
    let dir = Scratch::new("badmarker");
    let p = dir.path("s.vmdk");
    let opts = VmdkCreateOptions {
        subformat: vmdk::Subformat::StreamOptimized,
    };
    let mut w = vmdk::create(&p, 1 << 20, &opts).unwrap();
    w.write_at(&[7u8; 4096], 0).unwrap();
    w.flush().unwrap();
    drop(w);
    // The first grain's marker follows the header and the one-sector descriptor.
    let bytes = std::fs::read(&p).unwrap();
    let desc_sectors = u64::from_le_bytes(bytes[36..44].try_into().unwrap());
    poke(&p, (1 + desc_sectors) * 512 + 8, 0xffff_fff0);
    let mut img = vmdk::open(
        &p,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();

    let err = img.read_at(&mut [0u8; 512], 0).unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Corrupt);
}

#[test]
fn test_vmdk_stream_truncated_footer_corrupt() {
    let dir = Scratch::new("nofooter");
    let p = dir.path("s.vmdk");
    let opts = VmdkCreateOptions {
        subformat: vmdk::Subformat::StreamOptimized,
    };
    drop(vmdk::create(&p, 1 << 20, &opts).unwrap());
    let len = std::fs::metadata(&p).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(len - 512).unwrap();

    let err = open_err(
        &p,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    );

    assert_eq!(err.kind(), ErrorKind::Corrupt);
}

#[test]
fn test_vmdk_short_file_invalid_format() {
    let dir = Scratch::new("short");
    std::fs::write(dir.path("k.vmdk"), b"KDMV\x01\x00").unwrap();

    let err = open_err(&dir.path("k.vmdk"), &rw());

    assert_eq!(err.kind(), ErrorKind::InvalidFormat);
}

#[test]
fn test_vmdk_directory_as_extent_unsupported() {
    let dir = Scratch::new("dirext");
    std::fs::create_dir(dir.path("sub")).unwrap();
    let d = dir.descriptor("monolithicFlat", "RW 8 FLAT \"sub\" 0");

    let err = open_err(&d, &rw());

    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("regular file"), "{err}");
}

#[test]
fn test_vmdk_same_sparse_file_twice_corrupt() {
    let dir = Scratch::new("dupsparse");
    drop(vmdk::create(&dir.path("s.vmdk"), 1 << 20, &VmdkCreateOptions::default()).unwrap());
    let d = dir.descriptor(
        "twoGbMaxExtentSparse",
        "RW 2048 SPARSE \"s.vmdk\"\nRW 2048 SPARSE \"./s.vmdk\"",
    );

    let err = open_err(&d, &rw());

    assert_eq!(err.kind(), ErrorKind::Corrupt);
}

#[test]
fn test_vmdk_write_zeroes_over_large_disk_reads_zero() {
    let dir = Scratch::new("hugezero");
    let p = dir.path("h.vmdk");
    let size = 64u64 << 30; // 2048 grain tables, walked table by table
    let mut img = vmdk::create(&p, size, &VmdkCreateOptions::default()).unwrap();
    img.write_at(&[1u8; 512], 0).unwrap();
    img.write_at(&[2u8; 512], size - 512).unwrap();

    disk::Discard::write_zeroes(&mut img, 0, size).unwrap();
    let mut first = [0xffu8; 512];
    let mut last = [0xffu8; 512];
    img.read_at(&mut first, 0).unwrap();
    img.read_at(&mut last, size - 512).unwrap();

    assert_eq!(first, [0u8; 512]);
    assert_eq!(last, [0u8; 512]);
}
