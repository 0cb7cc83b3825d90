//! The state file: a fixed 32-byte header (magic, format version, body length, CRC-32 of the
//! body) and a JSON body that names every part (docs/decisions/0013).
//!
//! ```text
//! 0   8  magic "STRATASN"
//! 8   4  format version, little-endian (FORMAT_VERSION)
//! 12  4  reserved, zero
//! 16  8  body length in bytes, little-endian
//! 24  4  CRC-32 (IEEE) of the body, little-endian
//! 28  4  reserved, zero
//! 32  .. body: the JSON of [`StateFile`]
//! ```
//!
//! [`parse`] checks, in order, the length, the magic, the version, the body length and the
//! checksum before it deserializes anything; every failure is one line naming what is wrong.
//! This parser is what `vmm/fuzz` fuzzes.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

use super::persist::DeviceState;
use crate::config::VmConfig;
use crate::kvm::persist::{KvmVmState, VcpuState};

/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "state.json";
/// The memory file's name in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// What a state file starts with.
pub const MAGIC: &[u8; 8] = b"STRATASN";
/// The layout this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Header size.
pub const HEADER_LEN: usize = 32;
/// The largest body accepted (a state file is kilobytes per vCPU and device).
pub const MAX_BODY: u64 = 64 << 20;

/// Why a state file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// Shorter than the header.
    #[error("truncated state file: {0} bytes, shorter than the {HEADER_LEN}-byte header")]
    TruncatedHeader(usize),
    /// Not a Strata state file.
    #[error("not a Strata snapshot state file (bad magic)")]
    Magic,
    /// Written by an incompatible format version.
    #[error(
        "unsupported snapshot format version {found} (this Strata reads version {FORMAT_VERSION})"
    )]
    Version {
        /// The file's version.
        found: u32,
    },
    /// The header claims a body larger than any state file.
    #[error("corrupted state file: body length {0} is over the {MAX_BODY}-byte limit")]
    BodyTooLarge(u64),
    /// Shorter than the header says.
    #[error("truncated state file: the header announces a {want}-byte body, {have} bytes follow")]
    TruncatedBody {
        /// Announced.
        want: u64,
        /// Present.
        have: u64,
    },
    /// Longer than the header says.
    #[error("corrupted state file: {0} bytes after the announced body")]
    TrailingBytes(u64),
    /// The checksum does not match.
    #[error(
        "corrupted state file: checksum {found:#010x} does not match the body's {computed:#010x}"
    )]
    Checksum {
        /// In the header.
        found: u32,
        /// Of the body.
        computed: u32,
    },
    /// The body is not the JSON of a state.
    #[error("invalid state file body: {0}")]
    Body(String),
}

/// Where guest memory is in the memory file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryRegion {
    /// Guest physical address.
    pub guest_addr: u64,
    /// Bytes.
    pub size: u64,
    /// Offset in the memory file.
    pub file_offset: u64,
}

/// The memory file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryState {
    /// Its name in the snapshot directory.
    pub file: String,
    /// Its size: the sum of the regions.
    pub size: u64,
    /// The regions, in guest address order.
    pub regions: Vec<MemoryRegion>,
}

/// A disk the VM had, flushed before the snapshot was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskRecord {
    /// The device's ID (`disk0`...).
    pub id: String,
    /// The image.
    pub path: String,
    /// Its format.
    pub format: String,
    /// Its virtual size in bytes.
    pub size: u64,
}

