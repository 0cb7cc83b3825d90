//! A tap interface: opened (or created) through /dev/net/tun with a virtio-net header on
//! every frame, its offloads and header size set to what the guest negotiated, and the host
//! side's address, MTU and link state set through an AF_INET socket's ioctls.
//!
//! A tap Strata creates is not persistent: the kernel removes it when the last file
//! descriptor closes, that is when the VM ends (or the VMM dies). A tap that already exists
//! (made with `ip tuntap add ... mode tap`) is only attached to and stays.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `_IOW('T', 217, int)`: attach or detach one queue of a multiqueue tap.
const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;

const IFF_TAP: i16 = 0x0002;
const IFF_MULTI_QUEUE: i16 = 0x0100;
const IFF_ATTACH_QUEUE: i16 = 0x0200;
const IFF_DETACH_QUEUE: i16 = 0x0400;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

/// TUNSETOFFLOAD bits: what the reader of the tap (the guest) accepts.
pub mod offload {
    /// Partial checksums.
    pub const CSUM: u32 = 0x01;
    /// TCPv4 segments up to 64 KiB.
    pub const TSO4: u32 = 0x02;
    /// TCPv6 segments up to 64 KiB.
    pub const TSO6: u32 = 0x04;
    /// TSO with ECN.
    pub const TSO_ECN: u32 = 0x08;
}

/// Why a tap could not be opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name does not fit IFNAMSIZ.
    #[error("tap name '{0}' is longer than 15 bytes")]
    NameTooLong(String),
    /// An interface of that name exists and is not a tap.
    #[error("interface {0} exists and is not a tap")]
    NotATap(String),
    /// /dev/net/tun could not be opened.
    #[error("unable to open /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    /// Creating or attaching needs CAP_NET_ADMIN.
    #[error("no permission to create or attach tap {0} (needs CAP_NET_ADMIN)")]
    Permission(String),
    /// An existing tap was made with one queue and the device wants one per queue pair.
    #[error(
        "tap {name} was created without multi_queue and num_queues={num_queues} needs one tap \
         queue per pair (ip tuntap add {name} mode tap multi_queue)"
    )]
    NotMultiQueue {
        /// The tap.
        name: String,
        /// The device's `num_queues`.
        num_queues: usize,
    },
    /// Another process (or another device) holds the tap.
    #[error("tap {0} is in use by another device or process")]
    Busy(String),
    /// TUNSETIFF failed otherwise.
    #[error("unable to create or attach tap {name}: {source}")]
    SetIff {
        /// The tap.
        name: String,
        /// The cause.
        source: io::Error,
    },
    /// A configuration ioctl on the tap or its interface failed.
    #[error("unable to {what} on tap {name}: {source}")]
    Configure {
        /// What was being set.
        what: &'static str,
        /// The tap.
        name: String,
        /// The cause.
        source: io::Error,
    },
}

/// `struct ifreq`: a name and a 24-byte union (flags, MTU or a `sockaddr`).
#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut r = IfReq {
            name: [0; 16],
            data: [0; 24],
        };
        let n = name.len().min(15);
        r.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        r
    }

    fn name(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }

    fn set_i16(&mut self, v: i16) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }

    fn get_i16(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_i32(&mut self, v: i32) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }

    /// A `sockaddr_in` with `addr` (family AF_INET, port 0).
    fn set_inet(&mut self, addr: Ipv4Addr) {
        self.data = [0; 24];
        self.data[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        self.data[4..8].copy_from_slice(&addr.octets());
    }
}

/// One open tap (one queue of it, for a multiqueue tap).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    created: bool,
    /// Whether this queue is attached (a multiqueue tap's queues can be detached).
    attached: bool,
    multi_queue: bool,
}

/// What an interface of the wanted name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Existing {
    /// No interface has that name.
    None,
    /// Some interface that is not a tap.
    NotATap,
    /// A tap; whether it was made with IFF_MULTI_QUEUE.
    Tap { multi_queue: bool },
}

/// What interface `name` is (a tap is a tun/tap device whose `tun_flags` has IFF_TAP).
fn existing_kind(name: &str) -> Existing {
    let dir = Path::new("/sys/class/net").join(name);
    if !dir.exists() {
        return Existing::None;
    }
    let flags = std::fs::read_to_string(dir.join("tun_flags"))
        .ok()
        .and_then(|f| i64::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok());
    match flags {
        Some(f) if f & i64::from(IFF_TAP) != 0 => Existing::Tap {
            multi_queue: f & i64::from(IFF_MULTI_QUEUE) != 0,
        },
        _ => Existing::NotATap,
    }
}

