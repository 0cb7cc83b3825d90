//! Prints the path of a test guest: `guest-path pvh`.
//! Without an argument (or with an unknown one) lists the guests.

use std::process::ExitCode;

fn main() -> ExitCode {
    let name = std::env::args().nth(1);
    match name.as_deref().and_then(test_guests::by_name) {
        Some(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("usage: guest-path <name>; guests:");
            for (name, path) in test_guests::all() {
                eprintln!("  {name:<16} {}", path.display());
            }
            ExitCode::from(2)
        }
    }
}
