//! The virtio-console device and its backends.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
use vm_memory::GuestMemoryMmap;

use super::event_handler::ConsoleHandler;
use super::{metrics, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use crate::counters::Counters;
use crate::virtio::worker::Worker;
use crate::virtio::{features, ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt};

/// Where the guest's output goes.
pub enum ConsoleOutput {
    /// Nowhere.
    Discard,
    /// A blocking writer (standard output, a file).
    Writer(Box<dyn Write + Send>),
    /// A pseudo-terminal master, non-blocking: what does not fit while no one reads the
    /// terminal is dropped rather than stalling the device.
    Pty(File),
}

impl ConsoleOutput {
    /// Writes `data`; returns how many bytes were dropped.
    pub fn write(&mut self, data: &[u8]) -> usize {
        match self {
            ConsoleOutput::Discard => 0,
            ConsoleOutput::Writer(w) => match w.write_all(data).and_then(|()| w.flush()) {
                Ok(()) => 0,
                Err(_) => data.len(),
            },
            ConsoleOutput::Pty(master) => {
                let mut rest = data;
                while !rest.is_empty() {
                    match master.write(rest) {
                        Ok(0) => break,
                        Ok(n) => rest = &rest[n..],
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                rest.len()
            }
        }
    }
}

/// Output and input of a console.
pub struct ConsoleBackend {
    /// Where output goes.
    pub output: ConsoleOutput,
    /// Where input comes from (a terminal, a pipe, a file; None: no input).
    pub input: Option<File>,
    /// A pseudo-terminal's slave, held open so its master never reports a hang-up.
    _pty_slave: Option<File>,
    /// The pseudo-terminal's path.
    pty_path: Option<PathBuf>,
}

impl ConsoleBackend {
    /// Output and input as given.
    pub fn new(output: ConsoleOutput, input: Option<File>) -> ConsoleBackend {
        ConsoleBackend {
            output,
            input,
            _pty_slave: None,
            pty_path: None,
        }
    }

    /// Output discarded, no input.
    pub fn null() -> ConsoleBackend {
        ConsoleBackend::new(ConsoleOutput::Discard, None)
    }

    /// Standard output and standard input.
    pub fn tty() -> std::io::Result<ConsoleBackend> {
        let stdin = File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
        Ok(ConsoleBackend::new(
            ConsoleOutput::Writer(Box::new(std::io::stdout())),
            Some(stdin),
        ))
    }

    /// Output written to `path` (created or truncated), no input.
    pub fn file(path: &Path) -> std::io::Result<ConsoleBackend> {
        Ok(ConsoleBackend::new(
            ConsoleOutput::Writer(Box::new(File::create(path)?)),
            None,
        ))
    }

    /// A new pseudo-terminal in raw mode.
    pub fn pty() -> std::io::Result<ConsoleBackend> {
        let master = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/ptmx")?;
        let fd = master.as_raw_fd();
        // SAFETY: `fd` is the open /dev/ptmx master owned by `master`; unlockpt only clears
        // the slave's lock on it.
        if unsafe { libc::unlockpt(fd) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut name = [0u8; 128];
        // SAFETY: `name` is a writable buffer of the length passed; ptsname_r writes a
        // NUL-terminated path of at most that many bytes.
        let rc = unsafe { libc::ptsname_r(fd, name.as_mut_ptr().cast(), name.len()) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        let path = PathBuf::from(String::from_utf8_lossy(&name[..len]).into_owned());
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(&path)?;
        make_raw(&slave)?;
        let input = master.try_clone()?;
        Ok(ConsoleBackend {
            output: ConsoleOutput::Pty(master),
            input: Some(input),
            _pty_slave: Some(slave),
            pty_path: Some(path),
        })
    }

    /// The pseudo-terminal a user opens to talk to the guest, for a `pty` backend.
    pub fn pty_path(&self) -> Option<&Path> {
        self.pty_path.as_deref()
    }
}

/// Puts the terminal `tty` in raw mode: no echo, no line editing, no output translation.
fn make_raw(tty: &File) -> std::io::Result<()> {
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it completely on success.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open terminal owned by `tty`; `t` is a valid termios to fill.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `t` is a valid termios; cfmakeraw only changes its flags.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: `fd` is an open terminal; `t` is a valid termios read from it.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A virtio-console device with one port.
pub struct Console {
    id: String,
    backend: Option<ConsoleBackend>,
    pty_path: Option<PathBuf>,
    acked: u64,
    counters: Arc<Counters>,
    worker: Option<Worker<ConsoleHandler>>,
}

impl Console {
    /// Device `id` (its worker thread is `virtio-<id>`) on `backend`.
    pub fn new(id: &str, backend: ConsoleBackend) -> Console {
        Console {
            id: id.to_string(),
            pty_path: backend.pty_path().map(Path::to_path_buf),
            backend: Some(backend),
            acked: 0,
            counters: Counters::new(metrics::NAMES),
            worker: None,
        }
    }

    /// The pseudo-terminal of a `pty` console.
    pub fn pty_path(&self) -> Option<&Path> {
        self.pty_path.as_deref()
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_INDIRECT_DESC | features::RING_EVENT_IDX
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features();
    }

    /// cols, rows (no VIRTIO_CONSOLE_F_SIZE: zero), max_nr_ports (1), emerg_wr.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 12];
        config[4..8].copy_from_slice(&1u32.to_le_bytes());
        crate::virtio::read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let backend = self.backend.take().ok_or_else(|| {
            ActivateError::Backend(std::io::Error::other("the console backend was lost"))
        })?;
        let mut rx = None;
        let mut tx = None;
        for q in queues {
            match q.index {
                RX_QUEUE => rx = Some(q),
                TX_QUEUE => tx = Some(q),
                _ => {}
            }
        }
        let handler = ConsoleHandler::new(
            rx,
            tx,
            backend,
            mem,
            Arc::clone(&interrupt),
            Arc::clone(&self.counters),
        );
        let worker = Worker::spawn(format!("virtio-{}", self.id), handler, interrupt);
        self.worker = Some(worker?);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        if let Some(worker) = self.worker.take() {
            match worker.stop() {
                Some(handler) => self.backend = Some(handler.backend),
                None => return false,
            }
        }
        self.acked = 0;
        true
    }

    fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    fn persist(&mut self) -> Option<&mut dyn crate::virtio::persist::VirtioPersist> {
        Some(self)
    }
}

#[path = "persist.rs"]
mod persist;
