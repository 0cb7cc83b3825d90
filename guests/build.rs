//! Assembles the test guests in `asm/` with the host's GNU toolchain
//! (`gcc` as the preprocessing assembler driver, `ld`, `objcopy`) into
//! `OUT_DIR`, and builds the Rust guests in `rust/`: the `kit` library
//! and each guest compiled by the host's `rustc` (no_std, panic=abort,
//! static relocation model) and linked with `asm/kit.S` by `ld`.
//! Override the tools with the `GUEST_CC`, `GUEST_LD` and `GUEST_OBJCOPY`
//! environment variables.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How the linked ELF of a guest becomes the final image.
#[derive(Clone, Copy)]
enum Output {
    /// The ELF itself is the image.
    Elf,
    /// `objcopy -O binary` of the ELF.
    Flat,
    /// A bzImage: the real-mode setup assembled from this source, then the
    /// flat protected-mode kernel; setup_sects, syssize and init_size are
    /// patched into the setup header.
    BzImage(&'static str),
}

/// One guest image built from one assembler source.
struct Guest {
    /// Output file name in `OUT_DIR`.
    file: &'static str,
    /// Source file in `asm/`.
    source: &'static str,
    /// Extra preprocessor definitions.
    defines: &'static [&'static str],
    /// Build a 32-bit object and ELF32 image (else ELF64).
    elf32: bool,
    /// Linker script in `asm/`.
    script: &'static str,
    output: Output,
}

const GUESTS: &[Guest] = &[
    Guest {
        file: "density.elf",
        source: "density.S",
        defines: &[],
        elf32: false,
        script: "elf.ld",
        output: Output::Elf,
    },
    Guest {
        file: "density-stay.elf",
        source: "density.S",
        defines: &["STAY"],
        elf32: false,
        script: "elf.ld",
        output: Output::Elf,
    },
    Guest {
        file: "pvh.elf",
        source: "pvh.S",
        defines: &[],
        elf32: false,
        script: "elf.ld",
        output: Output::Elf,
    },
    Guest {
        file: "multiboot1-elf.elf",
        source: "multiboot.S",
        defines: &[],
        elf32: true,
        script: "elf.ld",
        output: Output::Elf,
    },
    Guest {
        file: "multiboot1-aout.bin",
        source: "multiboot.S",
        defines: &["AOUT"],
        elf32: true,
        script: "elf.ld",
        output: Output::Flat,
    },
    Guest {
        file: "multiboot2.elf",
        source: "multiboot.S",
        defines: &["MB2"],
        elf32: true,
        script: "elf.ld",
        output: Output::Elf,
    },
    Guest {
        file: "linux-vmlinux.elf",
        source: "linux.S",
        defines: &[],
        elf32: false,
        script: "elf.ld",
        output: Output::Elf,
    },
    Guest {
        file: "linux-bzImage",
        source: "linux.S",
        defines: &[],
        elf32: false,
        script: "elf.ld",
        output: Output::BzImage("setup.S"),
    },
    Guest {
        file: "ring3.elf",
        source: "ring3.S",
        defines: &[],
        elf32: false,
        script: "elf.ld",
        output: Output::Elf,
    },
    Guest {
        file: "smp.elf",
        source: "smp.S",
        defines: &[],
        elf32: false,
        script: "elf.ld",
        output: Output::Elf,
    },
];

/// The Rust guests: `rust/<stem>.rs` becomes `<stem>.elf`.
const RUST_GUESTS: &[&str] = &["virtio", "counter", "hostile", "net", "acpi"];

fn tool(var: &str, default: &str) -> String {
    println!("cargo:rerun-if-env-changed={var}");
    env::var(var).unwrap_or_else(|_| default.to_string())
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e} (is the GNU toolchain installed?)"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

