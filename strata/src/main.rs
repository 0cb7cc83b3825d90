//! The `strata` binary: argv in, library calls out.

fn main() {
    eprintln!("strata: not yet implemented");
    std::process::exit(2);
}
