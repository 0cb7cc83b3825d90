//! Paths of the test guests built by this crate's build script.
//!
//! The guests are tiny GNU-assembler programs (see `asm/` and README.md)
//! that print what their boot protocol handed them on COM1 and exit
//! through the debug-exit port 0xf4.
#![deny(missing_docs)]

use std::path::Path;
use std::sync::OnceLock;

macro_rules! guest_path {
    ($file:literal) => {
        Path::new(concat!(env!("OUT_DIR"), "/", $file))
    };
}

/// The PVH guest: an ELF64 image with a XEN_ELFNOTE_PHYS32_ENTRY note.
pub fn pvh() -> &'static Path {
    guest_path!("pvh.elf")
}

/// Every guest as `(name, path)`; the names are those `guest-path` accepts.
pub fn all() -> &'static [(&'static str, &'static Path)] {
    static ALL: OnceLock<Vec<(&'static str, &'static Path)>> = OnceLock::new();
    ALL.get_or_init(|| vec![("pvh", pvh())])
}

/// The path of the guest called `name`, if there is one.
pub fn by_name(name: &str) -> Option<&'static Path> {
    all().iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_all_built_guests_exist() {
        // Arrange
        let guests = all();

        // Act
        let missing: Vec<_> = guests.iter().filter(|(_, p)| !p.is_file()).collect();

        // Assert
        assert!(!guests.is_empty());
        assert!(missing.is_empty(), "missing guests: {missing:?}");
    }

    #[test]
    fn test_by_name_unknown_returns_none() {
        assert_eq!(by_name("no-such-guest"), None);
        assert_eq!(by_name("pvh"), Some(pvh()));
    }
}
