//! The console output shared by the serial port and the 0xe9 debug console.
//!
//! The guest writes one byte per port exit. Writing each byte to the host writer (and flushing
//! it, as vm-superio does after every byte) would cost one `write(2)` per byte, so bytes are
//! collected in a small fixed-size buffer and handed to the writer:
//! - at every newline, so line-oriented output appears live;
//! - when the buffer is full ([`OUTPUT_BUFFER_SIZE`] bytes), so memory stays bounded whatever
//!   the guest writes (a slow writer blocks the vCPU instead of growing a queue);
//! - when a device sees the guest stop writing (see `serial.rs`), or the VMM calls
//!   [`ConsoleOutput::flush_now`], so a prompt without a newline is not held back.
//!
//! A writer that fails loses the bytes (they are counted in [`ConsoleOutput::lost_bytes`]);
//! the guest never sees an error, as on a real UART with nothing plugged in.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

/// Bytes held before the output is handed to the writer even without a newline.
pub const OUTPUT_BUFFER_SIZE: usize = 4096;

/// A bounded line buffer in front of an optional host writer.
pub struct ConsoleOutput {
    writer: Option<Box<dyn Write + Send>>,
    buf: Vec<u8>,
    first_byte: Arc<OnceLock<Instant>>,
    lost: u64,
}

/// A console output shared between devices and the VMM.
pub type SharedOutput = Arc<Mutex<ConsoleOutput>>;

impl ConsoleOutput {
    /// An output to `writer`; `None` discards everything (but still records the first byte).
    pub fn new(writer: Option<Box<dyn Write + Send>>) -> ConsoleOutput {
        ConsoleOutput {
            writer,
            buf: Vec::with_capacity(OUTPUT_BUFFER_SIZE),
            first_byte: Arc::new(OnceLock::new()),
            lost: 0,
        }
    }

    /// The same, wrapped for sharing.
    pub fn shared(writer: Option<Box<dyn Write + Send>>) -> SharedOutput {
        Arc::new(Mutex::new(ConsoleOutput::new(writer)))
    }

    /// Appends guest output, handing it to the writer at each newline or when the buffer fills.
    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.first_byte.get().is_none() {
            let _ = self.first_byte.set(Instant::now());
        }
        for &b in bytes {
            self.buf.push(b);
            if b == b'\n' || self.buf.len() >= OUTPUT_BUFFER_SIZE {
                self.flush_now();
            }
        }
    }

    /// Hands every buffered byte to the writer and flushes it.
    pub fn flush_now(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let Some(w) = self.writer.as_mut() {
            if w.write_all(&self.buf).and_then(|()| w.flush()).is_err() {
                self.lost += self.buf.len() as u64;
            }
        }
        self.buf.clear();
    }

    /// When the guest wrote its first byte to this output, if it has.
    pub fn first_byte_at(&self) -> Option<Instant> {
        self.first_byte.get().copied()
    }

    /// A handle on the first-byte time that stays valid without locking the output.
    pub fn first_byte_cell(&self) -> Arc<OnceLock<Instant>> {
        Arc::clone(&self.first_byte)
    }

    /// Bytes the writer failed to take.
    pub fn lost_bytes(&self) -> u64 {
        self.lost
    }

    /// Bytes waiting for the next flush.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }
}

impl Drop for ConsoleOutput {
    fn drop(&mut self) {
        self.flush_now();
    }
}

/// Locks a shared output, recovering from a poisoned lock (the buffer stays consistent).
pub fn lock_output(out: &SharedOutput) -> MutexGuard<'_, ConsoleOutput> {
    out.lock().unwrap_or_else(|e| e.into_inner())
}

/// A `Write` adapter that pushes into a shared output. Its `flush` does nothing: the output
/// decides when to flush (vm-superio flushes after every byte).
pub struct OutputWriter(pub SharedOutput);

impl Write for OutputWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock_output(&self.0).push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A writer into a shared byte vector, for tests.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct VecWriter(pub Arc<Mutex<Vec<u8>>>);

#[cfg(test)]
impl VecWriter {
    pub(crate) fn contents(&self) -> Vec<u8> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
impl Write for VecWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("test lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FailingWriter;
    impl Write for FailingWriter {
        fn write(&mut self, _buf: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("closed"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn test_output_push_without_newline_is_held() {
        let sink = VecWriter::default();
        let mut out = ConsoleOutput::new(Some(Box::new(sink.clone())));

        out.push(b"login: ");

        assert!(sink.contents().is_empty());
        assert_eq!(out.pending_bytes(), 7);
    }

    #[test]
    fn test_output_newline_flushes_line() {
        let sink = VecWriter::default();
        let mut out = ConsoleOutput::new(Some(Box::new(sink.clone())));

        out.push(b"hello\nwor");

        assert_eq!(sink.contents(), b"hello\n");
        out.flush_now();
        assert_eq!(sink.contents(), b"hello\nwor");
    }

    #[test]
    fn test_output_long_line_stays_bounded() {
        let sink = VecWriter::default();
        let mut out = ConsoleOutput::new(Some(Box::new(sink.clone())));

        out.push(&vec![b'x'; 3 * OUTPUT_BUFFER_SIZE + 5]);

        assert_eq!(out.pending_bytes(), 5);
        assert_eq!(sink.contents().len(), 3 * OUTPUT_BUFFER_SIZE);
    }

    #[test]
    fn test_output_failing_writer_counts_lost_bytes() {
        let mut out = ConsoleOutput::new(Some(Box::new(FailingWriter)));

        out.push(b"abc\n");

        assert_eq!(out.lost_bytes(), 4);
        assert_eq!(out.pending_bytes(), 0);
    }

    #[test]
    fn test_output_first_byte_recorded_once() {
        let mut out = ConsoleOutput::new(None);
        assert!(out.first_byte_at().is_none());

        out.push(b"a");
        let first = out.first_byte_at();
        out.push(b"b");

        assert!(first.is_some());
        assert_eq!(out.first_byte_at(), first);
    }
}
