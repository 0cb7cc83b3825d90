//! One stream connection between a guest port and a host Unix stream: its state, the bytes
//! waiting for the host, both sides' credit counters, and which epoll events it needs.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::CONN_BUF;

/// A CREDIT_UPDATE goes to the guest once the free space it believes the connection has
/// falls below this (half the buffer; Linux sends one below 64 KiB, Firecracker below 4 KiB of
/// its 64 KiB): the guest then never runs dry while the host keeps up, and a connection
/// costs one update per half buffer instead of one per packet.
pub const CREDIT_UPDATE_BELOW: u32 = CONN_BUF / 2;

/// Connects to the host listener at `path` without blocking: a Unix stream connect
/// completes at once or, when the listener's backlog is full (a host program that accepts
/// slowly, with socat's backlog of 5), fails with `WouldBlock`, where a blocking connect
/// would stop the device's worker until the host accepts. The stream is non-blocking.
pub fn connect(path: &OsStr) -> io::Result<UnixStream> {
    let bytes = path.as_bytes();
    // SAFETY: sockaddr_un is plain old data: all zeroes is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket() takes no pointers; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is the fresh socket just made, owned by nobody else: the stream owns it
    // (and closes it on every return below).
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: `addr` is a sockaddr_un that lives across the call and `len` (at most its
    // size: the path is shorter than sun_path) covers its family, path and terminating NUL.
    let r = unsafe {
        libc::connect(
            fd,
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The host connected and asked for a guest port; the REQUEST went to the guest and the
    /// RESPONSE has not come back.
    Connecting,
    /// Data flows.
    Established,
}

/// Why bytes from the guest could not be taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// More than the credit the guest was given.
    Credit,
    /// The guest shut its sending side, or the host stream is gone.
    Closed,
}

/// One connection.
#[derive(Debug)]
pub struct Connection {
    /// The host's Unix stream (non-blocking).
    pub stream: UnixStream,
    /// Its state.
    pub state: State,
    /// Bytes not yet written to the stream: the `OK` line's, then the guest's (at most
    /// [`CONN_BUF`]).
    pending: VecDeque<u8>,
    /// How many of `pending` are the `OK` line's.
    line_bytes: usize,
    /// Bytes from the guest written to the stream (the `fwd_cnt` the guest is told).
    pub fwd_cnt: u32,
    /// `fwd_cnt` when the guest was last told.
    pub fwd_cnt_told: u32,
    /// Bytes sent to the guest.
    pub rx_cnt: u32,
    /// The guest's `buf_alloc` and `fwd_cnt`, from its latest packet.
    pub peer_buf_alloc: u32,
    /// See `peer_buf_alloc`.
    pub peer_fwd_cnt: u32,
    /// The host stream has data the guest has not been sent (it is in the handler's ready
    /// queue; if it has to wait there, for receive buffers, it leaves the epoll set).
    pub rx_ready: bool,
    /// The host stream ended (or failed).
    pub host_eof: bool,
    /// The guest said it sends no more.
    pub guest_shut_send: bool,
    /// The epoll events the stream is registered for (empty: not registered).
    pub registered: EventSet,
}

impl Connection {
    /// A connection over `stream` in `state`.
    pub fn new(stream: UnixStream, state: State) -> Connection {
        Connection {
            stream,
            state,
            pending: VecDeque::new(),
            line_bytes: 0,
            fwd_cnt: 0,
            fwd_cnt_told: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_ready: false,
            host_eof: false,
            guest_shut_send: false,
            registered: EventSet::empty(),
        }
    }

    /// Bytes the guest can still take from the host.
    pub fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// The events the stream should be watched for now.
    pub fn wanted_events(&self) -> EventSet {
        let mut e = EventSet::empty();
        if self.state == State::Established
            && !self.rx_ready
            && !self.host_eof
            && self.peer_credit() > 0
        {
            e |= EventSet::IN;
        }
        if !self.pending.is_empty() {
            e |= EventSet::OUT;
        }
        e
    }

    /// Takes `data` from the guest for the host: writes what the stream takes now, keeps the
    /// rest (within the credit of [`CONN_BUF`]).
    pub fn take_from_guest(&mut self, data: &[u8]) -> Result<(), Refused> {
        if self.guest_shut_send {
            return Err(Refused::Closed);
        }
        if self.pending.len() - self.line_bytes + data.len() > CONN_BUF as usize {
            return Err(Refused::Credit);
        }
        let mut off = 0;
        if self.pending.is_empty() {
            off = self.write_some(data).map_err(|_| Refused::Closed)?;
            self.fwd_cnt = self.fwd_cnt.wrapping_add(off as u32);
        }
        self.pending.extend(&data[off..]);
        Ok(())
    }

    /// Queues bytes for the host ahead of anything else (the `OK <port>` line).
    pub fn push_host_line(&mut self, line: &[u8]) {
        for &b in line.iter().rev() {
            self.pending.push_front(b);
        }
        self.line_bytes += line.len();
    }

    fn write_some(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut off = 0;
        while off < data.len() {
            match self.stream.write(&data[off..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(off)
    }

    /// Writes what the stream takes of the pending bytes (the guest's among them advance
    /// `fwd_cnt`); returns the count written.
    pub fn flush(&mut self) -> io::Result<usize> {
        let mut total = 0;
        while !self.pending.is_empty() {
            let (a, _) = self.pending.as_slices();
            let len = a.len();
            let n = match self.stream.write(a) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            self.pending.drain(..n);
            let line = n.min(self.line_bytes);
            self.line_bytes -= line;
            self.fwd_cnt = self.fwd_cnt.wrapping_add((n - line) as u32);
            total += n;
            if n < len {
                break;
            }
        }
        Ok(total)
    }

    /// Whether the guest should be sent a CREDIT_UPDATE now: the free space it believes the
    /// connection has (`buf_alloc` minus what it sent since the `fwd_cnt` it was last told)
    /// fell below [`CREDIT_UPDATE_BELOW`], and bytes were forwarded since it was told (an
    /// update would raise it). Data packets to the guest carry `fwd_cnt` as well, so on a
    /// connection with traffic both ways updates are rare; a guest that used up its credit
    /// always gets one once forwarding makes progress (the space it believes free is then
    /// zero), so it can never wait for credit forever.
    pub fn needs_credit_update(&self) -> bool {
        let told = self.fwd_cnt.wrapping_sub(self.fwd_cnt_told);
        if told == 0 {
            return false;
        }
        let guest_pending = (self.pending.len() - self.line_bytes) as u64;
        let believed_used = u64::from(told) + guest_pending;
        u64::from(CONN_BUF).saturating_sub(believed_used) < u64::from(CREDIT_UPDATE_BELOW)
    }

    /// The guest's bytes waiting for the host (at most [`CONN_BUF`]), and the `OK` line's.
    #[cfg(any(test, feature = "fuzz"))]
    pub fn pending_bytes(&self) -> (usize, usize) {
        (self.pending.len() - self.line_bytes, self.line_bytes)
    }

    /// Whether bytes wait for the host.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Reads host bytes into `buf`: Ok(0) at the end of the stream.
    pub fn read_host(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.stream.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose host end takes everything (the peer end is returned to keep it open).
    fn established() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Connection::new(a, State::Established), b)
    }

    #[test]
    fn test_connection_connect_full_backlog_would_block() {
        let dir = std::env::temp_dir().join(format!("strata-vsock-conn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("port_1024");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        // SAFETY: listen() on the listener we own only changes its backlog.
        let rc = unsafe { libc::listen(fd, 2) };
        assert_eq!(rc, 0);
        let mut streams = Vec::new();

        // A blocking connect would wait here for an accept that never comes.
        let err = loop {
            match connect(path.as_os_str()) {
                Ok(s) => streams.push(s),
                Err(e) => break e,
            }
            assert!(streams.len() <= 64, "the backlog never filled");
        };

        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(!streams.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn test_connection_connect_without_listener_fails() {
        let path = std::env::temp_dir().join(format!("strata-vsock-none-{}", std::process::id()));

        let err = connect(path.as_os_str()).unwrap_err();

        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn test_connection_small_forwarded_amounts_need_no_credit_update() {
        let (mut c, _peer) = established();

        c.take_from_guest(&[7u8; 4096]).unwrap();

        assert_eq!(c.fwd_cnt, 4096);
        assert!(!c.needs_credit_update());
    }

    #[test]
    fn test_connection_half_buffer_forwarded_unannounced_needs_credit_update() {
        let (mut c, _peer) = established();
        let half = (CONN_BUF - CREDIT_UPDATE_BELOW) as usize;
        c.take_from_guest(&vec![1u8; half]).unwrap();
        assert!(!c.needs_credit_update());

        c.take_from_guest(&[1u8; 1]).unwrap();

        assert!(c.needs_credit_update());
        c.fwd_cnt_told = c.fwd_cnt;
        assert!(!c.needs_credit_update());
    }

    #[test]
    fn test_connection_guest_out_of_credit_gets_update_once_forwarding_progresses() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        peer.set_nonblocking(true).unwrap();
        let mut c = Connection::new(a, State::Established);
        let send = |c: &mut Connection, total: usize| {
            let mut sent = 0usize;
            while sent < total {
                let n = (total - sent).min(4052);
                c.take_from_guest(&vec![2u8; n]).unwrap();
                sent += n;
            }
        };
        // The guest sends its whole credit; the host reads nothing: the socket takes some,
        // the rest waits.
        send(&mut c, CONN_BUF as usize);
        assert!(c.needs_credit_update());
        c.fwd_cnt_told = c.fwd_cnt;
        // Told, it sends the credit it got back: now the buffer holds all it may.
        let credit_back = c.fwd_cnt as usize;
        send(&mut c, credit_back);
        assert!(!c.needs_credit_update());

        let mut sink = vec![0u8; 64 << 10];
        let read = peer.read(&mut sink).unwrap();
        let flushed = c.flush().unwrap();

        assert!(read > 0 && flushed > 0);
        assert!(c.needs_credit_update());
    }
}
