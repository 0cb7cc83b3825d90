//! Replays the state-file fuzz target's seeds (vmm/fuzz/seeds/state_file) through the parser:
//! the valid snapshot parses, every damaged one gets its one-line error, nothing panics. A
//! crash `cargo fuzz` finds goes into that folder with a name saying what it is.

use std::path::Path;

use vmm::snapshot::format::{parse, FormatError};
use vmm::virtio::transport::pci::persist::PciState;

/// What each seed must give: Ok, or an error whose message contains the text.
fn expectation(name: &str) -> Option<&'static str> {
    match name {
        "valid-counter" | "valid-pci" => None,
        "truncated-header" => Some("truncated state file"),
        "bad-magic" => Some("bad magic"),
        "version-2" => Some("unsupported snapshot format version 2"),
        "huge-length" => Some("over the"),
        "bad-crc" => Some("checksum"),
        "truncated-body" => Some("truncated state file"),
        "not-json" | "deep-nesting" | "empty-object" => Some("invalid state file body"),
        "wrong-vcpu-count" => Some("2 vCPUs"),
        // A crash found later: it must not panic, whatever it answers.
        _ => Some(""),
    }
}

#[test]
fn test_state_file_fuzz_seeds_parse_or_fail_with_one_line() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/state_file");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("seed folder") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        let bytes = std::fs::read(&path).expect("seed");

        let result = parse(&bytes);

        match (expectation(name), result) {
            (None, Ok(state)) => {
                assert_eq!(state.vcpus.len(), 1, "{name}");
                for d in state
                    .devices
                    .iter()
                    .filter(|d| d.kind.starts_with("virtio-pci/"))
                {
                    let pci: Result<PciState, _> = serde_json::from_value(d.state.clone());
                    assert!(pci.is_ok(), "{name}: {}: {pci:?}", d.id);
                }
            }
            (None, Err(e)) => panic!("{name}: {e}"),
            (Some(want), Err(e)) => {
                let msg = e.to_string();
                assert!(msg.contains(want), "{name}: {msg}");
                assert!(!msg.contains('\n'), "{name}: {msg}");
                let _: &FormatError = &e;
            }
            (Some(want), Ok(_)) => assert!(want.is_empty(), "{name} parsed"),
        }
        seen += 1;
    }
    assert!(seen >= 12, "only {seen} seeds in {}", dir.display());
}