/// Everything a snapshot holds besides guest memory.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// The Strata that wrote it (informative).
    pub strata_version: String,
    /// The VM's configuration.
    pub config: VmConfig,
    /// The memory file's layout.
    pub memory: MemoryState,
    /// The in-kernel interrupt controllers, PIT and clock.
    pub vm: KvmVmState,
    /// Every vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// Every device, legacy and virtio.
    pub devices: Vec<DeviceState>,
    /// The disks, with their sizes when the snapshot was taken.
    pub disks: Vec<DiskRecord>,
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The state file's bytes.
pub fn encode(state: &StateFile) -> Result<Vec<u8>, FormatError> {
    let body = serde_json::to_vec(state).map_err(|e| FormatError::Body(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32(&body).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// Checks the header and returns the body (no deserialization).
pub fn check(bytes: &[u8]) -> Result<&[u8], FormatError> {
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::TruncatedHeader(bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err(FormatError::Magic);
    }
    let version = le32(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::Version { found: version });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[16..24]);
    let want = u64::from_le_bytes(len);
    if want > MAX_BODY {
        return Err(FormatError::BodyTooLarge(want));
    }
    let have = (bytes.len() - HEADER_LEN) as u64;
    if have < want {
        return Err(FormatError::TruncatedBody { want, have });
    }
    if have > want {
        return Err(FormatError::TrailingBytes(have - want));
    }
    let body = &bytes[HEADER_LEN..];
    let found = le32(bytes, 24);
    let computed = crc32(body);
    if found != computed {
        return Err(FormatError::Checksum { found, computed });
    }
    Ok(body)
}

/// Parses a state file: header, checksum, then the body.
pub fn parse(bytes: &[u8]) -> Result<StateFile, FormatError> {
    let body = check(bytes)?;
    let state: StateFile =
        serde_json::from_slice(body).map_err(|e| FormatError::Body(e.to_string()))?;
    validate(&state)?;
    Ok(state)
}

/// What must hold between the parts of a well-formed state.
fn validate(state: &StateFile) -> Result<(), FormatError> {
    let bad = |m: String| Err(FormatError::Body(m));
    let vcpus = usize::from(state.config.cpus.boot_vcpus);
    if state.vcpus.len() != vcpus {
        return bad(format!(
            "{} vCPU states for a configuration of {vcpus} vCPUs",
            state.vcpus.len()
        ));
    }
    for (i, v) in state.vcpus.iter().enumerate() {
        if usize::from(v.id) != i {
            return bad(format!("vCPU state {i} is for vCPU {}", v.id));
        }
    }
    let mut end = 0u64;
    for r in &state.memory.regions {
        if r.file_offset != end {
            return bad(format!(
                "memory region at {:#x} is at file offset {:#x}, expected {end:#x}",
                r.guest_addr, r.file_offset
            ));
        }
        end = match end.checked_add(r.size) {
            Some(e) => e,
            None => return bad("memory regions overflow".into()),
        };
    }
    if end != state.memory.size || end != state.config.memory.size {
        return bad(format!(
            "memory regions cover {end} bytes; the memory file is {} and the configuration {}",
            state.memory.size, state.config.memory.size
        ));
    }
    if state.memory.file.contains('/') || state.memory.file.is_empty() {
        return bad(format!(
            "memory file name {:?} is not a plain name",
            state.memory.file
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_crc32_known_vector() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32(body).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn test_check_well_framed_returns_body() {
        let file = framed(b"{}");

        assert_eq!(check(&file), Ok(&b"{}"[..]));
    }

    #[test]
    fn test_check_bad_inputs_one_line_errors() {
        let good = framed(b"{\"a\":1}");
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let mut version = good.clone();
        version[8] = 9;
        let mut huge = good.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());

        let trailing = [&good[..], b"x"].concat();
        let cases = [
            (check(&good[..10]), "truncated state file: 10 bytes"),
            (
                check(b"NOTSTRATA......................................"),
                "bad magic",
            ),
            (check(&version), "unsupported snapshot format version 9"),
            (
                check(&good[..good.len() - 2]),
                "truncated state file: the header announces",
            ),
            (check(&trailing), "1 bytes after"),
            (check(&flipped), "checksum"),
            (check(&huge), "over the"),
        ];

        for (result, want) in cases {
            let e = result.unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn test_parse_valid_frame_with_wrong_body_names_the_field() {
        let e = parse(&framed(b"{\"strata_version\":1}"))
            .err()
            .expect("an error");

        assert!(matches!(e, FormatError::Body(_)), "{e}");
        assert!(!e.to_string().contains('\n'));
    }
}
