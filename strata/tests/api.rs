//! The REST API of `strata run --api-socket`: lifecycle, answers' shapes, the socket path,
//! and robustness against clients that misbehave. Tests that boot a guest need /dev/kvm; the
//! others only a Unix socket.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use common::api::{read_answer, send, ApiVmm};
use common::{elf64, kvm_available, scratch, strata};

/// A guest that writes 'x' to COM1 forever (ring 0, one port exit per byte): its serial
/// counter shows whether it runs.
fn printer(test: &str) -> String {
    // mov dx, 0x3f8; mov al, 'x'; l: out dx, al; jmp l
    let code = [0x66, 0xba, 0xf8, 0x03, 0xb0, b'x', 0xee, 0xeb, 0xfd];
    let p = scratch(test).join("printer.elf");
    std::fs::write(&p, elf64(0x10_0000, &code)).expect("write guest");
    p.to_string_lossy().into_owned()
}

/// Asks for the serial counter until it moves past `from` (the guest runs).
fn wait_tx_beyond(vmm: &ApiVmm, from: u64) -> u64 {
    let start = std::time::Instant::now();
    loop {
        let now = vmm.counter("serial0", "tx_bytes");
        if now > from {
            return now;
        }
        assert!(start.elapsed() < common::HANG_GUARD, "the guest never ran");
    }
}

fn create_body(kernel: &str) -> String {
    format!(
        r#"{{"payload":{{"kernel":"{kernel}"}},"cpus":{{"boot_vcpus":1,"max_vcpus":1}},"memory":{{"size":33554432}},"serial":{{"mode":"Null"}}}}"#
    )
}

#[test]
fn test_api_lifecycle_transitions_and_invalid_ones_name_the_state() {
    if !kvm_available() {
        return;
    }
    let guest = printer("api-lifecycle");
    let vmm = ApiVmm::start("api-lifecycle-vmm", &[]);
    let body = create_body(&guest);

    assert_eq!(vmm.api("GET", "vm.info", None).status, 404);
    assert_eq!(vmm.api("PUT", "vm.pause", None).status, 404);
    assert_eq!(vmm.api("PUT", "vm.create", Some(&body)).status, 204);
    let again = vmm.api("PUT", "vm.create", Some(&body));
    assert_eq!(again.status, 405);
    assert!(again.body.contains("it is Created"), "{again:?}");
    let pause = vmm.api("PUT", "vm.pause", None);
    assert_eq!(
        (pause.status, pause.body.as_str()),
        (405, r#"["unable to pause the VM: it is Created"]"#)
    );
    assert_eq!(vmm.api("GET", "vm.counters", None).status, 405);

    assert_eq!(vmm.api("PUT", "vm.boot", None).status, 204);
    assert_eq!(vmm.state(), "Running");
    let ran = wait_tx_beyond(&vmm, 0);
    let resume = vmm.api("PUT", "vm.resume", None);
    assert_eq!(resume.status, 405);
    assert!(resume.body.contains("it is Running"), "{resume:?}");
    assert_eq!(vmm.api("PUT", "vm.boot", None).status, 405);

    assert_eq!(vmm.api("PUT", "vm.pause", None).status, 204);
    assert_eq!(vmm.state(), "Paused");
    // Paused: no vCPU runs, so the counters stand still.
    let paused = vmm.counter("serial0", "tx_bytes");
    assert!(paused >= ran);
    assert_eq!(vmm.counter("serial0", "tx_bytes"), paused);
    assert_eq!(vmm.api("PUT", "vm.pause", None).status, 405);
    assert_eq!(vmm.api("PUT", "vm.resume", None).status, 204);
    wait_tx_beyond(&vmm, paused);

    // A guest without an ACPI driver ignores the power button and runs on.
    let before_button = vmm.counter("serial0", "tx_bytes");
    assert_eq!(vmm.api("PUT", "vm.power-button", None).status, 204);
    wait_tx_beyond(&vmm, before_button);
    assert_eq!(vmm.state(), "Running");
    assert_eq!(vmm.api("PUT", "vm.reboot", None).status, 204);
    assert_eq!(vmm.state(), "Running");
    assert_eq!(vmm.api("PUT", "vm.shutdown", None).status, 204);
    assert_eq!(vmm.state(), "Shutdown");
    assert_eq!(vmm.api("PUT", "vm.shutdown", None).status, 405);
    assert_eq!(vmm.api("PUT", "vm.boot", None).status, 204);
    assert_eq!(vmm.state(), "Running");
    assert_eq!(vmm.api("PUT", "vm.delete", None).status, 204);
    assert_eq!(vmm.state(), "none");
    let socket = vmm.socket.clone();
    let end = vmm.shutdown();
    assert_eq!(end.status, Some(0), "{end:?}");
    assert!(!socket.exists(), "the socket outlived the VMM");
}

#[test]
fn test_api_boot_options_create_and_boot_at_once() {
    if !kvm_available() {
        return;
    }
    let guest = printer("api-boot-options");

    let vmm = ApiVmm::start(
        "api-boot-options-vmm",
        &["--kernel", &guest, "--serial", "null", "--memory", "32M"],
    );

    assert_eq!(vmm.state(), "Running");
    let info: serde_json::Value =
        serde_json::from_str(&vmm.api("GET", "vm.info", None).body).expect("json");
    assert_eq!(info["config"]["payload"]["kernel"], guest.as_str());
    assert_eq!(info["config"]["serial"]["mode"], "Null");
    assert_eq!(info["memory_actual_size"], 32 << 20);
}

#[test]
fn test_api_boot_options_that_fail_exit_1_and_leave_no_socket() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("api-boot-fails");
    let socket = dir.join("api.sock");
    let missing = dir.join("missing.elf");

    let end = ApiVmm::spawn(
        &dir,
        &socket,
        &["--kernel", missing.to_str().expect("utf8")],
    )
    .wait();

    assert_eq!(end.status, Some(1), "{end:?}");
    assert!(
        end.stderr.starts_with("strata: unable to boot the VM: "),
        "{}",
        end.stderr
    );
    assert!(end.stderr.contains("missing.elf"), "{}", end.stderr);
    assert!(!socket.exists());
}

