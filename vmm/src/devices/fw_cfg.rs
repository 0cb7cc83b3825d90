//! QEMU's firmware configuration interface (docs/specs/fw_cfg.rst in QEMU), as SeaBIOS, qboot
//! and Linux's `qemu_fw_cfg` driver read it: I/O ports 0x510 (selector, 16-bit), 0x511 (data,
//! one byte per read) and 0x514-0x51b (DMA address, big-endian; writing the low half at 0x518
//! starts the transfer).
//!
//! Items: the signature (`QEMU`), the ID (traditional and DMA interfaces), the file directory,
//! the legacy numeric keys the caller adds (CPU count, RAM size, kernel, initrd, command line,
//! setup), and named files from [`FW_CFG_FILE_FIRST`] (`etc/e820`, `bootorder`,
//! `etc/boot-fail-wait`, `etc/table-loader`, the ACPI tables ...). Every item is read-only.
//!
//! A DMA request is guest input: its descriptor must lie wholly in RAM (at any alignment, as
//! in QEMU; SeaBIOS's are 4-byte aligned), and the buffer it names must lie wholly in RAM; otherwise nothing is transferred and the control
//! word gets the error bit (when the descriptor itself can be written). A write request is
//! refused the same way (no item is writable, so a guest cannot change the tables the
//! table-loader describes). A transfer past an item's end reads zeros, as in QEMU.

use std::collections::BTreeMap;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::PortDevice;
use crate::vm_events::VmEvent;

/// The first port: selector (0x510), data (0x511), DMA address (0x514-0x51b).
pub const FW_CFG_PORT: u16 = 0x510;
/// Ports decoded.
pub const FW_CFG_PORT_LEN: u16 = 12;

/// `QEMU` signature key.
pub const FW_CFG_SIGNATURE: u16 = 0x00;
/// Interface ID key (bit 0 traditional, bit 1 DMA).
pub const FW_CFG_ID: u16 = 0x01;
/// RAM size (u64).
pub const FW_CFG_RAM_SIZE: u16 = 0x03;
/// Number of CPUs (u16).
pub const FW_CFG_NB_CPUS: u16 = 0x05;
/// Kernel load address (u32).
pub const FW_CFG_KERNEL_ADDR: u16 = 0x07;
/// Kernel size (u32).
pub const FW_CFG_KERNEL_SIZE: u16 = 0x08;
/// Initrd load address (u32).
pub const FW_CFG_INITRD_ADDR: u16 = 0x0a;
/// Initrd size (u32).
pub const FW_CFG_INITRD_SIZE: u16 = 0x0b;
/// Boot menu (u16, 0 = no menu).
pub const FW_CFG_BOOT_MENU: u16 = 0x0e;
/// Maximum CPUs (u16).
pub const FW_CFG_MAX_CPUS: u16 = 0x0f;
/// Kernel bytes (the protected-mode part of a bzImage).
pub const FW_CFG_KERNEL_DATA: u16 = 0x11;
/// Initrd bytes.
pub const FW_CFG_INITRD_DATA: u16 = 0x12;
/// Command line address (u32).
pub const FW_CFG_CMDLINE_ADDR: u16 = 0x13;
/// Command line size with its NUL (u32).
pub const FW_CFG_CMDLINE_SIZE: u16 = 0x14;
/// Command line bytes with the NUL.
pub const FW_CFG_CMDLINE_DATA: u16 = 0x15;
/// Setup (real-mode part of a bzImage) address (u32).
pub const FW_CFG_SETUP_ADDR: u16 = 0x16;
/// Setup size (u32).
pub const FW_CFG_SETUP_SIZE: u16 = 0x17;
/// Setup bytes.
pub const FW_CFG_SETUP_DATA: u16 = 0x18;
/// The file directory.
pub const FW_CFG_FILE_DIR: u16 = 0x19;
/// The first file's key.
pub const FW_CFG_FILE_FIRST: u16 = 0x20;
/// Most files (QEMU's default slot count is 0x20; Strata needs a handful).
pub const FW_CFG_FILE_SLOTS: u16 = 0x40;
/// Longest file name, without its NUL.
pub const FW_CFG_MAX_NAME: usize = 55;

