//! The API thread's event loop: the listening socket, every connection, the control loop's
//! replies and a stop eventfd in one epoll of its own. Connections are non-blocking state
//! machines (reading a request, waiting for the control loop's answer, writing the response),
//! so a slow, silent or hostile client never holds up another client or the VM: the control
//! loop only ever sees whole, valid requests, one `ApiRequest` each, and answers through a
//! channel without waiting for anyone.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm::control::actions::{reply_channel, ApiRequest, ReplyQueue, ReplySender, Requester};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::http::{body_of, may_end_head, parse_head, Head, Parsed, Request, Response, CONTINUE};
use super::routes::{self, Endpoint, Routed};

/// Connections served at once; one more is accepted and closed at once.
pub const MAX_CONNECTIONS: usize = 256;
/// From a request's first byte to its last.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request in progress is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// For a response to be taken by the client.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

const LISTENER: u64 = 0;
const REPLIES: u64 = 1;
const STOP: u64 = 2;
const FIRST_CONNECTION: u64 = 16;

/// Where a connection stands.
enum State {
    /// Reading a request (`head` once its head is parsed; `started` once a byte of it came).
    Reading { head: Option<Head>, started: bool },
    /// The control loop has the request.
    Waiting {
        endpoint: Endpoint,
        keep_alive: bool,
    },
    /// Writing a response; close after it or read the next request.
    Writing { close: bool },
}

struct Connection {
    stream: UnixStream,
    /// Received bytes not yet consumed by a request.
    buf: Vec<u8>,
    /// How much of `buf` has been looked at for the end of the head.
    scanned: usize,
    continue_sent: bool,
    out: Vec<u8>,
    sent: usize,
    state: State,
    deadline: Instant,
}

/// The API server's loop.
pub struct Server {
    epoll: Epoll,
    listener: UnixListener,
    connections: HashMap<u64, Connection>,
    next_token: u64,
    requester: Requester,
    reply_tx: ReplySender,
    replies: ReplyQueue,
    stop: Arc<EventFd>,
}

/// What happened to a connection.
#[derive(PartialEq, Eq)]
enum Alive {
    Yes,
    Closed,
}

fn watch(
    epoll: &Epoll,
    op: ControlOperation,
    fd: i32,
    events: EventSet,
    token: u64,
) -> io::Result<()> {
    epoll.ctl(op, fd, EpollEvent::new(events, token))
}

impl Server {
    /// A server on `listener` (non-blocking) sending requests through `requester`, until
    /// `stop` is written.
    pub fn new(
        listener: UnixListener,
        requester: Requester,
        stop: Arc<EventFd>,
    ) -> io::Result<Server> {
        let epoll = Epoll::new()?;
        let (reply_tx, replies) = reply_channel().map_err(io::Error::other)?;
        watch(
            &epoll,
            ControlOperation::Add,
            listener.as_raw_fd(),
            EventSet::IN,
            LISTENER,
        )?;
        watch(
            &epoll,
            ControlOperation::Add,
            replies.eventfd().as_raw_fd(),
            EventSet::IN,
            REPLIES,
        )?;
        watch(
            &epoll,
            ControlOperation::Add,
            stop.as_raw_fd(),
            EventSet::IN,
            STOP,
        )?;
        Ok(Server {
            epoll,
            listener,
            connections: HashMap::new(),
            next_token: FIRST_CONNECTION,
            requester,
            reply_tx,
            replies,
            stop,
        })
    }

    /// Serves until the stop eventfd is written; then answers what the control loop already
    /// answered, and closes everything.
    pub fn run(mut self) {
        let mut ready = vec![EpollEvent::default(); 64];
        let mut stopping = false;
        while !stopping {
            let n = match self.epoll.wait(self.timeout_ms(), &mut ready) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            for event in &ready[..n] {
                match event.data() {
                    LISTENER => self.accept(),
                    REPLIES => self.on_replies(),
                    STOP => stopping = true,
                    token => self.on_connection(token, event.event_set()),
                }
            }
            self.expire(Instant::now());
        }
        let _ = self.stop.read();
        self.finish();
    }