#[test]
fn test_api_guest_debug_exit_leaves_vm_shutdown_and_vmm_serving() {
    if !kvm_available() {
        return;
    }
    // mov dx, 0xf4; mov al, 3; out dx, al; jmp $
    let code = [0x66, 0xba, 0xf4, 0x00, 0xb0, 0x03, 0xee, 0xeb, 0xfe];
    let p = scratch("api-guest-exit").join("exit.elf");
    std::fs::write(&p, elf64(0x10_0000, &code)).expect("write guest");

    let vmm = ApiVmm::start(
        "api-guest-exit-vmm",
        &["--kernel", p.to_str().expect("utf8")],
    );
    vmm.wait_state("Shutdown");

    assert_eq!(vmm.api("GET", "vmm.ping", None).status, 200);
    assert!(vmm.counter("vcpu0", "exits_io_out") >= 1);
    assert_eq!(vmm.shutdown().status, Some(0));
}

#[test]
fn test_api_counters_and_metrics_show_the_same_figures() {
    if !kvm_available() {
        return;
    }
    let guest = printer("api-metrics");
    let vmm = ApiVmm::start("api-metrics-vmm", &["--kernel", &guest, "--serial", "null"]);
    wait_tx_beyond(&vmm, 0);
    assert_eq!(vmm.api("PUT", "vm.pause", None).status, 204);

    let counters = vmm.api("GET", "vm.counters", None);
    let metrics = vmm.call("GET", "/metrics", None);

    let c: serde_json::Value = serde_json::from_str(&counters.body).expect("json");
    let tx = c["serial0"]["tx_bytes"].as_u64().expect("tx_bytes");
    let exits = c["vcpu0"]["exits_io_out"].as_u64().expect("exits_io_out");
    assert!(
        metrics
            .head
            .contains("Content-Type: text/plain; version=0.0.4"),
        "{metrics:?}"
    );
    assert!(
        metrics.body.contains(&format!(
            "strata_device_tx_bytes_total{{device=\"serial0\"}} {tx}\n"
        )),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains(&format!(
            "strata_vcpu_exits_io_out_total{{vcpu=\"0\"}} {exits}\n"
        )),
        "{}",
        metrics.body
    );
    assert!(metrics
        .body
        .contains("# TYPE strata_vcpu_kicks_total counter\n"));
}

