//! `strata img`: qemu-img's verbs over the `disk` library.

use std::process::ExitCode;

/// Runs `strata img ARGS`.
pub fn main(args: &[String]) -> ExitCode {
    let _ = args;
    eprintln!("strata img: not yet implemented");
    ExitCode::from(2)
}