/// The standard IEEE CRC-32 table (reflected polynomial 0xedb88320) as
/// GNU as source, labelled `crc32_table`.
fn crc32_table_source() -> String {
    let mut out = String::from("crc32_table:\n");
    for row in 0..32u32 {
        let words: Vec<String> = (0..8u32)
            .map(|col| {
                let mut c = row * 8 + col;
                for _ in 0..8 {
                    c = if c & 1 != 0 {
                        0xedb8_8320 ^ (c >> 1)
                    } else {
                        c >> 1
                    };
                }
                format!("0x{c:08x}")
            })
            .collect();
        out.push_str(&format!("\t.long {}\n", words.join(", ")));
    }
    out
}

/// Assembles `source` and links it with `script`; returns the linked ELF.
fn assemble_and_link(
    source: &str,
    defines: &[&str],
    elf32: bool,
    script: &str,
    stem: &str,
    asm: &Path,
    out: &Path,
) -> Result<PathBuf, String> {
    let obj = out.join(format!("{stem}.o"));
    let elf = out.join(format!("{stem}.linked.elf"));
    let mut cc = Command::new(tool("GUEST_CC", "gcc"));
    cc.arg("-c")
        .arg(if elf32 { "-m32" } else { "-m64" })
        .arg("-nostdinc")
        .arg("-I")
        .arg(asm)
        .arg("-I")
        .arg(out);
    for d in defines {
        cc.arg(format!("-D{d}"));
    }
    run(cc.arg(asm.join(source)).arg("-o").arg(&obj))?;
    let mut ld = Command::new(tool("GUEST_LD", "ld"));
    ld.arg("-m")
        .arg(if elf32 { "elf_i386" } else { "elf_x86_64" })
        .args([
            "-nostdlib",
            "-static",
            "--build-id=none",
            "-z",
            "max-page-size=0x1000",
        ])
        .arg("--no-warn-rwx-segments")
        .arg("-T")
        .arg(asm.join(script))
        .arg("-o")
        .arg(&elf)
        .arg(&obj);
    run(&mut ld)?;
    Ok(elf)
}

/// `objcopy -O binary` of `elf` into `flat`, read back.
fn flatten(elf: &Path, flat: &Path) -> Result<Vec<u8>, String> {
    let mut oc = Command::new(tool("GUEST_OBJCOPY", "objcopy"));
    run(oc.args(["-O", "binary"]).arg(elf).arg(flat))?;
    fs::read(flat).map_err(|e| format!("read {}: {e}", flat.display()))
}

/// Joins the real-mode setup and the protected-mode kernel into a bzImage,
/// patching the setup header like Linux's arch/x86/boot/tools/build.
fn bzimage(mut setup: Vec<u8>, kernel: &[u8]) -> Result<Vec<u8>, String> {
    setup.resize(setup.len().div_ceil(512) * 512, 0);
    let sects = setup.len() / 512 - 1;
    if setup.len() < 0x268 || sects > 255 || &setup[0x202..0x206] != b"HdrS" {
        return Err("setup.S: bad setup image".into());
    }
    let syssize = u32::try_from(kernel.len().div_ceil(16)).map_err(|e| e.to_string())?;
    let init_size = u32::try_from(kernel.len().div_ceil(4096) * 4096).map_err(|e| e.to_string())?;
    setup[0x1f1] = sects as u8;
    setup[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
    setup[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
    setup.extend_from_slice(kernel);
    Ok(setup)
}

/// rustc with the flags every Rust guest crate gets: host target (the
/// only one installed), no_std code that runs bare in ring 3; source
/// paths (in panic messages) relative to `guests/`.
fn rustc(rust: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string()));
    cmd.args(["--edition", "2021", "--target", "x86_64-unknown-linux-gnu"])
        .args(["-C", "panic=abort", "-C", "relocation-model=static"])
        .args(["-C", "opt-level=2", "-C", "debuginfo=0"])
        .arg(format!("--remap-path-prefix={}=rust", rust.display()))
        .arg("-L")
        .arg(out);
    cmd
}