#[test]
fn test_api_sigterm_stops_vm_and_vmm_exits_143() {
    if !kvm_available() {
        return;
    }
    let guest = printer("api-sigterm");
    let vmm = ApiVmm::start("api-sigterm-vmm", &["--kernel", &guest, "--serial", "null"]);
    wait_tx_beyond(&vmm, 0);
    let socket = vmm.socket.clone();

    testkit::terminate(&vmm.child);
    let end = vmm.wait();

    assert_eq!(end.status, Some(143), "{end:?}");
    assert!(
        end.stderr.contains("vCPU 0: 64-bit long mode"),
        "{}",
        end.stderr
    );
    assert!(
        end.stderr
            .ends_with("strata: stopped the guest on signal SIGTERM\n"),
        "{}",
        end.stderr
    );
    assert!(!socket.exists());
}

#[test]
fn test_api_1000_requests_over_50_connections_answered_while_guest_runs() {
    if !kvm_available() {
        return;
    }
    let guest = printer("api-load");
    let vmm = ApiVmm::start("api-load-vmm", &["--kernel", &guest, "--serial", "null"]);
    let before = wait_tx_beyond(&vmm, 0);

    let handles: Vec<_> = (0..50)
        .map(|_| {
            let socket = vmm.socket.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&socket).expect("connect");
                (0..20)
                    .map(|_| {
                        send(&mut s, "GET", "/api/v1/vm.info", None, true);
                        read_answer(&mut s).map_or(0, |a| a.status)
                    })
                    .filter(|status| *status == 200)
                    .count()
            })
        })
        .collect();
    let answered: usize = handles.into_iter().map(|h| h.join().expect("join")).sum();

    assert_eq!(answered, 1000);
    assert_eq!(vmm.state(), "Running");
    wait_tx_beyond(&vmm, before);
}

#[test]
fn test_api_stalled_clients_block_neither_the_vm_nor_other_clients() {
    if !kvm_available() {
        return;
    }
    let guest = printer("api-stall");
    let vmm = ApiVmm::start("api-stall-vmm", &["--kernel", &guest, "--serial", "null"]);
    // A client that connects and never writes, one that stops mid-request, and one that
    // pipelines requests and never reads the answers (the server's writes to it block).
    let _silent = UnixStream::connect(&vmm.socket).expect("connect");
    let mut partial = UnixStream::connect(&vmm.socket).expect("connect");
    partial
        .write_all(b"GET /api/v1/vm.info HTTP/1.1\r\nHo")
        .expect("write");
    let mut deaf = UnixStream::connect(&vmm.socket).expect("connect");
    deaf.set_nonblocking(true).expect("nonblocking");
    let pipelined = "GET /api/v1/vm.counters HTTP/1.1\r\n\r\n".repeat(2000);
    let _ = deaf.write(pipelined.as_bytes());

    let t0 = vmm.counter("serial0", "tx_bytes");
    let t1 = wait_tx_beyond(&vmm, t0);
    assert_eq!(vmm.api("PUT", "vm.pause", None).status, 204);
    assert_eq!(vmm.api("PUT", "vm.resume", None).status, 204);
    wait_tx_beyond(&vmm, t1);

    partial.write_all(b"st: x\r\n\r\n").expect("write");
    let answer = read_answer(&mut partial).expect("answer");
    assert_eq!(answer.status, 200);
}

