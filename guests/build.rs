//! Assembles the test guests in `asm/` with the host's GNU toolchain
//! (`gcc` as the preprocessing assembler driver, `ld`, `objcopy`) into
//! `OUT_DIR`. Override the tools with the `GUEST_CC`, `GUEST_LD` and
//! `GUEST_OBJCOPY` environment variables.

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
];

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

fn build_guest(g: &Guest, asm: &Path, out: &Path) -> Result<PathBuf, String> {
    let stem = g.file.trim_end_matches(".elf").trim_end_matches(".bin");
    let obj = out.join(format!("{stem}.o"));
    let elf = out.join(format!("{stem}.linked.elf"));
    let mut cc = Command::new(tool("GUEST_CC", "gcc"));
    cc.arg("-c")
        .arg(if g.elf32 { "-m32" } else { "-m64" })
        .arg("-nostdinc")
        .arg("-I")
        .arg(asm)
        .arg("-I")
        .arg(out);
    for d in g.defines {
        cc.arg(format!("-D{d}"));
    }
    run(cc.arg(asm.join(g.source)).arg("-o").arg(&obj))?;
    let mut ld = Command::new(tool("GUEST_LD", "ld"));
    ld.arg("-m")
        .arg(if g.elf32 { "elf_i386" } else { "elf_x86_64" })
        .args([
            "-nostdlib",
            "-static",
            "--build-id=none",
            "-z",
            "max-page-size=0x1000",
        ])
        .arg("--no-warn-rwx-segments")
        .arg("-T")
        .arg(asm.join(g.script))
        .arg("-o")
        .arg(&elf)
        .arg(&obj);
    run(&mut ld)?;
    let image = out.join(g.file);
    match g.output {
        Output::Elf => {
            fs::copy(&elf, &image).map_err(|e| format!("copy {}: {e}", elf.display()))?;
        }
        Output::Flat => {
            let mut oc = Command::new(tool("GUEST_OBJCOPY", "objcopy"));
            run(oc.args(["-O", "binary"]).arg(&elf).arg(&image))?;
        }
    }
    Ok(image)
}

fn main() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let asm = manifest.join("asm");
    println!("cargo:rerun-if-changed=asm");
    println!("cargo:rerun-if-changed=build.rs");
    fs::write(out.join("crc32_table.inc"), crc32_table_source())
        .map_err(|e| format!("write crc32_table.inc: {e}"))?;
    for g in GUESTS {
        build_guest(g, &asm, &out)?;
    }
    Ok(())
}
