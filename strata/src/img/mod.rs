//! `strata img`: qemu-img's verbs over the `disk` library.
//!
//! This module only turns argv into library calls and results into text; the work is done by
//! `disk` (create, info, check) and `disk::ops` (convert, compare, map, bench). Image formats
//! are never guessed: every verb that opens an image needs `-f`.

use crate::error_chain as chain;

mod args;
mod convert;
mod info;
mod verbs;

use std::process::ExitCode;

use args::ArgError;

const USAGE: &str = "usage: strata img COMMAND [OPTIONS] ...

Commands (qemu-img's flags; the image format is always given, never guessed):
  create   -f FMT [-o OPTIONS] [-b BACKING -F BACKING_FMT] FILE [SIZE]
  info     -f FMT [--output human|json] [--backing-chain] FILE
  convert  -f FMT -O FMT [-c] [-o OPTIONS] [-p] [-S SPARSE_SIZE] [-n] [-t CACHE] SRC DST
           (CACHE: unsafe (default, never syncs), writeback, none, directsync, writethrough)
  check    -f FMT [-r leaks|all] [--output human|json] FILE
  resize   -f FMT [--shrink] FILE [+|-]SIZE
  snapshot -f qcow2 -l|-c NAME|-a NAME|-d NAME FILE
  compare  -f FMT -F FMT [-s] [-p] FILE1 FILE2
  map      -f FMT [--output human|json] FILE
  bench    -f FMT [-c COUNT] [-d DEPTH] [-s BUFSIZE] [-w] [-S STEP] [-o OFFSET]
           [--pattern N] [-i FLUSH_INTERVAL] [-t none|writeback] FILE

Formats: raw, qcow2, vmdk. Sizes take k/K, M, G, T suffixes (powers of 1024).
Run `strata img COMMAND --help` for a command's options.";

/// A verb's failure: a one-line message and the exit status.
pub struct Failure {
    message: String,
    status: u8,
}

impl Failure {
    /// A failure with exit status 1.
    pub fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            status: 1,
        }
    }

    /// A failure with another exit status.
    pub fn with_status(mut self, status: u8) -> Failure {
        self.status = status;
        self
    }
}

impl From<ArgError> for Failure {
    fn from(message: ArgError) -> Failure {
        Failure::new(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::new(message)
    }
}

impl From<disk::Error> for Failure {
    fn from(e: disk::Error) -> Failure {
        Failure::new(chain(&e))
    }
}

/// What a verb returns: its exit status, or a failure.
pub type VerbResult = Result<u8, Failure>;

/// Runs `strata img ARGS`.
pub fn main(args: &[String]) -> ExitCode {
    let Some(verb) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(1);
    };
    let rest = &args[1..];
    let run: fn(&[String]) -> VerbResult = match verb.as_str() {
        "--help" | "-h" | "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        "create" => verbs::create,
        "info" => info::info,
        "convert" => convert::convert,
        "check" => verbs::check,
        "resize" => verbs::resize,
        "snapshot" => verbs::snapshot,
        "compare" => verbs::compare,
        "map" => verbs::map,
        "bench" => verbs::bench,
        other => {
            eprintln!("strata img: unknown command '{other}' (see strata img --help)");
            return ExitCode::from(1);
        }
    };
    if rest.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", verbs::help(verb));
        return ExitCode::SUCCESS;
    }
    match run(rest) {
        Ok(status) => ExitCode::from(status),
        Err(f) => {
            eprintln!("strata img {verb}: {}", f.message);
            ExitCode::from(f.status)
        }
    }
}