#[test]
fn test_api_partial_request_answered_once_complete() {
    let vmm = ApiVmm::start("api-partial", &[]);
    let mut s = UnixStream::connect(&vmm.socket).expect("connect");

    s.write_all(b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Le")
        .expect("write");
    assert_eq!(vmm.api("GET", "vmm.ping", None).status, 200);
    s.write_all(b"ngth: 27\r\n\r\n{\"payloa").expect("write");
    assert_eq!(vmm.api("GET", "vmm.ping", None).status, 200);
    s.write_all(b"d\":{\"kernel\":\"/k\"}}").expect("write");
    let answer = read_answer(&mut s).expect("answer");

    assert_eq!(answer.status, 204, "{answer:?}");
    assert_eq!(vmm.state(), "Created");
}

#[test]
fn test_api_byte_at_a_time_writer_is_answered() {
    let vmm = ApiVmm::start("api-bytewise", &[]);
    let mut s = UnixStream::connect(&vmm.socket).expect("connect");
    let request = b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n";

    for b in request {
        s.write_all(std::slice::from_ref(b)).expect("write");
    }
    let answer = read_answer(&mut s).expect("answer");

    assert_eq!(answer.status, 200);
    let ping: serde_json::Value = serde_json::from_str(&answer.body).expect("json");
    assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(ping["pid"], vmm.child.id());
}

#[test]
fn test_api_head_over_64k_gets_431_and_close() {
    let vmm = ApiVmm::start("api-big-head", &[]);
    let mut s = UnixStream::connect(&vmm.socket).expect("connect");
    let mut request = b"GET /api/v1/vmm.ping HTTP/1.1\r\nX-Big: ".to_vec();
    request.resize(70_000, b'a');
    request.extend_from_slice(b"\r\n\r\n");

    // The server may answer and close before it has read everything.
    let _ = s.write_all(&request);
    let answer = read_answer(&mut s).expect("answer");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);

    assert_eq!(answer.status, 431);
    assert!(answer.head.contains("Connection: close"), "{answer:?}");
    assert_eq!(vmm.api("GET", "vmm.ping", None).status, 200);
}