fn configure_err<'a>(what: &'static str, name: &'a str) -> impl FnOnce(io::Error) -> TapError + 'a {
    move |source| TapError::Configure {
        what,
        name: name.to_string(),
        source,
    }
}

impl Tap {
    /// Attaches to tap `name`, creating it when no interface has that name; without a name,
    /// creates `stap<N>`. Every frame read or written carries a virtio-net header; the fd is
    /// non-blocking.
    pub fn open(name: Option<&str>) -> Result<Tap, TapError> {
        let mut taps = Tap::open_queues(name, 1)?;
        taps.pop()
            .ok_or_else(|| TapError::OpenTun(io::Error::other("no tap queue")))
    }

    /// [`Tap::open`] with `queues` file descriptors, one per queue pair: with more than one
    /// the tap is a multiqueue tap (IFF_MULTI_QUEUE, TUNSETIFF once per fd). An existing tap
    /// made without multi_queue cannot give more than one.
    pub fn open_queues(name: Option<&str>, queues: usize) -> Result<Vec<Tap>, TapError> {
        let wanted = name.unwrap_or("stap%d");
        if wanted.len() > 15 {
            return Err(TapError::NameTooLong(wanted.to_string()));
        }
        let existing = name.map_or(Existing::None, existing_kind);
        let multi_queue = match existing {
            Existing::NotATap => return Err(TapError::NotATap(wanted.to_string())),
            Existing::Tap { multi_queue: false } if queues > 1 => {
                return Err(TapError::NotMultiQueue {
                    name: wanted.to_string(),
                    num_queues: queues * 2,
                })
            }
            Existing::Tap { multi_queue } => multi_queue,
            Existing::None => queues > 1,
        };
        let existed = existing != Existing::None;
        let mut taps: Vec<Tap> = Vec::with_capacity(queues);
        for _ in 0..queues.max(1) {
            // The first TUNSETIFF creates `stap%d`; the others attach to the name it got.
            let name = taps.first().map_or(wanted, |t| t.name.as_str());
            let (file, got) = set_iff(name, multi_queue, existed)?;
            taps.push(Tap {
                file,
                name: got,
                created: !existed,
                attached: true,
                multi_queue,
            });
        }
        Ok(taps)
    }

    /// A "tap" over any datagram fd (one end of a SOCK_SEQPACKET pair keeps frame
    /// boundaries the way a tap does), for tests and the fuzz harness without CAP_NET_ADMIN.
    #[cfg(any(test, feature = "fuzz"))]
    pub(crate) fn from_file(file: File) -> Tap {
        Tap {
            file,
            name: "test".into(),
            created: false,
            attached: true,
            multi_queue: false,
        }
    }

