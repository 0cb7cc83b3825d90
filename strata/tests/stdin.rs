//! Standard input reaches the guest's COM1 through the control loop's event source: from a
//! pipe (in the epoll), and from a regular file (which epoll refuses: read on the console tick).

mod common;

use std::process::{Command, Stdio};

use common::{elf64, kvm_available, scratch, strata_bin};
use testkit::run_command_with_stdin;

/// A guest that echoes COM1 input to COM1 until it reads 'q', then writes 'q' (113) to the
/// debug-exit port.
fn echo_guest(test: &str) -> String {
    let code = [
        0x66, 0xba, 0xfd, 0x03, // l: mov dx, 0x3fd (LSR)
        0xec, // in al, dx
        0xa8, 0x01, // test al, 1 (data ready)
        0x74, 0xf7, // jz l
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xec, // in al, dx
        0x3c, b'q', // cmp al, 'q'
        0x74, 0x03, // je done
        0xee, // out dx, al
        0xeb, 0xeb, // jmp l
        0x66, 0xba, 0xf4, 0x00, // done: mov dx, 0xf4
        0xee, // out dx, al
        0xeb, 0xfe, // jmp $
    ];
    let p = scratch(test).join("echo.elf");
    std::fs::write(&p, elf64(0x10_0000, &code)).expect("write guest");
    p.to_string_lossy().into_owned()
}

#[test]
fn test_stdin_pipe_reaches_guest_serial() {
    if !kvm_available() {
        return;
    }
    let kernel = echo_guest("stdin-pipe");
    // More than the UART's FIFO and pending queue hold at once: forwarding must wait for the
    // guest rather than drop bytes.
    let line = "0123456789abcdef".repeat(600);

    let run = run_command_with_stdin(
        Command::new(strata_bin()).args(["run", "--kernel", &kernel]),
        Stdio::piped(),
        format!("{line}\nq").as_bytes(),
    );

    assert_eq!(run.status, Some(113), "{}", run.stderr);
    assert_eq!(run.stdout, format!("{line}\n"));
}

#[test]
fn test_stdin_regular_file_reaches_guest_serial() {
    if !kvm_available() {
        return;
    }
    let kernel = echo_guest("stdin-file");
    let path = scratch("stdin-file-input").join("input");
    std::fs::write(&path, b"from a file\nq").expect("write input");
    let file = std::fs::File::open(&path).expect("open");

    let run = run_command_with_stdin(
        Command::new(strata_bin()).args(["run", "--kernel", &kernel]),
        Stdio::from(file),
        b"",
    );

    assert_eq!(run.status, Some(113), "{}", run.stderr);
    assert_eq!(run.stdout, "from a file\n");
}