#[test]
fn test_api_body_over_64k_gets_413() {
    let vmm = ApiVmm::start("api-big-body", &[]);
    let mut s = UnixStream::connect(&vmm.socket).expect("connect");

    s.write_all(b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 70000\r\n\r\n{")
        .expect("write");
    let answer = read_answer(&mut s).expect("answer");

    assert_eq!(answer.status, 413);
    assert!(
        answer.body.contains("larger than 65536 bytes"),
        "{answer:?}"
    );
    assert_eq!(vmm.state(), "none");
}

#[test]
fn test_api_invalid_json_gets_400() {
    let vmm = ApiVmm::start("api-bad-json", &[]);

    let answer = vmm.api("PUT", "vm.create", Some("{\"payload\": {"));

    assert_eq!(answer.status, 400);
    assert!(
        answer.body.starts_with("[\"invalid VmConfig: "),
        "{answer:?}"
    );
    assert_eq!(vmm.state(), "none");
}

#[test]
fn test_api_unknown_field_gets_400_naming_it() {
    let vmm = ApiVmm::start("api-unknown-field", &[]);
    let body = r#"{"payload":{"kernel":"/k"},"balloon":{"size":0}}"#;

    let answer = vmm.api("PUT", "vm.create", Some(body));

    assert_eq!(answer.status, 400);
    assert!(
        answer.body.contains("unknown field `balloon`"),
        "{answer:?}"
    );
}

#[test]
fn test_api_disk_without_format_gets_400_and_missing_disk_boot_400() {
    if !kvm_available() {
        return;
    }
    let vmm = ApiVmm::start("api-disk-config", &[]);
    let no_format = r#"{"payload":{"kernel":"/k"},"disks":[{"path":"/d.img"}]}"#;
    let missing = format!(
        r#"{{"payload":{{"kernel":"{}"}},"disks":[{{"path":"/nonexistent/d.img","format":"raw"}}]}}"#,
        test_guests::pvh().display()
    );

    let refused = vmm.api("PUT", "vm.create", Some(no_format));
    let created = vmm.api("PUT", "vm.create", Some(&missing));
    let boot = vmm.api("PUT", "vm.boot", None);

    assert_eq!(refused.status, 400);
    assert!(
        refused.body.contains("missing field `format`"),
        "{refused:?}"
    );
    assert_eq!(created.status, 204, "{created:?}");
    assert_eq!(boot.status, 400, "{boot:?}");
    assert!(
        boot.body.contains("unable to open disk /nonexistent/d.img"),
        "{boot:?}"
    );
}

#[test]
fn test_api_wrong_methods_get_405_with_allow_unknown_paths_404() {
    let vmm = ApiVmm::start("api-wrong-method", &[]);

    let post = vmm.api("POST", "vm.info", None);
    let delete = vmm.api("DELETE", "vm.create", None);
    let get = vmm.api("GET", "vm.pause", None);
    let unknown = vmm.api("GET", "vm.no-such-endpoint", None);

    assert_eq!(post.status, 405);
    assert!(post.head.contains("Allow: GET\r\n"), "{post:?}");
    assert_eq!(delete.status, 405);
    assert!(delete.head.contains("Allow: PUT\r\n"), "{delete:?}");
    assert_eq!(get.status, 405);
    assert_eq!(unknown.status, 404);
}

#[test]
fn test_api_silent_client_does_not_block_others() {
    let vmm = ApiVmm::start("api-silent", &[]);
    let _silent: Vec<UnixStream> = (0..10)
        .map(|_| UnixStream::connect(&vmm.socket).expect("connect"))
        .collect();

    let answers: Vec<u16> = (0..10)
        .map(|_| vmm.api("GET", "vmm.ping", None).status)
        .collect();

    assert_eq!(answers, vec![200; 10]);
}

#[test]
fn test_api_keep_alive_connection_serves_pipelined_requests_in_order() {
    let vmm = ApiVmm::start("api-pipeline", &[]);
    let mut s = UnixStream::connect(&vmm.socket).expect("connect");

    s.write_all(b"GET /api/v1/vm.info HTTP/1.1\r\n\r\nGET /api/v1/vmm.ping HTTP/1.1\r\n\r\n")
        .expect("write");
    let first = read_answer(&mut s).expect("first");
    let second = read_answer(&mut s).expect("second");

    assert_eq!((first.status, second.status), (404, 200));
}

#[test]
fn test_api_stale_socket_is_replaced() {
    let dir = scratch("api-stale");
    let socket = dir.join("api.sock");
    drop(UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists());

    let vmm = ApiVmm::start_at(&dir, &socket, &[]);

    assert_eq!(vmm.api("GET", "vmm.ping", None).status, 200);
}

#[test]
fn test_api_socket_in_use_is_refused() {
    let dir = scratch("api-in-use");
    let socket = dir.join("api.sock");
    let _listener = UnixListener::bind(&socket).expect("bind");

    let end = ApiVmm::spawn(&dir, &socket, &[]).wait();

    assert_eq!(end.status, Some(1));
    assert_eq!(
        end.stderr,
        format!(
            "strata: API socket {} is in use by another process\n",
            socket.display()
        )
    );
}

#[test]
fn test_api_socket_path_not_a_socket_is_refused() {
    let dir = scratch("api-not-socket");
    let socket = dir.join("api.sock");
    std::fs::write(&socket, b"keep me").expect("write");

    let end = ApiVmm::spawn(&dir, &socket, &[]).wait();

    assert_eq!(end.status, Some(1));
    assert!(end.stderr.contains("exists and is not a socket"), "{end:?}");
    assert_eq!(std::fs::read(&socket).expect("read"), b"keep me");
}

#[test]
fn test_remote_commands_print_json_and_errors() {
    let vmm = ApiVmm::start("api-remote", &[]);
    let sock = vmm.socket.to_str().expect("utf8").to_string();
    let config = vmm.dir.join("vm.toml");
    std::fs::write(
        &config,
        "[payload]\nkernel = \"/nonexistent\"\n[cpus]\nboot_vcpus = 2\n",
    )
    .expect("write");

    let ping = strata(&["remote", "--api-socket", &sock, "ping"]);
    let missing = strata(&["remote", "--api-socket", &sock, "info"]);
    let create = strata(&[
        "remote",
        "--api-socket",
        &sock,
        "create",
        config.to_str().expect("utf8"),
    ]);
    let info = strata(&["remote", "--api-socket", &sock, "info"]);
    let boot = strata(&["remote", "--api-socket", &sock, "boot"]);
    let shutdown = strata(&["remote", "--api-socket", &sock, "shutdown-vmm"]);

    assert_eq!(ping.status, Some(0), "{ping:?}");
    assert!(
        ping.stdout.starts_with("{\"build_version\":\"strata "),
        "{ping:?}"
    );
    assert_eq!(missing.status, Some(1));
    assert_eq!(
        missing.stderr,
        "strata remote: info: HTTP 404: no VM has been created (vm.create first)\n"
    );
    assert_eq!((create.status, create.stdout.as_str()), (Some(0), ""));
    let info: serde_json::Value = serde_json::from_str(&info.stdout).expect("json");
    assert_eq!(info["state"], "Created");
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 2);
    assert_eq!(boot.status, Some(1));
    assert!(
        boot.stderr
            .starts_with("strata remote: boot: HTTP 400: unable to boot the VM: "),
        "{boot:?}"
    );
    assert!(boot.stderr.contains("/nonexistent"), "{boot:?}");
    assert_eq!(shutdown.status, Some(0), "{shutdown:?}");
    assert_eq!(vmm.wait().status, Some(0));
}

/// The numbers of the complete `count N` lines the counter guest printed.
fn counts(out: &str) -> Vec<u64> {
    let complete = &out[..out.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .filter_map(|l| l.strip_prefix("count "))
        .map(|n| n.parse().expect("count N"))
        .collect()
}

/// Reads the guest's output until it has printed a count above `above`; returns it.
fn wait_count_above(vmm: &ApiVmm, above: u64) -> u64 {
    let start = std::time::Instant::now();
    loop {
        let out = std::fs::read_to_string(vmm.dir.join("stdout")).unwrap_or_default();
        if let Some(&n) = counts(&out).last().filter(|&&n| n > above) {
            return n;
        }
        assert!(
            start.elapsed() < common::HANG_GUARD,
            "counter stuck above {above}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[test]
fn test_api_pause_resume_100_cycles_counter_loses_and_repeats_nothing() {
    if !kvm_available() {
        return;
    }
    let kernel = test_guests::counter().to_str().expect("utf8").to_string();
    let vmm = ApiVmm::start(
        "api-pause-counter",
        &["--kernel", &kernel, "--cmdline", "every=20000"],
    );

    let mut seen = 0;
    for _ in 0..100 {
        seen = wait_count_above(&vmm, seen);
        assert_eq!(vmm.api("PUT", "vm.pause", None).status, 204);
        // Every vCPU is out of KVM_RUN: nothing the guest does can move a counter.
        let tx = vmm.counter("serial0", "tx_bytes");
        let exits = vmm.counter("vcpu0", "exits_io_out");
        assert_eq!(vmm.counter("serial0", "tx_bytes"), tx);
        assert_eq!(vmm.counter("vcpu0", "exits_io_out"), exits);
        assert_eq!(vmm.api("PUT", "vm.resume", None).status, 204);
    }
    let last = wait_count_above(&vmm, seen);
    let end = vmm.shutdown();

    assert_eq!(end.status, Some(0), "{end:?}");
    let got = counts(&end.stdout);
    let want: Vec<u64> = (1..=got.len() as u64).collect();
    assert_eq!(got, want, "counts not consecutive");
    assert!(got.len() as u64 >= last);
    assert!(
        end.stdout.starts_with("strata-test-guest counter\n"),
        "{}",
        &end.stdout[..end.stdout.len().min(200)]
    );
}

#[test]
fn test_api_guest_reset_reboots_the_vm() {
    if !kvm_available() {
        return;
    }
    // mov dx, 0x3f8; mov al, 'b'; out dx, al; mov al, '\n'; out dx, al;
    // mov al, 0xfe; out 0x64, al (i8042 reset); jmp $
    let code = [
        0x66, 0xba, 0xf8, 0x03, 0xb0, b'b', 0xee, 0xb0, b'\n', 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xeb,
        0xfe,
    ];
    let p = scratch("api-reset").join("reset.elf");
    std::fs::write(&p, elf64(0x10_0000, &code)).expect("write guest");
    let vmm = ApiVmm::start("api-reset-vmm", &["--kernel", p.to_str().expect("utf8")]);

    // Each boot prints one line before it resets: three lines are two reboots.
    let start = std::time::Instant::now();
    while std::fs::read_to_string(vmm.dir.join("stdout"))
        .unwrap_or_default()
        .matches("b\n")
        .count()
        < 3
    {
        assert!(
            start.elapsed() < common::HANG_GUARD,
            "the VM never rebooted"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }

    assert_eq!(vmm.state(), "Running");
    assert_eq!(vmm.api("PUT", "vm.shutdown", None).status, 204);
    assert_eq!(vmm.state(), "Shutdown");
    assert_eq!(vmm.shutdown().status, Some(0));
}
