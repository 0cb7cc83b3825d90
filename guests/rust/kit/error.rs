//! The kit's one error type: a message formatted into a fixed buffer
//! (there is no heap), printed by `start` as `error: <message>`.

use core::fmt;

/// Message bytes kept (an `Error` stays small enough to return by value).
const CAPACITY: usize = 120;

/// An error with a formatted message (truncated at 120 bytes).
pub struct Error {
    buf: [u8; CAPACITY],
    len: u8,
}

impl Error {
    /// An error whose message is `args`; see the `err!` and `bail!` macros.
    pub fn new(args: fmt::Arguments) -> Self {
        let mut e = Self {
            buf: [0; CAPACITY],
            len: 0,
        };
        // Writing into the buffer never fails; it truncates.
        let _ = fmt::Write::write_fmt(&mut e, args);
        e
    }

    /// The message.
    pub fn message(&self) -> &str {
        // Only whole `str`s or their char-boundary prefixes are stored.
        core::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("(bad message)")
    }
}

impl fmt::Write for Error {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let len = usize::from(self.len);
        let mut take = s.len().min(CAPACITY - len);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[len..len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len = (len + take) as u8;
        Ok(())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// An [`Error`] with a formatted message: `err!("bad {}", x)`.
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => { $crate::Error::new(format_args!($($arg)*)) };
}

/// Returns early with an [`Error`]: `bail!("bad {}", x)`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::err!($($arg)*)) };
}
