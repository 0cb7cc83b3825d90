//! The text descriptor: create type, extents, CIDs and the disk database (`ddb.*`).

use crate::{Error, ErrorKind, Result};

/// Largest descriptor accepted, in bytes.
pub const MAX_DESCRIPTOR_BYTES: usize = 1 << 20;
/// Most extents accepted in one descriptor.
pub const MAX_EXTENTS: usize = 1024;
/// The CID value meaning "no parent".
pub const NO_PARENT: u32 = 0xffff_ffff;

/// How an extent may be accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read and write.
    ReadWrite,
    /// Read only.
    ReadOnly,
    /// Neither read nor write.
    NoAccess,
}

/// The kind of data an extent line describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentType {
    /// A plain file (or a region of one) holding the data.
    Flat,
    /// A hosted sparse extent ("KDMV").
    Sparse,
    /// No file: reads as zeroes.
    Zero,
    /// A VMFS flat extent, handled like [`ExtentType::Flat`].
    Vmfs,
}

/// One extent line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentLine {
    /// Access mode.
    pub access: Access,
    /// Size in sectors.
    pub sectors: u64,
    /// Extent type.
    pub kind: ExtentType,
    /// File name as written (absent for ZERO extents).
    pub file: Option<String>,
    /// Start of the data in the file, in sectors (flat extents).
    pub offset: u64,
}

/// The disk geometry from `ddb.geometry.*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u32,
    /// Heads.
    pub heads: u32,
    /// Sectors per track.
    pub sectors: u32,
}

/// A parsed descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// `version=`.
    pub version: u32,
    /// Content ID.
    pub cid: u32,
    /// Parent content ID ([`NO_PARENT`] when there is none).
    pub parent_cid: u32,
    /// `createType=`, if present.
    pub create_type: Option<String>,
    /// Extent lines in order.
    pub extents: Vec<ExtentLine>,
    /// Geometry, if all three `ddb.geometry.*` keys are present.
    pub geometry: Option<Geometry>,
    /// `ddb.adapterType`, if present.
    pub adapter_type: Option<String>,
}

impl Default for Descriptor {
    /// An empty descriptor: version 1, no parent, no extents.
    fn default() -> Descriptor {
        Descriptor {
            version: 1,
            cid: 0,
            parent_cid: NO_PARENT,
            create_type: None,
            extents: Vec::new(),
            geometry: None,
            adapter_type: None,
        }
    }
}

fn invalid(line_no: usize, why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidFormat,
        format!("descriptor line {line_no}: {why}"),
    )
}

/// Splits `key = "value"` into key and unquoted value.
fn key_value(line: &str) -> Option<(&str, &str)> {
    let (k, v) = line.split_once('=')?;
    let v = v.trim();
    let v = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v);
    Some((k.trim(), v))
}

fn parse_access(word: &str) -> Option<Access> {
    match word {
        "RW" => Some(Access::ReadWrite),
        "RDONLY" => Some(Access::ReadOnly),
        "NOACCESS" => Some(Access::NoAccess),
        _ => None,
    }
}

fn parse_hex_cid(v: &str, line_no: usize) -> Result<u32> {
    u32::from_str_radix(v, 16).map_err(|_| invalid(line_no, format!("bad CID '{v}'")))
}

/// Splits off the first whitespace-separated word; returns it and the rest, trimmed.
fn next_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let (word, rest) = s.split_once(char::is_whitespace).unwrap_or((s, ""));
    (word, rest.trim_start())
}

