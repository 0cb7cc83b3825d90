use super::*;

const RAM: u64 = 1 << 20;

fn device() -> FwCfg {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    FwCfg::new(mem)
}

fn select(cfg: &mut FwCfg, key: u16) {
    PortDevice::write(cfg, 0, &key.to_le_bytes());
}

fn read_bytes(cfg: &mut FwCfg, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            let mut b = [0u8];
            PortDevice::read(cfg, 1, &mut b);
            b[0]
        })
        .collect()
}

/// Writes a descriptor at `at` and starts the transfer; returns the control word after it.
fn dma(cfg: &mut FwCfg, at: u64, control: u32, length: u32, buffer: u64) -> u32 {
    let mut d = control.to_be_bytes().to_vec();
    d.extend_from_slice(&length.to_be_bytes());
    d.extend_from_slice(&buffer.to_be_bytes());
    let _ = cfg.mem.write_slice(&d, GuestAddress(at));
    PortDevice::write(cfg, 4, &((at >> 32) as u32).to_be_bytes());
    PortDevice::write(cfg, 8, &(at as u32).to_be_bytes());
    let mut c = [0u8; 4];
    let _ = cfg.mem.read_slice(&mut c, GuestAddress(at));
    u32::from_be_bytes(c)
}

fn guest(cfg: &FwCfg, at: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    cfg.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
    v
}

#[test]
fn test_fw_cfg_signature_id_and_dma_signature_through_ports() {
    let mut cfg = device();

    select(&mut cfg, FW_CFG_SIGNATURE);
    let sig = read_bytes(&mut cfg, 4);
    select(&mut cfg, FW_CFG_ID);
    let id = read_bytes(&mut cfg, 4);
    let mut dma_sig = [0u8; 8];
    PortDevice::read(&mut cfg, 4, &mut dma_sig[..4]);
    PortDevice::read(&mut cfg, 8, &mut dma_sig[4..]);

    assert_eq!(sig, b"QEMU");
    assert_eq!(id, [3, 0, 0, 0]);
    assert_eq!(&dma_sig, b"QEMU CFG");
}

#[test]
fn test_fw_cfg_file_directory_sorted_by_name_with_sizes_and_keys() {
    let mut cfg = device();
    let b = cfg.add_file("etc/z", vec![1; 3]).unwrap();
    let a = cfg.add_file("bootorder", vec![2; 10]).unwrap();

    select(&mut cfg, FW_CFG_FILE_DIR);
    let dir = read_bytes(&mut cfg, 4 + 2 * 64);

    assert_eq!((b, a), (0x20, 0x21));
    assert_eq!(&dir[..4], &[0, 0, 0, 2]);
    assert_eq!(&dir[4..12], &[0, 0, 0, 10, 0, 0x21, 0, 0]);
    assert_eq!(&dir[12..22], b"bootorder\0");
    assert_eq!(&dir[68..76], &[0, 0, 0, 3, 0, 0x20, 0, 0]);
    assert_eq!(&dir[76..82], b"etc/z\0");
}

#[test]
fn test_fw_cfg_reads_past_item_end_are_zero() {
    let mut cfg = device();
    let key = cfg.add_file("f", vec![7, 8]).unwrap();

    select(&mut cfg, key);
    let bytes = read_bytes(&mut cfg, 4);

    assert_eq!(bytes, [7, 8, 0, 0]);
}

#[test]
fn test_fw_cfg_dma_select_read_copies_then_zero_fills_and_clears_control() {
    let mut cfg = device();
    let key = cfg.add_file("etc/e820", (1..=10).collect()).unwrap();
    cfg.mem
        .write_slice(&[0xaa; 16], GuestAddress(0x2000))
        .unwrap();

    let control = dma(
        &mut cfg,
        0x1000,
        (u32::from(key) << 16) | 0x8 | 0x2,
        12,
        0x2000,
    );
    let more = dma(&mut cfg, 0x1000, 0x2, 2, 0x3000);

    assert_eq!(control, 0);
    let mut want: Vec<u8> = (1..=10).collect();
    want.extend_from_slice(&[0, 0, 0xaa, 0xaa]);
    assert_eq!(guest(&cfg, 0x2000, 14), want);
    assert_eq!(more, 0);
    assert_eq!(
        guest(&cfg, 0x3000, 2),
        [0, 0],
        "the offset moved past the end"
    );
}