/// Interface ID: traditional and DMA.
const ID_TRADITIONAL_DMA: u32 = 0x3;
/// What the DMA address ports read: "QEMU CFG", big-endian.
const DMA_SIGNATURE: [u8; 8] = *b"QEMU CFG";
/// DMA control bits.
const DMA_ERROR: u32 = 0x01;
const DMA_READ: u32 = 0x02;
const DMA_SKIP: u32 = 0x04;
const DMA_SELECT: u32 = 0x08;
const DMA_WRITE: u32 = 0x10;
/// Size of a DMA descriptor.
const DMA_DESCRIPTOR: u64 = 16;
/// Bytes per chunk when a transfer reads past an item's end (zeros).
const ZERO_CHUNK: usize = 4096;

/// Errors adding items.
#[derive(Debug, thiserror::Error)]
pub enum FwCfgError {
    /// The file name is empty, too long or has a NUL.
    #[error("invalid fw_cfg file name {0:?} (1 to 55 bytes, no NUL)")]
    InvalidName(String),
    /// Two files with the same name.
    #[error("fw_cfg file {0:?} added twice")]
    DuplicateFile(String),
    /// No file slot left.
    #[error("no fw_cfg file slot left for {0:?}")]
    TooManyFiles(String),
    /// An item larger than the interface's 32-bit sizes.
    #[error("fw_cfg item {0:?} of {1} bytes is larger than 4 GiB")]
    TooLarge(String, usize),
    /// The device could not be put on the port-I/O bus.
    #[error("unable to register the fw_cfg device")]
    Register(#[source] super::BusError),
}

/// The device.
pub struct FwCfg {
    mem: GuestMemoryMmap,
    items: BTreeMap<u16, Vec<u8>>,
    files: Vec<(String, u16)>,
    selected: u16,
    offset: usize,
    dma_high: u32,
}

impl FwCfg {
    /// A device over `mem` with the signature, the ID and an empty file directory.
    pub fn new(mem: GuestMemoryMmap) -> FwCfg {
        let mut items = BTreeMap::new();
        items.insert(FW_CFG_SIGNATURE, b"QEMU".to_vec());
        items.insert(FW_CFG_ID, ID_TRADITIONAL_DMA.to_le_bytes().to_vec());
        let mut cfg = FwCfg {
            mem,
            items,
            files: Vec::new(),
            selected: 0,
            offset: 0,
            dma_high: 0,
        };
        cfg.update_directory();
        cfg
    }

    /// Sets the item of a numeric `key` (a legacy key; files go through [`FwCfg::add_file`]).
    pub fn add_item(&mut self, key: u16, data: Vec<u8>) -> Result<(), FwCfgError> {
        if u32::try_from(data.len()).is_err() {
            return Err(FwCfgError::TooLarge(format!("{key:#x}"), data.len()));
        }
        self.items.insert(key, data);
        Ok(())
    }

