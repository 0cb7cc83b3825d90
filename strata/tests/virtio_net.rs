//! virtio-net on a tap, driven by the guest kit's `net` guest (a polling driver answering
//! ARP and ICMP echo), each test in a private network namespace it creates and deletes:
//! Strata creates the tap inside it, sets the host side's address, and the host's own
//! `ping -c 20` from that namespace must get every reply, over virtio-mmio, virtio-pci and
//! virtio-pci legacy; QEMU runs the same guest on a tap (`vhost=off`) as the yardstick. The
//! guest-hostile transmit chains are dropped and counted; bad `--net` options fail with one
//! line naming the option.

mod common;
mod net_common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::api::ApiVmm;
use common::{kvm_available, require, scratch, strata_bin};
use net_common::{netns_exists, wait_for_line, KillOnDrop, NetNs};

/// The guest's MAC and addresses (inside each test's own namespace).
const MAC: &str = "52:54:00:12:34:56";
const HOST_IP: &str = "10.77.0.1";
const GUEST_IP: &str = "10.77.0.2";
/// A guard against hangs (Strata stops the guest and exits 124), not a speed assertion.
const TIMEOUT: &str = "240";
/// Echo requests each test sends.
const PINGS: u32 = 20;

/// `strata run` of the net guest with `cmdline`, COM1 to `serial`, the given `--net` and
/// extra options, inside `ns`.
fn strata_in(ns: &NetNs, serial: &Path, cmdline: &str, net: &str, extra: &[&str]) -> Child {
    let kernel = test_guests::net().to_str().expect("utf-8 path").to_string();
    let serial_opt = format!("file={}", serial.display());
    let mut args = vec![
        "run",
        "--kernel",
        &kernel,
        "--cmdline",
        cmdline,
        "--timeout",
        TIMEOUT,
        "--serial",
        &serial_opt,
        "--net",
        net,
    ];
    args.extend_from_slice(extra);
    ns.command(strata_bin(), &args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strata")
}

/// Boots the guest in a fresh namespace, waits for `net: ready`, pings it `PINGS` times
/// with `size`-byte payloads, and checks every reply came, the guest's report, the exit
/// status, and that the tap and the namespace are gone afterwards.
fn ping_test(tag: &str, transport: &str, guest_opts: &str, size: u32) -> String {
    let ns = NetNs::new(tag);
    let dir = scratch(tag);
    let serial = dir.join("serial.txt");
    let cmdline = format!(
        "transport={transport} {guest_opts} op=net-info op=net-serve ip={GUEST_IP} count={PINGS} exit=3"
    );
    let net = format!("tap=stap0,mac={MAC},ip={HOST_IP},mask=255.255.255.0");
    let vm_transport = if transport == "mmio" { "mmio" } else { "pci" };
    let mut child = KillOnDrop(Some(strata_in(
        &ns,
        &serial,
        &cmdline,
        &net,
        &["--transport", vm_transport],
    )));
    wait_for_line(&serial, "net: ready", || child.alive());
    let links_running = ns.links();

    let (sent, received, ping_out) = ns.ping(GUEST_IP, PINGS, size);
    let out = child.wait_with_output();
    let links_after = ns.links();
    let name = ns.name.clone();
    drop(ns);

    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&serial).expect("serial");
    assert_eq!(
        (sent, received),
        (PINGS, PINGS),
        "{ping_out}\n{text}\n{stderr}"
    );
    assert!(
        links_running.iter().any(|l| l == "stap0"),
        "{links_running:?}"
    );
    assert_eq!(out.status.code(), Some(3), "{text}\n{stderr}");
    assert!(
        text.contains(&format!("net: answered {PINGS} echo requests")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("net: mac={MAC} mtu=1500 link=up"))),
        "{text}"
    );
    assert_eq!(
        links_after,
        vec!["lo".to_string()],
        "the tap outlived the VM"
    );
    assert!(!netns_exists(&name), "namespace {name} left behind");
    text
}

#[test]
fn test_virtio_net_ping_every_reply_over_mmio() {
    if !kvm_available() {
        return;
    }
    let text = ping_test("net-mmio", "mmio", "", 56);

    assert!(text.contains("virtio: mmio v2 0xd0000000 net"), "{text}");
    assert!(text.contains("hdr=12 mrg=1"), "{text}");
}

