//! The `strata` binary: argv in, library calls out.

mod cli;
mod img;

use std::process::ExitCode;

const USAGE: &str = "usage: strata run [OPTIONS]      boot a VM (strata run --help)
       strata img COMMAND ...   manage disk images (strata img --help)";

/// An error and its sources on one line, without repeating text.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// Prints an error and its whole cause chain on one line.
fn fail(err: &dyn std::error::Error) -> ExitCode {
    eprintln!("strata: {}", error_chain(err));
    ExitCode::from(1)
}

fn run(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", cli::RUN_USAGE);
        return ExitCode::SUCCESS;
    }
    let config = match cli::parse_run_args(args) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let vm = match vmm::Vm::build(&config) {
        Ok(vm) => vm,
        Err(e) => return fail(&e),
    };
    if let Some(pty) = vm.console_pty() {
        eprintln!("strata: virtio console on {}", pty.display());
    }
    let outcome = match vm.run() {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    if outcome.emulated.total() > 0 {
        eprintln!("strata: {}", outcome.emulated);
    }
    if let Some(signal) = outcome.signal {
        for report in &outcome.reports {
            eprint!("{report}");
        }
        eprintln!(
            "strata: stopped the guest on signal {}",
            signal_name(signal)
        );
    } else if outcome.timed_out {
        for report in &outcome.reports {
            eprint!("{report}");
        }
        eprintln!(
            "strata: timeout: stopped the guest after {} s",
            config.timeout.unwrap_or(0)
        );
    } else if outcome.stop.is_fatal() {
        let culprit = outcome
            .reports
            .iter()
            .find(|r| Some(r.id) == outcome.culprit)
            .map(|r| r.summary())
            .unwrap_or_default();
        eprintln!("strata: guest stopped: {}: {culprit}", outcome.stop);
    }
    ExitCode::from(outcome.exit_code().clamp(0, 255) as u8)
}

/// The name of a signal that stops the VM.
fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGHUP => "SIGHUP".into(),
        other => format!("{other}"),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("img") => img::main(&args[1..]),
        Some("--version") | Some("-V") => {
            println!("strata {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--help") | Some("-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