/// Parses one extent line (`RW 2048 SPARSE "name.vmdk" [offset]`).
fn parse_extent(line: &str, line_no: usize) -> Result<ExtentLine> {
    let (access_word, rest) = next_word(line);
    let access = parse_access(access_word).ok_or_else(|| invalid(line_no, "bad extent access"))?;
    let (size_word, rest) = next_word(rest);
    let sectors: u64 = size_word
        .parse()
        .map_err(|_| invalid(line_no, format!("bad extent size '{size_word}'")))?;
    let (type_word, rest) = next_word(rest);
    let kind = match type_word {
        "FLAT" => ExtentType::Flat,
        "SPARSE" => ExtentType::Sparse,
        "ZERO" => ExtentType::Zero,
        "VMFS" => ExtentType::Vmfs,
        "" => return Err(invalid(line_no, "missing extent type")),
        other => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("descriptor line {line_no}: extent type {other} is not supported"),
            ))
        }
    };
    let rest = rest.trim();
    let (file, rest) = if kind == ExtentType::Zero {
        (None, rest)
    } else {
        let quoted = rest
            .strip_prefix('"')
            .ok_or_else(|| invalid(line_no, "extent file name is not quoted"))?;
        let (name, after) = quoted
            .split_once('"')
            .ok_or_else(|| invalid(line_no, "unterminated extent file name"))?;
        if name.is_empty() {
            return Err(invalid(line_no, "empty extent file name"));
        }
        (Some(name.to_string()), after.trim())
    };
    let offset = if rest.is_empty() {
        0
    } else {
        rest.parse()
            .map_err(|_| invalid(line_no, format!("bad extent offset '{rest}'")))?
    };
    Ok(ExtentLine {
        access,
        sectors,
        kind,
        file,
        offset,
    })
}

impl Descriptor {
    /// Parses descriptor text. An embedded descriptor ends at its first NUL byte.
    pub fn parse(bytes: &[u8]) -> Result<Descriptor> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        if end > MAX_DESCRIPTOR_BYTES {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("descriptor of {end} bytes exceeds {MAX_DESCRIPTOR_BYTES}"),
            ));
        }
        let text = std::str::from_utf8(&bytes[..end])
            .map_err(|e| Error::new(ErrorKind::InvalidFormat, format!("descriptor: {e}")))?;
        let mut d = Descriptor::default();
        let mut geo = [None::<u32>; 3];
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or("");
            if parse_access(first).is_some() {
                if d.extents.len() >= MAX_EXTENTS {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!("more than {MAX_EXTENTS} extents"),
                    ));
                }
                d.extents.push(parse_extent(line, line_no)?);
                continue;
            }
            let Some((key, value)) = key_value(line) else {
                return Err(invalid(line_no, "neither an extent nor key=value"));
            };
            d.apply(key, value, line_no, &mut geo)?;
        }
        if let [Some(cylinders), Some(heads), Some(sectors)] = geo {
            d.geometry = Some(Geometry {
                cylinders,
                heads,
                sectors,
            });
        }
        Ok(d)
    }

    fn apply(
        &mut self,
        key: &str,
        value: &str,
        line_no: usize,
        geo: &mut [Option<u32>; 3],
    ) -> Result<()> {
        let number = |v: &str| -> Result<u32> {
            v.parse()
                .map_err(|_| invalid(line_no, format!("{key}: bad number '{v}'")))
        };
        match key {
            "version" => {
                self.version = number(value)?;
                if !(1..=3).contains(&self.version) {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!("descriptor version {} is not supported", self.version),
                    ));
                }
            }
            "CID" => self.cid = parse_hex_cid(value, line_no)?,
            "parentCID" => self.parent_cid = parse_hex_cid(value, line_no)?,
            "createType" => self.create_type = Some(value.to_string()),
            "ddb.geometry.cylinders" => geo[0] = Some(number(value)?),
            "ddb.geometry.heads" => geo[1] = Some(number(value)?),
            "ddb.geometry.sectors" => geo[2] = Some(number(value)?),
            "ddb.adapterType" => self.adapter_type = Some(value.to_string()),
            _ => {}
        }
        Ok(())
    }

    /// Total size of all extents in sectors (`OutOfBounds`-free: overflow is `Corrupt`).
    pub fn total_sectors(&self) -> Result<u64> {
        self.extents.iter().try_fold(0u64, |acc, e| {
            acc.checked_add(e.sectors)
                .ok_or_else(|| Error::new(ErrorKind::Corrupt, "extent sizes overflow"))
        })
    }

    /// Renders a descriptor for a single-extent sparse image (monolithicSparse or
    /// streamOptimized) named `file`.
    pub fn render_sparse(
        create_type: &str,
        cid: u32,
        sectors: u64,
        file: &str,
        adapter: &str,
    ) -> String {
        let geo = geometry_for(sectors);
        format!(
            "# Disk DescriptorFile\nversion=1\nCID={cid:08x}\nparentCID=ffffffff\n\
             createType=\"{create_type}\"\n\n# Extent description\n\
             RW {sectors} SPARSE \"{file}\"\n\n# The Disk Data Base\n#DDB\n\n\
             ddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"{}\"\n\
             ddb.geometry.heads = \"{}\"\nddb.geometry.sectors = \"{}\"\n\
             ddb.adapterType = \"{adapter}\"\n",
            geo.cylinders, geo.heads, geo.sectors
        )
    }
}

