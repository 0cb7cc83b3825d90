//! kit: the ring-3 runtime and drivers of Strata's Rust test guests.
//!
//! `asm/kit.S` boots (PVH), sets up long mode, SSE, a TSS with an
//! all-ports I/O bitmap and reporting exception gates, and enters
//! `kit_entry(start_info)` in ring 3, which [`guest!`] defines to call
//! [`start`]: print the standard header (see guests/README.md), run the
//! guest's `main`, print `done`, exit through port 0xf4.
//!
//! Built by guests/build.rs with the host's rustc (`no_std`, panic=abort,
//! static relocation model); no heap: buffers come from [`dma::Dma`].
#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod clock;
pub mod cmdline;
pub mod crc32;
pub mod dma;
pub mod error;
pub mod io;
pub mod pattern;
pub mod pci;
pub mod phys;
pub mod pvh;
pub mod serial;
pub mod virtio;

pub use cmdline::Cmdline;
pub use error::Error;

use crc32::Crc32;
use dma::Dma;
use pvh::StartInfo;

/// The debug-exit port (QEMU's isa-debug-exit, Strata's debug exit).
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Exit code after an error returned by `main`.
pub const EXIT_ERROR: u32 = 1;
/// Exit code after a panic (2 is the start code's, for exceptions).
pub const EXIT_PANIC: u32 = 3;

/// What a guest's `main` gets.
pub struct Boot {
    /// The PVH boot information.
    pub info: StartInfo,
    /// The command line.
    pub cmdline: Cmdline<'static>,
    /// DMA memory.
    pub dma: Dma,
}

extern "C" {
    /// A `ud2` in asm/kit.S that the #UD handler turns into a halt.
    fn kit_halt() -> !;
}

/// Writes `code` to the debug-exit port; if the VM goes on, halts (in
/// ring 0, through `kit_halt`).
pub fn exit(code: u32) -> ! {
    io::outl(DEBUG_EXIT_PORT, code);
    // SAFETY: kit_halt never returns and touches no Rust state.
    unsafe { kit_halt() }
}

/// Prints `done`, then exits with `code`.
pub fn finish(code: u32) -> ! {
    println!("done");
    exit(code)
}

/// Prints the header lines after `protocol:` (cmdline, memory map, modules).
fn print_header(info: &StartInfo) {
    println!("cmdline: {}", info.cmdline());
    for e in info.memmap() {
        println!("mem: {:#018x} {:#018x} {}", e.addr, e.size, e.kind);
    }
    for m in info.modules() {
        let mut crc = Crc32::new();
        if phys::check_mapped(m.addr, m.size).is_ok() {
            // SAFETY: a module the loader placed in RAM; nothing writes it.
            crc.update(unsafe { phys::bytes(m.addr, m.size as usize) });
        }
        println!(
            "module: 0x{:08x} 0x{:08x} crc32={:08x} {}",
            m.addr as u32,
            m.size as u32,
            crc.finish(),
            m.cmdline
        );
    }
}

/// The body of `kit_entry`: header, `main`, `done`, exit. An error from
/// `main` prints `error: <message>` and exits with [`EXIT_ERROR`];
/// otherwise the exit code is the cmdline's `exit=N` (0 without one).
pub fn start(name: &str, start_info: u64, main: fn(&mut Boot) -> Result<(), Error>) -> ! {
    println!("strata-test-guest {name}");
    println!("protocol: pvh");
    // SAFETY: start_info is what the PVH loader passed in EBX.
    let info = match unsafe { StartInfo::read(start_info) } {
        Ok(info) => info,
        Err(e) => {
            println!("error: {e}");
            finish(EXIT_ERROR)
        }
    };
    print_header(&info);
    let cmdline = Cmdline::new(info.cmdline());
    let result = Dma::new(&info).and_then(|dma| main(&mut Boot { info, cmdline, dma }));
    match result {
        Ok(()) => finish(cmdline.exit_code()),
        Err(e) => {
            println!("error: {e}");
            finish(EXIT_ERROR)
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    match info.location() {
        Some(l) => println!(
            "error: panic at {}:{}: {}",
            l.file(),
            l.line(),
            info.message()
        ),
        None => println!("error: panic: {}", info.message()),
    }
    finish(EXIT_PANIC)
}

/// Defines the guest's entry point: `kit::guest!("name", main);` with
/// `fn main(boot: &mut kit::Boot) -> Result<(), kit::Error>`.
#[macro_export]
macro_rules! guest {
    ($name:literal, $main:path) => {
        /// Entered from asm/kit.S in ring 3.
        #[no_mangle]
        pub extern "C" fn kit_entry(start_info: u64) -> ! {
            $crate::start($name, start_info, $main)
        }
    };
}