/// Runs rustc, passing its warnings on to cargo.
fn run_rustc(cmd: &mut Command) -> Result<(), String> {
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("{cmd:?} failed: {}\n{stderr}", output.status));
    }
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        println!("cargo:warning={line}");
    }
    Ok(())
}

/// Builds the kit rlib, then each Rust guest as a static library linked
/// with the start code `kit_obj` into `<stem>.elf`.
fn build_rust_guests(rust: &Path, asm: &Path, out: &Path) -> Result<(), String> {
    let kit_obj = out.join("kit.o");
    let mut cc = Command::new(tool("GUEST_CC", "gcc"));
    cc.args(["-c", "-m64", "-nostdinc", "-I"])
        .arg(asm)
        .arg("-I")
        .arg(out);
    run(cc.arg(asm.join("kit.S")).arg("-o").arg(&kit_obj))?;
    let kit_rlib = out.join("libkit.rlib");
    run_rustc(
        rustc(rust, out)
            .args(["--crate-type", "rlib", "--crate-name", "kit"])
            .arg(rust.join("kit/lib.rs"))
            .arg("-o")
            .arg(&kit_rlib),
    )?;
    for stem in RUST_GUESTS {
        let lib = out.join(format!("lib{stem}_guest.a"));
        run_rustc(
            rustc(rust, out)
                .args(["--crate-type", "staticlib", "--crate-name"])
                .arg(format!("{stem}_guest"))
                .arg("--extern")
                .arg(format!("kit={}", kit_rlib.display()))
                .arg(rust.join(format!("{stem}.rs")))
                .arg("-o")
                .arg(&lib),
        )?;
        let mut ld = Command::new(tool("GUEST_LD", "ld"));
        ld.args(["-m", "elf_x86_64", "-nostdlib", "-static", "--gc-sections"])
            .args(["--build-id=none", "-z", "max-page-size=0x1000"])
            .arg("--no-warn-rwx-segments")
            .arg("-T")
            .arg(asm.join("kit.ld"))
            .arg("-o")
            .arg(out.join(format!("{stem}.elf")))
            .arg(&kit_obj)
            .arg(&lib);
        run(&mut ld)?;
    }
    Ok(())
}

fn build_guest(g: &Guest, asm: &Path, out: &Path) -> Result<PathBuf, String> {
    let stem = g.file.trim_end_matches(".elf").trim_end_matches(".bin");
    let elf = assemble_and_link(g.source, g.defines, g.elf32, g.script, stem, asm, out)?;
    let image = out.join(g.file);
    match g.output {
        Output::Elf => {
            fs::copy(&elf, &image).map_err(|e| format!("copy {}: {e}", elf.display()))?;
        }
        Output::Flat => {
            flatten(&elf, &image)?;
        }
        Output::BzImage(setup_source) => {
            let kernel = flatten(&elf, &out.join(format!("{stem}.kernel.bin")))?;
            let setup_stem = format!("{stem}.setup");
            let setup_elf =
                assemble_and_link(setup_source, &[], true, "setup.ld", &setup_stem, asm, out)?;
            let setup = flatten(&setup_elf, &out.join(format!("{setup_stem}.bin")))?;
            fs::write(&image, bzimage(setup, &kernel)?)
                .map_err(|e| format!("write {}: {e}", image.display()))?;
        }
    }
    Ok(image)
}

fn main() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let asm = manifest.join("asm");
    println!("cargo:rerun-if-changed=asm");
    println!("cargo:rerun-if-changed=rust");
    println!("cargo:rerun-if-changed=build.rs");
    fs::write(out.join("crc32_table.inc"), crc32_table_source())
        .map_err(|e| format!("write crc32_table.inc: {e}"))?;
    for g in GUESTS {
        build_guest(g, &asm, &out)?;
    }
    build_rust_guests(&manifest.join("rust"), &asm, &out)
}