    /// A [`Tap::from_file`] over one end of a fresh non-blocking SOCK_SEQPACKET pair, and
    /// the other end (the host's side), for tests and the fuzz harness.
    #[cfg(any(test, feature = "fuzz"))]
    pub(crate) fn socketpair() -> io::Result<(Tap, File)> {
        use std::os::fd::{FromRawFd, OwnedFd};
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two fds into the array, which this function then owns.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned by nothing else.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Tap::from_file(a.into()), b.into()))
    }

    /// Attaches (`true`) or detaches this queue of a multiqueue tap (TUNSETQUEUE): the kernel
    /// steers frames only to attached queues. A single-queue tap is always attached.
    pub fn set_attached(&mut self, attach: bool) -> Result<(), TapError> {
        if attach == self.attached || !self.multi_queue {
            return Ok(());
        }
        let mut req = IfReq::new("");
        req.set_i16(if attach {
            IFF_ATTACH_QUEUE
        } else {
            IFF_DETACH_QUEUE
        });
        // SAFETY: TUNSETQUEUE reads one `struct ifreq` (only its flags), which `req` is.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETQUEUE, &mut req) };
        if ret < 0 {
            let what = if attach {
                "attach a queue"
            } else {
                "detach a queue"
            };
            return Err(configure_err(what, &self.name)(io::Error::last_os_error()));
        }
        self.attached = attach;
        Ok(())
    }

    /// Whether the kernel delivers frames to this queue.
    pub fn attached(&self) -> bool {
        self.attached
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether Strata created it (it then disappears with the VM).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Sets the size of the virtio-net header on every frame (10 or 12).
    pub fn set_vnet_hdr_size(&self, size: i32) -> Result<(), TapError> {
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, a live local.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETVNETHDRSZ, &size) };
        if ret < 0 {
            return Err(configure_err("set the virtio-net header size", &self.name)(
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Tells the tap which offloads the guest accepts ([`offload`] bits).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(configure_err("set offloads", &self.name)(
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Sets the host side's address, netmask and MTU (those given) and brings the interface up.
    pub fn configure_host(
        &self,
        ip: Option<(Ipv4Addr, Ipv4Addr)>,
        mtu: Option<u16>,
    ) -> Result<(), TapError> {
        let sock = InetSocket::new().map_err(configure_err("open a control socket", &self.name))?;
        let name = &self.name;
        if let Some((addr, mask)) = ip {
            let mut req = IfReq::new(name);
            req.set_inet(addr);
            sock.ioctl(libc::SIOCSIFADDR, &mut req)
                .map_err(configure_err("set the address", name))?;
            let mut req = IfReq::new(name);
            req.set_inet(mask);
            sock.ioctl(libc::SIOCSIFNETMASK, &mut req)
                .map_err(configure_err("set the netmask", name))?;
        }
        if let Some(mtu) = mtu {
            let mut req = IfReq::new(name);
            req.set_i32(i32::from(mtu));
            sock.ioctl(libc::SIOCSIFMTU, &mut req)
                .map_err(configure_err("set the MTU", name))?;
        }
        let mut req = IfReq::new(name);
        sock.ioctl(libc::SIOCGIFFLAGS, &mut req)
            .map_err(configure_err("read the interface flags", name))?;
        let flags = req.get_i16() | libc::IFF_UP as i16 | libc::IFF_RUNNING as i16;
        req.set_i16(flags);
        sock.ioctl(libc::SIOCSIFFLAGS, &mut req)
            .map_err(configure_err("bring the interface up", name))?;
        Ok(())
    }

    /// Reads one frame (header included) into `buf`; WouldBlock when none waits.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a live, writable slice of the given length.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame (header included) gathered from `iov`.
    ///
    /// # Safety
    ///
    /// Every iovec must point at memory readable for its length for the duration of the
    /// call (the kernel only reads it).
    pub unsafe fn writev(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        let count = libc::c_int::try_from(iov.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: the caller guarantees every iovec is readable for its length during the
        // call; the kernel only reads it.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), count) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame (header included).
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is a live slice of the given length, only read.
        let n = unsafe { libc::write(self.file.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// TUNSETIFF on a fresh /dev/net/tun fd: creates or attaches tap `name`; returns the fd and
/// the name the kernel gave.
fn set_iff(name: &str, multi_queue: bool, existed: bool) -> Result<(File, String), TapError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)?;
    let mut req = IfReq::new(name);
    let mq = if multi_queue { IFF_MULTI_QUEUE } else { 0 };
    req.set_i16(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | mq);
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is (40 bytes,
    // repr(C)); the fd is the tun device just opened.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        let name = name.to_string();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission(name),
            Some(libc::EBUSY) => TapError::Busy(name),
            Some(libc::EINVAL) if existed => TapError::NotATap(name),
            _ => TapError::SetIff { name, source: e },
        });
    }
    Ok((file, req.name()))
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// An AF_INET datagram socket, closed on drop: the handle interface ioctls go through.
struct InetSocket(RawFd);

impl InetSocket {
    fn new() -> io::Result<InetSocket> {
        // SAFETY: plain socket(2) call; the fd is owned by the returned value.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(InetSocket(fd))
    }

    fn ioctl(&self, request: libc::c_ulong, req: &mut IfReq) -> io::Result<()> {
        // SAFETY: the SIOC[GS]IF* requests read and write one `struct ifreq`, which `req` is.
        let ret = unsafe { libc::ioctl(self.0, request, req as *mut IfReq) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for InetSocket {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by this value and closed once.
        unsafe { libc::close(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ifreq_layout_and_name_roundtrip() {
        let mut r = IfReq::new("tap-with-a-long-name");
        r.set_inet(Ipv4Addr::new(10, 1, 2, 3));

        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(r.name(), "tap-with-a-long");
        assert_eq!(&r.data[4..8], &[10, 1, 2, 3]);
    }

    #[test]
    fn test_tap_open_long_name_rejected_before_any_syscall() {
        let e = Tap::open(Some("abcdefghijklmnopq")).unwrap_err();

        assert!(matches!(e, TapError::NameTooLong(_)), "{e}");
    }

    #[test]
    fn test_tap_open_loopback_is_not_a_tap() {
        // Every network namespace has `lo`, which is no tun/tap device.
        let e = Tap::open(Some("lo")).unwrap_err();

        assert_eq!(e.to_string(), "interface lo exists and is not a tap");
    }
}
