//! One stream connection between a guest port and a host Unix stream: its state, the bytes
//! waiting for the host, both sides' credit counters, and which epoll events it needs.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::CONN_BUF;

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
    /// The host stream has data the guest has not been sent (it left the epoll set until it
    /// is served).
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