/// The conventional IDE-style geometry for a disk of `sectors` sectors.
pub fn geometry_for(sectors: u64) -> Geometry {
    let cylinders = (sectors / (16 * 63)).clamp(1, 16383);
    Geometry {
        cylinders: cylinders as u32,
        heads: 16,
        sectors: 63,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# Disk DescriptorFile\nversion=1\nCID=12ab34cd\nparentCID=ffffffff\n\
createType=\"twoGbMaxExtentFlat\"\n\n# Extent description\nRW 4192256 FLAT \"t-f001.vmdk\" 0\n\
RDONLY 2048 FLAT \"with space.vmdk\" 16\nNOACCESS 100 ZERO\n\n#DDB\n\
ddb.geometry.cylinders = \"4161\"\nddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\n\
ddb.adapterType = \"ide\"\n";

    #[test]
    fn test_descriptor_sample_parses_all_fields() {
        let d = Descriptor::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(d.cid, 0x12ab34cd);
        assert_eq!(d.parent_cid, NO_PARENT);
        assert_eq!(d.create_type.as_deref(), Some("twoGbMaxExtentFlat"));
        assert_eq!(d.extents.len(), 3);
        assert_eq!(d.extents[1].file.as_deref(), Some("with space.vmdk"));
        assert_eq!(d.extents[1].offset, 16);
        assert_eq!(d.extents[1].access, Access::ReadOnly);
        assert_eq!(d.extents[2].kind, ExtentType::Zero);
        assert_eq!(d.extents[2].access, Access::NoAccess);
        assert_eq!(
            d.geometry,
            Some(Geometry {
                cylinders: 4161,
                heads: 16,
                sectors: 63
            })
        );
        assert_eq!(d.total_sectors().unwrap(), 4192256 + 2048 + 100);
    }

    #[test]
    fn test_descriptor_embedded_stops_at_nul() {
        let mut bytes = b"createType=\"monolithicSparse\"\nRW 8 SPARSE \"a.vmdk\"\n".to_vec();
        bytes.extend_from_slice(&[0, 0, 0xff, 0xfe]);
        let d = Descriptor::parse(&bytes).unwrap();
        assert_eq!(d.extents.len(), 1);
    }

    #[test]
    fn test_descriptor_extra_spaces_and_tabs_accepted() {
        let d = Descriptor::parse(b"RW\t 16   FLAT  \"a b.img\"   2\r\n").unwrap();
        assert_eq!(d.extents[0].sectors, 16);
        assert_eq!(d.extents[0].file.as_deref(), Some("a b.img"));
        assert_eq!(d.extents[0].offset, 2);
    }

    #[test]
    fn test_descriptor_unknown_extent_type_unsupported() {
        let err = Descriptor::parse(b"RW 8 VMFSRDM \"dev\"\n").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
    }

    #[test]
    fn test_descriptor_empty_has_no_parent() {
        let d = Descriptor::parse(&[0u8; 512]).unwrap();
        assert_eq!(d.parent_cid, NO_PARENT);
        assert_eq!(Descriptor::default().parent_cid, NO_PARENT);
    }

    #[test]
    fn test_descriptor_garbage_line_invalid() {
        let err = Descriptor::parse(b"hello world\n").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidFormat);
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn test_descriptor_unquoted_name_invalid() {
        let err = Descriptor::parse(b"RW 8 FLAT a.img 0\n").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidFormat);
    }

    #[test]
    fn test_descriptor_render_roundtrips() {
        let text = Descriptor::render_sparse("streamOptimized", 0x1234, 8192, "x.vmdk", "ide");
        let d = Descriptor::parse(text.as_bytes()).unwrap();
        assert_eq!(d.cid, 0x1234);
        assert_eq!(d.create_type.as_deref(), Some("streamOptimized"));
        assert_eq!(d.extents[0].sectors, 8192);
        assert_eq!(d.extents[0].kind, ExtentType::Sparse);
    }
}
