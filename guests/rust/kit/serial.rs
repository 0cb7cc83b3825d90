//! COM1 output, polled (16550 at 0x3f8: wait for LSR bit 5, then write),
//! and the `print!`/`println!` macros that use it.

use crate::io::{inb, outb};
use core::fmt;

const COM1: u16 = 0x3f8;
const COM1_LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 0x20;

/// Writes one byte to COM1.
pub fn putc(byte: u8) {
    while inb(COM1_LSR) & LSR_THR_EMPTY == 0 {}
    outb(COM1, byte);
}

/// COM1 as a `fmt::Write` sink.
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(putc);
        Ok(())
    }
}

/// Used by the macros.
#[doc(hidden)]
pub fn print_args(args: fmt::Arguments) {
    // Serial never fails.
    let _ = fmt::Write::write_fmt(&mut Serial, args);
}

/// Prints to COM1.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::print_args(format_args!($($arg)*)) };
}

/// Prints a line (ending in `\n`) to COM1.
#[macro_export]
macro_rules! println {
    () => { $crate::serial::putc(b'\n') };
    ($($arg:tt)*) => {{
        $crate::serial::print_args(format_args!($($arg)*));
        $crate::serial::putc(b'\n');
    }};
}