    /// Milliseconds until the nearest connection deadline (-1: none).
    fn timeout_ms(&self) -> i32 {
        let now = Instant::now();
        self.connections
            .values()
            .filter(|c| !matches!(c.state, State::Waiting { .. }))
            .map(|c| c.deadline.saturating_duration_since(now))
            .min()
            .map_or(-1, |d| i32::try_from(d.as_millis() + 1).unwrap_or(i32::MAX))
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.connections.len() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            let events = EventSet::IN | EventSet::READ_HANG_UP;
            if watch(
                &self.epoll,
                ControlOperation::Add,
                stream.as_raw_fd(),
                events,
                token,
            )
            .is_err()
            {
                continue;
            }
            self.connections.insert(
                token,
                Connection {
                    stream,
                    buf: Vec::new(),
                    scanned: 0,
                    continue_sent: false,
                    out: Vec::new(),
                    sent: 0,
                    state: State::Reading {
                        head: None,
                        started: false,
                    },
                    deadline: Instant::now() + IDLE_TIMEOUT,
                },
            );
        }
    }

    fn close(&mut self, token: u64) {
        if let Some(c) = self.connections.remove(&token) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    fn on_connection(&mut self, token: u64, events: EventSet) {
        let alive = match self.connections.get(&token).map(|c| &c.state) {
            Some(State::Reading { .. }) => self.read(token),
            Some(State::Writing { .. }) => self.write(token),
            // Nothing is read while the control loop has the request; a client that hangs up
            // meanwhile is closed (its answer is dropped when it comes).
            Some(State::Waiting { .. }) if events.contains(EventSet::HANG_UP) => Alive::Closed,
            Some(State::Waiting { .. }) => Alive::Yes,
            None => return,
        };
        if alive == Alive::Closed {
            self.close(token);
        }
    }

    fn read(&mut self, token: u64) -> Alive {
        let Some(c) = self.connections.get_mut(&token) else {
            return Alive::Closed;
        };
        let mut chunk = [0u8; 16 * 1024];
        let mut eof = false;
        loop {
            match c.stream.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Alive::Closed,
            }
            // Never hold more than one request's worth: the parser rejects it first.
            if c.buf.len() > super::http::MAX_HEAD + super::http::MAX_BODY {
                break;
            }
        }
        let alive = self.advance(token);
        let waiting = matches!(
            self.connections.get(&token).map(|c| &c.state),
            Some(State::Reading { .. })
        );
        // A client that closed its end with a request half sent will never complete it.
        if eof && waiting {
            return Alive::Closed;
        }
        alive
    }

    /// Parses what a reading connection received; dispatches a complete request.
    fn advance(&mut self, token: u64) -> Alive {
        let Some(c) = self.connections.get_mut(&token) else {
            return Alive::Closed;
        };
        let State::Reading { head, started } = &mut c.state else {
            return Alive::Yes;
        };
        if !c.buf.is_empty() && !*started {
            *started = true;
            c.deadline = Instant::now() + REQUEST_TIMEOUT;
        }
        let parsed = match head.take() {
            Some(h) => body_of(h, &c.buf),
            None if c.buf.len() <= super::http::MAX_HEAD && !may_end_head(&c.buf, c.scanned) => {
                c.scanned = c.buf.len();
                return Alive::Yes;
            }
            None => parse_head(&c.buf),
        };
        match parsed {
            Parsed::NeedHead => {
                c.scanned = c.buf.len();
                Alive::Yes
            }
            Parsed::NeedBody(h) => {
                if h.expect_continue && !c.continue_sent {
                    c.continue_sent = true;
                    let _ = c.stream.write(CONTINUE);
                }
                *head = Some(h);
                Alive::Yes
            }
            Parsed::Request(request, used) => {
                c.buf.drain(..used);
                c.scanned = 0;
                c.continue_sent = false;
                self.dispatch(token, request)
            }
            Parsed::Reject(response) => self.respond(token, response, false),
        }
    }

    fn dispatch(&mut self, token: u64, request: Request) -> Alive {
        let keep_alive = request.keep_alive;
        let (action, endpoint) = match routes::route(&request) {
            Routed::Answer(response) => return self.respond(token, response, keep_alive),
            Routed::Act(action, endpoint) => (action, endpoint),
        };
        let sent = self.requester.send(ApiRequest {
            token,
            action,
            reply: self.reply_tx.clone(),
        });
        if !sent {
            let r = Response::errors(503, &["the VMM is shutting down".to_string()]);
            return self.respond(token, r, false);
        }
        let Some(c) = self.connections.get_mut(&token) else {
            return Alive::Closed;
        };
        c.state = State::Waiting {
            endpoint,
            keep_alive,
        };
        let fd = c.stream.as_raw_fd();
        match watch(
            &self.epoll,
            ControlOperation::Modify,
            fd,
            EventSet::empty(),
            token,
        ) {
            Ok(()) => Alive::Yes,
            Err(_) => Alive::Closed,
        }
    }

    fn on_replies(&mut self) {
        for reply in self.replies.drain() {
            let Some(c) = self.connections.get(&reply.token) else {
                continue;
            };
            let State::Waiting {
                endpoint,
                keep_alive,
            } = c.state
            else {
                continue;
            };
            let response = routes::render(endpoint, reply.result);
            if self.respond(reply.token, response, keep_alive) == Alive::Closed {
                self.close(reply.token);
            }
        }
    }

    /// Starts writing `response`.
    fn respond(&mut self, token: u64, response: Response, keep_alive: bool) -> Alive {
        let Some(c) = self.connections.get_mut(&token) else {
            return Alive::Closed;
        };
        c.out = response.to_bytes(keep_alive);
        c.sent = 0;
        c.state = State::Writing {
            close: !keep_alive || response.close,
        };
        c.deadline = Instant::now() + WRITE_TIMEOUT;
        let fd = c.stream.as_raw_fd();
        if watch(
            &self.epoll,
            ControlOperation::Modify,
            fd,
            EventSet::OUT,
            token,
        )
        .is_err()
        {
            return Alive::Closed;
        }
        self.write(token)
    }

    /// Writes what the client takes; at the end, closes or goes back to reading.
    fn write(&mut self, token: u64) -> Alive {
        let Some(c) = self.connections.get_mut(&token) else {
            return Alive::Closed;
        };
        while c.sent < c.out.len() {
            match c.stream.write(&c.out[c.sent..]) {
                Ok(0) => return Alive::Closed,
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Alive::Yes,
                Err(_) => return Alive::Closed,
            }
        }
        if let State::Writing { close: true } = c.state {
            return Alive::Closed;
        }
        c.out.clear();
        c.state = State::Reading {
            head: None,
            started: false,
        };
        c.deadline = Instant::now() + IDLE_TIMEOUT;
        let fd = c.stream.as_raw_fd();
        let events = EventSet::IN | EventSet::READ_HANG_UP;
        if watch(&self.epoll, ControlOperation::Modify, fd, events, token).is_err() {
            return Alive::Closed;
        }
        // A pipelined request may already be here.
        self.advance(token)
    }

    /// Closes connections past their deadline: a started request gets 408 first.
    fn expire(&mut self, now: Instant) {
        let late: Vec<(u64, bool)> = self
            .connections
            .iter()
            .filter(|(_, c)| c.deadline <= now && !matches!(c.state, State::Waiting { .. }))
            .map(|(t, c)| (*t, matches!(c.state, State::Reading { started: true, .. })))
            .collect();
        for (token, started) in late {
            let alive = if started {
                let r = Response::reject(408, "the request was not completed in time");
                self.respond(token, r, false)
            } else {
                Alive::Closed
            };
            if alive == Alive::Closed {
                self.close(token);
            }
        }
    }

    /// At stop: answers already given are written (blocking, briefly), then all closes.
    fn finish(&mut self) {
        self.on_replies();
        for c in self.connections.values_mut() {
            if matches!(c.state, State::Writing { .. }) && c.sent < c.out.len() {
                let _ = c.stream.set_nonblocking(false);
                let _ = c.stream.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = c.stream.write_all(&c.out[c.sent..]);
            }
        }
        self.connections.clear();
    }
}