#[test]
fn test_fw_cfg_dma_skip_moves_offset() {
    let mut cfg = device();
    let key = cfg.add_file("f", (0..8).collect()).unwrap();

    dma(&mut cfg, 0x1000, (u32::from(key) << 16) | 0x8 | 0x4, 5, 0);
    let control = dma(&mut cfg, 0x1000, 0x2, 3, 0x2000);

    assert_eq!(control, 0);
    assert_eq!(guest(&cfg, 0x2000, 3), [5, 6, 7]);
}

#[test]
fn test_fw_cfg_dma_write_refused_item_unchanged() {
    let mut cfg = device();
    let key = cfg.add_file("etc/table-loader", vec![1; 128]).unwrap();
    cfg.mem
        .write_slice(&[9; 128], GuestAddress(0x2000))
        .unwrap();

    let control = dma(
        &mut cfg,
        0x1000,
        (u32::from(key) << 16) | 0x8 | 0x10,
        128,
        0x2000,
    );
    select(&mut cfg, key);
    let after = read_bytes(&mut cfg, 128);

    assert_eq!(control & 1, 1, "error bit");
    assert_eq!(after, vec![1; 128]);
}

#[test]
fn test_fw_cfg_dma_bad_buffers_get_error_and_write_nothing() {
    let mut cfg = device();
    let key = cfg.add_file("f", vec![5; 64]).unwrap();
    let sel = (u32::from(key) << 16) | 0x8 | 0x2;
    cfg.mem
        .write_slice(&[0xcc; 64], GuestAddress(RAM - 64))
        .unwrap();

    let huge = dma(&mut cfg, 0x1000, sel, u32::MAX, 0x2000);
    let outside = dma(&mut cfg, 0x1000, sel, 16, RAM + 0x1000);
    let straddles = dma(&mut cfg, 0x1000, sel, 128, RAM - 64);
    let wraps = dma(&mut cfg, 0x1000, sel, 16, u64::MAX - 4);

    assert_eq!([huge, outside, straddles, wraps], [1, 1, 1, 1]);
    assert_eq!(guest(&cfg, RAM - 64, 64), vec![0xcc; 64]);
    assert_eq!(guest(&cfg, 0x2000, 16), vec![0; 16]);
}

#[test]
fn test_fw_cfg_dma_unaligned_descriptor_served_outside_one_ignored_without_panic() {
    let mut cfg = device();
    let key = cfg.add_file("f", vec![5; 16]).unwrap();
    let sel = (u32::from(key) << 16) | 0x8 | 0x2;

    let unaligned = dma(&mut cfg, 0x1004, sel, 16, 0x3000);
    let outside = dma(&mut cfg, RAM + 0x10, sel, 16, 0x2000);
    let at_end = dma(&mut cfg, RAM - 8, sel, 16, 0x2000);
    let top = dma(&mut cfg, u64::MAX - 15, sel, 16, 0x2000);

    assert_eq!(
        unaligned, 0,
        "unaligned (SeaBIOS's stack descriptors): served"
    );
    assert_eq!(guest(&cfg, 0x3000, 16), vec![5; 16]);
    assert_eq!((outside, top), (0, 0), "nothing to write the status to");
    assert_eq!(
        at_end & 1,
        1,
        "cut-off descriptor: error bit written in RAM"
    );
    assert_eq!(guest(&cfg, 0x2000, 16), vec![0; 16], "nothing transferred");
}

#[test]
fn test_fw_cfg_add_file_rejects_bad_names_duplicates_and_overflow() {
    let mut cfg = device();
    cfg.add_file("a", vec![]).unwrap();

    let empty = cfg.add_file("", vec![]);
    let long = cfg.add_file(&"x".repeat(56), vec![]);
    let nul = cfg.add_file("a\0b", vec![]);
    let dup = cfg.add_file("a", vec![]);
    for i in 1..FW_CFG_FILE_SLOTS {
        cfg.add_file(&format!("f{i}"), vec![]).unwrap();
    }
    let full = cfg.add_file("last", vec![]);

    assert!(matches!(empty, Err(FwCfgError::InvalidName(_))));
    assert!(matches!(long, Err(FwCfgError::InvalidName(_))));
    assert!(matches!(nul, Err(FwCfgError::InvalidName(_))));
    assert!(matches!(dup, Err(FwCfgError::DuplicateFile(_))));
    assert!(matches!(full, Err(FwCfgError::TooManyFiles(_))));
}

#[test]
fn test_fw_cfg_string_read_of_data_port_reads_successive_bytes() {
    let mut cfg = device();
    let key = cfg.add_file("f", vec![1, 2, 3]).unwrap();
    select(&mut cfg, key);
    let mut data = [0xffu8; 4];

    PortDevice::read(&mut cfg, 1, &mut data);

    assert_eq!(data, [1, 2, 3, 0]);
}