    /// Adds the file `name`; returns its key.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        if name.is_empty() || name.len() > FW_CFG_MAX_NAME || name.contains('\0') {
            return Err(FwCfgError::InvalidName(name.to_string()));
        }
        if self.files.iter().any(|(n, _)| n == name) {
            return Err(FwCfgError::DuplicateFile(name.to_string()));
        }
        let index = u16::try_from(self.files.len()).unwrap_or(u16::MAX);
        if index >= FW_CFG_FILE_SLOTS {
            return Err(FwCfgError::TooManyFiles(name.to_string()));
        }
        if u32::try_from(data.len()).is_err() {
            return Err(FwCfgError::TooLarge(name.to_string(), data.len()));
        }
        let key = FW_CFG_FILE_FIRST + index;
        self.items.insert(key, data);
        self.files.push((name.to_string(), key));
        self.update_directory();
        Ok(key)
    }

    /// Rebuilds the directory: a big-endian count, then per file (sorted by name, as QEMU
    /// keeps them) size (BE u32), select (BE u16), reserved (u16) and a 56-byte name.
    fn update_directory(&mut self) {
        let mut files = self.files.clone();
        files.sort();
        let mut dir = (files.len() as u32).to_be_bytes().to_vec();
        for (name, key) in &files {
            let size = self.items.get(key).map_or(0, Vec::len) as u32;
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut n = [0u8; FW_CFG_MAX_NAME + 1];
            n[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&n);
        }
        self.items.insert(FW_CFG_FILE_DIR, dir);
    }

    fn select(&mut self, key: u16) {
        self.selected = key;
        self.offset = 0;
    }

    /// The next byte of the selected item (0 past its end or for an unknown key).
    fn read_byte(&mut self) -> u8 {
        let b = self
            .items
            .get(&self.selected)
            .and_then(|d| d.get(self.offset))
            .copied()
            .unwrap_or(0);
        self.offset = self.offset.saturating_add(1);
        b
    }

    /// Runs the DMA request whose descriptor is at `addr`.
    fn dma(&mut self, addr: u64) {
        let desc = GuestAddress(addr);
        let mut raw = [0u8; DMA_DESCRIPTOR as usize];
        // Any alignment, as in QEMU: SeaBIOS builds its descriptors on a 4-byte aligned stack.
        if self.mem.read_slice(&mut raw, desc).is_err() {
            // Outside RAM: answered with the error bit where that can be written.
            self.set_control(desc, DMA_ERROR);
            return;
        }
        let control = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let length = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
        let mut a = [0u8; 8];
        a.copy_from_slice(&raw[8..16]);
        let buffer = u64::from_be_bytes(a);
        if control & DMA_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let result = if control & DMA_WRITE != 0 {
            Err(())
        } else if control & DMA_READ != 0 {
            self.dma_read(buffer, length)
        } else if control & DMA_SKIP != 0 {
            self.offset = self.offset.saturating_add(length as usize);
            Ok(())
        } else {
            Ok(())
        };
        self.set_control(desc, if result.is_ok() { 0 } else { DMA_ERROR });
    }

    /// Copies `length` bytes of the selected item from the current offset to `buffer`.
    fn dma_read(&mut self, buffer: u64, length: u32) -> Result<(), ()> {
        let fits = usize::try_from(length).is_ok_and(|n| {
            buffer.checked_add(u64::from(length)).is_some()
                && self.mem.check_range(GuestAddress(buffer), n)
        });
        if !fits {
            return Err(());
        }
        let data = self
            .items
            .get(&self.selected)
            .map_or(&[][..], Vec::as_slice);
        let start = self.offset.min(data.len());
        let from_item = (data.len() - start).min(length as usize);
        let src = &data[start..start + from_item];
        self.mem
            .write_slice(src, GuestAddress(buffer))
            .map_err(|_| ())?;
        let zeros = [0u8; ZERO_CHUNK];
        let mut done = from_item;
        while done < length as usize {
            let n = (length as usize - done).min(ZERO_CHUNK);
            self.mem
                .write_slice(&zeros[..n], GuestAddress(buffer + done as u64))
                .map_err(|_| ())?;
            done += n;
        }
        self.offset = self.offset.saturating_add(length as usize);
        Ok(())
    }

    /// Writes the control word of the descriptor at `desc` (big-endian), if it is in RAM.
    fn set_control(&self, desc: GuestAddress, control: u32) {
        let _ = self.mem.write_slice(&control.to_be_bytes(), desc);
    }
}

impl PortDevice for FwCfg {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        match offset {
            // A string read (`rep insb`, which SeaBIOS uses without DMA) arrives as one
            // exit of `count` bytes: each byte is the item's next.
            1 => data.iter_mut().for_each(|b| *b = self.read_byte()),
            4..=11 => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = DMA_SIGNATURE
                        .get(usize::from(offset) - 4 + i)
                        .copied()
                        .unwrap_or(0);
                }
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmEvent> {
        match (offset, data.len()) {
            (0, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (4, 4) => self.dma_high = u32::from_be_bytes([data[0], data[1], data[2], data[3]]),
            (8, 4) => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let addr = u64::from(self.dma_high) << 32 | u64::from(low);
                self.dma_high = 0;
                self.dma(addr);
            }
            _ => {}
        }
        None
    }
}

pub mod content;
pub mod legacy;

#[cfg(test)]
mod tests;
