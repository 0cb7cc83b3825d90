//! SMBIOS for firmware through fw_cfg, as QEMU hands it over: `etc/smbios/smbios-anchor` (an
//! SMBIOS 3.0 entry point without its table address) and `etc/smbios/smbios-tables` (the
//! structures). SeaBIOS places both, adds its own type 0 (BIOS) structure and fixes the
//! checksums; without these files it builds a legacy set itself, zeroing a 32 KiB buffer and
//! asking fw_cfg about each of 256 types, ~0.3 s of emulated ring-0 work on a PVM host.

/// The anchor's fw_cfg file.
pub const ANCHOR_FILE: &str = "etc/smbios/smbios-anchor";
/// The structures' fw_cfg file.
pub const TABLES_FILE: &str = "etc/smbios/smbios-tables";

/// SMBIOS 3.0 entry point length.
const ENTRY_POINT_LEN: u8 = 0x18;
/// Type 1 (system information) length for SMBIOS 2.4+: header, 4 strings, UUID, wake-up
/// type, SKU and family strings.
const TYPE1_LEN: u8 = 0x1b;
/// Wake-up type "power switch".
const WAKE_UP_POWER_SWITCH: u8 = 6;
/// Handles, as QEMU numbers them (type << 8).
const TYPE1_HANDLE: u16 = 0x0100;
const TYPE127_HANDLE: u16 = 0x7f00;

/// Appends a structure: its `formatted` area (type, length, handle, fields) and its strings,
/// then the double NUL that ends it.
fn structure(out: &mut Vec<u8>, formatted: &[u8], strings: &[&str]) {
    out.extend_from_slice(formatted);
    for s in strings {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    if strings.is_empty() {
        out.push(0);
    }
    out.push(0);
}

/// The structures: type 1 (manufacturer and product "Strata") and the end-of-table type 127.
pub fn tables() -> Vec<u8> {
    let mut out = Vec::new();
    let mut t1 = vec![1, TYPE1_LEN];
    t1.extend_from_slice(&TYPE1_HANDLE.to_le_bytes());
    // Manufacturer 1, product 2, version 0, serial 0.
    t1.extend_from_slice(&[1, 2, 0, 0]);
    t1.extend_from_slice(&[0; 16]);
    t1.push(WAKE_UP_POWER_SWITCH);
    // SKU 0, family 1 (the manufacturer's string).
    t1.extend_from_slice(&[0, 1]);
    structure(&mut out, &t1, &["Strata", "Strata VM"]);
    let mut end = vec![127, 4];
    end.extend_from_slice(&TYPE127_HANDLE.to_le_bytes());
    structure(&mut out, &end, &[]);
    out
}

/// The SMBIOS 3.0 entry point for `tables_len` bytes of structures; the firmware fills in
/// the address and the checksum.
pub fn anchor(tables_len: usize) -> Vec<u8> {
    let mut ep = b"_SM3_".to_vec();
    ep.push(0); // checksum
    ep.extend_from_slice(&[ENTRY_POINT_LEN, 3, 0, 0, 1, 0]);
    ep.extend_from_slice(&u32::try_from(tables_len).unwrap_or(u32::MAX).to_le_bytes());
    ep.extend_from_slice(&0u64.to_le_bytes());
    ep
}

/// Both fw_cfg files, (name, contents).
pub fn files() -> Vec<(String, Vec<u8>)> {
    let tables = tables();
    vec![
        (ANCHOR_FILE.to_string(), anchor(tables.len())),
        (TABLES_FILE.to_string(), tables),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the structures as SeaBIOS's `smbios_next` does: (type, length, strings).
    fn walk(t: &[u8]) -> Vec<(u8, u8, Vec<String>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + 4 <= t.len() {
            let (ty, len) = (t[at], t[at + 1]);
            let mut p = at + usize::from(len);
            let mut strings = Vec::new();
            while t[p] != 0 {
                let end = p + t[p..].iter().position(|&b| b == 0).unwrap();
                strings.push(String::from_utf8(t[p..end].to_vec()).unwrap());
                p = end + 1;
            }
            if strings.is_empty() {
                p += 1;
            }
            out.push((ty, len, strings));
            at = p + 1;
        }
        assert_eq!(at, t.len(), "structures end exactly at the table's end");
        out
    }

    #[test]
    fn test_smbios_tables_type1_then_end_with_double_nul_terminators() {
        let t = tables();

        let s = walk(&t);

        assert_eq!(
            s,
            [
                (
                    1,
                    TYPE1_LEN,
                    vec!["Strata".to_string(), "Strata VM".to_string()]
                ),
                (127, 4, vec![])
            ]
        );
        assert_eq!(&t[4..6], &[1, 2], "manufacturer and product string numbers");
    }

    #[test]
    fn test_smbios_anchor_is_30_entry_point_sized_for_the_tables() {
        let files = files();

        let (anchor, tables) = (&files[0].1, &files[1].1);
        assert_eq!(files[0].0, ANCHOR_FILE);
        assert_eq!(files[1].0, TABLES_FILE);
        assert_eq!(anchor.len(), usize::from(ENTRY_POINT_LEN));
        assert_eq!(&anchor[..5], b"_SM3_");
        assert_eq!(anchor[6], ENTRY_POINT_LEN);
        assert_eq!((anchor[7], anchor[8]), (3, 0));
        let max = u32::from_le_bytes(anchor[12..16].try_into().unwrap());
        assert_eq!(max as usize, tables.len());
    }
}
