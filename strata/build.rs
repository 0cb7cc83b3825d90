//! Links the `strata` binary with strata/hot-text.ld, which gathers the functions a VM's
//! start-up and run execute at the start of the code, so that a running VMM's resident text is
//! those pages and not every page fault-around maps next to scattered functions
//! (docs/decisions/0024; regenerate the script with scripts/hot-text.py).

fn main() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hot-text.ld");
    println!("cargo:rerun-if-changed=hot-text.ld");
    println!("cargo:rustc-link-arg-bin=strata=-Wl,-T,{script}");
    println!("cargo:rustc-link-arg-bin=strata=-Wl,-z,pack-relative-relocs");
}
