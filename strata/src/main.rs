//! The `strata` binary: argv in, library calls out.

#![forbid(unsafe_code)]

mod api;
mod cli;
mod img;
mod remote;

use std::path::PathBuf;
use std::process::ExitCode;

use vmm::{VmOutcome, Vmm, VmmExit};

const USAGE: &str = "usage: strata run [OPTIONS]      boot a VM (strata run --help)
       strata img COMMAND ...   manage disk images (strata img --help)
       strata remote --api-socket PATH COMMAND   drive a VM through its API";

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
    let (api_socket, args) = match cli::take_api_socket(args) {
        Ok(split) => split,
        Err(e) => return fail(&e),
    };
    let (restore, args) = match cli::take_restore(&args) {
        Ok(split) => split,
        Err(e) => return fail(&e),
    };
    if let Some(path) = api_socket {
        return serve(path, &args, restore);
    }
    if let Some(restore) = restore {
        return match vmm::run_restored(&restore) {
            Ok(outcome) => {
                report(&outcome, None);
                ExitCode::from(outcome.exit_code().clamp(0, 255) as u8)
            }
            Err(e) => fail(&e),
        };
    }
    let config = match cli::parse_run_args(&args) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let outcome = match vmm::run(&config) {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    report(&outcome, config.timeout);
    ExitCode::from(outcome.exit_code().clamp(0, 255) as u8)
}

/// Prints how a VM ended: emulated instructions, every vCPU's registers when a signal or the
/// timeout stopped it, the culprit of a fatal stop.
fn report(outcome: &VmOutcome, timeout: Option<u64>) {
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
            timeout.unwrap_or(0)
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
}

/// `strata run --api-socket PATH [OPTIONS]`: serves the REST API until `vmm.shutdown` or a
/// terminating signal; with boot options, creates and boots that VM first.
fn serve(
    path: PathBuf,
    args: &[String],
    restore: Option<vmm::snapshot::RestoreConfig>,
) -> ExitCode {
    let config = match args.is_empty() {
        true => None,
        false => match cli::parse_run_args(args) {
            Ok(c) => Some(c),
            Err(e) => return fail(&e),
        },
    };
    let (requester, queue) = match vmm::control::actions::request_channel() {
        Ok(channel) => channel,
        Err(e) => return fail(&e),
    };
    // Before any thread starts: the VMM blocks the signals it reads from its signalfd.
    let mut vmm = match Vmm::new(Some(queue)) {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let socket = match api::bind(&path) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let timeout = config.as_ref().and_then(|c| c.timeout);
    if let Some(restore) = restore {
        if let Err(e) = vmm.restore(&restore) {
            socket.discard();
            return fail(&e);
        }
    }
    if let Some(config) = config {
        if let Err(e) = vmm.create(config).and_then(|()| vmm.boot()) {
            socket.discard();
            return fail(&e);
        }
    }
    let server = match socket.serve(requester) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let exit = vmm.run();
    server.stop();
    match exit {
        Ok(VmmExit { outcome, signal }) => {
            if let Some(outcome) = &outcome {
                report(outcome, timeout);
            }
            match signal {
                Some(sig) => {
                    if outcome.is_none() {
                        eprintln!("strata: stopped on signal {}", signal_name(sig));
                    }
                    ExitCode::from((128 + sig).clamp(0, 255) as u8)
                }
                None => ExitCode::SUCCESS,
            }
        }
        Err(e) => fail(&e),
    }
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
        Some("remote")
            if args.len() == 1 || args[1..].iter().any(|a| a == "--help" || a == "-h") =>
        {
            println!("{}", remote::REMOTE_USAGE);
            ExitCode::SUCCESS
        }
        Some("remote") => match remote::main(&args[1..]) {
            Ok(code) => code,
            Err(e) => fail(&e),
        },
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