#[test]
fn test_virtio_net_ping_large_frames_span_mergeable_buffers_over_pci() {
    if !kvm_available() {
        return;
    }
    // 256-byte receive buffers: a 1442-byte frame takes six of them (num_buffers).
    let text = ping_test("net-pci", "pci", "rxbuf=256", 1400);

    assert!(
        text.contains("largest 1442 bytes in at most 6 buffers"),
        "{text}"
    );
}

#[test]
fn test_virtio_net_ping_legacy_header_without_mergeable_over_pci_legacy() {
    if !kvm_available() {
        return;
    }
    let text = ping_test("net-legacy", "pci-legacy", "mrg=0", 56);

    assert!(text.contains("hdr=10 mrg=0"), "{text}");
    assert!(text.contains("in at most 1 buffers"), "{text}");
}

#[test]
fn test_virtio_net_hostile_tx_chains_dropped_counted_device_keeps_serving() {
    if !kvm_available() {
        return;
    }
    let ns = NetNs::new("net-hostile");
    let dir = scratch("net-hostile");
    let serial = dir.join("serial.txt");
    let socket = dir.join("api.sock");
    let cmdline =
        format!("transport=mmio op=net-hostile op=net-serve ip={GUEST_IP} count=3 exit=3");
    let kernel = test_guests::net().to_str().expect("path").to_string();
    let child = ns
        .command(strata_bin(), &["run", "--api-socket"])
        .arg(&socket)
        .args([
            "--kernel",
            &kernel,
            "--cmdline",
            &cmdline,
            "--timeout",
            TIMEOUT,
        ])
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .args(["--net", &format!("tap=stap0,mac={MAC},ip={HOST_IP}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn strata");
    let vmm = ApiVmm { child, socket, dir };
    wait_for_line(&serial, "net: ready", || true);

    let oversize = vmm.counter("net0", "tx_oversize");
    let malformed = vmm.counter("net0", "tx_malformed");
    let (sent, received, ping_out) = ns.ping(GUEST_IP, 3, 56);
    wait_for_line(&serial, "done", || true);
    let tx_frames = vmm.counter("net0", "tx_frames");
    let ended = vmm.shutdown();

    // A frame past the MTU and a GSO frame without HOST_TSO; a 4-byte chain and one outside
    // RAM.
    assert_eq!((oversize, malformed), (2, 2));
    assert_eq!((sent, received), (3, 3), "{ping_out}");
    assert!(tx_frames >= 4, "tx_frames {tx_frames}");
    assert_eq!(ended.status, Some(0), "{}", ended.stderr);
}

/// The UDP payload of datagram `seq` the `net` guest writes and checks: `seq` (u64
/// little-endian), then byte `j mod 256` at offset `j`.
fn udp_payload(seq: u64, len: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len).map(|j| j as u8).collect();
    p[..8].copy_from_slice(&seq.to_le_bytes());
    p
}

/// UDP between a host socket and the guest's own Ethernet/IPv4/UDP code, both ways, 1472-byte
/// payloads: the host (after a ping, so that its kernel knows the guest's MAC) sends 20
/// datagrams and one with a wrong byte to the guest's `udp-sink`, which counts them and finds
/// the wrong one; then the
/// host socket's go makes the guest's `udp-send` send 20 datagrams back to it, each checked
/// here (source, sequence, payload).
#[test]
fn test_virtio_net_udp_datagrams_both_ways_reach_host_socket_and_guest() {
    if !kvm_available() {
        return;
    }
    use std::net::UdpSocket;
    const N: u64 = 20;
    const SIZE: usize = 1472;
    let ns = NetNs::new("net-udp");
    let dir = scratch("net-udp");
    let serial = dir.join("serial.txt");
    let cmdline = format!(
        "transport=mmio op=udp-sink ip={GUEST_IP} port=5001 check=1 \
         op=udp-send ip={GUEST_IP} port=5000 count={N} size={SIZE} exit=3"
    );
    let net = format!("tap=stap0,mac={MAC},ip={HOST_IP},mask=255.255.255.0");
    let mut child = KillOnDrop(Some(strata_in(&ns, &serial, &cmdline, &net, &[])));
    wait_for_line(&serial, "net: udp sink ready", || child.alive());
    let (_, pinged, ping_out) = ns.ping(GUEST_IP, 1, 56);
    assert_eq!(pinged, 1, "{ping_out}");

    ns.within(|| {
        let s = UdpSocket::bind((HOST_IP, 0)).expect("bind");
        for seq in 0..N {
            s.send_to(&udp_payload(seq, SIZE), (GUEST_IP, 5001))
                .expect("send");
        }
        let mut wrong = udp_payload(N, SIZE);
        wrong[100] ^= 1;
        s.send_to(&wrong, (GUEST_IP, 5001)).expect("send");
        s.send_to(b"end", (GUEST_IP, 5001)).expect("send end");
    });
    let text = wait_for_line(&serial, "net: udp ready", || child.alive());
    let got: Vec<(Vec<u8>, std::net::SocketAddr)> = ns.within(|| {
        let s = UdpSocket::bind((HOST_IP, 5000)).expect("bind 5000");
        // A hang guard, not a speed assertion.
        s.set_read_timeout(Some(testkit::HANG_GUARD))
            .expect("timeout");
        s.send_to(b"go", (GUEST_IP, 5000)).expect("send go");
        let mut buf = [0u8; 2048];
        (0..N)
            .map(|_| {
                let (n, from) = s.recv_from(&mut buf).expect("a datagram from the guest");
                (buf[..n].to_vec(), from)
            })
            .collect()
    });
    let out = child.wait_with_output();
    let text = std::fs::read_to_string(&serial).unwrap_or(text);

    assert!(
        text.contains(&format!(
            "net: udp received {} datagrams, {} payload bytes, 1 bad",
            N + 1,
            (N + 1) * SIZE as u64
        )),
        "{text}"
    );
    for (seq, (data, from)) in got.iter().enumerate() {
        assert_eq!(from.to_string(), format!("{GUEST_IP}:5000"));
        assert!(*data == udp_payload(seq as u64, SIZE), "datagram {seq}");
    }
    assert!(
        text.contains(&format!(
            "net: udp sent {N} datagrams of {SIZE} bytes to {HOST_IP}:5000"
        )),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(3), "{text}");
}

/// `strata run` with a `--net` value that must fail before the guest runs.
fn bad_net(ns: Option<&NetNs>, net: &str, wrapper: &[&str]) -> (Option<i32>, String) {
    let kernel = test_guests::net().to_str().expect("path").to_string();
    let args = ["run", "--kernel", &kernel, "--net", net, "--serial", "null"];
    let mut cmd = match (ns, wrapper.split_first()) {
        (Some(ns), Some((prog, rest))) => {
            let mut c = ns.command(prog, rest);
            c.arg(strata_bin()).args(args);
            c
        }
        (Some(ns), None) => ns.command(strata_bin(), &args),
        (None, _) => {
            let mut c = Command::new(strata_bin());
            c.args(args);
            c
        }
    };
    let out = cmd.output().expect("run strata");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(result: (Option<i32>, String), want: &str) {
    let (status, stderr) = result;
    assert_ne!(status, Some(0), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(want), "expected '{want}' in: {stderr}");
}

#[test]
fn test_virtio_net_bad_options_fail_with_one_line_naming_net() {
    if !kvm_available() {
        return;
    }
    assert_one_line_error(
        bad_net(None, "tap=a-name-that-is-too-long", &[]),
        "invalid net: tap name 'a-name-that-is-too-long' must be 1 to 15 bytes long",
    );
    assert_one_line_error(
        bad_net(None, "mac=52:54:00:12:34", &[]),
        "invalid value for --net: '52:54:00:12:34' is not a MAC address",
    );
    assert_one_line_error(
        bad_net(None, "mac=01:00:5e:00:00:01", &[]),
        "is a multicast address",
    );
    // `lo` exists in every namespace and is no tap; nothing is changed on it.
    assert_one_line_error(
        bad_net(None, "tap=lo", &[]),
        "unable to set up the tap of net0 (--net): interface lo exists and is not a tap",
    );
}

#[test]
fn test_virtio_net_two_devices_on_one_tap_rejected() {
    if !kvm_available() {
        return;
    }
    let kernel = test_guests::net().to_str().expect("path").to_string();

    let out = Command::new(strata_bin())
        .args(["run", "--kernel", &kernel, "--serial", "null"])
        .args(["--net", "tap=stapx", "--net", "tap=stapx"])
        .output()
        .expect("run strata");

    assert_one_line_error(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        "invalid net: tap stapx is given to two devices",
    );
}

#[test]
fn test_virtio_net_without_cap_net_admin_fails_naming_the_tap() {
    if !kvm_available() {
        return;
    }
    require("/usr/bin/setpriv", "util-linux");
    let ns = NetNs::new("net-noperm");

    // Root without CAP_NET_ADMIN in its bounding set execs strata without it.
    let result = bad_net(
        Some(&ns),
        "tap=stap0",
        &[
            "setpriv",
            "--bounding-set=-net_admin",
            "--inh-caps=-net_admin",
        ],
    );

    assert_one_line_error(
        result,
        "no permission to create or attach tap stap0 (needs CAP_NET_ADMIN)",
    );
    assert_eq!(ns.links(), vec!["lo".to_string()]);
}

/// The same guest under QEMU on a tap the test made in its namespace (`vhost=off`).
fn qemu_ping(tag: &str, machine: &[&str], device: &str, transport: &str) {
    require("/usr/bin/qemu-system-x86_64", "qemu-system-x86");
    let ns = NetNs::new(tag);
    ns.run_ok("ip", &["tuntap", "add", "qtap0", "mode", "tap"]);
    ns.run_ok(
        "ip",
        &["addr", "add", &format!("{HOST_IP}/24"), "dev", "qtap0"],
    );
    ns.run_ok("ip", &["link", "set", "qtap0", "up"]);
    let dir = scratch(tag);
    let serial = dir.join("serial.txt");
    let cmdline = format!(
        "transport={transport} op=net-info op=net-serve ip={GUEST_IP} count={PINGS} exit=3"
    );
    let child = ns
        .command("qemu-system-x86_64", machine)
        .args(["-accel", "kvm", "-cpu", "qemu64", "-m", "128"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .args([
            "-netdev",
            "tap,id=n0,ifname=qtap0,script=no,downscript=no,vhost=off",
        ])
        .args(["-device", &format!("{device},netdev=n0,mac={MAC}")])
        .arg("-kernel")
        .arg(test_guests::net())
        .args(["-append", &cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qemu");
    let mut child = KillOnDrop(Some(child));
    wait_for_line(&serial, "net: ready", || child.alive());

    let (sent, received, ping_out) = ns.ping(GUEST_IP, PINGS, 56);
    let out = child.wait_with_output();

    let text = std::fs::read_to_string(&serial).expect("serial");
    assert_eq!((sent, received), (PINGS, PINGS), "{ping_out}\n{text}");
    assert_eq!(out.status.code(), Some(3 << 1 | 1), "{text}");
    assert!(
        text.contains(&format!("net: answered {PINGS} echo requests")),
        "{text}"
    );
}

#[test]
fn test_virtio_net_same_guest_under_qemu_microvm_mmio() {
    if !kvm_available() {
        return;
    }
    qemu_ping(
        "net-qemu-mmio",
        &[
            "-M",
            "microvm,acpi=off",
            "-global",
            "virtio-mmio.force-legacy=false",
        ],
        "virtio-net-device",
        "mmio",
    );
}

#[test]
fn test_virtio_net_same_guest_under_qemu_q35_pci() {
    if !kvm_available() {
        return;
    }
    qemu_ping(
        "net-qemu-pci",
        &["-M", "q35"],
        "virtio-net-pci,disable-legacy=on",
        "pci",
    );
}

/// Multiqueue: `num_queues=4` (two pairs) on a tap Strata creates with IFF_MULTI_QUEUE. The
/// guest negotiates MQ, asks for a filter the device does not offer (ERR), for three pairs
/// (ERR: there are two), then for two (OK), and answers every echo request on pair 1's
/// transmit queue while taking requests from both receive queues.
#[test]
fn test_virtio_net_multiqueue_ping_answered_through_second_pair() {
    if !kvm_available() {
        return;
    }
    let ns = NetNs::new("net-mq");
    let dir = scratch("net-mq");
    let serial = dir.join("serial.txt");
    let socket = dir.join("api.sock");
    let cmdline = format!(
        "transport=mmio pairs=2 op=net-info op=net-ctrl class=0 cmd=0 op=net-pairs n=3 \
         op=net-pairs n=2 op=net-serve ip={GUEST_IP} count={PINGS} txpair=1"
    );
    let kernel = test_guests::net().to_str().expect("path").to_string();
    let child = ns
        .command(strata_bin(), &["run", "--api-socket"])
        .arg(&socket)
        .args([
            "--kernel",
            &kernel,
            "--cmdline",
            &cmdline,
            "--timeout",
            TIMEOUT,
        ])
        .arg("--serial")
        .arg(format!("file={}", serial.display()))
        .args([
            "--net",
            &format!("tap=stap0,mac={MAC},ip={HOST_IP},num_queues=4"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn strata");
    let vmm = ApiVmm { child, socket, dir };
    wait_for_line(&serial, "net: ready", || true);
    let tun_flags = ns.run_ok("cat", &["/sys/class/net/stap0/tun_flags"]);

    let (sent, received, ping_out) = ns.ping(GUEST_IP, PINGS, 56);
    let text = wait_for_line(&serial, "done", || true);
    let count = |name: &str| vmm.counter("net0", name);
    let (rx0, rx1) = (count("rx_frames_pair0"), count("rx_frames_pair1"));
    let (tx0, tx1) = (count("tx_frames_pair0"), count("tx_frames_pair1"));
    let (ctrl_ok, ctrl_err) = (count("ctrl_ok"), count("ctrl_err"));
    let ended = vmm.shutdown();

    assert_eq!((sent, received), (PINGS, PINGS), "{ping_out}\n{text}");
    // IFF_MULTI_QUEUE (0x100) on the tap Strata made.
    let flags = i64::from_str_radix(tun_flags.trim().trim_start_matches("0x"), 16).expect("hex");
    assert_ne!(flags & 0x100, 0, "tun_flags {tun_flags}");
    assert!(
        text.contains("net: ctrl class=0 cmd=0 answered 1"),
        "{text}"
    );
    assert!(
        text.contains("net: pairs set 3 of 2 answered err"),
        "{text}"
    );
    assert!(text.contains("net: pairs set 2 of 2 answered ok"), "{text}");
    assert_eq!((ctrl_ok, ctrl_err), (1, 2));
    // Every echo reply went out through pair 1; ARP replies through pair 0.
    assert_eq!(tx1, u64::from(PINGS), "{text}");
    assert!(tx0 >= 1, "tx on pair 0: {tx0}");
    assert!(rx0 + rx1 >= u64::from(PINGS), "rx {rx0} + {rx1}\n{text}");
    // The tap steers a flow to the queue the guest last sent it on (tun's flow table): after
    // the first reply went out on pair 1, the requests come in on pair 1's receive queue.
    assert!(rx1 >= 1, "rx {rx0} + {rx1}\n{text}");
    // (Receive counts may differ: the host's IPv6 chatter can arrive after the guest stops.)
    let tx_line = format!("tx {tx0} {tx1}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("net: frames per pair:") && l.ends_with(&tx_line)),
        "{text}"
    );
    assert_eq!(ended.status, Some(0), "{}", ended.stderr);
}

#[test]
fn test_virtio_net_multiqueue_bad_num_queues_and_single_queue_tap_rejected() {
    if !kvm_available() {
        return;
    }
    let ns = NetNs::new("net-mq-bad");
    ns.run_ok("ip", &["tuntap", "add", "sqtap0", "mode", "tap"]);

    let single = bad_net(Some(&ns), "tap=sqtap0,num_queues=4", &[]);
    let odd = bad_net(None, "num_queues=3", &[]);
    let zero = bad_net(None, "num_queues=0", &[]);

    assert_one_line_error(
        single,
        "tap sqtap0 was created without multi_queue and num_queues=4 needs one tap queue per pair",
    );
    assert_one_line_error(
        odd,
        "invalid net: num_queues=3 must be an even number from 2 to 16",
    );
    assert_one_line_error(
        zero,
        "invalid net: num_queues=0 must be an even number from 2 to 16",
    );
    assert_eq!(ns.links(), vec!["lo".to_string(), "sqtap0".to_string()]);
}
